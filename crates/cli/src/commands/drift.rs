//! `clusterform drift`: one read-only check (exit 0 in sync, 2 drift, 1 error), or a
//! long-lived checker (`--every`) with jittered intervals, one line per check, webhook
//! posts on drift and on recovery, and a clean stop on SIGTERM.

use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clusterform_engine::drift::{self, DriftReport};
use miette::Result;
use rand::Rng;
use serde_json::{Value, json};

use crate::args::DriftArgs;
use crate::context::{self, ReadContext, StateLocation};
use crate::style::{bold, dim, green, red, yellow};
use crate::{errors, etcd, render};

/// The version of the JSON report (docs/DRIFT.md). Bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// How many objects' batches are read at once.
const CONCURRENCY: usize = 16;
/// Exit code when drift is found.
const DRIFT: u8 = 2;
/// How much an `--every` interval varies, each way.
const JITTER: f64 = 0.1;

/// `clusterform drift`.
pub async fn drift(a: DriftArgs) -> Result<u8> {
    let ctx = context::load_readonly(&a.file)?;
    match a.every {
        None => once(&ctx, &a).await,
        Some(every) => forever(&ctx, &a, every).await,
    }
}

/// One finished check.
struct Check {
    report: DriftReport,
    at: SystemTime,
    took: Duration,
}

impl Check {
    fn json(&self, event: Option<&str>) -> Value {
        let r = &self.report;
        let mut v = json!({
            "format_version": FORMAT_VERSION,
            "cluster": r.cluster,
            "checked_at": humantime::format_rfc3339_seconds(self.at).to_string(),
            "duration_ms": u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX),
            "status": if r.drifted() { "drift" } else { "in_sync" },
            "state_serial": r.state_serial,
            "resources": r.resources,
            "provider_calls": r.provider_calls,
            "summary": {
                "missing": r.missing.len(),
                "changed": r.changed.len(),
                "unmanaged": r.unmanaged.len(),
                "pending_changes": r.pending_changes.len(),
                "unfinished_operations": r.unfinished_operations.len(),
            },
            "missing": r.missing,
            "changed": r.changed,
            "unmanaged": r.unmanaged,
            "pending_changes": r.pending_changes,
            "unfinished_operations": r.unfinished_operations,
        });
        if let Some(e) = &r.etcd {
            v["etcd"] = json!(e);
        }
        if let Some(e) = event {
            v["event"] = json!(e);
        }
        v
    }

    /// The one-line result: `in sync (8 resources, 0.12s)` / `DRIFT: 1 missing, ...`.
    fn line(&self) -> String {
        let r = &self.report;
        let pending = if r.pending_changes.is_empty() {
            String::new()
        } else {
            format!("; {} pending change(s)", r.pending_changes.len())
        };
        let took = format!(
            "({} resources, {:.2}s{pending})",
            r.resources,
            self.took.as_secs_f64()
        );
        if r.drifted() {
            format!(
                "{} {} missing, {} changed, {} unmanaged {took}",
                red("DRIFT:"),
                r.missing.len(),
                r.changed.len(),
                r.unmanaged.len()
            )
        } else {
            format!("{} {took}", green("in sync"))
        }
    }
}

async fn check(ctx: &ReadContext) -> Result<Check> {
    let started = Instant::now();
    let at = SystemTime::now();
    let snapshot = ctx.store.load().map_err(errors::state)?;
    let mut report = drift::check(
        &ctx.readers,
        &snapshot,
        &ctx.model.resources,
        &ctx.model.graph,
        &ctx.model.cluster.name,
        CONCURRENCY,
    )
    .await
    .map_err(errors::engine)?;
    report.etcd = etcd_check(ctx, &snapshot).await;
    Ok(Check {
        report,
        at,
        took: started.elapsed(),
    })
}

