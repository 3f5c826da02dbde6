//! Day 2 on real etcd: the sim's live mode runs each central machine's etcd member and
//! each worker's gRPC proxy from their rendered configs (Debian's etcd, in network
//! namespaces), clusterform runs in a namespace the test made (the hub), and a writer
//! puts sequenced keys through a worker's proxy the whole time. Grow, roll, shrink and
//! replace one member, `kill -9` clusterform at random moments of rolling
//! replacements, and roll a large-scale cluster over three zones: after each, the
//! member list equals the central machines in the state, every member is healthy,
//! every acknowledged write is readable and no worker was replaced.
//!
//! They need root, etcd, etcdctl, iproute2 and util-linux: without them they skip with
//! a line saying what to install, unless `CI=true`. `scripts/test` runs them in a stage
//! of their own, one at a time (`live_etcd_` prefix).

use std::time::{Duration, Instant};

use clusterform_tests::TestRng;
use clusterform_tests::live::{
    LiveWorld, Monitor, Writer, WriterSummary, central_butane, live_cluster, live_cluster_tls,
    lost_writes, skip,
};

/// The ids of the worker machines, which no day-2 change of the members may touch.
fn worker_ids(w: &LiveWorld) -> Vec<(String, String)> {
    w.machines("workers")
        .into_iter()
        .map(|(a, id, _)| (a, id))
        .collect()
}

/// Apply `file`'s current content with `extra` flags; the output.
fn apply(w: &LiveWorld, extra: &[&str]) -> String {
    let mut args = vec!["apply", "cluster.toml", "--auto-approve"];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let r = w.run_ok(&args, 0);
    eprintln!("  apply {extra:?}: {:.1}s", t.elapsed().as_secs_f64());
    r.stdout
}

fn converged(w: &LiveWorld, what: &str) {
    if let Err(e) = w.check_converged() {
        panic!("after {what}: {e}");
    }
}

#[test]
fn live_etcd_grow_roll_shrink_and_replace_keep_every_write() {
    if skip() {
        return;
    }
    grow_roll_shrink_replace(false);
}

/// The same day-2 changes with the members on TLS with client-certificate auth (every
/// membership call with clusterform's client certificate, the writer through a worker's
/// proxy that presents its own); first, what the members refuse.
#[test]
fn live_etcd_tls_grow_roll_shrink_and_replace_keep_every_write() {
    if skip() {
        return;
    }
    grow_roll_shrink_replace(true);
}

/// etcdctl from the hub to the first member with `env` only (no clusterform client
/// certificate): whether `endpoint health` succeeds.
fn reaches_with(w: &LiveWorld, url: &str, env: &[(&str, String)]) -> bool {
    w.in_hub(
        "etcdctl",
        &[
            &format!("--endpoints={url}"),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "endpoint",
            "health",
        ],
    )
    .env("ETCDCTL_API", "3")
    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
    .output()
    .expect("etcdctl")
    .status
    .success()
}

/// What a TLS member refuses: plain HTTP, a client without a certificate, a
/// certificate of another CA; and what it takes: clusterform's own certificate.
fn refusals(w: &LiveWorld) {
    let dir = w.world.path().join("other-ca");
    std::fs::create_dir_all(&dir).expect("dir");
    let ca =
        clusterform_pki::Ca::generate("intruder", clusterform_pki::DEFAULT_VALIDITY).expect("CA");
    let c = ca
        .client("intruder", clusterform_pki::DEFAULT_VALIDITY)
        .expect("client");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let other = [
        ("ETCDCTL_CACERT", file("ca.crt", ca.cert_pem())),
        ("ETCDCTL_CERT", file("c.crt", &c.cert_pem)),
        ("ETCDCTL_KEY", file("c.key", c.key_pem.expose())),
    ];
    let ours: Vec<(&str, String)> = w
        .etcdctl_env()
        .into_iter()
        .filter_map(|(k, v)| {
            let k: &'static str = match k.as_str() {
                "ETCDCTL_CACERT" => "ETCDCTL_CACERT",
                "ETCDCTL_CERT" => "ETCDCTL_CERT",
                "ETCDCTL_KEY" => "ETCDCTL_KEY",
                _ => return None,
            };
            Some((k, v))
        })
        .collect();
    let https = "https://10.0.1.101:2379";
    assert!(
        reaches_with(w, https, &ours),
        "clusterform's certificate is taken"
    );
    assert!(
        !reaches_with(w, "http://10.0.1.101:2379", &[]),
        "plain HTTP is refused"
    );
    let ca_only: Vec<(&str, String)> = ours
        .iter()
        .filter(|(k, _)| *k == "ETCDCTL_CACERT")
        .cloned()
        .collect();
    assert!(
        !reaches_with(w, https, &ca_only),
        "a client without a certificate is refused"
    );
    let mut theirs: Vec<(&str, String)> = other.to_vec();
    // Trusting the members (our CA) but presenting the other CA's certificate.
    theirs[0] = ca_only[0].clone();
    assert!(
        !reaches_with(w, https, &theirs),
        "another CA's certificate is refused"
    );
    let r = w.run(&["etcd", "status", "cluster.toml"]);
    assert_eq!(r.code, 0, "etcd status over TLS: {}{}", r.stdout, r.stderr);
}

