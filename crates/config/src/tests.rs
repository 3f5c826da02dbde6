//! Tests of the whole pipeline on inline files, against a schema mirroring the `sim`
//! provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterform_core::{Address, AttrSchema, AttrType, KindSchema, ProviderSchema};
use serde_json::json;

use crate::{Diagnostic, Model, StateSettings, load, parse};

const PATH: &str = "/tmp/clusterform-config-tests/cluster.toml";

fn kind(kind: &str, attrs: Vec<AttrSchema>) -> KindSchema {
    KindSchema {
        kind: kind.to_string(),
        doc: String::new(),
        attrs,
    }
}

/// Mirrors the sim provider's schema.
pub(crate) fn sim() -> ProviderSchema {
    use AttrType::*;
    ProviderSchema {
        provider: "sim".to_string(),
        kinds: vec![
            kind(
                "network",
                vec![
                    AttrSchema::required("name", String, "name").force_new(),
                    AttrSchema::required("cidr", String, "IPv4 range").force_new(),
                    AttrSchema::optional("gateway", String, "gateway"),
                    AttrSchema::optional("dns", StringList, "DNS servers"),
                ],
            ),
            kind(
                "subnet",
                vec![
                    AttrSchema::required("name", String, "name"),
                    AttrSchema::required("network", Reference, "its network"),
                    AttrSchema::required("cidr", String, "IPv4 range"),
                    AttrSchema::optional("zone", String, "zone"),
                ],
            ),
            kind(
                "machine",
                vec![
                    AttrSchema::required("name", String, "name"),
                    AttrSchema::optional("role", String, "role"),
                    AttrSchema::required("size", String, "machine type"),
                    AttrSchema::optional("zone", String, "zone"),
                    AttrSchema::required("network", Reference, "its network"),
                    AttrSchema::optional("subnet", Reference, "its subnet"),
                    AttrSchema::optional_computed("address", String, "IPv4 address"),
                    AttrSchema::optional("etcd_endpoints", StringList, "etcd URLs"),
                    AttrSchema::optional("ssh_authorized_keys", StringList, "SSH keys"),
                    AttrSchema::optional("channel", String, "Flatcar channel"),
                    AttrSchema::optional("user_data", String, "Ignition"),
                    AttrSchema::optional("protect", Bool, "protect"),
                    AttrSchema::optional("tags", Map, "tags"),
                    AttrSchema::computed("state", String, "running or stopped"),
                ],
            ),
            kind(
                "volume",
                vec![
                    AttrSchema::required("name", String, "name"),
                    AttrSchema::required("size_gb", Int, "size in GB"),
                    AttrSchema::optional("zone", String, "zone"),
                    AttrSchema::optional("machine", Reference, "attached to"),
                ],
            ),
        ],
    }
}

fn ok(src: &str) -> Model {
    match parse(Path::new(PATH), src, &[sim()]) {
        Ok(m) => m,
        Err(d) => panic!("expected a model, got:\n{d}"),
    }
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse(Path::new(PATH), src, &[sim()]) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0,
    }
}

/// The only diagnostic; panics listing them when there are several.
fn one_error(src: &str) -> Diagnostic {
    let mut e = errors(src);
    assert_eq!(
        e.len(),
        1,
        "expected one error, got:\n{}",
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    e.remove(0)
}

/// Assert message, line and column.
fn assert_diag(d: &Diagnostic, message: &str, line: usize, column: usize) {
    assert_eq!(
        (d.message.as_str(), d.line, d.column),
        (message, line, column),
        "{d}"
    );
    assert!(
        d.help.is_some(),
        "every diagnostic should say what to do: {d}"
    );
}

fn addr(s: &str) -> Address {
    s.parse().expect("address")
}

fn find<'m>(m: &'m Model, a: &str) -> &'m clusterform_core::Resource {
    let a = addr(a);
    m.resources
        .iter()
        .find(|r| r.address == a)
        .unwrap_or_else(|| panic!("no {a}"))
}

/// The attributes without the (long) rendered Ignition config; asserts it is there.
fn without_user_data(r: &clusterform_core::Resource) -> clusterform_core::Attrs {
    let mut a = r.attrs.clone();
    let ud = a.remove("user_data");
    assert!(
        matches!(ud, Some(serde_json::Value::String(ref s)) if s.starts_with('{')),
        "{} has no user_data",
        r.address
    );
    a
}

const DEV_TEST: &str = r#"[cluster]
name = "demo"
blueprint = "dev-test"
provider = "sim"
ssh_authorized_keys = ["ssh-ed25519 AAAA me@laptop"]

[provider.sim]
latency_ms = 20

[central]
size = "small"
zones = ["a", "b"]

[workers]
count = 3
size = "medium"
zones = ["a", "b"]
"#;

