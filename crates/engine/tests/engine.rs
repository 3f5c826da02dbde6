//! Engine scenarios against the in-memory fake provider and an in-memory state store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use clusterform_core::{Action, Address, Attrs, Resource, ResourceGraph};
use clusterform_engine::{
    ApplyOptions, ClusterInfo, Outcome, Providers, RetryPolicy, apply, plan, plan_destroy, recover,
    refresh,
};
use clusterform_provider::fake::FakeProvider;
use clusterform_provider::{CreateRequest, Ownership, Provider};
use clusterform_state::{JournalEntry, MemStore, Mutation, StateStore};
use serde_json::json;

fn a(s: &str) -> Address {
    s.parse().expect("address")
}

/// network + 1 central + `workers` workers, like the dev-test blueprint.
fn cluster(workers: u32, size: &str) -> Vec<Resource> {
    let mut out = vec![Resource {
        address: a("network.main"),
        provider: "fake".into(),
        attrs: Attrs::from([("cidr".to_string(), json!("10.0.0.0/16"))]),
        refs: BTreeMap::new(),
        depends_on: vec![],
        deferred: Vec::new(),
    }];
    let machine = |addr: Address, deps: Vec<Address>, size: &str| Resource {
        address: addr,
        provider: "fake".into(),
        attrs: Attrs::from([("size".to_string(), json!(size))]),
        refs: BTreeMap::from([("network".to_string(), a("network.main"))]),
        depends_on: deps,
        deferred: Vec::new(),
    };
    out.push(machine(a("machine.central[0]"), vec![], "small"));
    for i in 0..workers {
        out.push(machine(
            Address::indexed("machine", "workers", i),
            vec![a("machine.central[0]")],
            size,
        ));
    }
    out
}

struct World {
    fake: Arc<FakeProvider>,
    providers: Providers,
    store: Arc<MemStore>,
    info: ClusterInfo,
}

fn world() -> World {
    let fake = Arc::new(FakeProvider::new());
    let mut providers = Providers::new();
    providers.insert(fake.clone() as Arc<dyn Provider>);
    World {
        fake,
        providers,
        store: Arc::new(MemStore::default()),
        info: ClusterInfo {
            name: "demo".into(),
            expires_after: None,
            operator: None,
        },
    }
}

impl World {
    async fn plan(&self, desired: &[Resource]) -> clusterform_core::Plan {
        let snap = self.store.load().expect("load");
        let graph = ResourceGraph::build(desired).expect("graph");
        let refreshed = refresh(
            &self.providers.readers(),
            &snap.resources,
            4,
            RetryPolicy::default(),
        )
        .await
        .expect("refresh");
        plan(
            "demo",
            desired,
            &graph,
            &refreshed,
            &self.providers.readers(),
            snap.lineage,
            snap.serial,
        )
        .expect("plan")
    }

    async fn plan_destroy(&self) -> clusterform_core::Plan {
        let snap = self.store.load().expect("load");
        let readers = self.providers.readers();
        let refreshed = refresh(&readers, &snap.resources, 4, RetryPolicy::default())
            .await
            .expect("refresh");
        plan_destroy("demo", &refreshed, &readers, snap.lineage, snap.serial)
    }

    async fn apply(&self, p: &clusterform_core::Plan) -> clusterform_engine::ApplyReport {
        self.apply_with(p, None).await
    }

    /// Apply `p` with `render` for its deferred attributes.
    async fn apply_with(
        &self,
        p: &clusterform_core::Plan,
        render: Option<clusterform_engine::Render>,
    ) -> clusterform_engine::ApplyReport {
        let snap = self.store.load().expect("load");
        let options = ApplyOptions {
            render,
            ..ApplyOptions::default()
        };
        apply(
            p,
            &snap.resources,
            &self.providers,
            self.store.clone(),
            &self.info,
            &options,
            Arc::new(|_| {}),
        )
        .await
        .expect("apply")
    }

