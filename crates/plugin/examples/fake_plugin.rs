//! A provider plugin in Rust: the in-memory fake provider of `clusterform-provider`,
//! served over the plugin protocol with `clusterform_plugin::serve::serve`. The smallest
//! Rust plugin there is; `tests/serve.rs` runs the conformance check against it.

use std::sync::Arc;

use clusterform_plugin::protocol::Hello;
use clusterform_plugin::serve::serve;
use clusterform_provider::Reader;
use clusterform_provider::fake::FakeProvider;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let hello = Hello {
        protocol: clusterform_plugin::PROTOCOL_VERSION,
        name: "fake".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        schema: FakeProvider::new().schema().clone(),
        concurrency: 4,
        max_batch: 50,
        runs_machines: false,
    };
    serve(
        hello,
        Box::new(|_, _| {
            let p: Arc<dyn clusterform_provider::Provider> = Arc::new(FakeProvider::new());
            Ok(p.into())
        }),
    )
    .await
}
