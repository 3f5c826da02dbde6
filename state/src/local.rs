//! [`LocalStore`]: state in one redb file, `<dir>/state.redb` (tables `meta`, `resources`,
//! `journal`, `history` with an undo log, `secrets`), opened for one transaction per call so other
//! processes can read between commits; the lock lives in `<dir>/lock` (see `lock.rs`).

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use clusterform_core::{Address, ResourceState};
use redb::{
    Builder, Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    ReadableTable, ReadableTableMetadata, TableDefinition, TableError, TransactionError,
};
use serde::{Deserialize, Serialize};

use crate::lock::{self, LockPaths};
use crate::{
    ClusterIdentity, Export, HistoryEntry, JournalEntry, LockGuard, LockInfo, Mutation, Snapshot,
    StateError, StateStore,
};

/// `format_version` (u32, little endian), `lineage` (UTF-8 uuid), `serial` (u64, little endian).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Address -> JSON of [`ResourceState`].
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Op id -> JSON of [`JournalEntry`].
const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");
/// Serial -> JSON of [`HistoryRecord`].
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// Secret name -> its value as given (sealed by [`crate::SealedStore`]).
const SECRETS: TableDefinition<&str, &str> = TableDefinition::new("secrets");

const KEY_FORMAT_VERSION: &str = "format_version";
const KEY_LINEAGE: &str = "lineage";
const KEY_SERIAL: &str = "serial";
/// JSON of [`ClusterIdentity`].
const KEY_CLUSTER: &str = "cluster";

/// The state file in the state folder.
const DB_FILE: &str = "state.redb";
/// The copy of the state as the last run found it, in the state folder.
pub const BACKUP_FILE: &str = "state.redb.backup";
/// A small file beside the state recording its lineage (and cluster): if the state file
/// goes (deleted, truncated by a full disk), this says there was one.
pub const LINEAGE_FILE: &str = "lineage";
/// Copies of the state kept when the backup would have been replaced by a state with
/// fewer resources or another lineage: `state.redb.backup.<unix time>`, the newest few.
const KEPT_BACKUPS: usize = 5;

/// The newest format this build reads and the one it writes.
const FORMAT_VERSION: u32 = 1;
/// How many history entries (newest) a commit keeps.
const HISTORY_KEEP: u64 = 50;
/// How long a call waits for another process to close the state file.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const OPEN_BACKOFF_START: Duration = Duration::from_millis(5);
const OPEN_BACKOFF_CAP: Duration = Duration::from_millis(100);

/// One history row: the entry, and the value every record the commit changed had before
/// it (`None`: it did not exist), so a commit can be undone.
#[derive(Serialize, Deserialize)]
struct HistoryRecord {
    entry: HistoryEntry,
    previous: BTreeMap<String, Option<ResourceState>>,
}

/// The part of a [`HistoryRecord`] `history()` needs (the undo log is skipped unparsed).
#[derive(Deserialize)]
struct HistoryHead {
    entry: HistoryEntry,
}

/// What `meta` says.
struct Meta {
    lineage: Option<String>,
    serial: u64,
    identity: Option<ClusterIdentity>,
}

/// The state in a redb file in a folder (normally `.clusterform/` beside the cluster
/// file), with the lock beside it.
///
/// Every `load`, `commit` and `history` opens the database, runs one transaction and
/// closes it again, so another process (a read-only `state list` during an apply) can
/// open the file between commits; an open that finds the file held by another process is
/// retried for up to 10 s. Calls on one `LocalStore` are serialized.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    db_path: PathBuf,
    lock_path: PathBuf,
    store: String,
    calls: Mutex<()>,
    open_timeout: Duration,
    /// Set once this store has copied the state file to `state.redb.backup` before its
    /// first commit: the backup is the state as the run found it.
    backed_up: AtomicBool,
    /// The lineage file was written by this store.
    lineage_recorded: AtomicBool,
}

/// A database opened for reading: read-only when it was closed cleanly, read-write (so
/// redb can repair it) after a crash.
enum Reader {
    ReadOnly(ReadOnlyDatabase),
    ReadWrite(Database),
}

