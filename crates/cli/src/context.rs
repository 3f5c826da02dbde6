//! What every command starts from: the loaded cluster file, its providers and its state
//! store. The list of providers this build has lives here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterform_config::{Model, StateSettings};
use clusterform_core::ProviderSchema;
use clusterform_engine::{ClusterInfo, Providers, Readers};
use clusterform_provider::{Provider, ProviderConfig};
use clusterform_state::{ClusterIdentity, LocalStore, Owned, StateStore};
use miette::Result;
use serde::{Deserialize, Serialize};

use crate::errors;

/// Providers whose cluster files this build reads (validate, render, graph) but cannot
/// plan or apply (not built in, or not written yet): their resources have the same
/// kinds and attributes as `sim`'s.
const PLANNED_PROVIDERS: &[&str] = &[
    #[cfg(not(feature = "ec2"))]
    "ec2",
    #[cfg(not(feature = "libvirt"))]
    "libvirt",
    "metal",
];

/// Providers this build can plan and apply with.
const APPLY_PROVIDERS: &[&str] = &[
    "sim",
    #[cfg(feature = "ec2")]
    "ec2",
    #[cfg(feature = "libvirt")]
    "libvirt",
];

/// The schemas of every provider this build knows: `sim` first, then by name.
pub fn schemas() -> Vec<ProviderSchema> {
    let sim = clusterform_provider_sim::schema();
    let mut all = vec![sim.clone()];
    #[cfg(feature = "ec2")]
    all.push(clusterform_provider_ec2::schema());
    #[cfg(feature = "libvirt")]
    all.push(clusterform_provider_libvirt::schema());
    for name in PLANNED_PROVIDERS {
        all.push(ProviderSchema {
            provider: (*name).to_string(),
            ..sim.clone()
        });
    }
    // `sim` first, the others by name (the order messages list them in).
    all[1..].sort_by(|a, b| a.provider.cmp(&b.provider));
    all
}

/// Where the state lives, as recorded in plan files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum StateLocation {
    /// The local redb store.
    Local {
        /// Its folder.
        path: PathBuf,
    },
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

/// Load and validate the cluster file (no provider or state access).
pub fn load_model(file: &Path) -> Result<Model> {
    if !file.exists() {
        return Err(errors::hint(
            format!("cluster file `{}` not found", file.display()),
            "pass the path of a cluster.toml (see examples/), or run from its folder",
        ));
    }
    let options = clusterform_config::LoadOptions {
        files_dir: FILES_DIR.get().cloned().flatten(),
    };
    clusterform_config::load_with(file, &schemas(), &options).map_err(errors::config)
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
    let model = load_model(file)?;
    let base_dir = model
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let mut model = model;
    let configs = provider_configs(&model);
    let providers = build_providers(&configs, &base_dir)
        .map_err(|(name, msg)| provider_error(file, &model, &name, &msg))?;
    provider_defaults(&mut model, &configs, &base_dir);
    check_resources(&model)?;

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

/// What a provider refuses before any API call, checked before planning: EC2 takes at
/// most 16 KB of user data (the rendered Ignition config).
pub fn check_resources(model: &Model) -> Result<()> {
    #[cfg(feature = "ec2")]
    {
        let mut found = Vec::new();
        for r in &model.resources {
            if r.provider != "ec2" || r.address.kind != "machine" {
                continue;
            }
            let Some(ud) = r.attrs.get("user_data").and_then(|v| v.as_str()) else {
                continue;
            };
            if let Err(m) = clusterform_provider_ec2::encode_user_data(&r.address.to_string(), ud) {
                found.push(model.diagnostic(
                    model.spans.get(&r.address).copied(),
                    m,
                    "its Ignition config is too big for EC2".to_string(),
                    Some(
                        "`clusterform render` shows the config; see docs/CONFIG.md, `user_data`"
                            .to_string(),
                    ),
                ));
            }
        }
        if !found.is_empty() {
            return Err(errors::config(clusterform_config::Diagnostics(found)));
        }
    }
    let _ = model;
    Ok(())
}

/// True when this build can plan and apply with the provider.
pub fn can_apply(provider: &str) -> bool {
    !PLANNED_PROVIDERS.contains(&provider)
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
#[allow(unused_variables)]
fn provider_defaults(
    model: &mut Model,
    configs: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) {
    #[cfg(feature = "libvirt")]
    if let Some(c) = configs.get(clusterform_provider_libvirt::PROVIDER_NAME)
        && let Ok(c) =
            clusterform_provider_libvirt::LibvirtConfig::from_provider_config(c, base_dir)
    {
        clusterform_provider_libvirt::apply_defaults(&c, &mut model.resources);
    }
}

/// Build providers from their settings; on error returns (provider, message).
pub fn build_providers(
    configs: &BTreeMap<String, ProviderConfig>,
    base_dir: &Path,
) -> std::result::Result<Providers, (String, String)> {
    let mut providers = Providers::new();
    for (name, config) in configs {
        let p: Arc<dyn Provider> = match name.as_str() {
            "sim" => Arc::new(
                clusterform_provider_sim::SimProvider::from_config(config, base_dir)
                    .map_err(|e| (name.clone(), e.to_string()))?,
            ),
            #[cfg(feature = "ec2")]
            "ec2" => Arc::new(
                clusterform_provider_ec2::Ec2Provider::from_config(config)
                    .map_err(|e| (name.clone(), e.to_string()))?,
            ),
            #[cfg(feature = "libvirt")]
            "libvirt" => Arc::new(
                clusterform_provider_libvirt::LibvirtProvider::from_config(config, base_dir)
                    .map_err(|e| (name.clone(), e.to_string()))?,
            ),
            other => {
                return Err((
                    other.to_string(),
                    format!(
                        "this build cannot plan or apply with `{other}` yet (it can: {}); \
                         `validate`, `render` and `graph` work with this file",
                        APPLY_PROVIDERS.join(", ")
                    ),
                ));
            }
        };
        providers.insert(p);
    }
    Ok(providers)
}

fn open_store(model: &Model) -> Result<(Arc<dyn StateStore>, StateLocation)> {
    match &model.state {
        StateSettings::Local { path } => {
            refuse_legacy_shared_state(model, path)?;
            let location = StateLocation::Local { path: path.clone() };
            let identity = identity(&model.cluster.name, &model.path);
            Ok((open_location(&location, identity), location))
        }
        StateSettings::Etcd { .. } => Err(errors::hint(
            "the etcd state backend is not available in this build yet",
            "remove `backend = \"etcd\"` from `[state]` to use the local store",
        )),
    }
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
pub fn open_location(location: &StateLocation, identity: ClusterIdentity) -> Arc<dyn StateStore> {
    let inner: Arc<dyn StateStore> = match location {
        StateLocation::Local { path } => Arc::new(LocalStore::new(path.clone())),
    };
    Arc::new(Owned::new(inner, identity))
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
