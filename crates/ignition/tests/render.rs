//! Role templates: every combination (plain and with etcd TLS) validates against the
//! Ignition 3.3 JSON Schema and with `ignition-validate`, and real Ignition's files stage
//! lays it out on a scratch root (the certificate files with their mode and owner);
//! rendering is deterministic and fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clusterform_ignition::role::EtcdTls;
use clusterform_ignition::{
    Config, EtcdMember, MachineSpec, Platform, StaticNetwork, parse_butane, render, to_json,
};
use clusterform_pki::{Ca, DEFAULT_VALIDITY};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn net(last: u8) -> StaticNetwork {
    StaticNetwork {
        address: Ipv4Addr::new(10, 0, 0, last),
        prefix: 24,
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        dns: vec![Ipv4Addr::new(1, 2, 3, 4)],
        vlan: None,
    }
}

fn etcd(i: u8) -> EtcdMember {
    EtcdMember {
        name: format!("demo-central-{i}"),
        address: Ipv4Addr::new(10, 0, 0, 101 + i),
        initial_cluster: (0..3)
            .map(|j| {
                (
                    format!("demo-central-{j}"),
                    Ipv4Addr::new(10, 0, 0, 101 + j),
                )
            })
            .collect(),
        cluster_token: "demo".into(),
    }
}

fn base(hostname: &str, platform: Platform) -> MachineSpec {
    MachineSpec {
        hostname: hostname.into(),
        platform,
        ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnly a@b".into()],
        network: None,
        docker_tcp: false,
        etcd: None,
        etcd_proxy: None,
        etcd_endpoints: Vec::new(),
        tls: None,
    }
}

fn extra() -> Config {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let bu = dir.join("extras.bu");
    parse_butane(&bu, &std::fs::read_to_string(&bu).unwrap(), &dir).unwrap()
}

/// Every role combination, named.
fn cases() -> Vec<(&'static str, Config)> {
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("http://10.0.0.{}:2379", 101 + i))
        .collect();
    let dev = MachineSpec {
        network: Some(net(50)),
        docker_tcp: true,
        ..base("dev-vm", Platform::Libvirt)
    };
    let member_sim = MachineSpec {
        network: Some(net(101)),
        etcd: Some(etcd(0)),
        ..base("demo-central-0", Platform::Sim)
    };
    let member_ec2 = MachineSpec {
        network: Some(net(102)),
        etcd: Some(etcd(1)),
        ..base("demo-central-1", Platform::Ec2)
    };
    let worker_endpoints = MachineSpec {
        network: Some(net(20)),
        etcd_endpoints: endpoints.clone(),
        ..base("demo-worker-0", Platform::Sim)
    };
    let worker_proxy = MachineSpec {
        ssh_authorized_keys: Vec::new(),
        etcd_proxy: Some(endpoints),
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
        ..base("demo-worker-1", Platform::Metal)
    };
    // etcd with TLS: a member's server-and-peer certificate, workers' client ones.
    // One CA for every call, so that two renderings can be compared.
    static CA: std::sync::OnceLock<Ca> = std::sync::OnceLock::new();
    let ca = CA.get_or_init(|| Ca::generate("demo", DEFAULT_VALIDITY).unwrap());
    let tls = |cert: clusterform_pki::Issued| EtcdTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem.expose().to_string(),
    };
    let member_tls = MachineSpec {
        tls: Some(tls(ca
            .member(
                "demo-central-0",
                &[[10, 0, 0, 101].into()],
                DEFAULT_VALIDITY,
            )
            .unwrap())),
        ..member_sim.clone()
    };
    let https: Vec<String> = (0..3)
        .map(|i| format!("https://10.0.0.{}:2379", 101 + i))
        .collect();
    let worker_proxy_tls = MachineSpec {
        tls: Some(tls(ca.client("demo-worker-1", DEFAULT_VALIDITY).unwrap())),
        etcd_proxy: Some(https.clone()),
        ..worker_proxy.clone()
    };
    let worker_direct_tls = MachineSpec {
        tls: Some(tls(ca.client("demo-worker-0", DEFAULT_VALIDITY).unwrap())),
        etcd_endpoints: https,
        ..worker_endpoints.clone()
    };
    vec![
        ("etcd-member-tls", render(&member_tls, &[])),
        ("worker-proxy-tls", render(&worker_proxy_tls, &[])),
        ("worker-endpoints-tls", render(&worker_direct_tls, &[])),
        ("dev-vm", render(&dev, &[])),
        ("etcd-member-sim", render(&member_sim, &[])),
        ("etcd-member-ec2", render(&member_ec2, &[])),
        ("worker-endpoints", render(&worker_endpoints, &[])),
        ("worker-proxy-dhcp", render(&worker_proxy, &[])),
        ("worker-with-extra", render(&worker_proxy, &[extra()])),
        ("member-with-extra", render(&member_sim, &[extra()])),
    ]
}

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/specs/ignition/ignition-v3_3.schema.json")
}

