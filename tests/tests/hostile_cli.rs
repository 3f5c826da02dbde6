//! The command line in scripts: usage errors exit 1 (never 2, which means "changes" or
//! "drift"), a closed stdout ends quietly, apply and destroy print one line per operation
//! when stdout is not a terminal, text from input never reaches the terminal with raw
//! control characters, logs have no colour when asked, and a read-only state folder says
//! what to do. Each table runs the real binary on the sim provider.

use std::io::Read;
use std::process::{Command, Stdio};

use clusterform_tests::{Run, World, bin, dev_test, is_root};

/// `s` holds a control character other than newline, tab and (from a pty) carriage
/// return: returns it with its position.
fn raw_control(s: &str) -> Option<(usize, char)> {
    s.char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
}

fn assert_no_raw_control(what: &str, r: &Run) {
    for (stream, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if let Some((at, c)) = raw_control(text) {
            panic!(
                "{what}: {stream} holds a raw {c:?} at byte {at}\n--- stdout\n{}\n--- stderr\n{}",
                r.stdout, r.stderr
            );
        }
    }
}

fn no_panic(what: &str, r: &Run) {
    let err = r.stderr.to_lowercase();
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("broken pipe"),
        "{what}: {r:?}"
    );
}

#[test]
fn usage_errors_exit_1_with_a_usage_message() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let cases: &[(&str, &[&str])] = &[
        ("unknown flag on plan", &["plan", "--no-such-flag"]),
        ("unknown flag on apply", &["apply", "cluster.toml", "--yes"]),
        ("unknown flag on drift", &["drift", "--detailed-exitcode"]),
        ("unknown global flag", &["--frobnicate", "plan"]),
        ("unknown short flag", &["plan", "-x"]),
        ("parallelism zero", &["apply", "--parallelism", "0"]),
        (
            "parallelism not a number",
            &["destroy", "--parallelism", "many"],
        ),
        (
            "lock timeout not a duration",
            &["plan", "--lock-timeout", "soon"],
        ),
        ("drift interval too short", &["drift", "--every", "10ms"]),
        ("graph format unknown", &["graph", "--format", "jpeg"]),
        ("flag missing its value", &["destroy", "--target"]),
        ("json with raw", &["output", "--json", "--raw"]),
        (
            "refresh-only with destroy",
            &["plan", "--destroy", "--refresh-only"],
        ),
        ("state show without address", &["state", "show"]),
        ("import without id", &["import"]),
        ("reap without provider", &["reap"]),
        ("sim delete without id", &["sim", "delete"]),
        ("unknown command", &["frobnicate"]),
        ("unknown state command", &["state", "frob"]),
        ("no command", &[]),
    ];
    let mut failures = Vec::new();
    for (name, args) in cases {
        let r = w.run(args);
        // clap's message: what is wrong, and the usage line or where to find it.
        let usage = (r.stderr.contains("error:") || r.stderr.contains("Usage:"))
            && (r.stderr.contains("Usage:") || r.stderr.contains("try '--help'"));
        if r.code != 1 || !usage || !r.stdout.is_empty() || r.stderr.contains("panicked") {
            failures.push(format!(
                "{name}: clusterform {args:?} exited {} (want 1 and a usage message on stderr)\n--- stdout\n{}\n--- stderr\n{}",
                r.code, r.stdout, r.stderr
            ));
        }
    }
    // Help and version are no errors: stdout, exit 0.
    for args in [
        &["--help"][..],
        &["-h"],
        &["plan", "--help"],
        &["state", "--help"],
        &["help", "apply"],
        &["--version"],
        &["-V"],
    ] {
        let r = w.run(args);
        if r.code != 0 || r.stdout.is_empty() || !r.stderr.is_empty() {
            failures.push(format!(
                "clusterform {args:?}: want exit 0 and stdout: {r:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Spawn `clusterform args` with stdout a pipe, read `keep` bytes of it (0: none) and close
/// it, then wait; RUST_BACKTRACE=1 as in CI.
fn with_closed_stdout(w: &World, args: &[&str], keep: usize) -> Run {
    let mut child = w
        .command(args)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut got = vec![0u8; keep];
    if keep > 0 {
        stdout.read_exact(&mut got).expect("read the first bytes");
    }
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&got).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_closed_stdout_ends_quietly_with_the_commands_own_exit_code() {
    let w = World::new();
    // A plan of ~150 machines is far more than a pipe holds.
    w.write("big/cluster.toml", &dev_test("big", 150, "s", ""));
    w.write("cluster.toml", &dev_test("demo", 3, "s", ""));
    // `plan | head -c 10`.
    let r = with_closed_stdout(&w, &["plan", "big/cluster.toml"], 10);
    no_panic("plan | head -c 10", &r);
    assert_eq!(r.code, 0, "{r:?}");
    let r = with_closed_stdout(&w, &["plan", "big/cluster.toml", "--detailed-exitcode"], 10);
    no_panic("plan --detailed-exitcode | head -c 10", &r);
    assert_eq!(r.code, 2, "changes are still told: {r:?}");
    // An apply whose stdout is gone from the start finishes and records everything.
    let r = with_closed_stdout(&w, &["apply", "cluster.toml", "--auto-approve"], 0);
    no_panic("apply | true", &r);
    assert_eq!(r.code, 0, "{r:?}");
    w.assert_state_matches_cloud("cluster.toml");
    assert_eq!(w.objects().len(), 5);
    for args in [
        &["state", "list", "cluster.toml"][..],
        &["state", "show", "cluster.toml", "machine.workers[0]"],
        &["show", "cluster.toml"],
        &["show", "cluster.toml", "--json"],
        &["plan", "cluster.toml"],
        &["graph", "cluster.toml"],
        &["render", "cluster.toml"],
        &["validate", "cluster.toml"],
        &["drift", "cluster.toml"],
        &["sim", "list"],
    ] {
        let r = with_closed_stdout(&w, args, 0);
        no_panic(&format!("{args:?} | true"), &r);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
    }
}

fn machine_addresses(w: &World) -> Vec<String> {
    w.state_addresses("cluster.toml")
        .into_iter()
        .filter(|a| a.starts_with("machine."))
        .collect()
}

#[test]
fn apply_and_destroy_print_a_line_per_operation_when_stdout_is_not_a_terminal() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 3, "s", ""));
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    let machines = machine_addresses(&w);
    assert_eq!(machines.len(), 4, "{machines:?}");
    let ids: std::collections::BTreeMap<String, String> =
        w.state_ids("cluster.toml").into_iter().collect();
    for a in machines
        .iter()
        .chain(std::iter::once(&"network.main".to_string()))
    {
        assert!(
            r.stdout.contains(&format!("{a}: Creating...\n")),
            "{a}: {}",
            r.stdout
        );
        let done = format!("{a}: Creation complete after ");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&done))
            .unwrap_or_else(|| panic!("{a}: {}", r.stdout));
        assert!(line.ends_with(&format!("s [id={}]", ids[a])), "{line}");
    }
    // Each operation starts before it ends.
    let pos = |s: &str| r.stdout.find(s).unwrap_or(usize::MAX);
    assert!(pos("machine.workers[0]: Creating...") < pos("machine.workers[0]: Creation complete"));

    let r = w.run_ok(&["destroy", "cluster.toml", "--auto-approve"], 0);
    for a in &machines {
        for want in [
            format!("{a}: Destroying... [id={}]\n", ids[a]),
            format!("{a}: Destruction complete after "),
        ] {
            assert!(r.stdout.contains(&want), "{want}: {}", r.stdout);
        }
    }

    // A failure names the operation, its time and the error.
    w.write(
        "cluster.toml",
        &dev_test("demo", 2, "s", "fail_on = [\"machine.workers[1]\"]"),
    );
    let r = w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 1);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("machine.workers[1]: Creation failed after "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(line.contains("s: "), "the error follows: {line}");
}

