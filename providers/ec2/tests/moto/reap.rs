//! `clusterform reap --provider ec2`: test clusters found by their tags at EC2, not in
//! any state. Two expired clusters (their state folders deleted) and a live one, in a
//! region no other test uses (the reap looks at every cluster the region holds): only
//! the expired ones go, with their subnets and VPCs; the live one is untouched.

use crate::support::{Ec2World, assert_nothing_left, unique};

const REGION: &str = "ap-southeast-2";

fn tiny(name: &str, provider: &str, expires: &str) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "dev-test"
provider = "ec2"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTheTests test@ci"]
expires_after = "{expires}"

{provider}
[network]
cidr = "10.0.0.0/16"

[central]
count = 1
size = "t3.small"
zones = ["{REGION}a"]
first_address = "10.0.0.101"

[workers]
count = 1
size = "t3.small"
zones = ["{REGION}a"]
"#
    )
}

#[test]
fn reap_deletes_only_expired_clusters_even_without_their_state() {
    let url = crate::need_moto!();
    let w = Ec2World::in_region(&url, REGION);
    let table = w.provider_table("");
    let names: Vec<(&str, String, &str)> = vec![
        ("a", unique("ra"), "1s"),
        ("b", unique("rb"), "1s"),
        ("live", unique("rl"), "8h"),
    ];
    let mut vpcs = Vec::new();
    for (dir, name, expires) in &names {
        let file = format!("{dir}/cluster.toml");
        w.world.write(&file, &tiny(name, &table, expires));
        w.run_ok(&["apply", &file, "--auto-approve"], 0);
        assert_eq!(w.instances(name).len(), 2, "{name}");
        vpcs.push(w.vpcs(name));
    }
    for dir in ["a", "b"] {
        std::fs::remove_dir_all(w.world.path().join(dir).join(".clusterform")).expect("rm state");
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // The provider settings come from the live cluster's file; the clusters from EC2.
    let dry = w.run_ok(
        &[
            "reap",
            "--provider",
            "ec2",
            "live/cluster.toml",
            "--dry-run",
        ],
        0,
    );
    for ((_, name, _), action) in names.iter().zip(["reap: expired", "reap: expired", "keep"]) {
        let row = clusterform_tests::row(&dry.stdout, name);
        assert!(row.trim_end().ends_with(action), "{row}");
    }
    assert!(dry.stdout.contains("nothing was deleted"), "{}", dry.stdout);
    for (_, name, _) in &names {
        assert_eq!(w.instances(name).len(), 2, "a dry run deletes nothing");
    }

    let r = w.run_ok(
        &[
            "reap",
            "--provider",
            "ec2",
            "live/cluster.toml",
            "--auto-approve",
        ],
        0,
    );
    assert!(r.stdout.contains("Reap complete!"), "{}", r.stdout);
    assert!(r.stdout.contains("of 2 cluster(s) deleted"), "{}", r.stdout);
    for (i, (_, name, _)) in names[..2].iter().enumerate() {
        assert_nothing_left(&w.leftovers(name, &vpcs[i]));
    }
    let live = &names[2].1;
    assert_eq!(w.instances(live).len(), 2, "the live cluster is untouched");
    w.run_ok(&["plan", "live/cluster.toml", "--detailed-exitcode"], 0);

    let again = w.run_ok(
        &[
            "reap",
            "--provider",
            "ec2",
            "live/cluster.toml",
            "--auto-approve",
        ],
        0,
    );
    assert!(
        again.stdout.contains("Nothing to reap."),
        "{}",
        again.stdout
    );
    w.run_ok(&["destroy", "live/cluster.toml", "--auto-approve"], 0);
    assert_nothing_left(&w.leftovers(live, &vpcs[2]));
}
