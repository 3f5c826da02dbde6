//! Crash recovery: resolve every journal entry that was opened and never closed (the
//! process died, or the provider's answer was lost) before planning, by asking the
//! provider what exists: a created object is adopted into state, a finished delete is
//! recorded, and the entries are closed, all in one commit. Lookups are batched: one
//! `list_cluster` per provider for creates (matched by idempotency key) and one
//! `read_batch` per provider for deletes and updates, however many entries are open.
//! Entries of etcd membership calls are left open: the plan reads the member list and
//! finishes what they started.

use std::collections::{BTreeMap, HashMap};

use clusterform_core::{Action, Address, ResourceState};
use clusterform_provider::{Object, ReadRequest};
use clusterform_state::{JournalEntry, Mutation, Snapshot, StateStore};
use serde::Serialize;

use crate::{EngineError, Providers};

/// How an open journal entry was resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result", content = "id")]
pub enum Resolution {
    /// The create had reached the provider: the object was adopted into state.
    Adopted(String),
    /// The delete had finished: the record was removed.
    Removed,
    /// The operation had not taken effect: nothing to do.
    NotDone,
    /// An update whose outcome refresh will read.
    Refresh,
    /// A change of the etcd member list: left open for the plan, which reads the member
    /// list and finishes it.
    Membership,
}

/// What recovery did with one open journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// The resource.
    pub address: Address,
    /// The unfinished action.
    pub action: Action,
    /// What was found and done.
    pub resolution: Resolution,
}

/// Resolve the open entries of `snapshot.journal` for cluster `cluster`, committing the
/// result at once. Returns what was done; the caller reloads the state afterwards. The
/// caller holds the lock.
pub async fn recover(
    providers: &Providers,
    store: &dyn StateStore,
    snapshot: &Snapshot,
    cluster: &str,
) -> Result<Vec<Recovery>, EngineError> {
    let err = |e: &JournalEntry, source| EngineError::Recover {
        address: e.address.clone(),
        action: e.action.name().to_string(),
        source,
    };
    let mut by_provider: BTreeMap<&str, Vec<&JournalEntry>> = BTreeMap::new();
    for e in snapshot
        .journal
        .iter()
        .filter(|e| e.provider != crate::day2::ETCD_JOURNAL)
    {
        by_provider.entry(e.provider.as_str()).or_default().push(e);
    }

    // What each entry found at the provider.
    let mut created: HashMap<&str, Object> = HashMap::new();
    // What a delete's or an update's object is now (`None`: gone).
    let mut read_now: HashMap<&str, Option<Object>> = HashMap::new();
    for (name, entries) in &by_provider {
        let provider = providers.get(name)?;
        if let Some(first) = entries.iter().find(|e| e.action == Action::Create) {
            let objects = provider
                .list_cluster(cluster)
                .await
                .map_err(|s| err(first, s))?;
            let mut by_key: HashMap<String, Object> = objects
                .into_iter()
                .filter_map(|o| o.owner.as_ref().map(|w| w.op.clone()).map(|k| (k, o)))
                .collect();
            for e in entries.iter().filter(|e| e.action == Action::Create) {
                if let Some(o) = by_key.remove(&e.idempotency_key) {
                    created.insert(e.op_id.as_str(), o);
                }
            }
        }
        let deletes: Vec<&&JournalEntry> = entries
            .iter()
            .filter(|e| matches!(e.action, Action::Delete | Action::Update))
            .filter(|e| e.object_id.is_some())
            .collect();
        for chunk in deletes.chunks(provider.max_batch().max(1)) {
            let reqs: Vec<ReadRequest> = chunk
                .iter()
                .map(|e| ReadRequest {
                    address: e.address.clone(),
                    kind: e.kind.clone(),
                    id: e.object_id.clone().unwrap_or_default(),
                    prior: snapshot
                        .resources
                        .get(&e.address)
                        .filter(|r| Some(&r.id) == e.object_id.as_ref())
                        .map(|r| r.attrs.clone())
                        .unwrap_or_default(),
                })
                .collect();
            let answers = provider.read_batch(&reqs).await;
            for (e, a) in chunk.iter().zip(answers) {
                let now = a.map_err(|s| err(e, s))?;
                read_now.insert(e.op_id.as_str(), now);
            }
        }
    }

    // Deletes first, so that a replace's new object is recorded after the old one goes.
    let mut ordered: Vec<&JournalEntry> = snapshot.journal.iter().collect();
    ordered.sort_by_key(|e| e.action != Action::Delete);
    let mut mutations = Vec::new();
    let mut notes = Vec::new();
    for e in ordered {
        if e.provider == crate::day2::ETCD_JOURNAL {
            notes.push(Recovery {
                address: e.address.clone(),
                action: e.action,
                resolution: Resolution::Membership,
            });
            continue;
        }
        let resolution = match e.action {
            Action::Delete => {
                if read_now.get(e.op_id.as_str()).is_some_and(|o| o.is_some()) {
                    Resolution::NotDone
                } else {
                    let recorded = snapshot
                        .resources
                        .get(&e.address)
                        .is_some_and(|r| Some(&r.id) == e.object_id.as_ref());
                    if recorded {
                        mutations.push(Mutation::Remove(e.address.clone()));
                    }
                    Resolution::Removed
                }
            }
            Action::Update => {
                // Record the object as it is now (the update may have happened), so that
                // the state does not keep the old attributes behind a plan with nothing
                // to do.
                let recorded = snapshot
                    .resources
                    .get(&e.address)
                    .filter(|r| Some(&r.id) == e.object_id.as_ref());
                let now = read_now.remove(e.op_id.as_str()).flatten();
                if let (Some(r), Some(obj)) = (recorded, now)
                    && obj.attrs != r.attrs
                {
                    mutations.push(Mutation::Put(ResourceState {
                        address: r.address.clone(),
                        provider: r.provider.clone(),
                        id: obj.id,
                        attrs: obj.attrs,
                        dependencies: r.dependencies.clone(),
                    }));
                }
                Resolution::Refresh
            }
            _ => match created.remove(e.op_id.as_str()) {
                Some(obj) => {
                    let id = obj.id.clone();
                    mutations.push(Mutation::Put(ResourceState {
                        address: e.address.clone(),
                        provider: e.provider.clone(),
                        id: obj.id,
                        attrs: obj.attrs,
                        dependencies: e.dependencies.clone(),
                    }));
                    Resolution::Adopted(id)
                }
                None => Resolution::NotDone,
            },
        };
        mutations.push(Mutation::JournalClose(e.op_id.clone()));
        notes.push(Recovery {
            address: e.address.clone(),
            action: e.action,
            resolution,
        });
    }
    if !mutations.is_empty() {
        store.commit(&mutations)?;
    }
    notes.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(notes)
}
