//! `clusterform providers [FILE]`: what this build has, the plugins it finds, and what a
//! cluster file needs; `providers check PATH`: the plugin conformance check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clusterform_provider::{Origin, ProviderConfig, ProviderFactory, Registry};
use miette::Result;
use serde_json::{Value, json};

use crate::args::{ProvidersArgs, ProvidersCommand};
use crate::context;
use crate::errors;
use crate::output::clean;

/// Run `providers`.
pub async fn run(a: ProvidersArgs) -> Result<u8> {
    match a.command {
        Some(ProvidersCommand::Check {
            path,
            settings,
            dir,
        }) => check(&path, &settings, dir).await,
        None => list(a.file.as_deref(), a.json),
    }
}

struct Row {
    name: String,
    version: String,
    kind: String,
    place: String,
}

fn row(f: &dyn ProviderFactory, place: &str) -> Row {
    let place = match f.origin() {
        Origin::Plugin(p) if place.is_empty() => p.display().to_string(),
        Origin::Plugin(p) => format!("{} ({place})", p.display()),
        Origin::SchemaOnly(why) => why,
        Origin::BuiltIn => String::new(),
    };
    Row {
        name: f.name().to_string(),
        version: f.version().to_string(),
        kind: f.origin().describe().to_string(),
        place,
    }
}

fn list(file: Option<&Path>, as_json: bool) -> Result<u8> {
    let found = clusterform_plugin::discover::all();
    // A provider known by its schema only is listed once: as the plugin, when it is found.
    let mut rows: Vec<Row> = clusterform_builtins::registry()
        .all()
        .into_iter()
        .filter(|f| !(matches!(f.origin(), Origin::SchemaOnly(_)) && found.contains_key(f.name())))
        .map(|f| row(f.as_ref(), ""))
        .collect();
    for (name, (path, place)) in found {
        let wanted = BTreeMap::from([(
            name.clone(),
            ProviderConfig::from([("plugin".to_string(), json!(path))]),
        )]);
        match context::registry_for(&wanted, Path::new("/")) {
            Ok(r) => {
                if let Some(f) = r.get(&name) {
                    rows.push(row(f.as_ref(), place.describe()));
                }
            }
            Err((_, msg)) => rows.push(Row {
                name,
                version: "?".into(),
                kind: "plugin (broken)".into(),
                place: msg,
            }),
        }
    }
    let needs = match file {
        Some(f) => Some(needs(f)?),
        None => None,
    };
    if as_json {
        let providers: Vec<Value> = rows
            .iter()
            .map(
                |r| json!({"name": r.name, "version": r.version, "kind": r.kind, "where": r.place}),
            )
            .collect();
        let mut out = json!({"providers": providers});
        if let (Some(f), Some(n)) = (file, &needs) {
            out["file"] = json!(f);
            out["needs"] = json!(
                n.iter()
                    .map(|r| json!({"name": r.name, "version": r.version, "kind": r.kind, "where": r.place}))
                    .collect::<Vec<_>>()
            );
        }
        outln!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(errors::bug)?
        );
        return Ok(0);
    }
    let table = |rows: &[Row]| {
        let w = |f: fn(&Row) -> &str, min: usize| {
            rows.iter().map(|r| f(r).len()).max().unwrap_or(0).max(min)
        };
        let (wn, wv, wk) = (w(|r| &r.name, 4), w(|r| &r.version, 7), w(|r| &r.kind, 4));
        let mut out = format!("{:wn$}  {:wv$}  {:wk$}  WHERE\n", "NAME", "VERSION", "KIND");
        for r in rows {
            let line = format!(
                "{:wn$}  {:wv$}  {:wk$}  {}",
                r.name,
                r.version,
                r.kind,
                clean(&r.place)
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    };
    out!("{}", table(&rows));
    if let (Some(f), Some(n)) = (file, needs) {
        outln!("\n{} needs:", f.display());
        out!("{}", table(&n));
    }
    Ok(0)
}

/// The providers `file` uses, from the registry its loading built.
fn needs(file: &Path) -> Result<Vec<Row>> {
    let (model, registry): (_, Registry) = context::load_model_and_registry(file)?;
    Ok(context::provider_configs(&model)
        .keys()
        .filter_map(|name| registry.get(name))
        .map(|f| row(f.as_ref(), ""))
        .collect())
}

/// `KEY=VALUE` settings: VALUE as JSON when it parses, else as a string.
fn parse_settings(settings: &[String]) -> Result<ProviderConfig> {
    let mut out = ProviderConfig::new();
    for s in settings {
        let Some((k, v)) = s.split_once('=') else {
            return Err(errors::hint(
                format!("`--setting {s}` is not KEY=VALUE"),
                "write e.g. --setting dir=/tmp/objects or --setting latency_ms=5",
            ));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

async fn check(path: &Path, settings: &[String], dir: Option<PathBuf>) -> Result<u8> {
    let settings = parse_settings(settings)?;
    if !path.is_file() {
        return Err(errors::hint(
            format!("there is no plugin executable at `{}`", path.display()),
            "give the path of the plugin's executable, e.g. ./clusterform-provider-NAME",
        ));
    }
    let (base_dir, temporary) = match dir {
        Some(d) => (d, false),
        None => {
            let d = std::env::temp_dir().join(format!("clusterform-check-{}", std::process::id()));
            std::fs::create_dir_all(&d).map_err(|e| {
                errors::hint(
                    format!("cannot make the folder `{}`: {e}", d.display()),
                    "give a folder with --dir DIR",
                )
            })?;
            (d, true)
        }
    };
    outln!(
        "checking the plugin {} (protocol {})",
        path.display(),
        clusterform_plugin::PROTOCOL_VERSION
    );
    let report = clusterform_plugin::check::run(path, &settings, &base_dir).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&base_dir);
    }
    for s in &report.steps {
        match &s.outcome {
            Ok(()) => outln!("  ok    {}", clean(&s.what)),
            Err(e) => outln!("  FAIL  {}: {}", clean(&s.what), clean(e)),
        }
    }
    let failed = report.steps.iter().filter(|s| s.outcome.is_err()).count();
    if report.passed() {
        outln!("all {} checks passed", report.steps.len());
        Ok(0)
    } else {
        outln!(
            "{failed} of {} checks failed; the protocol is in docs/plugin-protocol.md",
            report.steps.len()
        );
        Ok(1)
    }
}
