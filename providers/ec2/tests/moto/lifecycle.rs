//! apply -> plan (no changes) -> drift made with the SDK -> plan shows it -> apply ->
//! destroy, for `dev-test` and `central-services` (3 central machines in 3 zones, 4
//! workers); after destroy moto holds nothing of the cluster.

use aws_sdk_ec2::types::{AttributeValue, Tag};

use crate::support::{
    Ec2World, assert_nothing_left, central_services, dev_test, id, squeeze, tag, unique,
};

#[test]
fn dev_test_apply_plan_drift_destroy() {
    let url = crate::need_moto!();
    let w = Ec2World::new(&url);
    let name = unique("dt");
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 2, "t3.small"),
    );

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    // network, subnets in 2 zones, 1 central, 2 workers.
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 6 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);

    // What moto holds: instances with their tags, addresses, the newest AMI, user data
    // byte for byte as rendered.
    let by_addr = w.instances_by_address(&name);
    assert_eq!(
        by_addr.keys().cloned().collect::<Vec<_>>(),
        [
            "machine.central[0]",
            "machine.workers[0]",
            "machine.workers[1]"
        ]
    );
    let central = &by_addr["machine.central[0]"];
    assert_eq!(central.private_ip_address(), Some("10.0.0.101"));
    assert_eq!(
        tag(central, "Name").as_deref(),
        Some(&*format!("{name}-central-0"))
    );
    assert_eq!(
        tag(central, "clusterform:cluster").as_deref(),
        Some(name.as_str())
    );
    assert!(tag(central, "clusterform:op").is_some_and(|o| o.starts_with("cf-")));
    assert!(tag(central, "clusterform:expires-at").is_some());
    assert_eq!(
        w.image_name(central.image_id().unwrap_or_default()),
        "Flatcar-stable-9999.0.0-hvm",
        "the newest of the channel"
    );
    // `render --out` writes what the instance got, byte for byte (on the terminal its
    // etcd key would read `(sensitive)`).
    w.run_ok(&["render", "cluster.toml", "--out", "ign"], 0);
    let rendered = std::fs::read_to_string(w.world.path().join("ign/machine.central[0].ign"))
        .expect("rendered config");
    assert_eq!(w.user_data(&id(central)), rendered);
    let zones: Vec<&str> = by_addr
        .values()
        .filter_map(|i| i.placement().and_then(|p| p.availability_zone()))
        .collect();
    assert_eq!(zones, ["eu-west-1a", "eu-west-1a", "eu-west-1b"]);
    // The security group: etcd between members only, SSH from the configured CIDR.
    let sg_id = central.security_groups()[0]
        .group_id()
        .unwrap_or_default()
        .to_string();
    let sg =
        w.rt.block_on(w.ec2.describe_security_groups().group_ids(&sg_id).send())
            .expect("DescribeSecurityGroups");
    let rules = sg.security_groups()[0].ip_permissions();
    let etcd = rules
        .iter()
        .find(|p| p.from_port() == Some(2379))
        .expect("etcd rule");
    assert_eq!(etcd.to_port(), Some(2380));
    assert_eq!(
        etcd.user_id_group_pairs()[0].group_id(),
        Some(sg_id.as_str())
    );
    assert!(etcd.ip_ranges().is_empty(), "etcd is open to members only");
    let ssh = rules
        .iter()
        .find(|p| p.from_port() == Some(22))
        .expect("ssh rule");
    assert_eq!(ssh.ip_ranges()[0].cidr_ip(), Some("203.0.113.0/24"));
    assert!(
        rules.iter().all(|p| p.from_port() != Some(2375)),
        "no Docker port"
    );
    assert_eq!(
        central.security_groups().len(),
        1,
        "no Docker group on etcd machines"
    );

    // Drift, made with the SDK: a worker stopped, the other's type changed, the central
    // machine retagged.
    let w0 = id(&by_addr["machine.workers[0]"]);
    let w1 = id(&by_addr["machine.workers[1]"]);
    let c0 = id(central);
    w.rt.block_on(async {
        w.ec2.stop_instances().instance_ids(&w0).send().await?;
        w.ec2
            .modify_instance_attribute()
            .instance_id(&w1)
            .instance_type(AttributeValue::builder().value("t3.large").build())
            .send()
            .await?;
        w.ec2
            .create_tags()
            .resources(&c0)
            .tags(Tag::builder().key("owner").value("someone-else").build())
            .send()
            .await?;
        Ok::<_, aws_sdk_ec2::Error>(())
    })
    .expect("out-of-band changes");

    // `drift` reports the same, read-only, as JSON: exit 2, each change with the state's
    // value and EC2's.
    let r = w.run_ok(&["drift", "cluster.toml", "--json"], 2);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("drift JSON");
    let changed = |addr: &str, attr: &str| {
        report["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["address"] == addr)
            .flat_map(|c| c["attributes"].as_array().into_iter().flatten())
            .find(|a| a["name"] == attr)
            .map(|a| (a["state"].clone(), a["actual"].clone()))
    };
    assert_eq!(
        changed("machine.workers[0]", "state"),
        Some((serde_json::json!("running"), serde_json::json!("stopped"))),
        "{report}"
    );
    assert_eq!(
        changed("machine.workers[1]", "size"),
        Some((serde_json::json!("t3.small"), serde_json::json!("t3.large"))),
        "{report}"
    );
    assert!(changed("machine.central[0]", "tags").is_some(), "{report}");
    assert_eq!(report["summary"]["missing"], 0, "{report}");

    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 2);
    let out = &squeeze(&r.stdout);
    assert!(
        out.contains("Objects have changed outside of clusterform"),
        "{out}"
    );
    assert!(out.contains("# machine.workers[0] has changed"), "{out}");
    assert!(
        out.contains("~ state = \"running\" -> \"stopped\""),
        "{out}"
    );
    assert!(
        out.contains("~ size = \"t3.small\" -> \"t3.large\""),
        "{out}"
    );
    assert!(
        out.contains("~ size = \"t3.large\" -> \"t3.small\""),
        "the plan changes it back: {out}"
    );
    assert!(out.contains("someone-else"), "{out}");
    assert!(
        out.contains("machine.central[0] will be updated in-place"),
        "{out}"
    );
    assert!(
        out.contains("Plan: 0 to add, 2 to change, 0 to destroy."),
        "{out}"
    );

    // Apply puts the type and tags back (the stopped worker stays stopped: its state is
    // EC2's, not an input).
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let by_addr = w.instances_by_address(&name);
    assert_eq!(
        by_addr["machine.workers[1]"]
            .instance_type()
            .map(|t| t.as_str()),
        Some("t3.small")
    );
    assert_eq!(tag(&by_addr["machine.central[0]"], "owner"), None);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);

    let vpcs = w.vpcs(&name);
    assert_eq!(vpcs.len(), 1);
    // Termination protection turned on outside clusterform (the file does not say
    // `protect`) stops the destroy of that machine, with what to do.
    let w0 = id(&by_addr["machine.workers[0]"]);
    w.set_protected(&w0, true);
    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 1);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("termination protection"), "{all}");
    // The other workers go; the central machine the protected worker points at waits
    // for it (dependents are deleted first).
    let left: Vec<String> = w.instances_by_address(&name).into_keys().collect();
    assert_eq!(left, ["machine.central[0]", "machine.workers[0]"]);
    w.set_protected(&w0, false);
    w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert_nothing_left(&w.leftovers(&name, &vpcs));
}

