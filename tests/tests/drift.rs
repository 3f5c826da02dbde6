//! `clusterform drift`: each kind of drift (deleted, changed, unmanaged) on its own gives
//! the right report and exit 2; an unapplied config change alone is "pending" and exit 0;
//! no check makes a mutating provider call; `--every` checks repeatedly, posts drift and
//! recovery to a webhook, and stops on SIGTERM. Every JSON report is checked against
//! docs/drift-report.schema.json.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clusterform_tests::{Run, World, dev_test, workspace_root};
use serde_json::Value;

fn applied(name: &str) -> World {
    let w = World::new();
    w.write("cluster.toml", &dev_test(name, 3, "s", "latency_ms = 0"));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w
}

/// The report of `drift --json`, checked against the published schema.
fn report(r: &Run) -> Value {
    let v: Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("drift --json is JSON ({e}):\n{}\n{}", r.stdout, r.stderr));
    assert_valid(&v);
    v
}

fn assert_valid(v: &Value) {
    let path = workspace_root().join("docs/drift-report.schema.json");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the schema"))
            .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("compile the schema");
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{v:#}");
}

fn id_of(w: &World, address: &str) -> String {
    w.state_ids("cluster.toml")
        .into_iter()
        .find(|(a, _)| a == address)
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("{address} is not in the state"))
}

fn summary(v: &Value) -> (u64, u64, u64, u64) {
    let s = &v["summary"];
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX);
    (
        n("missing"),
        n("changed"),
        n("unmanaged"),
        n("pending_changes"),
    )
}

#[test]
fn in_sync_is_exit_0_and_quiet_prints_nothing() {
    let w = applied("calm");
    let r = w.run_ok(&["drift", "cluster.toml"], 0);
    assert!(
        r.stdout.contains("In sync: the 5 objects match the state."),
        "{}",
        r.stdout
    );
    let r = w.run_ok(&["drift", "cluster.toml", "--quiet"], 0);
    assert_eq!(r.stdout, "", "--quiet prints nothing when in sync");
    let v = report(&w.run_ok(&["drift", "cluster.toml", "--json"], 0));
    assert_eq!(v["status"], "in_sync");
    assert_eq!(summary(&v), (0, 0, 0, 0));
}

