//! Live progress of an apply: one line per resource in flight with its action and
//! elapsed time (indicatif) on a terminal; quiet when stdout is not a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterform_core::{Action, Address};
use clusterform_engine::{Event, Observer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

fn verb(a: Action) -> (&'static str, &'static str) {
    match a {
        Action::Delete => ("Destroying...", "Destruction complete"),
        Action::Update => ("Modifying...", "Modifications complete"),
        _ => ("Creating...", "Creation complete"),
    }
}

/// An observer that draws progress; when stdout is not a terminal, it prints only the
/// etcd membership steps (few, and slow enough that a log should show them).
pub fn observer() -> Observer {
    if !std::io::stdout().is_terminal() {
        return Arc::new(|event| match event {
            Event::MemberStarted { address, what } => println!("{address}: {what}"),
            Event::MemberFinished {
                address,
                what,
                elapsed,
            } => println!("{address}: {what} after {:.1}s", elapsed.as_secs_f64()),
            Event::MemberFailed {
                address,
                what,
                error,
            } => println!(
                "{address}: {} failed: {error}",
                what.trim_end_matches("...")
            ),
            _ => {}
        });
    }
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
                bar.set_message(format!("{address}: {}", verb(action).0));
                bar.enable_steady_tick(Duration::from_millis(200));
                bars.insert(address, bar);
            }
            Event::Retrying {
                address,
                attempt,
                error,
            } => {
                if let Some(bar) = bars.get(&address) {
                    bar.set_message(format!(
                        "{address}: retrying after attempt {attempt}: {error}"
                    ));
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
                let id = id.map(|i| format!(" [id={i}]")).unwrap_or_default();
                let _ = multi.println(format!(
                    "{address}: {} after {:.1}s{id}",
                    verb(action).1,
                    elapsed.as_secs_f64()
                ));
            }
            Event::MemberStarted { address, what } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_message(format!("{address}: {what}"));
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
                let _ = multi.println(format!(
                    "{address}: {what} after {:.1}s",
                    elapsed.as_secs_f64()
                ));
            }
            Event::MemberFailed { address, what, .. } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(format!(
                    "{address}: {} failed",
                    what.trim_end_matches("...")
                ));
            }
            Event::Failed {
                address, action, ..
            } => {
                if let Some(bar) = bars.remove(&address) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                let _ = multi.println(format!(
                    "{address}: {} failed",
                    verb(action).0.trim_end_matches("...")
                ));
            }
        }
    })
}
