//! Short summaries and diffs of Ignition configs for plans: a change of user data is
//! shown as a list of changed units, files and users (with a few changed lines of
//! text), not as base64.

use std::collections::BTreeMap;

use crate::dataurl::decode;
use crate::types::{Config, Directory, File, Link, Resource, Unit, User};

/// At most this many changed lines of text are shown per unit or file.
pub const MAX_CHANGED_LINES: usize = 3;

/// The change between two configs, one line per changed item, with indented lines of
/// changed text under it. Empty when the configs are equivalent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// The lines, e.g. `~ file /etc/hostname (contents changed)` then `    - a` /
    /// `    + b`.
    pub lines: Vec<String>,
}

impl ConfigDiff {
    /// No difference.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A one-line summary of an Ignition config, e.g.
/// `ignition 3.3.0: 3 units, 2 files, 1 user`, or `not an Ignition config`.
pub fn summarize(json: &str) -> String {
    let Ok(c) = serde_json::from_str::<Config>(json) else {
        return String::from("not an Ignition config");
    };
    let units = c.systemd.as_ref().map_or(0, |s| s.units.len());
    let users = c.passwd.as_ref().map_or(0, |p| p.users.len());
    let (files, dirs, links) = c.storage.as_ref().map_or((0, 0, 0), |s| {
        (s.files.len(), s.directories.len(), s.links.len())
    });
    let mut parts = vec![
        plural(units, "unit"),
        plural(files, "file"),
        plural(users, "user"),
    ];
    if dirs > 0 {
        parts.push(plural(dirs, "directory").replace("directorys", "directories"));
    }
    if links > 0 {
        parts.push(plural(links, "link"));
    }
    format!("ignition {}: {}", c.ignition.version, parts.join(", "))
}

/// What kind of item a diff group is about; the order of groups in the output.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ignition,
    User,
    Unit,
    File,
    Directory,
    Link,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Ignition => "ignition",
            Kind::User => "user",
            Kind::Unit => "unit",
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Link => "link",
        }
    }
}

struct Group {
    key: (Kind, String),
    lines: Vec<String>,
}

/// Diff two Ignition configs (as JSON). Items are matched by unit name, path and user
/// name; groups come out sorted by kind (user, unit, file, directory, link) and name.
pub fn diff_configs(before_json: &str, after_json: &str) -> ConfigDiff {
    let before = serde_json::from_str::<Config>(before_json);
    let after = serde_json::from_str::<Config>(after_json);
    let (before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        _ => {
            let lines = if before_json == after_json {
                Vec::new()
            } else {
                vec![String::from("~ user data changed (not an Ignition config)")]
            };
            return ConfigDiff { lines };
        }
    };
    let mut groups = Vec::new();
    if before.ignition.version != after.ignition.version {
        groups.push(Group {
            key: (Kind::Ignition, String::new()),
            lines: vec![format!(
                "~ ignition version {} -> {}",
                before.ignition.version, after.ignition.version
            )],
        });
    }
    let users = |c: &Config| {
        c.passwd
            .as_ref()
            .map(|p| p.users.clone())
            .unwrap_or_default()
    };
    let units = |c: &Config| {
        c.systemd
            .as_ref()
            .map(|s| s.units.clone())
            .unwrap_or_default()
    };
    let storage = |c: &Config| c.storage.clone().unwrap_or_default();
    let (sb, sa) = (storage(&before), storage(&after));
    diff_items(
        &mut groups,
        Kind::User,
        users(&before),
        users(&after),
        |u| u.name.clone(),
        user_changes,
    );
    diff_items(
        &mut groups,
        Kind::Unit,
        units(&before),
        units(&after),
        |u| u.name.clone(),
        unit_changes,
    );
    diff_items(
        &mut groups,
        Kind::File,
        sb.files,
        sa.files,
        |f| f.path.clone(),
        file_changes,
    );
    diff_items(
        &mut groups,
        Kind::Directory,
        sb.directories,
        sa.directories,
        |d| d.path.clone(),
        directory_changes,
    );
    diff_items(
        &mut groups,
        Kind::Link,
        sb.links,
        sa.links,
        |l| l.path.clone(),
        link_changes,
    );
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    ConfigDiff {
        lines: groups.into_iter().flat_map(|g| g.lines).collect(),
    }
}

/// The changes of one item: short notes for the header line and detail lines.
#[derive(Default)]
struct Changes {
    notes: Vec<String>,
    details: Vec<String>,
}

