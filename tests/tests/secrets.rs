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
