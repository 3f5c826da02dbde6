//! Blueprint expansion: the five cluster architectures (`dev-vm`, `small`, `dev-test`,
//! `central-services`, `large-scale`) into plain resources on `network.main`, with the
//! addresses each owns, the table each comes from, and every machine's rendered
//! Ignition config in `user_data`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use clusterform_core::{Address, Attrs, ProviderSchema, Resource};
use clusterform_ignition::role::EtcdTls;
use clusterform_ignition::{EtcdMember, MachineSpec, Platform, StaticNetwork, render};
use serde_json::Value;

use crate::Span;
use crate::reader::Cx;
use crate::resources::Count;
use crate::settings::{Cluster, DEFAULT_FIRST_ADDRESS_OFFSET, Group, Network, VXLAN_RANGE};

/// Metal workers' first static address (on the cluster VLAN, which has no DHCP): the
/// network's 201st host, clear of the central machines' (from the 101st).
const DEFAULT_WORKER_ADDRESS_OFFSET: u32 = 201;
use crate::zones::{ZoneLayout, zones_are_subnets};

/// A resource name the blueprint defines.
pub(crate) struct BlueprintDecl {
    /// Kind.
    pub(crate) kind: &'static str,
    /// Name (a zone's subnet is named after its zone).
    pub(crate) name: String,
    /// Instances.
    pub(crate) count: Count,
    /// The settings table: `[network]`, `[central]`, `[workers]`.
    pub(crate) table: &'static str,
}

/// What a blueprint expands into.
pub(crate) struct Expansion {
    /// The blueprint's name.
    pub(crate) blueprint: &'static str,
    /// The addresses it owns (even with zero instances).
    pub(crate) decls: Vec<BlueprintDecl>,
    /// Its resources, in order, each with the span to show for it.
    pub(crate) resources: Vec<(Resource, Span)>,
}

/// Attribute names the blueprints set, by kind, for the schema check.
const NETWORK_ATTRS: &[&str] = &["name", "cidr", "gateway", "dns"];
const MACHINE_ATTRS: &[&str] = &[
    "name",
    "role",
    "size",
    "zone",
    "address",
    "network",
    "etcd_endpoints",
    "ssh_authorized_keys",
    "channel",
    "protect",
    "user_data",
];

/// Check that the provider's schema has the kinds and attributes the blueprint sets.
fn check_schema(
    cx: &mut Cx<'_>,
    bp: Blueprint,
    provider: &str,
    schemas: &[ProviderSchema],
    at: Span,
) {
    let bp = bp.name();
    let Some(ps) = schemas.iter().find(|s| s.provider == provider) else {
        return; // reported with `[cluster] provider`
    };
    for (kind, attrs) in [("network", NETWORK_ATTRS), ("machine", MACHINE_ATTRS)] {
        let Some(ks) = ps.kind(kind) else {
            cx.error(
                Some(at),
                format!("provider `{provider}` has no `{kind}` kind, which blueprint `{bp}` needs"),
                "unsupported by the provider",
                Some("pick another `[cluster] provider`, or write [resource.*] tables".to_string()),
            );
            continue;
        };
        let missing: Vec<&str> = attrs
            .iter()
            .copied()
            .filter(|a| !ks.attr(a).is_some_and(|s| s.input))
            .collect();
        if !missing.is_empty() {
            cx.error(
                Some(at),
                format!(
                    "provider `{provider}`'s `{kind}` lacks {}, which blueprint `{bp}` sets",
                    crate::reader::tick_list(&missing)
                ),
                "unsupported by the provider",
                Some("pick another `[cluster] provider`, or write [resource.*] tables".to_string()),
            );
        }
    }
}

/// A cluster architecture (`[cluster] blueprint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blueprint {
    /// One VM with the Docker API socket, for a laptop.
    DevVm,
    /// 3-9 machines, etcd on all of them.
    Small,
    /// One etcd machine and any number of workers.
    DevTest,
    /// 3-5 central etcd machines and workers running etcd proxies.
    CentralServices,
    /// Central services spread over at least 2 zones, workers running etcd proxies.
    LargeScale,
}

/// How many central machines a blueprint allows.
struct CentralRule {
    min: u32,
    max: u32,
    default: u32,
}

impl Blueprint {
    /// The blueprint called `name` (None for names `[cluster]` reported as unknown).
    pub(crate) fn from_name(name: &str) -> Option<Blueprint> {
        Some(match name {
            "dev-vm" => Blueprint::DevVm,
            "small" => Blueprint::Small,
            "dev-test" => Blueprint::DevTest,
            "central-services" => Blueprint::CentralServices,
            "large-scale" => Blueprint::LargeScale,
            _ => return None,
        })
    }

    /// Its name in `[cluster] blueprint`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Blueprint::DevVm => "dev-vm",
            Blueprint::Small => "small",
            Blueprint::DevTest => "dev-test",
            Blueprint::CentralServices => "central-services",
            Blueprint::LargeScale => "large-scale",
        }
    }

    /// The central-count rule (None for dev-vm, which has no `[central]`).
    fn central_rule(self) -> Option<CentralRule> {
        match self {
            Blueprint::DevVm => None,
            Blueprint::Small => Some(CentralRule {
                min: 3,
                max: 9,
                default: 3,
            }),
            Blueprint::DevTest => Some(CentralRule {
                min: 1,
                max: 1,
                default: 1,
            }),
            Blueprint::CentralServices | Blueprint::LargeScale => Some(CentralRule {
                min: 3,
                max: 5,
                default: 3,
            }),
        }
    }

    /// Whether it has `[workers]`.
    fn has_workers(self) -> bool {
        matches!(
            self,
            Blueprint::DevTest | Blueprint::CentralServices | Blueprint::LargeScale
        )
    }

    /// Whether its workers run a local etcd proxy (else they talk to the etcd machine).
    fn workers_proxy(self) -> bool {
        matches!(self, Blueprint::CentralServices | Blueprint::LargeScale)
    }

    /// The message and help for a central count outside the rule.
    fn count_error(self, n: u32) -> (String, String) {
        match self {
            Blueprint::DevTest => (
                "dev-test has exactly one etcd machine".to_string(),
                "use blueprint `central-services` for 3-5".to_string(),
            ),
            Blueprint::Small => (
                format!(
                    "blueprint `small` runs 3 to 9 machines, not {n}: etcd on every machine needs at least 3 for a quorum; more than 9 is a central-services cluster"
                ),
                if n < 3 {
                    "set `count` to 3 or more, or use blueprint `dev-test` for a single etcd machine".to_string()
                } else {
                    "set `count` to 9 or less, or use blueprint `central-services`: 3-5 etcd machines and any number of workers".to_string()
                },
            ),
            Blueprint::CentralServices | Blueprint::LargeScale => (
                format!(
                    "blueprint `{}` runs 3 to 5 central machines, not {n}: etcd needs at least 3 for a quorum, and more members only slow every write down",
                    self.name()
                ),
                if n < 3 {
                    "set `count` to 3 or more, or use blueprint `dev-test` for a single etcd machine".to_string()
                } else {
                    "set `count` to 5 or less, and add capacity as `[workers]`".to_string()
                },
            ),
            Blueprint::DevVm => (String::new(), String::new()),
        }
    }
}

