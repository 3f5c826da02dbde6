//! Plain `[resource.KIND.NAME]` tables: provider choice, `count`, `depends_on`, and
//! every other key checked against the kind's schema (unknown, computed-only, wrong
//! type, missing required). References are kept raw here and resolved in `link`.

use std::collections::{BTreeMap, BTreeSet};

use clusterform_core::{Attrs, KindSchema, ProviderSchema};
use toml::de::DeTable;

use crate::reader::{Cx, expected_one_of, in_file_order, span};
use crate::settings::{provider_names, unknown_provider};
use crate::{ClusterSettings, ProviderBlock, Span};

/// How many instances a resource has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    /// No `count`: one instance, address without index.
    Single,
    /// `count = n`: instances `[0..n]`.
    Counted(u32),
    /// `count` was invalid (already reported): do not check references against it.
    Unknown,
}

/// A reference attribute as written.
pub(crate) struct RawRef {
    /// The attribute.
    pub(crate) attr: String,
    /// Its value (an address, unchecked).
    pub(crate) value: String,
    /// The value's span.
    pub(crate) span: Span,
}

/// One `[resource.KIND.NAME]` table, checked against its schema.
pub(crate) struct PlainDecl {
    /// The kind.
    pub(crate) kind: String,
    /// The name.
    pub(crate) name: String,
    /// The table's header (or the NAME key).
    pub(crate) span: Span,
    /// The provider, None when it could not be determined (already reported).
    pub(crate) provider: Option<String>,
    /// Its count.
    pub(crate) count: Count,
    /// Plain attributes (no references).
    pub(crate) attrs: Attrs,
    /// Add `name = "<cluster>-<name>[-<index>]"` to every instance.
    pub(crate) auto_name: bool,
    /// Reference attributes.
    pub(crate) refs: Vec<RawRef>,
    /// `depends_on` entries as written.
    pub(crate) depends_on: Vec<(String, Span)>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Keys of a resource table that are not attributes.
const SPECIAL: &[&str] = &["provider", "count", "depends_on"];

/// Read every `[resource.KIND.NAME]` table, in file order.
pub(crate) fn plain(
    cx: &mut Cx<'_>,
    doc: &DeTable<'_>,
    cluster: &ClusterSettings,
    providers: &BTreeMap<String, ProviderBlock>,
    schemas: &[ProviderSchema],
) -> Vec<PlainDecl> {
    let mut out = Vec::new();
    let Some(node) = doc.get("resource") else {
        return out;
    };
    let Some(kinds) = cx.as_table("resource", "the file", node) else {
        return out;
    };
    // The provider a resource gets when it does not say.
    let default_provider: Option<&str> = match &cluster.provider {
        Some(p) => Some(p.as_str()),
        None if providers.len() == 1 => providers.keys().next().map(String::as_str),
        None => None,
    };
    // (kind, provider) pairs already reported as unknown, to report each once.
    let mut bad_kinds: BTreeSet<(String, String)> = BTreeSet::new();
    for (kind_key, kind_node) in in_file_order(kinds) {
        let kind = kind_key.get_ref().as_ref();
        let Some(names) = cx.as_table(kind, "`[resource]`", kind_node) else {
            continue;
        };
        for (name_key, name_node) in in_file_order(names) {
            let name = name_key.get_ref().as_ref();
            let section = format!("`[resource.{kind}.{name}]`");
            let Some(t) = cx.as_table(name, &format!("`[resource.{kind}]`"), name_node) else {
                continue;
            };
            let header = cx.table_span(name_key, name_node);
            if name.chars().count() > crate::checks::MAX_NAME_LEN {
                cx.error(
                    Some(span(name_key.span())),
                    format!("resource name `{name}` is {} characters long", name.chars().count()),
                    "name too long",
                    Some(format!(
                        "use at most {} characters: the name goes into host names, and a host name is one DNS label",
                        crate::checks::MAX_NAME_LEN
                    )),
                );
            } else if !valid_name(name) {
                cx.error(
                    Some(span(name_key.span())),
                    format!("`{name}` is not a valid resource name"),
                    "invalid name",
                    Some("use a-z, 0-9, `-` and `_`, starting with a letter".to_string()),
                );
            }

            // provider
            let provider: Option<String> = match cx.get_str(t, "provider", &section) {
                Some((p, at)) => {
                    if schemas.iter().any(|s| s.provider == p) {
                        Some(p.to_string())
                    } else {
                        unknown_provider(cx, p, at, schemas);
                        None
                    }
                }
                None if t.contains_key("provider") => None,
                None => match default_provider {
                    // An unknown `[cluster] provider` is reported there already.
                    Some(p) => schemas
                        .iter()
                        .any(|s| s.provider == p)
                        .then(|| p.to_string()),
                    None => {
                        let example = provider_names(schemas).first().copied().unwrap_or("sim");
                        cx.error(
                            Some(header),
                            format!("`{kind}.{name}` does not say which provider manages it"),
                            "which provider?",
                            Some(format!(
                                "say which provider: add `provider = \"{example}\"` here, or to `[cluster]`"
                            )),
                        );
                        None
                    }
                },
            };
            let schema: Option<&KindSchema> = match &provider {
                Some(p) => {
                    let ps = schemas.iter().find(|s| &s.provider == p);
                    match ps.and_then(|s| s.kind(kind)) {
                        Some(k) => Some(k),
                        None => {
                            if bad_kinds.insert((kind.to_string(), p.clone())) {
                                let kinds = ps.map(|s| s.kind_names()).unwrap_or_default();
                                cx.error(
                                    Some(span(kind_key.span())),
                                    format!("provider `{p}` has no resource kind `{kind}`"),
                                    "unknown kind",
                                    Some(expected_one_of(&kinds)),
                                );
                            }
                            None
                        }
                    }
                }
                None => None,
            };

            let count = match cx.get_count(t, "count", &section) {
                None => Count::Single,
                Some((Some(n), _)) => Count::Counted(n),
                Some((None, _)) => Count::Unknown,
            };
            let depends_on: Vec<(String, Span)> = cx
                .get_str_list(t, "depends_on", &section)
                .unwrap_or_default()
                .into_iter()
                .map(|(s, at)| (s.to_string(), at))
                .collect();

            let mut decl = PlainDecl {
                kind: kind.to_string(),
                name: name.to_string(),
                span: header,
                provider,
                count,
                attrs: Attrs::new(),
                auto_name: false,
                refs: Vec::new(),
                depends_on,
            };
            if let Some(schema) = schema {
                attributes(cx, t, schema, &section, &mut decl);
            }
            out.push(decl);
        }
    }
    out.sort_by_key(|d| d.span.offset);
    out
}

/// String attributes that mean nothing when empty.
const NON_EMPTY: &[&str] = &[
    "name", "size", "zone", "cidr", "gateway", "address", "role", "channel", "image",
];

/// Value checks no provider is needed for: no empty `size`/`zone`/`name`..., no
/// negative numbers (sizes) and no size of zero, a `cidr` that is a network address
/// (no host bits), a `name` that fits a host name. False when reported.
fn value_ok(
    cx: &mut Cx<'_>,
    key: &str,
    value: &serde_json::Value,
    at: Span,
    section: &str,
) -> bool {
    use serde_json::Value;
    let (message, label, help) = match value {
        Value::String(s) if s.trim().is_empty() && NON_EMPTY.contains(&key) => (
            format!("`{key}` in {section} is empty"),
            "empty",
            format!("give `{key}` a value, or leave it out"),
        ),
        Value::String(s) if key == "name" && s.chars().count() > crate::checks::MAX_NAME_LEN => (
            format!(
                "`name` in {section} is {} characters long",
                s.chars().count()
            ),
            "name too long",
            format!(
                "use at most {} characters (a host name is one DNS label)",
                crate::checks::MAX_NAME_LEN
            ),
        ),
        Value::String(s) if key == "cidr" => match s.parse::<ipnet::Ipv4Net>() {
            Err(_) => (
                format!("`{s}` is not an IPv4 network"),
                "not an IPv4 cidr",
                "write it as address/prefix, like \"10.0.0.0/16\"".to_string(),
            ),
            Ok(n) if n.network() != n.addr() => (
                format!("`{s}` has host bits set: the network is {}", n.trunc()),
                "host bits set",
                format!("write the network address, \"{}\"", n.trunc()),
            ),
            Ok(_) => return true,
        },
        Value::Number(n) if n.as_i64().is_some_and(|v| v < 0) => (
            format!("`{key}` in {section} is negative ({n})"),
            "negative",
            format!("`{key}` must be 0 or more"),
        ),
        Value::Number(n) if n.as_i64() == Some(0) && key.ends_with("_gb") => (
            format!("`{key}` in {section} is 0"),
            "zero size",
            format!("give `{key}` a size of at least 1 (GiB), or leave it out"),
        ),
        _ => return true,
    };
    cx.error(Some(at), message, label, Some(help));
    false
}

/// Check the attribute keys of one resource table against its kind's schema.
fn attributes(
    cx: &mut Cx<'_>,
    t: &DeTable<'_>,
    schema: &KindSchema,
    section: &str,
    decl: &mut PlainDecl,
) {
    // Keys written, valid or not (a wrong value is not also "missing").
    let mut written: BTreeSet<&str> = BTreeSet::new();
    for (k, node) in t.iter() {
        let key = k.get_ref().as_ref();
        written.insert(key);
        if SPECIAL.contains(&key) {
            continue;
        }
        let Some(attr) = schema.attr(key) else {
            let mut expected = schema.input_names();
            expected.extend_from_slice(SPECIAL);
            cx.error(
                Some(span(k.span())),
                format!("`{}` has no attribute `{key}`", schema.kind),
                "unknown attribute",
                Some(expected_one_of(&expected)),
            );
            continue;
        };
        if !attr.input {
            cx.error(
                Some(span(k.span())),
                format!(
                    "`{key}` of `{}` is set by the provider; it cannot be set here",
                    schema.kind
                ),
                "computed attribute",
                Some(format!("remove `{key}`")),
            );
            continue;
        }
        let value = cx.json_of(node);
        if !attr.ty.accepts(&value) {
            cx.error(
                Some(span(node.span())),
                format!(
                    "`{key}` in {section} must be {}, not {}",
                    attr.ty.describe(),
                    crate::reader::describe_found(node.get_ref())
                ),
                format!("expected {}", attr.ty.describe()),
                (!attr.doc.is_empty()).then(|| format!("`{key}`: {}", attr.doc)),
            );
            continue;
        }
        if !value_ok(cx, key, &value, span(node.span()), section) {
            continue;
        }
        match (attr.ty, value) {
            (clusterform_core::AttrType::Reference, serde_json::Value::String(s)) => {
                decl.refs.push(RawRef {
                    attr: key.to_string(),
                    value: s,
                    span: span(node.span()),
                });
            }
            (_, value) => {
                decl.attrs.insert(key.to_string(), value);
            }
        }
    }
    decl.auto_name =
        schema.attr("name").is_some_and(|a| a.input) && !decl.attrs.contains_key("name");
    for attr in schema.attrs.iter().filter(|a| a.input && a.required) {
        let present =
            written.contains(attr.name.as_str()) || (attr.name == "name" && decl.auto_name);
        if !present {
            let example = match attr.ty {
                clusterform_core::AttrType::String => "\"...\"",
                clusterform_core::AttrType::Int => "1",
                clusterform_core::AttrType::Bool => "true",
                clusterform_core::AttrType::StringList => "[\"...\"]",
                clusterform_core::AttrType::Map => "{ key = \"value\" }",
                clusterform_core::AttrType::Reference => "\"kind.name\"",
            };
            let doc = if attr.doc.is_empty() {
                String::new()
            } else {
                format!(" ({})", attr.doc)
            };
            cx.error(
                Some(decl.span),
                format!(
                    "`{}.{}` is missing required attribute `{}`",
                    decl.kind, decl.name, attr.name
                ),
                format!("missing `{}`", attr.name),
                Some(format!("add `{} = {example}`{doc}", attr.name)),
            );
        }
    }
}
