//! Saved plans: `plan --out` then `apply FILE`; a stale plan is refused.

use clusterform_tests::{World, dev_test};

#[test]
fn a_saved_plan_applies_exactly_and_a_stale_one_is_refused() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 2, "s", ""));
    let r = w.run_ok(&["plan", "cluster.toml", "-out=first.plan"], 0);
    assert!(
        r.stdout.contains("clusterform apply first.plan"),
        "{}",
        r.stdout
    );
    let mode = std::fs::metadata(w.path().join("first.plan")).expect("plan file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    // A second plan made now goes stale once the first is applied.
    w.run_ok(&["plan", "cluster.toml", "--out", "second.plan"], 0);
    let r = w.run_ok(&["apply", "first.plan"], 0);
    assert!(r.stdout.contains("4 added"), "{}", r.stdout);
    let r = w.run_ok(&["apply", "second.plan"], 1);
    assert!(r.stderr.contains("the saved plan is stale"), "{}", r.stderr);
    assert!(r.stderr.contains("serial 0 to"), "{}", r.stderr);
    assert_eq!(w.objects().len(), 4);

    // show reads plan files too.
    let r = w.run_ok(&["show", "first.plan"], 0);
    assert!(r.stdout.contains("Plan: 4 to add"), "{}", r.stdout);
}

#[test]
fn garbage_plan_files_are_errors() {
    let w = World::new();
    w.write("bad.plan", "{\"format\": \"something-else\"}");
    let r = w.run_ok(&["apply", "bad.plan"], 1);
    assert!(
        r.stderr.contains("not a clusterform plan file"),
        "{}",
        r.stderr
    );
    w.write("broken.plan", "{\"format\": ");
    let r = w.run_ok(&["apply", "broken.plan"], 1);
    assert!(
        r.stderr.contains("is not a valid plan file"),
        "{}",
        r.stderr
    );
}
