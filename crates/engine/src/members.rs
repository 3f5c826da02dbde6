//! Day 2 of an etcd cluster, applied: what each membership node of the apply walk does
//! through etcd's membership API (remove a member, add one as a learner, wait for it to
//! start and promote it, check the cluster's health before and after an in-place
//! change), each gated on the cluster's health first, and the check before any change
//! that etcd can be reached at all. Every call here is safe to make again after a lost
//! answer or a crash: members are found by peer URL first.

use std::time::{Duration, Instant};

use clusterform_core::{EtcdPlan, MemberStep, StepKind};
use clusterform_etcd::{EtcdAdmin, EtcdError, Health, Member, check_health, describe_member};

use crate::EngineError;

/// How long membership nodes wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberWaits {
    /// For a new member to start, catch up and be promoted.
    pub join: Duration,
    /// For the cluster to be healthy again after a change.
    pub healthy: Duration,
    /// Between two looks.
    pub poll: Duration,
}

impl Default for MemberWaits {
    fn default() -> Self {
        MemberWaits {
            join: Duration::from_secs(300),
            healthy: Duration::from_secs(120),
            poll: Duration::from_millis(500),
        }
    }
}

/// A membership node: what it does to the member of its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MemberOp {
    /// `MemberRemove` (after the health gate), before the machine is deleted.
    Remove,
    /// `MemberAdd` as a learner (after the health gate), before the machine is created.
    Add,
    /// Wait for the new member to start, promote it, wait until healthy and caught up.
    Promote,
    /// The health gate before an in-place change of a member's machine.
    Gate,
    /// Wait until healthy after an in-place change.
    Settle,
}

impl MemberOp {
    /// What the node does, for progress lines: (while, done).
    pub(crate) fn verbs(self) -> (&'static str, &'static str) {
        match self {
            MemberOp::Remove => ("Removing from etcd...", "Removed from etcd"),
            MemberOp::Add => ("Adding to etcd...", "Added to etcd"),
            MemberOp::Promote => (
                "Waiting for the member to join...",
                "Joined etcd (voting member, caught up)",
            ),
            MemberOp::Gate => ("Checking etcd health...", "etcd healthy"),
            MemberOp::Settle => ("Waiting for etcd to be healthy...", "etcd healthy"),
        }
    }

    /// Whether the node changes the member list (and so is journaled).
    pub(crate) fn mutates(self) -> bool {
        matches!(self, MemberOp::Remove | MemberOp::Add | MemberOp::Promote)
    }
}

/// The nodes of a step of `kind`, in order: membership nodes around the provider's
/// delete and create (or update) of the step's machine.
pub(crate) fn layout(kind: StepKind) -> &'static [Slot] {
    use MemberOp::{Add, Gate, Promote, Remove, Settle};
    use Slot::{Apply, Destroy, Op};
    match kind {
        StepKind::Leave => &[Op(Remove), Destroy],
        StepKind::RemoveStray => &[Op(Remove)],
        StepKind::Join => &[Op(Add), Apply, Op(Promote)],
        StepKind::Replace => &[Op(Remove), Destroy, Op(Add), Apply, Op(Promote)],
        StepKind::Update => &[Op(Gate), Apply, Op(Settle)],
        StepKind::Promote => &[Op(Promote)],
    }
}

/// One place in a step's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A membership node.
    Op(MemberOp),
    /// The provider's delete of the step's machine.
    Destroy,
    /// The provider's create or update of the step's machine.
    Apply,
}

/// Before any change: a plan with membership steps needs etcd reachable; otherwise stop
/// before changing anything and say how to reach it.
pub async fn preflight(plan: &EtcdPlan, etcd: Option<&dyn EtcdAdmin>) -> Result<(), EngineError> {
    if !plan.live || plan.steps.is_empty() && plan.resolves.is_empty() {
        return Ok(());
    }
    let Some(etcd) = etcd else {
        return Err(EngineError::Refused {
            message: "this plan changes etcd members, and no way to reach etcd was given".to_string(),
            help: "run it with `clusterform apply`, which connects to the central machines' client URLs".to_string(),
        });
    };
    match etcd.members().await {
        Ok(_) => Ok(()),
        Err(e) => Err(unreachable(&e)),
    }
}

/// The refusal when etcd cannot be reached, with how to reach it.
pub fn unreachable(e: &EtcdError) -> EngineError {
    EngineError::Refused {
        message: format!("{e}; nothing was changed"),
        help: "clusterform calls etcd's membership API at the central machines' client URLs: run it from a machine on the cluster network, or set `[central] etcd_via = \"ssh://core@HOST\"` (a machine of the cluster that reaches the etcd members; clusterform tunnels through the system `ssh`), or `[central] etcd_endpoints` to URLs that reach them".to_string(),
    }
}

fn err(e: EtcdError) -> String {
    e.to_string()
}

