//! What makes the sim behave like a real cloud under load: latency and jitter per call,
//! a per-process rate limit (token bucket), random transient failures, and addresses
//! that always fail.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clusterform_core::Address;
use clusterform_provider::ProviderError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::SimConfig;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Take a token, or say how long until one is there.
    fn take(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The fault settings of one provider instance and their state.
pub(crate) struct Faults {
    latency: Duration,
    jitter_ms: u64,
    fail_rate: f64,
    fail_on: HashSet<String>,
    rng: Mutex<StdRng>,
    bucket: Option<Mutex<Bucket>>,
}

impl Faults {
    pub(crate) fn new(c: &SimConfig) -> Faults {
        let rng = match c.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Faults {
            latency: Duration::from_millis(c.latency_ms),
            jitter_ms: c.jitter_ms,
            fail_rate: c.fail_rate,
            fail_on: c.fail_on.iter().cloned().collect(),
            rng: Mutex::new(rng),
            bucket: c.rate_per_s.map(|r| Mutex::new(Bucket::new(r))),
        }
    }

    /// The request leg of a call: sleep half the latency (plus jitter) and return when
    /// the response is due (start + the whole latency). The work happens in between and
    /// the caller sleeps until that instant, so, as with a real API, the call takes its
    /// latency whenever the server's work fits inside it.
    pub(crate) async fn request_leg(&self) -> tokio::time::Instant {
        let start = tokio::time::Instant::now();
        let mut delay = self.latency;
        if self.jitter_ms > 0 {
            let extra = self.lock_rng().random_range(0..=self.jitter_ms);
            delay += Duration::from_millis(extra);
        }
        let first = delay / 2;
        if !first.is_zero() {
            tokio::time::sleep(first).await;
        }
        start + delay
    }

    /// What can refuse a call before it does its work, in order: the rate limit, the
    /// random failure, then `fail_on` (mutations, which pass the address).
    pub(crate) fn check(&self, address: Option<&Address>) -> Result<(), ProviderError> {
        if let Some(b) = &self.bucket {
            let taken = b.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Err(wait) = taken {
                return Err(ProviderError::Transient {
                    message: "RequestLimitExceeded: too many calls per second to the sim cloud"
                        .to_string(),
                    retry_after: Some(wait),
                });
            }
        }
        if self.fail_rate > 0.0 && self.lock_rng().random::<f64>() < self.fail_rate {
            return Err(ProviderError::Transient {
                message: "InternalError (injected)".to_string(),
                retry_after: None,
            });
        }
        if let Some(a) = address {
            let shown = a.to_string();
            if self.fail_on.contains(&shown) {
                return Err(ProviderError::Permanent(format!(
                    "injected failure for `{shown}`"
                )));
            }
        }
        Ok(())
    }

    fn lock_rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }
}
