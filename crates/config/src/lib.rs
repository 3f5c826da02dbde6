//! `cluster.toml` -> the clusterform model: parse with spans, expand blueprints into
//! plain resources, validate against the providers' schemas, build the graph. Every
//! error is a [`Diagnostic`] with the file, line, column and a hint; rendering them is
//! the CLI's job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clusterform_core::{Address, GraphError, ProviderSchema, Resource, ResourceGraph};
use toml::de::DeTable;

use crate::reader::Cx;

mod blueprint;
mod checks;
mod link;
mod outputs;
#[cfg(test)]
mod proptests;
mod reader;
mod resources;
mod settings;
#[cfg(test)]
mod tests;
mod zones;

pub use outputs::BUILT_IN_OUTPUTS;
pub use settings::{DEFAULT_STATE_PATH, ETCD_STATE_KEYS, default_state_dir};

/// A byte range in the cluster file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Byte offset of the start.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// One problem in the cluster file, with where it is and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub path: PathBuf,
    /// The file's text, for the source snippet.
    pub source: Arc<str>,
    /// Where in the file (None when the problem is the file as a whole).
    pub span: Option<Span>,
    /// 1-based line of the span's start (0 when there is no span).
    pub line: usize,
    /// 1-based column (in characters) of the span's start (0 when there is no span).
    pub column: usize,
    /// What is wrong, one sentence; names in backticks.
    pub message: String,
    /// A short label shown under the snippet.
    pub label: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.span.is_some() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            write!(f, "{}: {}", self.path.display(), self.message)
        }
    }
}

/// The problems found in a cluster file (at least one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// The cluster's name: `[a-z][a-z0-9-]{0,39}`.
    pub name: String,
    /// The blueprint, if any.
    pub blueprint: Option<String>,
    /// The provider of the blueprint's resources (and the default for plain resources).
    pub provider: Option<String>,
    /// Flatcar channel: stable, beta, alpha, lts.
    pub channel: String,
    /// SSH keys for user `core`.
    pub ssh_authorized_keys: Vec<String>,
    /// Test clusters: how long after creation `reap` may delete them.
    pub expires_after: Option<Duration>,
}

/// `[state]`.
#[derive(Clone, Debug, PartialEq)]
pub enum StateSettings {
    /// The local redb store in `path` (absolute; default `.clusterform` beside the file).
    Local {
        /// The state folder.
        path: PathBuf,
    },
    /// The shared etcd store.
    Etcd(EtcdState),
}

/// `[state] backend = "etcd"`: where the shared state lives and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdState {
    /// Client URLs (`https://etcd.example:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// Key prefix (default `/clusterform/<cluster name>`).
    pub prefix: String,
    /// `ca_file`: the CA certificate the servers' certificates are checked against
    /// (absolute); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: a client certificate (absolute), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: the client certificate's private key (absolute).
    pub key_file: Option<PathBuf>,
    /// `lock_ttl`: how long the lock outlives a holder that stopped renewing it.
    pub lock_ttl: Duration,
}

/// How day-2 changes reach the etcd members (`[central] update`, `etcd_endpoints`,
/// `etcd_via`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `update`: how changes that replace central machines are applied.
    pub update: clusterform_core::UpdatePolicy,
    /// `etcd_endpoints`: the client URLs to call instead of the central machines' own.
    pub endpoints: Option<Vec<String>>,
    /// `etcd_via`: `ssh://USER@HOST[:PORT]`, a machine to tunnel the calls through.
    pub via: Option<String>,
    /// `etcd_tls` (on unless the file turns it off): the members serve https with
    /// client-certificate auth on their peer and client URLs, with certificates of the
    /// cluster's CA.
    pub tls: bool,
}

/// Where the cluster's etcd CA comes from when `[central] etcd_tls` is on: called with
/// the cluster's name and the file's `[state]` settings (the CA is kept, sealed, in the
/// state); a message when it cannot be read.
pub type CaSource = Arc<
    dyn Fn(&str, &StateSettings, Option<&Path>) -> Result<Arc<clusterform_pki::Ca>, String>
        + Send
        + Sync,