/// Whether a refusal is worth waiting out: etcd says no to membership changes for a few
/// seconds after a member starts or leaves (`unhealthy cluster`, code 14 Unavailable).
fn transient(e: &EtcdError) -> bool {
    match e {
        EtcdError::Api { code, message, .. } => {
            *code == 14
                || message.contains("unhealthy cluster")
                || message.contains("too many learner")
        }
        EtcdError::NotReady(_) => true,
        _ => false,
    }
}

/// Run a membership change, retrying while etcd says it is briefly unable, or its
/// answer was lost (the caller takes "already done" for done), up to `waits.healthy`.
async fn with_retry<T, F, Fut>(waits: &MemberWaits, mut f: F) -> Result<T, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EtcdError>>,
{
    let deadline = Instant::now() + waits.healthy;
    loop {
        match f().await {
            Err(e) if retry_change(&e) && Instant::now() < deadline => {
                tracing::debug!("etcd did not take the change ({e}); trying again");
                tokio::time::sleep(waits.poll).await;
            }
            other => return other,
        }
    }
}

/// Worth making a membership change again: etcd was briefly unable, or the answer was
/// lost (the change may have been made: the next attempt finds out).
fn retry_change(e: &EtcdError) -> bool {
    transient(e) || matches!(e, EtcdError::Unreachable { .. })
}

/// The member with this peer URL.
fn find<'a>(members: &'a [Member], url: &str) -> Option<&'a Member> {
    members.iter().find(|m| m.has_peer_url(url))
}

/// The health gate; a failure says what is wrong and that the step did nothing.
async fn gate(
    etcd: &dyn EtcdAdmin,
    allow_down: Option<&str>,
    what: &str,
) -> Result<Health, String> {
    check_health(etcd.reader(), allow_down).await.map_err(|u| {
        format!("{u}; {what} was not started (fix the cluster, or replace a failed member with `apply --replace ADDRESS`)")
    })
}

/// Wait until the cluster is healthy (no member allowed down), up to `limit`.
async fn wait_healthy(
    etcd: &dyn EtcdAdmin,
    waits: &MemberWaits,
    limit: Duration,
) -> Result<Health, String> {
    let deadline = Instant::now() + limit;
    loop {
        match check_health(etcd.reader(), None).await {
            Ok(h) => return Ok(h),
            Err(u) if Instant::now() >= deadline => {
                return Err(format!("{u} (still, after {}s)", limit.as_secs()));
            }
            Err(_) => tokio::time::sleep(waits.poll).await,
        }
    }
}

