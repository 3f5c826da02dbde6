//! Day 2 through the engine, against a fake etcd cluster and a fake provider whose
//! member machines "boot" (join the fake cluster) when created and go down when deleted:
//! the order of membership calls, the config a joining member boots with, a failed step
//! that keeps its journal entry for the next plan, a cluster that cannot be reached or
//! is not healthy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use clusterform_core::{Address, Attrs, Plan, Resource, ResourceGraph, StepKind, UpdatePolicy};
use clusterform_engine::day2::{Day2Settings, MemberSet, Membership, plan_members};
use clusterform_engine::{
    ApplyOptions, ApplyReport, ClusterInfo, EngineError, MemberWaits, Providers, RetryPolicy,
    apply, plan, refresh,
};
use clusterform_etcd::{EtcdAdmin, EtcdError, EtcdReader, FakeEtcd, FakeMethod};
use clusterform_ignition::etcd::{flag, member_args};
use clusterform_ignition::{EtcdMember, MachineSpec, Platform, StaticNetwork, render, to_json};
use clusterform_provider::fake::FakeProvider;
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Provider, ReadRequest, Reader, Result as PResult,
    UpdateRequest,
};
use clusterform_state::{MemStore, StateStore};
use serde_json::json;

fn ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 101)) + i)
}

fn peer(i: u32) -> String {
    format!("http://{}:2380", ip(i))
}

/// Member `i` of a cluster of `n` (`demo-central-i`), marked with `marker` (a config
/// change).
fn member(i: u32, n: u32, marker: &str) -> Resource {
    let spec = MachineSpec {
        hostname: format!("demo-central-{i}{marker}"),
        platform: Platform::Sim,
        ssh_authorized_keys: vec![],
        network: Some(StaticNetwork {
            address: ip(i),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            dns: vec![],
            vlan: None,
        }),
        docker_tcp: false,
        etcd: Some(EtcdMember {
            name: format!("demo-central-{i}"),
            address: ip(i),
            initial_cluster: (0..n)
                .map(|k| (format!("demo-central-{k}"), ip(k)))
                .collect(),
            cluster_token: "demo".into(),
        }),
        etcd_proxy: None,
        etcd_endpoints: vec![],
        tls: None,
    };
    Resource {
        address: Address::indexed("machine", "central", i),
        provider: "fake".into(),
        attrs: Attrs::from([
            ("size".to_string(), json!("m")),
            ("address".to_string(), json!(ip(i).to_string())),
            ("user_data".to_string(), json!(to_json(&render(&spec, &[])))),
        ]),
        refs: BTreeMap::new(),
        depends_on: vec![],
        deferred: Vec::new(),
    }
}

fn cluster(n: u32, marker: &str) -> Vec<Resource> {
    (0..n).map(|i| member(i, n, marker)).collect()
}

/// A provider whose member machines join the fake etcd when made (with the config they
/// were given: it must say `existing` and name them) and go down when deleted.
struct Booting {
    inner: FakeProvider,
    etcd: Mutex<Arc<FakeEtcd>>,
    /// (peer URL, `--initial-cluster`) of every member machine made.
    joins: Mutex<Vec<(String, String)>>,
}

impl Booting {
    fn args_of(attrs: &Attrs) -> Option<Vec<String>> {
        let ud = attrs.get("user_data")?.as_str()?;
        member_args(&serde_json::from_str(ud).ok()?)
    }
}

#[async_trait]
impl Reader for Booting {
    fn name(&self) -> &str {
        "fake"
    }
    fn schema(&self) -> &clusterform_core::ProviderSchema {
        self.inner.schema()
    }
    fn max_batch(&self) -> usize {
        100
    }
    fn runs_machines(&self) -> bool {
        true
    }
    async fn read(&self, req: &ReadRequest) -> PResult<Option<Object>> {
        self.inner.read(req).await
    }
    async fn read_batch(&self, reqs: &[ReadRequest]) -> Vec<PResult<Option<Object>>> {
        self.inner.read_batch(reqs).await
    }
    async fn find_by_key(&self, kind: &str, key: &str) -> PResult<Option<Object>> {
        self.inner.find_by_key(kind, key).await
    }
    async fn list_cluster(&self, cluster: &str) -> PResult<Vec<Object>> {
        self.inner.list_cluster(cluster).await
    }
    async fn list_owned(&self) -> PResult<Vec<Object>> {
        self.inner.list_owned().await
    }
}

