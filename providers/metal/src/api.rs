//! The Metal API over HTTP: one request with its retries (429 and 5xx with backoff and
//! jitter, `Retry-After` honoured), the API's errors turned into provider errors that
//! say what to do, and paginated lists. The token goes only into the `X-Auth-Token`
//! header: no message, error or log line ever carries it.

use std::time::Duration;

use clusterform_provider::ProviderError;
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::settings::{Settings, TOKEN_ENV};

/// Items per page of a list (the API's largest page is 1000; 100 keeps answers small).
pub const PER_PAGE: usize = 100;

/// What a 422 error says to do, unless the caller knows better (see [`advise`]).
pub const FIX_SETTING: &str = "fix the setting it names in the cluster file and run again";

/// A 422 error of [`Api::call`] with `advice` in place of [`FIX_SETTING`], for calls
/// whose refusals no setting causes; other errors unchanged.
pub fn advise(e: ProviderError, advice: &str) -> ProviderError {
    match e {
        ProviderError::Permanent(m) => match m.strip_suffix(FIX_SETTING) {
            Some(head) => ProviderError::Permanent(format!("{head}{advice}")),
            None => ProviderError::Permanent(m),
        },
        other => other,
    }
}

/// Whether a request may be sent again when its outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Reads, deletes and updates: sending them twice does no harm.
    Safe,
    /// Creates: only a request the API certainly did not act on (429, a refused
    /// connection) is sent again; after a 5xx or a timeout the caller looks for the
    /// object by its op tag before it creates again.
    Unsafe,
}

/// A client of one project's API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    max_attempts: u32,
}

/// The API's error text: `errors` joined, else `error`, else the body's start.
fn error_text(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let errors: Vec<&str> = v
            .get("errors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !errors.is_empty() {
            Some(errors.join("; "))
        } else {
            v.get("error").and_then(Value::as_str).map(str::to_string)
        }
    });
    from_json.unwrap_or_else(|| {
        let t: String = body.chars().take(200).collect();
        if t.trim().is_empty() {
            "no details".into()
        } else {
            t
        }
    })
}

/// `Retry-After` in seconds (the API sends whole seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0 && *s < 3600.0)
        .map(Duration::from_secs_f64)
}

/// Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s ... capped at 20 s.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(500)
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(20));
    let ms = rand::rng().random_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms)
}

