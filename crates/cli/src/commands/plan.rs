//! `plan`, and the steps plan, apply and destroy share: lock, recover the journal,
//! refresh, diff.

use std::path::Path;

use clusterform_core::{Address, Plan};
use clusterform_engine::day2::{self, Day2Settings, MemberSet};
use clusterform_engine::{Recovery, Refreshed, RetryPolicy};
use clusterform_state::{LockGuard, Snapshot};
use miette::Result;

use crate::args::{PlanArgs, RunArgs};
use crate::context::{self, Context};
use crate::planfile::PlanFile;
use crate::{errors, render};

/// How many refresh batches run at once.
const REFRESH_CONCURRENCY: usize = 16;

/// Everything a run holds after planning.
pub struct Prepared {
    /// The CA the plan's configs were issued from (TLS on).
    pub etcd_ca: Option<std::sync::Arc<clusterform_pki::Ca>>,
    /// The connection to the cluster's etcd, when the plan changes its members.
    pub etcd: Option<crate::etcd::EtcdAccess>,
    /// The state lock; released when dropped.
    pub _guard: Box<dyn LockGuard>,
    /// The state the plan was made against.
    pub snapshot: Snapshot,
    /// The plan.
    pub plan: Plan,
    /// Unfinished operations of an earlier run, now resolved.
    pub recovered: Vec<Recovery>,
    /// The state as the providers see it now.
    pub refreshed: Refreshed,
}

/// What a run plans.
#[derive(Clone, Debug, Default)]
pub struct Intent {
    /// Destroy (everything, or the targets and their dependents).
    pub destroy: bool,
    /// `--target` addresses: with `destroy`, them and what depends on them; else them
    /// and what they depend on.
    pub targets: Vec<Address>,
    /// `--replace` addresses: replaced whatever their attributes.
    pub replace: Vec<Address>,
    /// `--allow-data-loss`: plans that lose the etcd data are not refused.
    pub allow_data_loss: bool,
}

/// Parse `--target` values.
pub fn parse_targets(raw: &[String]) -> Result<Vec<Address>> {
    parse_addresses("--target", raw)
}

/// Parse the addresses given to `flag`.
pub fn parse_addresses(flag: &str, raw: &[String]) -> Result<Vec<Address>> {
    raw.iter()
        .map(|t| {
            t.parse::<Address>().map_err(|e| {
                errors::hint(
                    format!("`{flag} {t}` is not a resource address: {e}"),
                    "write it like `machine.workers[2]`, or `machine.workers` for every instance",
                )
            })
        })
        .collect()
}

/// The state's addresses `--replace` names (an address without an index names every
/// instance), each with the reason shown in the plan.
fn replace_requests(
    replace: &[Address],
    state: &std::collections::BTreeMap<Address, clusterform_core::ResourceState>,
) -> Result<std::collections::BTreeMap<Address, String>> {
    let mut out = std::collections::BTreeMap::new();
    for r in replace {
        let matching: Vec<&Address> = state.keys().filter(|a| r.names(a)).collect();
        if matching.is_empty() {
            return Err(errors::hint(
                format!("`--replace {r}` selects nothing in the state"),
                "replace what exists: see `clusterform state list`; a resource not made yet is simply created",
            ));
        }
        for a in matching {
            out.insert(a.clone(), "requested with --replace".to_string());
        }
    }
    Ok(out)
}

/// Refuse a plan that deletes or replaces protected machines unless allowed.
pub fn check_protected(plan: &Plan, allowed: bool) -> Result<()> {
    let protected = clusterform_engine::protected(plan);
    if protected.is_empty() || allowed {
        return Ok(());
    }
    let list: Vec<String> = protected.iter().map(|a| format!("`{a}`")).collect();
    Err(errors::hint(
        format!(
            "the plan deletes or replaces {} protected machine(s): {}",
            protected.len(),
            list.join(", ")
        ),
        "they have `protect = true`; to go ahead anyway, pass --allow-protected",
    ))
}

