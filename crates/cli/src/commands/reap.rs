//! `clusterform reap`: list the clusters a provider holds (found by their ownership tags,
//! not by any state), then delete the expired test clusters, and with `--orphans` the
//! tagged objects that the named clusters' states do not record. Objects without the
//! tool's tags are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use clusterform_engine::reap::{self, TaggedCluster};
use clusterform_engine::{Providers, RetryPolicy};
use clusterform_provider::{Object, Provider, ProviderConfig};
use clusterform_state::LockGuard;
use miette::Result;

use crate::args::ReapArgs;
use crate::commands::apply::confirm;
use crate::context;
use crate::style::{bold, dim, green, red};
use crate::{errors, progress};

/// Why an object is reaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Expired,
    Orphan,
}

/// `clusterform reap`.
pub async fn reap(a: ReapArgs) -> Result<u8> {
    if a.orphans && a.files.is_empty() {
        return Err(errors::hint(
            "--orphans needs the cluster files whose states decide what is an orphan",
            "pass them: clusterform reap --provider NAME --orphans path/to/cluster.toml ...",
        ));
    }
    let provider = build(&a.provider, &a.files)?;
    let now = SystemTime::now();
    let clusters = reap::survey(provider.reader())
        .await
        .map_err(errors::engine)?;

    // With --orphans: lock each named cluster's state (so no run records objects while
    // we look) and find the tagged objects it does not record.
    let mut _guards: Vec<Box<dyn LockGuard>> = Vec::new();
    let mut orphans: BTreeMap<String, Vec<Object>> = BTreeMap::new();
    if a.orphans {
        for file in &a.files {
            let ctx = context::load(file)?;
            let guard = ctx
                .store
                .lock("reap --orphans", std::time::Duration::ZERO)
                .map_err(errors::state)?;
            let snapshot = ctx.store.load().map_err(errors::state)?;
            let recorded: BTreeSet<&str> =
                snapshot.resources.values().map(|r| r.id.as_str()).collect();
            let in_flight: BTreeSet<&str> = snapshot
                .journal
                .iter()
                .map(|e| e.idempotency_key.as_str())
                .collect();
            let name = &ctx.model.cluster.name;
            if let Some(c) = clusters.iter().find(|c| &c.name == name) {
                let found: Vec<Object> = c
                    .objects
                    .iter()
                    .filter(|o| !recorded.contains(o.id.as_str()))
                    .filter(|o| {
                        o.owner
                            .as_ref()
                            .is_some_and(|w| !in_flight.contains(w.op.as_str()))
                    })
                    .cloned()
                    .collect();
                if !found.is_empty() {
                    orphans.insert(name.clone(), found);
                }
            }
            _guards.push(guard);
        }
    }

    let mut doomed: Vec<(Why, &TaggedCluster, Vec<Object>)> = Vec::new();
    for c in &clusters {
        if c.expired(now) {
            doomed.push((Why::Expired, c, c.objects.clone()));
        } else if let Some(o) = orphans.remove(&c.name) {
            doomed.push((Why::Orphan, c, o));
        }
    }
    out!("{}", table(&a.provider, &clusters, &doomed, now));
    let objects: Vec<Object> = doomed.iter().flat_map(|d| d.2.iter().cloned()).collect();
    if objects.is_empty() {
        outln!("Nothing to reap.");
        return Ok(0);
    }
    outln!("{}", bold("Objects to delete:"));
    for (why, c, objs) in &doomed {
        for o in objs {
            let addr = o
                .owner
                .as_ref()
                .map(|w| w.address.to_string())
                .unwrap_or_default();
            let why = match why {
                Why::Expired => "expired",
                Why::Orphan => "orphan",
            };
            outln!(
                "  {} {} {addr} (id {}) of `{}` {}",
                red("-"),
                o.kind,
                o.id,
                c.name,
                dim(&format!("({why})"))
            );
        }
    }
    outln!();
    if a.dry_run {
        outln!(
            "Dry run: would delete {} object(s) of {} cluster(s); nothing was deleted.",
            objects.len(),
            doomed.len()
        );
        return Ok(0);
    }
    if !a.auto_approve
        && !confirm(
            "Do you really want to delete these objects?",
            "clusterform will delete the objects listed above. There is no undo.",
        )?
    {
        outln!("\nReap cancelled.");
        return Ok(1);
    }
    let (outcomes, retries) = reap::delete_tagged(
        provider,
        &objects,
        a.parallelism as usize,
        RetryPolicy::default(),
        // Addresses may repeat across clusters: the finish line names the id.
        progress::observer(std::collections::HashMap::new()),
    )
    .await;
    let failed: Vec<_> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    for f in &failed {
        outln!(
            "{} {} (id {}): {}",
            red("Error:"),
            f.address,
            f.id,
            f.error.as_deref().unwrap_or_default()
        );
    }
    let deleted = outcomes.len() - failed.len();
    let retries = if retries > 0 {
        format!(" ({retries} retries)")
    } else {
        String::new()
    };
    if failed.is_empty() {
        outln!(
            "\n{} {deleted} object(s) of {} cluster(s) deleted{retries}.",
            bold(&green("Reap complete!")),
            doomed.len()
        );
        Ok(0)
    } else {
        outln!(
            "\n{} {deleted} object(s) deleted, {} not{retries}; run reap again once the cause is fixed.",
            bold(&red("Reap failed.")),
            failed.len()
        );
        Ok(1)
    }
}

