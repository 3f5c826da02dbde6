//! The crash harness: a 30-resource cluster on a sim with random latency, `kill -9`'d at
//! random moments spread over the whole run (creates, in-place updates and deletes), each
//! time followed by a rerun to completion. After every completed rerun the cloud holds one
//! object per address, the state records exactly those objects, the serial moved on, the
//! journal is empty and a new plan has nothing to do.

use std::process::Stdio;
use std::time::{Duration, Instant};

use clusterform_tests::{TestRng, World, dev_test};

const WORLDS: usize = 10;
const KILLS_PER_WORLD: usize = 8;
/// Rounds a world may take to land its kills (a kill after the process ended is no kill).
const MAX_ROUNDS: usize = 20;
const WORKERS: u32 = 28;
const SIM: &str = "latency_ms = 40\njitter_ms = 80";

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Empty cloud to 30 objects.
    Create,
    /// Every worker resized in place.
    Update,
    /// Everything deleted.
    Destroy,
}

const CYCLE: [Op; 3] = [Op::Create, Op::Update, Op::Destroy];

impl Op {
    fn size(self) -> &'static str {
        match self {
            Op::Create => "s",
            Op::Update | Op::Destroy => "m",
        }
    }
    fn args(self) -> [&'static str; 3] {
        match self {
            Op::Destroy => ["destroy", "cluster.toml", "--auto-approve"],
            _ => ["apply", "cluster.toml", "--auto-approve"],
        }
    }
    fn objects_after(self) -> usize {
        match self {
            Op::Destroy => 0,
            _ => WORKERS as usize + 2,
        }
    }
    fn prepare(self, w: &World, name: &str) {
        w.write("cluster.toml", &dev_test(name, WORKERS, self.size(), SIM));
    }
}

#[derive(Default, Debug)]
struct Tally {
    kills: usize,
    rounds: usize,
    duplicates: usize,
    orphans: usize,
    missing: usize,
    problems: Vec<String>,
}

/// One uninterrupted run of each operation: how long the kill window of each is.
fn measure() -> [Duration; 3] {
    let w = World::new();
    let mut out = [Duration::ZERO; 3];
    for (i, op) in CYCLE.iter().enumerate() {
        op.prepare(&w, "baseline");
        let t = Instant::now();
        w.run_ok(&op.args(), 0);
        out[i] = t.elapsed();
    }
    out
}

fn world(idx: usize, seed: u64, windows: [Duration; 3]) -> Tally {
    let mut rng = TestRng::new(seed);
    let w = World::new();
    let name = format!("crash{idx}");
    let mut t = Tally::default();
    let mut round = 0;
    while t.kills < KILLS_PER_WORLD && round < MAX_ROUNDS {
        let op = CYCLE[round % CYCLE.len()];
        let window = windows[round % CYCLE.len()];
        round += 1;
        op.prepare(&w, &name);
        let serial_before_round = w.serial("cluster.toml");

        let mut child = w
            .command(&op.args())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let at = Duration::from_millis(rng.below(window.as_millis() as u64 + 1));
        std::thread::sleep(at);
        let killed = child.try_wait().expect("try_wait").is_none();
        if killed {
            child.kill().expect("kill -9");
            t.kills += 1;
        }
        let _ = child.wait();

        let serial_before = w.serial("cluster.toml");
        let r = w.run(&op.args());
        let ctx = format!("world {idx} round {round} ({op:?}, kill at {at:?}, killed {killed})");
        if r.code != 0 {
            t.problems.push(format!(
                "{ctx}: rerun exited {}\n{}\n{}",
                r.code, r.stdout, r.stderr
            ));
            break;
        }
        let (d, o, m) = w.divergence("cluster.toml");
        t.duplicates += d;
        t.orphans += o;
        t.missing += m;
        if d + o + m > 0 {
            t.problems.push(format!(
                "{ctx}: {d} duplicates, {o} orphans, {m} missing\nstate {:?}\ncloud {:?}\n{}",
                w.state_ids("cluster.toml"),
                w.cloud_ids(),
                r.stdout
            ));
        }
        let objects = w.cloud_ids();
        let mut addrs: Vec<&String> = objects.iter().map(|(a, _)| a).collect();
        addrs.dedup();
        if objects.len() != op.objects_after() || addrs.len() != objects.len() {
            t.problems.push(format!(
                "{ctx}: expected {} objects, one per address; the cloud has {objects:?}",
                op.objects_after()
            ));
        }
        let v = w.state_json("cluster.toml");
        if v["pending"] != serde_json::json!([]) {
            t.problems
                .push(format!("{ctx}: journal left open: {}", v["pending"]));
        }
        let serial = v["serial"].as_u64().unwrap_or(0);
        let idle = r.stdout.contains("No changes.") && !r.stdout.contains("unfinished operation");
        if serial <= serial_before_round
            || (serial <= serial_before && !idle)
            || serial < serial_before
        {
            t.problems.push(format!(
                "{ctx}: serial {serial_before_round} before the round, {serial_before} before \
                 the rerun, {serial} after\n{}",
                r.stdout
            ));
        }
        let plan = match op {
            Op::Destroy => w.run(&["plan", "cluster.toml", "--destroy", "--detailed-exitcode"]),
            _ => w.run(&["plan", "cluster.toml", "--detailed-exitcode"]),
        };
        if plan.code != 0 {
            t.problems.push(format!(
                "{ctx}: plan --detailed-exitcode exited {}\n{}\n{}",
                plan.code, plan.stdout, plan.stderr
            ));
        }
    }
    t.rounds = round;
    t
}

#[test]
fn kill_9_at_random_moments_never_loses_or_duplicates() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00C0_FFEE);
    let started = Instant::now();
    let windows = measure();
    eprintln!("crash harness: seed {seed}, uninterrupted create/update/destroy took {windows:?}");

    let handles: Vec<_> = (0..WORLDS)
        .map(|i| {
            let s = seed
                .wrapping_add(i as u64)
                .wrapping_mul(0x2545_F491_4F6C_DD1D);
            std::thread::spawn(move || world(i, s, windows))
        })
        .collect();
    let tallies: Vec<Tally> = handles
        .into_iter()
        .map(|h| h.join().expect("world thread"))
        .collect();

    let kills: usize = tallies.iter().map(|t| t.kills).sum();
    let rounds: usize = tallies.iter().map(|t| t.rounds).sum();
    let dups: usize = tallies.iter().map(|t| t.duplicates).sum();
    let orphans: usize = tallies.iter().map(|t| t.orphans).sum();
    let missing: usize = tallies.iter().map(|t| t.missing).sum();
    let problems: Vec<&String> = tallies.iter().flat_map(|t| &t.problems).collect();
    println!(
        "crash harness: {kills} kills, {dups} duplicates, {orphans} orphans, {missing} missing \
         ({rounds} rounds, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "crash harness: {kills} kills, {dups} duplicates, {orphans} orphans, {missing} missing \
         ({rounds} rounds, {:.1}s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    assert_eq!((dups, orphans, missing), (0, 0, 0));
    assert!(
        kills >= WORLDS * KILLS_PER_WORLD,
        "only {kills} kills landed"
    );
}
