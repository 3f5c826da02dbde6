//! Helpers for the libvirt scenarios: a seeded `test:///<tmpdir>/node.xml` per test (never
//! `test:///default`), the engine run in-process over one provider (the test driver keeps
//! its state only while the connection is open, so a second `clusterform` process would
//! see a fresh copy), and the real lane's environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterform_config::Model;
use clusterform_core::{Action, Plan, ResourceState};
use clusterform_engine::{
    ApplyOptions, ApplyReport, ClusterInfo, Providers, RetryPolicy, apply, plan, plan_destroy,
    refresh,
};
use clusterform_provider::ProviderConfig;
use clusterform_provider_libvirt::LibvirtProvider;
use clusterform_state::{LocalStore, StateStore};

/// The image path every example names; the seeded host has it as a volume of a pool, so
/// the provider uses it in place.
pub const EXAMPLE_IMAGE: &str = "/var/lib/libvirt/images/flatcar_production_qemu_image.img";

/// Write `node.xml` for the test driver into `dir`: a pool `default` holding the
/// examples' Flatcar image, plus `extra` (domains or networks) inside `<node>`.
/// Returns its URI.
pub fn seed_host(dir: &Path, extra: &str) -> String {
    let node = format!(
        r#"<node>
  <pool type='dir'>
    <name>default</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <target><path>/var/lib/libvirt/images</path></target>
    <volume type='file'>
      <name>flatcar_production_qemu_image.img</name>
      <capacity unit='GiB'>8</capacity>
      <target><path>{EXAMPLE_IMAGE}</path><format type='qcow2'/></target>
    </volume>
  </pool>
  {extra}
</node>
"#
    );
    let path = dir.join("node.xml");
    std::fs::write(&path, node).expect("write node.xml");
    format!("test://{}", path.display())
}

/// A cluster file run through config, refresh, plan and apply in this process, over one
/// libvirt provider whose connection stays open between runs.
pub struct InProcess {
    /// The loaded cluster file (with the provider's defaults filled in).
    pub model: Model,
    /// The provider.
    pub provider: Arc<LibvirtProvider>,
    providers: Providers,
    store: Arc<dyn StateStore>,
    cluster: ClusterInfo,
}

impl InProcess {
    /// Load `file` with `[provider.libvirt]` `uri` and `ignition_dir` replaced; the state
    /// goes to `state_dir`.
    pub fn load(file: &Path, uri: &str, ignition_dir: &Path, state_dir: &Path) -> InProcess {
        let schemas = vec![
            clusterform_provider_sim::schema(),
            clusterform_provider_libvirt::schema(),
        ];
        let mut model = clusterform_config::load(file, &schemas)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut config: ProviderConfig = model
            .providers
            .get("libvirt")
            .map(|b| b.config.clone().into_iter().collect())
            .unwrap_or_default();
        config.insert("uri".into(), uri.into());
        config.insert(
            "ignition_dir".into(),
            ignition_dir.display().to_string().into(),
        );
        let base = file.parent().unwrap_or(Path::new("."));
        let provider =
            Arc::new(LibvirtProvider::from_config(&config, base).expect("valid settings"));
        clusterform_provider_libvirt::apply_defaults(provider.config(), &mut model.resources);
        let mut providers = Providers::new();
        providers.insert(provider.clone());
        InProcess {
            cluster: ClusterInfo {
                name: model.cluster.name.clone(),
                expires_after: None,
                operator: Some("test@host".into()),
            },
            model,
            provider,
            providers,
            store: Arc::new(LocalStore::new(state_dir.to_path_buf())),
        }
    }

    /// The state's records.
    pub fn state(&self) -> BTreeMap<clusterform_core::Address, ResourceState> {
        self.store.load().expect("load state").resources
    }

    /// Refresh and plan (`destroy`: plan the deletion of everything).
    pub async fn plan(&self, destroy: bool) -> Plan {
        let snap = self.store.load().expect("load state");
        let readers = self.providers.readers();
        let refreshed = refresh(&readers, &snap.resources, 8, RetryPolicy::default())
            .await
            .expect("refresh");
        if destroy {
            plan_destroy(
                &self.cluster.name,
                &refreshed,
                &readers,
                snap.lineage,
                snap.serial,
            )
        } else {
            plan(
                &self.cluster.name,
                &self.model.resources,
                &self.model.graph,
                &refreshed,
                &readers,
                snap.lineage,
                snap.serial,
            )
            .expect("plan")
        }
    }

    /// Plan and apply; every operation must succeed.
    pub async fn apply(&self, destroy: bool) -> (Plan, ApplyReport) {
        let p = self.plan(destroy).await;
        let snap = self.store.load().expect("load state");
        let report = apply(
            &p,
            &snap.resources,
            &self.providers,
            self.store.clone(),
            &self.cluster,
            &ApplyOptions::default(),
            Arc::new(|_| {}),
        )
        .await
        .expect("apply");
        assert!(report.success(), "apply failed: {:?}", report.outcomes);
        (p, report)
    }
}

/// The actions of a plan as `(address, action)` strings, sorted.
pub fn actions(p: &Plan) -> Vec<(String, Action)> {
    let mut v: Vec<(String, Action)> = p
        .changes
        .iter()
        .map(|c| (c.address.to_string(), c.action))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The real lane's libvirtd, from `scripts/libvirt-lane start`: (URI, guest image, lane
/// folder). None outside CI when it is not running (the caller skips with a note);
/// under `CI=true` a missing lane is a failure.
pub fn real_lane() -> Option<(String, PathBuf, PathBuf)> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("CLUSTERFORM_LIBVIRT_URI"),
        get("CLUSTERFORM_LIBVIRT_GUEST"),
        get("CLUSTERFORM_LIBVIRT_LANE"),
    ) {
        (Some(u), Some(g), Some(l)) => Some((u, PathBuf::from(g), PathBuf::from(l))),
        _ => {
            let what = "no real libvirtd: run `eval \"$(sudo scripts/libvirt-lane start)\"` first (it exports CLUSTERFORM_LIBVIRT_URI, _GUEST and _LANE), or ./scripts/test, which does";
            assert!(
                std::env::var("CI").ok().as_deref() != Some("true"),
                "CI=true: {what}"
            );
            eprintln!("skipped: {what}");
            None
        }
    }
}
