//! Kill -9 durability (issue 6, item 1). This binary (`harness = false`) re-runs itself as the
//! engine process: a child that opens the store, serves it, produces tasks from four producer
//! loops (in bursts, so that the slots also wait for work and get tasks handed off) and runs them
//! on eight worker slots, each run appending (task id, attempt, pid) to an
//! effect log. The parent kills the child with SIGKILL at random points: mid-run (after a
//! random number of acknowledged enqueues) and during the child's reopen (after it says it is
//! opening, before it says it is open). After half of the mid-run kills the parent reopens the
//! store itself (timing it, and noting which tasks are COMPLETED at that point); otherwise the
//! next child does the recovery, where it may be killed again. A final child drains everything.
//!
//! Pass: 0 acknowledged enqueues lost, each present exactly once (no two tasks with the same
//! producer number, at most one unacknowledged task per in-flight enqueue at a kill), every
//! task COMPLETED after the final drain, no COMPLETED task executed again (neither one seen
//! completed by the parent's reopens nor one reported completed by the child's listener),
//! no attempt executed twice, duplicate executions ≤ 2 per worker slot per kill (the attempt
//! running and the one settling) and attempts lost ≤ 3 (those and the one claimed ahead).
//! Reopen times are reported as p50/p99.
//!
//! Built into two test binaries: `crash_wal` (tests/crash_wal.rs) runs the engine as
//! configured by default, with its write-ahead log, and `crash` (tests/crash.rs) with
//! `write_ahead_log = false` (every commit synced in the B-tree), so both ways of making a
//! commit durable meet the same kills and the same checks.
//!
//! `cargo test --test crash` runs the smoke size; `FQ_FULL=1` the full size (50,000
//! tasks, 200 kills); `FQ_SEED=<n>` replays the kill plan; `FQ_CRASH_TASKS`/`FQ_CRASH_KILLS`
//! set other sizes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fq::{Engine, ListQuery, Registry, TaskContext, TaskError, TaskId, TaskStatus};
use serde_json::{Value, json};

#[path = "../suite/common/run.rs"]
mod run;
use run::{full, seed};

/// The test's name, from the binary's: `kill_9_durability`, or `kill_9_durability_wal`.
const NAME: &str = if WAL {
    "kill_9_durability_wal"
} else {
    "kill_9_durability"
};
/// True in the `crash_wal` binary: every engine of the run keeps a write-ahead log; false in
/// `crash`: none does.
const WAL: bool = matches!(env!("CARGO_CRATE_NAME").as_bytes(), b"crash_wal");
/// Set in the child: the folder of the run.
const CHILD_DIR: &str = "FQ_CRASH_DIR";
/// Set in the child: its generation number.
const CHILD_GEN: &str = "FQ_CRASH_GEN";
/// Set in the last child: produce what is left, drain, exit.
const CHILD_FINAL: &str = "FQ_CRASH_FINAL";
/// Producer loops in the child (each has at most one enqueue in flight).
const PRODUCERS: u64 = 4;
/// Each producer pauses [`BURST_PAUSE`] after this many enqueues.
const BURST: u64 = 50;
const BURST_PAUSE: Duration = Duration::from_millis(30);
/// Worker slots in the child.
const CONCURRENCY: usize = 8;
/// Attempts one slot holds at most, each RUNNING in the store until its settlement commits
/// (`src/worker/slot.rs`): the one it runs, the one before it whose settlement is in flight
/// (its handler done, its outcome not committed yet), and the one that settlement claims ahead.
const HELD_PER_SLOT: u64 = 3;
/// Of those, the attempts whose handler may have run: the one running and the one settling.
/// A kill re-runs both, the one claimed ahead has not started.
const RAN_PER_SLOT: u64 = 2;
/// How long the parent waits for anything before failing.
const PATIENCE: Duration = Duration::from_secs(120);

