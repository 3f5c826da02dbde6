//! Refresh: read every object the state records through its provider, in batches and
//! with bounded concurrency, and note what changed outside clusterform.

use std::collections::BTreeMap;

use clusterform_core::plan::Drift;
use clusterform_core::{Address, ResourceState, Value};
use clusterform_provider::ReadRequest;
use futures::stream::{self, StreamExt};

use crate::{EngineError, Readers, RetryPolicy};

/// One refreshed record: the state's view and the provider's answer.
type ReadAnswer<'a> = (&'a ResourceState, Option<clusterform_provider::Object>);

/// The state as the providers see it now.
#[derive(Clone, Debug, Default)]
pub struct Refreshed {
    /// Objects that still exist, with their current attributes.
    pub resources: BTreeMap<Address, ResourceState>,
    /// What changed outside clusterform (deleted objects, changed attributes).
    pub drift: Vec<Drift>,
    /// Provider calls made.
    pub calls: usize,
}

/// Read every resource of `state` through its provider: `concurrency` batches at a time,
/// each at most the provider's `max_batch()` objects.
pub async fn refresh(
    providers: &Readers,
    state: &BTreeMap<Address, ResourceState>,
    concurrency: usize,
    retry: RetryPolicy,
) -> Result<Refreshed, EngineError> {
    // Group by provider, then cut into batches.
    let mut by_provider: BTreeMap<&str, Vec<&ResourceState>> = BTreeMap::new();
    for r in state.values() {
        by_provider.entry(r.provider.as_str()).or_default().push(r);
    }
    let mut batches = Vec::new();
    for (name, records) in by_provider {
        let provider = providers.get(name)?;
        let size = provider.max_batch().max(1);
        for chunk in records.chunks(size) {
            batches.push((provider.clone(), chunk.to_vec()));
        }
    }
    let calls = batches.len();

    let results: Vec<Result<Vec<ReadAnswer<'_>>, EngineError>> = stream::iter(batches)
        .map(|(provider, chunk)| async move {
            let reqs: Vec<ReadRequest> = chunk
                .iter()
                .map(|r| ReadRequest {
                    address: r.address.clone(),
                    kind: r.address.kind.clone(),
                    id: r.id.clone(),
                    prior: r.attrs.clone(),
                })
                .collect();
            let answers = read_with_retry(provider.as_ref(), &reqs, retry).await;
            let mut out = Vec::with_capacity(chunk.len());
            for (r, a) in chunk.into_iter().zip(answers) {
                match a {
                    Ok(obj) => out.push((r, obj)),
                    Err(source) => {
                        return Err(EngineError::Refresh {
                            address: r.address.clone(),
                            source,
                        });
                    }
                }
            }
            Ok(out)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;

    let mut refreshed = Refreshed {
        calls,
        ..Refreshed::default()
    };
    for batch in results {
        for (old, obj) in batch? {
            match obj {
                Some(obj) => {
                    let changed = changed_attrs(&old.attrs, &obj.attrs);
                    if !changed.is_empty() {
                        refreshed.drift.push(Drift {
                            address: old.address.clone(),
                            deleted: false,
                            changed,
                            sensitive: sensitive_attrs(providers, old),
                        });
                    }
                    refreshed.resources.insert(
                        old.address.clone(),
                        ResourceState {
                            address: old.address.clone(),
                            provider: old.provider.clone(),
                            id: obj.id,
                            attrs: obj.attrs,
                            dependencies: old.dependencies.clone(),
                        },
                    );
                }
                None => refreshed.drift.push(Drift {
                    address: old.address.clone(),
                    deleted: true,
                    changed: Vec::new(),
                    sensitive: Vec::new(),
                }),
            }
        }
    }
    refreshed.drift.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(refreshed)
}

/// The attributes of `r`'s kind that its provider marks sensitive.
fn sensitive_attrs(providers: &Readers, r: &ResourceState) -> Vec<String> {
    providers
        .get(&r.provider)
        .ok()
        .and_then(|p| p.schema().kind(&r.address.kind))
        .map(|k| {
            k.attrs
                .iter()
                .filter(|a| a.sensitive)
                .map(|a| a.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// One batch read, retrying the whole batch while any answer is transient.
async fn read_with_retry(
    provider: &dyn clusterform_provider::Reader,
    reqs: &[ReadRequest],
    retry: RetryPolicy,
) -> Vec<Result<Option<clusterform_provider::Object>, clusterform_provider::ProviderError>> {
    let mut attempt = 1;
    loop {
        let answers = if reqs.len() == 1 {
            vec![provider.read(&reqs[0]).await]
        } else {
            provider.read_batch(reqs).await
        };
        let transient = answers
            .iter()
            .find_map(|a| a.as_ref().err().filter(|e| e.is_transient()).cloned());
        match transient {
            Some(e) if attempt < retry.max_attempts => {
                let asked = match e {
                    clusterform_provider::ProviderError::Transient { retry_after, .. } => {
                        retry_after
                    }
                    _ => None,
                };
                tokio::time::sleep(retry.backoff(attempt, asked)).await;
                attempt += 1;
            }
            _ => return answers,
        }
    }
}

/// Attributes whose value differs between the state and the provider: (name, state
/// value, value now).
fn changed_attrs(
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for (k, v) in old {
        match new.get(k) {
            Some(n) if n == v => {}
            Some(n) => out.push((k.clone(), v.clone(), n.clone())),
            None => out.push((k.clone(), v.clone(), Value::Null)),
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            out.push((k.clone(), Value::Null, n.clone()));
        }
    }
    out
}

impl Refreshed {
    /// The state mutations that accept what refresh found (`apply --refresh-only`): every
    /// changed object recorded as it is now, every deleted one forgotten. Nothing is asked
    /// of any provider.
    pub fn accept(&self) -> Vec<clusterform_state::Mutation> {
        use clusterform_state::Mutation;
        self.drift
            .iter()
            .filter_map(|d| {
                if d.deleted {
                    Some(Mutation::Remove(d.address.clone()))
                } else {
                    self.resources.get(&d.address).cloned().map(Mutation::Put)
                }
            })
            .collect()
    }
}