/// Do membership node `op` for `step`. `old_peer_url` is the peer URL of the member a
/// replacement removes (when it differs from the new one's). Returns, for `Add`, the
/// `(name, peer URL)` list the new machine must boot with as `--initial-cluster`.
pub(crate) async fn perform(
    op: MemberOp,
    etcd: &dyn EtcdAdmin,
    step: &MemberStep,
    old_peer_url: Option<&str>,
    names: &(dyn Fn(&str) -> Option<String> + Sync),
    waits: &MemberWaits,
) -> Result<Option<Vec<(String, String)>>, String> {
    let who = step
        .address
        .as_ref()
        .map_or_else(|| format!("member `{}`", step.name), |a| format!("`{a}`"));
    match op {
        MemberOp::Remove => {
            let url = old_peer_url.unwrap_or(&step.peer_url);
            let members = etcd.members().await.map_err(err)?;
            let Some(m) = find(&members, url).cloned() else {
                return Ok(None); // already removed
            };
            let health = gate(etcd, Some(url), &format!("the removal of {who}")).await?;
            // Hand leadership over first, so that no election waits for the removed
            // leader's heartbeats to stop.
            if health.leader == m.id
                && let Some(to) = health
                    .members
                    .iter()
                    .find(|o| o.id != m.id && !o.is_learner && health.statuses.contains_key(&o.id))
                && let Err(e) = etcd.move_leader(to.id).await
            {
                tracing::warn!("could not hand etcd leadership to {}: {e}", to.name);
            }
            match with_retry(waits, || etcd.remove_member(m.id)).await {
                Ok(_) => {}
                // Removed already: an earlier attempt arrived and its answer was lost (a
                // member being removed may go before it answers).
                Err(EtcdError::Api { code: 5, .. }) => {}
                Err(e) => return Err(format!("removing {} from etcd: {e}", describe_member(&m))),
            }
            Ok(None)
        }
        MemberOp::Add => {
            let health = gate(etcd, Some(&step.peer_url), &format!("adding {who}")).await?;
            if let Some(o) = health
                .unstarted
                .iter()
                .find(|o| !o.has_peer_url(&step.peer_url))
            {
                return Err(format!(
                    "etcd has a member that never started, {}: an earlier change is unfinished; run `clusterform apply` again, which removes it first",
                    describe_member(o)
                ));
            }
            let existing = find(&health.members, &step.peer_url).cloned();
            // The machine is made now, so a member with its peer URL that has started is
            // the old one of a machine that is gone: it goes first, and the new machine
            // joins as a new member with an empty data folder. One that never started
            // (added by a run that stopped) is the new machine's own: it is kept.
            if let Some(old) = existing.as_ref().filter(|m| m.started()) {
                with_retry(waits, || etcd.remove_member(old.id))
                    .await
                    .map_err(|e| format!("removing the old member of {who}: {e}"))?;
            }
            let list = match existing.filter(|m| !m.started()) {
                Some(_) => health.members.clone(),
                None => {
                    let learner = health
                        .statuses
                        .values()
                        .all(|s| supports_learners(&s.version));
                    match with_retry(waits, || etcd.add_member(&step.peer_url, learner)).await {
                        Ok((_, after)) => after,
                        // Added already: an earlier attempt arrived and its answer was lost.
                        Err(e @ EtcdError::Api { .. })
                            if e.to_string().contains("already exist") =>
                        {
                            let now = etcd.members().await.map_err(err)?;
                            if find(&now, &step.peer_url).is_none() {
                                return Err(format!("adding {who} to etcd: {e}"));
                            }
                            now
                        }
                        Err(e) => return Err(format!("adding {who} to etcd: {e}")),
                    }
                }
            };
            let mut cluster = Vec::with_capacity(list.len());
            for m in &list {
                let url = m.peer_urls.first().cloned().unwrap_or_default();
                let name = if m.has_peer_url(&step.peer_url) {
                    step.name.clone()
                } else if m.started() {
                    m.name.clone()
                } else if let Some(n) = names(&url) {
                    n
                } else {
                    return Err(format!(
                        "etcd has a member that never started, {}, that no central machine accounts for: run `clusterform apply` again, which removes it first",
                        describe_member(m)
                    ));
                };
                cluster.push((name, url));
            }
            Ok(Some(cluster))
        }
        MemberOp::Promote => {
            let deadline = Instant::now() + waits.join;
            loop {
                let members = etcd.members().await.map_err(err)?;
                let Some(m) = find(&members, &step.peer_url).cloned() else {
                    return Err(format!(
                        "{who} is not in the etcd member list any more (peer URL {}); run `clusterform apply` again",
                        step.peer_url
                    ));
                };
                if !m.is_learner && m.started() {
                    break;
                }
                if m.started() {
                    match etcd.promote_member(m.id).await {
                        Ok(_) => break,
                        Err(e) if retry_change(&e) => {}
                        Err(e) => {
                            // A lost answer: the promotion went through after all.
                            let now = etcd.members().await.map_err(err)?;
                            if find(&now, &step.peer_url).is_some_and(|m| !m.is_learner) {
                                break;
                            }
                            return Err(format!("promoting {who}: {e}"));
                        }
                    }
                }
                if Instant::now() >= deadline {
                    return Err(if m.started() {
                        format!(
                            "{who} joined etcd as a learner but did not catch up with the leader within {}s; the next `clusterform apply` tries again",
                            waits.join.as_secs()
                        )
                    } else {
                        format!(
                            "{who} did not start its etcd member within {}s (it is in the member list, never started): look at the machine's console; the next `clusterform apply` tries again",
                            waits.join.as_secs()
                        )
                    });
                }
                tokio::time::sleep(waits.poll).await;
            }
            caught_up(etcd, step, waits).await?;
            Ok(None)
        }
        MemberOp::Gate => {
            gate(etcd, None, &format!("the change of {who}")).await?;
            Ok(None)
        }
        MemberOp::Settle => {
            wait_healthy(etcd, waits, waits.healthy).await?;
            Ok(None)
        }
    }
}

/// Wait until the cluster is healthy and the member of `step` has applied what the
/// leader had committed when the wait began.
async fn caught_up(
    etcd: &dyn EtcdAdmin,
    step: &MemberStep,
    waits: &MemberWaits,
) -> Result<(), String> {
    let health = wait_healthy(etcd, waits, waits.healthy).await?;
    let target = health
        .statuses
        .get(&health.leader)
        .map_or(0, |s| s.raft_index);
    let deadline = Instant::now() + waits.healthy;
    loop {
        let health = wait_healthy(etcd, waits, waits.healthy).await?;
        let applied = health
            .members
            .iter()
            .find(|m| m.has_peer_url(&step.peer_url))
            .and_then(|m| health.statuses.get(&m.id))
            .map_or(0, |s| s.raft_applied_index);
        if applied >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "member `{}` has applied raft index {applied} of the leader's {target} after {}s",
                step.name,
                waits.healthy.as_secs()
            ));
        }
        tokio::time::sleep(waits.poll).await;
    }
}

/// etcd supports learners from 3.4 on.
fn supports_learners(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (3, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learners_from_3_4() {
        assert!(supports_learners("3.4.23"));
        assert!(supports_learners("3.5.17"));
        assert!(supports_learners("4.0.0"));
        assert!(!supports_learners("3.3.27"));
        assert!(!supports_learners(""));
    }

    #[test]
    fn every_step_kind_has_its_sequence() {
        assert_eq!(layout(StepKind::Replace).len(), 5);
        assert_eq!(
            layout(StepKind::Leave),
            &[Slot::Op(MemberOp::Remove), Slot::Destroy]
        );
        assert!(MemberOp::Add.mutates() && !MemberOp::Gate.mutates());
    }
}
