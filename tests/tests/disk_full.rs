//! The disk holding the state fills up in the middle of an apply: the run fails with a
//! clear error naming the state, what the state held before survives, and once there is
//! space again a rerun adopts what the failed run made and converges.
//!
//! The state folder is a small tmpfs mounted in a private mount namespace (`unshare -rm`,
//! or `unshare -m` as root). Where neither works the test is skipped with a note, except
//! under `CI=true`, where it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clusterform_tests::{World, bin, dev_test};

/// The tmpfs: room for the state of a few hundred machines and its backup.
const TMPFS_KB: u32 = 4096;

fn cluster(workers: u32) -> String {
    // No TLS: the state then holds no secret, so no key file (kept in the user's config
    // folder, which the namespace's commands do not share) is needed to read it.
    format!(
        "{}\n[state]\npath = \"st\"\n",
        dev_test("demo", workers, "s", "latency_ms = 100").replace(
            "size = \"2cpu-4gb\"",
            "size = \"2cpu-4gb\"\netcd_tls = false"
        )
    )
}

/// `unshare` arguments that give a private mount namespace where tmpfs can be mounted,
/// or why there are none.
fn namespace_args(probe_dir: &Path) -> Result<Vec<&'static str>, String> {
    let mut why = Vec::new();
    for args in [vec!["-rm"], vec!["-m"]] {
        let out = Command::new("unshare")
            .args(&args)
            .args(["sh", "-c", "mount -t tmpfs -o size=64k tmpfs \"$1\"", "sh"])
            .arg(probe_dir)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(args),
            Ok(o) => why.push(format!(
                "unshare {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => why.push(format!("unshare {}: {e}", args.join(" "))),
        }
    }
    Err(why.join("; "))
}

fn addresses(show: &serde_json::Value) -> BTreeSet<String> {
    show["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r["address"].as_str().expect("address").to_string())
        .collect()
}

const SCRIPT: &str = r#"
set -u
mount -t tmpfs -o size="$TMPFS_KB"k tmpfs st || exit 97
"$CF" apply small.toml --auto-approve >out1 2>err1; echo $? >code1
"$CF" show small.toml --json >show1.json 2>>err1
# The big apply, slow enough (4 at a time, 100 ms a call: about 5 s) that the disk fills
# while it runs: once its walk is under way (a new worker exists), fill the disk.
"$CF" apply big.toml --auto-approve --parallelism 4 >out2 2>err2 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
    "$CF" sim list >list 2>/dev/null
    [ "$(grep -cF 'machine.workers[' list)" -gt 3 ] && break
done
dd if=/dev/zero of=st/filler bs=4096 2>dd.err
df -k st >df.txt
wait "$pid"; echo $? >code2
# Space again.
rm -f st/filler
"$CF" show big.toml --json >show3.json 2>err3; echo $? >code3
mkdir saved && cp -a st/. saved/
"#;

#[test]
fn state_disk_full_mid_apply_fails_clearly_and_recovers() {
    let w = World::new();
    let st = w.path().join("st");
    std::fs::create_dir_all(&st).expect("mkdir st");
    let ns = match namespace_args(&st) {
        Ok(a) => a,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("cannot mount a tmpfs in a private mount namespace: {why}");
            }
            println!("SKIPPED disk_full: cannot mount a tmpfs in a private mount namespace: {why}");
            return;
        }
    };
    w.write("small.toml", &cluster(3));
    w.write("big.toml", &cluster(200));
    std::fs::create_dir_all(w.sim_dir()).expect("mkdir sim");

    let out = Command::new("unshare")
        .args(&ns)
        .args(["sh", "-c", SCRIPT])
        .current_dir(w.path())
        .env("CF", bin())
        .env("TMPFS_KB", TMPFS_KB.to_string())
        .env("CLUSTERFORM_SIM_DIR", w.sim_dir())
        .env("NO_COLOR", "1")
        .env_remove("CLUSTERFORM_LOG")
        .output()
        .expect("run unshare");
    let read = |name: &str| std::fs::read_to_string(w.path().join(name)).unwrap_or_default();
    let all = || {
        [
            "out1", "err1", "out2", "err2", "err3", "dd.err", "df.txt", "code1", "code2", "code3",
        ]
        .iter()
        .map(|f| format!("--- {f}\n{}", read(f)))
        .collect::<Vec<_>>()
        .join("\n")
            + &format!(
                "\n--- script\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
    };
    assert!(out.status.success(), "the script failed:\n{}", all());
    assert_eq!(read("code1").trim(), "0", "the small apply:\n{}", all());

    // The failed run: exit 1, a clear error naming the state and the full disk.
    assert_eq!(
        read("code2").trim(),
        "1",
        "the apply on a full disk:\n{}",
        all()
    );
    let err2 = read("err2");
    let out2 = read("out2");
    assert!(
        err2.contains("state") && err2.contains("No space left on device"),
        "stderr names the state and the full disk:\n{}",
        all()
    );
    println!("--- stderr of the apply on a full disk\n{err2}\n--- stdout (tail)");
    for l in out2
        .lines()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("{l}");
    }

    // With space again, the state loads and has at least what it had before.
    assert_eq!(
        read("code3").trim(),
        "0",
        "show after freeing space:\n{}",
        all()
    );
    let before: serde_json::Value = serde_json::from_str(&read("show1.json")).expect("show1");
    let after: serde_json::Value = serde_json::from_str(&read("show3.json")).expect("show3");
    assert!(
        after["serial"].as_u64() >= before["serial"].as_u64(),
        "serial {} then {}",
        before["serial"],
        after["serial"]
    );
    let (a0, a1) = (addresses(&before), addresses(&after));
    assert_eq!(a0.len(), 5, "{before}");
    assert!(a0.is_subset(&a1), "lost records: {:?}", a0.difference(&a1));

    // The state as the namespace left it, now on the ordinary disk.
    std::fs::remove_dir(&st).expect("st is empty outside the namespace");
    std::fs::rename(w.path().join("saved"), &st).expect("move the state");
    let r = w.run_ok(&["apply", "big.toml", "--auto-approve"], 0);
    println!("--- the rerun (head)");
    for l in r.stdout.lines().take(6) {
        println!("{l}");
    }
    assert_eq!(w.objects().len(), 202, "{:?}", w.cloud_ids().len());
    w.assert_state_matches_cloud("big.toml");
    w.run_ok(&["plan", "big.toml", "--detailed-exitcode"], 0);
}
