//! The `[provider.metal]` settings and the two secrets-or-ids the environment supplies
//! (`METAL_AUTH_TOKEN`, `METAL_PROJECT_ID`): parsed and checked once, before any call.

use std::time::Duration;

use clusterform_provider::ProviderConfig;
use serde_json::Value;

/// The public service's address. Equinix shut Metal down on 2026-06-30: set `api_url`
/// to a service that speaks the same API.
pub const DEFAULT_API_URL: &str = "https://api.equinix.com/metal/v1";

/// The environment variable with the API token (header `X-Auth-Token`).
pub const TOKEN_ENV: &str = "METAL_AUTH_TOKEN";

/// The environment variable with the project id, when the settings have none.
pub const PROJECT_ENV: &str = "METAL_PROJECT_ID";

/// Keys of `[provider.metal]`.
const KEYS: &[&str] = &[
    "api_url",
    "project_id",
    "metro",
    "provision_timeout",
    "poll_interval",
    "max_attempts",
    "vlan",
    "public_ipv4",
];

/// The checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The API's base URL, without a trailing slash.
    pub api_url: String,
    /// The project every object is made in.
    pub project_id: String,
    /// The metro of machines without a zone, and of the cluster VLAN.
    pub metro: String,
    /// How long a device may take from queued to active.
    pub provision_timeout: Duration,
    /// The first wait between two polls of a device (grows to 4x).
    pub poll_interval: Duration,
    /// Attempts of one API request on 429 and 5xx answers.
    pub max_attempts: u32,
    /// Make a VLAN for the cluster network and assign the machines of its metro to it.
    pub vlan: bool,
    /// Give each device a public IPv4 address (and IPv6) beside its private IPv4 one.
    pub public_ipv4: bool,
    /// The API token, when `METAL_AUTH_TOKEN` is set. Never printed: its `Debug` is masked.
    pub token: Option<Token>,
}

/// What to say when there is no token.
pub fn no_token() -> String {
    format!(
        "no Metal API token: set {TOKEN_ENV} to a project or user API token (it is read from the environment only, never from cluster.toml)"
    )
}

/// The API token; its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(pub String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<sensitive>)")
    }
}

fn string(settings: &ProviderConfig, key: &str) -> Result<Option<String>, String> {
    match settings.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!("`{key}` must be a non-empty string")),
    }
}

fn duration(settings: &ProviderConfig, key: &str, default: Duration) -> Result<Duration, String> {
    match string(settings, key)? {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).map_err(|e| {
            format!("`{key} = \"{s}\"` is not a duration ({e}); write it like \"30m\" or \"10s\"")
        }),
    }
}

/// A UUID as Metal writes ids: 8-4-4-4-12 hex digits.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Settings {
    /// True when `api_url` is on this machine (an emulator of the API, as in the tests):
    /// its devices boot nothing, so no etcd member runs on them.
    pub fn is_local(&self) -> bool {
        let rest = self.api_url.split("://").nth(1).unwrap_or_default();
        let host = rest.split('/').next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        host == "localhost" || host == "[::1]" || host.starts_with("127.")
    }

    /// Check `[provider.metal]` and read the token and project from `env` (the process
    /// environment in the plugin; a map in tests).
    pub fn parse(
        settings: &ProviderConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        if let Some(k) = settings.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "`[provider.metal]` has no setting `{k}`; it has: {}",
                KEYS.join(", ")
            ));
        }
        let api_url = string(settings, "api_url")?
            .unwrap_or_else(|| DEFAULT_API_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(format!(
                "`api_url = \"{api_url}\"` is not an http(s) URL; write it like \"{DEFAULT_API_URL}\""
            ));
        }
        let project_id = match string(settings, "project_id")? {
            Some(p) => p,
            None => env(PROJECT_ENV)
                .filter(|p| !p.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "no Metal project: set `project_id` in `[provider.metal]` or {PROJECT_ENV}"
                    )
                })?,
        };
        if !is_uuid(&project_id) {
            return Err(format!(
                "the project id `{project_id}` is not a UUID; copy it from the project's settings page"
            ));
        }
        let metro = string(settings, "metro")?.unwrap_or_else(|| "da".to_string());
        let max_attempts = match settings.get("max_attempts") {
            None => 8,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=100).contains(n))
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("`max_attempts` must be a whole number from 1 to 100")?,
        };
        let flag = |key: &str| match settings.get(key) {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("`{key}` must be true or false")),
        };
        let vlan = flag("vlan")?;
        let public_ipv4 = flag("public_ipv4")?;
        // Checked at the first API call, so that `validate` works without a token.
        let token = env(TOKEN_ENV).filter(|t| !t.trim().is_empty()).map(Token);
        Ok(Settings {
            api_url,
            project_id,
            metro,
            provision_timeout: duration(settings, "provision_timeout", Duration::from_secs(1800))?,
            poll_interval: duration(settings, "poll_interval", Duration::from_secs(10))?,
            max_attempts,
            vlan,
            public_ipv4,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROJECT: &str = "00000000-0000-0000-0000-000000000001";

    fn parse(toml: serde_json::Value, env: &[(&str, &str)]) -> Result<Settings, String> {
        let settings: ProviderConfig = serde_json::from_value(toml).unwrap_or_default();
        Settings::parse(&settings, |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_and_environment() {
        let s = parse(
            serde_json::json!({"project_id": PROJECT}),
            &[(TOKEN_ENV, "secret-token")],
        )
        .expect("valid");
        assert_eq!(s.api_url, DEFAULT_API_URL);
        assert_eq!(s.provision_timeout, Duration::from_secs(1800));
        assert_eq!(s.max_attempts, 8);
        assert!(!format!("{s:?}").contains("secret-token"));
        let s = parse(
            serde_json::json!({"api_url": "http://127.0.0.1:9/metal/v1/"}),
            &[(TOKEN_ENV, "t"), (PROJECT_ENV, PROJECT)],
        )
        .expect("valid");
        assert_eq!(s.api_url, "http://127.0.0.1:9/metal/v1");
        assert_eq!(s.project_id, PROJECT);
    }

    #[test]
    fn clear_errors() {
        let s = parse(serde_json::json!({"project_id": PROJECT}), &[]).expect("no token yet");
        assert!(s.token.is_none());
        let e = parse(serde_json::json!({}), &[(TOKEN_ENV, "t")]).expect_err("refused");
        assert!(e.contains("METAL_PROJECT_ID"), "{e}");
        let e = parse(serde_json::json!({"project_id": "p"}), &[(TOKEN_ENV, "t")])
            .expect_err("refused");
        assert!(e.contains("not a UUID"), "{e}");
        let e = parse(
            serde_json::json!({"project_id": PROJECT, "metr": "da"}),
            &[(TOKEN_ENV, "t")],
        )
        .expect_err("refused");
        assert!(e.contains("no setting `metr`"), "{e}");
        let e = parse(
            serde_json::json!({"project_id": PROJECT, "provision_timeout": "soon"}),
            &[(TOKEN_ENV, "t")],
        )
        .expect_err("refused");
        assert!(e.contains("not a duration"), "{e}");
    }
}