/// Stop before a plan creates an object whose address already has one at the provider,
/// tagged with this cluster, that the state does not record.
async fn refuse_duplicates(
    ctx: &Context,
    readers: &clusterform_engine::Readers,
    snapshot: &Snapshot,
    plan: &Plan,
) -> Result<()> {
    let found = clusterform_engine::duplicates(readers, snapshot, &ctx.cluster.name, plan)
        .await
        .map_err(errors::engine)?;
    if found.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = found
        .iter()
        .take(10)
        .map(|d| {
            format!(
                "  {} already exists at `{}` as {}",
                d.address, d.provider, d.id
            )
        })
        .collect();
    let more = if found.len() > 10 {
        format!("\n  ... and {} more", found.len() - 10)
    } else {
        String::new()
    };
    // The file as the user would type it here.
    let file = std::env::current_dir()
        .ok()
        .and_then(|cwd| ctx.model.path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| ctx.model.path.clone());
    let file = file.display();
    let (first, first_id, provider) = (&found[0].address, &found[0].id, &found[0].provider);
    Err(errors::hint(
        format!(
            "the plan would create {} object(s) that already exist, tagged with the cluster `{}` and their address, but that the state `{}` does not record:\n{}{more}",
            found.len(),
            ctx.cluster.name,
            ctx.store.describe(),
            list.join("\n")
        ),
        format!(
            "creating them again would make duplicates. If the state was lost or replaced by an older copy, run `clusterform state restore {file}` (it puts the backup back and adopts every tagged object); to take one object in, `clusterform import {file} {first} {first_id}`; if they are leftovers to delete, `clusterform reap --provider {provider} --orphans {file}`"
        ),
    ))
}

/// Lock, resolve open journal entries, refresh and plan.
/// How long before the etcd certificates expire `plan` warns.
const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The warning a plan gives when the cluster's etcd certificates (all issued for the
/// CA's validity) expire within 30 days of `now`, or have.
fn expiry_warning(ca_cert_pem: &str, now: std::time::SystemTime) -> Option<String> {
    let until = clusterform_pki::not_after(ca_cert_pem).ok()?;
    if !clusterform_pki::expires_within(ca_cert_pem, now, EXPIRY_WARNING).ok()? {
        return None;
    }
    let when = humantime::format_rfc3339_seconds(until);
    let what = if until <= now { "expired" } else { "expire" };
    Some(format!(
        "the cluster's etcd certificates {what} on {when} (its CA's validity); once they have, members and proxies refuse each other. Renewing them is not automated yet: see docs/DAY2.md, \"Certificates\""
    ))
}

