//! Hostile file names: one table of files a cluster file (a `butane` entry) or a Butane
//! file (`contents.local`) names that must not be read: outside the folder (by `..`,
//! absolute, through a symlink to a file or a folder), not regular files (`/dev/zero`, a
//! FIFO, a folder), too large (a 64 MB sparse file) or not UTF-8. Each runs
//! `clusterform validate` on the real binary and must exit 1 within 20 s with an error
//! at `file:line:column` of the reference, a `help:` saying what to do, and nothing of
//! the refused file's content.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clusterform_tests::{Run, World};

/// Planted in every file that must not be read: it must never reach the output.
const MARKER: &str = "HOSTILE-MARKER-7f3a9c";

/// How long a case may take before it counts as a hang.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Where the reference is, and so which file the error must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    /// `[central] butane = ["NAME"]` in `proj/cluster.toml`.
    Butane,
    /// `contents.local: NAME` in `proj/x.bu`.
    Local,
}

struct Case {
    name: &'static str,
    at: Ref,
    /// Set up the world (`proj/` is the cluster file's folder, the world's folder is
    /// outside it); returns the name written in the reference.
    setup: fn(&World) -> String,
    /// Extra arguments before `validate`.
    flags: &'static [&'static str],
    /// Words the error must contain (lowercase).
    needle: &'static str,
}

const fn case(
    name: &'static str,
    at: Ref,
    setup: fn(&World) -> String,
    needle: &'static str,
) -> Case {
    Case {
        name,
        at,
        setup,
        flags: &[],
        needle,
    }
}

/// A valid Butane file whose content carries the marker: read, it would be accepted
/// and its content would reach the machines.
fn planted_butane() -> String {
    format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/{MARKER}\n      contents:\n        inline: {MARKER}\n"
    )
}

fn proj(w: &World) -> std::path::PathBuf {
    w.path().join("proj")
}

