//! Reading a rendered config back the way the machine would: a unit's effective
//! `ExecStart` after its drop-ins (split into words like systemd does), a file's text,
//! and the static address of `eth0` from its networkd file.

use std::net::Ipv4Addr;

use crate::dataurl::decode;
use crate::types::{Config, Unit};

/// The unit called `name`, if the config has it.
pub fn unit<'a>(config: &'a Config, name: &str) -> Option<&'a Unit> {
    config
        .systemd
        .as_ref()?
        .units
        .iter()
        .rev()
        .find(|u| u.name == name)
}

/// The text of the file at `path` (the last entry for it wins, as Ignition's merge
/// leaves one), when its contents are an inline data URL.
pub fn file_text(config: &Config, path: &str) -> Option<String> {
    let f = config
        .storage
        .as_ref()?
        .files
        .iter()
        .rev()
        .find(|f| f.path == path)?;
    let r = f.contents.as_ref()?;
    let (bytes, _) = decode(r.source.as_deref()?, r.compression.as_deref())?;
    String::from_utf8(bytes).ok()
}

/// The logical lines of a unit file: continuation lines (`\` at the end) joined with a
/// space, comments and blank lines left out, each with the section it is in.
fn logical_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let joined = match pending.take() {
            Some(mut p) => {
                p.push(' ');
                p.push_str(line.trim_start());
                p
            }
            None => {
                let t = line.trim_start();
                if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                    continue;
                }
                if t.starts_with('[') && t.ends_with(']') {
                    section = t[1..t.len() - 1].to_string();
                    continue;
                }
                t.to_string()
            }
        };
        if let Some(stripped) = joined.strip_suffix('\\') {
            pending = Some(stripped.trim_end().to_string());
        } else {
            out.push((section.clone(), joined));
        }
    }
    if let Some(p) = pending {
        out.push((section, p));
    }
    out
}

/// The `ExecStart=` command lines of a unit after its drop-ins, in systemd's order (the
/// unit file, then drop-ins sorted by name); an empty `ExecStart=` clears the ones
/// before it. Each line is the text after `ExecStart=`.
pub fn exec_start_lines(unit: &Unit) -> Vec<String> {
    let mut texts: Vec<&str> = unit.contents.as_deref().into_iter().collect();
    let mut dropins: Vec<_> = unit.dropins.iter().collect();
    dropins.sort_by(|a, b| a.name.cmp(&b.name));
    texts.extend(dropins.iter().filter_map(|d| d.contents.as_deref()));
    let mut lines: Vec<String> = Vec::new();
    for text in texts {
        for (section, line) in logical_lines(text) {
            if section != "Service" {
                continue;
            }
            let Some(value) = line.strip_prefix("ExecStart=") else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                lines.clear();
            } else {
                lines.push(value.to_string());
            }
        }
    }
    lines
}

/// The unit's effective command (the last `ExecStart=`), split into words.
pub fn exec_start(unit: &Unit) -> Option<Vec<String>> {
    exec_start_lines(unit).last().map(|l| split_words(l))
}

/// Split a command line into words the way systemd does for `ExecStart=`: words are
/// separated by whitespace; double and single quotes group; a backslash escapes the
/// next character. A leading `-`, `@`, `+` or `!` prefix of the command is dropped.
/// `$VAR` words are kept as they are (systemd would expand them).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    if let Some(first) = words.first_mut() {
        let trimmed = first.trim_start_matches(['-', '@', '+', '!']);
        if trimmed.len() != first.len() {
            *first = trimmed.to_string();
        }
    }
    words
}

/// A static IPv4 address of `eth0` as its networkd file gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticAddress {
    /// The address.
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The gateway, when the file names one.
    pub gateway: Option<Ipv4Addr>,
}

/// The networkd file the role templates write for a static `eth0`.
pub const ETH0_NETWORK: &str = "/etc/systemd/network/00-eth0.network";

/// The static address in `/etc/systemd/network/00-eth0.network`, if the config has one.
pub fn static_address(config: &Config) -> Option<StaticAddress> {
    let text = file_text(config, ETH0_NETWORK)?;
    let mut address = None;
    let mut gateway = None;
    for (_, line) in logical_lines(&text) {
        if let Some(v) = line.strip_prefix("Address=") {
            let (ip, prefix) = v.trim().split_once('/')?;
            address = Some((ip.parse().ok()?, prefix.parse().ok()?));
        } else if let Some(v) = line.strip_prefix("Gateway=") {
            gateway = v.trim().parse().ok();
        }
    }
    let (address, prefix) = address?;
    Some(StaticAddress {
        address,
        prefix,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Dropin;

    #[test]
    fn splits_like_systemd() {
        assert_eq!(
            split_words(r#"-/usr/bin/x --a="b c" 'd e' f\ g $OPTS"#),
            vec!["/usr/bin/x", "--a=b c", "d e", "f g", "$OPTS"]
        );
        assert_eq!(split_words("   "), Vec::<String>::new());
        assert_eq!(split_words(r#"x """#), vec!["x", ""]);
    }

    #[test]
    fn drop_ins_override_in_name_order_and_empty_clears() {
        let unit = Unit {
            name: "a.service".into(),
            contents: Some("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/base\n".into()),
            dropins: vec![
                Dropin {
                    name: "30-late.conf".into(),
                    contents: Some("[Service]\nExecStart=\nExecStart=/bin/late \\\n  --x=1 \\\n  --y=\"2 3\"\n".into()),
                },
                Dropin {
                    name: "10-early.conf".into(),
                    contents: Some("[Service]\n# a comment\nExecStart=\nExecStart=/bin/early\n".into()),
                },
            ],
            ..Unit::default()
        };
        assert_eq!(exec_start_lines(&unit), vec!["/bin/late --x=1 --y=\"2 3\""]);
        assert_eq!(
            exec_start(&unit),
            Some(vec![
                "/bin/late".to_string(),
                "--x=1".to_string(),
                "--y=2 3".to_string()
            ])
        );
        let no_service = Unit {
            name: "b.service".into(),
            contents: Some("[Unit]\nExecStart=/bin/wrong-section\n".into()),
            ..Unit::default()
        };
        assert_eq!(exec_start(&no_service), None);
    }
}
