//! The `clusterform` binary: parses arguments, runs one command, renders errors once
//! (miette) and maps outcomes to exit codes (0 ok / no changes, 1 error or usage error,
//! 2 changes with `--detailed-exitcode` or drift, 130 interrupted).

#[macro_use]
mod output;

mod args;
mod commands;
mod context;
mod errors;
mod etcd;
mod events;
mod planfile;
mod private;
mod progress;
mod render;
mod style;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv = args::normalize(std::env::args_os());
    let cli = match args::command()
        .try_get_matches_from(argv)
        .and_then(|m| <args::Cli as clap::FromArgMatches>::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let color = style::init(cli.no_color);
    errors::install_hook(color);
    init_tracing(cli.verbose, style::stderr_color(cli.no_color));
    if let Some(dir) = &cli.chdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        errln!(
            "error: cannot change to the folder `{}` (-C/--chdir): {e}\n  help: name a folder that exists and that you may enter",
            dir.display()
        );
        return ExitCode::from(1);
    }
    context::set_files_dir(cli.files_dir.clone());
    if let Err(e) = context::set_state_override(cli.state.clone()) {
        errln!("{e:?}");
        return ExitCode::from(1);
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!(
                "error: cannot start the async runtime: {e}\n  help: the system refused threads \
                 or file descriptors; check `ulimit -u` and `ulimit -n`, then run again"
            );
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(report) => {
            errln!("{report:?}");
            ExitCode::from(1)
        }
    }
}

/// `--help` and `--version` print to stdout and exit 0; a usage error (unknown flag, bad
/// value, missing argument) prints clap's message to stderr and exits 1, never clap's
/// 2: exit 2 means "changes" (`plan --detailed-exitcode`) or "drift" (`drift`).
fn usage(e: &clap::Error) -> ExitCode {
    // clap writes help with EPIPE handled (`clusterform --help | head -1` is quiet).
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 1 } else { 0 })
}

fn init_tracing(verbose: u8, color: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // The AWS SDK's own logs stay at warn whatever is asked: at debug and trace they show
    // requests as signed (a session token among their headers).
    const QUIET: &str = "aws_config=warn,aws_runtime=warn,aws_sigv4=warn,aws_smithy_runtime=warn,\
                         aws_smithy_runtime_api=warn,aws_smithy_http_client=warn,aws_sdk_ec2=warn,\
                         aws_sdk_sts=warn,aws_sdk_sso=warn,aws_sdk_ssooidc=warn,hyper=warn,\
                         hyper_util=warn,h2=warn,rustls=warn";
    let base = std::env::var("CLUSTERFORM_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{base},{QUIET}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},{QUIET}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .try_init();
}
