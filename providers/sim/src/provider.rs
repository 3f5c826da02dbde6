//! [`SimProvider`]: the `Reader` and `Provider` implementation over the sim cloud.
//! Mutations go through the group-committing writer thread; reads use a small pool of
//! read connections on blocking threads. The database opens on the first call.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use clusterform_core::{Address, ProviderSchema};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Provider, ProviderConfig, ProviderError, ReadRequest,
    Reader, Result, UpdateRequest,
};
use rusqlite::Connection;
use tokio::sync::{OnceCell, Semaphore};

use crate::config::{SimConfig, resolve_dir};
use crate::db::{self, SimError};
use crate::faults::Faults;
use crate::live::{self, Live, Tools};
use crate::schema::{PROVIDER_NAME, schema};
use crate::writer::{Done, Job, Writer};

/// How many objects one `read_batch` call takes.
pub const MAX_BATCH: usize = 1000;

/// How many read connections run queries at once.
const READERS: usize = 4;

/// Read connections, reused; at most [`READERS`] in use at a time.
struct ReadPool {
    dir: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    /// Run `f` on a read connection on a blocking thread.
    async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> std::result::Result<T, SimError> + Send + 'static,
    {
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                ProviderError::Permanent("the sim reader pool is closed".to_string())
            })?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = match pool.lock().pop() {
                Some(c) => c,
                None => db::open(&pool.dir)?,
            };
            let out = f(&conn);
            pool.lock().push(conn);
            out
        })
        .await
        .map_err(|e| ProviderError::Permanent(format!("sim read failed: {e}")))?
        .map_err(SimError::into_provider)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The open database: the writer thread and the read pool.
struct Backend {
    writer: Writer,
    readers: Arc<ReadPool>,
}

impl Backend {
    fn open(
        dir: &Path,
        schema: ProviderSchema,
        live: Option<&Tools>,
    ) -> std::result::Result<Backend, SimError> {
        db::create_dir(dir)?;
        let conn = db::open(dir)?;
        let live = live
            .map(|t| Live::new(dir, Some(t)))
            .transpose()
            .map_err(SimError::Live)?;
        Ok(Backend {
            writer: Writer::start(conn, schema, live)?,
            readers: Arc::new(ReadPool {
                dir: dir.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(READERS),
            }),
        })
    }

    async fn count(&self, method: &'static str) -> Result<()> {
        self.writer.submit(Job::Count(method)).await.map(|_| ())
    }
}

/// The simulated cloud as a clusterform provider (name `sim`).
pub struct SimProvider {
    config: SimConfig,
    dir: PathBuf,
    schema: ProviderSchema,
    faults: Faults,
    /// `ip` and etcd, in live mode.
    live: Option<Tools>,
    backend: OnceCell<Backend>,
}

impl SimProvider {
    /// True for a machine of `boot_fail_on`.
    fn boots_badly(&self, address: &Address) -> bool {
        address.kind == "machine"
            && self
                .config
                .boot_fail_on
                .iter()
                .any(|a| a.parse::<Address>().is_ok_and(|b| b == *address))
    }
}

