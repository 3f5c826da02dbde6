//! Shell integration: `completions` (clap_complete), `man` (clap_mangen) and `version`.

use std::io::Write;
use std::path::Path;

use clusterform_provider::registry::Origin;
use miette::Result;
use serde_json::json;

use crate::args::{self, CompletionShell};
use crate::errors;

/// `clusterform completions SHELL`: the completion script on stdout.
pub fn completions(shell: CompletionShell) -> Result<u8> {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut cmd = args::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "clusterform", &mut out);
    write_stdout(&out)
}

/// `clusterform man [--out DIR]`: the manual page on stdout, or every command's page in
/// DIR.
pub fn man(out: Option<&Path>) -> Result<u8> {
    let cmd = args::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        render(&cmd, None, &mut page)?;
        return write_stdout(&page);
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        errors::hint(
            format!("cannot make `{}`: {e}", dir.display()),
            "name a folder you can write",
        )
    })?;
    let mut written = 0;
    let mut pages = vec![("clusterform".to_string(), cmd.clone())];
    while let Some((name, c)) = pages.pop() {
        let mut page = Vec::new();
        render(&c, Some(&name), &mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).map_err(|e| {
            errors::hint(
                format!("cannot write `{}`: {e}", path.display()),
                "name a folder you can write",
            )
        })?;
        written += 1;
        for sub in c.get_subcommands().filter(|s| s.get_name() != "help") {
            pages.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
    }
    outln!("Wrote {written} manual pages to {}.", dir.display());
    Ok(0)
}

fn render(cmd: &clap::Command, title: Option<&str>, out: &mut Vec<u8>) -> Result<()> {
    let mut man = clap_mangen::Man::new(cmd.clone());
    if let Some(t) = title {
        man = man.title(t.to_uppercase());
    }
    man.render(out)
        .map_err(|e| errors::bug(format!("rendering the manual page: {e}")))
}

/// `clusterform version [--json]`.
pub fn version(as_json: bool) -> Result<u8> {
    let registry = clusterform_builtins::registry();
    let built_in: Vec<&str> = registry
        .all()
        .into_iter()
        .filter(|f| matches!(f.origin(), Origin::BuiltIn))
        .map(|f| f.name())
        .collect();
    if as_json {
        let v = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "providers": built_in,
            "state_format": 1,
            "plan_format": crate::planfile::VERSION,
            "plugin_protocol": clusterform_plugin::PROTOCOL_VERSION,
        });
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        outln!("clusterform {}", env!("CARGO_PKG_VERSION"));
        outln!("providers built in: {}", built_in.join(", "));
    }
    Ok(0)
}

fn write_stdout(bytes: &[u8]) -> Result<u8> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(0),
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(errors::hint(
            format!("cannot write to stdout: {e}"),
            "redirect it to a file you can write",
        )),
    }
}
