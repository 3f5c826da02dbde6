//! Plans: the actions a run will take, each with its reason, and the summary line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Address, Attrs, Value};

/// What happens to one resource. The action *is* its symbol, so rendering cannot drift
/// from meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing to do.
    NoOp,
    /// A new object.
    Create,
    /// Change attributes of the existing object in place.
    Update,
    /// Delete the existing object, then create a new one.
    Replace,
    /// Delete the object.
    Delete,
}

impl Action {
    /// The plan symbol: `+`, `~`, `-/+`, `-`.
    pub fn symbol(self) -> &'static str {
        match self {
            Action::NoOp => " ",
            Action::Create => "+",
            Action::Update => "~",
            Action::Replace => "-/+",
            Action::Delete => "-",
        }
    }

    /// The phrase after the address in a plan: `will be created`.
    pub fn phrase(self) -> &'static str {
        match self {
            Action::NoOp => "is unchanged",
            Action::Create => "will be created",
            Action::Update => "will be updated in-place",
            Action::Replace => "must be replaced",
            Action::Delete => "will be destroyed",
        }
    }

    /// The lower-case name used in JSON and the journal.
    pub fn name(self) -> &'static str {
        match self {
            Action::NoOp => "no-op",
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
        }
    }
}

/// The planned change of one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The resource.
    pub address: Address,
    /// The provider that manages it.
    pub provider: String,
    /// What happens.
    pub action: Action,
    /// The id of the existing object (update, replace, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The object's attributes now, as refreshed (update, replace, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Attrs>,
    /// The planned attributes that are known now (create, update, replace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Attrs>,
    /// Attributes known only after apply (ids, DHCP addresses, references to objects
    /// not created yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_unknown: Vec<String>,
    /// Attributes that take the id of another resource, resolved during apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, Address>,
    /// What the new object depends on (create, update, replace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    /// What the existing object depended on (replace, delete): deletes run in reverse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_dependencies: Vec<Address>,
    /// Attributes whose change forces the replacement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_because: Vec<String>,
    /// Attributes whose value changes (update, replace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Attributes the provider marks sensitive: shown as `(sensitive)`, never printed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// What the in-place change of an attribute implies, by attribute (from the
    /// schema's `update_note`, e.g. "restarts the machine").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

impl Change {
    /// The kind of the resource (`machine`).
    pub fn kind(&self) -> &str {
        &self.address.kind
    }
}

/// Something that changed outside clusterform since the last apply, seen by refresh.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The resource.
    pub address: Address,
    /// The object was deleted outside clusterform.
    pub deleted: bool,
    /// Attributes that changed: (name, value in state, value now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<(String, Value, Value)>,
    /// Attributes of this kind the provider marks sensitive: shown as `(sensitive)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
}

/// A whole plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The cluster's name.
    pub cluster: String,
    /// Made by `destroy` / `plan --destroy`.
    pub destroy: bool,
    /// The state lineage the plan was made against (none for an empty state).
    pub state_lineage: Option<String>,
    /// The state serial the plan was made against.
    pub state_serial: u64,
    /// The changes, in dependency order, without no-ops.
    pub changes: Vec<Change>,
    /// How many resources need no change.
    pub unchanged: usize,
    /// What refresh found changed outside clusterform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Drift>,
    /// State records to drop because their object is already gone and nothing will
    /// recreate it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forget: Vec<Address>,
}

/// Counts for `Plan: X to add, Y to change, Z to destroy.`
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Creates and the create half of replaces.
    pub add: usize,
    /// In-place updates.
    pub change: usize,
    /// Deletes and the delete half of replaces.
    pub destroy: usize,
}

impl Plan {
    /// Counts of the plan's actions.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.add += 1,
                Action::Update => s.change += 1,
                Action::Replace => {
                    s.add += 1;
                    s.destroy += 1;
                }
                Action::Delete => s.destroy += 1,
                Action::NoOp => {}
            }
        }
        s
    }

    /// True when applying would change nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.forget.is_empty()
    }
}
