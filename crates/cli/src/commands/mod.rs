//! The commands. Each returns the process exit code or an error report.

mod apply;
mod drift;
mod etcd;
mod inspect;
mod migrate;
mod output;
mod plan;
mod providers;
mod reap;
mod shell;
mod sim;
mod ssh;

use miette::Result;

use crate::args::{Cli, Command};

/// Run the command `cli` names.
pub async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Validate { file } => inspect::validate(&file),
        Command::Plan(a) => plan::plan(a).await,
        Command::Apply(a) => apply::apply(a).await,
        Command::Destroy(a) => apply::destroy(a).await,
        Command::Show { file, json } => inspect::show(&file, json),
        Command::State(crate::args::StateCommand::Restore { file }) => {
            inspect::restore(&file).await
        }
        Command::State(crate::args::StateCommand::Migrate { file, to }) => {
            migrate::migrate(&file, &to)
        }
        Command::State(s) => inspect::state(s),
        Command::ForceUnlock { args } => inspect::force_unlock(&args),
        Command::Graph {
            file,
            format,
            plan,
            run,
        } => inspect::graph(&file, format, plan, &run).await,
        Command::Render { file, machine, out } => {
            inspect::render(&file, machine.as_deref(), out.as_deref())
        }
        Command::Drift(a) => drift::drift(a).await,
        Command::Reap(a) => reap::reap(a).await,
        Command::Import { args, lock_timeout } => inspect::import(&args, lock_timeout).await,
        Command::Sim(s) => sim::run(s),
        Command::Providers(a) => providers::run(a).await,
        Command::Etcd(crate::args::EtcdCommand::Status { file, json }) => {
            etcd::status(&file, json).await
        }
        Command::Etcd(crate::args::EtcdCommand::Env { file }) => etcd::env(&file),
        Command::Etcd(crate::args::EtcdCommand::Renew { file }) => etcd::renew(&file),
        Command::Output { args, json, raw } => output::output(&args, json, raw),
        Command::Ssh { args, command } => ssh::ssh(&args, &command),
        Command::SshConfig { file } => ssh::ssh_config(&file),
        Command::Console { args } => ssh::console(&args).await,
        Command::Completions { shell } => shell::completions(shell),
        Command::Man { out } => shell::man(out.as_deref()),
        Command::Version { json } => shell::version(json),
    }
}
