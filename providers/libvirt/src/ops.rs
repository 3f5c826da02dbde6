//! The blocking libvirt operations behind the provider: networks with their storage
//! pool, machines (overlay, Ignition file, DHCP/DNS host entry, domain), reading them
//! back as objects, and finding them by ownership. Every function here blocks; the
//! provider runs them on blocking threads.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clusterform_core::{Attrs, Value};
use clusterform_provider::{Object, Ownership};
use sha2::{Digest, Sha256};
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::network::Network;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use crate::config::{Forward, LibvirtConfig};
use crate::error::{Ctx, LibvirtError, Result, connect_error, is_missing, is_unsupported};
use crate::image::{self, LocalImage};
use crate::size::Size;
use crate::xml::{self, DomainSpec, Host, NetSpec};

/// The connection and the locks that keep concurrent operations of one run apart.
pub(crate) struct Backend {
    pub(crate) config: LibvirtConfig,
    pub(crate) uri: String,
    conn: Mutex<Option<Connect>>,
    /// Held while choosing addresses and editing a network's host entries.
    net_lock: Mutex<()>,
    /// Held while importing a base image.
    image_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An attribute as a string.
fn attr_str<'a>(attrs: &'a Attrs, k: &str) -> Option<&'a str> {
    attrs.get(k).and_then(Value::as_str)
}

fn need_str<'a>(attrs: &'a Attrs, k: &str, kind: &str) -> Result<&'a str> {
    attr_str(attrs, k)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| LibvirtError::Invalid(format!("the {kind} has no `{k}`")))
}

