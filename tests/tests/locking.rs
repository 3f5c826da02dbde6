//! The state lock: a second run on the same state fails at once naming the holder.

use std::time::{Duration, Instant};

use clusterform_tests::{World, dev_test};

#[test]
fn two_applies_at_once_one_runs_the_other_names_the_holder() {
    let w = World::new();
    // Slow enough that the first apply still holds the lock when the second starts.
    w.write(
        "cluster.toml",
        &dev_test("demo", 2, "s", "latency_ms = 700"),
    );
    let first = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let lock = w.path().join(".clusterform").join("lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock)
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the first apply never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = w.run(&["apply", "cluster.toml", "--auto-approve"]);
    assert_eq!(second.code, 1, "{second:?}");
    let pid = first.id().to_string();
    assert!(second.stderr.contains("is locked"), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!("(pid {pid})")),
        "names the holder: {}",
        second.stderr
    );
    assert!(second.stderr.contains("force-unlock"), "{}", second.stderr);

    let out = first.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.objects().len(), 4, "nothing created twice");
    w.assert_state_matches_cloud("cluster.toml");
}

#[test]
fn lock_timeout_waits_for_the_holder() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 1, "s", "latency_ms = 300"),
    );
    let first = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let lock = w.path().join(".clusterform").join("lock");
    while std::fs::read_to_string(&lock)
        .map(|s| s.is_empty())
        .unwrap_or(true)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = w.run(&[
        "plan",
        "cluster.toml",
        "--lock-timeout",
        "60s",
        "--detailed-exitcode",
    ]);
    assert_eq!(
        second.code, 0,
        "waited, then saw the applied cluster: {second:?}"
    );
    let _ = first.wait_with_output();
}
