//! The provider against libvirt's test driver: each test opens its own seeded
//! `test:///<tmpdir>/node.xml` (never the shared `test:///default`), so tests running as
//! threads of one process never see each other's objects.

use std::path::{Path, PathBuf};

use clusterform_core::{Address, Attrs};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderError, ReadRequest, Reader,
    UpdateRequest,
};
use clusterform_provider_libvirt::{LibvirtProvider, METADATA_NS};
use serde_json::{Value, json};
use virt::connect::Connect;

/// A private test-driver host: a node file with an `images` pool holding the image.
struct Host {
    dir: tempfile::TempDir,
}

const IMAGE: &str = "/images/flatcar_production_qemu_image.img";

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = format!(
            r#"<node>
  <pool type='dir'>
    <name>images</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <target><path>/images</path></target>
    <volume type='file'>
      <name>flatcar_production_qemu_image.img</name>
      <capacity unit='GiB'>8</capacity>
      <target><path>{IMAGE}</path><format type='qcow2'/></target>
    </volume>
  </pool>
</node>
"#
        );
        std::fs::write(dir.path().join("node.xml"), node).expect("write node.xml");
        Host { dir }
    }

    fn uri(&self) -> String {
        format!("test://{}", self.dir.path().join("node.xml").display())
    }

    fn ign_dir(&self) -> PathBuf {
        self.dir.path().join("ign")
    }

    fn provider(&self, extra: Value) -> LibvirtProvider {
        let mut cfg = json!({
            "uri": self.uri(),
            "image": IMAGE,
            "pool_dir": "/pools",
            "ignition_dir": self.ign_dir(),
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        LibvirtProvider::from_config(&serde_json::from_value(cfg).expect("table"), Path::new("/"))
            .expect("valid settings")
    }
}

fn owner(address: &str, op: &str) -> Ownership {
    Ownership {
        cluster: "demo".into(),
        address: address.parse().expect("address"),
        op: op.into(),
        expires_at: None,
        created_by: Some("test@host".into()),
        created_at: None,
    }
}

fn attrs(v: Value) -> Attrs {
    serde_json::from_value(v).expect("attrs")
}

fn net_attrs() -> Attrs {
    attrs(
        json!({"name": "demo-main", "cidr": "10.1.0.0/24", "gateway": "10.1.0.1", "dns": ["10.1.0.1", "1.1.1.1"]}),
    )
}

fn machine_attrs(name: &str, address: Option<&str>) -> Attrs {
    let mut a = attrs(json!({
        "name": name, "size": "2cpu-4gb", "network": "demo-main", "role": "worker",
        "user_data": format!("{{\"ignition\":{{\"version\":\"3.3.0\"}},\"x\":\"{name}\"}}"),
        "image": IMAGE,
    }));
    if let Some(ip) = address {
        a.insert("address".into(), json!(ip));
    }
    a
}

async fn create(p: &LibvirtProvider, kind: &str, address: &str, op: &str, a: Attrs) -> Object {
    p.create(&CreateRequest {
        kind: kind.into(),
        attrs: a,
        owner: owner(address, op),
    })
    .await
    .unwrap_or_else(|e| panic!("create {address}: {e}"))
}

async fn read(p: &LibvirtProvider, kind: &str, id: &str) -> Option<Object> {
    p.read(&ReadRequest {
        address: Address::new(kind, "x"),
        kind: kind.into(),
        id: id.into(),
        prior: Default::default(),
    })
    .await
    .expect("read")
}

#[tokio::test(flavor = "multi_thread")]
async fn network_and_machines_lifecycle() {
    let host = Host::new();
    let p = host.provider(json!({}));
    let net = create(&p, "network", "network.main", "op-net", net_attrs()).await;
    assert_eq!(net.id, "demo-main");
    assert_eq!(net.attrs["pool"], json!("demo-main"));
    assert_eq!(net.attrs["pool_path"], json!("/pools/demo-main"));
    assert_eq!(net.attrs["forward"], json!("nat"));
    assert_eq!(net.attrs["state"], json!("active"));
    assert_eq!(net.attrs["dns"], json!(["10.1.0.1", "1.1.1.1"]), "as given");

    let central = create(
        &p,
        "machine",
        "machine.central[0]",
        "op-c0",
        machine_attrs("demo-central-0", Some("10.1.0.101")),
    )
    .await;
    assert_eq!(central.attrs["address"], json!("10.1.0.101"));
    assert_eq!(central.attrs["mac"], json!("52:54:00:01:00:65"));
    assert_eq!(central.attrs["state"], json!("running"));
    assert_eq!(central.attrs["size"], json!("2cpu-4gb"));
    let w0 = create(
        &p,
        "machine",
        "machine.workers[0]",
        "op-w0",
        machine_attrs("demo-workers-0", None),
    )
    .await;
    let w1 = create(
        &p,
        "machine",
        "machine.workers[1]",
        "op-w1",
        machine_attrs("demo-workers-1", None),
    )
    .await;
    assert_eq!(
        w0.attrs["address"],
        json!("10.1.0.10"),
        "lowest free of the DHCP range"
    );
    assert_eq!(w1.attrs["address"], json!("10.1.0.11"));

    // Ignition file written where QEMU reads it, named in the domain's fw_cfg entry.
    let ign = w0.attrs["ignition_file"].as_str().expect("ignition_file");
    let text = std::fs::read_to_string(ign).expect("ignition file");
    assert!(text.contains("demo-workers-0"), "{text}");

    // The domain XML as libvirt keeps it.
    let conn = Connect::open(Some(&host.uri())).expect("open");
    // (a second connection to the same file is a fresh copy: look through the provider's)
    drop(conn);

    // Idempotent create: the same op returns the same object.
    let again = create(
        &p,
        "machine",
        "machine.workers[0]",
        "op-w0",
        machine_attrs("demo-workers-0", None),
    )
    .await;
    assert_eq!(again.attrs, w0.attrs);
    // A different op for the same name is a clash.
    let e = p
        .create(&CreateRequest {
            kind: "machine".into(),
            attrs: machine_attrs("demo-workers-0", None),
            owner: owner("machine.workers[0]", "op-other"),
        })
        .await
        .expect_err("clash");
    assert!(e.to_string().contains("already exists"), "{e}");

    // Batched read, find_by_key, list_cluster, list_owned.
    let got = p
        .read_batch(&[
            ReadRequest {
                address: Address::new("network", "main"),
                kind: "network".into(),
                id: "demo-main".into(),
                prior: Default::default(),
            },
            ReadRequest {
                address: Address::indexed("machine", "workers", 1),
                kind: "machine".into(),
                id: "demo-workers-1".into(),
                prior: Default::default(),
            },
            ReadRequest {
                address: Address::indexed("machine", "workers", 9),
                kind: "machine".into(),
                id: "demo-workers-9".into(),
                prior: Default::default(),
            },
        ])
        .await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[1]
            .as_ref()
            .expect("ok")
            .as_ref()
            .map(|o| o.attrs.clone()),
        Some(w1.attrs.clone())
    );
    assert!(got[2].as_ref().expect("ok").is_none());
    let found = p
        .find_by_key("machine", "op-w1")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.id, "demo-workers-1");
    assert!(
        p.find_by_key("machine", "nope")
            .await
            .expect("find")
            .is_none()
    );
    assert_eq!(p.list_cluster("demo").await.expect("list").len(), 4);
    assert_eq!(p.list_cluster("other").await.expect("list").len(), 0);
    assert_eq!(p.list_owned().await.expect("list").len(), 4);

    // Resize in place.
    let mut bigger = machine_attrs("demo-workers-1", None);
    bigger.insert("size".into(), json!("4cpu-8gb"));
    bigger.insert("tags".into(), json!({"team": "a"}));
    let up = p
        .update(&UpdateRequest {
            address: Address::indexed("machine", "workers", 1),
            kind: "machine".into(),
            id: "demo-workers-1".into(),
            attrs: bigger,
            changed: vec!["size".into(), "tags".into()],
            idempotency_key: "op-up".into(),
        })
        .await
        .expect("update");
    assert_eq!(up.attrs["size"], json!("4cpu-8gb"));
    assert_eq!(up.attrs["state"], json!("running"));
    assert_eq!(up.attrs["tags"], json!({"team": "a"}));
    assert_eq!(up.attrs["address"], w1.attrs["address"]);
    assert_eq!(
        up.owner.as_ref().map(|o| o.op.as_str()),
        Some("op-w1"),
        "the creator's op stays"
    );

    // Delete: the worker's address becomes free again; deleting twice is fine.
    for _ in 0..2 {
        p.delete(&DeleteRequest {
            address: Address::indexed("machine", "workers", 0),
            kind: "machine".into(),
            id: "demo-workers-0".into(),
            idempotency_key: "op-d".into(),
            force: false,
        })
        .await
        .expect("delete");
    }
    assert!(read(&p, "machine", "demo-workers-0").await.is_none());
    assert!(!Path::new(ign).exists(), "Ignition file removed");
    let w2 = create(
        &p,
        "machine",
        "machine.workers[2]",
        "op-w2",
        machine_attrs("demo-workers-2", None),
    )
    .await;
    assert_eq!(w2.attrs["address"], json!("10.1.0.10"));

    for (kind, id) in [
        ("machine", "demo-workers-1"),
        ("machine", "demo-workers-2"),
        ("machine", "demo-central-0"),
        ("network", "demo-main"),
    ] {
        p.delete(&DeleteRequest {
            address: Address::new(kind, "x"),
            kind: kind.into(),
            id: id.into(),
            idempotency_key: "op-d".into(),
            force: false,
        })
        .await
        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
    }
    assert!(p.list_owned().await.expect("list").is_empty());
    let _ = METADATA_NS;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_say_what_to_do() {
    let p = LibvirtProvider::from_config(
        &serde_json::from_value(json!({
            "uri": "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
            "image": IMAGE,
        }))
        .expect("table"),
        Path::new("/"),
    )
    .expect("valid");
    let e = p.list_owned().await.expect_err("no daemon");
    assert!(matches!(e, ProviderError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("not running"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commandline_form_autostart_and_a_stopped_machine() {
    let host = Host::new();
    let p = host.provider(json!({"fw_cfg": "commandline", "autostart": true}));
    create(&p, "network", "network.main", "op-net", net_attrs()).await;
    let mut a = machine_attrs("demo-vm", None);
    a.insert("stopped".into(), json!(true));
    let m = create(&p, "machine", "machine.vm", "op-vm", a).await;
    assert_eq!(m.attrs["state"], json!("shut off"));
    assert_eq!(m.attrs["stopped"], json!(true));
    // The test driver keeps no `<qemu:commandline>` (a QEMU-driver extension): the form
    // is checked in the XML unit tests and on the real lane. No sysinfo entry either.
    let conn = p.connection().expect("connection");
    let dom = conn.lookup_domain_by_name("demo-vm").expect("domain");
    let xml = dom.xml_desc(0).expect("xml");
    assert!(!xml.contains("<sysinfo"), "{xml}");
    assert!(dom.autostart().expect("autostart"));
    // Started by an update that drops `stopped`.
    let up = p
        .update(&UpdateRequest {
            address: Address::new("machine", "vm"),
            kind: "machine".into(),
            id: "demo-vm".into(),
            attrs: machine_attrs("demo-vm", None),
            changed: vec!["stopped".into()],
            idempotency_key: "op-start".into(),
        })
        .await
        .expect("update");
    assert_eq!(up.attrs["state"], json!("running"));
    assert!(!up.attrs.contains_key("stopped"));
}
