//! Hostile inputs of the state class: a state lost, emptied, replaced by an older copy
//! or by another cluster's, two cluster files in one folder, a failed restore, a plan
//! written over an input. Each row sets a world up after a real apply, runs the real
//! binary, and checks that nothing was made twice, nothing at the provider was touched,
//! and the error names what happened and what to do.

use std::path::Path;

use clusterform_tests::{Run, World, dev_test};

/// How a row ends.
enum Expect {
    /// Exit 1; stderr has every string.
    Refused(&'static [&'static str]),
    /// Exit 0; stdout has every string.
    Works(&'static [&'static str]),
}

struct Row {
    name: &'static str,
    /// Breaks the world made by `applied` (2 workers of cluster `demo` in cluster.toml);
    /// returns the command to run.
    setup: fn(&World) -> Vec<String>,
    expect: Expect,
}

/// `demo` applied from cluster.toml: a network, a central machine and `workers`.
fn applied(workers: u32) -> World {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", workers, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w
}

fn state_dir(w: &World) -> std::path::PathBuf {
    w.path().join(".clusterform")
}

/// A second run, so that a backup exists (the state before that run's first change).
fn second_run(w: &World) {
    w.write("cluster.toml", &dev_test("demo", 3, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(ToString::to_string).collect()
}

fn plan() -> Vec<String> {
    args(&["plan", "cluster.toml"])
}

fn apply() -> Vec<String> {
    args(&["apply", "cluster.toml", "--auto-approve"])
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "state truncated to 0 bytes, backup beside it: plan",
            setup: |w| {
                second_run(w);
                std::fs::write(state_dir(w).join("state.redb"), b"").expect("truncate");
                plan()
            },
            expect: Expect::Refused(&["is empty (0 bytes)", "backup", "state restore"]),
        },
        Row {
            name: "state truncated to 0 bytes, backup beside it: apply",
            setup: |w| {
                second_run(w);
                std::fs::write(state_dir(w).join("state.redb"), b"").expect("truncate");
                apply()
            },
            expect: Expect::Refused(&["is empty (0 bytes)", "state restore"]),
        },
        Row {
            name: "state file and backup deleted, the lineage file says there was one",
            setup: |w| {
                std::fs::remove_file(state_dir(w).join("state.redb")).expect("rm");
                let _ = std::fs::remove_file(state_dir(w).join("state.redb.backup"));
                apply()
            },
            expect: Expect::Refused(&["is missing", "records lineage"]),
        },
        Row {
            name: "state folder deleted: the provider's tagged objects stop the apply",
            setup: |w| {
                std::fs::remove_dir_all(state_dir(w)).expect("rm");
                apply()
            },
            expect: Expect::Refused(&[
                "already exist",
                "machine.central[0] already exists at `sim`",
                "state restore",
                "clusterform import cluster.toml",
            ]),
        },
        Row {
            name: "state folder deleted: plan says so too",
            setup: |w| {
                std::fs::remove_dir_all(state_dir(w)).expect("rm");
                plan()
            },
            expect: Expect::Refused(&["already exist", "network.main"]),
        },
        Row {
            name: "state replaced by an older copy with fewer machines",
            setup: |w| {
                let old = w.path().join("old-state");
                copy_dir(&state_dir(w), &old);
                second_run(w);
                std::fs::remove_dir_all(state_dir(w)).expect("rm");
                copy_dir(&old, &state_dir(w));
                apply()
            },
            expect: Expect::Refused(&["machine.workers[2] already exists", "1 object(s)"]),
        },
        Row {
            name: "a state folder copied from another cluster",
            setup: |w| {
                w.write("other/cluster.toml", &dev_test("staging", 1, "s", ""));
                copy_dir(&state_dir(w), &w.path().join("other/.clusterform"));
                args(&["plan", "other/cluster.toml"])
            },
            expect: Expect::Refused(&[
                "belongs to the cluster `demo`",
                "not to `staging`",
                "[state] path",
            ]),
        },
        Row {
            name: "two cluster files in one folder sharing a state by hand",
            setup: |w| {
                let text = dev_test("staging", 1, "s", "")
                    .replace("[cluster]", "[state]\npath = \".clusterform\"\n\n[cluster]");
                w.write("staging.toml", &text);
                args(&["apply", "staging.toml", "--auto-approve"])
            },
            expect: Expect::Refused(&["belongs to the cluster `demo`", "`cluster.toml`"]),
        },
        Row {
            name: "two cluster files in one folder get a state each",
            setup: |w| {
                w.write("staging.toml", &dev_test("staging", 1, "s", ""));
                args(&["apply", "staging.toml", "--auto-approve"])
            },
            expect: Expect::Works(&["3 added, 0 changed, 0 destroyed"]),
        },
        Row {
            name: "state restore with an unreadable backup leaves the state alone",
            setup: |w| {
                second_run(w);
                std::fs::write(state_dir(w).join("state.redb.backup"), b"garbage").expect("write");
                args(&["state", "restore", "cluster.toml"])
            },
            expect: Expect::Refused(&["cannot be read either; nothing was changed"]),
        },
        Row {
            name: "plan --out over the cluster file",
            setup: |_| args(&["plan", "cluster.toml", "--out", "cluster.toml"]),
            expect: Expect::Refused(&["would overwrite the cluster file"]),
        },
        Row {
            name: "plan --out over another file it does not own",
            setup: |w| {
                w.write("notes.txt", "mine");
                args(&["plan", "cluster.toml", "--out", "notes.txt"])
            },
            expect: Expect::Refused(&["not a plan file"]),
        },
        Row {
            name: "a second file of the same cluster in the folder: the tags stop it",
            setup: |w| {
                w.write("ec2.toml", &dev_test("demo", 2, "s", ""));
                args(&["apply", "ec2.toml", "--auto-approve"])
            },
            expect: Expect::Refused(&["already exist", "machine.workers[1]"]),
        },
        Row {
            name: "an ec2.toml beside a .clusterform made before each file had its own",
            setup: |w| {
                // A state made before the state recorded its cluster: no identity.
                std::fs::remove_dir_all(state_dir(w)).expect("rm");
                let legacy = clusterform_state::LocalStore::new(state_dir(w));
                let record = clusterform_core::ResourceState {
                    address: clusterform_core::Address::new("network", "main"),
                    provider: "sim".into(),
                    id: "n-legacy".into(),
                    attrs: clusterform_core::Attrs::new(),
                    dependencies: vec![],
                };
                use clusterform_state::StateStore;
                legacy
                    .commit(&[clusterform_state::Mutation::Put(record)])
                    .expect("commit");
                w.write("ec2.toml", &dev_test("demo", 2, "s", ""));
                args(&["plan", "ec2.toml"])
            },
            expect: Expect::Refused(&["may be in", "mv "]),
        },
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

#[test]
fn a_lost_or_foreign_state_never_makes_a_machine_twice() {
    let mut failures = Vec::new();
    for row in rows() {
        let w = applied(2);
        let cmd = (row.setup)(&w);
        let before = w.cloud_ids();
        let state_before = std::fs::read(state_dir(&w).join("state.redb")).ok();
        let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let r: Run = w.run(&argv);
        let after = w.cloud_ids();
        let (code, out, needles) = match &row.expect {
            Expect::Refused(n) => (1, &r.stderr, *n),
            Expect::Works(n) => (0, &r.stdout, *n),
        };
        let mut problems = Vec::new();
        if r.code != code {
            problems.push(format!("exit {} (expected {code})", r.code));
        }
        for n in needles {
            if !out.contains(n) {
                problems.push(format!("no `{n}`"));
            }
        }
        if r.stderr.contains("panicked") {
            problems.push("a panic".into());
        }
        if let Expect::Refused(_) = row.expect {
            if after != before {
                problems.push(format!("the provider changed: {before:?} -> {after:?}"));
            }
            let state_after = std::fs::read(state_dir(&w).join("state.redb")).ok();
            if state_after != state_before {
                problems.push("the state file changed".into());
            }
        }
        // Never two objects with one cluster and address.
        let mut seen = std::collections::BTreeSet::new();
        for o in w.objects() {
            if let Some(owner) = &o.owner
                && !seen.insert((owner.cluster.clone(), owner.address.to_string()))
            {
                problems.push(format!(
                    "two objects at {} of {}",
                    owner.address, owner.cluster
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n--- stdout\n{}\n--- stderr\n{}",
                row.name,
                problems.join("; "),
                r.stdout,
                r.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The backup is never replaced by a state with fewer resources: after a run that
/// destroys most of the cluster, the next run keeps the fuller backup.
#[test]
fn a_backup_is_never_replaced_by_a_smaller_state() {
    let w = applied(4);
    // Run 2 backs up the 6-object state and scales down to 1 worker.
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    // Run 3 starts from 3 objects: the 6-object backup stays.
    w.write("cluster.toml", &dev_test("demo", 0, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    std::fs::remove_file(state_dir(&w).join("state.redb")).expect("rm");
    let r = w.run_ok(&["state", "restore", "cluster.toml"], 0);
    assert!(r.stdout.contains("(6 resources)"), "{}", r.stdout);
    let kept = std::fs::read_dir(state_dir(&w))
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("state.redb.backup."))
        })
        .count();
    assert_eq!(
        kept, 1,
        "the smaller state of run 3 is kept beside the backup"
    );
}
