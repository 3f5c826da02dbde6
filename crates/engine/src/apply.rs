//! Apply: turn a plan into operations (create, update, delete; a replace is a delete
//! then a create), order them (creates follow dependencies, deletes run in reverse; the
//! changes of etcd members one step at a time, each with its membership calls), and
//! walk them in parallel. Each provider mutation and membership change is journaled
//! durably before it starts and recorded with the journal closed the moment it ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clusterform_core::{
    Action, Address, Attrs, Change, EtcdPlan, MemberStep, Plan, ResourceState, StepKind, Value,
};
use clusterform_etcd::EtcdAdmin;
use clusterform_provider::{CreateRequest, DeleteRequest, Ownership, ProviderError, UpdateRequest};
use clusterform_state::{JournalEntry, Mutation, StateStore};
use serde::Serialize;

use crate::commit::Committer;
use crate::day2::{ETCD_JOURNAL, ETCD_KIND, identity};
use crate::members::{MemberOp, MemberWaits, Slot, layout};
use crate::plan::is_protected;
use crate::walk::{NodeResult, longest_chain, walk};
use crate::{ClusterInfo, EngineError, Providers, RetryPolicy};

/// How to apply.
#[derive(Clone)]
pub struct ApplyOptions {
    /// Operations in flight at most.
    pub parallelism: usize,
    /// Retries of transient provider errors.
    pub retry: RetryPolicy,
    /// Set to true to start no new operation (Ctrl-C); those in flight finish.
    pub stop: Arc<AtomicBool>,
    /// The etcd cluster the plan's membership steps change (needed when the plan's
    /// etcd section is live).
    pub etcd: Option<Arc<dyn EtcdAdmin>>,
    /// How long membership steps wait for members to join and the cluster to heal.
    pub waits: MemberWaits,
    /// Renders the deferred attributes of a change (`Change::deferred`) once what they
    /// are made from exists; needed when the plan has any.
    pub render: Option<Render>,
}

/// Renders resource `address` again from the configuration, given the attributes of
/// every object there is now (the state's and those this apply made): its attributes,
/// or what is still missing.
pub type Render =
    Arc<dyn Fn(&Address, &BTreeMap<Address, Attrs>) -> Result<Attrs, String> + Send + Sync>;

impl std::fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("parallelism", &self.parallelism)
            .field("retry", &self.retry)
            .field("stop", &self.stop)
            .field("etcd", &self.etcd.as_ref().map(|e| e.endpoints()))
            .field("waits", &self.waits)
            .field("render", &self.render.is_some())
            .finish()
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            parallelism: 64,
            retry: RetryPolicy::default(),
            stop: Arc::new(AtomicBool::new(false)),
            etcd: None,
            waits: MemberWaits::default(),
            render: None,
        }
    }
}

/// Progress of an apply, for the live display.
#[derive(Clone, Debug)]
pub enum Event {
    /// An operation started (`Create`, `Update` or `Delete`).
    Started {
        /// The resource.
        address: Address,
        /// The operation.
        action: Action,
    },
    /// A transient error; the operation will be tried again.
    Retrying {
        /// The resource.
        address: Address,
        /// The attempt that failed (1 = the first).
        attempt: u32,
        /// What the provider said.
        error: String,
    },
    /// An operation finished.
    Finished {
        /// The resource.
        address: Address,
        /// The operation.
        action: Action,
        /// How long it took.
        elapsed: Duration,
        /// The object's id (create, update).
        id: Option<String>,
    },
    /// An operation failed.
    Failed {
        /// The resource.
        address: Address,
        /// The operation.
        action: Action,
        /// Why.
        error: String,
    },
    /// A membership call (or health wait) of an etcd member started.
    MemberStarted {
        /// The member's machine, or `etcd-member.<name>` for a member without one.
        address: Address,
        /// What it does (`Removing from etcd...`).
        what: &'static str,
    },
    /// A membership call finished.
    MemberFinished {
        /// The member's machine.
        address: Address,
        /// What it did (`Removed from etcd`).
        what: &'static str,
        /// How long it took.
        elapsed: Duration,
    },
    /// A membership call failed; the journal keeps it for the next run.
    MemberFailed {
        /// The member's machine.
        address: Address,
        /// What it was doing.
        what: &'static str,
        /// Why.
        error: String,
    },
}