/// The provider `name`, with the settings of the first file that has a
/// `[provider.NAME]` table, else its defaults.
fn build(name: &str, files: &[PathBuf]) -> Result<Arc<dyn Provider>> {
    let mut config: (ProviderConfig, PathBuf) = (ProviderConfig::new(), PathBuf::from("."));
    for f in files {
        let model = context::load_model(f)?;
        if let Some(block) = model.providers.get(name) {
            let base = model
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            config = (block.config.clone().into_iter().collect(), base);
            break;
        }
    }
    let configs = BTreeMap::from([(name.to_string(), config.0)]);
    let providers: Providers = context::build_for(&configs, &config.1)
        .map_err(|(n, msg)| {
            errors::hint(
                format!("provider `{n}`: {msg}"),
                format!("fix the `[provider.{n}]` table of the cluster files given (see docs/CONFIG.md) or its environment"),
            )
        })?;
    providers.get(name).cloned().map_err(errors::engine)
}

/// The clusters found, one line each, with what happens to them.
fn table(
    provider: &str,
    clusters: &[TaggedCluster],
    doomed: &[(Why, &TaggedCluster, Vec<Object>)],
    now: SystemTime,
) -> String {
    let mut out = String::new();
    if clusters.is_empty() {
        let _ = writeln!(
            out,
            "No clusters with clusterform tags at provider `{provider}`."
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{}\n",
        bold(&format!(
            "Clusters with clusterform tags at provider `{provider}`:"
        ))
    );
    let rows: Vec<[String; 6]> = clusters
        .iter()
        .map(|c| {
            let age = c
                .age(now)
                .map(|d| short(d.as_secs()))
                .unwrap_or_else(|| "?".into());
            let expires = match (&c.expires_at, c.expired(now)) {
                (None, _) => "never".to_string(),
                (Some(t), true) => format!("{t} (passed)"),
                (Some(t), false) => t.clone(),
            };
            let action = match doomed.iter().find(|d| d.1.name == c.name) {
                Some((Why::Expired, _, _)) => red("reap: expired"),
                Some((Why::Orphan, _, o)) => red(&format!("reap: {} orphan(s)", o.len())),
                None if c.expires_at.is_none() => "keep (no expiry)".to_string(),
                None => green("keep"),
            };
            [
                c.name.clone(),
                c.objects.len().to_string(),
                c.created_by.clone().unwrap_or_else(|| "?".into()),
                age,
                expires,
                action,
            ]
        })
        .collect();
    let head = ["CLUSTER", "OBJECTS", "CREATED BY", "AGE", "EXPIRES", ""];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate().take(5) {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
        format!(
            "  {:<a$}  {:>b$}  {:<c$}  {:>d$}  {:<e$}  {}\n",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4]
        )
    };
    out.push_str(&line(head));
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    out.push('\n');
    out
}

/// `90` -> `1m`, `7200` -> `2h`, `200000` -> `2d`.
fn short(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
