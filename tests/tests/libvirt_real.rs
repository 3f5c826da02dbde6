//! The real lane: `clusterform` against a real libvirtd (from `scripts/libvirt-lane`,
//! Debian's packages unpacked, private namespaces, QEMU under TCG). `dev-test` with one
//! worker is applied with a tiny guest image instead of Flatcar; each guest prints the
//! Ignition config it got through fw_cfg to its serial console, which must be byte for
//! byte what `clusterform render` gives for that machine. Then a plan is empty, and
//! destroy leaves no domain, volume, pool, network or file behind.

use std::time::{Duration, Instant};

use base64::Engine as _;
use clusterform_tests::World;
use clusterform_tests::libvirt::real_lane;
use virt::connect::Connect;

const BEGIN: &str = "CLUSTERFORM-IGNITION-BEGIN";
const END: &str = "CLUSTERFORM-IGNITION-END";

/// The Ignition config a guest printed, once it has (None until then).
fn printed(log: &str) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(log).ok()?;
    let start = text.find(BEGIN)? + BEGIN.len();
    let len = text[start..].find(END)?;
    let b64: String = text[start..start + len]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("{log}: not base64: {e}")),
    )
}

/// Apply `cluster` (a cluster file without its `[provider.libvirt]` table) on the lane,
/// check what every guest printed and the network's host entries, plan (no changes),
/// destroy (nothing left).
fn boot_and_check(cluster: &str, fw_cfg: &str, machines: usize) {
    let Some((uri, guest, lane)) = real_lane() else {
        return;
    };
    let w = World::new();
    let file = w.write(
        "cluster.toml",
        &format!(
            r#"{cluster}

[provider.libvirt]
uri = "{uri}"
image = "{}"
pool_dir = "{}"
ignition_dir = "{}"
forward = "open"       # NAT needs iptables, which the lane's namespace has not
domain_type = "qemu"   # TCG: no /dev/kvm
shutdown_timeout_s = 0
fw_cfg = "{fw_cfg}"
"#,
            guest.display(),
            lane.join("pools").display(),
            lane.join("files").display()
        ),
    );
    let file = file.to_str().expect("utf-8");
    let started = Instant::now();
    let r = w.run_ok(&["apply", file, "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains(&format!("Resources: {} added", machines + 1)),
        "{}",
        r.stdout
    );
    eprintln!("apply: {:.1}s", started.elapsed().as_secs_f64());

    let state = w.state_json(file);
    let want_machines = machines;
    let machines: Vec<(String, String)> = state["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter(|r| {
            r["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("machine."))
        })
        .map(|r| {
            (
                r["address"].as_str().expect("address").to_string(),
                r["attrs"]["console_log"]
                    .as_str()
                    .expect("console_log")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(machines.len(), want_machines, "{state}");

    // Each guest's fw_cfg config is what `render --out` writes for it (byte for byte; on
    // a terminal its etcd key would read `(sensitive)`).
    let boot = Instant::now();
    let out = w.path().join("rendered");
    w.run_ok(&["render", file, "--out", &out.display().to_string()], 0);
    for (address, log) in &machines {
        let want = std::fs::read(out.join(format!("{address}.ign"))).expect("rendered config");
        let got = loop {
            if let Some(got) = printed(log) {
                break got;
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                !text.contains("CLUSTERFORM-IGNITION-MISSING"),
                "{address}: the guest found no fw_cfg entry:\n{text}"
            );
            assert!(
                boot.elapsed() < Duration::from_secs(240),
                "{address}: no Ignition on the console after 240s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{address}"
        );
        eprintln!(
            "{address}: Ignition read back from the guest {:.1}s after apply",
            boot.elapsed().as_secs_f64()
        );
        // `clusterform console` shows the same serial console (the end of its log).
        let console = w.run_ok(&["console", file, address], 0).stdout;
        let tail = std::fs::read_to_string(log).unwrap_or_default();
        let last = tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            console.contains(last.trim()),
            "{address}: console output lacks the log's last line `{last}`"
        );
    }

    // The live network hands each machine its address (virNetworkUpdate on the running
    // network) and knows its name.
    let c = Connect::open(Some(&uri)).expect("connect to the lane's libvirtd");
    let net_name = state["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["address"] == "network.main")
        .and_then(|r| r["id"].as_str())
        .expect("network.main")
        .to_string();
    let net = c.lookup_network_by_name(&net_name).expect("network");
    let live = net.xml_desc(0).expect("network XML");
    for r in state["resources"].as_array().expect("resources") {
        if let Some(ip) = r["attrs"]["address"].as_str() {
            let name = r["attrs"]["name"].as_str().expect("name");
            assert!(live.contains(&format!("ip='{ip}'")), "{ip} in {live}");
            assert!(
                live.contains(&format!("<hostname>{name}</hostname>")),
                "{name} in {live}"
            );
        }
    }

    // Nothing drifted: the guests keep running, the definitions are unchanged.
    w.run_ok(&["plan", file, "--detailed-exitcode"], 0);

    // Destroy leaves nothing behind.
    let r = w.run_ok(&["destroy", file, "--auto-approve"], 0);
    assert!(
        r.stdout
            .contains(&format!("{} destroyed", want_machines + 1)),
        "{}",
        r.stdout
    );
    // Only this cluster's objects count: the other real-lane test may run alongside.
    let cluster = state["cluster"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| net_name.trim_end_matches("-main").to_string());
    let ours = |n: String| n.starts_with(&format!("{cluster}-")).then_some(n);
    let doms: Vec<String> = c
        .list_all_domains(0)
        .expect("domains")
        .iter()
        .filter_map(|d| ours(d.name().expect("name")))
        .collect();
    let nets: Vec<String> = c
        .list_all_networks(0)
        .expect("networks")
        .iter()
        .filter_map(|n| ours(n.name().expect("name")))
        .collect();
    let pools: Vec<String> = c
        .list_all_storage_pools(0)
        .expect("pools")
        .iter()
        .filter_map(|p| ours(p.name().expect("name")))
        .collect();
    assert!(doms.is_empty(), "domains left: {doms:?}");
    assert!(nets.is_empty(), "networks left: {nets:?}");
    assert!(
        pools.is_empty(),
        "pools (and their volumes) left: {pools:?}"
    );
    for left in [
        lane.join("pools").join(&net_name),
        lane.join("files").join(&cluster),
    ] {
        assert!(!left.exists(), "left behind: {}", left.display());
    }
}

#[test]
fn real_libvirtd_boots_dev_test_guests_with_their_ignition() {
    // dev-test at its smallest: the etcd machine and one worker, fw_cfg as sysinfo.
    boot_and_check(
        r#"[cluster]
name = "lane"
blueprint = "dev-test"
provider = "libvirt"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyForTheQuickstart me@laptop"]

[network]
cidr = "192.168.150.0/24"
dns = ["192.168.150.1"]

[central]
size = "1cpu-256mb"

[workers]
count = 1
size = "1cpu-256mb"
"#,
        "sysinfo",
        2,
    );
}

#[test]
fn real_libvirtd_hands_ignition_over_the_qemu_commandline_form_too() {
    boot_and_check(
        r#"[cluster]
name = "lanecmd"
blueprint = "dev-vm"
provider = "libvirt"

[network]
cidr = "192.168.151.0/24"

[vm]
size = "1cpu-256mb"
address = "192.168.151.50"
"#,
        "commandline",
        1,
    );
}
