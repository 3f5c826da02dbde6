//! The provider registry: every provider, built in or a plugin executable, reached through
//! one interface ([`ProviderFactory`]): its name, version, origin, schema, settings check,
//! the defaults its settings put into resources, the checks it makes before any API
//! call, and construction. Whoever needs a provider asks the [`Registry`], never a crate
//! by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterform_core::{Address, ProviderSchema, Resource};

use crate::{Provider, ProviderConfig};

/// Where a provider comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Linked into this build.
    BuiltIn,
    /// An executable speaking the plugin protocol (docs/plugin-protocol.md).
    Plugin(PathBuf),
    /// Known by its schema only: cluster files for it validate and render, but this
    /// build cannot plan or apply with it; the text says why.
    SchemaOnly(String),
}

impl Origin {
    /// One word for listings: `built-in`, `plugin`, `schema only`.
    pub fn describe(&self) -> &'static str {
        match self {
            Origin::BuiltIn => "built-in",
            Origin::Plugin(_) => "plugin",
            Origin::SchemaOnly(_) => "schema only",
        }
    }
}

/// A resource a provider refuses before any API call (EC2: user data over 16 KB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceProblem {
    /// The resource.
    pub address: Address,
    /// What is wrong.
    pub message: String,
    /// A short label for the resource's place in the file.
    pub label: String,
    /// What to do.
    pub help: Option<String>,
}

/// One provider, as the registry knows it.
pub trait ProviderFactory: Send + Sync {
    /// Its name in `cluster.toml`.
    fn name(&self) -> &str;

    /// Its version.
    fn version(&self) -> &str;

    /// Built in, a plugin, or a schema only.
    fn origin(&self) -> Origin;

    /// The kinds and attributes it manages.
    fn schema(&self) -> &ProviderSchema;

    /// Check its `[provider.NAME]` settings; `base_dir` is the cluster file's folder.
    /// The default builds the provider and drops it.
    fn check_settings(&self, settings: &ProviderConfig, base_dir: &Path) -> Result<(), String> {
        self.build(settings, base_dir).map(drop)
    }

    /// Fill in the attributes its settings decide (libvirt: each machine's image), so
    /// that a changed setting shows in the plan. Settings that do not check are left to
    /// [`ProviderFactory::check_settings`] to report.
    fn apply_defaults(
        &self,
        _settings: &ProviderConfig,
        _base_dir: &Path,
        _resources: &mut [Resource],
    ) {
    }

    /// What it refuses before any API call, for the resources it manages.
    fn check_resources(&self, _resources: &[&Resource]) -> Vec<ResourceProblem> {
        Vec::new()
    }

    /// Build the provider from its settings.
    fn build(
        &self,
        settings: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<Arc<dyn Provider>, String>;
}

/// How a built-in provider is made from its settings.
pub type BuildFn = fn(&ProviderConfig, &Path) -> Result<Arc<dyn Provider>, String>;
/// How a built-in provider's settings fill in attributes ([`ProviderFactory::apply_defaults`]).
pub type DefaultsFn = fn(&ProviderConfig, &Path, &mut [Resource]);
/// What a built-in provider refuses before any API call ([`ProviderFactory::check_resources`]).
pub type ChecksFn = fn(&[&Resource]) -> Vec<ResourceProblem>;

/// A provider linked into the build: its schema, version and functions.
pub struct BuiltIn {
    schema: ProviderSchema,
    version: &'static str,
    build: BuildFn,
    defaults: Option<DefaultsFn>,
    checks: Option<ChecksFn>,
}

impl BuiltIn {
    /// The provider `schema.provider`, at `version` (its crate's), made by `build`.
    pub fn new(schema: ProviderSchema, version: &'static str, build: BuildFn) -> Self {
        BuiltIn {
            schema,
            version,
            build,
            defaults: None,
            checks: None,
        }
    }

    /// With the defaults its settings put into resources.
    pub fn with_defaults(mut self, f: DefaultsFn) -> Self {
        self.defaults = Some(f);
        self
    }

