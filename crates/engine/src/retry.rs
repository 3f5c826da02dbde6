//! Bounded retries with exponential backoff and full jitter for transient provider errors.

use std::future::Future;
use std::time::Duration;

use clusterform_provider::ProviderError;
use rand::Rng;

/// How transient errors are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base: Duration,
    /// Backoff never exceeds this.
    pub cap: Duration,
}

/// Throttled answers allowed per call: this many times `max_attempts`.
const THROTTLE_FACTOR: u32 = 4;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1): a random time up
    /// to the exponential backoff, and at least what the provider asked for.
    pub fn backoff(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cap);
        let jittered = rand::rng().random_range(Duration::ZERO..=exp);
        jittered.max(asked.unwrap_or(Duration::ZERO))
    }

    /// Run `op` until it succeeds, fails for good, or runs out of attempts; `on_retry`
    /// hears about every retry (attempt number, error).
    pub async fn run<T, F, Fut>(
        &self,
        mut op: F,
        mut on_retry: impl FnMut(u32, &ProviderError),
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        // A throttled answer (the provider said how long to wait) means "slow down", not
        // "broken": it does not use up one of `max_attempts` until the throttled answers
        // alone pass THROTTLE_FACTOR times that many (a busy API under a parallel apply
        // throttles the same call many times; giving up on it would fail the run).
        let mut attempt = 1;
        let mut throttled = 0u32;
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    let asked = match &e {
                        ProviderError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let is_throttle = asked.is_some()
                        && throttled < self.max_attempts.saturating_mul(THROTTLE_FACTOR);
                    if !is_throttle && attempt >= self.max_attempts {
                        return Err(e);
                    }
                    let tries = attempt + throttled;
                    on_retry(tries, &e);
                    // The backoff grows with failures, and with throttles up to 2^6 base.
                    tokio::time::sleep(self.backoff(attempt.max(throttled.min(6)), asked)).await;
                    if is_throttle {
                        throttled += 1;
                    } else {
                        attempt += 1;
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let mut retries = 0;
        let r = policy
            .run(
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(ProviderError::Transient {
                            message: "busy".into(),
                            retry_after: None,
                        })
                    } else {
                        Ok(7)
                    }
                },
                |_, _| retries += 1,
            )
            .await;
        assert_eq!(r, Ok(7));
        assert_eq!(retries, 2);
    }

    #[tokio::test]
    async fn throttling_does_not_use_up_the_attempts_but_is_bounded_too() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        };
        let throttle = || ProviderError::Transient {
            message: "RequestLimitExceeded".into(),
            retry_after: Some(Duration::from_millis(1)),
        };
        // 10 throttles and 2 failures, then success: within 3 attempts and 12 throttles.
        let calls = AtomicU32::new(0);
        let r = policy
            .run(
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0..=9 => Err(throttle()),
                        10 | 11 => Err(ProviderError::Transient {
                            message: "busy".into(),
                            retry_after: None,
                        }),
                        _ => Ok(1),
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r, Ok(1));
        // Throttled for ever: gives up after 3 * 4 throttles and its 3 attempts.
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(throttle())
                },
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 12 + 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_never_retries_permanent() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        };
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ProviderError::Transient {
                        message: "busy".into(),
                        retry_after: None,
                    })
                },
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(ProviderError::Permanent("no".into()))
                },
                |_, _| {},
            )
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert!(p.backoff(30, None) <= p.cap);
        assert!(p.backoff(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
