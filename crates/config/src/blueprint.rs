//! Blueprint expansion: `dev-test` (one etcd machine + N workers on one network) into
//! plain resources, with the addresses it owns and the table each comes from.

use std::net::Ipv4Addr;

use clusterform_core::{Address, Attrs, ProviderSchema, Resource};
use serde_json::Value;

use crate::Span;
use crate::reader::Cx;
use crate::resources::Count;
use crate::settings::{Cluster, DEFAULT_FIRST_ADDRESS_OFFSET, Group, Network};

/// A resource name the blueprint defines.
pub(crate) struct BlueprintDecl {
    /// Kind.
    pub(crate) kind: &'static str,
    /// Name.
    pub(crate) name: &'static str,
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

/// Attribute names the dev-test blueprint sets, by kind, for the schema check.
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
];

/// Check that the provider's schema has the kinds and attributes the blueprint sets.
fn check_schema(cx: &mut Cx<'_>, provider: &str, schemas: &[ProviderSchema], at: Span) {
    let Some(ps) = schemas.iter().find(|s| s.provider == provider) else {
        return; // reported with `[cluster] provider`
    };
    for (kind, attrs) in [("network", NETWORK_ATTRS), ("machine", MACHINE_ATTRS)] {
        let Some(ks) = ps.kind(kind) else {
            cx.error(
                Some(at),
                format!(
                    "provider `{provider}` has no `{kind}` kind, which blueprint `dev-test` needs"
                ),
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
                    "provider `{provider}`'s `{kind}` lacks {}, which blueprint `dev-test` sets",
                    crate::reader::tick_list(&missing)
                ),
                "unsupported by the provider",
                Some("pick another `[cluster] provider`, or write [resource.*] tables".to_string()),
            );
        }
    }
}

/// `zones[i % len]`.
fn zone(zones: &Option<Vec<String>>, i: u32) -> Option<Value> {
    let z = zones.as_ref()?;
    let n = u32::try_from(z.len()).ok().filter(|n| *n > 0)?;
    z.get((i % n) as usize).map(|s| Value::String(s.clone()))
}

