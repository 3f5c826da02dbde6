//! The local store's lock: an OS advisory lock (`flock`) on `<dir>/lock`, held by an open
//! file that lives in the guard, plus the holder's [`LockInfo`] as JSON inside that file so
//! that others can name the holder, take over a lock whose process died, or force-unlock.
//!
//! The kernel drops a `flock` when its process dies, so "the flock is free but the file
//! still names a holder" proves that holder is gone. A `flock` belongs to an open file
//! description, so two [`crate::LocalStore`]s in one process contend like two processes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fs4::fs_std::FileExt;

use crate::local::ensure_private_dir;
use crate::{LockGuard, LockInfo, StateError};

/// How long a lock counts as live before its `expires_at` (informational: a live flock is
/// never broken).
const LOCK_TTL: Duration = Duration::from_secs(3600);
/// How often a waiting `lock` retries.
const POLL: Duration = Duration::from_millis(100);
/// Attempts, and the pause between them, at reading a holder's info that is empty or
/// partial because the holder is writing it (about 50 ms in all).
const READ_ATTEMPTS: u32 = 6;
const READ_PAUSE: Duration = Duration::from_millis(10);

/// Where the lock lives and how errors name the store.
pub(crate) struct LockPaths<'a> {
    /// The state folder (created 0700 when the lock is first taken).
    pub dir: &'a Path,
    /// `<dir>/lock`.
    pub file: &'a Path,
    /// The store's name for error messages.
    pub store: &'a str,
}

/// A held lock: the open, flocked file. Dropping it empties the file and releases the lock.
pub(crate) struct FileLockGuard {
    file: File,
    path: PathBuf,
    info: LockInfo,
    note: Option<String>,
}

impl LockGuard for FileLockGuard {
    fn info(&self) -> &LockInfo {
        &self.info
    }

    fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }
}

