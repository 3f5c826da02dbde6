//! The provider contract: what the engine may ask of a cloud (read, create, update,
//! delete, import, find by idempotency key), the request/response types, and an
//! in-memory fake for tests. Providers depend on this crate and `core`, never on the
//! engine.
//!
//! Reads and mutations are split: [`Reader`] has no mutating method, so a caller handed
//! only a `&dyn Reader` (drift checks) cannot change anything, by construction.

pub mod fake;
pub mod registry;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use clusterform_core::{Address, Attrs, ProviderSchema};
use serde::{Deserialize, Serialize};

pub use registry::{BuiltIn, Origin, ProviderFactory, Registry, ResourceProblem, SchemaOnly};

/// Tags every object carries so that it can be found at the provider without the
/// state (recovery after a crash, `reap`, unmanaged-object checks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    /// The cluster name (`clusterform:cluster`).
    pub cluster: String,
    /// The resource address (`clusterform:address`).
    pub address: Address,
    /// The idempotency key of the operation that made it (`clusterform:op`).
    pub op: String,
    /// RFC 3339 time after which `reap` may delete it (`clusterform:expires-at`).
    pub expires_at: Option<String>,
    /// Who ran the apply that made it, `user@host` (`clusterform:created-by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When it was made, RFC 3339 (`clusterform:created-at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// The tag keys (EC2 tags, Metal tags, libvirt metadata) that carry [`Ownership`]. Every
/// provider uses these names, so `reap` and `drift` find objects the same way anywhere.
pub mod tags {
    /// The cluster name.
    pub const CLUSTER: &str = "clusterform:cluster";
    /// The resource address.
    pub const ADDRESS: &str = "clusterform:address";
    /// The idempotency key of the operation that made the object.
    pub const OP: &str = "clusterform:op";
    /// RFC 3339 expiry of a test cluster.
    pub const EXPIRES_AT: &str = "clusterform:expires-at";
    /// `user@host` of whoever made it.
    pub const CREATED_BY: &str = "clusterform:created-by";
    /// RFC 3339 creation time.
    pub const CREATED_AT: &str = "clusterform:created-at";
}

impl Ownership {
    /// The ownership as `(key, value)` tags, keys from [`tags`]; optional ones only when set.
    pub fn to_tags(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (tags::CLUSTER, self.cluster.clone()),
            (tags::ADDRESS, self.address.to_string()),
            (tags::OP, self.op.clone()),
        ];
        for (k, v) in [
            (tags::EXPIRES_AT, &self.expires_at),
            (tags::CREATED_BY, &self.created_by),
            (tags::CREATED_AT, &self.created_at),
        ] {
            if let Some(v) = v {
                out.push((k, v.clone()));
            }
        }
        out
    }

    /// Read the ownership back from tags. `None` unless the cluster, a valid address and
    /// the op are all there: an object without them is not the tool's, and is never touched.
    pub fn from_tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Ownership> {
        let (mut cluster, mut address, mut op) = (None, None, None);
        let (mut expires_at, mut created_by, mut created_at) = (None, None, None);
        for (k, v) in tags {
            let v = Some(v.to_string());
            match k {
                tags::CLUSTER => cluster = v,
                tags::ADDRESS => address = v,
                tags::OP => op = v,
                tags::EXPIRES_AT => expires_at = v,
                tags::CREATED_BY => created_by = v,
                tags::CREATED_AT => created_at = v,
                _ => {}
            }
        }
        Some(Ownership {
            cluster: cluster?,
            address: address?.parse().ok()?,
            op: op?,
            expires_at,
            created_by,
            created_at,
        })
    }
}

/// An object as the provider sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// The resource kind.
    pub kind: String,
    /// The provider's id.
    pub id: String,
    /// All attributes, inputs and computed.
    pub attrs: Attrs,
    /// The ownership tags, when the object carries them.
    pub owner: Option<Ownership>,
}

/// Refresh one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    /// The resource address (for messages).
    pub address: Address,
    /// The resource kind.
    pub kind: String,
    /// The provider's id from the state.
    pub id: String,
    /// The attributes the state records for it (empty when unknown). A provider whose
    /// API cannot report some inputs in a batched read (EC2: user data) carries them
    /// over from here, the way Terraform's ReadResource gets the prior state.
    #[serde(default)]
    pub prior: Attrs,
}

/// Create one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The resource kind.
    pub kind: String,
    /// The inputs, references resolved to ids.
    pub attrs: Attrs,
    /// Tags to put on the object; `owner.op` is the idempotency key: a create retried
    /// with the same key must return the object made the first time, not a second one.
    pub owner: Ownership,
}

/// Change one object in place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The resource address.
    pub address: Address,
    /// The resource kind.
    pub kind: String,
    /// The provider's id.
    pub id: String,
    /// All desired inputs (not only the changed ones).
    pub attrs: Attrs,
    /// Names of the attributes that change.
    pub changed: Vec<String>,
    /// The idempotency key of this operation.
    pub idempotency_key: String,
}

/// Delete one object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// The resource address.
    pub address: Address,
    /// The resource kind.
    pub kind: String,
    /// The provider's id.
    pub id: String,
    /// The idempotency key of this operation.
    pub idempotency_key: String,
    /// The object has `protect = true` and the operator allowed its deletion
    /// (`--allow-protected`): a provider that enforces protection itself (EC2's
    /// termination protection) lifts it first. Never set otherwise, so protection set
    /// outside clusterform still stops a delete.
    #[serde(default)]
    pub force: bool,
}

