//! Networks: a libvirt network (bridge, DHCP range, a DHCP and DNS host entry per
//! machine) and its `dir` storage pool, created, changed in place, deleted last.

use super::*;

impl Backend {
    /// The network as an object; None when it has no clusterform metadata.
    pub(super) fn network_object(
        &self,
        conn: &Connect,
        name: &str,
        net: &Network,
        doc: &str,
    ) -> Result<Option<Object>> {
        let r = xml::read_network(doc).map_err(LibvirtError::Unexpected)?;
        let Some(meta) = r.meta.clone() else {
            return Ok(None);
        };
        let mut attrs = meta.attrs.clone();
        attrs.insert("name".into(), Value::String(name.to_string()));
        if let Some((gw, prefix)) = r.ip {
            let live = Cidr {
                net: u32::from(gw) & (u32::MAX << (32 - u32::from(prefix.clamp(1, 32)))),
                prefix,
            };
            let stored = attr_str(&meta.attrs, "cidr").and_then(|c| Cidr::parse(c).ok());
            if stored != Some(live) {
                attrs.insert(
                    "cidr".into(),
                    Value::String(format!("{}/{prefix}", Ipv4Addr::from(live.net))),
                );
            }
            attrs.insert("gateway".into(), Value::String(gw.to_string()));
        }
        // `dns` as stored, unless the forwarders were changed outside.
        let stored_dns: Vec<String> = meta
            .attrs
            .get("dns")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let gateway = attrs.get("gateway").and_then(Value::as_str).unwrap_or("");
        let expected: Vec<String> = forwarders(&stored_dns, gateway)
            .iter()
            .map(ToString::to_string)
            .collect();
        if expected != r.forwarders {
            attrs.insert(
                "dns".into(),
                Value::Array(r.forwarders.iter().cloned().map(Value::String).collect()),
            );
        }
        attrs.insert("forward".into(), Value::String(r.forward.clone()));
        if let Some(b) = &r.bridge {
            attrs.insert("bridge".into(), Value::String(b.clone()));
        }
        let active = net.is_active().unwrap_or(false);
        attrs.insert(
            "state".into(),
            Value::String(if active { "active" } else { "inactive" }.into()),
        );
        match conn.lookup_storage_pool_by_name(name) {
            Ok(p) => {
                attrs.insert("pool".into(), Value::String(name.to_string()));
                let path = p
                    .xml_desc(0)
                    .ok()
                    .and_then(|x| pool_path(&x))
                    .unwrap_or_default();
                attrs.insert("pool_path".into(), Value::String(path));
            }
            Err(e) if is_missing(&e) => {
                attrs.remove("pool");
                attrs.remove("pool_path");
            }
            Err(e) => return Err(e).ctx(|| format!("cannot look up storage pool `{name}`")),
        }
        Ok(Some(Object {
            kind: "network".into(),
            id: name.to_string(),
            attrs,
            owner: meta.owner,
        }))
    }

    fn read_network(&self, conn: &Connect, name: &str) -> Result<Object> {
        let net = conn
            .lookup_network_by_name(name)
            .ctx(|| format!("cannot find network `{name}` after making it"))?;
        let doc = net
            .xml_desc_persistent()
            .ctx(|| format!("cannot read network `{name}`"))?;
        self.network_object(conn, name, &net, &doc)?.ok_or_else(|| {
            LibvirtError::Unexpected(format!("network `{name}` lost clusterform's metadata"))
        })
    }

