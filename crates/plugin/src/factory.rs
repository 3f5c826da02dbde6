//! A plugin as a registry entry: started and shaken hands with when it is found (its
//! name, version and schema come from the handshake), then configured with its settings
//! when the provider is built. The process started for the handshake is the one used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterform_core::ProviderSchema;
use clusterform_provider::{Origin, Provider, ProviderConfig, ProviderFactory};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Client, Failure, PluginError, with_note};
use crate::protocol::Hello;
use crate::{HOST_SETTINGS, PROTOCOL_VERSION, PluginProvider};

/// How long one call may take unless `call_timeout` says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a plugin may take to answer the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A plugin found and shaken hands with.
pub struct PluginFactory {
    hello: Hello,
    path: PathBuf,
    /// The process started for the handshake, until a build takes it.
    client: Mutex<Option<Client>>,
}

impl PluginFactory {
    /// Start the plugin at `path` for the provider `name` and shake hands: its protocol
    /// version must be this build's and its name `name`.
    pub fn start(name: &str, path: &Path) -> Result<PluginFactory, PluginError> {
        let (client, hello) = handshake(Some(name), path)?;
        Ok(PluginFactory {
            hello,
            path: path.to_path_buf(),
            client: Mutex::new(Some(client)),
        })
    }

    /// Start the plugin at `path` and shake hands, whatever its name (`providers check`).
    pub fn probe(path: &Path) -> Result<PluginFactory, PluginError> {
        let (client, hello) = handshake(None, path)?;
        Ok(PluginFactory {
            hello,
            path: path.to_path_buf(),
            client: Mutex::new(Some(client)),
        })
    }

    /// What the plugin said in its handshake.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }
}

/// Start and shake hands.
fn handshake(expected: Option<&str>, path: &Path) -> Result<(Client, Hello), PluginError> {
    let guess = path
        .file_name()
        .and_then(|f| f.to_str())
        .map(|f| f.strip_prefix(crate::discover::PREFIX).unwrap_or(f))
        .unwrap_or("?");
    let name = expected.unwrap_or(guess);
    let client = Client::start(name, path)?;
    let label = format!("plugin `{name}` ({})", path.display());
    let params =
        json!({"protocol": PROTOCOL_VERSION, "clusterform_version": env!("CARGO_PKG_VERSION")});
    let result = client
        .call_blocking("handshake", params, HANDSHAKE_TIMEOUT)
        .map_err(|f| match f {
            Failure::Answer(e) => {
                PluginError(format!("{label} refused the handshake: {}", e.message))
            }
            Failure::Broken(m) | Failure::NotSent(m) => {
                PluginError(with_note(&m, " during the handshake, before any call"))
            }
        })?;
    let fail = |what: String| {
        client.kill("did not pass the handshake");
        Err(PluginError(format!("{label} {what}")))
    };
    if let Some(p) = result.get("protocol").and_then(Value::as_u64)
        && p != u64::from(PROTOCOL_VERSION)
    {
        return fail(format!(
            "speaks plugin protocol {p}; this clusterform speaks protocol {PROTOCOL_VERSION}: install a version of the plugin for protocol {PROTOCOL_VERSION} (docs/plugin-protocol.md)"
        ));
    }
    let hello = match Hello::deserialize(&result) {
        Ok(h) => h,
        Err(e) => {
            return fail(format!(
                "answered the handshake with something that is not a handshake result ({e}); see docs/plugin-protocol.md"
            ));
        }
    };
    let name = expected.unwrap_or(&hello.name);
    if hello.name != name {
        return fail(format!(
            "says it is provider `{}`, but the cluster file uses it as `{name}`: name the table `[provider.{}]`, or use the right plugin",
            hello.name, hello.name
        ));
    }
    if hello.schema.provider != name {
        return fail(format!(
            "sent the schema of provider `{}` in its handshake; it must be `{name}`'s",
            hello.schema.provider
        ));
    }
    if hello.schema.kinds.is_empty() {
        return fail("has no resource kinds in its schema".to_string());
    }
    let sensitive: BTreeSet<String> = hello
        .schema
        .kinds
        .iter()
        .flat_map(|k| {
            k.attrs
                .iter()
                .filter(|a| a.sensitive)
                .map(|a| a.name.clone())
        })
        .collect();
    client.set_limits(hello.concurrency, sensitive);
    Ok((client, hello))
}

