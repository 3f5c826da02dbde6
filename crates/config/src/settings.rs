//! The settings tables: `[cluster]`, `[state]`, `[provider.NAME]`, and the blueprint
//! inputs `[network]`, `[central]`, `[workers]`, `[vm]`, each read with defaults and
//! checks (Butane files are read and translated here, once per table).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterform_core::{ProviderSchema, UpdatePolicy};
use ipnet::Ipv4Net;
use toml::de::DeTable;

use crate::reader::{Cx, expected_one_of, span, tick_list};
use crate::{ClusterSettings, EtcdState, ProviderBlock, Span, StateSettings, diagnostic_at};

/// Every blueprint name the format knows.
pub(crate) const BLUEPRINTS: &[&str] = &[
    "dev-vm",
    "small",
    "dev-test",
    "central-services",
    "large-scale",
];
/// Flatcar channels.
pub(crate) const CHANNELS: &[&str] = &["stable", "beta", "alpha", "lts"];
/// Default Flatcar channel.
pub(crate) const DEFAULT_CHANNEL: &str = "stable";
/// Default `[state] path` of `cluster.toml`, relative to the cluster file's folder; other
/// cluster files get `.clusterform-<file stem>` (see [`default_state_dir`]).
pub const DEFAULT_STATE_PATH: &str = ".clusterform";

/// The default state folder of the cluster file at `file`: `.clusterform` beside
/// `cluster.toml`, `.clusterform-<stem>` beside any other file (`ec2.toml` ->
/// `.clusterform-ec2`), so that two cluster files in one folder never share a state.
pub fn default_state_dir(file: &Path) -> std::path::PathBuf {
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("cluster");
    let name = file.file_name().and_then(|s| s.to_str()).unwrap_or("");
    if name == "cluster.toml" {
        dir.join(DEFAULT_STATE_PATH)
    } else {
        dir.join(format!("{DEFAULT_STATE_PATH}-{stem}"))
    }
}
/// Default `[state] prefix` for etcd: this, then `/<cluster name>`.
pub(crate) const DEFAULT_ETCD_PREFIX: &str = "/clusterform";
/// Default `[state] lock_ttl` for etcd.
pub(crate) const DEFAULT_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// `[state]` keys of the etcd backend.
pub const ETCD_STATE_KEYS: &[&str] = &[
    "endpoints",
    "prefix",
    "ca_file",
    "cert_file",
    "key_file",
    "lock_ttl",
];
/// Default `[state] endpoints` for etcd (etcdctl's own default).
pub(crate) const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default `[network] cidr`.
pub(crate) const DEFAULT_CIDR: &str = "10.0.0.0/16";
/// Default offset of the first central address from the network address.
pub(crate) const DEFAULT_FIRST_ADDRESS_OFFSET: u32 = 101;

/// `[cluster]` plus the spans later steps point at.
pub(crate) struct Cluster {
    pub(crate) settings: ClusterSettings,
    /// The `[cluster]` header.
    pub(crate) span: Option<Span>,
    /// The `blueprint` value.
    pub(crate) blueprint_span: Option<Span>,
}

fn valid_cluster_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 40
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The names of the providers this build has.
pub(crate) fn provider_names(schemas: &[ProviderSchema]) -> Vec<&str> {
    schemas.iter().map(|s| s.provider.as_str()).collect()
}