#[test]
fn central_services_three_zones_protected_drift_destroy() {
    let url = crate::need_moto!();
    let w = Ec2World::new(&url);
    let name = unique("cs");
    let file = |protect| central_services(&name, &w.provider_table(""), 4, protect);
    w.world.write("cluster.toml", &file(true));

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    // network, 3 subnets, 3 central, 4 workers.
    assert!(r.stdout.contains("Resources: 11 added"), "{}", r.stdout);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);

    // Central machines: one per zone, each at its static address inside its zone's
    // subnet, protected; the AMI is the newest beta one.
    let by_addr = w.instances_by_address(&name);
    assert_eq!(by_addr.len(), 7);
    let subnets =
        w.rt.block_on(
            w.ec2
                .describe_subnets()
                .filters(crate::support::f("tag:clusterform:cluster", &name))
                .send(),
        )
        .expect("DescribeSubnets");
    let cidr_of = |id: &str| {
        subnets
            .subnets()
            .iter()
            .find(|s| s.subnet_id() == Some(id))
            .and_then(|s| {
                Some((
                    s.cidr_block()?.to_string(),
                    s.availability_zone()?.to_string(),
                ))
            })
            .expect("its subnet")
    };
    for (i, (ip, zone, cidr)) in [
        ("10.0.1.101", "eu-west-1a", "10.0.0.0/20"),
        ("10.0.17.101", "eu-west-1b", "10.0.16.0/20"),
        ("10.0.33.101", "eu-west-1c", "10.0.32.0/20"),
    ]
    .into_iter()
    .enumerate()
    {
        let c = &by_addr[&format!("machine.central[{i}]")];
        assert_eq!(c.private_ip_address(), Some(ip));
        assert_eq!(
            cidr_of(c.subnet_id().unwrap_or_default()),
            (cidr.to_string(), zone.to_string())
        );
        assert!(w.protected(&id(c)), "central[{i}] protected");
        assert_eq!(
            w.image_name(c.image_id().unwrap_or_default()),
            "Flatcar-beta-9999.0.0-hvm"
        );
        // The etcd peers list names every member at its address.
        let ud = w.user_data(&id(c));
        for peer in ["10.0.1.101", "10.0.17.101", "10.0.33.101"] {
            assert!(
                ud.contains(&format!("https://{peer}:2380")),
                "central[{i}]: {peer}"
            );
        }
    }
    assert!(!w.protected(&id(&by_addr["machine.workers[0]"])));

    // Drift: a worker terminated, a central machine's type changed.
    let gone = id(&by_addr["machine.workers[3]"]);
    let c1 = id(&by_addr["machine.central[1]"]);
    w.rt.block_on(async {
        w.ec2
            .terminate_instances()
            .instance_ids(&gone)
            .send()
            .await?;
        w.ec2
            .modify_instance_attribute()
            .instance_id(&c1)
            .instance_type(AttributeValue::builder().value("m6i.xlarge").build())
            .send()
            .await?;
        Ok::<_, aws_sdk_ec2::Error>(())
    })
    .expect("out-of-band changes");
    let r = w.run_ok(&["drift", "cluster.toml", "--json"], 2);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("drift JSON");
    let missing: Vec<&serde_json::Value> = report["missing"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| &m["address"])
        .collect();
    assert_eq!(
        missing,
        [&serde_json::json!("machine.workers[3]")],
        "{report}"
    );
    assert_eq!(report["summary"]["changed"], 1, "{report}");
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 2);
    let out = &squeeze(&r.stdout);
    assert!(
        out.contains("# machine.workers[3] has been deleted"),
        "{out}"
    );
    assert!(
        out.contains("~ size = \"m6i.large\" -> \"m6i.xlarge\""),
        "{out}"
    );
    assert!(
        out.contains("Plan: 1 to add, 1 to change, 0 to destroy."),
        "{out}"
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let by_addr = w.instances_by_address(&name);
    assert_eq!(by_addr.len(), 7);
    assert_eq!(
        by_addr["machine.central[1]"]
            .instance_type()
            .map(|t| t.as_str()),
        Some("m6i.large")
    );
    assert_eq!(
        by_addr["machine.central[1]"]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str()),
        Some("running"),
        "resized by stop, modify, start"
    );
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);

    // Protected machines: destroy is refused before any call and deletes nothing.
    let vpcs = w.vpcs(&name);
    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 1);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("--allow-protected"), "{all}");
    assert_eq!(w.instances(&name).len(), 7, "nothing deleted");
    // With --allow-protected, clusterform lifts EC2's termination protection itself.
    let r = w.run_ok(
        &[
            "destroy",
            "cluster.toml",
            "--auto-approve",
            "--allow-protected",
        ],
        0,
    );
    assert!(r.stdout.contains("11 destroyed"), "{}", r.stdout);
    assert_nothing_left(&w.leftovers(&name, &vpcs));
}
