//! Behaviour of the sim provider through its public API, each test in its own
//! temporary folder.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterform_core::Address;
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderConfig, ProviderError,
    ReadRequest, Reader, UpdateRequest,
};
use clusterform_provider_sim::{SimCloud, SimError, SimProvider, schema};
use serde_json::{Value, json};

fn config(v: Value) -> ProviderConfig {
    serde_json::from_value(v).expect("a table")
}

fn provider(dir: &Path, settings: Value) -> SimProvider {
    let mut c = config(settings);
    c.insert("dir".into(), json!(dir));
    SimProvider::from_config(&c, Path::new("/nonexistent-base")).expect("valid settings")
}

fn addr(s: &str) -> Address {
    s.parse().expect("valid address")
}

fn attrs(v: Value) -> clusterform_core::Attrs {
    serde_json::from_value(v).expect("an attribute table")
}

fn create_req(kind: &str, address: &str, op: &str, a: Value) -> CreateRequest {
    CreateRequest {
        kind: kind.into(),
        attrs: attrs(a),
        owner: Ownership {
            cluster: "dev".into(),
            address: addr(address),
            op: op.into(),
            expires_at: None,
            created_by: None,
            created_at: None,
        },
    }
}

async fn network(p: &SimProvider, name: &str, cidr: &str, gateway: Option<&str>) -> Object {
    let mut a = json!({"name": name, "cidr": cidr});
    if let Some(g) = gateway {
        a["gateway"] = json!(g);
    }
    p.create(&create_req(
        "network",
        &format!("network.{name}"),
        &format!("op-net-{name}"),
        a,
    ))
    .await
    .expect("network created")
}

async fn machine(
    p: &SimProvider,
    net: &str,
    name: &str,
    address: Option<&str>,
) -> Result<Object, ProviderError> {
    let mut a = json!({"name": name, "size": "2cpu-4gb", "network": net});
    if let Some(ip) = address {
        a["address"] = json!(ip);
    }
    p.create(&create_req(
        "machine",
        &format!("machine.{name}"),
        &format!("op-m-{name}"),
        a,
    ))
    .await
}

fn read_req(kind: &str, id: &str) -> ReadRequest {
    ReadRequest {
        address: addr(&format!("{kind}.x")),
        kind: kind.into(),
        id: id.into(),
        prior: Default::default(),
    }
}

fn update_req(kind: &str, id: &str, a: Value) -> UpdateRequest {
    UpdateRequest {
        address: addr(&format!("{kind}.x")),
        kind: kind.into(),
        id: id.into(),
        attrs: attrs(a),
        changed: Vec::new(),
        idempotency_key: "op-up".into(),
    }
}

fn delete_req(kind: &str, address: &str, id: &str) -> DeleteRequest {
    DeleteRequest {
        address: addr(address),
        kind: kind.into(),
        id: id.into(),
        idempotency_key: "op-del".into(),
        force: false,
    }
}

