//! Provider plugins through the real binary: the Python example plugin
//! (`examples/plugin-python`) takes a dev-test cluster through apply, a no-op plan, drift
//! (read-only: only read messages reach the plugin), reap and destroy, and through
//! `kill -9` at random moments (no duplicate, no orphan); misbehaving plugins (a crash in
//! the middle of a create, a hang, garbage, a reply to another request, another protocol
//! version, an exit before the handshake) each give an error naming the plugin and what
//! it did, leave the state as it was, and the next run with a working plugin resolves
//! what was in flight; `providers` lists and checks plugins; every message exchanged
//! matches the protocol's JSON Schemas.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clusterform_tests::{Run, TestRng, World, dev_test, workspace_root};
use serde_json::Value;

/// The example plugin, or `None` (with a note) where python3 is missing; under
/// `CI=true` a missing python3 fails.
fn example_plugin() -> Option<PathBuf> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "python3 is needed for the plugin tests (apt-get install python3)"
        );
        eprintln!("note: python3 not found; the plugin tests are skipped");
        return None;
    }
    Some(workspace_root().join("examples/plugin-python/clusterform-provider-files"))
}

fn misbehaving_plugin() -> PathBuf {
    workspace_root().join("tests/plugins/misbehave.py")
}

/// A dev-test cluster on the `files` plugin at `plugin`, keeping its objects in
/// `<world>/cloud`.
fn files_cluster(w: &World, name: &str, workers: u32, plugin: &Path, extra: &str) -> String {
    let settings = format!(
        "[provider.files]\nplugin = \"{}\"\ndir = \"{}\"\n{extra}\n",
        plugin.display(),
        w.path().join("cloud").display()
    );
    dev_test(name, workers, "s", "")
        .replace("provider = \"sim\"", "provider = \"files\"")
        .replace("[provider.sim]\n", &settings)
}

/// (cluster, address, id) of every object in `<world>/cloud`, sorted.
fn cloud(w: &World) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(w.path().join("cloud")) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read object");
        let v: Value = serde_json::from_str(&text).expect("object file is JSON");
        let tag = |k: &str| v["tags"][k].as_str().unwrap_or_default().to_string();
        out.push((
            tag("clusterform:cluster"),
            tag("clusterform:address"),
            v["id"].as_str().expect("id").to_string(),
        ));
    }
    out.sort();
    out
}

/// The state records exactly the cloud's objects of `cluster`, one per address.
fn assert_matches(w: &World, file: &str, cluster: &str) {
    let mine: Vec<(String, String)> = cloud(w)
        .into_iter()
        .filter(|(c, _, _)| c == cluster)
        .map(|(_, a, i)| (a, i))
        .collect();
    assert_eq!(w.state_ids(file), mine, "state and cloud of {cluster}");
    let mut addrs: Vec<&String> = mine.iter().map(|(a, _)| a).collect();
    addrs.dedup();
    assert_eq!(addrs.len(), mine.len(), "one object per address: {mine:?}");
    assert_eq!(
        w.state_json(file)["pending"],
        serde_json::json!([]),
        "journal open"
    );
}