>;

/// A `[provider.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderBlock {
    /// `sim`, `ec2`, `metal`, `libvirt`.
    pub name: String,
    /// Its settings, as JSON, for the provider to deserialize.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The table's header, for errors about its settings.
    pub span: Span,
}

/// A loaded, validated cluster file.
#[derive(Debug, Clone)]
pub struct Model {
    /// The file (absolute).
    pub path: PathBuf,
    /// Its text.
    pub source: Arc<str>,
    /// `[cluster]`.
    pub cluster: ClusterSettings,
    /// `[state]`.
    pub state: StateSettings,
    /// `[state] encryption`: the key file the state's secrets are sealed with (absolute).
    pub state_encryption: Option<PathBuf>,
    /// `[provider.*]`, by name.
    pub providers: BTreeMap<String, ProviderBlock>,
    /// `[central]`'s day-2 settings (defaults when there is no `[central]`).
    pub etcd: EtcdSettings,
    /// The blueprint runs etcd, and `[central] etcd_tls = false` turned TLS off: plain
    /// HTTP without authentication (plans say so).
    pub etcd_plain_http: bool,
    /// The CA the etcd certificates of the machines' configs were issued from, when
    /// `[central] etcd_tls` is on.
    pub etcd_ca: Option<Arc<clusterform_pki::Ca>>,
    /// Every resource, blueprints expanded, in file order.
    pub resources: Vec<Resource>,
    /// `[output.*]`, in file order.
    pub outputs: Vec<clusterform_core::OutputDecl>,
    /// Their dependency graph.
    pub graph: ResourceGraph,
    /// Where each resource (or the blueprint table it came from) is defined.
    pub spans: BTreeMap<Address, Span>,
}

impl Model {
    /// A diagnostic pointing at `span` of this file.
    pub fn diagnostic(
        &self,
        span: Option<Span>,
        message: String,
        label: String,
        help: Option<String>,
    ) -> Diagnostic {
        diagnostic_at(&self.path, &self.source, span, message, label, help)
    }
}

/// Build a diagnostic for `span` of `source`, computing line and column.
pub fn diagnostic_at(
    path: &Path,
    source: &Arc<str>,
    span: Option<Span>,
    message: String,
    label: String,
    help: Option<String>,
) -> Diagnostic {
    let (line, column) = match span {
        Some(s) => line_col(source, s.offset),
        None => (0, 0),
    };
    Diagnostic {
        path: path.to_path_buf(),
        source: source.clone(),
        span,
        line,
        column,
        message,
        label,
        help,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..source.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// How a cluster file is loaded.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// The folder the files the cluster file names (Butane files) may be read from,
    /// symlinks resolved; `None` for the cluster file's own folder. Relative paths in the
    /// cluster file stay relative to the cluster file's folder.
    pub files_dir: Option<PathBuf>,
    /// The cluster's etcd CA, asked for only when `[central] etcd_tls` is on; without
    /// it a throwaway CA is made (enough to validate and show a file, never to apply).
    pub etcd_ca: Option<CaSource>,
    /// The addresses reserved for the cluster (the state's `ip_reservation`s), asked for
    /// only by a Metal cluster over metros, which renders its central machines' addresses
    /// from them (those not reserved yet are `(known after apply)`); none without it.
    pub reserved_addresses: Option<ReservedSource>,
}

/// Where the addresses reserved for a cluster come from: called like [`CaSource`];
/// the addresses by the address of the resource that reserved them.
pub type ReservedSource = Arc<
    dyn Fn(
            &str,
            &StateSettings,
            Option<&Path>,
        ) -> Result<BTreeMap<Address, std::net::Ipv4Addr>, String>
        + Send
        + Sync,
>;

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("files_dir", &self.files_dir)
            .field("etcd_ca", &self.etcd_ca.is_some())
            .field("reserved_addresses", &self.reserved_addresses.is_some())
            .finish()
    }
}

