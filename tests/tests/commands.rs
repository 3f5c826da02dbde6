//! The smaller commands: validate, graph, state list/show/rm, force-unlock, sim.

use clusterform_tests::{World, dev_test};

#[test]
fn validate_and_graph() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 2, "s", ""));
    let r = w.run_ok(&["validate", "cluster.toml"], 0);
    assert!(
        r.stdout.contains("4 resources (3 machine, 1 network)"),
        "{}",
        r.stdout
    );
    let r = w.run_ok(&["graph", "cluster.toml"], 0);
    assert!(r.stdout.starts_with("digraph \"demo\" {"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("\"machine.central[0]\" -> \"machine.workers[1]\";"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("\"network.main\" -> \"machine.central[0]\";"),
        "{}",
        r.stdout
    );
}

#[test]
fn graph_svg_draws_with_graphviz_or_says_how_to_get_it() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let r = w.run(&["graph", "cluster.toml", "--format", "svg"]);
    let have_dot = std::process::Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_dot {
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("<svg"), "{}", r.stdout);
    } else {
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr.contains("apt-get install graphviz"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn state_list_show_rm() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let r = w.run_ok(&["state", "list", "cluster.toml"], 0);
    assert_eq!(
        r.stdout,
        "machine.central[0]\nmachine.workers[0]\nnetwork.main\n"
    );
    // The cluster file defaults to ./cluster.toml.
    let r = w.run_ok(&["state", "show", "machine.central[0]"], 0);
    assert!(
        r.stdout.contains("address") && r.stdout.contains("\"10.0.0.101\""),
        "{}",
        r.stdout
    );
    let r = w.run_ok(&["state", "rm", "cluster.toml", "machine.workers[0]"], 0);
    assert!(
        r.stdout.contains("Removed machine.workers[0]"),
        "{}",
        r.stdout
    );
    let r = w.run_ok(&["state", "list"], 0);
    assert_eq!(r.stdout, "machine.central[0]\nnetwork.main\n");
    // The object is still in the cloud; the next plan wants a new one.
    assert_eq!(w.objects().len(), 3);
    let r = w.run_ok(&["state", "rm", "machine.nope"], 1);
    assert!(r.stderr.contains("is not in the state"), "{}", r.stderr);
}

/// A dev-test world whose state folder holds the lock of a process that is gone
/// (pid 999999, lock id `id`).
fn with_stale_lock(id: &str) -> World {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let stale = format!(
        r#"{{"id":"{id}","operation":"apply","user":"someone","host":"elsewhere","pid":999999,"started_at":"2026-01-01T00:00:00Z","expires_at":"2026-01-01T01:00:00Z"}}"#
    );
    w.write(".clusterform/lock", &stale);
    w
}

#[test]
fn force_unlock_needs_the_right_id_and_clears_a_stale_lock() {
    let w = with_stale_lock("1111-dead");
    let r = w.run_ok(&["force-unlock", "cluster.toml", "wrong-id"], 1);
    assert!(
        r.stderr.contains("not locked with id `wrong-id`"),
        "{}",
        r.stderr
    );
    let r = w.run_ok(&["force-unlock", "cluster.toml", "1111-dead"], 0);
    assert!(r.stdout.contains("Released lock 1111-dead"), "{}", r.stdout);
}

#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over_with_a_note() {
    let w = with_stale_lock("2222-dead");
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stderr.contains("2222-dead") && r.stderr.contains("999999"),
        "{}",
        r.stderr
    );
}

