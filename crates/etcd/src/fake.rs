//! [`FakeEtcd`]: an in-memory etcd cluster that answers like etcd 3.4/3.5 does to the
//! calls of [`EtcdAdmin`], for the engine's unit tests; with helpers that play the
//! machines (start, go down), inject faults and record the changes made.
//!
//! What it models, and what it leaves out:
//! - Member ids count up from `0x1000` in the order members are created.
//! - A member added with [`EtcdAdmin::add_member`] has no name and no client URL until
//!   [`FakeEtcd::start`]; then its client URL is `http://<host of its peer URL>:2379`.
//! - The leader is the member set with [`FakeEtcd::set_leader`] (or moved to with
//!   `move_leader`) while it is a started, up voter, else the first started, up voter
//!   by id, and there is none while fewer than a quorum (voters/2+1) of voters are
//!   started and up.
//! - Like etcd's defaults: at most one learner, and the strict reconfiguration check
//!   (adding a voter or removing one must leave a quorum of started, up voters).
//! - A learner is in sync once it has started and `promote_member` has answered
//!   [`EtcdError::NotReady`] for it `promote_attempts` times (default 1), or after
//!   [`FakeEtcd::catch_up`].
//! - Not modelled: raft timing, terms beyond a counter, members with several peer URLs,
//!   leader disagreement between members.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::{Alarm, EtcdAdmin, EtcdError, EtcdReader, Member, MemberStatus};

/// The first id the fake hands out.
const FIRST_ID: u64 = 0x1000;

/// etcd's message for promoting a learner that is not in sync.
const NOT_IN_SYNC: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

/// The calls of [`EtcdAdmin`] and [`EtcdReader`], to aim [`FakeEtcd::fail_next`] at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FakeMethod {
    /// [`EtcdReader::members`].
    Members,
    /// [`EtcdReader::status`].
    Status,
    /// [`EtcdReader::alarms`].
    Alarms,
    /// [`EtcdReader::quorum_read`].
    QuorumRead,
    /// [`EtcdAdmin::add_member`].
    AddMember,
    /// [`EtcdAdmin::remove_member`].
    RemoveMember,
    /// [`EtcdAdmin::promote_member`].
    PromoteMember,
    /// [`EtcdAdmin::move_leader`].
    MoveLeader,
}

/// One member as the fake keeps it.
#[derive(Clone, Debug)]
struct FakeMember {
    peer_url: String,
    name: String,
    client_url: Option<String>,
    learner: bool,
    up: bool,
    /// `promote_member` calls answered NotReady since it started.
    promote_attempts: u32,
    in_sync: bool,
}

impl FakeMember {
    fn started(&self) -> bool {
        self.client_url.is_some()
    }

    fn running_voter(&self) -> bool {
        !self.learner && self.started() && self.up
    }
}

#[derive(Debug)]
struct State {
    members: BTreeMap<u64, FakeMember>,
    next_id: u64,
    leader: Option<u64>,
    promote_attempts: u32,
    faults: BTreeMap<FakeMethod, VecDeque<EtcdError>>,
    unreachable: bool,
    alarms: Vec<Alarm>,
    log: Vec<String>,
    raft_index: u64,
    raft_term: u64,
}

/// An in-memory etcd cluster. All methods take `&self`: share it (`Arc<FakeEtcd>`)
/// between the code under test and the test that plays the machines.
#[derive(Debug)]
pub struct FakeEtcd {
    state: Mutex<State>,
}

impl Default for FakeEtcd {
    fn default() -> Self {
        FakeEtcd::bootstrap(&[])
    }
}

/// The host of a URL (`http://10.0.1.101:2380` -> `10.0.1.101`, brackets of an IPv6
/// address kept).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The quorum of `voters` voters.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

fn unreachable_err(endpoints: Vec<String>) -> EtcdError {
    EtcdError::Unreachable {
        endpoints,
        detail: "connection refused".to_string(),
    }
}

impl State {
    fn voters(&self) -> usize {
        self.members.values().filter(|m| !m.learner).count()
    }

    fn running_voters(&self) -> usize {
        self.members.values().filter(|m| m.running_voter()).count()
    }

    fn has_quorum(&self) -> bool {
        let voters = self.voters();
        voters > 0 && self.running_voters() >= quorum(voters)
    }

