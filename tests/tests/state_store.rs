//! One state-store test suite, run against the local store (redb) and the etcd store
//! (a real etcd from Debian's `etcd-server`, one member per test on 127.0.0.1), plus
//! what only etcd has: a lock that ends with its lease, a lock lost mid-run, a commit
//! batch left unfolded by a writer that died, and a three-member etcd with members down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterform_core::{Action, Address, ResourceState};
use clusterform_etcd::{KvClient, KvConfig, Op};
use clusterform_state::{
    ClusterIdentity, EtcdStore, JournalEntry, LocalStore, Mutation, StateError, StateStore,
};
use clusterform_tests::etcd_server::EtcdCluster;
use tempfile::TempDir;

/// Makes stores of one backend: `fresh` a new empty one, `again` another handle on the
/// last one made (as a second process would have).
trait Backend {
    fn fresh(&mut self) -> Arc<dyn StateStore>;
    fn again(&self) -> Arc<dyn StateStore>;
}

struct Local {
    dir: TempDir,
    n: u32,
}

impl Backend for Local {
    fn fresh(&mut self) -> Arc<dyn StateStore> {
        self.n += 1;
        self.again()
    }
    fn again(&self) -> Arc<dyn StateStore> {
        Arc::new(LocalStore::new(
            self.dir.path().join(format!("s{}", self.n)),
        ))
    }
}

struct Etcd {
    cluster: EtcdCluster,
    n: u32,
    ttl: Duration,
}

fn kv(endpoints: Vec<String>) -> KvClient {
    KvClient::new(KvConfig {
        endpoints,
        timeouts: clusterform_etcd::Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(10),
        },
        ..KvConfig::default()
    })
    .expect("kv client")
}

impl Etcd {
    fn store_at(&self, endpoints: Vec<String>) -> Arc<EtcdStore> {
        Arc::new(EtcdStore::new(
            kv(endpoints),
            &format!("/clusterform/test{}", self.n),
            self.ttl,
        ))
    }
}

impl Backend for Etcd {
    fn fresh(&mut self) -> Arc<dyn StateStore> {
        self.n += 1;
        self.again()
    }
    fn again(&self) -> Arc<dyn StateStore> {
        self.store_at(self.cluster.endpoints())
    }
}

fn local() -> Option<Local> {
    Some(Local {
        dir: tempfile::tempdir().expect("tempdir"),
        n: 0,
    })
}

fn etcd() -> Option<Etcd> {
    Some(Etcd {
        cluster: EtcdCluster::start(1)?,
        n: 0,
        ttl: Duration::from_secs(3),
    })
}

fn record(name: &str, index: u32, filler: usize) -> ResourceState {
    let mut attrs = clusterform_core::Attrs::new();
    attrs.insert("size".into(), serde_json::json!("t3.micro"));
    attrs.insert("user_data".into(), serde_json::json!("x".repeat(filler)));
    ResourceState {
        address: Address::indexed("machine", name, index),
        provider: "sim".into(),
        id: format!("i-{name}-{index}"),
        attrs,
        dependencies: vec![Address::new("network", "main")],
    }
}

fn entry(op: &str) -> JournalEntry {
    JournalEntry {
        op_id: op.into(),
        address: Address::indexed("machine", "workers", 0),
        action: Action::Create,
        idempotency_key: format!("key-{op}"),
        provider: "sim".into(),
        kind: "machine".into(),
        object_id: None,
        dependencies: vec![],
        started_at: "2026-12-06T00:00:00Z".into(),
    }
}

fn round_trips_records_journal_secrets_and_identity(b: &mut dyn Backend) {
    let s = b.fresh();
    let empty = s.load().expect("load of nothing");
    assert_eq!(empty.serial, 0);
    assert!(empty.lineage.is_none() && empty.resources.is_empty());

    let serial = s
        .commit(&[
            Mutation::JournalOpen(entry("op1")),
            Mutation::SetIdentity(ClusterIdentity {
                name: "demo".into(),
                file: "cluster.toml".into(),
            }),
            Mutation::SetSecret {
                name: "etcd-ca-cert".into(),
                value: "sealed:abc".into(),
            },
        ])
        .expect("journal-only commit");
    assert_eq!(serial, 0, "a commit without records keeps the serial");
    assert_eq!(
        s.commit(&[
            Mutation::Put(record("workers", 0, 10)),
            Mutation::Put(record("workers", 1, 10)),
            Mutation::JournalClose("op1".into()),
        ])
        .expect("commit"),
        1
    );
    let other = b.again();
    let snap = other.load().expect("load");
    assert_eq!(snap.serial, 1);
    assert!(snap.lineage.is_some());
    assert_eq!(
        snap.identity.as_ref().map(|i| i.name.as_str()),
        Some("demo")
    );
    assert_eq!(
        snap.secrets.get("etcd-ca-cert").map(String::as_str),
        Some("sealed:abc")
    );
    assert!(snap.journal.is_empty());
    assert_eq!(snap.resources.len(), 2);
    assert_eq!(
        snap.resources[&Address::indexed("machine", "workers", 1)],
        record("workers", 1, 10)
    );
    let lineage = snap.lineage.clone();

    assert_eq!(
        other
            .commit(&[Mutation::Remove(Address::indexed("machine", "workers", 0))])
            .expect("remove"),
        2
    );
    let snap = s.load().expect("load");
    assert_eq!(snap.lineage, lineage, "the lineage never changes");
    assert_eq!(snap.resources.len(), 1);
    assert_eq!(s.commit(&[]).expect("empty commit"), 2);
}

