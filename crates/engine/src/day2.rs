//! Day 2 of an etcd cluster, planned: which machines are etcd members (their rendered
//! config runs `etcd-member.service`), the comparison that keeps bootstrap-only flags
//! from making a running member "changed", and the order of membership steps (one
//! member at a time, with the quorum at each step), the update policy and the guard
//! rails. Pure: the member list is read by the caller and passed in.

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::diff::Equivalence;
use clusterform_core::{
    Action, Address, Attrs, EtcdPlan, MemberStep, Plan, Resource, ResourceState, StepKind,
    UpdatePolicy, Value,
};
use clusterform_etcd::Member;
use clusterform_ignition::etcd::{MemberIdentity, bootstrap_neutral, member_identity_json};
use clusterform_state::JournalEntry;

use crate::EngineError;

/// The `provider` of journal entries that record membership calls.
pub const ETCD_JOURNAL: &str = "etcd";
/// The `kind` of journal entries that record membership calls.
pub const ETCD_KIND: &str = "etcd-member";

/// The attribute holding a machine's rendered config.
const USER_DATA: &str = "user_data";

/// Compares machine configs with the bootstrap-only flags of an etcd member left out:
/// `--initial-cluster` and `--initial-cluster-state` matter only the first time a
/// member starts, so a running member whose planned config differs only in them (the
/// member set changed, or it joined a running cluster) needs no change.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootstrapFlags;