#[async_trait]
impl Provider for Booting {
    async fn create(&self, req: &CreateRequest) -> PResult<Object> {
        let o = self.inner.create(req).await?;
        if let Some(args) = Self::args_of(&req.attrs) {
            let url = flag(&args, "initial-advertise-peer-urls")
                .unwrap_or_default()
                .to_string();
            let name = flag(&args, "name").unwrap_or_default().to_string();
            let cluster = flag(&args, "initial-cluster")
                .unwrap_or_default()
                .to_string();
            self.joins.lock().unwrap().push((url.clone(), cluster));
            if flag(&args, "initial-cluster-state") == Some("existing") {
                self.etcd.lock().unwrap().start(&url, &name);
            }
        }
        Ok(o)
    }
    async fn update(&self, req: &UpdateRequest) -> PResult<Object> {
        self.inner.update(req).await
    }
    async fn delete(&self, req: &DeleteRequest) -> PResult<()> {
        if let Some(o) = self
            .inner
            .read(&ReadRequest {
                address: req.address.clone(),
                kind: req.kind.clone(),
                id: req.id.clone(),
                prior: Attrs::new(),
            })
            .await?
            && let Some(args) = Self::args_of(&o.attrs)
        {
            let url = flag(&args, "initial-advertise-peer-urls")
                .unwrap_or_default()
                .to_string();
            let etcd = self.etcd.lock().unwrap().clone();
            if etcd.member(&url).is_some() {
                etcd.set_up(&url, false);
            }
        }
        self.inner.delete(req).await
    }
    async fn import(&self, kind: &str, id: &str) -> PResult<Object> {
        self.inner.import(kind, id).await
    }
    fn reader(&self) -> &dyn Reader {
        self
    }
}

struct World {
    provider: Arc<Booting>,
    providers: Providers,
    etcd: Arc<FakeEtcd>,
    store: Arc<MemStore>,
}

impl World {
    /// Three members applied, and the fake cluster they formed.
    async fn running(n: u32) -> World {
        let etcd = Arc::new(FakeEtcd::bootstrap(&[]));
        let provider = Arc::new(Booting {
            inner: FakeProvider::new(),
            etcd: Mutex::new(etcd.clone()),
            joins: Mutex::new(Vec::new()),
        });
        let mut providers = Providers::new();
        providers.insert(provider.clone() as Arc<dyn Provider>);
        let mut w = World {
            provider,
            providers,
            etcd,
            store: Arc::new(MemStore::default()),
        };
        let (p, _) = w
            .plan(&cluster(n, ""), UpdatePolicy::Rolling, false)
            .await
            .unwrap();
        assert!(p.etcd.is_none(), "day 1 makes no membership call");
        let r = w.apply(&p).await;
        assert!(r.success(), "{r:?}");
        // The machines formed their cluster from their rendered configs.
        let names: Vec<(String, String)> = (0..n)
            .map(|i| (format!("demo-central-{i}"), peer(i)))
            .collect();
        let refs: Vec<(&str, &str)> = names
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let fresh = Arc::new(FakeEtcd::bootstrap(&refs));
        *w.provider.etcd.lock().unwrap() = fresh.clone();
        w.provider.joins.lock().unwrap().clear();
        w.etcd = fresh;
        w
    }

    async fn plan(
        &self,
        desired: &[Resource],
        update: UpdatePolicy,
        allow_data_loss: bool,
    ) -> std::result::Result<(Plan, MemberSet), EngineError> {
        let snap = self.store.load().expect("load");
        let readers = self.providers.readers();
        let refreshed = refresh(&readers, &snap.resources, 4, RetryPolicy::default())
            .await
            .expect("refresh");
        let graph = ResourceGraph::build(desired).expect("graph");
        let mut p = plan(
            "demo",
            desired,
            &graph,
            &refreshed,
            &readers,
            snap.lineage,
            snap.serial,
        )
        .expect("plan");
        let set = MemberSet::new(desired, &refreshed.resources);
        let membership = match self.etcd.members().await {
            Ok(m) => Membership::Known(m),
            Err(e) => Membership::Unreachable(e.to_string()),
        };
        let settings = Day2Settings {
            update,
            allow_data_loss,
            endpoints: set.client_urls(),
            via: None,
        };
        plan_members(
            &mut p,
            &set,
            &membership,
            &snap.journal,
            &settings,
            &BTreeSet::new(),
        )?;
        Ok((p, set))
    }

