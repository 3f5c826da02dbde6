//! Drift checks: compare the state with what the providers hold now, through read-only
//! handles only ([`Readers`]), and keep apart what changed outside clusterform (drift)
//! from what the cluster file asks for that was never applied (pending changes).

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::{Action, Address, Resource, ResourceGraph, Value};
use clusterform_state::Snapshot;
use serde::Serialize;

use crate::{EngineError, Readers, Refreshed, plan, refresh};

/// Shown instead of the value of an attribute the provider marks sensitive.
pub const SENSITIVE: &str = "(sensitive)";

/// A resource in the state whose object is gone.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Missing {
    /// The resource.
    pub address: Address,
    /// Its provider.
    pub provider: String,
    /// The id the state records.
    pub id: String,
}

/// One attribute that differs between the state and the provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttrDrift {
    /// The attribute.
    pub name: String,
    /// The value in the state (`null`: not set).
    pub state: Value,
    /// The value at the provider now (`null`: not set).
    pub actual: Value,
}

/// A resource whose object changed outside clusterform.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Changed {
    /// The resource.
    pub address: Address,
    /// Its provider.
    pub provider: String,
    /// The object's id.
    pub id: String,
    /// What differs.
    pub attributes: Vec<AttrDrift>,
}

/// An object carrying this cluster's tags that the state does not record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unmanaged {
    /// The address its tags name.
    pub address: Address,
    /// Its provider.
    pub provider: String,
    /// Its kind.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// Who made it (`clusterform:created-by`), when tagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When it was made (`clusterform:created-at`), when tagged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// A change the cluster file asks for that has not been applied (not drift).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pending {
    /// The resource.
    pub address: Address,
    /// `create`, `update`, `replace` or `delete`.
    pub action: Action,
    /// The attributes that change (update, replace).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<String>,
}

/// An operation a run started and did not finish (in progress now, or left by a run that
/// died); the next plan or apply resolves it. What it touches is not counted as drift.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unfinished {
    /// The resource.
    pub address: Address,
    /// `create`, `update` or `delete`.
    pub action: Action,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// The object it made, if the provider has one with its idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
}

/// The result of one drift check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftReport {
    /// The cluster.
    pub cluster: String,
    /// The state serial the check compared against.
    pub state_serial: u64,
    /// Resources in the state, all read from their providers.
    pub resources: usize,
    /// Deleted outside clusterform.
    pub missing: Vec<Missing>,
    /// Changed outside clusterform.
    pub changed: Vec<Changed>,
    /// Tagged for this cluster, absent from the state.
    pub unmanaged: Vec<Unmanaged>,
    /// Unapplied changes of the cluster file (never drift).
    pub pending_changes: Vec<Pending>,
    /// Unfinished operations of a run (in progress, or left by a crash).
    pub unfinished_operations: Vec<Unfinished>,
    /// Provider read calls made.
    pub provider_calls: usize,
    /// The etcd member list compared with the central machines in the state (None when
    /// the state has no etcd member or no etcd runs).
    pub etcd: Option<EtcdCheck>,
}

/// The etcd part of a drift check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EtcdCheck {
    /// The member list was read.
    pub checked: bool,
    /// Why it could not be read (not drift: the check reports it apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How it disagrees with the state.
    #[serde(flatten)]
    pub drift: crate::day2::MemberDrift,
}

impl DriftReport {
    /// True when something changed outside clusterform (objects, or the etcd member
    /// list).
    pub fn drifted(&self) -> bool {
        !(self.missing.is_empty() && self.changed.is_empty() && self.unmanaged.is_empty())
            || self.etcd.as_ref().is_some_and(|e| e.drift.drifted())
    }
}

