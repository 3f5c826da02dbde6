//! The etcd client against real etcd with TLS and client-certificate auth (certificates
//! from `clusterform-pki`): with the cluster's CA and a client certificate it reads the
//! member list and a member's status; without TLS material, or with a certificate of
//! another CA, it cannot. Skipped with a note where etcd is missing, unless `CI=true`.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterform_etcd::{ClientConfig, ClientTls, EtcdClient, EtcdReader};
use clusterform_pki::{Ca, DEFAULT_VALIDITY};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(url: &str) -> ClientConfig {
    ClientConfig {
        endpoints: vec![url.to_string()],
        url_map: BTreeMap::new(),
        timeouts: common::short_timeouts(),
    }
}

#[tokio::test]
async fn a_client_certificate_of_the_clusters_ca_gets_in_and_nothing_else_does() {
    // None (with a note) where etcd is missing; under CI=true it fails instead.
    let Some(etcd) = common::etcd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::generate("tls", DEFAULT_VALIDITY).expect("CA");
    let member = ca
        .member("m0", &[IpAddr::from([127, 0, 0, 1])], DEFAULT_VALIDITY)
        .expect("member");
    let client = ca.client("clusterform", DEFAULT_VALIDITY).expect("client");
    let other = Ca::generate("other", DEFAULT_VALIDITY).expect("other CA");
    let stranger = other.client("intruder", DEFAULT_VALIDITY).expect("client");
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (ca_file, cert, key) = (
        write("ca.crt", ca.cert_pem()),
        write("m.crt", &member.cert_pem),
        write("m.key", member.key_pem.expose()),
    );
    let ports = common::free_ports(2);
    let url = format!("https://127.0.0.1:{}", ports[0]);
    let peer = format!("https://127.0.0.1:{}", ports[1]);
    let _etcd = Killed(
        Command::new(etcd)
            .arg("--name=m0")
            .arg(format!("--data-dir={}", d.join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=m0={peer}"))
            .args(clusterform_pki::etcd_member_tls_flags(
                &cert.display().to_string(),
                &key.display().to_string(),
                &ca_file.display().to_string(),
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );

    let tls = ClientTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: client.cert_pem.clone(),
        key_pem: client.key_pem.expose().to_string(),
    };
    assert!(
        !format!("{tls:?}").contains("PRIVATE KEY"),
        "the key is masked"
    );
    let good = EtcdClient::with_tls(config(&url), &tls).expect("TLS client");
    let started = Instant::now();
    let members = loop {
        match good.members().await {
            Ok(m) => break m,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the CA's client could not read the members: {e}"),
        }
    };
    assert_eq!(members.len(), 1, "{members:?}");
    good.status(&url).await.expect("status over TLS");

    // Without TLS material (the system's roots, no certificate): refused.
    let plain = EtcdClient::new(config(&url));
    assert!(
        plain.members().await.is_err(),
        "a client without the CA got in"
    );
    // A certificate of another CA: refused.
    let intruder = ClientTls {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: stranger.cert_pem.clone(),
        key_pem: stranger.key_pem.expose().to_string(),
    };
    let bad = EtcdClient::with_tls(config(&url), &intruder).expect("TLS client");
    assert!(bad.members().await.is_err(), "another CA's client got in");
    // Material that does not parse is an error naming the part.
    let broken = ClientTls {
        key_pem: "not a key".into(),
        ..tls
    };
    let e = EtcdClient::with_tls(config(&url), &broken).expect_err("bad key");
    assert!(e.to_string().contains("private key"), "{e}");
}
