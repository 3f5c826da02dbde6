//! Import: adopt an object that already exists at a provider into the state under an
//! address of the cluster file, so that the next plan manages it instead of making a
//! second one.

use clusterform_core::{Address, Resource, ResourceState};
use clusterform_provider::{Object, Provider, ProviderError};
use clusterform_state::{Mutation, Snapshot, StateStore};

use crate::EngineError;

/// What an import recorded, and what the caller may want to warn about.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// The record now in the state.
    pub record: ResourceState,
    /// The serial after the commit.
    pub serial: u64,
    /// The object's own tags name another address of this cluster (it was made for that
    /// one); the import went ahead.
    pub tagged_as: Option<Address>,
}

/// Read object `id` through `provider` and record it as `desired.address`. Refuses when
/// the address is already in the state, when the state records the id under another
/// address, and when the object carries another cluster's tags. The caller holds the lock.
pub async fn import(
    provider: &dyn Provider,
    store: &dyn StateStore,
    snapshot: &Snapshot,
    cluster: &str,
    desired: &Resource,
    id: &str,
) -> Result<Imported, EngineError> {
    let address = &desired.address;
    if let Some(r) = snapshot.resources.get(address) {
        return Err(EngineError::Refused {
            message: format!("`{address}` is already in the state (id `{}`)", r.id),
            help: format!(
                "to manage another object as `{address}`, first forget this one: clusterform state rm {address}"
            ),
        });
    }
    if let Some(r) = snapshot.resources.values().find(|r| r.id == id) {
        return Err(EngineError::Refused {
            message: format!("object `{id}` is already in the state as `{}`", r.address),
            help: "an object can be managed under one address only".to_string(),
        });
    }
    let obj: Object = provider
        .import(&address.kind, id)
        .await
        .map_err(|source| match source {
            ProviderError::NotFound(_) => EngineError::Refused {
                message: format!(
                    "provider `{}` has no {} with id `{id}`",
                    provider.name(),
                    address.kind
                ),
                help: "check the id (and that it is of the kind the address names)".to_string(),
            },
            source => EngineError::Provider {
                provider: provider.name().to_string(),
                source,
            },
        })?;
    let mut tagged_as = None;
    if let Some(owner) = &obj.owner {
        if owner.cluster != cluster {
            return Err(EngineError::Refused {
                message: format!(
                    "object `{id}` belongs to cluster `{}` (its `clusterform:cluster` tag)",
                    owner.cluster
                ),
                help:
                    "an object is managed by the cluster it was made for: use that cluster's file"
                        .to_string(),
            });
        }
        if &owner.address != address {
            tagged_as = Some(owner.address.clone());
        }
    }
    let record = ResourceState {
        address: address.clone(),
        provider: desired.provider.clone(),
        id: obj.id,
        attrs: obj.attrs,
        dependencies: desired.dependencies(),
    };
    let serial = store.commit(&[Mutation::Put(record.clone())])?;
    Ok(Imported {
        record,
        serial,
        tagged_as,
    })
}
