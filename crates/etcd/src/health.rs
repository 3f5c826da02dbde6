//! The health gate every membership step passes first: [`check_health`] reads the member
//! list, asks every started member for its status (concurrently), and checks that the
//! voters agree on a leader that is a member, that no alarm is raised and that a
//! linearizable read goes through.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Alarm, EtcdError, EtcdReader, Member, MemberStatus};

/// A cluster that passed [`check_health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The member list.
    pub members: Vec<Member>,
    /// The id of the leader every voter that answered agrees on.
    pub leader: u64,
    /// The status of each member that answered, by member id.
    pub statuses: BTreeMap<u64, MemberStatus>,
    /// Members added but not started yet (no name, no client URL).
    pub unstarted: Vec<Member>,
    /// The member allowed to be down (`allow_down`), when it did not answer or has not
    /// started.
    pub allowed_down: Option<Member>,
}

/// Why the cluster is not healthy enough for a membership step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("etcd is not healthy: {reason}")]
pub struct Unhealthy {
    /// One line naming the member(s) and what failed, e.g. "member `prod-central-1`
    /// (http://10.0.1.102:2379) does not answer: connection refused"; several findings
    /// are joined with "; ".
    pub reason: String,
    /// The member list, when it could be read.
    pub members: Option<Vec<Member>>,
}

/// How a member is named in messages: by name and client URL once started, by id and
/// peer URL before.
pub fn describe_member(m: &Member) -> String {
    match (m.started(), m.client_urls.first()) {
        (true, Some(url)) => format!("member `{}` ({url})", m.name),
        (true, None) => format!(
            "member `{}` ({})",
            m.name,
            m.peer_urls.first().map_or("no URL", String::as_str)
        ),
        (false, _) => format!(
            "{} {} ({}, not started)",
            if m.is_learner { "learner" } else { "member" },
            m.hex_id(),
            m.peer_urls.first().map_or("no peer URL", String::as_str)
        ),
    }
}

/// What a failed call said, without repeating the URL when the error is about being
/// unreachable.
fn what_failed(e: &EtcdError) -> String {
    match e {
        EtcdError::Unreachable { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// Checks that the cluster is healthy enough for a membership step; `allow_down` is the
/// peer URL of a member that may be down or not started (the one the step replaces or
/// removes).
///
/// Healthy means: the member list can be read; every member except `allow_down` that
/// has started answers `status` at its first client URL (as the member the list says is
/// there); every voter except `allow_down` has started; the voters that answered agree
/// on one leader, which is a current member; no alarm is raised; a quorum read succeeds.
/// Learners that have not started are listed in [`Health::unstarted`] and do not fail
/// the check. Statuses, alarms and the quorum read are asked concurrently, so a check
/// with members down costs about one timeout.
pub async fn check_health(
    reader: &dyn EtcdReader,
    allow_down: Option<&str>,
) -> Result<Health, Unhealthy> {
    let members = reader.members().await.map_err(|e| Unhealthy {
        reason: format!("cannot read the member list: {e}"),
        members: None,
    })?;
    let allowed = |m: &Member| allow_down.is_some_and(|p| m.has_peer_url(p));

    let mut problems: Vec<String> = Vec::new();
    let mut unstarted = Vec::new();
    let mut allowed_down = None;
    let mut asked: Vec<(&Member, String)> = Vec::new();
    for m in &members {
        if !m.started() {
            unstarted.push(m.clone());
            if allowed(m) {
                allowed_down = Some(m.clone());
            } else if !m.is_learner {
                problems.push(format!(
                    "{} was added as a voter but has not started",
                    describe_member(m)
                ));
            }
            continue;
        }
        match m.client_urls.first() {
            Some(url) => asked.push((m, url.clone())),
            None if allowed(m) => allowed_down = Some(m.clone()),
            None => problems.push(format!("{} has no client URL", describe_member(m))),
        }
    }

    let statuses_fut = futures::future::join_all(asked.iter().map(|(_, url)| reader.status(url)));
    let (answers, alarms, quorum) =
        futures::join!(statuses_fut, reader.alarms(), reader.quorum_read());

    let mut statuses = BTreeMap::new();
    for ((m, _), answer) in asked.iter().zip(answers) {
        match answer {
            Ok(s) if s.member_id != m.id => {
                problems.push(format!(
                    "{} answers as member {:016x}, not {}",
                    describe_member(m),
                    s.member_id,
                    m.hex_id()
                ));
            }
            Ok(s) => {
                statuses.insert(m.id, s);
            }
            Err(_) if allowed(m) => allowed_down = Some((*m).clone()),
            Err(e) => problems.push(format!(
                "{} does not answer: {}",
                describe_member(m),
                what_failed(&e)
            )),
        }
    }

    let leader = check_leader(&members, &statuses, &mut problems);
    check_alarms(&members, alarms, &mut problems);
    if let Err(e) = quorum {
        problems.push(format!("a quorum read fails: {e}"));
    }

    if problems.is_empty() {
        Ok(Health {
            members,
            leader,
            statuses,
            unstarted,
            allowed_down,
        })
    } else {
        Err(Unhealthy {
            reason: problems.join("; "),
            members: Some(members),
        })
    }
}

/// The leader the voters that answered agree on (0 after a problem was recorded).
fn check_leader(
    members: &[Member],
    statuses: &BTreeMap<u64, MemberStatus>,
    problems: &mut Vec<String>,
) -> u64 {
    let by_id: BTreeMap<u64, &Member> = members.iter().map(|m| (m.id, m)).collect();
    let name = |id: u64| {
        by_id
            .get(&id)
            .map_or_else(|| format!("{id:016x}"), |m| describe_member(m))
    };
    let voters: Vec<(&u64, &MemberStatus)> = statuses
        .iter()
        .filter(|(id, s)| !s.is_learner && by_id.get(id).is_some_and(|m| !m.is_learner))
        .collect();
    if voters.is_empty() {
        problems.push("no voting member answered".to_string());
        return 0;
    }
    let without: Vec<String> = voters
        .iter()
        .filter(|(_, s)| s.leader == 0)
        .map(|(id, _)| name(**id))
        .collect();
    if !without.is_empty() {
        problems.push(format!("{} knows no leader", without.join(", ")));
        return 0;
    }
    let leaders: BTreeSet<u64> = voters.iter().map(|(_, s)| s.leader).collect();
    if leaders.len() > 1 {
        let views: Vec<String> = voters
            .iter()
            .map(|(id, s)| format!("{} says {:016x}", name(**id), s.leader))
            .collect();
        problems.push(format!(
            "the members disagree on the leader: {}",
            views.join(", ")
        ));
        return 0;
    }
    let leader = leaders.into_iter().next().unwrap_or(0);
    match by_id.get(&leader) {
        None => {
            problems.push(format!(
                "the leader {leader:016x} is not in the member list"
            ));
            0
        }
        Some(m) if m.is_learner => {
            problems.push(format!("the leader is a learner: {}", describe_member(m)));
            0
        }
        Some(_) => leader,
    }
}

fn check_alarms(
    members: &[Member],
    alarms: Result<Vec<Alarm>, EtcdError>,
    problems: &mut Vec<String>,
) {
    match alarms {
        Err(e) => problems.push(format!("cannot read the alarms: {e}")),
        Ok(alarms) => {
            for a in alarms {
                let who = members
                    .iter()
                    .find(|m| m.id == a.member_id)
                    .map_or_else(|| format!("member {:016x}", a.member_id), describe_member);
                problems.push(format!("alarm {} raised by {who}", a.alarm));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
