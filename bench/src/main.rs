//! Scale benchmarks for clusterform, run against the release binary on the sim provider:
//!
//! 1. no-op `plan` of a dev-test cluster with 10,000 workers against a warm state:
//!    wall time and peak memory (target <= 1 s, <= 300 MB on 2 cores);
//!    the same no-op plan with the state in etcd (a one-member etcd on 127.0.0.1, when
//!    `etcd` is on PATH; target within 2x of the local store);
//! 2. `apply` of 1,000 workers at 200 ms sim latency: wall time of the walk against the
//!    critical-path bound (3 operations deep x 200 ms; target ratio <= 1.1);
//! 3. with `--live-roll` (root, etcd, iproute2, util-linux): the wall time of a rolling
//!    replacement of 3 and of 5 etcd members on the sim's live mode (real etcd, one
//!    member at a time, each step gated on the cluster's health).
//!
//! Usage: `cargo run --release -p clusterform-bench [-- --workers 10000 --apply-workers 1000 --runs 5 --live-roll]`.
//! It builds `clusterform` in release mode first and prints one line per measurement.

// wait4() is the one way to get a child's own peak RSS; nothing else here is unsafe.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Measured {
    code: i32,
    wall: Duration,
    max_rss_mb: f64,
    stderr: String,
    /// The last lines of stdout, for the message when a step fails (apply prints a
    /// resource's failure there).
    stdout_tail: String,
}

impl Measured {
    /// What the command said, for a failed step's message.
    fn said(&self) -> String {
        format!(
            "\n--- stdout (last lines) ---\n{}\n--- stderr ---\n{}",
            self.stdout_tail, self.stderr
        )
    }
}

fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

// The child is reaped by wait4 below, which std's Child does not know about.
#[allow(clippy::zombie_processes)]
fn run(bin: &Path, dir: &Path, args: &[&str]) -> Measured {
    let started = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("CLUSTERFORM_SIM_DIR", dir.join("sim"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let pid = child.id() as libc::pid_t;
    let stdout_reader = read_all(child.stdout);
    let stderr_reader = read_all(child.stderr);
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Measured {
        code,
        wall,
        max_rss_mb: usage.ru_maxrss as f64 / 1024.0,
        stderr: stderr_reader.join().unwrap_or_default(),
        stdout_tail: {
            let out = stdout_reader.join().unwrap_or_default();
            let lines: Vec<&str> = out.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        },
    }
}

/// (median, max, peak RSS MB) of `runs` no-op plans in `dir`, after one to warm up.
fn noop_plan(bin: &Path, dir: &Path, runs: u32) -> (f64, f64, f64) {
    let _warm = run(bin, dir, &["plan", "cluster.toml"]);
    let mut walls = Vec::new();
    let mut peak: f64 = 0.0;
    for _ in 0..runs {
        let m = run(bin, dir, &["plan", "cluster.toml", "--detailed-exitcode"]);
        assert_eq!(m.code, 0, "the plan was not a no-op: {}", m.said());
        walls.push(m.wall.as_secs_f64());
        peak = peak.max(m.max_rss_mb);
    }
    walls.sort_by(f64::total_cmp);
    (walls[walls.len() / 2], walls[walls.len() - 1], peak)
}

/// A one-member etcd on 127.0.0.1 for the etcd backend's figure, killed when dropped.
struct Etcd {
    child: std::process::Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let port = |l: std::net::TcpListener| l.local_addr().map(|a| a.port()).ok();
        let client = port(std::net::TcpListener::bind("127.0.0.1:0").ok()?)?;
        let peer = port(std::net::TcpListener::bind("127.0.0.1:0").ok()?)?;
        let dir = tempfile::tempdir().ok()?;
        let url = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let etcd = Etcd {
            child,
            host: format!("127.0.0.1:{client}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&etcd.host).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(workers: u32, latency_ms: u64) -> String {
    format!(
        r#"[cluster]
name = "bench"
blueprint = "dev-test"
provider = "sim"

[provider.sim]
latency_ms = {latency_ms}

[network]
cidr = "10.0.0.0/8"

[central]
size = "2cpu-4gb"

[workers]
count = {workers}
size = "2cpu-4gb"
"#
    )
}

fn build_release() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // The sim provider only: no libvirt to link, and a release build of the EC2
        // provider takes ~13 min.
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "clusterform-cli",
            "--no-default-features",
        ])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "release build failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("release")
        .join("clusterform")
}

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The walk time the CLI logs at -v: "walk finished in 0.612s".
fn walk_secs(stderr: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.split("walk finished in ").nth(1)?;
        rest.split('s').next()?.trim().parse().ok()
    })
}

/// A central-services cluster of `count` etcd members and one worker on the live sim,
/// the members' Butane in `central.bu`.
fn live_cluster(count: u32) -> String {
    format!(
        r#"[cluster]
name = "roll"
blueprint = "central-services"
provider = "sim"

[provider.sim]
live = true

[network]
cidr = "10.0.0.0/16"
gateway = "10.0.0.1"

[central]
count = {count}
size = "m"
zones = ["a", "b", "c"]
first_address = "10.0.1.101"
butane = ["central.bu"]

[workers]
count = 1
size = "s"
"#
    )
}

fn marker(m: u32) -> String {
    format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/roll-marker\n      contents:\n        inline: \"{m}\"\n"
    )
}

