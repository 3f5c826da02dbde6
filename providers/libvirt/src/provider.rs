//! [`LibvirtProvider`]: the engine's `Reader` and `Provider` over libvirt. Every libvirt
//! call blocks, so each request runs on a blocking thread; the connection opens on the
//! first call and is shared (libvirt connections are thread-safe).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use clusterform_core::ProviderSchema;
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Provider, ProviderConfig, ProviderError, ReadRequest,
    Reader, Result, UpdateRequest,
};
use virt::connect::Connect;

use crate::config::LibvirtConfig;
use crate::error::LibvirtError;
use crate::ops::Backend;
use crate::schema::{PROVIDER_NAME, schema};

/// How many objects one `read_batch` call takes (one listing answers them all).
pub const MAX_BATCH: usize = 1000;

/// The libvirt provider (name `libvirt`).
pub struct LibvirtProvider {
    backend: Arc<Backend>,
    schema: ProviderSchema,
}

impl std::fmt::Debug for LibvirtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtProvider")
            .field("uri", &self.backend.uri)
            .field("config", &self.backend.config)
            .finish_non_exhaustive()
    }
}

impl LibvirtProvider {
    /// Build the provider from `[provider.libvirt]`; `base_dir` is the cluster file's
    /// folder. Touches neither disk nor libvirt: the connection opens on the first call.
    pub fn from_config(config: &ProviderConfig, base_dir: &Path) -> Result<LibvirtProvider> {
        Ok(LibvirtProvider::new(LibvirtConfig::from_provider_config(
            config, base_dir,
        )?))
    }

    /// Build the provider from parsed settings.
    pub fn new(config: LibvirtConfig) -> LibvirtProvider {
        LibvirtProvider {
            backend: Arc::new(Backend::new(config)),
            schema: schema(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &LibvirtConfig {
        &self.backend.config
    }

    /// The URI it connects to.
    pub fn uri(&self) -> &str {
        &self.backend.uri
    }

    /// The open connection (opened now if it is not yet). Blocking. On libvirt's test
    /// driver the state lives in this connection: tests change objects "outside
    /// clusterform" through it.
    pub fn connection(&self) -> std::result::Result<Connect, LibvirtError> {
        self.backend.conn()
    }

    /// [`Reader::list_owned`] on the calling thread (blocking), for tests and tools;
    /// an empty list when libvirt cannot be reached.
    pub fn list_owned_blocking(&self) -> Vec<Object> {
        self.backend
            .conn()
            .and_then(|c| self.backend.owned(&c, None))
            .unwrap_or_default()
    }

    /// Run `f` with the connection on a blocking thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Backend, &Connect) -> std::result::Result<T, LibvirtError> + Send + 'static,
    {
        let b = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || {
            let conn = b.conn()?;
            f(&b, &conn)
        })
        .await
        .map_err(|e| ProviderError::Ambiguous(format!("a libvirt call did not finish: {e}")))?
        .map_err(|e| match e {
            LibvirtError::Connect { .. } => ProviderError::Config(e.to_string()),
            other => other.into_provider(),
        })
    }
}

fn check_kind(kind: &str) -> Result<()> {
    match kind {
        "network" | "machine" => Ok(()),
        other => Err(ProviderError::Permanent(format!(
            "the libvirt provider has no `{other}` kind (it has `network` and `machine`)"
        ))),
    }
}

#[async_trait]
impl Reader for LibvirtProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn runs_machines(&self) -> bool {
        // libvirt's test driver (`test:///...`) keeps domains in memory and boots nothing.
        !self.backend.uri.starts_with("test:")
    }

    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        let mut out = self.read_batch(std::slice::from_ref(req)).await;
        out.pop().unwrap_or(Ok(None))
    }

    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let keys: Vec<(String, String)> = reqs
            .iter()
            .map(|r| (r.kind.clone(), r.id.clone()))
            .collect();
        let n = keys.len();
        match self.blocking(move |b, c| b.read_many(c, &keys)).await {
            Ok(found) => found.into_iter().map(Ok).collect(),
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        check_kind(kind)?;
        let (kind, key) = (kind.to_string(), key.to_string());
        self.blocking(move |b, c| b.find_by_key(c, &kind, &key))
            .await
    }

    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        let cluster = cluster.to_string();
        let all = self.blocking(|b, c| b.owned(c, None)).await?;
        Ok(all
            .into_iter()
            .filter(|o| o.owner.as_ref().is_some_and(|w| w.cluster == cluster))
            .collect())
    }

    async fn list_owned(&self) -> Result<Vec<Object>> {
        self.blocking(|b, c| b.owned(c, None)).await
    }

    /// The end (64 KiB) of the domain's serial console log, which QEMU writes to the
    /// `console_log` file.
    async fn console(
        &self,
        kind: &str,
        id: &str,
        prior: &clusterform_core::Attrs,
    ) -> Result<Option<String>> {
        if kind != "machine" {
            return Ok(None);
        }
        let req = ReadRequest {
            address: clusterform_core::Address::new("machine", "console"),
            kind: kind.to_string(),
            id: id.to_string(),
            prior: prior.clone(),
        };
        let Some(o) = self.read(&req).await? else {
            return Err(ProviderError::NotFound(id.to_string()));
        };
        let Some(path) = o
            .attrs
            .get("console_log")
            .or_else(|| prior.get("console_log"))
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
        .await;
        match read {
            Ok(Ok(text)) => Ok(Some(text)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(ProviderError::Permanent(format!(
                "cannot read the console log of `{id}`: {e}"
            ))),
            Err(e) => Err(ProviderError::Permanent(format!(
                "reading the console log: {e}"
            ))),
        }
    }
}

#[async_trait]
impl Provider for LibvirtProvider {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        check_kind(&req.kind)?;
        let req = req.clone();
        self.blocking(move |b, c| match req.kind.as_str() {
            "network" => b.create_network(c, &req.attrs, &req.owner),
            _ => b.create_machine(c, &req.attrs, &req.owner),
        })
        .await
    }

    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        check_kind(&req.kind)?;
        let req = req.clone();
        self.blocking(move |b, c| match req.kind.as_str() {
            "network" => b.update_network(c, &req.id, &req.attrs),
            _ => b.update_machine(c, &req.id, &req.attrs, &req.changed),
        })
        .await
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        check_kind(&req.kind)?;
        let req = req.clone();
        self.blocking(move |b, c| match req.kind.as_str() {
            "network" => b.delete_network(c, &req.id),
            _ => b.delete_machine(c, &req.id),
        })
        .await
    }

    async fn import(&self, kind: &str, id: &str) -> Result<Object> {
        check_kind(kind)?;
        let keys = vec![(kind.to_string(), id.to_string())];
        let found = self.blocking(move |b, c| b.read_many(c, &keys)).await?;
        found
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| ProviderError::NotFound(id.to_string()))
    }

    fn reader(&self) -> &dyn Reader {
        self
    }
}
