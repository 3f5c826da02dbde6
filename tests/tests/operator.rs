//! What an operator asks after `apply`: the outputs (snapshots of `output` and its
//! `--json`, the list after apply), `ssh-config` (snapshot, with the jump host), and
//! `ssh` running the system `ssh` (a fake one first on PATH records its arguments).

use clusterform_tests::{World, dev_test};

/// A dev-test cluster with two outputs of its own, applied one operation at a time so
/// that ids are the same on every run.
fn applied(extra: &str) -> (World, String) {
    let w = World::new();
    let file = format!(
        "{}{extra}\n[output.first_worker]\nvalue = \"machine.workers[0].address\"\ndescription = \"the first worker's address\"\n\n[output.worker_ids]\nvalue = \"machine.workers.id\"\n",
        dev_test("demo", 2, "2cpu-4gb", "")
    );
    w.write("cluster.toml", &file);
    let r = w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--parallelism",
            "1",
        ],
        0,
    );
    let outputs = r
        .stdout
        .split("\nOutputs:\n")
        .nth(1)
        .expect("apply lists the outputs")
        .to_string();
    (w, outputs)
}

#[test]
fn outputs_after_apply_and_from_the_output_command() {
    let (w, after_apply) = applied("");
    insta::assert_snapshot!("outputs_after_apply", after_apply);
    insta::assert_snapshot!("output", w.run_ok(&["output", "cluster.toml"], 0).stdout);
    let json: serde_json::Value =
        serde_json::from_str(&w.run_ok(&["output", "cluster.toml", "--json"], 0).stdout)
            .expect("JSON");
    insta::assert_snapshot!(
        "output_json",
        serde_json::to_string_pretty(&json).expect("json")
    );
    assert_eq!(
        w.run_ok(&["output", "cluster.toml", "first_worker", "--raw"], 0)
            .stdout,
        "10.0.0.10\n"
    );
    assert_eq!(
        w.run_ok(&["output", "cluster.toml", "etcd_endpoints", "--raw"], 0)
            .stdout,
        "https://10.0.0.101:2379\n"
    );
    let r = w.run(&["output", "cluster.toml", "machines", "--raw"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--json"), "{}", r.stderr);
    let r = w.run(&["output", "cluster.toml", "nothing"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("first_worker"),
        "names the outputs there are: {}",
        r.stderr
    );
    // Nothing applied yet: no outputs, and it says so.
    let empty = World::new();
    empty.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let r = empty.run_ok(&["output", "cluster.toml"], 0);
    assert!(r.stdout.contains("No outputs"), "{}", r.stdout);
}

#[test]
fn ssh_config_lists_every_machine_through_the_jump_host() {
    let (w, _) = applied("");
    insta::assert_snapshot!(
        "ssh_config",
        w.run_ok(&["ssh-config", "cluster.toml"], 0).stdout
    );
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    w.write(
        "cluster.toml",
        &text.replace(
            "[central]\n",
            "[central]\netcd_via = \"ssh://ops@bastion.example.com:2222\"\n",
        ),
    );
    let r = w.run_ok(&["ssh-config", "cluster.toml"], 0);
    assert_eq!(
        r.stdout
            .matches("    ProxyJump ops@bastion.example.com:2222\n")
            .count(),
        3,
        "{}",
        r.stdout
    );
}

#[test]
fn ssh_runs_the_system_ssh_as_core_with_the_command() {
    let (w, _) = applied("");
    let bin = w.path().join("fakebin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let record = w.path().join("ssh-args");
    w.write(
        "fakebin/ssh",
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {}\nexit 3\n",
            record.display()
        ),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("ssh"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        w.command(args)
            .env("PATH", &path)
            .output()
            .expect("run clusterform ssh")
    };
    let o = run(&[
        "ssh",
        "cluster.toml",
        "machine.workers[1]",
        "--",
        "systemctl",
        "status",
        "etcd-member",
    ]);
    assert_eq!(o.status.code(), Some(3), "ssh's exit code is passed on");
    assert_eq!(
        std::fs::read_to_string(&record).expect("args"),
        "core@10.0.0.11\nsystemctl\nstatus\netcd-member\n"
    );
    // By name, through the jump host.
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    w.write(
        "cluster.toml",
        &text.replace(
            "[central]\n",
            "[central]\netcd_via = \"ssh://ops@bastion.example.com\"\n",
        ),
    );
    run(&["ssh", "cluster.toml", "demo-central-0"]);
    assert_eq!(
        std::fs::read_to_string(&record).expect("args"),
        "-J\nops@bastion.example.com\ncore@10.0.0.101\n"
    );
    let o = run(&["ssh", "cluster.toml", "machine.nope[0]"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no machine"));
}

#[test]
fn target_replace_and_apply_destroy_aim_at_some_resources() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 3, "s", ""));
    // A target and what it depends on: the network and the etcd machine, not the other
    // workers.
    let r = w.run_ok(
        &["plan", "cluster.toml", "--target", "machine.workers[1]"],
        0,
    );
    assert!(r.stdout.contains("3 to add"), "{}", r.stdout);
    assert!(r.stdout.contains("machine.workers[1]") && !r.stdout.contains("machine.workers[0]"));
    assert!(
        r.stderr.contains("--target"),
        "says the plan is partial: {}",
        r.stderr
    );
    let r = w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "-target=machine.workers[1]",
        ],
        0,
    );
    assert!(r.stdout.contains("3 added"), "{}", r.stdout);
    assert_eq!(
        w.run_ok(&["state", "list", "cluster.toml"], 0).stdout,
        "machine.central[0]\nmachine.workers[1]\nnetwork.main\n"
    );
    let r = w.run_ok(&["plan", "cluster.toml"], 0);
    assert!(
        r.stdout.contains("2 to add"),
        "the rest waits: {}",
        r.stdout
    );
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);

    // Filters and every instance of a counted resource.
    assert_eq!(
        w.run_ok(&["state", "list", "cluster.toml", "machine.workers"], 0)
            .stdout,
        "machine.workers[0]\nmachine.workers[1]\nmachine.workers[2]\n"
    );
    let shown = w
        .run_ok(&["state", "show", "cluster.toml", "machine.workers"], 0)
        .stdout;
    assert_eq!(shown.matches("# machine.workers[").count(), 3, "{shown}");

    // --replace works for any resource, not only etcd members.
    let r = w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--auto-approve",
            "--replace",
            "machine.workers[2]",
        ],
        0,
    );
    assert!(
        r.stdout.contains("1 added, 0 changed, 1 destroyed"),
        "{}",
        r.stdout
    );

    // apply --destroy with a target: it and what depends on it.
    let r = w.run_ok(
        &[
            "apply",
            "cluster.toml",
            "--destroy",
            "--target",
            "machine.workers[0]",
            "--auto-approve",
        ],
        0,
    );
    assert!(r.stdout.contains("1 destroyed"), "{}", r.stdout);
    assert_eq!(w.state_addresses("cluster.toml").len(), 4);
    let r = w.run_ok(&["apply", "cluster.toml", "--destroy", "--auto-approve"], 0);
    assert!(r.stdout.contains("4 destroyed"), "{}", r.stdout);
    assert!(w.objects().is_empty());
    let r = w.run(&["plan", "cluster.toml", "--target", "machine.nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("selects nothing"), "{}", r.stderr);
}

#[test]
fn graph_colours_roles_and_marks_planned_actions_in_svg() {
    let have_dot = std::process::Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_dot {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: the graph test needs Graphviz's dot (apt-get install graphviz)"
        );
        eprintln!("note: skipped: Graphviz's `dot` is not installed");
        return;
    }
    let (w, _) = applied("");
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    // One more worker: a planned create.
    w.write("cluster.toml", &text.replace("count = 2", "count = 3"));
    let r = w.run_ok(&["graph", "cluster.toml", "--format", "svg", "--plan"], 0);
    let svg = r.stdout;
    assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg}");
    // Roles: the network blue, the etcd member orange, workers green.
    for (node, fill) in [
        ("network.main", "#cfe2ff"),
        ("machine.central[0]", "#ffd8a8"),
        ("machine.workers[0]", "#d3f9d8"),
    ] {
        let at = svg
            .find(&format!("<title>{node}</title>"))
            .unwrap_or_else(|| panic!("{node} in {svg}"));
        assert!(
            svg[at..]
                .split("</g>")
                .next()
                .is_some_and(|g| g.contains(fill)),
            "{node} is {fill}"
        );
    }
    // The planned create is marked.
    assert!(svg.contains("+ machine.workers[2]"), "{svg}");
    assert!(svg.contains("#2b8a3e"), "the create's green border");
    assert!(
        !svg.contains("+ machine.workers[0]"),
        "unchanged machines carry no mark"
    );
    // PNG to a file.
    let o = w
        .command(&["graph", "cluster.toml", "--format", "png"])
        .output()
        .expect("png");
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.starts_with(b"\x89PNG"), "a PNG");
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            clusterform_tests::workspace_root().join("docs/events.schema.json"),
        )
        .expect("docs/events.schema.json"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
            v
        })
        .collect()
}