#[test]
fn dev_test_expands_into_plain_resources() {
    let m = ok(DEV_TEST);
    let addrs: Vec<String> = m.resources.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(
        addrs,
        [
            "network.main",
            "machine.central[0]",
            "machine.workers[0]",
            "machine.workers[1]",
            "machine.workers[2]"
        ]
    );
    assert!(m.resources.iter().all(|r| r.provider == "sim"));

    let net = find(&m, "network.main");
    assert_eq!(
        json!(net.attrs),
        json!({"name": "demo-main", "cidr": "10.0.0.0/16", "gateway": "10.0.0.1", "dns": []})
    );

    let c = find(&m, "machine.central[0]");
    assert_eq!(
        json!(without_user_data(c)),
        json!({
            "name": "demo-central-0", "role": "etcd", "size": "small", "zone": "a",
            "address": "10.0.0.101", "channel": "stable",
            "ssh_authorized_keys": ["ssh-ed25519 AAAA me@laptop"],
        })
    );
    assert_eq!(c.refs.get("network"), Some(&addr("network.main")));
    assert!(c.depends_on.is_empty());

    let zones: Vec<&str> = (0..3)
        .map(|i| {
            find(&m, &format!("machine.workers[{i}]")).attrs["zone"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(zones, ["a", "b", "a"]);
    let w = find(&m, "machine.workers[2]");
    assert_eq!(
        json!(without_user_data(w)),
        json!({
            "name": "demo-workers-2", "role": "worker", "size": "medium", "zone": "a",
            "etcd_endpoints": ["https://10.0.0.101:2379"], "channel": "stable",
            "ssh_authorized_keys": ["ssh-ed25519 AAAA me@laptop"],
        })
    );
    assert_eq!(w.refs.get("network"), Some(&addr("network.main")));
    assert_eq!(w.depends_on, vec![addr("machine.central[0]")]);

    // Graph: network first, central before workers.
    let order: Vec<String> = m.graph.topo_order().map(ToString::to_string).collect();
    assert_eq!(order[0], "network.main");
    assert_eq!(order[1], "machine.central[0]");
    assert_eq!(m.graph.dependents(&addr("machine.central[0]")).len(), 3);

    // Spans point at the blueprint tables.
    let line_of = |a: &str| crate::line_col(&m.source, m.spans[&addr(a)].offset).0;
    assert_eq!(line_of("network.main"), 3); // no [network]: `blueprint = ...`
    assert_eq!(line_of("machine.central[0]"), 10);
    assert_eq!(line_of("machine.workers[1]"), 14);

    // Settings.
    assert_eq!(m.cluster.name, "demo");
    assert_eq!(m.cluster.blueprint.as_deref(), Some("dev-test"));
    assert_eq!(m.cluster.channel, "stable");
    assert_eq!(m.cluster.expires_after, None);
    assert_eq!(
        m.providers["sim"].config,
        json!({"latency_ms": 20}).as_object().unwrap().clone()
    );
    assert_eq!(
        crate::line_col(&m.source, m.providers["sim"].span.offset),
        (7, 1)
    );
    assert_eq!(
        m.state,
        StateSettings::Local {
            path: PathBuf::from("/tmp/clusterform-config-tests/.clusterform")
        }
    );
    assert_eq!(m.path, PathBuf::from(PATH));
}

#[test]
fn dev_test_network_settings_first_address_and_protect() {
    let m = ok(r#"[cluster]
name = "lab"
blueprint = "dev-test"
provider = "sim"
channel = "beta"

[network]
cidr = "192.168.10.0/24"
gateway = "192.168.10.254"
dns = ["1.1.1.1", "9.9.9.9"]

[central]
size = "s"
first_address = "192.168.10.20"
protect = true
"#);
    assert_eq!(m.resources.len(), 2, "no workers by default");
    assert_eq!(
        json!(find(&m, "network.main").attrs),
        json!({"name": "lab-main", "cidr": "192.168.10.0/24", "gateway": "192.168.10.254",
               "dns": ["1.1.1.1", "9.9.9.9"]})
    );
    let c = find(&m, "machine.central[0]");
    assert_eq!(c.attrs["address"], json!("192.168.10.20"));
    assert_eq!(c.attrs["protect"], json!(true));
    assert_eq!(c.attrs["channel"], json!("beta"));
    assert!(!c.attrs.contains_key("zone"));
    assert!(!c.attrs.contains_key("ssh_authorized_keys"));
}

#[test]
fn dev_test_default_gateway_and_first_address_follow_the_cidr() {
    let m = ok(r#"[cluster]
name = "lab"
blueprint = "dev-test"
provider = "sim"
[network]
cidr = "172.16.0.0/20"
[central]
size = "s"
[workers]
count = 1
size = "s"
"#);
    assert_eq!(
        find(&m, "network.main").attrs["gateway"],
        json!("172.16.0.1")
    );
    assert_eq!(
        find(&m, "machine.central[0]").attrs["address"],
        json!("172.16.0.101")
    );
    assert_eq!(
        find(&m, "machine.workers[0]").attrs["etcd_endpoints"],
        json!(["https://172.16.0.101:2379"])
    );
}

const PLAIN: &str = r#"[cluster]
name = "lab"
provider = "sim"

[resource.network.net]
cidr = "10.1.0.0/16"

[resource.subnet.public]
count = 2
network = "network.net"
cidr = "10.1.1.0/24"

[resource.machine.app]
count = 2
size = "s"
network = "network.net"
subnet = "subnet.public"
depends_on = ["subnet.public"]
tags = { team = "infra" }

[resource.volume.data]
count = 2
size_gb = 10
machine = "machine.app"

[resource.machine.bastion]
name = "custom"
size = "t"
network = "network.net"
subnet = "subnet.public[1]"
depends_on = ["machine.app", "network.net"]
"#;

#[test]
fn plain_resources_with_count_references_and_depends_on() {
    let m = ok(PLAIN);
    let addrs: Vec<String> = m.resources.iter().map(|r| r.address.to_string()).collect();
    assert_eq!(
        addrs,
        [
            "network.net",
            "subnet.public[0]",
            "subnet.public[1]",
            "machine.app[0]",
            "machine.app[1]",
            "volume.data[0]",
            "volume.data[1]",
            "machine.bastion"
        ]
    );
    // Auto names.
    assert_eq!(find(&m, "network.net").attrs["name"], json!("lab-net"));
    assert_eq!(
        find(&m, "subnet.public[1]").attrs["name"],
        json!("lab-public-1")
    );
    assert_eq!(
        find(&m, "volume.data[0]").attrs["name"],
        json!("lab-data-0")
    );
    assert_eq!(find(&m, "machine.bastion").attrs["name"], json!("custom"));

    // References are refs, not attrs; same count pairs instances.
    let app1 = find(&m, "machine.app[1]");
    assert!(!app1.attrs.contains_key("subnet"));
    assert_eq!(app1.refs["subnet"], addr("subnet.public[1]"));
    assert_eq!(app1.refs["network"], addr("network.net"));
    assert_eq!(app1.attrs["tags"], json!({"team": "infra"}));
    assert_eq!(
        find(&m, "volume.data[1]").refs["machine"],
        addr("machine.app[1]")
    );
    assert_eq!(find(&m, "volume.data[0]").attrs["size_gb"], json!(10));

    // depends_on on a base address names every instance.
    assert_eq!(
        app1.depends_on,
        vec![addr("subnet.public[0]"), addr("subnet.public[1]")]
    );
    let b = find(&m, "machine.bastion");
    assert_eq!(b.refs["subnet"], addr("subnet.public[1]"));
    assert_eq!(
        b.depends_on,
        vec![
            addr("machine.app[0]"),
            addr("machine.app[1]"),
            addr("network.net")
        ]
    );
    assert_eq!(m.graph.len(), 8);
    assert_eq!(m.graph.topo_order().next(), Some(&addr("network.net")));
    assert_eq!(
        crate::line_col(&m.source, m.spans[&addr("volume.data[1]")].offset),
        (21, 1)
    );
}

#[test]
fn plain_resources_next_to_the_blueprint_may_reference_it() {
    let m = ok(&format!(
        "{DEV_TEST}\n[resource.volume.etcd]\nsize_gb = 20\nmachine = \"machine.central[0]\"\ndepends_on = [\"machine.workers\"]\n"
    ));
    let v = find(&m, "volume.etcd");
    assert_eq!(v.provider, "sim");
    assert_eq!(v.attrs["name"], json!("demo-etcd"));
    assert_eq!(v.refs["machine"], addr("machine.central[0]"));
    assert_eq!(v.depends_on.len(), 3);
    assert_eq!(
        m.resources.last().map(|r| r.address.to_string()).as_deref(),
        Some("volume.etcd")
    );
}

#[test]
fn provider_defaults_to_the_only_provider_table() {
    let m = ok(r#"[cluster]
name = "x"
[provider.sim]
seed = 1
[resource.network.n]
cidr = "10.0.0.0/8"
"#);
    assert_eq!(find(&m, "network.n").provider, "sim");
    assert_eq!(m.cluster.provider, None);
}

#[test]
fn settings_defaults_and_values() {
    let m = ok(r#"[cluster]
name = "x"
channel = "lts"
expires_after = "8h"
[state]
backend = "etcd"
[provider.sim]
latency_ms = 20
rate = 1.5
at = 1979-05-27T07:32:00Z
nested = { a = [1, "two", true] }
"#);
    assert_eq!(m.cluster.channel, "lts");
    assert_eq!(m.cluster.expires_after, Some(Duration::from_secs(8 * 3600)));
    assert_eq!(
        m.state,
        StateSettings::Etcd(crate::EtcdState {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/clusterform/x".to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            lock_ttl: Duration::from_secs(30),
        })
    );
    assert_eq!(
        serde_json::Value::Object(m.providers["sim"].config.clone()),
        json!({"latency_ms": 20, "rate": 1.5, "at": "1979-05-27T07:32:00Z",
               "nested": {"a": [1, "two", true]}})
    );
    assert!(m.resources.is_empty());

    let m = ok("[cluster]\nname = \"x\"\n[state]\npath = \"state/here\"\n");
    assert_eq!(
        m.state,
        StateSettings::Local {
            path: PathBuf::from("/tmp/clusterform-config-tests/state/here")
        }
    );
}

const DAY2: &str = r#"[cluster]
name = "p"
blueprint = "central-services"
provider = "sim"
[central]
size = "m"
update = "manual"
etcd_endpoints = ["http://10.0.1.101:2379", "https://etcd.example.com:2379/"]
etcd_via = "ssh://core@bastion.example.com:2222"
"#;

#[test]
fn central_day2_settings() {
    let m = ok(DAY2);
    assert_eq!(
        m.etcd,
        crate::EtcdSettings {
            update: clusterform_core::UpdatePolicy::Manual,
            endpoints: Some(vec![
                "http://10.0.1.101:2379".to_string(),
                "https://etcd.example.com:2379/".to_string()
            ]),
            via: Some("ssh://core@bastion.example.com:2222".to_string()),
            tls: true,
        }
    );
    let defaults = ok(
        "[cluster]\nname = \"p\"\nblueprint = \"central-services\"\nprovider = \"sim\"\n[central]\nsize = \"m\"\n",
    );
    assert_eq!(
        defaults.etcd,
        crate::EtcdSettings {
            tls: true,
            ..Default::default()
        }
    );
    assert_eq!(
        defaults.etcd.update,
        clusterform_core::UpdatePolicy::Rolling
    );
}

#[test]
fn central_day2_settings_errors() {
    let d = one_error(&DAY2.replace("\"manual\"", "\"yolo\""));
    assert_diag(&d, "unknown update policy `yolo`", 7, 10);
    let d = one_error(&DAY2.replace("\"http://10.0.1.101:2379\"", "\"10.0.1.101:2379\""));
    assert_diag(&d, "`10.0.1.101:2379` is not an etcd client URL", 8, 19);
    let d = one_error(&DAY2.replace(
        "etcd_endpoints = [\"http://10.0.1.101:2379\", \"https://etcd.example.com:2379/\"]",
        "etcd_endpoints = []",
    ));
    assert_diag(&d, "`etcd_endpoints` is empty", 8, 18);
    for bad in [
        "core@bastion",
        "ssh://bastion",
        "ssh://core@",
        "ssh://core@host:0",
        "https://core@host",
        "ssh://core@ho st",
    ] {
        let d = one_error(&DAY2.replace("ssh://core@bastion.example.com:2222", bad));
        assert_diag(&d, &format!("`{bad}` is not an SSH destination"), 9, 12);
    }
    let d = one_error(&DAY2.replace("[central]", "[workers]\nupdate = \"manual\"\n[central]"));
    assert!(d.message.contains("`update`"), "{d}");
}

#[test]
fn butane_files_must_exist_beside_the_cluster_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("central.bu"),
        "variant: flatcar\nversion: 1.0.0\n",
    )
    .unwrap();
    let path = dir.path().join("cluster.toml");
    let src = "[cluster]\nname = \"x\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\
               [central]\nsize = \"s\"\nbutane = [\"central.bu\", \"missing.bu\"]\n";
    std::fs::write(&path, src).unwrap();
    let err = load(&path, &[sim()]).unwrap_err().0;
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0]
            .message
            .starts_with("Butane file `missing.bu` does not exist"),
        "{}",
        err[0]
    );
    assert_eq!((err[0].line, err[0].column), (7, 25));

    std::fs::write(&path, src.replace(", \"missing.bu\"", "")).unwrap();
    let m = load(&path, &[sim()]).unwrap();
    assert_eq!(m.resources.len(), 2);
}

/// A cluster file with `butane = [NAME]` in `dir/proj/cluster.toml`: its diagnostics.
fn butane_entry_errors(dir: &Path, name: &str, options: &crate::LoadOptions) -> Vec<Diagnostic> {
    let proj = dir.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let path = proj.join("cluster.toml");
    let src = format!(
        "[cluster]\nname = \"x\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\
         [central]\nsize = \"s\"\nbutane = [{}]\n",
        serde_json::to_string(name).unwrap()
    );
    std::fs::write(&path, src).unwrap();
    match crate::load_with(&path, &[sim()], options) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

const SECRET: &str = "variant: flatcar\nversion: 1.0.0\n# SECRET-CONTENT-42\n";

fn assert_refused(d: &[Diagnostic], needle: &str) {
    assert_eq!(d.len(), 1, "{d:?}");
    let d = &d[0];
    assert!(d.message.contains(needle), "{d}");
    assert_eq!((d.line, d.column), (7, 11), "{d}");
    assert!(d.path.ends_with("cluster.toml"), "{d}");
    assert!(d.help.is_some(), "{d}");
    let all = format!("{d} {:?} {}", d.help, d.source);
    assert!(!all.contains("SECRET-CONTENT"), "{all}");
}

#[test]
fn butane_files_are_read_only_from_inside_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("outside.bu"), SECRET).unwrap();
    let none = crate::LoadOptions::default();
    let d = butane_entry_errors(dir.path(), "../outside.bu", &none);
    assert_refused(&d, "is outside the folder");
    assert!(
        d[0].help
            .as_deref()
            .unwrap_or_default()
            .contains("--files-dir"),
        "{}",
        d[0]
    );
    let abs = dir.path().join("outside.bu").display().to_string();
    assert_refused(
        &butane_entry_errors(dir.path(), &abs, &none),
        "is outside the folder",
    );
    std::os::unix::fs::symlink(dir.path().join("outside.bu"), dir.path().join("proj/l.bu")).ok();
    assert_refused(
        &butane_entry_errors(dir.path(), "l.bu", &none),
        "is outside the folder",
    );
    // `--files-dir` naming a folder that holds both lets it be read.
    let wide = crate::LoadOptions {
        files_dir: Some(dir.path().to_path_buf()),
        etcd_ca: None,
        ..Default::default()
    };
    assert!(butane_entry_errors(dir.path(), "../outside.bu", &wide).is_empty());
    assert!(butane_entry_errors(dir.path(), "l.bu", &wide).is_empty());
}

#[test]
fn butane_files_must_be_small_regular_utf8_files() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(proj.join("folder.bu")).unwrap();
    let none = crate::LoadOptions::default();
    assert_refused(
        &butane_entry_errors(dir.path(), "folder.bu", &none),
        "is a folder, not a regular file",
    );
    let big = std::fs::File::create(proj.join("big.bu")).unwrap();
    big.set_len(clusterform_ignition::BUTANE_LIMIT + 1).unwrap();
    assert_refused(
        &butane_entry_errors(dir.path(), "big.bu", &none),
        "larger than the limit of 1 MiB",
    );
    std::fs::write(proj.join("bin.bu"), [SECRET.as_bytes(), b"\xff\n"].concat()).unwrap();
    let d = butane_entry_errors(dir.path(), "bin.bu", &none);
    assert_refused(&d, "is not UTF-8 text");
    assert!(d[0].message.contains("line 4, column 1"), "{}", d[0]);
    let dev = crate::LoadOptions {
        files_dir: Some(PathBuf::from("/")),
        etcd_ca: None,
        ..Default::default()
    };
    assert_refused(
        &butane_entry_errors(dir.path(), "/dev/zero", &dev),
        "is a character device, not a regular file",
    );
}

#[test]
fn load_refuses_a_folder_and_an_endless_cluster_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path(), &[sim()]).unwrap_err();
    assert!(err.to_string().contains("it is a folder"), "{err}");
    let err = load(Path::new("/dev/zero"), &[sim()]).unwrap_err();
    assert!(
        err.to_string().contains("larger than the limit of 4 MiB"),
        "{err}"
    );
}

