//! How the registry knows `sim`: its schema, version and construction.

use std::sync::Arc;

use clusterform_provider::{BuiltIn, Provider, ProviderFactory};

use crate::SimProvider;

/// The `sim` provider's registry entry.
pub fn factory() -> Arc<dyn ProviderFactory> {
    Arc::new(BuiltIn::new(
        crate::schema(),
        env!("CARGO_PKG_VERSION"),
        |settings, base_dir| {
            SimProvider::from_config(settings, base_dir)
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
                .map_err(|e| e.to_string())
        },
    ))
}