impl Reader {
    fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match self {
            Reader::ReadOnly(db) => db.begin_read(),
            Reader::ReadWrite(db) => db.begin_read(),
        }
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    let io = |source| StateError::Io {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    // The mode above is filtered by the umask; set it exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

thread_local! {
    /// Set while this thread runs the database engine under [`LocalStore::guarded`].
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Until the returned guard drops, a panic on this thread is not printed (it is caught
/// and reported as [`StateError::Corrupt`]); panics elsewhere print as before.
fn quiet_panics() -> impl Drop {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            GUARDED.with(|g| g.set(self.0));
        }
    }
    Reset(GUARDED.with(|g| g.replace(true)))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl LocalStore {
    /// A store in `dir` (`dir/state.redb`, `dir/lock`). Creates nothing on disk: the folder
    /// (mode 0700) and files (0600) are created by the first commit or lock.
    pub fn new(dir: PathBuf) -> LocalStore {
        let db_path = dir.join(DB_FILE);
        let lock_path = dir.join("lock");
        LocalStore {
            store: db_path.display().to_string(),
            dir,
            db_path,
            lock_path,
            calls: Mutex::new(()),
            open_timeout: OPEN_TIMEOUT,
            backed_up: AtomicBool::new(false),
            lineage_recorded: AtomicBool::new(false),
        }
    }

    /// The copy of the state as it was before this store's first commit:
    /// `<dir>/state.redb.backup` (the last good state of the previous run).
    pub fn backup_path(&self) -> PathBuf {
        self.dir.join(BACKUP_FILE)
    }

    /// What shows that this folder had a state, when the state file is missing or
    /// empty: a backup, a damaged file set aside, the lineage file. `None` for a folder
    /// that never had one.
    fn evidence(&self) -> Option<String> {
        let non_empty = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
        if non_empty(&self.backup_path()) {
            return Some(format!(
                "its backup `{}` is there",
                self.backup_path().display()
            ));
        }
        if let Ok(text) = std::fs::read_to_string(self.dir.join(LINEAGE_FILE))
            && let Some(lineage) = text.split_whitespace().next()
        {
            return Some(format!(
                "`{}` records lineage {lineage}",
                self.dir.join(LINEAGE_FILE).display()
            ));
        }
        let damaged = std::fs::read_dir(&self.dir).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("state.redb.damaged-"))
            })
        });
        damaged.map(|d| format!("a damaged state file was set aside as `{}`", d.display()))
    }

    /// Refuse to treat a missing or empty state file as a new state when the folder had
    /// one.
    fn refuse_lost(&self, what: &str) -> Result<(), StateError> {
        match self.evidence() {
            None => Ok(()),
            Some(evidence) => Err(StateError::Lost {
                path: self.db_path.display().to_string(),
                what: what.to_string(),
                evidence,
            }),
        }
    }

    /// Record the lineage (and cluster) beside the state, unless it is there already.
    /// Best effort: the state itself is already committed.
    fn write_lineage_file(&self, lineage: &str, identity: Option<&ClusterIdentity>) {
        let path = self.dir.join(LINEAGE_FILE);
        let text = match identity {
            Some(i) => format!("{lineage} {} {}\n", i.name, i.file),
            None => format!("{lineage}\n"),
        };
        if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return;
        }
        let tmp = self.dir.join("lineage.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot write `{}`: {e}", path.display());
        }
    }

    /// (lineage, resource count) of the redb file at `path`, if it can be read.
    fn summary_of(&self, path: &Path) -> Option<(Option<String>, usize)> {
        let db = Builder::new().open_read_only(path).ok()?;
        let txn = db.begin_read().ok()?;
        let meta = self.read_meta_txn(&txn).ok()?;
        let count = match self.read_table(&txn, RESOURCES).ok()? {
            Some(t) => usize::try_from(t.len().ok()?).ok()?,
            None => 0,
        };
        Some((meta.lineage, count))
    }

    /// Put the backup in place of a damaged state file: the damaged file is kept as
    /// `state.redb.damaged-<unix time>` (returned), the backup stays where it is. The
    /// caller holds the lock, and must then reconcile with the provider: objects made
    /// after the backup was taken are not in it.
    pub fn restore_backup(&self) -> Result<Option<PathBuf>, StateError> {
        let _calls = self.serialize_calls();
        let backup = self.backup_path();
        if !backup.exists() {
            return Err(StateError::Io {
                path: backup,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "there is no backup to restore",
                ),
            });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        // The copy is made and checked first: whatever fails from here on, the state
        // file is still where it was.
        let tmp = self.dir.join("state.redb.restore.tmp");
        let _ = std::fs::remove_file(&tmp);
        let prepare = || -> Result<(), StateError> {
            std::fs::copy(&backup, &tmp).map_err(io(&tmp))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            if self.summary_of(&tmp).is_none() {
                return Err(self.corrupt(format!(
                    "the backup `{}` cannot be read either; nothing was changed",
                    backup.display()
                )));
            }
            Ok(())
        };
        if let Err(e) = prepare() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut damaged = None;
        if self.db_path.exists() {
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            let aside = self.dir.join(format!("state.redb.damaged-{secs}"));
            if let Err(e) = std::fs::rename(&self.db_path, &aside) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&aside)(e));
            }
            damaged = Some(aside);
        }
        if let Err(e) = std::fs::rename(&tmp, &self.db_path) {
            // Put the damaged file back: the folder is never left without a state.
            if let Some(aside) = &damaged {
                let _ = std::fs::rename(aside, &self.db_path);
            }
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&self.db_path)(e));
        }
        let _ = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
        // The restored file is the backup: no need to back it up again this run.
        self.backed_up.store(true, Ordering::SeqCst);
        Ok(damaged)
    }

    /// Copy the state file to [`backup_path`](Self::backup_path) once, before the first
    /// commit of this store: write a temporary file, fsync it, rename it over the old
    /// backup. A failure (disk full) stops the commit, so nothing is written that could
    /// not be undone.
    fn backup_once(&self) -> Result<(), StateError> {
        if self.backed_up.load(Ordering::SeqCst) || !self.db_path.exists() {
            return Ok(());
        }
        let mut backup = self.backup_path();
        // A backup is never replaced by a state with fewer resources or of another
        // lineage: that state is kept beside it instead (`state.redb.backup.<time>`).
        if backup.exists()
            && let Some((old_lineage, old_count)) = self.summary_of(&backup)
        {
            let now = self.summary_of(&self.db_path);
            let keep_old = match &now {
                Some((lineage, count)) => *lineage != old_lineage || *count < old_count,
                None => true,
            };
            if keep_old {
                let secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                backup = self.dir.join(format!("{BACKUP_FILE}.{secs}"));
                self.prune_kept_backups();
            }
        }
        // A name of its own: another process's first commit may be copying right now.
        let tmp = self
            .dir
            .join(format!("state.redb.backup.tmp-{}", uuid::Uuid::new_v4()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let copy = || -> Result<(), StateError> {
            std::fs::copy(&self.db_path, &tmp).map_err(io(&tmp))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &backup).map_err(io(&backup))?;
            Ok(())
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.backed_up.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Keep only the newest [`KEPT_BACKUPS`] - 1 timestamped backups (one is about to be
    /// written).
    fn prune_kept_backups(&self) {
        let prefix = format!("{BACKUP_FILE}.");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(u128, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let stamp: u128 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((stamp, e.path()))
            })
            .collect();
        kept.sort();
        while kept.len() >= KEPT_BACKUPS {
            let (_, oldest) = kept.remove(0);
            let _ = std::fs::remove_file(oldest);
        }
    }

    /// The folder holding the state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The redb file, `<dir>/state.redb`.
    pub fn path(&self) -> &Path {
        &self.db_path
    }

    fn serialize_calls(&self) -> MutexGuard<'_, ()> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_paths(&self) -> LockPaths<'_> {
        LockPaths {
            dir: &self.dir,
            file: &self.lock_path,
            store: &self.store,
        }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StateError {
        StateError::Corrupt {
            path: self.store.clone(),
            detail: detail.into(),
        }
    }

    /// Maps a redb error met while doing `what`.
    fn redb_err(&self, what: &str, e: impl Into<redb::Error>) -> StateError {
        match e.into() {
            redb::Error::Corrupted(detail) => self.corrupt(format!("{what}: {detail}")),
            e @ (redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. }) => self.corrupt(format!("{what}: {e}")),
            // redb reports a file that is not a redb database, or is cut short, as I/O
            // errors of these kinds.
            redb::Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                self.corrupt(format!("{what}: {e}"))
            }
            redb::Error::Io(source) => StateError::Io {
                path: self.db_path.clone(),
                source,
            },
            redb::Error::DatabaseAlreadyOpen => StateError::Database {
                path: self.store.clone(),
                detail: format!(
                    "another process holds the state file open (waited {} s); try again when it has finished",
                    self.open_timeout.as_secs()
                ),
            },
            other => StateError::Database {
                path: self.store.clone(),
                detail: format!("{what}: {other}"),
            },
        }
    }

    /// Runs `f`, turning a panic inside the database engine (redb may panic on a file
    /// damaged outside redb) into [`StateError::Corrupt`].
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        let _quiet = quiet_panics();
        std::panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            Err(self.corrupt(format!(
                "the database engine failed reading it: {}",
                panic_message(payload.as_ref())
            )))
        })
    }

    /// Opens with `open`, retrying while another process has the file open (backoff from
    /// 5 ms up to 100 ms, for up to `open_timeout`).
    fn open_retrying<T>(
        &self,
        mut open: impl FnMut() -> Result<T, DatabaseError>,
    ) -> Result<T, DatabaseError> {
        let deadline = Instant::now() + self.open_timeout;
        let mut delay = OPEN_BACKOFF_START;
        loop {
            match open() {
                Err(DatabaseError::DatabaseAlreadyOpen) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(DatabaseError::DatabaseAlreadyOpen);
                    }
                    std::thread::sleep(delay.min(deadline - now));
                    delay = (delay * 2).min(OPEN_BACKOFF_CAP);
                }
                other => return other,
            }
        }
    }

    /// How an absent state file is: `missing`, or `empty (0 bytes)`.
    fn absent_what(&self) -> &'static str {
        if self.db_path.exists() {
            "empty (0 bytes)"
        } else {
            "missing"
        }
    }

    /// Opens the database for reading; `None` when there is no state file (or it is
    /// empty: created, never initialized).
    fn open_reader(&self) -> Result<Option<Reader>, StateError> {
        match std::fs::metadata(&self.db_path) {
            Ok(m) if m.len() == 0 => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.db_path.clone(),
                    source,
                });
            }
        }
        match self.open_retrying(|| Builder::new().open_read_only(&self.db_path)) {
            Ok(db) => Ok(Some(Reader::ReadOnly(db))),
            // Not closed cleanly (a crash): a read-write open repairs it, on a copy.
            Err(DatabaseError::RepairAborted) => self.open_repaired_copy().map(Some),
            Err(e) => Err(self.redb_err("opening the state file", e)),
        }
    }

    /// Opens a private copy of a state file that was not closed cleanly read-write, which
    /// repairs the copy. A read never writes the state file itself: a damaged file (which
    /// also asks for a repair) would otherwise be rewritten before anyone could keep it.
    /// The next commit repairs the state file in place.
    fn open_repaired_copy(&self) -> Result<Reader, StateError> {
        /// Removes the copy however the open ends (an error, or a panic in redb).
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let copy = std::env::temp_dir().join(format!(
            "clusterform-state-{}-{}.redb",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::SeqCst)
        ));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        let mut from = std::fs::File::open(&self.db_path).map_err(io(&self.db_path))?;
        // A copy left by a killed process whose pid is now ours.
        let _ = std::fs::remove_file(&copy);
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&copy)
            .map_err(io(&copy))?;
        let _remove = Remove(copy.clone());
        std::io::copy(&mut from, &mut to).map_err(io(&copy))?;
        drop(to);
        // Unlinked when `_remove` drops; the open database keeps its file handle.
        Builder::new()
            .open(&copy)
            .map(Reader::ReadWrite)
            .map_err(|e| self.redb_err("opening the state file", e))
    }

    /// Creates the folder (0700) and an initialized, empty state file (0600) if there is
    /// none (or only an empty one). The database is initialized in a temporary file that is
    /// then renamed into place: a process killed while redb writes a new file's header
    /// would otherwise leave a `state.redb` that redb refuses ("magic number mismatch").
    fn create_files(&self) -> Result<(), StateError> {
        ensure_private_dir(&self.dir)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        match std::fs::metadata(&self.db_path) {
            Ok(m) if m.len() > 0 => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&self.db_path)(e)),
        }
        let tmp = self.dir.join("state.redb.init.tmp");
        let init = || -> Result<(), StateError> {
            // A leftover of an earlier run killed here.
            let _ = std::fs::remove_file(&tmp);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io(&tmp))?;
            drop(file);
            let db = Builder::new()
                .create(&tmp)
                .map_err(|e| self.redb_err("initializing the state file", e))?;
            drop(db);
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &self.db_path).map_err(io(&self.db_path))?;
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))
        };
        let result = init();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads and checks `meta`.
    fn read_meta<T>(&self, meta: &T) -> Result<Meta, StateError>
    where
        T: ReadableTable<&'static str, &'static [u8]>,
    {
        let get = |key: &str| -> Result<Option<Vec<u8>>, StateError> {
            meta.get(key)
                .map(|v| v.map(|g| g.value().to_vec()))
                .map_err(|e| self.redb_err(&format!("reading table `meta`, key `{key}`"), e))
        };
        let bad_len = |key: &str, want: usize, found: usize| {
            self.corrupt(format!(
                "table `meta`, key `{key}`: expected {want} bytes, found {found}"
            ))
        };
        if let Some(bytes) = get(KEY_FORMAT_VERSION)? {
            let b = <[u8; 4]>::try_from(bytes.as_slice())
                .map_err(|_| bad_len(KEY_FORMAT_VERSION, 4, bytes.len()))?;
            let found = u32::from_le_bytes(b);
            if found > FORMAT_VERSION {
                return Err(StateError::Version {
                    path: self.store.clone(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        let lineage = match get(KEY_LINEAGE)? {
            Some(bytes) => Some(
                String::from_utf8(bytes)
                    .map_err(|e| self.corrupt(format!("table `meta`, key `{KEY_LINEAGE}`: {e}")))?,
            ),
            None => None,
        };
        let serial = match get(KEY_SERIAL)? {
            Some(bytes) => u64::from_le_bytes(
                <[u8; 8]>::try_from(bytes.as_slice())
                    .map_err(|_| bad_len(KEY_SERIAL, 8, bytes.len()))?,
            ),
            None => 0,
        };
        let identity = match get(KEY_CLUSTER)? {
            Some(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| self.corrupt(format!("table `meta`, key `{KEY_CLUSTER}`: {e}")))?,
            ),
            None => None,
        };
        Ok(Meta {
            lineage,
            serial,
            identity,
        })
    }

    /// Opens a table in a read transaction; `None` when it was never created.
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        txn: &ReadTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StateError> {
        match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.redb_err(&format!("opening table `{}`", def), e)),
        }
    }

    fn read_meta_txn(&self, txn: &ReadTransaction) -> Result<Meta, StateError> {
        match self.read_table(txn, META)? {
            Some(meta) => self.read_meta(&meta),
            None => Ok(Meta {
                lineage: None,
                serial: 0,
                identity: None,
            }),
        }
    }

    /// Runs `f` in one read transaction; an absent state (that is not a lost one) is
    /// the default value.
    fn read<T: Default>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let _calls = self.serialize_calls();
        self.guarded(|| {
            let Some(reader) = self.open_reader()? else {
                self.refuse_lost(self.absent_what())?;
                return Ok(T::default());
            };
            let txn = reader
                .begin_read()
                .map_err(|e| self.redb_err("starting a read", e))?;
            f(&txn)
        })
    }

    /// Creates the state file if needed, opens it and starts a write transaction.
    fn begin_write(&self) -> Result<(Database, redb::WriteTransaction), StateError> {
        self.create_files()?;
        let db = self
            .open_retrying(|| Builder::new().create(&self.db_path))
            .map_err(|e| self.redb_err("opening the state file", e))?;
        let txn = db
            .begin_write()
            .map_err(|e| self.redb_err("starting a write", e))?;
        Ok((db, txn))
    }

    fn read_snapshot(&self, txn: &ReadTransaction) -> Result<Snapshot, StateError> {
        self.read_parts(txn, true)
    }

    /// The snapshot; without records and journal unless `records`.
    fn read_parts(&self, txn: &ReadTransaction, records: bool) -> Result<Snapshot, StateError> {
        let meta = self.read_meta_txn(txn)?;
        let mut snapshot = Snapshot {
            lineage: meta.lineage,
            serial: meta.serial,
            identity: meta.identity,
            ..Snapshot::default()
        };
        if records && let Some(table) = self.read_table(txn, RESOURCES)? {
            let iter = table
                .iter()
                .map_err(|e| self.redb_err("reading table `resources`", e))?;
            for item in iter {
                let (k, v) = item.map_err(|e| self.redb_err("reading table `resources`", e))?;
                let key = k.value();
                let record: ResourceState = serde_json::from_slice(v.value())
                    .map_err(|e| self.corrupt(format!("table `resources`, key `{key}`: {e}")))?;
                let address: Address = key
                    .parse()
                    .map_err(|e| self.corrupt(format!("table `resources`, key `{key}`: {e}")))?;
                if record.address != address {
                    return Err(self.corrupt(format!(
                        "table `resources`, key `{key}`: holds the record of `{}`",
                        record.address
                    )));
                }
                snapshot.resources.insert(address, record);
            }
        }
        if records && let Some(table) = self.read_table(txn, JOURNAL)? {
            let iter = table
                .iter()
                .map_err(|e| self.redb_err("reading table `journal`", e))?;
            for item in iter {
                let (k, v) = item.map_err(|e| self.redb_err("reading table `journal`", e))?;
                let entry: JournalEntry = serde_json::from_slice(v.value()).map_err(|e| {
                    self.corrupt(format!("table `journal`, key `{}`: {e}", k.value()))
                })?;
                snapshot.journal.push(entry);
            }
        }
        if let Some(table) = self.read_table(txn, SECRETS)? {
            let iter = table
                .iter()
                .map_err(|e| self.redb_err("reading table `secrets`", e))?;
            for item in iter {
                let (k, v) = item.map_err(|e| self.redb_err("reading table `secrets`", e))?;
                snapshot
                    .secrets
                    .insert(k.value().to_string(), v.value().to_string());
            }
        }
        Ok(snapshot)
    }

    fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<Vec<u8>, StateError> {
        serde_json::to_vec(value).map_err(|e| StateError::Database {
            path: self.store.clone(),
            detail: format!("encoding {what}: {e}"),
        })
    }

    /// Applies `mutations` in the write transaction `txn`; returns the serial after.
    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        mutations: &[Mutation],
    ) -> Result<u64, StateError> {
        let write_err = |table: &str, e: redb::StorageError| {
            self.redb_err(&format!("writing table `{table}`"), e)
        };
        let open_err =
            |table: &str, e: TableError| self.redb_err(&format!("opening table `{table}`"), e);

        let mut meta = txn.open_table(META).map_err(|e| open_err("meta", e))?;
        let current = self.read_meta(&meta)?;
        if current.lineage.is_none() {
            let lineage = uuid::Uuid::new_v4().to_string();
            meta.insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes()[..])
                .map_err(|e| write_err("meta", e))?;
            meta.insert(KEY_LINEAGE, lineage.as_bytes())
                .map_err(|e| write_err("meta", e))?;
        }

        // The value each touched record had before this commit (first touch wins).
        let mut previous: BTreeMap<Address, Option<ResourceState>> = BTreeMap::new();
        let mut touched = false;
        {
            let mut resources = txn
                .open_table(RESOURCES)
                .map_err(|e| open_err("resources", e))?;
            let mut journal = txn
                .open_table(JOURNAL)
                .map_err(|e| open_err("journal", e))?;
            for mutation in mutations {
                match mutation {
                    Mutation::Put(record) => {
                        touched = true;
                        let key = record.address.to_string();
                        let json = self.encode(&format!("the record of `{key}`"), record)?;
                        let old = resources
                            .insert(key.as_str(), json.as_slice())
                            .map_err(|e| write_err("resources", e))?;
                        if !previous.contains_key(&record.address) {
                            let old =
                                self.decode_previous(&key, old.map(|g| g.value().to_vec()))?;
                            previous.insert(record.address.clone(), old);
                        }
                    }
                    Mutation::Remove(address) => {
                        touched = true;
                        let key = address.to_string();
                        let old = resources
                            .remove(key.as_str())
                            .map_err(|e| write_err("resources", e))?;
                        if !previous.contains_key(address) {
                            let old =
                                self.decode_previous(&key, old.map(|g| g.value().to_vec()))?;
                            previous.insert(address.clone(), old);
                        }
                    }
                    Mutation::JournalOpen(entry) => {
                        let json =
                            self.encode(&format!("journal entry `{}`", entry.op_id), entry)?;
                        journal
                            .insert(entry.op_id.as_str(), json.as_slice())
                            .map_err(|e| write_err("journal", e))?;
                    }
                    Mutation::JournalClose(op_id) => {
                        journal
                            .remove(op_id.as_str())
                            .map_err(|e| write_err("journal", e))?;
                    }
                    Mutation::SetIdentity(identity) => {
                        let json = self.encode("the cluster identity", identity)?;
                        meta.insert(KEY_CLUSTER, json.as_slice())
                            .map_err(|e| write_err("meta", e))?;
                    }
                    Mutation::SetSecret { name, value } => {
                        txn.open_table(SECRETS)
                            .map_err(|e| open_err("secrets", e))?
                            .insert(name.as_str(), value.as_str())
                            .map_err(|e| write_err("secrets", e))?;
                    }
                }
            }
        }

        if !touched {
            return Ok(current.serial);
        }
        let serial = current.serial + 1;
        meta.insert(KEY_SERIAL, &serial.to_le_bytes()[..])
            .map_err(|e| write_err("meta", e))?;

        let record = HistoryRecord {
            entry: HistoryEntry {
                serial,
                committed_at: now_rfc3339(),
                changed: previous.keys().cloned().collect(),
            },
            previous: previous
                .into_iter()
                .map(|(a, r)| (a.to_string(), r))
                .collect(),
        };
        let json = self.encode(&format!("history entry {serial}"), &record)?;
        let mut history = txn
            .open_table(HISTORY)
            .map_err(|e| open_err("history", e))?;
        history
            .insert(serial, json.as_slice())
            .map_err(|e| write_err("history", e))?;
        if serial > HISTORY_KEEP {
            let cutoff = serial - HISTORY_KEEP;
            history
                .retain_in(..=cutoff, |_, _| false)
                .map_err(|e| write_err("history", e))?;
        }
        Ok(serial)
    }

    fn decode_previous(
        &self,
        key: &str,
        bytes: Option<Vec<u8>>,
    ) -> Result<Option<ResourceState>, StateError> {
        bytes
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| self.corrupt(format!("table `resources`, key `{key}`: {e}")))
            })
            .transpose()
    }
}