    fn leader(&self) -> u64 {
        if !self.has_quorum() {
            return 0;
        }
        if let Some(id) = self.leader
            && self.members.get(&id).is_some_and(FakeMember::running_voter)
        {
            return id;
        }
        self.members
            .iter()
            .find(|(_, m)| m.running_voter())
            .map_or(0, |(id, _)| *id)
    }

    fn list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, m)| Member {
                id: *id,
                name: m.name.clone(),
                peer_urls: vec![m.peer_url.clone()],
                client_urls: m.client_url.iter().cloned().collect(),
                is_learner: m.learner,
            })
            .collect()
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .values()
            .filter_map(|m| m.client_url.clone())
            .collect()
    }

    /// The endpoint that answers a cluster-wide call: the first started, up member.
    fn answering_endpoint(&self) -> String {
        self.members
            .values()
            .find(|m| m.started() && m.up)
            .and_then(|m| m.client_url.clone())
            .unwrap_or_default()
    }

    fn api(&self, code: i64, message: &str) -> EtcdError {
        EtcdError::Api {
            endpoint: self.answering_endpoint(),
            code,
            message: message.to_string(),
        }
    }

    /// The checks every call passes first: unreachable, then an injected fault.
    fn enter(&mut self, method: FakeMethod) -> Result<(), EtcdError> {
        if self.unreachable {
            return Err(unreachable_err(self.endpoints()));
        }
        if let Some(e) = self.faults.get_mut(&method).and_then(VecDeque::pop_front) {
            return Err(e);
        }
        Ok(())
    }

    /// A change needs a leader, and some member up to take the call.
    fn require_leader(&self) -> Result<(), EtcdError> {
        if self.running_voters() == 0 {
            return Err(unreachable_err(self.endpoints()));
        }
        if self.leader() == 0 {
            return Err(self.api(14, "etcdserver: no leader"));
        }
        Ok(())
    }

    fn find_peer(&self, peer_url: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| same_url(&m.peer_url, peer_url))
            .map(|(id, _)| *id)
    }

    fn member_mut(&mut self, peer_url: &str, helper: &str) -> &mut FakeMember {
        let Some(id) = self.find_peer(peer_url) else {
            panic!("FakeEtcd::{helper}: no member has peer URL {peer_url}");
        };
        match self.members.get_mut(&id) {
            Some(m) => m,
            None => panic!("FakeEtcd::{helper}: member {id:016x} vanished"),
        }
    }

    fn applied(&mut self, entry: String) {
        self.raft_index += 1;
        self.log.push(entry);
    }
}

