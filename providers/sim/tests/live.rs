//! Live mode: machines whose configs run etcd really run it, each in a network namespace
//! of its own. These tests need root, `ip` (iproute2), `etcd` (etcd-server) and
//! `etcdctl` (etcd-client); without them they say what is missing and pass, unless
//! `CI=true`, where that is a failure.
//!
//! Each test re-runs itself under `ip netns exec` in a network namespace it makes
//! (`cf-t-<random>`), so that the bridges it makes never touch the host's network; the
//! child does the work, the parent checks its exit status and deletes, by name, every
//! namespace the test made.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use clusterform_core::Address;
use clusterform_ignition::{EtcdMember, MachineSpec, Platform, StaticNetwork, render, to_json};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderConfig, ProviderError,
    ReadRequest, Reader, UpdateRequest,
};
use clusterform_provider_sim::{LiveMachine, LiveProcess, SimCloud, SimConfig, SimProvider};
use serde_json::{Value, json};

/// Set in the child: the sim folder to use (the child runs inside the test's namespace).
const INSIDE: &str = "CLUSTERFORM_SIM_LIVE_TEST_DIR";

const MEMBERS: [(&str, [u8; 4]); 3] = [
    ("live-central-0", [10, 0, 1, 101]),
    ("live-central-1", [10, 0, 1, 102]),
    ("live-central-2", [10, 0, 1, 103]),
];

fn ipv4(o: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::new(o[0], o[1], o[2], o[3])
}

fn client_url(o: [u8; 4]) -> String {
    format!("http://{}:2379", ipv4(o))
}

// ---------------------------------------------------------------------------------
// Running a test inside a network namespace of its own.

