//! `EtcdClient` and `check_health` against real etcd 3.4 processes on 127.0.0.1: reads,
//! alarms, the health gate with a member killed, a learner added, started, promoted
//! and removed, and leadership moved. Skipped (with how to install etcd) when the
//! `etcd` binary is missing, except under `CI=true`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use clusterform_etcd::{EtcdAdmin, EtcdError, EtcdReader, check_health};
use common::{EtcdCluster, etcd_binary_from, free_ports};
use serde_json::json;

/// Raises or clears an alarm through the gateway (the client has no method for it).
fn alarm_action(client_url: &str, action: &str, member_id: u64) -> String {
    let mut resp = ureq::post(format!("{client_url}/v3/maintenance/alarm"))
        .send(
            json!({"action": action, "memberID": member_id.to_string(), "alarm": "NOSPACE"})
                .to_string(),
        )
        .unwrap();
    resp.body_mut().read_to_string().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_alarms_and_health_with_a_member_killed() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let c = cluster.client();

    let members = c.members().await.unwrap();
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert!(members.iter().all(|m| m.started() && !m.is_learner));
    for p in &cluster.procs {
        let m = members
            .iter()
            .find(|m| m.has_peer_url(&p.peer_url))
            .unwrap();
        assert_eq!(m.client_urls, vec![p.client_url.clone()]);
    }

    let mut leaders = Vec::new();
    for m in &members {
        let s = c.status(&m.client_urls[0]).await.unwrap();
        assert_eq!(s.member_id, m.id);
        assert_eq!(s.version, "3.4.23");
        assert!(s.db_size > 0 && s.raft_index > 0 && s.raft_term > 0);
        assert!(!s.is_learner);
        leaders.push(s.leader);
    }
    leaders.dedup();
    assert_eq!(leaders.len(), 1);
    let leader = leaders[0];
    assert!(members.iter().any(|m| m.id == leader));
    assert!(c.alarms().await.unwrap().is_empty());
    c.quorum_read().await.unwrap();

    let h = check_health(&c, None).await.unwrap();
    assert_eq!(h.leader, leader);
    assert_eq!(h.statuses.len(), 3);
    assert!(h.unstarted.is_empty());

    // An alarm fails the gate until it is cleared.
    let m0 = members.iter().find(|m| m.name == "m0").unwrap().clone();
    alarm_action(&m0.client_urls[0], "ACTIVATE", m0.id);
    let alarms = c.alarms().await.unwrap();
    assert_eq!(alarms.len(), 1);
    assert_eq!(
        (alarms[0].member_id, alarms[0].alarm.as_str()),
        (m0.id, "NOSPACE")
    );
    let e = check_health(&c, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        format!(
            "alarm NOSPACE raised by member `m0` ({})",
            m0.client_urls[0]
        )
    );
    alarm_action(&m0.client_urls[0], "DEACTIVATE", m0.id);
    assert!(c.alarms().await.unwrap().is_empty());
    check_health(&c, None).await.unwrap();

    // Kill a member that is not the leader.
    let victim = members.iter().find(|m| m.id != leader).unwrap().clone();
    cluster.proc_named(&victim.name).kill();
    let e = check_health(&c, None).await.unwrap_err();
    assert_eq!(
        e.reason,
        format!(
            "member `{}` ({}) does not answer: connection refused",
            victim.name, victim.client_urls[0]
        )
    );
    assert_eq!(e.members.as_ref().map(Vec::len), Some(3));
    eprintln!("health with a member killed: {e}");
    assert!(matches!(
        c.status(&victim.client_urls[0]).await,
        Err(EtcdError::Unreachable { .. })
    ));

    let h = check_health(&c, Some(&victim.peer_urls[0])).await.unwrap();
    assert_eq!(h.allowed_down.map(|m| m.id), Some(victim.id));
    assert_eq!(h.statuses.len(), 2);
    assert_eq!(h.leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_started_promoted_removed_and_leadership_moved() {
    let Some(mut cluster) = EtcdCluster::start(3).await else {
        return;
    };
    let c = cluster.client();
    let ports = free_ports(2);
    let client4 = format!("http://127.0.0.1:{}", ports[0]);
    let peer4 = format!("http://127.0.0.1:{}", ports[1]);

    // etcd refuses changes with "etcdserver: unhealthy cluster" (code 14) until the
    // leader has been connected to a quorum for 5 s after start: retry, bounded.
    let started = Instant::now();
    let (learner, list) = loop {
        match c.add_member(&peer4, true).await {
            Ok(answer) => break answer,
            Err(EtcdError::Api {
                code: 14, message, ..
            }) if message.contains("unhealthy cluster") => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "still {message}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(other) => panic!("add: {other}"),
        }
    };
    eprintln!("learner added after {:?}", started.elapsed());
    assert!(learner.is_learner && !learner.started());
    assert_eq!(learner.peer_urls, vec![peer4.clone()]);
    assert_eq!(list.len(), 4);
    // Added again: etcd refuses.
    match c.add_member(&peer4, true).await.unwrap_err() {
        EtcdError::Api { code, message, .. } => {
            // 3.4 derives the id from the peer URLs and the time: within the same
            // second it says "member ID already exist", later "Peer URLs already exists".
            assert_eq!(code, 9);
            assert!(message.contains("already exist"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // The gate passes with an unstarted learner, and lists it.
    let h = check_health(&c, None).await.unwrap();
    assert_eq!(
        h.unstarted.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![learner.id]
    );
    // Not started: not ready.
    assert!(matches!(
        c.promote_member(learner.id).await,
        Err(EtcdError::NotReady(_))
    ));

    // Start it as etcd's `member add` tells: the list it returned, its own name for itself.
    let initial: Vec<String> = list
        .iter()
        .map(|m| {
            let name = if m.id == learner.id {
                "m3"
            } else {
                m.name.as_str()
            };
            format!("{name}={}", m.peer_urls[0])
        })
        .collect();
    cluster.spawn("m3", &client4, &peer4, &initial.join(","), "existing");

    let started = Instant::now();
    let mut not_ready = 0;
    let after = loop {
        match c.promote_member(learner.id).await {
            Ok(after) => break after,
            Err(EtcdError::NotReady(_)) => not_ready += 1,
            Err(other) => panic!("promote: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the learner was not promotable after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "promoted after {not_ready} NotReady answers, {:?}",
        started.elapsed()
    );
    let promoted = after.iter().find(|m| m.id == learner.id).unwrap();
    assert!(!promoted.is_learner);
    let members = c.members().await.unwrap();
    let m3 = members.iter().find(|m| m.id == learner.id).unwrap();
    assert_eq!(m3.name, "m3");
    assert_eq!(m3.client_urls, vec![client4.clone()]);
    assert!(!m3.is_learner);
    // Promoting a voter is an API error, not "not ready".
    assert!(matches!(
        c.promote_member(learner.id).await,
        Err(EtcdError::Api { code: 9, .. })
    ));

    // Remove it again.
    let after = c.remove_member(learner.id).await.unwrap();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|m| m.id != learner.id));
    cluster.proc_named("m3").kill();
    assert!(matches!(
        c.remove_member(learner.id).await,
        Err(EtcdError::Api { code: 5, .. })
    ));
    let h = check_health(&c, None).await.unwrap();
    assert_eq!(h.members.len(), 3);

    // Move the leadership to another voter.
    let leader = h.leader;
    let to = h.members.iter().find(|m| m.id != leader).unwrap().clone();
    c.move_leader(to.id).await.unwrap();
    let started = Instant::now();
    loop {
        let s = c.status(&to.client_urls[0]).await.unwrap();
        if s.leader == to.id {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "leader still {:x}",
            s.leader
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Moving it to the leader is a no-op.
    c.move_leader(to.id).await.unwrap();
    let h = check_health(&c, None).await.unwrap();
    assert_eq!(h.leader, to.id);
}

#[test]
fn a_missing_etcd_is_skipped_outside_ci() {
    let empty = tempfile::tempdir().unwrap();
    let nowhere = empty.path().join("etcd");
    let path = Some(empty.path().as_os_str().to_owned());
    assert_eq!(etcd_binary_from(&nowhere, path.clone(), None), None);
    assert_eq!(
        etcd_binary_from(&nowhere, path.clone(), Some("false".into())),
        None
    );
    // Found on PATH when not at the fixed place.
    let on_path = empty.path().join("etcd");
    std::fs::write(&on_path, "").unwrap();
    let elsewhere = empty.path().join("no-such-dir").join("etcd");
    assert_eq!(
        etcd_binary_from(&elsewhere, path, Some("true".into())),
        Some(on_path)
    );
}

#[test]
#[should_panic(expected = "apt-get install etcd-server (CI=true: failing instead of skipping)")]
fn a_missing_etcd_fails_under_ci() {
    let empty = tempfile::tempdir().unwrap();
    let path = Some(empty.path().as_os_str().to_owned());
    etcd_binary_from(&empty.path().join("etcd"), path, Some("true".into()));
}
