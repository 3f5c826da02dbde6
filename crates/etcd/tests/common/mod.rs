//! Helpers shared by the integration tests: free ports, a canned HTTP server, finding
//! the `etcd` binary, and real etcd clusters on loopback that are killed when dropped.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clusterform_etcd::{ClientConfig, EtcdClient, EtcdReader, Timeouts};

/// `n` distinct free ports on 127.0.0.1 (held until all are picked, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A URL on 127.0.0.1 where nothing listens.
pub fn closed_url() -> String {
    format!("http://127.0.0.1:{}", free_ports(1)[0])
}

/// Short timeouts for tests.
pub fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(2),
    }
}

/// A client for `endpoints`, dialled directly, with [`short_timeouts`].
pub fn client(endpoints: Vec<String>) -> EtcdClient {
    EtcdClient::new(ClientConfig {
        endpoints,
        url_map: BTreeMap::new(),
        timeouts: short_timeouts(),
    })
}

/// One request a [`CannedServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// The request body.
    pub body: String,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers each path with a canned status and
/// body (404 `Not Found` for others) and records what it received.
pub struct CannedServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// What it received, in order.
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl CannedServer {
    /// Starts the server with answers `(path, status, body)`.
    pub fn start(answers: &[(&str, u16, &str)]) -> CannedServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answers: BTreeMap<String, (u16, String)> = answers
            .iter()
            .map(|(p, s, b)| (p.to_string(), (*s, b.to_string())))
            .collect();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, stop2) = (Arc::clone(&received), Arc::clone(&stop));
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = serve_one(conn, &answers, &rec);
            }
        });
        CannedServer {
            url: format!("http://127.0.0.1:{port}"),
            received,
            stop,
            port,
        }
    }

    /// What it received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(
    conn: TcpStream,
    answers: &BTreeMap<String, (u16, String)>,
    received: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        // A connection opened and closed without a request (a readiness probe).
        return Ok(());
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    received.lock().unwrap().push(Received {
        path: path.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let (status, answer) = answers
        .get(&path)
        .cloned()
        .unwrap_or((404, "Not Found\n".to_string()));
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    conn.flush()
}

/// The etcd binary: `/usr/bin/etcd`, else `etcd` on `PATH`. When there is none, prints
/// how to install it and returns `None` (the test then returns early), except when the
/// environment variable `CI` is `true`: then it panics, so CI cannot skip these tests.
pub fn etcd_binary() -> Option<PathBuf> {
    etcd_binary_from(
        Path::new("/usr/bin/etcd"),
        std::env::var_os("PATH"),
        std::env::var("CI").ok(),
    )
}

/// [`etcd_binary`] with its inputs given (for its own test).
pub fn etcd_binary_from(
    fixed: &Path,
    path: Option<std::ffi::OsString>,
    ci: Option<String>,
) -> Option<PathBuf> {
    let found = if fixed.is_file() {
        Some(fixed.to_path_buf())
    } else {
        path.and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("etcd"))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        let msg = "etcd is not installed (no /usr/bin/etcd and no etcd on PATH): apt-get install etcd-server";
        if ci.as_deref() == Some("true") {
            panic!("{msg} (CI=true: failing instead of skipping)");
        }
        eprintln!("skipping this test: {msg}");
    }
    found
}

/// One etcd process; killed and waited for when dropped.
pub struct EtcdProc {
    /// `--name`.
    pub name: String,
    /// Its client URL.
    pub client_url: String,
    /// Its peer URL.
    pub peer_url: String,
    /// Where its output goes.
    pub log: PathBuf,
    child: Option<Child>,
}

impl EtcdProc {
    /// Kills the process and waits for it (again: nothing).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            // Show the end of its log next to the failure.
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(15)..];
                eprintln!(
                    "--- last lines of etcd {} ---\n{}",
                    self.name,
                    tail.join("\n")
                );
            }
        }
    }
}

/// Real etcd processes on 127.0.0.1 with data in a temp dir.
pub struct EtcdCluster {
    /// The processes (declared before `dir`: they are killed before it is removed).
    pub procs: Vec<EtcdProc>,
    /// Their data dirs and logs.
    pub dir: tempfile::TempDir,
    binary: PathBuf,
}

impl EtcdCluster {
    /// A new cluster of `n` members `m0`.. (started and ready), or `None` when etcd
    /// is not installed (see [`etcd_binary`]).
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        let binary = etcd_binary()?;
        let mut cluster = EtcdCluster {
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            binary,
        };
        let ports = free_ports(2 * n);
        let members: Vec<(String, String, String)> = (0..n)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("http://127.0.0.1:{}", ports[2 * i]),
                    format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                )
            })
            .collect();
        let initial: Vec<String> = members
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect();
        let initial = initial.join(",");
        for (name, client, peer) in &members {
            cluster.spawn(name, client, peer, &initial, "new");
        }
        cluster.wait_ready(Duration::from_secs(30)).await;
        Some(cluster)
    }

    /// Starts one more etcd process; returns its index in `procs`.
    pub fn spawn(
        &mut self,
        name: &str,
        client_url: &str,
        peer_url: &str,
        initial_cluster: &str,
        state: &str,
    ) -> usize {
        let data = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(&self.binary)
            .args(["--name", name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", client_url])
            .args(["--advertise-client-urls", client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "clusterform-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.procs.push(EtcdProc {
            name: name.to_string(),
            client_url: client_url.to_string(),
            peer_url: peer_url.to_string(),
            log,
            child: Some(child),
        });
        self.procs.len() - 1
    }

    /// The client URLs of all processes started, in order.
    pub fn client_urls(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.client_url.clone()).collect()
    }

    /// A client over every member, with short timeouts.
    pub fn client(&self) -> EtcdClient {
        client(self.client_urls())
    }

    /// The process named `name`.
    pub fn proc_named(&mut self, name: &str) -> &mut EtcdProc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }

    /// Waits until every member answers status with a leader and a quorum read works.
    pub async fn wait_ready(&self, limit: Duration) {
        let client = self.client();
        let started = Instant::now();
        loop {
            let mut ready = true;
            for url in self.client_urls() {
                match client.status(&url).await {
                    Ok(s) if s.leader != 0 => {}
                    _ => ready = false,
                }
            }
            if ready && client.quorum_read().await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "the etcd cluster was not ready after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