fn diff_items<T>(
    groups: &mut Vec<Group>,
    kind: Kind,
    before: Vec<T>,
    after: Vec<T>,
    key: fn(&T) -> String,
    changes: fn(&T, &T) -> Changes,
) {
    // Later entries with the same key win, as in Ignition's merge.
    let before: BTreeMap<String, T> = before.into_iter().map(|t| (key(&t), t)).collect();
    let after: BTreeMap<String, T> = after.into_iter().map(|t| (key(&t), t)).collect();
    for (name, b) in &before {
        match after.get(name) {
            None => groups.push(Group {
                key: (kind, name.clone()),
                lines: vec![format!("- {} {name}", kind.word())],
            }),
            Some(a) => {
                let c = changes(b, a);
                if !c.notes.is_empty() {
                    let mut lines =
                        vec![format!("~ {} {name} ({})", kind.word(), c.notes.join(", "))];
                    lines.extend(c.details);
                    groups.push(Group {
                        key: (kind, name.clone()),
                        lines,
                    });
                }
            }
        }
    }
    for name in after.keys() {
        if !before.contains_key(name) {
            groups.push(Group {
                key: (kind, name.clone()),
                lines: vec![format!("+ {} {name}", kind.word())],
            });
        }
    }
}

fn show_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| String::from("unset"), |v| v.to_string())
}

fn show_mode(v: Option<u32>) -> String {
    v.map_or_else(|| String::from("unset"), |m| format!("{m:04o}"))
}

fn field<T: PartialEq + Copy>(
    c: &mut Changes,
    name: &str,
    b: Option<T>,
    a: Option<T>,
    show: fn(Option<T>) -> String,
) {
    if b != a {
        c.notes.push(format!("{name} {} -> {}", show(b), show(a)));
    }
}

fn user_changes(b: &User, a: &User) -> Changes {
    let mut c = Changes::default();
    if b.ssh_authorized_keys != a.ssh_authorized_keys {
        c.notes.push(String::from("ssh keys changed"));
    }
    if b.groups != a.groups {
        c.notes.push(String::from("groups changed"));
    }
    c
}

fn unit_changes(b: &Unit, a: &Unit) -> Changes {
    let mut c = Changes::default();
    field(&mut c, "enabled", b.enabled, a.enabled, show_opt);
    field(&mut c, "mask", b.mask, a.mask, show_opt);
    let mut budget = MAX_CHANGED_LINES;
    if b.contents != a.contents {
        c.notes.push(String::from("contents changed"));
        text_details(
            &mut c.details,
            b.contents.as_deref().unwrap_or(""),
            a.contents.as_deref().unwrap_or(""),
            &mut budget,
        );
    }
    let before: BTreeMap<&str, Option<&str>> = b
        .dropins
        .iter()
        .map(|d| (d.name.as_str(), d.contents.as_deref()))
        .collect();
    let after: BTreeMap<&str, Option<&str>> = a
        .dropins
        .iter()
        .map(|d| (d.name.as_str(), d.contents.as_deref()))
        .collect();
    for (name, bc) in &before {
        match after.get(name) {
            None => c.notes.push(format!("drop-in {name} removed")),
            Some(ac) if ac != bc => {
                c.notes.push(format!("drop-in {name} changed"));
                text_details(
                    &mut c.details,
                    bc.unwrap_or(""),
                    ac.unwrap_or(""),
                    &mut budget,
                );
            }
            Some(_) => {}
        }
    }
    for name in after.keys() {
        if !before.contains_key(name) {
            c.notes.push(format!("drop-in {name} added"));
        }
    }
    c
}

/// The bytes of a file's contents, or the raw source when it is not a data URL.
fn file_bytes(r: Option<&Resource>) -> Result<Vec<u8>, String> {
    let Some(r) = r else {
        return Ok(Vec::new());
    };
    let Some(source) = r.source.as_deref() else {
        return Ok(Vec::new());
    };
    match decode(source, r.compression.as_deref()) {
        Some((bytes, _)) => Ok(bytes),
        None => Err(format!(
            "{source} {}",
            r.compression.as_deref().unwrap_or("")
        )),
    }
}

fn file_changes(b: &File, a: &File) -> Changes {
    let mut c = Changes::default();
    match (
        file_bytes(b.contents.as_ref()),
        file_bytes(a.contents.as_ref()),
    ) {
        (Ok(bb), Ok(ab)) => {
            if bb != ab {
                c.notes.push(String::from("contents changed"));
                if let (Ok(bt), Ok(at)) = (std::str::from_utf8(&bb), std::str::from_utf8(&ab)) {
                    let mut budget = MAX_CHANGED_LINES;
                    text_details(&mut c.details, bt, at, &mut budget);
                }
            }
        }
        (Err(bs), Err(as_)) if bs == as_ => {}
        _ => c.notes.push(String::from("source changed")),
    }
    field(&mut c, "mode", b.mode, a.mode, show_mode);
    field(&mut c, "overwrite", b.overwrite, a.overwrite, show_opt);
    c
}

