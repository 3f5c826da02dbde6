//! Error reports: config diagnostics become miette reports with the source snippet;
//! everything else gets a message and a hint. This is the only place errors are rendered.
//! Every text of a report goes through [`clean`]: messages quote input (names, paths,
//! provider answers) and the snippet is the user's file, which may hold control
//! characters that must not reach the terminal raw.

use std::sync::Arc;

use clusterform_config::{Diagnostic as ConfigDiagnostic, Diagnostics};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};

use crate::output::{clean, clean_offset};

/// Set up miette's renderer: unicode, colour only when asked, a stable width.
pub fn install_hook(color: bool) {
    let _ = miette::set_hook(Box::new(move |_| {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        Box::new(
            GraphicalReportHandler::new_themed(theme)
                .with_width(100)
                .with_links(false),
        )
    }));
}

/// One located problem in a file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct SourceError {
    message: String,
    #[source_code]
    src: NamedSource<Arc<str>>,
    #[label("{label}")]
    span: Option<SourceSpan>,
    label: String,
    #[help]
    help: Option<String>,
}

impl From<&ConfigDiagnostic> for SourceError {
    fn from(d: &ConfigDiagnostic) -> Self {
        // The snippet is shown with its control characters escaped; the span moves with
        // the escapes to keep pointing at the same characters.
        let source: Arc<str> = match clean(&d.source) {
            std::borrow::Cow::Borrowed(_) => d.source.clone(),
            std::borrow::Cow::Owned(s) => Arc::from(s),
        };
        let span = d.span.map(|s| {
            let start = clean_offset(&d.source, s.offset);
            let end = clean_offset(&d.source, s.offset + s.len);
            SourceSpan::new(start.into(), end.saturating_sub(start))
        });
        SourceError {
            message: clean(&d.to_string()).into_owned(),
            src: NamedSource::new(clean(&d.path.display().to_string()), source),
            span,
            label: clean(&d.label).into_owned(),
            help: d.help.as_deref().map(|h| clean(h).into_owned()),
        }
    }
}

/// All the problems found in a cluster file.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{}", headline(.errors))]
pub struct ConfigReport {
    #[related]
    errors: Vec<SourceError>,
}

fn headline(errors: &[SourceError]) -> String {
    match errors.len() {
        1 => "the cluster file has an error".to_string(),
        n => format!("the cluster file has {n} errors"),
    }
}

/// Turn config diagnostics into a report.
pub fn config(d: Diagnostics) -> miette::Report {
    let mut errors: Vec<SourceError> = d.0.iter().map(SourceError::from).collect();
    if errors.len() == 1
        && let Some(only) = errors.pop()
    {
        return miette::Report::new(only);
    }
    miette::Report::new(ConfigReport { errors })
}

/// Turn one config diagnostic into a report.
pub fn one(d: ConfigDiagnostic) -> miette::Report {
    config(Diagnostics(vec![d]))
}

/// An error with a hint.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
pub struct Hinted {
    message: String,
    #[help]
    help: Option<String>,
}

/// An error message with what to do about it.
pub fn hint(message: impl Into<String>, help: impl Into<String>) -> miette::Report {
    let (message, help) = (message.into(), help.into());
    miette::Report::new(Hinted {
        message: clean(&message).into_owned(),
        help: Some(clean(&help).into_owned()),
    })
}

/// Something that should not happen whatever the input (a task that died, a value that
/// cannot be encoded): say so, and what to do.
pub fn bug(e: impl std::fmt::Display) -> miette::Report {
    hint(
        format!("internal error: {e}"),
        "this is a bug in clusterform, not in your files: run the command again, and if it \
         happens again report it with the command and the output of `-vv`",
    )
}

/// A state error with what to do.
pub fn state(e: clusterform_state::StateError) -> miette::Report {
    use clusterform_state::StateError as S;
    let help = match &e {
        S::Locked { path, holder } if path.starts_with("etcd://") => format!(
            "wait for that run to finish (or pass --lock-timeout 60s to wait): a holder that stopped loses the lock when its lease ends ({}); to end it now, `clusterform force-unlock {}`",
            holder.expires_at, holder.id
        ),
        S::Locked { holder, .. } => locked_help(holder, std::time::SystemTime::now()),
        S::Corrupt { path, .. } if path.starts_with("etcd://") => "restore the prefix from an etcd snapshot (`etcdctl snapshot save` regularly); do not delete the prefix: the machines it records would be orphaned".to_string(),
        S::Corrupt { path, .. } => {
            let backup = std::path::Path::new(path).with_file_name("state.redb.backup");
            if backup.exists() {
                format!(
                    "the state as the last run found it is in `{}`: run `clusterform state restore CLUSTER_FILE` to put it back (the damaged file is kept aside) and adopt what the provider made since; do not delete the state folder: the machines it records would be orphaned",
                    backup.display()
                )
            } else {
                "restore the state folder from a backup; do not delete it: the machines it records would be orphaned".to_string()
            }
        }
        S::Lost { path, .. } => {
            let dir = std::path::Path::new(path)
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            format!(
                "run `clusterform state restore CLUSTER_FILE` to put the backup back (it checks the copy before it touches anything), or put the state file back from your own backup; only if every machine of this cluster is gone, delete the folder `{dir}` to start afresh"
            )
        }
        S::OtherCluster { theirs, .. } => format!(
            "run the command with the file that made this state (`{}`), or give this file its own state folder with `[state] path = \".clusterform-NAME\"`; if the folder was copied by mistake, remove the copy",
            theirs.file
        ),
        S::Version { .. } => "use a newer clusterform".to_string(),
        S::WrongLockId { .. } => "use the id from the lock message, or `clusterform state list` to see the current holder".to_string(),
        S::LockHeldByLiveProcess { .. } => {
            "wait for that run to finish, or stop it; then run the command again".to_string()
        }
        S::Secret { .. } => format!(
            "the key is never in the state: {} (a passphrase), `[state] encryption = \"PATH\"` (a key file of 64 hex digits, mode 0600), or the key file clusterform made for this state on the workstation that first wrote it; see docs/CONFIG.md, `[state]`",
            clusterform_state::seal::KEY_ENV
        ),
        S::Io { path, source } => io_help(path, source),
        S::Database { path, .. } if path.starts_with("etcd://") => "check that the etcd cluster of `[state] endpoints` runs and has a quorum (`etcdctl endpoint health`), and the TLS files and credentials in `[state]` / CLUSTERFORM_ETCD_USER; nothing was changed where this says so".to_string(),
        S::Database { .. } => "check the state folder's file system (free space, permissions, \
             errors in the system log); if the file is damaged, `clusterform state restore \
             CLUSTER_FILE` puts the last run's backup back"
            .to_string(),
    };
    hint(e.to_string(), help)
}

