//! Planning: desired resources + refreshed state -> a `Plan`, walking the graph in
//! dependency order so that a reference to something being (re)created is
//! `(known after apply)` and forces what must be replaced.

use std::collections::{BTreeMap, HashMap};

use clusterform_core::diff::{RefValue, diff_delete, diff_resource_with, replacement};
use clusterform_core::{Action, Address, Change, Plan, Resource, ResourceGraph, ResourceState};

use crate::day2::BootstrapFlags;
use crate::{EngineError, Readers, Refreshed};

/// Plan the changes that make the providers match `desired`.
pub fn plan(
    cluster: &str,
    desired: &[Resource],
    graph: &ResourceGraph,
    refreshed: &Refreshed,
    providers: &Readers,
    state_lineage: Option<String>,
    state_serial: u64,
) -> Result<Plan, EngineError> {
    plan_replacing(
        cluster,
        desired,
        graph,
        refreshed,
        providers,
        state_lineage,
        state_serial,
        &BTreeMap::new(),
    )
}

/// [`plan`], replacing the objects at the addresses of `replace` whatever their
/// attributes (`--replace`), each with the reason given. Values are compared with
/// [`BootstrapFlags`]: an etcd member whose config differs only in bootstrap-only flags
/// is not changed.
#[allow(clippy::too_many_arguments)]
pub fn plan_replacing(
    cluster: &str,
    desired: &[Resource],
    graph: &ResourceGraph,
    refreshed: &Refreshed,
    providers: &Readers,
    state_lineage: Option<String>,
    state_serial: u64,
    replace: &BTreeMap<Address, String>,
) -> Result<Plan, EngineError> {
    let by_addr: HashMap<&Address, &Resource> = desired.iter().map(|r| (&r.address, r)).collect();
    let mut actions: HashMap<&Address, Action> = HashMap::with_capacity(desired.len());
    let mut changes = Vec::new();
    let mut unchanged = 0;

    for addr in graph.topo_order() {
        let Some(r) = by_addr.get(addr) else { continue };
        let provider = providers.get(&r.provider)?;
        let schema =
            provider
                .schema()
                .kind(&r.address.kind)
                .ok_or_else(|| EngineError::NoKind {
                    provider: r.provider.clone(),
                    kind: r.address.kind.clone(),
                    address: r.address.clone(),
                })?;
        let mut refs = BTreeMap::new();
        for (attr, target) in &r.refs {
            let v = match actions.get(target) {
                Some(Action::Create) | Some(Action::Replace) | None => RefValue::Unknown,
                Some(_) => match refreshed.resources.get(target) {
                    Some(t) => RefValue::Known(t.id.clone()),
                    None => RefValue::Unknown,
                },
            };
            refs.insert(attr.clone(), v);
        }
        let current = refreshed.resources.get(addr);
        let mut change = diff_resource_with(r, current, schema, &refs, &BootstrapFlags);
        if let (Some(reason), Some(cur)) = (replace.get(addr), current)
            && matches!(change.action, Action::NoOp | Action::Update)
        {
            change = replacement(r, cur, schema, &refs, reason.clone());
        }
        actions.insert(addr, change.action);
        if change.action == Action::NoOp {
            unchanged += 1;
        } else {
            changes.push(change);
        }
    }

    for (addr, current) in &refreshed.resources {
        if !by_addr.contains_key(addr) {
            changes.push(delete_change(current, providers));
        }
    }
    changes.sort_by(|a, b| a.address.cmp(&b.address));

    let forget = refreshed
        .drift
        .iter()
        .filter(|d| d.deleted && !by_addr.contains_key(&d.address))
        .map(|d| d.address.clone())
        .collect();

    Ok(Plan {
        cluster: cluster.to_string(),
        destroy: false,
        state_lineage,
        state_serial,
        changes,
        unchanged,
        drift: refreshed.drift.clone(),
        forget,
        etcd: None,
    })
}

/// A delete, with the kind's sensitive attributes marked so that plans hide them.
fn delete_change(current: &clusterform_core::ResourceState, providers: &Readers) -> Change {
    let mut c = diff_delete(current);
    if let Ok(p) = providers.get(&current.provider)
        && let Some(kind) = p.schema().kind(&current.address.kind)
    {
        c.sensitive = kind
            .attrs
            .iter()
            .filter(|a| a.sensitive)
            .map(|a| a.name.clone())
            .collect();
    }
    c
}

/// What [`hold_back_deferred`] plans now: the resources, their graph, and the
/// addresses of those that wait.
#[derive(Debug)]
pub struct HeldBack {
    /// The resources to plan now.
    pub resources: Vec<Resource>,
    /// Their dependency graph.
    pub graph: ResourceGraph,
    /// What waits (new, left out) or keeps its current values (existing).
    pub waiting: Vec<Address>,
}