pub async fn prepare(
    ctx: &Context,
    intent: &Intent,
    run: &RunArgs,
    operation: &str,
) -> Result<Prepared> {
    let started = std::time::Instant::now();
    let guard = ctx
        .store
        .lock(operation, run.lock_timeout)
        .map_err(errors::state)?;
    if let Some(warning) = ctx
        .model
        .etcd_ca
        .as_deref()
        .and_then(|ca| expiry_warning(ca.cert_pem(), std::time::SystemTime::now()))
    {
        errln!("warning: {warning}");
    }
    if let Some(note) = guard.note() {
        errln!("note: {note}");
    }
    if ctx.model.etcd_plain_http && !intent.destroy {
        errln!("{PLAIN_HTTP_WARNING}");
    }
    let mut snapshot = ctx.store.load().map_err(errors::state)?;
    // Another run kept the cluster's etcd CA while this one waited for the lock: the
    // configs are issued again from the CA the state keeps.
    let reloaded = if context::check_ca(ctx.model.etcd_ca.as_deref(), &snapshot).is_err() {
        let m = context::load_model(&ctx.model.path)?;
        context::check_ca(m.etcd_ca.as_deref(), &snapshot)?;
        Some(m)
    } else {
        None
    };
    let model = reloaded.as_ref().unwrap_or(&ctx.model);
    let mut recovered = Vec::new();
    if !snapshot.journal.is_empty() {
        recovered = clusterform_engine::recover(
            &ctx.providers,
            ctx.store.as_ref(),
            &snapshot,
            &ctx.cluster.name,
        )
        .await
        .map_err(errors::engine)?;
        snapshot = ctx.store.load().map_err(errors::state)?;
    }
    tracing::info!(
        "state loaded: {} resources, serial {} ({:.3}s)",
        snapshot.resources.len(),
        snapshot.serial,
        started.elapsed().as_secs_f64()
    );
    let readers = ctx.providers.readers();
    let refreshed = clusterform_engine::refresh(
        &readers,
        &snapshot.resources,
        REFRESH_CONCURRENCY,
        RetryPolicy::default(),
    )
    .await
    .map_err(errors::engine)?;
    tracing::info!(
        "refreshed {} objects in {} provider calls ({:.3}s)",
        refreshed.resources.len(),
        refreshed.calls,
        started.elapsed().as_secs_f64()
    );
    let mut replace = replace_requests(&intent.replace, &refreshed.resources)?;
    // A running cluster over metros changes its members with their addresses known.
    let held = if intent.destroy {
        None
    } else {
        clusterform_engine::hold_back_deferred(&model.resources, &snapshot.resources)
    };
    let (resources, graph) = match &held {
        Some(h) => {
            errln!(
                "note: {} wait for the addresses this apply reserves: {}; run `clusterform apply` again after it for them",
                h.waiting.len(),
                h.waiting
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (h.resources.as_slice(), &h.graph)
        }
        None => (model.resources.as_slice(), &model.graph),
    };
    let make_plan = |replace: &std::collections::BTreeMap<Address, String>| -> Result<Plan> {
        if intent.destroy {
            let all = clusterform_engine::plan_destroy(
                &ctx.cluster.name,
                &refreshed,
                &readers,
                snapshot.lineage.clone(),
                snapshot.serial,
            );
            if intent.targets.is_empty() {
                Ok(all)
            } else {
                clusterform_engine::restrict_to_targets(all, &intent.targets, &snapshot.resources)
                    .map_err(errors::engine)
            }
        } else {
            let all = clusterform_engine::plan_replacing(
                &ctx.cluster.name,
                resources,
                graph,
                &refreshed,
                &readers,
                snapshot.lineage.clone(),
                snapshot.serial,
                replace,
            )
            .map_err(errors::engine)?;
            if intent.targets.is_empty() {
                Ok(all)
            } else {
                clusterform_engine::restrict_to_dependencies(
                    all,
                    &intent.targets,
                    resources,
                    &refreshed.resources,
                )
                .map_err(errors::engine)
            }
        }
    };
    let mut plan = make_plan(&replace)?;
    if !intent.targets.is_empty() && !intent.destroy {
        errln!(
            "note: --target: this plan covers only {} and what it depends on; the file's other changes wait for a plan without --target",
            intent
                .targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    // Day 2: changes of etcd members are made one at a time through etcd.
    let desired: &[clusterform_core::Resource] = if intent.destroy { &[] } else { resources };
    let set = MemberSet::new(desired, &refreshed.resources);
    let mut access = None;
    if day2::involves_members(&plan, &set, &snapshot.journal) {
        let settings = Day2Settings {
            update: model.etcd.update,
            allow_data_loss: intent.allow_data_loss,
            endpoints: crate::etcd::endpoints(&model.etcd, &set),
            via: model.etcd.via.clone(),
        };
        let live = crate::etcd::live(&model.etcd, &set, &readers);
        let (membership, acc) = crate::etcd::membership(
            live,
            &settings.endpoints,
            settings.via.as_deref(),
            &set,
            model.etcd_ca.as_deref(),
        )
        .await;
        access = acc;
        if !intent.destroy {
            let forced = day2::forced_replacements(&plan, &set, &membership, &settings);
            if !forced.is_empty() {
                for (a, why) in forced {
                    replace.entry(a).or_insert(why);
                }
                plan = make_plan(&replace)?;
            }
        }
        let requested: std::collections::BTreeSet<Address> = replace.keys().cloned().collect();
        day2::plan_members(
            &mut plan,
            &set,
            &membership,
            &snapshot.journal,
            &settings,
            &requested,
        )
        .map_err(errors::engine)?;
    }
    refuse_duplicates(ctx, &readers, &snapshot, &plan).await?;
    tracing::info!("planned ({:.3}s)", started.elapsed().as_secs_f64());
    Ok(Prepared {
        etcd_ca: model.etcd_ca.clone(),
        etcd: access,
        _guard: guard,
        snapshot,
        plan,
        recovered,
        refreshed,
    })
}

/// What plans and applies of a cluster whose etcd runs without TLS say.
pub const PLAIN_HTTP_WARNING: &str = "warning: etcd runs over plain HTTP without authentication (`[central] etcd_tls = false`): anyone who reaches the cluster network can read and write every key; remove `etcd_tls = false` for TLS with client certificates";

/// `clusterform plan`.
pub async fn plan(a: PlanArgs) -> Result<u8> {
    let ctx = context::load(&a.file)?;
    if let Some(out) = &a.out {
        PlanFile::check_out(out, &ctx.model.path)?;
    }
    let intent = Intent {
        destroy: a.destroy,
        targets: parse_targets(&a.target)?,
        replace: parse_addresses("--replace", &a.replace)?,
        allow_data_loss: a.allow_data_loss,
    };
    let p = prepare(&ctx, &intent, &a.run, "plan").await?;
    if a.refresh_only {
        if a.out.is_some() {
            return Err(errors::hint(
                "a refresh-only plan cannot be saved to a plan file",
                "run `clusterform apply --refresh-only` to review and accept the drift",
            ));
        }
        let drift = refresh_only_plan(&p);
        if a.json {
            outln!(
                "{}",
                crate::output::json(
                    &serde_json::to_string_pretty(&render::plan_json(&drift))
                        .map_err(errors::bug)?
                )
            );
        } else {
            out!("{}", render::recoveries(&p.recovered));
            out!("{}", render::refresh_only(&drift));
        }
        return Ok(if a.detailed_exitcode && !drift.drift.is_empty() {
            2
        } else {
            0
        });
    }
    if !a.json && !clusterform_engine::protected(&p.plan).is_empty() {
        outln!(
            "Note: this plan deletes or replaces machines with `protect = true`; apply and \
             destroy refuse it without --allow-protected.\n"
        );
    }
    if a.json {
        let mut v = render::plan_json(&p.plan);
        v["recovered"] = serde_json::to_value(&p.recovered).map_err(errors::bug)?;
        outln!(
            "{}",
            crate::output::json(&serde_json::to_string_pretty(&v).map_err(errors::bug)?)
        );
    } else {
        out!("{}", render::recoveries(&p.recovered));
        out!("{}", render::plan(&p.plan));
    }
    if let Some(out) = &a.out {
        save(&ctx, p.plan.clone(), p.etcd_ca.as_deref(), out)?;
        if !a.json {
            outln!(
                "\nSaved the plan to {}. Apply exactly these actions with:\n    clusterform apply {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(if a.detailed_exitcode && !p.plan.is_empty() {
        2
    } else {
        0
    })
}

fn save(
    ctx: &Context,
    plan: Plan,
    etcd_ca: Option<&clusterform_pki::Ca>,
    out: &Path,
) -> Result<()> {
    let base_dir = ctx
        .model
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut pf = PlanFile::new(
        plan,
        ctx.model.path.clone(),
        base_dir,
        ctx.cluster.expires_after.map(|d| d.as_secs()),
        ctx.state_location.clone(),
        ctx.provider_configs.clone(),
    );
    pf.etcd_ca = etcd_ca.map(|ca| crate::planfile::CaPems {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem().expose().to_string(),
    });
    pf.write(out)
}

/// The plan of `apply --refresh-only`: no changes, only the drift refresh found.
pub fn refresh_only_plan(p: &Prepared) -> Plan {
    Plan {
        changes: Vec::new(),
        forget: Vec::new(),
        unchanged: 0,
        destroy: false,
        drift: p.refreshed.drift.clone(),
        etcd: None,
        ..p.plan.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_warn_from_thirty_days_before_the_etcd_certificates_expire() {
        let day = std::time::Duration::from_secs(24 * 3600);
        let ca = clusterform_pki::Ca::generate("c", 40 * day).expect("CA");
        let now = std::time::SystemTime::now();
        assert_eq!(expiry_warning(ca.cert_pem(), now), None);
        let w = expiry_warning(ca.cert_pem(), now + 15 * day).expect("warns");
        assert!(w.contains("certificates expire on"), "{w}");
        let w = expiry_warning(ca.cert_pem(), now + 50 * day).expect("warns");
        assert!(w.contains("certificates expired on"), "{w}");
    }
}
