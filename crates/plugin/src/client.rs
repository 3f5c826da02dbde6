//! One running plugin process: starting it, sending requests and matching replies by id
//! (several in flight at once, up to the plugin's concurrency), per-call timeouts and
//! cancel, and what happens when it crashes, hangs or writes garbage: it is stopped, and
//! every call in flight and after gets an error that names the plugin and what it did.
//! Plain threads move the bytes, so the plugin works the same inside or outside an async
//! runtime, and a plugin that stops reading can never block one.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, mpsc};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::protocol::WireError;

/// With this set to a file, every message to and from every plugin is appended to it,
/// one JSON object per line, sensitive attribute values replaced by `(sensitive)`.
pub const TRACE_ENV: &str = "CLUSTERFORM_PLUGIN_TRACE";

/// The longest line a plugin may write.
const MAX_LINE: u64 = 16 * 1024 * 1024;
/// How many lines of a plugin's stderr are kept for error messages.
const STDERR_TAIL: usize = 8;
/// How long a plugin may take to exit after `shutdown` before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A plugin could not be started or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

/// How a call failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The plugin answered with an error.
    Answer(WireError),
    /// The plugin died, hung or broke the protocol while the call was in flight: its
    /// outcome is unknown.
    Broken(String),
    /// The request was never sent (the plugin had stopped before).
    NotSent(String),
}

enum Reply {
    Result(Value),
    Error(WireError),
    Dead(String),
}

enum Waiter {
    Async(tokio::sync::oneshot::Sender<Reply>),
    Sync(mpsc::Sender<Reply>),
}