    /// State ids == provider ids, exactly.
    fn assert_state_matches_cloud(&self) {
        let snap = self.store.load().expect("load");
        let mut state_ids: Vec<String> = snap.resources.values().map(|r| r.id.clone()).collect();
        let mut cloud_ids: Vec<String> = self.fake.objects().into_iter().map(|o| o.id).collect();
        state_ids.sort();
        cloud_ids.sort();
        assert_eq!(state_ids, cloud_ids);
        assert!(
            snap.journal.is_empty(),
            "journal left open: {:?}",
            snap.journal
        );
    }
}

#[tokio::test]
async fn apply_then_plan_is_empty_then_update_then_destroy() {
    let w = world();
    let p = w.plan(&cluster(3, "small")).await;
    assert_eq!(p.summary().add, 5);
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!(r.added, 5);
    assert_eq!(r.critical_path, 3);
    w.assert_state_matches_cloud();

    let again = w.plan(&cluster(3, "small")).await;
    assert!(again.is_empty(), "{:?}", again.changes);
    assert_eq!(again.unchanged, 5);

    // One worker's size changes: exactly one in-place update.
    let mut desired = cluster(3, "small");
    desired[3].attrs.insert("size".into(), json!("large"));
    let p = w.plan(&desired).await;
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].action, Action::Update);
    assert_eq!(p.changes[0].address, a("machine.workers[1]"));
    let r = w.apply(&p).await;
    assert_eq!((r.added, r.changed, r.destroyed), (0, 1, 0));
    assert!(w.plan(&desired).await.is_empty());

    let d = w.plan_destroy().await;
    let r = w.apply(&d).await;
    assert_eq!(r.destroyed, 5);
    assert!(w.store.load().expect("load").resources.is_empty());
    assert!(w.fake.objects().is_empty());
}

#[tokio::test]
async fn a_failure_skips_dependents_and_independents_finish() {
    let w = world();
    let mut desired = cluster(2, "small");
    // An independent second network.
    desired.push(Resource {
        address: a("network.other"),
        provider: "fake".into(),
        attrs: Attrs::from([("cidr".to_string(), json!("10.1.0.0/16"))]),
        refs: BTreeMap::new(),
        depends_on: vec![],
        deferred: Vec::new(),
    });
    w.fake.fail_on(a("machine.central[0]"));
    let p = w.plan(&desired).await;
    let r = w.apply(&p).await;
    assert!(!r.success());
    let outcome = |s: &str| {
        r.outcomes
            .iter()
            .find(|(addr, _, _)| *addr == a(s))
            .map(|x| x.2.clone())
            .expect("outcome")
    };
    assert!(matches!(outcome("machine.central[0]"), Outcome::Failed(_)));
    assert_eq!(
        outcome("machine.workers[0]"),
        Outcome::Skipped(a("machine.central[0]"))
    );
    assert_eq!(
        outcome("machine.workers[1]"),
        Outcome::Skipped(a("machine.central[0]"))
    );
    assert_eq!(outcome("network.main"), Outcome::Done);
    assert_eq!(outcome("network.other"), Outcome::Done);
    assert_eq!((r.failed(), r.skipped()), (1, 2));
    w.assert_state_matches_cloud();
}

#[tokio::test]
async fn changing_a_force_new_input_of_the_network_replaces_its_machines_in_order() {
    let w = world();
    let r = w.apply(&w.plan(&cluster(2, "small")).await).await;
    assert!(r.success());
    let mut desired = cluster(2, "small");
    desired[0].attrs.insert("cidr".into(), json!("10.7.0.0/16"));
    let p = w.plan(&desired).await;
    let actions: Vec<(String, Action)> = p
        .changes
        .iter()
        .map(|c| (c.address.to_string(), c.action))
        .collect();
    assert!(
        actions.iter().all(|(_, act)| *act == Action::Replace),
        "{actions:?}"
    );
    assert_eq!(actions.len(), 4);
    let net = p
        .changes
        .iter()
        .find(|c| c.address == a("network.main"))
        .expect("net");
    assert_eq!(net.replace_because, vec!["cidr"]);
    let m = p
        .changes
        .iter()
        .find(|c| c.address == a("machine.central[0]"))
        .expect("m");
    assert_eq!(m.replace_because, vec!["network"]);
    let r = w.apply(&p).await;
    assert!(r.success(), "{r:?}");
    assert_eq!((r.added, r.destroyed), (4, 4));
    w.assert_state_matches_cloud();
    assert!(w.plan(&desired).await.is_empty());
}

