//! `Tunnel` with a fake `ssh` (a python3 script first on ssh's PATH) that records its
//! argv and forwards each `-L 127.0.0.1:L:H:P` itself: the exact argv, requests through
//! the tunnel to canned etcd servers, ssh failing early, a tunnel never ready, and ssh
//! killed on drop.

#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsString;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clusterform_etcd::{
    ClientConfig, EtcdClient, EtcdReader, SshVia, Tunnel, TunnelError, TunnelOptions,
};
use common::CannedServer;

/// Records argv next to itself, then forwards every `-L` until killed.
const FORWARDING_SSH: &str = r#"#!/usr/bin/env python3
import json, os, socket, sys, threading, time

here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(here, "argv.json"), "w") as f:
    json.dump(args, f)

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def serve(lport, host, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", lport))
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        try:
            up = socket.create_connection((host.strip("[]"), port))
        except OSError:
            conn.close()
            continue
        threading.Thread(target=pump, args=(conn, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, conn), daemon=True).start()

time.sleep(0.3)  # like ssh, not ready at once
for i, a in enumerate(args):
    if a == "-L":
        bind, lport, rest = args[i + 1].split(":", 2)
        host, port = rest.rsplit(":", 1)
        threading.Thread(target=serve, args=(int(lport), host, int(port)), daemon=True).start()
threading.Event().wait()
"#;

const FAILING_SSH: &str = r#"#!/usr/bin/env python3
import sys
sys.stderr.write("core@bastion.example.com: Permission denied (publickey).\n")
sys.exit(255)
"#;

const SILENT_SSH: &str = r#"#!/usr/bin/env python3
import threading
threading.Event().wait()
"#;

/// A temp dir with `ssh` = `script`, and the PATH to give ssh (that dir first).
fn fake_ssh(script: &str) -> (tempfile::TempDir, OsString) {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("ssh");
    std::fs::write(&ssh, script).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut paths: Vec<PathBuf> = vec![dir.path().to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    let path = std::env::join_paths(paths).unwrap();
    (dir, path)
}

fn options(path: OsString, ready: Duration) -> TunnelOptions {
    TunnelOptions {
        ready_timeout: ready,
        path: Some(path),
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn status_answer(id: u64) -> String {
    format!(
        r#"{{"header":{{"member_id":"{id}"}},"version":"3.4.23","dbSize":"20480","leader":"1","raftIndex":"4","raftTerm":"2","raftAppliedIndex":"4"}}"#
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[tokio::test]
async fn forwards_each_client_url_and_kills_ssh_on_drop() {
    let (dir, path) = fake_ssh(FORWARDING_SSH);
    let a1 = status_answer(1);
    let a2 = status_answer(2);
    let s1 = CannedServer::start(&[("/v3/maintenance/status", 200, &a1)]);
    let s2 = CannedServer::start(&[("/v3/maintenance/status", 200, &a2)]);
    // Two targets, and the first again with a trailing slash (same forward).
    let urls = vec![s1.url.clone(), s2.url.clone(), format!("{}/", s1.url)];
    let via = SshVia::parse("ssh://core@bastion.example.com:2222").unwrap();

    let started = Instant::now();
    let (mut tunnel, map) =
        Tunnel::open_with(&via, &urls, &options(path, Duration::from_secs(15))).unwrap();
    eprintln!("tunnel ready after {:?}", started.elapsed());
    assert_eq!(map.len(), 3);
    assert_eq!(&map, tunnel.url_map());
    assert_eq!(tunnel.via(), &via);
    assert_eq!(map[&s1.url], map[&format!("{}/", s1.url)]);
    assert_ne!(map[&s1.url], map[&s2.url]);
    assert!(map.values().all(|u| u.starts_with("http://127.0.0.1:")));
    let (l1, l2) = (port_of(&map[&s1.url]), port_of(&map[&s2.url]));

    let argv: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("argv.json")).unwrap())
            .unwrap();
    assert_eq!(
        argv,
        vec![
            "-N".to_string(),
            "-o".into(),
            "ExitOnForwardFailure=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ServerAliveInterval=15".into(),
            "-p".into(),
            "2222".into(),
            "-L".into(),
            format!("127.0.0.1:{l1}:127.0.0.1:{}", port_of(&s1.url)),
            "-L".into(),
            format!("127.0.0.1:{l2}:127.0.0.1:{}", port_of(&s2.url)),
            "core@bastion.example.com".into(),
        ]
    );

    // HTTP through the tunnel reaches each server, addressed by its client URL.
    let client = EtcdClient::new(ClientConfig {
        endpoints: vec![s1.url.clone(), s2.url.clone()],
        url_map: map.clone(),
        timeouts: common::short_timeouts(),
    });
    let st1 = client.status(&s1.url).await.unwrap();
    let st2 = client.status(&s2.url).await.unwrap();
    assert_eq!((st1.member_id, st1.endpoint.as_str()), (1, s1.url.as_str()));
    assert_eq!((st2.member_id, st2.endpoint.as_str()), (2, s2.url.as_str()));
    assert_eq!(s1.requests().len(), 1);
    assert_eq!(s2.requests().len(), 1);
    tunnel.check().unwrap();

    let pid = tunnel.pid();
    assert!(alive(pid));
    drop(tunnel);
    assert!(!alive(pid), "ssh {pid} still runs after drop");
    assert!(TcpStream::connect(("127.0.0.1", l1)).is_err());
}

#[tokio::test]
async fn ssh_exiting_early_says_why_and_how_to_check() {
    let (_dir, path) = fake_ssh(FAILING_SSH);
    let via = SshVia::parse("ssh://core@bastion.example.com:2222").unwrap();
    let err = Tunnel::open_with(
        &via,
        &["http://127.0.0.1:2379".to_string()],
        &options(path, Duration::from_secs(15)),
    )
    .unwrap_err();
    match &err {
        TunnelError::SshExited {
            status,
            stderr,
            login,
            ..
        } => {
            assert_eq!(status, "exit status 255");
            assert_eq!(
                stderr,
                "core@bastion.example.com: Permission denied (publickey)."
            );
            assert_eq!(login, "-p 2222 core@bastion.example.com");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("exit status 255"), "{text}");
    assert!(text.contains("Permission denied (publickey)."), "{text}");
    assert!(
        text.contains("`ssh -p 2222 core@bastion.example.com`"),
        "{text}"
    );
}

#[tokio::test]
async fn a_tunnel_never_ready_times_out_and_kills_ssh() {
    let (dir, path) = fake_ssh(SILENT_SSH);
    let mine = dir.path().to_string_lossy().into_owned();
    let via = SshVia::parse("ssh://core@bastion.example.com").unwrap();
    let started = Instant::now();
    let err = Tunnel::open_with(
        &via,
        &["http://127.0.0.1:2379".to_string()],
        &options(path, Duration::from_secs(1)),
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = err.to_string();
    assert!(matches!(err, TunnelError::NotReady { .. }), "{text}");
    assert!(text.contains("not ready after 1 s"), "{text}");
    assert!(text.contains("`ssh core@bastion.example.com`"), "{text}");
    // No ssh left behind: no child of ours runs this test's script.
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(1) == Some(&me.as_str()) {
                let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
                assert!(
                    !cmd.contains(&mine) || fields[0] == "Z",
                    "left behind: {cmd:?} ({})",
                    fields[0]
                );
            }
        }
    }
}

#[test]
fn no_ssh_on_path() {
    let empty = tempfile::tempdir().unwrap();
    let via = SshVia::parse("ssh://core@bastion.example.com").unwrap();
    let err = Tunnel::open_with(
        &via,
        &["http://127.0.0.1:2379".to_string()],
        &options(empty.path().as_os_str().to_owned(), Duration::from_secs(1)),
    )
    .unwrap_err();
    assert!(matches!(err, TunnelError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot run `ssh`"), "{err}");
}

#[test]
fn bad_client_urls_are_refused_before_ssh_runs() {
    let via = SshVia::parse("ssh://core@bastion.example.com").unwrap();
    let err = Tunnel::open(&via, &["10.0.1.101:2379".to_string()]).unwrap_err();
    assert!(matches!(err, TunnelError::BadClientUrl { .. }), "{err:?}");
}
