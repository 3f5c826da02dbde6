//! Machine configs end to end: every example (every blueprint x every provider) renders
//! Ignition that passes the 3.3 JSON Schema and `ignition-validate`; `render` gives what
//! the provider received; a change of user data is a replacement with a short diff.

use std::path::{Path, PathBuf};

use clusterform_tests::{World, workspace_root};

/// `../shared/specs/ignition/ignition-v3_3.schema.json`, next to the repository.
fn schema_path() -> Option<PathBuf> {
    let p = workspace_root()
        .join("..")
        .join("shared/specs/ignition/ignition-v3_3.schema.json");
    p.exists().then_some(p)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn ignition_validate() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/ignition-validate");
    p.exists().then_some(p)
}

/// Copy an example folder into the world (so relative Butane files resolve).
fn copy_dir(from: &Path, w: &World) {
    for entry in std::fs::read_dir(from).expect("read example dir") {
        let p = entry.expect("entry").path();
        if p.is_file() {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string();
            // A copy keeps the mode: the plugin example's executable stays executable.
            std::fs::copy(&p, w.path().join(&name)).expect("copy");
        }
    }
}

#[test]
fn every_example_renders_valid_ignition() {
    let Some(schema_file) = schema_path() else {
        assert!(
            !in_ci(),
            "../shared/specs/ignition/ignition-v3_3.schema.json is missing"
        );
        eprintln!("skipped: ../shared/specs is not next to this checkout");
        return;
    };
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_file).expect("schema")).expect("json");
    let validator = jsonschema::validator_for(&schema).expect("compile schema");
    let validate_bin = ignition_validate();
    if validate_bin.is_none() {
        assert!(
            !in_ci(),
            "ignition-validate is missing: scripts/test installs the Debian package `ignition`"
        );
        eprintln!("note: install the Debian package `ignition` to also run ignition-validate");
    }

    let mut files = 0;
    let mut configs = 0;
    for dir in std::fs::read_dir(workspace_root().join("examples")).expect("examples") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        let tomls: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        for toml in tomls {
            let w = World::new();
            copy_dir(&dir, &w);
            let name = toml.file_name().and_then(|n| n.to_str()).expect("name");
            let r = w.run(&["render", name, "--out", "out"]);
            assert_eq!(r.code, 0, "{}: {r:?}", toml.display());
            files += 1;
            for ign in std::fs::read_dir(w.path().join("out")).expect("out") {
                let ign = ign.expect("entry").path();
                let text = std::fs::read_to_string(&ign).expect("read");
                let json: serde_json::Value = serde_json::from_str(&text).expect("json");
                let errors: Vec<String> = validator
                    .iter_errors(&json)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{} {}: {errors:?}",
                    toml.display(),
                    ign.display()
                );
                assert_eq!(json["ignition"]["version"], "3.3.0");
                if let Some(bin) = &validate_bin {
                    let out = std::process::Command::new(bin)
                        .arg(&ign)
                        .output()
                        .expect("run ignition-validate");
                    assert!(
                        out.status.success(),
                        "ignition-validate {} ({}): {}{}",
                        ign.display(),
                        toml.display(),
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                configs += 1;
            }
        }
    }
    assert!(
        files >= 20,
        "5 blueprints x 4 providers expected, found {files} cluster files"
    );
    assert!(configs >= files, "{configs} configs from {files} files");
}

const CENTRAL: &str = r#"[cluster]
name = "prod"
blueprint = "central-services"
provider = "sim"

[network]
cidr = "10.0.0.0/16"
dns = ["1.2.3.4"]

[central]
count = COUNT
size = "4cpu-8gb"
zones = ["a", "b", "c"]

[workers]
count = 2
size = "2cpu-4gb"
"#;

#[test]
fn render_gives_what_the_provider_received() {
    let w = World::new();
    w.write("cluster.toml", &CENTRAL.replace("COUNT", "3"));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let r = w.run_ok(
        &["render", "cluster.toml", "--machine", "machine.central[1]"],
        0,
    );
    let rendered = r.stdout.trim_end().to_string();
    assert!(rendered.contains("etcd-member.service"), "{rendered}");
    let state = w.state_json("cluster.toml");
    let record = state["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["address"] == "machine.central[1]")
        .expect("central[1] in state");
    // The config carries the member's TLS key: the state's JSON masks it.
    assert_eq!(record["attrs"]["user_data"].as_str(), Some("(sensitive)"));
    assert!(rendered.contains("/etc/ssl/etcd/server.key"), "{rendered}");
    let cloud = w.objects();
    let obj = cloud
        .iter()
        .find(|o| o.id == record["id"].as_str().expect("id"))
        .expect("object");
    // The same config, its private key read `(sensitive)` on the terminal.
    let received = obj.attrs["user_data"].as_str().expect("user_data");
    let mut want: serde_json::Value = serde_json::from_str(received).expect("JSON");
    for f in want["storage"]["files"].as_array_mut().expect("files") {
        if f["path"] == "/etc/ssl/etcd/server.key" {
            f["contents"]["source"] = serde_json::json!("(sensitive)");
        }
    }
    let shown: serde_json::Value = serde_json::from_str(&rendered).expect("JSON");
    assert_eq!(shown, want);
    assert!(!rendered.contains("PRIVATE"), "{rendered}");
    // `--out`: byte for byte what the provider received, readable by the user only.
    w.run_ok(&["render", "cluster.toml", "--out", "ign"], 0);
    let file = w.path().join("ign/machine.central[1].ign");
    assert_eq!(std::fs::read_to_string(&file).expect("ign"), received);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let r = w.run(&["render", "cluster.toml", "--machine", "machine.nope"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("machine.central[0]"),
        "lists the machines: {}",
        r.stderr
    );
}

#[test]
fn a_bigger_central_set_changes_no_running_machine() {
    let w = World::new();
    w.write("cluster.toml", &CENTRAL.replace("COUNT", "3"));
    w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "1",
        ],
        0,
    );
    w.write("cluster.toml", &CENTRAL.replace("COUNT", "4"));
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    // Only the new member: its --initial-cluster differs from the others' (a
    // bootstrap-only flag), and the workers' proxies list every slot already.
    assert!(
        r.stdout
            .contains("Plan: 1 to add, 0 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("# machine.central[3] will be created (joins etcd, 1 of 1: 3 -> 4 members)"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("data:"),
        "no data URLs in the plan: {}",
        r.stdout
    );
    insta::assert_snapshot!(r.stdout);
}