/// Read `[cluster]`.
pub(crate) fn cluster(cx: &mut Cx<'_>, doc: &DeTable<'_>, schemas: &[ProviderSchema]) -> Cluster {
    const SECTION: &str = "`[cluster]`";
    const KEYS: &[&str] = &[
        "name",
        "blueprint",
        "provider",
        "channel",
        "ssh_authorized_keys",
        "expires_after",
    ];
    let mut settings = ClusterSettings {
        name: String::new(),
        blueprint: None,
        provider: None,
        channel: DEFAULT_CHANNEL.to_string(),
        ssh_authorized_keys: Vec::new(),
        expires_after: None,
    };
    let Some((key, node)) = doc.get_key_value("cluster") else {
        cx.error(
            Some(Span { offset: 0, len: 0 }),
            "the file has no `[cluster]` table",
            "no `[cluster]`",
            Some("add `[cluster]` with at least `name = \"demo\"`; see docs/CONFIG.md".to_string()),
        );
        return Cluster {
            settings,
            span: None,
            blueprint_span: None,
        };
    };
    let header = cx.table_span(key, node);
    let Some(t) = cx.as_table("cluster", "the file", node) else {
        return Cluster {
            settings,
            span: Some(header),
            blueprint_span: None,
        };
    };
    cx.check_keys(t, KEYS, SECTION);

    match t.get("name") {
        None => cx.error(
            Some(header),
            "`[cluster]` has no `name`",
            "missing `name`",
            Some("add `name = \"demo\"`: a-z, 0-9 and `-`, starting with a letter, at most 40 characters".to_string()),
        ),
        Some(node) => {
            if let Some(name) = cx.str_of("name", SECTION, node) {
                if !valid_cluster_name(name) {
                    cx.error(
                        Some(span(node.span())),
                        format!("`{name}` is not a valid cluster name"),
                        "invalid name",
                        Some("use a-z, 0-9 and `-`, starting with a letter, at most 40 characters (it goes into every name and tag)".to_string()),
                    );
                }
                settings.name = name.to_string();
            }
        }
    }

    let mut blueprint_span = None;
    if let Some((bp, at)) = cx.get_str(t, "blueprint", SECTION) {
        blueprint_span = Some(at);
        if !BLUEPRINTS.contains(&bp) {
            cx.error(
                Some(at),
                format!("unknown blueprint `{bp}`"),
                "unknown blueprint",
                Some(format!(
                    "expected one of {}, or leave `blueprint` out and write [resource.*] tables",
                    tick_list(BLUEPRINTS)
                )),
            );
        }
        settings.blueprint = Some(bp.to_string());
    }

    if let Some((p, at)) = cx.get_str(t, "provider", SECTION) {
        if !schemas.iter().any(|s| s.provider == p) {
            unknown_provider(cx, p, at, schemas);
        }
        settings.provider = Some(p.to_string());
    }

    if let Some((c, at)) = cx.get_str(t, "channel", SECTION) {
        if CHANNELS.contains(&c) {
            settings.channel = c.to_string();
        } else {
            cx.error(
                Some(at),
                format!("unknown Flatcar channel `{c}`"),
                "unknown channel",
                Some(expected_one_of(CHANNELS)),
            );
        }
    }

    if let Some(keys) = cx.get_str_list(t, "ssh_authorized_keys", SECTION) {
        settings.ssh_authorized_keys = keys.into_iter().map(|(k, _)| k.to_string()).collect();
    }

    if let Some((e, at)) = cx.get_str(t, "expires_after", SECTION) {
        match humantime::parse_duration(e) {
            Ok(d) if d.is_zero() => cx.error(
                Some(at),
                format!(
                    "`expires_after = \"{e}\"` is zero: the cluster would expire as it is made"
                ),
                "zero",
                Some(
                    "write a duration like \"8h\", or leave `expires_after` out for no expiry"
                        .to_string(),
                ),
            ),
            Ok(d) => settings.expires_after = Some(d),
            Err(err) => cx.error(
                Some(at),
                format!("`{e}` is not a duration: {err}"),
                "not a duration",
                Some("write a duration like \"8h\", \"30m\" or \"2days\"".to_string()),
            ),
        }
    }

    Cluster {
        settings,
        span: Some(header),
        blueprint_span,
    }
}

/// Report a provider name this build does not have.
pub(crate) fn unknown_provider(cx: &mut Cx<'_>, name: &str, at: Span, schemas: &[ProviderSchema]) {
    let names = provider_names(schemas);
    cx.error(
        Some(at),
        format!("unknown provider `{name}`"),
        "unknown provider",
        Some(format!(
            "this build has {}; a plugin for `{name}` is found as an executable `clusterform-provider-{name}` beside clusterform or on PATH, or named by `[provider.{name}] plugin = \"PATH\"`",
            if names.is_empty() {
                "no providers".to_string()
            } else {
                tick_list(&names)
            }
        )),
    );
}

