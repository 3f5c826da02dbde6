//! The `clusterform` binary with its state in a real etcd (Debian's `etcd-server`, on
//! 127.0.0.1): apply/plan/destroy, two applies at once, `kill -9` of the lock holder,
//! a three-member etcd with members down, `state migrate` both ways, and no secret in
//! etcd in plain text.

use std::process::Stdio;
use std::time::{Duration, Instant};

use clusterform_etcd::{KvClient, KvConfig};
use clusterform_state::{LocalStore, StateStore};
use clusterform_tests::etcd_server::EtcdCluster;
use clusterform_tests::{World, dev_test};

/// A dev-test cluster file whose state is in etcd at `endpoints`.
fn on_etcd(name: &str, workers: u32, sim: &str, endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "{}\n[state]\nbackend = \"etcd\"\nendpoints = [{}]\n{extra}\n",
        dev_test(name, workers, "s", sim),
        list.join(", ")
    )
}

fn raw(endpoints: Vec<String>) -> KvClient {
    KvClient::new(KvConfig {
        endpoints,
        ..KvConfig::default()
    })
    .expect("kv client")
}

/// The holder recorded in etcd's lock key of `prefix`, once there is one (30 s).
fn wait_for_lock(kv: &KvClient, prefix: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = kv.range(format!("{prefix}/lock").as_bytes(), None, 0, 0)
            && let Some(k) = r.kvs.first()
        {
            return serde_json::from_slice(&k.value).expect("lock JSON");
        }
        assert!(Instant::now() < deadline, "no run took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn apply_plan_and_destroy_with_the_state_in_etcd_and_no_secret_in_plain_text() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let w = World::new();
    w.write(
        "cluster.toml",
        &on_etcd("team", 2, "", &etcd.endpoints(), ""),
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("4 added"), "{}", r.stdout);
    assert!(
        !w.path().join(".clusterform").exists(),
        "no local state folder with an etcd backend"
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.assert_state_matches_cloud("cluster.toml");
    let list = w.run_ok(&["state", "list", "cluster.toml"], 0);
    assert_eq!(list.stdout.lines().count(), 4, "{}", list.stdout);

    // Everything is under the default prefix, and no private key is in plain text.
    let all = raw(etcd.endpoints())
        .range_prefix(b"/", 0, 1000)
        .expect("range");
    assert!(!all.kvs.is_empty());
    for kv in &all.kvs {
        let key = String::from_utf8_lossy(&kv.key);
        assert!(key.starts_with("/clusterform/team/"), "{key}");
        let value = String::from_utf8_lossy(&kv.value);
        assert!(
            !value.contains("PRIVATE KEY"),
            "{key} holds a key in plain text"
        );
    }

    // Drift reads without the lock: with another run holding it, drift still works.
    let kv = raw(etcd.endpoints());
    let lease = kv.lease_grant(Duration::from_secs(30)).expect("lease");
    kv.txn(
        &[],
        &[clusterform_etcd::Op::Put {
            key: b"/clusterform/team/lock".to_vec(),
            value: br#"{"id":"x","operation":"apply","user":"u","host":"h","pid":1,"started_at":"","expires_at":""}"#.to_vec(),
            lease,
        }],
        &[],
    )
    .expect("hold the lock");
    w.run_ok(&["drift", "cluster.toml"], 0);
    kv.lease_revoke(lease).expect("revoke");

    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("4 destroyed"), "{}", r.stdout);
    assert!(w.objects().is_empty());
}

#[test]
fn two_applies_at_once_one_fails_naming_the_holder_and_one_waits() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let w = World::new();
    w.write(
        "cluster.toml",
        &on_etcd("race", 2, "latency_ms = 500", &etcd.endpoints(), ""),
    );
    let first = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let holder = wait_for_lock(&raw(etcd.endpoints()), "/clusterform/race");
    assert_eq!(holder["pid"].as_u64(), Some(u64::from(first.id())));

    let second = w.run(&["apply", "cluster.toml", "--auto-approve"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(second.stderr.contains("is locked"), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("(pid {})", first.id())),
        "names the holder: {}",
        second.stderr
    );
    assert!(second.stderr.contains("lease"), "{}", second.stderr);

    // A third one waits for the lock and then has nothing to do.
    let third = w.run(&[
        "plan",
        "cluster.toml",
        "--lock-timeout",
        "60s",
        "--detailed-exitcode",
    ]);
    let out = first.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(third.code, 0, "{third:?}");
    w.assert_state_matches_cloud("cluster.toml");
}

#[test]
fn kill_9_of_the_lock_holder_frees_the_lock_within_its_ttl_and_leaves_no_duplicate() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let w = World::new();
    w.write(
        "cluster.toml",
        &on_etcd(
            "crash",
            6,
            "latency_ms = 400",
            &etcd.endpoints(),
            "lock_ttl = \"4s\"",
        ),
    );
    let mut first = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_lock(&raw(etcd.endpoints()), "/clusterform/crash");
    // Killed in the middle: some machines made, some being made.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.objects().len() < 3 {
        assert!(Instant::now() < deadline, "the apply made nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().expect("kill -9");
    let _ = first.wait();
    let killed_at = Instant::now();

    let again = w.run(&[
        "apply",
        "cluster.toml",
        "--auto-approve",
        "--lock-timeout",
        "30s",
    ]);
    assert_eq!(again.code, 0, "{again:?}");
    let waited = killed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "the lease outlived its holder for a while (the rest of its 4 s), took {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(25),
        "the lock of a dead holder ends with its 4 s lease (took {waited:?})"
    );
    assert_eq!(
        w.divergence("cluster.toml"),
        (0, 0, 0),
        "no duplicate, no orphan"
    );
    w.assert_state_matches_cloud("cluster.toml");
    assert_eq!(w.objects().len(), 8);
}