/// A Butane snippet whose content, file path and unit name hold ESC, BEL and C1 codes.
const HOSTILE_BU: &str = "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: \"/opt/\\e]0;pwned\\a\\e[2J\\x9b31m\"\n      contents:\n        inline: \"\\e[31mred\\e[0m\"\nsystemd:\n  units:\n    - name: \"x\\e[5m.service\"\n      enabled: true\n      contents: \"[Service]\\nExecStart=/bin/true\\n\"\n";

const BU_CLUSTER: &str = "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"2cpu-4gb\"\nbutane = [\"x.bu\"]\n\n[workers]\ncount = 1\nsize = \"s\"\n";

/// A case of text from input with control characters: (name, setup, command).
type Hostile = (&'static str, fn(&World), Vec<&'static str>);

/// The cases of text from input with control characters.
fn hostile_inputs() -> Vec<Hostile> {
    vec![
        (
            "cluster name with ESC (escaped in TOML)",
            |w| named(w, "demo\\u001b]0;pwned\\u0007\\u001b[2J\\u009b"),
            vec!["plan", "cluster.toml"],
        ),
        (
            "raw ESC and BEL bytes in the cluster file",
            |w| named(w, "demo\u{1b}[2J\u{7}\u{9b}"),
            vec!["validate", "cluster.toml"],
        ),
        (
            "Butane content, path and unit name with ESC: the plan",
            |w| {
                w.write("cluster.toml", BU_CLUSTER);
                w.write("x.bu", HOSTILE_BU);
            },
            vec!["plan", "cluster.toml"],
        ),
        (
            "Butane paths and unit names with ESC in the plan's config diff",
            |w| {
                w.write("cluster.toml", BU_CLUSTER);
                w.write(
                    "x.bu",
                    "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /opt/calm\n      contents:\n        inline: calm\n",
                );
                w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
                w.write("x.bu", HOSTILE_BU);
            },
            // The only etcd member is replaced: the plan is shown only with this flag.
            vec!["plan", "cluster.toml", "--allow-data-loss"],
        ),
        (
            "the Ignition config with ESC and C1 in it",
            |w| {
                w.write("cluster.toml", BU_CLUSTER);
                w.write("x.bu", HOSTILE_BU);
            },
            vec!["render", "cluster.toml", "--machine", "machine.central[0]"],
        ),
        (
            "Butane error quoting a key with ESC",
            |w| {
                w.write("cluster.toml", BU_CLUSTER);
                w.write(
                    "x.bu",
                    "variant: flatcar\nversion: 1.0.0\n\"\\e]0;pwned\\a\\e[2J\": 1\n",
                );
            },
            vec!["validate", "cluster.toml"],
        ),
        (
            "a --target quoting ESC",
            |w| w.write_default(),
            vec!["destroy", "cluster.toml", "--target", "machine.\u{1b}[2Jx"],
        ),
        (
            "a cluster file path with ESC",
            |w| w.write_default(),
            vec!["validate", "x\u{1b}]0;pwned\u{7}.toml"],
        ),
        (
            "an address with C1 codes",
            |w| w.write_default(),
            vec!["state", "show", "cluster.toml", "machine.w\u{9b}2J"],
        ),
    ]
}

