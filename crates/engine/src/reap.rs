//! Reap: find clusters at a provider by their ownership tags alone (no state needed: a
//! teammate's cluster, or one whose state folder is gone), tell which test clusters have
//! expired, and delete tagged objects in dependency order. Objects without the tool's
//! tags are never listed, so never touched.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clusterform_core::{Action, AttrType};
use clusterform_provider::{DeleteRequest, Object, Provider, ProviderError, Reader};
use serde::Serialize;

use crate::walk::{NodeResult, walk};
use crate::{EngineError, Event, Observer, RetryPolicy};

/// One cluster as its tagged objects at one provider show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaggedCluster {
    /// The cluster name (`clusterform:cluster`).
    pub name: String,
    /// The provider holding the objects.
    pub provider: String,
    /// Who made its first object (`clusterform:created-by`), when tagged.
    pub created_by: Option<String>,
    /// When its first object was made (RFC 3339), when tagged.
    pub created_at: Option<String>,
    /// When it expires: the latest `clusterform:expires-at` of its objects. `None` when
    /// any object has no expiry (not a test cluster: never reaped as expired).
    pub expires_at: Option<String>,
    /// Its objects, sorted by id.
    pub objects: Vec<Object>,
}

impl TaggedCluster {
    /// True when the cluster has an expiry and it has passed at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|t| t <= now)
    }

    /// How long ago its first object was made, at `now`.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        let t = humantime::parse_rfc3339_weak(self.created_at.as_deref()?).ok()?;
        now.duration_since(t).ok()
    }
}

/// Every cluster with tagged objects at `reader`, sorted by name.
pub async fn survey(reader: &dyn Reader) -> Result<Vec<TaggedCluster>, EngineError> {
    let objects = reader
        .list_owned()
        .await
        .map_err(|source| EngineError::Provider {
            provider: reader.name().to_string(),
            source,
        })?;
    Ok(group(reader.name(), objects))
}

/// Group tagged objects by cluster (objects without ownership are dropped).
pub fn group(provider: &str, objects: Vec<Object>) -> Vec<TaggedCluster> {
    let mut by_cluster: BTreeMap<String, Vec<Object>> = BTreeMap::new();
    for o in objects {
        if let Some(owner) = &o.owner {
            by_cluster.entry(owner.cluster.clone()).or_default().push(o);
        }
    }
    by_cluster
        .into_iter()
        .map(|(name, mut objects)| {
            objects.sort_by(|a, b| a.id.cmp(&b.id));
            let owners = || objects.iter().filter_map(|o| o.owner.as_ref());
            let first = owners()
                .filter(|w| w.created_at.is_some())
                .min_by(|a, b| a.created_at.cmp(&b.created_at));
            let expiries: Option<Vec<SystemTime>> = owners()
                .map(|w| {
                    w.expires_at
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                })
                .collect();
            let expires_at = expiries
                .and_then(|e| e.into_iter().max())
                .map(|t| humantime::format_rfc3339_seconds(t).to_string());
            TaggedCluster {
                created_by: first.and_then(|w| w.created_by.clone()),
                created_at: first.and_then(|w| w.created_at.clone()),
                expires_at,
                name,
                provider: provider.to_string(),
                objects,
            }
        })
        .collect()
}

/// For each object, the objects that must be deleted before it: those whose reference
/// attributes (per the provider's schema) hold its id. Machines go before the subnets
/// and networks they point at, whatever the kinds are called.
pub fn deletion_order(reader: &dyn Reader, objects: &[Object]) -> Vec<Vec<usize>> {
    let by_id: HashMap<&str, usize> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| (o.id.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); objects.len()];
    for (i, o) in objects.iter().enumerate() {
        let Some(kind) = reader.schema().kind(&o.kind) else {
            continue;
        };
        for a in kind.attrs.iter().filter(|a| a.ty == AttrType::Reference) {
            let target = o
                .attrs
                .get(&a.name)
                .and_then(|v| v.as_str())
                .and_then(|id| by_id.get(id));
            if let Some(&t) = target
                && t != i
            {
                // `o` points at `t`: `t` is deleted after `o`.
                deps[t].push(i);
            }
        }
    }
    deps
}

/// What a reap did with each object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReapOutcome {
    /// The object's id.
    pub id: String,
    /// The address its tags name.
    pub address: String,
    /// `None`: deleted; else why not.
    pub error: Option<String>,
}