/// Read `[state]`; `dir` is the cluster file's folder.
pub(crate) fn state(
    cx: &mut Cx<'_>,
    doc: &DeTable<'_>,
    file: &Path,
    cluster: &str,
) -> StateSettings {
    const SECTION: &str = "`[state]`";
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let default_local = || StateSettings::Local {
        path: default_state_dir(file),
    };
    let Some(node) = doc.get("state") else {
        return default_local();
    };
    let Some(t) = cx.as_table("state", "the file", node) else {
        return default_local();
    };
    let known: Vec<&str> = ["backend", "path", "encryption"]
        .into_iter()
        .chain(ETCD_STATE_KEYS.iter().copied())
        .collect();
    cx.check_keys(t, &known, SECTION);
    let backend = match cx.get_str(t, "backend", SECTION) {
        None => "local",
        Some(("local", _)) => "local",
        Some(("etcd", _)) => "etcd",
        Some((other, at)) => {
            cx.error(
                Some(at),
                format!("unknown state backend `{other}`"),
                "unknown backend",
                Some(expected_one_of(&["local", "etcd"])),
            );
            return default_local();
        }
    };
    let misplaced: &[&str] = if backend == "local" {
        ETCD_STATE_KEYS
    } else {
        &["path"]
    };
    for key in misplaced {
        if let Some((k, _)) = t.get_key_value(*key) {
            let other = if backend == "local" { "etcd" } else { "local" };
            cx.error(
                Some(span(k.span())),
                format!("`{key}` is a setting of `backend = \"{other}\"`, not `{backend}`"),
                "does not fit the backend",
                Some(format!("remove `{key}`, or set `backend = \"{other}\"`")),
            );
        }
    }
    if backend == "local" {
        let path = match cx.get_str(t, "path", SECTION) {
            Some((p, _)) => dir.join(p),
            None => default_state_dir(file),
        };
        StateSettings::Local { path }
    } else {
        let endpoints = match cx.get_str_list(t, "endpoints", SECTION) {
            Some(list) if list.is_empty() => {
                if let Some(n) = t.get("endpoints") {
                    cx.error(
                        Some(span(n.span())),
                        "`endpoints` is empty",
                        "no endpoints",
                        Some(format!(
                            "name at least one etcd client URL, like \"{DEFAULT_ETCD_ENDPOINT}\""
                        )),
                    );
                }
                Vec::new()
            }
            Some(list) => list.into_iter().map(|(e, _)| e.to_string()).collect(),
            None => vec![DEFAULT_ETCD_ENDPOINT.to_string()],
        };
        for (e, at) in cx.get_str_list(t, "endpoints", SECTION).unwrap_or_default() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                cx.error(
                    Some(at),
                    format!("`{e}` is not an etcd client URL"),
                    "not http:// or https://",
                    Some("write it like \"https://etcd.example:2379\"".to_string()),
                );
            }
        }
        let prefix = match cx.get_str(t, "prefix", SECTION) {
            None => format!("{DEFAULT_ETCD_PREFIX}/{cluster}"),
            Some((p, at)) => {
                if !p.starts_with('/') || p.trim_end_matches('/').is_empty() {
                    cx.error(
                        Some(at),
                        format!("`prefix = \"{p}\"` is not a key prefix"),
                        "not /something",
                        Some(format!(
                            "write a prefix starting with `/`, like \"{DEFAULT_ETCD_PREFIX}/{cluster}\""
                        )),
                    );
                }
                p.trim_end_matches('/').to_string()
            }
        };
        let path_of =
            |cx: &mut Cx<'_>, key: &str| cx.get_str(t, key, SECTION).map(|(p, _)| dir.join(p));
        let ca_file = path_of(cx, "ca_file");
        let cert_file = path_of(cx, "cert_file");
        let key_file = path_of(cx, "key_file");
        if cert_file.is_some() != key_file.is_some() {
            let (given, missing) = if cert_file.is_some() {
                ("cert_file", "key_file")
            } else {
                ("key_file", "cert_file")
            };
            if let Some((k, _)) = t.get_key_value(given) {
                cx.error(
                    Some(span(k.span())),
                    format!("`{given}` needs `{missing}`"),
                    "half a client certificate",
                    Some(format!("set `{missing}` too, or remove `{given}`")),
                );
            }
        }
        let lock_ttl = match cx.get_str(t, "lock_ttl", SECTION) {
            None => DEFAULT_LOCK_TTL,
            Some((v, at)) => match humantime::parse_duration(v) {
                Ok(d) if d >= std::time::Duration::from_secs(2) => d,
                _ => {
                    cx.error(
                        Some(at),
                        format!("`lock_ttl = \"{v}\"` is not a duration of 2 s or more"),
                        "bad duration",
                        Some("write a duration like \"30s\" (the default)".to_string()),
                    );
                    DEFAULT_LOCK_TTL
                }
            },
        };
        StateSettings::Etcd(EtcdState {
            endpoints,
            prefix,
            ca_file,
            cert_file,
            key_file,
            lock_ttl,
        })
    }
}

