//! Ctrl-C during an apply: the first SIGINT starts nothing new, lets what is in flight
//! finish, writes the state and exits 130; a second one aborts at once and leaves the
//! journal for the next run to resolve.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clusterform_tests::{World, dev_test};

#[allow(unsafe_code)]
fn sigint(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0, "kill -INT {pid}");
}

/// Wait until the sim cloud holds an object: the walk has started, so the apply's
/// Ctrl-C handler is installed.
fn wait_for_first_object(w: &World, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.objects().is_empty() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the apply ended before creating anything"
        );
        assert!(Instant::now() < deadline, "no object after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_sigint_finishes_in_flight_operations_writes_state_and_exits_130() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 6, "s", "latency_ms = 400"),
    );
    let mut child = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_first_object(&w, &mut child);
    sigint(&child);
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("Interrupt received"), "{stderr}");
    assert!(
        stdout.contains("Resources:") && stdout.contains("not started (interrupted)"),
        "the summary is printed: {stdout}"
    );
    let n = w.objects().len();
    assert!((1..8).contains(&n), "{n} objects: {:?}", w.cloud_ids());
    // State == cloud exactly, nothing duplicated, journal empty.
    w.assert_state_matches_cloud("cluster.toml");

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        !r.stdout.contains("unfinished operation"),
        "nothing was left to resolve: {}",
        r.stdout
    );
    assert_eq!(w.objects().len(), 8, "{:?}", w.cloud_ids());
    w.assert_state_matches_cloud("cluster.toml");
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}

#[test]
fn two_sigints_abort_at_once_and_the_next_run_resolves_the_journal() {
    let w = World::new();
    // Each call takes 5 s; the network appears in the cloud half way through its call,
    // which leaves 2.5 s in which the abort must land before that call returns.
    w.write(
        "cluster.toml",
        &dev_test("demo", 6, "s", "latency_ms = 5000"),
    );
    let mut child = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_first_object(&w, &mut child);
    sigint(&child);
    // The second SIGINT goes once the first one was handled (two signals sent back to
    // back may be merged into one by the kernel).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("Interrupt received") => break,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no reaction to the first SIGINT ({e}): {seen:?}"),
        }
    }
    sigint(&child);
    let sent = Instant::now();
    let status = child.wait().expect("wait");
    let took = sent.elapsed();
    let rest: Vec<String> = rx.iter().collect();
    reader.join().expect("reader");
    assert_eq!(status.code(), Some(130), "{seen:?} {rest:?}");
    assert!(took < Duration::from_secs(2), "the abort took {took:?}");
    assert!(
        rest.iter().any(|l| l.contains("Aborted")),
        "says it aborted: {rest:?}"
    );
    // It did not wait for the network's create: that is not recorded, its journal entry
    // (and those of the operations that never started) are still open.
    let v = w.state_json("cluster.toml");
    assert_eq!(v["resources"], serde_json::json!([]), "{v}");
    assert!(
        v["pending"].as_array().is_some_and(|p| !p.is_empty()),
        "{v}"
    );

    // Faster from here on: the provider settings are not part of any resource.
    w.write("cluster.toml", &dev_test("demo", 6, "s", "latency_ms = 50"));
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains("unfinished operation(s) of an earlier run"),
        "{}",
        r.stdout
    );
    assert_eq!(w.objects().len(), 8, "{:?}", w.cloud_ids());
    w.assert_state_matches_cloud("cluster.toml");
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}