/// The settings tables a blueprint reads.
pub(crate) struct Inputs<'a> {
    /// `[cluster]`.
    pub(crate) cluster: &'a Cluster,
    /// `[network]`.
    pub(crate) network: &'a Network,
    /// `[central]`.
    pub(crate) central: &'a Group,
    /// `[workers]`.
    pub(crate) workers: &'a Group,
    /// `[vm]`.
    pub(crate) vm: &'a Group,
    /// The CA the etcd certificates are issued from, when `[central] etcd_tls` is on.
    pub(crate) ca: Option<&'a clusterform_pki::Ca>,
    /// A Metal cluster over 2 or more metros (see [`spans_metros`]).
    pub(crate) spread: bool,
    /// The addresses of the `ip_reservation`s the state records, by address.
    pub(crate) reserved: &'a BTreeMap<Address, Ipv4Addr>,
}

/// True for a Metal cluster whose `[central]` and `[workers]` zones (metros) name 2 or
/// more metros: no Metal VLAN spans metros, so its central machines take reserved public
/// addresses (`ip_reservation.central[i]`) and etcd runs over them, with TLS.
pub(crate) fn spans_metros(cluster: &Cluster, central: &Group, workers: &Group) -> bool {
    if cluster.settings.provider.as_deref() != Some("metal") || !runs_etcd(cluster) {
        return false;
    }
    let mut metros: Vec<&str> = [central, workers]
        .iter()
        .flat_map(|g| g.zones.iter().flatten().map(String::as_str))
        .collect();
    metros.sort_unstable();
    metros.dedup();
    metros.len() >= 2
}

/// True when the cluster's blueprint runs etcd on central machines (every blueprint but
/// `dev-vm`).
pub(crate) fn runs_etcd(cluster: &Cluster) -> bool {
    cluster
        .settings
        .blueprint
        .as_deref()
        .is_some_and(|b| Blueprint::from_name(b).is_some_and(|bp| bp.central_rule().is_some()))
}

/// The stand-in address of central machine `i` whose reserved address is not known yet
/// (TEST-NET-1, never routed): only in values the plan shows as `(known after apply)`.
fn stand_in(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, u8::try_from(i + 1).unwrap_or(254))
}

impl<'a> Inputs<'a> {
    /// The tables that describe machines of blueprint `bp`, in zone-layout order.
    fn machine_tables(&self, bp: Blueprint) -> Vec<&'a Group> {
        match bp {
            Blueprint::DevVm => vec![self.vm],
            Blueprint::Small => vec![self.central],
            _ => vec![self.central, self.workers],
        }
    }
}

/// The Ignition platform of a provider.
fn platform(provider: &str) -> Platform {
    match provider {
        "libvirt" => Platform::Libvirt,
        "ec2" => Platform::Ec2,
        "metal" => Platform::Metal,
        _ => Platform::Sim,
    }
}

/// `zones[i % len]`.
fn zone(zones: &Option<Vec<String>>, i: u32) -> Option<Value> {
    let z = zones.as_ref()?;
    let n = u32::try_from(z.len()).ok().filter(|n| *n > 0)?;
    z.get((i % n) as usize).map(|s| Value::String(s.clone()))
}

/// The etcd client URL of a member.
fn client_url(ip: Ipv4Addr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:2379")
}

/// A machine's TLS material: `issued` from `ca` (a member's or a client's certificate).
fn tls_of(
    cx: &mut Cx<'_>,
    ca: &clusterform_pki::Ca,
    issued: Result<clusterform_pki::Issued, clusterform_pki::PkiError>,
    address: &Address,
    at: Span,
) -> Option<EtcdTls> {
    match issued {
        Ok(i) => Some(EtcdTls {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: i.cert_pem,
            key_pem: i.key_pem.expose().to_string(),
        }),
        Err(e) => {
            cx.error(
                Some(at),
                format!("cannot issue the etcd certificate of `{address}`: {e}"),
                "certificate",
                Some("this is a bug in clusterform, not in your file; set `etcd_tls = false` in `[central]` meanwhile".to_string()),
            );
            None
        }
    }
}

/// The rendered Ignition config of `spec` with the table's Butane extras, as the
/// `user_data` attribute. The first machine's config of each table is checked against
/// Ignition's rules; a break (a Butane entry that clashes with the role template or
/// another Butane file) is reported once, in the Butane file that has the entry when one
/// does.
fn user_data(
    cx: &mut Cx<'_>,
    shared: &Shared,
    group: &Group,
    address: &Address,
    spec: &MachineSpec,
) -> Value {
    let config = render(spec, &group.butane);
    // The machines of one table differ only in values the role template writes from
    // checked settings (host name, addresses), never in which paths, units or links
    // their config has: checking the first machine of each table checks them all, and
    // a plan of 10,000 workers does not validate 10,000 configs.
    let first_of_table = shared.ignition_checked.borrow_mut().insert(group.table);
    let problems = if first_of_table {
        clusterform_ignition::validate::validate(&config)
    } else {
        Vec::new()
    };
    if let Some(p) = problems.first() {
        let message = format!(
            "the Ignition config of `{address}` (and every machine of `[{}]`) would be refused by Ignition: {}: {}",
            group.table, p.pointer, p.message
        );
        let help = format!(
            "{}; the config is the role template merged with the `butane` files of `[{}]`",
            p.help, group.table
        );
        // The Butane file with the entry, last file first (a later file wins a merge).
        let locate = |value: &str| {
            group.butane_sources.iter().rev().find_map(|(shown, text)| {
                clusterform_ignition::butane::locate(text, p.key, value, 0)
                    .map(|off| (shown, text, off))
            })
        };
        let found = locate(&p.value).or_else(|| p.related.as_deref().and_then(locate));
        match found {
            Some((shown, text, offset)) => {
                let len = text[offset..]
                    .find('\n')
                    .unwrap_or(text.len() - offset)
                    .max(1);
                let at = Some(Span {
                    offset,
                    len: len.min(text.len() - offset),
                });
                cx.diags.push(crate::diagnostic_at(
                    shown,
                    text,
                    at,
                    message,
                    "this entry".to_string(),
                    Some(help),
                ));
            }
            None => cx.error(
                group.butane_span.or(group.span),
                message,
                "refused by Ignition",
                Some(help),
            ),
        }
    }
    Value::String(clusterform_ignition::to_json(&config))
}

