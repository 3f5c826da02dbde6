//! Arbitrary bytes (as UTF-8) as a cluster file: `clusterform_config::parse` returns a
//! model or diagnostics, and never panics.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use clusterform_core::ProviderSchema;
use libfuzzer_sys::fuzz_target;

/// The `sim` provider's real schema, under every provider name the CLI knows.
fn schemas() -> &'static [ProviderSchema] {
    static SCHEMAS: OnceLock<Vec<ProviderSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let sim = clusterform_provider_sim::schema();
        let mut all = vec![sim.clone()];
        for name in ["ec2", "libvirt", "metal"] {
            all.push(ProviderSchema {
                provider: name.to_string(),
                ..sim.clone()
            });
        }
        all
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = Path::new("/nonexistent/clusterform-fuzz/cluster.toml");
        let _ = clusterform_config::parse(path, text, schemas());
    }
});
