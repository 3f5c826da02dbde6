//! Killed mid-apply (kill -9), then run again: nothing lost, nothing made twice.
//! The full harness (50+ kill points, random latency) is a later scenario; this pins the
//! mechanism: journal written before each mutation, resolved by the next run.

use std::time::Duration;

use clusterform_tests::{World, dev_test};

#[test]
fn kill_9_mid_apply_then_rerun_adopts_and_finishes() {
    // Killed 0, 300 and 600 ms after the first object appears at the provider (the
    // run's plan before it takes a few calls of 300 ms each).
    for kill_after_ms in [0, 300, 600] {
        let w = World::new();
        w.write(
            "cluster.toml",
            &dev_test("demo", 6, "s", "latency_ms = 300"),
        );
        let mut child = w
            .command(&["apply", "cluster.toml", "--auto-approve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let started = std::time::Instant::now();
        while w.objects().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the apply made nothing in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        child.kill().expect("kill -9");
        let _ = child.wait();

        let pending = w.run_ok(&["state", "pending", "cluster.toml"], 0);
        assert!(
            pending.stdout.contains("unfinished operation(s)"),
            "kill at {kill_after_ms} ms: `state pending` lists the open journal: {}",
            pending.stdout
        );
        let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
        assert!(
            r.stdout
                .contains("unfinished operation(s) of an earlier run"),
            "kill at {kill_after_ms} ms: the rerun resolves the journal: {}",
            r.stdout
        );
        assert_eq!(
            w.objects().len(),
            8,
            "kill at {kill_after_ms} ms: {:?}",
            w.cloud_ids()
        );
        w.assert_state_matches_cloud("cluster.toml");
        w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    }
}