impl Equivalence for BootstrapFlags {
    fn equivalent(&self, kind: &str, attr: &str, want: &Value, now: &Value) -> bool {
        if want == now {
            return true;
        }
        if kind != "machine" || attr != USER_DATA {
            return false;
        }
        let (Some(w), Some(n)) = (want.as_str(), now.as_str()) else {
            return false;
        };
        match (bootstrap_neutral(w), bootstrap_neutral(n)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// The etcd identity of a machine with these attributes, if it runs a member.
pub fn identity(attrs: &Attrs) -> Option<MemberIdentity> {
    attrs
        .get(USER_DATA)
        .and_then(Value::as_str)
        // Most machines are workers: a substring search spares parsing their configs
        // (a no-op plan of 10,000 workers would parse 20,000 of them).
        .filter(|ud| ud.contains(clusterform_ignition::etcd::MEMBER_UNIT))
        .and_then(member_identity_json)
}

/// The etcd member machines: those the state records and those the configuration
/// wants, by address, with who each member is.
#[derive(Clone, Debug, Default)]
pub struct MemberSet {
    /// Member machines in the (refreshed) state.
    pub current: BTreeMap<Address, MemberIdentity>,
    /// Member machines the configuration wants.
    pub desired: BTreeMap<Address, MemberIdentity>,
    /// The provider of each member machine.
    pub providers: BTreeMap<Address, String>,
}

impl MemberSet {
    /// Find the member machines among `desired` and `current`.
    pub fn new(desired: &[Resource], current: &BTreeMap<Address, ResourceState>) -> MemberSet {
        let mut set = MemberSet::default();
        for r in current.values() {
            if let Some(id) = identity(&r.attrs) {
                set.current.insert(r.address.clone(), id);
                set.providers.insert(r.address.clone(), r.provider.clone());
            }
        }
        for r in desired {
            if let Some(id) = identity(&r.attrs) {
                set.desired.insert(r.address.clone(), id);
                set.providers.insert(r.address.clone(), r.provider.clone());
            }
        }
        set
    }

    /// True when the cluster has or wants no etcd member.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.desired.is_empty()
    }

    /// The client URLs of the members in the state (where membership calls go).
    pub fn client_urls(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in self.current.values() {
            for u in &id.client_urls {
                if !out.contains(u) {
                    out.push(u.clone());
                }
            }
        }
        out
    }

    /// The member machine whose peer URL is `url`, in the state or the configuration.
    pub fn by_peer_url(&self, url: &str) -> Option<(&Address, &MemberIdentity)> {
        let same = |id: &MemberIdentity| id.peer_urls.iter().any(|u| same_url(u, url));
        self.current
            .iter()
            .find(|(_, id)| same(id))
            .or_else(|| self.desired.iter().find(|(_, id)| same(id)))
    }
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// What the plan knows of the running cluster's member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Not read: the provider runs no machines (the plain `sim`), so no etcd runs.
    NotRunning,
    /// Read just now.
    Known(Vec<Member>),
    /// Could not be read; why.
    Unreachable(String),
}

impl Membership {
    /// True when membership calls are made (an etcd cluster runs, reachable or not).
    pub fn live(&self) -> bool {
        !matches!(self, Membership::NotRunning)
    }
}

/// How day-2 changes are made, from `[central]` and the command line.
#[derive(Clone, Debug, Default)]
pub struct Day2Settings {
    /// `[central] update`.
    pub update: UpdatePolicy,
    /// `--allow-data-loss`.
    pub allow_data_loss: bool,
    /// The client URLs membership calls go to (`[central] etcd_endpoints`, else the
    /// members in the state).
    pub endpoints: Vec<String>,
    /// `[central] etcd_via`.
    pub via: Option<String>,
}

/// The open journal entries of membership calls (a run that stopped mid-change).
pub fn open_member_entries(journal: &[JournalEntry]) -> Vec<&JournalEntry> {
    journal
        .iter()
        .filter(|e| e.provider == ETCD_JOURNAL)
        .collect()
}

/// What a change does to the etcd cluster: (the old object is a member, the new one is).
fn member_sides(c: &clusterform_core::Change, set: &MemberSet) -> (bool, bool) {
    let old = matches!(c.action, Action::Delete | Action::Replace | Action::Update)
        && set.current.contains_key(&c.address);
    let new = matches!(c.action, Action::Create | Action::Replace | Action::Update)
        && set.desired.contains_key(&c.address);
    (old, new)
}

/// True when `plan` changes an etcd member of a running cluster (so the member list
/// must be read and the changes made one at a time), or an earlier run left a
/// membership change unfinished.
pub fn involves_members(plan: &Plan, set: &MemberSet, journal: &[JournalEntry]) -> bool {
    if !open_member_entries(journal).is_empty() {
        return true;
    }
    if set.current.is_empty() || teardown(plan, set) {
        return false;
    }
    plan.changes.iter().any(|c| {
        let (old, new) = member_sides(c, set);
        old || new
    })
}

/// True when the plan deletes every member machine and creates none: the cluster is
/// torn down (`destroy`), no membership call is made.
fn teardown(plan: &Plan, set: &MemberSet) -> bool {
    !set.current.is_empty()
        && set.current.keys().all(|a| {
            plan.changes
                .iter()
                .any(|c| &c.address == a && c.action == Action::Delete)
        })
        && !plan.changes.iter().any(|c| {
            matches!(c.action, Action::Create | Action::Replace)
                && set.desired.contains_key(&c.address)
        })
}

/// Member machines that must be replaced though no attribute says so, with why: their
/// member is missing from the cluster (an earlier run removed it and stopped), and, with
/// `update = "all-at-once"`, every member once one is replaced (a member cannot rejoin a
/// cluster that is formed anew). The caller plans again with these replaced.
pub fn forced_replacements(
    plan: &Plan,
    set: &MemberSet,
    membership: &Membership,
    settings: &Day2Settings,
) -> BTreeMap<Address, String> {
    let mut out = BTreeMap::new();
    let changed: BTreeMap<&Address, Action> = plan
        .changes
        .iter()
        .map(|c| (&c.address, c.action))
        .collect();
    if let Membership::Known(members) = membership {
        for (addr, id) in &set.current {
            let kept = set.desired.contains_key(addr)
                && !matches!(
                    changed.get(addr),
                    Some(Action::Replace | Action::Delete | Action::Create)
                );
            let present = members
                .iter()
                .any(|m| id.peer_urls.iter().any(|u| m.has_peer_url(u)));
            if kept && !present {
                out.insert(
                    addr.clone(),
                    format!(
                        "its etcd member `{}` is not in the cluster (an earlier run removed it): it is made again to rejoin",
                        id.name
                    ),
                );
            }
        }
    }
    let any_replaced = set
        .current
        .keys()
        .any(|a| changed.get(a) == Some(&Action::Replace) || out.contains_key(a));
    if settings.update == UpdatePolicy::AllAtOnce && any_replaced {
        for addr in set.current.keys() {
            if set.desired.contains_key(addr)
                && !matches!(changed.get(addr), Some(Action::Replace | Action::Delete))
                && !out.contains_key(addr)
            {
                out.insert(
                    addr.clone(),
                    "`update = \"all-at-once\"`: every member is made again together".to_string(),
                );
            }
        }
    }
    out
}

/// The quorum of a cluster of `voters` voting members.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A member, as drift reports name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberRef {
    /// The central machine it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// Its name (empty for a member that never started).
    pub name: String,
    /// Its peer URL.
    pub peer_url: String,
    /// Its id (16 hex digits), when it is in the member list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How the etcd member list disagrees with the member machines in the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberDrift {
    /// Voting members in the cluster.
    pub voters: usize,
    /// Member machines in the state whose member is not in the cluster.
    pub missing: Vec<MemberRef>,
    /// Members that no member machine in the state accounts for.
    pub extra: Vec<MemberRef>,
    /// Member machines whose member is still a learner (never promoted).
    pub learners: Vec<MemberRef>,
}

impl MemberDrift {
    /// True when the member list and the state disagree.
    pub fn drifted(&self) -> bool {
        !(self.missing.is_empty() && self.extra.is_empty() && self.learners.is_empty())
    }
}

/// Compare the member list with the member machines the state records (`current`).
pub fn member_drift(
    current: &BTreeMap<Address, MemberIdentity>,
    members: &[Member],
) -> MemberDrift {
    let mut d = MemberDrift {
        voters: members.iter().filter(|m| !m.is_learner).count(),
        ..MemberDrift::default()
    };
    for (a, id) in current {
        let url = peer(id);
        match members.iter().find(|m| m.has_peer_url(&url)) {
            None => d.missing.push(MemberRef {
                address: Some(a.clone()),
                name: id.name.clone(),
                peer_url: url,
                id: None,
            }),
            Some(m) if m.is_learner => d.learners.push(MemberRef {
                address: Some(a.clone()),
                name: id.name.clone(),
                peer_url: url,
                id: Some(m.hex_id()),
            }),
            Some(_) => {}
        }
    }
    for m in members {
        let url = m.peer_urls.first().cloned().unwrap_or_default();
        if !current
            .values()
            .any(|id| id.peer_urls.iter().any(|u| m.has_peer_url(u)))
        {
            d.extra.push(MemberRef {
                address: None,
                name: m.name.clone(),
                peer_url: url,
                id: Some(m.hex_id()),
            });
        }
    }
    d
}

/// One step as planned, before numbering.
struct Draft {
    address: Option<Address>,
    name: String,
    peer_url: String,
    kind: StepKind,
    /// Voting members that are down (or gone) during the step: 0 or 1.
    down: usize,
    /// Voting members after the step, minus before.
    gain: isize,
    resume: Option<String>,
}

/// Order, check and describe the changes `plan` makes to etcd members: fills
/// `plan.etcd`, moves stale members out of the plan (`update = "manual"`), and refuses
/// (with what would be lost) a plan that loses the cluster's data without
/// `allow_data_loss`. `forced` are the addresses replaced on purpose (`--replace`), which
/// `update = "manual"` does not hold back.
pub fn plan_members(
    plan: &mut Plan,
    set: &MemberSet,
    membership: &Membership,
    journal: &[JournalEntry],
    settings: &Day2Settings,
    forced: &BTreeSet<Address>,
) -> Result<(), EngineError> {
    if !involves_members(plan, set, journal) {
        return Ok(());
    }
    let resolves: Vec<String> = open_member_entries(journal)
        .iter()
        .map(|e| e.op_id.clone())
        .collect();
    if teardown(plan, set) {
        // The cluster goes (`destroy`): nothing to call, and the unfinished membership
        // changes of earlier runs end with it.
        plan.etcd = Some(EtcdPlan {
            update: settings.update,
            resolves,
            ..EtcdPlan::default()
        });
        return Ok(());
    }
    let mut etcd = EtcdPlan {
        update: settings.update,
        live: membership.live(),
        endpoints: settings.endpoints.clone(),
        via: settings.via.clone(),
        resolves,
        ..EtcdPlan::default()
    };
    let members: Option<&[Member]> = match membership {
        Membership::Known(m) => Some(m),
        _ => None,
    };
    etcd.voters = match members {
        Some(m) => m.iter().filter(|m| !m.is_learner).count(),
        None => set.current.len(),
    };
    if let Membership::Unreachable(why) = membership {
        etcd.notes.push(format!(
            "the etcd member list could not be read ({why}): this plan assumes it matches the central machines in the state; apply checks the cluster before every step and stops before changing anything when it cannot reach it"
        ));
    }

    // The member changes, by what they do.
    let mut kinds: Vec<(usize, StepKind)> = Vec::new();
    let mut held_back = Vec::new();
    for (i, c) in plan.changes.iter().enumerate() {
        let kind = match (c.action, member_sides(c, set)) {
            (Action::Update, (true, true)) => StepKind::Update,
            (Action::Replace, (true, true)) => StepKind::Replace,
            (_, (true, false)) => StepKind::Leave,
            (_, (false, true)) => StepKind::Join,
            _ => continue,
        };
        if kind == StepKind::Replace
            && settings.update == UpdatePolicy::Manual
            && !forced.contains(&c.address)
            && c.replace_reason.is_none()
        {
            held_back.push(i);
        } else {
            kinds.push((i, kind));
        }
    }

    // Losing the only member, or every member at once, loses the data.
    let replaced = kinds
        .iter()
        .filter(|(_, k)| *k == StepKind::Replace)
        .count();
    let leaving = kinds.iter().any(|(_, k)| *k == StepKind::Leave);
    let all_at_once = settings.update == UpdatePolicy::AllAtOnce && replaced > 0;
    let only_member = etcd.voters <= 1 && (replaced > 0 || leaving);
    if all_at_once || only_member {
        let what = if only_member {
            let a = kinds
                .iter()
                .find(|(_, k)| matches!(k, StepKind::Replace | StepKind::Leave))
                .map(|(i, _)| plan.changes[*i].address.to_string())
                .unwrap_or_default();
            format!(
                "`{a}` is the only etcd member: replacing or removing it loses the etcd cluster and every key in it"
            )
        } else {
            format!(
                "`update = \"all-at-once\"` replaces {replaced} of {} etcd members together: the cluster loses its quorum and is formed anew, empty; every key in it is lost",
                etcd.voters
            )
        };
        if !settings.allow_data_loss {
            return Err(EngineError::Refused {
                message: format!("this plan would lose the etcd data: {what}"),
                help: "take a snapshot first (`etcdctl snapshot save`), then pass --allow-data-loss; or run 3 or more members with `update = \"rolling\"`, which keeps the data through every change".to_string(),
            });
        }
        etcd.data_loss.push(what);
        // The members are made anew together: no membership call, no order.
        etcd.bootstrap = true;
        etcd.live = false;
        plan.etcd = Some(etcd);
        return Ok(());
    }

    // `manual`: stale members stay as they are, listed.
    for &i in held_back.iter().rev() {
        let c = plan.changes.remove(i);
        etcd.stale.push(c.address);
        plan.unchanged += 1;
        for (x, _) in kinds.iter_mut() {
            if *x > i {
                *x -= 1;
            }
        }
    }
    etcd.stale.sort();

    let mut drafts = members
        .map(|ms| repairs(ms, set, plan, &kinds))
        .unwrap_or_default();
    // Leaves (highest index first), then joins, replacements and in-place changes.
    let order = [
        StepKind::Leave,
        StepKind::Join,
        StepKind::Replace,
        StepKind::Update,
    ];
    for kind in order {
        let mut ix: Vec<usize> = kinds
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(i, _)| *i)
            .collect();
        ix.sort_by(|a, b| plan.changes[*a].address.cmp(&plan.changes[*b].address));
        if kind == StepKind::Leave {
            ix.reverse();
        }
        for i in ix {
            if let Some(d) = draft(kind, &plan.changes[i], set, members) {
                drafts.push(d);
            }
        }
    }

