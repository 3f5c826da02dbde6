//! Adoption by ownership tags: after a state was restored from a backup, objects the
//! provider holds with this cluster's tags but the state does not record (made after the
//! backup) are taken into the state, so that nothing is orphaned or made twice.

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::{Address, Resource, ResourceState};
use clusterform_state::{Mutation, Snapshot, StateStore};

use crate::{EngineError, Providers};

/// What adoption found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Objects taken into the state: (address, id).
    pub adopted: Vec<(Address, String)>,
    /// Extra objects carrying an address that was already adopted or recorded: left
    /// alone (address, id) for the user to look at.
    pub duplicates: Vec<(Address, String)>,
}

/// Adopt every object of `cluster` at `providers` whose address the state lacks.
/// Dependencies come from the configuration (`desired`) where it has the resource.
/// The caller holds the lock.
pub async fn adopt_tagged(
    providers: &Providers,
    store: &dyn StateStore,
    snapshot: &Snapshot,
    cluster: &str,
    desired: &[Resource],
) -> Result<Adoption, EngineError> {
    let deps: BTreeMap<&Address, Vec<Address>> = desired
        .iter()
        .map(|r| (&r.address, r.dependencies()))
        .collect();
    let recorded_ids: BTreeSet<&str> = snapshot.resources.values().map(|r| r.id.as_str()).collect();
    let mut taken: BTreeSet<Address> = snapshot.resources.keys().cloned().collect();
    let mut out = Adoption::default();
    let mut mutations = Vec::new();
    for name in providers.names() {
        let provider = providers.get(name)?;
        let objects = crate::duplicates::unrecorded(provider.as_ref(), cluster, &recorded_ids)
            .await
            .map_err(|source| EngineError::Refresh {
                address: Address::new("cluster", "adopt"),
                source,
            })?;
        for (owner, obj) in objects {
            let address = owner.address;
            if !taken.insert(address.clone()) {
                out.duplicates.push((address, obj.id));
                continue;
            }
            out.adopted.push((address.clone(), obj.id.clone()));
            mutations.push(Mutation::Put(ResourceState {
                dependencies: deps.get(&address).cloned().unwrap_or_default(),
                address,
                provider: name.to_string(),
                id: obj.id,
                attrs: obj.attrs,
            }));
        }
    }
    if !mutations.is_empty() {
        store.commit(&mutations)?;
    }
    Ok(out)
}
