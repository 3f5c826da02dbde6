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
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    on_retry(attempt, &e);
                    let asked = match &e {
                        ProviderError::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    tokio::time::sleep(self.backoff(attempt, asked)).await;
                    attempt += 1;
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
