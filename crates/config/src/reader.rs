//! Reading the spanned TOML tree: the diagnostics collector, typed getters that report
//! wrong types at the value's span, unknown-key checks, and TOML -> JSON conversion.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::{Diagnostic, Span, diagnostic_at};

/// The largest `count` of a table: ten times the largest cluster benchmarked (10,000
/// workers). Every instance is expanded in memory, so this bounds what a file can ask for.
pub(crate) const MAX_COUNT: u32 = 100_000;

/// A spanned TOML value.
pub(crate) type Node<'i> = Spanned<DeValue<'i>>;

/// A byte range from the TOML parser as a [`Span`].
pub(crate) fn span(r: Range<usize>) -> Span {
    Span {
        offset: r.start,
        len: r.end.saturating_sub(r.start),
    }
}

/// `a`, `b` -> "`a`, `b`".
pub(crate) fn tick_list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "expected one of `a`, `b`; see docs/CONFIG.md".
pub(crate) fn expected_one_of<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "nothing is allowed here; see docs/CONFIG.md".to_string()
    } else {
        format!("expected one of {}; see docs/CONFIG.md", tick_list(items))
    }
}

/// A TOML type name with its article, for "must be X, not Y" messages.
pub(crate) fn describe_found(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Collects diagnostics for one file.
pub(crate) struct Cx<'a> {
    pub(crate) path: &'a Path,
    pub(crate) source: &'a Arc<str>,
    pub(crate) diags: Vec<Diagnostic>,
}

impl<'a> Cx<'a> {
    pub(crate) fn new(path: &'a Path, source: &'a Arc<str>) -> Self {
        Cx {
            path,
            source,
            diags: Vec::new(),
        }
    }

    /// Record a problem at `at`.
    pub(crate) fn error(
        &mut self,
        at: Option<Span>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        self.diags.push(diagnostic_at(
            self.path,
            self.source,
            at,
            message.into(),
            label.into(),
            help,
        ));
    }

    /// The span to show for a table: its `[header]` when it has one, else its key.
    pub(crate) fn table_span(&self, key: &Spanned<impl Sized>, value: &Node<'_>) -> Span {
        let v = value.span();
        if self
            .source
            .get(v.clone())
            .is_some_and(|s| s.starts_with('['))
        {
            span(v)
        } else {
            span(key.span())
        }
    }

