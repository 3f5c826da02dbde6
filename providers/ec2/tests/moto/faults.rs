//! Throttling and lost answers through the fault-injecting proxy: every Nth request is
//! answered 503 `RequestLimitExceeded` without reaching moto, and every Mth reaches
//! moto but its answer is replaced by a 503 (three pairs, so that the faults land on
//! different calls). Apply, plan and destroy still complete, the retries are counted in
//! the summary, nothing is made twice (moto ignores `ClientToken`; the op tag finds
//! what a lost answer made) and nothing is left behind.

use std::sync::atomic::Ordering;

use crate::support::{Ec2World, assert_nothing_left, dev_test, unique};

#[test]
fn throttled_and_lost_answers_apply_completes_without_duplicates() {
    let url = crate::need_moto!();
    for (fail, lose) in [(9, 13), (7, 10), (11, 6)] {
        through_faults(&url, fail, lose);
    }
}

fn through_faults(url: &str, fail: u64, lose: u64) {
    let w = Ec2World::new(url);
    let name = unique("th");
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 3, "t3.small"),
    );
    let st = &w.proxy.stats;
    st.fail_every.store(fail, Ordering::SeqCst);
    st.lose_every.store(lose, Ordering::SeqCst);

    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("Resources: 7 added"), "{}", r.stdout);
    assert!(
        r.stdout.contains("retries"),
        "the summary counts retries: {}",
        r.stdout
    );
    let (failed, lost) = (
        st.failed.load(Ordering::SeqCst),
        st.lost.load(Ordering::SeqCst),
    );
    assert!(
        failed > 0 && lost > 0,
        "faults injected: {failed} throttled, {lost} lost"
    );
    eprintln!(
        "apply through faults: {} requests, {failed} throttled, {lost} answers lost: {:?}",
        st.total(),
        st.by_action()
    );
    // Exactly one instance per machine, one VPC, one subnet per zone.
    let by_addr = w.instances_by_address(&name);
    assert_eq!(
        w.instances(&name).len(),
        4,
        "no duplicates: {:?}",
        by_addr.keys()
    );
    assert_eq!(by_addr.len(), 4);
    let vpcs = w.vpcs(&name);
    assert_eq!(vpcs.len(), 1, "one VPC");

    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    st.fail_every.store(0, Ordering::SeqCst);
    st.lose_every.store(0, Ordering::SeqCst);
    assert_nothing_left(&w.leftovers(&name, &vpcs));
}
