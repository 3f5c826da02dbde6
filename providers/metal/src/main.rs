//! `clusterform-provider-metal`: the Metal provider served over clusterform's plugin
//! protocol (docs/plugin-protocol.md) on stdin/stdout. The token is read from
//! `METAL_AUTH_TOKEN` here, never from a message.

use std::sync::Arc;
use std::time::Duration;

use clusterform_plugin::protocol::Hello;
use clusterform_plugin::serve::{Configured, serve};
use clusterform_provider_metal::{Metal, Settings, schema};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hello = Hello {
        protocol: clusterform_plugin::PROTOCOL_VERSION,
        name: schema::PROVIDER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        schema: schema::schema(),
        concurrency: 32,
        max_batch: 5000,
        runs_machines: true,
    };
    serve(
        hello,
        Box::new(|settings, _base_dir| {
            let s = Settings::parse(settings, |k| std::env::var(k).ok())?;
            // A create waits up to `provision_timeout` for the device, a delete as long
            // for it to go: the host must wait that long for one call, and a little more.
            let call_timeout = s.provision_timeout + Duration::from_secs(120);
            Ok(Configured {
                provider: Arc::new(Metal::new(s)?),
                call_timeout: Some(call_timeout),
            })
        }),
    )
    .await
}
