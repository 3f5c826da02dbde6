//! `[output.NAME]`: the values a cluster file declares for people and scripts, each a
//! resource attribute (`value = "machine.bastion.address"`), checked against the
//! resources the file makes and their providers' schemas.

use clusterform_core::{Address, OutputDecl, ProviderSchema, Resource};
use toml::de::DeTable;

use crate::reader::{Cx, expected_one_of, span};

/// The outputs clusterform gives every cluster; a file's own may not take these names.
pub const BUILT_IN_OUTPUTS: &[&str] = &["machines", "networks", "etcd_endpoints"];

/// Read `[output.*]`.
pub(crate) fn outputs(
    cx: &mut Cx<'_>,
    doc: &DeTable<'_>,
    resources: &[Resource],
    schemas: &[ProviderSchema],
) -> Vec<OutputDecl> {
    let Some(node) = doc.get("output") else {
        return Vec::new();
    };
    let Some(table) = cx.as_table("output", "the file", node) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, node) in table {
        let section = format!("`[output.{}]`", name.get_ref());
        let Some(t) = cx.as_table(name.get_ref(), "`[output]`", node) else {
            continue;
        };
        cx.check_keys(t, &["value", "description"], &section);
        if BUILT_IN_OUTPUTS.contains(&name.get_ref().as_ref()) {
            cx.error(
                Some(span(name.span())),
                format!(
                    "`{}` is an output clusterform gives every cluster",
                    name.get_ref()
                ),
                "built-in output",
                Some("give yours another name".to_string()),
            );
            continue;
        }
        let Some((value, at)) = cx.get_str(t, "value", &section) else {
            if t.get("value").is_none() {
                cx.error(
                    Some(span(node.span())),
                    format!("{section} has no `value`"),
                    "no value",
                    Some(
                        "name a resource attribute: value = \"machine.bastion.address\""
                            .to_string(),
                    ),
                );
            }
            continue;
        };
        let description = cx
            .get_str(t, "description", &section)
            .map(|(d, _)| d.to_string());
        let parsed = value.rsplit_once('.').and_then(|(addr, attr)| {
            let target: Address = addr.parse().ok()?;
            (!attr.is_empty() && !attr.contains(['[', ']'])).then(|| (target, attr.to_string()))
        });
        let Some((target, attr)) = parsed else {
            cx.error(
                Some(at),
                format!("`{value}` is not a resource attribute"),
                "not KIND.NAME.ATTR",
                Some(
                    "write it like \"machine.bastion.address\" or \"machine.workers[0].id\""
                        .to_string(),
                ),
            );
            continue;
        };
        let matching: Vec<&Resource> = resources
            .iter()
            .filter(|r| {
                r.address == target
                    || (target.index.is_none()
                        && r.address.kind == target.kind
                        && r.address.name == target.name)
            })
            .collect();
        let Some(first) = matching.first() else {
            let mut known: Vec<String> = resources
                .iter()
                .map(|r| {
                    Address {
                        index: None,
                        ..r.address.clone()
                    }
                    .to_string()
                })
                .collect();
            known.dedup();
            cx.error(
                Some(at),
                format!("`{value}` refers to `{target}`, which this file does not make"),
                "no such resource",
                Some(expected_one_of(&known)),
            );
            continue;
        };
        let kind = schemas
            .iter()
            .find(|s| s.provider == first.provider)
            .and_then(|s| s.kind(&target.kind));
        if let Some(kind) = kind
            && attr != "id"
            && kind.attr(&attr).is_none()
        {
            let mut names: Vec<&str> = kind.attrs.iter().map(|a| a.name.as_str()).collect();
            names.push("id");
            cx.error(
                Some(at),
                format!("`{}` has no attribute `{attr}`", target.kind),
                "unknown attribute",
                Some(expected_one_of(&names)),
            );
            continue;
        }
        out.push(OutputDecl {
            name: name.get_ref().to_string(),
            target,
            attr,
            description,
        });
    }
    out
}
