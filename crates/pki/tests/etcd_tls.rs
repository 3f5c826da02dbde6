//! The certificates the CA issues work on real etcd (Debian's `etcd-server`), on
//! loopback: a member with TLS on its client and peer URLs and client-certificate auth
//! takes writes from a client with a certificate of the same CA, and refuses a client
//! without one and a client with a certificate from another CA. Skipped with a note
//! where etcd is missing, unless `CI=true`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clusterform_pki::{Ca, DEFAULT_VALIDITY, Issued};

/// True when `cmd arg` runs and succeeds (`etcd --version`, `etcdctl version`).
fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `etcdctl` against `url` with the CA trusted and `client` (cert, key) when given.
fn etcdctl(url: &str, ca: &Path, client: Option<(&Path, &Path)>, args: &[&str]) -> Output {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg(format!("--cacert={}", ca.display()))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s");
    if let Some((cert, key)) = client {
        c.arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()));
    }
    c.args(args).output().expect("run etcdctl")
}

fn files(dir: &Path, prefix: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{prefix}.crt"), &issued.cert_pem),
        write(dir, &format!("{prefix}.key"), issued.key_pem.expose()),
    )
}

#[test]
fn a_tls_member_takes_its_cas_clients_and_refuses_others() {
    if !(have("etcd", "--version") && have("etcdctl", "version")) {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "etcd and etcdctl are needed (apt-get install etcd-server etcd-client)"
        );
        eprintln!("note: etcd not found; the TLS test is skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::generate("tls", DEFAULT_VALIDITY).expect("CA");
    let ca_file = write(d, "ca.crt", ca.cert_pem());
    let member = ca
        .member(
            "tls-central-0",
            &[IpAddr::from([127, 0, 0, 1])],
            DEFAULT_VALIDITY,
        )
        .expect("member");
    let (m_cert, m_key) = files(d, "member", &member);
    let client = ca.client("clusterform", DEFAULT_VALIDITY).expect("client");
    let (c_cert, c_key) = files(d, "client", &client);
    let stranger_ca = Ca::generate("other", DEFAULT_VALIDITY).expect("other CA");
    let stranger = stranger_ca
        .client("intruder", DEFAULT_VALIDITY)
        .expect("client");
    let (s_cert, s_key) = files(d, "stranger", &stranger);

    let (cp, pp) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{cp}");
    let peer_url = format!("https://127.0.0.1:{pp}");
    let log = std::fs::File::create(d.join("etcd.log")).expect("log");
    let _etcd = Etcd(
        Command::new("etcd")
            .arg("--name=tls-central-0")
            .arg(format!("--data-dir={}", d.join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=tls-central-0={peer_url}"))
            .args(clusterform_pki::etcd_member_tls_flags(
                &m_cert.display().to_string(),
                &m_key.display().to_string(),
                &ca_file.display().to_string(),
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start etcd"),
    );

    // The CA's client writes and reads.
    let started = Instant::now();
    loop {
        let o = etcdctl(
            &client_url,
            &ca_file,
            Some((&c_cert, &c_key)),
            &["put", "k", "v"],
        );
        if o.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the CA's client could not write: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = etcdctl(
        &client_url,
        &ca_file,
        Some((&c_cert, &c_key)),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "v");

    // No certificate, or one from another CA: refused.
    let o = etcdctl(&client_url, &ca_file, None, &["get", "k"]);
    assert!(!o.status.success(), "a client without a certificate got in");
    let o = etcdctl(
        &client_url,
        &ca_file,
        Some((&s_cert, &s_key)),
        &["get", "k"],
    );
    assert!(!o.status.success(), "a client of another CA got in");
    // Plain HTTP is not served at all.
    let o = etcdctl(
        &format!("http://127.0.0.1:{cp}"),
        &ca_file,
        None,
        &["get", "k"],
    );
    assert!(!o.status.success(), "plain HTTP answered");

    // The renewed CA (same key and name, a new window): a member still on the old
    // certificates and the old CA takes a client of the renewed one, which trusts the
    // member's old certificate in turn (how a rolling renewal keeps the cluster whole).
    let renewed = ca.renewed("tls", DEFAULT_VALIDITY).expect("renewed");
    assert_eq!(renewed.key_pem().expose(), ca.key_pem().expose());
    assert_ne!(renewed.cert_pem(), ca.cert_pem());
    assert!(
        clusterform_pki::not_after(renewed.cert_pem()).expect("not after")
            >= clusterform_pki::not_after(ca.cert_pem()).expect("not after")
    );
    let renewed_file = write(d, "renewed-ca.crt", renewed.cert_pem());
    let fresh = renewed
        .client("clusterform", DEFAULT_VALIDITY)
        .expect("client");
    assert_ne!(fresh.cert_pem, client.cert_pem, "a new certificate");
    let (f_cert, f_key) = files(d, "fresh", &fresh);
    let o = etcdctl(
        &client_url,
        &renewed_file,
        Some((&f_cert, &f_key)),
        &["get", "k", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "v",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
