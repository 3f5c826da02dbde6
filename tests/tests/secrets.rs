//! Secrets never leak: a canary put in the credential variables providers read
//! (`METAL_AUTH_TOKEN`, `AWS_SECRET_ACCESS_KEY`, ...) appears in no output at any
//! verbosity, no plan file and no state file.

use std::path::Path;

use clusterform_tests::{Run, World, dev_test};

const CANARY: &str = "canary-7f3e9c1d-do-not-leak";

fn run_with_secrets(w: &World, args: &[&str]) -> Run {
    w.command(args)
        .env("METAL_AUTH_TOKEN", CANARY)
        .env("AWS_SECRET_ACCESS_KEY", CANARY)
        .env("AWS_SESSION_TOKEN", CANARY)
        .env("CLUSTERFORM_LOG", "trace")
        .output()
        .expect("run clusterform")
        .into()
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_canary_in_the_credential_variables_reaches_no_output_plan_or_state() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 2, "s", ""));
    let mut outputs = Vec::new();
    for args in [
        vec!["validate", "cluster.toml"],
        vec!["plan", "cluster.toml", "--json"],
        vec!["-vvv", "plan", "cluster.toml", "--out", "saved.plan"],
        vec!["-vvv", "apply", "saved.plan"],
        vec!["-vvv", "plan", "cluster.toml", "--detailed-exitcode"],
        vec!["show", "cluster.toml", "--json"],
        vec!["state", "list", "cluster.toml"],
        vec!["state", "pending", "cluster.toml"],
        vec!["render", "cluster.toml"],
        vec!["-vvv", "destroy", "cluster.toml", "--auto-approve"],
    ] {
        let r = run_with_secrets(&w, &args);
        assert!(r.code == 0 || r.code == 2, "{args:?}: {r:?}");
        outputs.push((args, r));
    }
    // The trace logs were really produced (the test looks at something).
    assert!(
        outputs
            .iter()
            .any(|(_, r)| r.stderr.contains("walk finished")),
        "expected trace output on stderr"
    );
    for (args, r) in &outputs {
        assert!(
            !r.stdout.contains(CANARY),
            "{args:?} printed the secret on stdout"
        );
        assert!(
            !r.stderr.contains(CANARY),
            "{args:?} logged the secret on stderr"
        );
    }
    let mut files = vec![w.path().join("saved.plan")];
    files_under(&w.path().join(".clusterform"), &mut files);
    assert!(files.iter().any(|f| f.ends_with("state.redb")));
    for f in files {
        let bytes = std::fs::read(&f).expect("read");
        let found = bytes
            .windows(CANARY.len())
            .any(|win| win == CANARY.as_bytes());
        assert!(!found, "the secret is in {}", f.display());
    }
}

/// A private key nobody may see: in a Butane file, so it reaches a machine's config.
const KEY_CANARY: &str = "canaryKEYc2VjcmV0LWRvLW5vdC1sZWFr";

fn pem_canary() -> String {
    format!("-----BEGIN PRIVATE KEY-----\n{KEY_CANARY}\n-----END PRIVATE KEY-----\n")
}

fn run_keyed(w: &World, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = w.command(args);
    c.env("XDG_CONFIG_HOME", w.path().join("config"))
        .env_remove("CLUSTERFORM_STATE_KEY")
        .env("CLUSTERFORM_LOG", "trace");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run clusterform").into()
}

