//! Tagged objects the state does not record ([`unrecorded`], shared by adoption, drift
//! and this check), and the duplicate-create refusal: whatever the state says, a plan
//! never creates an object at an address where the provider already holds one tagged
//! with this cluster and that address (a lost or older state would otherwise make every
//! machine a second time).

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::{Action, Address, Plan};
use clusterform_provider::{Object, Ownership, ProviderError, Reader};
use clusterform_state::Snapshot;

use crate::{EngineError, Readers};

/// The objects of `cluster` at `reader` that carry ownership tags and whose id is not in
/// `recorded`, each with its tags, sorted by id. One `list_cluster` call.
pub(crate) async fn unrecorded(
    reader: &dyn Reader,
    cluster: &str,
    recorded: &BTreeSet<&str>,
) -> Result<Vec<(Ownership, Object)>, ProviderError> {
    let mut objects: Vec<(Ownership, Object)> = reader
        .list_cluster(cluster)
        .await?
        .into_iter()
        .filter(|o| !recorded.contains(o.id.as_str()))
        .filter_map(|o| Some((o.owner.clone()?, o)))
        .collect();
    objects.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(objects)
}

/// An object at the provider that a planned create would duplicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    /// The address the plan creates and the object's tags name.
    pub address: Address,
    /// The provider holding it.
    pub provider: String,
    /// Its id there.
    pub id: String,
}

/// The tagged objects that the creates of `plan` would duplicate: objects of `cluster`
/// at a provider the plan creates with, whose address the plan creates (or replaces)
/// and whose id the state does not record. Lists each such provider's objects once
/// (retried like a refresh); a plan without creates calls nothing.
pub async fn duplicates(
    readers: &Readers,
    snapshot: &Snapshot,
    cluster: &str,
    plan: &Plan,
) -> Result<Vec<Duplicate>, EngineError> {
    let mut created: BTreeMap<&str, BTreeSet<&Address>> = BTreeMap::new();
    for c in &plan.changes {
        if matches!(c.action, Action::Create | Action::Replace) {
            created
                .entry(c.provider.as_str())
                .or_default()
                .insert(&c.address);
        }
    }
    let recorded: BTreeSet<&str> = snapshot.resources.values().map(|r| r.id.as_str()).collect();
    let mut out = Vec::new();
    for (provider, addresses) in created {
        let reader = readers.get(provider)?;
        let objects = crate::RetryPolicy::default()
            .run(
                || unrecorded(reader.as_ref(), cluster, &recorded),
                |_, _| {},
            )
            .await
            .map_err(|source| EngineError::Refresh {
                address: Address::new("cluster", cluster),
                source,
            })?;
        for (owner, obj) in objects {
            if addresses.contains(&owner.address) {
                out.push(Duplicate {
                    address: owner.address,
                    provider: provider.to_string(),
                    id: obj.id,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
    Ok(out)
}
