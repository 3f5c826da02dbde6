//! `apply` (from the cluster file or a saved plan) and `destroy`: plan, confirm, walk,
//! summarize; Ctrl-C once stops starting operations, twice aborts.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clusterform_core::Plan;
use clusterform_engine::{ApplyOptions, ClusterInfo, Providers};
use clusterform_state::{Snapshot, StateStore};
use miette::Result;

use crate::args::{ApplyArgs, DestroyArgs, RunArgs};
use crate::commands::plan::{
    Intent, check_protected, parse_addresses, parse_targets, prepare, refresh_only_plan,
};
use crate::context;
use crate::planfile::PlanFile;
use crate::{errors, progress, render};

/// Exit code after an interrupt.
const INTERRUPTED: u8 = 130;

/// `clusterform apply`.
pub async fn apply(a: ApplyArgs) -> Result<u8> {
    if let Some(pf) = PlanFile::read(&a.file)? {
        if a.refresh_only {
            return Err(errors::hint(
                format!(
                    "`{}` is a saved plan; --refresh-only takes a cluster file",
                    a.file.display()
                ),
                "run `clusterform apply --refresh-only CLUSTER_FILE`",
            ));
        }
        if a.destroy || !a.target.is_empty() {
            return Err(errors::hint(
                format!(
                    "`{}` is a saved plan: it is applied exactly as it was made",
                    a.file.display()
                ),
                "give --destroy and --target to `clusterform plan` when making the plan",
            ));
        }
        return apply_saved(pf, &a.file, &a.run, a.allow_protected, a.json).await;
    }
    if a.refresh_only {
        return accept_drift(&a.file, a.auto_approve, &a.run).await;
    }
    if a.json && !a.auto_approve {
        return Err(errors::hint(
            "--json needs --auto-approve: a stream of events cannot ask for `yes`",
            "add --auto-approve (review the plan first with `clusterform plan --out FILE`, then `apply --json FILE`)",
        ));
    }
    let intent = Intent {
        destroy: a.destroy,
        targets: parse_targets(&a.target)?,
        replace: parse_addresses("--replace", &a.replace)?,
        allow_data_loss: a.allow_data_loss,
    };
    plan_confirm_run(
        &a.file,
        &intent,
        a.auto_approve,
        a.allow_protected,
        &a.run,
        a.json,
    )
    .await
}

/// `clusterform destroy`.
pub async fn destroy(a: DestroyArgs) -> Result<u8> {
    let intent = Intent {
        destroy: true,
        targets: parse_targets(&a.target)?,
        ..Intent::default()
    };
    plan_confirm_run(
        &a.file,
        &intent,
        a.auto_approve,
        a.allow_protected,
        &a.run,
        a.json,
    )
    .await
}

/// `apply --refresh-only`: show what changed outside clusterform, ask, and write it into
/// the state. No provider mutation.
async fn accept_drift(file: &Path, auto_approve: bool, run_args: &RunArgs) -> Result<u8> {
    let ctx = context::load(file)?;
    let p = prepare(&ctx, &Intent::default(), run_args, "apply --refresh-only").await?;
    let plan = refresh_only_plan(&p);
    out!("{}", render::recoveries(&p.recovered));
    out!("{}", render::refresh_only(&plan));
    if plan.drift.is_empty() {
        return Ok(0);
    }
    if !auto_approve
        && !confirm(
            "Would you like to update the state to reflect these detected changes?",
            "clusterform will write these changes to the state without changing any object.",
        )?
    {
        outln!("\nApply cancelled.");
        return Ok(1);
    }
    let serial = ctx
        .store
        .commit(&p.refreshed.accept())
        .map_err(errors::state)?;
    outln!(
        "\n{} The state now matches the objects (serial {serial}).",
        crate::style::bold("Apply complete!")
    );
    Ok(0)
}

