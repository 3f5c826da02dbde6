//! The `[provider.ec2]` settings: parsing, defaults and checks, each error naming the
//! setting and saying what to write instead. Pure: touches no network and no disk.

use std::time::Duration;

use clusterform_provider::{ProviderConfig, ProviderError};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The AWS account that publishes the official Flatcar AMIs.
pub const FLATCAR_AMI_OWNER: &str = "075585003325";

/// Settings of `[provider.ec2]` in `cluster.toml`. Credentials are never read from here:
/// they come from the AWS default chain (environment, profile, SSO, IMDS).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2Settings {
    /// The region; default: the AWS chain (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// An AWS profile of `~/.aws/config` to take credentials and region from.
    pub profile: Option<String>,
    /// The EC2 endpoint URL, for an emulator (moto); default: the region's endpoint.
    pub endpoint: Option<String>,
    /// A fixed AMI id instead of looking the newest Flatcar AMI up by channel.
    pub ami: Option<String>,
    /// The account whose AMIs the lookup considers (`self` for your own).
    pub ami_owner: String,
    /// `x86_64` or `arm64`: the AMI architecture to look for (must fit the sizes).
    pub architecture: String,
    /// An existing EC2 key pair to launch instances with (Flatcar takes SSH keys from
    /// Ignition; this is for console access tools that need one).
    pub key_pair: Option<String>,
    /// Size of each instance's root volume in GiB; default: the AMI's.
    pub root_volume_gb: Option<u32>,
    /// CIDRs allowed to reach SSH (tcp/22) on every machine; default: none.
    pub ssh_cidrs: Vec<String>,
    /// CIDRs allowed to reach the Docker API (tcp/2375) of `dev` machines (blueprint
    /// `dev-vm`); default: none (use an SSH tunnel).
    pub docker_cidrs: Vec<String>,
    /// Give instances a public IPv4 address (subnets map one on launch).
    pub public_ip: bool,
    /// How often to look at instances being launched, stopped or terminated.
    pub poll_interval_ms: u64,
    /// How long to wait for an instance to be running (or stopped, or terminated).
    pub wait_timeout_s: u64,
    /// How long to keep retrying a teardown step EC2 refuses with `DependencyViolation`.
    pub teardown_timeout_s: u64,
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Ec2Settings {
            region: None,
            profile: None,
            endpoint: None,
            ami: None,
            ami_owner: FLATCAR_AMI_OWNER.to_string(),
            architecture: "x86_64".to_string(),
            key_pair: None,
            root_volume_gb: None,
            ssh_cidrs: Vec::new(),
            docker_cidrs: Vec::new(),
            public_ip: true,
            poll_interval_ms: 2000,
            wait_timeout_s: 600,
            teardown_timeout_s: 600,
        }
    }
}

fn config_error(msg: String) -> ProviderError {
    ProviderError::Config(msg)
}