#[test]
fn load_reports_a_missing_file_with_its_path() {
    let err = load(Path::new("/nonexistent/dir/cluster.toml"), &[sim()]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let d = &err.0[0];
    assert!(d.message.contains("/nonexistent/dir/cluster.toml"), "{d}");
    assert_eq!(d.span, None);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/dir/cluster.toml: cannot read")
    );
}

// ---- errors: message, line, column ----

#[test]
fn error_unknown_top_level_key() {
    let d = one_error("[cluster]\nname = \"x\"\n\n[clustr]\nname = \"y\"\n");
    assert_diag(&d, "unknown key `clustr` in the file", 4, 2);
    assert!(d.help.as_deref().unwrap().contains("`cluster`, `state`"));
}

#[test]
fn error_unknown_key_in_cluster() {
    let d = one_error("[cluster]\nname = \"x\"\n  colour = \"red\"\n");
    assert_diag(&d, "unknown key `colour` in `[cluster]`", 3, 3);
    assert_eq!(
        d.help.as_deref(),
        Some(
            "expected one of `name`, `blueprint`, `provider`, `channel`, `ssh_authorized_keys`, `expires_after`; see docs/CONFIG.md"
        )
    );
}

#[test]
fn error_wrong_type_for_count() {
    let d = one_error(&DEV_TEST.replace("count = 3", "count = \"three\""));
    assert_diag(
        &d,
        "`count` in `[workers]` must be a whole number, not a string",
        15,
        9,
    );
}