#[tokio::test]
async fn refresh_reports_drift_and_plan_restores() {
    let w = world();
    w.apply(&w.plan(&cluster(2, "small")).await).await;
    let snap = w.store.load().expect("load");
    let w0 = snap.resources[&a("machine.workers[0]")].id.clone();
    let w1 = snap.resources[&a("machine.workers[1]")].id.clone();
    w.fake.tamper(&w0, "size", json!("huge"));
    w.fake.remove(&w1);
    let p = w.plan(&cluster(2, "small")).await;
    assert_eq!(p.drift.len(), 2);
    assert!(
        p.drift
            .iter()
            .any(|d| d.address == a("machine.workers[1]") && d.deleted)
    );
    let actions: BTreeMap<String, Action> = p
        .changes
        .iter()
        .map(|c| (c.address.to_string(), c.action))
        .collect();
    assert_eq!(actions["machine.workers[0]"], Action::Update);
    assert_eq!(actions["machine.workers[1]"], Action::Create);
    w.apply(&p).await;
    w.assert_state_matches_cloud();
}

#[tokio::test]
async fn refresh_is_batched() {
    let w = world();
    w.apply(&w.plan(&cluster(250, "small")).await).await;
    let before = w.fake.calls();
    let p = w.plan(&cluster(250, "small")).await;
    assert!(p.is_empty());
    let after = w.fake.calls();
    // 252 objects, batches of 100: 3 calls, none of them single reads.
    assert_eq!(
        after.get("read_batch").copied().unwrap_or(0)
            - before.get("read_batch").copied().unwrap_or(0),
        3
    );
    assert_eq!(after.get("read"), before.get("read"));
}

#[tokio::test]
async fn many_finished_operations_share_commits() {
    let w = world();
    let p = w.plan(&cluster(300, "small")).await;
    w.apply(&p).await;
    let commits = w.store.commits();
    // 302 operations would be 604 commits one by one.
    assert!(commits < 300, "{commits} commits");
}

#[tokio::test]
async fn an_open_create_entry_is_adopted_and_a_missing_one_cleared() {
    let w = world();
    // A create that reached the provider, and one that did not, both left open.
    let made = w
        .fake
        .create(&CreateRequest {
            kind: "network".into(),
            attrs: Attrs::from([("cidr".to_string(), json!("10.0.0.0/16"))]),
            owner: Ownership {
                cluster: "demo".into(),
                address: a("network.main"),
                op: "cf-op-1".into(),
                expires_at: None,
                created_by: None,
                created_at: None,
            },
        })
        .await
        .expect("create");
    let entry = |op: &str, addr: &str, kind: &str| JournalEntry {
        op_id: op.into(),
        address: a(addr),
        action: Action::Create,
        idempotency_key: format!("cf-{op}"),
        provider: "fake".into(),
        kind: kind.into(),
        object_id: None,
        dependencies: vec![],
        started_at: "2026-01-01T00:00:00Z".into(),
    };
    w.store
        .commit(&[
            Mutation::JournalOpen(entry("op-1", "network.main", "network")),
            Mutation::JournalOpen(entry("op-2", "machine.central[0]", "machine")),
        ])
        .expect("commit");
    let snap = w.store.load().expect("load");
    let notes = recover(&w.providers, w.store.as_ref(), &snap, "demo")
        .await
        .expect("recover");
    assert_eq!(notes.len(), 2);
    let snap = w.store.load().expect("load");
    assert!(snap.journal.is_empty());
    assert_eq!(snap.resources[&a("network.main")].id, made.id);
    assert!(!snap.resources.contains_key(&a("machine.central[0]")));
    // The next plan creates only what is missing: no second network.
    let p = w.plan(&cluster(0, "small")).await;
    assert_eq!(p.changes.len(), 1);
    assert_eq!(p.changes[0].address, a("machine.central[0]"));
}