impl FakeEtcd {
    /// A running cluster of started, up voters, `(name, peer URL)` each, ids counting up
    /// from `0x1000` in this order; the first is the leader.
    pub fn bootstrap(members: &[(&str, &str)]) -> FakeEtcd {
        let mut map = BTreeMap::new();
        let mut next_id = FIRST_ID;
        for (name, peer_url) in members {
            map.insert(
                next_id,
                FakeMember {
                    peer_url: peer_url.to_string(),
                    name: name.to_string(),
                    client_url: Some(format!("http://{}:2379", host_of(peer_url))),
                    learner: false,
                    up: true,
                    promote_attempts: 0,
                    in_sync: true,
                },
            );
            next_id += 1;
        }
        FakeEtcd {
            state: Mutex::new(State {
                members: map,
                next_id,
                leader: None,
                promote_attempts: 1,
                faults: BTreeMap::new(),
                unreachable: false,
                alarms: Vec::new(),
                log: Vec::new(),
                raft_index: 8,
                raft_term: 2,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves a usable state behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The machine with `peer_url` booted and its etcd joined: the member gets `name`
    /// and its client URL, and is up.
    ///
    /// # Panics
    /// When no member has `peer_url` (a machine that was never added cannot join).
    pub fn start(&self, peer_url: &str, name: &str) {
        let mut s = self.lock();
        let m = s.member_mut(peer_url, "start");
        m.name = name.to_string();
        m.client_url = Some(format!("http://{}:2379", host_of(peer_url)));
        m.up = true;
        m.promote_attempts = 0;
    }

    /// Takes the member with `peer_url` down (`false`: its etcd does not answer, does
    /// not count for the quorum) or up again.
    ///
    /// # Panics
    /// When no member has `peer_url`.
    pub fn set_up(&self, peer_url: &str, up: bool) {
        self.lock().member_mut(peer_url, "set_up").up = up;
    }

    /// Makes the member with `peer_url` the leader (while it is a started, up voter).
    ///
    /// # Panics
    /// When no member has `peer_url`.
    pub fn set_leader(&self, peer_url: &str) {
        let mut s = self.lock();
        s.member_mut(peer_url, "set_leader");
        let id = s.find_peer(peer_url);
        if s.leader != id {
            s.raft_term += 1;
        }
        s.leader = id;
    }

    /// How many `promote_member` calls a started learner answers with
    /// [`EtcdError::NotReady`] before it is in sync (default 1; 0: in sync as soon as it
    /// has started).
    pub fn set_promote_attempts(&self, attempts: u32) {
        self.lock().promote_attempts = attempts;
    }

    /// The learner with `peer_url` is in sync with the leader from now on (it can be
    /// promoted once it has started).
    ///
    /// # Panics
    /// When no member has `peer_url`.
    pub fn catch_up(&self, peer_url: &str) {
        self.lock().member_mut(peer_url, "catch_up").in_sync = true;
    }

    /// The next call of `method` fails with `error`, once (calls queue up: two
    /// `fail_next` for one method fail its next two calls). Checked after
    /// [`FakeEtcd::unreachable`]; the change is not applied, and is not logged.
    pub fn fail_next(&self, method: FakeMethod, error: EtcdError) {
        self.lock()
            .faults
            .entry(method)
            .or_default()
            .push_back(error);
    }

    /// While `true`, every call fails with [`EtcdError::Unreachable`] (the workstation
    /// lost its network or its tunnel).
    pub fn unreachable(&self, unreachable: bool) {
        self.lock().unreachable = unreachable;
    }

    /// Raises `alarm` (`NOSPACE`, `CORRUPT`) on the member with `peer_url`.
    ///
    /// # Panics
    /// When no member has `peer_url`.
    pub fn raise_alarm(&self, peer_url: &str, alarm: &str) {
        let mut s = self.lock();
        s.member_mut(peer_url, "raise_alarm");
        if let Some(member_id) = s.find_peer(peer_url) {
            s.alarms.push(Alarm {
                member_id,
                alarm: alarm.to_string(),
            });
        }
    }

    /// Clears every alarm.
    pub fn clear_alarms(&self) {
        self.lock().alarms.clear();
    }

    /// The changes applied so far, in order: `add <peer URL> learner` (or `voter`),
    /// `remove <id>`, `promote <id>`, `move-leader <id>`, ids as 16 hex digits
    /// ([`Member::hex_id`]). Refused and failed calls are not in it.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The member list as it is now, whatever faults are set.
    pub fn members_now(&self) -> Vec<Member> {
        self.lock().list()
    }

    /// The member with `peer_url` now, if any.
    pub fn member(&self, peer_url: &str) -> Option<Member> {
        self.members_now()
            .into_iter()
            .find(|m| m.has_peer_url(peer_url))
    }

    /// The id of the leader now (0: none, the cluster has no quorum).
    pub fn leader_now(&self) -> u64 {
        self.lock().leader()
    }
}

#[async_trait]
impl EtcdReader for FakeEtcd {
    /// The client URLs of the started members.
    fn endpoints(&self) -> Vec<String> {
        self.lock().endpoints()
    }

    async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::Members)?;
        if s.running_voters() == 0 {
            return Err(unreachable_err(s.endpoints()));
        }
        Ok(s.list())
    }

    async fn status(&self, client_url: &str) -> Result<MemberStatus, EtcdError> {
        let mut s = self.lock();
        if s.unreachable {
            return Err(unreachable_err(vec![client_url.to_string()]));
        }
        s.enter(FakeMethod::Status)?;
        let leader = s.leader();
        let (id, m) = s
            .members
            .iter()
            .find(|(_, m)| {
                m.client_url
                    .as_deref()
                    .is_some_and(|u| same_url(u, client_url))
            })
            .filter(|(_, m)| m.up)
            .ok_or_else(|| unreachable_err(vec![client_url.to_string()]))?;
        let applied = if m.learner && !m.in_sync {
            s.raft_index.saturating_sub(4)
        } else {
            s.raft_index
        };
        Ok(MemberStatus {
            endpoint: client_url.to_string(),
            member_id: *id,
            version: "3.5.0".to_string(),
            db_size: 20480,
            leader,
            raft_index: applied,
            raft_term: s.raft_term,
            raft_applied_index: applied,
            is_learner: m.learner,
            errors: s
                .alarms
                .iter()
                .map(|a| format!("memberID:{} alarm:{} ", a.member_id, a.alarm))
                .collect(),
        })
    }

    async fn alarms(&self) -> Result<Vec<Alarm>, EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::Alarms)?;
        if s.running_voters() == 0 {
            return Err(unreachable_err(s.endpoints()));
        }
        Ok(s.alarms.clone())
    }

