//! The `sim` provider: a simulated cloud kept on local disk (SQLite, one folder per
//! user shared by all clusters) with networks, subnets, machines and volumes, and
//! latency, rate limits and faults on demand. It is what the quickstart uses and what
//! tests and benchmarks run against.
//!
//! - [`SimProvider`] implements the engine's `Reader` and `Provider` traits.
//! - [`SimCloud`] looks at and changes the cloud directly (tests, `clusterform sim`).
//! - [`schema`] lists the kinds and attributes; [`resolve_dir`] finds the folder.
//! - Live mode (`live = true`) makes machines really run the etcd member or proxy of
//!   their configs, each in a network namespace of its own ([`LiveMachine`]).

mod cloud;
mod config;
mod db;
mod factory;
mod faults;
mod live;
mod net;
mod ops;
mod provider;
mod schema;
mod writer;

pub use cloud::SimCloud;
pub use config::{DIR_ENV, SimConfig, resolve_dir};
pub use db::SimError;
pub use factory::factory;
pub use live::{LiveMachine, LiveProcess};
pub use provider::{MAX_BATCH, SimProvider};
pub use schema::{PROVIDER_NAME, schema};
