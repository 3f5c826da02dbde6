//! The `sim` provider: a simulated cloud kept on local disk (SQLite, one folder per
//! user shared by all clusters) with networks, subnets, machines and volumes, and
//! latency, rate limits and faults on demand. It is what the quickstart uses and what
//! tests and benchmarks run against.
//!
//! - [`SimProvider`] implements the engine's `Reader` and `Provider` traits.
//! - [`SimCloud`] looks at and changes the cloud directly (tests, `clusterform sim`).
//! - [`schema`] lists the kinds and attributes; [`resolve_dir`] finds the folder.

mod cloud;
mod config;
mod db;
mod faults;
mod net;
mod ops;
mod provider;
mod schema;
mod writer;

pub use cloud::SimCloud;
pub use config::{DIR_ENV, SimConfig, resolve_dir};
pub use db::SimError;
pub use provider::{MAX_BATCH, SimProvider};
pub use schema::{PROVIDER_NAME, schema};