#[test]
fn error_wrong_attribute_type() {
    let d = one_error(
        "[cluster]\nname = \"x\"\nprovider = \"sim\"\n[resource.volume.v]\nsize_gb = \"ten\"\n",
    );
    assert_diag(
        &d,
        "`size_gb` in `[resource.volume.v]` must be an integer, not a string",
        5,
        11,
    );
}

#[test]
fn error_bad_cluster_name() {
    let d = one_error("[cluster]\nname = \"Demo_1\"\n");
    assert_diag(&d, "`Demo_1` is not a valid cluster name", 2, 8);
    let d = one_error(&format!("[cluster]\nname = \"{}\"\n", "a".repeat(41)));
    assert_eq!(d.line, 2);
}

#[test]
fn error_missing_cluster_name_and_table() {
    let d = one_error("[cluster]\nprovider = \"sim\"\n");
    assert_diag(&d, "`[cluster]` has no `name`", 1, 1);
    let d = one_error("[provider.sim]\n");
    assert_eq!(
        (d.message.as_str(), d.line, d.column),
        ("the file has no `[cluster]` table", 1, 1)
    );
}

#[test]
fn error_unknown_blueprint() {
    let d = one_error("[cluster]\nname = \"x\"\nblueprint = \"huge\"\n");
    assert_diag(&d, "unknown blueprint `huge`", 3, 13);
    assert!(d.help.as_deref().unwrap().contains("`central-services`"));
}

