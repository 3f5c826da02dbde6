//! `apply --json` / `destroy --json`: one JSON event per line on stdout (planned,
//! started, progress, retried, finished, failed, skipped, summary), each with the
//! schema version, checked against `docs/events.schema.json` in the tests.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use clusterform_core::{Action, Plan};
use clusterform_engine::{ApplyReport, Event, Observer, Outcome};
use serde_json::{Value, json};

/// The version of the event schema (`docs/events.schema.json`); a change that could
/// break a reader increases it.
pub const VERSION: u32 = 1;

fn action(a: Action) -> &'static str {
    match a {
        Action::NoOp => "no-op",
        Action::Create => "create",
        Action::Update => "update",
        Action::Replace => "replace",
        Action::Delete => "delete",
    }
}

/// Writes one event: `type` and the fields of `body`, with the version and the time.
fn emit(kind: &str, body: Value) {
    let mut v = json!({
        "v": VERSION,
        "type": kind,
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    if let (Some(obj), Value::Object(fields)) = (v.as_object_mut(), body) {
        obj.extend(fields);
    }
    outln!("{}", serde_json::to_string(&v).unwrap_or_default());
}

/// One `planned` event per change of `plan`.
pub fn planned(plan: &Plan) {
    for c in &plan.changes {
        emit(
            "planned",
            json!({
                "address": c.address.to_string(),
                "action": action(c.action),
                "provider": c.provider,
            }),
        );
    }
}

/// The observer that turns the walk's progress into events.
pub fn observer() -> Observer {
    Arc::new(|event| match event {
        Event::Started { address, action: a } => emit(
            "started",
            json!({"address": address.to_string(), "action": action(a)}),
        ),
        Event::Retrying {
            address,
            attempt,
            error,
        } => emit(
            "retried",
            json!({"address": address.to_string(), "attempt": attempt, "error": error}),
        ),
        Event::Finished {
            address,
            action: a,
            elapsed,
            id,
        } => emit(
            "finished",
            json!({
                "address": address.to_string(),
                "action": action(a),
                "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                "id": id,
            }),
        ),
        Event::Failed {
            address,
            action: a,
            error,
        } => emit(
            "failed",
            json!({"address": address.to_string(), "action": action(a), "error": error}),
        ),
        Event::MemberStarted { address, what } => emit(
            "progress",
            json!({"address": address.to_string(), "step": what, "state": "started"}),
        ),
        Event::MemberFinished {
            address,
            what,
            elapsed,
        } => emit(
            "progress",
            json!({
                "address": address.to_string(),
                "step": what,
                "state": "finished",
                "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            }),
        ),
        Event::MemberFailed {
            address,
            what,
            error,
        } => emit(
            "failed",
            json!({"address": address.to_string(), "action": "etcd-member", "step": what, "error": error}),
        ),
    })
}

/// After the walk: a `skipped` event for each change not attempted, then the summary.
pub fn finish(report: &ApplyReport, destroy: bool, interrupted: bool) {
    let mut seen = HashSet::new();
    for (address, a, outcome) in &report.outcomes {
        let reason = match outcome {
            Outcome::Skipped(dep) => format!("{dep} failed"),
            Outcome::Cancelled => "the run was interrupted".to_string(),
            Outcome::Done | Outcome::Failed(_) => continue,
        };
        if seen.insert(address.clone()) {
            emit(
                "skipped",
                json!({"address": address.to_string(), "action": action(*a), "reason": reason}),
            );
        }
    }
    summary(report, destroy, interrupted);
}

/// The last event of a stream.
pub fn summary(report: &ApplyReport, destroy: bool, interrupted: bool) {
    emit(
        "summary",
        json!({
            "operation": if destroy { "destroy" } else { "apply" },
            "success": report.success() && !interrupted,
            "added": report.added,
            "changed": report.changed,
            "destroyed": report.destroyed,
            "failed": report.failed(),
            "skipped": report.skipped(),
            "not_started": report.cancelled(),
            "retries": report.retries,
            "serial": report.serial,
            "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            "state_error": report.state_error,
        }),
    );
}

/// The summary of a run that had nothing to do.
pub fn nothing(destroy: bool, serial: u64) {
    emit(
        "summary",
        json!({
            "operation": if destroy { "destroy" } else { "apply" },
            "success": true,
            "added": 0, "changed": 0, "destroyed": 0, "failed": 0, "skipped": 0,
            "not_started": 0, "retries": 0, "serial": serial, "elapsed_ms": 0,
            "state_error": null,
        }),
    );
}