/// Plan (or plan the destruction), show it, ask for "yes" unless auto-approved, apply.
async fn plan_confirm_run(
    file: &Path,
    intent: &Intent,
    auto_approve: bool,
    allow_protected: bool,
    run_args: &RunArgs,
    json: bool,
) -> Result<u8> {
    let ctx = context::load(file)?;
    let destroy = intent.destroy;
    let operation = if destroy { "destroy" } else { "apply" };
    let p = prepare(&ctx, intent, run_args, operation).await?;
    if json {
        crate::events::planned(&p.plan);
    } else {
        out!("{}", render::recoveries(&p.recovered));
        out!("{}", render::plan(&p.plan));
    }
    if p.plan.is_empty() {
        if json {
            crate::events::nothing(destroy, p.snapshot.serial);
        }
        return Ok(0);
    }
    check_protected(&p.plan, allow_protected)?;
    let (question, detail, cancelled) = if destroy && !intent.targets.is_empty() {
        (
            "Do you really want to destroy these resources?",
            "clusterform will destroy the objects listed above. There is no undo.",
            "Destroy cancelled.",
        )
    } else if destroy {
        (
            "Do you really want to destroy all resources?",
            "clusterform will destroy all the objects of this cluster. There is no undo.",
            "Destroy cancelled.",
        )
    } else {
        (
            "Do you want to perform these actions?",
            "clusterform will perform the actions described above.",
            "Apply cancelled.",
        )
    };
    if !auto_approve && !confirm(question, detail)? {
        outln!("\n{cancelled}");
        return Ok(1);
    }
    if !destroy {
        context::keep_ca(&ctx.store, p.etcd_ca.as_deref(), &p.snapshot)?;
    }
    let render = deferred_render(&p.plan, &ctx.model.path, &ctx.providers, p.etcd_ca.clone());
    let code = run(
        &p.plan,
        &p.snapshot,
        &ctx.providers,
        ctx.store.clone(),
        &ctx.cluster,
        run_args,
        destroy,
        p.etcd.as_ref(),
        render,
        json,
    )
    .await?;
    if code == 0 && !destroy && !json {
        let snap = ctx.store.load().map_err(errors::state)?;
        super::output::after_apply(&ctx.model, &snap);
    }
    Ok(code)
}

/// What renders the plan's deferred attributes (with `ca`, the etcd CA the plan's configs
/// were issued from), when it has any.
fn deferred_render(
    plan: &Plan,
    file: &Path,
    providers: &Providers,
    ca: Option<Arc<clusterform_pki::Ca>>,
) -> Option<clusterform_engine::Render> {
    plan.changes
        .iter()
        .any(|c| !c.deferred.is_empty())
        .then(|| context::deferred_render(file, providers, ca))
}

async fn apply_saved(
    pf: PlanFile,
    file: &Path,
    run_args: &RunArgs,
    allow_protected: bool,
    json: bool,
) -> Result<u8> {
    // A plan made against a state (it has a lineage) whose folder is gone: refuse before
    // taking the lock, which would create an empty state folder there.
    if let context::StateLocation::Local {
        path: state_dir, ..
    } = &pf.state
        && pf.plan.state_lineage.is_some()
        && !state_dir.is_dir()
    {
        return Err(errors::hint(
            format!(
                "the saved plan `{}` was made against the state in `{}`, which does not exist",
                file.display(),
                state_dir.display()
            ),
            format!(
                "restore the state folder, or make a new plan: clusterform plan {} --out FILE",
                pf.cluster_file.display()
            ),
        ));
    }
    let providers =
        context::build_for(&pf.providers, &pf.base_dir).map_err(|(name, msg)| {
            errors::hint(
                format!("provider `{name}` in the plan file: {msg}"),
                "fix the provider's settings (or its environment) and make a new plan: clusterform plan CLUSTER_FILE --out FILE",
            )
        })?;
    let store = context::open_location(
        &pf.state,
        context::identity(&pf.plan.cluster, &pf.cluster_file),
    )?;
    let guard = store
        .lock("apply", run_args.lock_timeout)
        .map_err(errors::state)?;
    if let Some(note) = guard.note() {
        errln!("note: {note}");
    }
    let snapshot = store.load().map_err(errors::state)?;
    let plan = &pf.plan;
    // A plan made against an empty state has no lineage yet; the serial tells.
    let other_lineage = plan.state_lineage.is_some() && snapshot.lineage != plan.state_lineage;
    // Open entries of membership calls that the plan finishes are expected.
    let resolves: &[String] = plan.etcd.as_ref().map_or(&[], |e| &e.resolves);
    let unresolved = snapshot
        .journal
        .iter()
        .any(|e| !resolves.contains(&e.op_id));
    if other_lineage || snapshot.serial != plan.state_serial || unresolved {
        let why = if other_lineage {
            "it belongs to a different state (lineage differs)".to_string()
        } else if unresolved {
            "the state has unfinished operations to resolve first".to_string()
        } else {
            format!(
                "the state moved from serial {} to {}",
                plan.state_serial, snapshot.serial
            )
        };
        return Err(errors::hint(
            format!("the saved plan is stale (`{}`): {why}", file.display()),
            format!(
                "make a new plan: clusterform plan {} --out FILE",
                pf.cluster_file.display()
            ),
        ));
    }
    if json {
        crate::events::planned(plan);
    } else {
        out!("{}", render::plan(plan));
    }
    if plan.is_empty() {
        if json {
            crate::events::nothing(plan.destroy, snapshot.serial);
        }
        return Ok(0);
    }
    check_protected(plan, allow_protected)?;
    if let Some(pems) = &pf.etcd_ca {
        let ca = clusterform_pki::Ca::load(&pems.cert_pem, &pems.key_pem.clone().into()).map_err(
            |e| {
                errors::hint(
                    format!("the etcd CA in the plan file `{}`: {e}", file.display()),
                    "make a new plan: clusterform plan CLUSTER_FILE --out FILE",
                )
            },
        )?;
        context::keep_ca(&store, Some(&ca), &snapshot)?;
    }
    let cluster = ClusterInfo {
        name: plan.cluster.clone(),
        expires_after: pf.expires_after_secs.map(std::time::Duration::from_secs),
        operator: Some(clusterform_state::operator()),
    };
    // The plan's membership steps go to the etcd it names.
    let access = match &plan.etcd {
        Some(e) if e.live && !e.bootstrap => {
            let set = saved_plan_members(plan, &snapshot);
            let ca = saved_plan_ca(&pf, &snapshot, file)?;
            Some(
                crate::etcd::connect(e.endpoints.clone(), e.via.as_deref(), &set, ca.as_ref())
                    .await?,
            )
        }
        _ => None,
    };
    let render = if plan.changes.iter().any(|c| !c.deferred.is_empty()) {
        let ca = saved_plan_ca(&pf, &snapshot, file)?.map(Arc::new);
        deferred_render(plan, &pf.cluster_file, &providers, ca)
    } else {
        None
    };
    let code = run(
        plan,
        &snapshot,
        &providers,
        store.clone(),
        &cluster,
        run_args,
        plan.destroy,
        access.as_ref(),
        render,
        json,
    )
    .await;
    drop(guard);
    if matches!(code, Ok(0)) && !plan.destroy && !json {
        super::output::after_apply_of(&pf.cluster_file, store.as_ref());
    }
    code
}