    /// Create a network and its storage pool (idempotent on the operation id).
    pub(crate) fn create_network(
        &self,
        conn: &Connect,
        attrs: &Attrs,
        owner: &Ownership,
    ) -> Result<Object> {
        let name = need_str(attrs, "name", "network")?;
        let cidr = Cidr::parse(need_str(attrs, "cidr", "network")?)?;
        let gateway = match attr_str(attrs, "gateway") {
            Some(g) => {
                let ip: Ipv4Addr = g.parse().map_err(|_| {
                    LibvirtError::Invalid(format!("`gateway` `{g}` is not an IPv4 address"))
                })?;
                if !cidr.contains(ip) {
                    return Err(LibvirtError::Invalid(format!(
                        "`gateway` `{g}` is not a host of the network's cidr"
                    )));
                }
                ip
            }
            None => Ipv4Addr::from(cidr.net + 1),
        };
        let forward = match attr_str(attrs, "forward") {
            Some(f) => Forward::parse(f).ok_or_else(|| {
                LibvirtError::Invalid(format!(
                    "`forward` `{f}` is not `nat`, `route`, `open` or `none`"
                ))
            })?,
            None => self.config.forward,
        };
        let dns = string_list(attrs, "dns");
        let mut stored = attrs.clone();
        stored.insert("forward".into(), Value::String(forward.name().into()));
        stored.insert("gateway".into(), Value::String(gateway.to_string()));

        match conn.lookup_network_by_name(name) {
            Ok(existing) => {
                let doc = existing
                    .xml_desc_persistent()
                    .ctx(|| format!("cannot read network `{name}`"))?;
                let r = xml::read_network(&doc).map_err(LibvirtError::Unexpected)?;
                check_same_op("network", name, r.meta.and_then(|m| m.owner), owner)?;
                if !existing.is_active().unwrap_or(false) {
                    existing
                        .create()
                        .ctx(|| format!("cannot start network `{name}`"))?;
                }
            }
            Err(e) if is_missing(&e) => {
                let spec = NetSpec {
                    name: name.to_string(),
                    uuid: None,
                    forward,
                    bridge: bridge_name(name),
                    gateway,
                    prefix: cidr.prefix,
                    range: cidr.range(),
                    forwarders: forwarders(&dns, &gateway.to_string()),
                    hosts: Vec::new(),
                    metadata: xml::metadata(owner, &stored),
                };
                let net = conn
                    .define_network_xml(&spec.to_xml())
                    .ctx(|| format!("cannot define network `{name}`"))?;
                net.create().map_err(|e| LibvirtError::Call {
                    what: format!(
                        "cannot start network `{name}` (forward mode `{}`; on hosts without iptables/nftables try `forward = \"open\"`)",
                        forward.name()
                    ),
                    source: e,
                })?;
                net.set_autostart(self.config.autostart)
                    .ctx(|| format!("cannot set autostart of network `{name}`"))?;
            }
            Err(e) => return Err(e).ctx(|| format!("cannot look up network `{name}`")),
        }
        self.ensure_pool(conn, name)?;
        self.read_network(conn, name)
    }

    /// The cluster network's storage pool: `<pool_dir>/<name>`, defined, built, started.
    fn ensure_pool(&self, conn: &Connect, name: &str) -> Result<StoragePool> {
        let path = self.config.pool_dir.join(name);
        let pool = match conn.lookup_storage_pool_by_name(name) {
            Ok(p) => {
                let have = p.xml_desc(0).ok().and_then(|x| pool_path(&x));
                if have.as_deref() != Some(path.to_string_lossy().as_ref()) {
                    return Err(LibvirtError::Clash(format!(
                        "a storage pool named `{name}` already exists at `{}`, not at `{}`: remove it (`virsh pool-destroy {name}; virsh pool-undefine {name}`) or rename the network",
                        have.unwrap_or_default(),
                        path.display()
                    )));
                }
                p
            }
            Err(e) if is_missing(&e) => {
                let p = conn
                    .define_storage_pool_xml(&xml::pool_xml(name, &path.to_string_lossy()), 0)
                    .ctx(|| format!("cannot define storage pool `{name}`"))?;
                p.build(0).ctx(|| {
                    format!(
                        "cannot make the pool folder `{}` (set `[provider.libvirt] pool_dir` to a folder libvirt can write)",
                        path.display()
                    )
                })?;
                p
            }
            Err(e) => return Err(e).ctx(|| format!("cannot look up storage pool `{name}`")),
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .ctx(|| format!("cannot start storage pool `{name}`"))?;
        }
        pool.set_autostart(self.config.autostart)
            .ctx(|| format!("cannot set autostart of storage pool `{name}`"))?;
        Ok(pool)
    }