/// Report a settings table the blueprint does not use.
fn misfit(cx: &mut Cx<'_>, group: &Group, bp: Blueprint, why: &str, help: &str) {
    if let Some(at) = group.span {
        cx.error(
            Some(at),
            format!(
                "`[{}]` does not fit blueprint `{}`: {why}",
                group.table,
                bp.name()
            ),
            "not used by this blueprint",
            Some(help.to_string()),
        );
    }
}

/// Report a missing `size`.
fn missing_size(cx: &mut Cx<'_>, group: &Group, bp: Blueprint, fallback: Span) {
    let table = group.table;
    let (msg, at) = match group.span {
        Some(at) => (format!("`[{table}]` has no `size`"), at),
        None => (
            format!("blueprint `{}` needs `[{table}]` with a `size`", bp.name()),
            fallback,
        ),
    };
    cx.error(
        Some(at),
        msg,
        "missing `size`",
        Some(format!("add `size = \"...\"` to `[{table}]`: the machine type (instance type, Metal plan, libvirt \"2cpu-4gb\")")),
    );
}

/// The `n` static addresses of a group: `first_address` (or the default, the cidr's
/// 101st host) and up, each checked to be in the network. None when one is not (reported).
fn static_addresses(
    cx: &mut Cx<'_>,
    network: &Network,
    group: &Group,
    name: &str,
    n: u32,
    at_table: Span,
) -> Option<Vec<Ipv4Addr>> {
    let offset = if group.table == "workers" {
        DEFAULT_WORKER_ADDRESS_OFFSET
    } else {
        DEFAULT_FIRST_ADDRESS_OFFSET
    };
    let key = group.address_key();
    let (ip, at, explicit) = match group.first_address {
        Some((Some(ip), at)) => (ip, at, true),
        Some((None, _)) => return None, // reported
        None => {
            let a = u32::from(network.cidr.network()).checked_add(offset)?;
            (Ipv4Addr::from(a), at_table, false)
        }
    };
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let addr = u32::from(ip).checked_add(i).map(Ipv4Addr::from);
        match addr {
            Some(a) if !network.ok || network.cidr.contains(&a) => out.push(a),
            _ => {
                let shown =
                    addr.map_or_else(|| "beyond 255.255.255.255".to_string(), |a| a.to_string());
                let machine = if group.table == "vm" {
                    "machine.vm".to_string()
                } else {
                    format!("machine.{name}[{i}]")
                };
                let (message, help) = if explicit {
                    (
                        format!(
                            "address `{shown}` of `{machine}` is outside the network `{}`",
                            network.cidr_text
                        ),
                        if n > 1 {
                            format!(
                                "pick a `{key}` in {} with room for {n} machines",
                                network.cidr
                            )
                        } else {
                            format!("pick a `{key}` in {}", network.cidr)
                        },
                    )
                } else {
                    (
                        format!(
                            "the default first address `{shown}` is outside the network `{}`",
                            network.cidr_text
                        ),
                        format!(
                            "set `{key}` in `[{}]` to an address in {}",
                            group.table, network.cidr
                        ),
                    )
                };
                cx.error(Some(at), message, "outside the network", Some(help));
                return None;
            }
        }
    }
    Some(out)
}

/// Values every machine of the cluster shares, built once.
struct Shared {
    provider: String,
    cname: String,
    platform: Platform,
    ssh_keys: Vec<String>,
    ssh: Option<Value>,
    channel: Value,
    net_refs: BTreeMap<String, Address>,
    network: Option<NetTemplate>,
    /// One subnet per zone (ec2), None on a flat network.
    zones: Option<ZoneLayout>,
    /// The tables whose first machine's rendered config was checked against Ignition's
    /// rules (see [`user_data`]).
    ignition_checked: std::cell::RefCell<std::collections::BTreeSet<&'static str>>,
}

/// The static-network parts shared by every statically addressed machine.
#[derive(Clone)]
struct NetTemplate {
    prefix: u8,
    gateway: Ipv4Addr,
    dns: Vec<Ipv4Addr>,
    /// Metal: the cluster VLAN the static addresses live on.
    vlan: Option<u16>,
}

impl NetTemplate {
    fn at(&self, address: Ipv4Addr) -> StaticNetwork {
        StaticNetwork {
            address,
            prefix: self.prefix,
            gateway: self.gateway,
            dns: self.dns.clone(),
            vlan: self.vlan,
        }
    }
}

impl Shared {
    /// The attributes every machine gets.
    fn machine_attrs(&self, name: String, role: &Value, size: Option<&Value>) -> Attrs {
        let mut attrs = Attrs::new();
        attrs.insert("name".into(), Value::String(name));
        attrs.insert("role".into(), role.clone());
        if let Some(s) = size {
            attrs.insert("size".into(), s.clone());
        }
        if let Some(k) = &self.ssh {
            attrs.insert("ssh_authorized_keys".into(), k.clone());
        }
        attrs.insert("channel".into(), self.channel.clone());
        attrs
    }

    /// A machine spec with nothing but the shared parts.
    fn spec(&self, hostname: String) -> MachineSpec {
        MachineSpec {
            hostname,
            platform: self.platform,
            ssh_authorized_keys: self.ssh_keys.clone(),
            network: None,
            docker_tcp: false,
            etcd: None,
            etcd_proxy: None,
            etcd_endpoints: Vec::new(),
            tls: None,
        }
    }

