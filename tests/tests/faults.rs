//! A flaky, throttling cloud: every fifth call fails with a transient error and calls
//! beyond a few per second are refused. The apply retries its way through, says how many
//! retries it took, and makes nothing twice.

use clusterform_tests::{World, dev_test};

#[test]
fn transient_failures_and_throttling_are_retried_without_duplicates() {
    let w = World::new();
    // 20 workers become ready at once against a bucket of 8 calls per second: throttled.
    w.write(
        "cluster.toml",
        &dev_test(
            "flaky",
            20,
            "s",
            "latency_ms = 20\nfail_rate = 0.2\nrate_per_s = 8\nseed = 7",
        ),
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let summary = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Apply complete!"))
        .unwrap_or_else(|| panic!("no summary: {}", r.stdout));
    let retries: u64 = summary
        .split(['(', ','])
        .find_map(|part| part.trim().strip_suffix(" retries)").map(str::to_string))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the summary counts retries: {summary}"));
    // 20 workers become ready together against a bucket of 8: at least 12 are refused
    // on their first try (and some of all calls fail at random on top).
    assert!(retries >= 12, "throttling happened: {summary}");
    assert!(
        summary.contains("22 added"),
        "every object is made once: {summary}"
    );

    let calls = w.cloud().calls().expect("calls");
    let creates = calls.get("create").copied().unwrap_or(0);
    let objects = w.objects().len();
    assert_eq!(objects, 22, "{:?}", w.cloud_ids());
    assert!(
        creates > objects as u64,
        "refused calls count: {creates} create calls for {objects} objects ({calls:?})"
    );
    assert!(
        retries >= creates - objects as u64,
        "every refused create was retried: {retries} retries, {creates} creates"
    );
    assert!(w.cloud().duplicates().expect("dups").is_empty());
    w.assert_state_matches_cloud("cluster.toml");
}
