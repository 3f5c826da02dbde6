//! Tests of [`FakeEtcd`]'s semantics: ids, start, learners and promotion, quorum,
//! leader, strict reconfiguration, faults and the log.

use super::*;

const A: &str = "http://10.0.1.101:2380";
const B: &str = "http://10.0.1.102:2380";
const C: &str = "http://10.0.1.103:2380";
const D: &str = "http://10.0.1.104:2380";

fn three() -> FakeEtcd {
    FakeEtcd::bootstrap(&[("a", A), ("b", B), ("c", C)])
}

fn api_code(e: &EtcdError) -> i64 {
    match e {
        EtcdError::Api { code, .. } => *code,
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test]
async fn bootstrap_gives_started_voters_with_counting_ids() {
    let etcd = three();
    let members = etcd.members().await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![0x1000, 0x1001, 0x1002]
    );
    assert_eq!(members[1].name, "b");
    assert_eq!(members[1].peer_urls, vec![B.to_string()]);
    assert_eq!(
        members[1].client_urls,
        vec!["http://10.0.1.102:2379".to_string()]
    );
    assert!(members.iter().all(|m| m.started() && !m.is_learner));
    assert_eq!(etcd.leader_now(), 0x1000);
    assert_eq!(
        etcd.endpoints(),
        vec![
            "http://10.0.1.101:2379",
            "http://10.0.1.102:2379",
            "http://10.0.1.103:2379"
        ]
    );
    let s = etcd.status("http://10.0.1.102:2379").await.unwrap();
    assert_eq!(
        (s.member_id, s.leader, s.is_learner),
        (0x1001, 0x1000, false)
    );
    assert_eq!(s.endpoint, "http://10.0.1.102:2379");
    etcd.alarms().await.unwrap();
    etcd.quorum_read().await.unwrap();
    assert!(etcd.log().is_empty());
}

#[tokio::test]
async fn a_learner_is_added_started_and_promoted_after_one_not_ready() {
    let etcd = three();
    let (m, list) = etcd.add_member(D, true).await.unwrap();
    assert_eq!(m.id, 0x1003);
    assert!(m.is_learner && !m.started());
    assert_eq!(list.len(), 4);
    assert_eq!(etcd.member(D), Some(m.clone()));

    // Not started: never in sync.
    for _ in 0..3 {
        assert!(matches!(
            etcd.promote_member(m.id).await,
            Err(EtcdError::NotReady(_))
        ));
    }
    etcd.start(D, "d");
    let started = etcd.member(D).unwrap();
    assert_eq!(started.name, "d");
    assert_eq!(
        started.client_urls,
        vec!["http://10.0.1.104:2379".to_string()]
    );
    let s = etcd.status("http://10.0.1.104:2379").await.unwrap();
    assert!(s.is_learner);
    // Default: one NotReady after it started, then promoted.
    assert!(matches!(
        etcd.promote_member(m.id).await,
        Err(EtcdError::NotReady(_))
    ));
    let after = etcd.promote_member(m.id).await.unwrap();
    assert!(after.iter().all(|m| !m.is_learner));
    assert_eq!(
        etcd.log(),
        vec![
            "add http://10.0.1.104:2380 learner",
            "promote 0000000000001003"
        ]
    );
    // Promoting it again: it is a voter now.
    assert_eq!(api_code(&etcd.promote_member(m.id).await.unwrap_err()), 9);
}

#[tokio::test]
async fn promote_attempts_and_catch_up() {
    let etcd = three();
    etcd.set_promote_attempts(0);
    let (m, _) = etcd.add_member(D, true).await.unwrap();
    etcd.start(D, "d");
    etcd.promote_member(m.id).await.unwrap();

    let etcd = three();
    etcd.set_promote_attempts(3);
    let (m, _) = etcd.add_member(D, true).await.unwrap();
    etcd.start(D, "d");
    for _ in 0..3 {
        assert!(matches!(
            etcd.promote_member(m.id).await,
            Err(EtcdError::NotReady(_))
        ));
    }
    etcd.promote_member(m.id).await.unwrap();

    let etcd = three();
    etcd.set_promote_attempts(100);
    let (m, _) = etcd.add_member(D, true).await.unwrap();
    etcd.catch_up(D);
    // In sync but not started: still not ready.
    assert!(matches!(
        etcd.promote_member(m.id).await,
        Err(EtcdError::NotReady(_))
    ));
    etcd.start(D, "d");
    etcd.promote_member(m.id).await.unwrap();
}