    async fn quorum_read(&self) -> Result<(), EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::QuorumRead)?;
        if s.running_voters() == 0 {
            return Err(unreachable_err(s.endpoints()));
        }
        if !s.has_quorum() {
            return Err(s.api(14, "etcdserver: request timed out"));
        }
        Ok(())
    }
}

#[async_trait]
impl EtcdAdmin for FakeEtcd {
    async fn add_member(
        &self,
        peer_url: &str,
        learner: bool,
    ) -> Result<(Member, Vec<Member>), EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::AddMember)?;
        s.require_leader()?;
        if s.find_peer(peer_url).is_some() {
            return Err(s.api(9, "etcdserver: Peer URLs already exists"));
        }
        if learner && s.members.values().any(|m| m.learner) {
            return Err(s.api(9, "etcdserver: too many learner members in cluster"));
        }
        // Strict reconfiguration check: the new voter counts against the quorum at once.
        if !learner && s.running_voters() < quorum(s.voters() + 1) {
            return Err(s.api(
                9,
                "etcdserver: re-configuration failed due to not enough started members",
            ));
        }
        let id = s.next_id;
        s.next_id += 1;
        s.members.insert(
            id,
            FakeMember {
                peer_url: peer_url.to_string(),
                name: String::new(),
                client_url: None,
                learner,
                up: true,
                promote_attempts: 0,
                in_sync: !learner,
            },
        );
        let kind = if learner { "learner" } else { "voter" };
        s.applied(format!("add {peer_url} {kind}"));
        let list = s.list();
        let member = list
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .ok_or_else(|| s.api(13, "the fake lost the member it added"))?;
        Ok((member, list))
    }

    async fn remove_member(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::RemoveMember)?;
        s.require_leader()?;
        let Some(m) = s.members.get(&id) else {
            return Err(s.api(5, "etcdserver: member not found"));
        };
        if !m.learner {
            let running_after = s.running_voters() - usize::from(m.running_voter());
            if running_after < quorum(s.voters() - 1) {
                return Err(s.api(
                    9,
                    "etcdserver: re-configuration failed due to not enough started members",
                ));
            }
        }
        let was_leader = s.leader() == id;
        s.members.remove(&id);
        if was_leader {
            s.leader = None;
            s.raft_term += 1;
        }
        s.applied(format!("remove {id:016x}"));
        Ok(s.list())
    }

    async fn promote_member(&self, id: u64) -> Result<Vec<Member>, EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::PromoteMember)?;
        s.require_leader()?;
        let needed = s.promote_attempts;
        let (learner, running, in_sync, attempts) = match s.members.get(&id) {
            None => return Err(s.api(5, "etcdserver: member not found")),
            Some(m) => (
                m.learner,
                m.started() && m.up,
                m.in_sync,
                m.promote_attempts,
            ),
        };
        if !learner {
            return Err(s.api(9, "etcdserver: can only promote a learner member"));
        }
        if !running {
            return Err(EtcdError::NotReady(NOT_IN_SYNC.to_string()));
        }
        let in_sync = in_sync || attempts >= needed;
        if let Some(m) = s.members.get_mut(&id) {
            if in_sync {
                m.in_sync = true;
                m.learner = false;
            } else {
                m.promote_attempts += 1;
            }
        }
        if !in_sync {
            return Err(EtcdError::NotReady(NOT_IN_SYNC.to_string()));
        }
        s.applied(format!("promote {id:016x}"));
        Ok(s.list())
    }

    async fn move_leader(&self, to: u64) -> Result<(), EtcdError> {
        let mut s = self.lock();
        s.enter(FakeMethod::MoveLeader)?;
        s.require_leader()?;
        let Some(m) = s.members.get(&to) else {
            return Err(s.api(9, "etcdserver: bad leader transferee"));
        };
        if m.learner {
            return Err(s.api(9, "etcdserver: bad leader transferee"));
        }
        if !m.running_voter() {
            return Err(s.api(
                14,
                "etcdserver: request timed out, leader transfer took too long",
            ));
        }
        if s.leader() != to {
            s.leader = Some(to);
            s.raft_term += 1;
        }
        s.applied(format!("move-leader {to:016x}"));
        Ok(())
    }

    fn reader(&self) -> &dyn EtcdReader {
        self
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