/// The largest cluster file read: 4 MiB.
pub const CLUSTER_FILE_LIMIT: u64 = 4 << 20;

/// Read and validate the cluster file at `path` against the schemas of the providers
/// this build has.
pub fn load(path: &Path, schemas: &[ProviderSchema]) -> Result<Model, Diagnostics> {
    load_with(path, schemas, &LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(
    path: &Path,
    schemas: &[ProviderSchema],
    options: &LoadOptions,
) -> Result<Model, Diagnostics> {
    let source = read_source(path)?;
    parse_with(path, &source, schemas, options)
}

/// The text of the cluster file at `path` (at most [`CLUSTER_FILE_LIMIT`] bytes of
/// UTF-8), read once: it may be a pipe.
pub fn read_source(path: &Path) -> Result<String, Diagnostics> {
    match read_cluster_file(path).map(String::from_utf8) {
        Ok(Ok(source)) => Ok(source),
        Ok(Err(e)) => Err(Diagnostics(vec![not_utf8(path, &e)])),
        Err(e) => {
            Err(Diagnostics(vec![diagnostic_at(
                path,
                &Arc::from(""),
                None,
                format!("cannot read the cluster file `{}`: {e}", path.display()),
                "unreadable".to_string(),
                Some("check the path (the default is `cluster.toml` in the current folder) and that the file is readable UTF-8 text".to_string()),
            )]))
        }
    }
}

/// The cluster file's bytes, at most [`CLUSTER_FILE_LIMIT`] of them. It is named on the
/// command line, so a pipe (`<(...)`) is fine; a folder is not, nor an endless file.
fn read_cluster_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::other("it is a folder"));
    }
    let mut bytes = Vec::new();
    file.take(CLUSTER_FILE_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > CLUSTER_FILE_LIMIT {
        return Err(std::io::Error::other(format!(
            "it is larger than the limit of {} MiB",
            CLUSTER_FILE_LIMIT >> 20
        )));
    }
    Ok(bytes)
}

/// A file that is not UTF-8: pointed at its first invalid byte (the text before it is
/// shown, so that the line and column are right).
fn not_utf8(path: &Path, e: &std::string::FromUtf8Error) -> Diagnostic {
    let valid = e.utf8_error().valid_up_to();
    let bytes = e.as_bytes();
    let shown: Arc<str> = Arc::from(String::from_utf8_lossy(&bytes[..valid]).as_ref());
    diagnostic_at(
        path,
        &shown,
        Some(Span {
            offset: valid,
            len: 0,
        }),
        format!(
            "the cluster file `{}` is not UTF-8 text: invalid byte 0x{:02x}",
            path.display(),
            bytes.get(valid).copied().unwrap_or(0)
        ),
        "not UTF-8".to_string(),
        Some("save the file as UTF-8 text".to_string()),
    )
}

/// The providers a cluster file names, with the settings of their `[provider.NAME]`
/// tables (empty without one): every table under `[provider]` and every string value of
/// a `provider` key. Read before the file is validated, to know which plugins to start
/// (their schemas validate it); a file that does not parse names none here, and
/// validation reports why.
pub fn wanted_providers(source: &str) -> BTreeMap<String, BTreeMap<String, serde_json::Value>> {
    fn walk(t: &toml::Table, out: &mut BTreeMap<String, BTreeMap<String, serde_json::Value>>) {
        for (k, v) in t {
            match v {
                toml::Value::String(name) if k == "provider" => {
                    out.entry(name.clone()).or_default();
                }
                toml::Value::Table(inner) => walk(inner, out),
                _ => {}
            }
        }
    }
    let mut out = BTreeMap::new();
    let Ok(doc) = source.parse::<toml::Table>() else {
        return out;
    };
    if let Some(toml::Value::Table(providers)) = doc.get("provider") {
        for (name, v) in providers {
            let settings = match v {
                toml::Value::Table(t) => t
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
                    .collect(),
                _ => BTreeMap::new(),
            };
            out.insert(name.clone(), settings);
        }
    }
    for (k, v) in &doc {
        if let (false, toml::Value::Table(t)) = (k == "provider", v) {
            walk(t, &mut out);
        }
    }
    out
}

