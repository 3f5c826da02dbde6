//! `clusterform output`: the cluster's outputs from the state (each machine's addresses,
//! role, zone and provider id; the networks; the etcd client endpoints; the file's own
//! `[output.NAME]`), and the short list printed after an apply.

use std::collections::BTreeMap;
use std::path::Path;

use clusterform_config::Model;
use clusterform_state::Snapshot;
use miette::Result;
use serde_json::{Map, Value, json};

use crate::{context, errors};

/// One output: its value and description.
pub struct Output {
    /// The value.
    pub value: Value,
    /// What it is.
    pub description: String,
}

/// Every output of `model` the state `snap` has a value for, by name.
pub fn outputs(model: &Model, snap: &Snapshot) -> BTreeMap<String, Output> {
    let mut out = BTreeMap::new();
    let mut machines = Map::new();
    let mut networks = Map::new();
    for r in snap.resources.values() {
        let pick = |keys: &[&str]| -> Map<String, Value> {
            let mut m = Map::new();
            m.insert("id".into(), Value::String(r.id.clone()));
            m.insert("provider".into(), Value::String(r.provider.clone()));
            for k in keys {
                if let Some(v) = r.attrs.get(*k).filter(|v| !v.is_null()) {
                    m.insert((*k).to_string(), v.clone());
                }
            }
            m
        };
        match r.address.kind.as_str() {
            "machine" => {
                machines.insert(
                    r.address.to_string(),
                    Value::Object(pick(&["name", "address", "public_address", "role", "zone"])),
                );
            }
            "network" => {
                networks.insert(
                    r.address.to_string(),
                    Value::Object(pick(&["cidr", "vlan"])),
                );
            }
            _ => {}
        }
    }
    if !machines.is_empty() {
        out.insert(
            "machines".to_string(),
            Output {
                value: Value::Object(machines),
                description: "every machine: provider id, addresses, role, zone".into(),
            },
        );
    }
    if !networks.is_empty() {
        out.insert(
            "networks".to_string(),
            Output {
                value: Value::Object(networks),
                description: "every network: provider id, CIDR".into(),
            },
        );
    }
    let endpoints = match &model.etcd.endpoints {
        Some(e) => e.clone(),
        None => clusterform_engine::day2::MemberSet::new(&model.resources, &snap.resources)
            .client_urls(),
    };
    if !endpoints.is_empty() {
        out.insert(
            "etcd_endpoints".to_string(),
            Output {
                value: json!(endpoints),
                description: "the client URLs of the cluster's etcd".into(),
            },
        );
    }
    for d in &model.outputs {
        if let Some(value) = d.value(&snap.resources) {
            out.insert(
                d.name.clone(),
                Output {
                    value,
                    description: d
                        .description
                        .clone()
                        .unwrap_or_else(|| format!("{}.{}", d.target, d.attr)),
                },
            );
        }
    }
    out
}

