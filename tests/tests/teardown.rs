//! Tearing down: `reap` finds clusters by their tags at the provider (even when their
//! state folders are gone) and deletes only the expired ones, networks last; `--orphans`
//! deletes what a state does not record; nothing without the tool's tags is touched.
//! `destroy --target` takes dependents along; protected machines need
//! `--allow-protected`; `import` adopts an object; `apply --refresh-only` accepts drift.

use std::collections::BTreeSet;

use clusterform_tests::{World, dev_test};
use serde_json::{Value, json};

/// A dev-test cluster file in folder `dir` that expires after `expires`.
fn test_cluster(w: &World, dir: &str, name: &str, expires: Option<&str>) -> String {
    let mut text = dev_test(name, 2, "s", "latency_ms = 0");
    if let Some(e) = expires {
        text = text.replacen(
            "[cluster]\n",
            &format!("[cluster]\nexpires_after = \"{e}\"\n"),
            1,
        );
    }
    let file = format!("{dir}/cluster.toml");
    w.write(&file, &text);
    w.run_ok(&["apply", &file, "--auto-approve"], 0);
    file
}

fn clusters_in_cloud(w: &World) -> BTreeSet<String> {
    w.objects()
        .into_iter()
        .filter_map(|o| o.owner.map(|w| w.cluster))
        .collect()
}

