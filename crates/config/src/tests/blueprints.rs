//! The five blueprints: what each expands into (addresses, roles, zones, ordering), the
//! rendered Ignition in every machine's `user_data`, Butane extras, and every count and
//! zone rule reported at its line and column.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use clusterform_core::{Address, Resource};
use serde_json::Value;

use super::*;

/// The rendered Ignition config of a machine.
fn ignition(r: &Resource) -> Value {
    let s = r.attrs["user_data"]
        .as_str()
        .expect("user_data is a string");
    serde_json::from_str(s).expect("user_data is JSON")
}

/// The names of the systemd units.
fn units(ign: &Value) -> Vec<String> {
    ign["systemd"]["units"]
        .as_array()
        .map(|u| {
            u.iter()
                .map(|u| u["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A unit's contents and drop-ins, joined.
fn unit_text(ign: &Value, name: &str) -> String {
    let units = ign["systemd"]["units"].as_array().unwrap();
    let u = units
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no unit {name} in {ign}"));
    let mut s = u["contents"].as_str().unwrap_or_default().to_string();
    for d in u["dropins"].as_array().into_iter().flatten() {
        s.push_str(d["contents"].as_str().unwrap_or_default());
    }
    s
}

/// The decoded text of a storage file, None when there is no such file.
fn file_text(ign: &Value, path: &str) -> Option<String> {
    let f = ign["storage"]["files"]
        .as_array()?
        .iter()
        .find(|f| f["path"] == path)?;
    let src = f["contents"]["source"].as_str()?;
    let (bytes, _) =
        clusterform_ignition::decode_data_url(src, f["contents"]["compression"].as_str())?;
    Some(String::from_utf8(bytes).unwrap())
}

fn addrs(m: &Model) -> Vec<String> {
    m.resources.iter().map(|r| r.address.to_string()).collect()
}

fn attr<'m>(m: &'m Model, a: &str, key: &str) -> &'m Value {
    &find(m, a).attrs[key]
}

/// `--initial-cluster="..."` of an etcd member's drop-in.
fn initial_cluster(ign: &Value) -> String {
    let text = unit_text(ign, "etcd-member.service");
    let start = text
        .find("--initial-cluster=\"")
        .expect("--initial-cluster")
        + 19;
    let len = text[start..].find('"').unwrap();
    text[start..start + len].to_string()
}

// ---------------------------------------------------------------------------------
// dev-vm

const DEV_VM: &str = r#"[cluster]
name = "laptop"
blueprint = "dev-vm"
provider = "sim"
ssh_authorized_keys = ["ssh-ed25519 AAAA me@laptop"]

[vm]
size = "2cpu-4gb"
zone = "home"
address = "10.0.0.50"
protect = true
"#;

#[test]
fn dev_vm_is_one_machine_with_the_docker_api() {
    let m = ok(DEV_VM);
    assert_eq!(addrs(&m), ["network.main", "machine.vm"]);
    let vm = find(&m, "machine.vm");
    assert_eq!(
        json!(without_user_data(vm)),
        json!({
            "name": "laptop-vm", "role": "dev", "size": "2cpu-4gb", "zone": "home",
            "address": "10.0.0.50", "protect": true, "channel": "stable",
            "ssh_authorized_keys": ["ssh-ed25519 AAAA me@laptop"],
        })
    );
    assert_eq!(vm.refs["network"], addr("network.main"));
    let ign = ignition(vm);
    assert_eq!(ign["ignition"]["version"], "3.3.0");
    assert_eq!(
        units(&ign),
        ["docker-tcp.socket", "enable-docker-tcp.service"]
    );
    assert!(unit_text(&ign, "docker-tcp.socket").contains("ListenStream=2375"));
    assert_eq!(
        file_text(&ign, "/etc/hostname").as_deref(),
        Some("laptop-vm\n")
    );
    assert_eq!(
        file_text(&ign, "/etc/systemd/network/00-eth0.network").as_deref(),
        Some("[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.50/16\nGateway=10.0.0.1\n")
    );
    assert_eq!(
        ign["passwd"]["users"][0]["sshAuthorizedKeys"],
        json!(["ssh-ed25519 AAAA me@laptop"])
    );
    assert_eq!(
        crate::line_col(&m.source, m.spans[&addr("machine.vm")].offset),
        (7, 1)
    );
}

#[test]
fn dev_vm_without_an_address_uses_dhcp() {
    let m = ok(&DEV_VM.replace("address = \"10.0.0.50\"\n", ""));
    let vm = find(&m, "machine.vm");
    assert!(!vm.attrs.contains_key("address"));
    let ign = ignition(vm);
    assert_eq!(
        file_text(&ign, "/etc/systemd/network/00-eth0.network"),
        None
    );
    assert!(units(&ign).contains(&"docker-tcp.socket".to_string()));
}

#[test]
fn error_dev_vm_tables() {
    // [central] and [workers] do not fit.
    let e = errors(&format!(
        "{DEV_VM}[central]\ncount = 1\nsize = \"s\"\n[workers]\ncount = 2\nsize = \"s\"\n"
    ));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert_diag(
        &e[0],
        "`[central]` does not fit blueprint `dev-vm`: it makes one machine, `[vm]`",
        12,
        1,
    );
    assert!(e[0].help.as_deref().unwrap().contains("`[vm]`"));
    assert_diag(
        &e[1],
        "`[workers]` does not fit blueprint `dev-vm`: it makes one machine, `[vm]`",
        15,
        1,
    );
    // No [vm].
    let d = one_error("[cluster]\nname = \"x\"\nblueprint = \"dev-vm\"\nprovider = \"sim\"\n");
    assert_diag(&d, "blueprint `dev-vm` needs `[vm]` with a `size`", 3, 13);
    // [vm] without size, with a bad address.
    let e = errors(
        &DEV_VM
            .replace("size = \"2cpu-4gb\"\n", "")
            .replace("10.0.0.50", "10.9"),
    );
    let msgs: Vec<(&str, usize, usize)> = e
        .iter()
        .map(|d| (d.message.as_str(), d.line, d.column))
        .collect();
    assert_eq!(
        msgs,
        [
            ("`[vm]` has no `size`", 7, 1),
            ("`10.9` is not an IPv4 address", 9, 11)
        ]
    );
    // An address outside the network.
    let d = one_error(&DEV_VM.replace("10.0.0.50", "192.168.1.5"));
    assert_diag(
        &d,
        "address `192.168.1.5` of `machine.vm` is outside the network `10.0.0.0/16`",
        10,
        11,
    );
    // [vm] with another blueprint, and without one.
    let d = one_error(&format!("{DEV_TEST}[vm]\nsize = \"s\"\n"));
    assert_diag(
        &d,
        "`[vm]` does not fit blueprint `dev-test`: `[vm]` is for blueprint `dev-vm`",
        18,
        1,
    );
    let d = one_error("[cluster]\nname = \"x\"\n[vm]\nsize = \"s\"\n");
    assert_diag(&d, "`[vm]` needs `[cluster] blueprint`", 3, 1);
    assert!(d.help.as_deref().unwrap().contains("\"dev-vm\""));
    // Keys of [central] are not keys of [vm].
    let d = one_error(&DEV_VM.replace("zone = \"home\"", "zones = [\"home\"]"));
    assert_diag(&d, "unknown key `zones` in `[vm]`", 9, 1);
}

// ---------------------------------------------------------------------------------
// small

const SMALL: &str = r#"[cluster]
name = "demo"
blueprint = "small"
provider = "sim"
ssh_authorized_keys = ["ssh-ed25519 AAAA me@laptop"]

[network]
cidr = "10.0.0.0/24"
gateway = "10.0.0.1"
dns = ["1.2.3.4"]

[central]
count = 5
size = "2cpu-4gb"
zones = ["a", "b"]
first_address = "10.0.0.11"
"#;

#[test]
fn small_runs_etcd_on_every_machine() {
    let m = ok(SMALL);
    assert_eq!(
        addrs(&m),
        [
            "network.main",
            "machine.central[0]",
            "machine.central[1]",
            "machine.central[2]",
            "machine.central[3]",
            "machine.central[4]"
        ]
    );
    let expected_cluster = (0..5)
        .map(|i| format!("demo-central-{i}=https://10.0.0.{}:2380", 11 + i))
        .collect::<Vec<_>>()
        .join(",");
    for i in 0..5 {
        let a = format!("machine.central[{i}]");
        let r = find(&m, &a);
        assert_eq!(r.attrs["address"], json!(format!("10.0.0.{}", 11 + i)));
        assert_eq!(r.attrs["role"], json!("etcd"));
        assert_eq!(r.attrs["zone"], json!(["a", "b"][i % 2]));
        assert!(!r.attrs.contains_key("etcd_endpoints"));
        assert!(r.depends_on.is_empty());
        let ign = ignition(r);
        assert_eq!(initial_cluster(&ign), expected_cluster, "{a}");
        let dropin = unit_text(&ign, "etcd-member.service");
        assert!(
            dropin.contains(&format!("--name=\"demo-central-{i}\"")),
            "{dropin}"
        );
        assert!(dropin.contains(&format!(
            "--advertise-client-urls=\"https://10.0.0.{}:2379\"",
            11 + i
        )));
        assert_eq!(
            file_text(&ign, "/etc/systemd/network/00-eth0.network"),
            Some(format!(
                "[Match]\nName=eth0\n\n[Network]\nDNS=1.2.3.4\nAddress=10.0.0.{}/24\nGateway=10.0.0.1\n",
                11 + i
            ))
        );
        assert_eq!(
            file_text(&ign, "/etc/hostname"),
            Some(format!("demo-central-{i}\n"))
        );
    }
}

#[test]
fn small_defaults_to_three_machines_at_the_101st_host() {
    let m = ok(&SMALL
        .replace("count = 5\n", "")
        .replace("first_address = \"10.0.0.11\"\n", ""));
    assert_eq!(m.resources.len(), 4);
    assert_eq!(attr(&m, "machine.central[2]", "address"), "10.0.0.103");
    assert_eq!(
        initial_cluster(&ignition(find(&m, "machine.central[0]"))),
        "demo-central-0=https://10.0.0.101:2380,demo-central-1=https://10.0.0.102:2380,demo-central-2=https://10.0.0.103:2380"
    );
}

#[test]
fn error_small_counts() {
    for n in [0, 1, 2, 10, 40] {
        let d = one_error(&SMALL.replace("count = 5", &format!("count = {n}")));
        assert_diag(
            &d,
            &format!(
                "blueprint `small` runs 3 to 9 machines, not {n}: etcd on every machine needs at least 3 for a quorum; more than 9 is a central-services cluster"
            ),
            13,
            9,
        );
        assert_eq!(d.label, "must be 3 to 9");
        let help = d.help.unwrap();
        if n < 3 {
            assert!(help.contains("`dev-test`"), "{help}");
        } else {
            assert!(help.contains("`central-services`"), "{help}");
        }
    }
    for n in [3, 9] {
        let m = ok(&SMALL.replace("count = 5", &format!("count = {n}")));
        assert_eq!(m.resources.len(), n + 1);
    }
}

#[test]
fn error_small_has_no_workers() {
    let d = one_error(&format!("{SMALL}\n[workers]\ncount = 2\nsize = \"s\"\n"));
    assert_diag(
        &d,
        "`[workers]` does not fit blueprint `small`: small runs etcd on every machine; use central-services for workers",
        18,
        1,
    );
}

#[test]
fn error_small_addresses_must_fit_the_network() {
    let d = one_error(&SMALL.replace("10.0.0.11", "10.0.0.253"));
    assert_diag(
        &d,
        "address `10.0.1.0` of `machine.central[3]` is outside the network `10.0.0.0/24`",
        16,
        17,
    );
    assert_eq!(
        d.help.as_deref(),
        Some("pick a `first_address` in 10.0.0.0/24 with room for 5 machines")
    );
}

// ---------------------------------------------------------------------------------
// dev-test

#[test]
fn dev_test_user_data_one_member_and_workers_talking_to_it() {
    let m = ok(DEV_TEST);
    let c = ignition(find(&m, "machine.central[0]"));
    assert_eq!(
        initial_cluster(&c),
        "demo-central-0=https://10.0.0.101:2380"
    );
    assert_eq!(
        file_text(&c, "/etc/systemd/network/00-eth0.network"),
        Some("[Match]\nName=eth0\n\n[Network]\nAddress=10.0.0.101/16\nGateway=10.0.0.1\n".into())
    );
    for i in 0..3 {
        let w = ignition(find(&m, &format!("machine.workers[{i}]")));
        assert_eq!(units(&w), Vec::<String>::new(), "no proxy, no etcd");
        assert_eq!(
            file_text(&w, "/etc/etcd-endpoints.env").as_deref(),
            Some(
                "ETCDCTL_ENDPOINTS=https://10.0.0.101:2379\nETCDCTL_CACERT=/etc/ssl/etcd/ca.crt\nETCDCTL_CERT=/etc/ssl/etcd/client.crt\nETCDCTL_KEY=/etc/ssl/etcd/client.key\n"
            )
        );
        assert_eq!(file_text(&w, "/etc/systemd/network/00-eth0.network"), None);
        assert_eq!(
            file_text(&w, "/etc/hostname"),
            Some(format!("demo-workers-{i}\n"))
        );
    }
}

// ---------------------------------------------------------------------------------
// central-services

const CENTRAL: &str = r#"[cluster]
name = "prod"
blueprint = "central-services"
provider = "sim"

[network]
cidr = "10.0.0.0/16"

[central]
count = 5
size = "m"
zones = ["z1", "z2", "z3"]
first_address = "10.0.1.101"
protect = true

[workers]
count = 4
size = "w"
zones = ["z1", "z2"]
"#;

#[test]
fn central_services_expansion() {
    let m = ok(CENTRAL);
    assert_eq!(m.resources.len(), 1 + 5 + 4);
    let central: Vec<Address> = (0..5)
        .map(|i| Address::indexed("machine", "central", i))
        .collect();
    let urls: Vec<String> = (0..5)
        .map(|i| format!("https://10.0.1.{}:2379", 101 + i))
        .collect();
    for i in 0..5u32 {
        let r = find(&m, &format!("machine.central[{i}]"));
        assert_eq!(r.attrs["address"], json!(format!("10.0.1.{}", 101 + i)));
        assert_eq!(r.attrs["zone"], json!(["z1", "z2", "z3"][i as usize % 3]));
        assert_eq!(r.attrs["protect"], json!(true));
        assert_eq!(r.attrs["role"], json!("etcd"));
        let ign = ignition(r);
        assert_eq!(initial_cluster(&ign).matches("=https://").count(), 5);
        assert!(initial_cluster(&ign).contains("prod-central-4=https://10.0.1.105:2380"));
        assert!(
            unit_text(&ign, "etcd-member.service").contains("--initial-cluster-token=\"prod\"")
        );
    }
    for i in 0..4u32 {
        let r = find(&m, &format!("machine.workers[{i}]"));
        assert!(!r.attrs.contains_key("address"), "workers use DHCP");
        assert!(!r.attrs.contains_key("protect"));
        assert_eq!(r.attrs["role"], json!("worker"));
        assert_eq!(r.attrs["size"], json!("w"));
        assert_eq!(r.attrs["zone"], json!(["z1", "z2"][i as usize % 2]));
        assert_eq!(r.attrs["etcd_endpoints"], json!(["http://127.0.0.1:2379"]));
        assert_eq!(r.depends_on, central);
        let ign = ignition(r);
        assert_eq!(units(&ign), ["etcd-grpc-proxy.service"]);
        assert!(
            unit_text(&ign, "etcd-grpc-proxy.service")
                .contains(&format!("--endpoints={} ", urls.join(","))),
            "{ign}"
        );
        assert_eq!(
            file_text(&ign, "/etc/etcd-endpoints.env").as_deref(),
            Some("ETCDCTL_ENDPOINTS=http://127.0.0.1:2379\n")
        );
        assert_eq!(
            file_text(&ign, "/etc/systemd/network/00-eth0.network"),
            None
        );
    }
    // Every etcd machine comes before every worker.
    let order: Vec<String> = m.graph.topo_order().map(ToString::to_string).collect();
    let last_central = order
        .iter()
        .rposition(|a| a.starts_with("machine.central"))
        .unwrap();
    let first_worker = order
        .iter()
        .position(|a| a.starts_with("machine.workers"))
        .unwrap();
    assert!(last_central < first_worker, "{order:?}");
}

/// Load `src` with one CA for every load (`ok` makes a new one each time).
fn ok_with_one_ca(src: &str) -> Model {
    static CA: std::sync::OnceLock<std::sync::Arc<clusterform_pki::Ca>> =
        std::sync::OnceLock::new();
    let ca = CA
        .get_or_init(|| {
            std::sync::Arc::new(
                clusterform_pki::Ca::generate("prod", clusterform_pki::DEFAULT_VALIDITY).unwrap(),
            )
        })
        .clone();
    let options = crate::LoadOptions {
        etcd_ca: Some(std::sync::Arc::new(
            move |_: &str, _: &_, _: Option<&Path>| Ok(ca.clone()),
        )),
        ..Default::default()
    };
    crate::parse_with(Path::new(PATH), src, &[sim()], &options).unwrap()
}

#[test]
fn a_change_of_the_member_set_changes_no_running_machine() {
    let five = ok_with_one_ca(CENTRAL);
    let three = ok_with_one_ca(&CENTRAL.replace("count = 5", "count = 3"));
    assert_eq!(three.resources.len(), 1 + 3 + 4);
    // The workers' proxies list every address a central machine can have (5 slots), so
    // their config is the same whatever the member count.
    let w5 = attr(&five, "machine.workers[0]", "user_data");
    let w3 = attr(&three, "machine.workers[0]", "user_data");
    assert_eq!(
        w5, w3,
        "the workers' config does not follow the member count"
    );
    for i in 0..5 {
        assert!(
            w3.as_str()
                .unwrap()
                .contains(&format!("https://10.0.1.{}:2379", 101 + i)),
            "slot {i} is listed: {w3}"
        );
    }
    assert_eq!(
        attr(&five, "machine.workers[0]", "etcd_endpoints"),
        attr(&three, "machine.workers[0]", "etcd_endpoints"),
        "the local proxy's URL"
    );
    // The members' configs differ only in bootstrap-only flags.
    let c5 = attr(&five, "machine.central[0]", "user_data");
    let c3 = attr(&three, "machine.central[0]", "user_data");
    assert_ne!(c5, c3, "the initial cluster differs");
    assert_eq!(
        clusterform_ignition::etcd::bootstrap_neutral(c5.as_str().unwrap()),
        clusterform_ignition::etcd::bootstrap_neutral(c3.as_str().unwrap()),
        "only --initial-cluster differs"
    );
    // More workers change no existing machine.
    let more = ok_with_one_ca(&CENTRAL.replace("count = 4", "count = 6"));
    for a in ["machine.central[0]", "machine.workers[3]"] {
        assert_eq!(
            attr(&five, a, "user_data"),
            attr(&more, a, "user_data"),
            "{a}"
        );
    }
}

#[test]
fn proxy_slots_stop_at_the_end_of_the_network() {
    // 10.0.1.96/29: hosts .97-.102, broadcast .103. From .99, four of the five slots
    // fit: .99-.102.
    let m = ok(&CENTRAL
        .replace("cidr = \"10.0.0.0/16\"", "cidr = \"10.0.1.96/29\"")
        .replace(
            "first_address = \"10.0.1.101\"",
            "first_address = \"10.0.1.99\"",
        )
        .replace("count = 5", "count = 3"));
    let w = attr(&m, "machine.workers[0]", "user_data");
    let w = w.as_str().unwrap();
    assert!(
        w.contains("--endpoints=https://10.0.1.99:2379,https://10.0.1.100:2379,https://10.0.1.101:2379,https://10.0.1.102:2379 "),
        "{w}"
    );
}

#[test]
fn central_services_defaults() {
    let m = ok(
        "[cluster]\nname = \"p\"\nblueprint = \"central-services\"\nprovider = \"sim\"\n\
         [central]\nsize = \"m\"\n",
    );
    assert_eq!(
        addrs(&m),
        [
            "network.main",
            "machine.central[0]",
            "machine.central[1]",
            "machine.central[2]"
        ]
    );
    assert_eq!(attr(&m, "machine.central[2]", "address"), "10.0.0.103");
    assert!(!find(&m, "machine.central[0]").attrs.contains_key("zone"));
}

#[test]
fn error_central_services_counts() {
    for n in [0, 2, 6, 9] {
        let d = one_error(&CENTRAL.replace("count = 5", &format!("count = {n}")));
        assert_diag(
            &d,
            &format!(
                "blueprint `central-services` runs 3 to 5 central machines, not {n}: etcd needs at least 3 for a quorum, and more members only slow every write down"
            ),
            10,
            9,
        );
        assert_eq!(d.label, "must be 3 to 5");
    }
    let d = one_error(&CENTRAL.replace("size = \"w\"\n", ""));
    assert_diag(&d, "`[workers]` has no `size`", 16, 1);
    let d = one_error(&CENTRAL.replace("count = 4", "count = -1"));
    assert_diag(
        &d,
        "`count` in `[workers]` must be 0 or more, not -1",
        17,
        9,
    );
}

// ---------------------------------------------------------------------------------
// large-scale

#[test]
fn large_scale_spreads_central_over_zones() {
    let src = CENTRAL.replace("central-services", "large-scale");
    let m = ok(&src);
    assert_eq!(m.cluster.blueprint.as_deref(), Some("large-scale"));
    assert_eq!(attr(&m, "machine.central[3]", "zone"), "z1");
    let w = find(&m, "machine.workers[1]");
    assert!(!w.attrs.contains_key("address"));
    assert_eq!(w.depends_on.len(), 5);
    assert!(units(&ignition(w)).contains(&"etcd-grpc-proxy.service".to_string()));
    // Workers default to none, and have no upper bound.
    let m = ok(&src.replace("count = 4\n", ""));
    assert_eq!(m.resources.len(), 6);
    let m = ok(&src.replace("count = 4\n", "count = 500\n"));
    assert_eq!(m.resources.len(), 506);
}

#[test]
fn error_large_scale_rules() {
    let src = CENTRAL.replace("central-services", "large-scale");
    let d = one_error(&src.replace("[\"z1\", \"z2\", \"z3\"]", "[\"z1\"]"));
    assert_diag(
        &d,
        "large-scale spreads the central machines over zones: give at least 2, not 1",
        12,
        9,
    );
    let d = one_error(&src.replace("zones = [\"z1\", \"z2\", \"z3\"]\n", ""));
    assert_diag(
        &d,
        "large-scale spreads the central machines over zones: give at least 2; `[central]` has no `zones`",
        9,
        1,
    );
    let d = one_error(&src.replace("count = 5", "count = 7"));
    assert_diag(
        &d,
        "blueprint `large-scale` runs 3 to 5 central machines, not 7: etcd needs at least 3 for a quorum, and more members only slow every write down",
        10,
        9,
    );
    // An empty list is reported once, as empty.
    let d = one_error(&src.replace("[\"z1\", \"z2\", \"z3\"]", "[]"));
    assert_diag(&d, "`zones` is empty", 12, 9);
}

// ---------------------------------------------------------------------------------
// platforms and Butane

/// The sim schema under another provider's name.
fn as_provider(name: &str) -> ProviderSchema {
    let mut s = sim();
    s.provider = name.to_string();
    s
}

#[test]
fn platform_follows_the_provider() {
    for (p, networkd, metadata) in [
        ("libvirt", true, false),
        ("ec2", false, true),
        ("metal", false, true),
        ("other", true, false),
    ] {
        let mut src = CENTRAL.replace("provider = \"sim\"", &format!("provider = \"{p}\""));
        let schema = if p == "metal" {
            // One Metal VLAN lives in one metro.
            src = src.replace("[\"z1\", \"z2\", \"z3\"]", "[\"da\"]");
            src = src.replace("[\"z1\", \"z2\"]", "[\"da\"]");
            metal_schema()
        } else {
            as_provider(p)
        };
        let m = parse(Path::new(PATH), &src, &[schema]).unwrap();
        let ign = ignition(find(&m, "machine.central[0]"));
        assert_eq!(
            file_text(&ign, "/etc/systemd/network/00-eth0.network").is_some(),
            networkd,
            "{p}"
        );
        assert_eq!(
            unit_text(&ign, "etcd-member.service").contains("coreos-metadata.service"),
            metadata,
            "{p}"
        );
    }
}

const BUTANE: &str = "variant: flatcar
version: 1.0.0
systemd:
  units:
    - name: hello.service
      enabled: true
      contents: |
        [Service]
        ExecStart=/usr/bin/echo hello
storage:
  files:
    - path: /etc/motd
      contents:
        inline: |
          central machine
";

/// A cluster file and Butane files in a fresh folder.
fn folder(cluster: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, cluster).unwrap();
    (dir, path)
}

#[test]
fn butane_extras_are_merged_into_the_tables_machines() {
    let src = CENTRAL.replace(
        "protect = true",
        "protect = true\nbutane = [\"central.bu\"]",
    );
    let (_dir, path) = folder(&src, &[("central.bu", BUTANE)]);
    let m = load(&path, &[sim()]).unwrap();
    for i in 0..5 {
        let ign = ignition(find(&m, &format!("machine.central[{i}]")));
        assert_eq!(
            units(&ign),
            ["etcd-member.service", "hello.service"],
            "central[{i}]"
        );
        assert_eq!(
            file_text(&ign, "/etc/motd").as_deref(),
            Some("central machine\n")
        );
    }
    let w = ignition(find(&m, "machine.workers[0]"));
    assert_eq!(units(&w), ["etcd-grpc-proxy.service"], "[central]'s only");
    assert_eq!(file_text(&w, "/etc/motd"), None);
}

#[test]
fn error_butane_is_located_in_the_butane_file() {
    let src = SMALL.replace("first_address", "butane = [\"central.bu\"]\nfirst_address");
    let bad = BUTANE.replace("      enabled: true", "      enabled: maybe");
    let (dir, path) = folder(&src, &[("central.bu", &bad)]);
    let e = load(&path, &[sim()]).unwrap_err().0;
    assert_eq!(e.len(), 1, "{e:#?}");
    let d = &e[0];
    assert_eq!(d.path, dir.path().join("central.bu"));
    assert_eq!(&*d.source, bad.as_str());
    assert_eq!(d.line, 6, "{d}");
    assert!(d.column >= 7, "{d}");
    assert!(
        d.message.starts_with("in Butane file `central.bu`: "),
        "{d}"
    );
    assert!(d.help.is_some());
    let at = d.span.unwrap();
    assert_eq!(crate::line_col(&d.source, at.offset).0, 6);
}

// ---------------------------------------------------------------------------------
// zones on ec2: one subnet per zone, central addresses inside their zone's subnet

#[test]
fn ec2_gets_a_subnet_per_zone_and_addresses_in_them() {
    let src = CENTRAL.replace("provider = \"sim\"", "provider = \"ec2\"");
    let m = parse(Path::new(PATH), &src, &[as_provider("ec2")]).unwrap();
    assert_eq!(
        addrs(&m)[..4],
        ["network.main", "subnet.z1", "subnet.z2", "subnet.z3"]
    );
    assert_eq!(m.resources.len(), 1 + 3 + 5 + 4);
    for (z, cidr) in [
        ("z1", "10.0.0.0/20"),
        ("z2", "10.0.16.0/20"),
        ("z3", "10.0.32.0/20"),
    ] {
        let s = find(&m, &format!("subnet.{z}"));
        assert_eq!(s.attrs["cidr"], cidr);
        assert_eq!(s.attrs["zone"], z);
        assert_eq!(s.attrs["name"], format!("prod-{z}"));
        assert_eq!(s.refs["network"], Address::new("network", "main"));
    }
    // Round-robin over 3 zones: the j-th member of zone k at first_address + k*4096 + j.
    let want = [
        "10.0.1.101",
        "10.0.17.101",
        "10.0.33.101",
        "10.0.1.102",
        "10.0.17.102",
    ];
    for (i, ip) in want.iter().enumerate() {
        let a = format!("machine.central[{i}]");
        assert_eq!(attr(&m, &a, "address"), ip, "{a}");
        let zone = attr(&m, &a, "zone").as_str().unwrap().to_string();
        assert_eq!(find(&m, &a).refs["subnet"], Address::new("subnet", zone));
    }
    // Every member knows every peer at its address; workers reach them there.
    let peers: Vec<String> = want
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("prod-central-{i}=https://{ip}:2380"))
        .collect();
    assert_eq!(
        initial_cluster(&ignition(find(&m, "machine.central[2]"))),
        peers.join(",")
    );
    let w = find(&m, "machine.workers[1]");
    assert_eq!(w.refs["subnet"], Address::new("subnet", "z2"));
    assert!(
        w.attrs["user_data"]
            .as_str()
            .unwrap()
            .contains("10.0.33.101")
    );
    // The same file on sim: no subnets, addresses in a row.
    let flat = ok(CENTRAL);
    assert!(!addrs(&flat).iter().any(|a| a.starts_with("subnet.")));
    assert_eq!(attr(&flat, "machine.central[1]", "address"), "10.0.1.102");
}

#[test]
fn ec2_zone_rules_are_reported() {
    let ec2 = CENTRAL.replace("provider = \"sim\"", "provider = \"ec2\"");
    let one = |src: &str| -> Vec<String> {
        match parse(Path::new(PATH), src, &[as_provider("ec2")]) {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(|d| d.message.clone()).collect(),
        }
    };
    let e = one(&ec2.replace(
        "first_address = \"10.0.1.101\"",
        "first_address = \"10.0.20.5\"",
    ));
    assert!(
        e.iter()
            .any(|m| m.contains("first zone's subnet, 10.0.0.0/20")),
        "{e:?}"
    );
    let e = one(&ec2
        .replace("cidr = \"10.0.0.0/16\"", "cidr = \"10.0.0.0/25\"")
        .replace("10.0.1.101", "10.0.0.10"));
    assert!(e.iter().any(|m| m.contains("/24 or larger")), "{e:?}");
    // No zones anywhere: one subnet, `subnet.main`, the whole first 16th.
    let plain = ec2
        .replace("zones = [\"z1\", \"z2\", \"z3\"]\n", "")
        .replace("zones = [\"z1\", \"z2\"]\n", "");
    let m = parse(Path::new(PATH), &plain, &[as_provider("ec2")]).unwrap();
    assert_eq!(addrs(&m)[..2], ["network.main", "subnet.main"]);
    assert_eq!(attr(&m, "subnet.main", "cidr"), "10.0.0.0/20");
    assert!(!find(&m, "subnet.main").attrs.contains_key("zone"));
    assert_eq!(attr(&m, "machine.central[2]", "address"), "10.0.1.103");
}

#[test]
fn ec2_dev_vm_address_must_be_in_its_subnet() {
    let src = DEV_VM.replace("provider = \"sim\"", "provider = \"ec2\"");
    let m = parse(Path::new(PATH), &src, &[as_provider("ec2")]).unwrap();
    let subnets: Vec<String> = addrs(&m)
        .into_iter()
        .filter(|a| a.starts_with("subnet."))
        .collect();
    assert_eq!(subnets.len(), 1);
    assert_eq!(
        find(&m, "machine.vm").refs["subnet"].to_string(),
        subnets[0]
    );
}

#[test]
fn metal_workers_may_pxe_boot_and_other_providers_say_it_is_metal_only() {
    let pxe = "zones = [\"z1\", \"z2\"]\nipxe_script_url = \"https://boot.example.net/f.ipxe\"\nalways_pxe = true\n";
    let src = metal_central(&CENTRAL.replace("zones = [\"z1\", \"z2\"]\n", pxe));
    let m = parse(Path::new(PATH), &src, &[metal_schema()]).unwrap();
    assert_eq!(
        attr(&m, "machine.workers[3]", "operating_system"),
        "custom_ipxe"
    );
    assert_eq!(
        attr(&m, "machine.workers[0]", "ipxe_script_url"),
        "https://boot.example.net/f.ipxe"
    );
    assert_eq!(
        attr(&m, "machine.workers[0]", "always_pxe"),
        &Value::Bool(true)
    );
    assert!(
        !find(&m, "machine.central[0]")
            .attrs
            .contains_key("operating_system")
    );

    let d = one_error(&CENTRAL.replace("zones = [\"z1\", \"z2\"]\n", pxe));
    assert_diag(
        &d,
        "`ipxe_script_url` is a setting of Metal machines; provider `sim` boots the Flatcar image",
        20,
        19,
    );
    let d = one_error(&CENTRAL.replace("zones = [\"z1\", \"z2\"]\n", "always_pxe = true\n"));
    assert_eq!(
        d.message,
        "`always_pxe` needs `ipxe_script_url` in `[workers]`"
    );
}

/// The sim schema as `metal`, with the attributes the Metal schema adds (the builtins'
/// schema-only `metal` has the same).
fn metal_schema() -> ProviderSchema {
    use clusterform_core::{AttrSchema, AttrType};
    let mut schema = as_provider("metal");
    for k in &mut schema.kinds {
        match k.kind.as_str() {
            "network" => k.attrs.extend([
                AttrSchema::optional_computed("vxlan", AttrType::Int, ""),
                AttrSchema::optional_computed("zone", AttrType::String, ""),
                AttrSchema::optional("vlan", AttrType::Bool, ""),
            ]),
            "machine" => k.attrs.extend([
                AttrSchema::optional("ip_reservation", AttrType::Reference, ""),
                AttrSchema::optional("operating_system", AttrType::String, ""),
                AttrSchema::optional("ipxe_script_url", AttrType::String, ""),
                AttrSchema::optional("always_pxe", AttrType::Bool, ""),
            ]),
            _ => {}
        }
    }
    schema.kinds.push(clusterform_core::KindSchema {
        kind: "ip_reservation".into(),
        doc: String::new(),
        attrs: vec![
            AttrSchema::required("zone", AttrType::String, "").force_new(),
            AttrSchema::computed("address", AttrType::String, ""),
        ],
    });
    schema
}

/// `src` on metal, every machine in metro `da`.
fn metal_central(src: &str) -> String {
    src.replace("provider = \"sim\"", "provider = \"metal\"")
        .replace("[\"z1\", \"z2\", \"z3\"]", "[\"da\"]")
        .replace("[\"z1\", \"z2\"]", "[\"da\"]")
}

fn metal_errors(src: &str) -> Vec<Diagnostic> {
    match parse(Path::new(PATH), src, &[metal_schema()]) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.0,
    }
}