    /// Report every key of `table` not in `allowed`.
    pub(crate) fn check_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], section: &str) {
        for (k, _) in table.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                self.error(
                    Some(span(k.span())),
                    format!("unknown key `{}` in {section}", k.get_ref()),
                    "unknown key",
                    Some(expected_one_of(allowed)),
                );
            }
        }
    }

    /// Report a value of the wrong type.
    pub(crate) fn wrong_type(&mut self, key: &str, section: &str, node: &Node<'_>, expected: &str) {
        self.error(
            Some(span(node.span())),
            format!(
                "`{key}` in {section} must be {expected}, not {}",
                describe_found(node.get_ref())
            ),
            format!("expected {expected}"),
            Some(format!("write `{key}` as {expected}; see docs/CONFIG.md")),
        );
    }

    /// `value` as a table, or a wrong-type error.
    pub(crate) fn as_table<'t, 'i>(
        &mut self,
        key: &str,
        section: &str,
        node: &'t Node<'i>,
    ) -> Option<&'t DeTable<'i>> {
        match node.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(key, section, node, "a table");
                None
            }
        }
    }

    /// A string value, or a wrong-type error.
    pub(crate) fn str_of<'t>(
        &mut self,
        key: &str,
        section: &str,
        node: &'t Node<'_>,
    ) -> Option<&'t str> {
        match node.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(key, section, node, "a string");
                None
            }
        }
    }

    /// `table[key]` as a string with its span (None when absent or of the wrong type).
    pub(crate) fn get_str<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<(&'t str, Span)> {
        let node = table.get(key)?;
        self.str_of(key, section, node)
            .map(|s| (s, span(node.span())))
    }

    /// `table[key]` as a boolean.
    pub(crate) fn get_bool(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<bool> {
        let node = table.get(key)?;
        match node.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, section, node, "a boolean (`true` or `false`)");
                None
            }
        }
    }

    /// `table[key]` as a whole number in `0..=MAX_COUNT`, with its span. The outer
    /// Option is presence, the inner one validity.
    pub(crate) fn get_count(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<(Option<u32>, Span)> {
        let node = table.get(key)?;
        let at = span(node.span());
        let DeValue::Integer(i) = node.get_ref() else {
            self.wrong_type(key, section, node, "a whole number");
            return Some((None, at));
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n < 0 => {
                self.error(
                    Some(at),
                    format!("`{key}` in {section} must be 0 or more, not {n}"),
                    "negative",
                    Some(format!("write `{key} = 0` or more")),
                );
                Some((None, at))
            }
            Ok(n) => match u32::try_from(n).ok().filter(|n| *n <= MAX_COUNT) {
                Some(n) => Some((Some(n), at)),
                None => {
                    // Every instance is expanded in memory (with its rendered config): a
                    // count of billions would exhaust memory instead of failing here.
                    self.error(
                        Some(at),
                        format!("`{key}` in {section} is too large: {n}"),
                        "too large",
                        Some(format!("the largest `{key}` is {MAX_COUNT}")),
                    );
                    Some((None, at))
                }
            },
            Err(_) => {
                self.error(
                    Some(at),
                    format!("`{key}` is not a valid integer"),
                    "not an integer",
                    Some(format!("write `{key}` as a whole number")),
                );
                Some((None, at))
            }
        }
    }

    /// `table[key]` as a list of strings with each entry's span (None when absent or
    /// not an array; entries of the wrong type are reported and skipped).
    pub(crate) fn get_str_list<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<Vec<(&'t str, Span)>> {
        let node = table.get(key)?;
        let DeValue::Array(items) = node.get_ref() else {
            self.wrong_type(key, section, node, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), span(item.span()))),
                other => self.error(
                    Some(span(item.span())),
                    format!(
                        "entries of `{key}` in {section} must be strings, not {}",
                        describe_found(other)
                    ),
                    "expected a string",
                    Some(format!("quote each entry of `{key}`, like [\"a\", \"b\"]")),
                ),
            }
        }
        Some(out)
    }

    /// Convert a TOML value to JSON (date-times become strings). Integers and floats that
    /// JSON cannot hold (`nan`, `inf`) are reported.
    pub(crate) fn json_of(&mut self, node: &Node<'_>) -> serde_json::Value {
        use serde_json::Value as J;
        match node.get_ref() {
            DeValue::String(s) => J::String(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => J::from(n),
                Err(_) => {
                    self.error(
                        Some(span(node.span())),
                        "this integer does not fit in 64 bits",
                        "too large",
                        Some("use a smaller number, or write it as a string".to_string()),
                    );
                    J::Null
                }
            },
            DeValue::Float(f) => {
                match f
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => J::Number(n),
                    None => {
                        self.error(
                            Some(span(node.span())),
                            format!("`{}` cannot be used here", f.as_str()),
                            "not a finite number",
                            Some("use a finite number".to_string()),
                        );
                        J::Null
                    }
                }
            }
            DeValue::Boolean(b) => J::Bool(*b),
            DeValue::Datetime(d) => J::String(d.to_string()),
            DeValue::Array(a) => J::Array(a.iter().map(|v| self.json_of(v)).collect()),
            DeValue::Table(t) => J::Object(self.table_to_json(t)),
        }
    }

    /// Convert a TOML table to a JSON object.
    pub(crate) fn table_to_json(
        &mut self,
        t: &DeTable<'_>,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for (k, v) in t.iter() {
            let v = self.json_of(v);
            m.insert(k.get_ref().to_string(), v);
        }
        m
    }
}

/// The entries of `table` in file order (by the key's position).
pub(crate) fn in_file_order<'t, 'i>(
    table: &'t DeTable<'i>,
) -> Vec<(&'t Spanned<std::borrow::Cow<'i, str>>, &'t Node<'i>)> {
    let mut v: Vec<_> = table.iter().collect();
    v.sort_by_key(|(k, val)| (val.span().start.min(k.span().start), k.span().start));
    v
}
