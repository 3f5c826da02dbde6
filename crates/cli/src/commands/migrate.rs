//! `clusterform state migrate`: copy a state to another store (local folder <-> etcd),
//! check the copy, and only then point the cluster file's `[state]` at it. The source
//! is read under its lock and never changed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterform_config::StateSettings;
use miette::Result;

use crate::context::{self, StateLocation};
use crate::errors;

/// `clusterform state migrate FILE --to LOCATION`.
pub fn migrate(file: &Path, to: &str) -> Result<u8> {
    let ctx = context::load(file)?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let settings = StateLocation::parse_override(to, &ctx.model.state, &cwd).map_err(|m| {
        errors::hint(
            format!("--to: {m}"),
            "e.g. --to etcd://127.0.0.1:2379/clusterform/demo, or --to .clusterform",
        )
    })?;
    if settings == ctx.model.state {
        return Err(errors::hint(
            format!("the state of `{}` is there already", file.display()),
            "name another location with --to",
        ));
    }
    let dest = StateLocation::of(&settings, ctx.model.state_encryption.as_deref());

    let _source_lock = ctx
        .store
        .lock("state migrate", Duration::ZERO)
        .map_err(errors::state)?;
    let source = ctx.state_location.raw_store()?;
    let export = source.export().map_err(errors::state)?;
    if export.snapshot.lineage.is_none() {
        return Err(errors::hint(
            format!(
                "the state of `{}` ({}) is empty: there is nothing to copy",
                file.display(),
                source.describe()
            ),
            "point `[state]` at the new location yourself, or apply first",
        ));
    }

    let target = dest.raw_store()?;
    let _dest_lock = target
        .lock("state migrate", Duration::ZERO)
        .map_err(errors::state)?;
    target.import(&export).map_err(|e| {
        errors::hint(
            e.to_string(),
            "the cluster file was not changed; migrate into an empty location (a new prefix or folder)",
        )
    })?;
    let copy = target.export().map_err(errors::state)?;
    if copy != export {
        return Err(errors::hint(
            format!(
                "the copy in {} does not read back as the state it was made from",
                target.describe()
            ),
            "the cluster file was not changed and the source was left as it was; remove the copy and try again",
        ));
    }
    carry_key(&ctx.state_location, &dest)?;
    // The copy opens with the state's key, as the cluster file will use it.
    context::open_location(
        &dest,
        context::identity(&ctx.model.cluster.name, &ctx.model.path),
    )?
    .load()
    .map_err(errors::state)?;

    switch_file(&ctx.model.path, &settings)?;
    let s = &export.snapshot;
    outln!(
        "Copied the state of `{}` (serial {}, lineage {}): {} resources, {} secrets, {} unfinished operations, {} history entries.",
        ctx.model.cluster.name,
        s.serial,
        s.lineage.as_deref().unwrap_or_default(),
        s.resources.len(),
        s.secrets.len(),
        s.journal.len(),
        export.history.len()
    );
    outln!("  from {}", source.describe());
    outln!("  to   {} (read back: identical)", target.describe());
    outln!(
        "`[state]` in {} now names the copy. The old state was left as it was: delete it once you no longer need it.",
        file.display()
    );
    Ok(0)
}

/// A state sealed with its default key file: the destination's default key file is the
/// same key, so the copy opens wherever clusterform looks for it.
fn carry_key(from: &StateLocation, to: &StateLocation) -> Result<()> {
    use clusterform_state::KeySource;
    let (KeySource::Default(src), KeySource::Default(dst)) = (from.key_source(), to.key_source())
    else {
        return Ok(());
    };
    if src == dst || dst.exists() || !src.exists() {
        return Ok(());
    }
    let fail = |e: std::io::Error| {
        errors::hint(
            format!(
                "cannot copy the state's key file `{}` to `{}`: {e}",
                src.display(),
                dst.display()
            ),
            "copy it by hand (mode 0600), then run the command again",
        )
    };
    let text = std::fs::read_to_string(&src).map_err(fail)?;
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
    crate::private::write_files(
        &dir,
        &[(name.as_str(), text.as_str())],
        "check that your config folder is writable",
    )
}

/// Rewrites `[state]` of the cluster file at `file` for `settings`, keeping every other
/// line (and `encryption`) as it was; written whole (a temporary file renamed over it).
fn switch_file(file: &Path, settings: &StateSettings) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        errors::hint(
            format!("cannot read `{}`: {e}", file.display()),
            "the copy is made; point `[state]` at it by hand",
        )
    })?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| {
        errors::hint(
            format!("cannot edit `{}`: {e}", file.display()),
            "the copy is made; point `[state]` at it by hand",
        )
    })?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state = doc
        .entry("state")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = state.as_table_like_mut() else {
        return Err(errors::hint(
            format!("`state` in `{}` is not a table", file.display()),
            "make it `[state]`, or point it at the copy by hand",
        ));
    };
    for key in ["backend", "path"]
        .into_iter()
        .chain(clusterform_config::ETCD_STATE_KEYS.iter().copied())
    {
        if !matches!(settings, StateSettings::Etcd(_))
            || !matches!(key, "ca_file" | "cert_file" | "key_file" | "lock_ttl")
        {
            table.remove(key);
        }
    }
    match settings {
        StateSettings::Local { path } => {
            if *path != clusterform_config::default_state_dir(file) {
                table.insert("path", toml_edit::value(relative(path, &dir)));
            }
        }
        StateSettings::Etcd(e) => {
            table.insert("backend", toml_edit::value("etcd"));
            let mut list = toml_edit::Array::new();
            for ep in &e.endpoints {
                list.push(ep.as_str());
            }
            table.insert("endpoints", toml_edit::value(list));
            table.insert("prefix", toml_edit::value(e.prefix.as_str()));
        }
    }
    if table.is_empty() {
        doc.remove("state");
    }
    let tmp = dir.join(format!(
        ".{}.migrate.tmp",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, doc.to_string())?;
        if let Ok(meta) = std::fs::metadata(file) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        errors::hint(
            format!("cannot write `{}`: {e}", file.display()),
            "the copy is made and the file is as it was; point `[state]` at the copy by hand",
        )
    })
}

/// `path` relative to `dir` when it is inside it, else as it is.
fn relative(path: &Path, dir: &Path) -> String {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (p, d): (PathBuf, PathBuf) = (abs(path), abs(dir));
    p.strip_prefix(&d)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| p.display().to_string())
}
