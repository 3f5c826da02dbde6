//! The libvirt provider on libvirt's test driver, each test with its own seeded
//! `test:///<tmpdir>/node.xml`: full apply, no-op plan, drift (a domain shut off,
//! resized or removed outside clusterform) and destroy of the `dev-test` and
//! `central-services` examples, in-process (the test driver's state lives only as long as
//! the connection); and through the `clusterform` binary, what one run shows: plans,
//! bad settings, a missing daemon, a missing image, a name clash.

use std::path::PathBuf;

use clusterform_core::Action;
use clusterform_tests::World;
use clusterform_tests::libvirt::{InProcess, actions, seed_host};
use serde_json::json;
use virt::connect::Connect;

fn example(name: &str) -> PathBuf {
    clusterform_tests::workspace_root()
        .join("examples")
        .join(name)
        .join("libvirt.toml")
}

/// Domains, networks, pools and the volumes in them, as names, sorted.
fn inventory(c: &Connect) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut doms: Vec<String> = c
        .list_all_domains(0)
        .expect("domains")
        .iter()
        .map(|d| d.name().expect("name"))
        .collect();
    let mut nets: Vec<String> = c
        .list_all_networks(0)
        .expect("networks")
        .iter()
        .map(|n| n.name().expect("name"))
        .collect();
    let mut vols = Vec::new();
    for p in c.list_all_storage_pools(0).expect("pools") {
        let pool = p.name().expect("name");
        for v in p.list_volumes().unwrap_or_default() {
            vols.push(format!("{pool}/{v}"));
        }
        vols.push(format!("{pool}/"));
    }
    doms.sort();
    nets.sort();
    vols.sort();
    (doms, nets, vols)
}

