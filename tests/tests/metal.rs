//! The Equinix Metal plugin (`clusterform-provider-metal`) through the real binary,
//! against a stateful fake of the Metal API behind `prism proxy --errors` with the
//! official OpenAPI spec: every request and answer is checked against the spec (a
//! violation fails the test). Covered: apply -> no-op plan -> drift (a device deleted
//! and one retagged out of band; read-only) -> destroy of `central-services` on its
//! VLAN (static addresses on `bond0.<vxlan>`; a VLAN number in use quoted from the
//! API) and over three metros (a public address reserved per central machine, configs
//! rendered once the addresses exist); `large-scale` with PXE-booted workers; reap of an expired cluster; a 429
//! burst; a device that ends `failed` (kept, then destroyed); a 422 with the API's
//! errors; a missing token; the refresh of 500 devices in pages, not per device; and the
//! token never reaching the state, plans or output. Skipped with a note where the spec,
//! prism or python3 is missing, unless `CI=true`.

use std::collections::BTreeMap;

use clusterform_tests::metal::{MetalLab, TOKEN};
use clusterform_tests::{Run, World};
use serde_json::{Value, json};

fn run(w: &World, args: &[&str], code: i32) -> Run {
    let r: Run = w
        .command(args)
        .env("METAL_AUTH_TOKEN", TOKEN)
        .env_remove("METAL_PROJECT_ID")
        .output()
        .expect("run")
        .into();
    r.expecting(args, code)
}

fn central_services(lab: &MetalLab, name: &str) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "central-services"
provider = "metal"
channel = "stable"

{}
[network]
cidr = "10.10.0.0/22"
gateway = "10.10.0.1"
dns = ["1.1.1.1"]
vxlan = 1234

[central]
count = 3
size = "c3.small.x86"
zones = ["dc"]
first_address = "10.10.0.101"

[workers]
count = 4
size = "m3.large.x86"
zones = ["dc"]
"#,
        lab.settings()
    )
}

fn dev_test(lab: &MetalLab, name: &str, workers: u32, extra: &str) -> String {
    format!(
        r#"[cluster]
name = "{name}"
blueprint = "dev-test"
provider = "metal"
{extra}
{}
[network]
cidr = "10.10.0.0/22"
gateway = "10.10.0.1"

[central]
size = "c3.small.x86"

[workers]
count = {workers}
size = "m3.large.x86"
"#,
        lab.settings()
    )
}

/// The fake's devices of `cluster`, by their address tag.
fn devices_of(lab: &MetalLab, cluster: &str) -> BTreeMap<String, Value> {
    let cluster_tag = format!("clusterform:cluster={cluster}");
    lab.devices()
        .into_iter()
        .filter(|d| {
            d["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&json!(cluster_tag)))
        })
        .map(|d| {
            let address = d["tags"]
                .as_array()
                .and_then(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .find_map(|t| t.strip_prefix("clusterform:address="))
                })
                .unwrap_or_default()
                .to_string();
            (address, d)
        })
        .collect()
}

/// Tag `device` with `tag` as well, out of band.
fn add_tag(lab: &MetalLab, device: &Value, tag: &str) {
    let mut tags: Vec<Value> = device["tags"].as_array().cloned().unwrap_or_default();
    tags.push(json!(tag));
    lab.control(
        &format!("retag/{}", device["id"].as_str().expect("id")),
        json!({ "tags": tags }),
    );
}