fn of_type<'a>(evs: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    evs.iter().filter(|e| e["type"] == t).collect()
}

fn addresses(evs: &[&serde_json::Value]) -> Vec<String> {
    let mut a: Vec<String> = evs
        .iter()
        .map(|e| e["address"].as_str().expect("address").to_string())
        .collect();
    a.sort();
    a
}

#[test]
fn the_event_stream_of_an_apply_with_one_injected_failure() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 2, "s", r#"fail_on = ["machine.central[0]"]"#),
    );
    let r = w.run(&["apply", "cluster.toml", "--auto-approve", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let evs = events(&r.stdout);
    assert_eq!(
        addresses(&of_type(&evs, "planned")),
        [
            "machine.central[0]",
            "machine.workers[0]",
            "machine.workers[1]",
            "network.main"
        ]
    );
    assert_eq!(
        addresses(&of_type(&evs, "started")),
        ["machine.central[0]", "network.main"]
    );
    assert_eq!(addresses(&of_type(&evs, "finished")), ["network.main"]);
    let failed = of_type(&evs, "failed");
    assert_eq!(addresses(&failed), ["machine.central[0]"]);
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected failure"))
    );
    let skipped = of_type(&evs, "skipped");
    assert_eq!(
        addresses(&skipped),
        ["machine.workers[0]", "machine.workers[1]"]
    );
    assert!(
        skipped
            .iter()
            .all(|e| e["reason"] == "machine.central[0] failed")
    );
    let last = evs.last().expect("events");
    assert_eq!(last["type"], "summary");
    assert_eq!(last["success"], false);
    assert_eq!(
        (
            last["added"].as_u64(),
            last["failed"].as_u64(),
            last["skipped"].as_u64()
        ),
        (Some(1), Some(1), Some(2))
    );
    assert_eq!(of_type(&evs, "summary").len(), 1);
    // Every started call ends once, finished or failed, after it started.
    for s in of_type(&evs, "started") {
        let ends = evs
            .iter()
            .filter(|e| {
                (e["type"] == "finished" || e["type"] == "failed") && e["address"] == s["address"]
            })
            .count();
        assert_eq!(ends, 1, "{s}");
    }
}