#[test]
fn every_role_validates_against_the_schema() {
    let path = schema_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert!(!in_ci(), "missing {}", path.display());
        println!("skipped: {} not found", path.display());
        return;
    };
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (name, config) in cases() {
        let instance: serde_json::Value = serde_json::from_str(&to_json(&config)).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    // The validator is not vacuous.
    let bad = serde_json::json!({"ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/x", "mode": "0644"}]}});
    assert!(!validator.is_valid(&bad));
}

const IGNITION_VALIDATE: &str = "/usr/bin/ignition-validate";

fn ignition_validate(json: &str, name: &str) -> std::process::Output {
    let file = std::env::temp_dir().join(format!(
        "clusterform-ignition-{}-{name}.ign",
        std::process::id()
    ));
    std::fs::write(&file, json).unwrap();
    let out = Command::new(IGNITION_VALIDATE).arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    out
}

#[test]
fn every_role_passes_ignition_validate() {
    if !Path::new(IGNITION_VALIDATE).exists() {
        assert!(!in_ci(), "{IGNITION_VALIDATE} missing (CI=true)");
        println!("skipped: install the Debian package ignition for ignition-validate");
        return;
    }
    for (name, config) in cases() {
        let out = ignition_validate(&to_json(&config), name);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name}: {text}");
        // The only warning allowed: the seed's verbatim enable-docker-tcp.service has no
        // [Install] section ("enabled, but has no install section").
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("enable-docker-tcp.service") && line.contains("no install section"),
                "{name}: unexpected ignition-validate output: {line}"
            );
        }
    }
    // And it does reject a broken config (a relative path).
    let out = ignition_validate(
        r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"etc/x"}]}}"#,
        "bad",
    );
    assert!(!out.status.success());
}

/// Debian's `ignition` package ships the real program inside its dracut module.
const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

/// Why real Ignition cannot run here, if so.
fn no_real_ignition() -> Option<String> {
    if !Path::new(IGNITION).exists() {
        return Some(format!("{IGNITION} is missing (apt-get install ignition)"));
    }
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    (!root).then(|| "it needs root (it sets owners)".to_string())
}