/// How a provider call failed; the engine retries only what is transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying with backoff: throttling, 5xx, a dropped connection before the
    /// request was sent.
    #[error("{message} (transient)")]
    Transient {
        /// What the provider said.
        message: String,
        /// How long the provider asked to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// Definitive: nothing was changed at the provider.
    #[error("{0}")]
    Permanent(String),
    /// The outcome is unknown (timeout after sending): the object may exist; the next
    /// run must look it up by its idempotency key.
    #[error("{0} (outcome unknown)")]
    Ambiguous(String),
    /// The object is not there.
    #[error("`{0}` not found")]
    NotFound(String),
    /// The provider configuration in `cluster.toml` is wrong.
    #[error("{0}")]
    Config(String),
}

impl ProviderError {
    /// True when the engine should retry the call.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient { .. })
    }
}

/// Result of a provider call.
pub type Result<T, E = ProviderError> = std::result::Result<T, E>;

/// What a provider can do without changing anything.
#[async_trait]
pub trait Reader: Send + Sync {
    /// The provider's name in `cluster.toml`.
    fn name(&self) -> &str;

    /// The kinds and attributes it manages.
    fn schema(&self) -> &ProviderSchema;

    /// How many objects one `read_batch` call may ask for (1: no batching).
    fn max_batch(&self) -> usize {
        1
    }

    /// True when the machines it makes really boot their configs, so that what they run
    /// (the etcd members) can be reached and must be changed through etcd's membership
    /// API. False for the plain `sim` and for emulators (moto, libvirt's test driver):
    /// their machines run nothing, and nothing is called on them.
    fn runs_machines(&self) -> bool {
        true
    }

    /// Refresh one object: `Ok(None)` when it no longer exists.
    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>>;

    /// Refresh many objects in as few API calls as the provider can. The result has one
    /// entry per request, in order.
    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(self.read(r).await);
        }
        out
    }

    /// Find the object made by the operation with this idempotency key (crash recovery).
    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>>;

    /// Every object at the provider tagged with this cluster's name.
    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>>;

    /// Every object at the provider that carries clusterform's ownership tags, of any
    /// cluster (`reap` finds test clusters this way, without their state). Objects
    /// without the tags are never listed.
    async fn list_owned(&self) -> Result<Vec<Object>>;

    /// A machine's console output (what its serial console printed, the latest the
    /// provider keeps), for boot diagnostics; `Ok(None)` when this provider gives none.
    /// `prior` is what the state records for it.
    async fn console(&self, kind: &str, id: &str, prior: &Attrs) -> Result<Option<String>> {
        let _ = (kind, id, prior);
        Ok(None)
    }
}

/// A provider that can also change things.
#[async_trait]
pub trait Provider: Reader {
    /// Create an object. Must be idempotent on `req.owner.op`.
    async fn create(&self, req: &CreateRequest) -> Result<Object>;

    /// Change an object in place.
    async fn update(&self, req: &UpdateRequest) -> Result<Object>;

    /// Delete an object; deleting one that is already gone succeeds.
    async fn delete(&self, req: &DeleteRequest) -> Result<()>;

    /// Adopt an existing object by its provider id.
    async fn import(&self, kind: &str, id: &str) -> Result<Object>;

    /// The same provider, restricted to reads.
    fn reader(&self) -> &dyn Reader;
}

/// Secrets a provider needs come from the environment, never from `cluster.toml`; this
/// lists the variables so the engine can keep their values out of state, plans and logs.
pub fn secret_env_vars() -> &'static [&'static str] {
    &[
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "METAL_AUTH_TOKEN",
    ]
}

/// The attributes of `attrs` named in `keys` that are set (not null): what a provider
/// keeps beside an object because its API does not report them (EC2's inputs tags,
/// Metal's `customdata`).
pub fn pick(attrs: &Attrs, keys: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    keys.iter()
        .filter_map(|k| {
            attrs
                .get(*k)
                .filter(|v| !v.is_null())
                .map(|v| (k.to_string(), v.clone()))
        })
        .collect()
}

/// Provider settings from a `[provider.NAME]` table, as JSON.
pub type ProviderConfig = BTreeMap<String, serde_json::Value>;

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Ownership {
        Ownership {
            cluster: "demo".into(),
            address: "machine.workers[2]".parse().expect("address"),
            op: "cf-op-1".into(),
            expires_at: Some("2026-01-01T08:00:00Z".into()),
            created_by: Some("ann@box".into()),
            created_at: None,
        }
    }

    #[test]
    fn ownership_round_trips_through_tags() {
        let o = owner();
        let tags = o.to_tags();
        assert_eq!(tags.len(), 5, "unset ones are left out: {tags:?}");
        let back = Ownership::from_tags(tags.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(back, Some(o));
    }

    #[test]
    fn objects_without_the_full_ownership_are_not_ours() {
        let tags = owner().to_tags();
        for missing in [tags::CLUSTER, tags::ADDRESS, tags::OP] {
            let partial = tags
                .iter()
                .filter(|(k, _)| *k != missing)
                .map(|(k, v)| (*k, v.as_str()));
            assert_eq!(Ownership::from_tags(partial), None, "without {missing}");
        }
        let bad_address = [
            (tags::CLUSTER, "demo"),
            (tags::ADDRESS, "not an address"),
            (tags::OP, "x"),
        ];
        assert_eq!(Ownership::from_tags(bad_address), None);
        assert_eq!(Ownership::from_tags([("Name", "web")]), None);
    }
}
