//! clusterform state: the [`StateStore`] trait (one record per resource, serial and
//! lineage, a journal of in-flight provider mutations, a lock with its holder, history
//! of earlier serials) and [`LocalStore`], the default implementation on a redb file in
//! `.clusterform/` beside the cluster file. A shared backend (etcd) implements the same
//! trait.

mod etcd;
mod identity;
mod local;
mod lock;
mod mem;
pub mod seal;
mod sealed;

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod proptests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clusterform_core::{Action, Address, ResourceState};
use serde::{Deserialize, Serialize};

pub use etcd::{DEFAULT_LOCK_TTL, EtcdStore};
pub use identity::Owned;
pub use local::LocalStore;
pub use local::{BACKUP_FILE, LINEAGE_FILE};
pub use lock::operator;
pub use mem::MemStore;
pub use sealed::{KeySource, Notify, SealedStore, Sensitive};

/// A journal entry: written durably *before* a provider mutation starts, closed after
/// it ends, so that a run that died in between can find what it made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Unique id of the operation (also the idempotency key's suffix).
    pub op_id: String,
    /// The resource the operation is about.
    pub address: Address,
    /// Create, update, replace (its create half) or delete.
    pub action: Action,
    /// The key passed to the provider (create: tag `clusterform:op` / client token).
    pub idempotency_key: String,
    /// The provider.
    pub provider: String,
    /// The resource kind.
    pub kind: String,
    /// The provider id of the object the operation acts on (update, delete).
    pub object_id: Option<String>,
    /// The dependencies the resource will have, so an adopted object is recorded whole.
    pub dependencies: Vec<Address>,
    /// RFC 3339 start time.
    pub started_at: String,
}

/// Which cluster a state belongs to, recorded in it: a state of another cluster (a
/// copied state folder) is refused before anything is planned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// `[cluster] name`.
    pub name: String,
    /// The cluster file's name (`cluster.toml`), for messages.
    pub file: String,
}

/// Everything the state holds, read in one consistent snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Identity of this state's history; `None` until the first commit.
    pub lineage: Option<String>,
    /// The cluster it belongs to; `None` for a new state or one made before it was
    /// recorded.
    pub identity: Option<ClusterIdentity>,
    /// Increases with every commit that changes resource records.
    pub serial: u64,
    /// One record per resource.
    pub resources: BTreeMap<Address, ResourceState>,
    /// Operations that started and never closed (a crash, or an unknown outcome).
    pub journal: Vec<JournalEntry>,
    /// The cluster's secrets by name (its etcd CA), as the store keeps them: sealed
    /// values, opened by [`SealedStore`].
    pub secrets: BTreeMap<String, String>,
}

/// Everything a store holds, for copying a state to another store (`state migrate`):
/// the snapshot (secrets as sealed) and the history rows as stored (JSON of the entry
/// and its undo log), by serial.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Export {
    /// Records, journal, secrets, lineage, serial, cluster.
    pub snapshot: Snapshot,
    /// `(serial, row)`, oldest first.
    pub history: Vec<(u64, Vec<u8>)>,
}

/// One change in a commit. A commit is all-or-nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    /// Insert or replace a resource record.
    Put(ResourceState),
    /// Remove a resource record.
    Remove(Address),
    /// Open a journal entry.
    JournalOpen(JournalEntry),
    /// Close (remove) the journal entry with this op id.
    JournalClose(String),
    /// Record the cluster the state belongs to (keeps the serial).
    SetIdentity(ClusterIdentity),
    /// Set one of the cluster's secrets (keeps the serial). Through a [`SealedStore`]
    /// the value is sealed before the store sees it.
    SetSecret {
        /// Its name (`etcd-ca-key`).
        name: String,
        /// Its value.
        value: String,
    },
}

/// Who holds the lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Lock id, for `force-unlock`.
    pub id: String,
    /// What it is for: `apply`, `destroy`, `state rm`...
    pub operation: String,
    /// User name.
    pub user: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// RFC 3339 time the lock was taken.
    pub started_at: String,
    /// RFC 3339 time after which the lock counts as abandoned.
    pub expires_at: String,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lock {} held by {}@{} (pid {}) for `{}` since {}",
            self.id, self.user, self.host, self.pid, self.operation, self.started_at
        )
    }
}

/// A held lock; dropping it releases the lock.
pub trait LockGuard: Send + Sync {
    /// The lock's details.
    fn info(&self) -> &LockInfo;
    /// A note for the user about how the lock was taken (e.g. "took over the lock of
    /// pid 123, which is no longer running").
    fn note(&self) -> Option<&str>;
}

