//! The `clusterform` binary: parses arguments, runs one command, renders errors once
//! (miette) and maps outcomes to exit codes (0 ok / no changes, 1 error, 2 changes with
//! `--detailed-exitcode`).

mod args;
mod commands;
mod context;
mod errors;
mod etcd;
mod planfile;
mod progress;
mod render;
mod style;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv = args::normalize(std::env::args_os());
    let cli = args::Cli::parse_from(argv);
    let color = style::init(cli.no_color);
    errors::install_hook(color);
    init_tracing(cli.verbose);
    context::set_files_dir(cli.files_dir.clone());

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: u8) {
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
        .with_target(false)
        .try_init();
}
