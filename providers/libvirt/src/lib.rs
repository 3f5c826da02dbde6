//! The `libvirt` provider: Flatcar clusters on a libvirt host (QEMU/KVM). A `network`
//! is a libvirt network (bridge, DHCP and DNS host entry per machine) with a `dir`
//! storage pool holding the base image; a `machine` is a QEMU domain booting from a
//! qcow2 overlay of that image, its Ignition config handed over through fw_cfg
//! (`opt/org.flatcar-linux/config`). Ownership tags live in each object's `<metadata>`.
//!
//! - [`LibvirtProvider`] implements the engine's `Reader` and `Provider` traits.
//! - [`schema`] lists the kinds; [`apply_defaults`] fills in what `[provider.libvirt]`
//!   decides (image, disk size, forward mode) before planning.
//! - [`LibvirtConfig`] parses `[provider.libvirt]`.

mod config;
mod error;
mod factory;
mod image;
mod ops;
mod provider;
mod schema;
mod size;
mod xml;

pub use config::{DEFAULT_URI, Forward, FwCfg, ImageSource, LibvirtConfig};
pub use error::LibvirtError;
pub use factory::factory;
pub use provider::{LibvirtProvider, MAX_BATCH};
pub use schema::{PROVIDER_NAME, apply_defaults, schema};
pub use size::{SIZE_FORMAT, Size};
pub use xml::{FW_CFG_NAME, NS as METADATA_NS};