fn directory_changes(b: &Directory, a: &Directory) -> Changes {
    let mut c = Changes::default();
    field(&mut c, "mode", b.mode, a.mode, show_mode);
    field(&mut c, "overwrite", b.overwrite, a.overwrite, show_opt);
    c
}

fn link_changes(b: &Link, a: &Link) -> Changes {
    let mut c = Changes::default();
    if b.target != a.target {
        c.notes.push(format!("target {} -> {}", b.target, a.target));
    }
    field(&mut c, "hard", b.hard, a.hard, show_opt);
    field(&mut c, "overwrite", b.overwrite, a.overwrite, show_opt);
    c
}

/// Append `    - old` / `    + new` lines for the changed lines of two texts, at most
/// `budget` changed lines (a removed line, an added line or a replaced pair counts as
/// one), and a `    … N more changed lines` line when some were left out.
fn text_details(out: &mut Vec<String>, before: &str, after: &str, budget: &mut usize) {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let ops = line_diff(&b, &a);
    // Group runs of removals and additions into changed lines.
    let mut changed: Vec<(Option<&str>, Option<&str>)> = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        while i < ops.len() && !matches!(ops[i], Op::Same) {
            match ops[i] {
                Op::Del(l) => removed.push(l),
                Op::Add(l) => added.push(l),
                Op::Same => {}
            }
            i += 1;
        }
        for k in 0..removed.len().max(added.len()) {
            changed.push((removed.get(k).copied(), added.get(k).copied()));
        }
        i += 1;
    }
    let shown = changed.len().min(*budget);
    for (old, new) in &changed[..shown] {
        if let Some(old) = old {
            out.push(format!("    - {old}"));
        }
        if let Some(new) = new {
            out.push(format!("    + {new}"));
        }
    }
    *budget -= shown;
    if changed.len() > shown {
        out.push(format!(
            "    … {} more changed line{}",
            changed.len() - shown,
            if changed.len() - shown == 1 { "" } else { "s" }
        ));
    }
}