    fn resource(&self, address: Address, attrs: Attrs, depends_on: Vec<Address>) -> Resource {
        Resource {
            address,
            provider: self.provider.clone(),
            attrs,
            refs: self.net_refs.clone(),
            depends_on,
            deferred: Vec::new(),
        }
    }
}

/// Expand blueprint `bp` into plain resources.
pub(crate) fn expand(
    cx: &mut Cx<'_>,
    bp: Blueprint,
    inputs: &Inputs<'_>,
    schemas: &[ProviderSchema],
) -> Expansion {
    let Inputs {
        cluster,
        network,
        central,
        workers,
        vm,
        ..
    } = *inputs;
    let fallback = cluster
        .blueprint_span
        .or(cluster.span)
        .unwrap_or(Span { offset: 0, len: 0 });
    let net_span = network.span.unwrap_or(fallback);
    let settings = &cluster.settings;
    let cname = settings.name.as_str();
    let name = bp.name();

    let provider = match &settings.provider {
        Some(p) => {
            check_schema(cx, bp, p, schemas, fallback);
            p.clone()
        }
        None => {
            let example = schemas.first().map_or("sim", |s| s.provider.as_str());
            cx.error(
                Some(fallback),
                format!("blueprint `{name}` needs `[cluster] provider`"),
                "which provider?",
                Some(format!("add `provider = \"{example}\"` to `[cluster]`")),
            );
            String::new()
        }
    };

    // Tables that do not fit the blueprint.
    match bp {
        Blueprint::DevVm => {
            let help = "describe the one machine in `[vm]` (size, zone, address, protect, butane); for etcd machines and workers use blueprint `dev-test`, `small` or `central-services`";
            misfit(cx, central, bp, "it makes one machine, `[vm]`", help);
            misfit(cx, workers, bp, "it makes one machine, `[vm]`", help);
        }
        _ => misfit(
            cx,
            vm,
            bp,
            "`[vm]` is for blueprint `dev-vm`",
            "describe the machines in `[central]` and `[workers]`, or set `blueprint = \"dev-vm\"` for a single VM",
        ),
    }
    if bp == Blueprint::Small {
        misfit(
            cx,
            workers,
            bp,
            "small runs etcd on every machine; use central-services for workers",
            "remove `[workers]` and raise `[central] count` (3 to 9), or set `blueprint = \"central-services\"`",
        );
    }

    let mut resources: Vec<(Resource, Span)> = Vec::new();

    // network.main
    let mut attrs = Attrs::new();
    attrs.insert("name".into(), Value::String(format!("{cname}-main")));
    attrs.insert("cidr".into(), Value::String(network.cidr_text.clone()));
    attrs.insert("gateway".into(), Value::String(network.gateway.to_string()));
    attrs.insert(
        "dns".into(),
        Value::Array(network.dns.iter().cloned().map(Value::String).collect()),
    );
    let net_addr = Address::new("network", "main");
    resources.push((
        Resource {
            address: net_addr.clone(),
            provider: provider.clone(),
            attrs,
            refs: Default::default(),
            depends_on: Vec::new(),
            deferred: Vec::new(),
        },
        net_span,
    ));
    let mut decls = vec![BlueprintDecl {
        kind: "network",
        name: "main".into(),
        count: Count::Single,
        table: "network",
    }];

    let mut net_refs = BTreeMap::new();
    net_refs.insert("network".to_string(), net_addr);
    let zones = zone_layout(cx, bp, &provider, inputs, net_span);
    let metal = metal_vlan(cx, bp, &provider, inputs);
    if inputs.spread
        && let Some((net, _)) = resources.first_mut()
    {
        net.attrs.insert("vlan".into(), Value::Bool(false));
    }
    if let Some(m) = &metal
        && let Some((net, _)) = resources.first_mut()
    {
        net.attrs
            .insert("vxlan".into(), Value::from(u64::from(m.vxlan)));
        if let Some(metro) = &m.metro {
            net.attrs
                .insert("zone".into(), Value::String(metro.clone()));
        }
    }
    let shared = Shared {
        platform: platform(&provider),
        provider,
        cname: cname.to_string(),
        ssh_keys: settings.ssh_authorized_keys.clone(),
        ssh: (!settings.ssh_authorized_keys.is_empty()).then(|| {
            Value::Array(
                settings
                    .ssh_authorized_keys
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            )
        }),
        channel: Value::String(settings.channel.clone()),
        net_refs,
        zones,
        ignition_checked: Default::default(),
        // A cluster over metros has no VLAN: Metal configures the machines' addresses.
        network: (network.ok && !inputs.spread).then(|| NetTemplate {
            prefix: network.cidr.prefix_len(),
            gateway: network.gateway,
            // IPv6 servers do not fit the IPv4-only static network file.
            dns: network
                .dns
                .iter()
                .filter_map(|d| d.parse::<Ipv4Addr>().ok())
                .collect(),
            vlan: metal.as_ref().map(|m| m.vxlan),
        }),
    };

    match bp.central_rule() {
        None => dev_vm(
            cx,
            &shared,
            network,
            vm,
            fallback,
            &mut resources,
            &mut decls,
        ),
        Some(rule) => {
            etcd_cluster(
                cx,
                bp,
                &rule,
                &shared,
                inputs,
                fallback,
                &mut resources,
                &mut decls,
            );
        }
    }

    if let Some(layout) = &shared.zones {
        add_zone_subnets(layout, &shared, net_span, &mut resources, &mut decls);
    }
    // Metal: every machine in the VLAN's metro (a machine without a zone would be in
    // the settings' `metro`, which may not be the one named).
    if let Some(metro) = metal.and_then(|m| m.metro) {
        for (r, _) in &mut resources {
            if r.address.kind == "machine" && !r.attrs.contains_key("zone") {
                r.attrs.insert("zone".into(), Value::String(metro.clone()));
            }
        }
    }

    Expansion {
        blueprint: name,
        decls,
        resources,
    }
}

/// The cluster VLAN of a Metal cluster: its number and the one metro its machines are in.
struct MetalVlan {
    vxlan: u16,
    /// The metro the tables' `zones` name, None when none does (the settings' `metro`).
    metro: Option<String>,
}

/// The default VLAN number of cluster `name`: 1000 to 1999, from a hash of the name, so
/// that clusters of one project mostly differ (`[network] vxlan` picks one).
pub(crate) fn default_vxlan(name: &str) -> u16 {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    1000 + u16::try_from(h % 1000).unwrap_or(0)
}