/// `[state] encryption`: the key file the state's secrets are sealed with, relative to
/// the cluster file's folder.
pub(crate) fn state_encryption(cx: &mut Cx<'_>, doc: &DeTable<'_>, file: &Path) -> Option<PathBuf> {
    let t = doc.get("state")?.get_ref().as_table()?;
    let (p, at) = cx.get_str(t, "encryption", "`[state]`")?;
    if p.trim().is_empty() {
        cx.error(
            Some(at),
            "`encryption` in `[state]` is empty",
            "no key file",
            Some("name the key file (64 hex digits, mode 0600), or leave `encryption` out for the key clusterform makes under your config folder".to_string()),
        );
        return None;
    }
    Some(
        file.parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join(p),
    )
}

/// Read `[provider.NAME]` tables.
pub(crate) fn providers(
    cx: &mut Cx<'_>,
    doc: &DeTable<'_>,
    schemas: &[ProviderSchema],
) -> BTreeMap<String, ProviderBlock> {
    let mut out = BTreeMap::new();
    let Some(node) = doc.get("provider") else {
        return out;
    };
    let Some(t) = cx.as_table("provider", "the file", node) else {
        return out;
    };
    for (k, v) in t.iter() {
        let name = k.get_ref().as_ref();
        if !schemas.iter().any(|s| s.provider == name) {
            unknown_provider(cx, name, span(k.span()), schemas);
            continue;
        }
        let section = format!("`[provider.{name}]`");
        let Some(table) = cx.as_table(name, &section, v) else {
            continue;
        };
        let config = cx.table_to_json(table);
        let at = cx.table_span(k, v);
        out.insert(
            name.to_string(),
            ProviderBlock {
                name: name.to_string(),
                config,
                span: at,
            },
        );
    }
    out
}

/// `[network]`, with defaults filled in.
pub(crate) struct Network {
    /// The table's header, when the table is there.
    pub(crate) span: Option<Span>,
    /// The cidr as written (or the default).
    pub(crate) cidr_text: String,
    /// The parsed cidr, truncated to its network address.
    pub(crate) cidr: Ipv4Net,
    /// The gateway.
    pub(crate) gateway: Ipv4Addr,
    /// DNS servers.
    pub(crate) dns: Vec<String>,
    /// `vxlan` (Metal: the VLAN's number, 2 to 3999), when written: (value if valid, span).
    pub(crate) vxlan: Option<(Option<u32>, Span)>,
    /// False when a value was wrong (already reported).
    pub(crate) ok: bool,
}

/// The default network, `10.0.0.0/16`.
fn default_net() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap_or_default()
}

/// The first host address of `net`.
fn first_host(net: Ipv4Net) -> Ipv4Addr {
    net.hosts().next().unwrap_or(net.network())
}

/// Read `[network]`.
pub(crate) fn network(cx: &mut Cx<'_>, doc: &DeTable<'_>) -> Network {
    const SECTION: &str = "`[network]`";
    let mut net = Network {
        span: None,
        cidr_text: DEFAULT_CIDR.to_string(),
        cidr: default_net(),
        gateway: first_host(default_net()),
        dns: Vec::new(),
        vxlan: None,
        ok: true,
    };
    let Some((key, node)) = doc.get_key_value("network") else {
        return net;
    };
    net.span = Some(cx.table_span(key, node));
    let Some(t) = cx.as_table("network", "the file", node) else {
        net.ok = false;
        return net;
    };
    cx.check_keys(t, &["cidr", "gateway", "dns", "vxlan"], SECTION);
    if let Some((c, at)) = cx.get_str(t, "cidr", SECTION) {
        match c.parse::<Ipv4Net>() {
            Ok(n) if n.addr() != n.network() => {
                net.ok = false;
                cx.error(
                    Some(at),
                    format!("`{c}` has host bits set: the network is {}", n.trunc()),
                    "host bits set",
                    Some(format!(
                        "write the network address, \"{}\" (the address before `/` must be the first of the range)",
                        n.trunc()
                    )),
                );
            }
            Ok(n) => {
                net.cidr_text = c.to_string();
                net.cidr = n.trunc();
                net.gateway = first_host(net.cidr);
            }
            Err(_) => {
                net.ok = false;
                cx.error(
                    Some(at),
                    format!("`{c}` is not an IPv4 network"),
                    "not an IPv4 cidr",
                    Some("write it as address/prefix, like \"10.0.0.0/16\"".to_string()),
                );
            }
        }
    } else if t.contains_key("cidr") {
        net.ok = false;
    }
    if let Some((g, at)) = cx.get_str(t, "gateway", SECTION) {
        match g.parse::<Ipv4Addr>() {
            Ok(ip) if net.ok && !net.cidr.contains(&ip) => {
                net.ok = false;
                cx.error(
                    Some(at),
                    format!("gateway `{ip}` is outside the network `{}`", net.cidr_text),
                    "outside the network",
                    Some(format!(
                        "pick an address in {}, or leave `gateway` out for {}",
                        net.cidr,
                        first_host(net.cidr)
                    )),
                );
            }
            Ok(ip) => net.gateway = ip,
            Err(_) => {
                net.ok = false;
                cx.error(
                    Some(at),
                    format!("`{g}` is not an IPv4 address"),
                    "not an IPv4 address",
                    Some("write it like \"10.0.0.1\"".to_string()),
                );
            }
        }
    }
    if let Some(dns) = cx.get_str_list(t, "dns", SECTION) {
        for (d, at) in &dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                cx.error(
                    Some(*at),
                    format!("`{d}` is not an IP address"),
                    "not an IP address",
                    Some("list DNS servers by address, like \"1.1.1.1\"".to_string()),
                );
            }
        }
        net.dns = dns.into_iter().map(|(d, _)| d.to_string()).collect();
    }
    if let Some((v, at)) = cx.get_count(t, "vxlan", SECTION) {
        let v = v.filter(|v| {
            let fits = VXLAN_RANGE.contains(v);
            if !fits {
                cx.error(
                    Some(at),
                    format!("`vxlan` in {SECTION} must be 2 to 3999, not {v}"),
                    "not a VLAN number",
                    Some("pick a VLAN number from 2 to 3999 that no other VLAN of the project uses in the metro".to_string()),
                );
            }
            fits
        });
        net.vxlan = Some((v, at));
    }
    net
}

