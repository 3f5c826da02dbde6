//! The SQLite file behind the sim cloud (`<dir>/cloud.db`): opening it (WAL, busy
//! timeout, a 0700 folder), its tables, the read queries shared by the provider and
//! [`SimCloud`](crate::SimCloud), and the errors that storage can raise.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterform_provider::{Object, Ownership, ProviderError};
use rusqlite::{Connection, OptionalExtension, params};

/// The database file inside the sim folder.
pub(crate) const DB_FILE: &str = "cloud.db";

/// How long a connection waits for another writer (another clusterform process).
const BUSY_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The columns [`row_to_object`] reads, in order.
pub(crate) const OBJECT_COLS: &str = "id, kind, attrs, owner";

/// Why the sim cloud's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The folder given to [`SimCloud::open`](crate::SimCloud::open) does not exist.
    #[error("no sim cloud at `{}`: the folder does not exist", .0.display())]
    NoCloud(PathBuf),
    /// The folder could not be created.
    #[error("cannot create the folder `{}`: {source}", path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("sim database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored record cannot be decoded.
    #[error("malformed record `{id}` in the sim database: {message}")]
    Corrupt {
        /// The object's id.
        id: String,
        /// What is wrong with it.
        message: String,
    },
    /// The background thread that writes to the database could not start.
    #[error("cannot start the sim writer thread: {0}")]
    Thread(std::io::Error),
    /// Live mode could not set up, inspect or remove what machines run.
    #[error("sim live mode: {0}")]
    Live(String),
}

impl SimError {
    /// How the engine should see this failure: a busy database is worth retrying,
    /// anything else is reported as is (no object was changed).
    pub(crate) fn into_provider(self) -> ProviderError {
        if let SimError::Db(rusqlite::Error::SqliteFailure(f, _)) = &self
            && matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        {
            return ProviderError::Transient {
                message: self.to_string(),
                retry_after: None,
            };
        }
        ProviderError::Permanent(self.to_string())
    }
}

/// Create the sim folder (mode 0700) if it is missing.
pub(crate) fn create_dir(dir: &Path) -> Result<(), SimError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| SimError::Folder {
        path: dir.to_path_buf(),
        source,
    })
}

/// Open `<dir>/cloud.db` with the settings every connection uses, creating the tables
/// when they are missing.
pub(crate) fn open(dir: &Path) -> Result<Connection, SimError> {
    let conn = Connection::open(dir.join(DB_FILE))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS objects(
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            cluster TEXT,
            address TEXT,
            op TEXT UNIQUE,
            attrs TEXT NOT NULL,
            owner TEXT,
            created_at TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS objects_cluster ON objects(cluster);
         CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, n INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS calls(method TEXT PRIMARY KEY, n INTEGER NOT NULL);",
    )?;
    Ok(conn)
}

/// One `objects` row as stored, before decoding.
pub(crate) struct Row {
    id: String,
    kind: String,
    attrs: String,
    owner: Option<String>,
}

/// Read a row selected with [`OBJECT_COLS`].
pub(crate) fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        kind: r.get(1)?,
        attrs: r.get(2)?,
        owner: r.get(3)?,
    })
}

/// Decode a stored row.
pub(crate) fn row_to_object(r: Row) -> Result<Object, SimError> {
    let corrupt = |id: &str, what: &str, e: serde_json::Error| SimError::Corrupt {
        id: id.to_string(),
        message: format!("{what}: {e}"),
    };
    let attrs = serde_json::from_str(&r.attrs).map_err(|e| corrupt(&r.id, "attrs", e))?;
    let owner: Option<Ownership> = match &r.owner {
        Some(o) => Some(serde_json::from_str(o).map_err(|e| corrupt(&r.id, "owner", e))?),
        None => None,
    };
    Ok(Object {
        kind: r.kind,
        id: r.id,
        attrs,
        owner,
    })
}

fn collect(rows: Vec<Row>) -> Result<Vec<Object>, SimError> {
    rows.into_iter().map(row_to_object).collect()
}

