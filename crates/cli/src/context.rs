//! What every command starts from: the loaded cluster file, the registry of its
//! providers (built in, and the plugins it names), the providers built from their
//! settings, and its state store. No provider is named here: the registry knows them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::Mutex;

use clusterform_config::{Model, StateSettings};
use clusterform_core::Address;
use clusterform_engine::{ClusterInfo, Providers, Readers};
use clusterform_plugin::PluginFactory;
use clusterform_provider::{ProviderConfig, Registry};
use clusterform_state::{ClusterIdentity, KeySource, LocalStore, Owned, SealedStore, StateStore};
use miette::Result;
use serde::{Deserialize, Serialize};

use crate::errors;

/// Plugins started in this run, by provider name and executable: each is started (and
/// shaken hands with) once, however often the cluster file is loaded.
static PLUGINS: Mutex<BTreeMap<(String, PathBuf), Arc<PluginFactory>>> =
    Mutex::new(BTreeMap::new());

/// The providers this build has, and the plugins `wanted` (provider names with their
/// settings) needs: a provider whose table says `plugin = "PATH"`, or that this build does
/// not have (or knows by its schema only), is looked for as a plugin (docs/plugin-protocol.md). A name found nowhere is
/// left out: validation reports it with the names there are. On error: (provider,
/// message).
pub fn registry_for(
    wanted: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) -> std::result::Result<Registry, (String, String)> {
    let mut registry = clusterform_builtins::registry();
    for (name, settings) in wanted {
        let setting = match settings.get("plugin") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err((
                    name.clone(),
                    "`plugin` must be the path of the plugin's executable, in a string".into(),
                ));
            }
        };
        // A provider this build knows by its schema only (`metal`) is still looked for as
        // a plugin: that is how it ships.
        if setting.is_none() && registry.can_apply(name) {
            continue;
        }
        let found = clusterform_plugin::discover::find(name, setting, base_dir)
            .map_err(|m| (name.clone(), m))?;
        let Some((path, _)) = found else {
            continue;
        };
        let key = (name.clone(), path.clone());
        let cached = PLUGINS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let factory = match cached {
            Some(f) => f,
            None => {
                let f =
                    Arc::new(PluginFactory::start(name, &path).map_err(|e| (name.clone(), e.0))?);
                PLUGINS
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, Arc::clone(&f));
                f
            }
        };
        registry.register(factory);
    }
    Ok(registry)
}

/// The folder a cluster file's relative paths start from.
pub fn base_dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where the state lives, as recorded in plan files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum StateLocation {
    /// The local redb store.
    Local {
        /// Its folder.
        path: PathBuf,
        /// `[state] encryption`: the key file its secrets are sealed with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption: Option<PathBuf>,
    },
    /// The shared etcd store.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// Key prefix.
        prefix: String,
        /// `[state] ca_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// `[state] cert_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cert_file: Option<PathBuf>,
        /// `[state] key_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
        /// `[state] lock_ttl`, in seconds.
        lock_ttl_secs: u64,
        /// `[state] encryption`: the key file its secrets are sealed with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption: Option<PathBuf>,
    },
}

/// The user name for an etcd state store with authentication on.
pub const ETCD_USER_ENV: &str = "CLUSTERFORM_ETCD_USER";
/// Its password.
pub const ETCD_PASSWORD_ENV: &str = "CLUSTERFORM_ETCD_PASSWORD";

impl StateLocation {
    /// The location of `settings` with the key file `encryption`.
    pub fn of(settings: &StateSettings, encryption: Option<&Path>) -> StateLocation {
        let encryption = encryption.map(Path::to_path_buf);
        match settings {
            StateSettings::Local { path } => StateLocation::Local {
                path: path.clone(),
                encryption,
            },
            StateSettings::Etcd(e) => StateLocation::Etcd {
                endpoints: e.endpoints.clone(),
                prefix: e.prefix.clone(),
                ca_file: e.ca_file.clone(),
                cert_file: e.cert_file.clone(),
                key_file: e.key_file.clone(),
                lock_ttl_secs: e.lock_ttl.as_secs(),
                encryption,
            },
        }
    }

    /// `[state] encryption`.
    pub fn encryption(&self) -> Option<&Path> {
        match self {
            StateLocation::Local { encryption, .. } | StateLocation::Etcd { encryption, .. } => {
                encryption.as_deref()
            }
        }
    }