/// The etcd member machines of a saved plan: those of the state, and those it makes.
fn saved_plan_members(plan: &Plan, snapshot: &Snapshot) -> clusterform_engine::day2::MemberSet {
    let desired: Vec<clusterform_core::Resource> = plan
        .changes
        .iter()
        .filter_map(|c| {
            c.after.as_ref().map(|attrs| clusterform_core::Resource {
                address: c.address.clone(),
                provider: c.provider.clone(),
                attrs: attrs.clone(),
                refs: Default::default(),
                depends_on: Vec::new(),
                deferred: Vec::new(),
            })
        })
        .collect();
    clusterform_engine::day2::MemberSet::new(&desired, &snapshot.resources)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    plan: &Plan,
    snapshot: &Snapshot,
    providers: &Providers,
    store: Arc<dyn StateStore>,
    cluster: &ClusterInfo,
    run_args: &RunArgs,
    destroy: bool,
    etcd: Option<&crate::etcd::EtcdAccess>,
    render: Option<clusterform_engine::Render>,
    json: bool,
) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    let interrupts = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while tokio::signal::ctrl_c().await.is_ok() {
                count += 1;
                if count == 1 {
                    stop.store(true, Ordering::SeqCst);
                    errln!(
                        "\nInterrupt received: finishing the operations in flight and starting no new ones. Press Ctrl-C again to abort at once."
                    );
                } else {
                    errln!(
                        "\nAborted. The state journal records what was in flight; the next run resolves it."
                    );
                    std::process::exit(i32::from(INTERRUPTED));
                }
            }
        })
    };
    if !json {
        outln!();
    }
    let options = ApplyOptions {
        parallelism: run_args.parallelism as usize,
        stop: stop.clone(),
        etcd: etcd.map(|a| a.client.clone() as Arc<dyn clusterform_etcd::EtcdAdmin>),
        render,
        ..ApplyOptions::default()
    };
    let report = clusterform_engine::apply(
        plan,
        &snapshot.resources,
        providers,
        store,
        cluster,
        &options,
        if json {
            crate::events::observer()
        } else {
            progress::observer(
                plan.changes
                    .iter()
                    .filter_map(|c| Some((c.address.clone(), c.id.clone()?)))
                    .collect(),
            )
        },
    )
    .await
    .map_err(errors::engine);
    interrupts.abort();
    let report = report?;
    tracing::info!(
        "walk finished in {:.3}s, critical path {} operations, {} state serial",
        report.elapsed.as_secs_f64(),
        report.critical_path,
        report.serial
    );
    if json {
        crate::events::finish(&report, destroy, stop.load(Ordering::SeqCst));
    } else {
        out!("\n{}", render::apply_summary(&report, destroy));
        if !destroy {
            failed_boot_consoles(&report, plan, providers, &cluster.name).await;
        }
    }
    if let Some(e) = &report.state_error {
        errln!(
            "Error: the state could not be written: {e}\n  The provider's work that is not \
             recorded is kept in the state journal; once the state can be written again \
             (free space), run clusterform again: it adopts those objects."
        );
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(INTERRUPTED);
    }
    Ok(if report.success() { 0 } else { 1 })
}

