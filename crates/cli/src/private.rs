//! Files the CLI writes for the user that hold secrets (etcd client keys, rendered
//! configs with the members' keys): a folder made 0700, each file 0600 and whole.

use std::path::Path;

use miette::Result;

use crate::errors;

/// Write `files` (name, contents) into `dir` (made 0700 when missing), each 0600 and
/// whole (a temporary file renamed over it); `help` says what to do when it fails.
pub fn write_files(dir: &Path, files: &[(&str, &str)], help: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |p: &Path, e: std::io::Error| {
        errors::hint(format!("cannot write `{}`: {e}", p.display()), help)
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(dir, e))?;
    for (name, text) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(text.as_bytes()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    }
    Ok(())
}