/// Receives progress events; called from many tasks at once.
pub type Observer = Arc<dyn Fn(Event) + Send + Sync>;

/// How one planned change ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum Outcome {
    /// Applied.
    Done,
    /// The provider (or the state) said no.
    Failed(String),
    /// Not attempted because something it depends on failed.
    Skipped(Address),
    /// Not attempted because the run was stopped.
    Cancelled,
}

/// What an apply did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyReport {
    /// Each planned change and how it ended, in plan order.
    pub outcomes: Vec<(Address, Action, Outcome)>,
    /// Objects created.
    pub added: usize,
    /// Objects updated in place.
    pub changed: usize,
    /// Objects deleted.
    pub destroyed: usize,
    /// Transient errors retried.
    pub retries: u64,
    /// The state serial after the last commit.
    pub serial: u64,
    /// Wall time of the walk.
    pub elapsed: Duration,
    /// Operations on the longest dependency chain.
    pub critical_path: usize,
    /// The first error writing the state during the walk (disk full, ...), if any: the
    /// operations it hit are kept in the journal for the next run to adopt.
    pub state_error: Option<String>,
    /// Membership steps that change no machine (promote a learner, remove a stray
    /// member) and how they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<(String, StepKind, Outcome)>,
}

impl ApplyReport {
    /// Number of changes that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    /// Number of changes skipped because a dependency failed.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    /// Number of changes not started because the run was stopped.
    pub fn cancelled(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Cancelled))
    }
    /// True when every change was applied.
    pub fn success(&self) -> bool {
        self.outcomes.iter().all(|(_, _, o)| *o == Outcome::Done)
            && self.members.iter().all(|(_, _, o)| *o == Outcome::Done)
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|(_, _, o)| f(o)).count()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Destroy,
    Apply,
    Member(MemberOp),
}

/// One operation of the walk: a provider operation on a change's object, or a
/// membership node of an etcd step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node {
    /// The change (provider operations, and membership nodes of a machine's step).
    change: Option<usize>,
    /// The etcd step (membership nodes, and the provider operations of a member).
    step: Option<usize>,
    phase: Phase,
}

/// The operations of a plan and their order: per node, the nodes that must finish
/// first.
struct Schedule {
    nodes: Vec<Node>,
    deps: Vec<Vec<usize>>,
}

fn schedule(changes: &[Change], etcd: Option<&EtcdPlan>) -> Schedule {
    let mut nodes = Vec::new();
    let mut apply_node: HashMap<&Address, usize> = HashMap::new();
    let mut destroy_node: HashMap<&Address, usize> = HashMap::new();
    for (ci, c) in changes.iter().enumerate() {
        let node = |phase| Node {
            change: Some(ci),
            step: None,
            phase,
        };
        if matches!(c.action, Action::Delete | Action::Replace) {
            destroy_node.insert(&c.address, nodes.len());
            nodes.push(node(Phase::Destroy));
        }
        if matches!(c.action, Action::Create | Action::Update | Action::Replace) {
            apply_node.insert(&c.address, nodes.len());
            nodes.push(node(Phase::Apply));
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (n, node) in nodes.iter().enumerate() {
        let Some(ci) = node.change else { continue };
        let c = &changes[ci];
        match node.phase {
            Phase::Apply => {
                for d in &c.depends_on {
                    if let Some(&dn) = apply_node.get(d) {
                        deps[n].push(dn);
                    }
                }
                if let Some(&dn) = destroy_node.get(&c.address) {
                    deps[n].push(dn);
                }
            }
            Phase::Destroy => {
                // What this object depended on is deleted after it.
                for d in &c.old_dependencies {
                    if let Some(&dn) = destroy_node.get(d) {
                        deps[dn].push(n);
                    }
                }
            }
            Phase::Member(_) => {}
        }
    }

    // etcd members: one step after the other, each step's nodes in sequence.
    if let Some(e) = etcd.filter(|e| !e.bootstrap) {
        let change_of: HashMap<&Address, usize> = changes
            .iter()
            .enumerate()
            .map(|(i, c)| (&c.address, i))
            .collect();
        let mut last: Option<usize> = None;
        for (k, step) in e.steps.iter().enumerate() {
            let ci = step
                .address
                .as_ref()
                .and_then(|a| change_of.get(a))
                .copied();
            for slot in layout(step.kind) {
                let n = match *slot {
                    Slot::Op(op) if e.live => {
                        nodes.push(Node {
                            change: ci,
                            step: Some(k),
                            phase: Phase::Member(op),
                        });
                        deps.push(Vec::new());
                        nodes.len() - 1
                    }
                    Slot::Op(_) => continue,
                    Slot::Destroy => {
                        match step.address.as_ref().and_then(|a| destroy_node.get(a)) {
                            Some(&n) => n,
                            None => continue,
                        }
                    }
                    Slot::Apply => match step.address.as_ref().and_then(|a| apply_node.get(a)) {
                        Some(&n) => n,
                        None => continue,
                    },
                };
                nodes[n].step = Some(k);
                if let Some(prev) = last
                    && !deps[n].contains(&prev)
                {
                    deps[n].push(prev);
                }
                last = Some(n);
            }
        }
    }
    Schedule { nodes, deps }
}

/// True when the nodes' dependencies form no cycle.
fn acyclic(deps: &[Vec<usize>]) -> bool {
    let n = deps.len();
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push(d);
            }
        }
    }
    done == n
}