impl Waiter {
    fn send(self, r: Reply) {
        match self {
            Waiter::Async(tx) => {
                let _ = tx.send(r);
            }
            Waiter::Sync(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    /// `plugin `NAME` (PATH)`, the start of every message about it.
    label: String,
    pending: Mutex<HashMap<u64, Waiter>>,
    cancelled: Mutex<HashSet<u64>>,
    dead: Mutex<Option<String>>,
    stderr_tail: Mutex<VecDeque<String>>,
    writer: Mutex<Option<mpsc::Sender<String>>>,
    child: Mutex<Child>,
    trace: Option<Mutex<File>>,
    sensitive: RwLock<BTreeSet<String>>,
    plugin: String,
}

impl Shared {
    /// The plugin is done for: record why (the first reason wins), stop it, and fail
    /// every call in flight.
    fn die(&self, what: &str) {
        let reason = {
            let mut dead = lock(&self.dead);
            if dead.is_none() {
                let tail: Vec<String> = lock(&self.stderr_tail).iter().cloned().collect();
                let mut msg = format!("{} {what}", self.label);
                if !tail.is_empty() {
                    msg.push_str(TAIL_MARKER);
                    for l in tail {
                        msg.push_str("\n    ");
                        msg.push_str(&l);
                    }
                }
                *dead = Some(msg);
            }
            dead.clone().unwrap_or_default()
        };
        *lock(&self.writer) = None;
        let _ = lock(&self.child).kill();
        let waiting: Vec<Waiter> = lock(&self.pending).drain().map(|(_, w)| w).collect();
        for w in waiting {
            w.send(Reply::Dead(reason.clone()));
        }
    }

    fn dead(&self) -> Option<String> {
        lock(&self.dead).clone()
    }

    fn send(&self, msg: &Value) -> Result<(), String> {
        self.trace("plugin", msg);
        let line = msg.to_string();
        match lock(&self.writer).as_ref() {
            Some(tx) if tx.send(line).is_ok() => Ok(()),
            _ => Err(self
                .dead()
                .unwrap_or_else(|| format!("{} is not running", self.label))),
        }
    }

    fn trace(&self, to: &str, msg: &Value) {
        let Some(file) = &self.trace else { return };
        let mut msg = msg.clone();
        mask(
            &mut msg,
            &self
                .sensitive
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let line = json!({"to": to, "plugin": self.plugin, "message": msg}).to_string();
        let mut f = lock(file);
        let _ = writeln!(f, "{line}");
    }
}

/// Replace the values of sensitive attributes (in any `attrs` or `prior` table) by
/// `"(sensitive)"`.
fn mask(v: &mut Value, sensitive: &BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "attrs" || k == "prior")
                    && let Value::Object(attrs) = child
                {
                    for (name, value) in attrs.iter_mut() {
                        if sensitive.contains(name) {
                            *value = Value::String("(sensitive)".into());
                        }
                    }
                } else {
                    mask(child, sensitive);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask(i, sensitive)),
        _ => {}
    }
}

/// Where a plugin's message about its death turns to the lines of its stderr.
const TAIL_MARKER: &str = "; the last lines of its stderr:";

/// `msg` (a plugin's death) with `note` added to what happened, before the lines of its
/// stderr.
pub(crate) fn with_note(msg: &str, note: &str) -> String {
    match msg.find(TAIL_MARKER) {
        Some(at) => format!("{}{note}{}", &msg[..at], &msg[at..]),
        None => format!("{msg}{note}"),
    }
}

/// A line of text from a plugin, fit for a message: control characters escaped, long
/// lines cut.
pub(crate) fn shorten(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.trim_end_matches(['\n', '\r']).chars().enumerate() {
        if i >= 200 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "exited".to_string(),
    }
}

/// A running plugin.
pub(crate) struct Client {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    permits: RwLock<Arc<tokio::sync::Semaphore>>,
    timeout: RwLock<Duration>,
    path: PathBuf,
}

impl Client {
    /// Start the executable at `path` for the provider `name`.
    pub(crate) fn start(name: &str, path: &Path) -> Result<Client, PluginError> {
        let label = format!("plugin `{name}` ({})", path.display());
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal reaches clusterform, which
            // lets calls in flight finish, not the plugin in the middle of one.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        format!("; make it executable: chmod +x {}", path.display())
                    }
                    std::io::ErrorKind::NotFound => "; check the path".to_string(),
                    _ => String::new(),
                };
                PluginError(format!("cannot start {label}: {e}{hint}"))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(PluginError(format!("cannot start {label}: no pipes")));
        };
        let trace = std::env::var_os(TRACE_ENV).and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
                .map(Mutex::new)
        });
        let (tx, rx) = mpsc::channel::<String>();
        let shared = Arc::new(Shared {
            label,
            pending: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            dead: Mutex::new(None),
            stderr_tail: Mutex::new(VecDeque::new()),
            writer: Mutex::new(Some(tx)),
            child: Mutex::new(child),
            trace,
            sensitive: RwLock::new(BTreeSet::new()),
            plugin: name.to_string(),
        });
        std::thread::spawn(move || write_loop(stdin, rx));
        let (stderr_done_tx, stderr_done) = mpsc::channel::<()>();
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            stderr_loop(&s, stderr);
            let _ = stderr_done_tx.send(());
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || read_loop(&s, stdout, &stderr_done));
        Ok(Client {
            shared,
            next_id: AtomicU64::new(1),
            permits: RwLock::new(Arc::new(tokio::sync::Semaphore::new(1))),
            timeout: RwLock::new(crate::factory::DEFAULT_CALL_TIMEOUT),
            path: path.to_path_buf(),
        })
    }

    /// Where its executable is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// After the handshake: how many calls may be in flight, and which attribute values
    /// the trace must not show.
    pub(crate) fn set_limits(&self, concurrency: usize, sensitive: BTreeSet<String>) {
        *self
            .permits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(tokio::sync::Semaphore::new(concurrency.clamp(1, 256)));
        *self
            .shared
            .sensitive
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sensitive;
    }

    /// How long one call may take.
    pub(crate) fn set_timeout(&self, t: Duration) {
        *self
            .timeout
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = t;
    }

    fn timeout(&self) -> Duration {
        *self
            .timeout
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the plugin stopped, if it did.
    pub(crate) fn dead(&self) -> Option<String> {
        self.shared.dead()
    }

    fn register(&self, waiter: Waiter) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.pending).insert(id, waiter);
        id
    }

    fn request(&self, id: u64, method: &str, params: Value) -> Result<(), Failure> {
        if let Some(reason) = self.shared.dead() {
            lock(&self.shared.pending).remove(&id);
            return Err(Failure::NotSent(reason));
        }
        self.shared
            .send(&json!({"id": id, "method": method, "params": params}))
            .map_err(|reason| {
                lock(&self.shared.pending).remove(&id);
                Failure::NotSent(reason)
            })
    }

    fn timed_out(&self, id: u64, method: &str, after: Duration) -> Failure {
        lock(&self.shared.pending).remove(&id);
        let _ = self.cancel(id);
        self.shared.die(&format!(
            "did not answer `{method}` (request {id}) within {}; clusterform stopped it (if its calls need longer, raise `call_timeout` in its `[provider.NAME]` table)",
            humantime::format_duration(after)
        ));
        Failure::Broken(self.shared.dead().unwrap_or_default())
    }

    fn cancel(&self, id: u64) -> Result<(), String> {
        lock(&self.shared.cancelled).insert(id);
        self.shared
            .send(&json!({"method": "cancel", "params": {"id": id}}))
    }

    /// A call from code that is not async (the handshake, `configure`).
    pub(crate) fn call_blocking(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let (tx, rx) = mpsc::channel();
        let id = self.register(Waiter::Sync(tx));
        self.request(id, method, params)?;
        match rx.recv_timeout(timeout) {
            Ok(reply) => reply.into_result(),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.timed_out(id, method, timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Failure::Broken(self.shared.dead().unwrap_or_default()))
            }
        }
    }

    /// A call, waiting at most the call timeout. Dropping the future before the answer
    /// (Ctrl-C) sends `cancel`.
    pub(crate) async fn call(&self, method: &str, params: Value) -> Result<Value, Failure> {
        let permits = Arc::clone(
            &self
                .permits
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let _permit = permits
            .acquire()
            .await
            .map_err(|_| Failure::NotSent(format!("{} is closed", self.shared.label)))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let id = self.register(Waiter::Async(tx));
        let mut guard = CancelOnDrop {
            client: self,
            id,
            armed: true,
        };
        if let Err(f) = self.request(id, method, params) {
            guard.armed = false;
            return Err(f);
        }
        let timeout = self.timeout();
        let answer = tokio::time::timeout(timeout, rx).await;
        guard.armed = false;
        match answer {
            Ok(Ok(reply)) => reply.into_result(),
            Ok(Err(_)) => Err(Failure::Broken(self.shared.dead().unwrap_or_default())),
            Err(_) => Err(self.timed_out(id, method, timeout)),
        }
    }

    /// Send `cancel` for request `id` (the conformance check).
    pub(crate) fn send_cancel(&self, id: u64) {
        let _ = self.cancel(id);
    }

    /// Send `shutdown`, close its stdin, and wait for it to exit.
    pub(crate) fn shutdown_wait(&self, grace: Duration) -> Result<(), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.shared.pending).insert(id, Waiter::Sync(tx));
        self.shared
            .send(&json!({"id": id, "method": "shutdown", "params": {}}))?;
        let answered = rx.recv_timeout(grace);
        *lock(&self.shared.writer) = None;
        let start = Instant::now();
        loop {
            let status = lock(&self.shared.child).try_wait();
            match status {
                Ok(Some(s)) if s.success() => {
                    return match answered {
                        Ok(Reply::Result(_)) => Ok(()),
                        Ok(Reply::Error(e)) => Err(format!(
                            "it answered `shutdown` with an error: {}",
                            e.message
                        )),
                        Ok(Reply::Dead(_)) | Err(_) => {
                            Err("it exited without answering `shutdown`".into())
                        }
                    };
                }
                Ok(Some(s)) => return Err(format!("it {}", describe_exit(s))),
                Ok(None) if start.elapsed() < grace => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    self.shared.die("did not exit after `shutdown`");
                    return Err(format!(
                        "it was still running {} after `shutdown`",
                        humantime::format_duration(grace)
                    ));
                }
            }
        }
    }

    /// Stop the plugin now (a broken handshake).
    pub(crate) fn kill(&self, what: &str) {
        self.shared.die(what);
    }
}

