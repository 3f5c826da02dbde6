//! [`SimCloud`]: direct access to the sim cloud, outside any provider call, for tests
//! and for `clusterform sim ...` (looking at the cloud, or changing it "out of band" to
//! create drift, as a user would in a cloud console).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use clusterform_provider::Object;
use rusqlite::{Connection, TransactionBehavior};

use crate::db::{self, SimError};
use crate::live::{Live, LiveMachine};

/// The methods that change the cloud, summed by [`SimCloud::mutations`].
const MUTATIONS: [&str; 4] = ["create", "update", "delete", "import"];

/// The sim cloud in one folder, opened directly.
pub struct SimCloud {
    dir: PathBuf,
    conn: Mutex<Connection>,
    live: Live,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCloud")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl SimCloud {
    /// Open the cloud in `dir`, creating `cloud.db` there when it is missing. The
    /// folder itself must exist (a mistyped folder is an error, not a new empty cloud).
    pub fn open(dir: &Path) -> Result<SimCloud, SimError> {
        if !dir.is_dir() {
            return Err(SimError::NoCloud(dir.to_path_buf()));
        }
        Ok(SimCloud {
            dir: dir.to_path_buf(),
            conn: Mutex::new(db::open(dir)?),
            live: Live::new(dir, None).map_err(SimError::Live)?,
        })
    }

    /// The folder holding the cloud.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every object (of one cluster, when given), sorted by id.
    pub fn list(&self, cluster: Option<&str>) -> Result<Vec<Object>, SimError> {
        db::list(&self.conn(), cluster)
    }

    /// One object by id.
    pub fn get(&self, id: &str) -> Result<Option<Object>, SimError> {
        db::get(&self.conn(), id)
    }

    /// How many objects of each kind exist.
    pub fn counts(&self) -> Result<BTreeMap<String, u64>, SimError> {
        db::counts(&self.conn())
    }

    /// Objects that share a cluster and an address (a create that ran twice):
    /// (cluster, address, ids sorted), sorted by cluster then address.
    pub fn duplicates(&self) -> Result<Vec<(String, String, Vec<String>)>, SimError> {
        db::duplicates(&self.conn())
    }

    /// Delete an object regardless of what depends on it; false when there is none. A
    /// machine that runs live (live mode) stops, as a machine deleted in a cloud
    /// console would.
    pub fn delete(&self, id: &str) -> Result<bool, SimError> {
        let n = self
            .conn()
            .execute("DELETE FROM objects WHERE id = ?1", [id])?;
        if n > 0 && self.live.has_folder(id) {
            self.live.stop_machine(id).map_err(SimError::Live)?;
        }
        Ok(n > 0)
    }

    /// What live mode runs for machine `id` (its namespace, its etcd member and proxy
    /// with their pids, whether they still run, their logs), or None when it runs
    /// nothing live. Only looks: never starts or stops anything.
    pub fn live_machine(&self, id: &str) -> Option<LiveMachine> {
        self.live.machine(id)
    }

    /// [`SimCloud::live_machine`] of every machine that runs live, sorted by id.
    pub fn live_machines(&self) -> Vec<LiveMachine> {
        self.live.machines()
    }

    /// Stop every process live mode started for this sim folder and remove every
    /// network namespace it made, and its veth ends and bridges in the network
    /// namespace this runs in (bridges in another namespace are left to that
    /// namespace's owner; deleting that namespace removes them). The machines' rows and
    /// live folders (logs, etcd data) stay; nothing restarts them. For test teardown.
    pub fn stop_live(&self) -> Result<(), SimError> {
        self.live.stop_all().map_err(SimError::Live)
    }

    /// Set (or, with `null`, remove) one attribute of an object; false when there is
    /// no such object.
    pub fn set_attr(
        &self,
        id: &str,
        key: &str,
        value: serde_json::Value,
    ) -> Result<bool, SimError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(mut o) = db::get(&tx, id)? else {
            return Ok(false);
        };
        if value.is_null() {
            o.attrs.remove(key);
        } else {
            o.attrs.insert(key.to_string(), value);
        }
        let attrs = serde_json::to_string(&o.attrs).map_err(|e| SimError::Corrupt {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        tx.execute("UPDATE objects SET attrs = ?2 WHERE id = ?1", [id, &attrs])?;
        tx.commit()?;
        Ok(true)
    }

    /// Make an object without any clusterform tags, as someone would by hand in a cloud
    /// console; returns its id. clusterform must never touch such an object.
    pub fn insert_untagged(
        &self,
        kind: &str,
        attrs: &clusterform_core::Attrs,
    ) -> Result<String, SimError> {
        let prefix = crate::schema::id_prefix(kind).unwrap_or("obj");
        let attrs_json = serde_json::to_string(attrs).map_err(|e| SimError::Corrupt {
            id: kind.to_string(),
            message: e.to_string(),
        })?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n: i64 = tx.query_row(
            "INSERT INTO counters(name, n) VALUES (?1, 1)
             ON CONFLICT(name) DO UPDATE SET n = n + 1 RETURNING n",
            [kind],
            |r| r.get(0),
        )?;
        let id = format!("{prefix}-{n:06}");
        tx.execute(
            "INSERT INTO objects(id, kind, attrs, created_at)
             VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
            [&id, kind, &attrs_json],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// How many times each provider method was called (`read`, `read_batch`,
    /// `find_by_key`, `list_cluster`, `create`, `update`, `delete`, `import`), by every
    /// process using this folder, since the last [`SimCloud::reset_calls`].
    pub fn calls(&self) -> Result<BTreeMap<String, u64>, SimError> {
        db::calls(&self.conn())
    }

    /// The number of create, update, delete and import calls.
    pub fn mutations(&self) -> Result<u64, SimError> {
        let calls = self.calls()?;
        Ok(MUTATIONS.iter().filter_map(|m| calls.get(*m)).sum())
    }

    /// Set every call counter back to zero.
    pub fn reset_calls(&self) -> Result<(), SimError> {
        self.conn().execute("DELETE FROM calls", [])?;
        Ok(())
    }
}
