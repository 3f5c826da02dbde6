//! libvirt XML: the network, pool, volume and domain documents this provider defines,
//! and reading back what it needs from libvirt's answers (ownership metadata, hosts,
//! memory, MAC...). Nothing here talks to libvirt.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use clusterform_core::Attrs;
use clusterform_provider::Ownership;

use crate::config::{Forward, FwCfg};

/// The XML namespace of clusterform's `<metadata>` element.
pub const NS: &str = "urn:clusterform:libvirt:1";

/// The fw_cfg name Flatcar's Ignition reads its config from.
pub const FW_CFG_NAME: &str = "opt/org.flatcar-linux/config";

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Escape text for an XML attribute or element.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// What clusterform keeps in an object's `<metadata>`: the ownership tags and the
/// attributes it was made with.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// The ownership tags (None when incomplete: not ours).
    pub owner: Option<Ownership>,
    /// The inputs as applied.
    pub attrs: Attrs,
}

/// The `<metadata>` element.
pub fn metadata(owner: &Ownership, attrs: &Attrs) -> String {
    let mut s = format!("<metadata><cf:object xmlns:cf=\"{NS}\">");
    for (k, v) in owner.to_tags() {
        let _ = write!(s, "<cf:tag key=\"{}\">{}</cf:tag>", esc(k), esc(&v));
    }
    let json = serde_json::to_string(attrs).unwrap_or_else(|_| "{}".to_string());
    let _ = write!(
        s,
        "<cf:attrs>{}</cf:attrs></cf:object></metadata>",
        esc(&json)
    );
    s
}

/// Read clusterform's metadata from a domain or network document; None when it has none.
pub fn read_meta(doc: &roxmltree::Document<'_>) -> Option<Meta> {
    let obj = doc
        .descendants()
        .find(|n| n.tag_name().name() == "object" && n.tag_name().namespace() == Some(NS))?;
    let mut tags: Vec<(String, String)> = Vec::new();
    let mut attrs = Attrs::new();
    for c in obj.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "tag" => {
                if let Some(k) = c.attribute("key") {
                    tags.push((k.to_string(), c.text().unwrap_or("").to_string()));
                }
            }
            "attrs" => {
                attrs = serde_json::from_str(c.text().unwrap_or("{}")).unwrap_or_default();
            }
            _ => {}
        }
    }
    let owner = Ownership::from_tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Some(Meta { owner, attrs })
}

/// A DHCP host entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its MAC.
    pub mac: String,
    /// Its name (DHCP and DNS).
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl Host {
    /// `<host mac= name= ip=/>` for the `ip-dhcp-host` section.
    pub fn dhcp_xml(&self) -> String {
        format!(
            "<host mac='{}' name='{}' ip='{}'/>",
            esc(&self.mac),
            esc(&self.name),
            self.ip
        )
    }

    /// `<host ip=><hostname/></host>` for the `dns-host` section.
    pub fn dns_xml(&self) -> String {
        format!(
            "<host ip='{}'><hostname>{}</hostname></host>",
            self.ip,
            esc(&self.name)
        )
    }
}

/// A network as this provider defines it.
#[derive(Clone, Debug, PartialEq)]
pub struct NetSpec {
    /// Name.
    pub name: String,
    /// UUID (kept on redefinition).
    pub uuid: Option<String>,
    /// Forward mode.
    pub forward: Forward,
    /// Bridge name.
    pub bridge: String,
    /// The host's address on it.
    pub gateway: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// DHCP range.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// DNS forwarders.
    pub forwarders: Vec<Ipv4Addr>,
    /// One DHCP + DNS host entry per machine.
    pub hosts: Vec<Host>,
    /// The `<metadata>` element, verbatim.
    pub metadata: String,
}

