//! Property tests: any text as a cluster file gives a model or located diagnostics (never
//! a panic), and addresses survive Display/FromStr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use clusterform_core::{Address, ProviderSchema};
use proptest::prelude::*;

use crate::parse;

const DEV_TEST: &str = include_str!("../../../examples/dev-test/cluster.toml");
const CENTRAL: &str = include_str!("../../../examples/central-services/cluster.toml");

fn schemas() -> Vec<ProviderSchema> {
    vec![crate::tests::sim()]
}

/// Parse `src`; on error, every diagnostic's location must lie inside the file it names.
fn check(src: &str) -> Result<(), TestCaseError> {
    let path = Path::new("/nonexistent/clusterform-proptest/cluster.toml");
    if let Err(d) = parse(path, src, &schemas()) {
        prop_assert!(!d.0.is_empty());
        for x in &d.0 {
            prop_assert!(!x.message.is_empty());
            if let Some(s) = x.span {
                prop_assert!(
                    s.offset + s.len <= x.source.len(),
                    "span {s:?} outside the source ({} bytes): {x}",
                    x.source.len()
                );
                prop_assert!(x.line >= 1 && x.column >= 1, "{x}");
            }
        }
    }
    Ok(())
}

/// Lines that look like TOML: headers, keys with values of every type, and junk.
fn tomlish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "\\[(cluster|state|network|central|workers|vm|resource\\.[a-z]{1,8}\\.[a-z]{1,6}|provider\\.[a-z]{1,5})\\]",
        "\\[\\[[a-z.]{1,12}\\]\\]",
        "(name|blueprint|provider|count|size|cidr|network|depends_on|butane|zones|first_address|path|backend|expires_after|dns) = (\"[ -~]{0,12}\"|-?[0-9]{1,12}|[0-9]\\.[0-9]|true|\\[[ -~]{0,16}\\]|\\{[ -~]{0,16}\\})",
        "blueprint = \"(dev-vm|small|dev-test|central-services|large-scale)\"",
        "[ -~]{0,20}",
        "\\PC{0,8}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

/// A valid example with a random edit at a random place.
fn edited_example() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(DEV_TEST), Just(CENTRAL)],
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        "\\PC{0,12}|[\\[\\]{}=\"\n.,0-9-]{1,6}",
    )
        .prop_map(|(base, at, cut, insert)| {
            let mut s = base.to_string();
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_never_panics(src in any::<String>()) {
        check(&src)?;
    }

    #[test]
    fn tomlish_text_never_panics(src in tomlish()) {
        check(&src)?;
    }

    #[test]
    fn edited_examples_never_panic(src in edited_example()) {
        check(&src)?;
    }

    #[test]
    fn address_display_parses_back(
        kind in "[a-z][a-z0-9_-]{0,12}",
        name in "[a-z][a-z0-9_-]{0,12}",
        index in proptest::option::of(any::<u32>()),
    ) {
        let a = Address { kind, name, index };
        let text = a.to_string();
        let back: Address = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, a);
    }

    #[test]
    fn any_address_text_parses_or_errs_and_round_trips(s in "\\PC{0,16}|[a-z]{1,4}\\.[a-z]{1,4}\\[[-+0-9a-z]{0,12}\\]") {
        if let Ok(a) = s.parse::<Address>() {
            let back: Address = a.to_string().parse().map_err(|e| TestCaseError::fail(format!("{a}: {e}")))?;
            prop_assert_eq!(back, a);
        }
    }
}

/// Regression: `[workers] count = 4000000000` expanded four billion machines and aborted
/// the process out of memory; counts above `MAX_COUNT` are now an error at the value.
#[test]
fn regression_huge_count_is_an_error_not_an_out_of_memory_abort() {
    let src = DEV_TEST.replace("[workers]\ncount = 3", "[workers]\ncount = 4000000000");
    assert!(src.contains("count = 4000000000"));
    let path = Path::new("/nonexistent/clusterform-proptest/cluster.toml");
    let d = parse(path, &src, &schemas()).expect_err("too large").0;
    assert!(
        d.iter()
            .any(|x| x.message.contains("too large") && x.line > 0 && x.column > 0),
        "{d:?}"
    );
    let ok = src.replace(
        "count = 4000000000",
        &format!("count = {}", crate::reader::MAX_COUNT + 1),
    );
    let d = parse(path, &ok, &schemas()).expect_err("too large").0;
    assert!(d.iter().any(|x| x.message.contains("too large")), "{d:?}");
}

/// Regression: a cluster file that is not UTF-8 was reported without a line and column.
#[test]
fn regression_not_utf8_points_at_the_first_bad_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cluster.toml");
    std::fs::write(&p, b"[cluster]\nname = \"d\xc3\xa9mo\"\nx = \"\xff\"\n").unwrap();
    let d = crate::load(&p, &schemas()).expect_err("not UTF-8").0;
    assert_eq!((d[0].line, d[0].column), (3, 6), "{}", d[0]);
    assert!(d[0].message.contains("not UTF-8"), "{}", d[0]);
}

/// Regression: an empty file's "no `[cluster]` table" had no location.
#[test]
fn regression_empty_file_error_is_located() {
    let path = Path::new("/nonexistent/clusterform-proptest/cluster.toml");
    let d = parse(path, "", &schemas()).expect_err("empty").0;
    assert_eq!((d[0].line, d[0].column), (1, 1), "{}", d[0]);
}