    /// Change `dns` or `tags`: the persistent definition is rewritten (same uuid).
    pub(crate) fn update_network(&self, conn: &Connect, id: &str, attrs: &Attrs) -> Result<Object> {
        let _g = lock(&self.net_lock);
        let net = conn
            .lookup_network_by_name(id)
            .ctx(|| format!("cannot find network `{id}`"))?;
        let doc = net
            .xml_desc_persistent()
            .ctx(|| format!("cannot read network `{id}`"))?;
        let r = xml::read_network(&doc).map_err(LibvirtError::Unexpected)?;
        let meta = r.meta.clone().ok_or_else(|| not_ours("network", id))?;
        let owner = meta.owner.clone().ok_or_else(|| not_ours("network", id))?;
        let mut stored = meta.attrs.clone();
        for (k, v) in attrs {
            stored.insert(k.clone(), v.clone());
        }
        for k in ["dns", "tags"] {
            if !attrs.contains_key(k) {
                stored.remove(k);
            }
        }
        let mut spec = spec_from(&r, id, &owner, &stored)?;
        let gateway = spec.gateway.to_string();
        spec.forwarders = forwarders(&string_list(&stored, "dns"), &gateway);
        conn.define_network_xml(&spec.to_xml())
            .ctx(|| format!("cannot redefine network `{id}`"))?;
        if !net.is_active().unwrap_or(false) {
            net.create()
                .ctx(|| format!("cannot start network `{id}`"))?;
        }
        drop(_g);
        self.ensure_pool(conn, id)?;
        self.read_network(conn, id)
    }

    /// Delete the network's pool (with every volume left in it), then the network.
    pub(crate) fn delete_network(&self, conn: &Connect, id: &str) -> Result<()> {
        match conn.lookup_network_by_name(id) {
            Ok(net) => {
                let doc = net
                    .xml_desc_persistent()
                    .ctx(|| format!("cannot read network `{id}`"))?;
                let r = xml::read_network(&doc).map_err(LibvirtError::Unexpected)?;
                if r.meta.and_then(|m| m.owner).is_none() {
                    return Err(not_ours("network", id));
                }
                self.delete_pool(conn, id)?;
                if net.is_active().unwrap_or(false) {
                    ignore_missing(net.destroy()).ctx(|| format!("cannot stop network `{id}`"))?;
                }
                ignore_missing(net.undefine()).ctx(|| format!("cannot undefine network `{id}`"))?;
            }
            Err(e) if is_missing(&e) => self.delete_pool(conn, id)?,
            Err(e) => return Err(e).ctx(|| format!("cannot look up network `{id}`")),
        }
        Ok(())
    }