impl std::fmt::Debug for SimProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimProvider")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SimProvider {
    /// Build the provider from `[provider.sim]` settings; `base_dir` is the cluster
    /// file's folder (a relative `dir` is relative to it). Writes nothing: the
    /// database opens (and is created) on the first call. In live mode it checks for
    /// root, `ip` and etcd first (see [`SimProvider::new`]).
    pub fn from_config(config: &ProviderConfig, base_dir: &Path) -> Result<SimProvider> {
        SimProvider::new(SimConfig::from_provider_config(config)?, base_dir)
    }

    /// Build the provider from parsed settings (checked like [`SimProvider::from_config`]).
    /// In live mode it also checks that this process runs as root and finds `ip` and
    /// etcd, failing with what to do when one is missing.
    pub fn new(config: SimConfig, base_dir: &Path) -> Result<SimProvider> {
        config.check()?;
        let dir = resolve_dir(config.dir.as_deref(), base_dir)?;
        let live = if config.live {
            Some(live::preflight(&config, base_dir)?)
        } else {
            None
        };
        Ok(SimProvider {
            live,
            faults: Faults::new(&config),
            config,
            dir,
            schema: schema(),
            backend: OnceCell::new(),
        })
    }

    /// The folder holding the cloud.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in use.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// True in live mode: the machines it makes really run the etcd member or proxy of
    /// their configs, so that what they run (etcd) can be reached.
    pub fn runs_machines(&self) -> bool {
        self.config.live
    }

    async fn backend(&self) -> Result<&Backend> {
        self.backend
            .get_or_try_init(|| async {
                let dir = self.dir.clone();
                let schema = self.schema.clone();
                let live = self.live.clone();
                tokio::task::spawn_blocking(move || Backend::open(&dir, schema, live.as_ref()))
                    .await
                    .map_err(|e| {
                        ProviderError::Permanent(format!("cannot open the sim cloud: {e}"))
                    })?
                    .map_err(|e| match e.into_provider() {
                        ProviderError::Permanent(m) => ProviderError::Permanent(format!(
                            "cannot open the sim cloud at `{}`: {m}",
                            self.dir.display()
                        )),
                        other => other,
                    })
            })
            .await
    }

    /// The request leg of the latency, then rate limit, random failure and `fail_on`; a
    /// call that fails there is still counted. Returns the open database and when the
    /// response is due, to sleep until after the work.
    async fn enter(
        &self,
        method: &'static str,
        address: Option<&Address>,
    ) -> Result<(&Backend, tokio::time::Instant)> {
        let response_leg = self.faults.request_leg().await;
        if let Err(e) = self.faults.check(address) {
            if let Ok(b) = self.backend().await {
                // Best effort: the injected error is what the caller must see.
                let _ = b.count(method).await;
            }
            sleep_leg(response_leg).await;
            return Err(e);
        }
        Ok((self.backend().await?, response_leg))
    }

    /// Count a read call and run its query, both at once.
    async fn read_op<T, F>(&self, method: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> std::result::Result<T, SimError> + Send + 'static,
    {
        let (b, response_leg) = self.enter(method, None).await?;
        let (counted, out) = tokio::join!(b.count(method), b.readers.with(f));
        sleep_leg(response_leg).await;
        counted?;
        out
    }

    async fn write(&self, address: Option<&Address>, job: Job) -> Result<Done> {
        let method = match &job {
            Job::Create(_) => "create",
            Job::Update(_) => "update",
            Job::Delete(_) => "delete",
            Job::Count(m) => m,
        };
        let (b, response_leg) = self.enter(method, address).await?;
        let done = b.writer.submit(job).await;
        sleep_leg(response_leg).await;
        done
    }
}

async fn sleep_leg(due: tokio::time::Instant) {
    tokio::time::sleep_until(due).await;
}

fn expect_object(d: Done) -> Result<Object> {
    match d {
        Done::Object(o) => Ok(*o),
        Done::Nothing => Err(ProviderError::Ambiguous(
            "the sim writer returned no object".to_string(),
        )),
    }
}

