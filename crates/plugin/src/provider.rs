//! A running, configured plugin as a provider: each trait call becomes one request, each
//! reply an object or a provider error the engine already knows how to treat (retry,
//! journal, not found). Through its `Reader` side only read requests can be sent.

use async_trait::async_trait;
use clusterform_core::ProviderSchema;
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Provider, ProviderError, ReadRequest, Reader, Result,
    UpdateRequest,
};
use serde_json::{Value, json};

use crate::client::{Client, Failure, with_note};
use crate::protocol::{self, Hello, is_mutating};

/// A provider whose calls go to a plugin process.
pub struct PluginProvider {
    client: Client,
    hello: Hello,
}

impl PluginProvider {
    pub(crate) fn new(client: Client, hello: Hello) -> Self {
        PluginProvider { client, hello }
    }

    /// Where the plugin's executable is.
    pub fn path(&self) -> &std::path::Path {
        self.client.path()
    }

    /// The plugin's version.
    pub fn version(&self) -> &str {
        &self.hello.version
    }

    /// Send any request and wait for its result (the conformance check).
    pub async fn raw_call(&self, method: &str, params: Value) -> Result<Value> {
        self.call(method, params).await
    }

    /// Send `cancel` for request `id`.
    pub fn send_cancel(&self, id: u64) {
        self.client.send_cancel(id);
    }

    /// Send `shutdown`, close its stdin and wait for it to exit: `Err` unless it exits
    /// with status 0 within `grace`.
    pub fn shutdown(&self, grace: std::time::Duration) -> std::result::Result<(), String> {
        self.client.shutdown_wait(grace)
    }

    fn failure(&self, method: &str, f: Failure) -> ProviderError {
        match f {
            Failure::Answer(e) => e.into_provider_error(&self.hello.name),
            Failure::Broken(m) if is_mutating(method) => ProviderError::Ambiguous(with_note(
                &m,
                &format!(
                    "; `{method}` was in flight: it stays in the journal and the next run looks up what it made"
                ),
            )),
            Failure::Broken(m) | Failure::NotSent(m) => ProviderError::Permanent(m),
        }
    }

    fn violation(&self, method: &str, what: String) -> ProviderError {
        let m = format!(
            "plugin `{}` broke the protocol in its answer to `{method}`: {what}",
            self.hello.name
        );
        if is_mutating(method) {
            ProviderError::Ambiguous(m)
        } else {
            ProviderError::Permanent(m)
        }
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.client
            .call(method, params)
            .await
            .map_err(|f| self.failure(method, f))
    }

    async fn maybe_object(&self, method: &str, params: Value) -> Result<Option<Object>> {
        let v = self.call(method, params).await?;
        protocol::object_field(&v)
            .map(|o| o.map(protocol::WireObject::into_object))
            .map_err(|w| self.violation(method, w))
    }

    async fn object(&self, method: &str, params: Value) -> Result<Object> {
        self.maybe_object(method, params)
            .await?
            .ok_or_else(|| self.violation(method, "its `object` is null".into()))
    }

    async fn objects(&self, method: &str, params: Value) -> Result<Vec<Object>> {
        let v = self.call(method, params).await?;
        protocol::objects_field(&v)
            .map(|os| {
                os.into_iter()
                    .map(protocol::WireObject::into_object)
                    .collect()
            })
            .map_err(|w| self.violation(method, w))
    }

    async fn batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let params =
            json!({"requests": reqs.iter().map(protocol::read_params).collect::<Vec<_>>()});
        let v = match self.call("read_batch", params).await {
            Ok(v) => v,
            Err(e) => return reqs.iter().map(|_| Err(e.clone())).collect(),
        };
        let entries = match protocol::batch_results(&v, reqs.len()) {
            Ok(e) => e,
            Err(w) => {
                let e = self.violation("read_batch", w);
                return reqs.iter().map(|_| Err(e.clone())).collect();
            }
        };
        entries
            .iter()
            .map(|entry| match protocol::batch_entry(entry) {
                Ok(Ok(o)) => Ok(o.map(protocol::WireObject::into_object)),
                Ok(Err(e)) => Err(e.into_provider_error(&self.hello.name)),
                Err(w) => Err(self.violation("read_batch", w)),
            })
            .collect()
    }
}

#[async_trait]
impl Reader for PluginProvider {
    fn name(&self) -> &str {
        &self.hello.name
    }

    fn schema(&self) -> &ProviderSchema {
        &self.hello.schema
    }

    fn max_batch(&self) -> usize {
        self.hello.max_batch.max(1)
    }

    fn runs_machines(&self) -> bool {
        self.hello.runs_machines
    }

    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        self.maybe_object("read", protocol::read_params(req)).await
    }

    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let mut out = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(self.max_batch()) {
            out.extend(self.batch(chunk).await);
        }
        out
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        self.maybe_object("find_by_key", json!({"kind": kind, "key": key}))
            .await
    }

    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        self.objects("list_cluster", json!({"cluster": cluster}))
            .await
    }

    async fn list_owned(&self) -> Result<Vec<Object>> {
        self.objects("list_owned", json!({})).await
    }
}

#[async_trait]
impl Provider for PluginProvider {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        self.object("create", protocol::create_params(req)).await
    }

    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        self.object("update", protocol::update_params(req)).await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        self.call("delete", protocol::delete_params(req))
            .await
            .map(drop)
    }

    async fn import(&self, kind: &str, id: &str) -> Result<Object> {
        self.object("import", json!({"kind": kind, "id": id})).await
    }

    fn reader(&self) -> &dyn Reader {
        self
    }
}