    /// What names this state for its default key file: the folder, or the etcd
    /// endpoints and prefix.
    fn key_name(&self) -> String {
        match self {
            StateLocation::Local { path, .. } => std::path::absolute(path)
                .unwrap_or_else(|_| path.clone())
                .to_string_lossy()
                .into_owned(),
            StateLocation::Etcd {
                endpoints, prefix, ..
            } => format!("etcd:{}{prefix}", endpoints.join(",")),
        }
    }

    /// Where the state's key comes from: `CLUSTERFORM_STATE_KEY`, else `[state] encryption`,
    /// else its own key file under the user's config folder.
    pub fn key_source(&self) -> KeySource {
        key_source_named(&self.key_name(), self.encryption())
    }

    /// A private folder for files made from the state (etcd client certificates): the
    /// state folder, or one under the user's config folder for an etcd state.
    pub fn private_dir(&self) -> PathBuf {
        match self {
            StateLocation::Local { path, .. } => path.clone(),
            StateLocation::Etcd { .. } => config_dir()
                .join("clusterform/state")
                .join(short_hash(&self.key_name())),
        }
    }

    /// The store itself, without sealing or the cluster check.
    pub fn raw_store(&self) -> Result<Arc<dyn StateStore>> {
        match self {
            StateLocation::Local { path, .. } => Ok(Arc::new(LocalStore::new(path.clone()))),
            StateLocation::Etcd {
                endpoints,
                prefix,
                ca_file,
                cert_file,
                key_file,
                lock_ttl_secs,
                ..
            } => {
                let read = |p: &Path, what: &str| {
                    std::fs::read_to_string(p).map_err(|e| {
                        errors::hint(
                            format!("cannot read the etcd state's {what} `{}`: {e}", p.display()),
                            "fix the path in `[state]` (it is relative to the cluster file's folder)",
                        )
                    })
                };
                let ca_pem = ca_file
                    .as_deref()
                    .map(|p| read(p, "CA certificate (`ca_file`)"))
                    .transpose()?;
                let client_pem = match (cert_file, key_file) {
                    (Some(c), Some(k)) => Some((
                        read(c, "client certificate (`cert_file`)")?,
                        read(k, "client key (`key_file`)")?,
                    )),
                    _ => None,
                };
                let credentials = std::env::var(ETCD_USER_ENV)
                    .ok()
                    .filter(|u| !u.is_empty())
                    .map(|u| (u, std::env::var(ETCD_PASSWORD_ENV).unwrap_or_default()));
                let kv = clusterform_etcd::KvClient::new(clusterform_etcd::KvConfig {
                    endpoints: endpoints.clone(),
                    timeouts: clusterform_etcd::Timeouts {
                        connect: std::time::Duration::from_secs(2),
                        request: clusterform_etcd::kv::STATE_REQUEST_TIMEOUT,
                    },
                    ca_pem,
                    client_pem,
                    credentials,
                })
                .map_err(|e| {
                    errors::hint(
                        e.to_string(),
                        "check `ca_file`, `cert_file` and `key_file` in `[state]`: PEM files",
                    )
                })?;
                Ok(Arc::new(clusterform_state::EtcdStore::new(
                    kv,
                    prefix,
                    std::time::Duration::from_secs(*lock_ttl_secs),
                )))
            }
        }
    }

