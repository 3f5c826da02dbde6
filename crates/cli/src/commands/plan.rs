//! `plan`, and the steps plan, apply and destroy share: lock, recover the journal,
//! refresh, diff.

use std::path::Path;

use clusterform_core::Plan;
use clusterform_engine::{Recovery, RetryPolicy};
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
    /// The state lock; released when dropped.
    pub _guard: Box<dyn LockGuard>,
    /// The state the plan was made against.
    pub snapshot: Snapshot,
    /// The plan.
    pub plan: Plan,
    /// Unfinished operations of an earlier run, now resolved.
    pub recovered: Vec<Recovery>,
}

/// Lock, resolve open journal entries, refresh and plan.
pub async fn prepare(
    ctx: &Context,
    destroy: bool,
    run: &RunArgs,
    operation: &str,
) -> Result<Prepared> {
    let started = std::time::Instant::now();
    let guard = ctx
        .store
        .lock(operation, run.lock_timeout)
        .map_err(errors::state)?;
    if let Some(note) = guard.note() {
        eprintln!("note: {note}");
    }
    let mut snapshot = ctx.store.load().map_err(errors::state)?;
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
    let refreshed = clusterform_engine::refresh(
        &ctx.providers,
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
    let plan = if destroy {
        clusterform_engine::plan_destroy(
            &ctx.cluster.name,
            &refreshed,
            &ctx.providers,
            snapshot.lineage.clone(),
            snapshot.serial,
        )
    } else {
        clusterform_engine::plan(
            &ctx.cluster.name,
            &ctx.model.resources,
            &ctx.model.graph,
            &refreshed,
            &ctx.providers,
            snapshot.lineage.clone(),
            snapshot.serial,
        )
        .map_err(errors::engine)?
    };
    tracing::info!("planned ({:.3}s)", started.elapsed().as_secs_f64());
    Ok(Prepared {
        _guard: guard,
        snapshot,
        plan,
        recovered,
    })
}

/// `clusterform plan`.
pub async fn plan(a: PlanArgs) -> Result<u8> {
    let ctx = context::load(&a.file)?;
    let p = prepare(&ctx, a.destroy, &a.run, "plan").await?;
    if a.json {
        let mut v = render::plan_json(&p.plan);
        v["recovered"] =
            serde_json::to_value(&p.recovered).map_err(|e| errors::plain(e.to_string()))?;
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| errors::plain(e.to_string()))?
        );
    } else {
        print!("{}", render::recoveries(&p.recovered));
        print!("{}", render::plan(&p.plan));
    }
    if let Some(out) = &a.out {
        save(&ctx, p.plan.clone(), out)?;
        if !a.json {
            println!(
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

fn save(ctx: &Context, plan: Plan, out: &Path) -> Result<()> {
    let base_dir = ctx
        .model
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    PlanFile::new(
        plan,
        ctx.model.path.clone(),
        base_dir,
        ctx.cluster.expires_after.map(|d| d.as_secs()),
        ctx.state_location.clone(),
        ctx.provider_configs.clone(),
    )
    .write(out)
}
