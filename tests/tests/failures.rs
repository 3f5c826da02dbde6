//! Failures during apply: dependents skipped, independents done, state == cloud.

use clusterform_tests::{World, dev_test};

#[test]
fn a_failing_etcd_machine_skips_the_workers_and_state_matches_the_cloud() {
    let w = World::new();
    let mut file = dev_test("demo", 3, "s", r#"fail_on = ["machine.central[0]"]"#);
    file.push_str(
        r#"
[resource.network.other]
provider = "sim"
cidr = "10.9.0.0/16"

[resource.machine.lone]
provider = "sim"
size = "s"
network = "network.other"
"#,
    );
    w.write("cluster.toml", &file);
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 1);
    assert!(
        r.stdout
            .contains("Error: machine.central[0]: injected failure"),
        "{}",
        r.stdout
    );
    for i in 0..3 {
        assert!(
            r.stdout.contains(&format!(
                "Skipped: machine.workers[{i}]: skipped because `machine.central[0]` failed"
            )),
            "{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains(
            "Apply failed. Resources: 3 added, 0 changed, 0 destroyed. (1 failed, 3 skipped)"
        ),
        "{}",
        r.stdout
    );
    let addrs: Vec<String> = w
        .state_ids("cluster.toml")
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(addrs, vec!["machine.lone", "network.main", "network.other"]);
    w.assert_state_matches_cloud("cluster.toml");
}

#[test]
fn transient_errors_are_retried_and_counted() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 6, "s", "fail_rate = 0.3\nseed = 7"),
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("8 added"), "{}", r.stdout);
    assert!(
        r.stdout.contains("retries)"),
        "the summary counts retries: {}",
        r.stdout
    );
    w.assert_state_matches_cloud("cluster.toml");
}
