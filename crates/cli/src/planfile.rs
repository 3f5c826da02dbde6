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
const VERSION: u32 = 1;

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
        }
    }

    /// Write it atomically, readable by the owner only.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
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
        let pf: PlanFile = serde_json::from_value(value).map_err(|e| {
            errors::hint(
                format!("`{}` is not a valid plan file: {e}", path.display()),
                "make a new one with `clusterform plan --out FILE`",
            )
        })?;
        Ok(Some(pf))
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