/// Operations on the plan's longest dependency chain: with unlimited parallelism and
/// every operation taking time t, an apply cannot end before `critical_path(plan) * t`.
pub fn critical_path(plan: &Plan) -> usize {
    longest_chain(&schedule(&plan.changes, plan.etcd.as_ref()).deps)
}

struct Ctx {
    changes: Vec<Change>,
    nodes: Vec<Node>,
    /// The journal entry of each node that changes something, committed before the walk
    /// starts.
    entries: Vec<Option<JournalEntry>>,
    /// The etcd steps.
    steps: Vec<MemberStep>,
    /// Membership calls are made.
    etcd_live: bool,
    etcd: Option<Arc<dyn EtcdAdmin>>,
    waits: MemberWaits,
    /// `--initial-cluster` of each joining member, from its `Add` node.
    joins: Mutex<HashMap<Address, Vec<(String, String)>>>,
    /// Member names by peer URL (for members the list shows as not started yet).
    names: HashMap<String, String>,
    providers: Providers,
    cluster: ClusterInfo,
    committer: Committer,
    ids: Mutex<HashMap<Address, String>>,
    /// The attributes of every object: the state's, then those this apply made.
    objects: Mutex<BTreeMap<Address, Attrs>>,
    render: Option<Render>,
    observer: Observer,
    retry: RetryPolicy,
    retries: AtomicU64,
    serial: AtomicU64,
    state_error: Mutex<Option<String>>,
}

