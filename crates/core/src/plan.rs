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
    /// Attributes (of `after_unknown`) the apply renders again from the configuration
    /// once what they are made from exists (see `Resource::deferred`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deferred: Vec<String>,
    /// What the new object depends on (create, update, replace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    /// What the existing object depended on (replace, delete): deletes run in reverse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_dependencies: Vec<Address>,
    /// Attributes whose change forces the replacement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace_because: Vec<String>,
    /// Why the object is replaced when no attribute forces it (`--replace`, an etcd
    /// member missing from its cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_reason: Option<String>,
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
    /// How the etcd members among the changes are changed, one at a time (none when the
    /// plan changes no etcd member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdPlan>,
}

/// How changes to the central machines (the etcd members) are applied:
/// `[central] update`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdatePolicy {
    /// One member at a time, each step gated on the cluster's health.
    #[default]
    Rolling,
    /// Members whose config is stale are listed and left alone; `--replace` replaces one.
    Manual,
    /// Every member at once: the cluster and its data are lost (`--allow-data-loss`).
    AllAtOnce,
}

impl UpdatePolicy {
    /// Its name in `[central] update`.
    pub fn name(self) -> &'static str {
        match self {
            UpdatePolicy::Rolling => "rolling",
            UpdatePolicy::Manual => "manual",
            UpdatePolicy::AllAtOnce => "all-at-once",
        }
    }

    /// The policy called `name`.
    pub fn from_name(name: &str) -> Option<UpdatePolicy> {
        Some(match name {
            "rolling" => UpdatePolicy::Rolling,
            "manual" => UpdatePolicy::Manual,
            "all-at-once" => UpdatePolicy::AllAtOnce,
            _ => return None,
        })
    }
}

/// What one membership step does to the etcd cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A new member joins the running cluster: `MemberAdd` (as a learner), the machine
    /// is created and boots with `--initial-cluster-state=existing`, then it is promoted.
    Join,
    /// A member leaves: `MemberRemove`, then its machine is deleted.
    Leave,
    /// A member is replaced: it leaves, its machine is made again with the same name
    /// and address, and it joins again.
    Replace,
    /// A member's machine is changed in place; the cluster is checked before and after.
    Update,
    /// A member that joined but was never promoted (a run stopped): promote it.
    Promote,
    /// A member that no central machine accounts for (left by a stopped run): removed.
    RemoveStray,
}

impl StepKind {
    /// The lower-case name used in JSON and messages.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Join => "join",
            StepKind::Leave => "leave",
            StepKind::Replace => "replace",
            StepKind::Update => "update",
            StepKind::Promote => "promote",
            StepKind::RemoveStray => "remove-stray",
        }
    }
}

/// One step of a membership change; steps run one after the other, each only once the
/// cluster is healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStep {
    /// The central machine (for a stray member: the one whose address it has, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// The member's name (`--name`).
    pub name: String,
    /// Its peer URL, by which it is found in the member list.
    pub peer_url: String,
    /// What the step does.
    pub kind: StepKind,
    /// 1-based position among the plan's steps of the same kind.
    pub position: usize,
    /// How many steps of this kind the plan has.
    pub of: usize,
    /// Voting members before the step.
    pub voters_before: usize,
    /// The fewest voting members there are during the step.
    pub voters_min: usize,
    /// Voting members after the step.
    pub voters_after: usize,
    /// What a stopped earlier run already did of this step (`already added`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
}

/// The etcd side of a plan: the member changes in the order they run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdPlan {
    /// `[central] update`.
    pub update: UpdatePolicy,
    /// The membership calls are made (false when the provider runs no machines, as the
    /// plain `sim`: the steps then only order the changes).
    pub live: bool,
    /// The client URLs the calls go to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// `[central] etcd_via`: the SSH tunnel the calls go through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The cluster is being formed: every member is created at once with
    /// `--initial-cluster-state=new` (no membership call).
    pub bootstrap: bool,
    /// Voting members before the plan.
    pub voters: usize,
    /// The steps, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<MemberStep>,
    /// `update = "manual"`: members whose config is stale, left as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<Address>,
    /// Op ids of unfinished membership changes of earlier runs (open journal entries)
    /// that this plan finishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolves: Vec<String>,
    /// What this plan loses, when `--allow-data-loss` allowed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_loss: Vec<String>,
    /// Notes for the plan's reader (the member list could not be read...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl EtcdPlan {
    /// The step that changes the machine at `address`, if any.
    pub fn step_for(&self, address: &Address) -> Option<&MemberStep> {
        self.steps
            .iter()
            .find(|s| s.address.as_ref() == Some(address))
    }
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
        self.changes.is_empty()
            && self.forget.is_empty()
            && self
                .etcd
                .as_ref()
                .is_none_or(|e| e.steps.is_empty() && e.resolves.is_empty())
    }
}