#[test]
fn error_unknown_provider() {
    // `wanted_providers` finds every name a file uses, for plugin discovery.
    let wanted = crate::wanted_providers(
        "[cluster]\nprovider = \"a\"\n[provider.b]\nplugin = \"./p\"\n[resource.machine.m]\nprovider = \"c\"\n",
    );
    assert_eq!(wanted.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(wanted["b"]["plugin"], "./p");
    assert!(crate::wanted_providers("not toml [").is_empty());
    let d = one_error("[cluster]\nname = \"x\"\nprovider = \"aws\"\n");
    assert_diag(&d, "unknown provider `aws`", 3, 12);
    let help = d.help.as_deref().unwrap_or_default();
    assert!(help.starts_with("this build has `sim`; "), "{help}");
    assert!(
        help.contains("`clusterform-provider-aws` beside clusterform or on PATH"),
        "{help}"
    );
    let d = one_error("[cluster]\nname = \"x\"\n[provider.ec2]\nregion = \"eu\"\n");
    assert_diag(&d, "unknown provider `ec2`", 3, 11);
}

#[test]
fn error_no_provider_for_a_plain_resource() {
    let d = one_error("[cluster]\nname = \"x\"\n[resource.network.n]\ncidr = \"10.0.0.0/8\"\n");
    assert_diag(
        &d,
        "`network.n` does not say which provider manages it",
        3,
        1,
    );
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .starts_with("say which provider: add `provider = \"sim\"`")
    );
}

