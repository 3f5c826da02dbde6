//! The binary with `provider = "ec2"`: bad settings and a too-big Ignition config are
//! refused before any API call, naming what to fix; credentials never reach an output,
//! the state or a plan file.

use clusterform_tests::World;

use crate::support::{Ec2World, dev_test, unique};

fn run(w: &World, args: &[&str]) -> clusterform_tests::Run {
    w.command(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run")
        .into()
}

#[test]
fn bad_settings_name_the_setting() {
    let w = World::new();
    for (setting, want) in [
        ("regoin = \"eu-west-1\"", "unknown field `regoin`"),
        ("region = \"Ireland\"", "`region` = \"Ireland\""),
        (
            "ssh_cidrs = [\"everywhere\"]",
            "`ssh_cidrs` entry \"everywhere\"",
        ),
        ("endpoint = \"localhost:5000\"", "`endpoint`"),
        (
            "secret_access_key = \"x\"",
            "does not belong in the cluster file",
        ),
    ] {
        w.write(
            "cluster.toml",
            &dev_test(
                "bad",
                &format!("[provider.ec2]\n{setting}\n"),
                1,
                "t3.small",
            ),
        );
        for cmd in ["validate", "plan"] {
            let r = run(&w, &[cmd, "cluster.toml"]);
            assert_eq!(r.code, 1, "{cmd} {setting}: {}{}", r.stdout, r.stderr);
            assert!(
                r.stderr.contains("provider `ec2`"),
                "{cmd} {setting}: {}",
                r.stderr
            );
            assert!(r.stderr.contains(want), "{cmd} {setting}: {}", r.stderr);
            assert!(
                r.stderr.contains("[provider.ec2]"),
                "{cmd} {setting}: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn user_data_past_16_kb_is_refused_at_plan_time() {
    let w = World::new();
    // Letters that do not compress (the renderer gzips file contents when that is shorter).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let big: String = (0..30_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            c[(x % 62) as usize] as char
        })
        .collect();
    w.write(
        "big.bu",
        &format!(
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/big\n      contents:\n        inline: {big}\n"
        ),
    );
    let file = dev_test(
        "big",
        "[provider.ec2]\nregion = \"eu-west-1\"\n",
        1,
        "t3.small",
    )
    .replace("[workers]\n", "[workers]\nbutane = [\"big.bu\"]\n");
    w.write("cluster.toml", &file);
    for cmd in ["validate", "plan"] {
        let r = run(&w, &[cmd, "cluster.toml"]);
        assert_eq!(r.code, 1, "{cmd}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("`machine.workers[0]`"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("at most 16384 bytes"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("cluster.toml:"),
            "points into the file: {}",
            r.stderr
        );
    }
    // The central machine has no extras and fits: only the workers are reported.
    let r = run(&w, &["validate", "cluster.toml"]);
    assert!(!r.stderr.contains("machine.central[0]"), "{}", r.stderr);
}

#[test]
fn every_ec2_example_validates_and_renders() {
    let root = clusterform_tests::workspace_root();
    for bp in [
        "dev-vm",
        "small",
        "dev-test",
        "central-services",
        "large-scale",
    ] {
        let file = root.join("examples").join(bp).join("ec2.toml");
        let file = file.to_string_lossy();
        let w = World::new();
        let r = run(&w, &["validate", &file]);
        assert_eq!(r.code, 0, "{bp}: {}{}", r.stdout, r.stderr);
        let r = run(&w, &["render", &file]);
        assert_eq!(r.code, 0, "{bp}: {}{}", r.stdout, r.stderr);
    }
}

#[test]
fn credentials_never_reach_outputs_state_or_plans() {
    let url = crate::need_moto!();
    let w = Ec2World::new(&url);
    let name = unique("sec");
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 1, "t3.small"),
    );
    const SECRET: &str = "CANARY-SECRET-5d1f0e";
    const TOKEN: &str = "CANARY-TOKEN-9a7c3b";
    let mut outputs = String::new();
    for args in [
        vec!["apply", "cluster.toml", "--auto-approve", "-vv"],
        vec!["plan", "cluster.toml", "-vvv", "--out", "saved.cfplan"],
        vec!["show", "cluster.toml", "--json"],
        vec!["destroy", "cluster.toml", "--auto-approve", "-vv"],
    ] {
        let out = w
            .command(&args)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_SESSION_TOKEN", TOKEN)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push_str(&String::from_utf8_lossy(&out.stdout));
        outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        outputs.contains("DEBUG") || outputs.contains("TRACE"),
        "verbose logs ran"
    );
    for canary in [SECRET, TOKEN] {
        assert!(!outputs.contains(canary), "{canary} in the output");
        for entry in walk(w.world.path()) {
            let bytes = std::fs::read(&entry).expect("read");
            assert!(
                !bytes
                    .windows(canary.len())
                    .any(|win| win == canary.as_bytes()),
                "{canary} in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn console_prints_the_instances_console_output() {
    let url = crate::need_moto!();
    let w = Ec2World::new(&url);
    let name = unique("con");
    w.world.write(
        "cluster.toml",
        &dev_test(&name, &w.provider_table(""), 1, "t3.small"),
    );
    let out = w
        .command(&["apply", "cluster.toml", "--auto-approve"])
        .output()
        .expect("apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // GetConsoleOutput, decoded (moto answers a canned Linux boot log).
    let out = w
        .command(&["console", "cluster.toml", "machine.workers[0]"])
        .output()
        .expect("console");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Linux version"), "{text}");
    let out = w
        .command(&["destroy", "cluster.toml", "--auto-approve"])
        .output()
        .expect("destroy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