/// The top-level tables of a cluster file.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "cluster", "state", "provider", "network", "central", "workers", "vm", "resource", "output",
];

/// Validate `source` as the text of the cluster file at `path` (which need not exist:
/// it names the file in diagnostics and anchors relative paths such as `[state] path`
/// and Butane files, which are read only from inside its folder).
pub fn parse(path: &Path, source: &str, schemas: &[ProviderSchema]) -> Result<Model, Diagnostics> {
    parse_with(path, source, schemas, &LoadOptions::default())
}

/// [`parse`] with options.
pub fn parse_with(
    path: &Path,
    source: &str,
    schemas: &[ProviderSchema],
    options: &LoadOptions,
) -> Result<Model, Diagnostics> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    // Diagnostics name the file as the user wrote it; the model keeps it absolute.
    // Diagnostics about other files (Butane) already name them as the user wrote them.
    parse_absolute(path, &absolute, source, schemas, options).map_err(|mut d| {
        for x in &mut d.0 {
            if x.path == absolute {
                x.path = path.to_path_buf();
            }
        }
        d
    })
}

fn parse_absolute(
    shown: &Path,
    path: &Path,
    source: &str,
    schemas: &[ProviderSchema],
    options: &LoadOptions,
) -> Result<Model, Diagnostics> {
    let path = path.to_path_buf();
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let shown_dir = shown.parent().map(Path::to_path_buf).unwrap_or_default();
    let root = options.files_dir.clone().unwrap_or_else(|| dir.clone());
    let dirs = settings::Dirs {
        root: &root,
        dir: &dir,
        shown_dir: &shown_dir,
    };
    let source: Arc<str> = Arc::from(source);
    let mut cx = Cx::new(&path, &source);

    let doc = match DeTable::parse(&source) {
        Ok(doc) => doc,
        Err(e) => {
            let msg = e.message().trim().to_string();
            let help = if msg.contains("duplicate") {
                "each key and table may appear only once"
            } else {
                "see https://toml.io for the syntax"
            };
            cx.error(
                e.span().map(reader::span),
                format!("invalid TOML: {msg}"),
                msg,
                Some(help.to_string()),
            );
            return Err(Diagnostics(cx.diags));
        }
    };
    let doc = doc.get_ref();
    cx.check_keys(doc, TOP_LEVEL_KEYS, "the file");

    let cluster = settings::cluster(&mut cx, doc, schemas);
    let state = settings::state(&mut cx, doc, &path, &cluster.settings.name);
    let state_encryption = settings::state_encryption(&mut cx, doc, &path);
    let providers = settings::providers(&mut cx, doc, schemas);
    let network = settings::network(&mut cx, doc);
    let mut central = settings::group(&mut cx, doc, "central", &dirs);
    let workers = settings::group(&mut cx, doc, "workers", &dirs);
    let vm = settings::group(&mut cx, doc, "vm", &dirs);

    // etcd runs with TLS and client certificates unless `etcd_tls = false` says otherwise.
    let runs_etcd = blueprint::runs_etcd(&cluster);
    if runs_etcd && central.etcd_tls_span.is_none() {
        central.etcd.tls = true;
    }
    // A Metal cluster over metros: etcd runs over public addresses, so with TLS.
    let spread = blueprint::spans_metros(&cluster, &central, &workers);
    let mut reserved = BTreeMap::new();
    if spread {
        if let Some(source) = &options.reserved_addresses {
            match source(&cluster.settings.name, &state, state_encryption.as_deref()) {
                Ok(r) => reserved = r,
                Err(why) => cx.error(
                    central.span,
                    format!("cannot read the addresses reserved for the central machines: {why}"),
                    "needs the reserved addresses",
                    Some("they are kept in the state: fix what the message says about the state or its key".to_string()),
                ),
            }
        }
        match central.etcd_tls_span {
            Some(at) if !central.etcd.tls => cx.error(
                Some(at),
                "the central machines are in 2 or more metros: etcd talks over public addresses there and needs TLS",
                "needs TLS",
                Some("remove `etcd_tls = false` (TLS is on for a cluster over metros), or keep every machine in one metro".to_string()),
            ),
            _ => central.etcd.tls = true,
        }
    }

    // The cluster's etcd CA, when its members run TLS.
    let etcd_ca = if central.etcd.tls {
        let got = match &options.etcd_ca {
            Some(source) => source(&cluster.settings.name, &state, state_encryption.as_deref()),
            None => clusterform_pki::Ca::generate(
                &cluster.settings.name,
                clusterform_pki::DEFAULT_VALIDITY,
            )
            .map(Arc::new)
            .map_err(|e| e.to_string()),
        };
        match got {
            Ok(ca) => Some(ca),
            Err(why) => {
                cx.error(
                    central.etcd_tls_span.or(central.span),
                    format!("cannot get the cluster's etcd CA: {why}"),
                    "needs the CA",
                    Some("the CA is kept, sealed, in the state: fix what the message says about the state or its key, or set `etcd_tls = false`".to_string()),
                );
                None
            }
        }
    } else {
        None
    };

    let expansion = match cluster.settings.blueprint.as_deref() {
        Some(name) => blueprint::Blueprint::from_name(name).map(|bp| {
            blueprint::expand(
                &mut cx,
                bp,
                &blueprint::Inputs {
                    cluster: &cluster,
                    network: &network,
                    central: &central,
                    workers: &workers,
                    vm: &vm,
                    ca: etcd_ca.as_deref(),
                    spread,
                    reserved: &reserved,
                },
                schemas,
            )
        }),
        None => {
            for (table, at) in [
                ("network", network.span),
                ("central", central.span),
                ("workers", workers.span),
                ("vm", vm.span),
            ] {
                if at.is_some() {
                    settings::needs_blueprint(&mut cx, table, at);
                }
            }
            None
        }
    };

    let plain = resources::plain(&mut cx, doc, &cluster.settings, &providers, schemas);
    let kinds: Vec<&str> = schemas
        .iter()
        .flat_map(|s| s.kinds.iter().map(|k| k.kind.as_str()))
        .collect();
    let (resources, spans) = link::link(&mut cx, expansion, plain, &cluster.settings.name, &kinds);
    checks::check(&mut cx, &resources, &spans);
    let outputs = outputs::outputs(&mut cx, doc, &resources, schemas);

    if !cx.diags.is_empty() {
        let mut diags = cx.diags;
        // The cluster file's problems in file order, then those of other files (Butane).
        diags.sort_by_key(|d| (d.path != path, d.span.map_or(0, |s| s.offset)));
        return Err(Diagnostics(diags));
    }

    let graph = match ResourceGraph::build(&resources) {
        Ok(g) => g,
        Err(GraphError::Cycle(mut cycle)) => {
            // The graph's path follows creation order; show it as "depends on".
            cycle.reverse();
            let at = cycle.first().and_then(|a| spans.get(a)).copied();
            let path_text = cycle
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" -> ");
            cx.error(
                at,
                format!("dependency cycle: {path_text}"),
                "part of a cycle",
                Some("remove one of these `depends_on` entries or references".to_string()),
            );
            return Err(Diagnostics(cx.diags));
        }
        Err(e @ GraphError::UnknownDependency { .. }) => {
            let at = match &e {
                GraphError::UnknownDependency { from, .. } => spans.get(from).copied(),
                GraphError::Cycle(_) => None,
            };
            cx.error(
                at,
                e.to_string(),
                "unknown dependency",
                Some("define the missing resource, or remove the dependency".to_string()),
            );
            return Err(Diagnostics(cx.diags));
        }
    };

    Ok(Model {
        path: path.clone(),
        source: source.clone(),
        cluster: cluster.settings,
        state,
        state_encryption,
        providers,
        etcd_plain_http: runs_etcd && !central.etcd.tls,
        etcd: central.etcd,
        etcd_ca,
        resources,
        outputs,
        graph,
        spans,
    })
}
