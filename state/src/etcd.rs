//! [`EtcdStore`]: the state in etcd under a key prefix, for teams: one key per record,
//! journal entry, secret and history entry, a `meta` key holding lineage and serial, and
//! the lock as a key attached to a lease that a background thread keeps alive.
//!
//! Keys under the prefix `P` (`/clusterform/<cluster>`):
//!
//! | key | value |
//! |---|---|
//! | `P/meta` | JSON: format version, lineage, serial, cluster, id of the last commit, a pending batch |
//! | `P/resources/<address>` | JSON of the record |
//! | `P/journal/<op id>` | JSON of the journal entry |
//! | `P/secrets/<name>` | the sealed value |
//! | `P/history/<serial, 20 digits>` | JSON: the entry and the undo log |
//! | `P/batch/<commit id>/<n>` | a part of a commit too large for one transaction |
//! | `P/lock` | JSON of the holder, attached to its lease |
//!
//! Every commit is one transaction that compares `P/meta`'s revision with the one it
//! read (and, while this store holds the lock, that the lock key is still its own), so
//! two writers that race never lose an update: the second one reads again and retries.
//! A commit larger than a transaction may carry (more than 100 operations or 1 MiB; etcd
//! refuses 128 operations or 1.5 MiB) is written as a gzip'd batch in 1 MiB parts first,
//! then made visible by the one transaction that sets the new serial and names the batch
//! in `P/meta`; readers overlay a named batch until it is folded into the keys (by the
//! writer, or by the next writer when the first died in between). Loads read every key
//! at one revision: a consistent snapshot without the lock.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use clusterform_core::{Address, ResourceState};
use clusterform_etcd::kv::prefix_end;
use clusterform_etcd::{Compare, EtcdError, KeyValue, KvClient, Op};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    ClusterIdentity, Export, HistoryEntry, JournalEntry, LockGuard, LockInfo, Mutation, Snapshot,
    StateError, StateStore,
};

/// The newest format this build reads and the one it writes.
const FORMAT_VERSION: u32 = 1;
/// How many history entries (newest) a commit keeps.
const HISTORY_KEEP: u64 = 50;
/// Operations per transaction (etcd's `--max-txn-ops` default is 128; a commit adds its
/// meta, history and pruning operations).
const MAX_OPS: usize = 100;
/// Bytes per transaction (etcd's `--max-request-bytes` default is 1.5 MiB).
const MAX_BYTES: usize = 1 << 20;
/// An undo log larger than this is not kept with its history entry.
const MAX_UNDO_BYTES: usize = 512 << 10;
/// Keys per page of a range read.
const PAGE: u64 = 2000;
/// Attempts of a commit that meets another writer's commit.
const COMMIT_ATTEMPTS: u32 = 20;
/// How often a waiting `lock` tries again.
const LOCK_POLL: Duration = Duration::from_millis(250);
/// The lease TTL of the lock when the settings name none.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);

/// What `P/meta` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    format_version: u32,
    lineage: Option<String>,
    serial: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<ClusterIdentity>,
    /// The id of the commit that wrote this meta: a writer whose answer was lost reads
    /// it back to learn whether its commit happened.
    #[serde(default)]
    commit: String,
    /// A committed batch not yet folded into the keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// A committed batch: `P/batch/<id>/<0..parts>`, whose concatenation has this SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    id: String,
    parts: u32,
    sha256: String,
}

/// One write of a batch (keys relative to the prefix, values UTF-8).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum BatchOp {
    Put(String, String),
    Delete(String),
    DeleteRange(String, String),
}

/// One history row: the entry and the value every record it changed had before
/// (the local store's shape, so `migrate` copies rows as they are).
#[derive(Serialize, Deserialize)]
struct HistoryRecord {
    entry: HistoryEntry,
    previous: BTreeMap<String, Option<ResourceState>>,
    /// The undo log was larger than a key should be and was not kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    undo_dropped: bool,
}

#[derive(Deserialize)]
struct HistoryHead {
    entry: HistoryEntry,
}

