//! Crash recovery: the process is killed while moto has made an instance and before the
//! answer arrived (the proxy holds it). The next run finds the instance by its
//! `clusterform:op` tag and adopts it, whole (user data included): no second instance,
//! and the plan after has nothing to do.

use std::time::{Duration, Instant};

use crate::support::{Ec2World, dev_test, tag, unique};

#[test]
fn an_instance_made_but_not_recorded_is_adopted_by_its_op_tag() {
    let url = crate::need_moto!();
    let w = Ec2World::new(&url);
    let name = unique("cr");
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 0, "t3.small"),
    );
    w.proxy.stats.hold(Some("RunInstances"));
    let mut child = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.instances(&name).is_empty() {
        assert!(Instant::now() < deadline, "moto never got the instance");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    w.proxy.stats.hold(None);

    let made = w.instances(&name);
    assert_eq!(made.len(), 1);
    let id = made[0].instance_id().unwrap_or_default().to_string();
    let op = tag(&made[0], "clusterform:op").expect("op tag");
    let pending = w.run_ok(&["state", "pending", "cluster.toml"], 0);
    assert!(
        pending.stdout.contains("machine.central[0]"),
        "{}",
        pending.stdout
    );
    assert!(
        !w.run_ok(&["state", "list", "cluster.toml"], 0)
            .stdout
            .contains("machine.central[0]"),
        "not recorded before the rerun"
    );

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains("unfinished operation(s) of an earlier run"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&id), "adopted by id: {}", r.stdout);
    let now = w.instances(&name);
    assert_eq!(now.len(), 1, "no second instance");
    assert_eq!(now[0].instance_id(), Some(id.as_str()));
    assert_eq!(tag(&now[0], "clusterform:op"), Some(op));
    let shown = w.run_ok(&["state", "show", "cluster.toml", "machine.central[0]"], 0);
    assert!(shown.stdout.contains(&id), "{}", shown.stdout);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(w.instances(&name).is_empty());
}