    /// Parses `--state`: `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (plain HTTP),
    /// `etcd+https://...` (TLS; the `[state]` file settings still give CA and client
    /// certificate), or a local state folder.
    pub fn parse_override(
        text: &str,
        base: &StateSettings,
        cwd: &Path,
    ) -> std::result::Result<StateSettings, String> {
        let (scheme, rest) = if let Some(r) = text.strip_prefix("etcd://") {
            ("http", r)
        } else if let Some(r) = text.strip_prefix("etcd+https://") {
            ("https", r)
        } else if let Some(r) = text.strip_prefix("etcd+http://") {
            ("http", r)
        } else if text.contains("://") {
            return Err(format!(
                "`{text}` is not a state location: write etcd://HOST:PORT/PREFIX, etcd+https://HOST:PORT/PREFIX, or a folder"
            ));
        } else {
            return Ok(StateSettings::Local {
                path: cwd.join(text),
            });
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if hosts.is_empty() || prefix.is_empty() {
            return Err(format!(
                "`{text}` names no {}: write etcd://HOST:PORT/PREFIX, like etcd://127.0.0.1:2379/clusterform/demo",
                if hosts.is_empty() { "host" } else { "prefix" }
            ));
        }
        let mut e = match base {
            StateSettings::Etcd(e) => e.clone(),
            StateSettings::Local { .. } => clusterform_config::EtcdState {
                endpoints: Vec::new(),
                prefix: String::new(),
                ca_file: None,
                cert_file: None,
                key_file: None,
                lock_ttl: clusterform_state::DEFAULT_LOCK_TTL,
            },
        };
        e.endpoints = hosts
            .split(',')
            .map(|h| format!("{scheme}://{h}"))
            .collect();
        e.prefix = prefix.to_string();
        Ok(StateSettings::Etcd(e))
    }
}

/// A loaded cluster file with its providers and state store.
pub struct Context {
    /// The cluster file, validated.
    pub model: Model,
    /// Its providers.
    pub providers: Providers,
    /// Their settings (no secrets: those come from the environment).
    pub provider_configs: BTreeMap<String, ProviderConfig>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// Where it is.
    pub state_location: StateLocation,
    /// Name and expiry.
    pub cluster: ClusterInfo,
}

/// `--files-dir`: set once, before any command runs.
static FILES_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Record `--files-dir` for every cluster file this run loads.
pub fn set_files_dir(dir: Option<PathBuf>) {
    let _ = FILES_DIR.set(dir);
}

/// `--state`: set once, before any command runs.
static STATE_OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Record `--state` for every cluster file this run loads; an unreadable location is an
/// error now, before anything is loaded.
pub fn set_state_override(location: Option<String>) -> Result<()> {
    if let Some(text) = &location {
        StateLocation::parse_override(
            text,
            &StateSettings::Local {
                path: PathBuf::new(),
            },
            Path::new("."),
        )
        .map_err(|m| {
            errors::hint(
                format!("--state: {m}"),
                "e.g. --state etcd://127.0.0.1:2379/clusterform/demo, or --state .clusterform-copy",
            )
        })?;
    }
    let _ = STATE_OVERRIDE.set(location);
    Ok(())
}

/// The state settings in force: `--state` over the file's `[state]`.
fn effective_state(state: &StateSettings) -> StateSettings {
    let Some(Some(text)) = STATE_OVERRIDE.get() else {
        return state.clone();
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    // Checked when it was set.
    StateLocation::parse_override(text, state, &cwd).unwrap_or_else(|_| state.clone())
}

/// Load and validate the cluster file (no state access; the plugins it names are
/// started for their schemas).
pub fn load_model(file: &Path) -> Result<Model> {
    load_model_and_registry(file).map(|(m, _)| m)
}

/// Load and validate the cluster file, with the registry of the providers it can use.
pub fn load_model_and_registry(file: &Path) -> Result<(Model, Registry)> {
    if !file.exists() {
        return Err(errors::hint(
            format!("cluster file `{}` not found", file.display()),
            "pass the path of a cluster.toml (see examples/), or run from its folder",
        ));
    }
    let options = clusterform_config::LoadOptions {
        files_dir: FILES_DIR.get().cloned().flatten(),
        etcd_ca: Some(ca_source(file)),
        reserved_addresses: Some(reserved_source(file)),
    };
    let source = clusterform_config::read_source(file).map_err(errors::config)?;
    let wanted = clusterform_config::wanted_providers(&source);
    let registry = registry_for(&wanted, &base_dir_of(file)).map_err(|(name, msg)| {
        errors::hint(
            format!("provider `{name}`: {msg}"),
            format!(
                "fix the plugin or the `[provider.{name}]` table of {}; the protocol is in docs/plugin-protocol.md, `clusterform providers check PATH` checks a plugin",
                file.display()
            ),
        )
    })?;
    let mut model = clusterform_config::parse_with(file, &source, &registry.schemas(), &options)
        .map_err(errors::config)?;
    model.state = effective_state(&model.state);
    Ok((model, registry))
}

/// What a read-only command (`drift`) works from: the providers only as [`Readers`].
pub struct ReadContext {
    /// The cluster file, validated.
    pub model: Model,
    /// Read-only handles to its providers: nothing reached through them can change an
    /// object.
    pub readers: Readers,
    /// The state store (read with `load`, never locked nor written).
    pub store: Arc<dyn StateStore>,
    /// Where it is.
    pub state_location: StateLocation,
}

/// Load the cluster file and its state store, with read-only provider handles.
pub fn load_readonly(file: &Path) -> Result<ReadContext> {
    let Context {
        model,
        providers,
        store,
        state_location,
        ..
    } = load(file)?;
    Ok(ReadContext {
        model,
        readers: Readers::from(providers),
        store,
        state_location,
    })
}

/// Load the cluster file, build its providers and open its state store.
pub fn load(file: &Path) -> Result<Context> {
    let (mut model, registry) = load_model_and_registry(file)?;
    let base_dir = base_dir_of(&model.path);
    let configs = provider_configs(&model);
    let providers = build_providers(&registry, &configs, &base_dir)
        .map_err(|(name, msg)| provider_error(file, &model, &name, &msg))?;
    provider_defaults(&registry, &mut model, &configs, &base_dir);
    check_resources(&registry, &model)?;

    let (store, state_location) = open_store(&model)?;
    let cluster = ClusterInfo {
        name: model.cluster.name.clone(),
        expires_after: model.cluster.expires_after,
        operator: Some(clusterform_state::operator()),
    };
    Ok(Context {
        model,
        providers,
        provider_configs: configs,
        store,
        state_location,
        cluster,
    })
}

/// Every provider the file names (tables, the cluster default, resources) with its
/// settings (empty when it has no table).
pub fn provider_configs(model: &Model) -> BTreeMap<String, ProviderConfig> {
    let mut configs: BTreeMap<String, ProviderConfig> = BTreeMap::new();
    for (name, block) in &model.providers {
        configs.insert(name.clone(), block.config.clone().into_iter().collect());
    }
    if let Some(p) = &model.cluster.provider {
        configs.entry(p.clone()).or_default();
    }
    for r in &model.resources {
        configs.entry(r.provider.clone()).or_default();
    }
    configs
}

/// What the providers refuse before any API call (EC2: at most 16 KB of user data),
/// checked before planning.
pub fn check_resources(registry: &Registry, model: &Model) -> Result<()> {
    let mut found = Vec::new();
    for factory in registry.all() {
        let mine: Vec<&clusterform_core::Resource> = model
            .resources
            .iter()
            .filter(|r| r.provider == factory.name())
            .collect();
        if mine.is_empty() {
            continue;
        }
        for p in factory.check_resources(&mine) {
            found.push(model.diagnostic(
                model.spans.get(&p.address).copied(),
                p.message,
                p.label,
                p.help,
            ));
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(errors::config(clusterform_config::Diagnostics(found)))
    }
}

/// A provider settings error, pointing at its `[provider.NAME]` table.
pub fn provider_error(file: &Path, model: &Model, name: &str, msg: &str) -> miette::Report {
    let span = model.providers.get(name).map(|b| b.span);
    errors::one(clusterform_config::diagnostic_at(
        file,
        &model.source,
        span,
        format!("provider `{name}`: {msg}"),
        "in these settings".to_string(),
        Some(format!(
            "fix the `[provider.{name}]` table; see docs/CONFIG.md"
        )),
    ))
}

/// Fill in the attributes a provider's settings decide (libvirt: each machine's image and
/// disk size, each network's forward mode), so that a changed setting shows in the plan.
/// The settings were checked by [`build_providers`].
fn provider_defaults(
    registry: &Registry,
    model: &mut Model,
    configs: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) {
    for (name, settings) in configs {
        if let Some(f) = registry.get(name) {
            f.apply_defaults(settings, base_dir, &mut model.resources);
        }
    }
}

/// Build providers from their settings; on error returns (provider, message).
pub fn build_providers(
    registry: &Registry,
    configs: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) -> std::result::Result<Providers, (String, String)> {
    let mut providers = Providers::new();
    for (name, config) in configs {
        let p = registry
            .build(name, config, base_dir)
            .map_err(|m| (name.clone(), m))?;
        providers.insert(p);
    }
    Ok(providers)
}

/// Build providers from their settings alone (a plan file, `reap`), with the plugins
/// they name; on error returns (provider, message).
pub fn build_for(
    configs: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) -> std::result::Result<Providers, (String, String)> {
    let registry = registry_for(configs, base_dir)?;
    build_providers(&registry, configs, base_dir)
}

fn open_store(model: &Model) -> Result<(Arc<dyn StateStore>, StateLocation)> {
    if let StateSettings::Local { path } = &model.state {
        refuse_legacy_shared_state(model, path)?;
    }
    let location = StateLocation::of(&model.state, model.state_encryption.as_deref());
    let identity = identity(&model.cluster.name, &model.path);
    Ok((open_location(&location, identity)?, location))
}

/// Which cluster a state is used for: its name and its file's name.
pub fn identity(cluster: &str, file: &Path) -> ClusterIdentity {
    ClusterIdentity {
        name: cluster.to_string(),
        file: file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Open the store at `location` for the cluster `identity` (a state of another cluster
/// is refused when it is read).
pub fn open_location(
    location: &StateLocation,
    identity: ClusterIdentity,
) -> Result<Arc<dyn StateStore>> {
    let inner = location.raw_store()?;
    let notify: clusterform_state::Notify = Arc::new(|note: &str| errln!("note: {note}"));
    let sealed = SealedStore::new(inner, location.key_source(), sensitive()).with_notify(notify);
    Ok(Arc::new(Owned::new(Arc::new(sealed), identity)))
}

/// Where the key of the state named `name` comes from: `CLUSTERFORM_STATE_KEY`, else
/// `[state] encryption`, else its key file under the user's config folder (made when
/// first needed).
fn key_source_named(name: &str, encryption: Option<&Path>) -> KeySource {
    if let Ok(p) = std::env::var(clusterform_state::seal::KEY_ENV)
        && !p.is_empty()
    {
        return KeySource::Passphrase(p);
    }
    if let Some(f) = encryption {
        return KeySource::File(f.to_path_buf());
    }
    KeySource::Default(
        config_dir()
            .join("clusterform/keys")
            .join(format!("{}.key", short_hash(name))),
    )
}

/// 24 hex digits of the SHA-256 of `name`.
fn short_hash(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
fn config_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Which attribute values are sealed at rest: any string holding a PEM private key
/// (a machine's config carrying its etcd key, a Butane file with a key in it).
pub fn sensitive() -> clusterform_state::Sensitive {
    Arc::new(|r: &clusterform_core::ResourceState, attr: &str| {
        r.attrs
            .get(attr)
            .and_then(serde_json::Value::as_str)
            .is_some_and(clusterform_state::seal::holds_private_key)
    })
}

/// Before each cluster file had its own state folder, every file of a folder used
/// `.clusterform/`. A file other than `cluster.toml` whose own folder does not exist yet,
/// beside a `.clusterform/` made then (it records no cluster) that holds only this
/// file's providers' objects, is told to move it rather than start afresh (which would
/// make every object again).
fn refuse_legacy_shared_state(model: &Model, path: &Path) -> Result<()> {
    let Some(dir) = model.path.parent() else {
        return Ok(());
    };
    let legacy = dir.join(clusterform_config::DEFAULT_STATE_PATH);
    if path == legacy || path.exists() || !legacy.join("state.redb").exists() {
        return Ok(());
    }
    let Ok(snapshot) = LocalStore::new(legacy.clone()).load() else {
        return Ok(());
    };
    let providers: std::collections::BTreeSet<&str> = model
        .resources
        .iter()
        .map(|r| r.provider.as_str())
        .collect();
    // A state that records its cluster was made by a build that gives each file its own
    // folder: it is `cluster.toml`'s (or named on purpose), never this file's.
    let is_ours = snapshot.identity.is_none()
        && !snapshot.resources.is_empty()
        && snapshot
            .resources
            .values()
            .all(|r| providers.contains(r.provider.as_str()));
    if !is_ours {
        return Ok(());
    }
    Err(errors::hint(
        format!(
            "the state of `{}` may be in `{}`: each cluster file now has its own state folder, and this one's is `{}`, which does not exist yet",
            model.path.display(),
            legacy.display(),
            path.display()
        ),
        format!(
            "if `{}` holds this file's machines, move it: `mv {} {}`; if not, make the new folder empty (`mkdir {}`) and run the command again",
            legacy.display(),
            legacy.display(),
            path.display(),
            path.display()
        ),
    ))
}

/// Split `[FILE] REST...` arguments: the first is the cluster file when it ends in
/// `.toml` or names an existing file; otherwise the file is `cluster.toml`.
pub fn split_file_arg(args: &[String]) -> (PathBuf, &[String]) {
    match args.split_first() {
        Some((first, rest)) if first.ends_with(".toml") || Path::new(first).is_file() => {
            (PathBuf::from(first), rest)
        }
        _ => (PathBuf::from("cluster.toml"), args),
    }
}

/// The state secret holding the cluster's etcd CA certificate.
pub const CA_CERT: &str = "etcd-ca-cert";
/// The state secret holding the cluster's etcd CA key (sealed).
pub const CA_KEY: &str = "etcd-ca-key";

/// The cluster's etcd CA for loading `file`: the one its state keeps (opened with the
/// state's key), or a new one when the state has none yet; the first apply keeps it
/// ([`keep_ca`]).
pub fn ca_source(file: &Path) -> clusterform_config::CaSource {
    let file = file.to_path_buf();
    Arc::new(
        move |cluster: &str, state: &StateSettings, encryption: Option<&Path>| {
            // A state that cannot be read (damaged, its key missing) is reported, with
            // what to do, by the command that uses it (`state restore` needs no CA): the
            // file loads with a throwaway CA, which no apply ever keeps (the state is read
            // again under the lock before anything changes).
            let state = &effective_state(state);
            let snap = match snapshot_for(&file, cluster, state, encryption, false) {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(
                        "the cluster's etcd CA is not readable from the state ({e}); a throwaway one stands in"
                    );
                    clusterform_state::Snapshot::default()
                }
            };
            let ca = match (snap.secrets.get(CA_CERT), snap.secrets.get(CA_KEY)) {
                (Some(cert), Some(key)) => clusterform_pki::Ca::load(cert, &key.clone().into()),
                _ => clusterform_pki::Ca::generate(cluster, clusterform_pki::DEFAULT_VALIDITY),
            };
            ca.map(Arc::new).map_err(|e| e.to_string())
        },
    )
}

/// A CA source that gives `ca`, the one a plan's configs were issued from.
fn fixed_ca(ca: Option<Arc<clusterform_pki::Ca>>) -> clusterform_config::CaSource {
    Arc::new(move |_: &str, _: &StateSettings, _: Option<&Path>| {
        ca.clone()
            .ok_or_else(|| "this apply has no etcd CA to issue the configs from".to_string())
    })
}

/// The state of cluster `cluster` of `file`, read (unlocked) while the file loads: all
/// of it, or without the records and journal (`records` false: its secrets).
fn snapshot_for(
    file: &Path,
    cluster: &str,
    state: &StateSettings,
    encryption: Option<&Path>,
    records: bool,
) -> std::result::Result<clusterform_state::Snapshot, String> {
    let location = StateLocation::of(state, encryption);
    let store = open_location(&location, identity(cluster, file)).map_err(|e| e.to_string())?;
    if records {
        store.load()
    } else {
        store.load_secrets()
    }
    .map_err(|e| e.to_string())
}

/// The addresses the state's `ip_reservation`s hold (a Metal cluster over metros).
pub fn reserved_source(file: &Path) -> clusterform_config::ReservedSource {
    let file = file.to_path_buf();
    Arc::new(
        move |cluster: &str, state: &StateSettings, encryption: Option<&Path>| {
            // Unreadable: nothing reserved yet, as far as this load knows (see ca_source).
            let state = &effective_state(state);
            let snap = snapshot_for(&file, cluster, state, encryption, true).unwrap_or_default();
            Ok(reserved_in(
                snap.resources.iter().map(|(a, r)| (a, &r.attrs)),
            ))
        },
    )
}

/// The reserved addresses among `objects`: each `ip_reservation`'s `address`.
fn reserved_in<'a>(
    objects: impl Iterator<Item = (&'a Address, &'a clusterform_core::Attrs)>,
) -> BTreeMap<Address, std::net::Ipv4Addr> {
    objects
        .filter(|(a, _)| a.kind == "ip_reservation")
        .filter_map(|(a, attrs)| {
            let ip = attrs.get("address")?.as_str()?.parse().ok()?;
            Some((a.clone(), ip))
        })
        .collect()
}

/// Renders a plan's deferred attributes during its apply: the cluster file read and
/// expanded again with the addresses reserved by then (once per set of addresses), with
/// the schemas of the providers the apply has (no plugin is started for it) and `ca`,
/// the etcd CA the plan's configs were issued from (never another one).
pub fn deferred_render(
    file: &Path,
    providers: &Providers,
    ca: Option<Arc<clusterform_pki::Ca>>,
) -> clusterform_engine::Render {
    let file = file.to_path_buf();
    let schemas: Vec<clusterform_core::ProviderSchema> = providers
        .names()
        .filter_map(|n| providers.get(n).ok().map(|p| p.schema().clone()))
        .collect();
    type Rendered = (BTreeMap<Address, std::net::Ipv4Addr>, Arc<Model>);
    let cache: Arc<std::sync::Mutex<Option<Rendered>>> = Arc::default();
    Arc::new(
        move |address: &Address, objects: &BTreeMap<Address, clusterform_core::Attrs>| {
            let reserved = reserved_in(objects.iter());
            let mut cached = cache.lock().unwrap_or_else(|e| e.into_inner());
            let model = match cached.as_ref() {
                Some((r, m)) if *r == reserved => m.clone(),
                _ => {
                    let given = reserved.clone();
                    let options = clusterform_config::LoadOptions {
                        files_dir: FILES_DIR.get().cloned().flatten(),
                        etcd_ca: Some(fixed_ca(ca.clone())),
                        reserved_addresses: Some(Arc::new(
                            move |_: &str, _: &StateSettings, _: Option<&Path>| Ok(given.clone()),
                        )),
                    };
                    let model = clusterform_config::load_with(&file, &schemas, &options)
                    .map(Arc::new)
                    .map_err(|d| {
                        let first = d.0.first().map_or_else(String::new, |x| format!(": {}", x.message));
                        format!("the cluster file `{}` no longer loads{first}; fix it and plan again", file.display())
                    })?;
                    *cached = Some((reserved, model.clone()));
                    model
                }
            };
            let r = model
                .resources
                .iter()
                .find(|r| &r.address == address)
                .ok_or_else(|| {
                    format!(
                        "the cluster file `{}` no longer has it; plan again",
                        file.display()
                    )
                })?;
            if let Some(d) = r.deferred.first() {
                return Err(format!(
                    "`{d}` is still not known (what it is made from was not made); run apply again"
                ));
            }
            Ok(r.attrs.clone())
        },
    )
}

/// Refuse to plan with certificates of `ca` when the state (read under the lock) keeps
/// another CA: another run kept its CA while this one waited for the lock, so this run's
/// configs were issued from a CA that will never be kept.
pub fn check_ca(
    ca: Option<&clusterform_pki::Ca>,
    snapshot: &clusterform_state::Snapshot,
) -> Result<()> {
    match (ca, snapshot.secrets.get(CA_CERT)) {
        (Some(ca), Some(kept)) if kept.trim() != ca.cert_pem().trim() => Err(errors::hint(
            "the state got the cluster's etcd CA from another run while this one was waiting for the lock; this run's certificates are of another CA",
            "run the command again: it issues the certificates from the CA the state keeps",
        )),
        _ => Ok(()),
    }
}

/// Keep `ca` in the state (sealed) when the state has no CA yet: before the first
/// change of the run whose configs it issued.
pub fn keep_ca(
    store: &Arc<dyn StateStore>,
    ca: Option<&clusterform_pki::Ca>,
    snapshot: &clusterform_state::Snapshot,
) -> Result<()> {
    let Some(ca) = ca else { return Ok(()) };
    if snapshot.secrets.contains_key(CA_CERT) {
        return check_ca(Some(ca), snapshot);
    }
    store
        .commit(&[
            clusterform_state::Mutation::SetSecret {
                name: CA_CERT.into(),
                value: ca.cert_pem().to_string(),
            },
            clusterform_state::Mutation::SetSecret {
                name: CA_KEY.into(),
                value: ca.key_pem().expose().to_string(),
            },
        ])
        .map_err(errors::state)?;
    Ok(())
}
