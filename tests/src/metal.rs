//! A fake Equinix Metal API for the metal plugin's tests: the stateful fake of
//! `tests/metal/fake_metal.py` behind `prism proxy --errors` with the official OpenAPI
//! spec (`../shared/specs/equinix-metal-v1/openapi3.yaml`), so that every request the
//! plugin sends and every answer the fake gives is checked against the spec.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::workspace_root;

/// The project every lab's objects are in.
pub const PROJECT: &str = "7a1c2e4b-0d3f-4a55-9e6b-1f2a3b4c5d6e";
/// The token the fake accepts.
pub const TOKEN: &str = "metal-canary-token-0c4f9e";

/// A running fake Metal API behind prism.
pub struct MetalLab {
    fake: Child,
    prism: Child,
    fake_url: String,
    /// The URL the plugin is given (`[provider.metal] api_url`): prism's.
    pub api_url: String,
    prism_log: PathBuf,
    _dir: tempfile::TempDir,
}

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skip (None, with a note) when `what` is missing, unless `CI=true`: then fail.
fn need<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_none() {
        assert!(!under_ci(), "the metal tests need {what}");
        eprintln!("note: the metal tests are skipped: {what} is missing");
    }
    found
}

/// The official spec: `$CLUSTERFORM_METAL_SPEC`, else `../shared/specs/...` beside the
/// repository.
pub fn spec() -> Option<PathBuf> {
    let p = std::env::var_os("CLUSTERFORM_METAL_SPEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/specs/equinix-metal-v1/openapi3.yaml"));
    p.is_file().then_some(p)
}

/// prism: `$PRISM`, else the one `scripts/test` installs under `tests/metal/`.
fn prism() -> Option<PathBuf> {
    let p = std::env::var_os("PRISM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("tests/metal/node_modules/.bin/prism"));
    p.is_file().then_some(p)
}

fn python() -> Option<()> {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(())
}

/// The metal plugin beside the `clusterform` binary under test (built when missing), where
/// clusterform finds it as a user's install would.
pub fn plugin() -> PathBuf {
    let p = crate::bin().with_file_name("clusterform-provider-metal");
    if !p.is_file() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-q", "-p", "clusterform-provider-metal"])
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "building clusterform-provider-metal failed"
        );
    }
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl MetalLab {
    /// Start the fake and prism; None (with a note) where the spec, prism or python3 is
    /// missing and `CI` is not `true`.
    pub fn start() -> Option<MetalLab> {
        let spec = need(
            spec(),
            "the Metal OpenAPI spec (../shared/specs/equinix-metal-v1)",
        )?;
        let prism = need(
            prism(),
            "prism (npm ci --prefix tests/metal, as scripts/test does)",
        )?;
        need(python(), "python3")?;
        plugin();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fake = Command::new("python3")
            .arg(workspace_root().join("tests/metal/fake_metal.py"))
            .args(["--port", "0", "--token", TOKEN, "--project", PROJECT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake Metal API");
        let mut first = String::new();
        let out = fake.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut first).expect("read");
        let port: u16 = first
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the fake Metal API said {first:?}"));
        let fake_url = format!("http://127.0.0.1:{port}");
        let prism_port = free_port();
        let prism_log = dir.path().join("prism.log");
        let log = std::fs::File::create(&prism_log).expect("log");
        let prism = Command::new(prism)
            .args(["proxy", "--errors", "-h", "127.0.0.1", "-p"])
            .arg(prism_port.to_string())
            .arg(&spec)
            .arg(&fake_url)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prism");
        let lab = MetalLab {
            fake,
            prism,
            fake_url,
            api_url: format!("http://127.0.0.1:{prism_port}"),
            prism_log,
            _dir: dir,
        };
        let started = Instant::now();
        while !lab.prism_text().contains("Prism is listening") {
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "prism did not start:\n{}",
                lab.prism_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(lab)
    }

    fn prism_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.prism_log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A control call to the fake (never through prism: the spec does not describe it).
    pub fn control(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/_fake/{path}", self.fake_url);
        let mut resp = ureq::post(&url)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("control call");
        let text = resp.body_mut().read_to_string().expect("read");
        serde_json::from_str(&text).expect("JSON")
    }

    /// The API calls the fake answered, by `METHOD route`.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        serde_json::from_value(self.control("calls", Value::Null)).expect("calls")
    }

    /// Forget the call counts.
    pub fn reset_calls(&self) {
        self.control("reset-calls", Value::Null);
    }

    /// Every device the fake holds.
    pub fn devices(&self) -> Vec<Value> {
        match self.control("devices", Value::Null) {
            Value::Array(a) => a,
            other => panic!("devices: {other}"),
        }
    }

    /// Every IP reservation the fake holds.
    pub fn ips(&self) -> Vec<Value> {
        match self.control("ips", Value::Null) {
            Value::Array(a) => a,
            other => panic!("ips: {other}"),
        }
    }

    /// Every VLAN the fake holds.
    pub fn vlans(&self) -> Vec<Value> {
        match self.control("vlans", Value::Null) {
            Value::Array(a) => a,
            other => panic!("vlans: {other}"),
        }
    }

    /// Every spec violation prism saw. A 429 is not among the spec's answers of any
    /// operation (the API did send them), so as many "no such status code" warnings as
    /// there were 429s are not violations.
    pub fn violations(&self) -> Vec<String> {
        let text = self.prism_text();
        let mut throttled = text.matches("has returned 429").count();
        let mut out = Vec::new();
        for l in text.lines().filter(|l| l.contains("Violation")) {
            if throttled > 0 && l.contains("Unable to match the returned status code") {
                throttled -= 1;
                continue;
            }
            out.push(l.to_string());
        }
        out
    }

    /// Fail when prism saw a request or an answer the spec does not allow.
    pub fn assert_spec_clean(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "spec violations:\n{}", v.join("\n"));
        assert!(
            self.prism_text().contains("Forwarding"),
            "no request went through prism"
        );
    }

    /// `[provider.metal]` for this lab.
    pub fn settings(&self) -> String {
        format!(
            "[provider.metal]\napi_url = \"{}\"\nproject_id = \"{PROJECT}\"\nmetro = \"da\"\npoll_interval = \"50ms\"\nprovision_timeout = \"300s\"\n",
            self.api_url
        )
    }
}

impl Drop for MetalLab {
    fn drop(&mut self) {
        for c in [&mut self.prism, &mut self.fake] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