impl NetSpec {
    /// The network document.
    pub fn to_xml(&self) -> String {
        let mut s = String::from("<network>");
        let _ = write!(s, "<name>{}</name>", esc(&self.name));
        if let Some(u) = &self.uuid {
            let _ = write!(s, "<uuid>{}</uuid>", esc(u));
        }
        s.push_str(&self.metadata);
        if self.forward != Forward::None {
            let _ = write!(s, "<forward mode='{}'/>", self.forward.name());
        }
        let _ = write!(
            s,
            "<bridge name='{}' stp='on' delay='0'/>",
            esc(&self.bridge)
        );
        s.push_str("<dns>");
        for f in &self.forwarders {
            let _ = write!(s, "<forwarder addr='{f}'/>");
        }
        for h in &self.hosts {
            s.push_str(&h.dns_xml());
        }
        s.push_str("</dns>");
        let _ = write!(
            s,
            "<ip address='{}' prefix='{}'><dhcp><range start='{}' end='{}'/>",
            self.gateway, self.prefix, self.range.0, self.range.1
        );
        for h in &self.hosts {
            s.push_str(&h.dhcp_xml());
        }
        s.push_str("</dhcp></ip></network>");
        s
    }
}

/// What a network document says, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct NetRead {
    /// UUID.
    pub uuid: Option<String>,
    /// Forward mode (`none` without `<forward>`).
    pub forward: String,
    /// Bridge name.
    pub bridge: Option<String>,
    /// Gateway and prefix of the first IPv4 `<ip>`.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// DNS forwarders.
    pub forwarders: Vec<String>,
    /// DHCP host entries.
    pub hosts: Vec<Host>,
    /// The first DHCP range.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Our metadata.
    pub meta: Option<Meta>,
}

/// Parse a network document.
pub fn read_network(xml: &str) -> Result<NetRead, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("bad network XML: {e}"))?;
    let root = doc.root_element();
    let child = |name: &str| root.children().find(|c| c.has_tag_name(name));
    let forward = child("forward")
        .map(|f| f.attribute("mode").unwrap_or("nat").to_string())
        .unwrap_or_else(|| "none".to_string());
    let ip_el = root
        .children()
        .find(|c| c.has_tag_name("ip") && c.attribute("family").is_none_or(|f| f == "ipv4"));
    let ip = ip_el.and_then(|i| {
        let a: Ipv4Addr = i.attribute("address")?.parse().ok()?;
        let prefix = match i.attribute("prefix") {
            Some(p) => p.parse().ok()?,
            None => netmask_prefix(i.attribute("netmask")?)?,
        };
        Some((a, prefix))
    });
    let hosts = ip_el
        .into_iter()
        .flat_map(|i| i.descendants())
        .filter(|n| n.has_tag_name("host"))
        .filter_map(|h| {
            Some(Host {
                mac: h.attribute("mac")?.to_ascii_lowercase(),
                name: h.attribute("name").unwrap_or("").to_string(),
                ip: h.attribute("ip")?.parse().ok()?,
            })
        })
        .collect();
    let range = ip_el
        .into_iter()
        .flat_map(|i| i.descendants())
        .find(|n| n.has_tag_name("range"))
        .and_then(|r| {
            Some((
                r.attribute("start")?.parse().ok()?,
                r.attribute("end")?.parse().ok()?,
            ))
        });
    let forwarders = child("dns")
        .into_iter()
        .flat_map(|d| d.children())
        .filter(|c| c.has_tag_name("forwarder"))
        .filter_map(|f| f.attribute("addr").map(str::to_string))
        .collect();
    Ok(NetRead {
        uuid: child("uuid").and_then(|u| u.text()).map(str::to_string),
        forward,
        bridge: child("bridge")
            .and_then(|b| b.attribute("name"))
            .map(str::to_string),
        ip,
        forwarders,
        hosts,
        range,
        meta: read_meta(&doc),
    })
}

fn netmask_prefix(mask: &str) -> Option<u8> {
    let m: Ipv4Addr = mask.parse().ok()?;
    u8::try_from(u32::from(m).count_ones()).ok()
}