impl StateStore for LocalStore {
    fn describe(&self) -> String {
        self.store.clone()
    }

    fn export(&self) -> Result<Export, StateError> {
        self.read(|txn| {
            let snapshot = self.read_snapshot(txn)?;
            let mut history = Vec::new();
            if let Some(table) = self.read_table(txn, HISTORY)? {
                let iter = table
                    .iter()
                    .map_err(|e| self.redb_err("reading table `history`", e))?;
                for item in iter {
                    let (k, v) = item.map_err(|e| self.redb_err("reading table `history`", e))?;
                    history.push((k.value(), v.value().to_vec()));
                }
            }
            Ok(Export { snapshot, history })
        })
    }

    fn import(&self, export: &Export) -> Result<(), StateError> {
        let _calls = self.serialize_calls();
        self.guarded(|| {
            if let Some(reader) = self.open_reader()? {
                let txn = reader
                    .begin_read()
                    .map_err(|e| self.redb_err("starting a read", e))?;
                let meta = self.read_meta_txn(&txn)?;
                if meta.lineage.is_some() {
                    return Err(StateError::Database {
                        path: self.store.clone(),
                        detail: format!(
                            "there is a state here already (lineage {}, serial {}); a state is copied only into an empty folder",
                            meta.lineage.as_deref().unwrap_or_default(),
                            meta.serial
                        ),
                    });
                }
            } else {
                self.refuse_lost(self.absent_what())?;
            }
            let (db, txn) = self.begin_write()?;
            let s = &export.snapshot;
            let werr = |t: &str| {
                let t = t.to_string();
                move |e: redb::StorageError| self.redb_err(&format!("writing table `{t}`"), e)
            };
            let oerr = |t: &str| {
                let t = t.to_string();
                move |e: TableError| self.redb_err(&format!("opening table `{t}`"), e)
            };
            {
                let mut meta = txn.open_table(META).map_err(oerr("meta"))?;
                meta.insert(KEY_FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes()[..])
                    .map_err(werr("meta"))?;
                if let Some(l) = &s.lineage {
                    meta.insert(KEY_LINEAGE, l.as_bytes()).map_err(werr("meta"))?;
                }
                meta.insert(KEY_SERIAL, &s.serial.to_le_bytes()[..])
                    .map_err(werr("meta"))?;
                if let Some(i) = &s.identity {
                    let json = self.encode("the cluster identity", i)?;
                    meta.insert(KEY_CLUSTER, json.as_slice())
                        .map_err(werr("meta"))?;
                }
                let mut resources = txn.open_table(RESOURCES).map_err(oerr("resources"))?;
                for r in s.resources.values() {
                    let json = self.encode(&format!("the record of `{}`", r.address), r)?;
                    resources
                        .insert(r.address.to_string().as_str(), json.as_slice())
                        .map_err(werr("resources"))?;
                }
                let mut journal = txn.open_table(JOURNAL).map_err(oerr("journal"))?;
                for j in &s.journal {
                    let json = self.encode(&format!("journal entry `{}`", j.op_id), j)?;
                    journal
                        .insert(j.op_id.as_str(), json.as_slice())
                        .map_err(werr("journal"))?;
                }
                let mut secrets = txn.open_table(SECRETS).map_err(oerr("secrets"))?;
                for (name, value) in &s.secrets {
                    secrets
                        .insert(name.as_str(), value.as_str())
                        .map_err(werr("secrets"))?;
                }
                let mut history = txn.open_table(HISTORY).map_err(oerr("history"))?;
                for (serial, row) in &export.history {
                    history
                        .insert(*serial, row.as_slice())
                        .map_err(werr("history"))?;
                }
            }
            txn.commit().map_err(|e| self.redb_err("committing", e))?;
            let _ = db.close();
            if let Some(l) = &s.lineage {
                self.write_lineage_file(l, s.identity.as_ref());
                self.lineage_recorded.store(true, Ordering::SeqCst);
            }
            Ok(())
        })
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        self.read(|txn| self.read_snapshot(txn))
    }