#[test]
fn error_unknown_resource_kind() {
    let d = one_error(
        "[cluster]\nname = \"x\"\nprovider = \"sim\"\n[resource.server.a]\nsize = \"s\"\n",
    );
    assert_diag(&d, "provider `sim` has no resource kind `server`", 4, 11);
    assert_eq!(
        d.help.as_deref(),
        Some("expected one of `network`, `subnet`, `machine`, `volume`; see docs/CONFIG.md")
    );
}

#[test]
fn error_unknown_attribute() {
    let d = one_error(&PLAIN.replace("size = \"t\"", "size = \"t\"\nsise = \"t\""));
    assert_diag(&d, "`machine` has no attribute `sise`", 29, 1);
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .starts_with("expected one of `name`, `role`, `size`")
    );
}

#[test]
fn error_computed_attribute() {
    let d = one_error(&PLAIN.replace("size = \"t\"", "size = \"t\"\nstate = \"running\""));
    assert_diag(
        &d,
        "`state` of `machine` is set by the provider; it cannot be set here",
        29,
        1,
    );
}

#[test]
fn error_missing_required_attribute() {
    let d = one_error(&PLAIN.replace("size = \"t\"\n", ""));
    assert_diag(
        &d,
        "`machine.bastion` is missing required attribute `size`",
        26,
        1,
    );
    assert_eq!(
        d.help.as_deref(),
        Some("add `size = \"...\"` (machine type)")
    );
}

#[test]
fn error_unknown_reference() {
    let d = one_error(&PLAIN.replace(
        "subnet = \"subnet.public[1]\"",
        "subnet = \"subnet.privat\"",
    ));
    assert_diag(&d, "reference `subnet.privat` names no resource", 30, 10);
    assert_eq!(
        d.help.as_deref(),
        Some("defined `subnet` resources: `subnet.public`")
    );
    let d = one_error(&PLAIN.replace("subnet = \"subnet.public[1]\"", "subnet = \"public\""));
    assert_diag(
        &d,
        "`public` is not an address: expected `kind.name` or `kind.name[index]`",
        30,
        10,
    );
}

#[test]
fn error_reference_to_counted_resource_without_index() {
    let d = one_error(&PLAIN.replace(
        "subnet = \"subnet.public[1]\"",
        "subnet = \"subnet.public\"",
    ));
    assert_diag(
        &d,
        "`subnet.public` has `count = 2`; a reference must name one of its instances",
        30,
        10,
    );
    assert!(
        d.help
            .as_deref()
            .unwrap()
            .starts_with("name one instance, like `subnet.public[0]`")
    );
}

#[test]
fn error_reference_index_out_of_range() {
    let d = one_error(&PLAIN.replace("subnet.public[1]", "subnet.public[2]"));
    assert_diag(
        &d,
        "`subnet.public[2]` does not exist: `subnet.public` has `count = 2`",
        30,
        10,
    );
    let d = one_error(&PLAIN.replace("\"network.net\"]", "\"network.net[0]\"]"));
    assert_diag(
        &d,
        "`network.net` has no `count`, so `network.net[0]` does not exist",
        31,
        30,
    );
}

#[test]
fn error_unknown_depends_on_entry() {
    let d = one_error(&PLAIN.replace("\"network.net\"]", "\"machine.central\"]"));
    assert_diag(
        &d,
        "`depends_on` entry `machine.central` names no resource",
        31,
        30,
    );
    assert_eq!(
        d.help.as_deref(),
        Some("defined `machine` resources: `machine.app`, `machine.bastion`")
    );
}

