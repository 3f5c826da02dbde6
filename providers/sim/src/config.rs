//! The `[provider.sim]` settings and where the sim cloud's folder is.

use std::path::{Path, PathBuf};

use clusterform_provider::{ProviderConfig, ProviderError};
use serde::{Deserialize, Serialize};

/// Environment variable naming the sim cloud's folder (after `dir` in the config).
pub const DIR_ENV: &str = "CLUSTERFORM_SIM_DIR";

/// Settings of `[provider.sim]` in `cluster.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The folder holding the cloud (`cloud.db`); relative to the cluster file's folder.
    pub dir: Option<PathBuf>,
    /// Sleep this long on every API call (not per object).
    pub latency_ms: u64,
    /// Add a random 0..=jitter_ms to each call's sleep.
    pub jitter_ms: u64,
    /// Allow at most this many calls per second in this process (token bucket); calls
    /// over the rate fail with a transient `RequestLimitExceeded`.
    pub rate_per_s: Option<f64>,
    /// Probability (0.0 to 1.0) that a call fails with a transient
    /// `InternalError (injected)` before doing anything.
    pub fail_rate: f64,
    /// Seed of the random numbers used for `fail_rate` and `jitter_ms` (default: random).
    pub seed: Option<u64>,
    /// Addresses (`machine.workers[2]`) whose create, update and delete fail permanently.
    pub fail_on: Vec<String>,
    /// Machines (`machine.workers[2]`) that are made but do not come up: the create
    /// answers that its outcome is unknown (as a cloud whose instance never reached
    /// `running`), the machine stays, and its boot log shows Ignition failing.
    pub boot_fail_on: Vec<String>,
    /// Live mode (default false): a machine whose rendered Ignition config (`user_data`)
    /// runs an etcd member (`etcd-member.service`) or the etcd gRPC proxy
    /// (`etcd-grpc-proxy.service`) really runs it, with the local `etcd` binary, in a
    /// network namespace of its own wired to one bridge per network in the namespace
    /// clusterform runs in, so that the members' client URLs answer from there. The
    /// processes belong to the sim cloud: they outlive clusterform and stop when their
    /// machine is deleted. Needs root, `ip` (iproute2) and etcd (`etcd-server`); best
    /// run in a network namespace of its own (`ip netns add hub; ip netns exec hub
    /// clusterform apply`).
    pub live: bool,
    /// The etcd program live mode runs (default: `etcd` found on PATH). A bare name is
    /// looked up on PATH; a relative path is relative to the cluster file's folder.
    pub etcd_binary: Option<PathBuf>,
}