pub(crate) fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return ExitCode::SUCCESS;
    }
    // `cargo test <filter>` passes the filter on: run only when it matches.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let exact = args.iter().any(|a| a == "--exact");
    if !filters.is_empty()
        && !filters.iter().any(|f| {
            if exact {
                f.as_str() == NAME
            } else {
                NAME.contains(f.as_str())
            }
        })
    {
        println!("running 0 tests (filtered out: {NAME})");
        return ExitCode::SUCCESS;
    }
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(&PathBuf::from(dir));
        return ExitCode::SUCCESS;
    }
    println!("running 1 test");
    let started = Instant::now();
    match std::panic::catch_unwind(parent) {
        Ok(()) => {
            println!("test {NAME} ... ok ({:.1?})", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("test {NAME} ... FAILED");
            ExitCode::FAILURE
        }
    }
}

// --- logs -----------------------------------------------------------------------------------

/// Appends whole lines to a file shared by processes: one `write` per line, so a kill never
/// tears one.
#[derive(Clone)]
struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    /// Opens `path` for appending. A line the last child was killed in the middle of writing
    /// (a SIGKILL between the pages of one `write` cuts it short, and the next child's first
    /// line would run on from it) is cut off first: it never happened, as if the kill had come
    /// just before it. Only one child runs at a time, so nothing else writes meanwhile.
    fn open(path: &Path) -> Log {
        if let Ok(bytes) = std::fs::read(path)
            && bytes.last().is_some_and(|last| *last != b'\n')
        {
            let whole = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1);
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open a log");
            file.set_len(whole as u64).expect("cut a torn line");
            eprintln!(
                "crash: cut a line torn by a kill from {} ({} bytes)",
                path.display(),
                bytes.len() - whole
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open a log");
        Log(Arc::new(Mutex::new(file)))
    }

    fn line(&self, text: &str) {
        let mut file = self.0.lock().unwrap();
        file.write_all(format!("{text}\n").as_bytes())
            .expect("append to a log");
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
        .unwrap_or(0)
}

// --- the child ------------------------------------------------------------------------------

fn child(dir: &Path) {
    let generation: u64 = std::env::var(CHILD_GEN).unwrap().parse().unwrap();
    let last = std::env::var(CHILD_FINAL).is_ok();
    let target: u64 = std::env::var("FQ_CRASH_TASKS").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let status = Log::open(&dir.join(format!("status-{generation}.log")));
        let effects = Log::open(&dir.join("effects.log"));
        let acked = Log::open(&dir.join("acked.log"));
        let done = Log::open(&dir.join("done.log"));
        let already = count_lines(&dir.join("acked.log")) as u64;

        status.line("opening");
        let opening = Instant::now();
        let engine = engine_builder(dir).open().unwrap();
        let recovery = engine.recovery();
        status.line(&format!(
            "opened {} {} {}",
            opening.elapsed().as_micros(),
            recovery.orphans_retrying,
            recovery.orphans_failed
        ));
        // Logged by a listener, which runs after the completion was committed.
        engine
            .events()
            .add_listener("worker.task.after_execution", move |event| {
                done.line(&format!("{} {}", event.task.id, event.task.attempts));
            })
            .unwrap();

        let mut registry = Registry::new();
        let seed = std::env::var("FQ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ generation)));
        registry.register_async("crash.work", move |args: Value, ctx: TaskContext| {
            let effects = effects.clone();
            let pause = rng.lock().unwrap().u64(0..4);
            async move {
                effects.line(&format!(
                    "{} {} {}",
                    ctx.id(),
                    ctx.attempt(),
                    std::process::id()
                ));
                tokio::time::sleep(Duration::from_millis(pause)).await;
                Ok::<_, TaskError>(args["n"].clone())
            }
        });
        let mut worker = engine.worker(registry);
        worker
            .set_concurrent_tasks(CONCURRENCY)
            .set_handle_signals(false)
            .set_polling_interval(Duration::from_millis(200));
        let stop = worker.shutdown_handle();
        let running = tokio::spawn(async move { worker.start().await });

        let remaining = target.saturating_sub(already);
        let next = Arc::new(AtomicU64::new(0));
        let mut producers = Vec::new();
        for _ in 0..PRODUCERS {
            let (engine, next, acked) = (engine.clone(), Arc::clone(&next), acked.clone());
            producers.push(tokio::spawn(async move {
                for sent in 1_u64.. {
                    // Bursts: the producers, started together, pause together now and then, so
                    // the worker's slots run dry and wait for work; the next burst's first tasks
                    // are then handed to waiting claims in the commits that queue them.
                    if sent % BURST == 0 {
                        tokio::time::sleep(BURST_PAUSE).await;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= remaining {
                        break;
                    }
                    // Unique across generations: no two tasks may carry the same number.
                    let n = generation * 100_000_000 + i;
                    let id = engine
                        .queue_task_named("crash.work", &json!({"kwargs": {"n": n}}))
                        .max_retries(1_000)
                        .send()
                        .await
                        .unwrap();
                    // Only after the acknowledgment, i.e. the durable commit.
                    acked.line(&format!("{id} {n}"));
                }
            }));
        }
        for producer in producers {
            producer.await.unwrap();
        }
        if !last {
            std::future::pending::<()>().await;
        }
        // The final child: drain, then stop cleanly.
        loop {
            let stats = engine.stats().await.unwrap();
            let busy: u64 = stats
                .queues
                .values()
                .map(|q| q.pending + q.retrying + q.running)
                .sum();
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.shutdown();
        running.await.unwrap().unwrap();
    });
}

// --- the parent -----------------------------------------------------------------------------

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Kills its child when dropped, so a failing run leaves none behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

fn spawn(dir: &Path, generation: u64, tasks: u64, seed: u64, last: bool) -> ChildGuard {
    let stderr = std::fs::File::create(dir.join(format!("child-{generation}.stderr"))).unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(CHILD_DIR, dir)
        .env(CHILD_GEN, generation.to_string())
        .env("FQ_CRASH_TASKS", tasks.to_string())
        .env("FQ_SEED", seed.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if last {
        command.env(CHILD_FINAL, "1");
    }
    ChildGuard(command.spawn().expect("spawn the engine process"))
}

/// What a child's status file says: whether it started opening, and its open time and
/// recovery once open.
fn status_of(dir: &Path, generation: u64) -> (bool, Option<(Duration, u64)>) {
    let status = lines(&dir.join(format!("status-{generation}.log")));
    let opening = status.iter().any(|l| l == "opening");
    let opened = status.iter().find_map(|l| {
        let mut fields = l.strip_prefix("opened ")?.split(' ');
        let micros: u64 = fields.next()?.parse().ok()?;
        let retrying: u64 = fields.next()?.parse().ok()?;
        let failed: u64 = fields.next()?.parse().ok()?;
        Some((Duration::from_micros(micros), retrying + failed))
    });
    (opening, opened)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn fail_with_logs(dir: &Path, generation: u64, message: &str) -> ! {
    let stderr =
        std::fs::read_to_string(dir.join(format!("child-{generation}.stderr"))).unwrap_or_default();
    panic!("{message}\nchild {generation} stderr:\n{stderr}");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// After this many acknowledged enqueues (in all), with the child running.
    MidRun(u64),
    /// While the child opens the store.
    DuringOpen,
}

/// Every task in the store, by id.
async fn all_tasks(engine: &Engine) -> HashMap<TaskId, fq::TaskRecord> {
    let mut all = HashMap::new();
    let mut after = None;
    loop {
        let page = engine
            .list(ListQuery {
                limit: 5_000,
                after,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        all.extend(page.into_iter().map(|r| (r.id, r)));
    }
    all
}

#[allow(clippy::too_many_lines)]
fn parent() {
    let seed = seed();
    let full = full();
    let (tasks, kills) = if full { (50_000, 200) } else { (5_000, 20) };
    let tasks = env_number("FQ_CRASH_TASKS").unwrap_or(tasks);
    let kills = env_number("FQ_CRASH_KILLS").unwrap_or(kills);
    println!(
        "crash: seed {seed} (FQ_SEED={seed} replays the plan), {tasks} tasks, {kills} kills, \
         full={full}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The plan: a third of the kills aim at a reopen, the rest at random points of the
    // production, in order.
    let mut points: Vec<u64> = (0..kills)
        .map(|_| rng.u64(tasks / 50..tasks * 49 / 50))
        .collect();
    points.sort_unstable();
    let plan: Vec<KillAt> = points
        .into_iter()
        .map(|at| {
            if rng.f64() < 1.0 / 3.0 {
                KillAt::DuringOpen
            } else {
                KillAt::MidRun(at)
            }
        })
        .collect();

    let acked_log = dir.join("acked.log");
    let mut parent_opens = Vec::new();
    let mut child_opens = Vec::new();
    let mut orphans_seen = 0u64;
    let mut landed_in_open = 0;
    let mut landed_in_recovery = 0;
    let mut landed_before_open = 0;
    let mut landed_after_open = 0;
    let mut mid_run = 0;
    // Whether the store holds RUNNING tasks of a killed process nobody has recovered yet: the
    // next open recovers them (and a kill during it interrupts that recovery).
    let mut recovery_pending = false;
    // Kills of an opened process since the last recovery finished: each left at most
    // `CONCURRENCY * HELD_PER_SLOT` attempts RUNNING for the next recovery.
    let mut unrecovered_kills = 0u64;
    let mut most_orphans_of_one_kill = 0u64;
    let mut recovered = |orphans: u64, unrecovered_kills: u64| {
        assert!(
            orphans <= unrecovered_kills * CONCURRENCY as u64 * HELD_PER_SLOT,
            "a recovery found {orphans} attempts RUNNING after {unrecovered_kills} kill(s) of a \
             process with {CONCURRENCY} slots, each holding at most {HELD_PER_SLOT}"
        );
        if unrecovered_kills == 1 {
            most_orphans_of_one_kill = most_orphans_of_one_kill.max(orphans);
        }
    };
    // Tasks the parent saw COMPLETED at a reopen: (attempts then).
    let mut completed_seen: HashMap<TaskId, u32> = HashMap::new();
    let mut open_estimate = Duration::from_millis(30);
    let run_started = Instant::now();

    for (generation, kill) in plan.iter().enumerate() {
        let generation = generation as u64;
        let mut process = spawn(dir, generation, tasks, seed, false);
        let deadline = Instant::now() + PATIENCE;
        let alive = |process: &mut ChildGuard, what: &str| {
            if let Some(status) = process.0.try_wait().unwrap() {
                fail_with_logs(
                    dir,
                    generation,
                    &format!("the engine process exited ({status}) {what}"),
                );
            }
            assert!(Instant::now() < deadline, "child {generation} stuck {what}");
        };
        match kill {
            KillAt::DuringOpen => {
                while !status_of(dir, generation).0 {
                    alive(&mut process, "before opening");
                    std::thread::sleep(Duration::from_micros(200));
                }
                let wait = rng.u64(0..=open_estimate.as_micros() as u64);
                std::thread::sleep(Duration::from_micros(wait));
            }
            KillAt::MidRun(at) => {
                while status_of(dir, generation).1.is_none()
                    || (count_lines(&acked_log) as u64) < *at
                {
                    alive(&mut process, "before its kill point");
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(rng.u64(0..20)));
                mid_run += 1;
            }
        }
        drop(process.0.kill()); // SIGKILL
        drop(process.0.wait());
        let (opening, opened) = status_of(dir, generation);
        match (kill, opened) {
            (_, Some((took, orphans))) => {
                child_opens.push(took);
                orphans_seen += orphans;
                recovered(orphans, unrecovered_kills);
                unrecovered_kills = 1;
                if matches!(kill, KillAt::DuringOpen) {
                    landed_after_open += 1;
                }
                // Killed while open: what it was running is left RUNNING.
                recovery_pending = true;
            }
            (KillAt::DuringOpen, None) if opening => {
                landed_in_open += 1;
                if recovery_pending {
                    landed_in_recovery += 1;
                }
            }
            (KillAt::DuringOpen, None) => landed_before_open += 1,
            (KillAt::MidRun(_), None) => unreachable!("a mid-run kill waits for the open"),
        }
        if !child_opens.is_empty() {
            let mut sorted = child_opens.clone();
            sorted.sort();
            open_estimate = percentile(&sorted, 0.5).max(Duration::from_millis(1));
        }
        // Half of the mid-run kills: the parent reopens, recovers and looks.
        if matches!(kill, KillAt::MidRun(_)) && rng.bool() {
            let started = Instant::now();
            let engine = engine_builder(dir).control(false).open().unwrap();
            parent_opens.push(started.elapsed());
            let recovery = engine.recovery();
            let orphans = recovery.orphans_retrying + recovery.orphans_failed;
            orphans_seen += orphans;
            recovered(orphans, unrecovered_kills);
            unrecovered_kills = 0;
            recovery_pending = false;
            let records = runtime.block_on(all_tasks(&engine));
            for record in records.values() {
                if record.status == TaskStatus::Completed {
                    completed_seen.entry(record.id).or_insert(record.attempts);
                }
            }
        }
    }

    // The final child produces what is left and drains the store.
    let generation = plan.len() as u64;
    let mut last = spawn(dir, generation, tasks, seed, true);
    let deadline = Instant::now() + PATIENCE * 3;
    let exit = loop {
        if let Some(status) = last.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            fail_with_logs(dir, generation, "the final drain did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !exit.success() {
        fail_with_logs(dir, generation, &format!("the final child failed: {exit}"));
    }
    if let (_, Some((took, orphans))) = status_of(dir, generation) {
        child_opens.push(took);
        orphans_seen += orphans;
        recovered(orphans, unrecovered_kills);
    }
    let elapsed = run_started.elapsed();

    // --- the checks ---
    let started = Instant::now();
    let engine = engine_builder(dir).control(false).open().unwrap();
    parent_opens.push(started.elapsed());
    let records = runtime.block_on(all_tasks(&engine));
    drop(engine);

    let acked: Vec<(TaskId, u64)> = lines(&acked_log)
        .iter()
        .map(|l| {
            let (id, n) = l.split_once(' ').expect("torn ack line");
            (id.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let acked_ids: HashSet<TaskId> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(acked_ids.len(), acked.len(), "an id was acknowledged twice");
    assert!(
        acked.len() as u64 >= tasks,
        "only {} of {tasks} acknowledged",
        acked.len()
    );

    // 0 acknowledged enqueues lost, each present exactly once.
    let mut lost = Vec::new();
    for (id, n) in &acked {
        match records.get(id) {
            Some(record) => assert_eq!(
                record.payload.to_value()["kwargs"]["n"],
                *n,
                "task {id} holds another task's arguments"
            ),
            None => lost.push(*id),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged enqueues lost: {lost:?}",
        lost.len()
    );
    let mut numbers = HashSet::new();
    for record in records.values() {
        let n = record.payload.to_value()["kwargs"]["n"].as_u64().unwrap();
        assert!(numbers.insert(n), "producer number {n} stored twice");
    }
    let unacked = records.len() - acked.len();
    assert!(
        unacked as u64 <= PRODUCERS * kills,
        "{unacked} tasks stored without an acknowledgment: more than the {} enqueues that can \
         be in flight at {kills} kills",
        PRODUCERS * kills
    );

    // Every task terminal after the final drain (they never fail, so COMPLETED).
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records.values() {
        *by_status.entry(record.status.as_str()).or_default() += 1;
    }
    assert_eq!(
        by_status.get("COMPLETED").copied().unwrap_or(0),
        records.len(),
        "not every task completed: {by_status:?}"
    );

    // Executions: no attempt twice; none after a COMPLETED one.
    let mut runs: HashMap<TaskId, Vec<u32>> = HashMap::new();
    for line in lines(&dir.join("effects.log")) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "torn effect line {line:?}");
        runs.entry(fields[0].parse().unwrap())
            .or_default()
            .push(fields[1].parse().unwrap());
    }
    let mut completed_reported: HashMap<TaskId, u32> = HashMap::new();
    for line in lines(&dir.join("done.log")) {
        let (id, attempt) = line.split_once(' ').expect("torn done line");
        completed_reported.insert(id.parse().unwrap(), attempt.parse().unwrap());
    }
    let mut duplicates = 0u64;
    let mut orphaned_attempts = 0u64;
    for (id, record) in &records {
        let attempts = runs.get(id).cloned().unwrap_or_default();
        assert!(!attempts.is_empty(), "task {id} completed without running");
        let distinct: HashSet<u32> = attempts.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            attempts.len(),
            "an attempt of task {id} ran twice: {attempts:?}"
        );
        assert!(
            attempts.iter().all(|a| *a <= record.attempts),
            "task {id} ran under attempt {attempts:?}, past its record's {}",
            record.attempts
        );
        duplicates += attempts.len() as u64 - 1;
        // Handlers never fail: every attempt but the last was lost to a kill.
        orphaned_attempts += u64::from(record.attempts) - 1;
        for seen in [completed_seen.get(id), completed_reported.get(id)]
            .into_iter()
            .flatten()
        {
            assert_eq!(
                record.attempts, *seen,
                "task {id} was COMPLETED at attempt {seen}, and ran again"
            );
            assert!(
                attempts.iter().all(|a| a <= seen),
                "task {id} was COMPLETED at attempt {seen}, and ran again: {attempts:?}"
            );
        }
    }
    // `duplicates <= orphaned_attempts` follows from the two assertions per task above (no
    // attempt ran twice, none past the record's). The bounds that mean something: a duplicate
    // is an attempt a kill cut off after its handler began and before its settlement
    // committed, at most [`RAN_PER_SLOT`] per slot; an attempt lost is one a kill found
    // RUNNING in the store, at most [`HELD_PER_SLOT`] per slot.
    let slots = kills * CONCURRENCY as u64;
    assert!(
        duplicates <= slots * RAN_PER_SLOT,
        "{duplicates} duplicate executions at {kills} kills, more than {RAN_PER_SLOT} for \
         each of the {CONCURRENCY} worker slots per kill"
    );
    assert!(
        orphaned_attempts <= slots * HELD_PER_SLOT,
        "{orphaned_attempts} attempts lost at {kills} kills, more than {HELD_PER_SLOT} for \
         each of the {CONCURRENCY} worker slots per kill"
    );
    // A recovery whose commit a kill cut off is reported again by the next one.
    assert!(
        orphans_seen <= orphaned_attempts + slots * HELD_PER_SLOT,
        "recoveries report {orphans_seen} orphans"
    );

    parent_opens.sort();
    child_opens.sort();
    let mut every_open: Vec<Duration> = parent_opens.iter().chain(&child_opens).copied().collect();
    every_open.sort();
    println!(
        "crash: {} tasks acknowledged ({unacked} more stored whose acknowledgment the kill cut \
         off), 0 lost, each once; all COMPLETED after the drain",
        acked.len()
    );
    println!(
        "crash: {kills} kills in {elapsed:.1?}: {mid_run} mid-run; {} aimed at a reopen: \
         {landed_in_open} landed in it ({landed_in_recovery} of them with orphans to recover), \
         {landed_before_open} before it began (process start-up), {landed_after_open} just after",
        kills - mid_run
    );
    println!(
        "crash: {} executions; {duplicates} duplicates ≤ {} ({RAN_PER_SLOT} for each of the \
         {CONCURRENCY} worker slots at each of the {kills} kills); {orphaned_attempts} attempts \
         held at the kills ≤ {} ({orphans_seen} orphans reported by the recoveries, at most \
         {most_orphans_of_one_kill} after one kill, ≤ {}); {} tasks \
         seen COMPLETED at parent reopens and {} reported COMPLETED by listeners, none ran again",
        runs.values().map(Vec::len).sum::<usize>(),
        slots * RAN_PER_SLOT,
        slots * HELD_PER_SLOT,
        CONCURRENCY as u64 * HELD_PER_SLOT,
        completed_seen.len(),
        completed_reported.len()
    );
    println!(
        "crash: reopen after a kill (parent, with recovery): n={} p50 {:.1?} p99 {:.1?}; child \
         opens: n={} p50 {:.1?} p99 {:.1?}; all: p50 {:.1?} p99 {:.1?}",
        parent_opens.len(),
        percentile(&parent_opens, 0.5),
        percentile(&parent_opens, 0.99),
        child_opens.len(),
        percentile(&child_opens, 0.5),
        percentile(&child_opens, 0.99),
        percentile(&every_open, 0.5),
        percentile(&every_open, 0.99),
    );
}

/// The builder of every engine of the run, child or parent: the store in `dir`, with the log
/// when this is the `crash_wal` binary.
fn engine_builder(dir: &Path) -> fq::EngineBuilder {
    let config = fq::Config {
        write_ahead_log: WAL,
        ..fq::Config::default()
    };
    Engine::builder(dir.join("fq.redb")).config(config)
}