#[test]
fn error_duplicate_address_with_the_blueprint() {
    let d = one_error(&format!(
        "{DEV_TEST}\n[resource.machine.workers]\nsize = \"s\"\nnetwork = \"network.main\"\n"
    ));
    assert_diag(
        &d,
        "`machine.workers` is already defined by blueprint `dev-test` (its `[workers]` table)",
        19,
        1,
    );
}

#[test]
fn error_dependency_cycle() {
    let src = r#"[cluster]
name = "x"
provider = "sim"
[resource.network.n]
cidr = "10.0.0.0/8"
[resource.machine.a]
size = "s"
network = "network.n"
depends_on = ["machine.b"]
[resource.machine.b]
size = "s"
network = "network.n"
depends_on = ["machine.c"]
[resource.machine.c]
size = "s"
network = "network.n"
depends_on = ["machine.a"]
"#;
    let d = one_error(src);
    assert_diag(
        &d,
        "dependency cycle: machine.a -> machine.b -> machine.c -> machine.a",
        6,
        1,
    );
    assert_eq!(
        d.help.as_deref(),
        Some("remove one of these `depends_on` entries or references")
    );
}

#[test]
fn error_bad_cidr() {
    let d = one_error(&DEV_TEST.replace(
        "[central]",
        "[network]\ncidr = \"10.0.0.0/33\"\n\n[central]",
    ));
    assert_diag(&d, "`10.0.0.0/33` is not an IPv4 network", 11, 8);
}

#[test]
fn error_address_outside_cidr() {
    let d = one_error(&DEV_TEST.replace(
        "[central]",
        "[network]\ncidr = \"10.0.0.0/24\"\n\n[central]\nfirst_address = \"10.0.1.5\"",
    ));
    assert_diag(
        &d,
        "address `10.0.1.5` of `machine.central[0]` is outside the network `10.0.0.0/24`",
        14,
        17,
    );
    let d =
        one_error(&DEV_TEST.replace("[central]", "[network]\ncidr = \"10.0.0.0/26\"\n[central]"));
    assert_diag(
        &d,
        "the default first address `10.0.0.101` is outside the network `10.0.0.0/26`",
        12,
        1,
    );
    let d = one_error(&DEV_TEST.replace(
        "[central]",
        "[network]\ngateway = \"192.168.0.1\"\n[central]",
    ));
    assert_diag(
        &d,
        "gateway `192.168.0.1` is outside the network `10.0.0.0/16`",
        11,
        11,
    );
}

#[test]
fn error_toml_syntax() {
    let d = one_error("[cluster]\nname = \"x\"\nprovider = sim\n");
    assert_eq!((d.line, d.column), (3, 12), "{d}");
    assert!(d.message.starts_with("invalid TOML: "), "{d}");
    let d = one_error("[cluster]\nname = \"x\"\nname = \"y\"\n");
    assert_diag(&d, "invalid TOML: duplicate key", 3, 1);
}

#[test]
fn error_bad_expires_after() {
    let d = one_error("[cluster]\nname = \"x\"\nexpires_after = \"8 fortnights\"\n");
    assert_eq!((d.line, d.column), (3, 17), "{d}");
    assert!(
        d.message.starts_with("`8 fortnights` is not a duration"),
        "{d}"
    );
}

#[test]
fn error_dev_test_has_one_central_machine() {
    let d = one_error(&DEV_TEST.replace("[central]", "[central]\ncount = 3"));
    assert_diag(&d, "dev-test has exactly one etcd machine", 11, 9);
    assert_eq!(
        d.help.as_deref(),
        Some("use blueprint `central-services` for 3-5")
    );
}

#[test]
fn error_dev_test_needs_sizes_and_a_provider() {
    let e = errors("[cluster]\nname = \"x\"\nblueprint = \"dev-test\"\n[workers]\ncount = 2\n");
    let msgs: Vec<(&str, usize)> = e.iter().map(|d| (d.message.as_str(), d.line)).collect();
    assert_eq!(
        msgs,
        [
            ("blueprint `dev-test` needs `[cluster] provider`", 3),
            ("blueprint `dev-test` needs `[central]` with a `size`", 3),
            ("`[workers]` has no `size`", 4),
        ]
    );
}

#[test]
fn error_blueprint_tables_without_blueprint() {
    let d = one_error("[cluster]\nname = \"x\"\n[workers]\ncount = 2\n");
    assert_diag(&d, "`[workers]` needs `[cluster] blueprint`", 3, 1);
}

#[test]
fn error_state_keys_must_fit_the_backend() {
    let d = one_error("[cluster]\nname = \"x\"\n[state]\nendpoints = [\"http://e:2379\"]\n");
    assert_diag(
        &d,
        "`endpoints` is a setting of `backend = \"etcd\"`, not `local`",
        4,
        1,
    );
}