/// When a cluster over metros is running (a central machine with a reserved address is
/// in the state) and the configuration has values known only once addresses are
/// reserved, the resources to plan now: those made from them keep their current values
/// (new ones wait), so that etcd members are added and replaced with known addresses.
pub fn hold_back_deferred(
    resources: &[Resource],
    state: &BTreeMap<Address, ResourceState>,
) -> Option<HeldBack> {
    let running = resources
        .iter()
        .any(|r| r.refs.contains_key("ip_reservation") && state.contains_key(&r.address));
    if !running || resources.iter().all(|r| r.deferred.is_empty()) {
        return None;
    }
    let mut waiting = Vec::new();
    let mut kept = Vec::with_capacity(resources.len());
    for r in resources {
        if r.deferred.is_empty() {
            kept.push(r.clone());
            continue;
        }
        waiting.push(r.address.clone());
        if let Some(now) = state.get(&r.address) {
            let mut k = r.clone();
            for d in std::mem::take(&mut k.deferred) {
                match now.attrs.get(&d) {
                    Some(v) => k.attrs.insert(d, v.clone()),
                    None => k.attrs.remove(&d),
                };
            }
            kept.push(k);
        }
    }
    let dropped: std::collections::BTreeSet<&Address> =
        waiting.iter().filter(|a| !state.contains_key(a)).collect();
    for r in &mut kept {
        r.depends_on.retain(|d| !dropped.contains(d));
        r.refs.retain(|_, t| !dropped.contains(t));
    }
    let graph = ResourceGraph::build(&kept).ok()?;
    Some(HeldBack {
        resources: kept,
        graph,
        waiting,
    })
}

/// Plan the deletion of everything the state records.
pub fn plan_destroy(
    cluster: &str,
    refreshed: &Refreshed,
    providers: &Readers,
    state_lineage: Option<String>,
    state_serial: u64,
) -> Plan {
    Plan {
        cluster: cluster.to_string(),
        destroy: true,
        state_lineage,
        state_serial,
        changes: refreshed
            .resources
            .values()
            .map(|r| delete_change(r, providers))
            .collect(),
        unchanged: 0,
        drift: refreshed.drift.clone(),
        forget: refreshed
            .drift
            .iter()
            .filter(|d| d.deleted)
            .map(|d| d.address.clone())
            .collect(),
        etcd: None,
    }
}

/// The machines (any resource with `protect = true` in its current attributes) that
/// `plan` deletes or replaces: refused unless the user allows it (`--allow-protected`).
pub fn protected(plan: &Plan) -> Vec<Address> {
    plan.changes
        .iter()
        .filter(|c| matches!(c.action, Action::Delete | Action::Replace))
        .filter(|c| is_protected(c.before.as_ref()))
        .map(|c| c.address.clone())
        .collect()
}

/// True when the attributes say `protect = true`.
pub fn is_protected(attrs: Option<&clusterform_core::Attrs>) -> bool {
    attrs
        .and_then(|b| b.get("protect"))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// Limit a destroy plan to the `targets` and everything in the state that depends on
/// them, directly or not (a network takes its machines with it). Errors when a target
/// selects nothing in the state.
pub fn restrict_to_targets(
    mut plan: Plan,
    targets: &[Address],
    state: &BTreeMap<Address, clusterform_core::ResourceState>,
) -> Result<Plan, EngineError> {
    let mut selected: std::collections::BTreeSet<&Address> = std::collections::BTreeSet::new();
    for t in targets {
        let matching: Vec<&Address> = state.keys().filter(|a| t.names(a)).collect();
        if matching.is_empty() {
            return Err(EngineError::Refused {
                message: format!("`--target {t}` selects nothing in the state"),
                help: "see what the state holds with `clusterform state list`".to_string(),
            });
        }
        selected.extend(matching);
    }
    // Dependents, to a fixed point.
    let mut dependents: HashMap<&Address, Vec<&Address>> = HashMap::new();
    for r in state.values() {
        for d in &r.dependencies {
            dependents.entry(d).or_default().push(&r.address);
        }
    }
    let mut queue: Vec<&Address> = selected.iter().copied().collect();
    while let Some(a) = queue.pop() {
        for &d in dependents.get(a).map(Vec::as_slice).unwrap_or_default() {
            if selected.insert(d) {
                queue.push(d);
            }
        }
    }
    plan.changes.retain(|c| selected.contains(&c.address));
    plan.forget.retain(|a| selected.contains(a));
    Ok(plan)
}

/// Keep only the changes of `targets` (an address without an index names every
/// instance) and of what they depend on, transitively, as Terraform's `-target` does:
/// the rest of the file's changes wait for a plan without targets. A target that is
/// neither in `desired` nor in `state` is refused.
pub fn restrict_to_dependencies(
    mut plan: Plan,
    targets: &[Address],
    desired: &[clusterform_core::Resource],
    state: &BTreeMap<Address, clusterform_core::ResourceState>,
) -> Result<Plan, EngineError> {
    let by_address: HashMap<&Address, &clusterform_core::Resource> =
        desired.iter().map(|r| (&r.address, r)).collect();
    let mut selected: std::collections::BTreeSet<Address> = std::collections::BTreeSet::new();
    for t in targets {
        let matching: Vec<&Address> = desired
            .iter()
            .map(|r| &r.address)
            .chain(state.keys())
            .filter(|a| t.names(a))
            .collect();
        if matching.is_empty() {
            return Err(EngineError::Refused {
                message: format!("`--target {t}` selects nothing in the file or the state"),
                help: "name a resource of the cluster file (`clusterform graph` shows them all)"
                    .to_string(),
            });
        }
        selected.extend(matching.into_iter().cloned());
    }
    // What they depend on, to a fixed point.
    let mut queue: Vec<Address> = selected.iter().cloned().collect();
    while let Some(a) = queue.pop() {
        let deps = match by_address.get(&a) {
            Some(r) => r.dependencies(),
            None => state
                .get(&a)
                .map(|r| r.dependencies.clone())
                .unwrap_or_default(),
        };
        for d in deps {
            if selected.insert(d.clone()) {
                queue.push(d);
            }
        }
    }
    plan.changes.retain(|c| selected.contains(&c.address));
    plan.forget.retain(|a| selected.contains(a));
    Ok(plan)
}