    fn delete_pool(&self, conn: &Connect, name: &str) -> Result<()> {
        let pool = match conn.lookup_storage_pool_by_name(name) {
            Ok(p) => p,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e).ctx(|| format!("cannot look up storage pool `{name}`")),
        };
        if !pool.is_active().unwrap_or(false) {
            pool.create(0)
                .ctx(|| format!("cannot start storage pool `{name}` to empty it"))?;
        }
        let _ = pool.refresh(0);
        // Overlays first, then what they are backed by.
        let mut vols = pool
            .list_all_volumes(0)
            .ctx(|| format!("cannot list the volumes of pool `{name}`"))?;
        vols.sort_by_key(|v| v.name().is_ok_and(|n| n.starts_with("base-")));
        for v in vols {
            let vname = v.name().unwrap_or_default();
            ignore_missing(v.delete(0))
                .ctx(|| format!("cannot delete volume `{vname}` of pool `{name}`"))?;
        }
        ignore_missing(pool.destroy()).ctx(|| format!("cannot stop storage pool `{name}`"))?;
        match pool.delete(0) {
            Ok(()) => {}
            Err(e) if is_missing(&e) || is_unsupported(&e) => {}
            Err(e) => return Err(e).ctx(|| format!("cannot remove the folder of pool `{name}`")),
        }
        ignore_missing(pool.undefine()).ctx(|| format!("cannot undefine storage pool `{name}`"))
    }

    /// Add or remove a machine's DHCP and DNS host entries: `virNetworkUpdate` on the
    /// live network and its definition; where the driver lacks it (the test driver), or
    /// the network is not running, the definition is rewritten (same uuid).
    pub(super) fn edit_hosts(
        &self,
        conn: &Connect,
        net_name: &str,
        add: Option<&Host>,
        remove: Option<&str>,
    ) -> Result<()> {
        let net = conn
            .lookup_network_by_name(net_name)
            .ctx(|| format!("cannot find network `{net_name}`"))?;
        let doc = net
            .xml_desc_persistent()
            .ctx(|| format!("cannot read network `{net_name}`"))?;
        let r = xml::read_network(&doc).map_err(LibvirtError::Unexpected)?;
        let old: Vec<Host> = r
            .hosts
            .iter()
            .filter(|h| remove.is_some_and(|n| h.name == n))
            .cloned()
            .collect();
        let active = net.is_active().unwrap_or(false);
        if active {
            let flags = sys::VIR_NETWORK_UPDATE_AFFECT_LIVE | sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
            let mut calls: Vec<(u32, u32, String)> = Vec::new();
            for h in &old {
                calls.push((
                    sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
                    sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                    h.dhcp_xml(),
                ));
                calls.push((
                    sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
                    sys::VIR_NETWORK_SECTION_DNS_HOST,
                    h.dns_xml(),
                ));
            }
            if let Some(h) = add {
                calls.push((
                    sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                    sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
                    h.dhcp_xml(),
                ));
                calls.push((
                    sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                    sys::VIR_NETWORK_SECTION_DNS_HOST,
                    h.dns_xml(),
                ));
            }
            let mut unsupported = false;
            for (cmd, section, x) in &calls {
                match net.update(*cmd, *section, -1, x, flags) {
                    Ok(()) => {}
                    Err(e) if is_unsupported(&e) => {
                        unsupported = true;
                        break;
                    }
                    Err(e) => {
                        return Err(e).ctx(|| {
                            format!("cannot update the host entries of network `{net_name}`")
                        });
                    }
                }
            }
            if !unsupported {
                return Ok(());
            }
        }
        let meta = r
            .meta
            .clone()
            .ok_or_else(|| not_ours("network", net_name))?;
        let owner = meta
            .owner
            .clone()
            .ok_or_else(|| not_ours("network", net_name))?;
        let mut spec = spec_from(&r, net_name, &owner, &meta.attrs)?;
        spec.hosts.retain(|h| !old.contains(h));
        if let Some(h) = add {
            spec.hosts.retain(|x| x.name != h.name && x.ip != h.ip);
            spec.hosts.push(h.clone());
        }
        conn.define_network_xml(&spec.to_xml())
            .ctx(|| format!("cannot redefine network `{net_name}`"))?;
        Ok(())
    }
}

/// The `dns` servers without the network's own address (its dnsmasq would ask itself).
pub(super) fn forwarders(dns: &[String], gateway: &str) -> Vec<Ipv4Addr> {
    dns.iter()
        .filter(|d| d.as_str() != gateway)
        .filter_map(|d| d.parse().ok())
        .collect()
}

fn pool_path(doc: &str) -> Option<String> {
    let d = roxmltree::Document::parse(doc).ok()?;
    d.descendants()
        .find(|n| n.has_tag_name("target"))?
        .children()
        .find(|n| n.has_tag_name("path"))?
        .text()
        .map(str::to_string)
}

/// Rebuild a network's spec from its document, with new stored attributes.
fn spec_from(r: &xml::NetRead, name: &str, owner: &Ownership, stored: &Attrs) -> Result<NetSpec> {
    let (gateway, prefix) = r
        .ip
        .ok_or_else(|| LibvirtError::Unexpected(format!("network `{name}` has no IPv4 address")))?;
    let cidr = Cidr {
        net: u32::from(gateway) & (u32::MAX << (32 - u32::from(prefix.clamp(1, 32)))),
        prefix,
    };
    Ok(NetSpec {
        name: name.to_string(),
        uuid: r.uuid.clone(),
        forward: Forward::parse(&r.forward).unwrap_or(Forward::Nat),
        bridge: r.bridge.clone().unwrap_or_else(|| bridge_name(name)),
        gateway,
        prefix,
        range: r.range.unwrap_or_else(|| cidr.range()),
        forwarders: r.forwarders.iter().filter_map(|f| f.parse().ok()).collect(),
        hosts: r.hosts.clone(),
        metadata: xml::metadata(owner, stored),
    })
}
