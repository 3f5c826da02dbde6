//! The network config of Metal machines, run for real: a `central-services` cluster on
//! `metal` is rendered (`clusterform render`), and each machine's VLAN unit and networkd
//! file are applied in a network namespace the test makes, its `bond0` a veth on one
//! bridge standing in for Metal's switch (hybrid bonded mode: the cluster's frames are
//! tagged on bond0). networkd's part (the address of the `.network` file) is done with
//! `ip` (on a kernel without 802.1Q, as in CI's VMs, the unit's command must fail for
//! that reason only, and bond0 renamed to the VLAN link's name stands in). Then etcd runs with each central machine's rendered flags and the worker's
//! rendered gRPC proxy: the three members form one cluster over `bond0.<vxlan>`, and a
//! write through the worker's proxy is read back from every member. Namespaces are
//! removed by name at the end. Skipped with a note without root, etcd or iproute2,
//! unless `CI=true`.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clusterform_ignition::Config;
use clusterform_ignition::etcd::{member_args, proxy_args};
use clusterform_ignition::inspect::{exec_start_lines, file_text, unit};
use clusterform_ignition::role::{VLAN_NETWORK_FILE, VLAN_UNIT};
use clusterform_tests::{World, live};

const CLUSTER: &str = r#"[cluster]
name = "vl"
blueprint = "central-services"
provider = "metal"

[network]
cidr = "10.77.0.0/24"
vxlan = 1234

[central]
count = 3
size = "c3.small.x86"
first_address = "10.77.0.11"
# The VLAN is the subject here; etcd with TLS runs in the live_etcd_tls scenario.
etcd_tls = false

[workers]
count = 1
size = "m3.large.x86"
first_address = "10.77.0.51"
"#;

fn sbin_path() -> String {
    format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .env("PATH", sbin_path())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program])
        .args(args)
        .env("PATH", sbin_path());
    c
}

/// The namespaces and processes of the test, removed when it ends (also on a panic).
struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .env("PATH", sbin_path())
                .status();
        }
    }
}

fn rendered(w: &World, address: &str) -> Config {
    let r = w.run_ok(&["render", "cluster.toml", "--machine", address], 0);
    serde_json::from_str(r.stdout.trim()).expect("rendered Ignition JSON")
}

/// Whether this kernel makes 802.1Q VLAN links (some VM kernels are built without).
fn kernel_has_vlans(hub: &str) -> bool {
    let probe = Command::new("ip")
        .args([
            "-n", hub, "link", "add", "link", "sw0", "name", "sw0.7", "type", "vlan", "id", "7",
        ])
        .env("PATH", sbin_path())
        .output()
        .is_ok_and(|o| o.status.success());
    if probe {
        ip(&["-n", hub, "link", "del", "sw0.7"]);
    }
    probe
}

/// Apply a machine's VLAN config in `ns`: the unit's command as systemd would run it,
/// then the address of the networkd file on the link it names. On a kernel without
/// 802.1Q the command must fail only for that reason, and `bond0` itself, renamed to
/// the VLAN link's name, stands in for it (untagged frames on the same bridge).
fn bring_up_vlan(ns: &str, config: &Config, vlans: bool) -> String {
    let u = unit(config, VLAN_UNIT).expect("the VLAN unit");
    let lines = exec_start_lines(u);
    let exec = lines.last().expect("ExecStart");
    let out = in_ns(ns, "/bin/sh", &["-c", exec])
        .output()
        .expect("run the VLAN unit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if vlans {
        assert!(out.status.success(), "{exec}: {stderr}");
    } else {
        assert_eq!(stderr.trim(), "Error: Unknown device type.", "{exec}");
    }
    let network = file_text(config, VLAN_NETWORK_FILE).expect("the networkd file");
    let value = |key: &str| {
        network
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .expect(key)
            .to_string()
    };
    let (link, address) = (value("Name="), value("Address="));
    if !vlans {
        ip(&["-n", ns, "link", "set", "bond0", "down"]);
        ip(&["-n", ns, "link", "set", "bond0", "name", &link]);
    }
    assert!(
        !network.contains("Gateway="),
        "no default route on the VLAN"
    );
    ip(&["-n", ns, "addr", "add", &address, "dev", &link]);
    ip(&["-n", ns, "link", "set", &link, "up"]);
    address
}

