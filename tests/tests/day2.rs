//! Day 2 of the etcd members on the plain sim (no etcd runs, so no membership call is
//! made; the order, the policies and the guard rails are the same as on a live cluster):
//! grow and shrink plan one member at a time and leave the workers alone; a config
//! change rolls the members; `update = "manual"` lists stale members and leaves them;
//! `all-at-once` and replacing dev-test's only member need `--allow-data-loss`;
//! `--replace` names what exists; `etcd status` says why there is nothing to ask.
//! Also: `[central] etcd_via` reaches a real etcd through an SSH tunnel (a fake `ssh`
//! first on PATH that forwards the ports it is given).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterform_tests::{World, dev_test};

fn central(count: u32, extra: &str) -> String {
    format!(
        r#"[cluster]
name = "roll"
blueprint = "central-services"
provider = "sim"

[provider.sim]
latency_ms = 0

[network]
cidr = "10.0.0.0/16"

[central]
count = {count}
size = "m"
butane = ["central.bu"]
{extra}

[workers]
count = 2
size = "s"
"#
    )
}

fn butane(marker: &str) -> String {
    format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/marker\n      contents:\n        inline: \"{marker}\"\n"
    )
}

/// An error report on one line: miette's wrapping and frame taken out.
fn flat(text: &str) -> String {
    text.lines()
        .map(|l| l.trim().trim_start_matches(['│', '×', '╰', '─']).trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lines of a plan that say what happens in what order (headers of changes, the
/// etcd steps, the summary), without the attribute rows.
fn outline(plan: &str) -> String {
    plan.lines()
        .filter(|l| {
            l.starts_with("  #")
                || l.starts_with("etcd")
                || l.starts_with("Plan:")
                || (l.starts_with("  ") && l.trim_start().starts_with(char::is_numeric))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `apply cluster.toml --auto-approve EXTRA...`, which must exit `code`.
fn apply(w: &World, extra: &[&str], code: i32) -> clusterform_tests::Run {
    let mut args = vec!["apply", "cluster.toml", "--auto-approve"];
    args.extend_from_slice(extra);
    w.run_ok(&args, code)
}

fn world(count: u32, extra: &str) -> World {
    let w = World::new();
    w.write("central.bu", &butane("1"));
    w.write("cluster.toml", &central(count, extra));
    apply(&w, &[], 0);
    w
}

#[test]
fn grow_and_shrink_change_only_the_members_that_come_and_go() {
    let w = world(3, "");
    let before = w.state_ids("cluster.toml");
    w.write("cluster.toml", &central(5, ""));
    let r = apply(&w, &[], 0);
    assert!(
        r.stdout
            .contains("Plan: 2 to add, 0 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("1. machine.central[3] joins: 3 -> 4 members")
            && r.stdout
                .contains("2. machine.central[4] joins: 4 -> 5 members"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("no membership call is made"),
        "the plain sim runs no etcd: {}",
        r.stdout
    );
    let after = w.state_ids("cluster.toml");
    for (a, id) in &before {
        assert!(after.contains(&(a.clone(), id.clone())), "{a} was replaced");
    }
    w.write("cluster.toml", &central(3, ""));
    let r = apply(&w, &[], 0);
    assert!(
        r.stdout
            .contains("1. machine.central[4] leaves: 5 -> 4 members")
            && r.stdout
                .contains("2. machine.central[3] leaves: 4 -> 3 members"),
        "{}",
        r.stdout
    );
    assert_eq!(w.state_ids("cluster.toml"), before);
    w.assert_state_matches_cloud("cluster.toml");
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}

#[test]
fn a_config_change_rolls_the_members_one_at_a_time_in_order() {
    let w = world(3, "");
    w.write("central.bu", &butane("2"));
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    insta::assert_snapshot!(outline(&r.stdout));
    // The members are replaced one after the other: each delete after the create of the
    // one before.
    apply(&w, &["--parallelism", "8"], 0);
    w.assert_state_matches_cloud("cluster.toml");
    let ids: Vec<u32> = w
        .state_ids("cluster.toml")
        .into_iter()
        .filter(|(a, _)| a.starts_with("machine.central"))
        .map(|(_, id)| id.trim_start_matches("m-").parse().expect("a sim id"))
        .collect();
    // Made in order: central[0] first, then [1], then [2].
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "{ids:?}");
    w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
}

#[test]
fn manual_lists_stale_members_and_replace_takes_one() {
    let w = world(3, "update = \"manual\"");
    w.write("central.bu", &butane("2"));
    let r = w.run_ok(&["plan", "cluster.toml", "--detailed-exitcode"], 0);
    for i in 0..3 {
        assert!(
            r.stdout.contains(&format!(
                "# machine.central[{i}] has a stale config and is left as it is (`update = \"manual\"`); replace it with `clusterform apply --replace machine.central[{i}]`"
            )),
            "{}",
            r.stdout
        );
    }
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    let before = w.state_ids("cluster.toml");
    let r = apply(&w, &["--replace", "machine.central[1]"], 0);
    assert!(
        r.stdout
            .contains("Plan: 1 to add, 0 to change, 1 to destroy."),
        "{}",
        r.stdout
    );
    let after = w.state_ids("cluster.toml");
    assert_eq!(before[0], after[0]);
    assert_ne!(before[1], after[1]);
    assert_eq!(before[2], after[2]);
    // Two stale members are left.
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    assert_eq!(
        r.stdout.matches("has a stale config").count(),
        2,
        "{}",
        r.stdout
    );
}

#[test]
fn all_at_once_needs_allow_data_loss_and_replaces_every_member() {
    let w = world(3, "update = \"all-at-once\"");
    w.write("central.bu", &butane("2"));
    let r = apply(&w, &[], 1);
    let err = flat(&r.stderr);
    assert!(
        err.contains("this plan would lose the etcd data")
            && err.contains("replaces 3 of 3 etcd members together")
            && err.contains("--allow-data-loss"),
        "{err}"
    );
    let before = w.state_ids("cluster.toml");
    let r = apply(&w, &["--allow-data-loss"], 0);
    assert!(
        r.stdout.contains("Warning: this plan loses the etcd data"),
        "{}",
        r.stdout
    );
    let after = w.state_ids("cluster.toml");
    let central = |ids: &[(String, String)]| -> Vec<String> {
        ids.iter()
            .filter(|(a, _)| a.starts_with("machine.central"))
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert!(
        central(&before)
            .iter()
            .all(|id| !central(&after).contains(id)),
        "every member was made anew"
    );
}

#[test]
fn replacing_dev_tests_only_member_is_refused_without_allow_data_loss() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("solo", 1, "s", "latency_ms = 0"));
    apply(&w, &[], 0);
    let before = w.state_ids("cluster.toml");
    let r = apply(&w, &["--replace", "machine.central[0]"], 1);
    assert!(
        flat(&r.stderr)
            .contains("`machine.central[0]` is the only etcd member: replacing or removing it loses the etcd cluster and every key in it"),
        "{}",
        r.stderr
    );
    assert_eq!(w.state_ids("cluster.toml"), before, "nothing was changed");
    apply(
        &w,
        &["--replace", "machine.central[0]", "--allow-data-loss"],
        0,
    );
    assert_ne!(w.state_ids("cluster.toml"), before);
}

#[test]
fn replace_names_what_the_state_has() {
    let w = world(3, "");
    let r = w.run_ok(
        &["plan", "cluster.toml", "--replace", "machine.central[7]"],
        1,
    );
    assert!(
        flat(&r.stderr).contains("`--replace machine.central[7]` selects nothing in the state"),
        "{}",
        r.stderr
    );
    let r = w.run_ok(&["plan", "cluster.toml", "--replace", "not an address"], 1);
    assert!(
        r.stderr.contains("is not a resource address"),
        "{}",
        r.stderr
    );
    // A worker is replaced as any resource is.
    let r = w.run_ok(&["plan", "cluster.toml", "-replace=machine.workers[1]"], 0);
    assert!(
        r.stdout
            .contains("# machine.workers[1] must be replaced (requested with --replace)"),
        "{}",
        r.stdout
    );
}

#[test]
fn etcd_status_on_the_plain_sim_says_there_is_no_etcd() {
    let w = world(3, "");
    let r = w.run_ok(&["etcd", "status", "cluster.toml"], 1);
    let err = flat(&r.stderr);
    assert!(
        err.contains("no etcd runs for `roll`") && err.contains("live = true"),
        "{err}"
    );
    let fresh = World::new();
    fresh.write("central.bu", &butane("1"));
    fresh.write("cluster.toml", &central(3, ""));
    let r = fresh.run_ok(&["etcd", "status", "cluster.toml"], 1);
    assert!(r.stderr.contains("records no etcd member"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------
// `etcd_via`: a real etcd on loopback, reached through a fake `ssh` that forwards.

/// A fake `ssh`: records its arguments, then forwards each `-L 127.0.0.1:L:H:P`.
const FAKE_SSH: &str = r#"#!/usr/bin/env python3
import os, socket, sys, threading
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
args = sys.argv[1:]
forwards = [args[i + 1] for i, a in enumerate(args) if a == "-L"]
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
def serve(spec):
    bind, lport, host, port = spec.split(":")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, int(lport)))
    srv.listen(16)
    while True:
        c, _ = srv.accept()
        u = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe, args=(c, u), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
for spec in forwards:
    threading.Thread(target=serve, args=(spec,), daemon=True).start()
threading.Event().wait()
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A one-member etcd on loopback, killed on drop.
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcd_on_loopback(dir: &Path) -> Option<(Etcd, u16)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd is missing under CI=true (apt-get install etcd-server)"
        );
        eprintln!("skipping: etcd is missing (apt-get install etcd-server)");
        return None;
    }
    let (client, peer) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "solo", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("solo={p}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = Etcd(child);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(15), "etcd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((etcd, client))
}

#[test]
fn etcd_via_reaches_etcd_through_the_system_ssh() {
    let w = World::new();
    let Some((_etcd, port)) = etcd_on_loopback(w.path()) else {
        return;
    };
    let bin = w.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let ssh = bin.join("ssh");
    std::fs::write(&ssh, FAKE_SSH).expect("fake ssh");
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&ssh).expect("meta").permissions(),
        0o755,
    );
    let mut perms = std::fs::metadata(&ssh).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&ssh, perms).expect("chmod");
    let log = w.path().join("ssh.log");
    w.write("central.bu", &butane("1"));
    // The endpoint is the address etcd has "on the far side"; the fake ssh forwards to it.
    let endpoint = format!("http://127.0.0.1:{port}");
    w.write(
        "cluster.toml",
        &central(
            3,
            &format!(
                "etcd_endpoints = [\"{endpoint}\"]\netcd_via = \"ssh://core@bastion.example.com:2222\""
            ),
        ),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let r = w
        .command(&["etcd", "status", "cluster.toml"])
        .env("PATH", &path)
        .env("FAKE_SSH_LOG", &log)
        .output()
        .expect("runs");
    let (code, out, err) = (
        r.status.code(),
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("etcd of cluster `roll`: 1 voting member(s) of 1, leader solo; healthy")
            && out.contains("(reached through ssh://core@bastion.example.com:2222)"),
        "{out}"
    );
    let args = std::fs::read_to_string(&log).expect("ssh was run");
    assert!(
        args.starts_with("-N -o ExitOnForwardFailure=yes -o BatchMode=yes")
            && args.contains(&format!(":127.0.0.1:{port} "))
            && args.contains("-p 2222")
            && args.trim_end().ends_with("core@bastion.example.com"),
        "{args}"
    );
}