impl Reply {
    fn into_result(self) -> Result<Value, Failure> {
        match self {
            Reply::Result(v) => Ok(v),
            Reply::Error(e) => Err(Failure::Answer(e)),
            Reply::Dead(reason) => Err(Failure::Broken(reason)),
        }
    }
}

/// Sends `cancel` for a request whose caller stopped waiting (its future was dropped).
struct CancelOnDrop<'a> {
    client: &'a Client,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && lock(&self.client.shared.pending).remove(&self.id).is_some() {
            let _ = self.client.cancel(self.id);
        }
    }
}

impl Drop for Client {
    /// Ask the plugin to exit (`shutdown`, then end of its stdin); kill it if it has not
    /// within a few seconds.
    fn drop(&mut self) {
        if self.shared.dead().is_some() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.cancelled).insert(id);
        let _ = self
            .shared
            .send(&json!({"id": id, "method": "shutdown", "params": {}}));
        *lock(&self.shared.writer) = None;
        let shared = Arc::clone(&self.shared);
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < SHUTDOWN_GRACE {
                if !matches!(lock(&shared.child).try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = lock(&shared.child).kill();
        });
    }
}

fn write_loop(mut stdin: std::process::ChildStdin, rx: mpsc::Receiver<String>) {
    for line in rx {
        if stdin.write_all(line.as_bytes()).is_err()
            || stdin.write_all(b"\n").is_err()
            || stdin.flush().is_err()
        {
            return;
        }
    }
}