fn history_is_newest_first_and_keeps_fifty(b: &mut dyn Backend) {
    let s = b.fresh();
    for i in 0..55 {
        s.commit(&[Mutation::Put(record("workers", i, 10))])
            .expect("commit");
    }
    let h = s.history(100).expect("history");
    assert_eq!(h.len(), 50);
    assert_eq!(h[0].serial, 55);
    assert_eq!(h[49].serial, 6);
    assert_eq!(
        h[0].changed,
        vec![Address::indexed("machine", "workers", 54)]
    );
    assert_eq!(s.history(3).expect("history").len(), 3);
}

fn two_writers_racing_lose_no_update(b: &mut dyn Backend) {
    let s = b.fresh();
    s.commit(&[Mutation::Put(record("seed", 0, 10))])
        .expect("seed");
    let handles: Vec<_> = (0..2)
        .map(|w| {
            let store = b.again();
            std::thread::spawn(move || {
                for i in 0..20 {
                    store
                        .commit(&[Mutation::Put(record(&format!("w{w}"), i, 100))])
                        .expect("commit");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer");
    }
    let snap = s.load().expect("load");
    assert_eq!(
        snap.resources.len(),
        41,
        "every record of both writers is there"
    );
    assert_eq!(snap.serial, 41, "one serial per commit");
}

fn the_lock_names_its_holder_and_is_free_once_dropped(b: &mut dyn Backend) {
    let s = b.fresh();
    let other = b.again();
    let guard = s.lock("apply", Duration::ZERO).expect("lock");
    assert_eq!(guard.info().operation, "apply");
    match other.lock("destroy", Duration::ZERO) {
        Err(StateError::Locked { holder, .. }) => {
            assert_eq!(holder.id, guard.info().id);
            assert_eq!(holder.operation, "apply");
            assert_eq!(holder.pid, std::process::id());
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second lock was granted"),
    }
    assert_eq!(
        other.lock_holder().expect("holder").map(|h| h.id),
        Some(guard.info().id.clone())
    );
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(guard);
    });
    let started = Instant::now();
    let second = other
        .lock("destroy", Duration::from_secs(10))
        .expect("the waiting lock is granted once the first is dropped");
    assert!(started.elapsed() >= Duration::from_millis(300));
    release.join().expect("release");
    assert_eq!(second.info().operation, "destroy");
    drop(second);
    assert_eq!(s.lock_holder().expect("holder"), None);
}

fn a_commit_larger_than_a_transaction_is_whole(b: &mut dyn Backend) {
    let s = b.fresh();
    // 3,000 records of ~1 KB: 30 times etcd's operations limit, twice its request size.
    let puts: Vec<Mutation> = (0..3000)
        .map(|i| Mutation::Put(record("workers", i, 1000)))
        .collect();
    assert_eq!(s.commit(&puts).expect("large commit"), 1);
    let snap = b.again().load().expect("load");
    assert_eq!(snap.resources.len(), 3000);
    assert_eq!(
        snap.resources[&Address::indexed("machine", "workers", 2999)],
        record("workers", 2999, 1000)
    );
    assert_eq!(
        s.commit(&[Mutation::Remove(Address::indexed("machine", "workers", 7))])
            .expect("small commit after"),
        2
    );
    let snap = s.load().expect("load");
    assert_eq!(snap.resources.len(), 2999);
    let h = s.history(10).expect("history");
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].changed.len(), 3000);
}

fn a_copy_is_exact_and_only_into_an_empty_store(b: &mut dyn Backend) {
    let from = b.fresh();
    from.commit(&[
        Mutation::Put(record("workers", 0, 50)),
        Mutation::SetSecret {
            name: "etcd-ca-key".into(),
            value: "sealed:1".into(),
        },
        Mutation::JournalOpen(entry("open-op")),
    ])
    .expect("commit");
    from.commit(&[Mutation::Put(record("workers", 1, 50))])
        .expect("commit");
    let export = from.export().expect("export");
    assert_eq!(export.history.len(), 2);
    let to = b.fresh();
    to.import(&export).expect("import into an empty store");
    assert_eq!(to.export().expect("export"), export, "the copy is exact");
    assert_eq!(to.load().expect("load").lineage, export.snapshot.lineage);
    let err = to.import(&export).expect_err("a second import is refused");
    assert!(err.to_string().contains("already"), "{err}");
    // The copy goes on from where the source was.
    assert_eq!(
        to.commit(&[Mutation::Put(record("workers", 2, 5))])
            .expect("commit"),
        3
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod local_store {
            $(
                #[test]
                fn $name() {
                    let Some(mut b) = super::local() else { return };
                    super::$name(&mut b);
                }
            )*
        }
        mod etcd_store {
            $(
                #[test]
                fn $name() {
                    let Some(mut b) = super::etcd() else { return };
                    super::$name(&mut b);
                }
            )*
        }
    };
}

suite!(
    round_trips_records_journal_secrets_and_identity,
    history_is_newest_first_and_keeps_fifty,
    two_writers_racing_lose_no_update,
    the_lock_names_its_holder_and_is_free_once_dropped,
    a_commit_larger_than_a_transaction_is_whole,
    a_copy_is_exact_and_only_into_an_empty_store,
);

#[test]
fn etcd_a_dead_holders_lock_ends_with_its_lease() {
    let Some(mut b) = etcd() else { return };
    let s = b.fresh();
    // A holder on another machine that died: its lock key, on a 3 s lease nobody renews.
    let raw = kv(b.cluster.endpoints());
    let lease = raw.lease_grant(Duration::from_secs(3)).expect("lease");
    let holder = serde_json::json!({
        "id": "dead-holder", "operation": "apply", "user": "ops", "host": "elsewhere",
        "pid": 4242, "started_at": "2026-12-06T00:00:00Z", "expires_at": "30 s"
    });
    raw.txn(
        &[],
        &[Op::Put {
            key: format!("{}/lock", "/clusterform/test1").into_bytes(),
            value: holder.to_string().into_bytes(),
            lease,
        }],
        &[],
    )
    .expect("put the dead holder's lock");
    match s.lock("apply", Duration::ZERO) {
        Err(StateError::Locked { holder, .. }) => {
            assert_eq!(holder.host, "elsewhere");
            assert_eq!(holder.pid, 4242);
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("granted over a live lease"),
    }
    let started = Instant::now();
    let guard = s
        .lock("apply", Duration::from_secs(15))
        .expect("granted once the lease expired");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?} for a 3 s lease",
        started.elapsed()
    );
    // Our own lease is renewed: held well past its TTL.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        b.again().lock_holder().expect("holder").map(|h| h.id),
        Some(guard.info().id.clone())
    );
}