/// The VLAN numbers Metal accepts.
pub(crate) const VXLAN_RANGE: std::ops::RangeInclusive<u32> = 2..=3999;

/// `[central]`, `[workers]` or `[vm]`.
pub(crate) struct Group {
    /// The table's name: `central`, `workers` or `vm`.
    pub(crate) table: &'static str,
    /// The table's header, when the table is there.
    pub(crate) span: Option<Span>,
    /// `count` as written: (value if valid, its span).
    pub(crate) count: Option<(Option<u32>, Span)>,
    /// `size`.
    pub(crate) size: Option<String>,
    /// `zones` (None when absent); `[vm] zone` as a one-entry list.
    pub(crate) zones: Option<Vec<String>>,
    /// The span of the `zones` value.
    pub(crate) zones_span: Option<Span>,
    /// `[central] first_address`, `[workers] first_address` (Metal) or `[vm] address`:
    /// the address if valid, and its span.
    pub(crate) first_address: Option<(Option<Ipv4Addr>, Span)>,
    /// `protect`.
    pub(crate) protect: bool,
    /// The `butane` files, read and translated once for every machine of the table.
    pub(crate) butane: Vec<clusterform_ignition::Config>,
    /// Each of those files as named in diagnostics, with its text, to point into when a
    /// machine's merged config breaks an Ignition rule.
    pub(crate) butane_sources: Vec<(PathBuf, Arc<str>)>,
    /// The span of the `butane` value.
    pub(crate) butane_span: Option<Span>,
    /// `[central]`: how day-2 changes reach the etcd members.
    pub(crate) etcd: crate::EtcdSettings,
    /// `[workers] ipxe_script_url` (Metal): PXE-boot from this iPXE script, with its span.
    pub(crate) ipxe_script_url: Option<(String, Span)>,
    /// `[workers] always_pxe` (Metal): PXE-boot on every boot.
    pub(crate) always_pxe: Option<bool>,
    /// `[central] etcd_tls` as written, for errors about the CA.
    pub(crate) etcd_tls_span: Option<Span>,
}

impl Group {
    /// The count, `default` when absent, None when invalid.
    pub(crate) fn count_or(&self, default: u32) -> Option<u32> {
        match self.count {
            None => Some(default),
            Some((c, _)) => c,
        }
    }

    /// The key holding the (first) static address.
    pub(crate) fn address_key(&self) -> &'static str {
        if self.table == "vm" {
            "address"
        } else {
            "first_address"
        }
    }
}