/// Apply `plan`. `current` is the state the plan was made against (for the ids of
/// unchanged resources that references point at). The caller holds the state lock.
pub async fn apply(
    plan: &Plan,
    current: &BTreeMap<Address, ResourceState>,
    providers: &Providers,
    store: Arc<dyn StateStore>,
    cluster: &ClusterInfo,
    options: &ApplyOptions,
    observer: Observer,
) -> Result<ApplyReport, EngineError> {
    for c in &plan.changes {
        providers.get(&c.provider)?;
    }
    let committer = Committer::start(store);
    let mut serial = plan.state_serial;
    if !plan.forget.is_empty() {
        serial = committer
            .commit(plan.forget.iter().cloned().map(Mutation::Remove).collect())
            .await
            .map_err(EngineError::StateWrite)?;
    }

    let sched = schedule(&plan.changes, plan.etcd.as_ref());
    if !acyclic(&sched.deps) {
        return Err(EngineError::Order(
            "the etcd member steps and the dependencies between resources cross".to_string(),
        ));
    }
    let steps: Vec<MemberStep> = plan
        .etcd
        .as_ref()
        .map(|e| e.steps.clone())
        .unwrap_or_default();
    let etcd_live = plan.etcd.as_ref().is_some_and(|e| e.live && !e.bootstrap);
    if etcd_live && let Some(e) = &plan.etcd {
        crate::members::preflight(e, options.etcd.as_deref()).await?;
    }
    // Journal every operation before any starts: one durable commit instead of one per
    // dependency level. Entries of operations that never start are closed at the end;
    // after a crash the next run resolves them (there is nothing to find for those).
    let entries: Vec<Option<JournalEntry>> = sched
        .nodes
        .iter()
        .map(|node| match (node.phase, node.change, node.step) {
            (Phase::Member(op), _, Some(k)) => op.mutates().then(|| member_entry(&steps[k], op)),
            (Phase::Member(_), _, None) => None,
            (phase, Some(ci), _) => Some(journal_entry(&plan.changes[ci], phase)),
            (_, None, _) => None,
        })
        .collect();
    if entries.iter().any(Option::is_some) {
        serial = committer
            .commit(
                entries
                    .iter()
                    .flatten()
                    .cloned()
                    .map(Mutation::JournalOpen)
                    .collect(),
            )
            .await
            .map_err(EngineError::StateWrite)?;
    }
    let ids = current
        .iter()
        .map(|(a, r)| (a.clone(), r.id.clone()))
        .collect();
    let names = plan
        .changes
        .iter()
        .filter_map(|c| c.after.as_ref().and_then(identity))
        .chain(current.values().filter_map(|r| identity(&r.attrs)))
        .flat_map(|id| {
            id.peer_urls
                .iter()
                .map(|u| (u.clone(), id.name.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let ctx = Arc::new(Ctx {
        changes: plan.changes.clone(),
        nodes: sched.nodes.clone(),
        entries,
        steps,
        etcd_live,
        etcd: options.etcd.clone(),
        waits: options.waits,
        joins: Mutex::new(HashMap::new()),
        names,
        providers: providers.clone(),
        cluster: cluster.clone(),
        committer,
        ids: Mutex::new(ids),
        objects: Mutex::new(
            current
                .iter()
                .map(|(a, r)| (a.clone(), r.attrs.clone()))
                .collect(),
        ),
        render: options.render.clone(),
        observer,
        retry: options.retry,
        retries: AtomicU64::new(0),
        serial: AtomicU64::new(serial),
        state_error: Mutex::new(None),
    });

    let started = Instant::now();
    let results = {
        let ctx = ctx.clone();
        // Stop starting operations on Ctrl-C, and once the state cannot be written:
        // what would be made after that could not be recorded (the journal still has it).
        let user_stop = options.stop.clone();
        let halted = ctx.clone();
        let stop = move || user_stop.load(Ordering::SeqCst) || halted.state_failed();
        walk(&sched.deps, options.parallelism, stop, move |n| {
            let ctx = ctx.clone();
            async move { run(&ctx, n).await }
        })
        .await
    };
    let elapsed = started.elapsed();

    // Operations that never started: nothing was done, close their entries.
    let mut unstarted: Vec<Mutation> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, NodeResult::Skipped(_) | NodeResult::Cancelled))
        .filter_map(|(n, _)| ctx.entries[n].as_ref())
        .map(|e| Mutation::JournalClose(e.op_id.clone()))
        .collect();
    // Every membership step done: the unfinished ones of earlier runs are finished too.
    let members_done = results
        .iter()
        .zip(&sched.nodes)
        .filter(|(_, node)| node.step.is_some())
        .all(|(r, _)| *r == NodeResult::Done);
    if members_done && let Some(e) = &plan.etcd {
        unstarted.extend(e.resolves.iter().cloned().map(Mutation::JournalClose));
    }
    if !unstarted.is_empty() {
        // If this fails the entries stay open and the next run clears them.
        let _ = ctx.commit(unstarted).await;
    }

    // Fold node results into one outcome per change (and per membership step that
    // changes no machine).
    let mut per_change: Vec<Vec<(Phase, &NodeResult<String>)>> =
        vec![Vec::new(); plan.changes.len()];
    let mut per_step: BTreeMap<usize, Vec<&NodeResult<String>>> = BTreeMap::new();
    for (n, r) in results.iter().enumerate() {
        let node = sched.nodes[n];
        match (node.change, node.step) {
            (Some(ci), _) => per_change[ci].push((node.phase, r)),
            (None, Some(k)) => per_step.entry(k).or_default().push(r),
            (None, None) => {}
        }
    }
    let cause_of =
        |n: usize| -> Address { node_address(&plan.changes, &ctx.steps, &sched.nodes[n]) };
    let mut report = ApplyReport {
        outcomes: Vec::with_capacity(plan.changes.len()),
        added: 0,
        changed: 0,
        destroyed: 0,
        retries: ctx.retries.load(Ordering::SeqCst),
        serial: ctx.serial.load(Ordering::SeqCst),
        elapsed,
        critical_path: longest_chain(&sched.deps),
        state_error: ctx
            .state_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        members: Vec::new(),
    };
    let fold = |rs: &mut dyn Iterator<Item = &NodeResult<String>>| {
        let mut outcome = Outcome::Done;
        for r in rs {
            match r {
                NodeResult::Failed(e) => outcome = Outcome::Failed(e.clone()),
                NodeResult::Skipped(cause) if outcome == Outcome::Done => {
                    outcome = Outcome::Skipped(cause_of(*cause));
                }
                NodeResult::Cancelled if outcome == Outcome::Done => outcome = Outcome::Cancelled,
                _ => {}
            }
        }
        outcome
    };
    for (ci, c) in plan.changes.iter().enumerate() {
        for (phase, r) in &per_change[ci] {
            if **r == NodeResult::Done {
                match (c.action, phase) {
                    (_, Phase::Member(_)) => {}
                    (Action::Update, _) => report.changed += 1,
                    (_, Phase::Apply) => report.added += 1,
                    (_, Phase::Destroy) => report.destroyed += 1,
                }
            }
        }
        let outcome = fold(&mut per_change[ci].iter().map(|(_, r)| *r));
        report.outcomes.push((c.address.clone(), c.action, outcome));
    }
    for (k, rs) in per_step {
        let step = &ctx.steps[k];
        let label = step
            .address
            .as_ref()
            .map_or_else(|| step.name.clone(), ToString::to_string);
        let outcome = fold(&mut rs.into_iter());
        report.members.push((label, step.kind, outcome));
    }
    Ok(report)
}

/// The address a node is about: its change's, or its etcd step's machine (for a member
/// without one, `etcd-member.stray`).
fn node_address(changes: &[Change], steps: &[MemberStep], node: &Node) -> Address {
    if let Some(ci) = node.change {
        return changes[ci].address.clone();
    }
    node.step
        .and_then(|k| steps.get(k))
        .and_then(|s| s.address.clone())
        .unwrap_or_else(|| Address::new(ETCD_KIND, "stray"))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// What a node does: a replace is a delete node and a create node.
fn node_action(action: Action, phase: Phase) -> Action {
    match (action, phase) {
        (_, Phase::Destroy) => Action::Delete,
        (Action::Update, Phase::Apply) => Action::Update,
        _ => Action::Create,
    }
}

/// The journal entry of a membership call: provider `etcd`, kind `etcd-member`, the
/// member's peer URL as the object id.
fn member_entry(step: &MemberStep, op: MemberOp) -> JournalEntry {
    let op_id = uuid::Uuid::new_v4().to_string();
    JournalEntry {
        idempotency_key: format!("cf-{op_id}"),
        op_id,
        address: step
            .address
            .clone()
            .unwrap_or_else(|| Address::new(ETCD_KIND, "stray")),
        action: match op {
            MemberOp::Remove => Action::Delete,
            MemberOp::Add => Action::Create,
            _ => Action::Update,
        },
        provider: ETCD_JOURNAL.to_string(),
        kind: ETCD_KIND.to_string(),
        object_id: Some(step.peer_url.clone()),
        dependencies: Vec::new(),
        started_at: now_rfc3339(),
    }
}

fn journal_entry(c: &Change, phase: Phase) -> JournalEntry {
    let action = node_action(c.action, phase);
    let op_id = uuid::Uuid::new_v4().to_string();
    JournalEntry {
        idempotency_key: format!("cf-{op_id}"),
        op_id,
        address: c.address.clone(),
        action,
        provider: c.provider.clone(),
        kind: c.address.kind.clone(),
        object_id: match action {
            Action::Create => None,
            _ => c.id.clone(),
        },
        dependencies: c.depends_on.clone(),
        started_at: now_rfc3339(),
    }
}

async fn run(ctx: &Ctx, n: usize) -> Result<(), String> {
    let node = ctx.nodes[n];
    match (node.phase, node.change) {
        (Phase::Member(op), _) => run_member(ctx, n, op).await,
        (_, Some(ci)) => run_provider(ctx, n, ci).await,
        (_, None) => Ok(()),
    }
}

/// A membership node: its call through etcd's API; the journal entry is closed when it
/// succeeds and kept when it fails (the next plan reads the member list).
async fn run_member(ctx: &Ctx, n: usize, op: MemberOp) -> Result<(), String> {
    let node = ctx.nodes[n];
    let Some(step) = node.step.and_then(|k| ctx.steps.get(k)) else {
        return Ok(());
    };
    let address = node_address(&ctx.changes, &ctx.steps, &node);
    let (doing, done) = op.verbs();
    (ctx.observer)(Event::MemberStarted {
        address: address.clone(),
        what: doing,
    });
    let started = Instant::now();
    let Some(etcd) = ctx.etcd.as_deref() else {
        let error = "no etcd client for a live membership step".to_string();
        (ctx.observer)(Event::MemberFailed {
            address,
            what: doing,
            error: error.clone(),
        });
        return Err(error);
    };
    // A replacement removes the old member, whose peer URL the old config names.
    let old_peer_url = node
        .change
        .and_then(|ci| ctx.changes[ci].before.as_ref())
        .and_then(identity)
        .and_then(|id| id.peer_urls.first().cloned());
    let names = |url: &str| ctx.names.get(url).cloned();
    let result =
        crate::members::perform(op, etcd, step, old_peer_url.as_deref(), &names, &ctx.waits).await;
    match result {
        Ok(cluster) => {
            if let (Some(list), Some(a)) = (cluster, &step.address) {
                ctx.joins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(a.clone(), list);
            }
            if let Some(e) = &ctx.entries[n] {
                // If this commit fails the entry stays open and the next run reads the
                // member list again.
                let _ = ctx
                    .commit(vec![Mutation::JournalClose(e.op_id.clone())])
                    .await;
            }
            (ctx.observer)(Event::MemberFinished {
                address,
                what: done,
                elapsed: started.elapsed(),
            });
            Ok(())
        }
        Err(error) => {
            (ctx.observer)(Event::MemberFailed {
                address,
                what: doing,
                error: error.clone(),
            });
            Err(error)
        }
    }
}

async fn run_provider(ctx: &Ctx, n: usize, ci: usize) -> Result<(), String> {
    let c = &ctx.changes[ci];
    let Some(entry) = ctx.entries[n].as_ref() else {
        return Err(format!("`{}` has no journal entry", c.address));
    };
    let provider = ctx
        .providers
        .get(&c.provider)
        .map_err(|e| e.to_string())?
        .clone();
    let action = entry.action;
    let op_id = entry.op_id.clone();
    let key = entry.idempotency_key.clone();
    let object_id = entry.object_id.clone();

    (ctx.observer)(Event::Started {
        address: c.address.clone(),
        action,
    });
    let started = Instant::now();
    let on_retry = |attempt: u32, e: &ProviderError| {
        ctx.retries.fetch_add(1, Ordering::SeqCst);
        (ctx.observer)(Event::Retrying {
            address: c.address.clone(),
            attempt,
            error: e.to_string(),
        });
    };

    let result: Result<(Vec<Mutation>, Option<String>), ProviderError> = match action {
        Action::Delete => {
            let req = DeleteRequest {
                address: c.address.clone(),
                kind: c.address.kind.clone(),
                id: object_id.clone().unwrap_or_default(),
                idempotency_key: key.clone(),
                // The plan was checked for protected deletes (`--allow-protected`).
                force: is_protected(c.before.as_ref()),
            };
            ctx.retry
                .run(|| provider.delete(&req), on_retry)
                .await
                .map(|()| (vec![Mutation::Remove(c.address.clone())], None))
        }
        Action::Update => {
            let mut attrs = ctx.resolve(c)?;
            // The request carries inputs only; computed values are the provider's.
            if let Some(kind) = provider.schema().kind(&c.address.kind) {
                attrs.retain(|k, _| kind.attr(k).is_some_and(|a| a.input));
            }
            let req = UpdateRequest {
                address: c.address.clone(),
                kind: c.address.kind.clone(),
                id: object_id.clone().unwrap_or_default(),
                attrs,
                changed: c.changed.clone(),
                idempotency_key: key.clone(),
            };
            ctx.retry
                .run(|| provider.update(&req), on_retry)
                .await
                .map(|obj| ctx.record(c, obj))
        }
        _ => {
            let mut attrs = ctx.resolve(c)?;
            ctx.join_config(n, c, &mut attrs)?;
            let now = SystemTime::now();
            let expires_at = ctx
                .cluster
                .expires_after
                .map(|d| humantime::format_rfc3339_seconds(now + d).to_string());
            let req = CreateRequest {
                kind: c.address.kind.clone(),
                attrs,
                owner: Ownership {
                    cluster: ctx.cluster.name.clone(),
                    address: c.address.clone(),
                    op: key.clone(),
                    expires_at,
                    created_by: ctx.cluster.operator.clone(),
                    created_at: Some(humantime::format_rfc3339_seconds(now).to_string()),
                },
            };
            ctx.retry
                .run(|| provider.create(&req), on_retry)
                .await
                .map(|obj| ctx.record(c, obj))
        }
    };

    match result {
        Ok((mut mutations, id)) => {
            mutations.push(Mutation::JournalClose(op_id));
            ctx.commit(mutations).await.map_err(|e| {
                format!(
                    "the provider finished but the state could not be written ({e}); \
                     the journal keeps the operation and the next run adopts the object"
                )
            })?;
            if let Some(id) = &id {
                ctx.ids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(c.address.clone(), id.clone());
            }
            (ctx.observer)(Event::Finished {
                address: c.address.clone(),
                action,
                elapsed: started.elapsed(),
                id,
            });
            Ok(())
        }
        Err(e) => {
            let msg = match &e {
                // Keep the journal entry: the object may exist; the next run looks it up.
                ProviderError::Ambiguous(_) => {
                    format!("{e}; the next run checks whether the object was made")
                }
                _ => {
                    let _ = ctx.commit(vec![Mutation::JournalClose(op_id)]).await;
                    e.to_string()
                }
            };
            (ctx.observer)(Event::Failed {
                address: c.address.clone(),
                action,
                error: msg.clone(),
            });
            Err(msg)
        }
    }
}

impl Ctx {
    /// A member that joins a running cluster boots with the member list its `Add` node
    /// got (`--initial-cluster`, `--initial-cluster-state=existing`).
    fn join_config(
        &self,
        n: usize,
        c: &Change,
        attrs: &mut BTreeMap<String, Value>,
    ) -> Result<(), String> {
        let Some(step) = self.nodes[n].step.and_then(|k| self.steps.get(k)) else {
            return Ok(());
        };
        if !self.etcd_live || !matches!(step.kind, StepKind::Join | StepKind::Replace) {
            return Ok(());
        }
        let cluster = self
            .joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&c.address)
            .cloned()
            .ok_or_else(|| format!("`{}` was not added to etcd before it is made", c.address))?;
        let Some(Value::String(ud)) = attrs.get("user_data") else {
            return Err(format!(
                "`{}` has no config to boot the member with",
                c.address
            ));
        };
        let joined = clusterform_ignition::etcd::join_existing(ud, &cluster)
            .map_err(|e| format!("`{}`: {e}", c.address))?;
        attrs.insert("user_data".to_string(), Value::String(joined));
        Ok(())
    }

    /// True once a state write has failed.
    fn state_failed(&self) -> bool {
        self.state_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    async fn commit(&self, mutations: Vec<Mutation>) -> Result<(), String> {
        let serial = match self.committer.commit(mutations).await {
            Ok(serial) => serial,
            Err(e) => {
                self.state_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| e.clone());
                return Err(e);
            }
        };
        self.serial.fetch_max(serial, Ordering::SeqCst);
        Ok(())
    }

    /// The planned attributes with references resolved to the ids they have now and
    /// deferred attributes rendered.
    fn resolve(&self, c: &Change) -> Result<BTreeMap<String, Value>, String> {
        let mut attrs = c.after.clone().unwrap_or_default();
        self.render_deferred(c, &mut attrs)?;
        if c.refs.is_empty() {
            return Ok(attrs);
        }
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        for (attr, target) in &c.refs {
            let id = ids.get(target).ok_or_else(|| {
                format!("`{}` refers to `{target}`, which has no id yet", c.address)
            })?;
            attrs.insert(attr.clone(), Value::String(id.clone()));
        }
        Ok(attrs)
    }

    /// Fill in `c`'s deferred attributes, rendered now from the configuration. The
    /// render must agree with every attribute the plan knew: a configuration edited
    /// since the plan is refused, never applied half old, half new.
    fn render_deferred(&self, c: &Change, attrs: &mut Attrs) -> Result<(), String> {
        if c.deferred.is_empty() {
            return Ok(());
        }
        let Some(render) = &self.render else {
            return Err(format!(
                "`{}`: {} known only after apply, and this apply cannot render them",
                c.address,
                c.deferred.join(", ")
            ));
        };
        // Rendered under the lock (not a copy of every object's attributes per render:
        // a cluster of 10,000 workers would copy them 10,000 times).
        let fresh = {
            let objects = self.objects.lock().unwrap_or_else(|e| e.into_inner());
            render(&c.address, &objects)
        }
        .map_err(|e| format!("`{}`: {e}", c.address))?;
        for (k, v) in attrs.iter() {
            if c.refs.contains_key(k) || c.deferred.contains(k) {
                continue;
            }
            if let Some(now) = fresh.get(k)
                && now != v
            {
                return Err(format!(
                    "`{}`: `{k}` is not what the plan says: the configuration changed since the plan was made; plan again",
                    c.address
                ));
            }
        }
        for d in &c.deferred {
            match fresh.get(d) {
                Some(v) => {
                    attrs.insert(d.clone(), v.clone());
                }
                None => {
                    return Err(format!(
                        "`{}`: `{d}` is still not known; run apply again",
                        c.address
                    ));
                }
            }
        }
        Ok(())
    }

    fn record(
        &self,
        c: &Change,
        obj: clusterform_provider::Object,
    ) -> (Vec<Mutation>, Option<String>) {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.address.clone(), obj.attrs.clone());
        let id = obj.id.clone();
        let record = ResourceState {
            address: c.address.clone(),
            provider: c.provider.clone(),
            id: obj.id,
            attrs: obj.attrs,
            dependencies: c.depends_on.clone(),
        };
        (vec![Mutation::Put(record)], Some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterform_core::diff::diff_delete;

    fn a(s: &str) -> Address {
        s.parse().expect("address")
    }

    fn change(addr: &str, action: Action, deps: &[&str], old: &[&str]) -> Change {
        let mut c = diff_delete(&ResourceState {
            address: a(addr),
            provider: "fake".into(),
            id: "x".into(),
            attrs: Default::default(),
            dependencies: old.iter().map(|d| a(d)).collect(),
        });
        c.action = action;
        c.depends_on = deps.iter().map(|d| a(d)).collect();
        c
    }

    #[test]
    fn destroy_runs_workers_then_etcd_machines_then_networks() {
        let changes = vec![
            change("machine.central[0]", Action::Delete, &[], &["network.main"]),
            change(
                "machine.workers[0]",
                Action::Delete,
                &[],
                &["network.main", "machine.central[0]"],
            ),
            change("network.main", Action::Delete, &[], &[]),
        ];
        let s = schedule(&changes, None);
        // One node per delete, in change order.
        assert_eq!(s.deps[0], vec![1], "etcd machine waits for the worker");
        assert_eq!(s.deps[1], Vec::<usize>::new(), "the worker goes first");
        let mut net = s.deps[2].clone();
        net.sort();
        assert_eq!(net, vec![0, 1], "the network goes last");
    }

    #[test]
    fn replace_of_a_dependency_orders_deletes_before_creates() {
        // network replaced; machine depends on it and is replaced too.
        let changes = vec![
            change("machine.m", Action::Replace, &["network.n"], &["network.n"]),
            change("network.n", Action::Replace, &[], &[]),
        ];
        let s = schedule(&changes, None);
        let find = |ci: usize, p: Phase| {
            s.nodes
                .iter()
                .position(|x| x.change == Some(ci) && x.phase == p)
                .expect("node")
        };
        let (dm, cm, dn, cn) = (
            find(0, Phase::Destroy),
            find(0, Phase::Apply),
            find(1, Phase::Destroy),
            find(1, Phase::Apply),
        );
        assert!(s.deps[dn].contains(&dm), "machine deleted before network");
        assert!(
            s.deps[cn].contains(&dn),
            "network deleted before it is created"
        );
        assert!(s.deps[cm].contains(&cn), "network created before machine");
        assert!(s.deps[cm].contains(&dm));
        assert_eq!(longest_chain(&s.deps), 4);
    }
}