/// Check `snapshot` against the providers. Takes no lock and changes nothing: providers
/// are reached only through `readers`.
pub async fn check(
    readers: &Readers,
    snapshot: &Snapshot,
    desired: &[Resource],
    graph: &ResourceGraph,
    cluster: &str,
    concurrency: usize,
) -> Result<DriftReport, EngineError> {
    let refreshed = refresh(
        readers,
        &snapshot.resources,
        concurrency,
        crate::RetryPolicy::default(),
    )
    .await?;
    let mut calls = refreshed.calls;

    // What open journal entries touch is in flux: reported apart, not as drift.
    let in_flux: BTreeSet<&Address> = snapshot.journal.iter().map(|e| &e.address).collect();
    let keys: BTreeMap<&str, usize> = snapshot
        .journal
        .iter()
        .enumerate()
        .map(|(i, e)| (e.idempotency_key.as_str(), i))
        .collect();
    let mut unfinished: Vec<Unfinished> = snapshot
        .journal
        .iter()
        .map(|e| Unfinished {
            address: e.address.clone(),
            action: e.action,
            started_at: e.started_at.clone(),
            object_id: None,
        })
        .collect();

    let mut missing = Vec::new();
    let mut changed = Vec::new();
    for d in &refreshed.drift {
        if in_flux.contains(&d.address) {
            continue;
        }
        let Some(recorded) = snapshot.resources.get(&d.address) else {
            continue;
        };
        if d.deleted {
            missing.push(Missing {
                address: d.address.clone(),
                provider: recorded.provider.clone(),
                id: recorded.id.clone(),
            });
            continue;
        }
        let attributes = d
            .changed
            .iter()
            .map(|(name, state, actual)| {
                let hide = |v: &Value| {
                    if d.sensitive.contains(name) && !v.is_null() {
                        Value::String(SENSITIVE.to_string())
                    } else {
                        v.clone()
                    }
                };
                AttrDrift {
                    name: name.clone(),
                    state: hide(state),
                    actual: hide(actual),
                }
            })
            .collect();
        changed.push(Changed {
            address: d.address.clone(),
            provider: recorded.provider.clone(),
            id: refreshed
                .resources
                .get(&d.address)
                .map_or_else(|| recorded.id.clone(), |r| r.id.clone()),
            attributes,
        });
    }

    let recorded_ids: BTreeSet<&str> = snapshot.resources.values().map(|r| r.id.as_str()).collect();
    let mut unmanaged = Vec::new();
    for name in readers.names() {
        let reader = readers.get(name)?;
        let objects = crate::duplicates::unrecorded(reader.as_ref(), cluster, &recorded_ids)
            .await
            .map_err(|source| EngineError::Refresh {
                address: Address::new("cluster", cluster),
                source,
            })?;
        calls += 1;
        for (owner, obj) in objects {
            if let Some(&i) = keys.get(owner.op.as_str()) {
                unfinished[i].object_id = Some(obj.id.clone());
                continue;
            }
            unmanaged.push(Unmanaged {
                address: owner.address.clone(),
                provider: name.to_string(),
                kind: obj.kind.clone(),
                id: obj.id.clone(),
                created_by: owner.created_by.clone(),
                created_at: owner.created_at.clone(),
            });
        }
    }
    unmanaged.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));

    // Pending changes: the cluster file against the state as recorded, not as refreshed,
    // so that drift never shows up here.
    let recorded = Refreshed {
        resources: snapshot.resources.clone(),
        drift: Vec::new(),
        calls: 0,
    };
    let pending = plan(
        cluster,
        desired,
        graph,
        &recorded,
        readers,
        snapshot.lineage.clone(),
        snapshot.serial,
    )?;
    let pending_changes = pending
        .changes
        .iter()
        .map(|c| Pending {
            address: c.address.clone(),
            action: c.action,
            attributes: c.changed.clone(),
        })
        .collect();

    Ok(DriftReport {
        etcd: None,
        cluster: cluster.to_string(),
        state_serial: snapshot.serial,
        resources: snapshot.resources.len(),
        missing,
        changed,
        unmanaged,
        pending_changes,
        unfinished_operations: unfinished,
        provider_calls: calls,
    })
}