/// Where the cluster file is: Butane files are read relative to `dir` (absolute), only
/// from inside `root`, and named in diagnostics relative to `shown_dir` (the folder as
/// the user wrote it).
pub(crate) struct Dirs<'a> {
    /// The folder files may be read from: `--files-dir`, else the cluster file's folder.
    pub(crate) root: &'a Path,
    /// The cluster file's folder, absolute.
    pub(crate) dir: &'a Path,
    /// The cluster file's folder as written (may be empty).
    pub(crate) shown_dir: &'a Path,
}

/// Read `[central]`, `[workers]` or `[vm]` (`table`); Butane files are read and
/// translated here, once per table.
pub(crate) fn group(
    cx: &mut Cx<'_>,
    doc: &DeTable<'_>,
    table: &'static str,
    dirs: &Dirs<'_>,
) -> Group {
    let mut g = Group {
        table,
        span: None,
        count: None,
        size: None,
        zones: None,
        zones_span: None,
        first_address: None,
        protect: false,
        butane: Vec::new(),
        butane_sources: Vec::new(),
        butane_span: None,
        etcd: crate::EtcdSettings::default(),
        ipxe_script_url: None,
        always_pxe: None,
        etcd_tls_span: None,
    };
    let Some((key, node)) = doc.get_key_value(table) else {
        return g;
    };
    g.span = Some(cx.table_span(key, node));
    let section = format!("`[{table}]`");
    let Some(t) = cx.as_table(table, "the file", node) else {
        return g;
    };
    let keys: &[&str] = match table {
        "central" => &[
            "count",
            "size",
            "zones",
            "first_address",
            "protect",
            "butane",
            "update",
            "etcd_endpoints",
            "etcd_via",
            "etcd_tls",
        ],
        "vm" => &["size", "zone", "address", "protect", "butane"],
        _ => &[
            "count",
            "size",
            "zones",
            "first_address",
            "protect",
            "butane",
            "ipxe_script_url",
            "always_pxe",
        ],
    };
    cx.check_keys(t, keys, &section);
    if table != "vm" {
        g.count = cx.get_count(t, "count", &section);
    }
    g.size = cx.get_str(t, "size", &section).map(|(s, at)| {
        if s.trim().is_empty() {
            cx.error(
                Some(at),
                format!("`size` in {section} is empty"),
                "empty",
                Some(
                    "name the machine type, like \"2cpu-4gb\" (libvirt) or \"t3.medium\" (ec2)"
                        .to_string(),
                ),
            );
        }
        s.to_string()
    });
    if table == "vm" {
        if let Some((z, at)) = cx.get_str(t, "zone", &section) {
            if z.trim().is_empty() {
                cx.error(
                    Some(at),
                    "`zone` in `[vm]` is empty",
                    "empty",
                    Some("name the zone, or leave `zone` out".to_string()),
                );
            }
            g.zones = Some(vec![z.to_string()]);
            g.zones_span = Some(at);
        }
    } else if let Some(zones) = cx.get_str_list(t, "zones", &section) {
        let at = t.get("zones").map(|n| span(n.span()));
        g.zones_span = at;
        if zones.is_empty() {
            cx.error(
                at,
                "`zones` is empty",
                "no zones",
                Some("name at least one zone, or leave `zones` out".to_string()),
            );
        } else {
            for (z, at) in &zones {
                if z.trim().is_empty() {
                    cx.error(
                        Some(*at),
                        format!("an entry of `zones` in {section} is empty"),
                        "empty zone",
                        Some("name each zone, like \"eu-west-1a\"".to_string()),
                    );
                }
            }
            g.zones = Some(zones.into_iter().map(|(z, _)| z.to_string()).collect());
        }
    }
    let address_key = g.address_key();
    if let Some((a, at)) = cx.get_str(t, address_key, &section) {
        let ip = a.parse::<Ipv4Addr>().ok();
        if ip.is_none() {
            cx.error(
                Some(at),
                format!("`{a}` is not an IPv4 address"),
                "not an IPv4 address",
                Some(if table == "vm" {
                    "write it like \"10.0.0.50\", or leave `address` out for DHCP".to_string()
                } else {
                    "write it like \"10.0.1.101\"".to_string()
                }),
            );
        }
        g.first_address = Some((ip, at));
    }
    g.protect = cx.get_bool(t, "protect", &section).unwrap_or(false);
    if table == "workers" {
        if let Some((url, at)) = cx.get_str(t, "ipxe_script_url", &section) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                cx.error(
                    Some(at),
                    format!("`{url}` is not an http(s) URL"),
                    "not an iPXE script URL",
                    Some("write the URL of the iPXE script the workers boot, like \"https://boot.example.net/flatcar.ipxe\"".to_string()),
                );
            }
            g.ipxe_script_url = Some((url.to_string(), at));
        }
        g.always_pxe = cx.get_bool(t, "always_pxe", &section);
    }
    if table == "central" {
        g.etcd = etcd_settings(cx, t, &section);
        g.etcd_tls_span = t.get("etcd_tls").map(|n| span(n.span()));
    }
    if let Some(files) = cx.get_str_list(t, "butane", &section) {
        g.butane_span = t.get("butane").map(|n| span(n.span()));
        for (f, at) in files {
            if let Some((config, text)) = read_butane(cx, dirs, f, at) {
                g.butane.push(config);
                g.butane_sources.push((dirs.shown_dir.join(f), text));
            }
        }
    }
    g
}

