//! The Equinix Metal provider, built as the plugin executable `clusterform-provider-metal`
//! (the main binary carries no code for it). Equinix closed the public Metal service on
//! 2026-06-30; `[provider.metal] api_url` points the plugin at any service that speaks
//! the same API.

pub mod api;
pub mod provider;
pub mod schema;
pub mod settings;

pub use provider::Metal;
pub use settings::Settings;
