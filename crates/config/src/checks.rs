//! Static checks across the linked resources that need no provider: one address per
//! machine, every static address a usable host of its network (not the network
//! address, the gateway or the broadcast, and inside the cidr), names short enough
//! for a host name and not used twice for one kind.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use clusterform_core::{Address, Resource, Value};
use ipnet::Ipv4Net;

use crate::Span;
use crate::reader::Cx;

/// The longest resource name: a machine's name is its host name, and a host name is a
/// DNS label (RFC 1035: at most 63 characters; Linux's `HOST_NAME_MAX` is 64, libvirt
/// domain and EC2 `Name` tags take more). Every kind gets the same limit so a name fits
/// wherever a provider uses it as a label.
pub(crate) const MAX_NAME_LEN: usize = 63;

fn str_attr<'r>(r: &'r Resource, key: &str) -> Option<&'r str> {
    match r.attrs.get(key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The network (or subnet) a machine's address must fit: its cidr and gateway (the
/// `gateway` attribute, else the network's, else the first host, as the providers do).
fn home(
    r: &Resource,
    by_addr: &BTreeMap<&Address, &Resource>,
) -> Option<(Address, Ipv4Net, Option<Ipv4Addr>)> {
    for attr in ["subnet", "network"] {
        let Some(target) = r.refs.get(attr) else {
            continue;
        };
        let t = by_addr.get(target)?;
        let cidr = str_attr(t, "cidr")?.parse::<Ipv4Net>().ok()?;
        let gateway = str_attr(t, "gateway")
            .and_then(|g| g.parse::<Ipv4Addr>().ok())
            .or_else(|| {
                // A subnet's gateway is its network's.
                t.refs
                    .get("network")
                    .and_then(|n| by_addr.get(n))
                    .and_then(|n| str_attr(n, "gateway"))
                    .and_then(|g| g.parse::<Ipv4Addr>().ok())
            })
            // The providers' default: the first host of the range.
            .or_else(|| cidr.trunc().hosts().next());
        return Some((target.clone(), cidr.trunc(), gateway));
    }
    None
}

/// The address that took `key` first, if one did; otherwise `address` takes it.
fn taken_by<'a, K: Ord>(
    map: &mut BTreeMap<K, &'a Address>,
    key: K,
    address: &'a Address,
) -> Option<&'a Address> {
    match map.entry(key) {
        std::collections::btree_map::Entry::Occupied(e) => Some(*e.get()),
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(address);
            None
        }
    }
}

/// Run the checks over `resources`, reporting at each resource's span.
pub(crate) fn check(cx: &mut Cx<'_>, resources: &[Resource], spans: &BTreeMap<Address, Span>) {
    let by_addr: BTreeMap<&Address, &Resource> =
        resources.iter().map(|r| (&r.address, r)).collect();
    let mut addresses: BTreeMap<Ipv4Addr, &Address> = BTreeMap::new();
    let mut names: BTreeMap<(&str, &str), &Address> = BTreeMap::new();
    for r in resources {
        let at = spans.get(&r.address).copied();
        if let Some(name) = str_attr(r, "name") {
            if name.chars().count() > MAX_NAME_LEN {
                cx.error(
                    at,
                    format!(
                        "the name of `{}` is {} characters long: `{name}`",
                        r.address,
                        name.chars().count()
                    ),
                    "name too long",
                    Some(format!(
                        "use at most {MAX_NAME_LEN} characters (a host name is one DNS label); a name left out is `<cluster>-<NAME>[-<i>]`, so shorten the cluster or resource name"
                    )),
                );
            }
            if let Some(first) = taken_by(&mut names, (r.address.kind.as_str(), name), &r.address) {
                cx.error(
                    at,
                    format!("`{}` has the name `{name}`, like `{first}`", r.address),
                    "duplicate name",
                    Some(format!(
                        "give each {} its own `name` (providers refuse or confuse two with one name)",
                        r.address.kind
                    )),
                );
            }
        }
        // A reserved public address is the provider's, not one of the network's.
        if r.address.kind != "machine" || r.refs.contains_key("ip_reservation") {
            continue;
        }
        let Some(text) = str_attr(r, "address") else {
            continue;
        };
        let Ok(ip) = text.parse::<Ipv4Addr>() else {
            cx.error(
                at,
                format!("address `{text}` of `{}` is not an IPv4 address", r.address),
                "not an IPv4 address",
                Some("write it like \"10.0.0.50\", or leave `address` out".to_string()),
            );
            continue;
        };
        if let Some(first) = taken_by(&mut addresses, ip, &r.address) {
            let count_hint = if r.address.index.is_some()
                && first.kind == r.address.kind
                && first.name == r.address.name
            {
                " (every instance of a counted resource gets the same `address`)"
            } else {
                ""
            };
            cx.error(
                at,
                format!("`{}` has the address `{ip}`, like `{first}`{count_hint}", r.address),
                "duplicate address",
                Some("give each machine its own address, or leave `address` out for one assigned by the network".to_string()),
            );
            continue;
        }
        let Some((net_addr, cidr, gateway)) = home(r, &by_addr) else {
            continue;
        };
        let problem = if !cidr.contains(&ip) {
            Some(format!("is outside `{net_addr}` ({cidr})"))
        } else if ip == cidr.network() && cidr.prefix_len() < 31 {
            Some(format!("is the network address of `{net_addr}` ({cidr})"))
        } else if ip == cidr.broadcast() && cidr.prefix_len() < 31 {
            Some(format!("is the broadcast address of `{net_addr}` ({cidr})"))
        } else if Some(ip) == gateway {
            Some(format!("is the gateway of `{net_addr}`"))
        } else {
            None
        };
        if let Some(why) = problem {
            let first = cidr
                .hosts()
                .nth(1)
                .map_or_else(|| cidr.network().to_string(), |h| h.to_string());
            cx.error(
                at,
                format!("address `{ip}` of `{}` {why}", r.address),
                "unusable address",
                Some(format!(
                    "pick a host address in {cidr} other than the gateway (like {first}), or leave `address` out"
                )),
            );
        }
    }
}