impl Api {
    /// A client for `settings`' API, token and retry budget.
    pub fn new(settings: &Settings) -> Result<Api, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "clusterform-provider-metal/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot make the HTTP client: {e}"))?;
        Ok(Api {
            http,
            base: settings.api_url.clone(),
            token: settings.token.as_ref().map(|t| t.0.clone()),
            max_attempts: settings.max_attempts,
        })
    }

    /// Send one request, retrying what may be retried. `Ok(None)` for an empty answer
    /// (204). `what` names the call in errors ("create device `x`").
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        replay: Replay,
        what: &str,
    ) -> Result<Option<Value>, ProviderError> {
        let token = self
            .token
            .as_deref()
            .ok_or_else(|| ProviderError::Config(crate::settings::no_token()))?;
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", token)
                .header(reqwest::header::ACCEPT, "application/json")
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let last = attempt >= self.max_attempts;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    // A refused connection never reached the API; anything later may have.
                    let unsent = e.is_connect();
                    let msg = format!(
                        "{what}: the Metal API at {} did not answer ({})",
                        self.base,
                        e.without_url()
                    );
                    if replay == Replay::Unsafe && !unsent {
                        return Err(ProviderError::Ambiguous(msg));
                    }
                    if last {
                        return Err(ProviderError::Transient {
                            message: msg,
                            retry_after: None,
                        });
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            let status = resp.status();
            let wait = retry_after(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            if status.is_success() {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                return serde_json::from_str(&text).map(Some).map_err(|e| {
                    ProviderError::Permanent(format!(
                        "{what}: the Metal API answered {status} with a body that is not JSON ({e})"
                    ))
                });
            }
            let errors = error_text(&text);
            if status == StatusCode::TOO_MANY_REQUESTS {
                let msg = format!("{what}: the Metal API is throttling requests (429: {errors})");
                if last {
                    return Err(ProviderError::Transient {
                        message: msg,
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
                continue;
            }
            if status.is_server_error() {
                let msg = format!("{what}: the Metal API failed ({status}: {errors})");
                if replay == Replay::Unsafe {
                    return Err(ProviderError::Ambiguous(msg));
                }
                if last {
                    return Err(ProviderError::Transient {
                        message: msg,
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
                continue;
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProviderError::Config(format!(
                    "{what}: the Metal API refused the token ({status}: {errors}); check that {TOKEN_ENV} holds an API token with access to the project"
                )),
                StatusCode::NOT_FOUND => ProviderError::NotFound(format!("{what} ({errors})")),
                StatusCode::UNPROCESSABLE_ENTITY => ProviderError::Permanent(format!(
                    "{what}: the Metal API rejected the request (422: {errors}); {FIX_SETTING}"
                )),
                _ => ProviderError::Permanent(format!(
                    "{what}: the Metal API answered {status}: {errors}"
                )),
            });
        }
    }

    /// Every item of a paginated list (`key` is the array's name: `devices`), page by
    /// page at [`PER_PAGE`], following `meta.last_page`.
    pub async fn list_all(
        &self,
        path: &str,
        key: &str,
        filter: &[(&str, String)],
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        self.list_pages(path, key, filter, PER_PAGE, true, what)
            .await
    }

    /// Every item of a paginated list whose operation documents `per_page` only (the
    /// project's IP reservations): pages of `per_page`, the first without `page`, later
    /// ones (rare: `per_page` is the API's largest page) with it, as `meta.next` does.
    pub async fn list_sized(
        &self,
        path: &str,
        key: &str,
        filter: &[(&str, String)],
        per_page: usize,
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        self.list_pages(path, key, filter, per_page, false, what)
            .await
    }

    async fn list_pages(
        &self,
        path: &str,
        key: &str,
        filter: &[(&str, String)],
        per_page: usize,
        first_page_param: bool,
        what: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            let mut query: Vec<(&str, String)> = filter.to_vec();
            if page > 1 || first_page_param {
                query.push(("page", page.to_string()));
            }
            query.push(("per_page", per_page.to_string()));
            let body = self
                .call(Method::GET, path, &query, None, Replay::Safe, what)
                .await?
                .unwrap_or(Value::Null);
            let items = body
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let got = items.len();
            out.extend(items);
            let meta = body.get("meta");
            let last_page = meta
                .and_then(|m| m.get("last_page"))
                .and_then(Value::as_u64);
            let has_next = meta
                .and_then(|m| m.get("next"))
                .is_some_and(|n| !n.is_null());
            let more = match last_page {
                Some(last) => page < last,
                None => has_next || (meta.is_some() && got == per_page),
            };
            if !more || got == 0 {
                return Ok(out);
            }
            page += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_errors_then_error() {
        assert_eq!(error_text(r#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(error_text(r#"{"error":"x"}"#), "x");
        assert_eq!(error_text(""), "no details");
        assert_eq!(error_text("<html>"), "<html>");
    }

    #[test]
    fn advice_replaces_only_the_422_default() {
        let e = ProviderError::Permanent(format!("x: rejected (422: y); {FIX_SETTING}"));
        assert_eq!(advise(e, "do z").to_string(), "x: rejected (422: y); do z");
        let e = ProviderError::Permanent("answered 400: bad".into());
        assert_eq!(advise(e, "do z").to_string(), "answered 400: bad");
        assert!(matches!(
            advise(ProviderError::NotFound("n".into()), "do z"),
            ProviderError::NotFound(_)
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let b = backoff(attempt);
            assert!(b <= Duration::from_secs(20), "{attempt}: {b:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(500));
        assert!(backoff(6) >= Duration::from_secs(8));
    }
}
