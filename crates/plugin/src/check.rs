//! The conformance check a plugin author runs against their plugin (`clusterform
//! providers check PATH`): the handshake and schema, then one object taken through its
//! whole life with every call of the protocol, checking what the engine relies on:
//! idempotent create, ownership tags returned as given, lookups by key, listings by
//! cluster, deletes that succeed twice, errors for unknown methods, a plugin that
//! survives a cancel, and an exit on `shutdown`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clusterform_core::{Address, AttrType, Attrs, KindSchema};
use clusterform_provider::{
    CreateRequest, DeleteRequest, Object, Ownership, Provider, ProviderConfig, ProviderFactory,
    ReadRequest, UpdateRequest,
};
use serde_json::{Value, json};

use crate::PluginFactory;
use clusterform_provider::Reader as _;

/// One step of the check and how it went.
#[derive(Debug, Clone)]
pub struct Step {
    /// What was checked.
    pub what: String,
    /// `Err` says what was wrong.
    pub outcome: Result<(), String>,
}

/// What the check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The plugin's name and version, once known.
    pub plugin: Option<(String, String)>,
    /// Every step, in order; the check stops at the first failure that leaves nothing to
    /// test.
    pub steps: Vec<Step>,
}

impl Report {
    /// True when every step passed.
    pub fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.outcome.is_ok())
    }

    fn record(&mut self, what: impl Into<String>, outcome: Result<(), String>) -> bool {
        let ok = outcome.is_ok();
        self.steps.push(Step {
            what: what.into(),
            outcome,
        });
        ok
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// A value of type `ty` for a test object.
fn sample(ty: AttrType, name: &str) -> Option<Value> {
    Some(match ty {
        AttrType::String => json!(format!("conformance-{name}")),
        AttrType::Int => json!(1),
        AttrType::Bool => json!(false),
        AttrType::StringList => json!([]),
        AttrType::Map => json!({}),
        AttrType::Reference => return None,
    })
}

/// The kind to test with: the first with no required reference (a test object cannot
/// point at another), with its required inputs filled in.
fn pick_kind(kinds: &[KindSchema]) -> Option<(&KindSchema, Attrs)> {
    kinds.iter().find_map(|k| {
        let mut attrs = Attrs::new();
        for a in k.attrs.iter().filter(|a| a.required) {
            attrs.insert(a.name.clone(), sample(a.ty, &a.name)?);
        }
        Some((k, attrs))
    })
}

/// Run the check against the plugin at `path` with `settings` (its `[provider.NAME]`
/// table) and `base_dir` (the folder a cluster file would be in).
pub async fn run(path: &Path, settings: &ProviderConfig, base_dir: &Path) -> Report {
    let mut r = Report::default();
    let factory = match PluginFactory::probe(path) {
        Ok(f) => f,
        Err(e) => {
            r.record("handshake", Err(e.0));
            return r;
        }
    };
    let name = factory.name().to_string();
    r.plugin = Some((name.clone(), factory.version().to_string()));
    r.record(
        format!(
            "handshake: protocol {}, provider `{name}` {}",
            crate::PROTOCOL_VERSION,
            factory.version()
        ),
        Ok(()),
    );
    let schema_ok = (|| {
        for k in &factory.schema().kinds {
            let mut seen = std::collections::BTreeSet::new();
            for a in &k.attrs {
                ensure(seen.insert(a.name.as_str()), || {
                    format!("kind `{}` lists attribute `{}` twice", k.kind, a.name)
                })?;
                ensure(!a.required || a.input, || {
                    format!("`{}.{}` is required but not an input", k.kind, a.name)
                })?;
                ensure(a.input || a.computed, || {
                    format!("`{}.{}` is neither an input nor computed", k.kind, a.name)
                })?;
            }
        }
        Ok(())
    })();
    r.record(
        format!("schema: {} kinds", factory.schema().kinds.len()),
        schema_ok,
    );
    let provider = match factory.build(settings, base_dir) {
        Ok(p) => p,
        Err(e) => {
            r.record("configure", Err(e));
            return r;
        }
    };
    r.record("configure", Ok(()));
    let Some((kind, attrs)) = pick_kind(&factory.schema().kinds) else {
        r.record(
            "a kind to test with",
            Err("every kind has a required reference; the check cannot make an object".into()),
        );
        return r;
    };
    lifecycle(&mut r, provider.as_ref(), kind, attrs).await;
    drop(provider);
    raw(&mut r, path, settings, base_dir).await;
    r
}

async fn lifecycle(r: &mut Report, p: &dyn Provider, kind: &KindSchema, attrs: Attrs) {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let cluster = format!("cf-conformance-{nonce}");
    let Ok(address) = format!("{}.conformance", kind.kind).parse::<Address>() else {
        r.record(
            "address",
            Err(format!("kind `{}` is not a valid address kind", kind.kind)),
        );
        return;
    };
    let owner = Ownership {
        cluster: cluster.clone(),
        address: address.clone(),
        op: format!("cf-conformance-op-{nonce}"),
        expires_at: Some("2099-01-01T00:00:00Z".into()),
        created_by: Some("conformance@check".into()),
        created_at: None,
    };
    let create = CreateRequest {
        kind: kind.kind.clone(),
        attrs: attrs.clone(),
        owner: owner.clone(),
    };
    let made = match p.create(&create).await {
        Ok(o) => o,
        Err(e) => {
            r.record(format!("create a `{}`", kind.kind), Err(e.to_string()));
            return;
        }
    };
    let same = |o: &Object| o.id == made.id;
    r.record(
        format!("create a `{}` (id `{}`)", kind.kind, made.id),
        ensure(made.owner.as_ref() == Some(&owner), || {
            format!("its tags did not come back as given: {:?}", made.owner)
        }),
    );
    let again = p.create(&create).await;
    r.record(
        "create again with the same idempotency key returns the same object",
        match &again {
            Ok(o) => ensure(same(o), || format!("a second object was made: `{}`", o.id)),
            Err(e) => Err(e.to_string()),
        },
    );
    let by_key = p.find_by_key(&kind.kind, &owner.op).await;
    r.record(
        "find_by_key finds it",
        match &by_key {
            Ok(Some(o)) => ensure(same(o), || format!("found `{}` instead", o.id)),
            Ok(None) => Err("not found".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    r.record(
        "find_by_key of an unknown key finds nothing",
        match p.find_by_key(&kind.kind, "cf-conformance-no-such-op").await {
            Ok(None) => Ok(()),
            Ok(Some(o)) => Err(format!("found `{}`", o.id)),
            Err(e) => Err(e.to_string()),
        },
    );
    let read_req = |id: &str| ReadRequest {
        address: address.clone(),
        kind: kind.kind.clone(),
        id: id.to_string(),
        prior: Attrs::new(),
    };
    r.record(
        "read returns it with its tags",
        match p.read(&read_req(&made.id)).await {
            Ok(Some(o)) => ensure(same(&o) && o.owner.as_ref() == Some(&owner), || {
                format!("read gave `{}` with tags {:?}", o.id, o.owner)
            }),
            Ok(None) => Err("read says it is gone".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    let batch = p
        .read_batch(&[read_req(&made.id), read_req("cf-conformance-no-such-id")])
        .await;
    r.record(
        "read_batch: one entry per request, null for an unknown id",
        match batch.as_slice() {
            [Ok(Some(o)), Ok(None)] if same(o) => Ok(()),
            other => Err(format!("got {other:?}")),
        },
    );
    let listed = |os: &[Object]| os.iter().any(same);
    r.record(
        "list_cluster lists it; another cluster's listing does not",
        match (
            p.list_cluster(&cluster).await,
            p.list_cluster("cf-conformance-other").await,
        ) {
            (Ok(mine), Ok(other)) => ensure(listed(&mine) && !listed(&other), || {
                format!(
                    "in its cluster: {}, in another: {}",
                    listed(&mine),
                    listed(&other)
                )
            }),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        },
    );
    r.record(
        "list_owned lists it",
        match p.list_owned().await {
            Ok(all) => ensure(listed(&all), || "not listed".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    let changed_value = |ty: AttrType| match ty {
        AttrType::String => Some(json!("conformance-updated")),
        AttrType::Map => Some(json!({"conformance": "updated"})),
        AttrType::StringList => Some(json!(["conformance-updated"])),
        AttrType::Int => Some(json!(2)),
        _ => None,
    };
    let updatable = kind
        .attrs
        .iter()
        .filter(|a| a.input && !a.force_new)
        .find_map(|a| Some((a, changed_value(a.ty)?)));
    if updatable.is_none() {
        r.record(
            format!(
                "update: skipped, `{}` has no attribute that changes in place",
                kind.kind
            ),
            Ok(()),
        );
    }
    if let Some((a, new_value)) = updatable {
        let mut desired = attrs.clone();
        desired.insert(a.name.clone(), new_value.clone());
        let up = UpdateRequest {
            address: address.clone(),
            kind: kind.kind.clone(),
            id: made.id.clone(),
            attrs: desired,
            changed: vec![a.name.clone()],
            idempotency_key: format!("cf-conformance-up-{nonce}"),
        };
        let done = p.update(&up).await;
        let reread = p.read(&read_req(&made.id)).await;
        r.record(
            format!("update `{}` in place", a.name),
            match (done, reread) {
                (Ok(o), Ok(Some(back))) => ensure(
                    same(&o) && back.attrs.get(&a.name) == Some(&new_value),
                    || format!("after update, read gives {:?}", back.attrs.get(&a.name)),
                ),
                (Ok(_), Ok(None)) => Err("gone after update".into()),
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            },
        );
    }
    let del = DeleteRequest {
        address: address.clone(),
        kind: kind.kind.clone(),
        id: made.id.clone(),
        idempotency_key: format!("cf-conformance-del-{nonce}"),
        force: false,
    };
    r.record(
        "delete, then delete again (already gone succeeds)",
        match (p.delete(&del).await, p.delete(&del).await) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
        },
    );
    r.record(
        "after delete: read gives null, find_by_key nothing",
        match (
            p.read(&read_req(&made.id)).await,
            p.find_by_key(&kind.kind, &owner.op).await,
        ) {
            (Ok(None), Ok(None)) => Ok(()),
            (a, b) => Err(format!("read: {a:?}, find_by_key: {b:?}")),
        },
    );
}

/// The checks that need the raw protocol: an unknown method gets an error and the
/// plugin lives on; a cancel of a finished request is harmless; `shutdown` ends it.
async fn raw(r: &mut Report, path: &Path, settings: &ProviderConfig, base_dir: &Path) {
    let factory = match PluginFactory::probe(path) {
        Ok(f) => f,
        Err(e) => {
            r.record("start again for the raw checks", Err(e.0));
            return;
        }
    };
    let provider = match factory.build_plugin(settings, base_dir) {
        Ok(p) => p,
        Err(e) => {
            r.record("configure again", Err(e));
            return;
        }
    };
    let unknown = provider
        .raw_call("cf_conformance_no_such_method", json!({}))
        .await;
    let alive = provider.list_owned().await;
    r.record(
        "an unknown method gets an error, and the plugin goes on",
        match (unknown, alive) {
            (Err(_), Ok(_)) => Ok(()),
            (Ok(v), _) => Err(format!("it answered with a result: {v}")),
            (_, Err(e)) => Err(format!("afterwards: {e}")),
        },
    );
    provider.send_cancel(1);
    r.record(
        "a cancel for a finished request is harmless",
        provider
            .list_owned()
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    );
    r.record(
        "shutdown: it exits with status 0",
        provider.shutdown(Duration::from_secs(5)),
    );
}
