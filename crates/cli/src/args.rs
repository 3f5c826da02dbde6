//! Command-line arguments (clap). Parsing only: no logic here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Plan and apply Flatcar Container Linux clusters.
#[derive(Debug, Parser)]
#[command(name = "clusterform", version, about, propagate_version = true)]
pub struct Cli {
    /// Plain output without colours (also when NO_COLOR is set).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// More log output on stderr (-v info, -vv debug); CLUSTERFORM_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The folder the files a cluster file names (Butane files) may be read from,
    /// symlinks resolved (default: the cluster file's folder).
    #[arg(long, global = true, value_name = "DIR")]
    pub files_dir: Option<PathBuf>,
    /// Use this state instead of the file's `[state]`: etcd://HOST:PORT[,HOST:PORT]/PREFIX
    /// (etcd+https:// for TLS, certificates from `[state]`), or a local state folder.
    #[arg(long, global = true, value_name = "LOCATION")]
    pub state: Option<String>,
    /// Run as if started in DIR (`-chdir=DIR` also works, as in Terraform).
    #[arg(short = 'C', long = "chdir", global = true, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a cluster file: syntax, references, dependency cycles, provider settings.
    Validate {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
    /// Show what apply would change.
    Plan(PlanArgs),
    /// Make the providers match the cluster file (or run a saved plan).
    Apply(ApplyArgs),
    /// Delete every object of the cluster, in reverse dependency order.
    Destroy(DestroyArgs),
    /// Show the state (or a saved plan file).
    Show {
        /// The cluster file, or a plan file written by `plan --out`.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect or edit the state.
    #[command(subcommand)]
    State(StateCommand),
    /// Remove a lock left by a process that is gone.
    #[command(override_usage = "clusterform force-unlock [FILE] <ID>")]
    ForceUnlock {
        /// [FILE] ID: the cluster file (default cluster.toml) and the lock id (from the
        /// "locked" message).
        #[arg(num_args = 1..=2, required = true, value_name = "ARG")]
        args: Vec<String>,
    },
    /// Write each machine's Ignition config (its `user_data`), as providers receive it.
    Render {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// Only this machine (`machine.workers[0]`), or all instances of one (`machine.workers`).
        #[arg(long, value_name = "ADDR")]
        machine: Option<String>,
        /// Write `<ADDR>.ign` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the dependency graph.
    Graph {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// dot (Graphviz source), svg or png (drawn by Graphviz's `dot`). Nodes are
        /// coloured by role: networks blue, etcd members orange, workers green.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Mark what a plan would do: `+` create (green border), `~` update (yellow),
        /// `-/+` replace (orange), `-` destroy (red, dashed). Takes the state lock to plan.
        #[arg(long)]
        plan: bool,
        /// Shared flags (for --plan).
        #[command(flatten)]
        run: RunArgs,
    },
    /// Check whether the objects still match the state (read-only; exit 0 in sync, 2
    /// drift, 1 error). Unapplied changes of the cluster file are reported apart.
    Drift(DriftArgs),
    /// Find clusters at a provider by their tags (no state needed) and delete the expired
    /// test clusters, or objects no state records (`--orphans`).
    Reap(ReapArgs),
    /// Adopt an existing object into the state under an address of the cluster file.
    #[command(override_usage = "clusterform import [OPTIONS] [FILE] <ADDR> <ID>")]
    Import {
        /// [FILE] ADDR ID: the cluster file (default cluster.toml), the address
        /// (`machine.workers[0]`) and the provider's id of the object.
        #[arg(num_args = 2..=3, required = true, value_name = "ARG")]
        args: Vec<String>,
        /// Wait this long for a state lock held by another run (e.g. 30s).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
    },
    /// Look at or change the simulated cloud (the `sim` provider) directly.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Look at the cluster's own etcd (the central machines' members).
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// List the providers this build has and the plugins it finds (with versions and
    /// kinds); with a cluster file, which ones the file needs. `providers check PATH`
    /// runs the conformance check against a plugin.
    Providers(ProvidersArgs),
    /// The cluster's outputs from the state: every machine's addresses, role, zone and
    /// provider id, the networks, the etcd client endpoints, and the file's own
    /// `[output.NAME]`.
    #[command(override_usage = "clusterform output [OPTIONS] [FILE] [NAME]")]
    Output {
        /// [FILE] [NAME]: the cluster file (default cluster.toml) and one output.
        #[arg(value_name = "ARG", num_args = 0..=2)]
        args: Vec<String>,
        /// Machine-readable JSON.
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// One output's value as it is: a string without quotes, a list one per line.
        #[arg(long)]
        raw: bool,
    },
    /// Run the system `ssh` as `core` to a machine (its public address, else its
    /// address), through `[central] etcd_via` when it is set.
    #[command(override_usage = "clusterform ssh [FILE] <MACHINE> [-- <COMMAND>...]")]
    Ssh {
        /// [FILE] MACHINE: the cluster file (default cluster.toml) and the machine, by
        /// address (`machine.workers[0]`) or name.
        #[arg(value_name = "ARG", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// A command to run there instead of a shell.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Print a `~/.ssh/config` block for every machine (user `core`, through
    /// `[central] etcd_via` when it is set).
    SshConfig {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
    /// Print what a machine's console printed (boot diagnostics): EC2's console output,
    /// libvirt's console log, the sim's boot log.
    #[command(override_usage = "clusterform console [FILE] <MACHINE>")]
    Console {
        /// [FILE] MACHINE: the cluster file (default cluster.toml) and the machine, by
        /// address (`machine.workers[0]`) or name.
        #[arg(value_name = "ARG", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Print a completion script for a shell: `clusterform completions bash >
    /// /etc/bash_completion.d/clusterform` (zsh: into a folder of `$fpath` as
    /// `_clusterform`; fish: `~/.config/fish/completions/clusterform.fish`).
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff), or with `--out DIR` write one page per command.
    Man {
        /// Write `clusterform.1`, `clusterform-plan.1`, ... into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the version (with `--json`: also the providers built in and the formats
    /// of the state and plan files).
    Version {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Shells `completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `providers`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProvidersArgs {
    /// A cluster file: also say which providers it needs and where each comes from.
    pub file: Option<PathBuf>,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
    /// `check PATH`: the conformance check.
    #[command(subcommand)]
    pub command: Option<ProvidersCommand>,
}

/// `providers ...`.
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Run the plugin protocol's conformance check against the plugin executable at
    /// PATH: the handshake, then one object through create (twice, same key), lookups,
    /// reads, listings, update and delete, then an unknown method, a cancel and shutdown.
    /// Exit 0 when every check passes.
    Check {
        /// The plugin's executable.
        path: PathBuf,
        /// A setting for `configure` (repeatable); VALUE is JSON, or else a string.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// The folder given to the plugin as the cluster file's (default: a new
        /// temporary folder, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `etcd ...`.
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// The members (name, id, URLs, voter or learner), the leader, and each member's
    /// health, raft index and database size; exit 0 healthy, 2 unhealthy, 1 unreachable.
    Status {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print `export ETCDCTL_*=...` lines for `etcdctl` against the cluster: its client
    /// URLs and, with TLS, clusterform's client certificate, key and the cluster's CA,
    /// written 0600 under the state folder. `eval "$(clusterform etcd env)"`.
    #[command(
        after_help = "Example: eval \"$(clusterform etcd env cluster.toml)\" && etcdctl member list"
    )]
    Env {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
    /// Renew the cluster's etcd CA before its certificates expire: the same key and name,
    /// valid 5 years from now. The next `apply` then replaces every machine onto new
    /// certificates, the members one at a time (rolling), each trusting the other's.
    #[command(
        after_help = "Example: clusterform etcd renew cluster.toml && clusterform apply cluster.toml"
    )]
    Renew {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
}

/// `drift`.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The cluster file.
    #[arg(default_value = "cluster.toml")]
    pub file: PathBuf,
    /// The report as JSON (format in docs/DRIFT.md); with --every, one JSON line per check.
    #[arg(long)]
    pub json: bool,
    /// Print nothing unless there is drift or an error (for cron).
    #[arg(long)]
    pub quiet: bool,
    /// Keep running: check every DURATION (e.g. 15m), give or take 10% at random, until
    /// SIGTERM or Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub every: Option<Duration>,
    /// POST the JSON report to this URL when a check finds drift (and, with --every, when
    /// it is gone again).
    #[arg(long, value_name = "URL", value_parser = parse_webhook)]
    pub webhook: Option<String>,
}

/// `reap`.
#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Cluster files. The provider's settings are read from the first one that has a
    /// `[provider.NAME]` table (defaults otherwise); with --orphans, the states of these
    /// clusters decide which tagged objects are orphans.
    pub files: Vec<PathBuf>,
    /// The provider to search (sim, ec2, libvirt...).
    #[arg(long)]
    pub provider: String,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete objects tagged for the clusters of FILES that their states do not record.
    #[arg(long)]
    pub orphans: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Deletions in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallelism: u32,
}

/// A `--every` interval: a duration of at least one second.
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("the interval must be at least 1s".to_string());
    }
    Ok(d)
}

/// `--webhook`: an `http://` or `https://` URL with a host, checked before any check runs
/// (a `file:` or other scheme would make the report go somewhere it should not).
fn parse_webhook(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| "the webhook must be an http:// or https:// URL".to_string())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains(char::is_whitespace) {
        return Err(
            "the webhook URL has no host: write it like https://hooks.example.com/drift"
                .to_string(),
        );
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod webhook_tests {
    use super::parse_webhook;

    #[test]
    fn only_http_and_https_urls_with_a_host() {
        assert!(parse_webhook("https://hooks.example.com/x").is_ok());
        assert!(parse_webhook("http://127.0.0.1:8080/drift").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://h/x",
            "https://",
            "http://:80/x",
            "hooks.example.com",
            "gopher://x",
        ] {
            assert!(parse_webhook(bad).is_err(), "{bad}");
        }
    }
}

/// Graph output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz source.
    Dot,
    /// An SVG drawn by Graphviz.
    Svg,
    /// A PNG drawn by Graphviz (to a file: `> graph.png`).
    Png,
}

/// Flags shared by plan, apply and destroy.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Operations in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallelism: u32,
    /// Wait this long for a state lock held by another run (e.g. 30s).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,
}

/// `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The cluster file.
    #[arg(default_value = "cluster.toml")]
    pub file: PathBuf,
    /// Save the plan here, for `apply FILE`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 2 when there are, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Plan the destruction of everything (or, with --target, of some resources).
    #[arg(long)]
    pub destroy: bool,
    /// Only this resource (`machine.workers[2]`, or `machine.workers` for all of them)
    /// and what it depends on; with --destroy, it and what depends on it. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
    /// Only show what changed outside clusterform (what `apply --refresh-only` accepts).
    #[arg(long, conflicts_with = "destroy")]
    pub refresh_only: bool,
    /// Replace this resource even though its configuration did not change (a failed
    /// machine; an etcd member is replaced the rolling way). Repeatable.
    #[arg(long, value_name = "ADDR", conflicts_with = "destroy")]
    pub replace: Vec<String>,
    /// Plan changes that lose the etcd data (replacing the only member, `update =
    /// "all-at-once"`) instead of refusing them.
    #[arg(long)]
    pub allow_data_loss: bool,
    /// Shared flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The cluster file, or a plan file written by `plan --out`.
    #[arg(default_value = "cluster.toml")]
    pub file: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Change no object: write what changed outside clusterform (drift) into the state.
    #[arg(long)]
    pub refresh_only: bool,
    /// One JSON event per line on stdout instead of the text (docs/EVENTS.md); needs
    /// --auto-approve unless applying a saved plan.
    #[arg(long)]
    pub json: bool,
    /// Destroy instead (what `clusterform destroy` does).
    #[arg(long, conflicts_with_all = ["refresh_only", "replace"])]
    pub destroy: bool,
    /// Only this resource (`machine.workers[2]`, or `machine.workers` for all of them)
    /// and what it depends on; with --destroy, it and what depends on it. Repeatable.
    #[arg(long, value_name = "ADDR", conflicts_with = "refresh_only")]
    pub target: Vec<String>,
    /// Allow deleting or replacing machines with `protect = true`.
    #[arg(long)]
    pub allow_protected: bool,
    /// Replace this resource even though its configuration did not change (a failed
    /// machine; an etcd member is replaced the rolling way). Repeatable.
    #[arg(long, value_name = "ADDR", conflicts_with = "refresh_only")]
    pub replace: Vec<String>,
    /// Apply changes that lose the etcd data (replacing the only member, `update =
    /// "all-at-once"`) instead of refusing them.
    #[arg(long)]
    pub allow_data_loss: bool,
    /// Shared flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `destroy`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// The cluster file.
    #[arg(default_value = "cluster.toml")]
    pub file: PathBuf,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Only this resource (`machine.workers[2]`, or `machine.workers` for all of them) and
    /// what depends on it. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
    /// One JSON event per line on stdout instead of the text (docs/EVENTS.md); needs
    /// --auto-approve.
    #[arg(long, requires = "auto_approve")]
    pub json: bool,
    /// Allow deleting machines with `protect = true`.
    #[arg(long)]
    pub allow_protected: bool,
    /// Shared flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the addresses in the state (only those an ADDR names, when given:
    /// `machine.workers` names every instance).
    #[command(override_usage = "clusterform state list [FILE] [ADDR]...")]
    List {
        /// [FILE] [ADDR]...: the cluster file (default cluster.toml) and address filters.
        #[arg(value_name = "ARG")]
        args: Vec<String>,
    },
    /// Show a resource's record (every instance's, for `machine.workers`).
    #[command(override_usage = "clusterform state show [FILE] <ADDR>")]
    Show {
        /// [FILE] ADDR: the cluster file (default cluster.toml) and the address.
        #[arg(num_args = 1..=2, required = true, value_name = "ARG")]
        args: Vec<String>,
        /// One machine's `user_data` (its Ignition config) byte for byte, instead of the
        /// summary; to a file when it holds a private key (`> machine.ign`).
        #[arg(long)]
        raw: bool,
    },
    /// List unfinished operations (journal entries a crashed run left); the next
    /// plan or apply resolves them.
    Pending {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
    /// Replace a damaged state file with the backup the last run made, then adopt the
    /// objects the provider holds with this cluster's tags that the backup lacks.
    Restore {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
    },
    /// Seal the state's secrets with another key: a key file (`--new-key-file`, made
    /// 0600 when it does not exist) or the passphrase in CLUSTERFORM_NEW_STATE_KEY.
    /// Then point `[state] encryption` (or CLUSTERFORM_STATE_KEY) at the new key.
    Rekey {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// The new key file (64 hex digits, mode 0600); made when it does not exist.
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
    },
    /// Copy the state to another store (an etcd prefix, or a local folder), read the
    /// copy back and compare, then point the file's `[state]` at it. The source is left
    /// as it was.
    Migrate {
        /// The cluster file.
        #[arg(default_value = "cluster.toml")]
        file: PathBuf,
        /// Where to: etcd://HOST:PORT[,HOST:PORT]/PREFIX, etcd+https://..., or a folder.
        #[arg(long, value_name = "LOCATION")]
        to: String,
    },
    /// Forget resources (the objects stay at the provider).
    #[command(override_usage = "clusterform state rm [FILE] <ADDR>...")]
    Rm {
        /// [FILE] ADDR...: the cluster file (default cluster.toml) and one or more
        /// addresses.
        #[arg(num_args = 1.., required = true, value_name = "ARG")]
        args: Vec<String>,
    },
}

/// `sim ...`.
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// List the objects in the simulated cloud.
    List {
        /// Only this cluster's objects.
        #[arg(long)]
        cluster: Option<String>,
        /// The sim folder (default: CLUSTERFORM_SIM_DIR, then the XDG data dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Object counts by kind, duplicates, and API calls by method.
    Stats {
        /// The sim folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Delete an object behind clusterform's back (to try drift).
    Delete {
        /// The object id.
        id: String,
        /// The sim folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Change an attribute behind clusterform's back (to try drift): KEY=VALUE, VALUE as JSON or a plain string.
    Set {
        /// The object id.
        id: String,
        /// KEY=VALUE.
        assignment: String,
        /// The sim folder.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// An example for every command's `--help` (and the man pages), by command path.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "validate",
        "clusterform validate examples/dev-test/cluster.toml",
    ),
    (
        "plan",
        "clusterform plan cluster.toml -out=tonight.plan\n  clusterform plan cluster.toml --target machine.workers[2]\n  clusterform plan cluster.toml --detailed-exitcode --replace machine.workers[2]",
    ),
    (
        "apply",
        "clusterform apply cluster.toml\n  clusterform apply tonight.plan\n  clusterform apply cluster.toml --replace machine.workers[0]\n  clusterform apply cluster.toml --auto-approve --json | jq -c 'select(.type == \"failed\")'",
    ),
    (
        "destroy",
        "clusterform destroy cluster.toml --auto-approve\n  clusterform destroy cluster.toml --target machine.workers[3]",
    ),
    (
        "show",
        "clusterform show cluster.toml\n  clusterform show tonight.plan --json",
    ),
    ("state", "clusterform state list cluster.toml"),
    (
        "state list",
        "clusterform state list cluster.toml\n  clusterform state list cluster.toml machine.workers network.main",
    ),
    (
        "state show",
        "clusterform state show cluster.toml machine.workers[0]\n  clusterform state show cluster.toml machine.workers\n  clusterform state show cluster.toml machine.workers[0] --raw > worker-0.ign",
    ),
    ("state pending", "clusterform state pending cluster.toml"),
    ("state restore", "clusterform state restore cluster.toml"),
    (
        "state rekey",
        "clusterform state rekey cluster.toml --new-key-file ~/.config/clusterform/prod.key",
    ),
    (
        "state migrate",
        "clusterform state migrate cluster.toml --to etcd://127.0.0.1:2379/clusterform/demo\n  clusterform state migrate cluster.toml --to .clusterform",
    ),
    (
        "state rm",
        "clusterform state rm cluster.toml machine.workers[3]",
    ),
    (
        "force-unlock",
        "clusterform force-unlock cluster.toml 6f1c2a9e-4b1d-4a8e-9d57-3c0f5e2b7a10",
    ),
    (
        "render",
        "clusterform render cluster.toml --machine machine.workers[0]\n  clusterform render cluster.toml --out ignition/",
    ),
    (
        "graph",
        "clusterform graph cluster.toml --format svg > graph.svg\n  clusterform graph cluster.toml --plan --format png > plan.png",
    ),
    (
        "drift",
        "clusterform drift cluster.toml --json\n  clusterform drift cluster.toml --every 15m --webhook https://hooks.example/drift",
    ),
    (
        "reap",
        "clusterform reap --provider sim --dry-run\n  clusterform reap --provider ec2 ec2.toml --orphans",
    ),
    (
        "import",
        "clusterform import cluster.toml machine.workers[3] i-0abc123def4567890",
    ),
    ("sim", "clusterform sim list --cluster demo"),
    ("sim list", "clusterform sim list --cluster demo"),
    ("sim stats", "clusterform sim stats"),
    ("sim delete", "clusterform sim delete m-000003"),
    ("sim set", "clusterform sim set m-000003 size=4cpu-8gb"),
    ("etcd", "clusterform etcd status cluster.toml"),
    ("etcd status", "clusterform etcd status cluster.toml --json"),
    (
        "etcd env",
        "eval \"$(clusterform etcd env cluster.toml)\" && etcdctl member list",
    ),
    (
        "etcd renew",
        "clusterform etcd renew cluster.toml && clusterform apply cluster.toml",
    ),
    ("providers", "clusterform providers cluster.toml"),
    (
        "providers check",
        "clusterform providers check ./clusterform-provider-example --setting region=\"test\"",
    ),
    (
        "output",
        "clusterform output cluster.toml\n  clusterform output cluster.toml etcd_endpoints --raw\n  clusterform output cluster.toml machines --json",
    ),
    (
        "ssh",
        "clusterform ssh cluster.toml machine.workers[0]\n  clusterform ssh cluster.toml machine.central[0] -- journalctl -u etcd-member --no-pager",
    ),
    (
        "ssh-config",
        "clusterform ssh-config cluster.toml >> ~/.ssh/config && ssh demo-workers-0",
    ),
    (
        "console",
        "clusterform console cluster.toml machine.workers[0] | tail -50",
    ),
    (
        "completions",
        "clusterform completions bash > /etc/bash_completion.d/clusterform\n  clusterform completions zsh > ~/.zfunc/_clusterform",
    ),
    (
        "man",
        "clusterform man > clusterform.1 && man ./clusterform.1\n  clusterform man --out /usr/local/share/man/man1",
    ),
    ("version", "clusterform version --json"),
];

/// The command line with an example after every command's help.
pub fn command() -> clap::Command {
    fn add(cmd: clap::Command, path: &str) -> clap::Command {
        let mut cmd = cmd;
        if let Some((_, example)) = EXAMPLES.iter().find(|(p, _)| *p == path) {
            let text = format!(
                "Example{}:\n  {example}",
                if example.contains('\n') { "s" } else { "" }
            );
            cmd = cmd.after_help(text);
        }
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        for name in names {
            let sub = if path.is_empty() {
                name.clone()
            } else {
                format!("{path} {name}")
            };
            cmd = cmd.mut_subcommand(&name, |c| add(c, &sub));
        }
        cmd
    }
    add(<Cli as clap::CommandFactory>::command(), "")
}

/// Accept Terraform's single-dash long flags (`-out=FILE`, `-auto-approve`,
/// `-detailed-exitcode`...) by turning them into `--` flags.
pub fn normalize(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const LONG: &[&str] = &[
        "out",
        "json",
        "detailed-exitcode",
        "destroy",
        "auto-approve",
        "parallelism",
        "lock-timeout",
        "no-color",
        "format",
        "machine",
        "target",
        "refresh-only",
        "allow-protected",
        "replace",
        "allow-data-loss",
        "chdir",
        "raw",
    ];
    args.into_iter()
        .map(|a| {
            if let Some(s) = a.to_str()
                && let Some(rest) = s.strip_prefix('-')
                && !rest.starts_with('-')
            {
                let name = rest.split('=').next().unwrap_or(rest);
                if LONG.contains(&name) {
                    return OsString::from(format!("-{s}"));
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_an_example_and_a_clean_usage_line() {
        fn walk(cmd: &mut clap::Command, path: &str, seen: &mut Vec<String>) {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .filter(|n| n != "help")
                .collect();
            for name in names {
                let sub = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path} {name}")
                };
                let c = cmd.find_subcommand_mut(&name).expect("listed");
                let help = c.render_long_help().to_string();
                assert!(
                    help.contains("Example"),
                    "`{sub}` --help has no example:\n{help}"
                );
                let usage = c.render_usage().to_string();
                // A value name like `FILE] [ID` renders as `<FILE] [ID>`.
                for placeholder in usage.split('<').skip(1) {
                    let name = placeholder.split('>').next().unwrap_or_default();
                    assert!(
                        !name.contains(['[', ']', ' ']),
                        "`{sub}`: garbled usage `{usage}`"
                    );
                }
                seen.push(sub.clone());
                walk(c, &sub, seen);
            }
        }
        let mut cmd = command();
        cmd.build();
        let mut seen = Vec::new();
        walk(&mut cmd, "", &mut seen);
        assert!(seen.len() >= 30, "{seen:?}");
        for (path, _) in EXAMPLES {
            assert!(
                seen.iter().any(|s| s == path),
                "EXAMPLES names `{path}`, which is no command"
            );
        }
    }

    #[test]
    fn single_dash_long_flags_are_accepted() {
        let v = normalize(
            [
                "clusterform",
                "plan",
                "-out=x.plan",
                "-v",
                "-detailed-exitcode",
            ]
            .map(OsString::from),
        );
        assert_eq!(
            v,
            [
                "clusterform",
                "plan",
                "--out=x.plan",
                "-v",
                "--detailed-exitcode"
            ]
            .map(OsString::from)
        );
    }
}