async fn lifecycle(name: &str, machines: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = seed_host(dir.path(), "");
    let ign = dir.path().join("ign");
    let mut e = InProcess::load(&example(name), &uri, &ign, &dir.path().join("state"));
    let conn = e.provider.connection().expect("connection");
    let before = inventory(&conn);

    // Full apply.
    let (p, report) = e.apply(false).await;
    assert_eq!(report.added, machines + 1, "{:?}", actions(&p));
    let (doms, nets, vols) = inventory(&conn);
    assert_eq!(doms.len(), machines, "{doms:?}");
    assert_eq!(nets.len(), 1, "{nets:?}");
    let pool = nets[0].clone();
    assert_eq!(
        vols.iter()
            .filter(|v| v.starts_with(&format!("{pool}/")))
            .count(),
        machines + 1,
        "one overlay per machine (the image is used in place): {vols:?}"
    );
    let state = e.state();
    for r in state.values().filter(|r| r.address.kind == "machine") {
        assert_eq!(r.attrs["state"], json!("running"), "{}", r.address);
        assert_eq!(
            r.attrs["image"],
            json!(clusterform_tests::libvirt::EXAMPLE_IMAGE)
        );
        let ign_file = r.attrs["ignition_file"].as_str().expect("ignition_file");
        let text = std::fs::read_to_string(ign_file).expect("Ignition file");
        assert_eq!(
            Some(text.as_str()),
            r.attrs["user_data"].as_str(),
            "{}",
            r.address
        );
        let xml = conn
            .lookup_domain_by_name(&r.id)
            .expect("domain")
            .xml_desc(0)
            .expect("xml");
        assert!(
            xml.contains("<entry name='opt/org.flatcar-linux/config'")
                || xml.contains("<entry name=\"opt/org.flatcar-linux/config\""),
            "fw_cfg entry in {xml}"
        );
        assert!(xml.contains("<acpi/>"), "{xml}");
        // The config (which may carry keys) is not in the domain's XML, which anyone
        // with read-only access to libvirt reads: only its digest is.
        let first_line = text.lines().next().unwrap_or_default();
        assert!(!xml.contains(first_line), "the config is in the XML: {xml}");
        assert!(xml.contains("user_data_sha256"), "{xml}");
        // And the Ignition file is readable by its owner only.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ign_file).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{ign_file}: mode {mode:o}");
        assert!(
            xml.contains(clusterform_provider_libvirt::METADATA_NS),
            "{xml}"
        );
    }
    // Every static address has its DHCP host entry; DHCP machines got one too.
    let net_xml = conn
        .lookup_network_by_name(&pool)
        .expect("network")
        .xml_desc(0)
        .expect("xml");
    for r in state.values().filter(|r| r.address.kind == "machine") {
        let ip = r.attrs["address"].as_str().expect("address");
        assert!(
            net_xml.contains(&format!("ip='{ip}'")) || net_xml.contains(&format!("ip=\"{ip}\"")),
            "{ip} in {net_xml}"
        );
    }

    // No-op plan.
    let p = e.plan(false).await;
    assert!(p.is_empty(), "{:?}", actions(&p));
    assert!(p.drift.is_empty(), "{:?}", p.drift);

    // Drift: a worker shut off, another resized, a third removed outside clusterform.
    let cname = e.model.cluster.name.clone();
    let w = |i: usize| format!("{cname}-workers-{i}");
    conn.lookup_domain_by_name(&w(0))
        .expect("w0")
        .destroy()
        .expect("shut off");
    let w1 = conn.lookup_domain_by_name(&w(1)).expect("w1");
    let xml = w1
        .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
        .expect("xml");
    let (from, to) = (
        "<vcpu placement='static'>2</vcpu>",
        "<vcpu placement='static'>1</vcpu>",
    );
    assert!(xml.contains(from), "{xml}");
    let xml = xml.replace(from, to);
    conn.define_domain_xml(&xml).expect("redefine with 1 vCPU");
    let w2 = conn.lookup_domain_by_name(&w(2)).expect("w2");
    w2.destroy().expect("stop");
    w2.undefine().expect("undefine");

    let p = e.plan(false).await;
    let drifted: Vec<String> = p.drift.iter().map(|d| d.address.to_string()).collect();
    assert_eq!(
        drifted,
        vec![
            "machine.workers[0]",
            "machine.workers[1]",
            "machine.workers[2]"
        ],
        "{:?}",
        p.drift
    );
    assert!(p.drift[2].deleted);
    assert_eq!(
        actions(&p),
        vec![
            ("machine.workers[0]".to_string(), Action::Update),
            ("machine.workers[1]".to_string(), Action::Update),
            ("machine.workers[2]".to_string(), Action::Create),
        ]
    );
    let resize = p
        .changes
        .iter()
        .find(|c| c.address.to_string() == "machine.workers[1]")
        .expect("w1");
    assert_eq!(resize.changed, vec!["size".to_string()]);
    assert_eq!(
        resize.notes.get("size").map(String::as_str),
        Some("restarts the machine")
    );
    let start = p
        .changes
        .iter()
        .find(|c| c.address.to_string() == "machine.workers[0]")
        .expect("w0");
    assert_eq!(start.changed, vec!["stopped".to_string()]);

    let w1_uuid = w1.uuid_string().expect("uuid");
    let before_ips: Vec<_> = state
        .values()
        .map(|r| (r.address.clone(), r.attrs.get("address").cloned()))
        .collect();
    e.apply(false).await;
    let p = e.plan(false).await;
    assert!(
        p.is_empty() && p.drift.is_empty(),
        "{:?} {:?}",
        actions(&p),
        p.drift
    );
    let after = e.state();
    for (a, ip) in before_ips {
        assert_eq!(
            after[&a].attrs.get("address").cloned(),
            ip,
            "{a} keeps its address"
        );
    }
    assert_eq!(
        after[&"machine.workers[0]".parse().expect("a")].attrs["state"],
        json!("running")
    );
    let w1 = conn.lookup_domain_by_name(&w(1)).expect("w1");
    assert_eq!(w1.info().expect("info").nr_virt_cpu, 2);
    assert_eq!(
        w1.uuid_string().expect("uuid"),
        w1_uuid,
        "redefinition keeps the uuid"
    );

    // A changed Ignition config replaces the machine; it keeps its address and MAC.
    let addr: clusterform_core::Address = "machine.workers[0]".parse().expect("address");
    let r = e
        .model
        .resources
        .iter_mut()
        .find(|r| r.address == addr)
        .expect("worker 0");
    let ud = r.attrs["user_data"]
        .as_str()
        .expect("user_data")
        .replace("\"3.3.0\"", "\"3.3.0\" ");
    r.attrs.insert("user_data".into(), json!(ud));
    let old_uuid = conn
        .lookup_domain_by_name(&w(0))
        .expect("w0")
        .uuid_string()
        .expect("uuid");
    let (p, _) = e.apply(false).await;
    assert_eq!(
        actions(&p),
        vec![("machine.workers[0]".to_string(), Action::Replace)]
    );
    let now = e.state();
    assert_eq!(now[&addr].attrs["user_data"], json!(ud));
    assert_eq!(now[&addr].attrs["address"], after[&addr].attrs["address"]);
    assert_eq!(now[&addr].attrs["mac"], after[&addr].attrs["mac"]);
    let new_uuid = conn
        .lookup_domain_by_name(&w(0))
        .expect("w0")
        .uuid_string()
        .expect("uuid");
    assert_ne!(new_uuid, old_uuid, "a new domain");
    let ign_text =
        std::fs::read_to_string(now[&addr].attrs["ignition_file"].as_str().expect("file"))
            .expect("read");
    assert_eq!(ign_text, ud);

    // An Ignition file changed outside clusterform is drift of `user_data` (its digest
    // in the domain no longer matches): the machine would be made again.
    let ign_path = now[&addr].attrs["ignition_file"]
        .as_str()
        .expect("file")
        .to_string();
    std::fs::write(&ign_path, "{}").expect("tamper");
    let p = e.plan(false).await;
    let drifted: Vec<String> = p.drift.iter().map(|d| d.address.to_string()).collect();
    assert_eq!(drifted, vec!["machine.workers[0]"], "{:?}", p.drift);
    assert_eq!(
        actions(&p),
        vec![("machine.workers[0]".to_string(), Action::Replace)]
    );

    // Destroy leaves what was there before, and nothing of the cluster's files.
    let (p, report) = e.apply(true).await;
    assert_eq!(report.destroyed, machines + 1, "{:?}", actions(&p));
    assert_eq!(inventory(&conn), before);
    assert!(e.provider.list_owned_blocking().is_empty());
    let left: Vec<_> = std::fs::read_dir(&ign)
        .map(|d| d.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(e.state().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_test_apply_noop_drift_destroy() {
    lifecycle("dev-test", 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn central_services_apply_noop_drift_destroy() {
    lifecycle("central-services", 6).await;
}

// ------------------------------------------------------------- through the binary

/// A copy of an example's folder with `[provider.libvirt]` pointed at a seeded host.
fn world_with(
    example_dir: &str,
    extra_node: &str,
    edit: impl Fn(String) -> String,
) -> (World, String) {
    let w = World::new();
    let src = clusterform_tests::workspace_root()
        .join("examples")
        .join(example_dir);
    for f in std::fs::read_dir(&src).expect("example") {
        let f = f.expect("entry").path();
        if f.is_file() {
            std::fs::copy(&f, w.path().join(f.file_name().expect("name"))).expect("copy");
        }
    }
    let uri = seed_host(w.path(), extra_node);
    let text = std::fs::read_to_string(src.join("libvirt.toml")).expect("read");
    let text = text.replace(
        "uri = \"qemu:///system\"",
        &format!(
            "uri = \"{uri}\"\nignition_dir = \"{}\"",
            w.path().join("ign").display()
        ),
    );
    w.write("libvirt.toml", &edit(text));
    (w, uri)
}

#[test]
fn every_libvirt_example_validates_renders_and_plans() {
    for ex in [
        "dev-vm",
        "small",
        "dev-test",
        "central-services",
        "large-scale",
    ] {
        // As shipped: settings checked, configs rendered.
        let w = World::new();
        let r = w.run_ok(&["validate", example(ex).to_str().expect("utf-8")], 0);
        assert!(!r.stdout.contains("cannot plan"), "{ex}: {}", r.stdout);
        let out = w.path().join("out");
        w.run_ok(
            &[
                "render",
                example(ex).to_str().expect("utf-8"),
                "--out",
                out.to_str().expect("utf-8"),
            ],
            0,
        );
        assert!(std::fs::read_dir(&out).expect("out").count() >= 1, "{ex}");
        // Planned against a seeded host: everything to add, the image and forward mode
        // from the settings shown.
        let (w, _) = world_with(ex, "", |t| t);
        let r = w.run_ok(&["plan", "libvirt.toml", "--detailed-exitcode"], 2);
        assert!(
            r.stdout.contains("to add, 0 to change, 0 to destroy"),
            "{ex}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("forward   = \"nat\""),
            "{ex}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("flatcar_production_qemu_image.img"),
            "{ex}: {}",
            r.stdout
        );
    }
}

#[test]
fn apply_in_one_run_makes_everything_on_the_test_driver() {
    let (w, _) = world_with("dev-test", "", |t| t);
    let r = w.run_ok(&["apply", "libvirt.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("Resources: 5 added"), "{}", r.stdout);
    let ids = w.state_ids("libvirt.toml");
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.contains(&("machine.central[0]".into(), "dev-test-central-0".into())));
    // libvirt's own messages do not leak onto the terminal.
    assert!(!r.stderr.contains("libvirt:"), "{}", r.stderr);
}

#[test]
fn bad_settings_name_the_setting() {
    let (w, _) = world_with("dev-test", "", |t| {
        t.replace(
            "[provider.libvirt]",
            "[provider.libvirt]\nforward = \"bridge\"",
        )
    });
    let r = w.run_ok(&["validate", "libvirt.toml"], 1);
    assert!(
        r.stderr.contains("`forward`") && r.stderr.contains("`open`"),
        "{}",
        r.stderr
    );
    let (w, _) = world_with("dev-test", "", |t| {
        t.replace(
            "size = \"2cpu-4gb\"\nfirst_address",
            "size = \"m6i.large\"\nfirst_address",
        )
    });
    let r = w.run_ok(&["apply", "libvirt.toml", "--auto-approve"], 1);
    assert!(
        r.stdout.contains("`size`") && r.stdout.contains("2cpu-4gb"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn a_missing_daemon_says_how_to_start_it() {
    let (w, _) = world_with("dev-test", "", |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("uri = ") {
                    "uri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let r = w.run(&["apply", "libvirt.toml", "--auto-approve"]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("not running") && all.contains("systemctl start libvirtd"),
        "{all}"
    );
}

#[test]
fn a_missing_image_says_what_to_do() {
    let (w, _) = world_with("dev-test", "", |t| {
        t.replace(
            "/var/lib/libvirt/images/flatcar_production_qemu_image.img",
            "/nonexistent/flatcar.img",
        )
    });
    let r = w.run(&["apply", "libvirt.toml", "--auto-approve"]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("`/nonexistent/flatcar.img` does not exist"),
        "{all}"
    );
}

#[test]
fn a_domain_clusterform_does_not_own_is_never_taken() {
    let foreign = "<domain type='test'><name>dev-test-central-0</name><uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid><memory>1048576</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>";
    let (w, uri) = world_with("dev-test", foreign, |t| t);
    let r = w.run(&["apply", "libvirt.toml", "--auto-approve"]);
    assert_eq!(r.code, 1, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("clusterform does not own it"), "{all}");
    // The network was made; the foreign domain is untouched (a fresh copy still has it).
    let c = Connect::open(Some(&uri)).expect("open");
    assert!(c.lookup_domain_by_name("dev-test-central-0").is_ok());
}