fn find_ip() -> Option<PathBuf> {
    which("ip").or_else(|| {
        ["/usr/sbin/ip", "/sbin/ip"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// What is missing to run the live tests, if anything.
fn missing() -> Option<String> {
    if !is_root() {
        return Some("live sim tests need root (network namespaces, veth pairs)".into());
    }
    if find_ip().is_none() {
        return Some("live sim tests need `ip`: apt-get install iproute2".into());
    }
    if which("etcd").is_none() {
        return Some("live sim tests need `etcd`: apt-get install etcd-server".into());
    }
    if which("etcdctl").is_none() {
        return Some("live sim tests need `etcdctl`: apt-get install etcd-client".into());
    }
    None
}

/// Skip (print why) outside CI; fail under `CI=true`. True when the test must stop.
fn skip_if_missing() -> bool {
    let Some(why) = missing() else {
        return false;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true: a missing peer is a failure)");
    }
    // Past the test harness's capture, so that the line shows in a plain `cargo test`.
    let _ = writeln!(std::io::stderr(), "skipping a live sim test: {why}");
    true
}

fn ip(args: &[&str]) -> Output {
    Command::new(find_ip().expect("ip"))
        .args(args)
        .output()
        .expect("ip runs")
}

/// True while the namespace `/proc/PID/ns/net` is there (its holder runs).
fn namespace_exists(ns: &str) -> bool {
    !ns.is_empty() && std::fs::read_link(ns).is_ok()
}

/// Deletes the test's namespace and stops what the sim folder runs, even on a panic.
struct Cleanup {
    namespace: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(cloud) = SimCloud::open(&self.dir)
            && let Err(e) = cloud.stop_live()
        {
            eprintln!("stop_live: {e}");
        }
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

/// Stops what the sim folder runs when the child's body ends (or panics).
struct StopLive(PathBuf);

impl Drop for StopLive {
    fn drop(&mut self) {
        if let Ok(cloud) = SimCloud::open(&self.0)
            && let Err(e) = cloud.stop_live()
        {
            eprintln!("stop_live: {e}");
        }
    }
}

/// Run `body` (given the sim folder) in a network namespace made for this test: the
/// test binary runs itself again there, with only the test called `name`.
fn isolated<F, Fut>(name: &str, body: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(dir) = std::env::var_os(INSIDE) {
        let dir = PathBuf::from(dir);
        let up = ip(&["link", "set", "lo", "up"]);
        assert!(up.status.success(), "lo up: {up:?}");
        let _stop = StopLive(dir.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(body(dir));
        return;
    }
    if skip_if_missing() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let namespace = format!("cf-t-{:08x}", rand::random::<u32>());
    let _cleanup = Cleanup {
        namespace: namespace.clone(),
        dir: tmp.path().to_path_buf(),
    };
    let add = ip(&["netns", "add", &namespace]);
    assert!(add.status.success(), "ip netns add: {add:?}");
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(find_ip().expect("ip"))
        .args(["netns", "exec", &namespace])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("the test runs in its namespace");
    // Through the harness's capture: shown when the test fails, or with --nocapture.
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the test inside `{namespace}` failed");
}

// ---------------------------------------------------------------------------------
// Provider calls.

fn provider(dir: &Path) -> SimProvider {
    let c: ProviderConfig =
        serde_json::from_value(json!({"dir": dir, "live": true})).expect("a table");
    let p = SimProvider::from_config(&c, Path::new("/nonexistent-base")).expect("live provider");
    assert!(p.runs_machines());
    p
}

fn owner(address: &str, op: &str) -> Ownership {
    Ownership {
        cluster: "dev".into(),
        address: address.parse::<Address>().expect("valid address"),
        op: op.into(),
        expires_at: None,
        created_by: None,
        created_at: None,
    }
}

fn create_req(kind: &str, address: &str, a: Value) -> CreateRequest {
    CreateRequest {
        kind: kind.into(),
        attrs: serde_json::from_value(a).expect("attributes"),
        owner: owner(address, &format!("op-{address}")),
    }
}

async fn network(p: &SimProvider) -> Object {
    p.create(&create_req(
        "network",
        "network.main",
        json!({"name": "main", "cidr": "10.0.0.0/16", "gateway": "10.0.0.1"}),
    ))
    .await
    .expect("network created")
}

fn static_net(o: [u8; 4]) -> StaticNetwork {
    StaticNetwork {
        address: ipv4(o),
        prefix: 16,
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        dns: vec![],
        vlan: None,
    }
}

/// The config of member `i` of `members`, as the blueprint renders it; `listen` is the
/// address it advertises and listens on (normally its own).
fn member_config(members: &[(&str, [u8; 4])], i: usize, listen: [u8; 4]) -> String {
    let (name, own) = members[i];
    to_json(&render(
        &MachineSpec {
            hostname: name.into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec![],
            network: Some(static_net(own)),
            docker_tcp: false,
            etcd: Some(EtcdMember {
                name: name.into(),
                address: ipv4(listen),
                initial_cluster: members
                    .iter()
                    .map(|(n, a)| ((*n).to_string(), ipv4(*a)))
                    .collect(),
                cluster_token: "live".into(),
            }),
            etcd_proxy: None,
            etcd_endpoints: vec![],
            tls: None,
        },
        &[],
    ))
}

/// A worker with a gRPC proxy in front of the members (no static address: the sim
/// assigns one).
fn worker_config(members: &[(&str, [u8; 4])]) -> String {
    to_json(&render(
        &MachineSpec {
            hostname: "live-worker-0".into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec![],
            network: None,
            docker_tcp: false,
            etcd: None,
            etcd_proxy: Some(members.iter().map(|(_, a)| client_url(*a)).collect()),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            tls: None,
        },
        &[],
    ))
}

async fn machine(
    p: &SimProvider,
    net: &str,
    name: &str,
    address: Option<[u8; 4]>,
    user_data: Option<String>,
) -> Result<Object, ProviderError> {
    let mut a = json!({"name": name, "size": "2cpu-4gb", "network": net});
    if let Some(ip) = address {
        a["address"] = json!(ipv4(ip).to_string());
    }
    if let Some(u) = user_data {
        a["user_data"] = json!(u);
    }
    p.create(&create_req("machine", &format!("machine.{name}"), a))
        .await
}

/// A network, three members and a worker with a proxy: (members, worker).
async fn cluster(p: &SimProvider) -> (Vec<Object>, Object) {
    let net = network(p).await;
    let mut members = Vec::new();
    for (i, (name, addr)) in MEMBERS.iter().enumerate() {
        let m = machine(
            p,
            &net.id,
            name,
            Some(*addr),
            Some(member_config(&MEMBERS, i, *addr)),
        )
        .await
        .expect("member created");
        members.push(m);
    }
    let worker = machine(
        p,
        &net.id,
        "live-worker-0",
        None,
        Some(worker_config(&MEMBERS)),
    )
    .await
    .expect("worker created");
    (members, worker)
}

fn delete_req(kind: &str, id: &str) -> DeleteRequest {
    DeleteRequest {
        address: format!("{kind}.x").parse().expect("valid address"),
        kind: kind.into(),
        id: id.into(),
        idempotency_key: "op-del".into(),
        force: false,
    }
}

fn read_req(kind: &str, id: &str) -> ReadRequest {
    ReadRequest {
        address: format!("{kind}.x").parse().expect("valid address"),
        kind: kind.into(),
        id: id.into(),
        prior: Default::default(),
    }
}

// ---------------------------------------------------------------------------------
// Looking at processes and etcd.

/// True while the very process recorded runs (not a zombie, not a later one).
fn alive(pid: u32, started: u64) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(at) = text.rfind(')') else {
        return false;
    };
    let fields: Vec<&str> = text[at + 1..].split_whitespace().collect();
    fields.first() != Some(&"Z") && fields.get(19).and_then(|s| s.parse().ok()) == Some(started)
}

fn proc_alive(p: &LiveProcess) -> bool {
    alive(p.pid, p.started)
}

fn etcdctl(namespace: Option<&str>, endpoints: &str, args: &[&str]) -> Output {
    let mut cmd = match namespace {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={ns}")).args(["--", "etcdctl"]);
            c
        }
        None => Command::new("etcdctl"),
    };
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=1s", "--command-timeout=3s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl runs")
}

/// Wait until `endpoint health` passes on every endpoint; how long it took.
fn wait_healthy(endpoints: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let out = etcdctl(None, endpoints, &["endpoint", "health"]);
        if out.status.success() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "not healthy after {limit:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn all_endpoints() -> String {
    MEMBERS
        .iter()
        .map(|(_, a)| client_url(*a))
        .collect::<Vec<_>>()
        .join(",")
}

/// A network and one live member machine `m0` on it: (network, machine, the cloud,
/// its live parts, its member process).
async fn one_member(
    p: &SimProvider,
    dir: &Path,
) -> (Object, Object, SimCloud, LiveMachine, LiveProcess) {
    let net = network(p).await;
    let one = [MEMBERS[0]];
    let m = machine(
        p,
        &net.id,
        "m0",
        Some(MEMBERS[0].1),
        Some(member_config(&one, 0, MEMBERS[0].1)),
    )
    .await
    .expect("member");
    let c = cloud(dir);
    let lm = c.live_machine(&m.id).expect("live");
    let member = lm.member.clone().expect("member");
    (net, m, c, lm, member)
}

fn cloud(dir: &Path) -> SimCloud {
    SimCloud::open(dir).expect("open the sim cloud")
}

// ---------------------------------------------------------------------------------
// The tests.

#[test]
fn three_members_become_healthy_and_the_proxy_carries_writes() {
    isolated(
        "three_members_become_healthy_and_the_proxy_carries_writes",
        |dir| async move {
            let p = provider(&dir);
            let t0 = Instant::now();
            let (members, worker) = cluster(&p).await;
            let created = t0.elapsed();
            let c = cloud(&dir);

            // A machine that runs neither gets nothing live.
            let net_id = members[0].attrs["network"].as_str().unwrap().to_string();
            let plain = machine(&p, &net_id, "plain", None, None)
                .await
                .expect("plain machine");
            assert_eq!(c.live_machine(&plain.id), None);

            let live = c.live_machines();
            assert_eq!(live.len(), 4, "{live:#?}");
            for (m, (_, addr)) in members.iter().zip(MEMBERS) {
                let lm = c.live_machine(&m.id).expect("a live member");
                assert_eq!(lm.address, format!("{}/16", ipv4(addr)));
                assert!(
                    lm.namespace.starts_with("/proc/") && lm.namespace.ends_with("/ns/net"),
                    "{lm:?}"
                );
                assert!(lm.holder.as_ref().is_some_and(proc_alive), "{lm:?}");
                assert!(lm.veth.len() <= 15, "{lm:?}");
                assert_eq!(lm.data_dir, lm.folder.join("data"));
                let member = lm.member.as_ref().expect("runs a member");
                assert!(member.running && proc_alive(member), "{lm:?}");
                assert!(lm.proxy.is_none());
            }
            let wl = c.live_machine(&worker.id).expect("a live worker");
            assert_eq!(
                wl.address,
                format!("{}/16", worker.attrs["address"].as_str().unwrap())
            );
            assert!(wl.member.is_none());
            let proxy = wl.proxy.as_ref().expect("runs a proxy");
            assert!(proxy.running, "{wl:?}");

            let healthy = wait_healthy(&all_endpoints(), Duration::from_secs(15));
            eprintln!(
                "live: 4 machines created in {created:?}; 3 members healthy {healthy:?} after that"
            );

            // A write through the worker's proxy lands in the cluster.
            let t1 = Instant::now();
            loop {
                let out = etcdctl(Some(&wl.namespace), "127.0.0.1:2379", &["put", "k", "v"]);
                if out.status.success() {
                    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
                    break;
                }
                assert!(
                    t1.elapsed() < Duration::from_secs(10),
                    "put through the proxy: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            let got = etcdctl(
                None,
                &client_url(MEMBERS[2].1),
                &["get", "k", "--print-value-only"],
            );
            assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v", "{got:?}");
            let via_proxy = etcdctl(
                Some(&wl.namespace),
                "127.0.0.1:2379",
                &["get", "k", "--print-value-only"],
            );
            assert_eq!(String::from_utf8_lossy(&via_proxy.stdout).trim(), "v");
            assert!(
                std::fs::metadata(&proxy.log).is_ok(),
                "the proxy's log is there"
            );
        },
    );
}

#[test]
fn processes_outlive_the_provider_and_stop_with_their_machine() {
    isolated(
        "processes_outlive_the_provider_and_stop_with_their_machine",
        |dir| async move {
            let p = provider(&dir);
            let (members, _worker) = cluster(&p).await;
            wait_healthy(&all_endpoints(), Duration::from_secs(15));
            drop(p);
            std::thread::sleep(Duration::from_millis(300));
            let c = cloud(&dir);
            let before: Vec<_> = members
                .iter()
                .map(|m| c.live_machine(&m.id).expect("live member"))
                .collect();
            for lm in &before {
                let member = lm.member.as_ref().expect("member");
                assert!(member.running && proc_alive(member), "{lm:?}");
            }

            let p2 = provider(&dir);
            let gone = &before[1];
            p2.delete(&delete_req("machine", &members[1].id))
                .await
                .expect("deleted");
            let member = gone.member.as_ref().expect("member");
            assert!(!proc_alive(member), "the member still runs");
            assert_eq!(c.live_machine(&members[1].id), None);
            assert!(!gone.folder.exists(), "its live folder is gone");
            assert!(
                !gone.holder.as_ref().is_some_and(proc_alive) && !namespace_exists(&gone.namespace),
                "its namespace is gone"
            );
            assert!(
                !String::from_utf8_lossy(&ip(&["-o", "link", "show"]).stdout).contains(&gone.veth),
                "its veth is gone"
            );
            assert_eq!(c.get(&members[1].id).expect("get"), None);
            // The other two still answer (2 of 3: still a quorum).
            let rest = format!("{},{}", client_url(MEMBERS[0].1), client_url(MEMBERS[2].1));
            wait_healthy(&rest, Duration::from_secs(10));
            for lm in [&before[0], &before[2]] {
                assert!(proc_alive(lm.member.as_ref().expect("member")));
            }
        },
    );
}

#[test]
fn missing_root_or_etcd_is_a_clear_error() {
    let cfg = SimConfig {
        dir: Some(PathBuf::from("/nonexistent-sim")),
        live: true,
        etcd_binary: Some(PathBuf::from("/nonexistent/etcd")),
        ..SimConfig::default()
    };
    let err = SimProvider::new(cfg, Path::new("/")).expect_err("live mode cannot start");
    let ProviderError::Config(m) = err else {
        panic!("a configuration error, not {err:?}");
    };
    if is_root() && find_ip().is_some() {
        assert!(
            m.contains("`/nonexistent/etcd` does not exist") && m.contains("etcd-server"),
            "{m}"
        );
    } else if !is_root() {
        assert!(
            m.contains("needs root") && m.contains("ip netns exec"),
            "{m}"
        );
    }
    // Without live mode nothing of that is needed.
    let plain = SimConfig {
        etcd_binary: Some(PathBuf::from("/nonexistent/etcd")),
        ..SimConfig::default()
    };
    let p = SimProvider::new(plain, Path::new("/")).expect("the plain sim needs nothing");
    assert!(!p.runs_machines());
    assert!(!Reader::runs_machines(&p));
}

#[test]
fn a_member_that_cannot_start_refuses_the_create() {
    isolated(
        "a_member_that_cannot_start_refuses_the_create",
        |dir| async move {
            let p = provider(&dir);
            let net = network(&p).await;
            let one = [MEMBERS[0]];
            let good = machine(
                &p,
                &net.id,
                "good",
                Some(MEMBERS[0].1),
                Some(member_config(&one, 0, MEMBERS[0].1)),
            )
            .await
            .expect("created");
            let c = cloud(&dir);
            let namespace = c.live_machine(&good.id).expect("live").namespace;

            // It would listen on an address that is not its own: etcd exits at once.
            let other = [("live-bad", MEMBERS[1].1)];
            let bad = member_config(&other, 0, [10, 0, 1, 200]);
            let err = machine(&p, &net.id, "bad", Some(MEMBERS[1].1), Some(bad))
                .await
                .expect_err("refused");
            let ProviderError::Permanent(m) = &err else {
                panic!("a permanent error, not {err:?}");
            };
            assert!(
                m.contains("cannot start machine `m-000002` live")
                    && m.contains("exited at once")
                    && m.contains("member.log")
                    && m.contains("10.0.1.200"),
                "{m}"
            );
            assert_eq!(c.counts().expect("counts").get("machine"), Some(&1));
            assert_eq!(c.live_machines().len(), 1);
            assert!(!dir.join("live/m-000002").exists());
            assert!(
                namespace_exists(&namespace),
                "the good machine keeps its namespace"
            );
            assert!(
                !Command::new("pgrep")
                    .args(["-f", "10.0.1.200"])
                    .output()
                    .expect("pgrep")
                    .status
                    .success(),
                "the refused member runs no process"
            );
            // The id is free again.
            let plain = machine(&p, &net.id, "plain", None, None)
                .await
                .expect("created");
            assert_eq!(plain.id, "m-000002");
            wait_healthy(&client_url(MEMBERS[0].1), Duration::from_secs(15));
        },
    );
}

#[test]
fn a_mutation_cleans_up_orphans_and_reads_do_not() {
    isolated(
        "a_mutation_cleans_up_orphans_and_reads_do_not",
        |dir| async move {
            let p = provider(&dir);
            let (net, m, c, lm, member) = one_member(&p, &dir).await;

            // A crash between starting and committing: processes, no row.
            let db = rusqlite::Connection::open(dir.join("cloud.db")).expect("db");
            db.execute("DELETE FROM objects WHERE id = ?1", [&m.id])
                .expect("row deleted");
            // And a folder of this sim folder for an id never created, with a namespace
            // holder that runs.
            std::fs::create_dir_all(dir.join("live/m-000099")).expect("folder");
            let mut sleeper = Command::new("unshare")
                .args(["--net", "--", "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep runs");
            std::thread::sleep(Duration::from_millis(200));
            let sleeper_started = std::fs::read_to_string(format!("/proc/{}/stat", sleeper.id()))
                .ok()
                .and_then(|t| {
                    let at = t.rfind(')')?;
                    t[at + 1..].split_whitespace().nth(19)?.parse::<u64>().ok()
                })
                .expect("sleep's start time");
            std::fs::write(
                dir.join("live/m-000099/netns.pid"),
                format!("{} {sleeper_started}\n", sleeper.id()),
            )
            .expect("pid file");

            // Reads leave all of it alone.
            p.list_cluster("dev").await.expect("list");
            p.read_batch(&[read_req("network", &net.id), read_req("machine", &m.id)])
                .await;
            p.list_owned().await.expect("list owned");
            assert!(proc_alive(&member));
            assert!(alive(sleeper.id(), sleeper_started));
            assert!(namespace_exists(&lm.namespace));

            // Any change cleans up.
            p.create(&create_req(
                "volume",
                "volume.data",
                json!({"name": "data", "size_gb": 1}),
            ))
            .await
            .expect("volume");
            assert!(!proc_alive(&member), "the orphaned member still runs");
            assert!(
                !alive(sleeper.id(), sleeper_started),
                "the stray process still runs"
            );
            // Already reaped by the cleanup (an error then), or a zombie to collect.
            let _ = sleeper.wait();
            assert!(!lm.holder.as_ref().is_some_and(proc_alive));
            assert!(!lm.folder.exists());
            assert!(!dir.join("live/m-000099").exists());
            assert!(c.live_machines().is_empty());
        },
    );
}

#[test]
fn reads_and_updates_never_restart_a_stopped_process() {
    isolated(
        "reads_and_updates_never_restart_a_stopped_process",
        |dir| async move {
            let p = provider(&dir);
            let (_net, m, c, lm, member) = one_member(&p, &dir).await;
            wait_healthy(&client_url(MEMBERS[0].1), Duration::from_secs(15));

            // Killed by hand.
            let pid = rustix::process::Pid::from_raw(i32::try_from(member.pid).unwrap()).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
            let t0 = Instant::now();
            while proc_alive(&member) {
                assert!(t0.elapsed() < Duration::from_secs(5), "still alive");
                std::thread::sleep(Duration::from_millis(20));
            }

            p.read(&read_req("machine", &m.id)).await.expect("read");
            p.read_batch(&[read_req("machine", &m.id)]).await;
            p.list_cluster("dev").await.expect("list");
            p.find_by_key("machine", "op-machine.m0")
                .await
                .expect("find");
            // An in-place change (a resize) changes nothing live either.
            p.update(&UpdateRequest {
                address: "machine.m0".parse().expect("address"),
                kind: "machine".into(),
                id: m.id.clone(),
                attrs: {
                    let mut a = m.attrs.clone();
                    a.insert("size".into(), json!("4cpu-8gb"));
                    a.remove("state");
                    a
                },
                changed: vec!["size".into()],
                idempotency_key: "op-resize".into(),
            })
            .await
            .expect("resized");
            std::thread::sleep(Duration::from_millis(300));

            let after = c.live_machine(&m.id).expect("still live");
            let again = after.member.expect("member");
            assert_eq!(again.pid, member.pid, "not restarted");
            assert!(!again.running);
            let pids = ip(&["netns", "pids", &lm.namespace]);
            assert_eq!(
                String::from_utf8_lossy(&pids.stdout).trim(),
                "",
                "nothing runs in its namespace"
            );
            assert!(
                !etcdctl(None, &client_url(MEMBERS[0].1), &["endpoint", "health"])
                    .status
                    .success()
            );
        },
    );
}