/// Delete `objects` (each must carry the tool's tags; others are refused) in dependency
/// order, `parallelism` at a time, retrying transient errors. Progress goes to `observer`.
pub async fn delete_tagged(
    provider: Arc<dyn Provider>,
    objects: &[Object],
    parallelism: usize,
    retry: RetryPolicy,
    observer: Observer,
) -> (Vec<ReapOutcome>, u64) {
    let deps = deletion_order(provider.reader(), objects);
    let retries = Arc::new(AtomicU64::new(0));
    let objects: Arc<Vec<Object>> = Arc::new(objects.to_vec());
    let results = {
        let (objects, retries, observer) = (objects.clone(), retries.clone(), observer.clone());
        walk(
            &deps,
            parallelism,
            || false,
            move |i| {
                let (provider, objects, retries, observer) = (
                    provider.clone(),
                    objects.clone(),
                    retries.clone(),
                    observer.clone(),
                );
                async move {
                    let o = &objects[i];
                    let Some(owner) = &o.owner else {
                        return Err(format!(
                            "`{}` carries no clusterform tags; it is never touched",
                            o.id
                        ));
                    };
                    let started = Instant::now();
                    observer(Event::Started {
                        address: owner.address.clone(),
                        action: Action::Delete,
                    });
                    let req = DeleteRequest {
                        address: owner.address.clone(),
                        kind: o.kind.clone(),
                        id: o.id.clone(),
                        idempotency_key: format!("cf-reap-{}", uuid::Uuid::new_v4()),
                        force: false,
                    };
                    let on_retry = |attempt: u32, e: &ProviderError| {
                        retries.fetch_add(1, Ordering::SeqCst);
                        observer(Event::Retrying {
                            address: owner.address.clone(),
                            attempt,
                            error: e.to_string(),
                        });
                    };
                    match retry.run(|| provider.delete(&req), on_retry).await {
                        Ok(()) => {
                            observer(Event::Finished {
                                address: owner.address.clone(),
                                action: Action::Delete,
                                elapsed: started.elapsed(),
                                id: Some(o.id.clone()),
                            });
                            Ok(())
                        }
                        Err(e) => {
                            observer(Event::Failed {
                                address: owner.address.clone(),
                                action: Action::Delete,
                                error: e.to_string(),
                            });
                            Err(e.to_string())
                        }
                    }
                }
            },
        )
        .await
    };
    let outcomes = objects
        .iter()
        .zip(results)
        .map(|(o, r)| ReapOutcome {
            id: o.id.clone(),
            address: o
                .owner
                .as_ref()
                .map_or_else(String::new, |w| w.address.to_string()),
            error: match r {
                NodeResult::Done => None,
                NodeResult::Failed(e) => Some(e),
                NodeResult::Skipped(cause) => Some(format!(
                    "skipped because deleting `{}` failed",
                    objects[cause].id
                )),
                NodeResult::Cancelled => Some("not started".to_string()),
            },
        })
        .collect();
    (outcomes, retries.load(Ordering::SeqCst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_provider::Ownership;
    use serde_json::json;

    fn obj(
        id: &str,
        kind: &str,
        cluster: &str,
        expires: Option<&str>,
        net: Option<&str>,
    ) -> Object {
        let mut attrs = clusterform_core::Attrs::new();
        if let Some(n) = net {
            attrs.insert("network".into(), json!(n));
        }
        Object {
            kind: kind.into(),
            id: id.into(),
            attrs,
            owner: Some(Ownership {
                cluster: cluster.into(),
                address: format!("{kind}.{id}").parse().expect("address"),
                op: format!("op-{id}"),
                expires_at: expires.map(str::to_string),
                created_by: Some("ann@box".into()),
                created_at: Some(format!("2026-01-01T0{}:00:00Z", id.len() % 10)),
            }),
        }
    }

    #[test]
    fn clusters_expire_with_their_latest_object_and_never_without_expiry() {
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").expect("time");
        let objects = vec![
            obj("a1", "network", "old", Some("2026-01-01T08:00:00Z"), None),
            obj(
                "a2",
                "machine",
                "old",
                Some("2026-01-01T10:00:00Z"),
                Some("a1"),
            ),
            obj("b1", "network", "young", Some("2026-01-01T08:00:00Z"), None),
            obj(
                "b2",
                "machine",
                "young",
                Some("2026-01-01T20:00:00Z"),
                Some("b1"),
            ),
            obj("c1", "network", "kept", None, None),
            obj("c2", "machine", "mixed", Some("2026-01-01T01:00:00Z"), None),
            obj("c3", "machine", "mixed", None, None),
        ];
        let mut untagged = obj("z", "machine", "x", None, None);
        untagged.owner = None;
        let mut all = objects.clone();
        all.push(untagged);
        let clusters = group("sim", all);
        let names: Vec<(&str, bool)> = clusters
            .iter()
            .map(|c| (c.name.as_str(), c.expired(now)))
            .collect();
        assert_eq!(
            names,
            [
                ("kept", false),
                ("mixed", false),
                ("old", true),
                ("young", false)
            ]
        );
        let old = &clusters[2];
        assert_eq!(old.expires_at.as_deref(), Some("2026-01-01T10:00:00Z"));
        assert_eq!(old.created_by.as_deref(), Some("ann@box"));
        assert_eq!(old.objects.len(), 2);
        assert!(
            clusters
                .iter()
                .all(|c| c.objects.iter().all(|o| o.id != "z"))
        );
    }
}