#[test]
fn three_etcd_members_apply_with_one_down_and_fail_cleanly_with_two_down() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let endpoints = etcd.endpoints();
    let w = World::new();
    w.write(
        "cluster.toml",
        &on_etcd("three", 1, "", &endpoints, "lock_ttl = \"5s\""),
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);

    etcd.stop_member(0);
    w.write(
        "cluster.toml",
        &on_etcd("three", 3, "", &endpoints, "lock_ttl = \"5s\""),
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("2 added"), "{}", r.stdout);

    // The member comes back; read through it alone: nothing is missing.
    etcd.start_member(0);
    etcd.wait_ready();
    let only_first = format!(
        "etcd://{}/clusterform/three",
        endpoints[0].trim_start_matches("http://")
    );
    let list = w.run_ok(
        &["--state", &only_first, "state", "list", "cluster.toml"],
        0,
    );
    assert_eq!(list.stdout.lines().count(), 5, "{}", list.stdout);
    w.assert_state_matches_cloud("cluster.toml");

    // Two down: no quorum. The apply fails before it changes anything.
    etcd.stop_member(1);
    etcd.stop_member(2);
    let before = w.cloud_ids();
    w.write(
        "cluster.toml",
        &on_etcd("three", 5, "", &endpoints, "lock_ttl = \"5s\""),
    );
    let r = w.run(&["apply", "cluster.toml", "--auto-approve"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("etcd"), "{}", r.stderr);
    assert_eq!(w.cloud_ids(), before, "nothing was made without the state");

    etcd.start_member(1);
    etcd.wait_ready();
    w.write(
        "cluster.toml",
        &on_etcd("three", 3, "", &endpoints, "lock_ttl = \"5s\""),
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}

#[test]
fn migrate_local_to_etcd_and_back_round_trips_every_record_byte_for_byte() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let w = World::new();
    w.write("cluster.toml", &dev_test("moving", 3, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let original = LocalStore::new(w.path().join(".clusterform"))
        .export()
        .expect("export");
    assert!(
        !original.snapshot.secrets.is_empty(),
        "the CA is in the state"
    );

    let to = format!(
        "etcd://{}/teams/moving",
        etcd.endpoints()[0].trim_start_matches("http://")
    );
    let r = w.run_ok(&["state", "migrate", "cluster.toml", "--to", &to], 0);
    assert!(r.stdout.contains("read back: identical"), "{}", r.stdout);
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    assert!(text.contains("backend = \"etcd\""), "{text}");
    assert!(text.contains("prefix = \"/teams/moving\""), "{text}");
    // The source is untouched, and the cluster now plans against etcd.
    assert_eq!(
        LocalStore::new(w.path().join(".clusterform"))
            .export()
            .expect("export"),
        original
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    // Migrating into a prefix that has a state is refused; the file stays.
    let again = w.run(&["state", "migrate", "cluster.toml", "--to", &to]);
    assert_eq!(again.code, 1, "{again:?}");

    w.run_ok(&["state", "migrate", "cluster.toml", "--to", "back"], 0);
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    assert!(
        text.contains("path = \"back\"") && !text.contains("etcd"),
        "{text}"
    );
    let returned = LocalStore::new(w.path().join("back"))
        .export()
        .expect("export");
    assert_eq!(returned, original, "every record, secret and history row");
    for (a, r) in &original.snapshot.resources {
        assert_eq!(
            serde_json::to_vec(&returned.snapshot.resources[a]).expect("json"),
            serde_json::to_vec(r).expect("json")
        );
    }
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}

#[test]
fn an_etcd_state_with_tls_client_certificates_and_a_password() {
    use clusterform_pki::{Ca, DEFAULT_VALIDITY};
    let Some(program) = clusterform_tests::etcd_server::etcd_program() else {
        return;
    };
    let w = World::new();
    let d = w.path();
    let ca = Ca::generate("state", DEFAULT_VALIDITY).expect("CA");
    let member = ca
        .member(
            "state-etcd",
            &["127.0.0.1".parse().expect("ip")],
            DEFAULT_VALIDITY,
        )
        .expect("member");
    let client = ca.client("clusterform", DEFAULT_VALIDITY).expect("client");
    w.write("certs/ca.pem", ca.cert_pem());
    w.write("certs/member.pem", &member.cert_pem);
    w.write("certs/member-key.pem", member.key_pem.expose());
    w.write("certs/client.pem", &client.cert_pem);
    w.write("certs/client-key.pem", client.key_pem.expose());
    let port = |l: std::net::TcpListener| l.local_addr().expect("addr").port();
    let cp = port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let pp = port(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let url = format!("https://127.0.0.1:{cp}");
    let peer = format!("https://127.0.0.1:{pp}");
    let c = |f: &str| d.join("certs").join(f).display().to_string();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _etcd = Kill(
        std::process::Command::new(program)
            .arg("--name=state-etcd")
            .arg(format!("--data-dir={}", d.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=state-etcd={peer}"))
            .args(clusterform_pki::etcd_member_tls_flags(
                &c("member.pem"),
                &c("member-key.pem"),
                &c("ca.pem"),
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log")).expect("log"))
            .spawn()
            .expect("start etcd"),
    );
    let etcdctl = |args: &[&str]| {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                format!("--endpoints={url}"),
                format!("--cacert={}", c("ca.pem")),
                format!("--cert={}", c("client.pem")),
                format!("--key={}", c("client-key.pem")),
            ])
            .args(args)
            .output()
            .expect("etcdctl")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(&["endpoint", "health"]).status.success() {
        assert!(Instant::now() < deadline, "the TLS etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A user that may read and write the state's prefix only, then auth on.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "team:teampw"],
        &["role", "add", "state"],
        &[
            "role",
            "grant-permission",
            "state",
            "--prefix=true",
            "readwrite",
            "/clusterform/",
        ],
        &["user", "grant-role", "team", "state"],
        &["auth", "enable"],
    ] {
        let o = etcdctl(args);
        assert!(
            o.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    w.write(
        "cluster.toml",
        &format!(
            "{}\n[state]\nbackend = \"etcd\"\nendpoints = [\"{url}\"]\nca_file = \"certs/ca.pem\"\ncert_file = \"certs/client.pem\"\nkey_file = \"certs/client-key.pem\"\n",
            dev_test("secure", 1, "s", "")
        ),
    );
    // No password: refused, and the message says where the credentials come from.
    let r = w.run(&["plan", "cluster.toml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("CLUSTERFORM_ETCD_USER"), "{}", r.stderr);
    // A wrong password: refused too.
    let r = w
        .command(&["plan", "cluster.toml"])
        .env("CLUSTERFORM_ETCD_USER", "team")
        .env("CLUSTERFORM_ETCD_PASSWORD", "wrong")
        .output()
        .expect("run");
    assert_eq!(r.status.code(), Some(1));

    let run = |args: &[&str]| {
        let o = w
            .command(args)
            .env("CLUSTERFORM_ETCD_USER", "team")
            .env("CLUSTERFORM_ETCD_PASSWORD", "teampw")
            .output()
            .expect("run");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = run(&["apply", "cluster.toml", "--auto-approve"]);
    assert!(out.contains("3 added"), "{out}");
    run(&["plan", "cluster.toml", "--detailed-exitcode"]);
    // The keys are there, read as root; the password is nowhere in them.
    let o = etcdctl(&[
        "--user",
        "root:rootpw",
        "get",
        "--prefix",
        "/clusterform/secure/",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("/clusterform/secure/meta"), "{text}");
    assert!(!text.contains("teampw") && !text.contains("PRIVATE KEY"));
}