#[test]
fn etcd_state_settings_are_checked_where_they_are_written() {
    let head = "[cluster]\nname = \"x\"\n[state]\nbackend = \"etcd\"\n";
    let d = one_error(&format!("{head}prefix = \"clusterform\"\n"));
    assert_diag(&d, "`prefix = \"clusterform\"` is not a key prefix", 5, 10);
    let d = one_error(&format!("{head}cert_file = \"c.pem\"\n"));
    assert_diag(&d, "`cert_file` needs `key_file`", 5, 1);
    let d = one_error(&format!("{head}endpoints = [\"10.0.0.5:2379\"]\n"));
    assert_diag(&d, "`10.0.0.5:2379` is not an etcd client URL", 5, 14);
    let d = one_error(&format!("{head}lock_ttl = \"1s\"\n"));
    assert_diag(
        &d,
        "`lock_ttl = \"1s\"` is not a duration of 2 s or more",
        5,
        12,
    );
    let d = one_error(&format!("{head}path = \"x\"\n"));
    assert_diag(
        &d,
        "`path` is a setting of `backend = \"local\"`, not `etcd`",
        5,
        1,
    );
    let m = ok(&format!(
        "{head}endpoints = [\"https://a:2379\", \"https://b:2379\"]\nprefix = \"/teams/infra/\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nlock_ttl = \"10s\"\n"
    ));
    let StateSettings::Etcd(e) = m.state else {
        panic!("etcd settings expected")
    };
    assert_eq!(e.endpoints, ["https://a:2379", "https://b:2379"]);
    assert_eq!(e.prefix, "/teams/infra");
    assert_eq!(
        e.ca_file,
        Some(PathBuf::from("/tmp/clusterform-config-tests/ca.pem"))
    );
    assert!(e.cert_file.is_some() && e.key_file.is_some());
    assert_eq!(e.lock_ttl, Duration::from_secs(10));
}

#[test]
fn outputs_name_a_resource_attribute_the_file_makes() {
    let head = "[cluster]\nname = \"x\"\nprovider = \"sim\"\n[resource.network.main]\ncidr = \"10.0.0.0/16\"\n";
    let m = ok(&format!(
        "{head}[output.net]\nvalue = \"network.main.id\"\ndescription = \"the network\"\n"
    ));
    assert_eq!(m.outputs.len(), 1);
    assert_eq!(
        m.outputs[0].target,
        clusterform_core::Address::new("network", "main")
    );
    assert_eq!(m.outputs[0].attr, "id");
    assert_eq!(m.outputs[0].description.as_deref(), Some("the network"));
    let d = one_error(&format!("{head}[output.a]\nvalue = \"network.other.id\"\n"));
    assert_diag(
        &d,
        "`network.other.id` refers to `network.other`, which this file does not make",
        7,
        9,
    );
    let d = one_error(&format!(
        "{head}[output.a]\nvalue = \"network.main.colour\"\n"
    ));
    assert_diag(&d, "`network` has no attribute `colour`", 7, 9);
    let d = one_error(&format!("{head}[output.a]\nvalue = \"main\"\n"));
    assert_diag(&d, "`main` is not a resource attribute", 7, 9);
    let d = one_error(&format!(
        "{head}[output.machines]\nvalue = \"network.main.id\"\n"
    ));
    assert_diag(
        &d,
        "`machines` is an output clusterform gives every cluster",
        6,
        9,
    );
    let d = one_error(&format!("{head}[output.a]\ndescription = \"no value\"\n"));
    assert_diag(&d, "`[output.a]` has no `value`", 6, 1);
}

#[test]
fn collects_several_errors_at_once() {
    let e = errors(
        "[cluster]\nname = \"X\"\nchannel = \"nightly\"\nprovider = \"sim\"\n\
         [resource.machine.m]\nsise = 1\n[resource.volume.v]\nsize_gb = 1\nmachine = \"machine.nope\"\n",
    );
    let lines: Vec<usize> = e.iter().map(|d| d.line).collect();
    // name, channel, machine.m: unknown `sise` + missing size + missing network, volume ref.
    assert_eq!(lines, [2, 3, 5, 5, 6, 9], "{e:#?}");
}

/// `cargo test --release -p clusterform-config -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn dev_test_with_10k_workers_loads_fast() {
    let src = DEV_TEST.replace("count = 3", "count = 10000");
    let schemas = [sim()];
    let _ = parse(Path::new(PATH), &src, &schemas).expect("model");
    let runs: u32 = 10;
    let (mut total, mut graph) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..runs {
        let start = std::time::Instant::now();
        let m = parse(Path::new(PATH), &src, &schemas).expect("model");
        drop(std::hint::black_box(m.graph));
        total += start.elapsed();
        assert_eq!(m.resources.len(), 10_002);
        // Every machine carries its rendered Ignition config.
        assert!(
            m.resources[1..]
                .iter()
                .all(|r| r.attrs.contains_key("user_data"))
        );
        // The share of `ResourceGraph::build` (clusterform-core) in the total.
        let start = std::time::Instant::now();
        let g = clusterform_core::ResourceGraph::build(&m.resources).expect("graph");
        graph += start.elapsed();
        drop(g);
    }
    let (total, graph) = (total / runs, graph / runs);
    println!(
        "10k-worker dev-test: {total:?} per load, of which ResourceGraph::build {graph:?}, config {:?}",
        total.saturating_sub(graph)
    );
    assert!(total < Duration::from_millis(300), "{total:?}");
}

mod blueprints;