/// The per-call timeout after `configure`: `call_timeout` when the table sets it, else
/// the default raised to what the plugin said its calls may take (`call_timeout_ms`).
fn effective_timeout(settings: &ProviderConfig, configured: &Value, timeout: Duration) -> Duration {
    match configured.get("call_timeout_ms").and_then(Value::as_u64) {
        Some(ms) if !settings.contains_key("call_timeout") => {
            timeout.max(Duration::from_millis(ms))
        }
        _ => timeout,
    }
}

/// `call_timeout` from the settings.
fn call_timeout(settings: &ProviderConfig) -> Result<Duration, String> {
    match settings.get("call_timeout") {
        None => Ok(DEFAULT_CALL_TIMEOUT),
        Some(Value::String(s)) => humantime::parse_duration(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("`call_timeout` = {s:?} is not a duration; write e.g. \"90s\" or \"10m\"")
            }),
        Some(other) => Err(format!(
            "`call_timeout` must be a duration in a string, e.g. \"90s\", not {other}"
        )),
    }
}

impl ProviderFactory for PluginFactory {
    fn name(&self) -> &str {
        &self.hello.name
    }
    fn version(&self) -> &str {
        &self.hello.version
    }
    fn origin(&self) -> Origin {
        Origin::Plugin(self.path.clone())
    }
    fn schema(&self) -> &ProviderSchema {
        &self.hello.schema
    }
    fn build(
        &self,
        settings: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<Arc<dyn Provider>, String> {
        self.build_plugin(settings, base_dir)
            .map(|p| Arc::new(p) as Arc<dyn Provider>)
    }
}

impl PluginFactory {
    /// Configure the plugin with its settings (the process of the handshake, or a new one
    /// when that one was used).
    pub fn build_plugin(
        &self,
        settings: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<PluginProvider, String> {
        let timeout = call_timeout(settings)?;
        let taken = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let client = match taken {
            Some(c) if c.dead().is_none() => c,
            _ => {
                handshake(Some(&self.hello.name), &self.path)
                    .map_err(|e| e.0)?
                    .0
            }
        };
        client.set_timeout(timeout);
        let plugin_settings: serde_json::Map<String, Value> = settings
            .iter()
            .filter(|(k, _)| !HOST_SETTINGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let configured = client
            .call_blocking(
                "configure",
                json!({"settings": plugin_settings, "base_dir": base_dir}),
                timeout,
            )
            .map_err(|f| match f {
                Failure::Answer(e) => format!("plugin: {}", e.message),
                Failure::Broken(m) | Failure::NotSent(m) => m,
            })?;
        // A configuration may say that its machines boot nothing (an emulator's API).
        let mut hello = self.hello.clone();
        if let Some(runs) = configured.get("runs_machines").and_then(Value::as_bool) {
            hello.runs_machines = runs;
        }
        // ... and how long its calls may take (a bare-metal create waits for the machine):
        // the per-call timeout is at least that, unless `call_timeout` was set.
        client.set_timeout(effective_timeout(settings, &configured, timeout));
        Ok(PluginProvider::new(client, hello))
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn a_plugin_may_raise_the_default_timeout_but_never_a_setting() {
        let default = DEFAULT_CALL_TIMEOUT;
        let none = ProviderConfig::new();
        let long = serde_json::json!({"call_timeout_ms": 2_000_000});
        let short = serde_json::json!({"call_timeout_ms": 1_000});
        assert_eq!(
            effective_timeout(&none, &long, default),
            Duration::from_secs(2000)
        );
        assert_eq!(effective_timeout(&none, &short, default), default);
        assert_eq!(
            effective_timeout(&none, &serde_json::json!({}), default),
            default
        );
        let set = ProviderConfig::from([("call_timeout".to_string(), serde_json::json!("90s"))]);
        let ninety = Duration::from_secs(90);
        assert_eq!(effective_timeout(&set, &long, ninety), ninety);
    }
}
