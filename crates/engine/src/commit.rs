//! Group commit: operations that finish at the same moment share one durable state
//! transaction, so a thousand parallel creates cost a handful of fsyncs, not thousands.

use std::sync::Arc;

use clusterform_state::{Mutation, StateStore};
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<u64, String>>;

/// A handle to the committer task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<(Vec<Mutation>, Reply)>,
}

impl Committer {
    /// Start the committer task for `store`.
    pub(crate) fn start(store: Arc<dyn StateStore>) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<Mutation>, Reply)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mutations: Vec<Mutation> =
                    batch.iter().flat_map(|(m, _)| m.iter().cloned()).collect();
                let store = store.clone();
                let started = std::time::Instant::now();
                let count = mutations.len();
                let result = tokio::task::spawn_blocking(move || store.commit(&mutations))
                    .await
                    .map_err(|e| format!("state commit task failed: {e}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
                tracing::debug!(
                    "state commit: {} callers, {count} mutations, {:.1} ms",
                    batch.len(),
                    started.elapsed().as_secs_f64() * 1000.0
                );
                for (_, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Committer { tx }
    }

    /// Commit `mutations` durably (possibly with others); returns the serial after.
    pub(crate) async fn commit(&self, mutations: Vec<Mutation>) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((mutations, reply))
            .map_err(|_| "the state committer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the state committer has stopped".to_string())?
    }
}
