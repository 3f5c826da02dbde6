//! Real etcd servers for the etcd state backend's tests: one member, or a cluster of
//! three, on 127.0.0.1 ports picked free, each member's data in a temporary folder,
//! killed (by pid) when dropped. The program is Debian's `etcd-server` (`etcd` on PATH).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// `etcd` on PATH, or `None` (with a note) outside CI; under `CI=true` a missing etcd
/// is a failure.
pub fn etcd_program() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the etcd state backend tests need `etcd` (apt-get install etcd-server)"
        );
        eprintln!("note: skipped: `etcd` is not on PATH (apt-get install etcd-server)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

struct Member {
    name: String,
    client: String,
    peer: String,
    data: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback.
pub struct EtcdCluster {
    program: PathBuf,
    dir: TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// A cluster of `n` members, started and serving; `None` when etcd is not installed
    /// (outside CI).
    pub fn start(n: usize) -> Option<EtcdCluster> {
        let program = etcd_program()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("http://127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            program,
            dir,
            members,
            initial_cluster,
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_ready();
        Some(c)
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// The folder the members' data and logs are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts member `i` (again), with its data folder as it was.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        if m.child.is_some() {
            return;
        }
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let child = Command::new(&self.program)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(&m.client)
            .arg("--advertise-client-urls")
            .arg(&m.client)
            .arg("--listen-peer-urls")
            .arg(&m.peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
    }

    /// Stops member `i` (SIGKILL: as a crashed machine would).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until a linearizable read succeeds through every running member (30 s).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = ureq::post(format!("{}/v3/kv/range", m.client))
                    .send(r#"{"key":"cHJvYmU="}"#)
                    .is_ok_and(|r| r.status() == 200);
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not serve within 30 s; its log: {}",
                    m.name,
                    std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}