/// Devices as `hostname (state)`, for messages.
fn brief(devices: &[Value]) -> String {
    devices
        .iter()
        .map(|d| format!("{} ({})", d["hostname"], d["state"]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every mutating call the fake answered.
fn mutations(calls: &BTreeMap<String, u64>) -> Vec<String> {
    calls
        .keys()
        .filter(|k| !k.starts_with("GET "))
        .cloned()
        .collect()
}

/// No file under the world's folder (state, plans, backups) holds the token.
fn assert_no_token_in_files(w: &World) {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(w.path(), &mut files);
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !bytes
                .windows(TOKEN.len())
                .any(|win| win == TOKEN.as_bytes()),
            "the token is in {}",
            f.display()
        );
    }
}

#[test]
fn central_services_on_its_vlan_applies_plans_drifts_and_destroys() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    w.write("cluster.toml", &central_services(&lab, "prod"));
    let r = run(&w, &["plan", "cluster.toml", "-out", "plan.bin"], 0);
    assert!(r.stdout.contains("8 to add"), "{}", r.stdout);
    let r = run(&w, &["apply", "plan.bin"], 0);
    assert!(r.stdout.contains("8 added"), "{}", r.stdout);
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains(TOKEN));
    }

    let devices = devices_of(&lab, "prod");
    assert_eq!(devices.len(), 7, "{devices:?}");
    // The VLAN: in the machines' metro (not the settings' `da`), with the number the
    // machines' configs name.
    let vlans = lab.vlans();
    assert_eq!(vlans.len(), 1, "{vlans:?}");
    assert_eq!(
        (vlans[0]["vxlan"].as_u64(), vlans[0]["metro_code"].as_str()),
        (Some(1234), Some("dc"))
    );
    for (address, d) in &devices {
        assert_eq!(d["metro"]["code"], "dc", "{address}");
        // Its static address on bond0.1234, made by the VLAN unit.
        let ud = d["userdata"].as_str().unwrap_or("");
        assert!(
            ud.contains("ip link add link bond0 name bond0.1234 type vlan id 1234"),
            "{address}: {ud}"
        );
        let n: u32 = address
            .trim_end_matches(']')
            .rsplit('[')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("index");
        let ip = if address.starts_with("machine.central") {
            format!("10.10.0.{}", 101 + n)
        } else {
            format!("10.10.0.{}", 201 + n)
        };
        let ign: Value = serde_json::from_str(ud).expect("Ignition JSON");
        let source = ign["storage"]["files"]
            .as_array()
            .and_then(|f| {
                f.iter()
                    .find(|f| f["path"] == "/etc/systemd/network/30-clusterform-vlan.network")
            })
            .and_then(|f| f["contents"]["source"].as_str())
            .unwrap_or("")
            .to_string();
        let net = clusterform_ignition::decode_data_url(&source, None)
            .map(|(bytes, _)| bytes)
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&net).contains(&format!("Address={ip}/22")),
            "{address}: {}",
            String::from_utf8_lossy(&net)
        );
    }
    for d in devices.values() {
        assert_eq!(d["state"], "active");
        // `public_ipv4 = true` (the default): a public address beside the private one.
        let public = d["ip_addresses"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|ip| ip["public"] == true));
        assert!(public, "{}", d["hostname"]);
        assert_eq!(d["operating_system"]["slug"], "flatcar_stable");
        let ud: Value =
            serde_json::from_str(d["userdata"].as_str().unwrap_or("")).expect("Ignition JSON");
        assert_eq!(
            ud["ignition"]["version"]
                .as_str()
                .map(|v| v.starts_with("3.")),
            Some(true)
        );
        // Every machine has its bond0 on the VLAN (hybrid bonded mode).
        let on_vlan = d["network_ports"][0]["virtual_networks"]
            .as_array()
            .is_some_and(|v| !v.is_empty());
        assert!(on_vlan, "{}", d["hostname"]);
    }
    let state = w.run_ok(&["show", "cluster.toml", "--json"], 0).stdout;
    assert!(
        state.contains("10.10.0.101"),
        "the static address is recorded"
    );

    let r = run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);

    // Another cluster asking for the same VLAN number in the metro: the API's words.
    w.write("other/cluster.toml", &central_services(&lab, "other"));
    let r = run(&w, &["apply", "other/cluster.toml", "--auto-approve"], 1);
    assert!(
        r.stdout.contains("(number 1234 in metro dc; `[network] vxlan` picks the number): the Metal API rejected the request (422: vxlan 1234 is already in use in metro dc)"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(devices_of(&lab, "other").is_empty());

    // Out of band: one worker deleted, one central machine retagged.
    let gone = devices["machine.workers[1]"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    lab.control(&format!("remove/{gone}"), Value::Null);
    let central = &devices["machine.central[1]"];
    add_tag(&lab, central, "team=someone-else");
    lab.reset_calls();
    let r = run(&w, &["drift", "cluster.toml"], 2);
    assert!(r.stdout.contains("machine.workers[1]"), "{}", r.stdout);
    assert!(r.stdout.contains("machine.central[1]"), "{}", r.stdout);
    assert!(r.stdout.contains("someone-else"), "{}", r.stdout);
    let calls = lab.calls();
    assert!(
        mutations(&calls).is_empty(),
        "drift changed something: {calls:?}"
    );

    // apply puts both right: a new worker, the tags back.
    run(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    let devices = devices_of(&lab, "prod");
    assert_eq!(devices.len(), 7);
    assert!(
        !devices["machine.central[1]"]["tags"]
            .to_string()
            .contains("someone-else"),
        "{}",
        devices["machine.central[1]"]["tags"]
    );
    run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);

    let r = run(&w, &["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("8 destroyed"), "{}", r.stdout);
    assert!(lab.devices().is_empty(), "{}", brief(&lab.devices()));
    assert_no_token_in_files(&w);
    lab.assert_spec_clean();
}

/// The addresses in `ud` of the form `scheme://A.B.C.D:port`.
fn urls_in(ud: &str, port: u16) -> Vec<String> {
    let needle = format!(":{port}");
    let mut out: Vec<String> = ud
        .match_indices(&needle)
        .filter_map(|(i, _)| {
            let head = &ud[..i];
            let start = head.rfind("//")? + 2;
            let ip = &head[start..];
            ip.parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|_| ip.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn central_services_over_three_metros_reserves_the_central_addresses() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    let file = central_services(&lab, "spread")
        .replace("vxlan = 1234\n", "")
        .replace("first_address = \"10.10.0.101\"\n", "")
        .replacen("zones = [\"dc\"]", "zones = [\"da\", \"ch\", \"dc\"]", 1)
        .replacen("zones = [\"dc\"]", "zones = [\"da\", \"dc\"]", 1);
    w.write("cluster.toml", &file);
    // Nothing is reserved yet: the configs that name the addresses are known after apply.
    let r = run(&w, &["plan", "cluster.toml", "-out", "plan.bin"], 0);
    assert!(r.stdout.contains("11 to add"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ip_reservation.central[2]"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("user_data") && r.stdout.contains("(known after apply)"),
        "{}",
        r.stdout
    );
    let r = run(&w, &["apply", "plan.bin"], 0);
    assert!(r.stdout.contains("11 added"), "{}", r.stdout);

    // One reservation per central machine, in its metro; no VLAN.
    assert!(lab.vlans().is_empty(), "{:?}", lab.vlans());
    let ips = lab.ips();
    assert_eq!(ips.len(), 3, "{ips:?}");
    let devices = devices_of(&lab, "spread");
    assert_eq!(devices.len(), 7);
    let mut members = Vec::new();
    for (i, metro) in ["da", "ch", "dc"].iter().enumerate() {
        let d = &devices[&format!("machine.central[{i}]")];
        assert_eq!(d["metro"]["code"], *metro);
        let reserved: Vec<&Value> = ips
            .iter()
            .filter(|r| {
                r["assignments"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["assigned_to"]["href"] == d["href"]))
            })
            .collect();
        assert_eq!(reserved.len(), 1, "{}: {ips:?}", d["hostname"]);
        assert_eq!(reserved[0]["metro"]["code"], *metro);
        let address = reserved[0]["address"]
            .as_str()
            .expect("address")
            .to_string();
        let has = d["ip_addresses"].as_array().is_some_and(|a| {
            a.iter()
                .any(|ip| ip["address"] == address.as_str() && ip["public"] == true)
        });
        assert!(has, "{}: {}", d["hostname"], d["ip_addresses"]);
        members.push(address);
    }
    members.sort();
    for (address, d) in &devices {
        let ud = d["userdata"].as_str().unwrap_or("");
        assert!(
            !ud.contains("192.0.2."),
            "{address}: a stand-in address is left"
        );
        assert!(!ud.contains("bond0."), "{address}: no VLAN over metros");
        if address.starts_with("machine.central") {
            // Members over TLS, peers at the reserved addresses.
            assert_eq!(urls_in(ud, 2380), members, "{address}");
            assert!(ud.contains("--client-cert-auth"), "{address}");
            assert!(ud.contains("https://"), "{address}");
        } else {
            // The worker's proxy reaches every member's reserved address over TLS.
            assert_eq!(urls_in(ud, 2379), members, "{address}");
        }
    }

    run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);
    // A worker deleted out of band: drift names it without changing anything.
    let gone = devices["machine.workers[3]"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    lab.control(&format!("remove/{gone}"), Value::Null);
    let central = &devices["machine.central[2]"];
    add_tag(&lab, central, "team=someone-else");
    lab.reset_calls();
    let r = run(&w, &["drift", "cluster.toml"], 2);
    assert!(r.stdout.contains("machine.workers[3]"), "{}", r.stdout);
    assert!(
        r.stdout.contains("machine.central[2]") && r.stdout.contains("someone-else"),
        "{}",
        r.stdout
    );
    assert!(mutations(&lab.calls()).is_empty(), "{:?}", lab.calls());
    let r = run(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("1 added, 1 changed"), "{}", r.stdout);
    run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);

    // Growing a running cluster: the new members' addresses are reserved first, and
    // what names them waits for the next apply.
    w.write("cluster.toml", &file.replacen("count = 3", "count = 5", 1));
    let r = run(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(
        r.stderr
            .contains("wait for the addresses this apply reserves: machine.central[0]"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains("2 added, 0 changed, 0 destroyed"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(lab.ips().len(), 5);
    assert_eq!(devices_of(&lab, "spread").len(), 7);
    let r = run(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    eprintln!("{}", r.stdout);
    let devices = devices_of(&lab, "spread");
    assert_eq!(devices.len(), 9);
    let members: Vec<String> = {
        let mut m: Vec<String> = lab
            .ips()
            .iter()
            .filter_map(|r| r["address"].as_str().map(String::from))
            .collect();
        m.sort();
        m
    };
    for i in 0..4 {
        let ud = devices[&format!("machine.workers[{i}]")]["userdata"]
            .as_str()
            .unwrap_or("");
        assert_eq!(urls_in(ud, 2379), members, "workers[{i}]");
    }
    run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);

    let r = run(&w, &["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("15 destroyed"), "{}", r.stdout);
    assert!(lab.devices().is_empty(), "{}", brief(&lab.devices()));
    assert!(lab.ips().is_empty(), "{:?}", lab.ips());
    assert_no_token_in_files(&w);
    lab.assert_spec_clean();
}

#[test]
fn large_scale_with_pxe_booted_workers_and_reap_of_an_expired_cluster() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    let file = format!(
        r#"[cluster]
name = "large"
blueprint = "large-scale"
provider = "metal"

{}
[network]
cidr = "10.10.0.0/20"
gateway = "10.10.0.1"

[central]
count = 3
size = "c3.small.x86"
zones = ["da", "ch", "dc"]

[workers]
count = 6
size = "m3.large.x86"
ipxe_script_url = "http://boot.example.net/flatcar.ipxe"
always_pxe = true
"#,
        lab.settings()
    );
    let file = file.replace("[network]", "public_ipv4 = false\n\n[network]");
    w.write("large/cluster.toml", &file);
    run(&w, &["apply", "large/cluster.toml", "--auto-approve"], 0);
    let devices = devices_of(&lab, "large");
    assert_eq!(devices.len(), 9);
    let reserved: Vec<Value> = lab.ips().iter().map(|r| r["address"].clone()).collect();
    assert_eq!(
        reserved.len(),
        3,
        "one address reserved per central machine"
    );
    for (address, d) in &devices {
        // `public_ipv4 = false`: no public address but the central machines' reserved ones.
        let public: Vec<&Value> = d["ip_addresses"]
            .as_array()
            .map(|ips| {
                ips.iter()
                    .filter(|ip| ip["public"] == true)
                    .map(|ip| &ip["address"])
                    .collect()
            })
            .unwrap_or_default();
        if address.starts_with("machine.central") {
            assert!(
                public.len() == 1 && reserved.contains(public[0]),
                "{address}: {public:?}"
            );
        } else {
            assert!(
                public.is_empty(),
                "{address} has a public address: {public:?}"
            );
        }
        if address.starts_with("machine.workers") {
            assert_eq!(d["operating_system"]["slug"], "custom_ipxe", "{address}");
            assert_eq!(d["ipxe_script_url"], "http://boot.example.net/flatcar.ipxe");
            assert_eq!(d["always_pxe"], true);
        } else {
            assert_eq!(d["operating_system"]["slug"], "flatcar_stable", "{address}");
        }
    }
    run(
        &w,
        &["plan", "large/cluster.toml", "--detailed-exitcode"],
        0,
    );
    let r = run(&w, &["destroy", "large/cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("13 destroyed"), "{}", r.stdout);
    assert!(lab.devices().is_empty(), "{}", brief(&lab.devices()));
    assert!(lab.ips().is_empty(), "{:?}", lab.ips());

    // An expired test cluster whose state is lost: reap finds it by its tags and deletes
    // it, and leaves the live cluster beside it alone.
    w.write(
        "old/cluster.toml",
        &dev_test(&lab, "old", 2, "expires_after = \"1s\""),
    );
    run(&w, &["apply", "old/cluster.toml", "--auto-approve"], 0);
    std::fs::remove_dir_all(w.path().join("old/.clusterform")).expect("rm state");
    w.write("live/cluster.toml", &dev_test(&lab, "live", 1, ""));
    run(&w, &["apply", "live/cluster.toml", "--auto-approve"], 0);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let r = run(
        &w,
        &[
            "reap",
            "live/cluster.toml",
            "--provider",
            "metal",
            "--auto-approve",
        ],
        0,
    );
    assert!(
        r.stdout.contains("4 object(s) of 1 cluster(s) deleted"),
        "{}",
        r.stdout
    );
    assert!(devices_of(&lab, "old").is_empty());
    assert_eq!(devices_of(&lab, "live").len(), 2);
    lab.assert_spec_clean();
}

#[test]
fn throttling_a_failed_device_a_rejection_and_a_missing_token() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    w.write("cluster.toml", &dev_test(&lab, "faults", 2, ""));

    // No token: a clear error before anything is made.
    let r: Run = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .env_remove("METAL_AUTH_TOKEN")
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("METAL_AUTH_TOKEN"), "{}", r.stderr);
    assert!(lab.devices().is_empty());

    // A token the API refuses: its 401 text, and what to check.
    let r: Run = w
        .command(&["plan", "cluster.toml"])
        .env("METAL_AUTH_TOKEN", "not-the-token")
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("Invalid authentication token"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("refused the token") && r.stderr.contains("METAL_AUTH_TOKEN"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not-the-token"), "{}", r.stderr);

    // A 422 carries the API's own errors.
    lab.control(
        "reject-next-create",
        json!({"errors": ["plan m3.large.x86 is not available in metro da"]}),
    );
    let r = run(
        &w,
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "1",
        ],
        1,
    );
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("plan m3.large.x86 is not available in metro da"),
        "{all}"
    );
    assert!(all.contains("422"), "{all}");

    // A burst of 429s: waited out (Retry-After honoured), nothing made twice. The most
    // verbose log and the plugin trace never hold the token.
    lab.control("throttle", json!({"n": 5, "retry_after": 1}));
    let trace = w.path().join("trace.jsonl");
    let r: Run = w
        .command(&["-vv", "apply", "cluster.toml", "--auto-approve"])
        .env("METAL_AUTH_TOKEN", TOKEN)
        .env(clusterform_plugin::TRACE_ENV, &trace)
        .output()
        .expect("run")
        .into();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("refreshed"),
        "the log says something: {}",
        r.stderr
    );
    for text in [&r.stdout, &r.stderr] {
        assert!(!text.contains(TOKEN));
    }
    assert!(lab.calls().values().sum::<u64>() > 0);
    assert_eq!(devices_of(&lab, "faults").len(), 3);
    w.write("cluster.toml", &dev_test(&lab, "faults", 3, ""));

    // A device that ends `failed`: an error, and the device is kept, then recorded and
    // destroyed, never dropped.
    lab.control("fail-next-create", Value::Null);
    let r = run(&w, &["apply", "cluster.toml", "--auto-approve"], 1);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("failed to provision"), "{all}");
    let failed: Vec<Value> = lab
        .devices()
        .into_iter()
        .filter(|d| d["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{}", brief(&lab.devices()));
    let r = run(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("adopted into the state"), "{}", r.stdout);
    let state = w.run_ok(&["show", "cluster.toml", "--json"], 0).stdout;
    assert!(
        state.contains(failed[0]["id"].as_str().expect("id")),
        "the failed device is in the state:\n{}\n{state}",
        r.stdout
    );
    run(&w, &["destroy", "cluster.toml", "--auto-approve"], 0);
    assert!(lab.devices().is_empty(), "{}", brief(&lab.devices()));
    assert_no_token_in_files(&w);
    lab.assert_spec_clean();
}

#[test]
fn a_refresh_of_500_devices_lists_pages_never_one_call_per_device() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    w.write("cluster.toml", &dev_test(&lab, "wide", 499, ""));
    run(
        &w,
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "64",
        ],
        0,
    );
    assert_eq!(devices_of(&lab, "wide").len(), 500);
    lab.reset_calls();
    run(&w, &["plan", "cluster.toml", "--detailed-exitcode"], 0);
    let calls = lab.calls();
    let lists = calls
        .get("GET /projects/{id}/devices")
        .copied()
        .unwrap_or(0);
    let gets = calls.get("GET /devices/{id}").copied().unwrap_or(0);
    println!("refresh of 500 devices: {lists} list pages, {gets} single-device reads: {calls:?}");
    // 500 devices are 5 pages of 100, after one read of a device to learn the cluster
    // tag (seen: 5 pages, 1 device read, 1 VLAN read).
    assert!(lists <= 6, "{calls:?}");
    assert!(gets <= 3, "{calls:?}");
    assert!(mutations(&calls).is_empty(), "{calls:?}");
    lab.assert_spec_clean();
}

#[test]
fn kill_9_during_a_metal_apply_never_loses_or_duplicates() {
    let Some(lab) = MetalLab::start() else {
        return;
    };
    let w = World::new();
    const WORKERS: usize = 10;
    w.write("k9/cluster.toml", &dev_test(&lab, "k9", WORKERS as u32, ""));
    kill_9_rounds(&lab, &w, "k9", WORKERS + 1, 0, 0x3E7A1);
    // Over metros: the reservations are made first and the configs rendered during the
    // apply; a run killed between the two finds the addresses in the state.
    let spread = central_services(&lab, "k9m")
        .replace("vxlan = 1234\n", "")
        .replace("first_address = \"10.10.0.101\"\n", "")
        .replacen("zones = [\"dc\"]", "zones = [\"da\", \"ch\", \"dc\"]", 1);
    w.write("k9m/cluster.toml", &spread);
    kill_9_rounds(&lab, &w, "k9m", 7, 3, 0x5EED);
    lab.assert_spec_clean();
}

/// Apply and destroy cluster `name` (`name/cluster.toml`) in turn, each run killed at a
/// random moment (at least 3 kills land) and followed by a run to the end: then exactly
/// `devices_wanted` devices and `reservations` IP reservations (none after a destroy),
/// each in the state, no duplicate.
fn kill_9_rounds(
    lab: &MetalLab,
    w: &World,
    name: &str,
    devices_wanted: usize,
    reservations: usize,
    seed: u64,
) {
    let file = format!("{name}/cluster.toml");
    let mut rng = clusterform_tests::TestRng::new(seed);
    let (mut kills, mut rounds) = (0, 0);
    while kills < 5 && rounds < 14 {
        let args: [&str; 3] = if rounds % 2 == 0 {
            ["apply", &file, "--auto-approve"]
        } else {
            ["destroy", &file, "--auto-approve"]
        };
        rounds += 1;
        let mut child = w
            .command(&args)
            .env("METAL_AUTH_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(150 + rng.below(900)));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("kill -9");
            kills += 1;
        }
        let _ = child.wait();
        let r = run(w, &args, 0);
        // A device whose delete was sent before the kill may still be deprovisioning: it
        // is going away on its own (the next run saw that, and sent no second delete).
        let mut devices = devices_of(lab, name);
        devices.retain(|_, d| d["state"] != "deprovisioning");
        let applied = args[0] == "apply";
        let expected = if applied { devices_wanted } else { 0 };
        assert_eq!(
            devices.len(),
            expected,
            "{name} round {rounds}: {}\n{}",
            brief(&lab.devices()),
            r.stdout
        );
        // No duplicate: one device per address, and every one is in the state.
        let all: Vec<Value> = lab
            .devices()
            .into_iter()
            .filter(|d| d["state"] != "deprovisioning")
            .filter(|d| {
                d["hostname"]
                    .as_str()
                    .is_some_and(|h| h.starts_with(&format!("{name}-")))
            })
            .collect();
        assert_eq!(
            all.len(),
            expected,
            "{name} round {rounds}: {}",
            brief(&all)
        );
        let cluster_tag = format!("clusterform:cluster={name}");
        let ips: Vec<Value> = lab
            .ips()
            .into_iter()
            .filter(|r| {
                r["tags"]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!(cluster_tag)))
            })
            .collect();
        let expected_ips = if applied { reservations } else { 0 };
        assert_eq!(ips.len(), expected_ips, "{name} round {rounds}: {ips:?}");
        let state = w.run_ok(&["show", &file, "--json"], 0).stdout;
        for id in devices
            .values()
            .map(|d| &d["id"])
            .chain(ips.iter().map(|r| &r["id"]))
        {
            let id = id.as_str().expect("id");
            assert!(state.contains(id), "{name} round {rounds}: orphan {id}");
        }
    }
    println!("metal kill -9 ({name}): {kills} kills in {rounds} rounds, 0 duplicates, 0 orphans");
    assert!(kills >= 3, "only {kills} kills landed in {rounds} rounds");
}
