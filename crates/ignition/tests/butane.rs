//! Butane subset: the seed's configs against hand-derived Ignition, and bad inputs.
//!
//! How the `tests/fixtures/*.ign.json` were made: NOT with this crate. The `.bu` files
//! are the three Butane configs of the Flatcar "cluster architectures" page copied
//! verbatim (plus `extras.bu`, written for this test to cover local files, modes,
//! directories, links, users and the base64/gzip encodings). `tests/fixtures/make_ign.py`
//! (PyYAML + a hand translation of Butane 1.0.0's rules: field renames, data URLs by
//! `MakeDataURL` with auto-compression, `compression: ""` unless gzip) was run once
//! to write each `.ign.json`. Data URLs are compared by decoded bytes and encoding kind,
//! because Python's/Go's gzip bytes differ from flate2's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use clusterform_ignition::{ButaneError, parse_butane};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Debug, PartialEq)]
enum Kind {
    Escaped,
    Base64,
    Gzip,
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Decode `contents` of a file independently of the crate.
fn decode(contents: &Value) -> (Vec<u8>, Kind) {
    let source = contents["source"].as_str().unwrap();
    let compression = contents["compression"].as_str().unwrap();
    let rest = source.strip_prefix("data:").unwrap();
    if let Some(b64) = rest.strip_prefix(";base64,") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        if compression == "gzip" {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            (out, Kind::Gzip)
        } else {
            assert_eq!(compression, "");
            (raw, Kind::Base64)
        }
    } else {
        assert_eq!(compression, "");
        (unescape(rest.strip_prefix(',').unwrap()), Kind::Escaped)
    }
}

/// Replace every file's data URL by its decoded bytes and kind, so that the rest can be
/// compared with `Value` equality.
fn normalize(mut v: Value) -> Value {
    if let Some(files) = v
        .pointer_mut("/storage/files")
        .and_then(Value::as_array_mut)
    {
        for f in files {
            if let Some(c) = f.get("contents").cloned() {
                let (bytes, kind) = decode(&c);
                f["contents"] = serde_json::json!({
                    "bytes": String::from_utf8_lossy(&bytes),
                    "raw": bytes,
                    "kind": format!("{kind:?}"),
                });
            }
        }
    }
    v
}

fn check_fixture(name: &str) {
    let dir = fixtures();
    let bu = dir.join(format!("{name}.bu"));
    let text = std::fs::read_to_string(&bu).unwrap();
    let config = parse_butane(&bu, &text, &dir).unwrap_or_else(|e| panic!("{e}"));
    let got: Value = serde_json::to_value(&config).unwrap();
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.ign.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(normalize(got.clone()), normalize(want.clone()), "{name}");
    // Where gzip was not chosen the encoding is deterministic: exact equality.
    let no_gzip = |v: &Value| !v.to_string().contains("\"gzip\"");
    if no_gzip(&want) {
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn laptop_docker_matches_butane() {
    check_fixture("laptop-docker");
}

#[test]
fn etcd_dev_test_matches_butane() {
    check_fixture("etcd-dev-test");
}

#[test]
fn central_services_matches_butane() {
    check_fixture("central-services");
}

#[test]
fn extras_matches_butane() {
    check_fixture("extras");
}

fn bad(text: &str) -> ButaneError {
    let dir = fixtures();
    match parse_butane(Path::new("bad.bu"), text, &dir) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => {
            println!("{e}");
            e
        }
    }
}

/// The error names `needle` and sits at `line:column`.
fn assert_err(text: &str, needle: &str, line: usize, column: usize) {
    let e = bad(text);
    assert!(e.message.contains(needle), "{needle:?} not in {e}");
    assert_eq!((e.line, e.column), (line, column), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("bad.bu:{line}:{column}: ")),
        "{shown}"
    );
}

const HEAD: &str = "variant: flatcar\nversion: 1.0.0\n";

#[test]
fn unknown_top_level_field() {
    assert_err(
        &format!("{HEAD}kernel_arguments:\n  should_exist: [quiet]\n"),
        "kernel_arguments",
        3,
        1,
    );
}

#[test]
fn unknown_unit_field() {
    assert_err(
        &format!("{HEAD}systemd:\n  units:\n    - name: a.service\n      enable: true\n"),
        "enable",
        6,
        7,
    );
}

#[test]
fn storage_filesystems() {
    assert_err(
        &format!("{HEAD}storage:\n  filesystems:\n    - device: /dev/sda\n"),
        "filesystems",
        4,
        3,
    );
}

#[test]
fn wrong_variant() {
    let e = bad("variant: fcos\nversion: 1.0.0\n");
    assert!(
        e.message.contains("variant") && e.message.contains("flatcar"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (1, 10));
}

#[test]
fn wrong_version() {
    let e = bad("variant: flatcar\nversion: 1.1.0\n");
    assert!(
        e.message.contains("version") && e.message.contains("1.0.0"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (2, 10));
}

#[test]
fn contents_source() {
    assert_err(
        &format!(
            "{HEAD}storage:\n  files:\n    - path: /etc/x\n      contents:\n        source: https://example.com/x\n"
        ),
        "source",
        7,
        9,
    );
}

#[test]
fn user_uid() {
    assert_err(
        &format!("{HEAD}passwd:\n  users:\n    - name: core\n      uid: 500\n"),
        "uid",
        6,
        7,
    );
}

#[test]
fn missing_local_file() {
    assert_err(
        &format!(
            "{HEAD}storage:\n  files:\n    - path: /etc/a\n      contents:\n        inline: |\n          local: not-a-key\n    - path: /etc/x\n      contents:\n        local: files/nope.txt\n"
        ),
        "files/nope.txt",
        11,
        9,
    );
}

#[test]
fn local_escaping_files_dir() {
    assert_err(
        &format!(
            "{HEAD}storage:\n  files:\n    - path: /etc/x\n      contents: {{local: ../../Cargo.toml}}\n"
        ),
        "outside the files directory",
        6,
        18,
    );
    assert_err(
        &format!(
            "{HEAD}storage:\n  files:\n    - path: /etc/x\n      contents:\n        local: /etc/passwd\n"
        ),
        "absolute",
        7,
        9,
    );
}

#[test]
fn yaml_syntax_error() {
    let e = bad(&format!("{HEAD}systemd:\n  units: [\n    - name: a\n"));
    assert!(e.line >= 4, "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("bad.bu:{}:{}: ", e.line, e.column))
    );
}

#[test]
fn mode_as_string() {
    assert_err(
        &format!("{HEAD}storage:\n  files:\n    - path: /etc/x\n      mode: \"0644\"\n"),
        "mode",
        6,
        13,
    );
    assert_err(
        &format!("{HEAD}storage:\n  files:\n    - path: /etc/x\n      mode: rw-r--r--\n"),
        "mode",
        6,
        13,
    );
}

#[test]
fn missing_required_field() {
    assert_err(
        &format!("{HEAD}systemd:\n  units:\n    - enabled: true\n"),
        "name",
        5,
        7,
    );
}

#[test]
fn modes_decimal_octal_and_plain() {
    let dir = fixtures();
    let c = parse_butane(
        Path::new("m.bu"),
        &format!(
            "{HEAD}storage:\n  directories:\n    - path: /a\n      mode: 0755\n    - path: /b\n      mode: 493\n    - path: /c\n      mode: 0o755\n    - path: /d\n"
        ),
        &dir,
    )
    .unwrap();
    let d = c.storage.unwrap().directories;
    assert_eq!(
        d.iter().map(|d| d.mode).collect::<Vec<_>>(),
        [Some(493), Some(493), Some(493), None]
    );
}
