//! The whole life of a cluster on the sim provider: apply, no-op plan, a change, destroy.

use clusterform_tests::{World, dev_test};

#[test]
fn dev_test_apply_plan_change_destroy() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 3, "2cpu-4gb", ""));

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains("Plan: 5 to add, 0 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 5 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    // Not a terminal: no spinners redrawn in place, one plain line per operation.
    assert!(
        !r.stdout.contains('\r') && r.stdout.contains("network.main: Creating...\n"),
        "plain progress lines when stdout is not a terminal: {}",
        r.stdout
    );
    assert_eq!(w.objects().len(), 5);
    w.assert_state_matches_cloud("cluster.toml");
    let serial_after_create = w.state_json("cluster.toml")["serial"]
        .as_u64()
        .expect("serial");

    // Nothing to do: exit 0 with --detailed-exitcode.
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);

    // The workers' size changes: three in-place updates, nothing replaced; exit 2.
    w.write("cluster.toml", &dev_test("demo", 3, "4cpu-8gb", ""));
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 2);
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 3 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("~ size = \"2cpu-4gb\" -> \"4cpu-8gb\""),
        "{}",
        r.stdout
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stdout.contains("0 added, 3 changed, 0 destroyed"),
        "{}",
        r.stdout
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    let ids_before = w.cloud_ids();

    let serial = w.state_json("cluster.toml")["serial"]
        .as_u64()
        .expect("serial");
    assert!(serial > serial_after_create);

    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains("Destroy complete! Resources: 0 added, 0 changed, 5 destroyed."),
        "{}",
        r.stdout
    );
    assert_eq!(w.state_ids("cluster.toml"), vec![]);
    assert!(
        w.objects().is_empty(),
        "sim cloud not empty: {ids_before:?}"
    );
}

#[test]
fn one_machine_size_change_is_exactly_one_update() {
    let w = World::new();
    let file = |size: &str| {
        format!(
            r#"[cluster]
name = "plain"
provider = "sim"

[resource.network.lan]
cidr = "10.1.0.0/24"

[resource.machine.etcd]
size = "2cpu-4gb"
network = "network.lan"
address = "10.1.0.101"

[resource.machine.worker]
count = 2
size = "2cpu-4gb"
network = "network.lan"
depends_on = ["machine.etcd"]

[resource.machine.big]
size = "{size}"
network = "network.lan"
depends_on = ["machine.etcd"]
"#
        )
    };
    w.write("cluster.toml", &file("2cpu-4gb"));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w.write("cluster.toml", &file("8cpu-32gb"));
    let r = w.run_ok(
        &["plan", "cluster.toml", "--json", "--detailed-exitcode"],
        2,
    );
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let changes = v["resource_changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["address"], "machine.big");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(v["summary"]["change"], 1);
}

#[test]
fn a_deleted_state_folder_leaves_the_machines_in_the_sim_cloud() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    std::fs::remove_dir_all(w.path().join(".clusterform")).expect("rm state");
    assert_eq!(
        w.objects().len(),
        3,
        "the sim cloud lives apart from the state"
    );
}

#[test]
fn apply_asks_for_yes() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let mut c = w.command(&["apply", "cluster.toml"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"no\n").expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("Only 'yes' will be accepted"), "{stdout}");
    assert!(stdout.contains("Apply cancelled."), "{stdout}");
    assert!(w.objects().is_empty());

    // Standard input closed: a clear error, nothing done.
    let r = w.run_ok(&["apply", "cluster.toml"], 1);
    assert!(r.stderr.contains("--auto-approve"), "{}", r.stderr);
    assert!(w.objects().is_empty());
}
