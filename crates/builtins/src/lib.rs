//! The providers this build links in, as one [`Registry`]: `sim` always, `ec2` and
//! `libvirt` when their features are on. A provider left out of the build, or shipped as
//! a plugin (`metal`: `clusterform-provider-metal`), is registered by its schema only, so
//! that its cluster files still validate and render without it; building it says how to
//! get it. This is the one place that
//! names the built-in providers' crates.

use std::sync::Arc;

use clusterform_core::ProviderSchema;
use clusterform_provider::{Registry, SchemaOnly};

/// Every provider this build has.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(clusterform_provider_sim::factory());
    #[cfg(feature = "ec2")]
    r.register(clusterform_provider_ec2::factory());
    #[cfg(feature = "libvirt")]
    r.register(clusterform_provider_libvirt::factory());
    let has = r.names().join(", ");
    #[cfg(not(feature = "ec2"))]
    r.register(schema_only(
        "ec2",
        &format!(
            "this build has no provider `ec2` (built without the `ec2` feature); it has: {has}"
        ),
    ));
    #[cfg(not(feature = "libvirt"))]
    r.register(schema_only(
        "libvirt",
        &format!("this build has no provider `libvirt` (built without the `libvirt` feature); it has: {has}"),
    ));
    r.register(schema_only(
        "metal",
        &format!("`metal` is the plugin `clusterform-provider-metal`, which was not found: install it beside clusterform or on PATH (`cargo install --locked --path providers/metal`), or name it with `[provider.metal] plugin = \"PATH\"` (this build has: {has}); `validate`, `render` and `graph` work without it"),
    ));
    r
}

/// A provider known by name only, with `sim`'s kinds and attributes (and, for `metal`,
/// the PXE attributes of its machines, so that its files validate without the plugin).
fn schema_only(name: &str, why: &str) -> Arc<SchemaOnly> {
    let mut schema = ProviderSchema {
        provider: name.to_string(),
        ..clusterform_provider_sim::schema()
    };
    if name == "metal" {
        use clusterform_core::{AttrSchema, AttrType};
        if let Some(network) = schema.kinds.iter_mut().find(|k| k.kind == "network") {
            network.attrs.extend([
                AttrSchema::optional_computed("vxlan", AttrType::Int, "the VLAN's number")
                    .force_new(),
                AttrSchema::optional_computed("zone", AttrType::String, "the VLAN's metro")
                    .force_new(),
            ]);
        }
        let Some(machine) = schema.kinds.iter_mut().find(|k| k.kind == "machine") else {
            return Arc::new(SchemaOnly::new(schema, why));
        };
        machine.attrs.extend([
            AttrSchema::optional(
                "operating_system",
                AttrType::String,
                "`custom_ipxe` to PXE-boot",
            )
            .force_new(),
            AttrSchema::optional(
                "ipxe_script_url",
                AttrType::String,
                "the iPXE script of a `custom_ipxe` machine",
            )
            .force_new(),
            AttrSchema::optional("always_pxe", AttrType::Bool, "PXE-boot on every boot"),
        ]);
    }
    Arc::new(SchemaOnly::new(schema, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_build_knows_every_provider_name() {
        let r = registry();
        assert_eq!(r.names(), ["sim", "ec2", "libvirt", "metal"]);
        assert!(r.can_apply("sim"));
        assert_eq!(r.can_apply("ec2"), cfg!(feature = "ec2"));
        assert!(!r.can_apply("metal"));
    }
}