/// The day-2 keys of `[central]`: `update`, `etcd_endpoints`, `etcd_via`.
fn etcd_settings(cx: &mut Cx<'_>, t: &DeTable<'_>, section: &str) -> crate::EtcdSettings {
    let mut e = crate::EtcdSettings::default();
    if let Some((u, at)) = cx.get_str(t, "update", section) {
        match UpdatePolicy::from_name(u) {
            Some(p) => e.update = p,
            None => cx.error(
                Some(at),
                format!("unknown update policy `{u}`"),
                "unknown policy",
                Some(format!(
                    "{}: `rolling` replaces one etcd member at a time, `manual` lists stale members and leaves them, `all-at-once` loses the etcd data (needs --allow-data-loss)",
                    expected_one_of(UPDATE_POLICIES)
                )),
            ),
        }
    }
    if let Some(list) = cx.get_str_list(t, "etcd_endpoints", section) {
        let mut ok = Vec::with_capacity(list.len());
        for (url, at) in &list {
            if valid_client_url(url) {
                ok.push((*url).to_string());
            } else {
                cx.error(
                    Some(*at),
                    format!("`{url}` is not an etcd client URL"),
                    "not an http(s) URL",
                    Some(
                        "write each like \"http://10.0.1.101:2379\" (scheme, host and port)"
                            .to_string(),
                    ),
                );
            }
        }
        if list.is_empty() {
            let at = t.get("etcd_endpoints").map(|n| span(n.span()));
            cx.error(
                at,
                "`etcd_endpoints` is empty",
                "no endpoints",
                Some("name the client URLs to reach etcd at, or leave the key out to use the central machines' addresses".to_string()),
            );
        }
        e.endpoints = Some(ok);
    }
    if let Some(tls) = cx.get_bool(t, "etcd_tls", section) {
        e.tls = tls;
    }
    if let Some((via, at)) = cx.get_str(t, "etcd_via", section) {
        if valid_ssh_via(via) {
            e.via = Some(via.to_string());
        } else {
            cx.error(
                Some(at),
                format!("`{via}` is not an SSH destination"),
                "expected ssh://USER@HOST[:PORT]",
                Some("write it like \"ssh://core@bastion.example.com\": clusterform runs the system `ssh` to that machine and reaches etcd through it".to_string()),
            );
        }
    }
    e
}

/// The names of `[central] update`.
const UPDATE_POLICIES: &[&str] = &["rolling", "manual", "all-at-once"];

/// `http://HOST:PORT` or `https://HOST:PORT` (a path is allowed, nothing else).
fn valid_client_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains(char::is_whitespace)
        && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// `ssh://USER@HOST` or `ssh://USER@HOST:PORT`.
pub(crate) fn valid_ssh_via(via: &str) -> bool {
    let Some(rest) = via.strip_prefix("ssh://") else {
        return false;
    };
    let Some((user, host_port)) = rest.split_once('@') else {
        return false;
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') && !h.contains(':') => (h, Some(p)),
        _ => (host_port, None),
    };
    let word =
        |s: &str| !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || c == '/' || c == '@');
    word(user) && word(host) && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Read and translate one Butane file, returning it with its text; problems are reported