    // Number them and count the voters through the sequence.
    let mut per_kind: BTreeMap<StepKind, usize> = BTreeMap::new();
    for d in &drafts {
        *per_kind.entry(d.kind).or_default() += 1;
    }
    let mut seen: BTreeMap<StepKind, usize> = BTreeMap::new();
    let mut voters = etcd.voters;
    for d in drafts {
        let position = {
            let n = seen.entry(d.kind).or_default();
            *n += 1;
            *n
        };
        let before = voters;
        let min = before.saturating_sub(d.down);
        let after = before.saturating_add_signed(d.gain);
        if before > 0 && min == 0 {
            let what = format!(
                "`{}` would leave no etcd member running",
                d.address
                    .as_ref()
                    .map_or(d.name.clone(), ToString::to_string)
            );
            if !settings.allow_data_loss {
                return Err(EngineError::Refused {
                    message: format!("this plan would take down the etcd quorum: {what}"),
                    help: "grow the cluster first (`[central] count`), or pass --allow-data-loss after a snapshot (`etcdctl snapshot save`)".to_string(),
                });
            }
            etcd.data_loss.push(what);
        }
        voters = after;
        etcd.steps.push(MemberStep {
            address: d.address,
            name: d.name,
            peer_url: d.peer_url,
            kind: d.kind,
            position,
            of: per_kind.get(&d.kind).copied().unwrap_or(0),
            voters_before: before,
            voters_min: min,
            voters_after: after,
            resume: d.resume,
        });
    }
    plan.etcd = Some(etcd);
    Ok(())
}

