//! Robustness: one table of malformed inputs (cluster files, Butane snippets, saved
//! plans, state files), each run through the real binary. Every one must fail with exit
//! code 1 and a located error (never a panic or a signal), and leave the state folder
//! exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clusterform_tests::{Run, World, dev_test, is_root};
use serde_json::{Value, json};

/// Which command a case runs, and what its error must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `cluster.toml`, checked with `validate`: `file:line:column`.
    Config,
    /// `x.bu` referenced from `[central] butane`, checked with `validate`: `x.bu:line:column`.
    Butane,
    /// `plan.json` applied with `apply plan.json`: the file name (and line/column for JSON
    /// syntax errors).
    Plan,
    /// A damaged `.clusterform/`, read with `state list`: the state path.
    State,
}

/// What a case writes.
enum Input {
    /// The cluster file.
    Toml(&'static str),
    /// A generated cluster file.
    TomlGen(fn() -> String),
    /// The cluster file as raw bytes.
    TomlBytes(&'static [u8]),
    /// The Butane file `x.bu`.
    Bu(&'static str),
    /// A generated Butane file.
    BuGen(fn() -> String),
    /// A saved plan: a function of a real one (made in the case's world) to the bytes
    /// written back.
    PlanEdit(fn(&World, Value) -> Vec<u8>),
    /// A damaged state: given a real `state.redb`, set up the world; returns the command
    /// to run when it is not `state list cluster.toml`.
    StateSetup(fn(&World, &[u8]) -> Option<Vec<String>>),
}

struct Case {
    name: &'static str,
    kind: Kind,
    input: Input,
}

const fn case(name: &'static str, kind: Kind, input: Input) -> Case {
    Case { name, kind, input }
}

/// A valid sim cluster file header for plain resources.
const HEAD: &str = "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n";

fn head(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

fn huge_count() -> String {
    dev_test("demo", 0, "s", "").replace("count = 0", "count = 4000000000")
}

fn huge_plain_count() -> String {
    head("[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ncount = 100000000000\n")
}

fn deep_inline_tables() -> String {
    let depth = 5000;
    let mut v = String::new();
    for _ in 0..depth {
        v.push_str("{a = ");
    }
    v.push('1');
    for _ in 0..depth {
        v.push('}');
    }
    head(&format!(
        "[resource.machine.m]\nsize = \"s\"\nnetwork = \"network.n\"\ntags = {v}\n"
    ))
}

fn deep_arrays() -> String {
    let depth = 5000;
    head(&format!(
        "[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ndns = {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    ))
}

fn long_line() -> String {
    head(&format!(
        "[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n{} = 1\n",
        "k".repeat(200_000)
    ))
}

/// A Butane file of about 1 MB whose error is in its last lines.
fn butane_1mb() -> String {
    let mut s = String::from("variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n");
    let mut i = 0;
    while s.len() < 1_000_000 {
        s.push_str(&format!(
            "    - path: /opt/f{i}\n      mode: 0644\n      contents:\n        inline: line {i}\n"
        ));
        i += 1;
    }
    s.push_str("    - path: /opt/last\n      colour: blue\n");
    s
}

fn butane_deep() -> String {
    let depth = 10_000;
    format!(
        "variant: flatcar\nversion: 1.0.0\nsystemd: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// The plan file's JSON, with its checksum made to match again (an editor who knows the
/// algorithm): the other checks are what a case then meets.
fn json_bytes(v: &Value) -> Vec<u8> {
    let mut v = v.clone();
    if v.get("checksum").is_some() {
        v["checksum"] = json!("");
        let bytes = serde_json::to_vec(&v).expect("encode");
        use sha2::Digest;
        let sum: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        v["checksum"] = json!(sum);
    }
    serde_json::to_vec_pretty(&v).expect("encode")
}

/// A plan file edited by hand, its checksum left as it was.
fn plan_edited(_: &World, mut v: Value) -> Vec<u8> {
    v["plan"]["changes"][0]["after"]["size"] = json!("64cpu-512gb");
    serde_json::to_vec_pretty(&v).expect("encode")
}

/// A plan file with one change twice (checksum made to match).
fn plan_duplicate_address(_: &World, mut v: Value) -> Vec<u8> {
    let first = v["plan"]["changes"][0].clone();
    v["plan"]["changes"]
        .as_array_mut()
        .expect("changes")
        .push(first);
    json_bytes(&v)
}

/// A plan made against a state (it has a lineage) whose state folder does not exist.
fn plan_state_missing(w: &World, mut v: Value) -> Vec<u8> {
    v["state"]["path"] = json!(w.path().join("gone").join(".clusterform"));
    v["plan"]["state_lineage"] = json!("3b52d1a3-6129-4e66-b061-ce747e434a6e");
    v["plan"]["state_serial"] = json!(7);
    json_bytes(&v)
}

fn plan_unknown_action(_: &World, mut v: Value) -> Vec<u8> {
    v["plan"]["changes"][0]["action"] = json!("teleport");
    json_bytes(&v)
}

fn plan_wrong_types(_: &World, mut v: Value) -> Vec<u8> {
    v["plan"]["changes"] = json!("all of them");
    v["plan"]["state_serial"] = json!(-3);
    json_bytes(&v)
}

fn plan_truncated(_: &World, v: Value) -> Vec<u8> {
    let b = json_bytes(&v);
    b[..b.len() / 2].to_vec()
}

/// Offsets of every JSON resource record in a real state file (live, history, free).
fn record_offsets(state: &[u8]) -> Vec<usize> {
    let needle = b"{\"address\"";
    let at: Vec<usize> = state
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert!(!at.is_empty(), "the state file has JSON records");
    at
}

fn write_state(w: &World, bytes: &[u8]) -> PathBuf {
    let dir = w.path().join(".clusterform");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let p = dir.join("state.redb");
    std::fs::write(&p, bytes).expect("write state");
    p
}

fn cases() -> Vec<Case> {
    use Input::*;
    use Kind::*;
    vec![
        // ---- cluster files (validate) ----
        case("config_empty_file", Config, Toml("")),
        case("config_only_comments", Config, Toml("# nothing here\n\n")),
        case(
            "config_binary_garbage",
            Config,
            TomlBytes(b"[cluster]\nname = \"demo\"\n\xff\xfe\x00\x01garbage\x80\n"),
        ),
        case(
            "config_utf8_bom_garbage",
            Config,
            Toml("\u{feff}\u{0}\u{1}[[["),
        ),
        case("config_huge_blueprint_count", Config, TomlGen(huge_count)),
        case(
            "config_huge_resource_count",
            Config,
            TomlGen(huge_plain_count),
        ),
        case(
            "config_count_overflows_toml",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ncount = 99999999999999999999999\n",
            ),
        ),
        case(
            "config_negative_count",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\n\n[workers]\ncount = -2\nsize = \"s\"\n",
            ),
        ),
        case(
            "config_negative_resource_count",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ncount = -1\n",
            ),
        ),
        case(
            "config_float_count_on_blueprint_table",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"small\"\nprovider = \"sim\"\n\n[central]\ncount = 3.0\nsize = \"s\"\n",
            ),
        ),
        case(
            "config_duplicate_tables",
            Config,
            Toml("[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[cluster]\nname = \"again\"\n"),
        ),
        case(
            "config_duplicate_resource_tables",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\n\n[resource.network.lan]\ncidr = \"10.0.1.0/24\"\n",
            ),
        ),
        case(
            "config_cluster_array_of_tables",
            Config,
            Toml("[[cluster]]\nname = \"demo\"\nprovider = \"sim\"\n"),
        ),
        case(
            "config_depends_on_not_a_list",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\n\n[resource.network.b]\ncidr = \"10.0.1.0/24\"\ndepends_on = \"network.a\"\n",
            ),
        ),
        case(
            "config_depends_on_list_of_numbers",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\ndepends_on = [1, 2]\n",
            ),
        ),
        case(
            "config_address_bad_index",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\n\n[resource.network.b]\ncidr = \"10.0.1.0/24\"\ndepends_on = [\"network.a[x]\"]\n",
            ),
        ),
        case(
            "config_address_index_overflow",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\ncount = 2\n\n[resource.machine.m]\nsize = \"s\"\nnetwork = \"network.a[99999999999999999999]\"\n",
            ),
        ),
        case(
            "config_address_index_out_of_range",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\ncount = 2\n\n[resource.machine.m]\nsize = \"s\"\nnetwork = \"network.a[2]\"\n",
            ),
        ),
        case(
            "config_address_garbage",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.a]\ncidr = \"10.0.0.0/24\"\n\n[resource.machine.m]\nsize = \"s\"\nnetwork = \"..[[]]\"\n",
            ),
        ),
        case(
            "config_unicode_resource_name",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.\"réseau-ü\"]\ncidr = \"10.0.0.0/24\"\n",
            ),
        ),
        case(
            "config_unicode_cluster_name",
            Config,
            Toml("[cluster]\nname = \"démo-☃\"\nprovider = \"sim\"\n"),
        ),
        case(
            "config_unicode_before_error",
            Config,
            Toml("[cluster]\nname = \"démo\" # ☃☃☃\nprovider = \"sim\"\nrégion = \"ü\"\n"),
        ),
        case(
            "config_deep_inline_tables",
            Config,
            TomlGen(deep_inline_tables),
        ),
        case("config_deep_arrays", Config, TomlGen(deep_arrays)),
        case("config_very_long_key", Config, TomlGen(long_line)),
        case(
            "config_resource_without_kind",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource]\ncidr = \"10.0.0.0/24\"\n",
            ),
        ),
        case(
            "config_resource_kind_without_name",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network]\ncidr = \"10.0.0.0/24\"\n",
            ),
        ),
        case(
            "config_resource_not_a_table",
            Config,
            Toml("resource = 5\n\n[cluster]\nname = \"demo\"\nprovider = \"sim\"\n"),
        ),
        case(
            "config_provider_table_unknown_provider",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[provider.gcp]\nproject = \"x\"\n",
            ),
        ),
        case(
            "config_provider_not_a_table",
            Config,
            Toml("[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[provider]\nsim = 3\n"),
        ),
        case(
            "config_counted_reference_without_index",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[resource.network.lan]\ncidr = \"10.0.0.0/24\"\ncount = 2\n\n[resource.machine.m]\nsize = \"s\"\nnetwork = \"network.lan\"\n",
            ),
        ),
        case(
            "config_butane_missing_file",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\nbutane = [\"nope.bu\"]\n",
            ),
        ),
        case(
            "config_butane_not_a_list",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\nbutane = \"x.bu\"\n",
            ),
        ),
        case(
            "config_butane_is_a_directory",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"s\"\nbutane = [\".\"]\n",
            ),
        ),
        case(
            "config_state_path_wrong_type",
            Config,
            Toml("[cluster]\nname = \"demo\"\nprovider = \"sim\"\n\n[state]\npath = 5\n"),
        ),
        case(
            "config_bad_duration",
            Config,
            Toml("[cluster]\nname = \"demo\"\nprovider = \"sim\"\nexpires_after = \"soon\"\n"),
        ),
        case(
            "config_huge_duration",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nprovider = \"sim\"\nexpires_after = \"99999999999999999999y\"\n",
            ),
        ),
        case(
            "config_ssh_keys_wrong_type",
            Config,
            Toml("[cluster]\nname = \"demo\"\nprovider = \"sim\"\nssh_authorized_keys = [1, 2]\n"),
        ),
        case(
            "config_cidr_prefix_too_long",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/33\"\n\n[central]\nsize = \"s\"\n",
            ),
        ),
        case(
            "config_cidr_too_small_for_machines",
            Config,
            Toml(
                "[cluster]\nname = \"demo\"\nblueprint = \"small\"\nprovider = \"sim\"\n\n[network]\ncidr = \"10.0.0.0/31\"\n\n[central]\ncount = 9\nsize = \"s\"\n",
            ),
        ),
        case(
            "config_crlf_line_endings",
            Config,
            Toml("[cluster]\r\nname = \"demo\"\r\nprovider = \"sim\"\r\ncolour = \"red\"\r\n"),
        ),
        // ---- Butane files, referenced as [central] butane = ["x.bu"] ----
        case("butane_empty_file", Butane, Bu("")),
        case(
            "butane_yaml_syntax_error",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\nsystemd:\n  units: [\n    - name: a\n"),
        ),
        case(
            "butane_unclosed_quote",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\npasswd:\n  users:\n    - name: \"core\n"),
        ),
        case(
            "butane_unknown_top_level_field",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\nkernel_arguments:\n  should_exist: [quiet]\n"),
        ),
        case(
            "butane_unknown_unit_field",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: a.service\n      colour: blue\n",
            ),
        ),
        case(
            "butane_unknown_contents_field",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        source: https://example.com/x\n",
            ),
        ),
        case(
            "butane_unknown_dropin_field",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: a.service\n      dropins:\n        - name: x.conf\n          enabled: true\n",
            ),
        ),
        case(
            "butane_units_not_a_list",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\nsystemd:\n  units: everything\n"),
        ),
        case(
            "butane_enabled_not_bool",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: a.service\n      enabled: [yes]\n",
            ),
        ),
        case(
            "butane_quoted_mode",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      mode: \"0644\"\n",
            ),
        ),
        case(
            "butane_mode_out_of_range",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  directories:\n    - path: /opt/x\n      mode: 99999999999\n",
            ),
        ),
        case(
            "butane_wrong_variant",
            Butane,
            Bu("variant: fcos\nversion: 1.0.0\n"),
        ),
        case(
            "butane_wrong_version",
            Butane,
            Bu("variant: flatcar\nversion: 1.1.0\n"),
        ),
        case("butane_missing_variant", Butane, Bu("version: 1.0.0\n")),
        case(
            "butane_variant_not_a_string",
            Butane,
            Bu("variant: [flatcar]\nversion: 1.0.0\n"),
        ),
        case(
            "butane_top_level_list",
            Butane,
            Bu("- variant: flatcar\n- version: 1.0.0\n"),
        ),
        case(
            "butane_local_escapes_files_dir",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/passwd-copy\n      contents:\n        local: ../../../../etc/passwd\n",
            ),
        ),
        case(
            "butane_local_absolute",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        local: /etc/hostname\n",
            ),
        ),
        case(
            "butane_local_missing",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        local: not-there.txt\n",
            ),
        ),
        case(
            "butane_inline_and_local",
            Butane,
            Bu(
                "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /etc/x\n      contents:\n        inline: a\n        local: x.bu\n",
            ),
        ),
        case(
            "butane_tab_indentation",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\nsystemd:\n\tunits:\n\t\t- name: a.service\n"),
        ),
        case(
            "butane_duplicate_key",
            Butane,
            Bu("variant: flatcar\nversion: 1.0.0\nsystemd:\n  units: []\nsystemd:\n  units: []\n"),
        ),
        case("butane_deep_nesting", Butane, BuGen(butane_deep)),
        case("butane_1mb_error_at_end", Butane, BuGen(butane_1mb)),
        // ---- saved plans (apply FILE) ----
        // Not JSON at all: read as a cluster file, so the TOML error names the file.
        case("plan_empty_file", Plan, PlanEdit(|_, _| Vec::new())),
        case("plan_empty_object", Plan, PlanEdit(|_, _| b"{}".to_vec())),
        case(
            "plan_whitespace_then_brace",
            Plan,
            PlanEdit(|_, _| b"  \n\t{".to_vec()),
        ),
        case(
            "plan_wrong_format",
            Plan,
            PlanEdit(|_, mut v| {
                v["format"] = json!("terraform-plan");
                json_bytes(&v)
            }),
        ),
        case(
            "plan_wrong_version",
            Plan,
            PlanEdit(|_, mut v| {
                v["version"] = json!(99);
                json_bytes(&v)
            }),
        ),
        case(
            "plan_version_as_string",
            Plan,
            PlanEdit(|_, mut v| {
                v["version"] = json!("1");
                json_bytes(&v)
            }),
        ),
        case("plan_truncated_json", Plan, PlanEdit(plan_truncated)),
        case("plan_edited_checksum_kept", Plan, PlanEdit(plan_edited)),
        case(
            "plan_duplicate_address",
            Plan,
            PlanEdit(plan_duplicate_address),
        ),
        case("plan_wrong_types", Plan, PlanEdit(plan_wrong_types)),
        case(
            "plan_missing_state",
            Plan,
            PlanEdit(|_, mut v| {
                v.as_object_mut().expect("object").remove("state");
                json_bytes(&v)
            }),
        ),
        case(
            "plan_unknown_state_backend",
            Plan,
            PlanEdit(|_, mut v| {
                v["state"] = json!({"backend": "s3", "bucket": "b"});
                json_bytes(&v)
            }),
        ),
        case(
            "plan_state_folder_missing",
            Plan,
            PlanEdit(plan_state_missing),
        ),
        case("plan_unknown_action", Plan, PlanEdit(plan_unknown_action)),
        case(
            "plan_bad_address",
            Plan,
            PlanEdit(|_, mut v| {
                v["plan"]["changes"][0]["address"] = json!("machine..central[[0]");
                json_bytes(&v)
            }),
        ),
        case(
            "plan_invalid_utf8",
            Plan,
            PlanEdit(|_, _| b"{\"format\": \"clusterform-plan\xff\xfe\"}".to_vec()),
        ),
        case(
            "plan_deeply_nested",
            Plan,
            PlanEdit(|_, _| {
                let mut b = b"{\"format\": \"clusterform-plan\", \"x\": ".to_vec();
                b.extend(std::iter::repeat_n(b'[', 100_000));
                b
            }),
        ),
        // ---- state files (state list) ----
        case(
            "state_garbage_bytes",
            State,
            StateSetup(|w, _| {
                let garbage: Vec<u8> = (0..8192u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect();
                write_state(w, &garbage);
                None
            }),
        ),
        case(
            "state_redb_header_then_garbage",
            State,
            StateSetup(|w, real| {
                let mut b = real[..4096.min(real.len())].to_vec();
                b.extend(
                    (0..real.len() as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8),
                );
                write_state(w, &b);
                None
            }),
        ),
        case(
            "state_truncated_copy",
            State,
            StateSetup(|w, real| {
                write_state(w, &real[..real.len() / 2]);
                None
            }),
        ),
        case(
            "state_truncated_to_header",
            State,
            StateSetup(|w, real| {
                write_state(w, &real[..100]);
                None
            }),
        ),
        case(
            "state_byte_flipped_in_each_record",
            State,
            StateSetup(|w, real| {
                let mut b = real.to_vec();
                for at in record_offsets(real) {
                    b[at] ^= 0x5a;
                }
                write_state(w, &b);
                None
            }),
        ),
        case(
            "state_byte_flipped_in_the_middle",
            State,
            StateSetup(|w, real| {
                // The middle of the file may be free space (nothing to notice): flip the
                // middle byte, and the first byte of the root page region too.
                let mut b = real.to_vec();
                let mid = b.len() / 2;
                b[mid] ^= 0xff;
                for x in &mut b[..64] {
                    *x ^= 0x01;
                }
                write_state(w, &b);
                None
            }),
        ),
        case(
            "state_file_is_a_directory",
            State,
            StateSetup(|w, _| {
                std::fs::create_dir_all(w.path().join(".clusterform/state.redb")).expect("mkdir");
                None
            }),
        ),
        case(
            "state_folder_is_a_file",
            State,
            StateSetup(|w, _| {
                std::fs::write(w.path().join(".clusterform"), b"not a folder").expect("write");
                None
            }),
        ),
        case(
            "state_lock_file_garbage_json",
            State,
            StateSetup(|w, real| {
                write_state(w, real);
                std::fs::write(w.path().join(".clusterform/lock"), b"{\"id\": 12, garbage")
                    .expect("write lock");
                Some(vec![
                    "force-unlock".into(),
                    "cluster.toml".into(),
                    "0f0f0f0f".into(),
                ])
            }),
        ),
        case(
            "state_folder_unreadable",
            State,
            StateSetup(|w, real| {
                use std::os::unix::fs::PermissionsExt;
                let p = write_state(w, real);
                let dir = p.parent().expect("dir");
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o000))
                    .expect("chmod");
                None
            }),
        ),
    ]
}