#[test]
fn event_streams_of_a_clean_apply_and_destroy_and_no_questions() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let r = w.run(&["apply", "cluster.toml", "--json"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.is_empty() && r.stderr.contains("--auto-approve"),
        "{r:?}"
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve", "--json"], 0);
    let evs = events(&r.stdout);
    assert_eq!(of_type(&evs, "planned").len(), 3);
    assert_eq!(of_type(&evs, "finished").len(), 3);
    assert!(
        of_type(&evs, "finished")
            .iter()
            .all(|e| e["id"].is_string())
    );
    let last = evs.last().expect("summary");
    assert_eq!(
        (last["success"].as_bool(), last["added"].as_u64()),
        (Some(true), Some(3))
    );
    // Nothing to do: only the summary.
    let evs = events(
        &w.run_ok(&["apply", "cluster.toml", "--auto-approve", "--json"], 0)
            .stdout,
    );
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["type"], "summary");
    let evs = events(
        &w.run_ok(&["destroy", "cluster.toml", "--auto-approve", "--json"], 0)
            .stdout,
    );
    assert_eq!(
        of_type(&evs, "planned")
            .iter()
            .filter(|e| e["action"] == "delete")
            .count(),
        3
    );
    let last = evs.last().expect("summary");
    assert_eq!(
        (last["operation"].as_str(), last["destroyed"].as_u64()),
        (Some("destroy"), Some(3))
    );
}

