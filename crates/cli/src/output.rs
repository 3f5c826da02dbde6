//! Writing to standard output and error: a closed pipe ends the output quietly, and text
//! that came from input is shown with its control characters escaped ([`clean`]).
//!
//! Why not reset SIGPIPE to its default (what C programs and Go's stdout do)? Then the
//! first write to a closed pipe kills the process on the spot, and an `apply ... | head`
//! would die in the middle of its walk: operations in flight unrecorded, Ctrl-C's "finish
//! what is in flight and write the state" skipped. Instead SIGPIPE stays ignored (Rust's
//! default), a write that fails with EPIPE (or any other error) marks the stream closed,
//! and later writes to it are dropped. The command runs to its end and exits with its own
//! code (an apply records everything in the state; `plan --detailed-exitcode | head -1`
//! still tells "changes" under `set -o pipefail`). No `println!` in this crate: it
//! panics on a closed stdout.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Print to stdout (like `print!`); nothing happens once stdout is closed.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout(&format!($($arg)*))
    };
}

/// Print a line to stdout (like `println!`); nothing happens once stdout is closed.
macro_rules! outln {
    () => {
        $crate::output::stdout("\n")
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Print a line to stderr (like `eprintln!`); nothing happens once stderr is closed.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// Write `text` to stdout. Without colour (a pipe, a file, `NO_COLOR`), no control
/// character but newline and tab is written at all: everything goes through [`clean`].
/// With colour, colour sequences (`ESC [ ... m`, ours) pass and every other control
/// character is escaped: input that slipped through unescaped can at worst change a
/// colour, never move the cursor, set the title or write a hyperlink.
pub fn stdout(text: &str) {
    write_to(&mut std::io::stdout().lock(), &STDOUT_CLOSED, text);
}

/// Write `text` to stderr, with the same rules as [`stdout`].
pub fn stderr(text: &str) {
    write_to(&mut std::io::stderr().lock(), &STDERR_CLOSED, text);
}

fn write_to(w: &mut dyn Write, closed: &AtomicBool, text: &str) {
    if closed.load(Ordering::Relaxed) {
        return;
    }
    let text = if crate::style::color() {
        clean_keeping_colors(text)
    } else {
        clean(text)
    };
    if w.write_all(text.as_bytes())
        .and_then(|()| w.flush())
        .is_err()
    {
        closed.store(true, Ordering::Relaxed);
    }
}

/// Text from input (names, Butane content, provider messages, file contents) as it is
/// safe to show on a terminal: C0 and C1 control characters and DEL are written as escapes
/// (`\x1b`, `\u{9b}`), newline and tab are kept. Escaping twice changes nothing.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_clean(&mut out, c);
    }
    Cow::Owned(out)
}

/// JSON text as it is safe to print: serde escapes C0 controls in strings but writes DEL
/// and the C1 controls raw; they are written as `\u007f`, `\u009b`, ... here (the same
/// JSON value, and no control character for [`stdout`] to escape into invalid JSON).
///
/// Every string holding a private key reads `(sensitive)`: no JSON output (`show`,
/// `plan --json`, `render`, `drift --json`) ever prints one.
pub fn json(text: &str) -> Cow<'_, str> {
    let text: Cow<'_, str> = match masked(text) {
        Some(m) => Cow::Owned(m),
        None => Cow::Borrowed(text),
    };
    match controls_escaped(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(o) => Cow::Owned(o),
    }
}

/// `text` (JSON) with every string that holds a private key replaced by `(sensitive)`;
/// None when it holds none.
fn masked(text: &str) -> Option<String> {
    if !clusterform_state::seal::holds_private_key(text) {
        return None;
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Some("\"(sensitive)\"".to_string());
    };
    mask_secrets(&mut v);
    let pretty = text.contains('\n');
    Some(if pretty {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        v.to_string()
    })
}

/// Replace every string of `v` that holds a private key with `(sensitive)`.
pub fn mask_secrets(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) if clusterform_state::seal::holds_private_key(s) => {
            *s = "(sensitive)".to_string();
        }
        Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        Value::Object(m) => m.values_mut().for_each(mask_secrets),
        _ => {}
    }
}

fn controls_escaped(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`clean`], except for SGR sequences (`ESC [ digits ; ... m`, colours and bold).
fn clean_keeping_colors(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\u{1b}'
            && let Some(body) = rest.strip_prefix("\u{1b}[")
        {
            let params = body
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b';')
                .count();
            if body.as_bytes().get(params) == Some(&b'm') {
                let len = 2 + params + 1;
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        push_clean(&mut out, c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// A character [`clean`] escapes.
fn is_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

fn push_clean(out: &mut String, c: char) {
    use std::fmt::Write as _;
    if !is_control(c) {
        out.push(c);
    } else if u32::from(c) < 0x80 {
        let _ = write!(out, "\\x{:02x}", u32::from(c));
    } else {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    }
}

/// [`clean`], and where byte `offset` of `s` lands in the cleaned text (to keep a span
/// pointing at the same characters).
pub fn clean_offset(s: &str, offset: usize) -> usize {
    let extra: usize = s
        .char_indices()
        .take_while(|(i, _)| *i < offset)
        .filter(|(_, c)| is_control(*c))
        .map(|(_, c)| {
            let mut e = String::new();
            push_clean(&mut e, c);
            e.len() - c.len_utf8()
        })
        .sum();
    offset + extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_newlines_kept() {
        assert_eq!(clean("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(clean("a\u{1b}[31mb"), "a\\x1b[31mb");
        assert_eq!(clean("\u{7}\u{0}\r\u{7f}"), "\\x07\\x00\\x0d\\x7f");
        assert_eq!(clean("c1 \u{9b}2J é"), "c1 \\u{9b}2J é");
        let once = clean("x\u{1b}y\u{85}").into_owned();
        assert_eq!(clean(&once), once);
    }

    #[test]
    fn with_colour_only_colour_sequences_pass() {
        let ours = "\u{1b}[1m\u{1b}[32m+\u{1b}[39m\u{1b}[0m";
        assert_eq!(clean_keeping_colors(ours), ours);
        assert_eq!(
            clean_keeping_colors("\u{1b}[2J\u{1b}]0;title\u{7}\u{1b}[31mred\u{1b}["),
            "\\x1b[2J\\x1b]0;title\\x07\u{1b}[31mred\\x1b["
        );
    }

    #[test]
    fn json_keeps_its_value() {
        let v = serde_json::json!({"k": "a\u{1b}b\u{7f}c\u{9b}d\n"});
        let text = v.to_string();
        let safe = json(&text);
        assert!(!safe.chars().any(is_control), "{safe}");
        assert_eq!(clean(&safe), safe);
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, v);
    }

    #[test]
    fn offsets_follow_the_escapes() {
        let s = "a\u{1b}bc\u{9b}d";
        let cleaned = clean(s);
        for (i, c) in s.char_indices().filter(|(_, c)| c.is_alphabetic()) {
            let at = clean_offset(s, i);
            assert_eq!(cleaned[at..].chars().next(), Some(c), "{i}");
        }
        assert_eq!(clean_offset(s, s.len()), cleaned.len());
    }
}