#[test]
fn reap_deletes_only_expired_clusters_even_without_their_state() {
    let w = World::new();
    test_cluster(&w, "a", "ci-a", Some("1s"));
    test_cluster(&w, "b", "ci-b", Some("1s"));
    test_cluster(&w, "live", "ci-live", Some("8h"));
    test_cluster(&w, "prod", "prod", None);
    let foreign = w
        .cloud()
        .insert_untagged("machine", &Default::default())
        .expect("insert");
    // The expired clusters' state folders are gone: reap works from the tags alone.
    std::fs::remove_dir_all(w.path().join("a/.clusterform")).expect("rm state a");
    std::fs::remove_dir_all(w.path().join("b/.clusterform")).expect("rm state b");
    std::thread::sleep(std::time::Duration::from_millis(1500));

    let dry = w.run_ok(&["reap", "--provider", "sim", "--dry-run"], 0);
    for (name, action) in [
        ("ci-a", "reap: expired"),
        ("ci-b", "reap: expired"),
        ("ci-live", "keep"),
        ("prod", "keep (no expiry)"),
    ] {
        let row = clusterform_tests::row(&dry.stdout, name);
        assert!(row.trim_end().ends_with(action), "{row}");
        assert!(row.contains(" 4 "), "4 objects: {row}");
    }
    assert!(
        dry.stdout
            .contains("Dry run: would delete 8 object(s) of 2 cluster(s); nothing was deleted."),
        "{}",
        dry.stdout
    );
    assert_eq!(w.objects().len(), 17, "a dry run deletes nothing");

    let before = w.cloud().calls().expect("calls");
    let r = w.run_ok(&["reap", "--provider", "sim", "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains("Reap complete! 8 object(s) of 2 cluster(s) deleted."),
        "{}",
        r.stdout
    );
    assert_eq!(
        clusters_in_cloud(&w),
        BTreeSet::from(["ci-live".to_string(), "prod".to_string()])
    );
    let deletes = w.cloud().calls().expect("calls")["delete"] - before.get("delete").unwrap_or(&0);
    // Machines first, then networks: the sim refuses a network that still has machines,
    // so any other order would have failed (and been retried, or reported).
    assert_eq!(deletes, 8, "one delete per object");
    assert!(
        w.cloud().get(&foreign).expect("get").is_some(),
        "untagged objects are never touched"
    );
    w.assert_state_matches_cloud_for("live/cluster.toml", "ci-live");

    let again = w.run_ok(&["reap", "--provider", "sim", "--auto-approve"], 0);
    assert!(
        again.stdout.contains("Nothing to reap."),
        "{}",
        again.stdout
    );
}

/// Helpers for worlds with several clusters.
trait Several {
    fn assert_state_matches_cloud_for(&self, file: &str, cluster: &str);
}

impl Several for World {
    fn assert_state_matches_cloud_for(&self, file: &str, cluster: &str) {
        let mut cloud: Vec<(String, String)> = self
            .objects()
            .into_iter()
            .filter_map(|o| {
                let w = o.owner?;
                (w.cluster == cluster).then(|| (w.address.to_string(), o.id))
            })
            .collect();
        cloud.sort();
        assert_eq!(self.state_ids(file), cloud);
    }
}

#[test]
fn reap_orphans_deletes_what_no_state_records() {
    let w = World::new();
    let file = test_cluster(&w, "mine", "mine", None);
    test_cluster(&w, "theirs", "theirs", None);
    let ids = w.state_ids(&file);
    let worker = ids
        .iter()
        .find(|(a, _)| a == "machine.workers[1]")
        .map(|(_, id)| id.clone())
        .expect("worker");
    w.run_ok(&["state", "rm", &file, "machine.workers[1]"], 0);

    // Without --orphans nothing is due: no cluster has expired.
    let r = w.run_ok(&["reap", "--provider", "sim", "--auto-approve"], 0);
    assert!(r.stdout.contains("Nothing to reap."), "{}", r.stdout);
    let r = w.run(&["reap", "--provider", "sim", "--orphans"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("--orphans needs the cluster files"),
        "{}",
        r.stderr
    );

    let r = w.run_ok(
        &[
            "reap",
            &file,
            "--provider",
            "sim",
            "--orphans",
            "--auto-approve",
        ],
        0,
    );
    assert!(r.stdout.contains("reap: 1 orphan(s)"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!(
            "machine machine.workers[1] (id {worker}) of `mine` (orphan)"
        )),
        "{}",
        r.stdout
    );
    assert!(w.cloud().get(&worker).expect("get").is_none());
    assert_eq!(w.objects().len(), 7, "the rest of both clusters stays");
    w.assert_state_matches_cloud_for(&file, "mine");
}

#[test]
fn destroy_target_takes_its_dependents_along() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("tgt", 3, "s", "latency_ms = 0"));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);

    let r = w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--target",
            "machine.workers[1]",
            "--auto-approve",
        ],
        0,
    );
    assert!(
        r.stdout
            .contains("Destroy complete! Resources: 0 added, 0 changed, 1 destroyed."),
        "{}",
        r.stdout
    );
    // The etcd machine takes every worker that points at it; the network stays.
    let r = w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--target",
            "machine.central",
            "--auto-approve",
        ],
        0,
    );
    assert!(r.stdout.contains("3 destroyed"), "{}", r.stdout);
    assert_eq!(w.state_addresses("cluster.toml"), ["network.main"]);
    w.assert_state_matches_cloud("cluster.toml");

    let r = w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--target",
            "machine.nope",
            "--auto-approve",
        ],
        1,
    );
    assert!(
        r.stderr
            .contains("`--target machine.nope` selects nothing in the state"),
        "{}",
        r.stderr
    );
    let r = w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--target",
            "Machine!",
            "--auto-approve",
        ],
        1,
    );
    assert!(
        r.stderr.contains("is not a resource address"),
        "{}",
        r.stderr
    );
}

