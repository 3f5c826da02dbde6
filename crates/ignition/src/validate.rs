//! Ignition's own validation rules (spec 3.3, as `ignition-validate` and Ignition at
//! first boot apply them) for the subset clusterform writes: clean absolute paths,
//! unit and drop-in suffixes, unit contents systemd can parse, link targets, links in
//! the way of other nodes, duplicate entries, `overwrite` without contents, and paths
//! that collide with a unit's own file.
//!
//! Ported from `config/v3_3/types/*.go`, `config/validate/validate.go` and go-systemd's
//! unit lexer. One rule is stricter than Ignition: a unit or drop-in name containing
//! `/` is refused (Ignition only looks at the suffix, and would write the unit into a
//! subfolder systemd never reads).

use std::collections::{BTreeSet, HashSet};

use crate::types::Config;

/// One rule a config breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where in the config, like `storage.files[2].path`.
    pub pointer: String,
    /// The Butane key that identifies the entry (`path` or `name`), to find it in a file.
    pub key: &'static str,
    /// That key's value in the offending entry.
    pub value: String,
    /// Which entry with that key and value is meant (0 the first, 1 the second ...).
    pub occurrence: usize,
    /// The `path` of another entry the problem is about (the link another node is
    /// under), to point at when the entry itself is not in a Butane file.
    pub related: Option<String>,
    /// What is wrong (Ignition's wording, then ours).
    pub message: String,
    /// What to do.
    pub help: String,
}

/// The unit suffixes Ignition accepts (`config/v3_3/types/unit.go`).
pub const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".snapshot",
    ".slice",
    ".scope",
];

/// systemd's longest line (go-systemd's `SYSTEMD_LINE_MAX`).
const LINE_MAX: usize = 2048;

/// Go's `path.Clean` for absolute and relative slash paths.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_owned(),
        (false, false) => body,
    }
}

/// Go's `path.Ext`: the suffix from the last `.` of the last element.
fn ext(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rfind('.') {
        Some(i) => &last[i..],
        None => "",
    }
}

/// Ignition's `validatePath`: the message, or None when the path is fine.
fn path_error(p: &str) -> Option<String> {
    if p.is_empty() {
        Some("path not specified".to_owned())
    } else if !p.starts_with('/') {
        Some(format!("path not absolute: {p:?}"))
    } else if clean_path(p) != p {
        Some(format!(
            "path is not fully simplified: {p:?} (clean: {:?})",
            clean_path(p)
        ))
    } else {
        None
    }
}

/// Whether `c` is a space to Go's `unicode.IsSpace`.
fn go_space(c: char) -> bool {
    c.is_whitespace()
}

/// Read to the end of the line: (the line, eof). Like go-systemd, which trims `\r`
/// before `\n`: a `\r` before the newline stays, one at the end of the text goes.
fn to_eol<'b>(b: &'b [u8], pos: &mut usize) -> (&'b [u8], bool) {
    let start = *pos;
    match b[start..].iter().position(|&c| c == b'\n') {
        Some(i) => {
            *pos = start + i + 1;
            (&b[start..start + i], false)
        }
        None => {
            *pos = b.len();
            let line = &b[start..];
            (line.strip_suffix(b"\r").unwrap_or(line), true)
        }
    }
}

/// The next character, advancing `pos`.
fn next_char(text: &str, pos: &mut usize) -> Option<char> {
    let c = text.get(*pos..)?.chars().next()?;
    *pos += c.len_utf8();
    Some(c)
}