#[tokio::test]
async fn refusals_like_etcd() {
    let etcd = three();
    let e = etcd.add_member(B, true).await.unwrap_err();
    assert_eq!(
        e,
        EtcdError::Api {
            endpoint: "http://10.0.1.101:2379".into(),
            code: 9,
            message: "etcdserver: Peer URLs already exists".into()
        }
    );
    // Trailing slash: the same peer URL.
    assert_eq!(
        api_code(
            &etcd
                .add_member("http://10.0.1.102:2380/", false)
                .await
                .unwrap_err()
        ),
        9
    );
    let e = etcd.remove_member(0x9999).await.unwrap_err();
    assert_eq!(api_code(&e), 5);
    assert!(e.to_string().contains("etcdserver: member not found"));
    assert_eq!(api_code(&etcd.promote_member(0x9999).await.unwrap_err()), 5);
    assert_eq!(api_code(&etcd.promote_member(0x1001).await.unwrap_err()), 9);
    etcd.add_member(D, true).await.unwrap();
    let e = etcd
        .add_member("http://10.0.1.105:2380", true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("too many learner members"), "{e}");
    assert_eq!(api_code(&etcd.move_leader(0x9999).await.unwrap_err()), 9);
    assert_eq!(api_code(&etcd.move_leader(0x1003).await.unwrap_err()), 9);
    // Only the add went through.
    assert_eq!(etcd.log(), vec!["add http://10.0.1.104:2380 learner"]);
}

#[tokio::test]
async fn remove_and_leader_moves() {
    let etcd = three();
    etcd.move_leader(0x1001).await.unwrap();
    assert_eq!(etcd.leader_now(), 0x1001);
    assert_eq!(
        etcd.status("http://10.0.1.103:2379").await.unwrap().leader,
        0x1001
    );
    let list = etcd.remove_member(0x1001).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(etcd.leader_now(), 0x1000);
    etcd.set_leader(C);
    assert_eq!(etcd.leader_now(), 0x1002);
    assert_eq!(
        etcd.log(),
        vec!["move-leader 0000000000001001", "remove 0000000000001001"]
    );
}

#[tokio::test]
async fn quorum_leader_and_down_members() {
    let etcd = three();
    etcd.set_up(A, false);
    // The leader went down: the next started, up voter leads.
    assert_eq!(etcd.leader_now(), 0x1001);
    let e = etcd.status("http://10.0.1.101:2379").await.unwrap_err();
    assert_eq!(
        e,
        EtcdError::Unreachable {
            endpoints: vec!["http://10.0.1.101:2379".into()],
            detail: "connection refused".into()
        }
    );
    etcd.quorum_read().await.unwrap();
    assert!(matches!(
        etcd.move_leader(0x1000).await,
        Err(EtcdError::Api { code: 14, .. })
    ));

    etcd.set_up(B, false);
    assert_eq!(etcd.leader_now(), 0);
    assert_eq!(
        etcd.status("http://10.0.1.103:2379").await.unwrap().leader,
        0
    );
    assert!(matches!(
        etcd.quorum_read().await,
        Err(EtcdError::Api { code: 14, .. })
    ));
    assert!(matches!(
        etcd.add_member(D, true).await,
        Err(EtcdError::Api { code: 14, .. })
    ));
    // The member list is still served locally by a member that is up.
    assert_eq!(etcd.members().await.unwrap().len(), 3);

    etcd.set_up(C, false);
    assert!(matches!(
        etcd.members().await,
        Err(EtcdError::Unreachable { .. })
    ));
    assert!(matches!(
        etcd.quorum_read().await,
        Err(EtcdError::Unreachable { .. })
    ));
    assert!(matches!(
        etcd.alarms().await,
        Err(EtcdError::Unreachable { .. })
    ));

    etcd.set_up(A, true);
    etcd.set_up(B, true);
    etcd.quorum_read().await.unwrap();
    assert_eq!(etcd.leader_now(), 0x1000);
}

#[tokio::test]
async fn strict_reconfiguration_check() {
    let etcd = three();
    etcd.set_up(C, false);
    // 2 of 3 up: a 4th voter would need 3 up.
    let e = etcd.add_member(D, false).await.unwrap_err();
    assert!(e.to_string().contains("not enough started members"), "{e}");
    // A learner does not count.
    etcd.add_member(D, true).await.unwrap();
    // Removing an up voter would leave 1 of 2.
    assert_eq!(api_code(&etcd.remove_member(0x1000).await.unwrap_err()), 9);
    // Removing the down one leaves 2 of 2.
    etcd.remove_member(0x1002).await.unwrap();
    // Removing a learner is always fine.
    etcd.remove_member(0x1003).await.unwrap();
    assert_eq!(
        etcd.log(),
        vec![
            "add http://10.0.1.104:2380 learner",
            "remove 0000000000001002",
            "remove 0000000000001003"
        ]
    );
}

