//! The duplicate-create refusal: whatever the state says, a plan never creates an object
//! at an address where the provider already holds one tagged with this cluster and that
//! address (a lost or older state would otherwise make every machine a second time).

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::{Action, Address, Plan};
use clusterform_state::Snapshot;

use crate::{EngineError, Readers};

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
/// (`list_cluster`); a plan without creates calls nothing.
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
            .run(|| reader.list_cluster(cluster), |_, _| {})
            .await
            .map_err(|source| EngineError::Refresh {
                address: Address::new("cluster", cluster),
                source,
            })?;
        for obj in objects {
            let Some(owner) = &obj.owner else { continue };
            if owner.cluster != cluster
                || recorded.contains(obj.id.as_str())
                || !addresses.contains(&owner.address)
            {
                continue;
            }
            out.push(Duplicate {
                address: owner.address.clone(),
                provider: provider.to_string(),
                id: obj.id,
            });
        }
    }
    out.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
    Ok(out)
}