#[test]
fn etcd_a_run_whose_lock_was_broken_writes_nothing_more() {
    let Some(mut b) = etcd() else { return };
    let s = b.fresh();
    let guard = s.lock("apply", Duration::ZERO).expect("lock");
    s.commit(&[Mutation::Put(record("workers", 0, 10))])
        .expect("commit under the lock");
    let other = b.again();
    let wrong = other.force_unlock("not-the-id").expect_err("wrong id");
    assert!(matches!(wrong, StateError::WrongLockId { .. }), "{wrong}");
    let info = other.force_unlock(&guard.info().id).expect("force-unlock");
    assert_eq!(info.id, guard.info().id);
    let err = s
        .commit(&[Mutation::Put(record("workers", 1, 10))])
        .expect_err("the lock is gone: no more writes");
    assert!(err.to_string().contains("lock was lost"), "{err}");
    assert_eq!(other.load().expect("load").resources.len(), 1);
    drop(guard);
    let _second = other.lock("apply", Duration::ZERO).expect("free again");
}

#[test]
fn etcd_a_batch_a_dead_writer_left_unfolded_is_read_and_folded() {
    use std::io::Write;
    let Some(mut b) = etcd() else { return };
    let s = b.fresh();
    s.commit(&[Mutation::Put(record("workers", 0, 10))])
        .expect("commit");
    // What a writer that died right after its commit point leaves: meta naming a batch
    // whose writes are not in the keys yet.
    let raw = kv(b.cluster.endpoints());
    let prefix = "/clusterform/test1";
    let meta = raw
        .range(format!("{prefix}/meta").as_bytes(), None, 0, 0)
        .expect("meta")
        .kvs
        .remove(0);
    let mut meta: serde_json::Value = serde_json::from_slice(&meta.value).expect("meta json");
    let rec = record("workers", 1, 10);
    let ops = serde_json::json!([
        {"Put": ["resources/machine.workers[1]", serde_json::to_string(&rec).expect("json")]},
        {"Delete": "resources/machine.workers[0]"}
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(ops.to_string().as_bytes()).expect("gzip");
    let packed = gz.finish().expect("gzip");
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&packed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    meta["serial"] = serde_json::json!(2);
    meta["commit"] = serde_json::json!("dead-writer");
    meta["pending"] = serde_json::json!({"id": "dead-writer", "parts": 1, "sha256": sha});
    raw.txn(
        &[],
        &[
            Op::Put {
                key: format!("{prefix}/batch/dead-writer/000000").into_bytes(),
                value: packed,
                lease: 0,
            },
            Op::Put {
                key: format!("{prefix}/meta").into_bytes(),
                value: meta.to_string().into_bytes(),
                lease: 0,
            },
        ],
        &[],
    )
    .expect("leave a pending batch");

    let snap = s.load().expect("load overlays the batch");
    assert_eq!(snap.serial, 2);
    assert_eq!(
        snap.resources.keys().cloned().collect::<Vec<_>>(),
        vec![Address::indexed("machine", "workers", 1)]
    );
    // The next commit folds it first, then commits on top.
    assert_eq!(
        s.commit(&[Mutation::Put(record("workers", 2, 10))])
            .expect("commit"),
        3
    );
    let left = raw
        .range_prefix(format!("{prefix}/batch/").as_bytes(), 0, 100)
        .expect("batch keys");
    assert!(left.kvs.is_empty(), "the folded batch is deleted");
    let keys: Vec<Address> = s.load().expect("load").resources.into_keys().collect();
    assert_eq!(
        keys,
        vec![
            Address::indexed("machine", "workers", 1),
            Address::indexed("machine", "workers", 2)
        ]
    );
}

#[test]
fn etcd_three_members_one_down_works_two_down_fails_before_any_change() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let endpoints = cluster.endpoints();
    let store =
        |eps: Vec<String>| EtcdStore::new(kv(eps), "/clusterform/three", Duration::from_secs(5));
    let s = store(endpoints.clone());
    s.commit(&[Mutation::Put(record("workers", 0, 10))])
        .expect("commit with three");

    // One member down (the first endpoint, so every call fails over).
    cluster.stop_member(0);
    let guard = s
        .lock("apply", Duration::ZERO)
        .expect("lock with two of three");
    for i in 1..20 {
        s.commit(&[Mutation::Put(record("workers", i, 10))])
            .expect("commit with two of three");
    }
    drop(guard);

    // It comes back and catches up: read through it alone, nothing is missing.
    cluster.start_member(0);
    cluster.wait_ready();
    let snap = store(vec![endpoints[0].clone()])
        .load()
        .expect("load through the member that was down");
    assert_eq!(snap.resources.len(), 20);
    assert_eq!(snap.serial, 20);

    // Two down: no quorum. The lock fails with a clear error and nothing changes.
    cluster.stop_member(1);
    cluster.stop_member(2);
    let started = Instant::now();
    let err = match s.lock("apply", Duration::ZERO) {
        Err(e) => e,
        Ok(_) => panic!("a lock without quorum"),
    };
    let text = err.to_string();
    assert!(
        text.contains("etcd") && text.contains(&endpoints[0].replace("http://", "")),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let err = s
        .commit(&[Mutation::Put(record("workers", 99, 10))])
        .expect_err("no commit without quorum");
    assert!(matches!(err, StateError::Database { .. }), "{err}");

    cluster.start_member(1);
    cluster.wait_ready();
    let snap = s.load().expect("load after quorum is back");
    assert_eq!(
        snap.resources.len(),
        20,
        "nothing was written without quorum"
    );
}

#[test]
fn local_to_etcd_to_local_round_trips_every_record_byte_for_byte() {
    let Some(mut e) = etcd() else { return };
    let Some(mut l) = local() else { return };
    let source = l.fresh();
    for i in 0..30 {
        source
            .commit(&[Mutation::Put(record("workers", i, 200 + i as usize))])
            .expect("commit");
    }
    source
        .commit(&[
            Mutation::SetSecret {
                name: "etcd-ca-key".into(),
                value: "sealed:xyz".into(),
            },
            Mutation::JournalOpen(entry("left-open")),
        ])
        .expect("commit");
    let original = source.export().expect("export");
    let on_etcd = e.fresh();
    on_etcd.import(&original).expect("to etcd");
    let back = l.fresh();
    back.import(&on_etcd.export().expect("export from etcd"))
        .expect("back to local");
    let returned = back.export().expect("export");
    assert_eq!(returned, original);
    for (a, r) in &original.snapshot.resources {
        assert_eq!(
            serde_json::to_vec(&returned.snapshot.resources[a]).expect("json"),
            serde_json::to_vec(r).expect("json"),
            "{a}"
        );
    }
    assert_eq!(
        source.export().expect("export"),
        original,
        "the source is untouched"
    );
}
