//! The blocking libvirt operations behind the provider: the connection, listing every
//! domain and network once, reading them back as objects and finding them by
//! ownership; networks and machines have their own modules. Every function here
//! blocks; the provider runs them on blocking threads.

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

mod machine;
mod network;

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

    /// The uid and gid QEMU runs as, when clusterform runs as root and QEMU as another
    /// user (libvirt's system instance): `user`/`group` of `/etc/libvirt/qemu.conf`,
    /// else Debian's `libvirt-qemu`. None when not root, or when that user is unknown
    /// here (the file then stays root's, 0600).
    fn qemu_owner(&self) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
            return None;
        }
        let conf = std::fs::read_to_string("/etc/libvirt/qemu.conf").unwrap_or_default();
        let setting = |key: &str| {
            conf.lines().find_map(|l| {
                let (k, v) = l.trim().split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let user = setting("user").unwrap_or_else(|| "libvirt-qemu".to_string());
        let field = |file: &str, name: &str, at: usize| -> Option<u32> {
            let text = std::fs::read_to_string(file).ok()?;
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&name)).then(|| f.get(at)?.parse().ok())?
            })
        };
        let uid = field("/etc/passwd", user.trim_start_matches('+'), 2)
            .or_else(|| user.trim_start_matches('+').parse().ok())?;
        let gid = match setting("group") {
            Some(g) => field("/etc/group", g.trim_start_matches('+'), 2)
                .or_else(|| g.trim_start_matches('+').parse().ok())?,
            None => field("/etc/passwd", user.trim_start_matches('+'), 3)?,
        };
        Some((uid, gid))
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
            network::forwarders(&["192.168.1.1".into(), "1.1.1.1".into()], "192.168.1.1"),
            vec![Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}