fn holds(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).expect("read");
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_private_key_in_a_config_is_sealed_at_rest_and_never_printed() {
    let w = World::new();
    let butane = format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/ssl/app.key\n      mode: 0400\n      contents:\n        inline: |\n{}",
        pem_canary()
            .lines()
            .map(|l| format!("          {l}\n"))
            .collect::<String>()
    );
    w.write("central.bu", &butane);
    w.write(
        "cluster.toml",
        &dev_test("demo", 1, "s", "").replace(
            "size = \"2cpu-4gb\"",
            "size = \"2cpu-4gb\"\nbutane = [\"central.bu\"]",
        ),
    );
    let mut outputs = Vec::new();
    for args in [
        vec!["plan", "cluster.toml", "--json"],
        vec!["-vvv", "plan", "cluster.toml", "--out", "saved.plan"],
        vec!["show", "saved.plan"],
        vec!["show", "saved.plan", "--json"],
        vec!["-vvv", "apply", "saved.plan"],
        vec!["-vvv", "plan", "cluster.toml", "--detailed-exitcode"],
        vec!["show", "cluster.toml", "--json"],
        vec!["show", "cluster.toml"],
        vec!["state", "show", "cluster.toml", "machine.central[0]"],
        vec!["render", "cluster.toml", "--machine", "machine.central[0]"],
        vec!["drift", "cluster.toml", "--json"],
    ] {
        let r = run_keyed(&w, &args, &[]);
        assert!(r.code == 0 || r.code == 2, "{args:?}: {r:?}");
        outputs.push((args, r));
    }
    // The key file was made once, 0600, and the user told where.
    let keys: Vec<_> = std::fs::read_dir(w.path().join("config/clusterform/keys"))
        .expect("key folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&keys[0]).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let told = outputs
        .iter()
        .filter(|(_, r)| r.stderr.contains("made the state key"))
        .count();
    assert_eq!(told, 1, "the key file is announced once");
    // Where the key shows, it reads `(sensitive)`.
    let shown = &outputs[7].1.stdout;
    assert!(shown.contains("(sensitive; "), "{shown}");
    for (args, r) in &outputs {
        assert!(!r.stdout.contains(KEY_CANARY), "{args:?} printed the key");
        assert!(!r.stderr.contains(KEY_CANARY), "{args:?} logged the key");
    }
    // Nowhere at rest: the state, its backups, the plan file.
    let mut files = vec![w.path().join("saved.plan")];
    files_under(&w.path().join(".clusterform"), &mut files);
    assert!(files.iter().any(|f| f.ends_with("state.redb")));
    for f in &files {
        assert!(!holds(f, KEY_CANARY), "the key is in {}", f.display());
        assert!(!holds(f, "PRIVATE KEY"), "a key is in {}", f.display());
    }

    // Another key cannot read the state, and says which one it needs.
    let r = run_keyed(
        &w,
        &["plan", "cluster.toml"],
        &[("CLUSTERFORM_STATE_KEY", "not the key")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("whose id is") && r.stderr.contains("not a passphrase"),
        "{}",
        r.stderr
    );
    // Without the key file, the state is not read as empty: a clear error.
    std::fs::rename(&keys[0], w.path().join("moved.key")).expect("move");
    let r = run_keyed(&w, &["plan", "cluster.toml"], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not exist here"), "{}", r.stderr);
    assert!(!r.stdout.contains("to add"), "{}", r.stdout);
    // Named explicitly, the moved key opens it.
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    w.write(
        "cluster.toml",
        &text.replace(
            "[network]",
            "[state]\nencryption = \"moved.key\"\n\n[network]",
        ),
    );
    let r = run_keyed(&w, &["plan", "cluster.toml", "--detailed-exitcode"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn state_rekey_seals_the_state_with_a_new_key() {
    let w = World::new();
    let key = pem_canary();
    let bu = format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/app.key\n      contents:\n        inline: {}\n",
        serde_json::to_string(&key).expect("json")
    );
    w.write("central.bu", &bu);
    let file = dev_test("demo", 0, "s", "").replace(
        "size = \"2cpu-4gb\"",
        "size = \"2cpu-4gb\"\nbutane = [\"central.bu\"]",
    );
    w.write("cluster.toml", &file);
    let pass = [("CLUSTERFORM_STATE_KEY", "old passphrase")];
    let r = run_keyed(&w, &["apply", "cluster.toml", "--auto-approve"], &pass);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !w.path().join("config").exists(),
        "a passphrase makes no key file"
    );

    // Without the new key: says how to give it.
    let r = run_keyed(&w, &["state", "rekey", "cluster.toml"], &pass);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--new-key-file"), "{}", r.stderr);

    let r = run_keyed(
        &w,
        &[
            "state",
            "rekey",
            "cluster.toml",
            "--new-key-file",
            "new.key",
        ],
        &pass,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("Sealed 2 record(s)"), "{}", r.stdout);
    assert!(r.stdout.contains("[state] encryption"), "{}", r.stdout);
    // The old passphrase no longer opens it; the new key file does.
    let r = run_keyed(&w, &["plan", "cluster.toml"], &pass);
    assert_eq!(r.code, 1, "{r:?}");
    w.write(
        "cluster.toml",
        &file.replace(
            "[network]",
            "[state]\nencryption = \"new.key\"\n\n[network]",
        ),
    );
    let r = run_keyed(&w, &["plan", "cluster.toml", "--detailed-exitcode"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut files = Vec::new();
    files_under(&w.path().join(".clusterform"), &mut files);
    let state = files
        .iter()
        .find(|f| f.ends_with("state.redb"))
        .expect("state");
    assert!(!holds(state, KEY_CANARY));
}

/// etcd with TLS on the sim: the CA a saved plan was issued from is the one its apply
/// keeps (sealed), later plans issue the same certificates from it (nothing to do), and
/// neither its key nor the passphrase shows anywhere.
#[test]
fn the_etcd_ca_is_kept_sealed_and_reissues_the_same_configs() {
    let w = World::new();
    let file = dev_test("demo", 1, "s", "").replace(
        "size = \"2cpu-4gb\"",
        "size = \"2cpu-4gb\"\netcd_tls = true",
    );
    w.write("cluster.toml", &file);
    const PASS: &str = "passphrase-canary-91c2";
    let pass = [("CLUSTERFORM_STATE_KEY", PASS)];
    let mut outputs = Vec::new();
    for args in [
        vec!["-vvv", "plan", "cluster.toml", "--out", "first.plan"],
        vec!["-vvv", "apply", "first.plan"],
        vec!["-vvv", "plan", "cluster.toml", "--detailed-exitcode"],
        vec!["show", "cluster.toml", "--json"],
        vec!["etcd", "env", "cluster.toml"],
    ] {
        let r = run_keyed(&w, &args, &pass);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        outputs.push((args, r));
    }
    assert!(
        outputs[2].1.stdout.contains("No changes"),
        "{}",
        outputs[2].1.stdout
    );
    assert!(
        outputs[4]
            .1
            .stdout
            .contains("ETCDCTL_ENDPOINTS='https://10.0.0.101:2379'"),
        "{}",
        outputs[4].1.stdout
    );
    for (args, r) in &outputs {
        for secret in [PASS, "PRIVATE KEY"] {
            assert!(!r.stdout.contains(secret), "{args:?} printed {secret}");
            assert!(!r.stderr.contains(secret), "{args:?} logged {secret}");
        }
    }
    let mut files = vec![w.path().join("first.plan")];
    files_under(&w.path().join(".clusterform"), &mut files);
    for f in files
        .iter()
        .filter(|f| !f.starts_with(w.path().join(".clusterform/etcd-client")))
    {
        assert!(!holds(f, "PRIVATE KEY"), "a key is in {}", f.display());
        assert!(!holds(f, PASS), "the passphrase is in {}", f.display());
    }
    // etcd env's client key is the one file with a key: 0600 in a 0700 folder.
    let key = w.path().join(".clusterform/etcd-client/client.key");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).expect("stat").permissions())
            & 0o777
    };
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().expect("dir")), 0o700);
}