impl Ec2Settings {
    /// Parse and check the settings of a `[provider.ec2]` table.
    pub fn from_provider_config(config: &ProviderConfig) -> Result<Ec2Settings, ProviderError> {
        for key in [
            "access_key",
            "access_key_id",
            "secret_key",
            "secret_access_key",
            "session_token",
        ] {
            if config.contains_key(key) {
                return Err(config_error(format!(
                    "`{key}` does not belong in the cluster file: remove it; credentials come from the AWS default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or `profile`, SSO, instance metadata)"
                )));
            }
        }
        let map: serde_json::Map<String, serde_json::Value> =
            config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let s: Ec2Settings = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| config_error(format!("{e}; see docs/CONFIG.md, `[provider.ec2]`")))?;
        s.check()?;
        Ok(s)
    }

    /// True when `endpoint` is an emulator on this machine (a loopback host: moto):
    /// its instances never boot, so nothing on them (etcd) is ever called.
    pub fn is_local_emulator(&self) -> bool {
        let Some(e) = &self.endpoint else {
            return false;
        };
        let rest = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"))
            .unwrap_or(e);
        let host_port = rest.split('/').next().unwrap_or_default();
        let host = match host_port.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
        };
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Check values serde accepts but EC2 would not.
    pub fn check(&self) -> Result<(), ProviderError> {
        if let Some(r) = &self.region
            && !valid_region(r)
        {
            return Err(config_error(format!(
                "`region` = \"{r}\" is not an AWS region name: write one like \"eu-west-1\""
            )));
        }
        if let Some(p) = &self.profile
            && p.trim().is_empty()
        {
            return Err(config_error(
                "`profile` is empty: name a profile of ~/.aws/config, or remove the key".into(),
            ));
        }
        if let Some(e) = &self.endpoint {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(config_error(format!(
                    "`endpoint` = \"{e}\" is not an http(s) URL: write one like \"http://127.0.0.1:5000\" (an emulator), or remove it to use AWS"
                )));
            }
        }
        if let Some(a) = &self.ami
            && !(a.starts_with("ami-")
                && a.len() > 4
                && a[4..].chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(config_error(format!(
                "`ami` = \"{a}\" is not an AMI id: write one like \"ami-0123456789abcdef0\", or remove it to use the newest Flatcar AMI of the channel"
            )));
        }
        let owner = &self.ami_owner;
        if !(owner == "self"
            || owner == "amazon"
            || (owner.len() == 12 && owner.chars().all(|c| c.is_ascii_digit())))
        {
            return Err(config_error(format!(
                "`ami_owner` = \"{owner}\" is not an AWS account id: write 12 digits (Flatcar's is \"{FLATCAR_AMI_OWNER}\", the default), \"self\" or \"amazon\""
            )));
        }
        if !matches!(self.architecture.as_str(), "x86_64" | "arm64") {
            return Err(config_error(format!(
                "`architecture` = \"{}\" is not one of \"x86_64\", \"arm64\"",
                self.architecture
            )));
        }
        if let Some(k) = &self.key_pair
            && k.trim().is_empty()
        {
            return Err(config_error(
                "`key_pair` is empty: name an EC2 key pair of the region, or remove the key".into(),
            ));
        }
        if let Some(g) = self.root_volume_gb
            && !(1..=16384).contains(&g)
        {
            return Err(config_error(format!(
                "`root_volume_gb` = {g} is outside what EBS allows: give 1 to 16384 (GiB), or remove it to keep the AMI's size"
            )));
        }
        for (key, list) in [
            ("ssh_cidrs", &self.ssh_cidrs),
            ("docker_cidrs", &self.docker_cidrs),
        ] {
            for c in list {
                if c.parse::<Ipv4Net>().is_err() {
                    return Err(config_error(format!(
                        "`{key}` entry \"{c}\" is not an IPv4 CIDR: write one like \"203.0.113.0/24\" (one address: \"203.0.113.7/32\")"
                    )));
                }
            }
        }
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return Err(config_error(format!(
                "`poll_interval_ms` = {} must be 1 to 60000",
                self.poll_interval_ms
            )));
        }
        for (key, v) in [
            ("wait_timeout_s", self.wait_timeout_s),
            ("teardown_timeout_s", self.teardown_timeout_s),
        ] {
            if v == 0 || v > 86_400 {
                return Err(config_error(format!(
                    "`{key}` = {v} must be 1 to 86400 (seconds)"
                )));
            }
        }
        Ok(())
    }

    /// [`Ec2Settings::poll_interval_ms`] as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// [`Ec2Settings::wait_timeout_s`] as a duration.
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_secs(self.wait_timeout_s)
    }

    /// [`Ec2Settings::teardown_timeout_s`] as a duration.
    pub fn teardown_timeout(&self) -> Duration {
        Duration::from_secs(self.teardown_timeout_s)
    }

    /// The CIDRs as parsed networks (checked in [`Ec2Settings::check`]).
    pub(crate) fn cidrs(list: &[String]) -> Vec<String> {
        list.iter()
            .filter_map(|c| c.parse::<Ipv4Net>().ok())
            .map(|n| n.to_string())
            .collect()
    }
}

