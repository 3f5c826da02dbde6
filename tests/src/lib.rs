//! Helpers for the end-to-end scenarios in `tests/`: a private folder per test (cluster
//! file, state, sim cloud), running the real `clusterform` binary, reading the sim cloud.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub mod etcd_server;
pub mod libvirt;
pub mod live;
pub mod metal;

use clusterform_provider::Object;
use clusterform_provider_sim::SimCloud;
use tempfile::TempDir;

/// The `clusterform` binary: `$CLUSTERFORM_BIN`, else built once with cargo.
pub fn bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CLUSTERFORM_BIN") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "-q",
                "-p",
                "clusterform-cli",
                "--bin",
                "clusterform",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building clusterform failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug").join("clusterform")
    })
    .clone()
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// This run, after checking that `clusterform args...` exited `code` (the whole
    /// output in the panic message otherwise).
    pub fn expecting(self, args: &[&str], code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "clusterform {args:?} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A private world for one test: its folder holds the cluster files, their state and
/// the sim cloud (`CLUSTERFORM_SIM_DIR`).
pub struct World {
    dir: TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// A new empty world.
    pub fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The world's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The sim cloud's folder.
    pub fn sim_dir(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    /// Write a file in the world's folder.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
        p
    }

    /// A `clusterform` command run in the world's folder, without colour.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.dir.path())
            .env("CLUSTERFORM_SIM_DIR", self.sim_dir())
            .env("XDG_CONFIG_HOME", self.dir.path().join(".config"))
            .env("NO_COLOR", "1")
            .env_remove("CLUSTERFORM_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Run `clusterform args...` to the end.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run clusterform").into()
    }

    /// Run and insist on exit code `code`.
    pub fn run_ok(&self, args: &[&str], code: i32) -> Run {
        self.run(args).expecting(args, code)
    }

    /// The sim cloud.
    pub fn cloud(&self) -> SimCloud {
        SimCloud::open(&self.sim_dir()).expect("open sim cloud")
    }

    /// Objects in the sim cloud.
    pub fn objects(&self) -> Vec<Object> {
        if !self.sim_dir().exists() {
            return Vec::new();
        }
        self.cloud().list(None).expect("list")
    }

    /// The state as `show --json` prints it.
    pub fn state_json(&self, file: &str) -> serde_json::Value {
        let r = self.run_ok(&["show", file, "--json"], 0);
        serde_json::from_str(&r.stdout).expect("show --json is JSON")
    }

    /// (address, id) pairs in the state, sorted.
    pub fn state_ids(&self, file: &str) -> Vec<(String, String)> {
        let v = self.state_json(file);
        let mut out: Vec<(String, String)> = v["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| {
                (
                    r["address"].as_str().expect("address").to_string(),
                    r["id"].as_str().expect("id").to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// (address, id) pairs in the sim cloud, sorted.
    pub fn cloud_ids(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .objects()
            .into_iter()
            .map(|o| {
                (
                    o.owner.map(|w| w.address.to_string()).unwrap_or_default(),
                    o.id,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The state records exactly the objects the sim cloud has, and nothing is duplicated.
    pub fn assert_state_matches_cloud(&self, file: &str) {
        assert_eq!(self.state_ids(file), self.cloud_ids());
        assert!(self.cloud().duplicates().expect("dups").is_empty());
        let v = self.state_json(file);
        assert_eq!(v["pending"], serde_json::json!([]), "journal left open");
    }
}

/// A dev-test cluster file on the sim provider.
pub fn dev_test(name: &str, workers: u32, size: &str, sim: &str) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "dev-test"
provider = "sim"

[provider.sim]
{sim}

[network]
cidr = "10.0.0.0/16"
dns = ["1.2.3.4"]

[central]
size = "2cpu-4gb"

[workers]
count = {workers}
size = "{size}"
"#
    )
}

/// Helpers for the fault scenarios (crash harness, interrupts, concurrency, disk full).
impl World {
    /// The state serial as `show --json` prints it.
    pub fn serial(&self, file: &str) -> u64 {
        self.state_json(file)["serial"].as_u64().unwrap_or(0)
    }

    /// Addresses in the state, sorted.
    pub fn state_addresses(&self, file: &str) -> Vec<String> {
        self.state_ids(file).into_iter().map(|(a, _)| a).collect()
    }

    /// How far the state and the sim cloud disagree: (duplicates: extra objects sharing
    /// an address in the cloud, orphans: cloud objects the state does not record,
    /// missing: state records whose object is not in the cloud).
    pub fn divergence(&self, file: &str) -> (usize, usize, usize) {
        let state = self.state_ids(file);
        let cloud = self.cloud_ids();
        let dups: usize = self
            .cloud()
            .duplicates()
            .expect("dups")
            .iter()
            .map(|(_, _, ids)| ids.len().saturating_sub(1))
            .sum();
        let orphans = cloud.iter().filter(|c| !state.contains(c)).count();
        let missing = state.iter().filter(|s| !cloud.contains(s)).count();
        (dups, orphans, missing)
    }
}

/// A small deterministic random generator (splitmix64) for tests that pick moments.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// Seeded generator.
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// The line of a table (as `reap` prints) whose first column is `first`; panics with the
/// whole output when there is none.
pub fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{first} ")))
        .unwrap_or_else(|| panic!("no row for {first}:\n{table}"))
}

/// Running as root (the effective uid, via `id -u`: this crate has no libc), where file
/// modes do not stop writes.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