/// The first peer URL of a member machine.
fn peer(id: &MemberIdentity) -> String {
    id.peer_urls.first().cloned().unwrap_or_default()
}

/// Steps that repair what a stopped run left in the member list: a member that no
/// central machine accounts for is removed; a member machine in the state whose member
/// is still a learner is promoted.
fn repairs(
    members: &[Member],
    set: &MemberSet,
    plan: &Plan,
    kinds: &[(usize, StepKind)],
) -> Vec<Draft> {
    let planned = |a: &Address, ks: &[StepKind]| {
        kinds
            .iter()
            .any(|(i, k)| &plan.changes[*i].address == a && ks.contains(k))
    };
    let mut out = Vec::new();
    for m in members {
        let url = m.peer_urls.first().cloned().unwrap_or_default();
        let stray = |why: &str, address: Option<Address>, name: String| Draft {
            address,
            name,
            peer_url: url.clone(),
            kind: StepKind::RemoveStray,
            down: usize::from(!m.is_learner),
            gain: if m.is_learner { 0 } else { -1 },
            resume: Some(why.to_string()),
        };
        match set.by_peer_url(&url) {
            None => out.push(stray(
                if m.started() {
                    "it matches no central machine"
                } else {
                    "it was added by a run that stopped, and never started"
                },
                None,
                if m.name.is_empty() {
                    url.clone()
                } else {
                    m.name.clone()
                },
            )),
            Some((a, id)) => {
                let in_state = set.current.contains_key(a);
                if !in_state && !planned(a, &[StepKind::Join]) {
                    out.push(stray(
                        "its machine is neither in the state nor wanted",
                        Some(a.clone()),
                        id.name.clone(),
                    ));
                } else if in_state
                    && m.is_learner
                    && !planned(a, &[StepKind::Leave, StepKind::Replace, StepKind::Join])
                {
                    out.push(Draft {
                        address: Some(a.clone()),
                        name: id.name.clone(),
                        peer_url: url.clone(),
                        kind: StepKind::Promote,
                        down: 0,
                        gain: 1,
                        resume: Some("it joined as a learner and was never promoted".to_string()),
                    });
                }
            }
        }
    }
    out
}