fn permanent(r: Result<impl std::fmt::Debug, ProviderError>) -> String {
    match r {
        Err(ProviderError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[test]
fn schema_names_the_kinds() {
    let s = schema();
    assert_eq!(s.provider, "sim");
    assert_eq!(
        s.kind_names(),
        vec!["network", "subnet", "machine", "volume"]
    );
    let m = s.kind("machine").expect("machine kind");
    assert!(!m.attr("size").expect("size").force_new);
    assert!(m.attr("zone").expect("zone").force_new);
    let address = m.attr("address").expect("address");
    assert!(address.input && address.computed && address.force_new);
    assert!(!m.attr("state").expect("state").input);
    assert!(
        s.kinds
            .iter()
            .flat_map(|k| &k.attrs)
            .all(|a| !a.doc.is_empty())
    );
}

#[tokio::test]
async fn create_read_update_delete_round_trip() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let net = network(&p, "main", "10.0.0.0/24", Some("10.0.0.1")).await;
    assert_eq!(net.id, "net-000001");
    let m = machine(&p, &net.id, "a", None)
        .await
        .expect("machine created");
    assert_eq!(m.id, "m-000001");
    assert_eq!(m.attrs["address"], json!("10.0.0.10"));
    assert_eq!(m.attrs["state"], json!("running"));
    assert_eq!(m.attrs["size"], json!("2cpu-4gb"));
    assert_eq!(
        m.owner.as_ref().map(|o| o.address.to_string()).as_deref(),
        Some("machine.a")
    );

    let read = p.read(&read_req("machine", &m.id)).await.expect("read");
    assert_eq!(read.as_ref(), Some(&m));

    // In place: the size changes, computed values stay.
    let up = p
        .update(&update_req(
            "machine",
            &m.id,
            json!({"name": "a", "size": "4cpu-8gb", "network": net.id, "tags": {"team": "x"}}),
        ))
        .await
        .expect("resized in place");
    assert_eq!(up.attrs["size"], json!("4cpu-8gb"));
    assert_eq!(up.attrs["address"], json!("10.0.0.10"));
    assert_eq!(up.attrs["state"], json!("running"));
    assert_eq!(
        p.read(&read_req("machine", &m.id)).await.expect("read"),
        Some(up)
    );

    // Force-new attributes cannot change in place.
    let msg = permanent(
        p.update(&update_req(
            "machine",
            &m.id,
            json!({"name": "a", "size": "4cpu-8gb", "network": net.id, "zone": "b"}),
        ))
        .await,
    );
    assert!(
        msg.contains("`zone`") && msg.contains("cannot be changed in place"),
        "{msg}"
    );

    // Unknown and wrongly typed attributes are refused.
    let msg = permanent(
        p.update(&update_req(
            "machine",
            &m.id,
            json!({"name": "a", "size": 4, "network": net.id}),
        ))
        .await,
    );
    assert!(msg.contains("`size`"), "{msg}");

    p.delete(&delete_req("machine", "machine.a", &m.id))
        .await
        .expect("deleted");
    assert_eq!(
        p.read(&read_req("machine", &m.id)).await.expect("read"),
        None
    );
    p.delete(&delete_req("machine", "machine.a", &m.id))
        .await
        .expect("deleting a missing object succeeds");
    assert!(matches!(
        p.update(&update_req("machine", &m.id, json!({"name": "a", "size": "1", "network": net.id})))
            .await,
        Err(ProviderError::NotFound(id)) if id == m.id
    ));
}

#[tokio::test]
async fn references_must_exist() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let msg = permanent(machine(&p, "net-000009", "a", None).await);
    assert_eq!(msg, "network `net-000009` does not exist");
    let net = network(&p, "main", "10.0.0.0/24", None).await;
    let vol = p
        .create(&create_req(
            "volume",
            "volume.data",
            "op-v",
            json!({"name": "data", "size_gb": 10}),
        ))
        .await
        .expect("volume created");
    assert_eq!(vol.id, "vol-000001");
    // An in-place reference is checked when it changes.
    let msg = permanent(
        p.update(&update_req(
            "volume",
            &vol.id,
            json!({"name": "data", "size_gb": 20, "machine": "m-000042"}),
        ))
        .await,
    );
    assert_eq!(msg, "machine `m-000042` does not exist");
    let m = machine(&p, &net.id, "a", None).await.expect("machine");
    let up = p
        .update(&update_req(
            "volume",
            &vol.id,
            json!({"name": "data", "size_gb": 20, "machine": m.id}),
        ))
        .await
        .expect("attached");
    assert_eq!(up.attrs["machine"], json!("m-000001"));
    let sub = p
        .create(&create_req(
            "subnet",
            "subnet.a",
            "op-s",
            json!({"name": "a", "network": net.id, "cidr": "10.0.0.0/25"}),
        ))
        .await
        .expect("subnet created");
    assert_eq!(sub.id, "sub-000001");
    let msg = permanent(
        p.create(&create_req("cluster", "cluster.x", "op-x", json!({})))
            .await,
    );
    assert!(msg.contains("no resource kind `cluster`"), "{msg}");
}

#[tokio::test]
async fn create_is_idempotent_on_the_op() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let a = network(&p, "main", "10.0.0.0/24", None).await;
    let b = network(&p, "main", "10.0.0.0/24", None).await;
    assert_eq!(a, b);
    let cloud = SimCloud::open(tmp.path()).expect("open");
    assert_eq!(cloud.counts().expect("counts").get("network"), Some(&1));
    assert_eq!(cloud.calls().expect("calls").get("create"), Some(&2));
    assert_eq!(cloud.mutations().expect("mutations"), 2);
    assert!(cloud.duplicates().expect("duplicates").is_empty());
}

