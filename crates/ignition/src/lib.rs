//! Flatcar machine configs: the Ignition 3.3.0 data model ([`types`]), the role
//! templates the cluster architectures need ([`role`]: etcd member, etcd proxy, static
//! networkd, Docker TCP socket, SSH keys, hostname), a Butane subset reader ([`butane`],
//! `variant: flatcar`, `version: 1.0.0`), merging, and a short diff of two configs for
//! plans, and reading a rendered config back ([`inspect`], [`etcd`]: a unit's command,
//! an etcd member's identity and its bootstrap-only flags), and Ignition's own
//! validation rules ([`validate`]). Pure but for reading the local files a configuration
//! names, all through [`files::read_confined`] (confined to a folder, regular files only,
//! bounded): Butane `contents.local` files, under the files directory given to
//! [`parse_butane`], and (for the config crate) Butane files.

pub mod butane;
mod dataurl;
pub mod diff;
pub mod etcd;
pub mod files;
pub mod inspect;
pub mod merge;
pub mod role;
pub mod types;
pub mod validate;

pub use butane::{ButaneError, parse_butane, translate_butane};
pub use dataurl::{Encoding, decode as decode_data_url};
pub use diff::{ConfigDiff, diff_configs, summarize};
pub use files::{BUTANE_LIMIT, FileError, LOCAL_LIMIT, ReadFile, read_confined};
pub use merge::merge;
pub use role::{EtcdMember, MachineSpec, Platform, StaticNetwork, render};
pub use types::Config;

/// The Ignition spec version every rendered config has.
pub const IGNITION_VERSION: &str = "3.3.0";

/// Serialize a config the way clusterform stores and sends it: compact JSON with a
/// stable field order.
pub fn to_json(config: &Config) -> String {
    serde_json::to_string(config).unwrap_or_else(|_| String::from("{}"))
}
