//! `EtcdClient` against canned HTTP servers and closed or silent ports: the requests it
//! sends, fail-over between endpoints, error mapping, `url_map`, and its timeouts.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use clusterform_etcd::{ClientConfig, EtcdAdmin, EtcdClient, EtcdError, EtcdReader, Timeouts};
use common::{CannedServer, client, closed_url};
use serde_json::json;

const MEMBERS: &str = r#"{"header":{"member_id":"3319814642761637952"},"members":[{"ID":"3319814642761637952","name":"t","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]},{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true}]}"#;
const STATUS: &str = r#"{"header":{"member_id":"3319814642761637952"},"version":"3.4.23","dbSize":"20480","leader":"3319814642761637952","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4"}"#;
const ADD: &str = r#"{"member":{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true},"members":[{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true}]}"#;

fn full_server() -> CannedServer {
    CannedServer::start(&[
        ("/v3/cluster/member/list", 200, MEMBERS),
        ("/v3/cluster/member/add", 200, ADD),
        ("/v3/cluster/member/remove", 200, MEMBERS),
        ("/v3/cluster/member/promote", 200, MEMBERS),
        ("/v3/maintenance/status", 200, STATUS),
        ("/v3/maintenance/alarm", 200, "{}"),
        ("/v3/kv/range", 200, r#"{"header":{}}"#),
    ])
}

#[tokio::test]
async fn sends_the_gateway_requests() {
    let server = full_server();
    let c = client(vec![server.url.clone()]);
    assert_eq!(c.endpoints(), vec![server.url.clone()]);
    assert_eq!(c.members().await.unwrap().len(), 2);
    let s = c.status(&server.url).await.unwrap();
    assert_eq!(s.endpoint, server.url);
    assert_eq!(s.member_id, 3319814642761637952);
    assert!(c.alarms().await.unwrap().is_empty());
    c.quorum_read().await.unwrap();
    let (m, _) = c.add_member("http://127.0.0.1:23801", true).await.unwrap();
    assert_eq!(m.id, 14607984100513341868);
    c.remove_member(14607984100513341868).await.unwrap();
    c.promote_member(14607984100513341868).await.unwrap();

    let got: Vec<(String, serde_json::Value)> = server
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.json()))
        .collect();
    assert_eq!(
        got,
        vec![
            // The read barrier: a linearizable range at the same endpoint.
            (
                "/v3/kv/range".into(),
                json!({"key": "Y2x1c3RlcmZvcm0vaGVhbHRoLXByb2Jl", "limit": 1})
            ),
            (
                "/v3/cluster/member/list".into(),
                json!({"linearizable": true})
            ),
            ("/v3/maintenance/status".into(), json!({})),
            ("/v3/maintenance/alarm".into(), json!({"action": "GET"})),
            (
                "/v3/kv/range".into(),
                json!({"key": "Y2x1c3RlcmZvcm0vaGVhbHRoLXByb2Jl", "limit": 1})
            ),
            (
                "/v3/cluster/member/add".into(),
                json!({"peerURLs": ["http://127.0.0.1:23801"], "isLearner": true})
            ),
            (
                "/v3/cluster/member/remove".into(),
                json!({"ID": "14607984100513341868"})
            ),
            (
                "/v3/cluster/member/promote".into(),
                json!({"ID": "14607984100513341868"})
            ),
        ]
    );
}

