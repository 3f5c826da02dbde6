//! Crash recovery: resolve every journal entry that was opened and never closed (the
//! process died, or the provider's answer was lost) before planning, by asking the
//! provider what exists: a created object is adopted into state, a finished delete is
//! recorded, and the entry is closed.

use clusterform_core::{Action, ResourceState};
use clusterform_provider::ReadRequest;
use clusterform_state::{Mutation, Snapshot, StateStore};

use crate::{EngineError, Providers};

/// What recovery did with one open journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The resource.
    pub address: clusterform_core::Address,
    /// The unfinished action.
    pub action: Action,
    /// What was found and done, one sentence.
    pub resolution: String,
}

/// Resolve the open entries of `snapshot.journal`, committing the result. Returns what
/// was done; the caller reloads the state afterwards. The caller holds the lock.
pub async fn recover(
    providers: &Providers,
    store: &dyn StateStore,
    snapshot: &Snapshot,
) -> Result<Vec<Recovery>, EngineError> {
    let mut notes = Vec::new();
    for entry in &snapshot.journal {
        let provider = providers.get(&entry.provider)?;
        let err = |source| EngineError::Recover {
            address: entry.address.clone(),
            action: entry.action.name().to_string(),
            source,
        };
        let mut mutations = Vec::new();
        let resolution = match entry.action {
            Action::Delete => {
                let gone = match &entry.object_id {
                    Some(id) => provider
                        .read(&ReadRequest {
                            address: entry.address.clone(),
                            kind: entry.kind.clone(),
                            id: id.clone(),
                        })
                        .await
                        .map_err(err)?
                        .is_none(),
                    None => true,
                };
                if gone {
                    let still_recorded = snapshot
                        .resources
                        .get(&entry.address)
                        .is_some_and(|r| Some(&r.id) == entry.object_id.as_ref());
                    if still_recorded {
                        mutations.push(Mutation::Remove(entry.address.clone()));
                    }
                    "the delete had finished; removed from state".to_string()
                } else {
                    "the delete had not happened; the plan decides again".to_string()
                }
            }
            Action::Update => {
                "the update may or may not have happened; refresh reads the object as it is"
                    .to_string()
            }
            _ => match provider
                .find_by_key(&entry.kind, &entry.idempotency_key)
                .await
                .map_err(err)?
            {
                Some(obj) => {
                    let id = obj.id.clone();
                    mutations.push(Mutation::Put(ResourceState {
                        address: entry.address.clone(),
                        provider: entry.provider.clone(),
                        id: obj.id,
                        attrs: obj.attrs,
                        dependencies: entry.dependencies.clone(),
                    }));
                    format!("the object had been created (id {id}); adopted into state")
                }
                None => "no object had been created; nothing to adopt".to_string(),
            },
        };
        mutations.push(Mutation::JournalClose(entry.op_id.clone()));
        store.commit(&mutations)?;
        notes.push(Recovery {
            address: entry.address.clone(),
            action: entry.action,
            resolution,
        });
    }
    Ok(notes)
}