/// Compare the etcd member list with the central machines in the state, read-only
/// (through an `EtcdReader`); None when the state has no member or no etcd runs.
async fn etcd_check(
    ctx: &ReadContext,
    snapshot: &clusterform_state::Snapshot,
) -> Option<drift::EtcdCheck> {
    use clusterform_engine::day2::{MemberSet, member_drift};
    let set = MemberSet::new(&[], &snapshot.resources);
    if set.current.is_empty() || !etcd::live(&ctx.model.etcd, &set, &ctx.readers) {
        return None;
    }
    let endpoints = etcd::endpoints(&ctx.model.etcd, &set);
    let failed = |error: String| drift::EtcdCheck {
        checked: false,
        error: Some(error),
        drift: Default::default(),
    };
    let access = match etcd::connect(
        endpoints,
        ctx.model.etcd.via.as_deref(),
        &set,
        ctx.model.etcd_ca.as_deref(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return Some(failed(format!("{e}"))),
    };
    let reader: &dyn clusterform_etcd::EtcdReader = access.client.as_ref();
    Some(match reader.members().await {
        Ok(members) => drift::EtcdCheck {
            checked: true,
            error: None,
            drift: member_drift(&set.current, &members),
        },
        Err(e) => failed(e.to_string()),
    })
}

/// A check that is the only one on this state: another `drift` process checking the same
/// state makes this one wait its turn (`None` when `give_up` and busy).
struct Turn(Option<File>);

impl Turn {
    /// Take the drift-check lock of the state folder (a separate file: the state lock
    /// that `apply` takes is never touched). No folder yet: nothing to share it with.
    fn take(location: &StateLocation, wait: bool) -> Result<Option<Turn>> {
        // An etcd state: the check reads one consistent revision; nothing to share.
        let StateLocation::Local { path, .. } = location else {
            return Ok(Some(Turn(None)));
        };
        if !path.is_dir() {
            return Ok(Some(Turn(None)));
        }
        let lock_path: PathBuf = path.join("drift.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                errors::hint(
                    format!(
                        "cannot open the drift-check lock `{}`: {e}",
                        lock_path.display()
                    ),
                    "drift needs to write this file in the state folder: make the folder writable for this user",
                )
            })?;
        let got = if wait {
            fs4::fs_std::FileExt::lock_exclusive(&file).map(|()| true)
        } else {
            fs4::fs_std::FileExt::try_lock_exclusive(&file)
        };
        match got {
            Ok(true) => Ok(Some(Turn(Some(file)))),
            Ok(false) => Ok(None),
            Err(e) => Err(errors::hint(
                format!("cannot lock `{}`: {e}", lock_path.display()),
                "the state folder's file system refuses file locks (some network file systems do): keep the state on a local disk",
            )),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = fs4::fs_std::FileExt::unlock(f);
        }
    }
}

async fn once(ctx: &ReadContext, a: &DriftArgs) -> Result<u8> {
    let location = ctx.state_location.clone();
    let _turn = tokio::task::spawn_blocking(move || Turn::take(&location, true))
        .await
        .map_err(errors::bug)??;
    let c = check(ctx).await?;
    let drifted = c.report.drifted();
    if a.json {
        if drifted || !a.quiet {
            outln!("{}", crate::output::json(&pretty(&c.json(None))?));
        }
    } else if drifted || !a.quiet {
        out!("{}", text(&c));
    }
    if drifted
        && let Some(url) = &a.webhook
        && let Err(e) = post(url, &c.json(Some("drift"))).await
    {
        errln!("warning: the webhook was not told: {e}");
    }
    Ok(if drifted { DRIFT } else { 0 })
}

/// Resolves on SIGTERM or Ctrl-C.
struct Stop {
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Stop> {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| {
                errors::hint(
                    format!("cannot watch for SIGTERM: {e}"),
                    "run `drift` without --every and schedule it with cron or a systemd timer",
                )
            })?;
        Ok(Stop { term })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "interrupt",
        }
    }
}