/// Expand blueprint `dev-test`.
pub(crate) fn dev_test(
    cx: &mut Cx<'_>,
    cluster: &Cluster,
    network: &Network,
    central: &Group,
    workers: &Group,
    schemas: &[ProviderSchema],
) -> Expansion {
    let fallback = cluster
        .blueprint_span
        .or(cluster.span)
        .unwrap_or(Span { offset: 0, len: 0 });
    let net_span = network.span.unwrap_or(fallback);
    let central_span = central.span.unwrap_or(fallback);
    let workers_span = workers.span.unwrap_or(fallback);
    let settings = &cluster.settings;
    let cname = settings.name.as_str();

    let provider = match &settings.provider {
        Some(p) => {
            check_schema(cx, p, schemas, fallback);
            p.clone()
        }
        None => {
            let example = schemas.first().map_or("sim", |s| s.provider.as_str());
            cx.error(
                Some(fallback),
                "blueprint `dev-test` needs `[cluster] provider`",
                "which provider?",
                Some(format!("add `provider = \"{example}\"` to `[cluster]`")),
            );
            String::new()
        }
    };

    // Counts.
    let central_count = match central.count {
        None => Count::Counted(1),
        Some((Some(1), _)) => Count::Counted(1),
        Some((Some(_), at)) => {
            cx.error(
                Some(at),
                "dev-test has exactly one etcd machine",
                "must be 1",
                Some("use blueprint `central-services` for 3-5".to_string()),
            );
            Count::Unknown
        }
        Some((None, _)) => Count::Unknown,
    };
    let workers_count = match workers.count_or(0) {
        Some(n) => Count::Counted(n),
        None => Count::Unknown,
    };
    let n_central: u32 = 1;
    let n_workers: u32 = match workers_count {
        Count::Counted(n) => n,
        _ => 0,
    };

    // Sizes.
    let central_size = match &central.size {
        Some(s) => Some(s.clone()),
        None => {
            let (msg, at) = if central.span.is_some() {
                ("`[central]` has no `size`", central_span)
            } else {
                (
                    "blueprint `dev-test` needs `[central]` with a `size`",
                    fallback,
                )
            };
            cx.error(
                Some(at),
                msg,
                "missing `size`",
                Some("add `size = \"...\"` to `[central]`: the machine type (instance type, Metal plan, libvirt \"2cpu-4gb\")".to_string()),
            );
            None
        }
    };
    let workers_size = workers.size.clone();
    if workers_size.is_none() && n_workers > 0 {
        cx.error(
            Some(workers_span),
            "`[workers]` has no `size`",
            "missing `size`",
            Some("add `size = \"...\"` to `[workers]`: the machine type (instance type, Metal plan, libvirt \"2cpu-4gb\")".to_string()),
        );
    }

    // Central addresses.
    let first: Option<(Ipv4Addr, Span, bool)> = match central.first_address {
        Some((Some(ip), at)) => Some((ip, at, true)),
        Some((None, _)) => None, // reported
        None => u32::from(network.cidr.network())
            .checked_add(DEFAULT_FIRST_ADDRESS_OFFSET)
            .map(|a| (Ipv4Addr::from(a), central_span, false)),
    };
    let mut central_addrs: Vec<Ipv4Addr> = Vec::with_capacity(n_central as usize);
    if let Some((ip, at, explicit)) = first {
        for i in 0..n_central {
            let addr = u32::from(ip).checked_add(i).map(Ipv4Addr::from);
            match addr {
                Some(a) if !network.ok || network.cidr.contains(&a) => central_addrs.push(a),
                _ => {
                    let shown = addr
                        .map_or_else(|| "beyond 255.255.255.255".to_string(), |a| a.to_string());
                    let (message, help) = if explicit {
                        (
                            format!(
                                "address `{shown}` of `machine.central[{i}]` is outside the network `{}`",
                                network.cidr_text
                            ),
                            format!("pick a `first_address` in {}", network.cidr),
                        )
                    } else {
                        (
                            format!(
                                "the default first address `{shown}` is outside the network `{}`",
                                network.cidr_text
                            ),
                            format!(
                                "set `first_address` in `[central]` to an address in {}",
                                network.cidr
                            ),
                        )
                    };
                    cx.error(Some(at), message, "outside the network", Some(help));
                    break;
                }
            }
        }
    }

    let mut resources: Vec<(Resource, Span)> =
        Vec::with_capacity(1 + n_central as usize + n_workers as usize);

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
        },
        net_span,
    ));

    // Shared values, built once.
    let ssh: Option<Value> = (!settings.ssh_authorized_keys.is_empty()).then(|| {
        Value::Array(
            settings
                .ssh_authorized_keys
                .iter()
                .cloned()
                .map(Value::String)
                .collect(),
        )
    });
    let channel = Value::String(settings.channel.clone());
    let mut net_refs = std::collections::BTreeMap::new();
    net_refs.insert("network".to_string(), net_addr);

    // machine.central[i]
    let mut central_addresses = Vec::with_capacity(central_addrs.len());
    for (i, ip) in (0..n_central).zip(central_addrs.iter()) {
        let mut attrs = Attrs::new();
        attrs.insert("name".into(), Value::String(format!("{cname}-central-{i}")));
        attrs.insert("role".into(), Value::String("etcd".into()));
        if let Some(s) = &central_size {
            attrs.insert("size".into(), Value::String(s.clone()));
        }
        if let Some(z) = zone(&central.zones, i) {
            attrs.insert("zone".into(), z);
        }
        attrs.insert("address".into(), Value::String(ip.to_string()));
        if let Some(k) = &ssh {
            attrs.insert("ssh_authorized_keys".into(), k.clone());
        }
        attrs.insert("channel".into(), channel.clone());
        if central.protect {
            attrs.insert("protect".into(), Value::Bool(true));
        }
        let address = Address::indexed("machine", "central", i);
        central_addresses.push(address.clone());
        resources.push((
            Resource {
                address,
                provider: provider.clone(),
                attrs,
                refs: net_refs.clone(),
                depends_on: Vec::new(),
            },
            central_span,
        ));
    }

    // machine.workers[i]
    let endpoints = Value::Array(
        central_addrs
            .iter()
            .map(|ip| Value::String(format!("http://{ip}:2379")))
            .collect(),
    );
    let workers_size = workers_size.map(Value::String);
    let role = Value::String("worker".into());
    for i in 0..n_workers {
        let mut attrs = Attrs::new();
        attrs.insert("name".into(), Value::String(format!("{cname}-workers-{i}")));
        attrs.insert("role".into(), role.clone());
        if let Some(s) = &workers_size {
            attrs.insert("size".into(), s.clone());
        }
        if let Some(z) = zone(&workers.zones, i) {
            attrs.insert("zone".into(), z);
        }
        attrs.insert("etcd_endpoints".into(), endpoints.clone());
        if let Some(k) = &ssh {
            attrs.insert("ssh_authorized_keys".into(), k.clone());
        }
        attrs.insert("channel".into(), channel.clone());
        if workers.protect {
            attrs.insert("protect".into(), Value::Bool(true));
        }
        resources.push((
            Resource {
                address: Address::indexed("machine", "workers", i),
                provider: provider.clone(),
                attrs,
                refs: net_refs.clone(),
                depends_on: central_addresses.clone(),
            },
            workers_span,
        ));
    }

    Expansion {
        blueprint: "dev-test",
        decls: vec![
            BlueprintDecl {
                kind: "network",
                name: "main",
                count: Count::Single,
                table: "network",
            },
            BlueprintDecl {
                kind: "machine",
                name: "central",
                count: central_count,
                table: "central",
            },
            BlueprintDecl {
                kind: "machine",
                name: "workers",
                count: workers_count,
                table: "workers",
            },
        ],
        resources,
    }
}