#[test]
fn metal_machines_get_their_static_addresses_on_the_cluster_vlan() {
    let src = metal_central(CENTRAL);
    let m = parse(Path::new(PATH), &src, &[metal_schema()]).unwrap();
    // The VLAN: its number from the cluster name (stable), in the machines' metro.
    let vxlan = u64::from(crate::blueprint::default_vxlan("prod"));
    assert!((1000..2000).contains(&vxlan));
    assert_eq!(attr(&m, "network.main", "vxlan"), &Value::from(vxlan));
    assert_eq!(attr(&m, "network.main", "zone"), "da");
    let link = format!("bond0.{vxlan}");

    // Central: the static address on bond0.<vxlan>, no gateway (bond0 keeps Metal's
    // default route), and etcd waits for the subinterface.
    let ign = ignition(find(&m, "machine.central[2]"));
    assert_eq!(
        file_text(&ign, "/etc/systemd/network/30-clusterform-vlan.network").unwrap(),
        format!("[Match]\nName={link}\n\n[Network]\nAddress=10.0.1.103/16\n")
    );
    assert!(file_text(&ign, "/etc/systemd/network/00-eth0.network").is_none());
    let vlan_unit = unit_text(&ign, "clusterform-vlan.service");
    assert!(
        vlan_unit.contains(&format!(
            "ip link add link bond0 name {link} type vlan id {vxlan}"
        )),
        "{vlan_unit}"
    );
    let etcd = unit_text(&ign, "etcd-member.service");
    assert!(etcd.contains("Requires=clusterform-vlan.service"), "{etcd}");
    assert!(etcd.contains("--listen-peer-urls=\"https://10.0.1.103:2380\""));

    // Workers: the VLAN has no DHCP, so static addresses from the 201st host.
    for i in 0..4u8 {
        let w = find(&m, &format!("machine.workers[{i}]"));
        let ip = format!("10.0.0.{}", 201 + u32::from(i));
        assert_eq!(w.attrs["address"], Value::String(ip.clone()));
        assert_eq!(w.attrs["zone"], Value::String("da".into()));
        let ign = ignition(w);
        assert_eq!(
            file_text(&ign, "/etc/systemd/network/30-clusterform-vlan.network").unwrap(),
            format!("[Match]\nName={link}\n\n[Network]\nAddress={ip}/16\n")
        );
        assert!(units(&ign).contains(&"clusterform-vlan.service".to_string()));
    }

    // `vxlan` and `[workers] first_address` as written; machines without zones stay
    // in the settings' metro (no zone on anything).
    let src = metal_central(&CENTRAL.replace(
        "cidr = \"10.0.0.0/16\"",
        "cidr = \"10.0.0.0/16\"\nvxlan = 1234",
    ))
    .replace("zones = [\"da\"]\n", "")
    .replace("size = \"w\"", "size = \"w\"\nfirst_address = \"10.0.9.1\"");
    let m = parse(Path::new(PATH), &src, &[metal_schema()]).unwrap();
    assert_eq!(attr(&m, "network.main", "vxlan"), &Value::from(1234));
    assert!(!find(&m, "network.main").attrs.contains_key("zone"));
    assert!(!find(&m, "machine.central[0]").attrs.contains_key("zone"));
    assert_eq!(attr(&m, "machine.workers[3]", "address"), "10.0.9.4");
    let ign = ignition(find(&m, "machine.workers[3]"));
    assert!(
        file_text(&ign, "/etc/systemd/network/30-clusterform-vlan.network")
            .unwrap()
            .contains("Name=bond0.1234")
    );
}