/// A past serial, kept for recovery (`state history`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The serial the commit produced.
    pub serial: u64,
    /// RFC 3339 commit time.
    pub committed_at: String,
    /// Addresses the commit changed.
    pub changed: Vec<Address>,
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock.
    #[error("the state at `{path}` is locked: {holder}")]
    Locked {
        /// The store.
        path: String,
        /// Who holds it.
        holder: Box<LockInfo>,
    },
    /// `force-unlock` with an id that is not the current lock's.
    #[error("the state at `{path}` is not locked with id `{id}`{}", .current.as_ref().map(|c| format!(" (current: {c})")).unwrap_or_default())]
    WrongLockId {
        /// The store.
        path: String,
        /// The id given.
        id: String,
        /// The lock there is, if any.
        current: Option<Box<LockInfo>>,
    },
    /// The state file is missing or empty where there was one: a backup, a damaged
    /// file set aside, or the lineage it had says so. Never a fresh start: that would make
    /// every object again.
    #[error(
        "the state file `{path}` is {what}, but this folder had a state ({evidence}); clusterform will not start afresh over it: that would make every object a second time"
    )]
    Lost {
        /// The state file.
        path: String,
        /// `missing` or `empty (0 bytes)`.
        what: String,
        /// What shows there was a state.
        evidence: String,
    },
    /// The state records another cluster than the file's.
    #[error(
        "the state `{path}` belongs to the cluster `{}` (from `{}`), not to `{}` (from `{}`): it was made by another cluster file; clusterform will not plan `{}` against it",
        .theirs.name, .theirs.file, .ours.name, .ours.file, .ours.name
    )]
    OtherCluster {
        /// The store.
        path: String,
        /// The cluster it records.
        theirs: Box<ClusterIdentity>,
        /// The cluster of the file in use.
        ours: Box<ClusterIdentity>,
    },
    /// The state file cannot be decoded.
    #[error("the state at `{path}` is corrupt: {detail}")]
    Corrupt {
        /// The store.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The state was written by a newer clusterform.
    #[error(
        "the state at `{path}` has format version {found}; this clusterform reads up to {supported}"
    )]
    Version {
        /// The store.
        path: String,
        /// The version in the file.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// A file-system error.
    #[error("state `{path}`: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `force-unlock` of a lock whose holder is still running: a local advisory lock of a
    /// live process cannot be broken safely, so the holder has to be stopped first.
    #[error("the state at `{path}` is locked by a process that is still running: {holder}; stop that process first (`kill {}` on {}), then retry", .holder.pid, .holder.host)]
    LockHeldByLiveProcess {
        /// The store.
        path: String,
        /// Who holds it.
        holder: Box<LockInfo>,
    },
    /// The state's secrets cannot be sealed or opened: no key, the wrong key, a key
    /// file that cannot be read or made, or a sealed value that does not open.
    #[error("the state at `{path}`: {detail}")]
    Secret {
        /// The store.
        path: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// An error from the database engine.
    #[error("state database `{path}`: {detail}")]
    Database {
        /// The store.
        path: String,
        /// The cause.
        detail: String,
    },
}

/// Where and how state is kept. Implementations must make each `commit` atomic and
/// durable before returning, and never lose records they had.
pub trait StateStore: Send + Sync {
    /// A short description for messages (`.clusterform/state.redb`).
    fn describe(&self) -> String;

    /// Read everything in one consistent snapshot. An absent store is an empty snapshot
    /// (nothing is created on disk).
    fn load(&self) -> Result<Snapshot, StateError>;

    /// Lineage, serial, cluster and secrets, without the resource records and the
    /// journal: what loading a cluster file needs (its etcd CA), cheaper than
    /// [`load`](Self::load) on a large state.
    fn load_secrets(&self) -> Result<Snapshot, StateError> {
        let mut snapshot = self.load()?;
        snapshot.resources.clear();
        snapshot.journal.clear();
        Ok(snapshot)
    }

    /// Apply `mutations` atomically and durably. Increases the serial by one when any
    /// mutation touches a resource record (journal-only commits keep it); creates the
    /// store and its lineage on first use. Returns the serial after the commit.
    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError>;

    /// Take the lock for `operation`, waiting up to `wait` for a live holder to let go.
    /// A lock whose holder is provably gone is taken over, with a note saying whose it
    /// was. Fails with [`StateError::Locked`] naming the holder.
    fn lock(&self, operation: &str, wait: Duration) -> Result<Box<dyn LockGuard>, StateError>;

    /// Who holds the lock now, if anyone.
    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError>;

    /// Remove the lock with this id, whoever holds it. Returns what it was.
    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError>;

    /// The most recent commits, newest first.
    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError>;

    /// Everything the store holds, as stored (secrets sealed), in one consistent read.
    fn export(&self) -> Result<Export, StateError> {
        Err(StateError::Database {
            path: self.describe(),
            detail: "this store cannot be copied".into(),
        })
    }

    /// Writes `export` into this store, which must hold no state yet: lineage, serial,
    /// records, journal, secrets and history rows exactly as given, all or nothing.
    fn import(&self, export: &Export) -> Result<(), StateError> {
        let _ = export;
        Err(StateError::Database {
            path: self.describe(),
            detail: "this store cannot be written by a copy".into(),
        })
    }
}
