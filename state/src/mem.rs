//! [`MemStore`]: a state store kept in memory, for runs whose records nobody keeps
//! (`reap` deleting what it found by tags) and for tests.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::{HistoryEntry, LockGuard, LockInfo, Mutation, Snapshot, StateError, StateStore, lock};

/// A state store in memory. The lock is private to this value (no other process can see
/// the store), so taking it always succeeds.
#[derive(Debug, Default)]
pub struct MemStore {
    snap: Mutex<Snapshot>,
    commits: Mutex<usize>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// How many commits were made.
    pub fn commits(&self) -> usize {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snap(&self) -> MutexGuard<'_, Snapshot> {
        self.snap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct MemGuard(LockInfo);

impl LockGuard for MemGuard {
    fn info(&self) -> &LockInfo {
        &self.0
    }
    fn note(&self) -> Option<&str> {
        None
    }
}

impl StateStore for MemStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn load(&self) -> Result<Snapshot, StateError> {
        Ok(self.snap().clone())
    }

    fn commit(&self, mutations: &[Mutation]) -> Result<u64, StateError> {
        *self.commits.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let mut s = self.snap();
        let mut records = false;
        for m in mutations {
            match m {
                Mutation::Put(r) => {
                    records = true;
                    s.resources.insert(r.address.clone(), r.clone());
                }
                Mutation::Remove(a) => {
                    records = true;
                    s.resources.remove(a);
                }
                Mutation::JournalOpen(e) => s.journal.push(e.clone()),
                Mutation::JournalClose(id) => s.journal.retain(|e| &e.op_id != id),
                Mutation::SetIdentity(identity) => s.identity = Some(identity.clone()),
                Mutation::SetSecret { name, value } => {
                    s.secrets.insert(name.clone(), value.clone());
                }
            }
        }
        if records {
            s.serial += 1;
            s.lineage.get_or_insert_with(|| "memory".into());
        }
        Ok(s.serial)
    }

    fn lock(&self, operation: &str, _wait: Duration) -> Result<Box<dyn LockGuard>, StateError> {
        Ok(Box::new(MemGuard(lock::new_info(operation))))
    }

    fn lock_holder(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(None)
    }

    fn force_unlock(&self, id: &str) -> Result<LockInfo, StateError> {
        Err(StateError::WrongLockId {
            path: self.describe(),
            id: id.to_string(),
            current: None,
        })
    }

    fn history(&self, _limit: usize) -> Result<Vec<HistoryEntry>, StateError> {
        Ok(Vec::new())
    }
}
