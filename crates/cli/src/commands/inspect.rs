//! Commands that read (or hand-edit) without planning: validate, show, state list/show/rm,
//! force-unlock, graph.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clusterform_core::{Address, ResourceState};
use clusterform_state::{Mutation, StateStore};
use miette::Result;
use serde_json::json;

use crate::args::{GraphFormat, StateCommand};
use crate::context::{self, split_file_arg};
use crate::output::clean;
use crate::planfile::PlanFile;
use crate::{errors, render};

/// `clusterform validate`: the file, and the settings of every provider this build has.
pub fn validate(file: &Path) -> Result<u8> {
    let (model, registry) = context::load_model_and_registry(file)?;
    let base_dir = context::base_dir_of(&model.path);
    let (buildable, planned): (BTreeMap<_, _>, BTreeMap<_, _>) = context::provider_configs(&model)
        .into_iter()
        .partition(|(name, _)| registry.can_apply(name));
    for (name, settings) in &buildable {
        if let Some(f) = registry.get(name) {
            f.check_settings(settings, &base_dir)
                .map_err(|msg| context::provider_error(file, &model, name, &msg))?;
        }
    }
    context::check_resources(&registry, &model)?;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &model.resources {
        *kinds.entry(r.address.kind.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    outln!(
        "{} is valid: cluster `{}`, {} resources ({}).",
        file.display(),
        model.cluster.name,
        model.resources.len(),
        counts.join(", ")
    );
    for name in planned.keys() {
        outln!(
            "note: this build cannot plan or apply with provider `{name}`, so its settings were not checked; `render` and `graph` work."
        );
    }
    Ok(0)
}

fn record_text(r: &ResourceState) -> String {
    let mut out = format!("# {}:\n{} {{\n", r.address, r.address);
    let mut rows: Vec<(&str, String)> = vec![
        ("id", json!(r.id).to_string()),
        ("provider", json!(r.provider).to_string()),
    ];
    for (k, v) in &r.attrs {
        rows.push((k, crate::render::attr_value(k, v)));
    }
    if !r.dependencies.is_empty() {
        let deps: Vec<String> = r.dependencies.iter().map(ToString::to_string).collect();
        rows.push(("depends_on", json!(deps).to_string()));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for (k, v) in rows {
        out.push_str(&format!("    {k:<w$} = {v}\n"));
    }
    out.push_str("}\n");
    // Addresses, ids and provider names come from the state file: it may hold anything.
    clean(&out).into_owned()
}

/// `state show --raw`: a machine's user data byte for byte (opened: a config holding a
/// private key goes to a file or a pipe, never to a terminal).
fn raw_user_data(r: &ResourceState) -> Result<u8> {
    use std::io::IsTerminal;
    let Some(text) = r.attrs.get("user_data").and_then(|v| v.as_str()) else {
        return Err(errors::hint(
            format!("`{}` has no user data", r.address),
            "--raw prints a machine's `user_data`; leave it out to see the record",
        ));
    };
    if clusterform_state::seal::holds_private_key(text) && std::io::stdout().is_terminal() {
        return Err(errors::hint(
            format!("the user data of `{}` holds a private key", r.address),
            format!(
                "redirect it to a file: clusterform state show {} --raw > {}.ign",
                r.address, r.address
            ),
        ));
    }
    out!("{text}");
    Ok(0)
}

/// `clusterform show`.
pub fn show(file: &Path, as_json: bool) -> Result<u8> {
    if let Some(pf) = PlanFile::read(file)? {
        if as_json {
            outln!(
                "{}",
                crate::output::json(
                    &serde_json::to_string_pretty(&render::plan_json(&pf.plan))
                        .map_err(errors::bug)?
                )
            );
        } else {
            out!("{}", render::plan(&pf.plan));
        }
        return Ok(0);
    }
    let ctx = context::load(file)?;
    let snap = ctx.store.load().map_err(errors::state)?;
    if as_json {
        let v = json!({
            "format_version": "1",
            "lineage": snap.lineage,
            "serial": snap.serial,
            "resources": snap.resources.values().collect::<Vec<_>>(),
            "pending": snap.journal,
        });
        outln!(
            "{}",
            crate::output::json(&serde_json::to_string_pretty(&v).map_err(errors::bug)?)
        );
        return Ok(0);
    }
    if snap.resources.is_empty() {
        outln!(
            "The state is empty. Run `clusterform apply {}` to create the cluster.",
            file.display()
        );
        return Ok(0);
    }
    for r in snap.resources.values() {
        outln!("{}", record_text(r));
    }
    outln!(
        "serial {}, lineage {}",
        snap.serial,
        snap.lineage.unwrap_or_default()
    );
    Ok(0)
}

fn parse_addr(s: &str) -> Result<Address> {
    s.parse::<Address>().map_err(|e| {
        errors::hint(
            e.to_string(),
            "addresses look like `machine.workers[0]`; `clusterform state list` prints them",
        )
    })
}

/// `clusterform state ...`.
pub fn state(cmd: StateCommand) -> Result<u8> {
    match cmd {
        StateCommand::List { args } => {
            let (file, rest) = split_file_arg(&args);
            let filters = rest
                .iter()
                .map(|a| parse_addr(a))
                .collect::<Result<Vec<_>>>()?;
            let ctx = context::load(&file)?;
            let snap = ctx.store.load().map_err(errors::state)?;
            let mut text = String::new();
            for a in snap
                .resources
                .keys()
                .filter(|a| filters.is_empty() || filters.iter().any(|f| f.names(a)))
            {
                text.push_str(&a.to_string());
                text.push('\n');
            }
            // Addresses come from the state file: a damaged or hand-edited one may hold
            // anything.
            out!("{}", clean(&text));
            Ok(0)
        }
        StateCommand::Migrate { .. } => Err(errors::bug("state migrate is dispatched before")),
        StateCommand::Restore { file } => Err(errors::bug(format!(
            "`state restore {}` reached the synchronous state commands",
            file.display()
        ))),
        StateCommand::Pending { file } => {
            let ctx = context::load(&file)?;
            let snap = ctx.store.load().map_err(errors::state)?;
            if snap.journal.is_empty() {
                outln!("No unfinished operations.");
                return Ok(0);
            }
            outln!(
                "{} unfinished operation(s); the next `clusterform plan` or `apply` resolves them:",
                snap.journal.len()
            );
            for e in &snap.journal {
                outln!(
                    "  {} {:<7} {} (started {}, key {}{})",
                    e.op_id,
                    e.action.name(),
                    e.address,
                    e.started_at,
                    e.idempotency_key,
                    e.object_id
                        .as_ref()
                        .map(|id| format!(", object {id}"))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        StateCommand::Show { args, raw } => {
            let (file, rest) = split_file_arg(&args);
            let [addr] = rest else {
                return Err(errors::hint(
                    "`state show` takes one address",
                    "clusterform state show cluster.toml machine.workers[0]",
                ));
            };
            let addr = parse_addr(addr)?;
            let ctx = context::load(&file)?;
            let snap = ctx.store.load().map_err(errors::state)?;
            let all: Vec<&ResourceState> = snap
                .resources
                .values()
                .filter(|r| addr.names(&r.address))
                .collect();
            match all.as_slice() {
                [] => Err(errors::hint(
                    format!("`{addr}` is not in the state"),
                    "`clusterform state list` prints the addresses it has",
                )),
                [one] if raw => raw_user_data(one),
                _ if raw => Err(errors::hint(
                    format!("`{addr}` names {} records; --raw prints one", all.len()),
                    "name one instance, like `machine.workers[0]`",
                )),
                records => {
                    let text: Vec<String> = records.iter().map(|r| record_text(r)).collect();
                    out!("{}", text.join("\n"));
                    Ok(0)
                }
            }
        }
        StateCommand::Rekey { file, new_key_file } => rekey(&file, new_key_file),
        StateCommand::Rm { args } => {
            let (file, rest) = split_file_arg(&args);
            if rest.is_empty() {
                return Err(errors::hint(
                    "`state rm` needs at least one address",
                    "clusterform state rm cluster.toml machine.workers[0]",
                ));
            }
            let addrs: Vec<Address> = rest.iter().map(|s| parse_addr(s)).collect::<Result<_>>()?;
            let ctx = context::load(&file)?;
            let _guard = ctx
                .store
                .lock("state rm", Duration::ZERO)
                .map_err(errors::state)?;
            let snap = ctx.store.load().map_err(errors::state)?;
            let mut removed = Vec::new();
            for a in &addrs {
                let matching: Vec<&ResourceState> = snap
                    .resources
                    .values()
                    .filter(|r| a.names(&r.address))
                    .collect();
                if matching.is_empty() {
                    return Err(errors::hint(
                        format!("`{a}` is not in the state; nothing was removed"),
                        "`clusterform state list` prints the addresses it has",
                    ));
                }
                removed.extend(matching);
            }
            ctx.store
                .commit(
                    &removed
                        .iter()
                        .map(|r| Mutation::Remove(r.address.clone()))
                        .collect::<Vec<_>>(),
                )
                .map_err(errors::state)?;
            for r in removed {
                outln!(
                    "{}",
                    clean(&format!(
                        "Removed {} from the state (the object {} stays at provider `{}`).",
                        r.address, r.id, r.provider
                    ))
                );
            }
            Ok(0)
        }
    }
}

/// `clusterform force-unlock [FILE] ID`.
pub fn force_unlock(args: &[String]) -> Result<u8> {
    let (file, rest) = split_file_arg(args);
    let [id] = rest else {
        return Err(errors::hint(
            "force-unlock takes the lock id",
            "clusterform force-unlock cluster.toml LOCK_ID",
        ));
    };
    let ctx = context::load(&file)?;
    let info = ctx.store.force_unlock(id).map_err(errors::state)?;
    outln!("Released {info}.");
    Ok(0)
}

/// `clusterform graph`.
pub async fn graph(
    file: &Path,
    format: GraphFormat,
    with_plan: bool,
    run: &crate::args::RunArgs,
) -> Result<u8> {
    use std::io::IsTerminal;
    if matches!(format, GraphFormat::Png) && std::io::stdout().is_terminal() {
        return Err(errors::hint(
            "a PNG is not for the terminal",
            "redirect it to a file: clusterform graph --format png > graph.png",
        ));
    }
    let (model, actions) = if with_plan {
        let ctx = context::load(file)?;
        let p = crate::commands::plan::prepare(
            &ctx,
            &crate::commands::plan::Intent::default(),
            run,
            "graph --plan",
        )
        .await?;
        let actions: BTreeMap<Address, clusterform_core::Action> = p
            .plan
            .changes
            .iter()
            .map(|c| (c.address.clone(), c.action))
            .collect();
        (ctx.model, actions)
    } else {
        (context::load_model(file)?, BTreeMap::new())
    };
    let roles: BTreeMap<&Address, &str> = model
        .resources
        .iter()
        .map(|r| {
            let role = match (
                r.address.kind.as_str(),
                r.attrs.get("role").and_then(|v| v.as_str()),
            ) {
                ("network" | "subnet" | "ip_reservation", _) => "network",
                (_, Some("etcd")) => "etcd",
                (_, Some("worker")) => "worker",
                _ => "other",
            };
            (&r.address, role)
        })
        .collect();
    let style = |a: &Address| -> Option<String> {
        let fill = match roles.get(a).copied() {
            Some("network") => "#cfe2ff",
            Some("etcd") => "#ffd8a8",
            Some("worker") => "#d3f9d8",
            _ => "#f1f3f5",
        };
        let mut attrs = format!(
            "style = \"filled\", fillcolor = \"{fill}\", class = \"role-{}\"",
            roles.get(a).copied().unwrap_or("other")
        );
        if let Some(action) = actions.get(a) {
            use clusterform_core::Action;
            let (symbol, color, extra) = match action {
                Action::Create => ("+", "#2b8a3e", ""),
                Action::Update => ("~", "#e8b100", ""),
                Action::Replace => ("-/+", "#e8590c", ""),
                Action::Delete => ("-", "#c92a2a", ", style = \"filled,dashed\""),
                Action::NoOp => ("", "", ""),
            };
            if !symbol.is_empty() {
                attrs = format!(
                    "{attrs}, label = \"{symbol} {a}\", color = \"{color}\", penwidth = 3{extra}, tooltip = \"{action:?}\""
                );
            }
        }
        Some(attrs)
    };
    let dot = model.graph.to_dot_styled(&model.cluster.name, &style);
    let tool = match format {
        GraphFormat::Dot => {
            out!("{dot}");
            return Ok(0);
        }
        GraphFormat::Svg => "-Tsvg",
        GraphFormat::Png => "-Tpng",
    };
    let child = Command::new("dot")
        .arg(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => {
            return Err(errors::hint(
                "`--format svg` and `png` need Graphviz's `dot`, which is not installed",
                "install it (Debian/Ubuntu: `apt-get install graphviz`), or use `--format dot` and render elsewhere",
            ));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(dot.as_bytes());
    }
    let status = child.wait().map_err(|e| {
        errors::hint(
            format!("`dot` failed: {e}"),
            "check that Graphviz's `dot` runs (`dot -V`), or use `--format dot`",
        )
    })?;
    Ok(if status.success() { 0 } else { 1 })
}

/// `clusterform render`: each machine's Ignition config, byte for byte what the provider
/// receives as user data.
pub fn render(file: &Path, machine: Option<&str>, out: Option<&Path>) -> Result<u8> {
    let model = context::load_model(file)?;
    let filter = machine.map(parse_addr).transpose()?;
    let configs: Vec<(&Address, &str)> = model
        .resources
        .iter()
        .filter(|r| filter.as_ref().is_none_or(|f| f.names(&r.address)))
        .filter_map(|r| {
            r.attrs
                .get("user_data")
                .and_then(|v| v.as_str())
                .map(|s| (&r.address, s))
        })
        .collect();
    if configs.is_empty() {
        let machines: Vec<String> = model
            .resources
            .iter()
            .filter(|r| r.attrs.contains_key("user_data"))
            .map(|r| r.address.to_string())
            .collect();
        return Err(match (machine, machines.is_empty()) {
            (_, true) => errors::hint(
                "no machine in this cluster file has an Ignition config",
                "machines made by a blueprint get one; plain [resource.machine.*] tables can set `user_data`",
            ),
            (Some(m), false) => errors::hint(
                format!("`{m}` is not a machine with an Ignition config"),
                format!("machines: {}", machines.join(", ")),
            ),
            (None, false) => errors::hint(
                "nothing to render",
                format!("machines: {}", machines.join(", ")),
            ),
        });
    }
    match out {
        Some(dir) => {
            // The configs carry the machines' etcd keys: readable by the user only.
            let names: Vec<String> = configs.iter().map(|(a, _)| format!("{a}.ign")).collect();
            let files: Vec<(&str, &str)> = names
                .iter()
                .zip(&configs)
                .map(|(n, (_, json))| (n.as_str(), *json))
                .collect();
            crate::private::write_files(dir, &files, "pass a folder you can write to")?;
            outln!(
                "Wrote {} Ignition config(s) to {}.",
                configs.len(),
                dir.display()
            );
        }
        // The same JSON value as the provider receives (DEL and C1 escaped, see `json`).
        None if configs.len() == 1 => outln!("{}", crate::output::json(configs[0].1)),
        None => {
            let all: serde_json::Map<String, serde_json::Value> = configs
                .iter()
                .map(|(a, json)| {
                    (
                        a.to_string(),
                        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
                    )
                })
                .collect();
            outln!(
                "{}",
                crate::output::json(&serde_json::to_string_pretty(&all).map_err(errors::bug)?)
            );
        }
    }
    Ok(0)
}

/// `clusterform state restore`: put the last run's backup in place of a damaged state
/// file, then adopt what the provider made since (by the cluster's ownership tags).
pub async fn restore(file: &Path) -> Result<u8> {
    let ctx = context::load(file)?;
    let context::StateLocation::Local { path, .. } = &ctx.state_location else {
        return Err(errors::hint(
            format!(
                "`state restore` puts back the local store's backup file; the state of `{}` is in etcd ({})",
                file.display(),
                ctx.store.describe()
            ),
            "restore the etcd cluster from its own snapshot (`etcdctl snapshot save` / `etcdutl snapshot restore`), then run `clusterform plan` to see what differs",
        ));
    };
    let local = clusterform_state::LocalStore::new(path.clone());
    let _guard = ctx
        .store
        .lock("state restore", Duration::ZERO)
        .map_err(errors::state)?;
    let damaged = local.restore_backup().map_err(|e| {
        if local.backup_path().exists() {
            errors::state(e)
        } else {
            errors::hint(
                e.to_string(),
                "there is no state.redb.backup in the state folder (a backup is made before the first change of each run); the state file was left as it was",
            )
        }
    })?;
    let snap = local.load().map_err(errors::state)?;
    let adoption = clusterform_engine::adopt_tagged(
        &ctx.providers,
        &local,
        &snap,
        &ctx.cluster.name,
        &ctx.model.resources,
    )
    .await
    .map_err(errors::engine)?;
    if let Some(d) = damaged {
        outln!("Moved the damaged state file aside: {}", d.display());
    }
    outln!(
        "Restored the state of serial {} ({} resources) from {}.",
        snap.serial,
        snap.resources.len(),
        local.backup_path().display()
    );
    for (a, id) in &adoption.adopted {
        outln!("Adopted {a} ({id}): the provider has it, the backup did not record it.");
    }
    for (a, id) in &adoption.duplicates {
        outln!(
            "warning: {id} also carries the address {a}; it was left alone, look at it (e.g. `clusterform sim list`)."
        );
    }
    outln!(
        "Run `clusterform plan {}` to see where the cluster stands.",
        file.display()
    );
    Ok(0)
}

/// `clusterform import [FILE] ADDR ID`: adopt an existing object into the state under an
/// address the cluster file declares.
pub async fn import(args: &[String], lock_timeout: Duration) -> Result<u8> {
    let (file, rest) = split_file_arg(args);
    let [addr, id] = rest else {
        return Err(errors::hint(
            "`import` takes an address and an id",
            "clusterform import cluster.toml machine.workers[0] m-000004",
        ));
    };
    let addr = parse_addr(addr)?;
    let ctx = context::load(&file)?;
    let Some(desired) = ctx.model.resources.iter().find(|r| r.address == addr) else {
        return Err(errors::hint(
            format!("`{addr}` is not in the cluster file `{}`", file.display()),
            "import adopts an object for a resource the cluster file declares: add it first (see `clusterform plan` for the addresses)",
        ));
    };
    let guard = ctx
        .store
        .lock("import", lock_timeout)
        .map_err(errors::state)?;
    if let Some(note) = guard.note() {
        errln!("note: {note}");
    }
    let mut snap = ctx.store.load().map_err(errors::state)?;
    if !snap.journal.is_empty() {
        let recovered = clusterform_engine::recover(
            &ctx.providers,
            ctx.store.as_ref(),
            &snap,
            &ctx.cluster.name,
        )
        .await
        .map_err(errors::engine)?;
        out!("{}", render::recoveries(&recovered));
        snap = ctx.store.load().map_err(errors::state)?;
    }
    let provider = ctx
        .providers
        .get(&desired.provider)
        .map_err(errors::engine)?;
    let imported = clusterform_engine::import(
        provider.as_ref(),
        ctx.store.as_ref(),
        &snap,
        &ctx.cluster.name,
        desired,
        id,
    )
    .await
    .map_err(errors::engine)?;
    if let Some(tagged) = &imported.tagged_as {
        outln!(
            "warning: `{id}` was made for `{tagged}` (its clusterform:address tag); it is now recorded as `{addr}`."
        );
    }
    outln!(
        "Import successful! `{addr}` is now `{}` in the state (serial {}).\nRun `clusterform plan {}` to see whether it matches the cluster file.",
        imported.record.id,
        imported.serial,
        file.display()
    );
    Ok(0)
}

/// The environment variable with the new passphrase of `state rekey`.
const NEW_KEY_ENV: &str = "CLUSTERFORM_NEW_STATE_KEY";

/// `clusterform state rekey`: open everything sealed with the current key, seal it
/// again with the new one, in one commit.
fn rekey(file: &Path, new_key_file: Option<PathBuf>) -> Result<u8> {
    use clusterform_state::{KeySource, SealedStore, seal::StateKey};
    let new_pass = std::env::var(NEW_KEY_ENV).ok().filter(|p| !p.is_empty());
    let source = match (new_key_file, new_pass) {
        (Some(_), Some(_)) => {
            return Err(errors::hint(
                format!("`--new-key-file` and {NEW_KEY_ENV} both name a new key"),
                "give one of them",
            ));
        }
        (Some(f), None) => {
            if !f.exists() {
                StateKey::generate().write_new_file(&f).map_err(|e| {
                    errors::hint(e.to_string(), "name a file in a folder you can write")
                })?;
                errln!("note: made the key file {} (mode 0600)", f.display());
            }
            KeySource::File(f)
        }
        (None, Some(p)) => KeySource::Passphrase(p),
        (None, None) => {
            return Err(errors::hint(
                "`state rekey` needs the new key",
                format!(
                    "clusterform state rekey {} --new-key-file PATH (made when missing), or set {NEW_KEY_ENV} to a new passphrase",
                    file.display()
                ),
            ));
        }
    };
    let ctx = context::load(file)?;
    let _guard = ctx
        .store
        .lock("state rekey", Duration::ZERO)
        .map_err(errors::state)?;
    let snap = ctx.store.load().map_err(errors::state)?;
    let inner = ctx.state_location.raw_store()?;
    let new = SealedStore::new(inner, source.clone(), context::sensitive());
    SealedStore::reseal(&snap, &new).map_err(errors::state)?;
    let next = match &source {
        KeySource::File(f) => format!(
            "set `[state] encryption = \"{}\"` in {} (and unset CLUSTERFORM_STATE_KEY)",
            f.display(),
            file.display()
        ),
        _ => format!(
            "set CLUSTERFORM_STATE_KEY to the new passphrase (the value of {NEW_KEY_ENV}) from now on"
        ),
    };
    outln!(
        "Sealed {} record(s) and {} secret(s) with the new key. Now {next}. Backups made before this keep the old key.",
        snap.resources.len(),
        snap.secrets
            .keys()
            .filter(|k| *k != "state-key-salt")
            .count()
    );
    Ok(0)
}