#[test]
fn the_python_plugin_applies_plans_drifts_reaps_and_destroys() {
    let Some(plugin) = example_plugin() else {
        return;
    };
    let w = World::new();
    let trace = w.path().join("trace.jsonl");
    let run = |args: &[&str], code: i32| -> Run {
        let r: Run = w
            .command(args)
            .env(clusterform_plugin::TRACE_ENV, &trace)
            .output()
            .expect("run")
            .into();
        r.expecting(args, code)
    };
    w.write("cluster.toml", &files_cluster(&w, "plug", 3, &plugin, ""));

    let r = run(&["providers", "cluster.toml"], 0);
    assert!(r.stdout.contains("cluster.toml needs:"), "{}", r.stdout);
    let needs = r.stdout.split("needs:").nth(1).unwrap_or_default();
    assert!(
        needs.contains("files") && needs.contains("0.1.0") && needs.contains("plugin"),
        "{}",
        r.stdout
    );

    let r = run(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("5 added"), "{}", r.stdout);
    assert_eq!(cloud(&w).len(), 5);
    assert_matches(&w, "cluster.toml", "plug");

    let r = run(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    run(&["drift", "cluster.toml"], 0);

    // Out of band: one worker's object is deleted.
    let (_, _, id) = cloud(&w)
        .into_iter()
        .find(|(_, a, _)| a == "machine.workers[1]")
        .expect("worker 1");
    std::fs::remove_file(w.path().join("cloud").join(format!("{id}.json"))).expect("rm");
    let before = std::fs::read_to_string(&trace).unwrap_or_default().len();
    let r = run(&["drift", "cluster.toml"], 2);
    assert!(r.stdout.contains("machine.workers[1]"), "{}", r.stdout);
    // Drift is read-only by construction: only read messages reached the plugin.
    let drift_methods =
        methods_sent(&std::fs::read_to_string(&trace).unwrap_or_default()[before..]);
    for m in &drift_methods {
        assert!(
            [
                "handshake",
                "configure",
                "read",
                "read_batch",
                "find_by_key",
                "list_cluster",
                "list_owned",
                "shutdown",
                "cancel"
            ]
            .contains(&m.as_str()),
            "drift sent `{m}`: {drift_methods:?}"
        );
    }
    assert!(
        drift_methods.iter().any(|m| m.starts_with("read")),
        "{drift_methods:?}"
    );
    run(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert_matches(&w, "cluster.toml", "plug");

    // reap: an expired test cluster beside this one, its state folder gone.
    w.write(
        "old/cluster.toml",
        &files_cluster(&w, "old", 1, &plugin, "").replacen(
            "[cluster]\n",
            "[cluster]\nexpires_after = \"1s\"\n",
            1,
        ),
    );
    run(&["apply", "old/cluster.toml", "--auto-approve"], 0);
    std::fs::remove_dir_all(w.path().join("old/.clusterform")).expect("rm old state");
    std::thread::sleep(Duration::from_millis(1500));
    let r = run(
        &[
            "reap",
            "cluster.toml",
            "--provider",
            "files",
            "--auto-approve",
        ],
        0,
    );
    assert!(
        r.stdout.contains("3 object(s) of 1 cluster(s) deleted"),
        "{}",
        r.stdout
    );
    assert!(
        cloud(&w).iter().all(|(c, _, _)| c == "plug"),
        "{:?}",
        cloud(&w)
    );
    assert_matches(&w, "cluster.toml", "plug");

    let r = run(&["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("5 destroyed"), "{}", r.stdout);
    assert!(cloud(&w).is_empty(), "{:?}", cloud(&w));

    check_trace_against_schemas(&std::fs::read_to_string(&trace).expect("trace"));
}

/// The methods clusterform sent, in order, from a trace.
fn methods_sent(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["to"] == "plugin")
        .filter_map(|v| v["message"]["method"].as_str().map(str::to_string))
        .collect()
}

/// Every message of the trace matches docs/plugin-protocol/protocol.schema.json: what
/// clusterform sent is a `to_plugin`, every reply a `reply` whose result is its method's.
fn check_trace_against_schemas(trace: &str) {
    let path = workspace_root().join("docs/plugin-protocol/protocol.schema.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("schema")).expect("JSON");
    let validator = |def: &str| {
        let mut d = doc.clone();
        d["$ref"] = Value::String(format!("#/$defs/{def}"));
        jsonschema::validator_for(&d).unwrap_or_else(|e| panic!("schema {def}: {e}"))
    };
    let to_plugin = validator("to_plugin");
    let reply = validator("reply");
    let mut methods: BTreeMap<(String, u64), String> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for line in trace.lines() {
        let v: Value = serde_json::from_str(line).expect("trace line is JSON");
        let plugin = v["plugin"].as_str().unwrap_or_default().to_string();
        let m = &v["message"];
        if v["to"] == "plugin" {
            let errors: Vec<String> = to_plugin.iter_errors(m).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{m}: {errors:?}");
            if let (Some(id), Some(method)) = (m["id"].as_u64(), m["method"].as_str()) {
                methods.insert((plugin, id), method.to_string());
            }
        } else {
            let errors: Vec<String> = reply.iter_errors(m).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{m}: {errors:?}");
            let id = m["id"].as_u64().expect("id");
            let method = methods
                .get(&(plugin, id))
                .expect("a reply to a request sent");
            if let Some(result) = m.get("result") {
                let check = validator(&format!("result_{method}"));
                let errors: Vec<String> =
                    check.iter_errors(result).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{method}: {result}: {errors:?}");
                *seen.entry(method.clone()).or_default() += 1;
            }
        }
    }
    for m in [
        "handshake",
        "configure",
        "create",
        "read_batch",
        "list_cluster",
        "list_owned",
        "delete",
    ] {
        assert!(
            seen.contains_key(m),
            "no `{m}` result in the trace: {seen:?}"
        );
    }
}

/// Output as one line: miette's wrapping and gutter taken out.
fn flat(s: &str) -> String {
    s.replace('│', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A run with the misbehaving plugin in mode `mode`.
fn misbehave(w: &World, args: &[&str], mode: &str) -> Run {
    w.command(args)
        .env("MISBEHAVE", mode)
        .env(clusterform_plugin::TRACE_ENV, w.path().join("trace.jsonl"))
        .output()
        .expect("run")
        .into()
}

/// Apply with a plugin that misbehaves in `mode`: exit 1 with the expected words; then
/// the same apply with a working plugin resolves what was in flight. Returns the trace
/// of the messages.
fn misbehaving_apply(mode: &str, extra: &str, expected: &[&str], adopted: bool) -> String {
    if example_plugin().is_none() {
        return String::new();
    }
    let w = World::new();
    w.write(
        "cluster.toml",
        &files_cluster(&w, "bad", 2, &misbehaving_plugin(), extra),
    );
    let started = Instant::now();
    let r = misbehave(&w, &["apply", "cluster.toml", "--auto-approve"], mode);
    let all = flat(&format!("{}\n{}", r.stdout, r.stderr));
    assert_eq!(r.code, 1, "{mode}: {all}");
    assert!(
        all.contains("plugin `files`"),
        "{mode}: names the plugin: {all}"
    );
    for e in expected {
        assert!(all.contains(e), "{mode}: expected {e:?} in:\n{all}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{mode}: took {:?}",
        started.elapsed()
    );
    // The state is readable and holds no more than the cloud has.
    let state = w.state_ids("cluster.toml");
    let cloud_ids: Vec<(String, String)> = cloud(&w).into_iter().map(|(_, a, i)| (a, i)).collect();
    for s in &state {
        assert!(
            cloud_ids.contains(s),
            "{mode}: state records {s:?}, the cloud does not have it"
        );
    }
    // The journal kept the call that was in flight.
    let pending = w.run_ok(&["state", "pending", "cluster.toml"], 0);
    assert!(
        pending.stdout.contains("unfinished operation(s)"),
        "{mode}: {}",
        pending.stdout
    );
    // A working plugin: the rerun resolves the journal, no duplicate, no orphan.
    let r = misbehave(&w, &["apply", "cluster.toml", "--auto-approve"], "");
    assert_eq!(r.code, 0, "{mode}: rerun: {}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("unfinished operation(s) of an earlier run"),
        "{mode}: {}",
        r.stdout
    );
    assert_eq!(
        r.stdout.contains("adopted into the state"),
        adopted,
        "{mode}: what the plugin made before it misbehaved is adopted: {}",
        r.stdout
    );
    assert_matches(&w, "cluster.toml", "bad");
    assert_eq!(cloud(&w).len(), 4, "{mode}: {:?}", cloud(&w));
    std::fs::read_to_string(w.path().join("trace.jsonl")).unwrap_or_default()
}

#[test]
fn a_plugin_that_crashes_in_the_middle_of_a_create() {
    misbehaving_apply(
        "crash-mid-create",
        "",
        &[
            "exited with status 3",
            "crashing on purpose",
            "outcome unknown",
        ],
        true,
    );
}

#[test]
fn a_plugin_that_hangs_is_stopped_after_call_timeout() {
    let trace = misbehaving_apply(
        "hang",
        "call_timeout = \"2s\"",
        &["did not answer `create`", "within 2s", "call_timeout"],
        false,
    );
    if trace.is_empty() {
        return;
    }
    // The hung request was cancelled before the plugin was stopped.
    let sent: Vec<Value> = trace
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["to"] == "plugin")
        .map(|v| v["message"].clone())
        .collect();
    let cancelled = sent
        .iter()
        .find(|m| m["method"] == "cancel")
        .unwrap_or_else(|| panic!("no cancel sent: {sent:?}"))["params"]["id"]
        .clone();
    assert!(
        sent.iter()
            .any(|m| m["method"] == "create" && m["id"] == cancelled),
        "the cancel names the hung create: {sent:?}"
    );
}

#[test]
fn a_plugin_that_writes_garbage_is_stopped() {
    misbehaving_apply(
        "garbage",
        "",
        &["broke the protocol", "not JSON", "this is not json"],
        true,
    );
}

#[test]
fn a_plugin_that_answers_another_request_is_stopped() {
    misbehaving_apply(
        "wrong-id",
        "",
        &["broke the protocol", "which it was never sent"],
        true,
    );
}

/// A plugin that fails its handshake: nothing is called, no state is written.
fn failing_handshake(mode: &str, expected: &[&str]) {
    if example_plugin().is_none() {
        return;
    }
    let w = World::new();
    w.write(
        "cluster.toml",
        &files_cluster(&w, "hs", 1, &misbehaving_plugin(), ""),
    );
    for args in [
        &["plan", "cluster.toml"][..],
        &["apply", "cluster.toml", "--auto-approve"],
    ] {
        let r = misbehave(&w, args, mode);
        assert_eq!(r.code, 1, "{mode}: {}\n{}", r.stdout, r.stderr);
        for e in expected {
            assert!(
                flat(&r.stderr).contains(e),
                "{mode}: expected {e:?} in:\n{}",
                r.stderr
            );
        }
    }
    assert!(!w.path().join(".clusterform").exists(), "no state was made");
    assert!(cloud(&w).is_empty());
}

#[test]
fn a_plugin_of_another_protocol_version_is_refused() {
    failing_handshake(
        "wrong-protocol",
        &[
            "plugin `files`",
            "speaks plugin protocol 2",
            "this clusterform speaks protocol 1",
        ],
    );
}

#[test]
fn a_plugin_that_exits_at_once_is_reported() {
    failing_handshake(
        "exit-at-once",
        &[
            "plugin `files`",
            "exited with status 0",
            "during the handshake",
        ],
    );
}

#[test]
fn kill_9_during_a_plugin_apply_never_loses_or_duplicates() {
    let Some(plugin) = example_plugin() else {
        return;
    };
    let w = World::new();
    const WORKERS: u32 = 12;
    let text = files_cluster(&w, "k9", WORKERS, &plugin, "latency_ms = 40");
    w.write("cluster.toml", &text);
    let mut rng = TestRng::new(0x5EED);
    let (mut kills, mut rounds) = (0, 0);
    let args_for = |round: usize| -> [&'static str; 3] {
        if round.is_multiple_of(2) {
            ["apply", "cluster.toml", "--auto-approve"]
        } else {
            ["destroy", "cluster.toml", "--auto-approve"]
        }
    };
    while kills < 6 && rounds < 16 {
        let args = args_for(rounds);
        rounds += 1;
        let mut child = w
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(200 + rng.below(1200)));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill -9");
            kills += 1;
        }
        let _ = child.wait();
        let r = w.run(&args);
        assert_eq!(
            r.code, 0,
            "round {rounds} rerun: {}\n{}",
            r.stdout, r.stderr
        );
        let expected = if args[0] == "apply" {
            WORKERS as usize + 2
        } else {
            0
        };
        assert_eq!(cloud(&w).len(), expected, "round {rounds}: {:?}", cloud(&w));
        assert_matches(&w, "cluster.toml", "k9");
    }
    println!("plugin kill -9: {kills} kills in {rounds} rounds, 0 duplicates, 0 orphans");
    assert!(kills >= 3, "only {kills} kills landed in {rounds} rounds");
}

#[test]
fn providers_lists_this_builds_providers_and_checks_a_plugin() {
    let Some(plugin) = example_plugin() else {
        return;
    };
    let w = World::new();
    let r = w.run_ok(&["providers"], 0);
    for name in ["sim", "ec2", "libvirt", "metal"] {
        assert!(
            r.stdout.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {}",
            r.stdout
        );
    }
    // Found on PATH by its file name.
    let path = format!(
        "{}:{}",
        plugin.parent().expect("dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r: Run = w
        .command(&["providers", "--json"])
        .env("PATH", &path)
        .output()
        .expect("run")
        .into();
    let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
    let files = v["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["name"] == "files")
        .unwrap_or_else(|| panic!("files plugin on PATH: {}", r.stdout));
    assert_eq!(files["kind"], "plugin");
    assert_eq!(files["version"], "0.1.0");

    let dir = w.path().join("check");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let r = w.run_ok(
        &[
            "providers",
            "check",
            &plugin.display().to_string(),
            "--dir",
            &dir.display().to_string(),
        ],
        0,
    );
    assert!(r.stdout.contains("checks passed"), "{}", r.stdout);
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);

    // The check finds what is wrong with a broken plugin.
    let r: Run = w
        .command(&[
            "providers",
            "check",
            &misbehaving_plugin().display().to_string(),
        ])
        .env("MISBEHAVE", "wrong-id")
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("FAIL"), "{}", r.stdout);
    assert!(r.stdout.contains("never sent"), "{}", r.stdout);
}

#[test]
fn a_provider_found_nowhere_is_named_with_what_there_is() {
    let w = World::new();
    w.write(
        "cluster.toml",
        "[cluster]\nname = \"x\"\nblueprint = \"dev-test\"\nprovider = \"nosuch\"\n\n[network]\ncidr = \"10.0.0.0/16\"\n\n[central]\nsize = \"s\"\n",
    );
    let r = w.run_ok(&["validate", "cluster.toml"], 1);
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);
    assert!(
        r.stderr.contains("clusterform-provider-nosuch"),
        "{}",
        r.stderr
    );
    w.write(
        "plug.toml",
        "[cluster]\nname = \"x\"\nprovider = \"files\"\n\n[provider.files]\nplugin = \"./missing-plugin\"\n",
    );
    let r = w.run_ok(&["validate", "plug.toml"], 1);
    assert!(r.stderr.contains("there is no file"), "{}", r.stderr);
}