#[tokio::test]
async fn batch_read_is_one_call() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = Arc::new(provider(tmp.path(), json!({})));
    assert_eq!(p.max_batch(), 1000);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..500 {
        let p = Arc::clone(&p);
        set.spawn(async move {
            p.create(&create_req(
                "volume",
                &format!("volume.v[{i}]"),
                &format!("op-{i}"),
                json!({"name": format!("v{i}"), "size_gb": i}),
            ))
            .await
        });
    }
    let mut made = Vec::new();
    while let Some(r) = set.join_next().await {
        made.push(r.expect("task").expect("created"));
    }
    made.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(made.first().map(|o| o.id.as_str()), Some("vol-000001"));
    assert_eq!(made.last().map(|o| o.id.as_str()), Some("vol-000500"));

    let cloud = SimCloud::open(tmp.path()).expect("open");
    cloud.reset_calls().expect("reset");
    let mut reqs: Vec<ReadRequest> = made.iter().map(|o| read_req("volume", &o.id)).collect();
    reqs.push(read_req("volume", "vol-999999"));
    reqs.push(read_req("machine", &made[0].id)); // wrong kind reads as missing
    let answers = p.read_batch(&reqs).await;
    assert_eq!(answers.len(), 502);
    for (o, a) in made.iter().zip(&answers) {
        assert_eq!(a.as_ref().expect("read"), &Some(o.clone()));
    }
    assert_eq!(answers[500].as_ref().expect("read"), &None);
    assert_eq!(answers[501].as_ref().expect("read"), &None);
    let calls = cloud.calls().expect("calls");
    assert_eq!(calls.get("read_batch"), Some(&1));
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(cloud.mutations().expect("mutations"), 0);
}

#[tokio::test]
async fn missing_objects_read_as_none() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    assert_eq!(
        p.read(&read_req("machine", "m-000001"))
            .await
            .expect("read"),
        None
    );
    assert_eq!(
        p.find_by_key("machine", "op-nope").await.expect("find"),
        None
    );
    assert!(matches!(
        p.import("machine", "m-000001").await,
        Err(ProviderError::NotFound(_))
    ));
    let net = network(&p, "main", "10.0.0.0/24", None).await;
    assert!(matches!(
        p.import("machine", &net.id).await,
        Err(ProviderError::NotFound(_))
    ));
    assert_eq!(p.import("network", &net.id).await.expect("import"), net);
    assert_eq!(
        p.find_by_key("network", "op-net-main").await.expect("find"),
        Some(net.clone())
    );
    assert_eq!(
        p.find_by_key("machine", "op-net-main").await.expect("find"),
        None
    );
    assert_eq!(
        p.list_cluster("dev").await.expect("list"),
        vec![net.clone()]
    );
    assert!(p.list_cluster("other").await.expect("list").is_empty());
    assert_eq!(p.list_owned().await.expect("list owned"), vec![net]);
    let calls = SimCloud::open(tmp.path())
        .expect("open")
        .calls()
        .expect("calls");
    assert_eq!(calls.get("read"), Some(&1));
    assert_eq!(calls.get("find_by_key"), Some(&3));
    assert_eq!(calls.get("import"), Some(&3));
    assert_eq!(calls.get("list_cluster"), Some(&2));
    assert_eq!(calls.get("list_owned"), Some(&1));
}

