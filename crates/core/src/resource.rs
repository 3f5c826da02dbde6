//! Resources: what the configuration wants (`Resource`) and what the state records
//! (`ResourceState`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Address;

/// A concrete attribute value (strings, numbers, booleans, lists, maps).
pub type Value = serde_json::Value;

/// Attributes by name, sorted so that output and hashes are stable.
pub type Attrs = BTreeMap<String, Value>;

/// A resource as the configuration wants it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Where it lives: `machine.workers[3]`.
    pub address: Address,
    /// The provider that manages it (`sim`, `ec2`, `metal`, `libvirt`).
    pub provider: String,
    /// The attributes the user (or the blueprint) set, without references.
    pub attrs: Attrs,
    /// Attributes whose value is the provider id of another resource, resolved when
    /// planning (known) or during apply (`(known after apply)`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, Address>,
    /// Instances this one must come after (from `depends_on` and blueprints), already
    /// expanded to instance addresses. References are edges too; they are not repeated here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    /// Attributes rendered from values known only after apply (the address a provider
    /// reserves for a machine): their values here are stand-ins, the plan shows them
    /// `(known after apply)` and the apply renders them again once the values exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
}

impl Resource {
    /// Every address this resource depends on: reference targets, then `depends_on`,
    /// without duplicates.
    pub fn dependencies(&self) -> Vec<Address> {
        let mut deps: Vec<Address> = self.refs.values().cloned().collect();
        for d in &self.depends_on {
            if !deps.contains(d) {
                deps.push(d.clone());
            }
        }
        deps
    }
}

/// A resource as the state records it after an apply (or as a refresh saw it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceState {
    /// Where it lives.
    pub address: Address,
    /// The provider that manages it.
    pub provider: String,
    /// The provider's id for the object (instance id, domain name...).
    pub id: String,
    /// All attributes: the inputs as applied (references resolved to ids) and the
    /// values the provider computed.
    pub attrs: Attrs,
    /// What it depended on when it was applied; destroy walks these in reverse even
    /// when the configuration no longer has the resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Address>,
}