/// go-systemd's unit lexer (`unit.DeserializeOptions`), which Ignition runs on every
/// unit and drop-in: the error it gives `contents`, or None.
pub fn unit_contents_error(text: &str) -> Option<String> {
    #[derive(Clone, Copy)]
    enum Step {
        NextSection,
        SectionName,
        SectionSuffix,
        Ignore(bool),
        NextSectionOrOption,
        OptionName,
        OptionValue,
    }
    let b = text.as_bytes();
    let mut pos = 0usize;
    let mut step = Step::NextSection;
    loop {
        // systemd truncates longer lines; go-systemd refuses them.
        if b.len() - pos >= LINE_MAX
            && !b[pos..pos + LINE_MAX]
                .iter()
                .any(|c| *c == b'\n' || *c == b'\r')
        {
            return Some(format!("line too long (max {LINE_MAX} bytes)"));
        }
        step = match step {
            Step::NextSection => match next_char(text, &mut pos) {
                None => return None,
                Some('[') => Step::SectionName,
                Some('#' | ';') => Step::Ignore(false),
                Some(_) => Step::NextSection,
            },
            Step::SectionName => match b[pos..].iter().position(|&c| c == b']') {
                Some(i) => {
                    pos += i + 1;
                    Step::SectionSuffix
                }
                None => return Some("unable to find end of section".to_owned()),
            },
            Step::SectionSuffix => {
                let (garbage, _) = to_eol(b, &mut pos);
                let garbage = String::from_utf8_lossy(garbage);
                if !garbage.trim_matches(go_space).is_empty() {
                    return Some(format!(
                        "found garbage after section name: {:?}",
                        garbage.trim_matches(go_space)
                    ));
                }
                Step::NextSectionOrOption
            }
            Step::Ignore(in_section) => {
                loop {
                    let (line, eof) = to_eol(b, &mut pos);
                    let line = line.strip_suffix(b" ").unwrap_or(line);
                    if !line.ends_with(b"\\") || eof {
                        break;
                    }
                }
                if in_section {
                    Step::NextSectionOrOption
                } else {
                    Step::NextSection
                }
            }
            Step::NextSectionOrOption => match next_char(text, &mut pos) {
                None => return None,
                Some(c) if go_space(c) => Step::NextSectionOrOption,
                Some('[') => Step::SectionName,
                Some('#' | ';') => Step::Ignore(true),
                Some(c) => {
                    pos -= c.len_utf8();
                    Step::OptionName
                }
            },
            Step::OptionName => loop {
                match next_char(text, &mut pos) {
                    None => return Some("EOF (an option name without `=`)".to_owned()),
                    Some('\n' | '\r') => {
                        return Some(
                            "unexpected newline encountered while parsing option name (a line without `=`)"
                                .to_owned(),
                        );
                    }
                    Some('=') => break Step::OptionValue,
                    Some(_) => {}
                }
            },
            Step::OptionValue => {
                let (line, eof) = to_eol(b, &mut pos);
                let blank = String::from_utf8_lossy(line)
                    .trim_matches(go_space)
                    .is_empty();
                if !blank && line.ends_with(b"\\") && !eof {
                    Step::OptionValue
                } else {
                    Step::NextSectionOrOption
                }
            }
        };
    }
}

impl Problem {
    fn new(
        pointer: String,
        key: &'static str,
        value: &str,
        occurrence: usize,
        message: String,
        help: impl Into<String>,
    ) -> Problem {
        Problem {
            pointer,
            key,
            value: value.to_owned(),
            occurrence,
            related: None,
            message,
            help: help.into(),
        }
    }
}

/// Count of earlier entries whose `key` equals `value` (for [`Problem::occurrence`]).
fn nth<'a>(seen: &mut Vec<&'a str>, value: &'a str) -> usize {
    let n = seen.iter().filter(|v| **v == value).count();
    seen.push(value);
    n
}

const PATH_HELP: &str =
    "write an absolute path without `.`, `..`, `//` or a trailing `/`, like /etc/example.conf";