/// `clusterform output [FILE] [NAME] [--json|--raw]`.
pub fn output(args: &[String], as_json: bool, raw: bool) -> Result<u8> {
    let (file, rest) = context::split_file_arg(args);
    let ctx = context::load(&file)?;
    let snap = ctx.store.load().map_err(errors::state)?;
    let all = outputs(&ctx.model, &snap);
    let Some(name) = rest.first() else {
        if raw {
            return Err(errors::hint(
                "--raw prints one output",
                "name it: clusterform output cluster.toml etcd_endpoints --raw",
            ));
        }
        if as_json {
            let v: Map<String, Value> = all
                .iter()
                .map(|(n, o)| {
                    (
                        n.clone(),
                        json!({"value": o.value, "description": o.description}),
                    )
                })
                .collect();
            outln!("{}", pretty(&Value::Object(v)));
        } else if all.is_empty() {
            outln!(
                "No outputs: the state of `{}` has nothing yet (run `clusterform apply {}`).",
                file.display(),
                file.display()
            );
        } else {
            out!("{}", human(&all));
        }
        return Ok(0);
    };
    let Some(o) = all.get(name.as_str()) else {
        let mut names: Vec<&str> = all.keys().map(String::as_str).collect();
        names.extend(
            ctx.model
                .outputs
                .iter()
                .map(|d| d.name.as_str())
                .filter(|n| !all.contains_key(*n)),
        );
        return Err(errors::hint(
            format!("`{}` has no output `{name}` (yet)", file.display()),
            if names.is_empty() {
                "apply the cluster first".to_string()
            } else {
                format!(
                    "its outputs: {}; one declared in the file has a value once its resource is applied",
                    names.join(", ")
                )
            },
        ));
    };
    if raw {
        match &o.value {
            Value::String(s) => outln!("{s}"),
            Value::Number(_) | Value::Bool(_) => outln!("{}", o.value),
            Value::Array(items) if items.iter().all(|v| v.is_string()) => {
                for s in items.iter().filter_map(Value::as_str) {
                    outln!("{s}");
                }
            }
            _ => {
                return Err(errors::hint(
                    format!("`{name}` is not a string, number, boolean or list of strings"),
                    "use --json for it",
                ));
            }
        }
    } else {
        // People and `--json` alike get JSON for one value (strings quoted).
        outln!("{}", pretty(&o.value));
    }
    Ok(0)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Outputs for people: scalars and lists on one line each, machines as a table.
pub fn human(all: &BTreeMap<String, Output>) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (name, o) in all {
        match (name.as_str(), &o.value) {
            ("machines", Value::Object(m)) => {
                let _ = writeln!(s, "machines ({}):", m.len());
                let col = |v: &Value, k: &str| {
                    v.get(k).and_then(Value::as_str).unwrap_or("-").to_string()
                };
                let rows: Vec<[String; 6]> = m
                    .iter()
                    .map(|(a, v)| {
                        [
                            a.clone(),
                            col(v, "address"),
                            col(v, "public_address"),
                            col(v, "role"),
                            col(v, "zone"),
                            col(v, "id"),
                        ]
                    })
                    .collect();
                let head = ["ADDRESS", "IP", "PUBLIC IP", "ROLE", "ZONE", "ID"];
                let widths: Vec<usize> = (0..6)
                    .map(|i| {
                        rows.iter()
                            .map(|r| r[i].len())
                            .chain([head[i].len()])
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                for row in std::iter::once(head.map(String::from)).chain(rows) {
                    let line: Vec<String> = row
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    let _ = writeln!(s, "  {}", line.join("  ").trim_end());
                }
            }
            (_, Value::Object(_)) => {
                let _ = writeln!(s, "{name} = {}", pretty(&o.value));
            }
            _ => {
                let _ = writeln!(s, "{name} = {}", o.value);
            }
        }
    }
    s
}

/// After an apply: the file's own outputs and the etcd endpoints, and where the rest is.
pub fn after_apply(model: &Model, snap: &Snapshot) {
    let all = outputs(model, snap);
    let short: BTreeMap<String, Output> = all
        .into_iter()
        .filter(|(n, _)| n != "machines" && n != "networks")
        .collect();
    let machines = snap
        .resources
        .keys()
        .filter(|a| a.kind == "machine")
        .count();
    if short.is_empty() && machines == 0 {
        return;
    }
    outln!("\nOutputs:");
    out!("{}", human(&short));
    if machines > 0 {
        outln!(
            "machines: {machines} (addresses, roles, zones, ids: clusterform output {} machines)",
            model
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
}

/// Prints the outputs after an apply of `file`'s plan, reading the state `store` holds.
pub fn after_apply_of(file: &Path, store: &dyn clusterform_state::StateStore) {
    let Ok(model) = context::load_model(file) else {
        return;
    };
    if let Ok(snap) = store.load() {
        after_apply(&model, &snap);
    }
}