/// The step of one member change, with what an earlier run already did of it.
fn draft(
    kind: StepKind,
    c: &clusterform_core::Change,
    set: &MemberSet,
    members: Option<&[Member]>,
) -> Option<Draft> {
    let find = |url: &str| members.and_then(|ms| ms.iter().find(|m| m.has_peer_url(url)));
    let known = members.is_some();
    let old = set.current.get(&c.address);
    let new = set.desired.get(&c.address);
    let id = match kind {
        StepKind::Leave => old?,
        _ => new?,
    };
    let url = peer(id);
    let (down, gain, resume) = match kind {
        StepKind::Leave => match find(&url) {
            _ if !known => (1, -1, None),
            None => (0, 0, Some("already removed from etcd".to_string())),
            Some(m) if m.is_learner => (0, 0, None),
            Some(_) => (1, -1, None),
        },
        StepKind::Join => match find(&url) {
            _ if !known => (0, 1, None),
            None => (0, 1, None),
            Some(m) if m.started() => (
                usize::from(!m.is_learner),
                0,
                Some("its old member is still in the cluster: removed first".to_string()),
            ),
            Some(m) if m.is_learner => {
                (0, 1, Some("already added to etcd (a learner)".to_string()))
            }
            Some(_) => (0, 0, Some("already in the member list".to_string())),
        },
        StepKind::Replace => {
            let old_url = old.map(peer).unwrap_or_default();
            match (find(&old_url), known) {
                (_, false) => (1, 0, None),
                (Some(m), true) if !m.is_learner => (1, 0, None),
                (Some(_), true) => (0, 1, None),
                (None, true) => (
                    0,
                    1,
                    Some(if old_url != url && find(&url).is_some() {
                        "the old member was already removed and the new one added".to_string()
                    } else {
                        "the old member was already removed from etcd".to_string()
                    }),
                ),
            }
        }
        // An in-place change takes the member down only when it restarts the machine.
        _ => (usize::from(!c.notes.is_empty()), 0, None),
    };
    Some(Draft {
        address: Some(c.address.clone()),
        name: id.name.clone(),
        peer_url: url,
        kind,
        down,
        gain,
        resume,
    })
}

#[cfg(test)]
mod tests;
