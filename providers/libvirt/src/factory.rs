//! How the registry knows `libvirt`: its schema, version, construction, and the
//! defaults its settings put into resources (each machine's image and disk size, each
//! network's forward mode).

use std::sync::Arc;

use clusterform_provider::{BuiltIn, Provider, ProviderFactory};

use crate::{LibvirtConfig, LibvirtProvider, apply_defaults};

/// The `libvirt` provider's registry entry.
pub fn factory() -> Arc<dyn ProviderFactory> {
    let entry = BuiltIn::new(
        crate::schema(),
        env!("CARGO_PKG_VERSION"),
        |settings, base_dir| {
            LibvirtProvider::from_config(settings, base_dir)
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
                .map_err(|e| e.to_string())
        },
    )
    .with_defaults(|settings, base_dir, resources| {
        // Settings that do not check are reported when the provider is built.
        if let Ok(c) = LibvirtConfig::from_provider_config(settings, base_dir) {
            apply_defaults(&c, resources);
        }
    });
    Arc::new(entry)
}
