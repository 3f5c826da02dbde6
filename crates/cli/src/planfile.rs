//! Saved plans (`plan --out FILE`, `apply FILE`): the plan, the state serial and lineage
//! it was made against, where the state is, and the provider settings (never secrets).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clusterform_core::Plan;
use clusterform_provider::ProviderConfig;
use miette::Result;
use serde::{Deserialize, Serialize};

use crate::context::StateLocation;
use crate::errors;

const FORMAT: &str = "clusterform-plan";
/// 2: a `checksum` of the rest of the file.
pub const VERSION: u32 = 2;

/// A saved plan.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanFile {
    /// Always `clusterform-plan`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// RFC 3339.
    pub created_at: String,
    /// The cluster file it was made from.
    pub cluster_file: PathBuf,
    /// The cluster file's folder (relative provider paths resolve from it).
    pub base_dir: PathBuf,
    /// Test clusters: expiry in seconds after creation.
    pub expires_after_secs: Option<u64>,
    /// Where the state is.
    pub state: StateLocation,
    /// Provider settings.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// The plan.
    pub plan: Plan,
    /// The cluster's etcd CA the plan's configs were issued from, when the state has
    /// none yet (its key sealed like every private key in this file): the apply keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<CaPems>,
    /// The salt the state passphrase was stretched with for the values sealed in this
    /// file (base64), when a passphrase sealed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_salt: Option<String>,
    /// SHA-256 (hex) of the file's JSON with this field empty: a plan file edited by
    /// hand (or damaged) no longer matches it and is refused.
    #[serde(default)]
    pub checksum: String,
}

/// A CA's certificate and key, PEM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaPems {
    /// The certificate.
    pub cert_pem: String,
    /// The key (sealed in the file).
    pub key_pem: String,
}

/// Apply `f` to every string of `v` (with its JSON pointer under `at`).
fn each_string(
    v: &mut serde_json::Value,
    at: &str,
    f: &mut dyn FnMut(&str, &mut String) -> Result<()>,
) -> Result<()> {
    use serde_json::Value;
    match v {
        Value::String(s) => f(at, s),
        Value::Array(a) => a
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, x)| each_string(x, &format!("{at}/{i}"), f)),
        Value::Object(m) => m
            .iter_mut()
            .try_for_each(|(k, x)| each_string(x, &format!("{at}/{k}"), f)),
        _ => Ok(()),
    }
}

fn any_string(v: &serde_json::Value, test: &dyn Fn(&str) -> bool) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => test(s),
        Value::Array(a) => a.iter().any(|x| any_string(x, test)),
        Value::Object(m) => m.values().any(|x| any_string(x, test)),
        _ => false,
    }
}

/// SHA-256 (hex) of `value` with its `checksum` empty.
fn checksum_of(value: &serde_json::Value) -> Result<String> {
    use sha2::Digest;
    let mut value = value.clone();
    value["checksum"] = serde_json::Value::String(String::new());
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| errors::bug(format!("cannot encode the plan: {e}")))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn seal_error(path: &Path, e: clusterform_state::seal::SealError) -> miette::Report {
    errors::hint(
        format!("plan file `{}`: {e}", path.display()),
        format!(
            "its secrets are sealed with the state's key: set {} or `[state] encryption` as when the plan was made, or make a new plan",
            clusterform_state::seal::KEY_ENV
        ),
    )
}

/// The state key of `state` for a plan file: with `salt` for a passphrase.
fn plan_key(
    path: &Path,
    state: &StateLocation,
    salt: Option<&[u8; 16]>,
    create: bool,
) -> Result<clusterform_state::seal::StateKey> {
    let (key, note) = state
        .key_source()
        .key(salt, create, clusterform_state::seal::Stretch::default())
        .map_err(|e| seal_error(path, e))?;
    if let Some(note) = note {
        errln!("note: {note}");
    }
    Ok(key)
}

impl PlanFile {
    /// A plan file for `plan`.
    pub fn new(
        plan: Plan,
        cluster_file: PathBuf,
        base_dir: PathBuf,
        expires_after_secs: Option<u64>,
        state: StateLocation,
        providers: BTreeMap<String, ProviderConfig>,
    ) -> Self {
        PlanFile {
            format: FORMAT.to_string(),
            version: VERSION,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cluster_file,
            base_dir,
            expires_after_secs,
            state,
            providers,
            plan,
            etcd_ca: None,
            seal_salt: None,
            checksum: String::new(),
        }
    }