#[tokio::test]
async fn a_voter_added_and_started() {
    let etcd = three();
    let (m, _) = etcd.add_member(D, false).await.unwrap();
    assert!(!m.is_learner && !m.started());
    // Unstarted voter: 3 of 4 up, still a quorum.
    etcd.quorum_read().await.unwrap();
    etcd.set_up(C, false);
    assert!(etcd.quorum_read().await.is_err());
    etcd.start(D, "d");
    etcd.quorum_read().await.unwrap();
    assert_eq!(etcd.log(), vec!["add http://10.0.1.104:2380 voter"]);
}

#[tokio::test]
async fn faults_are_one_shot_and_queue() {
    let etcd = three();
    let lost = EtcdError::Unreachable {
        endpoints: vec!["x".into()],
        detail: "timed out".into(),
    };
    etcd.fail_next(FakeMethod::AddMember, lost.clone());
    etcd.fail_next(FakeMethod::AddMember, EtcdError::NotReady("again".into()));
    assert_eq!(etcd.add_member(D, true).await.unwrap_err(), lost);
    assert_eq!(
        etcd.add_member(D, true).await.unwrap_err(),
        EtcdError::NotReady("again".into())
    );
    etcd.add_member(D, true).await.unwrap();
    assert_eq!(etcd.log(), vec!["add http://10.0.1.104:2380 learner"]);

    etcd.fail_next(FakeMethod::Status, lost.clone());
    assert!(etcd.status("http://10.0.1.101:2379").await.is_err());
    etcd.status("http://10.0.1.101:2379").await.unwrap();
    // Other methods are not affected.
    etcd.fail_next(FakeMethod::MoveLeader, lost.clone());
    etcd.members().await.unwrap();
    etcd.quorum_read().await.unwrap();
    assert_eq!(etcd.move_leader(0x1001).await.unwrap_err(), lost);
}

#[tokio::test]
async fn unreachable_fails_everything_until_cleared() {
    let etcd = three();
    etcd.unreachable(true);
    assert!(matches!(
        etcd.members().await,
        Err(EtcdError::Unreachable { .. })
    ));
    assert!(matches!(
        etcd.quorum_read().await,
        Err(EtcdError::Unreachable { .. })
    ));
    assert!(matches!(
        etcd.alarms().await,
        Err(EtcdError::Unreachable { .. })
    ));
    assert!(matches!(
        etcd.remove_member(0x1001).await,
        Err(EtcdError::Unreachable { .. })
    ));
    match etcd.status("http://10.0.1.101:2379").await {
        Err(EtcdError::Unreachable { endpoints, .. }) => {
            assert_eq!(endpoints, vec!["http://10.0.1.101:2379".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // The helpers still see the cluster.
    assert_eq!(etcd.members_now().len(), 3);
    etcd.unreachable(false);
    etcd.members().await.unwrap();
    assert!(etcd.log().is_empty());
}

#[tokio::test]
async fn alarms_are_raised_and_cleared() {
    let etcd = three();
    etcd.raise_alarm(B, "NOSPACE");
    assert_eq!(
        etcd.alarms().await.unwrap(),
        vec![Alarm {
            member_id: 0x1001,
            alarm: "NOSPACE".into()
        }]
    );
    assert_eq!(
        etcd.status("http://10.0.1.101:2379")
            .await
            .unwrap()
            .errors
            .len(),
        1
    );
    etcd.clear_alarms();
    assert!(etcd.alarms().await.unwrap().is_empty());
}

#[test]
#[should_panic(expected = "no member has peer URL http://10.0.1.109:2380")]
fn starting_a_machine_that_was_never_added_panics() {
    three().start("http://10.0.1.109:2380", "x");
}

#[test]
fn host_of_urls() {
    assert_eq!(host_of("http://10.0.1.101:2380"), "10.0.1.101");
    assert_eq!(host_of("http://node-1.internal:2380/"), "node-1.internal");
    assert_eq!(host_of("http://[fd00::1]:2380"), "[fd00::1]");
    assert_eq!(host_of("10.0.0.1:2380"), "10.0.0.1");
}

#[tokio::test]
async fn reader_is_the_same_cluster() {
    let etcd = three();
    let reader: &dyn EtcdReader = etcd.reader();
    assert_eq!(reader.members().await.unwrap().len(), 3);
}
