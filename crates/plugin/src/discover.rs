//! Where plugins are found: `[provider.NAME] plugin = "PATH"` (relative to the cluster
//! file's folder), else an executable `clusterform-provider-NAME` in the folder of the
//! running `clusterform`, else one on `PATH`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The file name of provider `NAME`'s plugin is this followed by `NAME`.
pub const PREFIX: &str = "clusterform-provider-";

/// Where a plugin was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Named by `[provider.NAME] plugin`.
    Setting,
    /// In the folder of the `clusterform` binary.
    BesideBinary,
    /// On `PATH`.
    Path,
}

impl Place {
    /// For listings.
    pub fn describe(&self) -> &'static str {
        match self {
            Place::Setting => "named by `plugin =`",
            Place::BesideBinary => "beside clusterform",
            Place::Path => "on PATH",
        }
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The folders searched for `clusterform-provider-*`, in order: the running binary's,
/// then `PATH`'s.
fn search_dirs() -> Vec<(PathBuf, Place)> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push((dir.to_path_buf(), Place::BesideBinary));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if !d.as_os_str().is_empty() {
                dirs.push((d, Place::Path));
            }
        }
    }
    dirs
}

/// The plugin for provider `name`: the `plugin` setting (relative to `base_dir`) when
/// given, else the first `clusterform-provider-NAME` found. `Ok(None)`: there is none.
pub fn find(
    name: &str,
    setting: Option<&str>,
    base_dir: &Path,
) -> Result<Option<(PathBuf, Place)>, String> {
    if let Some(s) = setting {
        // `./x` beside `cluster.toml` is `x`, not `././x`, in messages.
        let p: PathBuf = base_dir.join(s).components().collect();
        if !p.is_file() {
            return Err(format!(
                "`[provider.{name}] plugin = {s:?}`: there is no file `{}`",
                p.display()
            ));
        }
        if !is_executable(&p) {
            return Err(format!(
                "`[provider.{name}] plugin = {s:?}`: `{}` is not executable (chmod +x it)",
                p.display()
            ));
        }
        return Ok(Some((p, Place::Setting)));
    }
    let file = format!("{PREFIX}{name}");
    Ok(search_dirs()
        .into_iter()
        .map(|(d, place)| (d.join(&file), place))
        .find(|(p, _)| is_executable(p)))
}

/// Every plugin found beside the binary and on `PATH`, by provider name (the first of
/// each name wins, as for [`find`]).
pub fn all() -> BTreeMap<String, (PathBuf, Place)> {
    let mut out = BTreeMap::new();
    for (dir, place) in search_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<(String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_prefix(PREFIX)?.to_string();
                let ok = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                (ok && is_executable(&e.path())).then(|| (name, e.path()))
            })
            .collect();
        found.sort();
        for (name, path) in found {
            out.entry(name).or_insert((path, place.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_must_name_an_executable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find("x", Some("nope"), dir.path()).expect_err("missing");
        assert!(err.contains("there is no file"), "{err}");
        let p = dir.path().join("plug");
        std::fs::write(&p, "#!/bin/sh\n").expect("write");
        let err = find("x", Some("plug"), dir.path()).expect_err("not executable");
        assert!(err.contains("chmod +x"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            find("x", Some("plug"), dir.path()),
            Ok(Some((p, Place::Setting)))
        );
    }
}