#[tokio::test]
async fn deleting_a_network_in_use_is_a_dependency_violation() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let net = network(&p, "main", "10.0.0.0/24", None).await;
    let mut ms = Vec::new();
    for n in ["a", "b", "c"] {
        ms.push(machine(&p, &net.id, n, None).await.expect("machine"));
    }
    let msg = permanent(
        p.delete(&delete_req("network", "network.main", &net.id))
            .await,
    );
    assert_eq!(
        msg,
        "DependencyViolation: network `net-000001` still has 3 machines"
    );

    let sub = p
        .create(&create_req(
            "subnet",
            "subnet.a",
            "op-s",
            json!({"name": "a", "network": net.id, "cidr": "10.0.0.128/25"}),
        ))
        .await
        .expect("subnet");
    let m = p
        .create(&create_req(
            "machine",
            "machine.d",
            "op-d",
            json!({"name": "d", "size": "s", "network": net.id, "subnet": sub.id}),
        ))
        .await
        .expect("machine in subnet");
    let msg = permanent(p.delete(&delete_req("subnet", "subnet.a", &sub.id)).await);
    assert_eq!(
        msg,
        "DependencyViolation: subnet `sub-000001` still has 1 machine"
    );
    let msg = permanent(
        p.delete(&delete_req("network", "network.main", &net.id))
            .await,
    );
    assert_eq!(
        msg,
        "DependencyViolation: network `net-000001` still has 4 machines and 1 subnet"
    );

    for o in ms.iter().chain([&m]) {
        p.delete(&delete_req("machine", "machine.x", &o.id))
            .await
            .expect("deleted");
    }
    p.delete(&delete_req("subnet", "subnet.a", &sub.id))
        .await
        .expect("deleted");
    p.delete(&delete_req("network", "network.main", &net.id))
        .await
        .expect("deleted");
    assert!(
        SimCloud::open(tmp.path())
            .expect("open")
            .list(None)
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn addresses_are_assigned_like_dhcp() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let net = network(&p, "main", "10.0.0.0/24", Some("10.0.0.11")).await;
    let ip = |o: &Object| o.attrs["address"].as_str().expect("an address").to_string();

    let a = machine(&p, &net.id, "a", None).await.expect("a");
    assert_eq!(ip(&a), "10.0.0.10");
    let s = machine(&p, &net.id, "s", Some("10.0.0.12"))
        .await
        .expect("static");
    assert_eq!(ip(&s), "10.0.0.12");
    let b = machine(&p, &net.id, "b", None).await.expect("b");
    assert_eq!(
        ip(&b),
        "10.0.0.13",
        "skips the gateway .11 and the static .12"
    );

    let msg = permanent(machine(&p, &net.id, "c", Some("10.0.0.12")).await);
    assert!(msg.contains("already in use"), "{msg}");
    let msg = permanent(machine(&p, &net.id, "d", Some("10.0.0.11")).await);
    assert!(msg.contains("already in use"), "the gateway: {msg}");
    let msg = permanent(machine(&p, &net.id, "e", Some("10.1.0.5")).await);
    assert!(msg.contains("not a host address"), "{msg}");

    // A freed address is handed out again.
    p.delete(&delete_req("machine", "machine.a", &a.id))
        .await
        .expect("deleted");
    let f = machine(&p, &net.id, "f", None).await.expect("f");
    assert_eq!(ip(&f), "10.0.0.10");

    // Another network has its own addresses.
    let other = network(&p, "other", "192.168.5.0/24", None).await;
    let g = machine(&p, &other.id, "g", None).await.expect("g");
    assert_eq!(ip(&g), "192.168.5.10");

    // Full network.
    let tiny = network(&p, "tiny", "172.16.0.0/28", None).await;
    for i in 0..5 {
        machine(&p, &tiny.id, &format!("t{i}"), None)
            .await
            .expect("fits");
    }
    let msg = permanent(machine(&p, &tiny.id, "t5", None).await);
    assert!(msg.contains("no free address"), "{msg}");
}