enum Op<'a> {
    Same,
    Del(&'a str),
    Add(&'a str),
}

/// A line diff by longest common subsequence (the texts are small: unit files and
/// config files). Very long texts fall back to comparing line by line.
fn line_diff<'a>(b: &[&'a str], a: &[&'a str]) -> Vec<Op<'a>> {
    let (n, m) = (b.len(), a.len());
    if n.saturating_mul(m) > 4_000_000 {
        let mut ops = Vec::new();
        for k in 0..n.max(m) {
            match (b.get(k), a.get(k)) {
                (Some(x), Some(y)) if x == y => ops.push(Op::Same),
                (x, y) => {
                    if let Some(x) = x {
                        ops.push(Op::Del(x));
                    }
                    if let Some(y) = y {
                        ops.push(Op::Add(y));
                    }
                }
            }
        }
        return ops;
    }
    // lcs[i][j] = LCS length of b[i..] and a[j..]
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if b[i] == a[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && b[i] == a[j] {
            ops.push(Op::Same);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[at(i, j + 1)] >= lcs[at(i + 1, j)]) {
            ops.push(Op::Add(a[j]));
            j += 1;
        } else {
            ops.push(Op::Del(b[i]));
            i += 1;
        }
    }
    ops
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::role::{EtcdMember, MachineSpec, Platform, StaticNetwork, render};
    use crate::to_json;
    use std::net::Ipv4Addr;

    fn spec() -> MachineSpec {
        MachineSpec {
            hostname: "c0".into(),
            platform: Platform::Sim,
            ssh_authorized_keys: vec!["k1".into()],
            network: Some(StaticNetwork {
                address: Ipv4Addr::new(10, 0, 0, 101),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                dns: vec![Ipv4Addr::new(1, 2, 3, 4)],
                vlan: None,
            }),
            docker_tcp: false,
            etcd: Some(EtcdMember {
                name: "c0".into(),
                address: Ipv4Addr::new(10, 0, 0, 101),
                initial_cluster: vec![("c0".into(), Ipv4Addr::new(10, 0, 0, 101))],
                cluster_token: "demo".into(),
            }),
            etcd_proxy: None,
            etcd_endpoints: vec!["http://10.0.0.101:2379".into()],
            tls: None,
        }
    }

    #[test]
    fn summary() {
        let mut s = spec();
        s.docker_tcp = true;
        assert_eq!(
            summarize(&to_json(&render(&s, &[]))),
            "ignition 3.3.0: 3 units, 3 files, 1 user"
        );
        assert_eq!(summarize("#cloud-config"), "not an Ignition config");
        assert_eq!(
            summarize(r#"{"ignition":{"version":"3.3.0"}}"#),
            "ignition 3.3.0: 0 units, 0 files, 0 users"
        );
    }

    #[test]
    fn identical_configs_have_no_diff() {
        let j = to_json(&render(&spec(), &[]));
        assert!(diff_configs(&j, &j).is_empty());
    }

    #[test]
    fn role_changes() {
        let before = spec();
        let mut after = spec();
        after.hostname = "c1".into();
        after.ssh_authorized_keys.push("k2".into());
        after.etcd_endpoints.clear();
        after.etcd_proxy = Some(vec!["http://10.0.0.101:2379".into()]);
        if let Some(m) = after.etcd.as_mut() {
            m.cluster_token = "prod".into();
        }
        let d = diff_configs(
            &to_json(&render(&before, &[])),
            &to_json(&render(&after, &[])),
        );
        assert_eq!(
            d.lines,
            [
                "~ user core (ssh keys changed)",
                "+ unit etcd-grpc-proxy.service",
                "~ unit etcd-member.service (drop-in 20-clct-etcd-member.conf changed)",
                "    -   --initial-cluster-token=\"demo\" \\",
                "    +   --initial-cluster-token=\"prod\" \\",
                "- file /etc/etcd-endpoints.env",
                "~ file /etc/hostname (contents changed)",
                "    - c0",
                "    + c1",
            ]
            .map(|s| s
                .replace("    - --", "    -   --")
                .replace("    + --", "    +   --"))
        );
    }

    #[test]
    fn at_most_three_changed_lines_and_gzip_decoded() {
        let mut c = render(&spec(), &[]);
        let old: String = (0..50)
            .map(|i| format!("line {i} aaaaaaaaaaaaaaaa\n"))
            .collect();
        let new = old
            .replace("line 1 ", "LINE 1 ")
            .replace("line 2 ", "LINE 2 ")
            .replace("line 30 ", "LINE 30 ")
            .replace("line 40 ", "LINE 40 ");
        let files = &mut c.storage.as_mut().unwrap().files;
        files[0].contents = Some(crate::dataurl::make_resource(old.as_bytes()));
        assert_eq!(
            files[0].contents.as_ref().unwrap().compression.as_deref(),
            Some("gzip")
        );
        let before = to_json(&c);
        let files = &mut c.storage.as_mut().unwrap().files;
        files[0].contents = Some(crate::dataurl::make_resource(new.as_bytes()));
        files[0].mode = Some(0o600);
        let d = diff_configs(&before, &to_json(&c));
        assert_eq!(
            d.lines,
            [
                "~ file /etc/hostname (contents changed, mode 0644 -> 0600)",
                "    - line 1 aaaaaaaaaaaaaaaa",
                "    + LINE 1 aaaaaaaaaaaaaaaa",
                "    - line 2 aaaaaaaaaaaaaaaa",
                "    + LINE 2 aaaaaaaaaaaaaaaa",
                "    - line 30 aaaaaaaaaaaaaaaa",
                "    + LINE 30 aaaaaaaaaaaaaaaa",
                "    … 1 more changed line",
            ]
        );
    }

    #[test]
    fn unit_fields_dropins_links_directories() {
        let a = r#"{"ignition":{"version":"3.3.0"},
            "storage":{"directories":[{"path":"/d","mode":493}],"links":[{"path":"/l","target":"/a"}]},
            "systemd":{"units":[{"name":"x.service","enabled":true,"dropins":[{"name":"a.conf","contents":"A"}]}]}}"#;
        let b = r#"{"ignition":{"version":"3.3.0"},
            "storage":{"directories":[{"path":"/d","mode":448}],"links":[{"path":"/l","target":"/b"}]},
            "systemd":{"units":[{"name":"x.service","enabled":false,"contents":"[Unit]\n","dropins":[{"name":"b.conf","contents":"B"}]}]}}"#;
        assert_eq!(
            diff_configs(a, b).lines,
            [
                "~ unit x.service (enabled true -> false, contents changed, drop-in a.conf removed, drop-in b.conf added)",
                "    + [Unit]",
                "~ directory /d (mode 0755 -> 0700)",
                "~ link /l (target /a -> /b)",
            ]
        );
        assert_eq!(
            diff_configs("nonsense", a).lines,
            ["~ user data changed (not an Ignition config)"]
        );
    }

    #[test]
    fn diff_is_deterministic() {
        let mut after = spec();
        after.docker_tcp = true;
        let (b, a) = (
            to_json(&render(&spec(), &[])),
            to_json(&render(&after, &[])),
        );
        let first = diff_configs(&b, &a);
        assert_eq!(
            first.lines,
            [
                "+ unit docker-tcp.socket",
                "+ unit enable-docker-tcp.service"
            ]
        );
        assert_eq!(diff_configs(&b, &a), first);
    }
}