/// Every file under `dir` with its bytes (folders as `None`), to compare before/after.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.insert(p.clone(), None);
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    todo.push(e.path());
                }
            }
        } else {
            out.insert(p.clone(), Some(std::fs::read(&p).unwrap_or_default()));
        }
    }
    out
}

/// Text with whitespace and miette's frame characters removed: long paths may be
/// wrapped over several lines.
fn squash(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '│' | '·' | '╭' | '╰' | '─'))
        .collect()
}

/// `\w+\.(toml|bu):\d+:\d+` somewhere in `s`.
fn has_file_line_col(s: &str) -> bool {
    for ext in [".toml:", ".bu:"] {
        for (i, _) in s.match_indices(ext) {
            let before_ok = s[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            let rest = &s[i + ext.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if !before_ok || digits == 0 {
                continue;
            }
            let rest = &rest[digits..];
            if let Some(rest) = rest.strip_prefix(':')
                && rest.starts_with(|c: char| c.is_ascii_digit())
            {
                return true;
            }
        }
    }
    false
}

const BUTANE_CLUSTER: &str = "[cluster]\nname = \"demo\"\nblueprint = \"dev-test\"\nprovider = \"sim\"\n\n[central]\nsize = \"2cpu-4gb\"\nbutane = [\"x.bu\"]\n";

/// A real state file, made once by applying a small cluster.
fn real_state() -> Vec<u8> {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "2cpu-4gb", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    std::fs::read(w.path().join(".clusterform/state.redb")).expect("state file")
}

/// Set up the case's world; returns the command to run, or `None` to skip the case.
fn setup(w: &World, c: &Case, real: &[u8]) -> Option<Vec<String>> {
    let owned = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    match &c.input {
        Input::Toml(t) => {
            w.write("cluster.toml", t);
        }
        Input::TomlGen(f) => {
            w.write("cluster.toml", &f());
        }
        Input::TomlBytes(b) => {
            std::fs::write(w.path().join("cluster.toml"), b).expect("write");
        }
        Input::Bu(t) => {
            w.write("cluster.toml", BUTANE_CLUSTER);
            w.write("x.bu", t);
        }
        Input::BuGen(f) => {
            w.write("cluster.toml", BUTANE_CLUSTER);
            w.write("x.bu", &f());
        }
        Input::PlanEdit(f) => {
            w.write("cluster.toml", &dev_test("demo", 1, "2cpu-4gb", ""));
            w.run_ok(&["plan", "cluster.toml", "--out", "plan.json"], 0);
            let text = std::fs::read(w.path().join("plan.json")).expect("plan file");
            let v: Value = serde_json::from_slice(&text).expect("plan is JSON");
            std::fs::write(w.path().join("plan.json"), f(w, v)).expect("write plan");
            return Some(owned(&["apply", "plan.json", "--auto-approve"]));
        }
        Input::StateSetup(f) => {
            w.write("cluster.toml", &dev_test("demo", 1, "2cpu-4gb", ""));
            if c.name == "state_folder_unreadable" && is_root() {
                eprintln!(
                    "skipping {}: running as root, which reads a folder of mode 000 anyway",
                    c.name
                );
                return None;
            }
            let cmd = f(w, real);
            return Some(cmd.unwrap_or_else(|| owned(&["state", "list", "cluster.toml"])));
        }
    }
    Some(owned(&["validate", "cluster.toml"]))
}

fn check(c: &Case, w: &World, args: &[String], r: &Run) -> Result<(), String> {
    let fail = |why: &str| {
        Err(format!(
            "{} ({:?}): {why}\n  clusterform {args:?} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            c.name,
            c.kind,
            r.code,
            r.stdout.chars().take(2000).collect::<String>(),
            r.stderr.chars().take(4000).collect::<String>()
        ))
    };
    if r.stderr.contains("panicked at") {
        return fail("panicked");
    }
    if r.code != 1 {
        return fail("expected exit code 1");
    }
    if r.stderr.trim().is_empty() {
        return fail("empty stderr");
    }
    let flat = squash(&r.stderr);
    match c.kind {
        Kind::Config | Kind::Butane => {
            if !has_file_line_col(&r.stderr) {
                return fail("no file:line:column");
            }
            if c.kind == Kind::Butane && !r.stderr.contains("x.bu:") {
                return fail("the error does not name the Butane file");
            }
        }
        Kind::Plan => {
            if !flat.contains("plan.json") {
                return fail("the error does not name the plan file");
            }
            let json_syntax = [
                "plan_whitespace_then_brace",
                "plan_truncated_json",
                "plan_invalid_utf8",
                "plan_deeply_nested",
            ];
            if json_syntax.contains(&c.name)
                && !(flat.contains("plan.json`isnotavalidplanfile:line")
                    && flat.contains(",column"))
            {
                return fail("a JSON syntax error without line and column");
            }
        }
        Kind::State => {
            let state = squash(&w.path().join(".clusterform").display().to_string());
            if !flat.contains(&state) {
                return fail("the error does not name the state path");
            }
        }
    }
    Ok(())
}

#[test]
fn malformed_inputs_fail_cleanly() {
    let real = real_state();
    let cases = cases();
    let mut failures = Vec::new();
    let mut count = BTreeMap::<String, usize>::new();
    let mut ran = 0;
    for c in &cases {
        let w = World::new();
        let Some(args) = setup(&w, c, &real) else {
            continue;
        };
        let state_dir = w.path().join(".clusterform");
        let before = tree(&state_dir);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let r = w.run(&argv);
        let took = started.elapsed();
        // Let the test clean up a folder it made unreadable.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700));
        }
        if let Err(e) = check(c, &w, &args, &r) {
            failures.push(e);
        }
        if took > std::time::Duration::from_secs(20) {
            failures.push(format!("{}: took {took:?}", c.name));
        }
        let after = tree(&state_dir);
        for (p, b) in &before {
            if after.get(p) != Some(b) {
                failures.push(format!(
                    "{}: `{}` changed ({} -> {:?} bytes)",
                    c.name,
                    p.display(),
                    b.as_ref().map_or(0, Vec::len),
                    after.get(p).map(|a| a.as_ref().map_or(0, Vec::len))
                ));
            }
        }
        ran += 1;
        *count.entry(format!("{:?}", c.kind)).or_default() += 1;
    }
    println!("malformed inputs checked: {ran} ({count:?})");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 40, "only {ran} cases ran");
    assert!(count.get("Config").copied().unwrap_or(0) >= 15);
    assert!(count.get("Butane").copied().unwrap_or(0) >= 10);
    assert!(count.get("Plan").copied().unwrap_or(0) >= 8);
    assert!(count.get("State").copied().unwrap_or(0) >= 7);
}

/// A lock file holding garbage is a stale lock: reading the state is not refused, and
/// the lock file is left alone.
#[test]
fn garbage_lock_file_does_not_block_reading() {
    let w = World::new();
    w.write("cluster.toml", &dev_test("demo", 1, "2cpu-4gb", ""));
    w.run_ok(&["apply", "cluster.toml", "--auto-approve"], 0);
    w.write(".clusterform/lock", "{\"id\": 12, garbage");
    let r = w.run_ok(&["state", "list", "cluster.toml"], 0);
    assert!(r.stdout.contains("machine.workers[0]"), "{r:?}");
    assert!(!r.stderr.contains("panicked at"), "{r:?}");
}
