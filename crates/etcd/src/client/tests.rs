//! Unit tests of the gateway JSON: the answers etcd 3.4.23 gave on this project's
//! machines, missing fields, integers as strings and as numbers, error bodies.

use super::*;

const EP: &str = "http://127.0.0.1:23790";

fn v(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

const MEMBER_LIST: &str = r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","raft_term":"2"},"members":[{"ID":"3319814642761637952","name":"t","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]},{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true}]}"#;

#[test]
fn member_list_as_etcd_3_4_answers() {
    let members = parse_members(EP, v(MEMBER_LIST)).unwrap();
    assert_eq!(
        members,
        vec![
            Member {
                id: 3319814642761637952,
                name: "t".into(),
                peer_urls: vec!["http://127.0.0.1:23800".into()],
                client_urls: vec!["http://127.0.0.1:23790".into()],
                is_learner: false,
            },
            Member {
                id: 14607984100513341868,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:23801".into()],
                client_urls: vec![],
                is_learner: true,
            },
        ]
    );
    assert!(members[0].started());
    assert!(!members[1].started());
    assert_eq!(members[1].hex_id(), "cab9fc249ba6e1ac");
}

#[test]
fn integers_as_numbers_and_nulls_are_accepted() {
    let members = parse_members(
        EP,
        v(r#"{"members":[{"ID":42,"name":null,"peerURLs":["http://a:2380"],"clientURLs":null,"isLearner":false}]}"#),
    )
    .unwrap();
    assert_eq!(members[0].id, 42);
    assert_eq!(members[0].name, "");
    assert!(members[0].client_urls.is_empty());

    let s = parse_status(
        EP,
        v(r#"{"header":{"member_id":7},"version":"3.5.9","dbSize":20480,"leader":"7","raftIndex":4,"raftTerm":"2","raftAppliedIndex":4}"#),
    )
    .unwrap();
    assert_eq!(
        (s.member_id, s.db_size, s.leader, s.raft_index, s.raft_term),
        (7, 20480, 7, 4, 2)
    );
}

#[test]
fn an_empty_member_list_answer_is_empty() {
    assert_eq!(parse_members(EP, v(r#"{"header":{}}"#)).unwrap(), vec![]);
}

#[test]
fn bad_integers_are_protocol_errors() {
    let err = parse_members(EP, v(r#"{"members":[{"ID":"12x"}]}"#)).unwrap_err();
    match err {
        EtcdError::Protocol { endpoint, detail } => {
            assert_eq!(endpoint, EP);
            assert!(detail.contains("12x"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_members(EP, v(r#"{"members":{"ID":"1"}}"#)),
        Err(EtcdError::Protocol { .. })
    ));
}

#[test]
fn status_as_etcd_3_4_answers() {
    let s = parse_status(
        EP,
        v(r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"3319814642761637952","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4","dbSizeInUse":"16384"}"#),
    )
    .unwrap();
    assert_eq!(
        s,
        MemberStatus {
            endpoint: EP.into(),
            member_id: 3319814642761637952,
            version: "3.4.23".into(),
            db_size: 20480,
            leader: 3319814642761637952,
            raft_index: 4,
            raft_term: 2,
            raft_applied_index: 4,
            is_learner: false,
            errors: vec![],
        }
    );
}

#[test]
fn status_of_a_learner_with_an_alarm() {
    let s = parse_status(
        EP,
        v(r#"{"header":{"member_id":"16902830949372602748"},"version":"3.4.23","dbSize":"20480","leader":"1","raftIndex":"11","raftTerm":"2","raftAppliedIndex":"11","isLearner":true,"errors":["memberID:16902830949372602748 alarm:NOSPACE "],"dbSizeInUse":"16384"}"#),
    )
    .unwrap();
    assert!(s.is_learner);
    assert_eq!(
        s.errors,
        vec!["memberID:16902830949372602748 alarm:NOSPACE ".to_string()]
    );
}

#[test]
fn alarms_none_some_and_as_numbers() {
    assert_eq!(parse_alarms(EP, v("{}")).unwrap(), vec![]);
    assert_eq!(
        parse_alarms(
            EP,
            v(r#"{"alarms":[{"memberID":"16902830949372602748","alarm":"NOSPACE"}]}"#)
        )
        .unwrap(),
        vec![Alarm {
            member_id: 16902830949372602748,
            alarm: "NOSPACE".into()
        }]
    );
    assert_eq!(
        parse_alarms(
            EP,
            v(r#"{"alarms":[{"memberID":3,"alarm":2},{"memberID":"4"},{"memberID":"5","alarm":"NONE"}]}"#)
        )
        .unwrap(),
        vec![Alarm {
            member_id: 3,
            alarm: "CORRUPT".into()
        }]
    );
}

#[test]
fn member_add_as_etcd_3_4_answers() {
    let (member, members) = parse_member_add(
        EP,
        v(r#"{"header":{"cluster_id":"1","member_id":"2","raft_term":"2"},"member":{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true},"members":[{"ID":"14607984100513341868","peerURLs":["http://127.0.0.1:23801"],"isLearner":true},{"ID":"3319814642761637952","name":"t","peerURLs":["http://127.0.0.1:23800"],"clientURLs":["http://127.0.0.1:23790"]}]}"#),
    )
    .unwrap();
    assert_eq!(member.id, 14607984100513341868);
    assert!(member.is_learner);
    assert!(member.has_peer_url("http://127.0.0.1:23801/"));
    assert_eq!(members.len(), 2);
    assert!(matches!(
        parse_member_add(EP, v(r#"{"members":[]}"#)),
        Err(EtcdError::Protocol { .. })
    ));
}

#[test]
fn gateway_errors_become_api_errors() {
    let e = error_from_answer(
        EP,
        412,
        r#"{"error":"etcdserver: Peer URLs already exists","message":"etcdserver: Peer URLs already exists","code":9}"#,
    );
    assert_eq!(
        e,
        EtcdError::Api {
            endpoint: EP.into(),
            code: 9,
            message: "etcdserver: Peer URLs already exists".into()
        }
    );
    let e = error_from_answer(
        EP,
        404,
        r#"{"error":"etcdserver: member not found","code":5}"#,
    );
    assert_eq!(
        e,
        EtcdError::Api {
            endpoint: EP.into(),
            code: 5,
            message: "etcdserver: member not found".into()
        }
    );
    // No code: the one the HTTP status stands for.
    let e = error_from_answer(EP, 503, r#"{"message":"etcdserver: no leader"}"#);
    assert!(matches!(e, EtcdError::Api { code: 14, .. }), "{e:?}");
    // Promoting a voter is an error, not "not ready", though the messages share a prefix.
    let e = error_from_answer(
        EP,
        412,
        r#"{"error":"etcdserver: can only promote a learner member","message":"etcdserver: can only promote a learner member","code":9}"#,
    );
    assert!(matches!(e, EtcdError::Api { code: 9, .. }), "{e:?}");
}

#[test]
fn a_learner_out_of_sync_is_not_ready() {
    let e = error_from_answer(
        EP,
        412,
        r#"{"error":"etcdserver: can only promote a learner member which is in sync with leader","message":"etcdserver: can only promote a learner member which is in sync with leader","code":9}"#,
    );
    assert_eq!(
        e,
        EtcdError::NotReady(
            "etcdserver: can only promote a learner member which is in sync with leader".into()
        )
    );
    let e = error_from_answer(
        EP,
        412,
        r#"{"error":"etcdserver: learner not ready","code":9}"#,
    );
    assert!(matches!(e, EtcdError::NotReady(_)), "{e:?}");
}

#[test]
fn answers_that_are_not_gateway_errors_are_protocol_errors() {
    let e = error_from_answer(EP, 404, "Not Found\n");
    assert_eq!(
        e,
        EtcdError::Protocol {
            endpoint: EP.into(),
            detail: "HTTP 404: Not Found".into()
        }
    );
    let e = error_from_answer(EP, 502, "");
    assert!(e.to_string().contains("HTTP 502: (empty body)"), "{e}");
    let e = error_from_answer(EP, 500, r#"{"unrelated":true}"#);
    assert!(matches!(e, EtcdError::Protocol { .. }), "{e:?}");
}

#[test]
fn dial_url_uses_the_map_and_ignores_trailing_slashes() {
    let mut config = ClientConfig::new(vec!["http://10.0.1.101:2379".into()]);
    config.url_map.insert(
        "http://10.0.1.101:2379".into(),
        "http://127.0.0.1:40001".into(),
    );
    assert_eq!(
        config.dial_url("http://10.0.1.101:2379"),
        "http://127.0.0.1:40001"
    );
    assert_eq!(
        config.dial_url("http://10.0.1.101:2379/"),
        "http://127.0.0.1:40001"
    );
    assert_eq!(
        config.dial_url("http://10.0.1.102:2379"),
        "http://10.0.1.102:2379"
    );
}

#[test]
fn only_connect_phase_failures_count_as_not_sent() {
    use std::io;
    assert!(surely_not_sent(&ureq::Error::Io(io::Error::from(
        io::ErrorKind::ConnectionRefused
    ))));
    assert!(surely_not_sent(&ureq::Error::Timeout(
        ureq::Timeout::Connect
    )));
    assert!(surely_not_sent(&ureq::Error::HostNotFound));
    assert!(!surely_not_sent(&ureq::Error::Timeout(
        ureq::Timeout::PerCall
    )));
    assert!(!surely_not_sent(&ureq::Error::Io(io::Error::from(
        io::ErrorKind::ConnectionReset
    ))));
}
