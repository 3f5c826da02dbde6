//! What every operation shares once connected: the client, the settings, the instance
//! waiter, small caches (network parts by VPC, AMIs by channel), and the progress of
//! creates that failed midway: the engine retries a create after a transient error (a
//! throttled call), and the retry goes on from the step that failed instead of starting
//! over, looking up only what that step may have made (its answer may have been lost).
//! Also the teardown loop that waits out `DependencyViolation`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clusterform_core::Attrs;
use rand::Rng;

use crate::api::Api;
use crate::errors::{ApiError, Class};
use crate::network::{Parts, Teardown};
use crate::settings::Ec2Settings;
use crate::waiter::Waiter;

/// An AMI found for a channel.
#[derive(Clone, Debug)]
pub struct Ami {
    /// Its id.
    pub id: String,
    /// Its root device (for the root volume size), when EC2 said.
    pub root_device: Option<String>,
}

/// The connected provider.
pub struct Cloud {
    /// The client.
    pub api: Api,
    /// The settings.
    pub settings: Ec2Settings,
    /// The shared instance poll.
    pub waiter: Waiter,
    parts: Mutex<HashMap<String, Parts>>,
    amis: Mutex<HashMap<String, Ami>>,
    progress: Mutex<HashMap<String, Progress>>,
    teardowns: Mutex<HashMap<String, Vec<Teardown>>>,
    /// Held while looking up what many creates need at once (AMI, network parts), so
    /// that 200 parallel creates make one lookup, not 200.
    pub lookup: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cloud {
    /// Wrap a connected client.
    pub fn new(api: Api, settings: Ec2Settings) -> Cloud {
        Cloud {
            waiter: Waiter::new(api.clone(), settings.poll_interval()),
            api,
            settings,
            parts: Mutex::new(HashMap::new()),
            amis: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            teardowns: Mutex::new(HashMap::new()),
            lookup: tokio::sync::Mutex::new(()),
        }
    }

    /// Run the steps of create `op`, going on from where an earlier try of the same op
    /// stopped; the progress is kept when the steps fail, dropped when they succeed.
    pub async fn resumable<T, F, Fut>(&self, op: &str, steps: F) -> Result<T, ApiError>
    where
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = (Progress, Result<T, ApiError>)>,
    {
        let before = lock(&self.progress).remove(op).unwrap_or_default();
        let (after, out) = steps(before).await;
        if out.is_err() {
            lock(&self.progress).insert(op.to_string(), after);
        }
        out
    }

    /// The steps left of a VPC's teardown that a transient error interrupted.
    pub fn take_teardown(&self, vpc: &str) -> Option<Vec<Teardown>> {
        lock(&self.teardowns).remove(vpc)
    }

    /// Keep the steps left of a VPC's teardown for the engine's retry.
    pub fn keep_teardown(&self, vpc: &str, steps: Vec<Teardown>) {
        lock(&self.teardowns).insert(vpc.to_string(), steps);
    }

    /// The cached parts of a VPC.
    pub fn cached_parts(&self, vpc: &str) -> Option<Parts> {
        lock(&self.parts).get(vpc).cloned()
    }

    /// Remember (or, with None, forget) the parts of a VPC.
    pub fn cache_parts(&self, vpc: &str, parts: Option<Parts>) {
        let mut m = lock(&self.parts);
        match parts {
            Some(p) => {
                m.insert(vpc.to_string(), p);
            }
            None => {
                m.remove(vpc);
            }
        }
    }

    /// The cached AMI of a key (channel or id).
    pub fn cached_ami(&self, key: &str) -> Option<Ami> {
        lock(&self.amis).get(key).cloned()
    }

    /// Remember an AMI.
    pub fn cache_ami(&self, key: &str, ami: Ami) {
        lock(&self.amis).insert(key.to_string(), ami);
    }

    /// Run one teardown step until EC2 stops answering `DependencyViolation` (something
    /// still uses the object: an instance shutting down, a network interface being
    /// released), with backoff and jitter, for at most `teardown_timeout_s`. A step
    /// whose object is already gone succeeds.
    pub async fn until_free<F, Fut>(&self, what: &str, mut step: F) -> Result<(), ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), ApiError>>,
    {
        let timeout = self.settings.teardown_timeout();
        let start = Instant::now();
        let mut delay = self.settings.poll_interval().min(Duration::from_secs(1));
        let mut tries = 0u32;
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.class == Class::Dependency => {
                    tries += 1;
                    if start.elapsed() + delay > timeout {
                        return Err(ApiError {
                            class: Class::Permanent,
                            message: format!(
                                "{what} is still in use after {tries} tries in {}s: {} (remove what uses it, or raise `teardown_timeout_s`)",
                                start.elapsed().as_secs(),
                                e.message
                            ),
                            ..e
                        });
                    }
                    tracing::info!("{what}: {}; trying again in {delay:?}", e.message);
                    let jitter = rand::rng().random_range(Duration::ZERO..=delay / 2);
                    tokio::time::sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(15));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A string attribute.
pub fn attr_str<'a>(attrs: &'a Attrs, name: &str) -> Option<&'a str> {
    attrs.get(name).and_then(|v| v.as_str())
}

/// How far a create got: ids of what it made, steps it finished, and the step whose
/// outcome is unknown (it failed, possibly after taking effect).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    ids: HashMap<&'static str, String>,
    done: HashSet<&'static str>,
    uncertain: Option<&'static str>,
}

impl Progress {
    /// Record what step `key` made (a part found after a crash, say).
    pub fn set_id(&mut self, key: &'static str, id: String) {
        self.ids.insert(key, id);
    }

    /// Record step `key` as finished.
    pub fn set_done(&mut self, key: &'static str) {
        self.done.insert(key);
    }

    /// The id of what step `key` makes: known, else found by `lookup` when an earlier
    /// try of the step may have made it, else made by `create`.
    pub async fn made<L, LF, C, CF>(
        &mut self,
        key: &'static str,
        lookup: L,
        create: C,
    ) -> Result<String, ApiError>
    where
        L: FnOnce() -> LF,
        LF: Future<Output = Result<Option<String>, ApiError>>,
        C: FnOnce() -> CF,
        CF: Future<Output = Result<String, ApiError>>,
    {
        if let Some(id) = self.ids.get(key) {
            return Ok(id.clone());
        }
        let found = if self.uncertain == Some(key) {
            lookup().await?
        } else {
            None
        };
        let id = match found {
            Some(id) => id,
            None => {
                self.uncertain = Some(key);
                create().await?
            }
        };
        self.uncertain = None;
        self.ids.insert(key, id.clone());
        Ok(id)
    }

    /// Run step `key` unless it finished before; the step must be safe to repeat
    /// (EC2 answering "already done" counts as done).
    pub async fn once<F, Fut>(&mut self, key: &'static str, step: F) -> Result<(), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), ApiError>>,
    {
        if self.done.contains(key) {
            return Ok(());
        }
        step().await?;
        self.done.insert(key);
        Ok(())
    }
}