#[tokio::test]
async fn drift_keeps_apart_what_an_unfinished_operation_touches() {
    let w = world();
    let desired = cluster(2, "small");
    w.apply(&w.plan(&desired).await).await;
    let graph = ResourceGraph::build(&desired).expect("graph");
    // A run died after creating workers[2] (journaled, never recorded) ...
    let key = "cf-op-dead-run";
    w.fake
        .create(&CreateRequest {
            kind: "machine".into(),
            attrs: Attrs::from([("size".to_string(), json!("small"))]),
            owner: Ownership {
                cluster: "demo".into(),
                address: a("machine.workers[2]"),
                op: key.into(),
                expires_at: None,
                created_by: None,
                created_at: None,
            },
        })
        .await
        .expect("create");
    w.store
        .commit(&[Mutation::JournalOpen(JournalEntry {
            op_id: "op-dead-run".into(),
            address: a("machine.workers[2]"),
            action: Action::Create,
            idempotency_key: key.into(),
            provider: "fake".into(),
            kind: "machine".into(),
            object_id: None,
            dependencies: vec![],
            started_at: "2026-01-01T00:00:00Z".into(),
        })])
        .expect("journal");
    // ... and someone resized workers[0] by hand.
    let snap = w.store.load().expect("load");
    let w0 = snap.resources[&a("machine.workers[0]")].id.clone();
    w.fake.tamper(&w0, "size", json!("huge"));

    let before = w.fake.calls();
    let report = clusterform_engine::drift::check(
        &w.providers.readers(),
        &snap,
        &desired,
        &graph,
        "demo",
        4,
    )
    .await
    .expect("drift");
    assert!(report.drifted());
    assert_eq!(report.changed.len(), 1);
    assert_eq!(report.changed[0].address, a("machine.workers[0]"));
    assert!(report.missing.is_empty());
    assert!(report.unmanaged.is_empty(), "{:?}", report.unmanaged);
    assert_eq!(report.unfinished_operations.len(), 1);
    assert!(report.unfinished_operations[0].object_id.is_some());
    assert!(
        report.pending_changes.is_empty(),
        "{:?}",
        report.pending_changes
    );
    let after = w.fake.calls();
    for m in ["create", "update", "delete", "import"] {
        assert_eq!(before.get(m), after.get(m), "drift called `{m}`");
    }
}

#[tokio::test]
async fn reap_deletes_what_points_at_a_network_before_the_network() {
    let w = world();
    w.apply(&w.plan(&cluster(3, "small")).await).await;
    let objects = w.fake.objects();
    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = order.clone();
    let observer: clusterform_engine::Observer = Arc::new(move |e| {
        if let clusterform_engine::Event::Finished { address, .. } = e {
            seen.lock().expect("lock").push(address.to_string());
        }
    });
    let (outcomes, retries) = clusterform_engine::reap::delete_tagged(
        w.fake.clone() as Arc<dyn Provider>,
        &objects,
        8,
        RetryPolicy::default(),
        observer,
    )
    .await;
    assert_eq!(retries, 0);
    assert!(outcomes.iter().all(|o| o.error.is_none()), "{outcomes:?}");
    assert!(w.fake.objects().is_empty());
    let order = order.lock().expect("lock").clone();
    assert_eq!(order.len(), 5);
    assert_eq!(
        order.last().map(String::as_str),
        Some("network.main"),
        "{order:?}"
    );
}