    async fn try_apply(&self, p: &Plan) -> std::result::Result<ApplyReport, EngineError> {
        let snap = self.store.load().expect("load");
        let options = ApplyOptions {
            etcd: Some(self.etcd.clone() as Arc<dyn EtcdAdmin>),
            waits: MemberWaits {
                join: Duration::from_secs(5),
                healthy: Duration::from_secs(5),
                poll: Duration::from_millis(5),
            },
            ..ApplyOptions::default()
        };
        apply(
            p,
            &snap.resources,
            &self.providers,
            self.store.clone(),
            &ClusterInfo {
                name: "demo".into(),
                expires_after: None,
                operator: None,
            },
            &options,
            Arc::new(|_| {}),
        )
        .await
    }

    async fn apply(&self, p: &Plan) -> ApplyReport {
        self.try_apply(p).await.expect("apply")
    }

    fn voters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .etcd
            .members_now()
            .into_iter()
            .filter(|m| !m.is_learner && m.started())
            .map(|m| m.peer_urls[0].clone())
            .collect();
        v.sort();
        v
    }

    /// The log of membership changes, ids left out.
    fn calls(&self) -> Vec<String> {
        self.etcd
            .log()
            .iter()
            .map(|l| l.split_whitespace().take(1).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

#[tokio::test]
async fn grow_adds_learners_that_boot_with_the_current_members_then_promotes_them() {
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(5, ""), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    assert_eq!(p.changes.len(), 2, "only the new members: {:?}", p.changes);
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(w.calls(), ["add", "promote", "add", "promote"]);
    assert_eq!(w.voters(), (0..5).map(peer).collect::<Vec<_>>());
    let joins = w.provider.joins.lock().unwrap().clone();
    assert_eq!(joins.len(), 2);
    // central[3] boots knowing the 3 members and itself; central[4] all five.
    assert_eq!(joins[0].0, peer(3));
    assert_eq!(joins[0].1.matches('=').count(), 4, "{}", joins[0].1);
    assert!(joins[0].1.contains(&format!("demo-central-3={}", peer(3))));
    assert_eq!(joins[1].1.matches('=').count(), 5, "{}", joins[1].1);
    assert!(w.store.load().unwrap().journal.is_empty());
    // And the next plan has nothing to do (bootstrap-only flags differ, nothing else).
    let (again, _) = w
        .plan(&cluster(5, ""), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    assert!(again.is_empty(), "{:?}", again.changes);
}

#[tokio::test]
async fn a_rolling_replacement_removes_then_adds_each_member_in_turn() {
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(3, "-new"), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    let kinds: Vec<StepKind> = p
        .etcd
        .as_ref()
        .unwrap()
        .steps
        .iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, [StepKind::Replace; 3]);
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    // Each member is the leader when its turn comes (the fake elects the first voter):
    // leadership is handed over before it is removed.
    assert_eq!(
        w.calls(),
        [
            "move-leader",
            "remove",
            "add",
            "promote",
            "move-leader",
            "remove",
            "add",
            "promote",
            "move-leader",
            "remove",
            "add",
            "promote"
        ]
    );
    assert_eq!(w.voters(), (0..3).map(peer).collect::<Vec<_>>());
    let joins = w.provider.joins.lock().unwrap().clone();
    let order: Vec<&str> = joins.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(order, [peer(0), peer(1), peer(2)]);
}

#[tokio::test]
async fn a_failed_promotion_keeps_its_journal_entry_and_the_next_plan_finishes_it() {
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(4, ""), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    w.etcd.fail_next(
        FakeMethod::PromoteMember,
        EtcdError::Api {
            endpoint: "http://10.0.1.101:2379".into(),
            code: 9,
            message: "etcdserver: injected".into(),
        },
    );
    let r = w.apply(&p).await;
    assert!(!r.success());
    let snap = w.store.load().unwrap();
    assert!(
        snap.journal.iter().any(|e| e.provider == "etcd"),
        "the membership change stays open: {:?}",
        snap.journal
    );
    assert_eq!(snap.resources.len(), 4, "the machine was made and recorded");
    // The next plan reads the member list: central[3] is a learner to promote.
    let (p, _) = w
        .plan(&cluster(4, ""), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    let e = p.etcd.as_ref().expect("etcd steps");
    assert_eq!(e.steps.len(), 1);
    assert_eq!(e.steps[0].kind, StepKind::Promote);
    assert!(!e.resolves.is_empty());
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(w.voters().len(), 4);
    assert!(
        w.store.load().unwrap().journal.is_empty(),
        "finished and closed"
    );
}

#[tokio::test]
async fn unreachable_etcd_stops_before_anything_changes() {
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(3, "-new"), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    w.etcd.unreachable(true);
    let before = w.provider.inner.calls();
    let err = w.try_apply(&p).await.expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(w.provider.inner.calls(), before, "no provider call");
    assert!(w.etcd.log().is_empty());
    assert!(
        w.store.load().unwrap().journal.is_empty(),
        "nothing journaled"
    );
}

#[tokio::test]
async fn an_unhealthy_cluster_stops_the_roll_at_the_gate() {
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(3, "-new"), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    // Another member than the one replaced first is down.
    w.etcd.set_up(&peer(2), false);
    let r = w.apply(&p).await;
    assert!(!r.success());
    let (_, _, first) = &r.outcomes[0];
    assert!(
        matches!(first, clusterform_engine::Outcome::Failed(m) if m.contains("not healthy") && m.contains("demo-central-2")),
        "{first:?}"
    );
    assert!(w.etcd.log().is_empty(), "no member was removed");
    assert_eq!(
        w.provider.inner.objects().len(),
        3,
        "no machine was deleted"
    );
    // The other steps were not started.
    assert!(
        r.outcomes[1..]
            .iter()
            .all(|(_, _, o)| matches!(o, clusterform_engine::Outcome::Skipped(_)))
    );
}

#[tokio::test]
async fn replacing_a_failed_member_is_allowed_past_the_gate() {
    let w = World::running(3).await;
    w.etcd.set_up(&peer(1), false);
    let mut p = {
        let snap = w.store.load().unwrap();
        let readers = w.providers.readers();
        let refreshed = refresh(&readers, &snap.resources, 4, RetryPolicy::default())
            .await
            .unwrap();
        let desired = cluster(3, "");
        let replace = BTreeMap::from([(
            Address::indexed("machine", "central", 1),
            "requested with --replace".to_string(),
        )]);
        clusterform_engine::plan_replacing(
            "demo",
            &desired,
            &ResourceGraph::build(&desired).unwrap(),
            &refreshed,
            &readers,
            snap.lineage,
            snap.serial,
            &replace,
        )
        .unwrap()
    };
    let set = {
        let snap = w.store.load().unwrap();
        MemberSet::new(&cluster(3, ""), &snap.resources)
    };
    plan_members(
        &mut p,
        &set,
        &Membership::Known(w.etcd.members().await.unwrap()),
        &[],
        &Day2Settings::default(),
        &BTreeSet::new(),
    )
    .unwrap();
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(w.calls(), ["remove", "add", "promote"]);
    assert_eq!(w.voters(), (0..3).map(peer).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_removal_whose_answer_says_not_found_counts_as_done() {
    // etcd answers "member not found" when an earlier attempt of the same removal got
    // through and its answer was lost (the removed member may stop before it answers).
    let w = World::running(3).await;
    let (p, _) = w
        .plan(&cluster(3, "-new"), UpdatePolicy::Rolling, false)
        .await
        .unwrap();
    w.etcd.fail_next(
        FakeMethod::RemoveMember,
        EtcdError::Api {
            endpoint: "http://10.0.1.102:2379".into(),
            code: 5,
            message: "etcdserver: member not found".into(),
        },
    );
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(w.voters(), (0..3).map(peer).collect::<Vec<_>>());
}