#[test]
fn sim_commands_make_drift_that_plan_sees() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 2, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let sim = w.sim_dir();
    let sim = sim.to_str().expect("utf-8");
    let ids = w.state_ids("cluster.toml");
    let id = |addr: &str| {
        ids.iter()
            .find(|(a, _)| a == addr)
            .map(|x| x.1.clone())
            .expect("id")
    };
    w.run_ok(
        &[
            "sim",
            "set",
            &id("machine.workers[0]"),
            "size=tiny",
            "--dir",
            sim,
        ],
        0,
    );
    w.run_ok(
        &["sim", "delete", &id("machine.workers[1]"), "--dir", sim],
        0,
    );
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 2);
    assert!(
        r.stdout
            .contains("Objects have changed outside of clusterform"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("# machine.workers[1] has been deleted"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Plan: 1 to add, 1 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.assert_state_matches_cloud("cluster.toml");
    let r = w.run_ok(&["sim", "stats", "--dir", sim], 0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["duplicates"], 0);
}

#[test]
fn examples_all_validate_and_plan() {
    let root = clusterform_tests::workspace_root().join("examples");
    let mut seen = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("example dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "toml"))
        {
            // A copy of the whole folder (Butane files resolve), so the example's
            // folder gets no state.
            let w = World::new();
            for other in files.iter().filter(|o| o.is_file()) {
                let name = other.file_name().expect("name").to_string_lossy();
                if !name.starts_with('.') {
                    std::fs::copy(other, w.path().join(&*name)).expect("copy");
                }
            }
            let text = std::fs::read_to_string(f).expect("read");
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            w.write(&name, &as_sim(&text));
            let shown = f.display();
            let r = w.run(&["validate", &name]);
            assert_eq!(r.code, 0, "{shown}: validate\n{}\n{}", r.stdout, r.stderr);
            let r = w.run(&["plan", &name, "--detailed-exitcode"]);
            assert_eq!(r.code, 2, "{shown}: plan\n{}\n{}", r.stdout, r.stderr);
            assert!(r.stdout.contains("to add"), "{shown}: {}", r.stdout);
            seen += 1;
        }
    }
    // 5 blueprints x 4 providers.
    assert!(seen >= 20, "only {seen} example cluster files found");
}

/// A cluster file for another provider, rewritten for `sim` (the only provider of this
/// build): `provider = "sim"` wherever a provider is named, and the `[provider.X]`
/// tables of other providers (and their keys) left out.
fn as_sim(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    let mut table = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let header = t.trim_start_matches('[');
            skipping = header.starts_with("provider.") && !header.starts_with("provider.sim]");
            table = header.split(']').next().unwrap_or_default().to_string();
        }
        if skipping {
            continue;
        }
        // Metal's keys: the VLAN's number, the workers' static addresses on it.
        let key = t.split('=').next().unwrap_or_default().trim();
        if key == "vxlan" || (table == "workers" && key == "first_address") {
            continue;
        }
        if t.starts_with("provider") && t["provider".len()..].trim_start().starts_with('=') {
            out.push_str("provider = \"sim\"\n");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn a_damaged_state_is_restored_from_the_backup_and_nothing_is_orphaned() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    // A second run backs up the state it found, then adds two workers.
    w.write("cluster.toml", &dev_test("demo", 3, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let before = w.state_ids("cluster.toml");
    assert_eq!(before.len(), 5);

    // The state file gets damaged: a clear error that points at the way back.
    w.write(".clusterform/state.redb", "garbage, not a database");
    let r = w.run_ok(&["plan", "cluster.toml"], 1);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert!(r.stderr.contains("state restore"), "{}", r.stderr);

    // Restore: the backup lacks the two workers of the second run; they are adopted
    // by their tags, so the plan is empty and nothing was made twice.
    let r = w.run_ok(&["state", "restore", "cluster.toml"], 0);
    assert!(
        r.stdout.contains("Adopted machine.workers[1]"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Adopted machine.workers[2]"),
        "{}",
        r.stdout
    );
    assert_eq!(w.state_ids("cluster.toml"), before);
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    w.assert_state_matches_cloud("cluster.toml");
    let damaged: Vec<_> = std::fs::read_dir(w.path().join(".clusterform"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.redb.damaged-")
        })
        .collect();
    assert_eq!(damaged.len(), 1, "the damaged file is kept aside");
}