/// `xx-name-N` or `xx-name-name-N` (e.g. `eu-west-1`, `us-gov-west-1`, `ap-southeast-4`).
fn valid_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<Ec2Settings, ProviderError> {
        let cfg: ProviderConfig = serde_json::from_value(v).expect("a table");
        Ec2Settings::from_provider_config(&cfg)
    }

    fn message(v: serde_json::Value) -> String {
        match parse(v.clone()) {
            Err(ProviderError::Config(m)) => m,
            other => panic!("{v}: expected a settings error, got {other:?}"),
        }
    }

    #[test]
    fn a_loopback_endpoint_is_an_emulator() {
        let with = |e: Option<&str>| Ec2Settings {
            endpoint: e.map(str::to_string),
            ..Ec2Settings::default()
        };
        for e in [
            "http://127.0.0.1:5000",
            "http://localhost:5000/",
            "https://[::1]:443",
            "http://127.9.9.9",
        ] {
            assert!(with(Some(e)).is_local_emulator(), "{e}");
        }
        for e in [
            Some("https://ec2.eu-west-1.amazonaws.com"),
            Some("http://10.0.0.5:5000"),
            None,
        ] {
            assert!(!with(e).is_local_emulator(), "{e:?}");
        }
    }

    #[test]
    fn defaults_are_flatcar_and_closed_ports() {
        let s = parse(serde_json::json!({})).expect("empty table is fine");
        assert_eq!(s.ami_owner, "075585003325");
        assert_eq!(s.architecture, "x86_64");
        assert!(s.ssh_cidrs.is_empty() && s.docker_cidrs.is_empty());
        assert!(s.public_ip);
        assert_eq!(s.region, None);
    }

    #[test]
    fn accepts_every_documented_key() {
        let s = parse(serde_json::json!({
            "region": "eu-west-1", "profile": "dev", "endpoint": "http://127.0.0.1:5000",
            "ami": "ami-0123456789abcdef0", "ami_owner": "self", "architecture": "arm64",
            "key_pair": "me", "root_volume_gb": 20, "ssh_cidrs": ["203.0.113.0/24"],
            "docker_cidrs": ["10.1.0.0/16"], "public_ip": false, "poll_interval_ms": 100,
            "wait_timeout_s": 60, "teardown_timeout_s": 30
        }))
        .expect("valid");
        assert_eq!(s.root_volume_gb, Some(20));
        assert_eq!(s.poll_interval(), Duration::from_millis(100));
        assert!(!s.public_ip);
    }

    #[test]
    fn errors_name_the_setting_and_say_what_to_do() {
        let cases = [
            (
                serde_json::json!({"regoin": "eu-west-1"}),
                "unknown field `regoin`",
            ),
            (
                serde_json::json!({"region": "Ireland"}),
                "`region` = \"Ireland\"",
            ),
            (serde_json::json!({"region": 3}), "invalid type"),
            (
                serde_json::json!({"endpoint": "127.0.0.1:5000"}),
                "`endpoint`",
            ),
            (serde_json::json!({"ami": "flatcar"}), "`ami` = \"flatcar\""),
            (serde_json::json!({"ami_owner": "flatcar"}), "`ami_owner`"),
            (
                serde_json::json!({"architecture": "aarch64"}),
                "`architecture`",
            ),
            (
                serde_json::json!({"root_volume_gb": 0}),
                "`root_volume_gb` = 0",
            ),
            (
                serde_json::json!({"ssh_cidrs": ["0.0.0.0"]}),
                "`ssh_cidrs` entry \"0.0.0.0\"",
            ),
            (
                serde_json::json!({"docker_cidrs": ["any"]}),
                "`docker_cidrs` entry",
            ),
            (
                serde_json::json!({"poll_interval_ms": 0}),
                "`poll_interval_ms`",
            ),
            (serde_json::json!({"wait_timeout_s": 0}), "`wait_timeout_s`"),
            (serde_json::json!({"key_pair": " "}), "`key_pair` is empty"),
        ];
        for (v, want) in cases {
            let m = message(v.clone());
            assert!(m.contains(want), "{v}: {m}");
        }
    }

    #[test]
    fn credentials_in_the_file_are_refused_without_echoing_them() {
        let m = message(serde_json::json!({"secret_access_key": "CANARY-SECRET"}));
        assert!(m.contains("`secret_access_key` does not belong"), "{m}");
        assert!(!m.contains("CANARY-SECRET"), "{m}");
    }

    #[test]
    fn region_names() {
        for ok in ["eu-west-1", "us-gov-west-1", "ap-southeast-4", "us-east-2"] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in ["", "eu", "eu-west", "EU-west-1", "eu-west-1a", "eu--1"] {
            assert!(!valid_region(bad), "{bad}");
        }
    }
}
