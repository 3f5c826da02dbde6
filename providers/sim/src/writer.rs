//! The single writer: one thread owning the write connection, fed by a channel. It
//! takes every request waiting, runs them all in ONE transaction (group commit), then
//! answers each, so a thousand concurrent creates cost a handful of commits.

use std::collections::BTreeMap;
use std::sync::mpsc;

use clusterform_core::ProviderSchema;
use clusterform_provider::{CreateRequest, DeleteRequest, Object, ProviderError, UpdateRequest};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::db::SimError;
use crate::ops::{self, BatchCache, Fail};

/// The most requests one transaction takes.
const MAX_GROUP: usize = 10_000;

/// One request to the writer.
pub(crate) enum Job {
    /// Create an object (counted as `create`).
    Create(CreateRequest),
    /// Update an object (counted as `update`).
    Update(UpdateRequest),
    /// Delete an object (counted as `delete`).
    Delete(DeleteRequest),
    /// Only count a call of this method (reads, and calls that failed before working).
    Count(&'static str),
}

impl Job {
    fn method(&self) -> &'static str {
        match self {
            Job::Create(_) => "create",
            Job::Update(_) => "update",
            Job::Delete(_) => "delete",
            Job::Count(m) => m,
        }
    }
}

/// What a job produced.
pub(crate) enum Done {
    /// The object created or updated.
    Object(Box<Object>),
    /// Deleted, or counted.
    Nothing,
}

struct Envelope {
    job: Job,
    reply: oneshot::Sender<Result<Done, ProviderError>>,
}

/// The handle to the writer thread; dropping it lets the thread finish and exit.
pub(crate) struct Writer {
    tx: mpsc::Sender<Envelope>,
}

impl Writer {
    /// Start the writer thread on `conn`.
    pub(crate) fn start(conn: Connection, schema: ProviderSchema) -> Result<Writer, SimError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sim-writer".into())
            .spawn(move || run(conn, &schema, &rx))
            .map_err(SimError::Thread)?;
        Ok(Writer { tx })
    }

    /// Run one job; answers once it is committed.
    pub(crate) async fn submit(&self, job: Job) -> Result<Done, ProviderError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Envelope { job, reply }).map_err(|_| {
            ProviderError::Permanent("the sim writer thread has stopped".to_string())
        })?;
        answer.await.map_err(|_| {
            ProviderError::Ambiguous("the sim writer thread stopped during the call".to_string())
        })?
    }
}

fn run(mut conn: Connection, schema: &ProviderSchema, rx: &mpsc::Receiver<Envelope>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(e) => group.push(e),
                Err(_) => break,
            }
        }
        let results = run_group(&mut conn, schema, &group);
        for (env, result) in group.into_iter().zip(results) {
            // The caller may have given up waiting; nothing to do then.
            let _ = env.reply.send(result);
        }
    }
}

/// Run every job in one transaction; each job in its own savepoint so that a refused
/// one does not undo the others.
fn run_group(
    conn: &mut Connection,
    schema: &ProviderSchema,
    group: &[Envelope],
) -> Vec<Result<Done, ProviderError>> {
    let fail_all = |e: ProviderError| group.iter().map(|_| Err(e.clone())).collect();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(SimError::Db(e).into_provider()),
    };
    let mut cache = BatchCache::default();
    let mut calls: BTreeMap<&str, u64> = BTreeMap::new();
    let mut results = Vec::with_capacity(group.len());
    for env in group {
        *calls.entry(env.job.method()).or_default() += 1;
        if matches!(env.job, Job::Count(_)) {
            results.push(Ok(Done::Nothing));
            continue;
        }
        let sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                results.push(Err(SimError::Db(e).into_provider()));
                continue;
            }
        };
        let r = match &env.job {
            Job::Create(req) => {
                ops::create(&sp, schema, &mut cache, req).map(|o| Done::Object(Box::new(o)))
            }
            Job::Update(req) => ops::update(&sp, schema, req).map(|o| Done::Object(Box::new(o))),
            Job::Delete(req) => ops::delete(&sp, &mut cache, req).map(|()| Done::Nothing),
            Job::Count(_) => Ok(Done::Nothing),
        };
        let r = match r {
            Ok(done) => sp.commit().map(|()| done).map_err(Fail::from),
            // Dropping the savepoint rolls it back.
            Err(e) => Err(e),
        };
        results.push(r.map_err(Fail::into_provider));
    }
    if let Err(e) = crate::db::add_calls(&tx, &calls) {
        return fail_all(SimError::Db(e).into_provider());
    }
    if let Err(e) = tx.commit() {
        return fail_all(SimError::Db(e).into_provider());
    }
    results
}
