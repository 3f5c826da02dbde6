//! [`Owned`]: a state store seen by one cluster file. It refuses a state that records
//! another cluster (a copied state folder) before anything is planned, and records the
//! cluster on the first change it writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{
    ClusterIdentity, HistoryEntry, LockGuard, LockInfo, Mutation, Snapshot, StateError, StateStore,
};

/// A store used on behalf of the cluster `identity`.
pub struct Owned {
    inner: Arc<dyn StateStore>,
    identity: ClusterIdentity,
    /// Set once this run has seen (or written) this identity in the store.
    recorded: AtomicBool,
    /// Set once a load passed the check (under the caller's lock, nothing else writes).
    checked: AtomicBool,
}

impl Owned {
    /// `inner`, used by the cluster `identity`.
    pub fn new(inner: Arc<dyn StateStore>, identity: ClusterIdentity) -> Owned {
        Owned {
            inner,
            identity,
            recorded: AtomicBool::new(false),
            checked: AtomicBool::new(false),
        }
    }

    /// Refuse a snapshot that records another cluster.
    fn check(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        match &snapshot.identity {
            Some(theirs) if theirs.name != self.identity.name => Err(StateError::OtherCluster {
                path: self.inner.describe(),
                theirs: Box::new(theirs.clone()),
                ours: Box::new(self.identity.clone()),
            }),
            Some(theirs) if *theirs == self.identity => {
                self.recorded.store(true, Ordering::SeqCst);
                Ok(())
            }
            _ => Ok(()),
        }
        .inspect(|()| self.checked.store(true, Ordering::SeqCst))
    }
}

impl StateStore for Owned {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        let snapshot = self.inner.load()?;
        self.check(&snapshot)?;
        Ok(snapshot)
    }

    fn load_secrets(&self) -> Result<Snapshot, StateError> {
        let snapshot = self.inner.load_secrets()?;
        self.check(&snapshot)?;
        Ok(snapshot)
    }

    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        if mutations.is_empty() || self.recorded.load(Ordering::SeqCst) {
            return self.inner.commit(mutations);
        }
        // The first change of this run: check the state unless a load did, then record
        // the cluster with the change.
        if !self.checked.load(Ordering::SeqCst) {
            self.check(&self.inner.load()?)?;
        }
        let mut all = mutations.to_vec();
        all.push(Mutation::SetIdentity(self.identity.clone()));
        let serial = self.inner.commit(&all)?;
        self.recorded.store(true, Ordering::SeqCst);
        Ok(serial)
    }

    fn lock(&self, operation: &str, wait: Duration) -> Result<Box<dyn LockGuard>, StateError> {
        self.inner.lock(operation, wait)
    }

    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        self.inner.lock_holder()
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        self.inner.force_unlock(id)
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        self.inner.history(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    fn id(name: &str, file: &str) -> ClusterIdentity {
        ClusterIdentity {
            name: name.into(),
            file: file.into(),
        }
    }

    fn put() -> Mutation {
        let record = clusterform_core::ResourceState {
            address: clusterform_core::Address::new("network", "main"),
            provider: "sim".into(),
            id: "n-1".into(),
            attrs: clusterform_core::Attrs::new(),
            dependencies: vec![],
        };
        Mutation::Put(record)
    }

    #[test]
    fn the_first_change_records_the_cluster_and_another_cluster_is_refused() {
        let mem: Arc<dyn StateStore> = Arc::new(MemStore::default());
        let a = Owned::new(mem.clone(), id("prod", "cluster.toml"));
        assert_eq!(a.load().expect("load").identity, None);
        a.commit(&[]).expect("empty commit");
        assert_eq!(mem.load().expect("load").identity, None, "nothing written");
        a.commit(&[put()]).expect("commit");
        assert_eq!(
            mem.load().expect("load").identity,
            Some(id("prod", "cluster.toml"))
        );
        // The same cluster from a renamed file is the same cluster; it records the file.
        let renamed = Owned::new(mem.clone(), id("prod", "prod.toml"));
        renamed.load().expect("load");
        renamed.commit(&[put()]).expect("commit");
        assert_eq!(
            mem.load().expect("load").identity,
            Some(id("prod", "prod.toml"))
        );
        // Another cluster: refused on load and on commit, with both names.
        let b = Owned::new(mem.clone(), id("staging", "staging.toml"));
        for result in [b.load().map(|_| 0), b.commit(&[put()])] {
            match result {
                Err(e @ StateError::OtherCluster { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains("`prod`") && text.contains("`staging`"),
                        "{text}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
