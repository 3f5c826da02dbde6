//! Helpers for the scenarios on real etcd (the sim's live mode): a world whose
//! clusterform runs in a network namespace the test made (the hub), a writer that puts
//! sequenced keys through a worker's etcd proxy the whole time, a monitor that counts
//! the members down, and the checks made after every change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Run, World, bin};

/// Why live scenarios cannot run here (not root, a program missing), if so.
pub fn missing() -> Option<String> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Some("they need root (network namespaces)".to_string());
    }
    for (prog, package) in [
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {prog}")])
            .env("PATH", path_with_sbin())
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{prog}` is missing (apt-get install {package})"));
        }
    }
    None
}

/// PATH with the sbin folders (where `ip` lives) added.
fn path_with_sbin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/sbin:/sbin")
}

/// Skip (return true, with a line saying why) when live scenarios cannot run, unless
/// `CI=true`: then a missing peer is a failure.
pub fn skip() -> bool {
    let Some(why) = missing() else {
        return false;
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "live etcd scenarios cannot run under CI=true: {why}"
    );
    eprintln!("skipping a live etcd scenario: {why}");
    true
}

/// A world whose clusterform runs in a network namespace of its own (the hub, removed
/// by name at the end), on a live sim.
pub struct LiveWorld {
    /// The folder, sim cloud and state.
    pub world: World,
    /// The hub's name.
    pub hub: String,
    /// The cluster's etcd runs TLS: etcdctl gets what `clusterform etcd env` prints.
    tls: std::sync::OnceLock<Vec<(String, String)>>,
}

impl LiveWorld {
    /// A new world with its hub namespace.
    pub fn new(tag: &str) -> LiveWorld {
        let hub = format!("cf-{tag}-{:08x}", rand_u32());
        let ok = Command::new("ip")
            .args(["netns", "add", &hub])
            .env("PATH", path_with_sbin())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {hub}");
        let w = LiveWorld {
            world: World::new(),
            hub,
            tls: std::sync::OnceLock::new(),
        };
        let _ = w.in_hub("ip", &["link", "set", "lo", "up"]).status();
        w
    }

    /// `PROGRAM ARGS` in the hub (its network namespace only).
    pub fn in_hub(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.hub))
            .arg("--")
            .arg(program)
            .args(args)
            .env("PATH", path_with_sbin())
            .stdin(Stdio::null());
        c
    }

    /// A `clusterform` command run in the hub, in the world's folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.in_hub(&bin().display().to_string(), args);
        c.current_dir(self.world.path())
            .env("XDG_CONFIG_HOME", self.world.path().join(".config"))
            .env("CLUSTERFORM_SIM_DIR", self.world.sim_dir())
            .env("NO_COLOR", "1")
            .env_remove("CLUSTERFORM_LOG");
        c
    }

    /// Run `clusterform args...` in the hub to the end.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run clusterform").into()
    }

    /// Run and insist on exit code `code`.
    pub fn run_ok(&self, args: &[&str], code: i32) -> Run {
        self.run(args).expecting(args, code)
    }

    /// `clusterform args...` started in the hub, in a process group of its own (so that
    /// a kill reaches it alone); its output is dropped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        use std::os::unix::process::CommandExt;
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn clusterform")
    }

    /// From now on the cluster's etcd runs TLS: etcdctl uses clusterform's client
    /// certificate (the files and variables `clusterform etcd env` gives), URLs are https.
    pub fn use_tls(&self) {
        let r = self.run_ok(&["etcd", "env", "cluster.toml"], 0);
        let vars: Vec<(String, String)> = r
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .filter(|(k, _)| *k != "ETCDCTL_ENDPOINTS")
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        assert!(
            vars.iter().any(|(k, _)| k == "ETCDCTL_KEY"),
            "etcd env gives a client key: {}",
            r.stdout
        );
        let _ = self.tls.set(vars);
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.get().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The environment etcdctl needs (the client certificate with TLS).
    pub fn etcdctl_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("ETCDCTL_API".to_string(), "3".to_string())];
        env.extend(self.tls.get().cloned().unwrap_or_default());
        env
    }

    /// `etcdctl ARGS` in the hub (ETCDCTL_API=3; with TLS, clusterform's client
    /// certificate), to the end.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        self.in_hub("etcdctl", args)
            .envs(self.etcdctl_env())
            .output()
            .expect("etcdctl runs")
    }

    /// The network namespace of machine `id` (`/proc/PID/ns/net` of its holder).
    pub fn namespace_of(&self, id: &str) -> String {
        let lm = self
            .world
            .cloud()
            .live_machine(id)
            .unwrap_or_else(|| panic!("machine {id} runs live"));
        assert!(!lm.namespace.is_empty(), "{id} has a namespace: {lm:?}");
        lm.namespace
    }

    /// The state's machines of one name (`central`, `workers`): (address, id, attrs).
    pub fn machines(&self, name: &str) -> Vec<(String, String, Value)> {
        let v = self.world.state_json("cluster.toml");
        v["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter(|r| {
                r["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("machine.{name}[")))
            })
            .map(|r| {
                (
                    r["address"].as_str().unwrap_or_default().to_string(),
                    r["id"].as_str().unwrap_or_default().to_string(),
                    r["attrs"].clone(),
                )
            })
            .collect()
    }

    /// The client URLs every central slot can have (10.0.1.101 to .105).
    pub fn slots(&self) -> String {
        (101..=105)
            .map(|i| format!("{}://10.0.1.{i}:2379", self.scheme()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member list as etcdctl reads it: (name, peer URL, learner).
    pub fn members(&self) -> Vec<(String, String, bool)> {
        let out = self.etcdctl(&[
            &format!("--endpoints={}", self.slots()),
            "--dial-timeout=2s",
            "--command-timeout=5s",
            "member",
            "list",
            "-w",
            "json",
        ]);
        assert!(
            out.status.success(),
            "etcdctl member list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("member list JSON");
        let mut out: Vec<(String, String, bool)> = v["members"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["peerURLs"][0].as_str().unwrap_or_default().to_string(),
                    m["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// After a change: the member list equals the central machines in the state (by
    /// name and peer URL), every member is a voter and healthy, the state matches the
    /// sim cloud (no duplicate, no orphan), the journal is empty and a new plan has
    /// nothing to do. Returns a description of what is wrong, if anything.
    pub fn check_converged(&self) -> Result<(), String> {
        let central = self.machines("central");
        let mut want: Vec<(String, String, bool)> = central
            .iter()
            .map(|(_, _, a)| {
                let ip = a["address"].as_str().unwrap_or_default();
                (
                    a["name"].as_str().unwrap_or_default().to_string(),
                    format!("{}://{ip}:2380", self.scheme()),
                    false,
                )
            })
            .collect();
        want.sort();
        let have = self.members();
        if have != want {
            return Err(format!(
                "the member list {have:?} is not the central machines in the state {want:?}"
            ));
        }
        let urls: Vec<String> = central
            .iter()
            .map(|(_, _, a)| {
                format!(
                    "{}://{}:2379",
                    self.scheme(),
                    a["address"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let health = self.etcdctl(&[
            &format!("--endpoints={}", urls.join(",")),
            "--dial-timeout=2s",
            "--command-timeout=5s",
            "endpoint",
            "health",
        ]);
        if !health.status.success() {
            return Err(format!(
                "not every member is healthy: {}{}",
                String::from_utf8_lossy(&health.stdout),
                String::from_utf8_lossy(&health.stderr)
            ));
        }
        let (d, o, m) = self.world.divergence("cluster.toml");
        if d + o + m > 0 {
            return Err(format!(
                "{d} duplicates, {o} orphans, {m} missing: state {:?}, cloud {:?}",
                self.world.state_ids("cluster.toml"),
                self.world.cloud_ids()
            ));
        }
        let v = self.world.state_json("cluster.toml");
        if v["pending"] != serde_json::json!([]) {
            return Err(format!("the journal has open entries: {}", v["pending"]));
        }
        let plan = self.run(&["plan", "cluster.toml", "--detailed-exitcode"]);
        if plan.code != 0 {
            return Err(format!(
                "plan --detailed-exitcode exited {}:\n{}{}",
                plan.code, plan.stdout, plan.stderr
            ));
        }
        Ok(())
    }
}

impl Drop for LiveWorld {
    fn drop(&mut self) {
        // Stop every process the sim cloud started (by pid), then remove the hub: its
        // bridge and veth ends go with it.
        if self.world.sim_dir().exists()
            && let Ok(cloud) = clusterform_provider_sim::SimCloud::open(&self.world.sim_dir())
            && let Err(e) = cloud.stop_live()
        {
            eprintln!("stop_live: {e}");
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .env("PATH", path_with_sbin())
            .status();
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// One write the writer made: its sequence number, whether etcd acknowledged it, when
/// it ended.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    /// Key `w<seq>`.
    pub seq: u64,
    /// Acknowledged.
    pub ok: bool,
    /// When it ended, from the writer's start.
    pub at: Duration,
}

/// Puts `w000001`, `w000002`... through the etcd proxy of a worker (in the worker's
/// network namespace, at 127.0.0.1:2379) one after the other until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Start writing through the proxy in network namespace `namespace`.
    pub fn start(namespace: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut seq = 0u64;
            while !s.load(Ordering::SeqCst) {
                seq += 1;
                let ok = Command::new("nsenter")
                    .arg(format!("--net={namespace}"))
                    .args(["--", "etcdctl", "--endpoints=127.0.0.1:2379"])
                    .args(["--dial-timeout=2s", "--command-timeout=3s", "put"])
                    .arg(format!("w{seq:06}"))
                    .arg(seq.to_string())
                    .env("ETCDCTL_API", "3")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success());
                l.lock().unwrap_or_else(|e| e.into_inner()).push(Write {
                    seq,
                    ok,
                    at: t0.elapsed(),
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Writer {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Stop and return every write made.
    pub fn stop(mut self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the writer saw: writes, failed ones, the longest time between two
/// acknowledged writes.
#[derive(Clone, Debug)]
pub struct WriterSummary {
    /// Writes made.
    pub writes: usize,
    /// Writes not acknowledged.
    pub failed: usize,
    /// The longest time with no acknowledged write.
    pub longest_gap: Duration,
}

impl WriterSummary {
    /// Summarize a writer's log.
    pub fn of(log: &[Write]) -> WriterSummary {
        let mut last_ok: Option<Duration> = None;
        let mut longest_gap = Duration::ZERO;
        for w in log.iter().filter(|w| w.ok) {
            if let Some(prev) = last_ok {
                longest_gap = longest_gap.max(w.at.saturating_sub(prev));
            }
            last_ok = Some(w.at);
        }
        WriterSummary {
            writes: log.len(),
            failed: log.iter().filter(|w| !w.ok).count(),
            longest_gap,
        }
    }

    /// The fraction of writes that failed.
    pub fn failed_fraction(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.failed as f64 / self.writes as f64
        }
    }
}

/// The acknowledged writes of `log` that the cluster does not have (read from the
/// members through the hub).
pub fn lost_writes(w: &LiveWorld, log: &[Write]) -> Vec<u64> {
    let out = w.etcdctl(&[
        &format!("--endpoints={}", w.slots()),
        "--dial-timeout=2s",
        "--command-timeout=10s",
        "get",
        "w",
        "--prefix",
        "--keys-only",
    ]);
    assert!(
        out.status.success(),
        "reading the writes back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let have: BTreeSet<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix('w')?.parse().ok())
        .collect();
    log.iter()
        .filter(|w| w.ok && !have.contains(&w.seq))
        .map(|w| w.seq)
        .collect()
}

/// Counts how many of the `expected` members (at 10.0.1.101 and up) are not up as
/// voting members, about every 300 ms, until stopped; keeps the most at once (a member
/// counts as down when two looks in a row find it so).
pub struct Monitor {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(usize, usize)>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Start watching the `expected` members of `w`'s cluster.
    pub fn start(w: &LiveWorld, expected: usize) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((0usize, 0usize)));
        let (s, wo) = (stop.clone(), worst.clone());
        let hub = w.hub.clone();
        let env = w.etcdctl_env();
        // The members' own client URLs only: a slot with no machine would cost a dial
        // timeout every look.
        let scheme = w.scheme();
        let endpoints: Vec<String> = (0..expected)
            .map(|i| format!("{scheme}://10.0.1.{}:2379", 101 + i))
            .collect();
        let all = endpoints.clone();
        let endpoints = endpoints.join(",");
        let thread = std::thread::spawn(move || {
            // A member is down in a look when it does not answer as a voting member; it
            // counts when it is down in two looks in a row, so that one slow answer on a
            // loaded machine is not taken for a member down.
            let mut previous: BTreeSet<String> = BTreeSet::new();
            while !s.load(Ordering::SeqCst) {
                let out = Command::new("nsenter")
                    .arg(format!("--net=/run/netns/{hub}"))
                    .args(["--", "etcdctl"])
                    .arg(format!("--endpoints={endpoints}"))
                    .args([
                        "--dial-timeout=1s",
                        "--command-timeout=3s",
                        "endpoint",
                        "status",
                        "-w",
                        "json",
                    ])
                    .envs(env.iter().cloned())
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output();
                if let Ok(out) = out {
                    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    let up: BTreeSet<String> = v
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter(|e| !e["Status"]["isLearner"].as_bool().unwrap_or(false))
                        .filter_map(|e| e["Endpoint"].as_str().map(str::to_string))
                        .collect();
                    let down: BTreeSet<String> =
                        all.iter().filter(|e| !up.contains(*e)).cloned().collect();
                    let confirmed = down.intersection(&previous).count();
                    let mut g = wo.lock().unwrap_or_else(|e| e.into_inner());
                    g.0 = g.0.max(confirmed);
                    g.1 += 1;
                    previous = down;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Monitor {
            stop,
            worst,
            thread: Some(thread),
        }
    }

    /// Stop; (the most members down at once, how many looks were taken).
    pub fn stop(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.worst.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A central-services (or large-scale) cluster file on the live sim: `count` central
/// machines at 10.0.1.101 and up over three zones, `workers` workers, etcd over plain
/// HTTP (`etcd_tls = false`; [`live_cluster_tls`] for TLS), the central
/// machines' Butane in `central.bu` (see [`central_butane`]).
pub fn live_cluster(blueprint: &str, count: u32, workers: u32) -> String {
    format!(
        r#"[cluster]
name = "live"
blueprint = "{blueprint}"
provider = "sim"

[provider.sim]
live = true

[network]
cidr = "10.0.0.0/16"
gateway = "10.0.0.1"

[central]
count = {count}
size = "m"
zones = ["zone-a", "zone-b", "zone-c"]
first_address = "10.0.1.101"
butane = ["central.bu"]
etcd_tls = false

[workers]
count = {workers}
size = "s"
zones = ["zone-a", "zone-b", "zone-c"]
"#
    )
}

/// [`live_cluster`] with the members on TLS (`[central] etcd_tls = true`).
pub fn live_cluster_tls(blueprint: &str, count: u32, workers: u32) -> String {
    live_cluster(blueprint, count, workers).replace("etcd_tls = false", "etcd_tls = true")
}

/// The central machines' Butane: a file whose contents are `marker`; a new marker is a
/// config change that replaces every central machine.
pub fn central_butane(marker: &str) -> String {
    format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/roll-marker\n      contents:\n        inline: \"{marker}\"\n"
    )
}

/// The path of the folder of a live world (for messages).
pub fn folder(w: &LiveWorld) -> PathBuf {
    w.world.path().to_path_buf()
}