fn grow_roll_shrink_replace(tls: bool) {
    let cluster = |count: u32| {
        if tls {
            live_cluster_tls("central-services", count, 2)
        } else {
            live_cluster("central-services", count, 2)
        }
    };
    let w = LiveWorld::new(if tls { "tls" } else { "grow" });
    w.world.write("central.bu", &central_butane("1"));
    w.world.write("cluster.toml", &cluster(3));
    apply(&w, &[]);
    if tls {
        w.use_tls();
        refusals(&w);
    }
    converged(&w, "the first apply");
    let workers = worker_ids(&w);
    let writer = Writer::start(w.namespace_of(&workers[0].1));
    std::thread::sleep(Duration::from_secs(1));

    // Grow 3 -> 5: two joins, one at a time; nothing else changes.
    w.world.write("cluster.toml", &cluster(5));
    let out = apply(&w, &[]);
    assert!(
        out.contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{out}"
    );
    assert!(out.contains("machine.central[4]: Joined etcd"), "{out}");
    converged(&w, "growing to 5");
    assert_eq!(worker_ids(&w), workers, "growing replaced a worker");

    // Rolling replacement of all 5 (a Butane change).
    w.world.write("central.bu", &central_butane("2"));
    let out = apply(&w, &[]);
    assert!(
        out.contains("Plan: 5 to add, 0 to change, 5 to destroy."),
        "{out}"
    );
    assert!(
        out.contains("machine.central[1] must be replaced (rolling 2 of 5; etcd keeps 4 of 5 members; because user data changed)"),
        "{out}"
    );
    converged(&w, "the rolling replacement");
    assert_eq!(worker_ids(&w), workers, "rolling replaced a worker");

    // Shrink 5 -> 3.
    w.world.write("cluster.toml", &cluster(3));
    let out = apply(&w, &[]);
    assert!(
        out.contains("Plan: 0 to add, 0 to change, 2 to destroy."),
        "{out}"
    );
    assert!(
        out.contains("machine.central[4] leaves: 5 -> 4 members"),
        "{out}"
    );
    converged(&w, "shrinking to 3");
    assert_eq!(worker_ids(&w), workers, "shrinking replaced a worker");

    // Replace one member on purpose.
    let before: Vec<String> = w
        .machines("central")
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    let out = apply(&w, &["--replace", "machine.central[1]"]);
    assert!(out.contains("requested with --replace"), "{out}");
    converged(&w, "apply --replace machine.central[1]");
    let after: Vec<String> = w
        .machines("central")
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(
        (before[0].clone(), before[2].clone()),
        (after[0].clone(), after[2].clone())
    );
    assert_ne!(before[1], after[1], "central[1] is a new machine");
    assert_eq!(
        worker_ids(&w),
        workers,
        "replacing a member replaced a worker"
    );

    let log = writer.stop();
    let s = WriterSummary::of(&log);
    let lost = lost_writes(&w, &log);
    println!(
        "live etcd, grow/roll/shrink/replace: {} writes through a worker's proxy, {} failed ({:.2}%), longest gap {:.2}s, {} acknowledged writes lost",
        s.writes,
        s.failed,
        s.failed_fraction() * 100.0,
        s.longest_gap.as_secs_f64(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(s.writes > 50, "the writer ran: {s:?}");
    assert!(
        s.failed_fraction() < 0.05,
        "the proxies failed too many writes: {s:?}"
    );
    assert!(
        s.longest_gap < Duration::from_secs(15),
        "the proxies stopped answering for {:?}",
        s.longest_gap
    );
}

#[test]
fn live_etcd_kill_9_during_rolling_replacements_then_apply() {
    if skip() {
        return;
    }
    const KILLS: usize = 10;
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00E7_CD00);
    let mut rng = TestRng::new(seed);
    let w = LiveWorld::new("kill");
    w.world.write("central.bu", &central_butane("0"));
    w.world
        .write("cluster.toml", &live_cluster("central-services", 3, 1));
    apply(&w, &[]);
    let workers = worker_ids(&w);
    let writer = Writer::start(w.namespace_of(&workers[0].1));
    let monitor = Monitor::start(&w, 3);

    // One uninterrupted rolling replacement: how long the kill window is.
    w.world.write("central.bu", &central_butane("1"));
    let t = Instant::now();
    apply(&w, &[]);
    let window = t.elapsed();
    converged(&w, "an uninterrupted rolling replacement");

    let mut kills = 0;
    let mut round = 1;
    let mut problems = Vec::new();
    while kills < KILLS && round < 3 * KILLS {
        round += 1;
        w.world
            .write("central.bu", &central_butane(&round.to_string()));
        let mut child = w.spawn(&["apply", "cluster.toml", "--auto-approve"]);
        let at = Duration::from_millis(rng.below(window.as_millis() as u64 + 1));
        std::thread::sleep(at);
        let killed = child.try_wait().expect("try_wait").is_none();
        if killed {
            child.kill().expect("kill -9");
            kills += 1;
        }
        let _ = child.wait();
        let r = w.run(&["apply", "cluster.toml", "--auto-approve"]);
        let ctx = format!("round {round} (kill at {at:?}, killed {killed})");
        if r.code != 0 {
            problems.push(format!(
                "{ctx}: the apply after it exited {}\n{}\n{}",
                r.code, r.stdout, r.stderr
            ));
            break;
        }
        if let Err(e) = w.check_converged() {
            problems.push(format!("{ctx}: {e}\n{}", r.stdout));
            break;
        }
        if worker_ids(&w) != workers {
            problems.push(format!("{ctx}: a worker was replaced"));
        }
    }
    let (most_down, looks) = monitor.stop();
    let log = writer.stop();
    let s = WriterSummary::of(&log);
    let lost = lost_writes(&w, &log);
    println!(
        "live etcd crash harness: {kills} kills in {round} rounds (seed {seed}, window {:.1}s), at most {most_down} of 3 members down at once ({looks} looks), {} writes, {} failed ({:.2}%), longest gap {:.2}s, {} acknowledged writes lost",
        window.as_secs_f64(),
        s.writes,
        s.failed,
        s.failed_fraction() * 100.0,
        s.longest_gap.as_secs_f64(),
        lost.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n---\n"));
    assert!(kills >= KILLS, "only {kills} kills landed");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        most_down <= 1,
        "{most_down} members were down at once: the quorum was at risk"
    );
}

#[test]
fn live_etcd_large_scale_rolls_one_member_at_a_time() {
    if skip() {
        return;
    }
    let w = LiveWorld::new("large");
    w.world.write("central.bu", &central_butane("1"));
    w.world
        .write("cluster.toml", &live_cluster("large-scale", 5, 2));
    apply(&w, &[]);
    converged(&w, "the first apply");
    let workers = worker_ids(&w);
    let zones: Vec<String> = w
        .machines("central")
        .iter()
        .map(|(_, _, a)| a["zone"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(zones, ["zone-a", "zone-b", "zone-c", "zone-a", "zone-b"]);
    let writer = Writer::start(w.namespace_of(&workers[0].1));
    let monitor = Monitor::start(&w, 5);
    w.world.write("central.bu", &central_butane("2"));
    let t = Instant::now();
    apply(&w, &[]);
    let took = t.elapsed();
    let (most_down, looks) = monitor.stop();
    converged(&w, "the rolling replacement");
    assert_eq!(worker_ids(&w), workers);
    let log = writer.stop();
    let s = WriterSummary::of(&log);
    let lost = lost_writes(&w, &log);
    println!(
        "live etcd, large-scale rolling replacement of 5 members over 3 zones: {:.1}s, at most {most_down} member(s) down at once ({looks} looks), {} writes, {} failed, longest gap {:.2}s, {} lost",
        took.as_secs_f64(),
        s.writes,
        s.failed,
        s.longest_gap.as_secs_f64(),
        lost.len()
    );
    assert!(looks > 10, "the monitor looked {looks} times");
    assert!(most_down <= 1, "{most_down} members were down at once");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}