/// A `dir` storage pool.
pub fn pool_xml(name: &str, path: &str) -> String {
    format!(
        "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
        esc(name),
        esc(path)
    )
}

/// A volume: empty (`backing` None) or a qcow2 overlay of `backing` (path, format).
pub fn volume_xml(
    name: &str,
    capacity: u64,
    format: &str,
    backing: Option<(&str, &str)>,
) -> String {
    let mut s = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='{}'/></target>",
        esc(name),
        esc(format)
    );
    if let Some((path, fmt)) = backing {
        let _ = write!(
            s,
            "<backingStore><path>{}</path><format type='{}'/></backingStore>",
            esc(path),
            esc(fmt)
        );
    }
    s.push_str("</volume>");
    s
}

/// The format (`qcow2`, `raw`) and capacity of a volume document.
pub fn read_volume(xml: &str) -> Option<(String, u64)> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    let cap = root.children().find(|c| c.has_tag_name("capacity"))?;
    let unit = cap.attribute("unit").unwrap_or("bytes");
    let n: u64 = cap.text()?.trim().parse().ok()?;
    let mult: u64 = match unit {
        "bytes" | "B" | "b" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" | "m" => 1 << 20,
        "GiB" | "G" | "g" => 1 << 30,
        "TiB" | "T" | "t" => 1 << 40,
        _ => return None,
    };
    let format = root
        .children()
        .find(|c| c.has_tag_name("target"))
        .and_then(|t| t.children().find(|c| c.has_tag_name("format")))
        .and_then(|f| f.attribute("type"))
        .unwrap_or("raw")
        .to_string();
    Some((format, n.checked_mul(mult)?))
}

/// A domain as this provider defines it.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainSpec {
    /// `kvm`, `qemu` or `test` (libvirt's test driver).
    pub domain_type: String,
    /// Name.
    pub name: String,
    /// UUID (kept on redefinition).
    pub uuid: Option<String>,
    /// The `<metadata>` element, verbatim.
    pub metadata: String,
    /// Memory.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// The overlay's path.
    pub disk: String,
    /// The network it is attached to.
    pub network: String,
    /// Its MAC.
    pub mac: String,
    /// The Ignition file.
    pub ignition_file: String,
    /// How the Ignition file reaches fw_cfg.
    pub fw_cfg: FwCfg,
    /// The serial console's log file.
    pub console_log: String,
}

impl DomainSpec {
    /// The domain document.
    pub fn to_xml(&self) -> String {
        let mut s = match self.fw_cfg {
            FwCfg::Sysinfo => format!("<domain type='{}'>", esc(&self.domain_type)),
            FwCfg::Commandline => format!(
                "<domain type='{}' xmlns:qemu='{QEMU_NS}'>",
                esc(&self.domain_type)
            ),
        };
        let _ = write!(s, "<name>{}</name>", esc(&self.name));
        if let Some(u) = &self.uuid {
            let _ = write!(s, "<uuid>{}</uuid>", esc(u));
        }
        s.push_str(&self.metadata);
        let _ = write!(
            s,
            "<memory unit='MiB'>{m}</memory><currentMemory unit='MiB'>{m}</currentMemory><vcpu>{}</vcpu>",
            self.vcpus,
            m = self.memory_mib
        );
        if self.fw_cfg == FwCfg::Sysinfo {
            let _ = write!(
                s,
                "<sysinfo type='fwcfg'><entry name='{FW_CFG_NAME}' file='{}'/></sysinfo>",
                esc(&self.ignition_file)
            );
        }
        s.push_str("<os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>");
        s.push_str("<features><acpi/></features>");
        s.push_str("<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>");
        s.push_str("<devices>");
        let _ = write!(
            s,
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            esc(&self.disk)
        );
        let _ = write!(
            s,
            "<interface type='network'><mac address='{}'/><source network='{}'/><model type='virtio'/></interface>",
            esc(&self.mac),
            esc(&self.network)
        );
        let _ = write!(
            s,
            "<serial type='pty'><log file='{}' append='off'/><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>",
            esc(&self.console_log)
        );
        s.push_str("</devices>");
        if self.fw_cfg == FwCfg::Commandline {
            // QEMU's -fw_cfg option splits on commas: a comma in the path is doubled.
            let _ = write!(
                s,
                "<qemu:commandline><qemu:arg value='-fw_cfg'/><qemu:arg value='name={FW_CFG_NAME},file={}'/></qemu:commandline>",
                esc(&self.ignition_file.replace(',', ",,"))
            );
        }
        s.push_str("</domain>");
        s
    }
}