/// The object with this id.
pub(crate) fn get(conn: &Connection, id: &str) -> Result<Option<Object>, SimError> {
    let mut st =
        conn.prepare_cached(&format!("SELECT {OBJECT_COLS} FROM objects WHERE id = ?1"))?;
    st.query_row([id], row)
        .optional()?
        .map(row_to_object)
        .transpose()
}

/// The objects with these ids, in one query.
pub(crate) fn get_many(
    conn: &Connection,
    ids: &[&str],
) -> Result<HashMap<String, Object>, SimError> {
    let list = serde_json::Value::from(ids.to_vec()).to_string();
    let mut st = conn.prepare_cached(&format!(
        "SELECT {OBJECT_COLS} FROM objects WHERE id IN (SELECT value FROM json_each(?1))"
    ))?;
    let rows = st
        .query_map([list], row)?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    Ok(collect(rows)?
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect())
}

/// The object made by the operation with this idempotency key.
pub(crate) fn by_op(conn: &Connection, op: &str) -> Result<Option<Object>, SimError> {
    let mut st =
        conn.prepare_cached(&format!("SELECT {OBJECT_COLS} FROM objects WHERE op = ?1"))?;
    st.query_row([op], row)
        .optional()?
        .map(row_to_object)
        .transpose()
}

/// Every object (of one cluster, when given), sorted by id.
pub(crate) fn list(conn: &Connection, cluster: Option<&str>) -> Result<Vec<Object>, SimError> {
    let rows = match cluster {
        Some(c) => {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {OBJECT_COLS} FROM objects WHERE cluster = ?1 ORDER BY id"
            ))?;
            st.query_map([c], row)?
                .collect::<rusqlite::Result<Vec<Row>>>()?
        }
        None => {
            let mut st =
                conn.prepare_cached(&format!("SELECT {OBJECT_COLS} FROM objects ORDER BY id"))?;
            st.query_map([], row)?
                .collect::<rusqlite::Result<Vec<Row>>>()?
        }
    };
    collect(rows)
}

fn name_counts(conn: &Connection, sql: &str) -> Result<BTreeMap<String, u64>, SimError> {
    let mut st = conn.prepare_cached(sql)?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .map(|(k, n)| (k, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// How many objects of each kind exist.
pub(crate) fn counts(conn: &Connection) -> Result<BTreeMap<String, u64>, SimError> {
    name_counts(conn, "SELECT kind, count(*) FROM objects GROUP BY kind")
}

/// How many times each provider method was called.
pub(crate) fn calls(conn: &Connection) -> Result<BTreeMap<String, u64>, SimError> {
    name_counts(conn, "SELECT method, n FROM calls")
}

/// Add to the call counters.
pub(crate) fn add_calls(conn: &Connection, counts: &BTreeMap<&str, u64>) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT INTO calls(method, n) VALUES (?1, ?2)
         ON CONFLICT(method) DO UPDATE SET n = n + excluded.n",
    )?;
    for (m, n) in counts {
        st.execute(params![m, i64::try_from(*n).unwrap_or(i64::MAX)])?;
    }
    Ok(())
}

/// Objects that share a cluster and an address: (cluster, address, ids sorted).
pub(crate) fn duplicates(
    conn: &Connection,
) -> Result<Vec<(String, String, Vec<String>)>, SimError> {
    let mut st = conn.prepare_cached(
        "SELECT cluster, address, id FROM objects
         WHERE (cluster, address) IN (
             SELECT cluster, address FROM objects
             WHERE cluster IS NOT NULL AND address IS NOT NULL
             GROUP BY cluster, address HAVING count(*) > 1)
         ORDER BY cluster, address, id",
    )?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
    for (cluster, address, id) in rows {
        match out.last_mut() {
            Some((c, a, ids)) if *c == cluster && *a == address => ids.push(id),
            _ => out.push((cluster, address, vec![id])),
        }
    }
    Ok(out)
}