    /// With the checks it makes before any API call.
    pub fn with_checks(mut self, f: ChecksFn) -> Self {
        self.checks = Some(f);
        self
    }
}

impl ProviderFactory for BuiltIn {
    fn name(&self) -> &str {
        &self.schema.provider
    }
    fn version(&self) -> &str {
        self.version
    }
    fn origin(&self) -> Origin {
        Origin::BuiltIn
    }
    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }
    fn apply_defaults(
        &self,
        settings: &ProviderConfig,
        base_dir: &Path,
        resources: &mut [Resource],
    ) {
        if let Some(f) = self.defaults {
            f(settings, base_dir, resources);
        }
    }
    fn check_resources(&self, resources: &[&Resource]) -> Vec<ResourceProblem> {
        self.checks.map(|f| f(resources)).unwrap_or_default()
    }
    fn build(
        &self,
        settings: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<Arc<dyn Provider>, String> {
        (self.build)(settings, base_dir)
    }
}

/// A provider known by its schema only ([`Origin::SchemaOnly`]).
pub struct SchemaOnly {
    schema: ProviderSchema,
    why: String,
}

impl SchemaOnly {
    /// A provider called `schema.provider` that cannot be built, because `why`.
    pub fn new(schema: ProviderSchema, why: impl Into<String>) -> Self {
        SchemaOnly {
            schema,
            why: why.into(),
        }
    }
}

impl ProviderFactory for SchemaOnly {
    fn name(&self) -> &str {
        &self.schema.provider
    }
    fn version(&self) -> &str {
        "-"
    }
    fn origin(&self) -> Origin {
        Origin::SchemaOnly(self.why.clone())
    }
    fn schema(&self) -> &ProviderSchema {
        &self.schema
    }
    fn check_settings(&self, _: &ProviderConfig, _: &Path) -> Result<(), String> {
        Ok(())
    }
    fn build(&self, _: &ProviderConfig, _: &Path) -> Result<Arc<dyn Provider>, String> {
        Err(self.why.clone())
    }
}

/// The providers a run can use, by name.
#[derive(Clone, Default)]
pub struct Registry {
    map: BTreeMap<String, Arc<dyn ProviderFactory>>,
}

impl Registry {
    /// No providers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a provider under its name.
    pub fn register(&mut self, factory: Arc<dyn ProviderFactory>) {
        self.map.insert(factory.name().to_string(), factory);
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ProviderFactory>> {
        self.map.get(name)
    }

    /// Every provider, `sim` first, then by name (the order messages list them in).
    pub fn all(&self) -> Vec<&Arc<dyn ProviderFactory>> {
        let mut all: Vec<_> = self.map.values().collect();
        all.sort_by_key(|f| (f.name() != "sim", f.name().to_string()));
        all
    }

    /// Their names, in the order of [`Registry::all`].
    pub fn names(&self) -> Vec<&str> {
        self.all().into_iter().map(|f| f.name()).collect()
    }

    /// Their schemas, in the order of [`Registry::all`].
    pub fn schemas(&self) -> Vec<ProviderSchema> {
        self.all().into_iter().map(|f| f.schema().clone()).collect()
    }

    /// True when this registry can build `name` (not unknown, not schema only).
    pub fn can_apply(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|f| !matches!(f.origin(), Origin::SchemaOnly(_)))
    }

    /// What to say about a provider this registry does not have.
    pub fn missing(&self, name: &str) -> String {
        format!(
            "this build has no provider `{name}`; it has: {} (a plugin is found as `clusterform-provider-{name}` beside clusterform or on PATH, or named by `[provider.{name}] plugin = \"PATH\"`)",
            self.names().join(", ")
        )
    }

    /// Build the provider `name` from its settings.
    pub fn build(
        &self,
        name: &str,
        settings: &ProviderConfig,
        base_dir: &Path,
    ) -> Result<Arc<dyn Provider>, String> {
        match self.get(name) {
            Some(f) => f.build(settings, base_dir),
            None => Err(self.missing(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_core::ProviderSchema;

    fn schema(name: &str) -> ProviderSchema {
        ProviderSchema {
            provider: name.into(),
            kinds: Vec::new(),
        }
    }

    #[test]
    fn sim_comes_first_then_by_name_and_schema_only_cannot_apply() {
        let mut r = Registry::new();
        for n in ["metal", "sim", "ec2"] {
            r.register(Arc::new(SchemaOnly::new(schema(n), format!("no {n}"))));
        }
        assert_eq!(r.names(), ["sim", "ec2", "metal"]);
        assert!(!r.can_apply("metal"));
        assert!(!r.can_apply("gcp"));
        let err = r
            .build("metal", &ProviderConfig::new(), Path::new("."))
            .err();
        assert_eq!(err.as_deref(), Some("no metal"));
        let err = r.build("gcp", &ProviderConfig::new(), Path::new(".")).err();
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("this build has no provider `gcp`; it has: sim, ec2, metal"),
            "{err}"
        );
    }
}
