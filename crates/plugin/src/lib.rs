//! Provider plugins: executables that manage one provider's objects and speak the
//! versioned protocol of `docs/plugin-protocol.md` (one JSON message per line over the
//! plugin's stdin and stdout). A plugin is found ([`discover`]), started and shaken hands
//! with ([`PluginFactory`], a registry entry like any built-in), and used through
//! [`PluginProvider`], which implements the same `Reader` and `Provider` traits as the
//! built-ins, so the engine's retries, journal, recovery and drift apply unchanged.
//! [`check`] is the conformance check plugin authors run; [`serve`] is the plugin side,
//! for plugins written in Rust.

pub mod check;
mod client;
pub mod discover;
mod factory;
pub mod protocol;
mod provider;
pub mod serve;

pub use client::{PluginError, TRACE_ENV};
pub use factory::{DEFAULT_CALL_TIMEOUT, HANDSHAKE_TIMEOUT, PluginFactory};
pub use provider::PluginProvider;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Settings of `[provider.NAME]` that are clusterform's own and never sent to a plugin.
pub const HOST_SETTINGS: &[&str] = &["plugin", "call_timeout"];