#[tokio::test]
async fn destroy_targets_take_their_dependents_and_protected_machines_are_named() {
    let w = world();
    w.apply(&w.plan(&cluster(2, "small")).await).await;
    let snap = w.store.load().expect("load");
    let all = w.plan_destroy().await;
    let only = |targets: &[&str]| {
        let t: Vec<Address> = targets.iter().map(|s| a(s)).collect();
        let p = clusterform_engine::restrict_to_targets(all.clone(), &t, &snap.resources)
            .expect("targets");
        p.changes
            .iter()
            .map(|c| c.address.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(only(&["machine.workers[1]"]), ["machine.workers[1]"]);
    assert_eq!(
        only(&["machine.workers"]),
        ["machine.workers[0]", "machine.workers[1]"]
    );
    // Workers depend on the etcd machine, everything on the network.
    assert_eq!(only(&["machine.central[0]"]).len(), 3);
    assert_eq!(only(&["network.main"]).len(), 4);
    assert!(
        clusterform_engine::restrict_to_targets(all.clone(), &[a("volume.x")], &snap.resources)
            .is_err()
    );

    assert!(clusterform_engine::protected(&all).is_empty());
    let mut guarded = all.clone();
    if let Some(before) = guarded.changes[0].before.as_mut() {
        before.insert("protect".into(), json!(true));
    }
    assert_eq!(
        clusterform_engine::protected(&guarded),
        [guarded.changes[0].address.clone()]
    );
}

#[tokio::test]
async fn deferred_attributes_are_rendered_during_apply_from_what_it_made() {
    let w = world();
    let mut desired = cluster(1, "small");
    desired[2]
        .attrs
        .insert("user_data".into(), json!("stand-in"));
    desired[2].deferred = vec!["user_data".into()];
    let p = w.plan(&desired).await;
    let c = p
        .changes
        .iter()
        .find(|c| c.address == a("machine.workers[0]"))
        .expect("worker");
    assert_eq!(c.deferred, vec!["user_data".to_string()]);
    assert!(c.after_unknown.contains(&"user_data".to_string()));
    assert!(!c.after.as_ref().expect("after").contains_key("user_data"));

    // Rendered from the network this apply made.
    let render: clusterform_engine::Render = Arc::new(|address, objects| {
        let cidr = objects
            .get(&a("network.main"))
            .and_then(|n| n.get("cidr"))
            .and_then(|v| v.as_str())
            .ok_or("no network yet")?;
        Ok(Attrs::from([
            ("size".to_string(), json!("small")),
            (
                "user_data".to_string(),
                json!(format!("{address} on {cidr}")),
            ),
        ]))
    });
    let r = w.apply_with(&p, Some(render)).await;
    assert!(r.success(), "{r:?}");
    let made = w
        .fake
        .objects()
        .into_iter()
        .find(|o| o.attrs.contains_key("user_data"))
        .expect("worker");
    assert_eq!(
        made.attrs["user_data"],
        json!("machine.workers[0] on 10.0.0.0/16")
    );
    // Its next plan has nothing deferred and nothing to do.
    let mut concrete = cluster(1, "small");
    concrete[2].attrs.insert(
        "user_data".into(),
        json!("machine.workers[0] on 10.0.0.0/16"),
    );
    assert!(w.plan(&concrete).await.is_empty());
}

#[tokio::test]
async fn a_deferred_attribute_without_a_renderer_or_against_a_changed_file_fails() {
    let w = world();
    let mut desired = cluster(1, "small");
    desired[2].deferred = vec!["user_data".into()];
    let p = w.plan(&desired).await;
    let failure = |r: &clusterform_engine::ApplyReport| {
        r.outcomes
            .iter()
            .find_map(|(addr, _, o)| match o {
                Outcome::Failed(m) if *addr == a("machine.workers[0]") => Some(m.clone()),
                _ => None,
            })
            .expect("the worker failed")
    };
    let r = w.apply(&p).await;
    assert!(
        failure(&r).contains("user_data known only after apply, and this apply cannot render them"),
        "{r:?}"
    );
    // The file now says another size than the plan: refused, nothing made.
    let w2 = world();
    let p2 = w2.plan(&desired).await;
    let changed: clusterform_engine::Render = Arc::new(|_, _| {
        Ok(Attrs::from([
            ("size".to_string(), json!("huge")),
            ("user_data".to_string(), json!("x")),
        ]))
    });
    let r = w2.apply_with(&p2, Some(changed)).await;
    assert!(
        failure(&r).contains("`size` is not what the plan says: the configuration changed since the plan was made; plan again"),
        "{r:?}"
    );
    assert!(
        w2.fake
            .objects()
            .iter()
            .all(|o| o.attrs.get("size") != Some(&json!("huge")))
    );
}
