//! Property tests: any text as a Butane file gives a config or a located error (never a
//! panic); file contents survive Butane -> data URL -> `decode_data_url`, inline and
//! local; any string as a data URL decodes or is refused, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clusterform_ignition::{Config, decode_data_url, parse_butane, translate_butane};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A files directory private to this test process.
fn files_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!(
            "clusterform-ignition-proptest-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).expect("files dir");
        d
    })
}

fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixtures()).expect("fixtures") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "bu") {
            out.push(std::fs::read_to_string(&p).expect("read"));
        }
    }
    out.sort();
    out
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let path = fixtures().join("proptest.bu");
    if let Err(e) = parse_butane(&path, text, &fixtures()) {
        prop_assert!(e.line >= 1 && e.column >= 1, "{e}");
        prop_assert!(!e.message.is_empty());
        if let Some(off) = e.offset {
            prop_assert!(off <= text.len(), "offset {off} > {} : {e}", text.len());
        }
    }
    Ok(())
}

/// Lines that look like the supported Butane subset, with junk.
fn yamlish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("variant: flatcar".to_string()),
        Just("version: 1.0.0".to_string()),
        "(systemd|storage|passwd):",
        " {0,8}(units|files|directories|links|users|dropins|contents):",
        " {0,8}- (name|path): [ -~]{0,12}",
        " {0,8}(name|path|mode|enabled|mask|inline|local|target|hard|overwrite|contents|groups|ssh_authorized_keys): ([ -~]{0,12}|0[0-7]{3}|\\[[ -~]{0,8}\\]|\\{[ -~]{0,8}\\}|\\|[-+]?)",
        "[ -~\t]{0,20}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

/// A seed fixture with a random edit at a random place.
fn edited_seed() -> impl Strategy<Value = String> {
    (
        prop::sample::select(seeds()),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        "\\PC{0,8}|[-:\\[\\]{}|>\"' \t\n#0-9]{1,6}",
    )
        .prop_map(|(base, at, cut, insert)| {
            let mut s = base;
            let mut i = at.index(s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = i + cut.index(8);
            while j > s.len() || !s.is_char_boundary(j) {
                j -= 1;
            }
            s.replace_range(i..j.max(i), &insert);
            s
        })
}

/// `s` as a YAML double-quoted scalar: printable ASCII as is, everything else escaped.
fn yaml_quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            other => out.push_str(&format!("\\U{:08x}", u32::from(other))),
        }
    }
    out.push('"');
    out
}

/// The decoded contents of the only file of `config`.
fn only_file_contents(config: &Config) -> Result<Vec<u8>, TestCaseError> {
    let storage = config.storage.as_ref().expect("storage");
    prop_assert_eq!(storage.files.len(), 1);
    let res = storage.files[0].contents.as_ref().expect("contents");
    let source = res.source.as_deref().expect("source");
    let (bytes, _) = decode_data_url(source, res.compression.as_deref())
        .ok_or_else(|| TestCaseError::fail(format!("not decodable: {source}")))?;
    Ok(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn yamlish_text_never_panics(text in yamlish()) {
        check(&text)?;
    }

    #[test]
    fn edited_seeds_never_panic(text in edited_seed()) {
        check(&text)?;
    }

    #[test]
    fn inline_contents_round_trip(contents in prop_oneof![any::<String>(), "[a\n]{0,4000}", "(x{1,40}\n){0,200}"]) {
        let bu = format!(
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        inline: {}\n",
            yaml_quoted(&contents)
        );
        let config = parse_butane(Path::new("inline.bu"), &bu, files_dir())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(only_file_contents(&config)?, contents.into_bytes());
    }

    #[test]
    fn local_contents_round_trip(contents in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000),
        prop::collection::vec(Just(0u8), 0..20000),
    ]) {
        let name = format!("local-{}.bin", contents.len());
        std::fs::write(files_dir().join(&name), &contents).expect("write");
        let bu = format!(
            "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /opt/x\n      mode: 0600\n      contents:\n        local: {name}\n"
        );
        let config = parse_butane(Path::new("local.bu"), &bu, files_dir())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(only_file_contents(&config)?, contents);
    }

    #[test]
    fn any_data_url_decodes_or_is_refused(
        url in prop_oneof![any::<String>(), "data:[a-z/;=0-9]{0,16}(;base64)?,[ -~]{0,40}", "data:,(%[0-9a-fA-F]{0,2}|[ -~]){0,20}"],
        gzip in any::<bool>(),
    ) {
        let _ = decode_data_url(&url, gzip.then_some("gzip"));
    }
}

/// Regression: flow collections nested thousands deep took time quadratic in the depth in
/// the YAML parser before the YAML library's recursion limit refused them (40,000 levels: 5 s);
/// now anything deeper than 128 levels is refused at once, at the bracket.
#[test]
fn regression_deep_flow_nesting_took_quadratic_time() {
    let n = 500_000;
    let text = format!(
        "variant: flatcar\nversion: 1.0.0\nsystemd: {}{}\n",
        "[".repeat(n),
        "]".repeat(n)
    );
    let started = std::time::Instant::now();
    let e = parse_butane(Path::new("deep.bu"), &text, files_dir()).expect_err("too deep");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((e.line, e.column), (3, 10 + 128), "{e}");
    assert!(e.message.contains("nested more than 128"), "{e}");
}

/// Brackets that do not open flow collections (in block scalars, quoted strings and plain
/// scalars) do not count towards the nesting limit.
#[test]
fn brackets_in_scalars_do_not_count_as_nesting() {
    let many = "[".repeat(300);
    let text = format!(
        "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: a.service\n      contents: |\n        {many}\n    - name: b.service\n      contents: \"{many}\"\n    - name: c.service\n      contents: x{many}\n    - name: d.service\n      contents: '{many}'\n"
    );
    // The translation only: a unit of 300 `[` is valid YAML that Ignition refuses
    // (a section never closed), which `parse_butane` now says.
    let config = translate_butane(Path::new("ok.bu"), &text, files_dir()).expect("valid");
    assert_eq!(config.systemd.expect("systemd").units.len(), 4);
    let e = parse_butane(Path::new("ok.bu"), &text, files_dir()).expect_err("Ignition's rules");
    assert!(e.message.contains("unable to find end of section"), "{e}");
    let nested = format!(
        "variant: flatcar\nversion: 1.0.0\nx: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let e = parse_butane(Path::new("n.bu"), &nested, files_dir()).expect_err("unknown field");
    assert!(!e.message.contains("nested more than"), "{e}");
}

/// A billion laughs: nine levels of ten aliases each would expand to 10^9 scalars; the
/// YAML library's repetition limit refuses it at once (for the header pass as well as for
/// a known field), without the memory.
#[test]
fn alias_bombs_are_refused_quickly() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    for text in [
        format!("variant: flatcar\nversion: 1.0.0\n{bomb}"),
        format!(
            "variant: flatcar\nversion: 1.0.0\nx:\n{}passwd:\n  users:\n    - name: core\n      groups: *i\n",
            bomb.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ),
    ] {
        let started = std::time::Instant::now();
        let e = parse_butane(Path::new("bomb.bu"), &text, files_dir()).expect_err("bomb");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}: {e}",
            started.elapsed()
        );
    }
}
