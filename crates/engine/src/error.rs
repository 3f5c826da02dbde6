//! The engine's error type.

use clusterform_core::Address;
use clusterform_provider::ProviderError;
use clusterform_state::StateError;

/// What can stop a run as a whole (a failing resource during apply is an outcome, not
/// an error).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A resource uses a provider that is not configured.
    #[error("provider `{0}` is not configured: add a `[provider.{0}]` table to the cluster file")]
    NoProvider(String),
    /// The provider does not manage this kind.
    #[error("provider `{provider}` has no resource kind `{kind}` (needed by `{address}`)")]
    NoKind {
        /// The provider.
        provider: String,
        /// The kind.
        kind: String,
        /// The resource.
        address: Address,
    },
    /// Refreshing an object failed.
    #[error("refreshing `{address}` failed: {source}")]
    Refresh {
        /// The resource.
        address: Address,
        /// What the provider said.
        source: ProviderError,
    },
    /// Resolving an open journal entry failed.
    #[error("resolving the unfinished `{action}` of `{address}` failed: {source}")]
    Recover {
        /// The resource.
        address: Address,
        /// The action that did not finish.
        action: String,
        /// What the provider said.
        source: ProviderError,
    },
    /// A provider call that is not about one resource failed (listing, import).
    #[error("provider `{provider}`: {source}")]
    Provider {
        /// The provider.
        provider: String,
        /// What it said.
        source: ProviderError,
    },
    /// A request the engine refuses, with what to do.
    #[error("{message}")]
    Refused {
        /// What is wrong.
        message: String,
        /// What to do instead.
        help: String,
    },
    /// The plan's dependencies do not form a DAG (a bug, or a hand-edited plan file).
    #[error("the plan's operations cannot be ordered: {0}")]
    Order(String),
    /// The state could not be written before any operation started (a read-only or full
    /// state folder): nothing was changed at the providers.
    #[error("could not write the state, nothing was done: {0}")]
    StateWrite(String),
    /// A background task died.
    #[error("internal error: {0}")]
    Internal(String),
}
