//! Live progress of an apply or destroy: on a terminal, a spinner per resource in flight
//! with its action and elapsed time (indicatif); otherwise one plain line per operation
//! as it starts and as it ends (`machine.workers[2]: Creating...`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clusterform_core::{Action, Address};
use clusterform_engine::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::clean;

/// How an action is told: (starting, finished, noun for a failure).
fn verb(a: Action) -> (&'static str, &'static str, &'static str) {
    match a {
        Action::Delete => ("Destroying...", "Destruction complete", "Destruction"),
        Action::Update => ("Modifying...", "Modifications complete", "Modification"),
        _ => ("Creating...", "Creation complete", "Creation"),
    }
}

/// ` [id=...]`, or nothing.
fn id_note(id: Option<&String>) -> String {
    id.map(|i| format!(" [id={i}]")).unwrap_or_default()
}

/// The line of an operation that ended well, in both modes.
fn finished_line(
    address: &Address,
    action: Action,
    elapsed: Duration,
    id: Option<&String>,
) -> String {
    format!(
        "{address}: {} after {:.1}s{}",
        verb(action).1,
        elapsed.as_secs_f64(),
        id_note(id)
    )
}

/// The line of an etcd membership step that ended well, in both modes.
fn member_finished_line(address: &Address, what: &str, elapsed: Duration) -> String {
    format!("{address}: {what} after {:.1}s", elapsed.as_secs_f64())
}

/// An observer that draws progress. `ids` are the ids the plan knows (objects to delete
/// or change), shown when such an operation starts.
pub fn observer(ids: HashMap<Address, String>) -> Observer {
    if !std::io::stdout().is_terminal() {
        return lines(ids);
    }
    bars()
}

/// When stdout is not a terminal (CI logs, `| tee`): one line per operation as it starts
/// and one as it ends, in the order they happen, and the etcd membership steps.
fn lines(ids: HashMap<Address, String>) -> Observer {
    let started: Mutex<HashMap<Address, Instant>> = Mutex::new(HashMap::new());
    Arc::new(move |event| {
        let mut started = started.lock().unwrap_or_else(|e| e.into_inner());
        let line = match event {
            Event::Started { address, action } => {
                started.insert(address.clone(), Instant::now());
                let id = match action {
                    Action::Create => String::new(),
                    _ => id_note(ids.get(&address)),
                };
                format!("{address}: {}{id}", verb(action).0)
            }
            Event::Retrying {
                address,
                attempt,
                error,
            } => format!("{address}: Retrying after attempt {attempt}: {error}"),
            Event::Finished {
                address,
                action,
                elapsed,
                id,
            } => {
                started.remove(&address);
                finished_line(&address, action, elapsed, id.as_ref())
            }
            Event::Failed {
                address,
                action,
                error,
            } => {
                let took = started
                    .remove(&address)
                    .map(|t| format!(" after {:.1}s", t.elapsed().as_secs_f64()))
                    .unwrap_or_default();
                format!("{address}: {} failed{took}: {error}", verb(action).2)
            }
            Event::MemberStarted { address, what } => format!("{address}: {what}"),
            Event::MemberFinished {
                address,
                what,
                elapsed,
            } => member_finished_line(&address, what, elapsed),
            Event::MemberFailed {
                address,
                what,
                error,
            } => format!(
                "{address}: {} failed: {error}",
                what.trim_end_matches("...")
            ),
        };
        // Provider messages and addresses may quote input: `outln!` escapes them.
        outln!("{line}");
    })
}

/// On a terminal: a spinner per operation in flight, a line when one ends.
fn bars() -> Observer {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let bars: Mutex<HashMap<Address, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    Arc::new(move |event| {
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Started { address, action } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_message(clean(&format!("{address}: {}", verb(action).0)).into_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                bars.insert(address, bar);
            }
            Event::Retrying {
                address,
                attempt,
                error,
            } => {
                if let Some(bar) = bars.get(&address) {
                    bar.set_message(
                        clean(&format!(
                            "{address}: retrying after attempt {attempt}: {error}"
                        ))
                        .into_owned(),
                    );
                }
            }
            Event::Finished {
                address,
                action,
                elapsed,
                id,
            } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(clean(&finished_line(
                    &address,
                    action,
                    elapsed,
                    id.as_ref(),
                )));
            }
            Event::MemberStarted { address, what } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_message(clean(&format!("{address}: {what}")).into_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                bars.insert(address, bar);
            }
            Event::MemberFinished {
                address,
                what,
                elapsed,
            } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(clean(&member_finished_line(&address, what, elapsed)));
            }
            Event::MemberFailed { address, what, .. } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(clean(&format!(
                    "{address}: {} failed",
                    what.trim_end_matches("...")
                )));
            }
            Event::Failed {
                address, action, ..
            } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(clean(&format!("{address}: {} failed", verb(action).2)));
            }
        }
    })
}
