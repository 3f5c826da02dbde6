//! clusterform engine: journal recovery, refresh, plan, the parallel apply walker (also
//! used by destroy), drift checks, reaping by tags, and import. It drives providers
//! through the `Provider` trait (drift checks through the read-only `Reader` only) and
//! writes every finished operation to the `StateStore` at once, through a group committer.

mod adopt;
mod apply;
mod commit;
pub mod day2;
pub mod drift;
mod duplicates;
mod error;
mod import;
mod members;
mod plan;
pub mod reap;
mod recover;
mod refresh;
mod retry;
pub mod walk;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clusterform_provider::{Provider, Reader};

pub use adopt::{Adoption, adopt_tagged};
pub use apply::{
    ApplyOptions, ApplyReport, Event, Observer, Outcome, Render, apply, critical_path,
};
pub use duplicates::{Duplicate, duplicates};
pub use error::EngineError;
pub use import::{Imported, import};
pub use members::{MemberWaits, preflight as etcd_preflight, unreachable as etcd_unreachable};
pub use plan::{
    HeldBack, hold_back_deferred, plan, plan_destroy, plan_replacing, protected,
    restrict_to_dependencies, restrict_to_targets,
};
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

    /// Read-only handles to the same providers.
    pub fn readers(&self) -> Readers {
        Readers {
            map: self
                .map
                .iter()
                .map(|(k, p)| (k.clone(), Arc::clone(p) as Arc<dyn Reader>))
                .collect(),
        }
    }
}

/// Read-only handles to the providers, by name. [`Reader`] has no mutating method, so
/// nothing reached through a `Readers` can change anything at a provider: refresh,
/// planning and drift checks take this, never [`Providers`].
#[derive(Clone, Default)]
pub struct Readers {
    map: BTreeMap<String, Arc<dyn Reader>>,
}

impl Readers {
    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Reader>, EngineError> {
        self.map
            .get(name)
            .ok_or_else(|| EngineError::NoProvider(name.to_string()))
    }

    /// The provider names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

impl From<Providers> for Readers {
    /// Keep only the read-only handles; the mutating ones are dropped.
    fn from(p: Providers) -> Readers {
        p.readers()
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