/// Metal's cluster network is one VLAN, and a Metal VLAN lives in one metro: check
/// that the machines' zones (metros) name at most one, and pick the VLAN number.
/// `[network] vxlan` and `[workers] first_address` are reported on other providers.
fn metal_vlan(
    cx: &mut Cx<'_>,
    bp: Blueprint,
    provider: &str,
    inputs: &Inputs<'_>,
) -> Option<MetalVlan> {
    let Inputs {
        cluster,
        network,
        workers,
        ..
    } = *inputs;
    if provider != "metal" {
        if let Some((_, at)) = network.vxlan {
            cx.error(
                Some(at),
                format!("`vxlan` is the number of a Metal VLAN; provider `{provider}` has none"),
                "Metal only",
                Some("remove it, or use `provider = \"metal\"`".to_string()),
            );
        }
        if let Some((_, at)) = workers.first_address {
            cx.error(
                Some(at),
                format!("workers get their addresses by DHCP on provider `{provider}`; `first_address` in `[workers]` is for Metal, whose VLAN has no DHCP"),
                "Metal only",
                Some("remove it (the central machines' addresses are `[central] first_address`)".to_string()),
            );
        }
        return None;
    }
    if inputs.spread {
        let why = "the machines are in 2 or more metros, and a Metal VLAN lives in one: the cluster has no VLAN";
        if let Some((_, at)) = network.vxlan {
            cx.error(
                Some(at),
                format!("`vxlan` is the number of the cluster VLAN; {why}"),
                "no VLAN",
                Some("remove it (the machines talk over their public addresses), or keep every machine in one metro".to_string()),
            );
        }
        if let Some((_, at)) = workers.first_address {
            cx.error(
                Some(at),
                format!("`first_address` in `[workers]` is the workers' first address on the cluster VLAN; {why}"),
                "no VLAN",
                Some("remove it: the workers use the addresses Metal gives them".to_string()),
            );
        }
        if let Some((_, at)) = inputs.central.first_address {
            cx.error(
                Some(at),
                format!("`first_address` in `[central]` is the central machines' first address on the cluster VLAN; {why}: each central machine takes a public address reserved for it (`ip_reservation.central[N]`)"),
                "no VLAN",
                Some("remove it, or keep every machine in one metro".to_string()),
            );
        }
        return None;
    }
    let vxlan = match network.vxlan {
        Some((Some(v), _)) => u16::try_from(v).ok().filter(|_| VXLAN_RANGE.contains(&v))?,
        Some((None, _)) => return None, // reported
        None => default_vxlan(&cluster.settings.name),
    };
    let tables = inputs.machine_tables(bp);
    let mut metro: Option<&str> = None;
    for g in tables {
        let Some(zones) = &g.zones else { continue };
        for z in zones {
            match metro {
                None => metro = Some(z),
                Some(m) if m == z => {}
                Some(m) => {
                    let help = if bp == Blueprint::LargeScale {
                        "large-scale spreads the central machines over 2 or more zones, which one Metal VLAN cannot join: on Metal use blueprint `central-services` with every machine in one metro".to_string()
                    } else {
                        format!(
                            "keep every machine in one metro: `zones = [\"{m}\"]` (or leave `zones` out for the settings' `metro`)"
                        )
                    };
                    cx.error(
                        g.zones_span.or(g.span),
                        format!("on metal the cluster network is one VLAN, and a Metal VLAN lives in one metro: `[{}] zones` names `{z}` besides `{m}`", g.table),
                        "a second metro",
                        Some(help),
                    );
                    return None;
                }
            }
        }
    }
    Some(MetalVlan {
        vxlan,
        metro: metro.map(str::to_string),
    })
}

/// The zone layout of a provider whose zones are separate subnets: the zones of
/// `[central]`, then `[workers]`, then `[vm]`, as listed (a table without `zones` stands
/// for machines without a zone). Reported at the network when it does not fit.
fn zone_layout(
    cx: &mut Cx<'_>,
    bp: Blueprint,
    provider: &str,
    inputs: &Inputs<'_>,
    at: Span,
) -> Option<ZoneLayout> {
    if !zones_are_subnets(provider) || !inputs.network.ok {
        return None;
    }
    let groups = inputs.machine_tables(bp);
    let mut keys: Vec<Option<String>> = Vec::new();
    for g in groups {
        match &g.zones {
            Some(z) if !z.is_empty() => keys.extend(z.iter().cloned().map(Some)),
            _ => keys.push(None),
        }
    }
    match ZoneLayout::new(inputs.network.cidr, keys) {
        Ok(l) => Some(l),
        Err(message) => {
            cx.error(
                Some(at),
                message,
                "does not fit the zones",
                Some("see docs/CONFIG.md, \"Zones on ec2\"".to_string()),
            );
            None
        }
    }
}

/// Give every machine the subnet of its zone, and add those subnets (in layout order,
/// after `network.main`).
fn add_zone_subnets(
    layout: &ZoneLayout,
    shared: &Shared,
    at: Span,
    resources: &mut Vec<(Resource, Span)>,
    decls: &mut Vec<BlueprintDecl>,
) {
    let mut used = vec![false; layout.keys.len()];
    for (r, _) in resources.iter_mut() {
        if r.address.kind != "machine" {
            continue;
        }
        let zone = r.attrs.get("zone").and_then(Value::as_str);
        if let Some(k) = layout.index(zone) {
            used[k] = true;
            r.refs.insert("subnet".to_string(), layout.address(k));
        }
    }
    let net_addr = Address::new("network", "main");
    let mut subnets = Vec::new();
    for (k, (key, block)) in layout.keys.iter().zip(&layout.blocks).enumerate() {
        if !used[k] {
            continue;
        }
        let address = layout.address(k);
        let mut attrs = Attrs::new();
        let suffix = key.as_deref().unwrap_or("subnet");
        attrs.insert(
            "name".into(),
            Value::String(format!("{}-{suffix}", shared.cname)),
        );
        attrs.insert("cidr".into(), Value::String(block.to_string()));
        if let Some(z) = key {
            attrs.insert("zone".into(), Value::String(z.clone()));
        }
        decls.push(BlueprintDecl {
            kind: "subnet",
            name: address.name.clone(),
            count: Count::Single,
            table: "network",
        });
        subnets.push((
            Resource {
                address,
                provider: shared.provider.clone(),
                attrs,
                refs: BTreeMap::from([("network".to_string(), net_addr.clone())]),
                depends_on: Vec::new(),
                deferred: Vec::new(),
            },
            at,
        ));
    }
    let after_network = resources
        .iter()
        .position(|(r, _)| r.address == net_addr)
        .map_or(0, |i| i + 1);
    resources.splice(after_network..after_network, subnets);
}

