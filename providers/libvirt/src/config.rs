//! The `[provider.libvirt]` settings: parsing with an error that names the setting and
//! says what to do, defaults, and which connection URI is used.

use std::path::{Path, PathBuf};

use clusterform_provider::{ProviderConfig, ProviderError};
use serde_json::Value;

/// The URI used when neither `uri` nor `LIBVIRT_DEFAULT_URI` is set.
pub const DEFAULT_URI: &str = "qemu:///system";

/// Where pools are made when `pool_dir` is not set.
pub const DEFAULT_POOL_DIR: &str = "/var/lib/libvirt/images";

/// Where Ignition files and console logs go when `ignition_dir` is not set.
pub const DEFAULT_IGNITION_DIR: &str = "/var/lib/libvirt/clusterform";

/// How the cluster network reaches the outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// NAT through the host (libvirt's default network does this).
    Nat,
    /// Routed, no NAT.
    Route,
    /// Forwarded without any firewall rules from libvirt.
    Open,
    /// Isolated: no `<forward>`.
    None,
}

impl Forward {
    /// Its name in the settings and the `forward` attribute.
    pub fn name(self) -> &'static str {
        match self {
            Forward::Nat => "nat",
            Forward::Route => "route",
            Forward::Open => "open",
            Forward::None => "none",
        }
    }

    /// Parse a setting value.
    pub fn parse(s: &str) -> Option<Forward> {
        Some(match s {
            "nat" => Forward::Nat,
            "route" => Forward::Route,
            "open" => Forward::Open,
            "none" => Forward::None,
            _ => return None,
        })
    }
}

/// How the Ignition config reaches the guest's fw_cfg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfg {
    /// `<sysinfo type='fwcfg'>` (libvirt 6.5+).
    Sysinfo,
    /// `<qemu:commandline>` `-fw_cfg name=...,file=...` (older libvirt; taints the domain).
    Commandline,
}

/// The image the machines boot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// A file on this host.
    Path(PathBuf),
    /// Downloaded once into the cache.
    Url(String),
}

/// Settings of `[provider.libvirt]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LibvirtConfig {
    /// The connection URI as given (None: environment, then the default).
    pub uri: Option<String>,
    /// The Flatcar QEMU image as written in the settings.
    pub image: String,
    /// Where it is.
    pub image_source: ImageSource,
    /// Its SHA-256, hex, when given.
    pub image_sha256: Option<String>,
    /// Where downloads are kept.
    pub image_cache: PathBuf,
    /// Parent folder of each network's storage pool (`<pool_dir>/<network name>`).
    pub pool_dir: PathBuf,
    /// Parent folder of each cluster's Ignition files and console logs.
    pub ignition_dir: PathBuf,
    /// Forward mode of the networks.
    pub forward: Forward,
    /// Start networks, pools and domains when the host boots.
    pub autostart: bool,
    /// How Ignition is handed to QEMU.
    pub fw_cfg: FwCfg,
    /// `kvm` or `qemu` (software emulation).
    pub domain_type: String,
    /// Size of each machine's disk in GiB (None: the image's size).
    pub disk_gb: Option<u64>,
    /// How long a graceful shutdown may take before the domain is powered off (resize, stop).
    pub shutdown_timeout_s: u64,
}

/// The settings and what each means, for "expected one of" messages.
pub const KEYS: &[&str] = &[
    "uri",
    "image",
    "image_sha256",
    "image_cache",
    "pool_dir",
    "ignition_dir",
    "forward",
    "autostart",
    "fw_cfg",
    "domain_type",
    "disk_gb",
    "shutdown_timeout_s",
];

fn err(key: &str, msg: impl std::fmt::Display) -> ProviderError {
    ProviderError::Config(format!("`{key}` {msg}"))
}

fn string<'a>(key: &str, v: &'a Value, what: &str) -> Result<&'a str, ProviderError> {
    v.as_str()
        .ok_or_else(|| err(key, format!("must be a string: {what}")))
}

fn path(key: &str, v: &Value, base_dir: &Path, what: &str) -> Result<PathBuf, ProviderError> {
    let s = string(key, v, what)?;
    if s.is_empty() {
        return Err(err(key, format!("is empty: {what}")));
    }
    Ok(resolve(base_dir, s))
}

/// A path relative to the cluster file's folder; `~/` is the home folder.
fn resolve(base_dir: &Path, s: &str) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
    {
        return PathBuf::from(home).join(rest);
    }
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

/// True for `http://` URLs on this machine (tests serve images from loopback).
fn loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', ':']).next().unwrap_or("");
    matches!(host, "127.0.0.1" | "localhost" | "[")
        || rest.starts_with("[::1]")
        || host.starts_with("127.")
}