/// The state in etcd under one prefix.
pub struct EtcdStore {
    kv: Arc<KvClient>,
    prefix: String,
    name: String,
    lock_ttl: Duration,
    /// The create revision of the lock key while this store holds the lock: every commit
    /// then also checks that the lock is still its own.
    held: Arc<Mutex<Option<u64>>>,
    calls: Mutex<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a commit's writing did.
enum Written {
    Done(u64),
    /// `P/meta` changed since it was read: read again and retry.
    Conflict,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl EtcdStore {
    /// The store under `prefix` (`/clusterform/demo`; a trailing `/` is ignored) of the
    /// etcd `kv` talks to, with a lock lease of `lock_ttl`. Nothing is dialled yet.
    pub fn new(kv: KvClient, prefix: &str, lock_ttl: Duration) -> EtcdStore {
        let prefix = prefix.trim_end_matches('/').to_string();
        let hosts: Vec<&str> = kv
            .endpoints()
            .iter()
            .map(|e| {
                e.trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .trim_end_matches('/')
            })
            .collect();
        let name = format!("etcd://{}{}", hosts.join(","), prefix);
        EtcdStore {
            kv: Arc::new(kv),
            prefix,
            name,
            lock_ttl: lock_ttl.max(Duration::from_secs(2)),
            held: Arc::default(),
            calls: Mutex::new(()),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rel: &str) -> Vec<u8> {
        format!("{}/{rel}", self.prefix).into_bytes()
    }

    fn rel<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
    }

    fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<String, StateError> {
        serde_json::to_string(value).map_err(|e| StateError::Database {
            path: self.name.clone(),
            detail: format!("encoding {what}: {e}"),
        })
    }

    fn corrupt(&self, detail: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: self.name.clone(),
            detail: detail.into(),
        }
    }