/// The static addresses of a group on a provider whose zones are subnets: like
/// [`static_addresses`], each moved into its zone's subnet. None when they do not fit
/// (reported).
fn zone_addresses(
    cx: &mut Cx<'_>,
    layout: &ZoneLayout,
    network: &Network,
    group: &Group,
    n: u32,
    at_table: Span,
) -> Option<Vec<Ipv4Addr>> {
    let (first, at) = match group.first_address {
        Some((Some(ip), at)) => (ip, at),
        Some((None, _)) => return None, // reported
        None => (default_first_address(network)?, at_table),
    };
    match layout.addresses(first, &zone_indexes(layout, group, n)) {
        Ok(a) => Some(a),
        Err(message) => {
            cx.error(
                Some(at),
                message,
                "does not fit the zone subnets",
                Some(format!(
                    "set `{}` in `[{}]` to an address in {}",
                    group.address_key(),
                    group.table,
                    layout
                        .blocks
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                )),
            );
            None
        }
    }
}

/// The default first central address: the network's 101st host.
fn default_first_address(network: &Network) -> Option<Ipv4Addr> {
    u32::from(network.cidr.network())
        .checked_add(DEFAULT_FIRST_ADDRESS_OFFSET)
        .map(Ipv4Addr::from)
}

/// The subnet index of the zone of each of the first `n` machines of `group`.
fn zone_indexes(layout: &ZoneLayout, group: &Group, n: u32) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let z = zone(&group.zones, i);
            layout
                .index(z.as_ref().and_then(Value::as_str))
                .unwrap_or(0)
        })
        .collect()
}

/// The addresses of every central machine the blueprint allows (`max` of them): the
/// `addrs` of the machines there are now, then the next slots in the same sequence,
/// as far as they fit in the network. The workers' etcd proxies list all of them, so
/// that their list (and so their config) does not change when members come and go: a
/// slot with no member is skipped by the proxy's balancer.
fn central_slots(
    shared: &Shared,
    network: &Network,
    central: &Group,
    addrs: &[Ipv4Addr],
    max: u32,
) -> Vec<Ipv4Addr> {
    let n = u32::try_from(addrs.len()).unwrap_or(u32::MAX);
    let (Some(&first_now), true) = (addrs.first(), n < max) else {
        return addrs.to_vec();
    };
    match &shared.zones {
        Some(layout) => {
            let Some(first) = central
                .first_address
                .and_then(|(ip, _)| ip)
                .or_else(|| default_first_address(network))
            else {
                return addrs.to_vec();
            };
            let zone_of = zone_indexes(layout, central, max);
            (n..=max)
                .rev()
                .find_map(|k| layout.addresses(first, &zone_of[..k as usize]).ok())
                .unwrap_or_else(|| addrs.to_vec())
        }
        None => {
            let mut out = addrs.to_vec();
            let broadcast = network.cidr.broadcast();
            for i in n..max {
                match u32::from(first_now).checked_add(i).map(Ipv4Addr::from) {
                    Some(a) if network.cidr.contains(&a) && a != broadcast => out.push(a),
                    _ => break,
                }
            }
            out
        }
    }
}

/// `dev-vm`: `machine.vm` with the Docker API socket.
fn dev_vm(
    cx: &mut Cx<'_>,
    shared: &Shared,
    network: &Network,
    vm: &Group,
    fallback: Span,
    resources: &mut Vec<(Resource, Span)>,
    decls: &mut Vec<BlueprintDecl>,
) {
    let at = vm.span.unwrap_or(fallback);
    let size = vm.size.clone().map(Value::String);
    if size.is_none() {
        missing_size(cx, vm, Blueprint::DevVm, fallback);
    }
    decls.push(BlueprintDecl {
        kind: "machine",
        name: "vm".into(),
        count: Count::Single,
        table: "vm",
    });
    // A static address only when `[vm] address` is set; DHCP otherwise.
    let address = match vm.first_address {
        Some(_) => match match &shared.zones {
            Some(layout) => zone_addresses(cx, layout, network, vm, 1, at),
            None => static_addresses(cx, network, vm, "vm", 1, at),
        } {
            Some(a) => a.first().copied(),
            None => return,
        },
        None => None,
    };
    let hostname = format!("{}-vm", shared.cname);
    let mut attrs = shared.machine_attrs(
        hostname.clone(),
        &Value::String("dev".into()),
        size.as_ref(),
    );
    if let Some(z) = zone(&vm.zones, 0) {
        attrs.insert("zone".into(), z);
    }
    if let Some(a) = address {
        attrs.insert("address".into(), Value::String(a.to_string()));
    }
    if vm.protect {
        attrs.insert("protect".into(), Value::Bool(true));
    }
    let mut spec = shared.spec(hostname);
    spec.docker_tcp = true;
    spec.network = address.and_then(|a| shared.network.as_ref().map(|n| n.at(a)));
    let address = Address::new("machine", "vm");
    attrs.insert(
        "user_data".into(),
        user_data(cx, shared, vm, &address, &spec),
    );
    resources.push((shared.resource(address, attrs, Vec::new()), at));
}

