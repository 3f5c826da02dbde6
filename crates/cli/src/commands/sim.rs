//! `clusterform sim ...`: look at and change the simulated cloud directly (what a user
//! would do in a cloud console), e.g. to create drift on purpose.

use std::fmt::Write as _;
use std::path::PathBuf;

use clusterform_provider_sim::{SimCloud, resolve_dir};
use miette::Result;

use crate::args::SimCommand;
use crate::errors;
use crate::output::{clean, json};

fn open(dir: Option<PathBuf>) -> Result<SimCloud> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let dir = resolve_dir(dir.as_deref(), &cwd).map_err(|e| {
        errors::hint(
            e.to_string(),
            "pass --dir or set CLUSTERFORM_SIM_DIR to the folder the sim provider uses",
        )
    })?;
    SimCloud::open(&dir).map_err(|e| {
        errors::hint(
            format!("cannot open the sim cloud at `{}`: {e}", dir.display()),
            "pass --dir or set CLUSTERFORM_SIM_DIR to the folder the sim provider uses",
        )
    })
}

fn fail(e: impl std::fmt::Display) -> miette::Report {
    errors::hint(
        e.to_string(),
        "the sim cloud's folder could not be read or written: check its permissions and free space (--dir or CLUSTERFORM_SIM_DIR name it)",
    )
}

/// Run a `sim` subcommand.
pub fn run(cmd: SimCommand) -> Result<u8> {
    match cmd {
        SimCommand::List { cluster, dir } => {
            let cloud = open(dir)?;
            let mut text = String::new();
            for o in cloud.list(cluster.as_deref()).map_err(fail)? {
                let (c, a) = o
                    .owner
                    .as_ref()
                    .map(|w| (w.cluster.clone(), w.address.to_string()))
                    .unwrap_or_default();
                let _ = writeln!(text, "{:<12} {:<8} {:<16} {}", o.id, o.kind, c, a);
            }
            // A closed pipe (`| head`) ends the listing quietly.
            out!("{}", clean(&text));
            Ok(0)
        }
        SimCommand::Stats { dir } => {
            let cloud = open(dir)?;
            let counts = cloud.counts().map_err(fail)?;
            let dups = cloud.duplicates().map_err(fail)?;
            let calls = cloud.calls().map_err(fail)?;
            let v =
                serde_json::json!({ "objects": counts, "duplicates": dups.len(), "calls": calls });
            outln!("{}", json(&serde_json::to_string_pretty(&v).map_err(fail)?));
            Ok(0)
        }
        SimCommand::Delete { id, dir } => {
            let cloud = open(dir)?;
            if cloud.delete(&id).map_err(fail)? {
                outln!("Deleted {id} from the sim cloud.");
                Ok(0)
            } else {
                Err(errors::hint(
                    format!("no object `{id}` in the sim cloud"),
                    "`clusterform sim list` prints the ids",
                ))
            }
        }
        SimCommand::Set {
            id,
            assignment,
            dir,
        } => {
            let Some((key, raw)) = assignment.split_once('=') else {
                return Err(errors::hint(
                    format!("`{assignment}` is not KEY=VALUE"),
                    "for example: size=4cpu-8gb",
                ));
            };
            let value = serde_json::from_str(raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
            let cloud = open(dir)?;
            if cloud.set_attr(&id, key, value).map_err(fail)? {
                outln!("Set {key} on {id}.");
                Ok(0)
            } else {
                Err(errors::hint(
                    format!("no object `{id}` in the sim cloud"),
                    "`clusterform sim list` prints the ids",
                ))
            }
        }
    }
}