#[test]
fn protected_machines_need_allow_protected() {
    let w = World::new();
    let text = dev_test("guarded", 1, "s", "latency_ms = 0").replacen(
        "[central]\n",
        "[central]\nprotect = true\n",
        1,
    );
    w.write("cluster.toml", &text);
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);

    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 1);
    assert!(
        r.stderr
            .contains("the plan deletes or replaces 1 protected machine(s): `machine.central[0]`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--allow-protected"), "{}", r.stderr);
    assert_eq!(w.objects().len(), 3, "nothing was deleted");
    // Destroying a worker alone is fine.
    w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--target",
            "machine.workers",
            "--auto-approve",
        ],
        0,
    );
    // A replacement of a protected machine is refused too (a new network replaces it;
    // it is dev-test's only etcd member, so that needs --allow-data-loss as well).
    w.write("cluster.toml", &text.replace("10.0.0.0/16", "10.1.0.0/16"));
    let r = w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--allow-data-loss",
        ],
        1,
    );
    assert!(r.stderr.contains("protected machine(s)"), "{}", r.stderr);
    let r = w.run_ok(&["plan", "cluster.toml", "--allow-data-loss"], 0);
    assert!(
        r.stdout.contains("refuse it without --allow-protected"),
        "{}",
        r.stdout
    );
    w.write("cluster.toml", &text);
    w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--auto-approve",
            "--allow-protected",
        ],
        0,
    );
    assert!(w.objects().is_empty());
}

#[test]
fn import_adopts_an_object_and_the_plan_is_clean() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("imp", 2, "s", "latency_ms = 0"));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let (_, id) = w
        .state_ids("cluster.toml")
        .into_iter()
        .find(|(a, _)| a == "machine.workers[0]")
        .expect("worker");
    w.run_ok(&["state", "rm", "cluster.toml", "machine.workers[0]"], 0);
    let r = w.run_ok(&["import", "cluster.toml", "machine.workers[0]", &id], 0);
    assert!(r.stdout.contains("Import successful!"), "{}", r.stdout);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.assert_state_matches_cloud("cluster.toml");

    w.run_ok(&["state", "rm", "cluster.toml", "machine.workers[1]"], 0);
    for (args, message) in [
        (
            vec!["import", "cluster.toml", "machine.workers[0]", id.as_str()],
            "is already in the state",
        ),
        (
            vec!["import", "cluster.toml", "machine.workers[9]", "m-1"],
            "is not in the cluster file",
        ),
        (
            vec!["import", "cluster.toml", "machine.workers[1]", "m-999999"],
            "has no machine with id `m-999999`",
        ),
    ] {
        let r = w.run_ok(&args, 1);
        assert!(r.stderr.contains(message), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn refresh_only_accepts_drift_into_the_state_and_changes_no_object() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("accept", 2, "s", "latency_ms = 0"),
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let ids = w.state_ids("cluster.toml");
    let id = |addr: &str| {
        ids.iter()
            .find(|(a, _)| a == addr)
            .map(|(_, i)| i.clone())
            .expect("id")
    };
    w.cloud().delete(&id("machine.workers[1]")).expect("delete");
    w.cloud()
        .set_attr(&id("machine.workers[0]"), "size", json!("xl"))
        .expect("set");

    let r = w.run_ok(
        &[
            "plan",
            "cluster.toml",
            "--refresh-only",
            "--detailed-exitcode",
        ],
        2,
    );
    assert!(
        r.stdout.contains("This is a refresh-only plan"),
        "{}",
        r.stdout
    );
    let cloud = w.cloud();
    cloud.reset_calls().expect("reset");
    let r = w.run_ok(
        &["apply", "cluster.toml", "--refresh-only", "--auto-approve"],
        0,
    );
    assert!(
        r.stdout
            .contains("Apply complete! The state now matches the objects"),
        "{}",
        r.stdout
    );
    assert_eq!(cloud.mutations().expect("mutations"), 0);
    let state = w.state_json("cluster.toml");
    let worker0 = state["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["address"] == "machine.workers[0]"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(worker0["attrs"]["size"], "xl", "{state:#}");
    w.assert_state_matches_cloud("cluster.toml");
    w.run_ok(&["drift", "cluster.toml"], 0);
    // The plan now wants the file's size back and the worker re-made.
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 2);
    assert!(r.stdout.contains("1 to add, 1 to change"), "{}", r.stdout);
}