/// What a domain document says, read back.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainRead {
    /// UUID.
    pub uuid: Option<String>,
    /// Memory in MiB.
    pub memory_mib: Option<u64>,
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// The first NIC's MAC.
    pub mac: Option<String>,
    /// The first disk's file.
    pub disk: Option<String>,
    /// The fw_cfg Ignition file (sysinfo or command line form).
    pub ignition_file: Option<String>,
    /// The serial console's log file.
    pub console_log: Option<String>,
    /// Our metadata.
    pub meta: Option<Meta>,
}

/// Parse a domain document.
pub fn read_domain(xml: &str) -> Result<DomainRead, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("bad domain XML: {e}"))?;
    let root = doc.root_element();
    let child = |name: &str| root.children().find(|c| c.has_tag_name(name));
    let memory_mib = child("memory").and_then(|m| {
        let n: u64 = m.text()?.trim().parse().ok()?;
        Some(match m.attribute("unit").unwrap_or("KiB") {
            "KiB" | "k" | "K" => n / 1024,
            "MiB" | "M" | "m" => n,
            "GiB" | "G" | "g" => n * 1024,
            "bytes" | "b" => n >> 20,
            _ => return None,
        })
    });
    let vcpus = child("vcpu").and_then(|v| v.text()?.trim().parse().ok());
    let devices = child("devices");
    let dev = |name: &str| devices.and_then(|d| d.children().find(|c| c.has_tag_name(name)));
    let mac = dev("interface")
        .and_then(|i| i.children().find(|c| c.has_tag_name("mac")))
        .and_then(|m| m.attribute("address"))
        .map(str::to_ascii_lowercase);
    let disk = dev("disk")
        .and_then(|d| d.children().find(|c| c.has_tag_name("source")))
        .and_then(|s| s.attribute("file"))
        .map(str::to_string);
    let console_log = dev("serial")
        .and_then(|s| s.children().find(|c| c.has_tag_name("log")))
        .and_then(|l| l.attribute("file"))
        .map(str::to_string);
    let sysinfo_file = root
        .descendants()
        .filter(|n| n.has_tag_name("sysinfo") && n.attribute("type") == Some("fwcfg"))
        .flat_map(|n| n.children())
        .find(|e| e.has_tag_name("entry") && e.attribute("name") == Some(FW_CFG_NAME))
        .and_then(|e| e.attribute("file"))
        .map(str::to_string);
    let prefix = format!("name={FW_CFG_NAME},file=");
    let cmdline_file = root
        .descendants()
        .filter(|n| n.tag_name().name() == "arg" && n.tag_name().namespace() == Some(QEMU_NS))
        .filter_map(|n| n.attribute("value"))
        .find_map(|v| v.strip_prefix(prefix.as_str()))
        .map(|f| f.replace(",,", ","));
    Ok(DomainRead {
        uuid: child("uuid").and_then(|u| u.text()).map(str::to_string),
        memory_mib,
        vcpus,
        mac,
        disk,
        ignition_file: sysinfo_file.or(cmdline_file),
        console_log,
        meta: read_meta(&doc),
    })
}