#[test]
fn metal_rules_are_reported_where_they_are_written() {
    // Over metros there is no VLAN: `[central] first_address`, `vxlan` and
    // `[workers] first_address` are reported where written, as is TLS turned off.
    let spread = CENTRAL.replace("provider = \"sim\"", "provider = \"metal\"");
    let e = metal_errors(&spread);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_diag(
        &e[0],
        "`first_address` in `[central]` is the central machines' first address on the cluster VLAN; the machines are in 2 or more metros, and a Metal VLAN lives in one: the cluster has no VLAN: each central machine takes a public address reserved for it (`ip_reservation.central[N]`)",
        13,
        17,
    );
    let spread = spread.replace("first_address = \"10.0.1.101\"\n", "");
    let e = metal_errors(&spread.replace(
        "cidr = \"10.0.0.0/16\"",
        "cidr = \"10.0.0.0/16\"\nvxlan = 1234",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].message.starts_with(
            "`vxlan` is the number of the cluster VLAN; the machines are in 2 or more metros"
        ),
        "{e:?}"
    );
    assert_eq!((e[0].line, e[0].column), (8, 9));
    let e =
        metal_errors(&spread.replace("size = \"w\"", "size = \"w\"\nfirst_address = \"10.0.9.1\""));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!((e[0].line, e[0].column), (18, 17));
    let e = metal_errors(&spread.replace("protect = true", "protect = true\netcd_tls = false"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_diag(
        &e[0],
        "the central machines are in 2 or more metros: etcd talks over public addresses there and needs TLS",
        14,
        12,
    );
    let e = metal_errors(&spread.replace("zones = [\"z1\", \"z2\", \"z3\"]\n", ""));
    assert!(e[0].message.contains("`[central]` has no `zones`"), "{e:?}");

    // vxlan out of range; vxlan and workers' first_address elsewhere.
    let src = metal_central(&CENTRAL.replace(
        "cidr = \"10.0.0.0/16\"",
        "cidr = \"10.0.0.0/16\"\nvxlan = 4000",
    ));
    let e = metal_errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_diag(
        &e[0],
        "`vxlan` in `[network]` must be 2 to 3999, not 4000",
        8,
        9,
    );
    let d = one_error(&CENTRAL.replace(
        "cidr = \"10.0.0.0/16\"",
        "cidr = \"10.0.0.0/16\"\nvxlan = 12",
    ));
    assert_diag(
        &d,
        "`vxlan` is the number of a Metal VLAN; provider `sim` has none",
        8,
        9,
    );
    let d =
        one_error(&CENTRAL.replace("size = \"w\"", "size = \"w\"\nfirst_address = \"10.0.2.1\""));
    assert_diag(
        &d,
        "workers get their addresses by DHCP on provider `sim`; `first_address` in `[workers]` is for Metal, whose VLAN has no DHCP",
        19,
        17,
    );

    // Workers' addresses clear of the central machines' slots (up to 5 of them).
    let src = metal_central(&CENTRAL.replace(
        "size = \"w\"",
        "size = \"w\"\nfirst_address = \"10.0.1.104\"",
    ));
    let e = metal_errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_diag(
        &e[0],
        "address `10.0.1.104` of `machine.workers[0]` is an address the central machines may take",
        19,
        17,
    );
    // ... and inside the network.
    let src = metal_central(&CENTRAL.replace(
        "size = \"w\"",
        "size = \"w\"\nfirst_address = \"10.0.255.253\"",
    ));
    let e = metal_errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        e[0].message,
        "address `10.1.0.0` of `machine.workers[3]` is outside the network `10.0.0.0/16`"
    );
}

#[test]
fn metal_clusters_over_metros_reserve_the_central_machines_addresses() {
    let src = CENTRAL
        .replace("provider = \"sim\"", "provider = \"metal\"")
        .replace("first_address = \"10.0.1.101\"\n", "");
    // Nothing reserved yet: the reservations are planned; the addresses, and every
    // config that names them, are known after apply.
    let m = parse(Path::new(PATH), &src, &[metal_schema()]).unwrap();
    assert!(m.etcd.tls, "etcd over public addresses runs TLS");
    assert_eq!(attr(&m, "network.main", "vlan"), &Value::Bool(false));
    assert!(!find(&m, "network.main").attrs.contains_key("vxlan"));
    let reservations: Vec<Address> = (0..5)
        .map(|i| Address::indexed("ip_reservation", "central", i))
        .collect();
    for (i, a) in reservations.iter().enumerate() {
        let r = find(&m, &a.to_string());
        assert_eq!(r.attrs["zone"], ["z1", "z2", "z3"][i % 3]);
        assert!(r.deferred.is_empty());
        let c = find(&m, &format!("machine.central[{i}]"));
        assert_eq!(&c.refs["ip_reservation"], a);
        assert_eq!(c.deferred, vec!["address", "user_data"]);
        // Its config names every member: it waits for every reservation.
        assert!(reservations.iter().all(|r| c.dependencies().contains(r)));
    }
    assert_eq!(find(&m, "machine.workers[2]").deferred, vec!["user_data"]);

    // Reserved: concrete configs over the reserved addresses, https, no VLAN file.
    let reserved: BTreeMap<Address, Ipv4Addr> = (0u8..)
        .zip(&reservations)
        .map(|(i, a)| (a.clone(), Ipv4Addr::new(147, 28, i, 10)))
        .collect();
    let options = crate::LoadOptions {
        reserved_addresses: Some(std::sync::Arc::new(
            move |cluster: &str, _: &_, _: Option<&Path>| {
                assert_eq!(cluster, "prod");
                Ok(reserved.clone())
            },
        )),
        ..Default::default()
    };
    let m = crate::parse_with(Path::new(PATH), &src, &[metal_schema()], &options).unwrap();
    let c = find(&m, "machine.central[1]");
    assert!(c.deferred.is_empty());
    assert_eq!(c.attrs["address"], "147.28.1.10");
    let ud = c.attrs["user_data"].as_str().unwrap();
    assert!(
        ud.contains("prod-central-4=https://147.28.4.10:2380"),
        "{ud}"
    );
    assert!(ud.contains("https://147.28.1.10:2379"), "{ud}");
    assert!(!ud.contains("192.0.2."), "no stand-in is left: {ud}");
    let ign = ignition(c);
    assert!(file_text(&ign, "/etc/systemd/network/30-clusterform-vlan.network").is_none());
    assert!(!units(&ign).contains(&"clusterform-vlan.service".to_string()));
    let w = find(&m, "machine.workers[3]");
    assert!(w.deferred.is_empty());
    let wud = w.attrs["user_data"].as_str().unwrap();
    for i in 0..5 {
        assert!(
            wud.contains(&format!("https://147.28.{i}.10:2379")),
            "{wud}"
        );
    }
    assert!(!w.attrs.contains_key("address"));

    // large-scale (central machines over 2 or more metros) is a Metal cluster over metros.
    let ls = src.replace("central-services", "large-scale");
    let m = parse(Path::new(PATH), &ls, &[metal_schema()]).unwrap();
    assert!(
        m.resources
            .iter()
            .any(|r| r.address.kind == "ip_reservation")
    );
    // One metro: the VLAN as before, no reservations.
    let m = parse(Path::new(PATH), &metal_central(CENTRAL), &[metal_schema()]).unwrap();
    assert!(
        m.resources
            .iter()
            .all(|r| r.address.kind != "ip_reservation" && r.deferred.is_empty())
    );
}

#[test]
fn etcd_tls_issues_every_machine_its_certificate_from_the_clusters_ca() {
    use std::sync::Arc;
    let ca =
        Arc::new(clusterform_pki::Ca::generate("prod", clusterform_pki::DEFAULT_VALIDITY).unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (given, count) = (ca.clone(), asked.clone());
    let options = crate::LoadOptions {
        files_dir: None,
        etcd_ca: Some(Arc::new(
            move |cluster: &str, _state: &crate::StateSettings, _key: Option<&Path>| {
                assert_eq!(cluster, "prod");
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(given.clone())
            },
        )),
        ..Default::default()
    };
    // With `etcd_tls = false` the CA is never asked for, and the plan will say so.
    let plain = CENTRAL.replace("protect = true", "protect = true\netcd_tls = false");
    let m = crate::parse_with(Path::new(PATH), &plain, &[sim()], &options).unwrap();
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(m.etcd_plain_http && !m.etcd.tls);
    let ud = attr(&m, "machine.central[0]", "user_data")
        .as_str()
        .unwrap();
    assert!(ud.contains("http://10.0.1.101:2380") && !ud.contains("https://"));

    // TLS is the default.
    let m = crate::parse_with(Path::new(PATH), CENTRAL, &[sim()], &options).unwrap();
    assert!(m.etcd.tls && !m.etcd_plain_http);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        m.etcd_ca.as_ref().map(|c| c.cert_pem()),
        Some(ca.cert_pem())
    );
    let member = ignition(find(&m, "machine.central[1]"));
    let dropin = unit_text(&member, "etcd-member.service");
    assert!(
        dropin.contains("--advertise-client-urls=\"https://10.0.1.102:2379\""),
        "{dropin}"
    );
    assert!(dropin.contains("--peer-client-cert-auth"), "{dropin}");
    assert_eq!(
        file_text(&member, "/etc/ssl/etcd/ca.crt").as_deref(),
        Some(ca.cert_pem())
    );
    let key = file_text(&member, "/etc/ssl/etcd/server.key").unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    // The member's certificate is the CA's, for its own address.
    let cert = file_text(&member, "/etc/ssl/etcd/server.crt").unwrap();
    let again = ca
        .member(
            "prod-central-1",
            &[std::net::IpAddr::from([10, 0, 1, 102])],
            clusterform_pki::DEFAULT_VALIDITY,
        )
        .unwrap();
    assert_eq!(cert, again.cert_pem);
    // Workers: one client certificate for all their proxies, on https to every slot.
    let w0 = ignition(find(&m, "machine.workers[0]"));
    let w1 = ignition(find(&m, "machine.workers[1]"));
    let proxy = unit_text(&w0, "etcd-grpc-proxy.service");
    assert!(
        proxy.contains("--endpoints=https://10.0.1.101:2379,"),
        "{proxy}"
    );
    assert!(proxy.contains("--cert=/etc/ssl/etcd/client.crt"), "{proxy}");
    assert_eq!(
        file_text(&w0, "/etc/ssl/etcd/client.key"),
        file_text(&w1, "/etc/ssl/etcd/client.key"),
        "the workers' certificate, issued once"
    );
    assert_eq!(
        file_text(&w0, "/etc/ssl/etcd/client.key"),
        Some(
            ca.client("prod-workers", clusterform_pki::DEFAULT_VALIDITY)
                .unwrap()
                .key_pem
                .expose()
                .to_string()
        )
    );
    assert_ne!(
        file_text(&w0, "/etc/ssl/etcd/client.key"),
        file_text(
            &ignition(find(&m, "machine.central[0]")),
            "/etc/ssl/etcd/server.key"
        ),
    );
    // The same CA renders the very same configs again.
    let again = crate::parse_with(Path::new(PATH), CENTRAL, &[sim()], &options).unwrap();
    assert_eq!(m.resources, again.resources);

    // dev-test workers reach the member directly: https, with their certificate.
    let dev = DEV_TEST_TLS;
    let m = crate::parse_with(Path::new(PATH), dev, &[sim()], &options).unwrap();
    assert_eq!(
        attr(&m, "machine.workers[0]", "etcd_endpoints"),
        &serde_json::json!(["https://10.0.0.101:2379"])
    );
    let env = file_text(
        &ignition(find(&m, "machine.workers[0]")),
        "/etc/etcd-endpoints.env",
    )
    .unwrap();
    assert!(
        env.contains("ETCDCTL_KEY=/etc/ssl/etcd/client.key"),
        "{env}"
    );

    // A CA that cannot be had is an error at `etcd_tls`, saying what to do.
    let failing = crate::LoadOptions {
        files_dir: None,
        etcd_ca: Some(Arc::new(
            |_: &str, _: &crate::StateSettings, _: Option<&Path>| {
                Err("the state at `x` is locked".to_string())
            },
        )),
        ..Default::default()
    };
    let e = match crate::parse_with(Path::new(PATH), CENTRAL, &[sim()], &failing) {
        Ok(_) => panic!("expected an error"),
        Err(d) => d.0,
    };
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].message.contains("cannot get the cluster's etcd CA"),
        "{}",
        e[0]
    );
    // `etcd_tls` is not written: the error points at `[central]`.
    assert_eq!(e[0].line, 9, "{}", e[0]);
}

const DEV_TEST_TLS: &str = r#"[cluster]
name = "prod"
blueprint = "dev-test"
provider = "sim"

[central]
size = "m"
etcd_tls = true

[workers]
count = 1
size = "s"
"#;
