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
use crate::live::Live;
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
    /// Start the writer thread on `conn`; with `live`, machines run their configs.
    pub(crate) fn start(
        conn: Connection,
        schema: ProviderSchema,
        live: Option<Live>,
    ) -> Result<Writer, SimError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sim-writer".into())
            .spawn(move || run(conn, &schema, live.as_ref(), &rx))
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

fn run(
    mut conn: Connection,
    schema: &ProviderSchema,
    live: Option<&Live>,
    rx: &mpsc::Receiver<Envelope>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(e) => group.push(e),
                Err(_) => break,
            }
        }
        let results = run_group(&mut conn, schema, live, &group);
        for (env, result) in group.into_iter().zip(results) {
            // The caller may have given up waiting; nothing to do then.
            let _ = env.reply.send(result);
        }
    }
}

/// Run every job in one transaction; each job in its own savepoint so that a refused
/// one does not undo the others.
///
/// In live mode, a batch that changes anything first removes orphaned live parts; a
/// new machine's live parts start right after its row is inserted, before its
/// savepoint commits (a failure refuses the create); a deleted machine's live parts
/// (and a deleted network's bridge) are removed once the transaction has committed.
fn run_group(
    conn: &mut Connection,
    schema: &ProviderSchema,
    live: Option<&Live>,
    group: &[Envelope],
) -> Vec<Result<Done, ProviderError>> {
    let fail_all = |e: ProviderError| group.iter().map(|_| Err(e.clone())).collect();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(SimError::Db(e).into_provider()),
    };
    if let Some(live) = live
        && group.iter().any(|e| !matches!(e.job, Job::Count(_)))
    {
        // Best effort: what cannot be removed now is tried again by the next batch.
        let _ = live.clean_orphans(&tx);
    }
    let mut cache = BatchCache::default();
    let mut calls: BTreeMap<&str, u64> = BTreeMap::new();
    let mut results = Vec::with_capacity(group.len());
    // Machines started in this transaction, and (job index, object) deleted by it.
    let mut started: Vec<String> = Vec::new();
    let mut deleted: Vec<(usize, clusterform_provider::Object)> = Vec::new();
    for (i, env) in group.iter().enumerate() {
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
        let mut this_started = None;
        let mut this_deleted = None;
        let r = match &env.job {
            Job::Create(req) => ops::create(&sp, schema, &mut cache, req).and_then(|(o, new)| {
                if new
                    && o.kind == "machine"
                    && let Some(live) = live
                {
                    live.start_machine(&sp, &o)
                        .map_err(|m| Fail::Reject(ProviderError::Permanent(m)))?;
                    this_started = Some(o.id.clone());
                }
                Ok(Done::Object(Box::new(o)))
            }),
            Job::Update(req) => ops::update(&sp, schema, req).map(|o| Done::Object(Box::new(o))),
            Job::Delete(req) => ops::delete(&sp, &mut cache, req).map(|o| {
                this_deleted = o;
                Done::Nothing
            }),
            Job::Count(_) => Ok(Done::Nothing),
        };
        let r = match r {
            Ok(done) => sp.commit().map(|()| done).map_err(Fail::from),
            // Dropping the savepoint rolls it back.
            Err(e) => Err(e),
        };
        if r.is_ok() {
            started.extend(this_started);
            deleted.extend(this_deleted.map(|o| (i, o)));
        } else if let (Some(id), Some(live)) = (this_started, live) {
            // The row is rolled back: so are its live parts.
            let _ = live.stop_machine(&id);
        }
        results.push(r.map_err(Fail::into_provider));
    }
    let committed = crate::db::add_calls(&tx, &calls)
        .and_then(|()| tx.commit())
        .map_err(|e| SimError::Db(e).into_provider());
    let Some(live) = live else {
        return match committed {
            Ok(()) => results,
            Err(e) => fail_all(e),
        };
    };
    if let Err(e) = committed {
        for id in &started {
            let _ = live.stop_machine(id);
        }
        return fail_all(e);
    }
    for (i, o) in deleted {
        let removed = match o.kind.as_str() {
            "machine" => live.stop_machine(&o.id),
            "network" => live.remove_bridge(&o.id),
            _ => Ok(()),
        };
        if let Err(m) = removed {
            // The object is gone; a retry finds nothing to delete, and the next write
            // batch removes what is left.
            results[i] = Err(ProviderError::Transient {
                message: format!("{} `{}` was deleted, but {m}", o.kind, o.id),
                retry_after: None,
            });
        }
    }
    results
}
