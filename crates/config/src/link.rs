//! Linking: one table of every defined address (blueprint and plain), duplicate
//! checks, resolution of references and `depends_on` entries, and the expansion of
//! plain resources into their instances.

use std::collections::{BTreeMap, HashMap};

use clusterform_core::{Address, Resource, Value};

use crate::Span;
use crate::blueprint::Expansion;
use crate::reader::{Cx, tick_list};
use crate::resources::{Count, PlainDecl};

/// Where a name was defined.
struct Decl {
    count: Count,
    /// `Some(table)` for blueprint resources.
    blueprint_table: Option<&'static str>,
}

/// Every defined `kind.name`.
#[derive(Default)]
struct Decls {
    by_kind: HashMap<String, HashMap<String, Decl>>,
}

impl Decls {
    fn get(&self, kind: &str, name: &str) -> Option<&Decl> {
        self.by_kind.get(kind)?.get(name)
    }

    fn names_of(&self, kind: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_kind
            .get(kind)
            .map(|m| m.keys().map(|n| format!("{kind}.{n}")).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A resolved reference of a plain resource.
enum Target {
    /// The same address for every instance.
    Fixed(Address),
    /// Instance i references `kind.name[i]` (both have the same count).
    PerInstance(String, String),
}

/// What the reference or `depends_on` entry is, for messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Reference,
    DependsOn,
}

/// Parse `value` as an address and look up its `kind.name`; report what is wrong.
fn lookup<'d>(
    cx: &mut Cx<'_>,
    decls: &'d Decls,
    value: &str,
    at: Span,
    use_: Use,
) -> Option<(Address, &'d Decl)> {
    let what = match use_ {
        Use::Reference => "reference",
        Use::DependsOn => "`depends_on` entry",
    };
    let addr: Address = match value.parse() {
        Ok(a) => a,
        Err(e) => {
            cx.error(
                Some(at),
                e.to_string(),
                "not an address",
                Some(
                    "write the address of a resource, like `network.main` or `machine.workers[0]`"
                        .to_string(),
                ),
            );
            return None;
        }
    };
    let Some(decl) = decls.get(&addr.kind, &addr.name) else {
        let known = decls.names_of(&addr.kind);
        let help = if known.is_empty() {
            format!(
                "no `{}` resources are defined; add `[resource.{}.{}]`",
                addr.kind, addr.kind, addr.name
            )
        } else {
            format!("defined `{}` resources: {}", addr.kind, tick_list(&known))
        };
        cx.error(
            Some(at),
            format!("{what} `{value}` names no resource"),
            "unknown resource",
            Some(help),
        );
        return None;
    };
    Some((addr, decl))
}

/// Report an index on a resource without `count`, or an index out of range; true when
/// the address is fine.
fn check_index(cx: &mut Cx<'_>, addr: &Address, decl: &Decl, at: Span) -> bool {
    match (decl.count, addr.index) {
        (Count::Single, Some(_)) => {
            let base = addr.base();
            cx.error(
                Some(at),
                format!("`{base}` has no `count`, so `{addr}` does not exist"),
                "no such instance",
                Some(format!("write `{base}`")),
            );
            false
        }
        (Count::Counted(n), Some(i)) if i >= n => {
            let base = addr.base();
            let help = if n == 0 {
                format!("`{base}` has `count = 0`: it has no instances")
            } else {
                format!("use an index from 0 to {}", n - 1)
            };
            cx.error(
                Some(at),
                format!("`{addr}` does not exist: `{base}` has `count = {n}`"),
                "no such instance",
                Some(help),
            );
            false
        }
        _ => true,
    }
}

/// Resolve a reference of a resource with count `own`.
fn resolve_ref(
    cx: &mut Cx<'_>,
    decls: &Decls,
    value: &str,
    at: Span,
    own: Count,
) -> Option<Target> {
    let (addr, decl) = lookup(cx, decls, value, at, Use::Reference)?;
    if decl.count == Count::Unknown {
        return None;
    }
    if own == Count::Unknown && addr.index.is_none() && matches!(decl.count, Count::Counted(_)) {
        return None; // this resource's own `count` is wrong (reported): cannot tell
    }
    if !check_index(cx, &addr, decl, at) {
        return None;
    }
    match (decl.count, addr.index) {
        (Count::Counted(n), None) => {
            if own == Count::Counted(n) {
                Some(Target::PerInstance(addr.kind, addr.name))
            } else {
                cx.error(
                    Some(at),
                    format!("`{addr}` has `count = {n}`; a reference must name one of its instances"),
                    "names several instances",
                    Some(format!(
                        "name one instance, like `{addr}[0]` (a resource with the same `count = {n}` may use `{addr}` to pair instance i with `{addr}[i]`)"
                    )),
                );
                None
            }
        }
        _ => Some(Target::Fixed(addr)),
    }
}

/// Resolve a `depends_on` entry into the instances it names.
fn resolve_dep(cx: &mut Cx<'_>, decls: &Decls, value: &str, at: Span, out: &mut Vec<Address>) {
    let Some((addr, decl)) = lookup(cx, decls, value, at, Use::DependsOn) else {
        return;
    };
    if decl.count == Count::Unknown || !check_index(cx, &addr, decl, at) {
        return;
    }
    match (decl.count, addr.index) {
        (Count::Counted(n), None) => {
            out.extend((0..n).map(|i| Address::indexed(addr.kind.clone(), addr.name.clone(), i)));
        }
        _ => out.push(addr),
    }
}

/// A reference attribute named like a kind (`network`, `subnet`, `machine`, ...) must
/// name a resource of that kind: a machine's `network` pointing at a machine would only
/// fail at the provider. False when reported.
fn right_kind(
    cx: &mut Cx<'_>,
    kinds: &[&str],
    p: &PlainDecl,
    r: &crate::resources::RawRef,
) -> bool {
    if !kinds.contains(&r.attr.as_str()) {
        return true;
    }
    let Ok(addr) = r.value.parse::<Address>() else {
        return true; // reported by the lookup
    };
    if addr.kind == r.attr {
        return true;
    }
    cx.error(
        Some(r.span),
        format!(
            "`{}` of `{}.{}` names `{}`, a `{}`; it must name a `{}`",
            r.attr, p.kind, p.name, r.value, addr.kind, r.attr
        ),
        format!("not a `{}`", r.attr),
        Some(format!(
            "name a `{}` resource, like `{}.NAME`",
            r.attr, r.attr
        )),
    );
    false
}

/// Check duplicates, resolve references, expand plain resources. Returns the resources
/// in file order and the span of each.
pub(crate) fn link(
    cx: &mut Cx<'_>,
    expansion: Option<Expansion>,
    plain: Vec<PlainDecl>,
    cluster_name: &str,
    kinds: &[&str],
) -> (Vec<Resource>, BTreeMap<Address, Span>) {
    let mut decls = Decls::default();
    let mut resources: Vec<Resource> = Vec::new();
    let mut spans: BTreeMap<Address, Span> = BTreeMap::new();
    let mut blueprint_name = "";
    let mut owned: Vec<String> = Vec::new();

    if let Some(exp) = expansion {
        blueprint_name = exp.blueprint;
        for d in exp.decls {
            owned.push(format!("{}.{}", d.kind, d.name));
            decls.by_kind.entry(d.kind.to_string()).or_default().insert(
                d.name.to_string(),
                Decl {
                    count: d.count,
                    blueprint_table: Some(d.table),
                },
            );
        }
        resources.reserve(exp.resources.len() + plain.len());
        for (r, s) in exp.resources {
            spans.insert(r.address.clone(), s);
            resources.push(r);
        }
    }

    // Register plain names; drop duplicates of blueprint names.
    let mut kept: Vec<PlainDecl> = Vec::with_capacity(plain.len());
    for p in plain {
        match decls.get(&p.kind, &p.name) {
            Some(existing) => {
                let by = match existing.blueprint_table {
                    Some(t) => format!("blueprint `{blueprint_name}` (its `[{t}]` table)"),
                    None => "another table".to_string(),
                };
                cx.error(
                    Some(p.span),
                    format!("`{}.{}` is already defined by {by}", p.kind, p.name),
                    "duplicate address",
                    Some(match existing.blueprint_table {
                        Some(_) => format!(
                            "rename this resource; blueprint `{blueprint_name}` owns {}",
                            tick_list(&owned)
                        ),
                        None => "rename one of the two resources".to_string(),
                    }),
                );
            }
            None => {
                decls.by_kind.entry(p.kind.clone()).or_default().insert(
                    p.name.clone(),
                    Decl {
                        count: p.count,
                        blueprint_table: None,
                    },
                );
                kept.push(p);
            }
        }
    }

    for p in kept {
        let mut targets: Vec<(String, Target)> = Vec::with_capacity(p.refs.len());
        for r in &p.refs {
            if !right_kind(cx, kinds, &p, r) {
                continue;
            }
            if let Some(t) = resolve_ref(cx, &decls, &r.value, r.span, p.count) {
                targets.push((r.attr.clone(), t));
            }
        }
        let mut deps: Vec<Address> = Vec::new();
        for (d, at) in &p.depends_on {
            resolve_dep(cx, &decls, d, *at, &mut deps);
        }
        let mut seen = std::collections::HashSet::with_capacity(deps.len());
        deps.retain(|a| seen.insert(a.clone()));

        let Some(provider) = p.provider.clone() else {
            continue;
        };
        let instance = |index: Option<u32>| {
            let mut attrs = p.attrs.clone();
            if p.auto_name {
                let name = match index {
                    Some(i) => format!("{cluster_name}-{}-{i}", p.name),
                    None => format!("{cluster_name}-{}", p.name),
                };
                attrs.insert("name".to_string(), Value::String(name));
            }
            let refs = targets
                .iter()
                .map(|(attr, t)| {
                    let a = match t {
                        Target::Fixed(a) => a.clone(),
                        Target::PerInstance(k, n) => {
                            Address::indexed(k.clone(), n.clone(), index.unwrap_or(0))
                        }
                    };
                    (attr.clone(), a)
                })
                .collect();
            let address = match index {
                Some(i) => Address::indexed(p.kind.clone(), p.name.clone(), i),
                None => Address::new(p.kind.clone(), p.name.clone()),
            };
            Resource {
                address,
                provider: provider.clone(),
                attrs,
                refs,
                depends_on: deps.clone(),
                deferred: Vec::new(),
            }
        };
        match p.count {
            Count::Single => {
                let r = instance(None);
                spans.insert(r.address.clone(), p.span);
                resources.push(r);
            }
            Count::Counted(n) => {
                for i in 0..n {
                    let r = instance(Some(i));
                    spans.insert(r.address.clone(), p.span);
                    resources.push(r);
                }
            }
            Count::Unknown => {}
        }
    }
    (resources, spans)
}