/// `small`, `dev-test`, `central-services`, `large-scale`: `machine.central[i]` running
/// etcd with static addresses, then `machine.workers[i]`.
#[allow(clippy::too_many_arguments)]
fn etcd_cluster(
    cx: &mut Cx<'_>,
    bp: Blueprint,
    rule: &CentralRule,
    shared: &Shared,
    inputs: &Inputs<'_>,
    fallback: Span,
    resources: &mut Vec<(Resource, Span)>,
    decls: &mut Vec<BlueprintDecl>,
) {
    let Inputs {
        network,
        central,
        workers,
        ca,
        ..
    } = *inputs;
    let tls = ca.filter(|_| central.etcd.tls);
    let central_span = central.span.unwrap_or(fallback);
    let workers_span = workers.span.unwrap_or(fallback);
    let cname = shared.cname.as_str();

    // Central count.
    let central_count = match central.count {
        None => Count::Counted(rule.default),
        Some((Some(n), _)) if (rule.min..=rule.max).contains(&n) => Count::Counted(n),
        Some((Some(n), at)) => {
            let (message, help) = bp.count_error(n);
            let label = if rule.min == rule.max {
                format!("must be {}", rule.min)
            } else {
                format!("must be {} to {}", rule.min, rule.max)
            };
            cx.error(Some(at), message, label, Some(help));
            Count::Unknown
        }
        Some((None, _)) => Count::Unknown,
    };
    decls.push(BlueprintDecl {
        kind: "machine",
        name: "central".into(),
        count: central_count,
        table: "central",
    });
    // An invalid count (reported) still expands the default, to find more problems.
    let n_central = match central_count {
        Count::Counted(n) => n,
        _ => rule.default,
    };

    // large-scale: central machines in at least two zones.
    if bp == Blueprint::LargeScale {
        let why = "large-scale spreads the central machines over zones: give at least 2";
        match (&central.zones, central.zones_span) {
            (Some(z), Some(at)) if z.len() < 2 => cx.error(
                Some(at),
                format!("{why}, not {}", z.len()),
                "needs 2 or more zones",
                Some("list the availability zones (or metros, or cabinets) to spread the central machines over, like [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]; for one zone use blueprint `central-services`".to_string()),
            ),
            (None, None) => cx.error(
                Some(central_span),
                format!("{why}; `[central]` has no `zones`"),
                "no `zones`",
                Some("add `zones = [\"...\", \"...\"]` to `[central]`: the availability zones (or metros, or cabinets); for one zone use blueprint `central-services`".to_string()),
            ),
            _ => {} // fine, or `zones` was wrong (reported)
        }
    }

    // Sizes.
    let central_size = central.size.clone().map(Value::String);
    if central_size.is_none() {
        missing_size(cx, central, bp, fallback);
    }
    let workers_count = if bp.has_workers() {
        match workers.count_or(0) {
            Some(n) => Count::Counted(n),
            None => Count::Unknown,
        }
    } else {
        Count::Counted(0)
    };
    let n_workers = match workers_count {
        Count::Counted(n) => n,
        _ => 0,
    };
    let workers_size = workers.size.clone().map(Value::String);
    if workers_size.is_none() && n_workers > 0 {
        missing_size(cx, workers, bp, fallback);
    }

    // Central machines: etcd members with static addresses; on a Metal cluster over
    // metros, the public addresses reserved for them (known once reserved).
    let reservations: Vec<Address> = if inputs.spread {
        (0..n_central)
            .map(|i| Address::indexed("ip_reservation", "central", i))
            .collect()
    } else {
        Vec::new()
    };
    let (addrs, known) = if inputs.spread {
        reserved_addresses(cx, central, &reservations, inputs.reserved, central_span)
    } else {
        let addrs = match &shared.zones {
            Some(layout) => zone_addresses(cx, layout, network, central, n_central, central_span),
            None => static_addresses(cx, network, central, "central", n_central, central_span),
        }
        .unwrap_or_default();
        let known = vec![true; addrs.len()];
        (addrs, known)
    };
    // Every member's config names every member's address.
    let deferred = known.contains(&false);
    if inputs.spread {
        decls.push(BlueprintDecl {
            kind: "ip_reservation",
            name: "central".into(),
            count: central_count,
            table: "central",
        });
        for (i, a) in (0u32..).zip(&reservations) {
            let mut attrs = Attrs::new();
            if let Some(z) = zone(&central.zones, i) {
                attrs.insert("zone".into(), z);
            }
            resources.push((
                Resource {
                    address: a.clone(),
                    provider: shared.provider.clone(),
                    attrs,
                    refs: BTreeMap::new(),
                    depends_on: Vec::new(),
                    deferred: Vec::new(),
                },
                central_span,
            ));
        }
    }
    let names: Vec<String> = (0..addrs.len())
        .map(|i| format!("{cname}-central-{i}"))
        .collect();
    let initial_cluster: Vec<(String, Ipv4Addr)> =
        names.iter().cloned().zip(addrs.iter().copied()).collect();
    resources.reserve(addrs.len() + n_workers as usize);
    let etcd_role = Value::String("etcd".into());
    let mut central_addresses = Vec::with_capacity(addrs.len());
    for (i, (name, ip)) in (0u32..).zip(names.iter().zip(&addrs)) {
        let mut attrs = shared.machine_attrs(name.clone(), &etcd_role, central_size.as_ref());
        if let Some(z) = zone(&central.zones, i) {
            attrs.insert("zone".into(), z);
        }
        attrs.insert("address".into(), Value::String(ip.to_string()));
        if central.protect {
            attrs.insert("protect".into(), Value::Bool(true));
        }
        let mut spec = shared.spec(name.clone());
        spec.network = shared.network.as_ref().map(|n| n.at(*ip));
        spec.etcd = Some(EtcdMember {
            name: name.clone(),
            address: *ip,
            initial_cluster: initial_cluster.clone(),
            cluster_token: cname.to_string(),
        });
        let address = Address::indexed("machine", "central", i);
        if let Some(ca) = tls {
            let issued = ca.member(name, &[(*ip).into()], clusterform_pki::DEFAULT_VALIDITY);
            spec.tls = tls_of(cx, ca, issued, &address, central_span);
        }
        attrs.insert(
            "user_data".into(),
            user_data(cx, shared, central, &address, &spec),
        );
        central_addresses.push(address.clone());
        let mut r = shared.resource(address, attrs, Vec::new());
        if let Some(own) = reservations.get(i as usize) {
            r.refs.insert("ip_reservation".into(), own.clone());
            r.depends_on.clone_from(&reservations);
            if !known.get(i as usize).copied().unwrap_or(false) {
                r.deferred.push("address".into());
            }
            if deferred {
                r.deferred.push("user_data".into());
            }
        }
        resources.push((r, central_span));
    }

    if !bp.has_workers() {
        return;
    }
    decls.push(BlueprintDecl {
        kind: "machine",
        name: "workers".into(),
        count: workers_count,
        table: "workers",
    });

    // Workers: DHCP, after every etcd machine; they reach etcd directly (dev-test) or
    // through a local proxy (central-services, large-scale). The `etcd_endpoints`
    // attribute is what applications on the worker use; the central client URLs are in
    // `user_data` either way.
    let mut spec = shared.spec(String::new());
    if bp.workers_proxy() {
        // Reserved addresses are not known ahead: the proxies list the members there are.
        let slots = if inputs.spread {
            addrs.clone()
        } else {
            central_slots(shared, network, central, &addrs, rule.max)
        };
        spec.etcd_proxy = Some(
            slots
                .iter()
                .map(|ip| client_url(*ip, tls.is_some()))
                .collect(),
        );
        spec.etcd_endpoints = vec![crate::settings::DEFAULT_ETCD_ENDPOINT.to_string()];
    } else {
        spec.etcd_endpoints = addrs
            .iter()
            .map(|ip| client_url(*ip, tls.is_some()))
            .collect();
    }
    let endpoints_attr = Value::Array(
        spec.etcd_endpoints
            .iter()
            .cloned()
            .map(Value::String)
            .collect(),
    );
    let role = Value::String("worker".into());
    // Metal machines may PXE-boot an iPXE script (the seed's large-scale workers).
    let mut pxe: Vec<(&str, Value)> = Vec::new();
    if let Some((url, at)) = &workers.ipxe_script_url {
        if shared.provider == "metal" {
            pxe.push(("operating_system", Value::String("custom_ipxe".into())));
            pxe.push(("ipxe_script_url", Value::String(url.clone())));
            if let Some(always) = workers.always_pxe {
                pxe.push(("always_pxe", Value::Bool(always)));
            }
        } else {
            cx.error(
                Some(*at),
                format!(
                    "`ipxe_script_url` is a setting of Metal machines; provider `{}` boots the Flatcar image",
                    shared.provider
                ),
                "Metal only",
                Some("remove it, or use `provider = \"metal\"`".to_string()),
            );
        }
    } else if workers.always_pxe.is_some() {
        cx.error(
            workers.span,
            "`always_pxe` needs `ipxe_script_url` in `[workers]`",
            "no iPXE script",
            Some("add `ipxe_script_url`, or remove `always_pxe`".to_string()),
        );
    }
    // Metal: the VLAN has no DHCP, so workers get static addresses too, clear of every
    // address the central machines may take.
    let worker_addrs = match (&shared.network, shared.platform) {
        (Some(_), Platform::Metal) if n_workers > 0 => {
            let taken = central_slots(shared, network, central, &addrs, rule.max);
            static_addresses(cx, network, workers, "workers", n_workers, workers_span)
                .filter(|a| {
                    let clash = a
                        .iter()
                        .enumerate()
                        .find(|(_, ip)| taken.contains(ip) || **ip == network.gateway);
                    if let Some((i, ip)) = clash {
                        let what = if *ip == network.gateway {
                            "the network's gateway".to_string()
                        } else {
                            "an address the central machines may take".to_string()
                        };
                        cx.error(
                            workers.first_address.map(|(_, at)| at).or(Some(workers_span)),
                            format!("address `{ip}` of `machine.workers[{i}]` is {what}"),
                            "clashes",
                            Some(format!(
                                "set `first_address` in `[workers]` to an address in {} after the central machines' ({} up to {} of them)",
                                network.cidr,
                                taken.first().map(ToString::to_string).unwrap_or_default(),
                                rule.max
                            )),
                        );
                        return false;
                    }
                    true
                })
        }
        _ => None,
    };
    // One client certificate for every worker's proxy, issued once: the proxies present
    // no identity of their own to etcd (no CN, no per-client role), and issuing one per
    // worker made a no-op plan of 10,000 workers take 1.5 s instead of 0.3 s.
    let worker_tls = match tls {
        Some(ca) if n_workers > 0 => {
            let issued = ca.client(
                &format!("{cname}-workers"),
                clusterform_pki::DEFAULT_VALIDITY,
            );
            tls_of(
                cx,
                ca,
                issued,
                &Address::new("machine", "workers"),
                workers_span,
            )
        }
        _ => None,
    };
    for i in 0..n_workers {
        let name = format!("{cname}-workers-{i}");
        spec.hostname.clone_from(&name);
        if let Some(ip) = worker_addrs.as_ref().and_then(|a| a.get(i as usize)) {
            spec.network = shared.network.as_ref().map(|n| n.at(*ip));
        }
        let mut attrs = shared.machine_attrs(name, &role, workers_size.as_ref());
        if let Some(z) = zone(&workers.zones, i) {
            attrs.insert("zone".into(), z);
        }
        attrs.insert("etcd_endpoints".into(), endpoints_attr.clone());
        if let Some(ip) = worker_addrs.as_ref().and_then(|a| a.get(i as usize)) {
            attrs.insert("address".into(), Value::String(ip.to_string()));
        }
        for (k, v) in &pxe {
            attrs.insert((*k).into(), v.clone());
        }
        if workers.protect {
            attrs.insert("protect".into(), Value::Bool(true));
        }
        let address = Address::indexed("machine", "workers", i);
        spec.tls.clone_from(&worker_tls);
        attrs.insert(
            "user_data".into(),
            user_data(cx, shared, workers, &address, &spec),
        );
        let mut r = shared.resource(address, attrs, central_addresses.clone());
        if deferred {
            r.deferred.push("user_data".into());
            if !bp.workers_proxy() {
                r.deferred.push("etcd_endpoints".into());
            }
        }
        resources.push((r, workers_span));
    }
}

/// The central machines' reserved addresses: those the state records for
/// `reservations`, stand-ins for the others (the second list says which are known).
fn reserved_addresses(
    cx: &mut Cx<'_>,
    central: &Group,
    reservations: &[Address],
    reserved: &BTreeMap<Address, Ipv4Addr>,
    at: Span,
) -> (Vec<Ipv4Addr>, Vec<bool>) {
    if central.zones.is_none() {
        cx.error(
            central.span.or(Some(at)),
            "the machines are in 2 or more metros, but `[central]` has no `zones`: each central machine's address is reserved in its metro",
            "no `zones`",
            Some("add `zones = [\"...\", ...]` to `[central]`: the metros to spread the central machines over".to_string()),
        );
    }
    (0u32..)
        .zip(reservations)
        .map(|(i, r)| match reserved.get(r) {
            Some(ip) => (*ip, true),
            None => (stand_in(i), false),
        })
        .unzip()
}