/// A parsed `a.b.c.d/p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) net: u32,
    pub(crate) prefix: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr> {
        let bad = || {
            LibvirtError::Invalid(format!(
                "`cidr` `{s}` is not an IPv4 range like `192.168.126.0/24` (prefix 8 to 29)"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Cidr {
            net: u32::from(ip) & mask,
            prefix,
        })
    }
    fn size(self) -> u32 {
        1u32 << (32 - self.prefix)
    }
    fn broadcast(self) -> u32 {
        self.net + self.size() - 1
    }
    fn contains(self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        a > self.net && a < self.broadcast()
    }
    /// The DHCP range: the 10th to the 100th host on networks with room, else all hosts.
    fn range(self) -> (Ipv4Addr, Ipv4Addr) {
        if self.size() >= 128 {
            (
                Ipv4Addr::from(self.net + 10),
                Ipv4Addr::from(self.net + 100),
            )
        } else {
            (
                Ipv4Addr::from(self.net + 2),
                Ipv4Addr::from(self.broadcast() - 1),
            )
        }
    }
}

/// A bridge name for a network: `cf-` and 8 hex digits of its name's hash (at most 15
/// characters, as Linux wants).
fn bridge_name(network: &str) -> String {
    let mut h = Sha256::new();
    h.update(network.as_bytes());
    let d = h.finalize();
    format!("cf-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

fn state_name(s: DomainState) -> &'static str {
    match s {
        DomainState::NoState => "no state",
        DomainState::Running => "running",
        DomainState::Blocked => "blocked",
        DomainState::Paused => "paused",
        DomainState::Shutdown => "shutting down",
        DomainState::Shutoff => "shut off",
        DomainState::Crashed => "crashed",
        DomainState::PMSuspended => "suspended",
    }
}

/// Everything listed once: every domain and network with its document.
pub(crate) struct Listing {
    domains: BTreeMap<String, (Domain, String)>,
    networks: BTreeMap<String, (Network, String)>,
}

impl Backend {
    pub(crate) fn new(config: LibvirtConfig) -> Backend {
        let uri = config.resolved_uri();
        Backend {
            config,
            uri,
            conn: Mutex::new(None),
            net_lock: Mutex::new(()),
            image_lock: Mutex::new(()),
        }
    }

    /// The open connection (opened on first use; connections are thread-safe).
    pub(crate) fn conn(&self) -> Result<Connect> {
        let mut c = lock(&self.conn);
        if let Some(open) = c.as_ref()
            && open.is_alive().unwrap_or(false)
        {
            return Ok(open.clone());
        }
        // libvirt prints every error to stderr unless told not to; ours carry them.
        virt::error::clear_error_callback();
        let opened = Connect::open(Some(&self.uri)).map_err(|e| connect_error(&self.uri, &e))?;
        *c = Some(opened.clone());
        Ok(opened)
    }

    /// True on libvirt's test driver (`test:///...`), which has no real hypervisor.
    fn is_test_driver(&self, conn: &Connect) -> bool {
        conn.driver_type()
            .is_ok_and(|t| t.eq_ignore_ascii_case("test"))
    }

    /// List every domain and network with its persistent document, once.
    pub(crate) fn list(&self, conn: &Connect, domains: bool, networks: bool) -> Result<Listing> {
        let mut out = Listing {
            domains: BTreeMap::new(),
            networks: BTreeMap::new(),
        };
        if domains {
            for d in conn
                .list_all_domains(0)
                .ctx(|| "cannot list the domains".into())?
            {
                let name = d.name().ctx(|| "cannot read a domain's name".into())?;
                match d.xml_desc_persistent() {
                    Ok(x) => {
                        out.domains.insert(name, (d, x));
                    }
                    Err(e) if is_missing(&e) => {} // went away while listing
                    Err(e) => return Err(e).ctx(|| format!("cannot read domain `{name}`")),
                }
            }
        }
        if networks {
            for n in conn
                .list_all_networks(0)
                .ctx(|| "cannot list the networks".into())?
            {
                let name = n.name().ctx(|| "cannot read a network's name".into())?;
                match n.xml_desc_persistent() {
                    Ok(x) => {
                        out.networks.insert(name, (n, x));
                    }
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(e).ctx(|| format!("cannot read network `{name}`")),
                }
            }
        }
        Ok(out)
    }

    /// Every object carrying clusterform's metadata, of the kind when given.
    pub(crate) fn owned(&self, conn: &Connect, kind: Option<&str>) -> Result<Vec<Object>> {
        let listing = self.list(
            conn,
            kind.is_none_or(|k| k == "machine"),
            kind.is_none_or(|k| k == "network"),
        )?;
        let mut out = Vec::new();
        for (name, (n, x)) in &listing.networks {
            if let Some(o) = self.network_object(conn, name, n, x)?
                && o.owner.is_some()
            {
                out.push(o);
            }
        }
        for (name, (d, x)) in &listing.domains {
            if let Some(o) = self.machine_object(name, d, x)?
                && o.owner.is_some()
            {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// Read many objects with one listing.
    pub(crate) fn read_many(
        &self,
        conn: &Connect,
        reqs: &[(String, String)],
    ) -> Result<Vec<Option<Object>>> {
        let listing = self.list(
            conn,
            reqs.iter().any(|(k, _)| k == "machine"),
            reqs.iter().any(|(k, _)| k == "network"),
        )?;
        let mut out = Vec::with_capacity(reqs.len());
        for (kind, id) in reqs {
            out.push(match kind.as_str() {
                "network" => match listing.networks.get(id) {
                    Some((n, x)) => self.network_object(conn, id, n, x)?,
                    None => None,
                },
                "machine" => match listing.domains.get(id) {
                    Some((d, x)) => self.machine_object(id, d, x)?,
                    None => None,
                },
                _ => None,
            });
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- networks

    /// The network as an object; None when it has no clusterform metadata.
    fn network_object(
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
    fn edit_hosts(
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

    // ---------------------------------------------------------------- machines

    /// The domain as an object; None when it has no clusterform metadata.
    fn machine_object(&self, name: &str, dom: &Domain, doc: &str) -> Result<Option<Object>> {
        let r = xml::read_domain(doc).map_err(LibvirtError::Unexpected)?;
        let Some(meta) = r.meta.clone() else {
            return Ok(None);
        };
        let mut attrs = meta.attrs.clone();
        attrs.insert("name".into(), Value::String(name.to_string()));
        if let (Some(m), Some(v)) = (r.memory_mib, r.vcpus) {
            let live = Size {
                vcpus: v,
                memory_mib: m,
            };
            let stored = attr_str(&meta.attrs, "size").and_then(|s| Size::parse(s).ok());
            if stored != Some(live) {
                attrs.insert("size".into(), Value::String(live.to_string()));
            }
        }
        let state = match dom.state() {
            Ok((s, _)) => s.unwrap_or(DomainState::NoState),
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("cannot read the state of domain `{name}`")),
        };
        attrs.insert("state".into(), Value::String(state_name(state).into()));
        if matches!(state, DomainState::Shutoff) {
            attrs.insert("stopped".into(), Value::Bool(true));
        } else {
            attrs.remove("stopped");
        }
        for (k, v) in [
            ("mac", &r.mac),
            ("disk", &r.disk),
            ("ignition_file", &r.ignition_file),
            ("console_log", &r.console_log),
        ] {
            match v {
                Some(v) => attrs.insert(k.into(), Value::String(v.clone())),
                None => attrs.remove(k),
            };
        }
        Ok(Some(Object {
            kind: "machine".into(),
            id: name.to_string(),
            attrs,
            owner: meta.owner,
        }))
    }

    fn read_machine(&self, conn: &Connect, name: &str) -> Result<Object> {
        let dom = conn
            .lookup_domain_by_name(name)
            .ctx(|| format!("cannot find domain `{name}` after making it"))?;
        let doc = dom
            .xml_desc_persistent()
            .ctx(|| format!("cannot read domain `{name}`"))?;
        self.machine_object(name, &dom, &doc)?.ok_or_else(|| {
            LibvirtError::Unexpected(format!("domain `{name}` lost clusterform's metadata"))
        })
    }

    /// The folder of a cluster's Ignition files and console logs.
    fn files_dir(&self, cluster: &str) -> PathBuf {
        self.config.ignition_dir.join(cluster)
    }

    /// Create a machine: host entry, overlay, Ignition file, domain; started unless
    /// `stopped`. Idempotent on the operation id.
    pub(crate) fn create_machine(
        &self,
        conn: &Connect,
        attrs: &Attrs,
        owner: &Ownership,
    ) -> Result<Object> {
        let name = need_str(attrs, "name", "machine")?;
        let size_s = need_str(attrs, "size", "machine")?;
        let size =
            Size::parse(size_s).map_err(|m| LibvirtError::Invalid(format!("`size`: {m}")))?;
        let net_name = need_str(attrs, "network", "machine")?;
        let stopped = attrs.get("stopped") == Some(&Value::Bool(true));

        match conn.lookup_domain_by_name(name) {
            Ok(existing) => {
                let doc = existing
                    .xml_desc_persistent()
                    .ctx(|| format!("cannot read domain `{name}`"))?;
                let r = xml::read_domain(&doc).map_err(LibvirtError::Unexpected)?;
                check_same_op("domain", name, r.meta.and_then(|m| m.owner), owner)?;
                // Made by this very operation before a crash: finish it.
                if !stopped && !existing.is_active().unwrap_or(false) {
                    existing
                        .create()
                        .ctx(|| format!("cannot start domain `{name}`"))?;
                }
                return self.read_machine(conn, name);
            }
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e).ctx(|| format!("cannot look up domain `{name}`")),
        }

        let pool = conn.lookup_storage_pool_by_name(net_name).map_err(|e| {
            if is_missing(&e) {
                LibvirtError::Unexpected(format!(
                    "network `{net_name}` has no storage pool `{net_name}`: it was removed outside clusterform; replace the network (`clusterform apply` after deleting it)"
                ))
            } else {
                LibvirtError::Call {
                    what: format!("cannot look up storage pool `{net_name}`"),
                    source: e,
                }
            }
        })?;

        // Address and host entry.
        let host = {
            let _g = lock(&self.net_lock);
            let net = conn
                .lookup_network_by_name(net_name)
                .ctx(|| format!("cannot find network `{net_name}`"))?;
            let doc = net
                .xml_desc_persistent()
                .ctx(|| format!("cannot read network `{net_name}`"))?;
            let r = xml::read_network(&doc).map_err(LibvirtError::Unexpected)?;
            let (gw, prefix) = r.ip.ok_or_else(|| {
                LibvirtError::Unexpected(format!("network `{net_name}` has no IPv4 address"))
            })?;
            let cidr = Cidr {
                net: u32::from(gw) & (u32::MAX << (32 - u32::from(prefix.clamp(1, 32)))),
                prefix,
            };
            let ip = match attr_str(attrs, "address") {
                Some(a) => {
                    let ip: Ipv4Addr = a.parse().map_err(|_| {
                        LibvirtError::Invalid(format!("`address` `{a}` is not an IPv4 address"))
                    })?;
                    if !cidr.contains(ip) || ip == gw {
                        return Err(LibvirtError::Invalid(format!(
                            "`address` `{a}` is not a free host address of network `{net_name}` ({}/{prefix}, gateway {gw})",
                            Ipv4Addr::from(cidr.net)
                        )));
                    }
                    if let Some(h) = r.hosts.iter().find(|h| h.ip == ip && h.name != name) {
                        return Err(LibvirtError::Clash(format!(
                            "address `{a}` is already given to `{}` on network `{net_name}`",
                            h.name
                        )));
                    }
                    ip
                }
                None => match r.hosts.iter().find(|h| h.name == name) {
                    Some(h) => h.ip,
                    None => {
                        let (start, end) = r.range.unwrap_or_else(|| cidr.range());
                        (u32::from(start)..=u32::from(end))
                            .map(Ipv4Addr::from)
                            .find(|ip| *ip != gw && !r.hosts.iter().any(|h| h.ip == *ip))
                            .ok_or_else(|| {
                                LibvirtError::Invalid(format!(
                                    "network `{net_name}` has no free address left in its DHCP range {start}-{end}"
                                ))
                            })?
                    }
                },
            };
            let host = Host {
                mac: xml::mac_for(ip),
                name: name.to_string(),
                ip,
            };
            if !r.hosts.contains(&host) {
                let stale = r.hosts.iter().any(|h| h.name == name);
                self.edit_hosts(conn, net_name, Some(&host), stale.then_some(name))?;
            }
            host
        };

        // Disk: an overlay of the base image.
        let image_setting = attr_str(attrs, "image")
            .unwrap_or(&self.config.image)
            .to_string();
        let (base_path, base_format, base_capacity) =
            self.ensure_base(conn, &pool, &image_setting)?;
        let want = attrs
            .get("disk_gb")
            .and_then(Value::as_u64)
            .map(|g| g.saturating_mul(1 << 30))
            .unwrap_or(0);
        let overlay_name = format!("{name}.qcow2");
        if let Ok(old) = pool.lookup_storage_vol_by_name(&overlay_name) {
            // Left by an interrupted create: a new machine gets a fresh disk.
            ignore_missing(old.delete(0))
                .ctx(|| format!("cannot delete the old volume `{overlay_name}`"))?;
        }
        let overlay = StorageVol::create_xml(
            &pool,
            &xml::volume_xml(
                &overlay_name,
                want.max(base_capacity),
                "qcow2",
                Some((&base_path, &base_format)),
            ),
            0,
        )
        .ctx(|| format!("cannot make the disk `{overlay_name}` in pool `{net_name}`"))?;
        let disk = overlay
            .path()
            .ctx(|| format!("cannot read the path of volume `{overlay_name}`"))?;

        // Ignition and the console log.
        let dir = self.files_dir(&owner.cluster);
        std::fs::create_dir_all(&dir).map_err(|source| LibvirtError::File {
            what: "cannot make the Ignition folder (set `[provider.libvirt] ignition_dir` to a folder you can write and QEMU can read)".into(),
            path: dir.display().to_string(),
            source,
        })?;
        let ign = dir.join(format!("{name}.ign"));
        let user_data = attr_str(attrs, "user_data").unwrap_or("");
        write_file(&ign, user_data.as_bytes())?;
        let log = dir.join(format!("{name}.console.log"));
        let _ = std::fs::remove_file(&log);

        let mut stored = attrs.clone();
        stored.insert("address".into(), Value::String(host.ip.to_string()));
        stored.insert("image".into(), Value::String(image_setting));
        let spec = DomainSpec {
            domain_type: if self.is_test_driver(conn) {
                "test".to_string()
            } else {
                self.config.domain_type.clone()
            },
            name: name.to_string(),
            uuid: None,
            metadata: xml::metadata(owner, &strip_computed(&stored)),
            memory_mib: size.memory_mib,
            vcpus: size.vcpus,
            disk,
            network: net_name.to_string(),
            mac: host.mac.clone(),
            ignition_file: ign.to_string_lossy().into_owned(),
            fw_cfg: self.config.fw_cfg,
            console_log: log.to_string_lossy().into_owned(),
        };
        let dom = conn
            .define_domain_xml(&spec.to_xml())
            .ctx(|| format!("cannot define domain `{name}`"))?;
        dom.set_autostart(self.config.autostart)
            .ctx(|| format!("cannot set autostart of domain `{name}`"))?;
        if !stopped {
            dom.create()
                .ctx(|| format!("cannot start domain `{name}`"))?;
        }
        self.read_machine(conn, name)
    }

    /// The base image's volume: found where it already is (an image inside a libvirt
    /// pool is used in place), else uploaded once into the cluster's pool.
    /// Returns (path, format, capacity).
    fn ensure_base(
        &self,
        conn: &Connect,
        pool: &StoragePool,
        image_setting: &str,
    ) -> Result<(String, String, u64)> {
        let _g = lock(&self.image_lock);
        let vol_info = |v: &StorageVol| -> Result<(String, String, u64)> {
            let path = v
                .path()
                .ctx(|| "cannot read the base volume's path".into())?;
            let doc = v.xml_desc(0).ctx(|| "cannot read the base volume".into())?;
            let (format, cap) = xml::read_volume(&doc).ok_or_else(|| {
                LibvirtError::Unexpected(format!("cannot read the format of volume `{path}`"))
            })?;
            Ok((path, format, cap))
        };
        let config = if image_setting == self.config.image {
            self.config.clone()
        } else {
            let mut c = self.config.clone();
            c.image = image_setting.to_string();
            c.image_source =
                if image_setting.starts_with("https://") || image_setting.starts_with("http://") {
                    crate::config::ImageSource::Url(image_setting.to_string())
                } else {
                    crate::config::ImageSource::Path(PathBuf::from(image_setting))
                };
            c.image_sha256 = None;
            c
        };
        if let crate::config::ImageSource::Path(p) = &config.image_source
            && let Ok(v) = conn.lookup_storage_vol_by_path(&p.to_string_lossy())
        {
            return vol_info(&v);
        }
        let name = image::base_volume_name(&config.image, config.image_sha256.as_deref());
        if let Ok(v) = pool.lookup_storage_vol_by_name(&name) {
            return vol_info(&v);
        }
        let local = image::local_image(&config)?;
        self.upload(conn, pool, &name, &local)?;
        let v = pool
            .lookup_storage_vol_by_name(&name)
            .ctx(|| format!("cannot find the base volume `{name}` after uploading it"))?;
        let (path, _, _) = vol_info(&v)?;
        Ok((path, local.format.to_string(), local.virtual_size))
    }

    /// Upload a local image as a new volume of the pool, streamed.
    fn upload(
        &self,
        conn: &Connect,
        pool: &StoragePool,
        name: &str,
        img: &LocalImage,
    ) -> Result<()> {
        use std::io::Read;
        let vol = StorageVol::create_xml(
            &pool.clone(),
            &xml::volume_xml(name, img.file_len, "raw", None),
            0,
        )
        .ctx(|| format!("cannot make the base volume `{name}`"))?;
        let fail = |vol: &StorageVol, e: LibvirtError| {
            let _ = vol.delete(0);
            e
        };
        let stream = Stream::new(conn, 0).ctx(|| "cannot open an upload stream".into())?;
        if let Err(e) = vol.upload(&stream, 0, img.file_len, 0) {
            let _ = stream.abort();
            let msg = if is_unsupported(&e) {
                format!(
                    "this libvirt cannot upload volumes ({e}); put the image into a libvirt storage pool and point `[provider.libvirt] image` at it there"
                )
            } else {
                format!("cannot upload the image into volume `{name}`: {e}")
            };
            return Err(fail(&vol, LibvirtError::Image(msg)));
        }
        let mut f = std::fs::File::open(&img.path).map_err(|source| LibvirtError::File {
            what: "cannot read the image".into(),
            path: img.path.display().to_string(),
            source,
        })?;
        let bar = indicatif::ProgressBar::new(img.file_len);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "importing the base image {bar:30} {bytes}/{total_bytes} ({eta})",
        ) {
            bar.set_style(style);
        }
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|source| LibvirtError::File {
                what: "cannot read the image".into(),
                path: img.path.display().to_string(),
                source,
            })?;
            if n == 0 {
                break;
            }
            let mut sent = 0;
            while sent < n {
                match stream.send(&buf[sent..n]) {
                    Ok(k) if k > 0 => sent += k as usize,
                    Ok(_) => {}
                    Err(e) => {
                        bar.finish_and_clear();
                        let _ = stream.abort();
                        return Err(fail(
                            &vol,
                            LibvirtError::Image(format!("the upload of the image broke off: {e}")),
                        ));
                    }
                }
            }
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        stream.finish().map_err(|e| {
            fail(
                &vol,
                LibvirtError::Image(format!("the upload of the image failed: {e}")),
            )
        })?;
        let _ = pool.refresh(0);
        Ok(())
    }

    /// Change `size` (restarting the domain), `stopped`, `protect` or `tags` in place;
    /// the definition is rewritten with its uuid.
    pub(crate) fn update_machine(
        &self,
        conn: &Connect,
        id: &str,
        attrs: &Attrs,
        changed: &[String],
    ) -> Result<Object> {
        let dom = conn
            .lookup_domain_by_name(id)
            .ctx(|| format!("cannot find domain `{id}`"))?;
        let doc = dom
            .xml_desc_persistent()
            .ctx(|| format!("cannot read domain `{id}`"))?;
        let r = xml::read_domain(&doc).map_err(LibvirtError::Unexpected)?;
        let meta = r.meta.clone().ok_or_else(|| not_ours("domain", id))?;
        let owner = meta.owner.clone().ok_or_else(|| not_ours("domain", id))?;
        let size_s = need_str(attrs, "size", "machine")?;
        let size =
            Size::parse(size_s).map_err(|m| LibvirtError::Invalid(format!("`size`: {m}")))?;
        let mut stored = meta.attrs.clone();
        for (k, v) in attrs {
            stored.insert(k.clone(), v.clone());
        }
        for k in ["stopped", "protect", "tags"] {
            if !attrs.contains_key(k) {
                stored.remove(k);
            }
        }
        let resized = r.memory_mib != Some(size.memory_mib) || r.vcpus != Some(size.vcpus);
        let spec = DomainSpec {
            domain_type: doc_domain_type(&doc).unwrap_or_else(|| self.config.domain_type.clone()),
            name: id.to_string(),
            uuid: r.uuid.clone(),
            metadata: xml::metadata(&owner, &strip_computed(&stored)),
            memory_mib: size.memory_mib,
            vcpus: size.vcpus,
            disk: r.disk.clone().unwrap_or_default(),
            network: attr_str(&stored, "network").unwrap_or("").to_string(),
            mac: r.mac.clone().unwrap_or_default(),
            ignition_file: r.ignition_file.clone().unwrap_or_default(),
            fw_cfg: self.config.fw_cfg,
            console_log: r.console_log.clone().unwrap_or_default(),
        };
        conn.define_domain_xml(&spec.to_xml())
            .ctx(|| format!("cannot redefine domain `{id}`"))?;
        let stopped = attrs.get("stopped") == Some(&Value::Bool(true));
        let running = dom.is_active().unwrap_or(false);
        if running && (stopped || (resized && changed.iter().any(|c| c == "size"))) {
            self.shut_down(&dom, id)?;
        }
        if !stopped && !dom.is_active().unwrap_or(false) {
            dom.create().ctx(|| format!("cannot start domain `{id}`"))?;
        }
        self.read_machine(conn, id)
    }

    /// Ask the guest to shut down; power it off after `shutdown_timeout_s`.
    fn shut_down(&self, dom: &Domain, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.config.shutdown_timeout_s);
        if self.config.shutdown_timeout_s > 0 && dom.shutdown().is_ok() {
            while Instant::now() < deadline {
                if !dom.is_active().unwrap_or(false) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if dom.is_active().unwrap_or(false) {
            ignore_missing(dom.destroy()).ctx(|| format!("cannot power off domain `{id}`"))?;
        }
        Ok(())
    }

    /// Delete a machine: power off, undefine, host entry, overlay, Ignition file, log.
    pub(crate) fn delete_machine(&self, conn: &Connect, id: &str) -> Result<()> {
        let mut net_name: Option<String> = None;
        let mut cluster: Option<String> = None;
        let mut disk: Option<String> = None;
        match conn.lookup_domain_by_name(id) {
            Ok(dom) => {
                let doc = dom
                    .xml_desc_persistent()
                    .ctx(|| format!("cannot read domain `{id}`"))?;
                let r = xml::read_domain(&doc).map_err(LibvirtError::Unexpected)?;
                let meta = r.meta.clone().ok_or_else(|| not_ours("domain", id))?;
                let owner = meta.owner.clone().ok_or_else(|| not_ours("domain", id))?;
                net_name = attr_str(&meta.attrs, "network").map(str::to_string);
                cluster = Some(owner.cluster);
                disk = r.disk.clone();
                if dom.is_active().unwrap_or(false) {
                    ignore_missing(dom.destroy())
                        .ctx(|| format!("cannot power off domain `{id}`"))?;
                }
                ignore_missing(dom.undefine()).ctx(|| format!("cannot undefine domain `{id}`"))?;
            }
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(e).ctx(|| format!("cannot look up domain `{id}`")),
        }
        // The host entry, the overlay.
        if let Some(net) = &net_name {
            let _g = lock(&self.net_lock);
            match self.edit_hosts(conn, net, None, Some(id)) {
                Ok(()) => {}
                Err(LibvirtError::Call { source, .. }) if is_missing(&source) => {}
                Err(e) => return Err(e),
            }
        }
        let overlay = disk
            .as_deref()
            .and_then(|p| conn.lookup_storage_vol_by_path(p).ok())
            .or_else(|| {
                let pool = conn
                    .lookup_storage_pool_by_name(net_name.as_deref()?)
                    .ok()?;
                pool.lookup_storage_vol_by_name(&format!("{id}.qcow2")).ok()
            });
        if let Some(v) = overlay {
            ignore_missing(v.delete(0)).ctx(|| format!("cannot delete the disk of `{id}`"))?;
        }
        if let Some(c) = cluster {
            let dir = self.files_dir(&c);
            for f in [format!("{id}.ign"), format!("{id}.console.log")] {
                remove_file(&dir.join(f))?;
            }
            let _ = std::fs::remove_dir(&dir); // only when empty
        }
        Ok(())
    }

    /// Find the object made by the operation `key`.
    pub(crate) fn find_by_key(
        &self,
        conn: &Connect,
        kind: &str,
        key: &str,
    ) -> Result<Option<Object>> {
        Ok(self
            .owned(conn, Some(kind))?
            .into_iter()
            .find(|o| o.kind == kind && o.owner.as_ref().is_some_and(|w| w.op == key)))
    }
}

/// The persistent definition of a network or domain (what the next start uses), or the
/// current one where the driver has no such flag (the test driver for networks).
trait Persistent {
    fn xml_desc_persistent(&self) -> std::result::Result<String, virt::error::Error>;
}

fn with_fallback(
    first: std::result::Result<String, virt::error::Error>,
    plain: impl FnOnce() -> std::result::Result<String, virt::error::Error>,
) -> std::result::Result<String, virt::error::Error> {
    match first {
        Err(e)
            if e.code().unwrap_or(virt::error::ErrorNumber::InternalError)
                == virt::error::ErrorNumber::InvalidArg =>
        {
            plain()
        }
        other => other,
    }
}

impl Persistent for Network {
    fn xml_desc_persistent(&self) -> std::result::Result<String, virt::error::Error> {
        with_fallback(self.xml_desc(sys::VIR_NETWORK_XML_INACTIVE), || {
            self.xml_desc(0)
        })
    }
}

impl Persistent for Domain {
    fn xml_desc_persistent(&self) -> std::result::Result<String, virt::error::Error> {
        with_fallback(self.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE), || {
            self.xml_desc(0)
        })
    }
}

/// The `dns` servers without the network's own address (its dnsmasq would ask itself).
fn forwarders(dns: &[String], gateway: &str) -> Vec<Ipv4Addr> {
    dns.iter()
        .filter(|d| d.as_str() != gateway)
        .filter_map(|d| d.parse().ok())
        .collect()
}

fn string_list(attrs: &Attrs, k: &str) -> Vec<String> {
    attrs
        .get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The attributes kept in metadata: the inputs (computed ones are read live).
fn strip_computed(attrs: &Attrs) -> Attrs {
    let mut a = attrs.clone();
    for k in [
        "mac",
        "state",
        "disk",
        "ignition_file",
        "console_log",
        "stopped",
    ] {
        a.remove(k);
    }
    a
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

fn doc_domain_type(doc: &str) -> Option<String> {
    let d = roxmltree::Document::parse(doc).ok()?;
    d.root_element().attribute("type").map(str::to_string)
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

/// An object found under the name must have been made by this very operation.
fn check_same_op(what: &str, name: &str, found: Option<Ownership>, want: &Ownership) -> Result<()> {
    match found {
        Some(o) if o.op == want.op => Ok(()),
        Some(o) => Err(LibvirtError::Clash(format!(
            "a {what} named `{name}` already exists, made by clusterform for `{}` of cluster `{}`: destroy that cluster first, or pick another cluster name",
            o.address, o.cluster
        ))),
        None => Err(LibvirtError::Clash(format!(
            "a {what} named `{name}` already exists and clusterform does not own it: rename it or remove it (`virsh {}`), or pick another cluster name",
            if what == "network" {
                format!("net-destroy {name}; virsh net-undefine {name}")
            } else {
                format!("destroy {name}; virsh undefine {name}")
            }
        ))),
    }
}

fn not_ours(what: &str, name: &str) -> LibvirtError {
    LibvirtError::Clash(format!(
        "the {what} `{name}` has no clusterform metadata: it is not clusterform's, so it is left alone; remove it from the state (`clusterform state rm`) if it was adopted by mistake"
    ))
}

fn ignore_missing(
    r: std::result::Result<(), virt::error::Error>,
) -> std::result::Result<(), virt::error::Error> {
    match r {
        Err(e) if is_missing(&e) => Ok(()),
        other => other,
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let err = |source| {
        LibvirtError::File {
        what: "cannot write the Ignition file (set `[provider.libvirt] ignition_dir` to a folder you can write and QEMU can read)".into(),
        path: path.display().to_string(),
        source,
    }
    };
    let tmp = path.with_extension("ign.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LibvirtError::File {
            what: "cannot remove".into(),
            path: path.display().to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges_and_bridges() {
        let c = Cidr::parse("192.168.126.0/24").expect("cidr");
        assert_eq!(
            c.range(),
            (
                Ipv4Addr::new(192, 168, 126, 10),
                Ipv4Addr::new(192, 168, 126, 100)
            )
        );
        let small = Cidr::parse("10.0.0.0/28").expect("cidr");
        assert_eq!(
            small.range(),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 14))
        );
        assert!(Cidr::parse("10.0.0.0/30").is_err());
        assert!(Cidr::parse("banana").is_err());
        assert!(bridge_name("a-very-long-network-name-indeed").len() <= 15);
        assert_eq!(
            forwarders(&["192.168.1.1".into(), "1.1.1.1".into()], "192.168.1.1"),
            vec![Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}