    /// Write it atomically, readable by the owner only; values holding a private key
    /// are sealed with the state's key first.
    pub fn write(&self, path: &Path) -> Result<()> {
        use clusterform_state::seal::{StateKey, holds_private_key};
        let mut value = serde_json::to_value(self)
            .map_err(|e| errors::bug(format!("cannot encode the plan: {e}")))?;
        // Values holding private keys are sealed with the state's key, as in the state.
        if any_string(&value, &holds_private_key) {
            let passphrase = matches!(
                self.state.key_source(),
                clusterform_state::KeySource::Passphrase(_)
            );
            let salt = passphrase.then(StateKey::new_salt);
            let key = plan_key(path, &self.state, salt.as_ref(), true)?;
            each_string(&mut value, "", &mut |at, s| {
                if holds_private_key(s) {
                    *s = key
                        .seal(s.as_bytes(), at)
                        .map_err(|e| seal_error(path, e))?;
                }
                Ok(())
            })?;
            if let Some(salt) = salt {
                use base64::Engine as _;
                value["seal_salt"] = serde_json::Value::String(
                    base64::engine::general_purpose::STANDARD.encode(salt),
                );
            }
        }
        value["checksum"] = serde_json::Value::String(checksum_of(&value)?);
        let json = serde_json::to_vec_pretty(&value)
            .map_err(|e| errors::bug(format!("cannot encode the plan: {e}")))?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io = |e: std::io::Error| {
            errors::hint(
                format!("cannot write the plan file `{}`: {e}", path.display()),
                "check that its folder exists and is writable",
            )
        };
        let mut tmp = tempfile_in(dir).map_err(io)?;
        tmp.1.write_all(&json).map_err(io)?;
        tmp.1.sync_all().map_err(io)?;
        std::fs::rename(&tmp.0, path).map_err(io)?;
        Ok(())
    }

    /// Read a plan file; `Ok(None)` when `path` is not one (a cluster file).
    pub fn read(path: &Path) -> Result<Option<PlanFile>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        if start.map(|i| bytes[i]) != Some(b'{') {
            return Ok(None);
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            // serde_json's message ends with " at line L column C": say it once, in front.
            let text = e.to_string();
            let what = text.rsplit_once(" at line ").map_or(text.as_str(), |t| t.0);
            errors::hint(
                format!(
                    "`{}` is not a valid plan file: line {}, column {}: {what}",
                    path.display(),
                    e.line(),
                    e.column()
                ),
                "make a new one with `clusterform plan --out FILE`",
            )
        })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(errors::hint(
                format!(
                    "`{}` is JSON but not a clusterform plan file",
                    path.display()
                ),
                "pass a cluster.toml or a file written by `clusterform plan --out FILE`",
            ));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(VERSION) {
            return Err(errors::hint(
                format!(
                    "plan file `{}` has version {version}; this clusterform reads version {VERSION}",
                    path.display()
                ),
                "make a new plan with this clusterform",
            ));
        }
        if value.get("checksum").and_then(|c| c.as_str()) != Some(checksum_of(&value)?.as_str()) {
            return Err(errors::hint(
                format!(
                    "plan file `{}` does not match its own checksum: it was edited or damaged after `plan --out` wrote it",
                    path.display()
                ),
                "a plan file is applied exactly as it was reviewed: make a new one with `clusterform plan --out FILE`",
            ));
        }
        let mut value = value;
        if any_string(&value, &clusterform_state::seal::is_sealed) {
            let state: StateLocation =
                serde_json::from_value(value["state"].clone()).map_err(|e| {
                    errors::hint(
                        format!("`{}` is not a valid plan file: {e}", path.display()),
                        "make a new one with `clusterform plan --out FILE`",
                    )
                })?;
            let salt = value["seal_salt"].as_str().and_then(|s| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .ok()
                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
            });
            let key = plan_key(path, &state, salt.as_ref(), false)?;
            each_string(&mut value, "", &mut |at, s| {
                if clusterform_state::seal::is_sealed(s) {
                    let plain = key.open(s, at).map_err(|e| seal_error(path, e))?;
                    *s = String::from_utf8(plain).map_err(|e| {
                        errors::hint(
                            format!(
                                "plan file `{}`: a sealed value is not text: {e}",
                                path.display()
                            ),
                            "make a new plan",
                        )
                    })?;
                }
                Ok(())
            })?;
        }
        let pf: PlanFile = serde_json::from_value(value).map_err(|e| {
            errors::hint(
                format!("`{}` is not a valid plan file: {e}", path.display()),
                "make a new one with `clusterform plan --out FILE`",
            )
        })?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = pf.plan.changes.iter().find(|c| !seen.insert(&c.address)) {
            return Err(errors::hint(
                format!(
                    "plan file `{}` has `{}` twice: each address may have one change",
                    path.display(),
                    dup.address
                ),
                "make a new one with `clusterform plan --out FILE`",
            ));
        }
        Ok(Some(pf))
    }

    /// Refuse to write a plan over a file that is not a plan file (the cluster file, a
    /// Butane file, anything else the run reads or the user keeps), before planning.
    pub fn check_out(out: &Path, cluster_file: &Path) -> Result<()> {
        let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        let refuse = |what: &str| {
            errors::hint(
                format!("`plan --out {}` would overwrite {what}", out.display()),
                "give the plan a new file name, like `--out plan.cfplan`",
            )
        };
        if same(out, cluster_file) {
            return Err(refuse("the cluster file"));
        }
        let Ok(meta) = std::fs::metadata(out) else {
            return Ok(());
        };
        if !meta.is_file() {
            return Err(refuse("something that is not a regular file"));
        }
        let is_plan = std::fs::read(out).is_ok_and(|bytes| {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(FORMAT))
        });
        if is_plan {
            Ok(())
        } else {
            Err(refuse(
                "a file that is not a plan file (only an earlier plan file is replaced)",
            ))
        }
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!(".clusterform-plan-{}.tmp", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    Ok((path, f))
}