/// Applies of a new TLS cluster at once: each made a CA of its own before the lock; the
/// first keeps its CA, the others stop before any change (their certificates are of a CA
/// that will never be kept) and say to run again; then nothing is left to do.
#[test]
fn racing_first_applies_never_mix_two_cas() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 1, "s", "latency_ms = 100").replace(
            "size = \"2cpu-4gb\"",
            "size = \"2cpu-4gb\"\netcd_tls = true",
        ),
    );
    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            w.command(&[
                "apply",
                "cluster.toml",
                "--auto-approve",
                "--lock-timeout",
                "120s",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait").into())
        .collect();
    let made = runs
        .iter()
        .filter(|r| r.code == 0 && r.stdout.contains("3 added"))
        .count();
    assert_eq!(made, 1, "{runs:?}");
    for r in runs.iter().filter(|r| r.code != 0) {
        assert!(r.stderr.contains("run the command again"), "{r:?}");
    }
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    assert!(r.stdout.contains("No changes"), "{}", r.stdout);
    assert_eq!(w.state_ids("cluster.toml").len(), 3);
}

#[test]
fn etcd_runs_tls_by_default_and_plain_http_is_announced() {
    let w = World::new();
    // The default: members on https, no warning.
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    assert!(!r.stderr.contains("plain HTTP"), "{}", r.stderr);
    let ud = w.run_ok(
        &["render", "cluster.toml", "--machine", "machine.central[0]"],
        0,
    );
    assert!(
        ud.stdout.contains("https://10.0.0.101:2380"),
        "{}",
        ud.stdout
    );
    // Turned off: every plan and apply says what that means.
    w.write(
        "plain.toml",
        &dev_test("plain", 1, "s", "").replace(
            "size = \"2cpu-4gb\"",
            "size = \"2cpu-4gb\"\netcd_tls = false",
        ),
    );
    for args in [
        &["plan", "plain.toml"][..],
        &["apply", "plain.toml", "--auto-approve"],
    ] {
        let r = w.run_ok(args, 0);
        assert!(
            r.stderr.contains("warning: etcd runs over plain HTTP without authentication (`[central] etcd_tls = false`)"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn etcd_renew_keeps_the_key_and_the_next_apply_rolls_onto_new_certificates() {
    let w = World::new();
    w.write(
        "cluster.toml",
        r#"[cluster]
name = "demo"
blueprint = "central-services"
provider = "sim"

[network]
cidr = "10.0.0.0/16"

[central]
count = 3
size = "m"

[workers]
count = 2
size = "s"
"#,
    );
    // Nothing to renew before the first apply.
    let r = w.run(&["etcd", "renew", "cluster.toml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("keeps no etcd CA: nothing to renew"),
        "{}",
        r.stderr
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let ca_of = |w: &World| {
        w.run_ok(&["etcd", "env", "cluster.toml"], 0);
        std::fs::read_to_string(w.path().join(".clusterform/etcd-client/ca.crt")).expect("ca")
    };
    let before = ca_of(&w);
    let r = w.run_ok(&["etcd", "renew", "cluster.toml"], 0);
    assert!(
        r.stdout.contains("Renewed the etcd CA of `demo`"),
        "{}",
        r.stdout
    );
    let after = ca_of(&w);
    assert_ne!(before, after, "a new CA certificate");
    // Every machine gets certificates of the renewed CA: replaced, the members in turn.
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    assert!(r.stdout.contains("rolling 1 of 3"), "{}", r.stdout);
    for a in [
        "machine.central[2]",
        "machine.central[0]",
        "machine.workers[0]",
        "machine.workers[1]",
    ] {
        assert!(
            r.stdout.contains(&format!("# {a} must be replaced")),
            "{a}: {}",
            r.stdout
        );
    }
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    // The machines' configs carry the renewed CA certificate.
    let r = w.run_ok(&["render", "cluster.toml", "--out", "ign"], 0);
    assert!(
        r.stdout.contains("Wrote 5 Ignition config(s)"),
        "{}",
        r.stdout
    );
    let ign = std::fs::read_to_string(w.path().join("ign/machine.central[0].ign")).expect("ign");
    let ign: serde_json::Value = serde_json::from_str(&ign).expect("JSON");
    let file = ign["storage"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == "/etc/ssl/etcd/ca.crt")
        .expect("ca.crt");
    let ca_in_config = clusterform_ignition::decode_data_url(
        file["contents"]["source"].as_str().expect("source"),
        file["contents"]["compression"]
            .as_str()
            .filter(|c| !c.is_empty()),
    )
    .map(|(bytes, _)| String::from_utf8_lossy(&bytes).to_string())
    .expect("decoded");
    assert_eq!(ca_in_config.trim(), after.trim());
}