/// The third measurement: rolling replacements of 3 and 5 members on real etcd, with
/// clusterform in a network namespace made for the run (removed at the end).
fn live_roll(bin: &Path) {
    let hub = format!("cf-bench-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &hub])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("rolling replacement on real etcd: skipped (needs root and iproute2)");
        return;
    }
    // Removes the namespace by name however this function ends (a failed step panics).
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _netns = Netns(hub.clone());
    let nsenter = PathBuf::from("nsenter");
    let net = format!("--net=/run/netns/{hub}");
    let bin_text = bin.display().to_string();
    for count in [3u32, 5] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("central.bu"), marker(1)).expect("write");
        std::fs::write(dir.path().join("cluster.toml"), live_cluster(count)).expect("write");
        let cf = |args: &[&str]| {
            let mut all = vec![net.as_str(), "--", bin_text.as_str()];
            all.extend_from_slice(args);
            run(&nsenter, dir.path(), &all)
        };
        let setup = cf(&["apply", "cluster.toml", "--auto-approve"]);
        assert_eq!(setup.code, 0, "setup apply failed: {}", setup.said());
        std::fs::write(dir.path().join("central.bu"), marker(2)).expect("write");
        let mut m = cf(&["apply", "cluster.toml", "--auto-approve"]);
        let mut note = "";
        if m.code != 0 {
            // This is a timing figure; whether a roll keeps etcd whole is the tests' job
            // (live_etcd_*). A failed roll is shown in full, and must finish on a rerun,
            // as the product promises; the figure is then marked.
            println!(
                "WARNING: the rolling replacement of {count} members failed (exit {}); running apply again:{}",
                m.code,
                m.said()
            );
            m = cf(&["apply", "cluster.toml", "--auto-approve"]);
            note = " (second attempt: the first failed, see above)";
        }
        let destroy = cf(&["destroy", "cluster.toml", "--auto-approve"]);
        assert_eq!(
            m.code,
            0,
            "the rolling replacement failed twice: {}",
            m.said()
        );
        assert_eq!(destroy.code, 0, "destroy failed: {}", destroy.said());
        println!(
            "rolling replacement of {count} etcd members on the live sim: {:.1}s ({:.1}s a member){note}",
            m.wall.as_secs_f64(),
            m.wall.as_secs_f64() / f64::from(count)
        );
    }
}

fn main() {
    let workers = arg("--workers", 10_000);
    let apply_workers = arg("--apply-workers", 1_000);
    let runs = arg("--runs", 5).max(1);
    let bin = build_release();
    println!(
        "clusterform bench: {} ({} cores)",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. No-op plan at scale.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.toml"), cluster(workers, 0)).expect("write");
    let setup = run(
        &bin,
        dir.path(),
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "1024",
        ],
    );
    assert_eq!(setup.code, 0, "setup apply failed: {}", setup.said());
    println!(
        "setup: apply of {} resources took {:.2}s",
        workers + 2,
        setup.wall.as_secs_f64()
    );
    let local = noop_plan(&bin, dir.path(), runs);
    println!(
        "no-op plan, {} workers: median {:.3}s, max {:.3}s over {runs} runs; peak RSS {:.0} MB (targets: <= 1 s, <= 300 MB) {}",
        workers,
        local.0,
        local.1,
        local.2,
        if local.0 <= 1.0 && local.2 <= 300.0 {
            "OK"
        } else {
            "MISSED"
        }
    );

    // 1b. The same no-op plan with the state in etcd (moved there by `state migrate`).
    match Etcd::start() {
        None => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: the etcd backend's figure needs `etcd` (apt-get install etcd-server)"
            );
            println!("no-op plan on the etcd state backend: skipped (no `etcd` on PATH)");
        }
        Some(etcd) => {
            let to = format!("etcd://{}/clusterform/bench", etcd.host);
            let m = run(
                &bin,
                dir.path(),
                &["state", "migrate", "cluster.toml", "--to", &to],
            );
            assert_eq!(m.code, 0, "state migrate to etcd failed: {}", m.said());
            println!(
                "setup: state migrate of {} records to etcd took {:.2}s",
                workers + 2,
                m.wall.as_secs_f64()
            );
            let on_etcd = noop_plan(&bin, dir.path(), runs);
            println!(
                "no-op plan, {} workers, state in etcd: median {:.3}s, max {:.3}s over {runs} runs; peak RSS {:.0} MB; {:.2}x the local store (target: <= 2x) {}",
                workers,
                on_etcd.0,
                on_etcd.1,
                on_etcd.2,
                on_etcd.0 / local.0,
                if on_etcd.0 <= 2.0 * local.0 {
                    "OK"
                } else {
                    "MISSED"
                }
            );
        }
    }

    // 2. Apply against the critical-path bound.
    let latency_ms = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cluster.toml"),
        cluster(apply_workers, latency_ms),
    )
    .expect("write");
    let par = (apply_workers + 2).to_string();
    let m = run(
        &bin,
        dir.path(),
        &[
            "-v",
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            &par,
        ],
    );
    assert_eq!(m.code, 0, "apply failed: {}", m.said());
    // network -> etcd machine -> workers: 3 operations deep.
    let bound = 3.0 * latency_ms as f64 / 1000.0;
    let walk = walk_secs(&m.stderr).unwrap_or(f64::NAN);
    println!(
        "apply, {} workers at {latency_ms} ms latency: walk {:.3}s, whole command {:.3}s; critical-path bound {:.3}s; ratio {:.3} (walk) / {:.3} (command) (target <= 1.1) {}",
        apply_workers,
        walk,
        m.wall.as_secs_f64(),
        bound,
        walk / bound,
        m.wall.as_secs_f64() / bound,
        if walk / bound <= 1.1 { "OK" } else { "MISSED" }
    );

    // 3. Rolling replacements on real etcd.
    if std::env::args().any(|a| a == "--live-roll") {
        live_roll(&bin);
    }
}