/// Run real Ignition's fetch-offline and files stages on `config`, into a fresh
/// scratch root under `dir`; returns the root.
fn apply_with_real_ignition(dir: &Path, name: &str, config: &Config) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let work = dir.join(name);
    let root = work.join("root");
    let bin = work.join("bin");
    std::fs::create_dir_all(root.join("etc/selinux")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    for f in ["passwd", "group", "shadow", "gshadow"] {
        std::fs::copy(Path::new("/etc").join(f), root.join("etc").join(f)).unwrap();
    }
    // Flatcar has a `docker` group (the extras put `core` in it); a build host may not.
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    if !groups.lines().any(|l| l.starts_with("docker:")) {
        for (f, line) in [("group", "docker:x:233:\n"), ("gshadow", "docker:!::\n")] {
            let mut text = std::fs::read_to_string(root.join("etc").join(f)).unwrap();
            text.push_str(line);
            std::fs::write(root.join("etc").join(f), text).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/selinux/config"),
        "SELINUX=disabled\nSELINUXTYPE=targeted\n",
    )
    .unwrap();
    // Relabeling is not what is tested: a `setfiles` that does nothing.
    std::fs::write(bin.join("setfiles"), "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(bin.join("setfiles"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [dir, &work, &root] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(work.join("config.ign"), to_json(config)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let stage = |args: &[&str]| {
        let out = Command::new(IGNITION)
            .args(["-platform", "file"])
            .args(args)
            .args(["-config-cache", "cache.json", "-state-file", "state.json"])
            .arg("-log-to-stdout")
            .current_dir(&work)
            .env("PATH", &path)
            .env("IGNITION_CONFIG_FILE", "config.ign")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: ignition {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    stage(&["-stage", "fetch-offline", "-neednet", "neednet"]);
    stage(&["-stage", "files", "-root", &root.display().to_string()]);
    root
}

#[test]
fn every_role_lands_through_real_ignitions_files_stage() {
    use std::os::unix::fs::MetadataExt;
    if let Some(why) = no_real_ignition() {
        assert!(!in_ci(), "real Ignition cannot run under CI=true: {why}");
        println!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    for (name, config) in cases() {
        let root = apply_with_real_ignition(dir.path(), name, &config);
        let hostname = std::fs::read_to_string(root.join("etc/hostname")).unwrap();
        assert!(hostname.starts_with("de"), "{name}: {hostname}");
        let ssl = root.join("etc/ssl/etcd");
        let mode_owner = |f: &str| {
            let m = std::fs::metadata(ssl.join(f)).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        };
        match name {
            "etcd-member-tls" => {
                // The member's key: etcd's only (Flatcar's etcd user, 232).
                assert_eq!(mode_owner("server.key"), (0o400, 232, 232), "{name}");
                assert_eq!(mode_owner("server.crt"), (0o644, 0, 0), "{name}");
                assert_eq!(mode_owner("ca.crt"), (0o644, 0, 0), "{name}");
                let key = std::fs::read_to_string(ssl.join("server.key")).unwrap();
                assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{name}");
            }
            "worker-proxy-tls" | "worker-endpoints-tls" => {
                assert_eq!(mode_owner("client.key"), (0o400, 0, 0), "{name}");
                assert_eq!(mode_owner("client.crt"), (0o644, 0, 0), "{name}");
            }
            _ => assert!(!ssl.exists(), "{name}: no certificates without TLS"),
        }
    }
}

#[test]
fn rendering_is_deterministic() {
    let a: Vec<String> = cases().iter().map(|(_, c)| to_json(c)).collect();
    let b: Vec<String> = cases().iter().map(|(_, c)| to_json(c)).collect();
    assert_eq!(a, b);
}

#[test]
fn extra_is_merged_over_the_template() {
    let (_, c) = cases().pop().unwrap();
    let users = c.passwd.unwrap().users;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].ssh_authorized_keys.len(), 2);
    assert_eq!(users[0].groups, ["docker"]);
    let units = c.systemd.unwrap().units;
    assert_eq!(units[0].name, "etcd-member.service");
    assert_eq!(units[1].name, "locksmithd.service");
    let files = c.storage.unwrap().files;
    assert_eq!(files[0].path, "/etc/hostname");
    assert!(files.iter().any(|f| f.path == "/etc/motd"));
}

/// `cargo test --release -p clusterform-ignition --test render -- --ignored --nocapture`
#[test]
#[ignore]
fn time_ten_thousand_workers() {
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("http://10.0.0.{}:2379", 101 + i))
        .collect();
    let specs: Vec<MachineSpec> = (0..10_000u32)
        .map(|i| MachineSpec {
            network: Some(StaticNetwork {
                address: Ipv4Addr::from(0x0a01_0000 + i),
                prefix: 16,
                gateway: Ipv4Addr::new(10, 1, 0, 1),
                dns: vec![Ipv4Addr::new(1, 2, 3, 4)],
                vlan: None,
            }),
            etcd_endpoints: endpoints.clone(),
            etcd_proxy: Some(endpoints.clone()),
            ..base(&format!("demo-worker-{i}"), Platform::Sim)
        })
        .collect();
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for spec in &specs {
        bytes += to_json(&render(spec, &[])).len();
    }
    let elapsed = start.elapsed();
    println!(
        "render+to_json: {:.2} µs per machine ({} machines, {bytes} bytes)",
        elapsed.as_secs_f64() * 1e6 / specs.len() as f64,
        specs.len()
    );
}
