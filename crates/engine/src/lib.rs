//! clusterform engine: journal recovery, refresh, plan, and the parallel apply walker
//! (also used by destroy). It drives providers through the `Provider` trait and writes
//! every finished operation to the `StateStore` at once, through a group committer.

mod adopt;
mod apply;
mod commit;
mod error;
mod plan;
mod recover;
mod refresh;
mod retry;
pub mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clusterform_provider::Provider;

pub use adopt::{Adoption, adopt_tagged};
pub use apply::{ApplyOptions, ApplyReport, Event, Observer, Outcome, apply, critical_path};
pub use error::EngineError;
pub use plan::{plan, plan_destroy};
pub use recover::{Recovery, Resolution, recover};
pub use refresh::{Refreshed, refresh};
pub use retry::RetryPolicy;

/// The providers a run may use, by name.
#[derive(Clone, Default)]
pub struct Providers {
    map: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// No providers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a provider under its name.
    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        self.map.insert(provider.name().to_string(), provider);
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Provider>, EngineError> {
        self.map
            .get(name)
            .ok_or_else(|| EngineError::NoProvider(name.to_string()))
    }

    /// The provider names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

/// What every run needs to know about the cluster.
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    /// The cluster's name (tagged on every object).
    pub name: String,
    /// Test clusters: objects get an expiry tag this long after creation.
    pub expires_after: Option<Duration>,
    /// `user@host` of whoever runs this, tagged on every object made
    /// (`clusterform:created-by`).
    pub operator: Option<String>,
}