fn stderr_loop(shared: &Shared, stderr: std::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(64 * 1024).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = shorten(&String::from_utf8_lossy(&buf));
        tracing::debug!(plugin = %shared.plugin, "stderr: {line}");
        let mut tail = lock(&shared.stderr_tail);
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn read_loop(shared: &Shared, stdout: std::process::ChildStdout, stderr_done: &mpsc::Receiver<()>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader).take(MAX_LINE + 1).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.len() as u64 > MAX_LINE {
            shared.die(
                "broke the protocol: it wrote a line longer than 16 MiB; clusterform stopped it",
            );
            return;
        }
        if let Err(what) = dispatch(shared, &buf) {
            shared.die(&format!(
                "broke the protocol: {what}; clusterform stopped it"
            ));
            return;
        }
    }
    // End of its stdout: it exited (or closed it). Give it a moment to exit and its
    // stderr a moment to be read, for the message.
    let start = Instant::now();
    let status = loop {
        match lock(&shared.child).try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < Duration::from_secs(2) => {}
            _ => break None,
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = stderr_done.recv_timeout(Duration::from_millis(500));
    let what = match status {
        Some(s) => describe_exit(s),
        None => "closed its stdout".to_string(),
    };
    shared.die(&what);
}

/// Hand one line to the call waiting for it.
fn dispatch(shared: &Shared, line: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return Ok(());
    }
    let msg: Value = serde_json::from_slice(line)
        .map_err(|_| format!("it wrote a line that is not JSON: `{}`", shorten(&text)))?;
    shared.trace("clusterform", &msg);
    let Some(id) = msg.get("id").and_then(Value::as_u64) else {
        return Err(format!(
            "it wrote a message without a request `id`: `{}`",
            shorten(&text)
        ));
    };
    let reply = if let Some(r) = msg.get("result") {
        Reply::Result(r.clone())
    } else if let Some(e) = msg.get("error") {
        Reply::Error(WireError::deserialize(e).map_err(|err| {
            format!(
                "its error for request {id} is not an error of the protocol ({err}): `{}`",
                shorten(&text)
            )
        })?)
    } else {
        return Err(format!(
            "its reply to request {id} has neither `result` nor `error`"
        ));
    };
    let waiter = lock(&shared.pending).remove(&id);
    match waiter {
        Some(w) => {
            w.send(reply);
            Ok(())
        }
        None if lock(&shared.cancelled).remove(&id) => Ok(()),
        None => Err(format!("it answered request {id}, which it was never sent")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_sensitive_attributes_anywhere() {
        let mut v = json!({"params": {"attrs": {"key": "secret", "name": "a"},
            "requests": [{"prior": {"key": "s2"}}]},
            "result": {"objects": [{"attrs": {"key": "s3"}}]}});
        mask(&mut v, &BTreeSet::from(["key".to_string()]));
        let s = v.to_string();
        assert!(
            !s.contains("secret") && !s.contains("s2") && !s.contains("s3"),
            "{s}"
        );
        assert!(s.contains("\"name\":\"a\""), "{s}");
    }

    #[test]
    fn shortens_and_escapes() {
        assert_eq!(shorten("a\u{1b}[31mb\n"), "a\\u{1b}[31mb");
        assert!(shorten(&"x".repeat(500)).ends_with("..."));
    }
}
