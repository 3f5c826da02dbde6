//! Machines: the host entry and address, the qcow2 overlay of the base image (imported
//! once per pool), the Ignition file and console log, and the QEMU domain.

use super::*;

impl Backend {
    /// The domain as an object; None when it has no clusterform metadata.
    pub(super) fn machine_object(
        &self,
        name: &str,
        dom: &Domain,
        doc: &str,
    ) -> Result<Option<Object>> {
        let r = xml::read_domain(doc).map_err(LibvirtError::Unexpected)?;
        let Some(meta) = r.meta.clone() else {
            return Ok(None);
        };
        let mut attrs = meta.attrs.clone();
        attrs.insert("name".into(), Value::String(name.to_string()));
        if let Some(Value::String(digest)) = attrs.remove(USER_DATA_DIGEST) {
            // The config is what the Ignition file holds, while it is the one applied;
            // missing or changed, the machine's `user_data` reads as absent (drift).
            let file = r.ignition_file.as_deref().map(std::fs::read);
            if let Some(Ok(bytes)) = file
                && sha256_hex(&bytes) == digest
                && let Ok(text) = String::from_utf8(bytes)
            {
                attrs.insert("user_data".into(), Value::String(text));
            }
        }
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
        write_file(&ign, user_data.as_bytes(), self.qemu_owner())?;
        let log = dir.join(format!("{name}.console.log"));
        let _ = std::fs::remove_file(&log);

        let mut stored = attrs.clone();
        // The domain's XML is readable by anyone with read-only access to libvirt: it
        // gets the config's digest, never the config (which may carry keys); reads
        // take the config from the Ignition file when the digest matches.
        if let Some(Value::String(u)) = stored.remove("user_data") {
            stored.insert(
                USER_DATA_DIGEST.into(),
                Value::String(sha256_hex(u.as_bytes())),
            );
        }
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

fn doc_domain_type(doc: &str) -> Option<String> {
    let d = roxmltree::Document::parse(doc).ok()?;
    d.root_element().attribute("type").map(str::to_string)
}

/// The metadata attribute that stands for `user_data`: its SHA-256, hex.
const USER_DATA_DIGEST: &str = "user_data_sha256";

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Write an Ignition file readable by QEMU only: made 0600 (never readable by others,
/// not even for a moment), then, when `owner` is given (clusterform runs as root and
/// QEMU as another user), handed to QEMU's user and group with mode 0400.
fn write_file(path: &Path, data: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| {
        LibvirtError::File {
        what: "cannot write the Ignition file (set `[provider.libvirt] ignition_dir` to a folder you can write and QEMU can read)".into(),
        path: path.display().to_string(),
        source,
    }
    };
    let tmp = path.with_extension("ign.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(err)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400)).map_err(err)?;
    }
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