impl std::fmt::Debug for FileLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLockGuard")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        // Empty the file first, so that whoever takes the lock next does not mistake our
        // info for a lock abandoned by a dead process; then let go. Errors cannot be
        // reported from drop; closing the file releases the flock regardless.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_data();
        let _ = FileExt::unlock(&self.file);
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating with mode 0600 if needed, and its folder with 0700) the lock file for
/// reading and writing.
fn open_or_create(paths: &LockPaths<'_>) -> Result<File, StateError> {
    ensure_private_dir(paths.dir)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(paths.file)
    {
        Ok(file) => {
            // The mode above is filtered by the umask; set it exactly.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(paths.file))?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
            .read(true)
            .write(true)
            .open(paths.file)
            .map_err(io_err(paths.file)),
        Err(e) => Err(io_err(paths.file)(e)),
    }
}

/// Opens the lock file if it exists (`None` otherwise), without creating anything.
fn open_existing(path: &Path, write: bool) -> Result<Option<File>, StateError> {
    match OpenOptions::new().read(true).write(write).open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Tries the exclusive flock without blocking: `true` when we now hold it.
fn try_exclusive(file: &File, path: &Path) -> Result<bool, StateError> {
    FileExt::try_lock_exclusive(file).map_err(io_err(path))
}

/// Reads the whole content of an open file from the start.
fn read_all(mut file: &File, path: &Path) -> Result<Vec<u8>, StateError> {
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.read_to_end(&mut buf).map_err(io_err(path))?;
    Ok(buf)
}

/// Parses lock-file content; `None` when empty or not a whole `LockInfo`.
fn parse(content: &[u8]) -> Option<LockInfo> {
    if content.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    serde_json::from_slice(content).ok()
}

/// Reads the info of a *live* holder. The holder may be between truncating and writing, so
/// empty or partial content is read again a few times before giving up with a placeholder
/// that says the holder could not be named.
fn read_live_holder(path: &Path) -> Result<LockInfo, StateError> {
    for attempt in 0..READ_ATTEMPTS {
        match std::fs::read(path) {
            Ok(content) => {
                if let Some(info) = parse(&content) {
                    return Ok(info);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        if attempt + 1 < READ_ATTEMPTS {
            std::thread::sleep(READ_PAUSE);
        }
    }
    Ok(LockInfo {
        id: String::new(),
        operation: "unknown (the holder has not written its details)".to_string(),
        user: "unknown".to_string(),
        host: "unknown".to_string(),
        pid: 0,
        started_at: String::new(),
        expires_at: String::new(),
    })
}

/// The user running this process (`$USER`, else `$LOGNAME`, else `unknown`).
fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

fn current_host() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// `user@host` of this process, as lock holders and ownership tags name it.
pub fn operator() -> String {
    format!("{}@{}", current_user(), current_host())
}

pub(crate) fn new_info(operation: &str) -> LockInfo {
    let now = SystemTime::now();
    LockInfo {
        id: uuid::Uuid::new_v4().to_string(),
        operation: operation.to_string(),
        user: current_user(),
        host: current_host(),
        pid: std::process::id(),
        started_at: humantime::format_rfc3339_seconds(now).to_string(),
        expires_at: humantime::format_rfc3339_seconds(now + LOCK_TTL).to_string(),
    }
}

/// Replaces the file's content with `info` (truncate, write, fsync).
fn write_info(mut file: &File, path: &Path, info: &LockInfo) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(info).map_err(|e| StateError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    file.set_len(0).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    file.write_all(&json).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

/// Takes the lock for `operation`, polling every 100 ms for up to `wait` while a live
/// process holds it.
pub(crate) fn acquire(
    paths: &LockPaths<'_>,
    operation: &str,
    wait: Duration,
) -> Result<FileLockGuard, StateError> {
    let file = open_or_create(paths)?;
    let deadline = Instant::now() + wait;
    loop {
        if try_exclusive(&file, paths.file)? {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StateError::Locked {
                path: paths.store.to_string(),
                holder: Box::new(read_live_holder(paths.file)?),
            });
        }
        std::thread::sleep(POLL.min(deadline - now));
    }

    // We hold the flock. Whatever the file still says was written by a process that no
    // longer holds it: it died (or was killed) without its guard's drop running.
    match take_over(&file, paths, operation) {
        Ok((info, note)) => Ok(FileLockGuard {
            file,
            path: paths.file.to_path_buf(),
            info,
            note,
        }),
        Err(e) => {
            let _ = FileExt::unlock(&file);
            Err(e)
        }
    }
}

/// With the flock held: notes whose abandoned lock (if any) the file names, then writes
/// our own info.
fn take_over(
    file: &File,
    paths: &LockPaths<'_>,
    operation: &str,
) -> Result<(LockInfo, Option<String>), StateError> {
    let previous = read_all(file, paths.file)?;
    let note = if previous.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(match parse(&previous) {
            Some(old) => format!(
                "took over lock {} of {}@{} (pid {}, `{}` since {}): its process is gone",
                old.id, old.user, old.host, old.pid, old.operation, old.started_at
            ),
            None => format!(
                "took over the lock at `{}`: it held unreadable details of a process that is gone",
                paths.file.display()
            ),
        })
    };
    let info = new_info(operation);
    write_info(file, paths.file, &info)?;
    Ok((info, note))
}

/// Who holds the lock: `Some` only while a live process holds the flock.
///
/// Probes with a *shared* flock taken and released at once, which never disturbs a holder;
/// a process trying to take the lock in that same instant sees it busy and, if it waits,
/// retries 100 ms later.
pub(crate) fn holder(paths: &LockPaths<'_>) -> Result<Option<LockInfo>, StateError> {
    let Some(file) = open_existing(paths.file, false)? else {
        return Ok(None);
    };
    if FileExt::try_lock_shared(&file).map_err(io_err(paths.file))? {
        FileExt::unlock(&file).map_err(io_err(paths.file))?;
        return Ok(None);
    }
    read_live_holder(paths.file).map(Some)
}

/// Removes the lock with id `id` if its holder is gone; refuses while a live process holds
/// it.
pub(crate) fn force_unlock(paths: &LockPaths<'_>, id: &str) -> Result<LockInfo, StateError> {
    let wrong = |current: Option<LockInfo>| StateError::WrongLockId {
        path: paths.store.to_string(),
        id: id.to_string(),
        current: current.map(Box::new),
    };
    let Some(file) = open_existing(paths.file, true)? else {
        return Err(wrong(None));
    };
    if try_exclusive(&file, paths.file)? {
        // The holder (if any) is gone: the file's content is a stale lock, or nothing.
        let result = (|| {
            let current = parse(&read_all(&file, paths.file)?);
            match current {
                Some(info) if info.id == id => {
                    file.set_len(0).map_err(io_err(paths.file))?;
                    file.sync_data().map_err(io_err(paths.file))?;
                    Ok(info)
                }
                other => Err(wrong(other)),
            }
        })();
        FileExt::unlock(&file).map_err(io_err(paths.file))?;
        return result;
    }
    let holder = read_live_holder(paths.file)?;
    if holder.id != id {
        return Err(wrong(Some(holder)));
    }
    Err(StateError::LockHeldByLiveProcess {
        path: paths.store.to_string(),
        holder: Box::new(holder),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use crate::{LocalStore, StateStore};

    use super::*;

    fn stores() -> (tempfile::TempDir, LocalStore, LocalStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(".clusterform");
        (tmp, LocalStore::new(dir.clone()), LocalStore::new(dir))
    }

    fn stale_info(pid: u32) -> LockInfo {
        LockInfo {
            id: "stale-id".to_string(),
            operation: "apply".to_string(),
            user: "alice".to_string(),
            host: "build-7".to_string(),
            pid,
            started_at: "2025-01-01T00:00:00Z".to_string(),
            expires_at: "2025-01-01T01:00:00Z".to_string(),
        }
    }

    /// Leaves a lock file naming a holder that does not hold the flock (it died).
    fn write_stale(store: &LocalStore, info: &LockInfo) {
        std::fs::create_dir_all(store.dir()).expect("mkdir");
        std::fs::write(
            store.dir().join("lock"),
            serde_json::to_vec(info).expect("json"),
        )
        .expect("write");
    }

    #[test]
    fn contention_between_two_stores_names_the_holder() {
        let (_tmp, a, b) = stores();
        let guard = a.lock("apply", Duration::ZERO).expect("first lock");
        assert_eq!(guard.note(), None);
        let info = guard.info().clone();
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.operation, "apply");
        assert!(uuid::Uuid::parse_str(&info.id).is_ok());
        assert!(humantime::parse_rfc3339(&info.started_at).is_ok());
        assert!(humantime::parse_rfc3339(&info.expires_at).is_ok());

        let started = Instant::now();
        match b.lock("destroy", Duration::from_millis(250)) {
            Err(StateError::Locked { holder, .. }) => {
                assert_eq!(*holder, info);
            }
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got the lock"),
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        let message = match b.lock("destroy", Duration::ZERO) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected Locked"),
        };
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert_eq!(b.lock_holder().expect("holder"), Some(info.clone()));
        assert_eq!(a.lock_holder().expect("holder"), Some(info));

        drop(guard);
        assert_eq!(
            std::fs::read(a.dir().join("lock")).expect("read"),
            Vec::<u8>::new(),
            "a released lock leaves an empty file"
        );
        assert_eq!(b.lock_holder().expect("holder"), None);
        let again = b.lock("destroy", Duration::ZERO).expect("free again");
        assert_eq!(
            again.note(),
            None,
            "a cleanly released lock is not a takeover"
        );
    }

    #[test]
    fn waiting_lock_gets_it_when_the_holder_lets_go() {
        let (_tmp, a, b) = stores();
        let guard = a.lock("apply", Duration::ZERO).expect("first lock");
        let (tx, rx) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            rx.recv().expect("go");
            std::thread::sleep(Duration::from_millis(300));
            drop(guard);
        });
        tx.send(()).expect("send");
        let started = Instant::now();
        let second = b
            .lock("apply", Duration::from_secs(10))
            .expect("after wait");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(second.note(), None);
        holder.join().expect("holder thread");
    }

    #[test]
    fn stale_lock_is_taken_over_with_a_note() {
        let (_tmp, a, _b) = stores();
        write_stale(&a, &stale_info(4242));
        assert_eq!(
            a.lock_holder().expect("holder"),
            None,
            "nobody holds the flock"
        );
        let guard = a.lock("apply", Duration::ZERO).expect("takeover");
        let note = guard.note().expect("note");
        assert!(note.contains("pid 4242"), "{note}");
        assert!(
            note.contains("stale-id") && note.contains("alice@build-7"),
            "{note}"
        );
        assert_ne!(guard.info().id, "stale-id");
        let on_disk: LockInfo =
            serde_json::from_slice(&std::fs::read(a.dir().join("lock")).expect("read"))
                .expect("json");
        assert_eq!(&on_disk, guard.info());
    }

    #[test]
    fn unreadable_lock_file_is_taken_over() {
        let (_tmp, a, _b) = stores();
        std::fs::create_dir_all(a.dir()).expect("mkdir");
        std::fs::write(a.dir().join("lock"), b"{\"id\": \"half").expect("write");
        let guard = a.lock("apply", Duration::ZERO).expect("takeover");
        assert!(guard.note().is_some());
    }

    #[test]
    fn force_unlock() {
        let (_tmp, a, b) = stores();
        // Nothing there.
        assert!(matches!(
            a.force_unlock("x"),
            Err(StateError::WrongLockId { current: None, .. })
        ));

        // A stale lock: wrong id, then the right one.
        write_stale(&a, &stale_info(4242));
        match a.force_unlock("nope") {
            Err(StateError::WrongLockId { id, current, .. }) => {
                assert_eq!(id, "nope");
                assert_eq!(current.map(|c| *c), Some(stale_info(4242)));
            }
            other => panic!("expected WrongLockId, got {other:?}"),
        }
        assert_eq!(
            a.force_unlock("stale-id").expect("unlock"),
            stale_info(4242)
        );
        assert!(
            std::fs::read(a.dir().join("lock"))
                .expect("read")
                .is_empty()
        );
        let fresh = a.lock("apply", Duration::ZERO).expect("lock");
        assert_eq!(fresh.note(), None, "nothing left to take over");

        // A live holder: wrong id, then its id, which is refused.
        let id = fresh.info().id.clone();
        assert!(matches!(
            b.force_unlock("stale-id"),
            Err(StateError::WrongLockId {
                current: Some(_),
                ..
            })
        ));
        match b.force_unlock(&id) {
            Err(e @ StateError::LockHeldByLiveProcess { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("kill {}", std::process::id())),
                    "{message}"
                );
            }
            other => panic!("expected LockHeldByLiveProcess, got {other:?}"),
        }
        // The holder was not disturbed.
        assert_eq!(b.lock_holder().expect("holder"), Some(fresh.info().clone()));
        assert!(matches!(
            b.lock("apply", Duration::ZERO),
            Err(StateError::Locked { .. })
        ));
    }

    #[test]
    fn lock_creates_folder_and_file_privately() {
        let (_tmp, a, _b) = stores();
        let guard = a.lock("apply", Duration::ZERO).expect("lock");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(a.dir()), 0o700);
        assert_eq!(mode(&a.dir().join("lock")), 0o600);
        assert!(
            !a.path().exists(),
            "the lock does not create the state file"
        );
        drop(guard);
    }
}