/// `outside.bu` (a valid Butane file) and `outside.txt` beside `proj/`, and `shadow`, a
/// private file like `/etc/shadow`.
fn plant_outside(w: &World) {
    w.write("outside.bu", &planted_butane());
    w.write("outside.txt", &format!("{MARKER}\n"));
    let shadow = w.write("shadow", &format!("root:{MARKER}:19000:0:99999:7:::\n"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shadow, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

fn mkfifo(p: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
}

/// A 64 MB sparse file starting with the marker.
fn sparse(p: &Path) {
    std::fs::write(p, planted_butane()).expect("write");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .expect("open");
    f.set_len(64 << 20).expect("set_len");
}

fn cases() -> Vec<Case> {
    use Ref::*;
    vec![
        // ---- `butane = [...]` entries of the cluster file ----
        case(
            "butane_parent_dir",
            Butane,
            |_| "../outside.bu".into(),
            "outside the folder",
        ),
        case(
            "butane_absolute_outside",
            Butane,
            |w| w.path().join("outside.bu").display().to_string(),
            "outside the folder",
        ),
        case(
            "butane_symlink_to_outside",
            Butane,
            |w| {
                symlink(&w.path().join("outside.bu"), &proj(w).join("link.bu"));
                "link.bu".into()
            },
            "outside the folder",
        ),
        case(
            "butane_symlink_to_shadow",
            Butane,
            |w| {
                symlink(&w.path().join("shadow"), &proj(w).join("shadow.bu"));
                "shadow.bu".into()
            },
            "outside the folder",
        ),
        case(
            "butane_symlinked_folder",
            Butane,
            |w| {
                symlink(w.path(), &proj(w).join("up"));
                "up/outside.bu".into()
            },
            "outside the folder",
        ),
        case(
            "butane_dev_zero",
            Butane,
            |_| "/dev/zero".into(),
            "outside the folder",
        ),
        case(
            "butane_symlink_to_dev_zero",
            Butane,
            |w| {
                symlink(Path::new("/dev/zero"), &proj(w).join("zero.bu"));
                "zero.bu".into()
            },
            "outside the folder",
        ),
        Case {
            // With the files folder widened to `/`, the type is what refuses it.
            name: "butane_dev_zero_inside_files_dir",
            at: Butane,
            setup: |_| "/dev/zero".into(),
            flags: &["--files-dir", "/"],
            needle: "character device, not a regular file",
        },
        case(
            "butane_fifo",
            Butane,
            |w| {
                mkfifo(&proj(w).join("pipe.bu"));
                "pipe.bu".into()
            },
            "fifo",
        ),
        case(
            "butane_folder",
            Butane,
            |w| {
                std::fs::create_dir(proj(w).join("dir.bu")).expect("mkdir");
                "dir.bu".into()
            },
            "folder, not a regular file",
        ),
        case(
            "butane_sparse_64mb",
            Butane,
            |w| {
                sparse(&proj(w).join("big.bu"));
                "big.bu".into()
            },
            "larger than the limit of 1 mib",
        ),
        case(
            "butane_not_utf8",
            Butane,
            |w| {
                let mut b = planted_butane().into_bytes();
                b.extend_from_slice(b"# \xff\xfe ");
                b.extend_from_slice(MARKER.as_bytes());
                std::fs::write(proj(w).join("bin.bu"), b).expect("write");
                "bin.bu".into()
            },
            "not utf-8",
        ),
        case(
            "butane_dangling_symlink",
            Butane,
            |w| {
                symlink(&w.path().join("nowhere"), &proj(w).join("dangling.bu"));
                "dangling.bu".into()
            },
            "does not exist",
        ),
        // ---- `contents.local` of a Butane file ----
        case(
            "local_parent_dir",
            Local,
            |_| "../outside.txt".into(),
            "outside the files directory",
        ),
        case(
            "local_absolute_outside",
            Local,
            |w| w.path().join("outside.txt").display().to_string(),
            "absolute path",
        ),
        case(
            "local_symlink_to_outside",
            Local,
            |w| {
                symlink(&w.path().join("outside.txt"), &proj(w).join("link.txt"));
                "link.txt".into()
            },
            "outside the folder",
        ),
        case(
            "local_symlink_to_shadow",
            Local,
            |w| {
                symlink(&w.path().join("shadow"), &proj(w).join("shadow"));
                "shadow".into()
            },
            "outside the folder",
        ),
        case(
            "local_symlinked_folder",
            Local,
            |w| {
                symlink(w.path(), &proj(w).join("up"));
                "up/outside.txt".into()
            },
            "outside the folder",
        ),
        case(
            "local_dev_zero",
            Local,
            |_| "/dev/zero".into(),
            "absolute path",
        ),
        case(
            "local_symlink_to_dev_zero",
            Local,
            |w| {
                symlink(Path::new("/dev/zero"), &proj(w).join("zero"));
                "zero".into()
            },
            "outside the folder",
        ),
        case(
            "local_fifo",
            Local,
            |w| {
                mkfifo(&proj(w).join("pipe"));
                "pipe".into()
            },
            "fifo",
        ),
        case(
            "local_folder",
            Local,
            |w| {
                std::fs::create_dir(proj(w).join("dir")).expect("mkdir");
                "dir".into()
            },
            "folder, not a regular file",
        ),
        case(
            "local_sparse_64mb",
            Local,
            |w| {
                sparse(&proj(w).join("big.bin"));
                "big.bin".into()
            },
            "larger than the limit of 16 mib",
        ),
    ]
}

/// The cluster file, its `butane` entry on line 8.
fn cluster_toml(butane: &str) -> String {
    let quoted = serde_json::to_string(butane).expect("quote");
    format!(
        "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"2cpu-4gb\"\nbutane = [{quoted}]\n"
    )
}

/// A Butane file whose `contents.local` (line 7) is `local`.
fn butane_local(local: &str) -> String {
    let quoted = serde_json::to_string(local).expect("quote");
    format!(
        "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        local: {quoted}\n"
    )
}

/// Run `clusterform args...` in `w`, killing it after [`TIMEOUT`]: `None` on a hang.
fn run_bounded(w: &World, args: &[&str]) -> Option<Run> {
    let out = w.path().join("stdout");
    let err = w.path().join("stderr");
    let mut child = w
        .command(args)
        .stdout(Stdio::from(std::fs::File::create(&out).expect("stdout")))
        .stderr(Stdio::from(std::fs::File::create(&err).expect("stderr")))
        .spawn()
        .expect("spawn clusterform");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into();
    Some(Run {
        code: status.code().unwrap_or(-1),
        stdout: read(&out),
        stderr: read(&err),
    })
}

/// Text with whitespace and miette's frame characters removed: long paths may be
/// wrapped over several lines.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '│' | '·' | '╭' | '╰' | '─'))
        .collect()
}

fn check(c: &Case, args: &[&str], r: &Run) -> Result<(), String> {
    let fail = |why: &str| {
        Err(format!(
            "{} ({:?}): {why}\n  clusterform {args:?} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            c.name,
            c.at,
            r.code,
            r.stdout.chars().take(2000).collect::<String>(),
            r.stderr.chars().take(4000).collect::<String>()
        ))
    };
    if r.stdout.contains(MARKER) || r.stderr.contains(MARKER) {
        return fail("the output shows the refused file's content");
    }
    if r.stderr.contains("panicked at") {
        return fail("panicked");
    }
    if r.code != 1 {
        return fail("expected exit code 1");
    }
    let location = match c.at {
        Ref::Butane => "proj/cluster.toml:8:",
        Ref::Local => "proj/x.bu:7:",
    };
    if !squash(&r.stderr).contains(location) {
        return fail(&format!(
            "the error is not located at {location}LINE:COLUMN"
        ));
    }
    if !squash(&r.stderr.to_lowercase()).contains(&squash(c.needle)) {
        return fail(&format!("the error does not say {:?}", c.needle));
    }
    if !r.stderr.contains("help:") {
        return fail("the error does not say what to do (no help)");
    }
    Ok(())
}

#[test]
fn hostile_file_names_are_refused_quickly_and_without_echo() {
    let mut failures = Vec::new();
    let cases = cases();
    for c in &cases {
        let w = World::new();
        std::fs::create_dir(proj(&w)).expect("mkdir proj");
        plant_outside(&w);
        let name = (c.setup)(&w);
        match c.at {
            Ref::Butane => {
                w.write("proj/cluster.toml", &cluster_toml(&name));
            }
            Ref::Local => {
                w.write("proj/cluster.toml", &cluster_toml("x.bu"));
                w.write("proj/x.bu", &butane_local(&name));
            }
        }
        let mut args: Vec<&str> = c.flags.to_vec();
        args.extend(["validate", "proj/cluster.toml"]);
        let started = Instant::now();
        match run_bounded(&w, &args) {
            None => failures.push(format!("{}: still running after {TIMEOUT:?}", c.name)),
            Some(r) => {
                if let Err(e) = check(c, &args, &r) {
                    failures.push(e);
                }
            }
        }
        println!("{}: {:?}", c.name, started.elapsed());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(cases.len() >= 20, "only {} cases", cases.len());
}

/// The same kinds of references that are fine: a symlink inside the folder, a binary
/// `contents.local`, and a Butane file outside the cluster's folder once `--files-dir`
/// names a folder holding both.
#[test]
fn confined_files_that_are_fine_are_read() {
    let w = World::new();
    std::fs::create_dir_all(w.path().join("proj/conf")).expect("mkdir");
    std::fs::write(w.path().join("proj/conf/blob.bin"), b"\x00\xff\xfe binary").expect("write");
    w.write("proj/conf/real.bu", &butane_local("blob.bin"));
    symlink(Path::new("conf/real.bu"), &w.path().join("proj/x.bu"));
    w.write("proj/cluster.toml", &cluster_toml("x.bu"));
    let r = run_bounded(&w, &["validate", "proj/cluster.toml"]).expect("no hang");
    assert_eq!(r.code, 0, "{}", r.stderr);

    let w = World::new();
    w.write("shared/base.bu", &planted_butane());
    w.write(
        "clusters/prod/cluster.toml",
        &cluster_toml("../../shared/base.bu"),
    );
    let r = run_bounded(&w, &["validate", "clusters/prod/cluster.toml"]).expect("no hang");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("--files-dir"), "{}", r.stderr);
    let r = run_bounded(
        &w,
        &["--files-dir", ".", "validate", "clusters/prod/cluster.toml"],
    )
    .expect("no hang");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The flag comes after the command too (it is global).
    let r = run_bounded(
        &w,
        &["validate", "clusters/prod/cluster.toml", "--files-dir", "."],
    )
    .expect("no hang");
    assert_eq!(r.code, 0, "{}", r.stderr);
}