#[tokio::test]
async fn concurrent_creates_get_distinct_addresses() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = Arc::new(provider(tmp.path(), json!({"latency_ms": 20})));
    let net = network(&p, "main", "10.0.0.0/16", None).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (p, net) = (Arc::clone(&p), net.id.clone());
        set.spawn(async move { machine(&p, &net, &format!("w{i}"), None).await });
    }
    let mut ips = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let o = r.expect("task").expect("created");
        ips.insert(o.attrs["address"].as_str().expect("address").to_string());
    }
    assert_eq!(ips.len(), 300);
}

#[tokio::test]
async fn two_processes_share_one_folder() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p1 = Arc::new(provider(tmp.path(), json!({})));
    let p2 = Arc::new(provider(tmp.path(), json!({})));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..100 {
        let p = Arc::clone(if i % 2 == 0 { &p1 } else { &p2 });
        set.spawn(async move {
            p.create(&create_req(
                "volume",
                &format!("volume.v[{i}]"),
                &format!("op-{i}"),
                json!({"name": "v", "size_gb": 1}),
            ))
            .await
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        ids.insert(r.expect("task").expect("created").id);
    }
    assert_eq!(ids.len(), 100);
    assert_eq!(ids.last().map(String::as_str), Some("vol-000100"));
}

#[tokio::test]
async fn fail_on_fails_mutations_of_that_address() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(
        tmp.path(),
        json!({"fail_on": ["network.bad", "machine.w[1]"]}),
    );
    let msg = permanent(
        p.create(&create_req(
            "network",
            "network.bad",
            "op-1",
            json!({"name": "n", "cidr": "10.0.0.0/24"}),
        ))
        .await,
    );
    assert_eq!(msg, "injected failure for `network.bad`");
    let net = network(&p, "good", "10.0.0.0/24", None).await;
    let msg = permanent(
        p.create(&create_req(
            "machine",
            "machine.w[1]",
            "op-2",
            json!({"name": "w", "size": "s", "network": net.id}),
        ))
        .await,
    );
    assert_eq!(msg, "injected failure for `machine.w[1]`");
    let msg = permanent(
        p.delete(&delete_req("network", "network.bad", &net.id))
            .await,
    );
    assert_eq!(msg, "injected failure for `network.bad`");
    // Reads are not affected.
    assert!(
        p.read(&read_req("network", &net.id))
            .await
            .expect("read")
            .is_some()
    );
    let cloud = SimCloud::open(tmp.path()).expect("open");
    assert_eq!(cloud.list(None).expect("list").len(), 1);
    assert_eq!(cloud.calls().expect("calls").get("create"), Some(&3));
}

