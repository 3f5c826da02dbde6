//! Tests of [`check_health`] over [`FakeEtcd`] and over readers that lie or are slow.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::*;
use crate::EtcdAdmin;
use crate::fake::{FakeEtcd, FakeMethod};

const A: &str = "http://10.0.1.101:2380";
const B: &str = "http://10.0.1.102:2380";
const C: &str = "http://10.0.1.103:2380";
const D: &str = "http://10.0.1.104:2380";

fn three() -> FakeEtcd {
    FakeEtcd::bootstrap(&[
        ("prod-central-0", A),
        ("prod-central-1", B),
        ("prod-central-2", C),
    ])
}

#[tokio::test]
async fn a_healthy_cluster() {
    let etcd = three();
    let h = check_health(&etcd, None).await.unwrap();
    assert_eq!(h.members.len(), 3);
    assert_eq!(h.leader, 0x1000);
    assert_eq!(
        h.statuses.keys().copied().collect::<Vec<_>>(),
        vec![0x1000, 0x1001, 0x1002]
    );
    assert_eq!(h.statuses[&0x1001].endpoint, "http://10.0.1.102:2379");
    assert!(h.unstarted.is_empty());
    assert_eq!(h.allowed_down, None);
    // allow_down of a member that is up changes nothing.
    let h = check_health(&etcd, Some(B)).await.unwrap();
    assert_eq!(h.statuses.len(), 3);
    assert_eq!(h.allowed_down, None);
}

#[tokio::test]
async fn a_member_down_is_named_unless_allowed() {
    let etcd = three();
    etcd.set_up(B, false);
    let e = check_health(&etcd, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "member `prod-central-1` (http://10.0.1.102:2379) does not answer: connection refused"
    );
    assert_eq!(e.members.as_ref().map(Vec::len), Some(3));
    assert_eq!(
        e.to_string(),
        "etcd is not healthy: member `prod-central-1` (http://10.0.1.102:2379) does not answer: connection refused"
    );
    let h = check_health(&etcd, Some(B)).await.unwrap();
    assert_eq!(h.allowed_down.map(|m| m.id), Some(0x1001));
    assert_eq!(h.statuses.len(), 2);
    // Another member's peer URL does not excuse it.
    assert!(check_health(&etcd, Some(C)).await.is_err());
}