/// An engine error with what to do.
pub fn engine(e: clusterform_engine::EngineError) -> miette::Report {
    use clusterform_engine::EngineError as E;
    match e {
        E::State(s) => state(s),
        E::NoProvider(p) => hint(
            format!("provider `{p}` is not configured"),
            format!("add a `[provider.{p}]` table to the cluster file"),
        ),
        E::Refresh { .. } | E::Recover { .. } | E::Provider { .. } => hint(
            e.to_string(),
            "check the provider's settings and reachability, then run the command again",
        ),
        E::Refused { message, help } => hint(message, help),
        E::NoKind { .. } => hint(
            e.to_string(),
            "use a kind this provider has (see docs/CONFIG.md), or another provider for it",
        ),
        E::Order(_) => hint(
            e.to_string(),
            "if this is a saved plan, it may have been edited: make a new one with \
             `clusterform plan CLUSTER_FILE --out FILE`",
        ),
        E::StateWrite(_) => hint(
            e.to_string(),
            "make the state folder writable by this user (e.g. `chmod u+rwx` it, or run as its \
             owner) and check that its disk has free space, then run the command again",
        ),
        E::Internal(m) => bug(m),
    }
}

/// What to do about a file-system error on the state folder, by its kind.
fn io_help(path: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let folder = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let folder = folder.display();
    match e.kind() {
        K::PermissionDenied => format!(
            "this user may not read or write the state folder `{folder}`: give it write \
             access (e.g. `chmod u+rwx {folder}`), or run as the folder's owner; a CI job \
             needs the state on a writable volume"
        ),
        K::ReadOnlyFilesystem => format!(
            "`{folder}` is on a read-only file system: mount it writable, or point `[state] \
             path` at a writable folder (and move the state files there)"
        ),
        K::StorageFull | K::QuotaExceeded => format!(
            "the disk holding `{folder}` is full: free some space, then run the command \
             again (nothing recorded is lost)"
        ),
        K::NotADirectory | K::IsADirectory => format!(
            "something that is not clusterform's is in the way at `{}`: move it aside, \
             or point `[state] path` elsewhere",
            path.display()
        ),
        _ => format!(
            "check that the state folder `{folder}` exists, is a folder and is writable by \
             this user"
        ),
    }
}

/// What to do about a lock another run holds; `now` decides whether its expiry passed.
fn locked_help(holder: &clusterform_state::LockInfo, now: std::time::SystemTime) -> String {
    let expired = humantime::parse_rfc3339(&holder.expires_at).is_ok_and(|t| t < now);
    if expired {
        format!(
            "the lock expired at {} but its process still holds it: pid {} on {} may be hung; \
             stop that process, then run `clusterform force-unlock {}`",
            holder.expires_at, holder.pid, holder.host, holder.id
        )
    } else {
        format!(
            "wait for that run to finish (or pass --lock-timeout 60s to wait); if its process \
             is gone, run `clusterform force-unlock {}`",
            holder.id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(expires_at: &str) -> clusterform_state::LockInfo {
        clusterform_state::LockInfo {
            id: "abc".into(),
            operation: "apply".into(),
            user: "ann".into(),
            host: "box".into(),
            pid: 42,
            started_at: "2026-01-01T00:00:00Z".into(),
            expires_at: expires_at.into(),
        }
    }

    #[test]
    fn an_expired_lock_still_held_names_the_process_to_stop() {
        let now = humantime::parse_rfc3339("2026-01-01T02:00:00Z").expect("time");
        let h = locked_help(&holder("2026-01-01T01:00:00Z"), now);
        assert!(h.contains("expired at 2026-01-01T01:00:00Z"), "{h}");
        assert!(h.contains("pid 42 on box"), "{h}");
        assert!(h.contains("force-unlock abc"), "{h}");
        let live = locked_help(&holder("2026-01-01T03:00:00Z"), now);
        assert!(live.contains("--lock-timeout"), "{live}");
        assert!(!live.contains("expired"), "{live}");
    }
}