/// Ask for "yes" on stdin.
pub(crate) fn confirm(question: &str, detail: &str) -> Result<bool> {
    let mut out = std::io::stdout();
    let _ = write!(
        out,
        "\n{}\n  {detail}\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ",
        crate::style::bold(question)
    );
    let _ = out.flush();
    let mut line = String::new();
    let stdin = std::io::stdin();
    if stdin.lock().read_line(&mut line).is_err() || line.is_empty() {
        if !stdin.is_terminal() {
            return Err(errors::hint(
                "no answer to the confirmation (standard input is closed)",
                "pass --auto-approve to run without asking",
            ));
        }
        return Ok(false);
    }
    Ok(line.trim() == "yes")
}

/// The etcd CA a saved plan's membership calls use: the plan's (a first apply), else
/// the state's; None when the cluster's etcd runs without TLS.
fn saved_plan_ca(
    pf: &PlanFile,
    snapshot: &clusterform_state::Snapshot,
    file: &Path,
) -> Result<Option<clusterform_pki::Ca>> {
    let (cert, key) = match &pf.etcd_ca {
        Some(p) => (p.cert_pem.clone(), p.key_pem.clone()),
        None => match (
            snapshot.secrets.get(context::CA_CERT),
            snapshot.secrets.get(context::CA_KEY),
        ) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => return Ok(None),
        },
    };
    clusterform_pki::Ca::load(&cert, &key.into())
        .map(Some)
        .map_err(|e| {
            errors::hint(
                format!("the etcd CA for `{}`: {e}", file.display()),
                "make a new plan: clusterform plan CLUSTER_FILE --out FILE",
            )
        })
}

/// Lines of a console shown after a machine failed to come up.
const CONSOLE_TAIL: usize = 25;

/// For each machine whose create (or replacement) failed but which its provider holds
/// (it was made and did not come up), the end of its console output: why it failed to
/// boot is there.
async fn failed_boot_consoles(
    report: &clusterform_engine::ApplyReport,
    plan: &Plan,
    providers: &Providers,
    cluster: &str,
) {
    use clusterform_core::Action;
    let failed: Vec<&clusterform_core::Change> = plan
        .changes
        .iter()
        .filter(|c| {
            c.address.kind == "machine" && matches!(c.action, Action::Create | Action::Replace)
        })
        .filter(|c| {
            report.outcomes.iter().any(|(a, _, o)| {
                *a == c.address && matches!(o, clusterform_engine::Outcome::Failed(_))
            })
        })
        .collect();
    let mut listed: std::collections::HashMap<&str, Vec<clusterform_provider::Object>> =
        std::collections::HashMap::new();
    for c in failed {
        let Ok(p) = providers.get(&c.provider) else {
            continue;
        };
        if !listed.contains_key(c.provider.as_str()) {
            let objects = p.reader().list_cluster(cluster).await.unwrap_or_default();
            listed.insert(c.provider.as_str(), objects);
        }
        let Some(o) = listed[c.provider.as_str()].iter().find(|o| {
            o.kind == "machine" && o.owner.as_ref().is_some_and(|w| w.address == c.address)
        }) else {
            continue;
        };
        let Ok(Some(text)) = p.reader().console("machine", &o.id, &o.attrs).await else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(CONSOLE_TAIL)..];
        outln!(
            "\nConsole output of {} ({}), the last {} lines (`clusterform console` shows more):",
            c.address,
            o.id,
            tail.len()
        );
        for l in tail {
            outln!("  {}", crate::output::clean(l));
        }
    }
}