async fn forever(ctx: &ReadContext, a: &DriftArgs, every: Duration) -> Result<u8> {
    let mut stop = Stop::new()?;
    let mut last_drift: Option<Value> = None;
    let mut n: u64 = 0;
    if !a.quiet && !a.json {
        outln!(
            "Checking cluster `{}` for drift every {} (±{:.0}%); SIGTERM or Ctrl-C stops.",
            ctx.model.cluster.name,
            humantime::format_duration(every),
            JITTER * 100.0
        );
    }
    loop {
        n += 1;
        let location = ctx.state_location.clone();
        let outcome = tokio::select! {
            why = stop.wait() => return Ok(stopped(a, n - 1, why)),
            r = async {
                let turn = tokio::task::spawn_blocking(move || Turn::take(&location, false))
                    .await
                    .map_err(errors::bug)??;
                match turn {
                    None => Ok(None),
                    Some(_turn) => check(ctx).await.map(Some),
                }
            } => r,
        };
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        match outcome {
            Ok(None) => {
                if !a.quiet {
                    outln!(
                        "{now} check {n}: skipped: another drift check of this state is running"
                    );
                }
            }
            Err(e) => {
                if a.json {
                    let line = json!({"format_version": FORMAT_VERSION, "checked_at": now.to_string(),
                                      "status": "error", "error": format!("{e}")});
                    outln!("{}", crate::output::json(&line.to_string()));
                } else {
                    outln!("{now} check {n}: {} {e}", red("error:"));
                }
            }
            Ok(Some(c)) => {
                let drifted = c.report.drifted();
                if a.json {
                    if drifted || !a.quiet {
                        outln!("{}", crate::output::json(&c.json(None).to_string()));
                    }
                } else if drifted || !a.quiet {
                    outln!("{now} check {n}: {}", c.line());
                }
                // Tell the webhook what is new: drift (or different drift), or recovery.
                let body = c.json(None);
                let event = match (&last_drift, drifted) {
                    (Some(prev), true) if same_drift(prev, &body) => None,
                    (_, true) => Some("drift"),
                    (Some(_), false) => Some("recovered"),
                    (None, false) => None,
                };
                if drifted && !a.json && event.is_some() {
                    out!("{}", indent(&details(&c.report)));
                }
                if let (Some(event), Some(url)) = (event, &a.webhook)
                    && let Err(e) = post(url, &c.json(Some(event))).await
                {
                    outln!("{now} check {n}: warning: the webhook was not told: {e}");
                }
                last_drift = drifted.then_some(body);
            }
        }
        let pause = jittered(every);
        tokio::select! {
            why = stop.wait() => return Ok(stopped(a, n, why)),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn stopped(a: &DriftArgs, checks: u64, why: &str) -> u8 {
    if !a.quiet && !a.json {
        outln!("Stopped ({why}) after {checks} check(s).");
    }
    0
}

/// Two reports name the same drift (whatever the time and duration of the check).
fn same_drift(a: &Value, b: &Value) -> bool {
    ["missing", "changed", "unmanaged", "etcd"]
        .iter()
        .all(|k| a.get(k) == b.get(k))
}

/// `every`, plus or minus up to [`JITTER`] of it at random.
fn jittered(every: Duration) -> Duration {
    let f = rand::rng().random_range((1.0 - JITTER)..=(1.0 + JITTER));
    every.mul_f64(f)
}

fn pretty(v: &Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(errors::bug)
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// POST `body` as JSON to `url`: three tries, ten seconds each.
async fn post(url: &str, body: &Value) -> Result<(), String> {
    let url = url.to_string();
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            match agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&bytes[..])
            {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("POST {url}: {e}"),
            }
        }
        Err(last)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The report as text: what drifted (or not), then pending changes and unfinished
/// operations, which are not drift.
fn text(c: &Check) -> String {
    let r = &c.report;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Drift check of cluster `{}`: state serial {}, {} resources, {} provider calls, {:.2}s\n",
        r.cluster,
        r.state_serial,
        r.resources,
        r.provider_calls,
        c.took.as_secs_f64()
    );
    out.push_str(&details(r));
    if r.etcd.as_ref().is_some_and(|e| e.drift.drifted()) {
        let _ = writeln!(
            out,
            "{} the etcd member list disagrees with the central machines in the state: \
             `clusterform plan` shows the steps that repair it (`clusterform etcd status` shows \
             the members).",
            bold(&red("Drift:")),
        );
    }
    if r.drifted() {
        let _ = writeln!(
            out,
            "{} {} missing, {} changed, {} unmanaged. Run `clusterform plan` to see what apply \
             would do about it, or `clusterform apply --refresh-only` to accept it into the state.",
            bold(&red("Drift:")),
            r.missing.len(),
            r.changed.len(),
            r.unmanaged.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{} the {} objects match the state.",
            bold(&green("In sync:")),
            r.resources
        );
    }
    out
}

/// The sections of a report that are not empty.
fn details(r: &DriftReport) -> String {
    let mut out = String::new();
    if let Some(e) = &r.etcd {
        if let Some(err) = &e.error {
            let _ = writeln!(
                out,
                "{} the etcd member list could not be read: {err}\n",
                yellow("Note:")
            );
        }
        let d = &e.drift;
        if d.drifted() {
            let _ = writeln!(
                out,
                "{}",
                bold("etcd members that disagree with the state:")
            );
            let at = |m: &clusterform_engine::day2::MemberRef| {
                m.address
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            };
            for m in &d.missing {
                let _ = writeln!(
                    out,
                    "  {} {}: member `{}` ({}) is not in the cluster",
                    red("-"),
                    at(m),
                    m.name,
                    m.peer_url
                );
            }
            for m in &d.learners {
                let _ = writeln!(
                    out,
                    "  {} {}: member `{}` is still a learner (never promoted)",
                    yellow("~"),
                    at(m),
                    m.name
                );
            }
            for m in &d.extra {
                let _ = writeln!(
                    out,
                    "  {} member `{}` ({}, id {}) matches no central machine",
                    yellow("+"),
                    m.name,
                    m.peer_url,
                    m.id.clone().unwrap_or_default()
                );
            }
            out.push('\n');
        }
    }
    if !r.missing.is_empty() {
        let _ = writeln!(out, "{}", bold("Deleted outside clusterform:"));
        for m in &r.missing {
            let _ = writeln!(out, "  {} {} (id {})", red("-"), m.address, m.id);
        }
        out.push('\n');
    }
    if !r.changed.is_empty() {
        let _ = writeln!(out, "{}", bold("Changed outside clusterform:"));
        for c in &r.changed {
            let _ = writeln!(out, "  {} {} (id {})", yellow("~"), c.address, c.id);
            let w = c.attributes.iter().map(|a| a.name.len()).max().unwrap_or(0);
            for a in &c.attributes {
                let _ = writeln!(
                    out,
                    "      {:<w$} = {} -> {}",
                    a.name,
                    render::attr_value(&a.name, &a.state),
                    render::attr_value(&a.name, &a.actual)
                );
            }
        }
        out.push('\n');
    }
    if !r.unmanaged.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            bold("Not in the state, but tagged for this cluster (unmanaged):")
        );
        for u in &r.unmanaged {
            let made = match (&u.created_by, &u.created_at) {
                (Some(by), Some(at)) => format!(", made by {by} at {at}"),
                (Some(by), None) => format!(", made by {by}"),
                (None, Some(at)) => format!(", made at {at}"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} {} {} (id {}{made})",
                yellow("?"),
                u.kind,
                u.address,
                u.id
            );
        }
        let _ = writeln!(
            out,
            "  {}",
            dim(
                "adopt one with `clusterform import ADDR ID`, or delete them with `clusterform reap --orphans`"
            )
        );
        out.push('\n');
    }
    if !r.pending_changes.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            bold("Pending changes (in the cluster file, not applied yet; not drift):")
        );
        for p in &r.pending_changes {
            let attrs = if p.attributes.is_empty() {
                String::new()
            } else {
                format!(" ({})", p.attributes.join(", "))
            };
            let _ = writeln!(
                out,
                "  {} {} {}{attrs}",
                p.action.symbol(),
                p.address,
                p.action.phrase()
            );
        }
        out.push('\n');
    }
    if !r.unfinished_operations.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            bold(
                "Unfinished operations (a run in progress or one that died; the next plan or apply resolves them; not drift):"
            )
        );
        for u in &r.unfinished_operations {
            let made = u
                .object_id
                .as_ref()
                .map(|id| format!(", made {id}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {} since {}{made}",
                u.action.name(),
                u.address,
                u.started_at
            );
        }
        out.push('\n');
    }
    out
}
