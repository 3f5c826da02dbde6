//! The messages of the plugin protocol (docs/plugin-protocol.md), as they go over the
//! wire, and their conversion to and from the provider contract's types.

use std::collections::BTreeMap;
use std::time::Duration;

use clusterform_core::{Attrs, ProviderSchema};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, ProviderError, ReadRequest, UpdateRequest,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The handshake's result: who the plugin is and what it manages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the plugin speaks.
    pub protocol: u32,
    /// The provider's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Its kinds and attributes.
    pub schema: ProviderSchema,
    /// How many requests may be outstanding at once.
    #[serde(default = "one")]
    pub concurrency: usize,
    /// How many objects one `read_batch` may ask for.
    #[serde(default = "one")]
    pub max_batch: usize,
    /// True when its machines really boot their configs.
    #[serde(default)]
    pub runs_machines: bool,
}

fn one() -> usize {
    1
}

/// An object as a plugin reports it: the ownership as plain tags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireObject {
    /// The resource kind.
    pub kind: String,
    /// The plugin's id for it.
    pub id: String,
    /// Every attribute it knows.
    #[serde(default)]
    pub attrs: Attrs,
    /// The tags given at create, as they were given.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl WireObject {
    /// The provider contract's object: the ownership read back from the tags.
    pub fn into_object(self) -> Object {
        let owner = Ownership::from_tags(self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Object {
            kind: self.kind,
            id: self.id,
            attrs: self.attrs,
            owner,
        }
    }

    /// The wire form of an object.
    pub fn from_object(o: &Object) -> WireObject {
        WireObject {
            kind: o.kind.clone(),
            id: o.id.clone(),
            attrs: o.attrs.clone(),
            tags: o.owner.as_ref().map(tags).unwrap_or_default(),
        }
    }
}

/// The ownership as a tag map.
pub fn tags(owner: &Ownership) -> BTreeMap<String, String> {
    owner
        .to_tags()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// What a plugin says went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// The error code.
    pub code: ErrorCode,
    /// What failed and what to do.
    pub message: String,
    /// With `throttled`: how long to wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The error codes of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Transient: retried with backoff.
    Retryable,
    /// Slow down: retried after `retry_after_ms`.
    Throttled,
    /// Refused; nothing was changed.
    Final,
    /// The object does not exist.
    NotFound,
    /// A mutating call's outcome is unknown.
    UnknownOutcome,
    /// The settings are wrong.
    Config,
}

impl WireError {
    /// The provider contract's error, the message prefixed with the plugin's name.
    pub fn into_provider_error(self, plugin: &str) -> ProviderError {
        let message = format!("plugin `{plugin}`: {}", self.message);
        match self.code {
            ErrorCode::Retryable => ProviderError::Transient {
                message,
                retry_after: None,
            },
            ErrorCode::Throttled => ProviderError::Transient {
                message,
                retry_after: Some(Duration::from_millis(self.retry_after_ms.unwrap_or(1000))),
            },
            ErrorCode::Final => ProviderError::Permanent(message),
            ErrorCode::NotFound => ProviderError::NotFound(message),
            ErrorCode::UnknownOutcome => ProviderError::Ambiguous(message),
            ErrorCode::Config => ProviderError::Config(message),
        }
    }
}

/// `read` (and each of `read_batch`'s requests).
pub fn read_params(r: &ReadRequest) -> Value {
    json!({"address": r.address, "kind": r.kind, "id": r.id, "prior": r.prior})
}

/// `create`.
pub fn create_params(r: &CreateRequest) -> Value {
    json!({
        "kind": r.kind,
        "address": r.owner.address,
        "attrs": r.attrs,
        "tags": tags(&r.owner),
        "idempotency_key": r.owner.op,
    })
}

/// `update`.
pub fn update_params(r: &UpdateRequest) -> Value {
    json!({
        "kind": r.kind,
        "address": r.address,
        "id": r.id,
        "attrs": r.attrs,
        "changed": r.changed,
        "idempotency_key": r.idempotency_key,
    })
}

/// `delete`.
pub fn delete_params(r: &DeleteRequest) -> Value {
    json!({
        "kind": r.kind,
        "address": r.address,
        "id": r.id,
        "idempotency_key": r.idempotency_key,
        "force": r.force,
    })
}

/// The `object` of a result (`{"object": Object or null}`); the key must be there, so
/// that a reply that forgot it is an error, never taken for "gone".
pub fn object_field(result: &Value) -> Result<Option<WireObject>, String> {
    match result.get("object") {
        None => Err("its result has no `object` (an object, or null when there is none)".into()),
        Some(Value::Null) => Ok(None),
        Some(v) => WireObject::deserialize(v)
            .map(Some)
            .map_err(|e| format!("its `object` is not an object of the protocol: {e}")),
    }
}

/// The `objects` of a result (`{"objects": [...]}`).
pub fn objects_field(result: &Value) -> Result<Vec<WireObject>, String> {
    match result.get("objects") {
        None => Err("its result has no `objects` (a list)".into()),
        Some(v) => Vec::<WireObject>::deserialize(v)
            .map_err(|e| format!("its `objects` is not a list of objects of the protocol: {e}")),
    }
}

/// One entry of `read_batch`'s `results`: an object (or null), or an error.
pub fn batch_entry(entry: &Value) -> Result<Result<Option<WireObject>, WireError>, String> {
    if let Some(e) = entry.get("error") {
        return WireError::deserialize(e).map(Err).map_err(|e| {
            format!("a `read_batch` entry's `error` is not an error of the protocol: {e}")
        });
    }
    object_field(entry).map(Ok)
}

/// The `results` of `read_batch`, which must have one entry per request.
pub fn batch_results(result: &Value, expected: usize) -> Result<Vec<Value>, String> {
    let Some(Value::Array(items)) = result.get("results") else {
        return Err("its `read_batch` result has no `results` list".into());
    };
    if items.len() != expected {
        return Err(format!(
            "its `read_batch` result has {} entries for {expected} requests",
            items.len()
        ));
    }
    Ok(items.clone())
}

/// True for the methods that change something at the provider.
pub fn is_mutating(method: &str) -> bool {
    matches!(method, "create" | "update" | "delete")
}
