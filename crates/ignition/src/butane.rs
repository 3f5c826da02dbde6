//! A Butane reader for the subset clusterform supports: `variant: flatcar`,
//! `version: 1.0.0`, translated to Ignition 3.3.0 the way Butane does.
//!
//! Supported: `systemd.units[]` (name, enabled, mask, contents, dropins[name,
//! contents]), `storage.files[]` (path, mode, overwrite, contents.inline |
//! contents.local), `storage.directories[]` (path, mode, overwrite),
//! `storage.links[]` (path, target, hard, overwrite), `passwd.users[]` (name,
//! ssh_authorized_keys, groups). Any other field is an error naming the field with its
//! `file:line:column`; nothing is silently ignored.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::dataurl::make_resource;
use crate::types::{
    Config, Directory, Dropin, File, Ignition, Link, Passwd, Storage, Systemd, Unit, User,
};

/// The only Butane variant supported.
pub const VARIANT: &str = "flatcar";
/// The only Butane spec version supported.
pub const VERSION: &str = "1.0.0";

/// An error in a Butane file, with its location.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ButaneError {
    /// The Butane file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Byte offset in the file, when known.
    pub offset: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is a suggestion.
    pub help: Option<String>,
}

const SUPPORTED_HELP: &str = "clusterform supports a Butane subset: systemd.units (name, enabled, mask, contents, dropins), storage.files (path, mode, overwrite, contents.inline/local), storage.directories, storage.links, passwd.users (name, ssh_authorized_keys, groups)";