#[test]
fn an_object_deleted_outside_is_missing_and_exit_2() {
    let w = applied("gone");
    let id = id_of(&w, "machine.workers[1]");
    assert!(w.cloud().delete(&id).expect("delete"));
    let v = report(&w.run_ok(&["drift", "cluster.toml", "--json"], 2));
    assert_eq!(v["status"], "drift");
    assert_eq!(summary(&v), (1, 0, 0, 0), "{v:#}");
    assert_eq!(v["missing"][0]["address"], "machine.workers[1]");
    assert_eq!(v["missing"][0]["id"], id.as_str());
    let r = w.run_ok(&["drift", "cluster.toml"], 2);
    assert!(
        r.stdout.contains("Deleted outside clusterform:"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(&format!("- machine.workers[1] (id {id})")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Drift: 1 missing, 0 changed, 0 unmanaged."),
        "{}",
        r.stdout
    );
}

#[test]
fn an_attribute_changed_outside_is_changed_with_before_and_after() {
    let w = applied("moved");
    let id = id_of(&w, "machine.workers[2]");
    assert!(
        w.cloud()
            .set_attr(&id, "size", Value::String("xl".into()))
            .expect("set")
    );
    let v = report(&w.run_ok(&["drift", "cluster.toml", "--json"], 2));
    assert_eq!(summary(&v), (0, 1, 0, 0), "{v:#}");
    let c = &v["changed"][0];
    assert_eq!(c["address"], "machine.workers[2]");
    assert_eq!(
        c["attributes"],
        serde_json::json!([{"name": "size", "state": "s", "actual": "xl"}])
    );
    let r = w.run_ok(&["drift", "cluster.toml", "--quiet"], 2);
    assert!(r.stdout.contains(r#"size = "s" -> "xl""#), "{}", r.stdout);
}

#[test]
fn a_tagged_object_the_state_forgot_is_unmanaged() {
    let w = applied("stray");
    let id = id_of(&w, "machine.workers[0]");
    w.run_ok(&["state", "rm", "cluster.toml", "machine.workers[0]"], 0);
    // Someone's own VM, without the tool's tags, is none of this cluster's business.
    let foreign = w
        .cloud()
        .insert_untagged("machine", &Default::default())
        .expect("insert");
    let v = report(&w.run_ok(&["drift", "cluster.toml", "--json"], 2));
    // The forgotten worker is also a pending create: the file still wants it.
    assert_eq!(summary(&v), (0, 0, 1, 1), "{v:#}");
    let u = &v["unmanaged"][0];
    assert_eq!(u["address"], "machine.workers[0]");
    assert_eq!(u["id"], id.as_str());
    assert_eq!(u["kind"], "machine");
    assert!(u["created_at"].is_string(), "{u}");
    assert!(
        !v.to_string().contains(&foreign),
        "untagged objects are not reported"
    );
}

#[test]
fn an_unapplied_config_change_alone_is_pending_not_drift() {
    let w = applied("todo");
    // Two more workers and a bigger size for all: nothing changed outside clusterform.
    w.write("cluster.toml", &dev_test("todo", 5, "m", "latency_ms = 0"));
    let v = report(&w.run_ok(&["drift", "cluster.toml", "--json"], 0));
    assert_eq!(v["status"], "in_sync");
    assert_eq!(summary(&v), (0, 0, 0, 5), "{v:#}");
    let actions: Vec<(&str, &str)> = v["pending_changes"]
        .as_array()
        .expect("pending")
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap_or_default(),
                p["action"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("machine.workers[0]", "update"),
            ("machine.workers[1]", "update"),
            ("machine.workers[2]", "update"),
            ("machine.workers[3]", "create"),
            ("machine.workers[4]", "create"),
        ]
    );
    let r = w.run_ok(&["drift", "cluster.toml"], 0);
    assert!(r.stdout.contains("Pending changes"), "{}", r.stdout);
    assert!(r.stdout.contains("In sync"), "{}", r.stdout);
}

#[test]
fn drift_makes_no_mutating_call_and_leaves_the_state_alone() {
    let w = applied("readonly");
    let cloud = w.cloud();
    let gone = id_of(&w, "machine.workers[0]");
    let moved = id_of(&w, "machine.workers[1]");
    cloud.delete(&gone).expect("delete");
    cloud
        .set_attr(&moved, "size", Value::String("xl".into()))
        .expect("set");
    w.run_ok(&["state", "rm", "cluster.toml", "machine.workers[2]"], 0);
    w.write(
        "cluster.toml",
        &dev_test("readonly", 4, "s", "latency_ms = 0"),
    );
    let state_before = w.state_json("cluster.toml");
    let objects_before = w.objects();
    cloud.reset_calls().expect("reset");

    for args in [
        vec!["drift", "cluster.toml"],
        vec!["drift", "cluster.toml", "--json"],
        vec!["drift", "cluster.toml", "--quiet"],
    ] {
        w.run_ok(&args, 2);
    }
    let calls = cloud.calls().expect("calls");
    assert_eq!(cloud.mutations().expect("mutations"), 0, "{calls:?}");
    assert!(calls.get("read_batch").is_some_and(|n| *n > 0), "{calls:?}");
    assert_eq!(w.objects(), objects_before);
    assert_eq!(w.state_json("cluster.toml"), state_before);
}

/// A tiny HTTP server on 127.0.0.1 that answers 200 to every request and hands over
/// each request's body.
fn webhook_receiver() -> (String, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut len = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok() {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    (url, rx)
}

#[allow(unsafe_code)]
fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

#[test]
fn one_check_with_drift_posts_the_report_to_the_webhook() {
    let w = applied("hooked");
    let (url, bodies) = webhook_receiver();
    w.run_ok(&["drift", "cluster.toml", "--webhook", &url], 0);
    assert!(
        bodies.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing is posted while in sync"
    );
    let id = id_of(&w, "machine.workers[0]");
    w.cloud().delete(&id).expect("delete");
    w.run_ok(&["drift", "cluster.toml", "--quiet", "--webhook", &url], 2);
    let v = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("the webhook got the report");
    assert_valid(&v);
    assert_eq!(v["event"], "drift");
    assert_eq!(v["missing"][0]["id"], id.as_str());
}

#[test]
fn every_checks_repeatedly_posts_drift_and_recovery_and_stops_on_sigterm() {
    let w = applied("watch");
    let (url, bodies) = webhook_receiver();
    let mut child = w
        .command(&["drift", "cluster.toml", "--every", "1s", "--webhook", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let next_check = |seen: &mut Vec<String>| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no check line ({e}): {seen:#?}"));
            seen.push(line.clone());
            if line.contains(" check ") {
                return line;
            }
        }
    };

    let first = next_check(&mut seen);
    assert!(first.contains("check 1: in sync"), "{first}");
    // Drift appears: a check reports it and posts it. (Checks run on their own clock:
    // wait for the first one that sees the change, however slow this machine is.)
    let id = id_of(&w, "machine.workers[2]");
    w.cloud().delete(&id).expect("delete");
    let until = |seen: &mut Vec<String>, what: &str| -> String {
        loop {
            let line = next_check(seen);
            if line.contains(what) {
                return line;
            }
        }
    };
    let drifted = until(&mut seen, "DRIFT");
    assert!(
        drifted.contains(": DRIFT: 1 missing, 0 changed, 0 unmanaged"),
        "{drifted}"
    );
    let posted = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("drift post");
    assert_valid(&posted);
    assert_eq!(posted["event"], "drift");
    // Accepted into the state: in sync again, and the webhook hears of the recovery.
    w.run_ok(
        &["apply", "--refresh-only", "cluster.toml", "--auto-approve"],
        0,
    );
    until(&mut seen, "in sync");
    let posted = bodies
        .recv_timeout(Duration::from_secs(10))
        .expect("recovery post");
    assert_valid(&posted);
    assert_eq!(posted["event"], "recovered");
    assert_eq!(posted["status"], "in_sync");
    // Once more in sync: nothing new to post.
    until(&mut seen, "in sync");

    sigterm(&child);
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{seen:#?} {rest:#?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("Stopped (SIGTERM) after ")),
        "{rest:#?}"
    );
    assert!(
        bodies.try_recv().is_err(),
        "one post per change, not one per check"
    );
}

/// The command lines in examples/drift-check (systemd units and the cron line) use flags
/// that exist: each runs against an in-sync cluster (without `--every`) and exits 0.
#[test]
fn the_drift_check_examples_run() {
    let w = applied("example");
    let dir = workspace_root().join("examples/drift-check");
    let mut lines: Vec<String> = Vec::new();
    for f in [
        "clusterform-drift.service",
        "clusterform-drift-watch.service",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).expect("read unit");
        lines.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("ExecStart="))
                .map(str::to_string),
        );
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    lines.extend(
        readme
            .lines()
            .filter(|l| l.starts_with("*/15"))
            .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")),
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    let cluster = w.path().join("cluster.toml");
    for line in &lines {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/clusterform"), "{line}");
        let mut args: Vec<String> = Vec::new();
        let mut skip = false;
        for word in words {
            if std::mem::take(&mut skip) {
                continue;
            }
            match word {
                "--every" => skip = true,
                "/srv/clusters/prod/cluster.toml" => args.push(cluster.display().to_string()),
                other => args.push(other.to_string()),
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        w.run_ok(&refs, 0);
    }
}