    fn load_secrets(&self) -> Result<Snapshot, StateError> {
        self.read(|txn| self.read_parts(txn, false))
    }

    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        let _calls = self.serialize_calls();
        self.guarded(|| {
            if mutations.is_empty() {
                let Some(reader) = self.open_reader()? else {
                    return Ok(0);
                };
                let txn = reader
                    .begin_read()
                    .map_err(|e| self.redb_err("starting a read", e))?;
                return Ok(self.read_meta_txn(&txn)?.serial);
            }
            // A missing or empty state file where there was one is never written afresh
            // (a cheap look: the file's size; `load` reads it).
            if !std::fs::metadata(&self.db_path).is_ok_and(|m| m.len() > 0) {
                self.refuse_lost(self.absent_what())?;
            }
            self.backup_once()?;
            let (db, txn) = self.begin_write()?;
            // On error the transaction is dropped, which aborts it.
            let serial = self.apply(&txn, mutations)?;
            txn.commit().map_err(|e| self.redb_err("committing", e))?;
            // Once per store: after its first commit the lineage and cluster are what
            // they will be for the rest of the run (the cluster is recorded with it).
            if !self.lineage_recorded.swap(true, Ordering::SeqCst)
                && let Ok(read) = db.begin_read()
                && let Ok(meta) = self.read_meta_txn(&read)
                && let Some(lineage) = &meta.lineage
            {
                self.write_lineage_file(lineage, meta.identity.as_ref());
            }
            // The commit is durable; an error while closing only costs a repair on the
            // next open, so it is not reported as a failed commit.
            let _ = db.close();
            Ok(serial)
        })
    }

    fn lock(&self, operation: &str, wait: Duration) -> Result<Box<dyn LockGuard>, StateError> {
        Ok(Box::new(lock::acquire(
            &self.lock_paths(),
            operation,
            wait,
        )?))
    }

    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        lock::holder(&self.lock_paths())
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        lock::force_unlock(&self.lock_paths(), id)
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        let _calls = self.serialize_calls();
        self.guarded(|| {
            let Some(reader) = self.open_reader()? else {
                return Ok(Vec::new());
            };
            let txn = reader
                .begin_read()
                .map_err(|e| self.redb_err("starting a read", e))?;
            self.read_meta_txn(&txn)?;
            let Some(table) = self.read_table(&txn, HISTORY)? else {
                return Ok(Vec::new());
            };
            let iter = table
                .iter()
                .map_err(|e| self.redb_err("reading table `history`", e))?;
            let mut out = Vec::new();
            for item in iter.rev().take(limit) {
                let (k, v) = item.map_err(|e| self.redb_err("reading table `history`", e))?;
                let head: HistoryHead = serde_json::from_slice(v.value()).map_err(|e| {
                    self.corrupt(format!("table `history`, key `{}`: {e}", k.value()))
                })?;
                out.push(head.entry);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clusterform_core::Action;

    use super::*;

    fn record(name: &str, index: u32, id: &str) -> ResourceState {
        let mut attrs = clusterform_core::Attrs::new();
        attrs.insert("size".to_string(), serde_json::json!("t3.micro"));
        attrs.insert("index".to_string(), serde_json::json!(index));
        ResourceState {
            address: Address::indexed("machine", name, index),
            provider: "sim".to_string(),
            id: id.to_string(),
            attrs,
            dependencies: vec![Address::new("network", "main")],
        }
    }

    fn entry(op_id: &str) -> JournalEntry {
        JournalEntry {
            op_id: op_id.to_string(),
            address: Address::indexed("machine", "w", 0),
            action: Action::Create,
            idempotency_key: format!("key-{op_id}"),
            provider: "sim".to_string(),
            kind: "machine".to_string(),
            object_id: None,
            dependencies: vec![Address::new("network", "main")],
            started_at: "2025-01-01T00:00:00Z".to_string(),
        }
    }

    fn store() -> (tempfile::TempDir, LocalStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(tmp.path().join(".clusterform"));
        (tmp, store)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn round_trips_records_and_journal() {
        let (_tmp, store) = store();
        let a = record("w", 0, "i-0");
        let b = record("w", 10, "i-10");
        let serial = store
            .commit(&[
                Mutation::Put(a.clone()),
                Mutation::Put(b.clone()),
                Mutation::JournalOpen(entry("op-1")),
                Mutation::JournalOpen(entry("op-2")),
            ])
            .expect("commit");
        assert_eq!(serial, 1);
        let snap = store.load().expect("load");
        assert_eq!(snap.serial, 1);
        assert_eq!(snap.resources.len(), 2);
        assert_eq!(snap.resources.get(&a.address), Some(&a));
        assert_eq!(snap.resources.get(&b.address), Some(&b));
        assert_eq!(snap.journal, vec![entry("op-1"), entry("op-2")]);

        store
            .commit(&[
                Mutation::Remove(a.address.clone()),
                Mutation::JournalClose("op-1".to_string()),
            ])
            .expect("commit");
        let snap = store.load().expect("load");
        assert_eq!(
            snap.resources.keys().cloned().collect::<Vec<_>>(),
            vec![b.address.clone()]
        );
        assert_eq!(snap.journal, vec![entry("op-2")]);
    }

    #[test]
    fn serial_increments_only_on_record_changes() {
        let (_tmp, store) = store();
        assert_eq!(store.commit(&[]).expect("empty commit"), 0);
        assert_eq!(
            store
                .commit(&[Mutation::JournalOpen(entry("op-1"))])
                .expect("journal"),
            0
        );
        let snap = store.load().expect("load");
        assert_eq!(snap.serial, 0);
        assert_eq!(snap.journal.len(), 1);
        assert!(
            snap.lineage.is_some(),
            "the first commit creates the lineage"
        );

        assert_eq!(
            store
                .commit(&[Mutation::Put(record("w", 0, "i-0"))])
                .expect("put"),
            1
        );
        assert_eq!(
            store
                .commit(&[Mutation::JournalClose("op-1".to_string())])
                .expect("close"),
            1
        );
        assert_eq!(store.commit(&[]).expect("empty"), 1);
        // Removing an address that is not there is not an error, and counts as a change.
        assert_eq!(
            store
                .commit(&[Mutation::Remove(Address::new("machine", "ghost"))])
                .expect("remove missing"),
            2
        );
        // Several record mutations in one commit: one increment.
        assert_eq!(
            store
                .commit(&[
                    Mutation::Put(record("w", 1, "i-1")),
                    Mutation::Put(record("w", 2, "i-2")),
                    Mutation::Remove(record("w", 0, "").address),
                ])
                .expect("batch"),
            3
        );
        let snap = store.load().expect("load");
        assert_eq!(snap.serial, 3);
        assert!(snap.journal.is_empty());
        assert_eq!(snap.resources.len(), 2);
    }

    #[test]
    fn lineage_is_stable_across_commits_and_instances() {
        let (_tmp, store) = store();
        assert_eq!(store.load().expect("load").lineage, None);
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        let lineage = store.load().expect("load").lineage.expect("lineage");
        assert!(uuid::Uuid::parse_str(&lineage).is_ok());
        for i in 1..5 {
            store
                .commit(&[Mutation::Put(record("w", i, "b"))])
                .expect("commit");
        }
        let other = LocalStore::new(store.dir().to_path_buf());
        assert_eq!(other.load().expect("load").lineage, Some(lineage));
    }

    /// Reads the undo log of one history row straight from the file.
    fn undo_log(store: &LocalStore, serial: u64) -> Option<HistoryRecord> {
        let db = ReadOnlyDatabase::open(store.path()).expect("open");
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(HISTORY).expect("history");
        let row = table.get(serial).expect("get")?;
        Some(serde_json::from_slice(row.value()).expect("json"))
    }

    #[test]
    fn history_keeps_previous_values_and_is_pruned_to_50() {
        let (_tmp, store) = store();
        assert!(store.history(10).expect("history").is_empty());
        let v1 = record("w", 0, "one");
        let v2 = record("w", 0, "two");
        store.commit(&[Mutation::Put(v1.clone())]).expect("1");
        store
            .commit(&[
                Mutation::Put(v2.clone()),
                Mutation::Put(record("w", 0, "three")),
                Mutation::Put(record("w", 1, "new")),
            ])
            .expect("2");
        store
            .commit(&[Mutation::Remove(v1.address.clone())])
            .expect("3");

        let h = store.history(10).expect("history");
        assert_eq!(
            h.iter().map(|e| e.serial).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert_eq!(
            h[1].changed,
            vec![v1.address.clone(), record("w", 1, "").address]
        );
        let undo2 = undo_log(&store, 2).expect("row 2");
        // The value before the commit, not an intermediate one within it.
        assert_eq!(undo2.previous.get("machine.w[0]"), Some(&Some(v1.clone())));
        assert_eq!(undo2.previous.get("machine.w[1]"), Some(&None));
        let undo3 = undo_log(&store, 3).expect("row 3");
        assert_eq!(
            undo3.previous.get("machine.w[0]"),
            Some(&Some(record("w", 0, "three")))
        );
        let undo1 = undo_log(&store, 1).expect("row 1");
        assert_eq!(undo1.previous.get("machine.w[0]"), Some(&None));

        // A journal-only commit leaves no history.
        store
            .commit(&[Mutation::JournalOpen(entry("x"))])
            .expect("journal");
        assert_eq!(store.history(100).expect("history").len(), 3);

        for i in 0..57 {
            store
                .commit(&[Mutation::Put(record("w", 2, &format!("v{i}")))])
                .expect("commit");
        }
        let h = store.history(1000).expect("history");
        assert_eq!(h.len(), 50);
        assert_eq!(h[0].serial, 60);
        assert_eq!(h[49].serial, 11);
        assert!(undo_log(&store, 10).is_none());
        assert!(undo_log(&store, 11).is_some());
        assert_eq!(store.history(5).expect("history").len(), 5);
    }

    #[test]
    fn load_of_a_missing_store_creates_nothing() {
        let (_tmp, store) = store();
        assert_eq!(store.load().expect("load"), Snapshot::default());
        assert!(store.history(10).expect("history").is_empty());
        assert_eq!(store.commit(&[]).expect("empty commit"), 0);
        assert_eq!(store.lock_holder().expect("holder"), None);
        assert!(!store.dir().exists());
    }

    /// A store with two runs behind it: a state with `n` records and its backup.
    fn store_with_history(n: u32) -> (tempfile::TempDir, LocalStore) {
        let (tmp, store) = store();
        for i in 0..n {
            store
                .commit(&[Mutation::Put(record("w", i, &format!("i-{i}")))])
                .expect("commit");
        }
        // The next run backs up what the first one left.
        let next = LocalStore::new(store.dir().to_path_buf());
        next.commit(&[Mutation::Put(record("w", n, "i-last"))])
            .expect("commit");
        (tmp, LocalStore::new(store.dir().to_path_buf()))
    }

    #[test]
    fn a_truncated_or_deleted_state_where_there_was_one_is_an_error_not_a_fresh_start() {
        // (how the state file is lost, which evidence is left, the evidence named)
        type Lose = fn(&LocalStore);
        let truncate: Lose = |s| {
            std::fs::write(s.path(), b"").expect("truncate");
        };
        let delete: Lose = |s| std::fs::remove_file(s.path()).expect("rm");
        let no_backup: Lose = |s| {
            std::fs::remove_file(s.backup_path()).expect("rm backup");
        };
        let no_lineage: Lose = |s| {
            std::fs::remove_file(s.dir().join(LINEAGE_FILE)).expect("rm lineage");
        };
        let cases: Vec<(&str, Vec<Lose>, &str, &str)> = vec![
            (
                "truncated, backup there",
                vec![truncate],
                "empty (0 bytes)",
                "backup",
            ),
            ("deleted, backup there", vec![delete], "missing", "backup"),
            (
                "truncated, backup gone",
                vec![truncate, no_backup],
                "empty (0 bytes)",
                "records lineage",
            ),
            (
                "deleted, backup and lineage gone, damaged copy set aside",
                vec![
                    |s| {
                        std::fs::copy(s.path(), s.dir().join("state.redb.damaged-1"))
                            .expect("copy");
                    },
                    delete,
                    no_backup,
                    no_lineage,
                ],
                "missing",
                "damaged",
            ),
        ];
        for (name, steps, what, evidence) in cases {
            let (_tmp, store) = store_with_history(3);
            for step in steps {
                step(&store);
            }
            for (call, result) in [
                ("load", store.load().map(|_| 0)),
                (
                    "commit",
                    store.commit(&[Mutation::Put(record("w", 9, "dup"))]),
                ),
            ] {
                match result {
                    Err(StateError::Lost {
                        what: w,
                        evidence: e,
                        ..
                    }) => {
                        assert_eq!(w, what, "{name}: {call}");
                        assert!(e.contains(evidence), "{name}: {call}: {e}");
                    }
                    other => panic!("{name}: {call} gave {other:?}, not Lost"),
                }
            }
            // Nothing was written over what is left.
            if store.backup_path().exists() {
                let kept = LocalStore::new(store.dir().to_path_buf());
                assert!(
                    kept.summary_of(&store.backup_path())
                        .is_some_and(|(_, n)| n == 3)
                );
            }
        }
    }

    #[test]
    fn state_restore_brings_back_a_deleted_state_from_its_backup() {
        let (_tmp, store) = store_with_history(3);
        std::fs::remove_file(store.path()).expect("rm");
        assert!(matches!(store.load(), Err(StateError::Lost { .. })));
        assert_eq!(store.restore_backup().expect("restore"), None);
        assert_eq!(store.load().expect("load").resources.len(), 3);
    }

    #[test]
    fn a_backup_is_never_replaced_by_fewer_resources_or_another_lineage() {
        let (_tmp, store) = store_with_history(3);
        let lineage = store.load().expect("load").lineage;
        // This run (the state has 4 records, the backup 3) backs up the 4 and removes
        // all but one record; the next one starts from 1 record: the backup (4) stays
        // and the 1-record state is kept beside it.
        let snap = store.load().expect("load");
        let removals: Vec<Mutation> = snap
            .resources
            .keys()
            .skip(1)
            .map(|a| Mutation::Remove(a.clone()))
            .collect();
        store.commit(&removals).expect("commit");
        let next = LocalStore::new(store.dir().to_path_buf());
        next.commit(&[Mutation::Remove(Address::indexed("machine", "w", 0))])
            .expect("commit");
        assert_eq!(
            next.summary_of(&next.backup_path()),
            Some((lineage.clone(), 4)),
            "the fuller backup is kept"
        );
        let kept: Vec<PathBuf> = std::fs::read_dir(store.dir())
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("state.redb.backup."))
            })
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(next.summary_of(&kept[0]), Some((lineage.clone(), 1)));
        // Many runs after it keep at most a few copies, and the backup.
        for _ in 0..10 {
            LocalStore::new(store.dir().to_path_buf())
                .commit(&[
                    Mutation::JournalOpen(entry("x")),
                    Mutation::JournalClose("x".into()),
                ])
                .expect("commit");
        }
        let copies = std::fs::read_dir(store.dir())
            .expect("ls")
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("state.redb.backup.") && !n.ends_with(".tmp"))
            })
            .count();
        assert!((1..=KEPT_BACKUPS).contains(&copies), "{copies} copies");
        assert_eq!(
            next.summary_of(&next.backup_path()),
            Some((lineage.clone(), 4))
        );
        // A state of another lineage in the folder does not replace the backup either.
        let other = tempfile::tempdir().expect("tmp");
        let foreign = LocalStore::new(other.path().join("s"));
        for i in 0..6 {
            foreign
                .commit(&[Mutation::Put(record("w", i, "f"))])
                .expect("commit");
        }
        std::fs::copy(foreign.path(), store.path()).expect("copy");
        LocalStore::new(store.dir().to_path_buf())
            .commit(&[Mutation::Put(record("w", 99, "x"))])
            .expect("commit");
        assert_eq!(next.summary_of(&next.backup_path()), Some((lineage, 4)));
    }

    #[test]
    fn creates_folder_0700_and_file_0600() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(store.path()), 0o600);
        let guard = store.lock("apply", Duration::ZERO).expect("lock");
        assert_eq!(mode(&store.dir().join("lock")), 0o600);
        drop(guard);
    }

    #[test]
    fn garbage_file_is_corrupt_not_a_panic() {
        for len in [7usize, 512, 4096, 100_000] {
            let (_tmp, store) = store();
            std::fs::create_dir_all(store.dir()).expect("mkdir");
            let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            std::fs::write(store.path(), &garbage).expect("write");
            match store.load() {
                Err(StateError::Corrupt { detail, .. }) => assert!(!detail.is_empty()),
                other => panic!("{len} bytes: expected Corrupt, got {other:?}"),
            }
            assert!(matches!(
                store.commit(&[Mutation::Put(record("w", 0, "a"))]),
                Err(StateError::Corrupt { .. })
            ));
            assert!(matches!(store.history(3), Err(StateError::Corrupt { .. })));
            // Untouched.
            assert_eq!(std::fs::read(store.path()).expect("read"), garbage);
        }
    }

    /// Writes raw bytes under `key` of `table`, bypassing the store.
    fn poke(store: &LocalStore, table: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) {
        let db = Database::open(store.path()).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let mut t = txn.open_table(table).expect("table");
            t.insert(key, value).expect("insert");
        }
        txn.commit().expect("commit");
    }

    #[test]
    fn record_that_is_not_json_is_corrupt_naming_the_key() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        poke(&store, RESOURCES, "machine.w[3]", b"{not json");
        match store.load() {
            Err(StateError::Corrupt { detail, .. }) => {
                assert!(detail.contains("resources"), "{detail}");
                assert!(detail.contains("machine.w[3]"), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        poke(&store, RESOURCES, "machine.w[3]", b"{}");
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn journal_entry_that_is_not_json_is_corrupt_naming_the_key() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::JournalOpen(entry("op-1"))])
            .expect("commit");
        poke(&store, JOURNAL, "op-9", b"[1,2");
        match store.load() {
            Err(StateError::Corrupt { detail, .. }) => {
                assert!(
                    detail.contains("journal") && detail.contains("op-9"),
                    "{detail}"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn newer_format_version_is_refused() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        poke(&store, META, KEY_FORMAT_VERSION, &2u32.to_le_bytes());
        assert!(matches!(
            store.load(),
            Err(StateError::Version {
                found: 2,
                supported: 1,
                ..
            })
        ));
        assert!(matches!(
            store.commit(&[Mutation::Put(record("w", 1, "b"))]),
            Err(StateError::Version { .. })
        ));
    }

    #[test]
    fn a_reader_loads_between_commits_of_another_instance() {
        let (_tmp, writer) = store();
        writer
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        let reader = LocalStore::new(writer.dir().to_path_buf());
        let writer = Arc::new(writer);
        let w = Arc::clone(&writer);
        let handle = std::thread::spawn(move || {
            for i in 0..40 {
                w.commit(&[
                    Mutation::Put(record("w", i % 5, &format!("v{i}"))),
                    Mutation::JournalOpen(entry(&format!("op-{i}"))),
                ])
                .expect("commit");
            }
        });
        let mut last = 0;
        let mut loads = 0;
        while !handle.is_finished() || loads < 5 {
            let snap = reader.load().expect("load between commits");
            assert!(snap.serial >= last);
            last = snap.serial;
            loads += 1;
            assert!(reader.history(3).expect("history").len() <= 3);
        }
        handle.join().expect("writer thread");
        assert_eq!(reader.load().expect("load").serial, 41);
    }

    #[test]
    fn open_held_by_another_handle_times_out_as_database_error() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        let mut store = store;
        store.open_timeout = Duration::from_millis(200);
        let held = Database::open(store.path()).expect("hold it open");
        let started = Instant::now();
        match store.load() {
            Err(StateError::Database { detail, .. }) => {
                assert!(detail.contains("another process"), "{detail}")
            }
            other => panic!("expected Database, got {other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(held);
        assert_eq!(store.load().expect("load").serial, 1);
    }

    const CHILD_ENV: &str = "CLUSTERFORM_STATE_TEST_CHILD";

    /// Not a test of its own: the body of the child processes the crash tests start. It
    /// does its part and exits without running destructors, like a killed process.
    #[test]
    fn child_process() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (what, dir) = spec.split_once(':').expect("spec");
        let store = LocalStore::new(PathBuf::from(dir));
        match what {
            "commit-then-die" => {
                store.create_files().expect("files");
                let db = Builder::new().create(store.path()).expect("open");
                let txn = db.begin_write().expect("write");
                let serial = store
                    .apply(&txn, &[Mutation::Put(record("w", 9, "from-child"))])
                    .expect("apply");
                txn.commit().expect("commit");
                assert_eq!(serial, 2);
                std::process::exit(0);
            }
            "lock-then-die" => {
                let guard = store.lock("apply", Duration::ZERO).expect("lock");
                std::mem::forget(guard);
                std::process::exit(0);
            }
            other => panic!("unknown child action {other}"),
        }
    }

    fn run_child(what: &str, dir: &Path) -> u32 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "local::tests::child_process", "--nocapture"])
            .env(CHILD_ENV, format!("{what}:{}", dir.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        let status = child.wait().expect("wait");
        assert!(status.success(), "child {what} failed: {status}");
        pid
    }

    #[test]
    fn a_writer_that_died_without_closing_is_repaired_on_load() {
        let (_tmp, store) = store();
        store
            .commit(&[Mutation::Put(record("w", 0, "a"))])
            .expect("commit");
        run_child("commit-then-die", store.dir());
        assert!(
            matches!(
                Builder::new().open_read_only(store.path()),
                Err(DatabaseError::RepairAborted)
            ),
            "the child left the file needing a repair"
        );
        let snap = store.load().expect("load after a crash");
        assert_eq!(snap.serial, 2);
        assert_eq!(
            snap.resources
                .get(&Address::indexed("machine", "w", 9))
                .map(|r| r.id.as_str()),
            Some("from-child")
        );
        assert_eq!(
            store
                .commit(&[Mutation::Put(record("w", 1, "b"))])
                .expect("commit"),
            3
        );
    }

    #[test]
    fn the_lock_of_a_dead_process_is_taken_over() {
        let (_tmp, store) = store();
        let pid = run_child("lock-then-die", store.dir());
        assert_eq!(store.lock_holder().expect("holder"), None);
        match store.force_unlock("not-it") {
            Err(StateError::WrongLockId {
                current: Some(info),
                ..
            }) => assert_eq!(info.pid, pid),
            other => panic!("expected WrongLockId, got {other:?}"),
        }
        let guard = store.lock("apply", Duration::ZERO).expect("takeover");
        let note = guard.note().expect("note");
        assert!(note.contains(&format!("pid {pid}")), "{note}");
        assert!(note.contains("its process is gone"), "{note}");
    }

    /// Timings for 10,000 records and a 1,000-put commit:
    /// `cargo test -p clusterform-state --release -- --ignored --nocapture timings`.
    #[test]
    #[ignore]
    fn timings() {
        let (_tmp, store) = store();
        let all: Vec<Mutation> = (0..10_000)
            .map(|i| Mutation::Put(record("w", i, &format!("i-{i:08}"))))
            .collect();
        let t = Instant::now();
        store.commit(&all).expect("commit");
        println!("commit of 10,000 puts: {:?}", t.elapsed());

        let t = Instant::now();
        let snap = store.load().expect("load");
        println!("load of 10,000 records: {:?}", t.elapsed());
        assert_eq!(snap.resources.len(), 10_000);

        let batch: Vec<Mutation> = (0..1_000)
            .map(|i| Mutation::Put(record("w", i * 7, &format!("j-{i:08}"))))
            .collect();
        let t = Instant::now();
        store.commit(&batch).expect("commit");
        println!(
            "commit of 1,000 puts into 10,000 records: {:?}",
            t.elapsed()
        );

        let t = Instant::now();
        store
            .commit(&[Mutation::JournalOpen(entry("op"))])
            .expect("journal");
        println!("journal-only commit: {:?}", t.elapsed());

        let t = Instant::now();
        let h = store.history(50).expect("history");
        println!("history(50): {:?} ({} entries)", t.elapsed(), h.len());
        println!(
            "file size: {} bytes",
            std::fs::metadata(store.path()).expect("metadata").len()
        );
    }
}