fn default_cache() -> PathBuf {
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return d.join("clusterform/images");
    }
    if let Some(h) = var("HOME") {
        return h.join(".cache/clusterform/images");
    }
    PathBuf::from("/var/cache/clusterform/images")
}

impl LibvirtConfig {
    /// Parse and check `[provider.libvirt]`; `base_dir` is the cluster file's folder
    /// (relative paths are relative to it). Touches neither disk nor libvirt.
    pub fn from_provider_config(
        config: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<LibvirtConfig, ProviderError> {
        for k in config.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(ProviderError::Config(format!(
                    "unknown setting `{k}`; expected one of {}",
                    KEYS.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let get = |k: &str| config.get(k);
        let uri = match get("uri") {
            Some(v) => {
                let s = string("uri", v, "a libvirt URI like `qemu:///system`")?;
                if !s.contains(':') {
                    return Err(err(
                        "uri",
                        format!(
                            "`{s}` is not a libvirt URI: write one like `qemu:///system` or `qemu+ssh://host/system`"
                        ),
                    ));
                }
                Some(s.to_string())
            }
            None => None,
        };
        let image_what =
            "the path or https URL of the Flatcar QEMU image (flatcar_production_qemu_image.img)";
        let image = match get("image") {
            Some(v) => string("image", v, image_what)?.to_string(),
            None => {
                return Err(ProviderError::Config(format!(
                    "`image` is missing: set it to {image_what}"
                )));
            }
        };
        let image_source = if image.starts_with("https://") || loopback_http(&image) {
            ImageSource::Url(image.clone())
        } else if image.contains("://") {
            return Err(err(
                "image",
                format!("`{image}`: only https URLs (or local paths) are accepted"),
            ));
        } else if image.is_empty() {
            return Err(err("image", format!("is empty: set it to {image_what}")));
        } else {
            ImageSource::Path(resolve(base_dir, &image))
        };
        let image_sha256 = match get("image_sha256") {
            Some(v) => {
                let s = string("image_sha256", v, "the image's SHA-256 as 64 hex digits")?;
                if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(err(
                        "image_sha256",
                        format!("`{s}` is not a SHA-256: give 64 hex digits (sha256sum's output)"),
                    ));
                }
                Some(s.to_ascii_lowercase())
            }
            None => None,
        };
        let image_cache = match get("image_cache") {
            Some(v) => path("image_cache", v, base_dir, "a folder for downloaded images")?,
            None => default_cache(),
        };
        let pool_dir = match get("pool_dir") {
            Some(v) => path(
                "pool_dir",
                v,
                base_dir,
                "the folder in which each network's storage pool folder is made",
            )?,
            None => PathBuf::from(DEFAULT_POOL_DIR),
        };
        let ignition_dir = match get("ignition_dir") {
            Some(v) => path(
                "ignition_dir",
                v,
                base_dir,
                "a folder QEMU can read, for Ignition files and console logs",
            )?,
            None => PathBuf::from(DEFAULT_IGNITION_DIR),
        };
        let forward = match get("forward") {
            Some(v) => {
                let s = string("forward", v, "`nat`, `route`, `open` or `none`")?;
                Forward::parse(s).ok_or_else(|| {
                    err(
                        "forward",
                        format!("`{s}` is not a forward mode: use `nat` (default), `route`, `open` or `none` (isolated)"),
                    )
                })?
            }
            None => Forward::Nat,
        };
        let autostart = match get("autostart") {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| err("autostart", "must be `true` or `false`"))?,
            None => false,
        };
        let fw_cfg = match get("fw_cfg") {
            Some(v) => match string("fw_cfg", v, "`sysinfo` or `commandline`")? {
                "sysinfo" => FwCfg::Sysinfo,
                "commandline" => FwCfg::Commandline,
                other => {
                    return Err(err(
                        "fw_cfg",
                        format!(
                            "`{other}` is not a delivery form: use `sysinfo` (libvirt 6.5 and newer, default) or `commandline` (older libvirt)"
                        ),
                    ));
                }
            },
            None => FwCfg::Sysinfo,
        };
        let domain_type = match get("domain_type") {
            Some(v) => match string("domain_type", v, "`kvm` or `qemu`")? {
                t @ ("kvm" | "qemu") => t.to_string(),
                other => {
                    return Err(err(
                        "domain_type",
                        format!(
                            "`{other}` is not supported: use `kvm` (default) or `qemu` (software emulation, for hosts without /dev/kvm)"
                        ),
                    ));
                }
            },
            None => "kvm".to_string(),
        };
        let disk_gb = match get("disk_gb") {
            Some(v) => match v.as_u64() {
                Some(n) if (1..=65536).contains(&n) => Some(n),
                _ => {
                    return Err(err(
                        "disk_gb",
                        "must be a whole number of GiB from 1 to 65536 (leave it out to use the image's size)",
                    ));
                }
            },
            None => None,
        };
        let shutdown_timeout_s = match get("shutdown_timeout_s") {
            Some(v) => v.as_u64().filter(|n| *n <= 3600).ok_or_else(|| {
                err(
                    "shutdown_timeout_s",
                    "must be a whole number of seconds from 0 to 3600",
                )
            })?,
            None => 60,
        };
        Ok(LibvirtConfig {
            uri,
            image,
            image_source,
            image_sha256,
            image_cache,
            pool_dir,
            ignition_dir,
            forward,
            autostart,
            fw_cfg,
            domain_type,
            disk_gb,
            shutdown_timeout_s,
        })
    }

    /// The URI to connect to: `uri`, else `$LIBVIRT_DEFAULT_URI`, else `qemu:///system`.
    pub fn resolved_uri(&self) -> String {
        resolve_uri(
            self.uri.as_deref(),
            std::env::var("LIBVIRT_DEFAULT_URI").ok(),
        )
    }
}

/// [`LibvirtConfig::resolved_uri`] with the environment given.
pub(crate) fn resolve_uri(configured: Option<&str>, env: Option<String>) -> String {
    if let Some(u) = configured {
        return u.to_string();
    }
    env.filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URI.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> ProviderConfig {
        serde_json::from_value(v).expect("a table")
    }

    fn parse(v: serde_json::Value) -> Result<LibvirtConfig, ProviderError> {
        LibvirtConfig::from_provider_config(&cfg(v), Path::new("/clusters/dev"))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(serde_json::json!({"image": "flatcar.img"})).expect("valid");
        assert_eq!(
            c.image_source,
            ImageSource::Path(PathBuf::from("/clusters/dev/flatcar.img"))
        );
        assert_eq!(c.forward, Forward::Nat);
        assert_eq!(c.fw_cfg, FwCfg::Sysinfo);
        assert_eq!(c.domain_type, "kvm");
        assert_eq!(c.pool_dir, PathBuf::from(DEFAULT_POOL_DIR));
        assert!(!c.autostart);
        let c = parse(serde_json::json!({
            "uri": "test:///default", "image": "https://example.org/f.img",
            "image_sha256": "AB".repeat(32), "forward": "open", "fw_cfg": "commandline",
            "domain_type": "qemu", "disk_gb": 20, "autostart": true, "pool_dir": "pools",
            "ignition_dir": "/ign", "image_cache": "cache", "shutdown_timeout_s": 5
        }))
        .expect("valid");
        assert_eq!(
            c.image_source,
            ImageSource::Url("https://example.org/f.img".into())
        );
        assert_eq!(c.image_sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(c.pool_dir, PathBuf::from("/clusters/dev/pools"));
        assert_eq!(c.forward, Forward::Open);
        assert_eq!(c.disk_gb, Some(20));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        for (v, key) in [
            (serde_json::json!({}), "`image` is missing"),
            (
                serde_json::json!({"image": "a", "forward": "bridge"}),
                "`forward`",
            ),
            (
                serde_json::json!({"image": "a", "fw_cfg": "smbios"}),
                "`fw_cfg`",
            ),
            (serde_json::json!({"image": "a", "uri": "system"}), "`uri`"),
            (
                serde_json::json!({"image": "a", "image_sha256": "abc"}),
                "`image_sha256`",
            ),
            (serde_json::json!({"image": "a", "disk_gb": 0}), "`disk_gb`"),
            (
                serde_json::json!({"image": "a", "domain_type": "xen"}),
                "`domain_type`",
            ),
            (
                serde_json::json!({"image": "a", "autostart": "yes"}),
                "`autostart`",
            ),
            (serde_json::json!({"image": "ftp://x/y.img"}), "`image`"),
            (
                serde_json::json!({"image": "http://example.org/y.img"}),
                "`image`",
            ),
            (
                serde_json::json!({"image": "a", "pool": "x"}),
                "unknown setting `pool`",
            ),
        ] {
            match parse(v.clone()) {
                Err(ProviderError::Config(m)) => assert!(m.contains(key), "{v}: {m}"),
                other => panic!("{v}: {other:?}"),
            }
        }
        let ok = parse(serde_json::json!({"image": "http://127.0.0.1:8080/f.img"}));
        assert!(ok.is_ok(), "loopback http is allowed for tests");
    }

    #[test]
    fn uri_precedence() {
        assert_eq!(
            resolve_uri(Some("test:///x"), Some("qemu:///session".into())),
            "test:///x"
        );
        assert_eq!(
            resolve_uri(None, Some("qemu:///session".into())),
            "qemu:///session"
        );
        assert_eq!(resolve_uri(None, Some(String::new())), DEFAULT_URI);
        assert_eq!(resolve_uri(None, None), DEFAULT_URI);
    }
}
