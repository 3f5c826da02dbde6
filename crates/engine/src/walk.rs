//! The parallel DAG walker: a node starts as soon as all its dependencies are done, at
//! most `parallelism` at once; nodes downstream of a failure are skipped (not failed),
//! so a report shows the one real cause; independent branches run to the end.

use std::collections::VecDeque;
use std::future::Future;

use tokio::task::JoinSet;

/// How one node ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeResult<E> {
    /// It ran and succeeded.
    Done,
    /// It ran and failed.
    Failed(E),
    /// It did not run because the node with this index failed (or was skipped).
    Skipped(usize),
    /// It did not run because the walk was stopped (Ctrl-C).
    Cancelled,
}

/// Walk a DAG of `deps.len()` nodes, where `deps[i]` lists the nodes that must finish
/// before node `i`. `run(i)` does node i. Once `stop()` answers true no new node starts;
/// those in flight finish. Returns one result per node.
///
/// `deps` must be acyclic (the caller checked); a node on a cycle would never start and
/// is reported as cancelled.
pub async fn walk<E, F, Fut>(
    deps: &[Vec<usize>],
    parallelism: usize,
    stop: impl Fn() -> bool,
    run: F,
) -> Vec<NodeResult<E>>
where
    E: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let n = deps.len();
    let parallelism = parallelism.max(1);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (i, ds) in deps.iter().enumerate() {
        waiting[i] = ds.len();
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut results: Vec<Option<NodeResult<E>>> = (0..n).map(|_| None).collect();
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut running: JoinSet<(usize, Result<(), E>)> = JoinSet::new();

    loop {
        while running.len() < parallelism {
            let Some(i) = ready.pop_front() else { break };
            if results[i].is_some() {
                continue;
            }
            if stop() {
                results[i] = Some(NodeResult::Cancelled);
                continue;
            }
            let fut = run(i);
            running.spawn(async move { (i, fut.await) });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, outcome) = match joined {
            Ok(x) => x,
            // A panicking node: nothing to attribute it to; keep walking the rest.
            Err(_) => continue,
        };
        match outcome {
            Ok(()) => {
                results[i] = Some(NodeResult::Done);
                for &d in &dependents[i] {
                    waiting[d] -= 1;
                    if waiting[d] == 0 && results[d].is_none() {
                        ready.push_back(d);
                    }
                }
            }
            Err(e) => {
                results[i] = Some(NodeResult::Failed(e));
                // Everything downstream is skipped, naming the nearest cause.
                let mut queue: VecDeque<(usize, usize)> =
                    dependents[i].iter().map(|&d| (d, i)).collect();
                while let Some((d, cause)) = queue.pop_front() {
                    if results[d].is_none() {
                        results[d] = Some(NodeResult::Skipped(cause));
                        queue.extend(dependents[d].iter().map(|&x| (x, d)));
                    }
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(NodeResult::Cancelled))
        .collect()
}

/// The number of nodes on the longest dependency chain (the critical path, in steps).
pub fn longest_chain(deps: &[Vec<usize>]) -> usize {
    let n = deps.len();
    let mut depth: Vec<Option<usize>> = vec![None; n];
    let mut best = 0;
    for start in 0..n {
        // Iterative DFS computing depth(i) = 1 + max depth(dep).
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if depth[i].is_some() {
                continue;
            }
            if expanded {
                let d = deps[i].iter().filter_map(|&x| depth[x]).max().unwrap_or(0) + 1;
                depth[i] = Some(d);
            } else {
                stack.push((i, true));
                for &x in &deps[i] {
                    if depth[x].is_none() {
                        stack.push((x, false));
                    }
                }
            }
        }
        best = best.max(depth[start].unwrap_or(0));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn no_stop() -> impl Fn() -> bool {
        || false
    }

    #[tokio::test]
    async fn runs_in_dependency_order() {
        // 0 -> 1 -> 2, 0 -> 3
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let r = walk::<(), _, _>(&deps, 4, no_stop(), move |i| {
            let l = l.clone();
            async move {
                l.lock().expect("lock").push(i);
                Ok(())
            }
        })
        .await;
        assert!(r.iter().all(|x| *x == NodeResult::Done));
        let log = log.lock().expect("lock").clone();
        let pos = |x| log.iter().position(|&y| y == x).expect("ran");
        assert!(pos(0) < pos(1) && pos(1) < pos(2) && pos(0) < pos(3));
    }

    #[tokio::test]
    async fn failure_skips_dependents_only() {
        // 0 -> 1 -> 2 ; 3 independent; 4 depends on 2 and 3
        let deps = vec![vec![], vec![0], vec![1], vec![], vec![2, 3]];
        let r = walk(&deps, 2, no_stop(), |i| async move {
            if i == 1 { Err("boom") } else { Ok(()) }
        })
        .await;
        assert_eq!(r[0], NodeResult::Done);
        assert_eq!(r[1], NodeResult::Failed("boom"));
        assert_eq!(r[2], NodeResult::Skipped(1));
        assert_eq!(r[3], NodeResult::Done);
        assert_eq!(r[4], NodeResult::Skipped(2));
    }

    #[tokio::test]
    async fn runs_independent_nodes_in_parallel_up_to_the_limit() {
        let deps: Vec<Vec<usize>> = vec![vec![]; 20];
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, p) = (live.clone(), peak.clone());
        let r = walk::<(), _, _>(&deps, 5, no_stop(), move |_| {
            let (l, p) = (l.clone(), p.clone());
            async move {
                let now = l.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                l.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await;
        assert!(r.iter().all(|x| *x == NodeResult::Done));
        assert_eq!(peak.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn stop_cancels_what_has_not_started() {
        let deps = vec![vec![], vec![0], vec![1]];
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let r = walk::<(), _, _>(
            &deps,
            1,
            move || stop.load(Ordering::SeqCst),
            move |_| {
                let s = s.clone();
                async move {
                    s.store(true, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(r[0], NodeResult::Done);
        assert_eq!(r[1], NodeResult::Cancelled);
        assert_eq!(r[2], NodeResult::Cancelled);
    }

    #[test]
    fn longest_chain_counts_nodes() {
        let deps = vec![vec![], vec![0], vec![1], vec![0]];
        assert_eq!(longest_chain(&deps), 3);
        assert_eq!(longest_chain(&[]), 0);
    }
}
