//! Shell integration: `--help` (snapshots: each has an example), completions for
//! bash/zsh/fish that the shells accept, the man pages, `version --json`, `-C DIR`.

use std::process::Command;

use clusterform_tests::{World, bin};

fn help(args: &[&str]) -> String {
    let o = Command::new(bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0), "{args:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_snapshots() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("help_plan", help(&["plan", "--help"]));
    insta::assert_snapshot!("help_apply", help(&["apply", "--help"]));
    insta::assert_snapshot!("help_force_unlock", help(&["force-unlock", "--help"]));
    insta::assert_snapshot!("help_import", help(&["import", "--help"]));
    insta::assert_snapshot!("help_state_migrate", help(&["state", "migrate", "--help"]));
}

#[test]
fn completion_scripts_load_in_their_shells() {
    for (shell, program, check) in [
        (
            "bash",
            "bash",
            "source /dev/stdin && complete -p clusterform",
        ),
        ("zsh", "zsh", ""),
        ("fish", "fish", ""),
    ] {
        let o = Command::new(bin())
            .args(["completions", shell])
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            script.contains("state") && script.contains("migrate"),
            "{shell}"
        );
        assert!(script.contains("auto-approve"), "{shell}");
        // The shell itself parses it, where it is installed (bash always is).
        let have = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            assert_ne!(shell, "bash", "bash is on every machine the tests run on");
            eprintln!("note: {program} is not installed; its script is not parsed");
            continue;
        }
        let mut c = Command::new(program);
        if check.is_empty() {
            c.args(["-n", "/dev/stdin"]);
        } else {
            c.args(["-c", check]);
        }
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("shell");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), script.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{program} refuses the script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if shell == "bash" {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("clusterform"),
                "bash registered no completion"
            );
        }
    }
}

#[test]
fn man_pages_and_version() {
    let w = World::new();
    let r = w.run_ok(&["man", "--out", "man"], 0);
    assert!(r.stdout.contains("manual pages"), "{}", r.stdout);
    let top = std::fs::read_to_string(w.path().join("man/clusterform.1")).expect("page");
    assert!(top.starts_with(".ie") || top.contains(".TH"), "{top}");
    assert!(top.contains("state"), "{top}");
    let plan = std::fs::read_to_string(w.path().join("man/clusterform-plan.1")).expect("page");
    assert!(plan.contains("detailed\\-exitcode"), "{plan}");
    assert!(plan.contains("Example"), "the example is in the page");
    assert!(w.path().join("man/clusterform-state-migrate.1").exists());

    let r = w.run_ok(&["version", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        v["providers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x == "sim"))
    );
    assert_eq!(v["plan_format"], 2);
    let r = w.run_ok(&["--version"], 0);
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn chdir_runs_as_if_started_there() {
    let w = World::new();
    w.write(
        "team/cluster.toml",
        &clusterform_tests::dev_test("demo", 1, "s", ""),
    );
    let r = w.run_ok(&["-C", "team", "validate"], 0);
    assert!(r.stdout.contains("cluster.toml is valid"), "{}", r.stdout);
    let r = w.run_ok(&["-chdir=team", "plan"], 0);
    assert!(r.stdout.contains("3 to add"), "{}", r.stdout);
    let r = w.run(&["-C", "nowhere", "plan"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
}