#[tokio::test]
async fn fails_over_to_the_next_endpoint_and_names_all_when_none_answers() {
    let server = full_server();
    let closed = closed_url();
    let c = client(vec![closed.clone(), server.url.clone()]);
    assert_eq!(c.members().await.unwrap().len(), 2);
    c.quorum_read().await.unwrap();
    // A change whose connection was refused was not sent: the next endpoint gets it.
    c.remove_member(1).await.unwrap();

    let closed2 = closed_url();
    let c = client(vec![closed.clone(), closed2.clone()]);
    match c.members().await.unwrap_err() {
        EtcdError::Unreachable { endpoints, detail } => {
            assert_eq!(endpoints, vec![closed.clone(), closed2.clone()]);
            assert_eq!(detail, format!("{closed2}: connection refused"));
        }
        other => panic!("{other:?}"),
    }
    let c = client(vec![]);
    assert!(matches!(
        c.members().await,
        Err(EtcdError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn errors_are_mapped_and_url_map_is_used() {
    let server = CannedServer::start(&[
        (
            "/v3/cluster/member/promote",
            412,
            r#"{"error":"etcdserver: can only promote a learner member which is in sync with leader","message":"etcdserver: can only promote a learner member which is in sync with leader","code":9}"#,
        ),
        (
            "/v3/cluster/member/remove",
            404,
            r#"{"error":"etcdserver: member not found","message":"etcdserver: member not found","code":5}"#,
        ),
    ]);
    // The client URL does not resolve: only the map makes it reachable.
    let client_url = "http://etcd-0.invalid:2379".to_string();
    let c = EtcdClient::new(ClientConfig {
        endpoints: vec![client_url.clone()],
        url_map: BTreeMap::from([(client_url.clone(), server.url.clone())]),
        timeouts: common::short_timeouts(),
    });
    assert_eq!(
        c.promote_member(7).await.unwrap_err(),
        EtcdError::NotReady(
            "etcdserver: can only promote a learner member which is in sync with leader".into()
        )
    );
    assert_eq!(
        c.remove_member(7).await.unwrap_err(),
        EtcdError::Api {
            endpoint: client_url.clone(),
            code: 5,
            message: "etcdserver: member not found".into()
        }
    );
    // An unknown path: not a gateway error.
    assert!(matches!(
        c.alarms().await.unwrap_err(),
        EtcdError::Protocol { endpoint, .. } if endpoint == client_url
    ));
}

#[tokio::test]
async fn unavailable_reads_go_to_the_next_endpoint_changes_do_not() {
    let unavailable =
        r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#;
    let sick = CannedServer::start(&[
        ("/v3/cluster/member/list", 503, unavailable),
        ("/v3/cluster/member/add", 503, unavailable),
    ]);
    let good = full_server();
    let c = client(vec![sick.url.clone(), good.url.clone()]);
    assert_eq!(c.members().await.unwrap().len(), 2);
    assert!(matches!(
        c.add_member("http://127.0.0.1:23801", true).await,
        Err(EtcdError::Api { code: 14, .. })
    ));
    assert!(
        good.requests()
            .iter()
            .all(|r| r.path != "/v3/cluster/member/add")
    );
    // Only unavailable endpoints: their error, not "unreachable".
    let c = client(vec![sick.url.clone()]);
    assert!(matches!(
        c.members().await,
        Err(EtcdError::Api { code: 14, .. })
    ));
}

#[tokio::test]
async fn a_change_a_learner_refuses_goes_to_the_next_endpoint() {
    // A member being replaced is a learner for a while; it refuses changes unapplied.
    let learner_says = r#"{"error":"etcdserver: rpc not supported for learner","message":"etcdserver: rpc not supported for learner","code":14}"#;
    let learner = CannedServer::start(&[("/v3/cluster/member/promote", 503, learner_says)]);
    let good = full_server();
    let c = client(vec![learner.url.clone(), good.url.clone()]);
    assert!(c.promote_member(14607984100513341868).await.is_ok());
    assert!(
        good.requests()
            .iter()
            .any(|r| r.path == "/v3/cluster/member/promote")
    );
}

#[tokio::test]
async fn a_change_that_may_have_arrived_is_not_sent_again() {
    // Accepts connections (kernel backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let good = full_server();
    let c = EtcdClient::new(ClientConfig {
        endpoints: vec![silent_url.clone(), good.url.clone()],
        url_map: BTreeMap::new(),
        timeouts: Timeouts {
            connect: Duration::from_millis(500),
            request: Duration::from_millis(500),
        },
    });
    match c
        .add_member("http://127.0.0.1:23801", true)
        .await
        .unwrap_err()
    {
        EtcdError::Unreachable { endpoints, detail } => {
            assert_eq!(endpoints, vec![silent_url.clone()]);
            assert!(detail.contains("may have been applied"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(good.requests().is_empty());
    // A read goes on to the next endpoint.
    assert_eq!(c.members().await.unwrap().len(), 2);
}

#[tokio::test]
async fn status_of_a_closed_port_fails_fast() {
    let url = closed_url();
    let c = client(vec![url.clone()]);
    let started = Instant::now();
    let err = c.status(&url).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    match err {
        EtcdError::Unreachable { endpoints, detail } => {
            assert_eq!(endpoints, vec![url]);
            assert_eq!(detail, "connection refused");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn status_of_a_silent_member_fails_within_the_timeouts() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let c = EtcdClient::new(ClientConfig {
        endpoints: vec![url.clone()],
        url_map: BTreeMap::new(),
        timeouts: Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(1),
        },
    });
    let started = Instant::now();
    let err = c.status(&url).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    match err {
        EtcdError::Unreachable { detail, .. } => assert_eq!(detail, "no answer within 2s"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn move_leader_asks_the_leader() {
    let leader_server = CannedServer::start(&[("/v3/maintenance/transfer-leadership", 200, "{}")]);
    let follower = CannedServer::start(&[
        (
            "/v3/maintenance/status",
            200,
            r#"{"header":{"member_id":"2"},"version":"3.4.23","leader":"1"}"#,
        ),
        (
            "/v3/cluster/member/list",
            200,
            r#"{"members":[{"ID":"1","name":"a","peerURLs":["http://a:2380"],"clientURLs":["http://a.invalid:2379"]},{"ID":"2","name":"b","peerURLs":["http://b:2380"],"clientURLs":["http://b.invalid:2379"]}]}"#,
        ),
    ]);
    let c = EtcdClient::new(ClientConfig {
        endpoints: vec!["http://b.invalid:2379".into()],
        url_map: BTreeMap::from([
            (
                "http://a.invalid:2379".to_string(),
                leader_server.url.clone(),
            ),
            ("http://b.invalid:2379".to_string(), follower.url.clone()),
        ]),
        timeouts: common::short_timeouts(),
    });
    c.move_leader(2).await.unwrap();
    let sent = leader_server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v3/maintenance/transfer-leadership");
    assert_eq!(sent[0].json(), json!({"targetID": "2"}));
    // Already the leader: nothing to send.
    c.move_leader(1).await.unwrap();
    assert_eq!(leader_server.requests().len(), 1);
}

#[tokio::test]
async fn the_member_list_is_read_even_when_the_barrier_is_refused() {
    let no_quorum = r#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
    let server = CannedServer::start(&[
        ("/v3/kv/range", 503, no_quorum),
        ("/v3/cluster/member/list", 200, MEMBERS),
    ]);
    let c = client(vec![closed_url(), server.url.clone()]);
    assert_eq!(c.members().await.unwrap().len(), 2);
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v3/kv/range", "/v3/cluster/member/list"]);
    assert!(matches!(
        c.quorum_read().await,
        Err(EtcdError::Api { code: 14, .. })
    ));
}
