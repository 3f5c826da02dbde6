//! Refresh is batched: planning a cluster of 200 instances makes at most 2
//! `DescribeInstances` calls and at most 10 EC2 calls in all, counted at the proxy.
//! It runs on its own moto when scripts/test started one (`CLUSTERFORM_MOTO_SCALE_URL`):
//! 200 instances would slow every other test's `DescribeInstances` on a shared one.

use crate::support::{Ec2World, assert_nothing_left, dev_test, unique};

#[test]
fn refresh_of_200_instances_makes_at_most_10_calls() {
    let url = crate::need_moto!(scale);
    let w = Ec2World::new(&url);
    let name = unique("big");
    // 1 central + 199 workers = 200 instances.
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 199, "t3.micro"),
    );
    let started = std::time::Instant::now();
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("Resources: 203 added"), "{}", r.stdout);
    let st = &w.proxy.stats;
    eprintln!(
        "apply of 200 instances: {:.1}s, {} calls: {:?}",
        started.elapsed().as_secs_f64(),
        st.total(),
        st.by_action()
    );
    assert_eq!(w.instances(&name).len(), 200);

    st.reset();
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    let calls = st.by_action();
    eprintln!("refresh of 200 instances: {} calls: {calls:?}", st.total());
    assert!(
        st.count("DescribeInstances") <= 2,
        "DescribeInstances: {calls:?}"
    );
    assert!(st.total() <= 10, "EC2 calls in all: {calls:?}");
    assert!(st.count("DescribeInstances") >= 1, "it did read: {calls:?}");

    let vpcs = w.vpcs(&name);
    w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert_nothing_left(&w.leftovers(&name, &vpcs));
}
