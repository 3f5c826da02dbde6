//! Ten applies started at once on one state: one at a time gets the lock; those told not
//! to wait fail naming the holder, those told to wait run after it and find nothing to do.

use std::process::Stdio;

use clusterform_tests::{Run, World, dev_test};

const PROCESSES: usize = 10;

#[test]
fn ten_applies_at_once_run_one_at_a_time() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 5, "s", "latency_ms = 150"),
    );
    // Half do not wait for the lock, half wait up to two minutes; interleaved, so that
    // either kind may be first.
    let children: Vec<(bool, u32, std::process::Child)> = (0..PROCESSES)
        .map(|i| {
            let waits = i % 2 == 1;
            let timeout = if waits { "120s" } else { "0s" };
            let child = w
                .command(&[
                    "apply",
                    "cluster.toml",
                    "--auto-approve",
                    "--lock-timeout",
                    timeout,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            (waits, child.id(), child)
        })
        .collect();
    let runs: Vec<(bool, u32, Run)> = children
        .into_iter()
        .map(|(waits, pid, child)| {
            let run: Run = child.wait_with_output().expect("wait").into();
            (waits, pid, run)
        })
        .collect();
    let show = |runs: &[(bool, u32, Run)]| {
        runs.iter()
            .map(|(waits, pid, r)| {
                format!(
                    "pid {pid} waits {waits} exit {}\n{}\n{}",
                    r.code, r.stdout, r.stderr
                )
            })
            .collect::<Vec<_>>()
            .join("\n=====\n")
    };

    let holders: Vec<u32> = runs
        .iter()
        .filter(|(_, _, r)| r.code == 0)
        .map(|(_, pid, _)| *pid)
        .collect();
    let creators: Vec<u32> = runs
        .iter()
        .filter(|(_, _, r)| r.stdout.contains("Apply complete! Resources: 7 added"))
        .map(|(_, pid, _)| *pid)
        .collect();
    assert_eq!(
        creators.len(),
        1,
        "exactly one run created the cluster:\n{}",
        show(&runs)
    );

    for (waits, pid, r) in &runs {
        let ctx = || format!("pid {pid}:\n{}", show(&runs));
        if *waits {
            assert_eq!(r.code, 0, "a waiter succeeds: {}", ctx());
        }
        if r.code == 0 && *pid != creators[0] {
            assert!(
                r.stdout.contains("No changes."),
                "it ran after the creator: {}",
                ctx()
            );
        }
        if r.code != 0 {
            assert!(!*waits);
            assert_eq!(r.code, 1, "{}", ctx());
            assert!(r.stderr.contains("is locked"), "{}", ctx());
            let named = holders
                .iter()
                .any(|h| r.stderr.contains(&format!("(pid {h})")));
            assert!(named, "names the holder's pid: {}", ctx());
        }
    }
    assert!(
        runs.iter().any(|(waits, _, r)| !waits && r.code == 1),
        "at least one run that does not wait found the lock taken:\n{}",
        show(&runs)
    );

    let calls = w.cloud().calls().expect("calls");
    assert_eq!(calls.get("create"), Some(&7), "{calls:?}");
    assert_eq!(w.objects().len(), 7, "{:?}", w.cloud_ids());
    w.assert_state_matches_cloud("cluster.toml");
}