#[test]
fn event_stream_snapshot_one_operation_at_a_time() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 2, "s", r#"fail_on = ["machine.workers[1]"]"#),
    );
    let r = w.run(&[
        "apply",
        "cluster.toml",
        "--auto-approve",
        "--json",
        "--parallelism",
        "1",
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    let lines: Vec<String> = events(&r.stdout)
        .into_iter()
        .map(|mut e| {
            e["timestamp"] = serde_json::json!("T");
            if e.get("elapsed_ms").is_some() {
                e["elapsed_ms"] = serde_json::json!(0);
            }
            serde_json::to_string(&e).expect("json")
        })
        .collect();
    insta::assert_snapshot!("event_stream", lines.join("\n"));
}

#[test]
fn console_prints_the_sims_boot_log() {
    let (w, _) = applied("");
    let r = w.run_ok(&["console", "cluster.toml", "demo-workers-1"], 0);
    assert!(
        r.stdout.contains("simulated boot of m-000003"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("demo-workers-1 login:"), "{}", r.stdout);
    assert!(r.stdout.contains("ignition"), "{}", r.stdout);
    let r = w.run(&["console", "cluster.toml", "network.main"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no machine"), "{}", r.stderr);
}

fn valid(schema_file: &str, text: &str) -> serde_json::Value {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            clusterform_tests::workspace_root()
                .join("docs")
                .join(schema_file),
        )
        .expect("schema file"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{schema_file}: {errors:?}\n{text}");
    v
}

#[test]
fn plan_and_show_json_follow_their_documented_schemas() {
    let (w, _) = applied("");
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    w.write("cluster.toml", &text.replace("count = 2", "count = 3"));
    let plan = valid(
        "plan.schema.json",
        &w.run_ok(&["plan", "cluster.toml", "--json"], 0).stdout,
    );
    assert_eq!(plan["summary"]["add"], 1);
    assert_eq!(
        plan["resource_changes"][0]["after"]["user_data"],
        "(sensitive)"
    );
    w.run_ok(&["plan", "cluster.toml", "--out", "next.plan"], 0);
    let saved = valid(
        "plan.schema.json",
        &w.run_ok(&["show", "next.plan", "--json"], 0).stdout,
    );
    assert_eq!(saved["resource_changes"], plan["resource_changes"]);
    let state = valid(
        "state.schema.json",
        &w.run_ok(&["show", "cluster.toml", "--json"], 0).stdout,
    );
    assert_eq!(state["resources"].as_array().map(Vec::len), Some(4));
    let destroy = valid(
        "plan.schema.json",
        &w.run_ok(&["plan", "cluster.toml", "--destroy", "--json"], 0)
            .stdout,
    );
    assert_eq!(destroy["destroy"], true);
}

#[test]
fn state_show_raw_gives_the_user_data_byte_for_byte() {
    let (w, _) = applied("");
    let raw = w
        .command(&[
            "state",
            "show",
            "cluster.toml",
            "machine.workers[0]",
            "--raw",
        ])
        .output()
        .expect("run");
    assert_eq!(
        raw.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    w.run_ok(&["render", "cluster.toml", "--out", "rendered"], 0);
    let want = std::fs::read(w.path().join("rendered/machine.workers[0].ign")).expect("rendered");
    assert_eq!(
        raw.stdout, want,
        "what the state holds is what was rendered"
    );
    // The summary otherwise, and one instance only.
    let r = w.run_ok(&["state", "show", "cluster.toml", "machine.workers[0]"], 0);
    assert!(
        r.stdout.contains("user_data") && r.stdout.contains("(sensitive"),
        "{}",
        r.stdout
    );
    let r = w.run(&["state", "show", "cluster.toml", "machine.workers", "--raw"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("prints one"), "{}", r.stderr);
}

#[test]
fn a_machine_that_does_not_come_up_shows_its_console_and_is_adopted_next_run() {
    let w = World::new();
    w.write(
        "cluster.toml",
        &dev_test("demo", 2, "s", r#"boot_fail_on = ["machine.workers[1]"]"#),
    );
    let r = w.run(&["apply", "cluster.toml", "--auto-approve"]);
    assert_eq!(r.code, 1, "{r:?}");
    let at = r
        .stdout
        .find("Console output of machine.workers[1]")
        .unwrap_or_else(|| panic!("no console output: {}", r.stdout));
    assert!(
        r.stdout[at..].contains("Ignition has failed"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("Console output of machine.workers[0]"),
        "only the failed one"
    );
    // The machine was made: the next run adopts it, nothing is made twice.
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    assert!(r.stdout.contains("adopted"), "{}", r.stdout);
    w.assert_state_matches_cloud("cluster.toml");
    assert_eq!(w.objects().len(), 4);
}

#[test]
fn show_snapshots_of_the_state_and_of_a_saved_plan() {
    let (w, _) = applied("");
    insta::assert_snapshot!(
        "show_state",
        w.run_ok(&["state", "show", "cluster.toml", "machine.workers[0]"], 0)
            .stdout
    );
    let text = std::fs::read_to_string(w.path().join("cluster.toml")).expect("read");
    w.write("cluster.toml", &text.replace("count = 2", "count = 3"));
    w.run_ok(&["plan", "cluster.toml", "--out", "next.plan"], 0);
    insta::assert_snapshot!("show_plan", w.run_ok(&["show", "next.plan"], 0).stdout);
}