/// The MAC of a machine with this address: `52:54:00` (QEMU's prefix) and the
/// address's last three bytes, so a rebuilt machine keeps its MAC.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_core::Value;

    fn owner() -> Ownership {
        Ownership {
            cluster: "demo".into(),
            address: "machine.workers[0]".parse().expect("address"),
            op: "op-1".into(),
            expires_at: None,
            created_by: Some("me@host".into()),
            created_at: None,
        }
    }

    #[test]
    fn domain_round_trip() {
        let mut attrs = Attrs::new();
        attrs.insert("user_data".into(), Value::String("{\"a\":\"<&'>\"}".into()));
        for fw_cfg in [FwCfg::Sysinfo, FwCfg::Commandline] {
            let spec = DomainSpec {
                domain_type: "kvm".into(),
                name: "demo-workers-0".into(),
                uuid: Some("6f1c3bde-7f6e-4a45-9a59-8a0c3d1f1e01".into()),
                metadata: metadata(&owner(), &attrs),
                memory_mib: 4096,
                vcpus: 2,
                disk: "/pool/demo-workers-0.qcow2".into(),
                network: "demo-main".into(),
                mac: "52:54:00:00:00:0a".into(),
                ignition_file: "/ign/a,b.ign".into(),
                fw_cfg,
                console_log: "/ign/demo-workers-0.log".into(),
            };
            let r = read_domain(&spec.to_xml()).expect("parses");
            assert_eq!(r.memory_mib, Some(4096));
            assert_eq!(r.vcpus, Some(2));
            assert_eq!(r.mac.as_deref(), Some("52:54:00:00:00:0a"));
            assert_eq!(r.disk.as_deref(), Some("/pool/demo-workers-0.qcow2"));
            assert_eq!(
                r.ignition_file.as_deref(),
                Some("/ign/a,b.ign"),
                "{fw_cfg:?}"
            );
            assert_eq!(r.console_log.as_deref(), Some("/ign/demo-workers-0.log"));
            let meta = r.meta.expect("metadata");
            assert_eq!(meta.owner, Some(owner()));
            assert_eq!(meta.attrs, attrs);
        }
    }

    #[test]
    fn network_round_trip() {
        let spec = NetSpec {
            name: "demo-main".into(),
            uuid: None,
            forward: Forward::Open,
            bridge: "cf-12345678".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            prefix: 24,
            range: (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 100)),
            forwarders: vec![Ipv4Addr::new(1, 2, 3, 4)],
            hosts: vec![Host {
                mac: "52:54:00:00:00:65".into(),
                name: "demo-central-0".into(),
                ip: Ipv4Addr::new(10, 0, 0, 101),
            }],
            metadata: metadata(&owner(), &Attrs::new()),
        };
        let r = read_network(&spec.to_xml()).expect("parses");
        assert_eq!(r.forward, "open");
        assert_eq!(r.bridge.as_deref(), Some("cf-12345678"));
        assert_eq!(r.ip, Some((Ipv4Addr::new(10, 0, 0, 1), 24)));
        assert_eq!(r.forwarders, vec!["1.2.3.4".to_string()]);
        assert_eq!(r.hosts, spec.hosts);
        assert_eq!(r.range, Some(spec.range));
        assert_eq!(r.meta.and_then(|m| m.owner), Some(owner()));
        let none = NetSpec {
            forward: Forward::None,
            ..spec
        };
        assert_eq!(
            read_network(&none.to_xml()).expect("parses").forward,
            "none"
        );
    }

    #[test]
    fn objects_without_our_metadata_have_no_owner() {
        let r = read_domain("<domain><name>x</name></domain>").expect("parses");
        assert_eq!(r.meta, None);
        assert_eq!(
            mac_for(Ipv4Addr::new(192, 168, 126, 101)),
            "52:54:00:a8:7e:65"
        );
        assert_eq!(
            read_volume(
                "<volume><capacity unit='bytes'>1024</capacity><target><format type='qcow2'/></target></volume>"
            ),
            Some(("qcow2".into(), 1024))
        );
    }
}
