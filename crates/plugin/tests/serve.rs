//! The plugin side in Rust (`serve`) against the host side: the conformance check passes
//! against `examples/fake_plugin.rs`, built by cargo beside this test.

use std::path::PathBuf;

use clusterform_provider::ProviderConfig;

fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/serve-HASH -> target/<profile>/examples/fake_plugin
    let profile = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    profile.join("examples").join("fake_plugin")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rust_plugin_served_by_serve_passes_the_conformance_check() {
    let path = example();
    assert!(
        path.is_file(),
        "{} (built by cargo test/nextest)",
        path.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let report = clusterform_plugin::check::run(&path, &ProviderConfig::new(), dir.path()).await;
    let failed: Vec<String> = report
        .steps
        .iter()
        .filter_map(|s| s.outcome.as_ref().err().map(|e| format!("{}: {e}", s.what)))
        .collect();
    assert!(report.passed(), "{failed:?}");
    assert_eq!(
        report.plugin,
        Some(("fake".to_string(), env!("CARGO_PKG_VERSION").to_string()))
    );
    assert!(report.steps.len() >= 15, "{:?}", report.steps);
}