async fn fail_pattern(dir: &Path, seed: u64) -> Vec<bool> {
    let p = provider(dir, json!({"fail_rate": 0.5, "seed": seed}));
    let mut out = Vec::new();
    for _ in 0..40 {
        match p.read(&read_req("machine", "m-000001")).await {
            Ok(_) => out.push(true),
            Err(ProviderError::Transient {
                message,
                retry_after,
            }) => {
                assert_eq!(message, "InternalError (injected)");
                assert_eq!(retry_after, None);
                out.push(false);
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    out
}

#[tokio::test]
async fn fail_rate_is_deterministic_with_a_seed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let a = fail_pattern(&tmp.path().join("a"), 7).await;
    let b = fail_pattern(&tmp.path().join("b"), 7).await;
    assert_eq!(a, b);
    assert!(a.contains(&true) && a.contains(&false), "{a:?}");
    let c = fail_pattern(&tmp.path().join("c"), 8).await;
    assert_ne!(a, c);
    // Every call is counted, failed or not.
    let calls = SimCloud::open(&tmp.path().join("a"))
        .expect("open")
        .calls()
        .expect("calls");
    assert_eq!(calls.get("read"), Some(&40));

    let always = provider(&tmp.path().join("d"), json!({"fail_rate": 1.0}));
    let r = always
        .create(&create_req(
            "network",
            "network.n",
            "op",
            json!({"name": "n", "cidr": "10.0.0.0/24"}),
        ))
        .await;
    assert!(matches!(r, Err(ProviderError::Transient { .. })), "{r:?}");
    let cloud = SimCloud::open(&tmp.path().join("d")).expect("open");
    assert!(
        cloud.counts().expect("counts").is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn rate_limit_is_transient_with_retry_after() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({"rate_per_s": 2.0}));
    let mut limited = None;
    for _ in 0..5 {
        if let Err(e) = p.read(&read_req("machine", "m-1")).await {
            limited = Some(e);
            break;
        }
    }
    match limited {
        Some(ProviderError::Transient {
            message,
            retry_after: Some(wait),
        }) => {
            assert!(message.starts_with("RequestLimitExceeded: "), "{message}");
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_millis(500),
                "{wait:?}"
            );
            tokio::time::sleep(wait).await;
            p.read(&read_req("machine", "m-1"))
                .await
                .expect("allowed after waiting");
        }
        other => panic!("expected RequestLimitExceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn latency_is_per_call_not_per_object() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({"latency_ms": 100}));
    let reqs: Vec<ReadRequest> = (0..200)
        .map(|i| read_req("machine", &format!("m-{i}")))
        .collect();
    let t = Instant::now();
    let answers = p.read_batch(&reqs).await;
    let took = t.elapsed();
    assert!(answers.iter().all(|a| matches!(a, Ok(None))));
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

#[tokio::test]
async fn data_survives_reopening() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("nested/sim");
    let p = provider(&dir, json!({}));
    assert!(!dir.exists(), "constructing touches no disk");
    let net = network(&p, "main", "10.0.0.0/24", None).await;
    assert!(dir.join("cloud.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir)
            .expect("folder")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    drop(p);

    let p = provider(&dir, json!({}));
    assert_eq!(
        p.read(&read_req("network", &net.id)).await.expect("read"),
        Some(net)
    );
    let next = network(&p, "second", "10.1.0.0/24", None).await;
    assert_eq!(next.id, "net-000002", "the sequence survives too");
}

#[tokio::test]
async fn sim_cloud_finds_duplicates_and_changes_objects() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = provider(tmp.path(), json!({}));
    let a = json!({"name": "main", "cidr": "10.0.0.0/24"});
    let n1 = p
        .create(&create_req("network", "network.main", "op-1", a.clone()))
        .await
        .expect("first");
    let n2 = p
        .create(&create_req("network", "network.main", "op-2", a))
        .await
        .expect("second");
    let cloud = SimCloud::open(tmp.path()).expect("open");
    assert_eq!(
        cloud.duplicates().expect("duplicates"),
        vec![(
            "dev".to_string(),
            "network.main".to_string(),
            vec![n1.id.clone(), n2.id.clone()]
        )]
    );
    let listed: Vec<String> = cloud
        .list(Some("dev"))
        .expect("list")
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(listed, vec!["net-000001", "net-000002"]);
    assert!(cloud.list(Some("prod")).expect("list").is_empty());

    // Drift: change an attribute, then delete an object, out of band.
    assert!(
        cloud
            .set_attr(&n1.id, "dns", json!(["1.1.1.1"]))
            .expect("set")
    );
    let read = p
        .read(&read_req("network", &n1.id))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(read.attrs["dns"], json!(["1.1.1.1"]));
    assert!(cloud.set_attr(&n1.id, "dns", Value::Null).expect("unset"));
    assert!(!cloud.set_attr("net-000404", "dns", json!([])).expect("set"));
    assert!(cloud.delete(&n2.id).expect("delete"));
    assert!(!cloud.delete(&n2.id).expect("delete"));
    assert_eq!(
        p.read(&read_req("network", &n2.id)).await.expect("read"),
        None
    );
    assert_eq!(cloud.counts().expect("counts").get("network"), Some(&1));
    assert!(cloud.duplicates().expect("duplicates").is_empty());

    assert!(matches!(
        SimCloud::open(&tmp.path().join("missing")),
        Err(SimError::NoCloud(_))
    ));
}

#[tokio::test]
async fn from_config_rejects_unknown_keys() {
    let e = SimProvider::from_config(&config(json!({"latency": 5})), Path::new("/"))
        .expect_err("unknown key");
    match e {
        ProviderError::Config(m) => {
            assert!(m.contains("unknown field `latency`"), "{m}");
            assert!(m.contains("latency_ms"), "names the expected keys: {m}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    assert!(matches!(
        SimProvider::from_config(&config(json!({"fail_rate": 2.0})), Path::new("/")),
        Err(ProviderError::Config(_))
    ));
    // A relative dir is relative to the cluster file's folder.
    let p = SimProvider::from_config(
        &config(json!({"dir": "state/sim"})),
        Path::new("/clusters/dev"),
    )
    .expect("valid");
    assert_eq!(p.dir(), Path::new("/clusters/dev/state/sim"));
    assert_eq!(p.name(), "sim");
}

/// The benchmark's shape: 1,000 machines created at once, 200 ms latency per call.
/// Run with `cargo test -p clusterform-provider-sim --release -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "timing; run by hand"]
async fn thousand_concurrent_creates() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = Arc::new(provider(tmp.path(), json!({"latency_ms": 200})));
    let net = network(&p, "main", "10.0.0.0/16", None).await;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let (p, net) = (Arc::clone(&p), net.id.clone());
        set.spawn(async move {
            p.create(&create_req(
                "machine",
                &format!("machine.workers[{i}]"),
                &format!("op-w-{i}"),
                json!({"name": format!("w{i}"), "size": "2cpu-4gb", "network": net,
                       "etcd_endpoints": ["http://10.0.0.10:2379"], "channel": "stable"}),
            ))
            .await
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("created");
    }
    let took = t.elapsed();
    println!("1000 concurrent creates at 200 ms latency: {took:?}");
    let cloud = SimCloud::open(tmp.path()).expect("open");
    assert_eq!(cloud.counts().expect("counts").get("machine"), Some(&1000));
    assert!(took < Duration::from_millis(400), "{took:?}");
}

/// The child half of `survives_kill_9`: creates volumes until killed, printing each id
/// once its create has returned (so once it is committed).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run as a child process by survives_kill_9"]
async fn kill_9_child() {
    let Some(dir) = std::env::var_os("SIM_KILL_CHILD_DIR") else {
        return;
    };
    let p = Arc::new(provider(Path::new(&dir), json!({"latency_ms": 1})));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..100_000 {
        let p = Arc::clone(&p);
        set.spawn(async move {
            let o = p
                .create(&create_req(
                    "volume",
                    &format!("volume.v[{i}]"),
                    &format!("op-{i}"),
                    json!({"name": "v", "size_gb": 1}),
                ))
                .await
                .expect("created");
            println!("ID {}", o.id);
        });
        if set.len() >= 64 {
            set.join_next().await;
        }
    }
}

#[test]
fn survives_kill_9() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["kill_9_child", "--exact", "--ignored", "--nocapture"])
        .env("SIM_KILL_CHILD_DIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child started");
    let stdout = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        if let Some(id) = line.strip_prefix("ID ") {
            seen.push(id.to_string());
            if seen.len() >= 300 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL"); // SIGKILL on unix
    child.wait().expect("reaped");
    assert_eq!(seen.len(), 300, "the child printed ids");

    let cloud = SimCloud::open(tmp.path()).expect("opens after kill -9");
    let ids: std::collections::BTreeSet<String> = cloud
        .list(None)
        .expect("list")
        .into_iter()
        .map(|o| o.id)
        .collect();
    for id in &seen {
        assert!(ids.contains(id), "committed object {id} survived");
    }
    assert!(cloud.duplicates().expect("duplicates").is_empty());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let p = provider(tmp.path(), json!({}));
        let n = network(&p, "after", "10.0.0.0/24", None).await;
        assert_eq!(n.id, "net-000001");
    });
}