fn etcdctl(ns: &str, endpoints: &str, args: &[&str]) -> Output {
    in_ns(ns, "etcdctl", &[&format!("--endpoints={endpoints}")])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl")
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if started.elapsed() > limit => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[test]
fn metal_machines_form_the_etcd_cluster_over_their_vlan() {
    if live::skip() {
        return;
    }
    let w = World::new();
    w.write("cluster.toml", CLUSTER);
    let tag = format!("{:06x}", std::process::id() & 0xff_ffff);
    let hub = format!("cfv-{tag}-hub");
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    ip(&["netns", "add", &hub]);
    lab.namespaces.push(hub.clone());
    ip(&["-n", &hub, "link", "add", "sw0", "type", "bridge"]);
    ip(&["-n", &hub, "link", "set", "sw0", "up"]);
    let vlans = kernel_has_vlans(&hub);
    if !vlans {
        eprintln!(
            "note: this kernel makes no 802.1Q VLAN links: the VLAN unit's command is run and must fail only for that; bond0, renamed, stands in for bond0.<vxlan>"
        );
    }

    let machines = [
        "machine.central[0]",
        "machine.central[1]",
        "machine.central[2]",
        "machine.workers[0]",
    ];
    let mut central = Vec::new();
    let mut worker = None;
    for (k, address) in machines.iter().enumerate() {
        let config = rendered(&w, address);
        let ns = format!("cfv-{tag}-{k}");
        ip(&["netns", "add", &ns]);
        lab.namespaces.push(ns.clone());
        let port = format!("p{tag}{k}");
        ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "bond0", "netns", &ns,
        ]);
        ip(&["-n", &hub, "link", "set", &port, "master", "sw0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "bond0", "up"]);
        let vlan_address = bring_up_vlan(&ns, &config, vlans);
        if let Some(args) = member_args(&config) {
            let data = w.path().join(format!("etcd-{k}"));
            let child = in_ns(&ns, "etcd", &[])
                .args(&args)
                .arg(format!("--data-dir={}", data.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(w.path().join(format!("etcd-{k}.log"))).expect("log"),
                ))
                .spawn()
                .expect("start etcd");
            lab.children.push(child);
            central.push((ns, vlan_address));
        } else {
            let args = proxy_args(&config).expect("the worker runs the gRPC proxy");
            let child = in_ns(&ns, "etcd", &[])
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the proxy");
            lab.children.push(child);
            worker = Some((ns, vlan_address));
        }
    }
    assert_eq!(
        central.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(),
        ["10.77.0.11/24", "10.77.0.12/24", "10.77.0.13/24"]
    );
    let (worker_ns, worker_address) = worker.expect("a worker");
    assert_eq!(worker_address, "10.77.0.51/24");

    // The three members find each other over bond0.1234.
    let members = "http://10.77.0.11:2379,http://10.77.0.12:2379,http://10.77.0.13:2379";
    wait_for(
        "a healthy 3-member cluster",
        Duration::from_secs(60),
        || {
            let out = etcdctl(&central[0].0, members, &["endpoint", "health"]);
            // etcdctl 3.4 writes some health lines to stderr.
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && text.matches("is healthy").count() == 3 {
                Ok(())
            } else {
                let logs: String = (0..3)
                    .map(|k| {
                        let log = std::fs::read_to_string(w.path().join(format!("etcd-{k}.log")))
                            .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(5).collect();
                        format!(
                            "\n--- etcd-{k}.log (last lines, newest first):\n{}",
                            tail.join("\n")
                        )
                    })
                    .collect();
                Err(format!("{text}{logs}"))
            }
        },
    );
    let out = etcdctl(&central[0].0, members, &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The worker writes through its proxy on 127.0.0.1, over its own VLAN address.
    wait_for(
        "a write through the worker's proxy",
        Duration::from_secs(30),
        || {
            let out = etcdctl(
                &worker_ns,
                "http://127.0.0.1:2379",
                &["put", "/vlan", "works"],
            );
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        },
    );
    for (ns, address) in &central {
        let ip_only = address.split('/').next().unwrap_or_default();
        let out = etcdctl(
            ns,
            &format!("http://{ip_only}:2379"),
            &["get", "/vlan", "--print-value-only"],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "works", "{ns}");
    }
    // Nothing of the test was left on the host: the VLAN links live in the namespaces.
    assert!(!Path::new("/sys/class/net/bond0.1234").exists());
}