impl SimConfig {
    /// Parse and check the settings; errors carry serde's message (naming the key).
    pub fn from_provider_config(config: &ProviderConfig) -> Result<SimConfig, ProviderError> {
        let map: serde_json::Map<String, serde_json::Value> =
            config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let c: SimConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Check values serde accepts but the sim does not (ranges, addresses).
    pub(crate) fn check(&self) -> Result<(), ProviderError> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(ProviderError::Config(format!(
                "`fail_rate` must be between 0.0 and 1.0, not {}",
                self.fail_rate
            )));
        }
        if let Some(r) = self.rate_per_s
            && !(r.is_finite() && r > 0.0)
        {
            return Err(ProviderError::Config(format!(
                "`rate_per_s` must be a positive number of calls per second, not {r}"
            )));
        }
        for (key, list) in [
            ("fail_on", &self.fail_on),
            ("boot_fail_on", &self.boot_fail_on),
        ] {
            for a in list {
                if a.parse::<clusterform_core::Address>().is_err() {
                    return Err(ProviderError::Config(format!(
                        "`{key}` entry `{a}` is not an address like `machine.workers[2]`"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn non_empty(v: Option<std::ffi::OsString>) -> Option<PathBuf> {
    v.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Where the sim cloud lives: `config_dir` (relative to `base_dir`, the cluster file's
/// folder; `~/` means the home folder), else `$CLUSTERFORM_SIM_DIR`, else
/// `$XDG_DATA_HOME/clusterform/sim`, else `$HOME/.local/share/clusterform/sim`.
/// Touches no disk.
pub fn resolve_dir(config_dir: Option<&Path>, base_dir: &Path) -> Result<PathBuf, ProviderError> {
    resolve_dir_with(config_dir, base_dir, |name| std::env::var_os(name))
}

/// [`resolve_dir`] with the environment given as a lookup function.
fn resolve_dir_with(
    config_dir: Option<&Path>,
    base_dir: &Path,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, ProviderError> {
    let var = |name: &str| non_empty(env(name));
    if let Some(d) = config_dir {
        if let Ok(rest) = d.strip_prefix("~")
            && let Some(home) = var("HOME")
        {
            return Ok(home.join(rest));
        }
        return Ok(if d.is_absolute() {
            d.to_path_buf()
        } else {
            base_dir.join(d)
        });
    }
    if let Some(d) = var(DIR_ENV) {
        return Ok(d);
    }
    if let Some(d) = var("XDG_DATA_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("clusterform").join("sim"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".local/share/clusterform/sim"));
    }
    Err(ProviderError::Config(format!(
        "cannot tell where the sim cloud lives: set `dir` in [provider.sim] or {DIR_ENV}"
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::OsString;

    use super::*;

    /// The environment is process-global; these tests use a fake one instead.
    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: BTreeMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn resolve_dir_precedence() {
        let base = Path::new("/clusters/dev");
        let all = env(&[
            (DIR_ENV, "/from/env"),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/me"),
        ]);
        let r = |c: Option<&str>, e: &dyn Fn(&str) -> Option<OsString>| {
            resolve_dir_with(c.map(Path::new), base, e).expect("resolves")
        };
        assert_eq!(r(Some("sim"), &all), PathBuf::from("/clusters/dev/sim"));
        assert_eq!(
            r(Some("../shared/sim"), &all),
            PathBuf::from("/clusters/dev/../shared/sim")
        );
        assert_eq!(r(Some("/abs/sim"), &all), PathBuf::from("/abs/sim"));
        assert_eq!(r(Some("~/sim"), &all), PathBuf::from("/home/me/sim"));
        assert_eq!(r(None, &all), PathBuf::from("/from/env"));
        let no_env_dir = env(&[
            (DIR_ENV, ""),
            ("XDG_DATA_HOME", "/xdg"),
            ("HOME", "/home/me"),
        ]);
        assert_eq!(r(None, &no_env_dir), PathBuf::from("/xdg/clusterform/sim"));
        let relative_xdg = env(&[("XDG_DATA_HOME", "xdg"), ("HOME", "/home/me")]);
        assert_eq!(
            r(None, &relative_xdg),
            PathBuf::from("/home/me/.local/share/clusterform/sim")
        );
        let home_only = env(&[("HOME", "/home/me")]);
        assert_eq!(
            r(None, &home_only),
            PathBuf::from("/home/me/.local/share/clusterform/sim")
        );
        let nothing = env(&[]);
        assert!(matches!(
            resolve_dir_with(None, base, &nothing),
            Err(ProviderError::Config(m)) if m.contains(DIR_ENV)
        ));
    }

    #[test]
    fn resolve_dir_reads_the_real_environment() {
        // Whatever the environment holds, a configured absolute dir wins.
        let d = resolve_dir(Some(Path::new("/abs/sim")), Path::new("/x")).expect("resolves");
        assert_eq!(d, PathBuf::from("/abs/sim"));
    }

    #[test]
    fn rejects_bad_settings() {
        let cfg = |v: serde_json::Value| -> ProviderConfig {
            serde_json::from_value(v).expect("a table")
        };
        let e = SimConfig::from_provider_config(&cfg(serde_json::json!({"latency": 5})))
            .expect_err("unknown key");
        assert!(
            matches!(&e, ProviderError::Config(m) if m.contains("unknown field `latency`")),
            "{e}"
        );
        for bad in [
            serde_json::json!({"fail_rate": 1.5}),
            serde_json::json!({"rate_per_s": 0.0}),
            serde_json::json!({"fail_on": ["not an address"]}),
            serde_json::json!({"latency_ms": "fast"}),
        ] {
            assert!(
                matches!(
                    SimConfig::from_provider_config(&cfg(bad.clone())),
                    Err(ProviderError::Config(_))
                ),
                "{bad}"
            );
        }
        let ok = SimConfig::from_provider_config(&cfg(serde_json::json!({
            "dir": "sim", "latency_ms": 5, "jitter_ms": 2, "rate_per_s": 10.0,
            "fail_rate": 0.1, "seed": 3, "fail_on": ["machine.workers[2]"],
            "live": true, "etcd_binary": "/usr/bin/etcd"
        })))
        .expect("valid settings");
        assert_eq!(ok.latency_ms, 5);
        assert!(ok.live);
        assert_eq!(ok.etcd_binary, Some(PathBuf::from("/usr/bin/etcd")));
        assert!(!SimConfig::default().live);
        assert_eq!(ok.fail_on, vec!["machine.workers[2]".to_string()]);
    }
}
