//! The Ignition 3.3.0 data model, the subset clusterform writes: users with SSH keys,
//! files, directories, links and systemd units with drop-ins.
//!
//! Optional fields left unset and empty lists are not serialized, so a config contains
//! only what was set, like the output of Butane (Go `omitempty` on pointers).

use serde::{Deserialize, Serialize};

/// A whole Ignition config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The `ignition` section (spec version).
    pub ignition: Ignition,
    /// Users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passwd: Option<Passwd>,
    /// Files, directories and links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// systemd units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<Systemd>,
}

/// The `ignition` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignition {
    /// The spec version, `3.3.0`.
    pub version: String,
}

/// The `passwd` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwd {
    /// Users to create or modify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
}

/// One user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// Supplementary groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The login name.
    pub name: String,
    /// SSH public keys for `~/.ssh/authorized_keys`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
}

/// The `storage` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// Directories to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
    /// Files to write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// Links to create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// A file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// Replace an existing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// Absolute path.
    pub path: String,
    /// The contents (a data URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Resource>,
    /// Permission bits (decimal in JSON: `0644` is 420).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// The owner (root when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<NodeOwner>,
    /// The group (root when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<NodeOwner>,
}

/// A file's owner or group, by number (no name lookup in the machine's user database).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOwner {
    /// The uid or gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// Where a file's contents come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// `gzip` or empty (Butane writes the empty string explicitly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// A URL, for clusterform always a `data:` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Replace an existing node at the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// Absolute path.
    pub path: String,
    /// Permission bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A symbolic or hard link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Replace an existing node at the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    /// Absolute path of the link.
    pub path: String,
    /// A hard link instead of a symbolic one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard: Option<bool>,
    /// What the link points to.
    pub target: String,
}

/// The `systemd` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Systemd {
    /// Units.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

/// A systemd unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// The unit file text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// Drop-ins (`<name>.d/<dropin>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropins: Vec<Dropin>,
    /// Enable (or disable) the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Mask the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<bool>,
    /// The unit name, e.g. `etcd-member.service`.
    pub name: String,
}

/// A unit drop-in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropin {
    /// The drop-in text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    /// The file name, e.g. `20-clct-etcd-member.conf`.
    pub name: String,
}
