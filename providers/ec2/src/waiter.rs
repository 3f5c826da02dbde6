//! Waiting for instances to reach a state (running, stopped, terminated) with one
//! shared poll: however many creates and deletes wait at once, each tick asks EC2 about
//! all of them in one `DescribeInstances` (200 ids a call), so a 500-instance apply does
//! not poll 500 times a tick. A tick EC2 throttles is skipped, not fatal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{Instance, InstanceStateName};
use tokio::sync::oneshot;

use crate::api::Api;
use crate::errors::{ApiError, Class};

/// The state a caller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// `running` (launch, start).
    Running,
    /// `stopped` (before changing the instance type).
    Stopped,
    /// `terminated`, or gone from EC2's answers.
    Terminated,
}

impl Want {
    fn name(self) -> &'static str {
        match self {
            Want::Running => "running",
            Want::Stopped => "stopped",
            Want::Terminated => "terminated",
        }
    }
}

/// What a wait ends with: the instance as EC2 described it (None once it is gone).
type Answer = Result<Option<Instance>, ApiError>;

struct Waiting {
    id: String,
    want: Want,
    tx: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Hub {
    waiting: Vec<Waiting>,
    polling: bool,
}

/// The shared poll. Cheap to clone.
#[derive(Clone)]
pub struct Waiter {
    api: Api,
    interval: Duration,
    hub: Arc<Mutex<Hub>>,
}

impl Waiter {
    /// A waiter polling every `interval`.
    pub fn new(api: Api, interval: Duration) -> Waiter {
        Waiter {
            api,
            interval,
            hub: Arc::new(Mutex::new(Hub::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until instance `id` is in state `want`, for at most `timeout`.
    pub async fn wait(&self, id: &str, want: Want, timeout: Duration) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut hub = self.lock();
            hub.waiting.push(Waiting {
                id: id.to_string(),
                want,
                tx,
            });
            !std::mem::replace(&mut hub.polling, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.poll().await });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(ApiError::other(
                "DescribeInstances",
                "the instance poll stopped unexpectedly",
            )),
            Err(_) => Err(ApiError {
                op: "DescribeInstances",
                code: None,
                message: format!(
                    "instance `{id}` was not {} after {}s (`wait_timeout_s` in [provider.ec2])",
                    want.name(),
                    timeout.as_secs()
                ),
                class: Class::Unknown,
            }),
        }
    }

    /// The poll loop: runs while anyone waits.
    async fn poll(&self) {
        loop {
            let ids: Vec<String> = {
                let mut hub = self.lock();
                hub.waiting.retain(|w| !w.tx.is_closed());
                if hub.waiting.is_empty() {
                    hub.polling = false;
                    return;
                }
                let set: HashSet<&str> = hub.waiting.iter().map(|w| w.id.as_str()).collect();
                set.into_iter().map(str::to_string).collect()
            };
            match self.api.instances_by_id(&ids).await {
                Ok(found) => self.settle(&found),
                Err(e) if e.class == Class::Transient => {
                    tracing::debug!("instance poll skipped a tick: {e}");
                }
                Err(e) => {
                    let mut hub = self.lock();
                    let ids: HashSet<String> = ids.into_iter().collect();
                    let (done, keep): (Vec<Waiting>, Vec<Waiting>) =
                        std::mem::take(&mut hub.waiting)
                            .into_iter()
                            .partition(|w| ids.contains(&w.id));
                    hub.waiting = keep;
                    drop(hub);
                    for w in done {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Hand out the answers of one tick.
    fn settle(&self, found: &HashMap<String, Instance>) {
        let mut hub = self.lock();
        let mut keep = Vec::with_capacity(hub.waiting.len());
        let mut done = Vec::new();
        for w in std::mem::take(&mut hub.waiting) {
            let inst = found.get(&w.id);
            let state = inst.and_then(|i| i.state()).and_then(|s| s.name()).cloned();
            match outcome(w.want, state.as_ref(), inst.is_some()) {
                Outcome::Wait => keep.push(w),
                Outcome::Done => done.push((w, Ok(inst.cloned()))),
                Outcome::Failed(now) => {
                    let reason = inst
                        .and_then(|i| i.state_reason())
                        .and_then(|r| r.message())
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default();
                    let message = format!(
                        "instance `{}` is {now} while waiting for {}{reason}",
                        w.id,
                        w.want.name()
                    );
                    done.push((w, Err(ApiError::other("DescribeInstances", message))));
                }
            }
        }
        hub.waiting = keep;
        drop(hub);
        for (w, answer) in done {
            let _ = w.tx.send(answer);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Wait,
    Done,
    Failed(String),
}

/// What one look at an instance means for a wait. `listed`: EC2 answered with it (a
/// new instance may not be listed yet; a terminated one drops out after a while).
fn outcome(want: Want, state: Option<&InstanceStateName>, listed: bool) -> Outcome {
    use InstanceStateName as S;
    match (want, state) {
        (Want::Terminated, None) if !listed => Outcome::Done,
        (_, None) => Outcome::Wait,
        (Want::Terminated, Some(S::Terminated)) => Outcome::Done,
        (Want::Terminated, Some(_)) => Outcome::Wait,
        (Want::Running, Some(S::Running)) => Outcome::Done,
        (Want::Running, Some(S::Pending)) => Outcome::Wait,
        (Want::Stopped, Some(S::Stopped)) => Outcome::Done,
        (Want::Stopped, Some(S::Stopping | S::Pending | S::Running)) => Outcome::Wait,
        (_, Some(s)) => Outcome::Failed(s.as_str().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStateName as S;

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome(Want::Running, Some(&S::Pending), true),
            Outcome::Wait
        );
        assert_eq!(
            outcome(Want::Running, Some(&S::Running), true),
            Outcome::Done
        );
        assert_eq!(outcome(Want::Running, None, false), Outcome::Wait);
        assert_eq!(
            outcome(Want::Running, Some(&S::Terminated), true),
            Outcome::Failed("terminated".into())
        );
        assert_eq!(
            outcome(Want::Stopped, Some(&S::Stopping), true),
            Outcome::Wait
        );
        assert_eq!(
            outcome(Want::Stopped, Some(&S::Stopped), true),
            Outcome::Done
        );
        assert_eq!(
            outcome(Want::Terminated, Some(&S::ShuttingDown), true),
            Outcome::Wait
        );
        assert_eq!(
            outcome(Want::Terminated, Some(&S::Terminated), true),
            Outcome::Done
        );
        assert_eq!(outcome(Want::Terminated, None, false), Outcome::Done);
    }
}