/// A one-worker cluster file whose name is written as `name` (TOML escapes and all).
fn named(w: &World, name: &str) {
    w.write(
        "cluster.toml",
        &dev_test("demo", 1, "s", "").replace("name = \"demo\"", &format!("name = \"{name}\"")),
    );
}

trait WriteDefault {
    fn write_default(&self);
}

impl WriteDefault for World {
    fn write_default(&self) {
        self.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    }
}

#[test]
fn control_characters_from_input_never_reach_the_output_raw() {
    for (name, setup, args) in hostile_inputs() {
        let w = World::new();
        setup(&w);
        let r = w.run(&args);
        no_panic(name, &r);
        assert!(r.code == 0 || r.code == 1, "{name}: {r:?}");
        assert_no_raw_control(name, &r);
    }
}

/// `clusterform args` on a pseudo-terminal (util-linux `script`), so colour is on: the
/// output is stdout and stderr merged. `None` when `script` is not there.
fn on_terminal(w: &World, args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = quote(&bin().display().to_string());
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"])
        .current_dir(w.path())
        .env("CLUSTERFORM_SIM_DIR", w.sim_dir())
        .env_remove("NO_COLOR")
        .env_remove("CLUSTERFORM_LOG")
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().ok()?;
    if !out.status.success() && out.stdout.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `s` without colour sequences (`ESC [ digits ; ... m`).
fn without_colours(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\u{1b}[") {
        out.push_str(&rest[..i]);
        let body = &rest[i + 2..];
        let n = body
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        if body.as_bytes().get(n) == Some(&b'm') {
            rest = &body[n + 1..];
        } else {
            out.push_str("\u{1b}[");
            rest = body;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn on_a_terminal_input_is_escaped_between_the_colours() {
    let mut ran = 0;
    for (name, setup, args) in hostile_inputs() {
        let w = World::new();
        setup(&w);
        let Some(text) = on_terminal(&w, &args, &[]) else {
            println!("skipping: util-linux `script` is not available");
            return;
        };
        let plain = without_colours(&text);
        if let Some((at, c)) = raw_control(&plain) {
            panic!("{name}: a raw {c:?} at byte {at} (colours removed):\n{plain}");
        }
        assert!(!text.contains("panicked"), "{name}: {text}");
        ran += 1;
    }
    assert!(ran > 0);
}

#[test]
fn logs_have_no_colour_with_no_color_or_off_a_terminal() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        (
            "-v --no-color",
            &["-v", "--no-color", "plan", "cluster.toml"],
            None,
        ),
        (
            "-vv --no-color",
            &["plan", "cluster.toml", "-vv", "--no-color"],
            None,
        ),
        ("NO_COLOR=1 -v", &["-v", "plan", "cluster.toml"], Some("1")),
        (
            "NO_COLOR=yes -vv",
            &["-vv", "plan", "cluster.toml"],
            Some("yes"),
        ),
        ("-v, stderr a pipe", &["-v", "plan", "cluster.toml"], None),
    ];
    for (name, args, no_color) in cases {
        let mut c = w.command(args);
        match no_color {
            Some(v) => c.env("NO_COLOR", v),
            None => c.env_remove("NO_COLOR"),
        };
        let r: Run = c.output().expect("run").into();
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(r.stderr.contains("INFO"), "{name}: logs are written: {r:?}");
        assert!(!r.stderr.contains("\u{1b}["), "{name}: {:?}", r.stderr);
        assert!(!r.stdout.contains("\u{1b}["), "{name}: {:?}", r.stdout);
    }
    // On a terminal, --no-color and NO_COLOR turn the logs' colours off too.
    for (name, args, env) in [
        (
            "pty -v --no-color",
            &["-v", "--no-color", "plan", "cluster.toml"][..],
            &[][..],
        ),
        (
            "pty NO_COLOR=1 -v",
            &["-v", "plan", "cluster.toml"],
            &[("NO_COLOR", "1")],
        ),
    ] {
        let Some(text) = on_terminal(&w, args, env) else {
            println!("skipping {name}: util-linux `script` is not available");
            continue;
        };
        assert!(text.contains("INFO"), "{name}: {text}");
        assert!(!text.contains('\u{1b}'), "{name}: {text:?}");
    }
}

/// `setpriv` arguments that take away root's power to write anywhere (CAP_DAC_OVERRIDE
/// and friends), or `None` when that does not work here.
fn without_root_override() -> Option<Vec<String>> {
    let args: Vec<String> = [
        "--bounding-set=-dac_override,-dac_read_search,-fowner",
        "--",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let probe = tempfile::tempdir().ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(probe.path(), std::fs::Permissions::from_mode(0o500)).ok()?;
    }
    let status = Command::new("setpriv")
        .args(&args)
        .arg("touch")
        .arg(probe.path().join("x"))
        .stderr(Stdio::null())
        .status()
        .ok()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(probe.path(), std::fs::Permissions::from_mode(0o700));
    }
    // The write must have been refused.
    (!status.success()).then_some(args)
}

#[test]
fn a_read_only_state_folder_says_what_to_do() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "s", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w.write("cluster.toml", &dev_test("demo", 2, "s", ""));
    let wrap = if is_root() {
        match without_root_override() {
            Some(a) => Some(a),
            None => {
                println!(
                    "skipping: running as root, and setpriv cannot drop CAP_DAC_OVERRIDE here, so a folder of mode 0500 is writable anyway"
                );
                return;
            }
        }
    } else {
        None
    };
    let dir = w.path().join(".clusterform");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let mut failures = Vec::new();
    // (command, exit code): reading works, writing says what to do.
    for (args, code) in [
        (&["apply", "cluster.toml", "--auto-approve"][..], 1),
        (&["destroy", "cluster.toml", "--auto-approve"], 1),
        (&["state", "rm", "cluster.toml", "machine.workers[0]"], 1),
        (&["plan", "cluster.toml"], 0),
        (&["state", "list", "cluster.toml"], 0),
    ] {
        let mut c = match &wrap {
            Some(pre) => {
                let mut c = Command::new("setpriv");
                c.args(pre).arg(bin()).args(args);
                c
            }
            None => Command::new(bin()),
        };
        if wrap.is_none() {
            c.args(args);
        }
        c.current_dir(w.path())
            .env("CLUSTERFORM_SIM_DIR", w.sim_dir())
            .env("XDG_CONFIG_HOME", w.path().join(".config"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        let r: Run = c.output().expect("run").into();
        let ok = r.code == code
            && !r.stderr.contains("internal error")
            && !r.stderr.contains("panicked")
            && (code == 0 || (r.stderr.contains("help:") && r.stderr.contains("chmod u+rwx")));
        if !ok {
            failures.push(format!("{args:?}: {r:?}"));
        }
    }
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Nothing was changed at the provider.
    assert_eq!(w.objects().len(), 3);
}