#[async_trait]
impl Reader for SimProvider {
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
        SimProvider::runs_machines(self)
    }

    async fn read(&self, req: &ReadRequest) -> Result<Option<Object>> {
        let (id, kind) = (req.id.clone(), req.kind.clone());
        let found = self.read_op("read", move |c| db::get(c, &id)).await?;
        Ok(found.filter(|o| o.kind == kind))
    }

    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<Result<Option<Object>>> {
        let ids: Vec<String> = reqs.iter().map(|r| r.id.clone()).collect();
        let found = self
            .read_op("read_batch", move |c| {
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                db::get_many(c, &refs)
            })
            .await;
        match found {
            Ok(found) => reqs
                .iter()
                .map(|r| Ok(found.get(&r.id).filter(|o| o.kind == r.kind).cloned()))
                .collect(),
            Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Object>> {
        let (key, kind) = (key.to_string(), kind.to_string());
        let found = self
            .read_op("find_by_key", move |c| db::by_op(c, &key))
            .await?;
        Ok(found.filter(|o| o.kind == kind))
    }

    async fn list_cluster(&self, cluster: &str) -> Result<Vec<Object>> {
        let cluster = cluster.to_string();
        self.read_op("list_cluster", move |c| db::list(c, Some(&cluster)))
            .await
    }

    async fn list_owned(&self) -> Result<Vec<Object>> {
        let all = self.read_op("list_owned", |c| db::list(c, None)).await?;
        Ok(all.into_iter().filter(|o| o.owner.is_some()).collect())
    }

    /// The sim's boot log of a machine: made up from what it was given (the sim boots
    /// nothing; in live mode its members' logs are in their data folders); Ignition
    /// fails in the log of a machine of `boot_fail_on`.
    async fn console(
        &self,
        kind: &str,
        id: &str,
        _prior: &clusterform_core::Attrs,
    ) -> Result<Option<String>> {
        let id_owned = id.to_string();
        let Some(o) = self
            .read_op("console", move |c| db::get(c, &id_owned))
            .await?
        else {
            return Err(ProviderError::NotFound(id.to_string()));
        };
        if o.kind != kind || kind != "machine" {
            return Ok(None);
        }
        if o.owner
            .as_ref()
            .is_some_and(|w| self.boots_badly(&w.address))
        {
            let bytes = o
                .attrs
                .get("user_data")
                .and_then(|v| v.as_str())
                .map_or(0, str::len);
            return Ok(Some(format!(
                "[    0.000000] clusterform sim: simulated boot of {id} (nothing runs)\n\
                 [    1.204512] ignition[512]: fetched the user config: {bytes} bytes\n\
                 [    1.377310] ignition[512]: files: op(1): [failed] writing the config's files: injected by `boot_fail_on`\n\
                 [    1.377402] systemd[1]: ignition-files.service: Failed with result 'exit-code'.\n\
                 [    1.391112] systemd[1]: Reached target emergency.target - Emergency Mode.\n\
                 Ignition has failed. Please ensure your config is valid.\n"
            )));
        }
        let text = |k: &str| {
            o.attrs
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("-")
                .to_string()
        };
        let user_data = o
            .attrs
            .get("user_data")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        Ok(Some(format!(
            "[    0.000000] clusterform sim: simulated boot of {id} (nothing runs)\n\
             [    0.000000] Linux version 6.6 (Flatcar Container Linux, channel {})\n\
             [    1.204512] ignition[512]: fetched the user config: {} bytes\n\
             [    1.377310] ignition[512]: files: op(1): [finished] writing the config's files\n\
             [    3.019281] systemd[1]: Reached target multi-user.target\n\
             \n{} login: \n",
            text("channel"),
            user_data.len(),
            text("name"),
        )))
    }
}

#[async_trait]
impl Provider for SimProvider {
    async fn create(&self, req: &CreateRequest) -> Result<Object> {
        let done = self
            .write(Some(&req.owner.address), Job::Create(req.clone()))
            .await?;
        let made = expect_object(done)?;
        if self.boots_badly(&req.owner.address) {
            return Err(ProviderError::Ambiguous(format!(
                "machine `{}` was made but did not come up within the wait (injected by `boot_fail_on`)",
                made.id
            )));
        }
        Ok(made)
    }

    async fn update(&self, req: &UpdateRequest) -> Result<Object> {
        let done = self
            .write(Some(&req.address), Job::Update(req.clone()))
            .await?;
        expect_object(done)
    }

    async fn delete(&self, req: &DeleteRequest) -> Result<()> {
        self.write(Some(&req.address), Job::Delete(req.clone()))
            .await
            .map(|_| ())
    }

    async fn import(&self, kind: &str, id: &str) -> Result<Object> {
        let (id, kind) = (id.to_string(), kind.to_string());
        let id2 = id.clone();
        let found = self.read_op("import", move |c| db::get(c, &id2)).await?;
        found
            .filter(|o| o.kind == kind)
            .ok_or(ProviderError::NotFound(id))
    }

    fn reader(&self) -> &dyn Reader {
        self
    }
}