#[derive(Deserialize)]
struct Header {
    variant: Option<String>,
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BConfig {
    #[allow(dead_code)]
    variant: String,
    #[allow(dead_code)]
    version: String,
    #[serde(default)]
    passwd: Option<BPasswd>,
    #[serde(default)]
    storage: Option<BStorage>,
    #[serde(default)]
    systemd: Option<BSystemd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BPasswd {
    #[serde(default)]
    users: Vec<BUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BUser {
    name: String,
    #[serde(default)]
    ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BStorage {
    #[serde(default)]
    directories: Vec<BDirectory>,
    #[serde(default)]
    files: Vec<BFile>,
    #[serde(default)]
    links: Vec<BLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BFile {
    path: String,
    #[serde(default, deserialize_with = "de_mode")]
    mode: Option<u32>,
    #[serde(default)]
    overwrite: Option<bool>,
    #[serde(default)]
    contents: Option<BResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BResource {
    #[serde(default)]
    inline: Option<String>,
    #[serde(default)]
    local: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BDirectory {
    path: String,
    #[serde(default, deserialize_with = "de_mode")]
    mode: Option<u32>,
    #[serde(default)]
    overwrite: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BLink {
    path: String,
    target: String,
    #[serde(default)]
    hard: Option<bool>,
    #[serde(default)]
    overwrite: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BSystemd {
    #[serde(default)]
    units: Vec<BUnit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BUnit {
    name: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    mask: Option<bool>,
    #[serde(default)]
    contents: Option<String>,
    #[serde(default)]
    dropins: Vec<BDropin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BDropin {
    name: String,
    #[serde(default)]
    contents: Option<String>,
}

/// `mode`: a YAML integer. yaml_serde reads a plain `0644` as the string "0644" (YAML
/// 1.2); Butane's go-yaml reads it as octal 420, so a string of octal digits with a
/// leading zero is taken as octal. Quoted strings are rejected before this runs (see
/// [`check_quoted_modes`]).
fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct ModeVisitor;
    impl Visitor<'_> for ModeVisitor {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer file mode such as 0644")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u32::try_from(v)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Some)
                .ok_or_else(|| E::custom(format!("mode {v} is out of range (at most 07777)")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match u64::try_from(v) {
                Ok(u) => self.visit_u64(u),
                Err(_) => Err(E::custom(format!("mode {v} is negative"))),
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let octal =
                v.len() > 1 && v.starts_with('0') && v.bytes().all(|b| (b'0'..=b'7').contains(&b));
            if octal {
                match u32::from_str_radix(&v[1..], 8) {
                    Ok(m) => self.visit_u64(u64::from(m)),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            } else {
                Err(E::invalid_type(de::Unexpected::Str(v), &self))
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(ModeVisitor)
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err_at(&self, offset: usize, message: String, help: Option<String>) -> ButaneError {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        ButaneError {
            path: self.path.to_owned(),
            line,
            column,
            offset: Some(offset),
            message,
            help,
        }
    }

    fn yaml_err(&self, e: &yaml_serde::Error) -> ButaneError {
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(i) => full[..i].to_owned(),
            None => full,
        };
        let help = (message.contains("unknown field")).then(|| SUPPORTED_HELP.to_owned());
        match e.location() {
            Some(loc) => ButaneError {
                path: self.path.to_owned(),
                line: loc.line(),
                column: loc.column(),
                offset: Some(loc.index()),
                message,
                help,
            },
            None => ButaneError {
                path: self.path.to_owned(),
                line: 1,
                column: 1,
                offset: None,
                message,
                help,
            },
        }
    }
}

/// The lines of `text` that carry YAML structure, with their byte offsets: lines inside
/// block scalars (`|`, `>`) are left out, and comments are cut off.
fn structural_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut offset = 0;
    // Indentation of the line that opened a block scalar, while inside one.
    let mut block_parent: Option<usize> = None;
    for raw in text.split_inclusive('\n') {
        let line_off = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block_parent {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block_parent = None;
        }
        let body = match line.find(" #") {
            Some(i) => &line[..i],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        let t = body.trim_end();
        let opens_block = t.rsplit([' ', ':']).next().is_some_and(|last| {
            (last.starts_with('|') || last.starts_with('>'))
                && last[1..]
                    .bytes()
                    .all(|b| b == b'-' || b == b'+' || b.is_ascii_digit())
        }) && t.contains(':');
        if opens_block {
            block_parent = Some(indent);
        }
        out.push((line_off, body));
    }
    out
}

/// Byte offsets of every mapping key `key` in `text` (block style `key:` at the start
/// of a line, after indentation and an optional `- `, or flow style after `{`/`,`), in
/// document order, outside block scalars and comments. Used to locate errors yaml_serde
/// has no position for.
fn key_offsets(text: &str, key: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (line_start, body) in structural_lines(text) {
        let mut search = 0;
        while let Some(i) = body[search..].find(key) {
            let at = search + i;
            search = at + key.len();
            let after = body[at + key.len()..].trim_start_matches([' ', '"', '\'']);
            if !after.starts_with(':') {
                continue;
            }
            let prefix = body[..at].trim_end_matches(['"', '\'']).trim_end();
            let block = prefix.trim_start().is_empty() || prefix.trim_start() == "-";
            let flow = prefix.ends_with('{') || prefix.ends_with(',');
            if block || flow {
                out.push(line_start + at);
            }
        }
    }
    out
}

/// The scalar after `key:` at `off` (quotes removed), as far as a one-line plain or
/// quoted scalar goes.
fn scalar_at<'t>(text: &'t str, off: usize, key: &str) -> &'t str {
    let rest = &text[off + key.len()..];
    let rest = rest.trim_start_matches([' ', '"', '\'']);
    let Some(rest) = rest.strip_prefix(':') else {
        return "";
    };
    let line = rest.split('\n').next().unwrap_or_default();
    let line = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let v = line.trim().trim_end_matches([',', '}']).trim_end();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(v)
}

/// Byte offset of the `occurrence`-th (0-based) `key:` whose value is `value` in the
/// Butane text, else of the first such key, else None: where to point at an entry an
/// Ignition rule refuses.
pub fn locate(text: &str, key: &str, value: &str, occurrence: usize) -> Option<usize> {
    let hits: Vec<usize> = key_offsets(text, key)
        .into_iter()
        .filter(|off| scalar_at(text, *off, key) == value)
        .collect();
    hits.get(occurrence).or_else(|| hits.first()).copied()
}

/// Offset of the value after the first top-level `key:` (or of the key when there is
/// no value on that line), or 0.
fn top_level_value_offset(text: &str, key: &str) -> usize {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix(key)
            && let Some(value) = rest.strip_prefix(':')
        {
            let trimmed = value.trim_start_matches([' ', '\t']);
            let value_off = line_start + key.len() + 1 + (value.len() - trimmed.len());
            return if trimmed.trim().is_empty() || trimmed.starts_with('#') {
                line_start
            } else {
                value_off
            };
        }
        line_start += line.len();
    }
    0
}

/// Reject `mode: "0644"` (a quoted string), as Butane does; yaml_serde does not tell a
/// quoted from a plain scalar.
fn check_quoted_modes(ctx: &Ctx<'_>) -> Result<(), ButaneError> {
    for off in key_offsets(ctx.text, "mode") {
        let rest = &ctx.text[off + 4..];
        let value = rest.trim_start_matches([' ', '"', '\'']);
        let Some(value) = value.strip_prefix(':') else {
            continue;
        };
        let trimmed = value.trim_start_matches([' ', '\t']);
        if trimmed.starts_with(['"', '\'']) {
            let value_off = ctx.text.len() - trimmed.len();
            return Err(ctx.err_at(
                value_off,
                "mode: expected an integer file mode such as 0644, found a quoted string"
                    .to_owned(),
                Some("write the mode unquoted, e.g. `mode: 0644`".to_owned()),
            ));
        }
    }
    Ok(())
}

/// How deeply flow collections (`[...]`, `{...}`) may nest: yaml_serde refuses anything
/// deeper (its recursion limit is 128), but only after the YAML parser has read the whole
/// nesting, which takes time quadratic in the depth (a 80 KB file of `[` took 5 s).
const MAX_FLOW_DEPTH: usize = 128;

/// Offset of the first flow collection nested deeper than [`MAX_FLOW_DEPTH`], if any.
/// Block scalars and comments are skipped (see [`structural_lines`]), and so are quoted
/// strings; outside flow collections only a `[`/`{` where a value starts opens one.
fn too_deep_flow(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (line_start, body) in structural_lines(text) {
        let bytes = body.as_bytes();
        let mut quote: Option<u8> = None;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(b'"') if b == b'\\' => i += 1,
                Some(q) if b == q => {
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        quote = None;
                    }
                }
                Some(_) => {}
                None => match b {
                    b'"' | b'\'' if depth > 0 || value_starts(&bytes[..i]) => quote = Some(b),
                    b'[' | b'{' if depth > 0 || value_starts(&bytes[..i]) => {
                        depth += 1;
                        if depth > MAX_FLOW_DEPTH {
                            return Some(line_start + i);
                        }
                    }
                    b']' | b'}' if depth > 0 => depth -= 1,
                    _ => {}
                },
            }
            i += 1;
        }
    }
    None
}

/// True when a block-context value starts after `before` (the line so far): at the start
/// of the line, or after `key: `, `- ` or `? `.
fn value_starts(before: &[u8]) -> bool {
    let t = before.trim_ascii_end();
    t.is_empty() || (before.len() > t.len() && matches!(t.last(), Some(b':' | b'-' | b'?')))
}

/// Check `local` like Butane's `EnsurePathWithinFilesDir`: relative, and not escaping
/// the files directory with `..`. (Symlinks are resolved when it is read, by
/// [`crate::files::read_confined`].)
fn local_path(local: &str) -> Result<PathBuf, String> {
    let rel = Path::new(local);
    if rel.is_absolute() || local.starts_with('/') {
        return Err(format!(
            "contents.local: {local:?} is an absolute path; it must be relative to the files directory"
        ));
    }
    let mut depth: usize = 0;
    for c in rel.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("contents.local: {local:?} is outside the files directory")
                })?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "contents.local: {local:?} is an absolute path; it must be relative to the files directory"
                ));
            }
        }
    }
    Ok(rel.to_path_buf())
}

/// A `contents.local` file that was not read: what is wrong (never its content).
fn local_message(local: &str, e: &crate::files::FileError) -> String {
    format!("contents.local: {local:?} {e}")
}

/// What to do about a `contents.local` file that was not read.
fn local_help(files_dir: &Path, e: &crate::files::FileError) -> String {
    use crate::files::FileError;
    let dir = files_dir.display();
    match e {
        FileError::Missing { .. } => {
            format!("local files are read from {dir} (the Butane file's folder); check the name")
        }
        FileError::Outside { .. } => format!(
            "copy the file into {dir} (the Butane file's folder): local files, symlinks resolved, must be inside it"
        ),
        FileError::NotRegular { .. } => {
            "name a regular file: folders, devices and FIFOs are not read".to_owned()
        }
        FileError::TooLarge { limit } => format!(
            "local files are embedded in every machine's config and may be at most {} MiB; fetch bigger files on the machine instead",
            limit >> 20
        ),
        FileError::Root { .. } | FileError::Io(_) => {
            format!("make the file readable; local files are read from {dir}")
        }
    }
}

/// Parse the Butane file `path` with contents `text`; `contents.local` files are read
/// from `files_dir`. Returns the Ignition 3.3.0 config Butane would produce, and, like
/// Butane, refuses one that breaks Ignition's rules ([`crate::validate`]), pointing at
/// the entry.
pub fn parse_butane(path: &Path, text: &str, files_dir: &Path) -> Result<Config, ButaneError> {
    let config = translate_butane(path, text, files_dir)?;
    if let Some(p) = crate::validate::validate(&config).into_iter().next() {
        let ctx = Ctx { path, text };
        let off = locate(text, p.key, &p.value, p.occurrence).unwrap_or(0);
        return Err(ctx.err_at(off, format!("{}: {}", p.pointer, p.message), Some(p.help)));
    }
    Ok(config)
}

/// [`parse_butane`] without Ignition's rules: the translation only, as a config that
/// Ignition may still refuse (for comparing with `ignition-validate`).
pub fn translate_butane(path: &Path, text: &str, files_dir: &Path) -> Result<Config, ButaneError> {
    let ctx = Ctx { path, text };
    if let Some(offset) = too_deep_flow(text) {
        return Err(ctx.err_at(
            offset,
            format!("flow collections (`[...]`, `{{...}}`) nested more than {MAX_FLOW_DEPTH} levels deep"),
            Some("write nested lists and mappings in block style, and less deeply".to_owned()),
        ));
    }
    let header: Header = yaml_serde::from_str(text).map_err(|e| ctx.yaml_err(&e))?;
    match header.variant.as_deref() {
        Some(VARIANT) => {}
        Some(other) => {
            return Err(ctx.err_at(
                top_level_value_offset(text, "variant"),
                format!("variant: unsupported variant {other:?}; only {VARIANT:?} is supported"),
                Some(format!("set `variant: {VARIANT}`")),
            ));
        }
        None => {
            return Err(ctx.err_at(
                0,
                format!("variant: missing; only {VARIANT:?} is supported"),
                Some(format!("add `variant: {VARIANT}`")),
            ));
        }
    }
    match header.version.as_deref() {
        Some(VERSION) => {}
        Some(other) => {
            return Err(ctx.err_at(
                top_level_value_offset(text, "version"),
                format!(
                    "version: unsupported version {other:?} of variant {VARIANT}; only {VERSION:?} is supported"
                ),
                Some(format!("set `version: {VERSION}`")),
            ));
        }
        None => {
            return Err(ctx.err_at(
                0,
                format!("version: missing; only {VERSION:?} is supported"),
                Some(format!("add `version: {VERSION}`")),
            ));
        }
    }
    check_quoted_modes(&ctx)?;
    let b: BConfig = yaml_serde::from_str(text).map_err(|e| ctx.yaml_err(&e))?;

    let passwd = b.passwd.map(|p| Passwd {
        users: p
            .users
            .into_iter()
            .map(|u| User {
                groups: u.groups,
                name: u.name,
                ssh_authorized_keys: u.ssh_authorized_keys,
            })
            .collect(),
    });

    let storage = match b.storage {
        None => None,
        Some(s) => {
            let local_offsets = key_offsets(text, "local");
            let mut local_index = 0;
            let mut files = Vec::with_capacity(s.files.len());
            for f in s.files {
                let contents = match f.contents {
                    None => None,
                    Some(BResource {
                        inline: Some(_),
                        local: Some(_),
                    }) => {
                        let off = local_offsets.get(local_index).copied().unwrap_or(0);
                        return Err(ctx.err_at(
                            off,
                            format!(
                                "storage.files ({}): contents.inline and contents.local are mutually exclusive",
                                f.path
                            ),
                            None,
                        ));
                    }
                    Some(BResource {
                        inline: Some(inline),
                        local: None,
                    }) => Some(make_resource(inline.as_bytes())),
                    Some(BResource {
                        inline: None,
                        local: Some(local),
                    }) => {
                        let off = local_offsets.get(local_index).copied().unwrap_or(0);
                        local_index += 1;
                        let full = local_path(&local).map_err(|m| {
                            ctx.err_at(
                                off,
                                m,
                                Some(format!(
                                    "name a file inside {} (the Butane file's folder), relative to it",
                                    files_dir.display()
                                )),
                            )
                        })?;
                        let data = crate::files::read_confined(
                            files_dir,
                            files_dir,
                            &full,
                            crate::files::LOCAL_LIMIT,
                        )
                        .map_err(|e| {
                            ctx.err_at(
                                off,
                                local_message(&local, &e),
                                Some(local_help(files_dir, &e)),
                            )
                        })?
                        .bytes;
                        Some(make_resource(&data))
                    }
                    Some(BResource {
                        inline: None,
                        local: None,
                    }) => Some(crate::types::Resource::default()),
                };
                files.push(File {
                    overwrite: f.overwrite,
                    path: f.path,
                    contents,
                    mode: f.mode,
                    user: None,
                    group: None,
                });
            }
            Some(Storage {
                directories: s
                    .directories
                    .into_iter()
                    .map(|d| Directory {
                        overwrite: d.overwrite,
                        path: d.path,
                        mode: d.mode,
                    })
                    .collect(),
                files,
                links: s
                    .links
                    .into_iter()
                    .map(|l| Link {
                        overwrite: l.overwrite,
                        path: l.path,
                        hard: l.hard,
                        target: l.target,
                    })
                    .collect(),
            })
        }
    };

    let systemd = b.systemd.map(|s| Systemd {
        units: s
            .units
            .into_iter()
            .map(|u| Unit {
                contents: u.contents,
                dropins: u
                    .dropins
                    .into_iter()
                    .map(|d| Dropin {
                        contents: d.contents,
                        name: d.name,
                    })
                    .collect(),
                enabled: u.enabled,
                mask: u.mask,
                name: u.name,
            })
            .collect(),
    });

    Ok(Config {
        ignition: Ignition {
            version: crate::IGNITION_VERSION.to_owned(),
        },
        passwd,
        storage,
        systemd,
    })
}