/// (a file that is missing, outside the files folder, not a regular file, too large or
/// not UTF-8 at the `butane` entry; a bad file inside the Butane file). The file is read
/// only through [`clusterform_ignition::read_confined`], and nothing of a refused file is
/// shown.
fn read_butane(
    cx: &mut Cx<'_>,
    dirs: &Dirs<'_>,
    file: &str,
    at: Span,
) -> Option<(clusterform_ignition::Config, Arc<str>)> {
    let read = match clusterform_ignition::read_confined(
        dirs.root,
        dirs.dir,
        Path::new(file),
        clusterform_ignition::BUTANE_LIMIT,
    ) {
        Ok(read) => read,
        Err(e) => {
            let (label, help) = butane_file_help(dirs, &e);
            cx.error(
                Some(at),
                format!("Butane file `{file}` {e}"),
                label,
                Some(help),
            );
            return None;
        }
    };
    let text = match String::from_utf8(read.bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            cx.error(
                Some(at),
                format!(
                    "Butane file `{file}` is not UTF-8 text (an invalid byte at its line {line}, column {column})"
                ),
                "not UTF-8",
                Some("save the Butane file as UTF-8 text".to_string()),
            );
            return None;
        }
    };
    // The path as the user wrote it names the file in diagnostics; `contents.local`
    // files are read from the folder the file really is in (symlinks resolved).
    let p: PathBuf = dirs.dir.join(file);
    let files_dir = read
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    match clusterform_ignition::parse_butane(&p, &text, &files_dir) {
        Ok(config) => Some((config, Arc::from(text))),
        Err(e) => {
            // The error is in the Butane file (a `contents.local` problem is located at
            // its `local:` key); the snippet shows the Butane file, never a refused one.
            let shown = dirs.shown_dir.join(file);
            let source: Arc<str> = Arc::from(text);
            let at = if e.line == 0 && e.offset.is_none() {
                None
            } else {
                let offset = e
                    .offset
                    .unwrap_or_else(|| offset_of(&source, e.line, e.column))
                    .min(source.len());
                let len = source
                    .get(offset..)
                    .and_then(|rest| rest.chars().next())
                    .filter(|c| *c != '\n')
                    .map_or(0, char::len_utf8);
                Some(Span { offset, len })
            };
            let mut d = diagnostic_at(
                &shown,
                &source,
                at,
                format!("in Butane file `{file}`: {}", e.message),
                "here".to_string(),
                Some(butane_help(e.help.as_ref())),
            );
            if e.line > 0 {
                d.line = e.line;
                d.column = e.column.max(1);
            }
            cx.diags.push(d);
            None
        }
    }
}

/// The label and help for a Butane file that was not read.
fn butane_file_help(
    dirs: &Dirs<'_>,
    e: &clusterform_ignition::FileError,
) -> (&'static str, String) {
    use clusterform_ignition::FileError;
    let flag = if dirs.root == dirs.dir {
        " (or pass `--files-dir DIR` naming a folder that holds both)"
    } else {
        ""
    };
    match e {
        FileError::Missing { .. } => (
            "file not found",
            "name a file relative to the folder of the cluster file".to_string(),
        ),
        FileError::Outside { root, .. } => (
            "outside the files folder",
            format!(
                "Butane files are read only from inside {} (symlinks resolved): move or copy the file there{flag}",
                root.display()
            ),
        ),
        FileError::NotRegular { .. } => (
            "not a regular file",
            "name a Butane file: folders, devices and FIFOs are not read".to_string(),
        ),
        FileError::TooLarge { .. } => (
            "file too large",
            format!(
                "Butane files may be at most {} MiB; split it, or move large contents into `contents.local` files",
                clusterform_ignition::BUTANE_LIMIT >> 20
            ),
        ),
        FileError::Root { .. } | FileError::Io(_) => (
            "unreadable",
            "make the file readable UTF-8 text".to_string(),
        ),
    }
}

/// The ButaneError's help, or a pointer to the accepted subset.
fn butane_help(help: Option<&String>) -> String {
    help.cloned().unwrap_or_else(|| {
        "clusterform reads Butane `variant: flatcar`, `version: 1.0.0`: systemd units (with dropins), storage files/directories/links and passwd users; see docs/CONFIG.md".to_string()
    })
}

/// The byte offset of 1-based `line` and `column` (in characters) in `source`.
fn offset_of(source: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col: usize = l
                .chars()
                .take(column.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return offset + col;
        }
        offset += l.len();
    }
    source.len()
}

/// Check that `node` (the `[network]`/`[central]`/`[workers]` table) is only used with a
/// blueprint.
pub(crate) fn needs_blueprint(cx: &mut Cx<'_>, table: &str, at: Option<Span>) {
    let example = if table == "vm" { "dev-vm" } else { "dev-test" };
    cx.error(
        at,
        format!("`[{table}]` needs `[cluster] blueprint`"),
        "no blueprint",
        Some(format!(
            "add `blueprint = \"{example}\"` to `[cluster]`, or remove `[{table}]` and write [resource.*] tables"
        )),
    );
}
