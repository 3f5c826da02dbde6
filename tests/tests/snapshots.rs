//! Snapshots of what users read: plan output in several scenarios, and config errors
//! with their locations. A change to any of them is a reviewed diff.

use clusterform_tests::{World, dev_test};

/// A world with a dev-test cluster applied one operation at a time (so that ids and
/// addresses are the same on every run).
fn applied(workers: u32) -> World {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", workers, "2cpu-4gb", ""));
    w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "1",
        ],
        0,
    );
    w
}

fn plan_text(w: &World) -> String {
    let r = w.run(&["plan", "cluster.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

#[test]
fn plan_create_dev_test() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 2, "2cpu-4gb", ""));
    insta::assert_snapshot!(plan_text(&w));
}

#[test]
fn plan_no_changes() {
    let w = applied(1);
    insta::assert_snapshot!(plan_text(&w));
}

#[test]
fn plan_update_in_place() {
    let w = applied(1);
    w.write("cluster.toml", &dev_test("demo", 1, "4cpu-8gb", ""));
    insta::assert_snapshot!(plan_text(&w));
}

#[test]
fn plan_replace_because_network_changed() {
    let w = applied(1);
    let changed = dev_test("demo", 1, "2cpu-4gb", "").replace("10.0.0.0/16", "10.0.0.0/17");
    w.write("cluster.toml", &changed);
    // Replacing dev-test's only etcd member loses its data: refused unless allowed.
    let refused = w.run_ok(&["plan", "cluster.toml"], 1);
    insta::assert_snapshot!("plan_replace_the_only_etcd_member_refused", refused.stderr);
    let r = w.run_ok(&["plan", "cluster.toml", "--allow-data-loss"], 0);
    insta::assert_snapshot!(r.stdout);
}

#[test]
fn plan_scale_down_destroys_workers() {
    let w = applied(3);
    w.write("cluster.toml", &dev_test("demo", 1, "2cpu-4gb", ""));
    insta::assert_snapshot!(plan_text(&w));
}

#[test]
fn plan_drift_outside_clusterform() {
    let w = applied(2);
    let cloud = w.cloud();
    let objs = w.objects();
    let find = |addr: &str| {
        objs.iter()
            .find(|o| {
                o.owner
                    .as_ref()
                    .is_some_and(|x| x.address.to_string() == addr)
            })
            .map(|o| o.id.clone())
            .expect("object")
    };
    cloud
        .set_attr(
            &find("machine.workers[0]"),
            "size",
            serde_json::json!("1cpu-1gb"),
        )
        .expect("set");
    cloud.delete(&find("machine.workers[1]")).expect("delete");
    insta::assert_snapshot!(plan_text(&w));
}

#[test]
fn plan_destroy() {
    let w = applied(1);
    let r = w.run_ok(&["plan", "cluster.toml", "--destroy"], 0);
    insta::assert_snapshot!(r.stdout);
}

/// Each bad cluster file and the error `validate` prints for it.
const BAD: &[(&str, &str)] = &[
    (
        "toml_syntax",
        "[cluster]\nname = \"demo\nprovider = \"sim\"\n",
    ),
    (
        "unknown_top_level_key",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[clusterr]\nname = \"x\"\n",
    ),
    (
        "unknown_cluster_key",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\nregion = \"eu\"\n",
    ),
    (
        "bad_cluster_name",
        "[cluster]\nname = \"Demo_1\"\nprovider = \"sim\"\n",
    ),
    (
        "wrong_type",
        "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\n\n[workers]\ncount = \"three\"\nsize = \"s\"\n",
    ),
    (
        "unknown_blueprint",
        "[cluster]\nname = \"demo\"\nblueprint = \"huge\"\nprovider = \"sim\"\n",
    ),
    (
        "unknown_provider",
        "[cluster]\nname = \"demo\"\nprovider = \"gcp\"\n",
    ),
    (
        "unknown_kind",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.database.main]\nsize = \"s\"\n",
    ),
    (
        "unknown_attribute",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ncolour = \"blue\"\n",
    ),
    (
        "missing_required",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.m]\nnetwork = \"network.lan\"\n",
    ),
    (
        "unknown_reference",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.machine.m]\nsize = \"s\"\nnetwork = \"network.nope\"\n",
    ),
    (
        "unknown_depends_on",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ndepends_on = [\"machine.ghost\"]\n",
    ),
    (
        "dependency_cycle",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\ndepends_on = [\"network.b\"]\n\n[resource.network.b]\ncidr = \"10.0.1.0/24\"\ndepends_on = [\"network.c\"]\n\n[resource.network.c]\ncidr = \"10.0.2.0/24\"\ndepends_on = [\"network.a\"]\n",
    ),
    (
        "duplicate_address",
        "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\n\n[resource.network.main]\ncidr = \"10.0.0.0/24\"\n",
    ),
    (
        "bad_cidr",
        "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.300/16\"\n\n[central]\nsize = \"s\"\n",
    ),
    (
        "address_outside_cidr",
        "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/24\"\n\n[central]\nsize = \"s\"\nfirst_address = \"192.168.1.5\"\n",
    ),
    (
        "bad_provider_setting",
        "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[provider.sim]\nlatency = 20\n",
    ),
];

#[test]
fn config_errors() {
    for (name, text) in BAD {
        let w = World::new();
        w.write("cluster.toml", text);
        let r = w.run(&["validate", "cluster.toml"]);
        assert_eq!(r.code, 1, "{name}: {r:?}");
        assert!(
            r.stderr.contains("cluster.toml:"),
            "{name}: the error names the file: {}",
            r.stderr
        );
        insta::assert_snapshot!(format!("config_error_{name}"), r.stderr);
    }
}