    fn etcd_err(&self, what: &str, e: EtcdError) -> StateError {
        let hint = match &e {
            EtcdError::Unreachable { .. } => {
                "; check `[state] endpoints` and that etcd runs there (nothing was changed by this call)"
            }
            EtcdError::Api { code: 14, .. } => {
                "; the etcd cluster has no leader (too few members running?)"
            }
            EtcdError::Api { code: 16 | 7, .. } => {
                "; check CLUSTERFORM_ETCD_USER / CLUSTERFORM_ETCD_PASSWORD and the user's role on the prefix"
            }
            _ => "",
        };
        StateError::Database {
            path: self.name.clone(),
            detail: format!("{what}: {e}{hint}"),
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, ()> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `P/meta` at the newest revision: (meta, its mod revision (0: absent), the read's
    /// revision).
    fn read_meta(&self) -> Result<(Meta, u64, u64), StateError> {
        let r = self
            .kv
            .range(&self.key("meta"), None, 0, 0)
            .map_err(|e| self.etcd_err("reading the state", e))?;
        match r.kvs.first() {
            None => Ok((Meta::default(), 0, r.revision)),
            Some(kv) => Ok((self.parse_meta(kv)?, kv.mod_revision, r.revision)),
        }
    }

    fn parse_meta(&self, kv: &KeyValue) -> Result<Meta, StateError> {
        let meta: Meta = serde_json::from_slice(&kv.value)
            .map_err(|e| self.corrupt(format!("key `{}/meta`: {e}", self.prefix)))?;
        if meta.format_version > FORMAT_VERSION {
            return Err(StateError::Version {
                path: self.name.clone(),
                found: meta.format_version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(meta)
    }

    /// Every key under `P/<section>/` at `revision`, as (name, value).
    fn read_section(
        &self,
        section: &str,
        revision: u64,
    ) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let prefix = self.key(&format!("{section}/"));
        let r = self
            .kv
            .range_prefix(&prefix, revision, PAGE)
            .map_err(|e| self.etcd_err(&format!("reading `{section}`"), e))?;
        r.kvs
            .into_iter()
            .map(|kv| {
                let name = kv
                    .key
                    .get(prefix.len()..)
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or_else(|| self.corrupt(format!("a key under `{section}/` is not UTF-8")))?
                    .to_string();
                Ok((name, kv.value))
            })
            .collect()
    }

    /// The writes of the batch `pending`, read at `revision` and checked.
    fn read_batch(&self, pending: &Pending, revision: u64) -> Result<Vec<BatchOp>, StateError> {
        let parts = self.read_section(&format!("batch/{}", pending.id), revision)?;
        if parts.len() != pending.parts as usize {
            return Err(self.corrupt(format!(
                "the commit batch `{}` has {} of its {} parts",
                pending.id,
                parts.len(),
                pending.parts
            )));
        }
        let mut joined = Vec::new();
        for (_, bytes) in parts {
            joined.extend_from_slice(&bytes);
        }
        if hex(&Sha256::digest(&joined)) != pending.sha256 {
            return Err(self.corrupt(format!(
                "the commit batch `{}` does not match its checksum",
                pending.id
            )));
        }
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(joined.as_slice())
            .read_to_end(&mut json)
            .map_err(|e| self.corrupt(format!("the commit batch `{}`: {e}", pending.id)))?;
        serde_json::from_slice(&json)
            .map_err(|e| self.corrupt(format!("the commit batch `{}`: {e}", pending.id)))
    }

    /// Reads the whole store at one revision: meta, the sections (`resources`,
    /// `journal`, `secrets`, and `history` when `with_history`), the pending batch laid
    /// over them. Retries when the revision was compacted away meanwhile.
    #[allow(clippy::type_complexity)]
    fn read_all(
        &self,
        with_history: bool,
    ) -> Result<(Meta, BTreeMap<String, BTreeMap<String, Vec<u8>>>), StateError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.read_all_once(with_history) {
                Err(StateError::Database { detail, .. })
                    if detail.contains("compacted") && attempt < 5 => {}
                other => return other,
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn read_all_once(
        &self,
        with_history: bool,
    ) -> Result<(Meta, BTreeMap<String, BTreeMap<String, Vec<u8>>>), StateError> {
        let (meta, _, revision) = self.read_meta()?;
        let mut sections: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
        let mut names = vec!["resources", "journal", "secrets"];
        if with_history {
            names.push("history");
        }
        for section in names {
            let entries = self.read_section(section, revision)?;
            sections.insert(section.to_string(), entries.into_iter().collect());
        }
        if let Some(pending) = &meta.pending {
            for op in self.read_batch(pending, revision)? {
                overlay(&mut sections, op);
            }
        }
        Ok((meta, sections))
    }

    /// The operations of `mutations` on top of `meta`: (batch writes, new meta, the
    /// addresses whose records change).
    fn prepare(
        &self,
        meta: &Meta,
        mutations: &[Mutation],
        commit: &str,
    ) -> Result<(Vec<BatchOp>, Meta, Vec<Address>), StateError> {
        let mut next = meta.clone();
        next.format_version = FORMAT_VERSION;
        next.commit = commit.to_string();
        if next.lineage.is_none() {
            next.lineage = Some(uuid::Uuid::new_v4().to_string());
        }
        let mut ops = Vec::new();
        let mut touched: Vec<Address> = Vec::new();
        for m in mutations {
            match m {
                Mutation::Put(record) => {
                    let json =
                        self.encode(&format!("the record of `{}`", record.address), record)?;
                    if json.len() > MAX_BYTES - 1024 {
                        return Err(StateError::Database {
                            path: self.name.clone(),
                            detail: format!(
                                "the record of `{}` is {} bytes, more than one etcd key may hold here ({} bytes); keep it in a local state",
                                record.address,
                                json.len(),
                                MAX_BYTES - 1024
                            ),
                        });
                    }
                    ops.push(BatchOp::Put(format!("resources/{}", record.address), json));
                    touched.push(record.address.clone());
                }
                Mutation::Remove(address) => {
                    ops.push(BatchOp::Delete(format!("resources/{address}")));
                    touched.push(address.clone());
                }
                Mutation::JournalOpen(entry) => {
                    let json = self.encode(&format!("journal entry `{}`", entry.op_id), entry)?;
                    ops.push(BatchOp::Put(format!("journal/{}", entry.op_id), json));
                }
                Mutation::JournalClose(op_id) => {
                    ops.push(BatchOp::Delete(format!("journal/{op_id}")));
                }
                Mutation::SetIdentity(identity) => next.identity = Some(identity.clone()),
                Mutation::SetSecret { name, value } => {
                    ops.push(BatchOp::Put(format!("secrets/{name}"), value.clone()));
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        touched.retain(|a| seen.insert(a.clone()));
        if !touched.is_empty() {
            next.serial = meta.serial + 1;
        }
        Ok((ops, next, touched))
    }

    /// The history row of commit `serial`, with the previous values of `touched` as
    /// they were at `previous`.
    fn history_op(
        &self,
        serial: u64,
        touched: &[Address],
        previous: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<BatchOp>, StateError> {
        let mut undo = BTreeMap::new();
        for a in touched {
            let key = a.to_string();
            let old = match previous.get(&key) {
                Some(bytes) => Some(
                    serde_json::from_slice::<ResourceState>(bytes)
                        .map_err(|e| self.corrupt(format!("key `resources/{key}`: {e}")))?,
                ),
                None => None,
            };
            undo.insert(key, old);
        }
        let mut row = HistoryRecord {
            entry: HistoryEntry {
                serial,
                committed_at: now_rfc3339(),
                changed: touched.to_vec(),
            },
            previous: undo,
            undo_dropped: false,
        };
        let mut json = serde_json::to_string(&row).map_err(|e| self.corrupt(e.to_string()))?;
        if json.len() > MAX_UNDO_BYTES {
            row.previous.clear();
            row.undo_dropped = true;
            json = serde_json::to_string(&row).map_err(|e| self.corrupt(e.to_string()))?;
        }
        let mut ops = vec![BatchOp::Put(format!("history/{serial:020}"), json)];
        if serial > HISTORY_KEEP {
            ops.push(BatchOp::DeleteRange(
                format!("history/{:020}", 0),
                format!("history/{:020}", serial - HISTORY_KEEP + 1),
            ));
        }
        Ok(ops)
    }

    fn to_op(&self, op: &BatchOp) -> Op {
        match op {
            BatchOp::Put(k, v) => Op::Put {
                key: self.key(k),
                value: v.clone().into_bytes(),
                lease: 0,
            },
            BatchOp::Delete(k) => Op::Delete {
                key: self.key(k),
                range_end: None,
            },
            BatchOp::DeleteRange(from, to) => Op::Delete {
                key: self.key(from),
                range_end: Some(self.key(to)),
            },
        }
    }

    /// The conditions of a commit on top of `P/meta` at `meta_rev`: meta unchanged, and
    /// the lock still ours while we hold it.
    fn guards(&self, meta_rev: u64) -> Vec<Compare> {
        let mut c = vec![Compare::ModRevision(self.key("meta"), meta_rev)];
        if let Some(rev) = *self.held.lock().unwrap_or_else(PoisonError::into_inner) {
            c.push(Compare::CreateRevision(self.key("lock"), rev));
        }
        c
    }

    /// After a failed guarded transaction: a lost lock is an error; otherwise meta
    /// changed (a conflict to retry).
    fn check_lock(&self) -> Result<(), StateError> {
        let Some(rev) = *self.held.lock().unwrap_or_else(PoisonError::into_inner) else {
            return Ok(());
        };
        let r = self
            .kv
            .range(&self.key("lock"), None, 0, 0)
            .map_err(|e| self.etcd_err("reading the lock", e))?;
        if r.kvs.first().map(|kv| kv.create_revision) != Some(rev) {
            return Err(StateError::Database {
                path: self.name.clone(),
                detail: "this run's state lock was lost (its lease expired: etcd was not reachable for longer than the lock's TTL, or someone ran force-unlock); nothing more was written. Run the command again: it resolves what this run left unfinished".into(),
            });
        }
        Ok(())
    }

    /// The previous values of `touched` records, read in one transaction guarded by
    /// meta's revision (`None`: meta changed meanwhile).
    fn previous_values(
        &self,
        touched: &[Address],
        meta: &Meta,
        meta_rev: u64,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, StateError> {
        if touched.is_empty() {
            return Ok(Some(BTreeMap::new()));
        }
        if touched.len() > MAX_OPS || meta.pending.is_some() {
            let (m, sections) = self.read_all(false)?;
            if m.commit != meta.commit {
                return Ok(None);
            }
            return Ok(Some(sections.get("resources").cloned().unwrap_or_default()));
        }
        let gets: Vec<Op> = touched
            .iter()
            .map(|a| Op::Get(self.key(&format!("resources/{a}"))))
            .collect();
        let t = self
            .kv
            .txn(
                &[Compare::ModRevision(self.key("meta"), meta_rev)],
                &gets,
                &[],
            )
            .map_err(|e| self.etcd_err("reading the records a commit changes", e))?;
        if !t.succeeded {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for (a, kvs) in touched.iter().zip(t.reads) {
            if let Some(kv) = kvs.into_iter().next() {
                out.insert(a.to_string(), kv.value);
            }
        }
        Ok(Some(out))
    }

    /// Writes `ops` and `next` as one transaction, or as a batch when they do not fit.
    fn write(&self, ops: Vec<BatchOp>, next: &Meta, meta_rev: u64) -> Result<Written, StateError> {
        let size: usize = ops.iter().map(|o| self.to_op(o).size()).sum();
        if ops.len() < MAX_OPS && size < MAX_BYTES {
            let mut success: Vec<Op> = ops.iter().map(|o| self.to_op(o)).collect();
            success.push(self.meta_op(next)?);
            let t = self
                .kv
                .txn(&self.guards(meta_rev), &success, &[])
                .map_err(|e| self.etcd_err("committing", e))?;
            if !t.succeeded {
                self.check_lock()?;
                return Ok(Written::Conflict);
            }
            return Ok(Written::Done(next.serial));
        }
        // Too large for one transaction: the batch's parts first (invisible until meta
        // names them), then the commit.
        let json = serde_json::to_vec(&ops).map_err(|e| self.corrupt(e.to_string()))?;
        let packed = gzip(&json);
        let id = next.commit.clone();
        let chunk = MAX_BYTES - 4096;
        let parts: Vec<&[u8]> = packed.chunks(chunk).collect();
        for (i, part) in parts.iter().enumerate() {
            let put = Op::Put {
                key: self.key(&format!("batch/{id}/{i:06}")),
                value: part.to_vec(),
                lease: 0,
            };
            self.kv
                .txn(&[], &[put], &[])
                .map_err(|e| self.etcd_err("writing a part of a large commit", e))?;
        }
        let mut with_batch = next.clone();
        with_batch.pending = Some(Pending {
            id: id.clone(),
            parts: u32::try_from(parts.len()).unwrap_or(u32::MAX),
            sha256: hex(&Sha256::digest(&packed)),
        });
        let t = self
            .kv
            .txn(&self.guards(meta_rev), &[self.meta_op(&with_batch)?], &[])
            .map_err(|e| self.etcd_err("committing", e))?;
        if !t.succeeded {
            // Not committed: the parts are garbage.
            let prefix = self.key(&format!("batch/{id}/"));
            let end = prefix_end(&prefix);
            let _ = self.kv.txn(
                &[],
                &[Op::Delete {
                    key: prefix,
                    range_end: Some(end),
                }],
                &[],
            );
            self.check_lock()?;
            return Ok(Written::Conflict);
        }
        // Committed. Folding is tidying: a failure leaves the batch for the next writer.
        if let Err(e) = self.fold(&with_batch, t.revision) {
            tracing::warn!("folding a committed batch into the state's keys: {e}");
        }
        Ok(Written::Done(next.serial))
    }

    fn meta_op(&self, meta: &Meta) -> Result<Op, StateError> {
        Ok(Op::Put {
            key: self.key("meta"),
            value: serde_json::to_vec(meta).map_err(|e| self.corrupt(e.to_string()))?,
            lease: 0,
        })
    }

    /// Folds the batch `meta` names into the keys, each transaction guarded by meta's
    /// revision `meta_rev`, then clears it from meta and deletes every batch part.
    fn fold(&self, meta: &Meta, meta_rev: u64) -> Result<(), StateError> {
        let Some(pending) = &meta.pending else {
            return Ok(());
        };
        let ops = self.read_batch(pending, 0)?;
        let guard = self.guards(meta_rev);
        let mut group: Vec<Op> = Vec::new();
        let mut size = 0;
        let flush = |group: &mut Vec<Op>| -> Result<bool, StateError> {
            if group.is_empty() {
                return Ok(true);
            }
            let t = self
                .kv
                .txn(&guard, group, &[])
                .map_err(|e| self.etcd_err("folding a large commit", e))?;
            group.clear();
            Ok(t.succeeded)
        };
        for op in &ops {
            let op = self.to_op(op);
            if group.len() + 1 > MAX_OPS || size + op.size() > MAX_BYTES {
                if !flush(&mut group)? {
                    return Ok(());
                }
                size = 0;
            }
            size += op.size();
            group.push(op);
        }
        if !flush(&mut group)? {
            return Ok(());
        }
        let mut done = meta.clone();
        done.pending = None;
        let prefix = self.key("batch/");
        let end = prefix_end(&prefix);
        self.kv
            .txn(
                &guard,
                &[
                    self.meta_op(&done)?,
                    Op::Delete {
                        key: prefix,
                        range_end: Some(end),
                    },
                ],
                &[],
            )
            .map_err(|e| self.etcd_err("finishing a large commit", e))?;
        Ok(())
    }

    fn commit_locked(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        let commit = uuid::Uuid::new_v4().to_string();
        for _ in 0..COMMIT_ATTEMPTS {
            let (meta, meta_rev, _) = self.read_meta()?;
            if meta.commit == commit {
                // Our earlier attempt went through, its answer was lost.
                return Ok(meta.serial);
            }
            if meta.pending.is_some() {
                self.fold(&meta, meta_rev)?;
                continue;
            }
            let (mut ops, next, touched) = self.prepare(&meta, mutations, &commit)?;
            if !touched.is_empty() {
                let Some(previous) = self.previous_values(&touched, &meta, meta_rev)? else {
                    continue;
                };
                ops.extend(self.history_op(next.serial, &touched, &previous)?);
            }
            match self.write(ops, &next, meta_rev) {
                Ok(Written::Done(serial)) => return Ok(serial),
                Ok(Written::Conflict) => continue,
                Err(e) => {
                    // The answer may have been lost after etcd applied it.
                    if let Ok((m, _, _)) = self.read_meta()
                        && m.commit == commit
                    {
                        return Ok(m.serial);
                    }
                    return Err(e);
                }
            }
        }
        Err(StateError::Database {
            path: self.name.clone(),
            detail: format!(
                "the state kept changing under this commit ({COMMIT_ATTEMPTS} attempts): is another writer running without the lock?"
            ),
        })
    }

    fn holder_of(&self, kv: &KeyValue) -> LockInfo {
        serde_json::from_slice(&kv.value).unwrap_or_else(|_| LockInfo {
            id: String::new(),
            operation: "unknown (the lock key does not say)".into(),
            user: "unknown".into(),
            host: "unknown".into(),
            pid: 0,
            started_at: String::new(),
            expires_at: String::new(),
        })
    }
}

/// Lays one batch write over the sections read.
fn overlay(sections: &mut BTreeMap<String, BTreeMap<String, Vec<u8>>>, op: BatchOp) {
    let split = |k: &str| -> Option<(String, String)> {
        let (s, n) = k.split_once('/')?;
        Some((s.to_string(), n.to_string()))
    };
    match op {
        BatchOp::Put(k, v) => {
            if let Some((s, n)) = split(&k)
                && let Some(section) = sections.get_mut(&s)
            {
                section.insert(n, v.into_bytes());
            }
        }
        BatchOp::Delete(k) => {
            if let Some((s, n)) = split(&k)
                && let Some(section) = sections.get_mut(&s)
            {
                section.remove(&n);
            }
        }
        BatchOp::DeleteRange(from, to) => {
            if let (Some((s, a)), Some((_, b))) = (split(&from), split(&to))
                && let Some(section) = sections.get_mut(&s)
            {
                section.retain(|n, _| !(n.as_str() >= a.as_str() && n.as_str() < b.as_str()));
            }
        }
    }
}

impl EtcdStore {
    fn snapshot_of(
        &self,
        meta: Meta,
        mut sections: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    ) -> Result<Snapshot, StateError> {
        let mut snapshot = Snapshot {
            lineage: meta.lineage,
            serial: meta.serial,
            identity: meta.identity,
            ..Snapshot::default()
        };
        for (key, bytes) in sections.remove("resources").unwrap_or_default() {
            let record: ResourceState = serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(format!("key `resources/{key}`: {e}")))?;
            let address: Address = key
                .parse()
                .map_err(|e| self.corrupt(format!("key `resources/{key}`: {e}")))?;
            if record.address != address {
                return Err(self.corrupt(format!(
                    "key `resources/{key}`: holds the record of `{}`",
                    record.address
                )));
            }
            snapshot.resources.insert(address, record);
        }
        for (key, bytes) in sections.remove("journal").unwrap_or_default() {
            let entry: JournalEntry = serde_json::from_slice(&bytes)
                .map_err(|e| self.corrupt(format!("key `journal/{key}`: {e}")))?;
            snapshot.journal.push(entry);
        }
        for (key, bytes) in sections.remove("secrets").unwrap_or_default() {
            let value = String::from_utf8(bytes)
                .map_err(|e| self.corrupt(format!("key `secrets/{key}`: {e}")))?;
            snapshot.secrets.insert(key, value);
        }
        Ok(snapshot)
    }
}

impl StateStore for EtcdStore {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        let _calls = self.calls();
        let (meta, sections) = self.read_all(false)?;
        self.snapshot_of(meta, sections)
    }

    fn load_secrets(&self) -> Result<Snapshot, StateError> {
        let _calls = self.calls();
        let (meta, _, revision) = self.read_meta()?;
        let mut sections = BTreeMap::new();
        sections.insert(
            "secrets".to_string(),
            self.read_section("secrets", revision)?
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
        );
        if let Some(pending) = &meta.pending {
            for op in self.read_batch(pending, revision)? {
                overlay(&mut sections, op);
            }
        }
        self.snapshot_of(meta, sections)
    }

    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        let _calls = self.calls();
        if mutations.is_empty() {
            return Ok(self.read_meta()?.0.serial);
        }
        self.commit_locked(mutations)
    }

    fn lock(&self, operation: &str, wait: Duration) -> Result<Box<dyn LockGuard>, StateError> {
        let mut info = crate::lock::new_info(operation);
        info.expires_at = format!(
            "{} s after its holder stops renewing it",
            self.lock_ttl.as_secs()
        );
        let value = serde_json::to_vec(&info).map_err(|e| self.corrupt(e.to_string()))?;
        let grant = || {
            self.kv
                .lease_grant(self.lock_ttl)
                .map_err(|e| self.etcd_err("taking the lock (granting its lease)", e))
        };
        let mut lease = grant()?;
        let mut granted = Instant::now();
        let key = self.key("lock");
        let deadline = Instant::now() + wait;
        loop {
            // While waiting, our own lease must not run out.
            if granted.elapsed() >= self.lock_ttl / 3 {
                match self.kv.lease_keep_alive(lease) {
                    Ok(ttl) if ttl > 0 => {}
                    _ => {
                        let _ = self.kv.lease_revoke(lease);
                        lease = grant()?;
                    }
                }
                granted = Instant::now();
            }
            let t = self.kv.txn(
                &[Compare::CreateRevision(key.clone(), 0)],
                &[Op::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease,
                }],
                &[Op::Get(key.clone())],
            );
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    let _ = self.kv.lease_revoke(lease);
                    return Err(self.etcd_err("taking the lock", e));
                }
            };
            let current = if t.succeeded {
                None
            } else {
                t.reads
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_iter().next())
            };
            let ours = match &current {
                None if t.succeeded => Some(t.revision),
                // Ours: an earlier attempt's answer was lost.
                Some(kv) if kv.lease == lease => Some(kv.create_revision),
                _ => None,
            };
            if let Some(rev) = ours {
                *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(rev);
                return Ok(Box::new(EtcdLockGuard::start(
                    self.kv.clone(),
                    lease,
                    self.lock_ttl,
                    info,
                    self.held.clone(),
                )));
            }
            match current {
                // Deleted between the compare and the read: try again at once.
                None => continue,
                Some(kv) => {
                    if Instant::now() >= deadline {
                        let _ = self.kv.lease_revoke(lease);
                        return Err(StateError::Locked {
                            path: self.name.clone(),
                            holder: Box::new(self.holder_of(&kv)),
                        });
                    }
                    std::thread::sleep(LOCK_POLL.min(deadline - Instant::now()));
                }
            }
        }
    }

    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        let r = self
            .kv
            .range(&self.key("lock"), None, 0, 0)
            .map_err(|e| self.etcd_err("reading the lock", e))?;
        Ok(r.kvs.first().map(|kv| self.holder_of(kv)))
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        let key = self.key("lock");
        let r = self
            .kv
            .range(&key, None, 0, 0)
            .map_err(|e| self.etcd_err("reading the lock", e))?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Err(StateError::WrongLockId {
                path: self.name.clone(),
                id: id.to_string(),
                current: None,
            });
        };
        let info = self.holder_of(&kv);
        if info.id != id {
            return Err(StateError::WrongLockId {
                path: self.name.clone(),
                id: id.to_string(),
                current: Some(Box::new(info)),
            });
        }
        // Revoking the lease deletes the key and stops the holder's renewals from
        // working; the delete covers a key without a lease.
        if kv.lease != 0 {
            self.kv
                .lease_revoke(kv.lease)
                .map_err(|e| self.etcd_err("revoking the lock's lease", e))?;
        }
        self.kv
            .txn(
                &[Compare::CreateRevision(key.clone(), kv.create_revision)],
                &[Op::Delete {
                    key,
                    range_end: None,
                }],
                &[],
            )
            .map_err(|e| self.etcd_err("removing the lock", e))?;
        Ok(info)
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        let _calls = self.calls();
        let (_, sections) = self.read_all(true)?;
        let mut out = Vec::new();
        for (key, bytes) in sections
            .get("history")
            .into_iter()
            .flatten()
            .rev()
            .take(limit)
        {
            let head: HistoryHead = serde_json::from_slice(bytes)
                .map_err(|e| self.corrupt(format!("key `history/{key}`: {e}")))?;
            out.push(head.entry);
        }
        Ok(out)
    }

    fn export(&self) -> Result<Export, StateError> {
        let _calls = self.calls();
        let (meta, mut sections) = self.read_all(true)?;
        let history = sections.remove("history").unwrap_or_default();
        let mut rows = Vec::new();
        for (key, bytes) in history {
            let serial = key
                .parse()
                .map_err(|_| self.corrupt(format!("key `history/{key}` is not a serial")))?;
            rows.push((serial, bytes));
        }
        let snapshot = self.snapshot_of(meta, sections)?;
        Ok(Export {
            snapshot,
            history: rows,
        })
    }

    fn import(&self, export: &Export) -> Result<(), StateError> {
        let _calls = self.calls();
        let (meta, meta_rev, revision) = self.read_meta()?;
        let probe = self
            .kv
            .range(&self.key(""), Some(&prefix_end(&self.key(""))), revision, 2)
            .map_err(|e| self.etcd_err("reading the destination", e))?;
        let other_keys = probe
            .kvs
            .iter()
            .any(|kv| self.rel(&kv.key).is_some_and(|r| r != "lock"));
        if meta_rev != 0 || other_keys {
            return Err(StateError::Database {
                path: self.name.clone(),
                detail: format!(
                    "there is a state here already (lineage {}, serial {}); a state is copied only into an empty prefix",
                    meta.lineage.as_deref().unwrap_or("unknown"),
                    meta.serial
                ),
            });
        }
        let s = &export.snapshot;
        let mut ops = Vec::new();
        for r in s.resources.values() {
            let json = serde_json::to_string(r).map_err(|e| self.corrupt(e.to_string()))?;
            ops.push(BatchOp::Put(format!("resources/{}", r.address), json));
        }
        for j in &s.journal {
            let json = serde_json::to_string(j).map_err(|e| self.corrupt(e.to_string()))?;
            ops.push(BatchOp::Put(format!("journal/{}", j.op_id), json));
        }
        for (name, value) in &s.secrets {
            ops.push(BatchOp::Put(format!("secrets/{name}"), value.clone()));
        }
        for (serial, bytes) in &export.history {
            let text = String::from_utf8(bytes.clone())
                .map_err(|e| self.corrupt(format!("history row {serial}: {e}")))?;
            ops.push(BatchOp::Put(format!("history/{serial:020}"), text));
        }
        let next = Meta {
            format_version: FORMAT_VERSION,
            lineage: s.lineage.clone(),
            serial: s.serial,
            identity: s.identity.clone(),
            commit: uuid::Uuid::new_v4().to_string(),
            pending: None,
        };
        match self.write(ops, &next, 0)? {
            Written::Done(_) => Ok(()),
            Written::Conflict => Err(StateError::Database {
                path: self.name.clone(),
                detail: "another run wrote a state here while it was being copied; nothing was copied over it".into(),
            }),
        }
    }
}

/// The held etcd lock: a thread renews its lease every third of the TTL; dropping the
/// guard stops it and revokes the lease (which deletes the lock key).
struct EtcdLockGuard {
    kv: Arc<KvClient>,
    lease: u64,
    info: LockInfo,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: Arc<Mutex<Option<u64>>>,
    lost: Arc<AtomicBool>,
}

impl EtcdLockGuard {
    fn start(
        kv: Arc<KvClient>,
        lease: u64,
        ttl: Duration,
        info: LockInfo,
        held: Arc<Mutex<Option<u64>>>,
    ) -> EtcdLockGuard {
        let (stop, stopped) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let (kv2, lost2) = (kv.clone(), lost.clone());
        let every = ttl / 3;
        let thread = std::thread::Builder::new()
            .name("state-lock-keepalive".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    match kv2.lease_keep_alive(lease) {
                        Ok(0) => {
                            tracing::warn!("the state lock's lease expired");
                            lost2.store(true, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!("renewing the state lock's lease: {e}"),
                    }
                }
            })
            .ok();
        EtcdLockGuard {
            kv,
            lease,
            info,
            stop: Some(stop),
            thread,
            held,
            lost,
        }
    }
}

impl LockGuard for EtcdLockGuard {
    fn info(&self) -> &LockInfo {
        &self.info
    }

    fn note(&self) -> Option<&str> {
        None
    }
}

impl Drop for EtcdLockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if !self.lost.load(Ordering::SeqCst)
            && let Err(e) = self.kv.lease_revoke(self.lease)
        {
            tracing::warn!(
                "releasing the state lock: {e}; it expires with its lease within its TTL"
            );
        }
    }
}