/// Every rule `config` breaks, in Ignition's order (per entry, then across entries).
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    let empty = Vec::new();
    let storage = config.storage.as_ref();
    let files = storage.map_or(&empty, |s| &s.files);
    let dirs_empty = Vec::new();
    let dirs = storage.map_or(&dirs_empty, |s| &s.directories);
    let links_empty: Vec<crate::types::Link> = Vec::new();
    let links = storage.map_or(&links_empty, |s| &s.links);
    let units_empty = Vec::new();
    let units = config.systemd.as_ref().map_or(&units_empty, |s| &s.units);
    let users_empty = Vec::new();
    let users = config.passwd.as_ref().map_or(&users_empty, |p| &p.users);

    // Files, directories and links share one key space (`Storage.MergedKeys`): each
    // with its list, index in the list, path, and which entry of that path it is.
    let mut path_seen: Vec<&str> = Vec::new();
    let mut nodes: Vec<(&str, usize, &str, usize)> = Vec::new();
    for (list, paths) in [
        (
            "directories",
            dirs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(),
        ),
        ("files", files.iter().map(|f| f.path.as_str()).collect()),
        ("links", links.iter().map(|l| l.path.as_str()).collect()),
    ] {
        for (i, p) in paths.into_iter().enumerate() {
            nodes.push((list, i, p, nth(&mut path_seen, p)));
        }
    }
    let mut node_paths: HashSet<&str> = HashSet::new();
    let under_link = |p: &str| {
        links
            .iter()
            .find(|l| p.starts_with(&format!("{}/", l.path)))
    };
    for &(list, i, p, occ) in &nodes {
        if let Some(m) = path_error(p) {
            out.push(Problem::new(
                format!("storage.{list}[{i}].path"),
                "path",
                p,
                occ,
                m,
                PATH_HELP,
            ));
        }
        if !node_paths.insert(p) {
            out.push(Problem::new(
                format!("storage.{list}[{i}]"),
                "path",
                p,
                occ,
                format!("duplicate entry defined: {p:?} is already a file, directory or link in this config"),
                "give each path one entry in storage.files, storage.directories or storage.links (remove or rename one of them)",
            ));
        }
        if let Some(l) = under_link(p) {
            let what = match list {
                "directories" => "directory",
                "files" => "file",
                _ => "link",
            };
            let mut problem = Problem::new(
                format!("storage.{list}[{i}]"),
                "path",
                p,
                occ,
                format!(
                    "{what} path includes link in config: {p:?} is under the link {:?}",
                    l.path
                ),
                format!(
                    "Ignition does not follow links it creates: put the {what} at the link's target, or drop the link"
                ),
            );
            problem.related = Some(l.path.clone());
            out.push(problem);
        }
        if list == "files"
            && let Some(f) = files.get(i)
            && f.overwrite == Some(true)
            && f.contents
                .as_ref()
                .and_then(|c| c.source.as_ref())
                .is_none()
        {
            out.push(Problem::new(
                format!("storage.files[{i}].overwrite"),
                "path",
                p,
                occ,
                "overwrite must be false if source is unspecified".to_owned(),
                "give the file `contents` (inline or local), or drop `overwrite: true`",
            ));
        }
        if list != "links" {
            continue;
        }
        let Some(l) = links.get(i) else { continue };
        if l.target.is_empty() {
            out.push(Problem::new(
                format!("storage.links[{i}].target"),
                "path",
                p,
                occ,
                "link target is required".to_owned(),
                "set `target` to what the link points to, like /usr/bin/true",
            ));
            continue;
        }
        if l.hard == Some(true) {
            let cleaned = clean_path(&l.target);
            let target = if cleaned.starts_with('/') {
                cleaned
            } else {
                clean_path(&format!("{}/{}", l.path, l.target))
            };
            if dirs.iter().any(|d| d.path == target) {
                out.push(Problem::new(
                    format!("storage.links[{i}]"),
                    "path",
                    p,
                    occ,
                    format!("hard link target is a directory: {target:?}"),
                    "a hard link must point at a file: make it a symbolic link (`hard: false`) or point it at a file",
                ));
            }
        }
    }

    // Units and drop-ins.
    let mut unit_names: HashSet<&str> = HashSet::new();
    let mut unit_seen: Vec<&str> = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let occ = nth(&mut unit_seen, &u.name);
        if !UNIT_SUFFIXES.contains(&ext(&u.name)) {
            out.push(Problem::new(
                format!("systemd.units[{i}].name"),
                "name",
                &u.name,
                occ,
                format!("invalid systemd unit extension: {:?}", u.name),
                format!(
                    "name the unit with one of the suffixes {}, like example.service",
                    UNIT_SUFFIXES.join(", ")
                ),
            ));
        } else if u.name.contains('/') {
            out.push(Problem::new(format!("systemd.units[{i}].name"), "name", &u.name, occ,
                format!("unit name {:?} contains `/` (clusterform refuses it: systemd would never read a unit in a subfolder)", u.name),
                "name the unit without `/`, like example.service"));
        }
        if let Some(e) = u.contents.as_deref().and_then(unit_contents_error) {
            out.push(Problem::new(format!("systemd.units[{i}].contents"), "name", &u.name, occ,
                format!("invalid unit content: {e}"),
                "write the unit as systemd expects: `[Section]` headers, then `Key=value` lines, each under 2048 bytes"));
        }
        if !unit_names.insert(&u.name) {
            out.push(Problem::new(
                format!("systemd.units[{i}]"),
                "name",
                &u.name,
                occ,
                format!("duplicate entry defined: unit {:?} is listed twice", u.name),
                "list each unit once (put its drop-ins and settings in one entry)",
            ));
        }
        let mut dropin_names: HashSet<&str> = HashSet::new();
        for (j, d) in u.dropins.iter().enumerate() {
            if let Some(e) = d.contents.as_deref().and_then(unit_contents_error) {
                out.push(Problem::new(format!("systemd.units[{i}].dropins[{j}].contents"), "name", &d.name, 0,
                    format!("invalid unit content in drop-in {:?} of {:?}: {e}", d.name, u.name),
                    "write the drop-in as systemd expects: `[Section]` headers, then `Key=value` lines, each under 2048 bytes"));
            }
            if ext(&d.name) != ".conf" {
                out.push(Problem::new(
                    format!("systemd.units[{i}].dropins[{j}].name"),
                    "name",
                    &d.name,
                    0,
                    format!(
                        "invalid systemd drop-in extension: {:?} (of unit {:?})",
                        d.name, u.name
                    ),
                    "name the drop-in with the suffix .conf, like 10-example.conf",
                ));
            } else if d.name.contains('/') {
                out.push(Problem::new(format!("systemd.units[{i}].dropins[{j}].name"), "name", &d.name, 0,
                    format!("drop-in name {:?} of {:?} contains `/` (clusterform refuses it: systemd reads drop-ins only directly in {}.d/)", d.name, u.name, u.name),
                    "name the drop-in without `/`, like 10-example.conf"));
            }
            if !dropin_names.insert(&d.name) {
                out.push(Problem::new(
                    format!("systemd.units[{i}].dropins[{j}]"),
                    "name",
                    &d.name,
                    1,
                    format!(
                        "duplicate entry defined: drop-in {:?} of {:?} is listed twice",
                        d.name, u.name
                    ),
                    "list each drop-in of a unit once",
                ));
            }
        }
    }

    // Users.
    let mut user_names: HashSet<&str> = HashSet::new();
    let mut user_seen: Vec<&str> = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let occ = nth(&mut user_seen, &u.name);
        if !user_names.insert(&u.name) {
            out.push(Problem::new(
                format!("passwd.users[{i}]"),
                "name",
                &u.name,
                occ,
                format!("duplicate entry defined: user {:?} is listed twice", u.name),
                "list each user once, with all its keys and groups",
            ));
        }
        for (list, what, items) in [
            ("sshAuthorizedKeys", "SSH key", &u.ssh_authorized_keys),
            ("groups", "group", &u.groups),
        ] {
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            for (j, k) in items.iter().enumerate() {
                if !seen.insert(k) {
                    out.push(Problem::new(
                        format!("passwd.users[{i}].{list}[{j}]"),
                        "name",
                        &u.name,
                        occ,
                        format!(
                            "duplicate entry defined: user {:?} lists the {what} {k:?} twice",
                            u.name
                        ),
                        format!("list each {what} once"),
                    ));
                }
            }
        }
    }

    // A file, directory or link where a unit or drop-in with contents is written
    // (Ignition 2.15 and later; `config/v3_3/types/config.go`).
    let mut unit_paths: HashSet<String> = HashSet::new();
    for u in units {
        if u.contents.as_deref().is_some_and(|c| !c.is_empty()) {
            unit_paths.insert(format!("/etc/systemd/system/{}", u.name));
        }
        for d in &u.dropins {
            if d.contents.as_deref().is_some_and(|c| !c.is_empty()) {
                unit_paths.insert(format!("/etc/systemd/system/{}.d/{}", u.name, d.name));
            }
        }
    }
    for &(list, i, p, occ) in &nodes {
        if unit_paths.contains(p) {
            out.push(Problem::new(
                format!("storage.{list}[{i}].path"),
                "path",
                p,
                occ,
                format!("path {p:?} conflicts with a systemd unit or drop-in of the same path in this config"),
                "write the unit with systemd.units (contents or dropins), not as a file, or the other way round",
            ));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::types::{Directory, Dropin, File, Link, Storage, Systemd, Unit};

    #[test]
    fn clean_path_is_go_path_clean() {
        for (p, want) in [
            ("/", "/"),
            ("/etc/x", "/etc/x"),
            ("/etc/x/", "/etc/x"),
            ("/etc//x", "/etc/x"),
            ("/etc/./x", "/etc/x"),
            ("/etc/../x", "/x"),
            ("/..", "/"),
            ("a/../..", ".."),
            ("", "."),
            ("./a", "a"),
        ] {
            assert_eq!(clean_path(p), want, "{p}");
        }
    }

    #[test]
    fn unit_lexer_matches_go_systemd() {
        let ok = [
            "",
            "[Unit]\nDescription=x\n",
            "junk before\n[Service]\nExecStart=/bin/true",
            "[Service]\n# comment \\\n continued\nA=b \\\n  c\n\n  B=c\n",
            "[A]\r\nB=c\r\n",
            "[Unit\nA=b]\n",
        ];
        for t in ok {
            assert_eq!(unit_contents_error(t), None, "{t:?}");
        }
        let bad = [
            ("[Unit]\nDescription\n", "unexpected newline"),
            ("[Unit]\nDescription", "EOF"),
            ("[Unit] x\n", "garbage"),
            ("[Unit\nA=b\n", "end of section"),
        ];
        for (t, want) in bad {
            let e = unit_contents_error(t).unwrap_or_default();
            assert!(e.contains(want), "{t:?}: {e:?}");
        }
        let long = format!("[Service]\nExecStart=/bin/echo {}\n", "x".repeat(3000));
        assert!(unit_contents_error(&long).unwrap().contains("too long"));
    }

    fn messages(c: &Config) -> Vec<String> {
        validate(c)
            .into_iter()
            .map(|p| format!("{}: {}", p.pointer, p.message))
            .collect()
    }

    #[test]
    fn nodes_share_one_key_space_and_links_block_paths() {
        let c = Config {
            storage: Some(Storage {
                directories: vec![Directory {
                    path: "/opt/a".into(),
                    ..Default::default()
                }],
                files: vec![
                    File {
                        path: "/opt/a".into(),
                        ..Default::default()
                    },
                    File {
                        path: "/opt/l/x".into(),
                        overwrite: Some(true),
                        ..Default::default()
                    },
                ],
                links: vec![Link {
                    path: "/opt/l".into(),
                    target: String::new(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let m = messages(&c);
        assert!(
            m.iter()
                .any(|m| m.starts_with("storage.files[0]: duplicate entry")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.starts_with("storage.files[1]: file path includes link")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.starts_with("storage.files[1].overwrite")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.starts_with("storage.links[0].target")),
            "{m:?}"
        );
    }

    #[test]
    fn unit_names_and_dropins() {
        let unit = |name: &str, dropin: &str| Unit {
            name: name.into(),
            dropins: vec![Dropin {
                name: dropin.into(),
                contents: Some("[Service]\nA=b\n".into()),
            }],
            ..Default::default()
        };
        let c = Config {
            systemd: Some(Systemd {
                units: vec![
                    unit("a", "x.conf"),
                    unit("b.service", "x.txt"),
                    unit("b.service", "d/x.conf"),
                    unit("c.timer", "x.conf"),
                ],
            }),
            ..Default::default()
        };
        let m = messages(&c);
        assert!(
            m.iter()
                .any(|m| m.starts_with("systemd.units[0].name: invalid systemd unit extension")),
            "{m:?}"
        );
        assert!(m.iter().any(|m| m.starts_with("systemd.units[1].dropins[0].name: invalid systemd drop-in")), "{m:?}");
        assert!(
            m.iter()
                .any(|m| m.starts_with("systemd.units[2]: duplicate entry")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|m| m.starts_with("systemd.units[2].dropins[0].name") && m.contains("`/`")),
            "{m:?}"
        );
        assert_eq!(m.len(), 4, "{m:?}");
    }
}