#[tokio::test]
async fn a_lost_quorum_fails_even_with_the_allowed_member() {
    let etcd = three();
    etcd.set_up(B, false);
    etcd.set_up(C, false);
    let e = check_health(&etcd, Some(B)).await.unwrap_err();
    assert!(
        e.reason
            .contains("`prod-central-2` (http://10.0.1.103:2379) does not answer"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("knows no leader"), "{}", e.reason);
    assert!(e.reason.contains("a quorum read fails"), "{}", e.reason);
    assert!(!e.reason.contains('\n'));
}

#[tokio::test]
async fn unstarted_learners_are_listed_unstarted_voters_fail() {
    let etcd = three();
    let (learner, _) = etcd.add_member(D, true).await.unwrap();
    let h = check_health(&etcd, None).await.unwrap();
    assert_eq!(h.unstarted, vec![learner.clone()]);

    // Started, the learner must answer too.
    etcd.start(D, "prod-central-3");
    let h = check_health(&etcd, None).await.unwrap();
    assert!(h.unstarted.is_empty());
    assert!(h.statuses[&learner.id].is_learner);
    etcd.set_up(D, false);
    let e = check_health(&etcd, None).await.unwrap_err();
    assert!(
        e.reason
            .contains("member `prod-central-3` (http://10.0.1.104:2379) does not answer"),
        "{}",
        e.reason
    );
    check_health(&etcd, Some(D)).await.unwrap();

    // A voter added but not started.
    let etcd = three();
    let (voter, _) = etcd.add_member(D, false).await.unwrap();
    let e = check_health(&etcd, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "member 0000000000001003 (http://10.0.1.104:2380, not started) was added as a voter but has not started"
    );
    let h = check_health(&etcd, Some(D)).await.unwrap();
    assert_eq!(h.unstarted, vec![voter.clone()]);
    assert_eq!(h.allowed_down, Some(voter));
}

#[tokio::test]
async fn alarms_fail_the_check() {
    let etcd = three();
    etcd.raise_alarm(C, "NOSPACE");
    let e = check_health(&etcd, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "alarm NOSPACE raised by member `prod-central-2` (http://10.0.1.103:2379)"
    );
    etcd.fail_next(
        FakeMethod::Alarms,
        EtcdError::Unreachable {
            endpoints: vec![],
            detail: "timed out".into(),
        },
    );
    let e = check_health(&etcd, None).await.unwrap_err();
    assert!(
        e.reason.starts_with("cannot read the alarms"),
        "{}",
        e.reason
    );
}

#[tokio::test]
async fn an_unreadable_member_list_has_no_members() {
    let etcd = three();
    etcd.unreachable(true);
    let e = check_health(&etcd, None).await.unwrap_err();
    assert!(
        e.reason
            .starts_with("cannot read the member list: cannot reach etcd"),
        "{}",
        e.reason
    );
    assert_eq!(e.members, None);
}

#[tokio::test]
async fn a_failed_quorum_read_fails_the_check() {
    let etcd = three();
    etcd.fail_next(
        FakeMethod::QuorumRead,
        EtcdError::Api {
            endpoint: "http://10.0.1.101:2379".into(),
            code: 14,
            message: "etcdserver: request timed out".into(),
        },
    );
    let e = check_health(&etcd, None).await.unwrap_err();
    assert!(e.reason.starts_with("a quorum read fails: etcd at http://10.0.1.101:2379 refused the call: etcdserver: request timed out"), "{}", e.reason);
}

/// A reader over a [`FakeEtcd`] whose statuses can lie about the leader, the member id,
/// or take their time.
struct Twisted {
    inner: FakeEtcd,
    leader_of: Vec<(String, u64)>,
    id_of: Vec<(String, u64)>,
    delay: Duration,
}

impl Twisted {
    fn new(inner: FakeEtcd) -> Twisted {
        Twisted {
            inner,
            leader_of: vec![],
            id_of: vec![],
            delay: Duration::ZERO,
        }
    }
}

#[async_trait]
impl EtcdReader for Twisted {
    fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints()
    }
    async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        self.inner.members().await
    }
    async fn status(&self, client_url: &str) -> Result<MemberStatus, EtcdError> {
        tokio::time::sleep(self.delay).await;
        let mut s = self.inner.status(client_url).await?;
        for (url, leader) in &self.leader_of {
            if url == client_url {
                s.leader = *leader;
            }
        }
        for (url, id) in &self.id_of {
            if url == client_url {
                s.member_id = *id;
            }
        }
        Ok(s)
    }
    async fn alarms(&self) -> Result<Vec<Alarm>, EtcdError> {
        self.inner.alarms().await
    }
    async fn quorum_read(&self) -> Result<(), EtcdError> {
        self.inner.quorum_read().await
    }
}

#[tokio::test]
async fn members_that_disagree_on_the_leader() {
    let mut r = Twisted::new(three());
    r.leader_of = vec![("http://10.0.1.103:2379".into(), 0x1002)];
    let e = check_health(&r, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "the members disagree on the leader: member `prod-central-0` (http://10.0.1.101:2379) says 0000000000001000, member `prod-central-1` (http://10.0.1.102:2379) says 0000000000001000, member `prod-central-2` (http://10.0.1.103:2379) says 0000000000001002"
    );
}

#[tokio::test]
async fn a_leader_that_is_not_a_member() {
    let mut r = Twisted::new(three());
    r.leader_of = [
        "http://10.0.1.101:2379",
        "http://10.0.1.102:2379",
        "http://10.0.1.103:2379",
    ]
    .iter()
    .map(|u| (u.to_string(), 0xdead))
    .collect();
    let e = check_health(&r, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "the leader 000000000000dead is not in the member list"
    );
}

#[tokio::test]
async fn a_url_that_answers_as_another_member() {
    let mut r = Twisted::new(three());
    r.id_of = vec![("http://10.0.1.102:2379".into(), 0x1000)];
    let e = check_health(&r, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        "member `prod-central-1` (http://10.0.1.102:2379) answers as member 0000000000001000, not 0000000000001001"
    );
}

#[tokio::test]
async fn statuses_are_asked_concurrently() {
    let etcd = FakeEtcd::bootstrap(&[
        ("m0", A),
        ("m1", B),
        ("m2", C),
        ("m3", D),
        ("m4", "http://10.0.1.105:2380"),
    ]);
    let mut r = Twisted::new(etcd);
    r.delay = Duration::from_millis(300);
    let started = Instant::now();
    check_health(&r, None).await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
