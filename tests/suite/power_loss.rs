//! Simulated power loss and I/O errors (issue 6, item 2), through redb's `StorageBackend`.
//!
//! Power loss: a workload (enqueue, claim, complete, fail, retry, cancel through the engine's
//! API, in three sessions whose reopens recover the tasks left RUNNING) runs on a backend that
//! records every write, length change and sync. Crash images are built at random points of
//! that log: the synced state only, plus a random subset of the unsynced operations, plus a
//! torn write (a prefix of one of them). Each image is opened by the engine under a timeout.
//! A control image (the synced state halfway, judged against the whole run) must fail the check.
//!
//! I/O errors: the same kind of workload (100 operations) runs on an in-memory backend that
//! fails the Nth operation, for every N: persistently (every operation after it fails too),
//! transiently (only the Nth; every 8th N at smoke size, every N at full size), and only the
//! Nth `sync_data`. After the first error the engine must refuse writes with a clear error
//! until reopened, and the failed operation is never acknowledged; then the backend heals and
//! the store is reopened.
//!
//! Pass: no panic on any thread, no hang; every image and every healed store opens; every
//! acknowledged operation is there, and each task's state is one it went through at or after
//! its last acknowledged state (a RUNNING one may have been recovered to RETRYING or FAILED);
//! `Engine::check_integrity` finds each task in exactly one state, with the waiting, running
//! and finished indexes and the counts agreeing with the records; the store takes writes again.
//!
//! Smoke size under `cargo test`; `FQ_FULL=1` runs the full size; `FQ_SEED=<n>` replays a
//! run. The figures are printed (`cargo test --test suite -- power_loss:: --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::backend;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{
    CrashWalker, FailMode, FailingBackend, ImageKind, RecordingBackend, SharedClock, crash_image,
};
use fq::{
    Config, Engine, Error, FailureKind, ListQuery, Outcome, Settlement, TaskFailure, TaskId,
    TaskStatus,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{panics, run};
use run::{full, seed};

/// How long opening and checking one image (or one sweep run) may take before it is a hang.
const PATIENCE: Duration = Duration::from_secs(60);
const QUEUES: [&str; 2] = ["alpha", "beta"];

// --- seeds, sizes, panics -------------------------------------------------------------------

/// Every panic on any thread, caught or not, is counted: none is allowed. Other areas' panics
/// (their test threads, scopes and files, `common::panics`) are left out.
fn panics_since(mark: usize) -> usize {
    panics::since(mark)
        .iter()
        .filter(|seen| !seen.elsewhere(file!()))
        .count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn open_on(backend: impl redb::StorageBackend) -> fq::Result<Engine> {
    open_on_healing(backend, false)
}

/// [`open_on`], healing after a failed commit or not. The sweep checks what a failure leaves
/// (refused writes, reads going on), so its engines do not heal; healing has its own test.
fn open_on_healing(backend: impl redb::StorageBackend, heal: bool) -> fq::Result<Engine> {
    open_with_log(backend, None::<FailingBackend>, heal)
}

/// [`open_on_healing`], with the write-ahead log kept in `log` when there is one.
fn open_with_log(
    backend: impl redb::StorageBackend,
    log: Option<impl redb::StorageBackend>,
    heal: bool,
) -> fq::Result<Engine> {
    open_serving(backend, log, heal, None)
}

/// [`open_with_log`], serving the control socket at `socket` when one is given.
fn open_serving(
    backend: impl redb::StorageBackend,
    log: Option<impl redb::StorageBackend>,
    heal: bool,
    socket: Option<&std::path::Path>,
) -> fq::Result<Engine> {
    builder_on(backend, log, heal, socket).open()
}

/// [`open_with_log`] with the log on `log`, every batch's B-tree transaction held open for
/// the next ones (`EngineBuilder::hold_every_batch`), so crash points and failures meet
/// transactions that carry answered batches.
fn open_holding(
    backend: impl redb::StorageBackend,
    log: impl redb::StorageBackend,
) -> fq::Result<Engine> {
    builder_on(backend, Some(log), false, None)
        .hold_every_batch()
        .open()
}

fn builder_on(
    backend: impl redb::StorageBackend,
    log: Option<impl redb::StorageBackend>,
    heal: bool,
    socket: Option<&std::path::Path>,
) -> fq::EngineBuilder {
    let mut config = Config::default();
    config.limits.min_free_bytes = 0;
    config.write_ahead_log = log.is_some();
    config.control.socket = socket.map(std::path::Path::to_path_buf);
    let builder = Engine::builder("/power-loss/simulated.redb")
        .config(config)
        .control(socket.is_some())
        .lease_duration(Duration::from_secs(3600))
        .self_heal(heal)
        .storage_backend(backend);
    match log {
        // A checkpoint every few commits, so crash points land inside checkpoints and rewinds.
        Some(log) => builder.log_backend(log).wal_checkpoint_bytes(4096),
        None => builder,
    }
}

/// The disks of a recorded run: the store's, and the write-ahead log's when the engine keeps
/// one, their operations counted on one clock so a crash point is one moment for both.
struct Recorded {
    store: RecordingBackend,
    log: Option<RecordingBackend>,
    clock: SharedClock,
    commits: Commits,
}

/// How the engine of a recorded run commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commits {
    /// Each commit synced by redb, no log.
    BTree,
    /// Through the write-ahead log, as configured by default.
    Log,
    /// Through the log, every batch's B-tree transaction held open for the next ones.
    Held,
}

impl Recorded {
    fn new(commits: Commits) -> Self {
        let clock = SharedClock::default();
        Self {
            store: RecordingBackend::on_clock(&clock),
            log: (commits != Commits::BTree).then(|| RecordingBackend::on_clock(&clock)),
            clock,
            commits,
        }
    }

    fn open(&self) -> fq::Result<Engine> {
        match (&self.log, self.commits) {
            (Some(log), Commits::Held) => open_holding(self.store.clone(), log.clone()),
            (log, _) => open_with_log(self.store.clone(), log.clone(), false),
        }
    }
}

/// Walks both disks' logs of a [`Recorded`] run forward, building crash images of the pair.
struct PairWalker<'a> {
    recorded: &'a Recorded,
    store: CrashWalker<'a>,
    log: Option<CrashWalker<'a>>,
}

impl<'a> PairWalker<'a> {
    fn new(
        recorded: &'a Recorded,
        store_ops: &'a [backend::Op],
        log_ops: &'a [backend::Op],
    ) -> Self {
        Self {
            recorded,
            store: CrashWalker::new(store_ops),
            log: recorded.log.as_ref().map(|_| CrashWalker::new(log_ops)),
        }
    }

    /// Images of both disks after a power cut at `time`, each built as `kind` says, and how
    /// many unsynced operations there were and were applied.
    fn images(
        &mut self,
        time: usize,
        kind: ImageKind,
        rng: &mut fastrand::Rng,
    ) -> (Vec<u8>, Option<Vec<u8>>, usize, usize) {
        let (durable, pending) = self.store.crash_state(self.recorded.store.ops_before(time));
        let (image, mut applied) = crash_image(&durable, &pending, kind, rng);
        let mut unsynced = pending.len();
        let log_image = match (&mut self.log, &self.recorded.log) {
            (Some(walker), Some(log)) => {
                let (durable, pending) = walker.crash_state(log.ops_before(time));
                let (image, log_applied) = crash_image(&durable, &pending, kind, rng);
                unsynced += pending.len();
                applied += log_applied;
                Some(image)
            }
            _ => None,
        };
        (image, log_image, unsynced, applied)
    }
}

/// Runs `work` on its own thread; `None` if it did not finish within [`PATIENCE`].
fn with_patience<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.recv_timeout(PATIENCE).ok()
}

// --- the model of what was acknowledged -----------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    status: TaskStatus,
    attempts: u32,
}

#[derive(Clone, Debug)]
struct Step {
    state: State,
    /// The backend position when the operation was acknowledged; `None` for an operation that
    /// failed (it may or may not have reached the disk).
    acked_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Model {
    tasks: BTreeMap<TaskId, (u32, Vec<Step>)>,
    acked_ops: u64,
}

impl Model {
    fn current(&self, id: TaskId) -> State {
        self.tasks[&id].1.last().unwrap().state
    }

    fn ids_in(&self, wanted: impl Fn(TaskStatus) -> bool) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, (_, steps))| steps.last().is_some_and(|s| wanted(s.state.status)))
            .map(|(id, _)| *id)
            .collect()
    }

    fn push(&mut self, id: TaskId, state: State, acked_at: Option<u64>) {
        self.tasks
            .get_mut(&id)
            .unwrap()
            .1
            .push(Step { state, acked_at });
    }

    /// Problems with the tasks found after opening a store that crashed (or was healed) at
    /// backend position `crash_point` (`None`: after everything).
    fn check(&self, found: &HashMap<TaskId, State>, crash_point: Option<u64>) -> Vec<String> {
        let acked = |step: &Step| {
            step.acked_at
                .is_some_and(|at| crash_point.is_none_or(|point| at <= point))
        };
        let mut problems = Vec::new();
        for (id, (max_retries, steps)) in &self.tasks {
            let last_acked = steps.iter().rposition(acked);
            let Some(observed) = found.get(id) else {
                if let Some(at) = last_acked {
                    problems.push(format!(
                        "task {id} lost: acknowledged as {:?}",
                        steps[at].state
                    ));
                }
                continue;
            };
            let allowed = &steps[last_acked.unwrap_or(0)..];
            let matches = allowed.iter().any(|step| {
                let s = step.state;
                *observed == s
                    || (s.status == TaskStatus::Running
                        && observed.attempts == s.attempts
                        && (observed.status == TaskStatus::Retrying && s.attempts <= *max_retries
                            || observed.status == TaskStatus::Failed && s.attempts > *max_retries))
            });
            if !matches {
                problems.push(format!(
                    "task {id} is {observed:?}, not a state at or after its last acknowledged one \
                     (history {:?}, last acknowledged {last_acked:?})",
                    steps
                        .iter()
                        .map(|s| (s.state, s.acked_at))
                        .collect::<Vec<_>>()
                ));
            }
        }
        for id in found.keys() {
            if !self.tasks.contains_key(id) {
                problems.push(format!("task {id} was never queued"));
            }
        }
        problems
    }
}

/// Drives a random workload through the engine's API, recording what was acknowledged.
struct Workload {
    rng: fastrand::Rng,
    model: Model,
    token: CancellationToken,
    position: Box<dyn Fn() -> u64>,
}

impl Workload {
    fn new(seed: u64, position: Box<dyn Fn() -> u64>) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            model: Model::default(),
            token: CancellationToken::new(),
            position,
        }
    }

    /// One operation. `Ok(true)` when it was acknowledged, `Ok(false)` when none applied,
    /// `Err` when the engine refused it (the model then holds its possible effects unacknowledged).
    async fn step(&mut self, engine: &Engine) -> Result<bool, Error> {
        let waiting = self.model.ids_in(TaskStatus::is_waiting);
        let running = self.model.ids_in(|s| s == TaskStatus::Running);
        let failed = self.model.ids_in(|s| s == TaskStatus::Failed);
        let roll = self.rng.u32(0..100);
        let broker = engine.broker();
        if roll < 30 || waiting.len() + running.len() + failed.len() == 0 {
            let queue = QUEUES[self.rng.usize(..QUEUES.len())];
            let max_retries = self.rng.u32(0..3);
            let task = engine
                .queue_task_named(
                    "power.loss",
                    &json!({"args": [self.rng.u32(..)], "kwargs": {}}),
                )
                .queue(queue)
                .priority(self.rng.i32(0..3))
                .max_retries(max_retries)
                .build()?;
            let id = task.id();
            self.model.tasks.insert(id, (max_retries, Vec::new()));
            let pending = State {
                status: TaskStatus::Pending,
                attempts: 0,
            };
            let result = broker.enqueue(vec![task]).await;
            self.settle_model(id, pending, result.map(|_| ()))
        } else if roll < 55 && !waiting.is_empty() {
            let queues: Vec<Arc<str>> = QUEUES.iter().map(|q| Arc::from(*q)).collect();
            match broker
                .claim(fq::ClaimRequest::new(
                    &queues,
                    1,
                    Duration::ZERO,
                    &self.token,
                ))
                .await
            {
                Ok(claimed) => {
                    let at = (self.position)();
                    for record in &claimed {
                        let state = State {
                            status: record.status,
                            attempts: record.attempts,
                        };
                        assert_eq!(state.status, TaskStatus::Running);
                        self.model.push(record.id, state, Some(at));
                    }
                    self.model.acked_ops += 1;
                    Ok(!claimed.is_empty())
                }
                Err(error) => {
                    // Any waiting task might have been the one claimed.
                    for id in waiting {
                        let current = self.model.current(id);
                        let state = State {
                            status: TaskStatus::Running,
                            attempts: current.attempts + 1,
                        };
                        self.model.push(id, state, None);
                    }
                    Err(error)
                }
            }
        } else if roll < 90 && !running.is_empty() {
            let id = running[self.rng.usize(..running.len())];
            let current = self.model.current(id);
            let max_retries = self.model.tasks[&id].0;
            let (outcome, next) = if self.rng.u32(0..100) < 55 {
                (
                    Outcome::Completed {
                        result: json!({"ok": true}),
                    },
                    TaskStatus::Completed,
                )
            } else {
                let failure = TaskFailure {
                    message: "simulated failure".into(),
                    kind: FailureKind::Error,
                };
                let next = if current.attempts <= max_retries {
                    TaskStatus::Retrying
                } else {
                    TaskStatus::Failed
                };
                (
                    Outcome::Failed {
                        failure,
                        retry_after: Some(Duration::ZERO),
                    },
                    next,
                )
            };
            let settlement = Settlement {
                id,
                attempt: current.attempts,
                outcome,
            };
            let state = State {
                status: next,
                attempts: current.attempts,
            };
            let result = broker.settle(settlement).await;
            if let Ok(report) = &result {
                assert_eq!(report.status, next, "settled {id} unexpectedly");
            }
            self.settle_model(id, state, result.map(|_| ()))
        } else if !failed.is_empty() && self.rng.bool() {
            let id = failed[self.rng.usize(..failed.len())];
            let state = State {
                status: TaskStatus::Pending,
                attempts: 0,
            };
            let result = engine.retry(id).await;
            self.settle_model(id, state, result.map(|_| ()))
        } else if !waiting.is_empty() {
            let id = waiting[self.rng.usize(..waiting.len())];
            let state = State {
                status: TaskStatus::Cancelled,
                attempts: self.model.current(id).attempts,
            };
            let result = engine.cancel(id).await;
            self.settle_model(id, state, result.map(|_| ()))
        } else {
            Ok(false)
        }
    }

    /// Claims up to `max` tasks in one request, recording them.
    async fn claim_many(&mut self, engine: &Engine, max: usize) -> fq::Result<usize> {
        let queues: Vec<Arc<str>> = QUEUES.iter().map(|q| Arc::from(*q)).collect();
        let claimed = engine
            .broker()
            .claim(fq::ClaimRequest::new(
                &queues,
                max,
                Duration::ZERO,
                &self.token,
            ))
            .await?;
        let at = (self.position)();
        for record in &claimed {
            let state = State {
                status: record.status,
                attempts: record.attempts,
            };
            self.model.push(record.id, state, Some(at));
        }
        self.model.acked_ops += 1;
        Ok(claimed.len())
    }

    fn settle_model(
        &mut self,
        id: TaskId,
        state: State,
        result: fq::Result<()>,
    ) -> fq::Result<bool> {
        match result {
            Ok(()) => {
                let at = (self.position)();
                self.model.push(id, state, Some(at));
                self.model.acked_ops += 1;
                Ok(true)
            }
            Err(error) => {
                self.model.push(id, state, None);
                Err(error)
            }
        }
    }
}

/// Every task in the store, with its state.
async fn all_tasks(engine: &Engine) -> fq::Result<HashMap<TaskId, State>> {
    let mut found = HashMap::new();
    let mut after = None;
    loop {
        let page = engine
            .list(ListQuery {
                limit: 500,
                after,
                ..ListQuery::default()
            })
            .await?;
        let Some(last) = page.last() else {
            return Ok(found);
        };
        after = Some(last.id);
        for record in page {
            found.insert(
                record.id,
                State {
                    status: record.status,
                    attempts: record.attempts,
                },
            );
        }
    }
}

/// Opens a store, checks it against the model, then checks it still takes writes.
async fn verify_store(engine: &Engine, model: &Model, crash_point: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    match all_tasks(engine).await {
        Ok(found) => problems.extend(model.check(&found, crash_point)),
        Err(error) => problems.push(format!("listing the tasks failed: {error}")),
    }
    match engine.check_integrity().await {
        Ok(report) => problems.extend(report.problems),
        Err(error) => problems.push(format!("the integrity check failed: {error}")),
    }
    match engine
        .queue_task_named("power.loss.after", &json!({"args": [], "kwargs": {}}))
        .send()
        .await
    {
        Ok(_) => match engine.check_integrity().await {
            Ok(report) => problems.extend(report.problems),
            Err(error) => problems.push(format!("the integrity check failed: {error}")),
        },
        Err(error) => problems.push(format!("an enqueue after reopening failed: {error}")),
    }
    problems
}

// --- power loss -------------------------------------------------------------------------------

#[test]
fn crash_images_open_with_every_acknowledged_operation_and_sound_indexes() {
    power_loss_run(Commits::BTree);
}

/// The same, with the write-ahead log: images of the store and of its log cut at the same
/// moment (each file's synced state plus a random subset or a torn part of what it had not
/// synced), so every interleaving of appends, checkpoints and rewinds meets a cut.
#[test]
fn crash_images_with_the_write_ahead_log_lose_nothing_acknowledged() {
    power_loss_run(Commits::Log);
}

/// The same, with every batch's B-tree transaction held open for the next ones
/// (`store/held.rs`): crash points fall while the B-tree lacks up to 16 answered batches, and
/// inside the commits that carry them.
#[test]
fn crash_images_with_held_transactions_lose_nothing_acknowledged() {
    power_loss_run(Commits::Held);
}

fn power_loss_run(commits: Commits) {
    let wal = commits != Commits::BTree;
    let seed = seed();
    let panics_before = panics::mark();
    let (operations, images) = if full() { (1_000, 10_000) } else { (150, 500) };
    println!(
        "power_loss crash images ({commits:?}): seed {seed} (FQ_SEED={seed} replays), full={}",
        full()
    );

    // The recorded run.
    let started = Instant::now();
    let recorded = Recorded::new(commits);
    let position = {
        let clock = recorded.clock.clone();
        Box::new(move || clock.now() as u64)
    };
    let mut workload = Workload::new(seed, position);
    let runtime = runtime();
    // Three sessions: each reopen recovers the tasks the previous session left RUNNING, so
    // some crash points land inside a recovery.
    let mut reopens: Vec<(u64, u64)> = Vec::new();
    let mut first_ack = 0;
    let mut recovered = 0;
    for session in 0..3 {
        let opened_at = recorded.clock.now() as u64;
        let engine = recorded.open().unwrap();
        let ready_at = recorded.clock.now() as u64;
        if session == 0 {
            first_ack = ready_at;
        } else {
            reopens.push((opened_at, ready_at));
            let report = engine.recovery();
            recovered += report.orphans_retrying + report.orphans_failed;
            // Recovery is an acknowledged change once the open returned.
            let orphans = workload.model.ids_in(|s| s == TaskStatus::Running);
            for id in orphans {
                let current = workload.model.current(id);
                let max_retries = workload.model.tasks[&id].0;
                let status = if current.attempts <= max_retries {
                    TaskStatus::Retrying
                } else {
                    TaskStatus::Failed
                };
                let state = State {
                    status,
                    attempts: current.attempts,
                };
                workload.model.push(id, state, Some(ready_at));
            }
        }
        runtime.block_on(async {
            for _ in 0..operations / 3 {
                workload.step(&engine).await.unwrap();
            }
            // Leave tasks RUNNING for the next reopen to recover.
            workload.claim_many(&engine, 6).await.unwrap();
        });
        drop(engine);
    }
    let store_ops = recorded.store.log();
    let log_ops = recorded
        .log
        .as_ref()
        .map(RecordingBackend::log)
        .unwrap_or_default();
    let total = recorded.clock.now();
    let syncs_in = |ops: &[backend::Op]| {
        ops.iter()
            .filter(|op| matches!(op, backend::Op::Sync))
            .count()
    };
    let (store_syncs, log_syncs) = (syncs_in(&store_ops), syncs_in(&log_ops));
    let syncs = store_syncs + log_syncs;
    println!(
        "  recorded {operations} operations in 3 sessions ({} acknowledged, {} tasks, {recovered} \
         orphans recovered by the reopens): {} storage operations, {syncs} syncs, in {:.1?}",
        workload.model.acked_ops,
        workload.model.tasks.len(),
        total,
        started.elapsed()
    );
    if wal {
        println!(
            "  syncs: {store_syncs} of the store (creation, checkpoints, closes), {log_syncs} of \
             the log (one per commit)"
        );
    }

    // Crash points over the whole log, sorted so the walker replays it once.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9);
    // One point in ten is aimed inside a reopen (recovery and its commit).
    let mut points: Vec<usize> = (0..images)
        .map(|at| {
            if at % 10 == 0 && !reopens.is_empty() {
                let (from, to) = reopens[rng.usize(..reopens.len())];
                rng.usize(from as usize..=to as usize)
            } else {
                rng.usize(0..=total)
            }
        })
        .collect();
    points.sort_unstable();
    let in_reopen = points
        .iter()
        .filter(|p| {
            reopens
                .iter()
                .any(|(from, to)| (*from..*to).contains(&(**p as u64)))
        })
        .count();
    let model = Arc::new(workload.model);
    let mut walker = PairWalker::new(&recorded, &store_ops, &log_ops);
    let mut opened = 0;
    let mut refused_before_first_ack = 0;
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut pending_total = 0;
    let mut max_ms = 0u128;
    let mut problems = Vec::new();
    let started = Instant::now();
    for (at, point) in points.into_iter().enumerate() {
        let kind = [ImageKind::Durable, ImageKind::Subset, ImageKind::Torn][at % 3];
        let (image, log_image, unsynced, applied) = walker.images(point, kind, &mut rng);
        pending_total += unsynced;
        let entry = by_kind.entry(format!("{kind:?}").leak()).or_default();
        entry.0 += 1;
        entry.1 += applied as u64;
        let model = Arc::clone(&model);
        let image_started = Instant::now();
        let outcome = with_patience(move || {
            let log = log_image.map(FailingBackend::healthy);
            let engine = match open_with_log(FailingBackend::healthy(image), log, false) {
                Ok(engine) => engine,
                Err(error) => return Err(error.to_string()),
            };
            Ok(runtime_verify(&engine, &model, point as u64))
        });
        max_ms = max_ms.max(image_started.elapsed().as_millis());
        match outcome {
            None => panic!(
                "image {at} (crash after operation {point} of {}, {kind:?}) hung: no answer in \
                 {PATIENCE:?}; FQ_SEED={seed}",
                total
            ),
            Some(Ok(found)) => {
                opened += 1;
                for problem in found {
                    problems.push(format!("image {at} (point {point}, {kind:?}): {problem}"));
                }
            }
            Some(Err(error)) if (point as u64) < first_ack => {
                // The store's creation itself was cut off: nothing was acknowledged yet.
                refused_before_first_ack += 1;
                println!("  image {at} (point {point}, before the store existed) refused: {error}");
            }
            Some(Err(error)) => problems.push(format!(
                "image {at} (point {point}, {kind:?}) does not open: {error}"
            )),
        }
    }
    let panicked = panics_since(panics_before);
    println!(
        "  {images} crash images in {:.1?} (slowest {max_ms} ms): {opened} opened, \
         {refused_before_first_ack} refused (cut before the store was created); \
         {pending_total} unsynced operations in all",
        started.elapsed()
    );
    for (kind, (count, applied)) in &by_kind {
        println!("    {kind}: {count} images, {applied} unsynced operations applied");
    }
    println!("    {in_reopen} crash points inside a reopen (recovery and its commit)");

    // Control: the same check must fail on an image that lost acknowledged work, here the
    // durable state halfway through the log judged against everything acknowledged.
    let (halfway, halfway_log, _, _) = PairWalker::new(&recorded, &store_ops, &log_ops).images(
        total / 2,
        ImageKind::Durable,
        &mut rng,
    );
    let control_model = Arc::clone(&model);
    let control = with_patience(move || {
        let log = halfway_log.map(FailingBackend::healthy);
        let engine = open_with_log(FailingBackend::healthy(halfway), log, false).unwrap();
        runtime_verify_all(&engine, &control_model)
    })
    .expect("the control image hung");
    println!(
        "  control (halfway image judged against the whole run): {} problems found",
        control.len()
    );
    assert!(!control.is_empty(), "the check cannot see lost work");
    println!("  problems: {}, panics: {panicked}", problems.len());
    for problem in problems.iter().take(20) {
        println!("    {problem}");
    }
    assert!(problems.is_empty(), "FQ_SEED={seed}: {problems:#?}");
    assert_eq!(panicked, 0, "FQ_SEED={seed}: a thread panicked");
}

fn runtime_verify_all(engine: &Engine, model: &Model) -> Vec<String> {
    runtime().block_on(verify_store(engine, model, None))
}

fn runtime_verify(engine: &Engine, model: &Model, point: u64) -> Vec<String> {
    runtime().block_on(verify_store(engine, model, Some(point)))
}

// --- I/O errors -------------------------------------------------------------------------------

/// What one sweep run saw.
#[derive(Debug, Default)]
struct SweepFigures {
    runs: u64,
    never_fired: u64,
    failed_open: u64,
    surfaced: u64,
    absorbed: u64,
    refused_after: u64,
    /// Runs whose engine still listed every task after the failure.
    read_after: u64,
    acked_before_failure: u64,
}

/// Opens a store on a failing backend, runs the workload until the first refused operation,
/// checks that the engine then refuses writes, heals the disk, reopens and checks the store.
/// Which disk a sweep run fails: the store's, or (the store's disk healthy) the write-ahead
/// log's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SweepDisk {
    Store,
    Log,
    /// The log's, with every batch's B-tree transaction held open for the next ones.
    HeldLog,
}

/// An engine on the sweep's disks: `disk` is the one that fails, `store` the healthy store
/// disk beside a failing log.
fn open_sweep(
    target: SweepDisk,
    disk: &FailingBackend,
    store: &FailingBackend,
) -> fq::Result<Engine> {
    match target {
        SweepDisk::Store => open_on(disk.clone()),
        SweepDisk::Log => open_with_log(store.clone(), Some(disk.clone()), false),
        SweepDisk::HeldLog => open_holding(store.clone(), disk.clone()),
    }
}

fn sweep_run(
    seed: u64,
    operations: usize,
    mode: FailMode,
    target: SweepDisk,
) -> (SweepFigures, Vec<String>) {
    let mut figures = SweepFigures {
        runs: 1,
        ..SweepFigures::default()
    };
    let mut problems = Vec::new();
    let disk = FailingBackend::new(Vec::new(), mode);
    let store = FailingBackend::healthy(Vec::new());
    let position = {
        let disk = disk.clone();
        Box::new(move || disk.ops())
    };
    let mut workload = Workload::new(seed, position);
    let runtime = runtime();
    match open_sweep(target, &disk, &store) {
        Err(error) => {
            figures.failed_open += 1;
            if disk.failures() == 0 {
                problems.push(format!("open failed without an injected failure: {error}"));
            }
        }
        Ok(engine) => runtime.block_on(async {
            for _ in 0..operations {
                let failures_before = disk.failures();
                match workload.step(&engine).await {
                    Ok(acknowledged) => {
                        if disk.failures() > failures_before {
                            figures.absorbed += 1;
                        }
                        // RELIABILITY.md: nothing is acknowledged after a failed write or sync.
                        if acknowledged && disk.write_failures() > 0 {
                            problems.push(format!(
                                "an operation was acknowledged after {} failed write(s) or \
                                 sync(s) (first failure at storage operation {:?})",
                                disk.write_failures(),
                                disk.first_failure()
                            ));
                        }
                    }
                    Err(error) => {
                        figures.surfaced += 1;
                        if disk.failures() == failures_before && disk.failures() == 0 {
                            problems.push(format!("refused without an injected failure: {error}"));
                        }
                        if !matches!(error, Error::Poisoned { .. } | Error::Store(_)) {
                            problems.push(format!("unclear error for an i/o failure: {error:?}"));
                        }
                        // Whether the disk works again (transient) or not (persistent), the
                        // engine must refuse without trying it.
                        match engine
                            .queue_task_named(
                                "power.loss.after",
                                &json!({"args": [], "kwargs": {}}),
                            )
                            .send()
                            .await
                        {
                            Err(Error::Poisoned { reason, .. }) if !reason.is_empty() => {
                                figures.refused_after += 1;
                            }
                            Err(other) => problems.push(format!(
                                "a write after the failure got an unclear error: {other:?}"
                            )),
                            Ok(id) => problems.push(format!(
                                "a write after the failure ({error}) was acknowledged ({id})"
                            )),
                        }
                        // Reads go on from what the file holds, where the disk still works.
                        if matches!(mode, FailMode::Transient(_)) {
                            match all_tasks(&engine).await {
                                Ok(found) => {
                                    figures.read_after += 1;
                                    problems.extend(
                                        workload
                                            .model
                                            .check(&found, None)
                                            .into_iter()
                                            .map(|p| format!("read after the failure: {p}")),
                                    );
                                }
                                Err(error) => {
                                    problems.push(format!("reads fail after the failure: {error}"))
                                }
                            }
                        }
                        break;
                    }
                }
            }
        }),
    }
    figures.acked_before_failure = workload.model.acked_ops;
    if disk.failures() == 0 {
        figures.never_fired += 1;
    }
    disk.heal();
    match open_sweep(target, &disk, &store) {
        Ok(engine) => {
            problems.extend(runtime.block_on(verify_store(&engine, &workload.model, None)))
        }
        Err(error) if workload.model.acked_ops == 0 && disk.first_failure().is_some() => {
            // Only a store whose creation failed may be unreadable, and then nothing was
            // acknowledged; it must still be refused with an error naming it.
            if !error.to_string().contains("simulated.redb") {
                problems.push(format!(
                    "a store cut during creation is refused unclearly: {error}"
                ));
            }
        }
        Err(error) => problems.push(format!("the healed store does not open: {error}")),
    }
    (figures, problems)
}

#[test]
fn error_sweep_fails_every_operation_of_a_100_operation_workload() {
    error_sweep(SweepDisk::Store);
}

/// The same sweep over the write-ahead log's disk: every append, sync and header write of the
/// log fails in turn (the store's disk healthy), and what a failure leaves must be what a
/// failed store write leaves.
#[test]
fn error_sweep_fails_every_operation_of_the_write_ahead_log() {
    error_sweep(SweepDisk::Log);
}

/// The same, with every batch's B-tree transaction held open for the next ones
/// (`store/held.rs`): a failed append or sync meets a transaction carrying answered batches.
#[test]
fn error_sweep_fails_every_operation_of_the_log_under_held_transactions() {
    error_sweep(SweepDisk::HeldLog);
}

fn error_sweep(target: SweepDisk) {
    let seed = seed();
    let panics_before = panics::mark();
    let operations = if full() { 300 } else { 100 };
    println!(
        "power_loss error sweep of the {target:?} disk: seed {seed} (FQ_SEED={seed} replays), \
         full={}",
        full()
    );

    let dry = FailingBackend::new(Vec::new(), FailMode::Never);
    let dry_store = FailingBackend::healthy(Vec::new());
    let position = {
        let dry = dry.clone();
        Box::new(move || dry.ops())
    };
    let mut workload = Workload::new(seed, position);
    {
        let engine = open_sweep(target, &dry, &dry_store).unwrap();
        runtime().block_on(async {
            for _ in 0..operations {
                workload.step(&engine).await.unwrap();
            }
        });
    }
    let (total_ops, total_syncs) = (dry.ops(), dry.syncs());
    println!(
        "  dry run: {operations} operations ({} acknowledged) made {total_ops} storage \
         operations, {total_syncs} syncs",
        workload.model.acked_ops
    );

    // Every operation fails in turn persistently and (at full size) transiently; the smoke
    // run fails every 8th transiently (redb latches the first error either way, so the two
    // differ only in what the disk does after it).
    let transient_stride = if full() { 1 } else { 8 };
    let mut plans = Vec::new();
    for n in 1..=total_ops + 2 {
        plans.push(FailMode::Persistent(n));
        if n % transient_stride == 1 % transient_stride {
            plans.push(FailMode::Transient(n));
        }
    }
    for n in 1..=total_syncs + 1 {
        plans.push(FailMode::SyncOnly(n));
    }
    let started = Instant::now();
    let n_threads = 2;
    let plans = Arc::new(plans);
    let threads: Vec<_> = (0..n_threads)
        .map(|thread| {
            let plans = Arc::clone(&plans);
            std::thread::spawn(move || {
                let mut figures: BTreeMap<&'static str, SweepFigures> = BTreeMap::new();
                let mut problems = Vec::new();
                for plan in plans.iter().skip(thread).step_by(n_threads) {
                    let plan = *plan;
                    let Some((run, found)) =
                        with_patience(move || sweep_run(seed, operations, plan, target))
                    else {
                        problems.push(format!("{plan:?}: hung (no answer in {PATIENCE:?})"));
                        continue;
                    };
                    let name = match plan {
                        FailMode::Persistent(_) => "persistent",
                        FailMode::Transient(_) => "transient",
                        FailMode::SyncOnly(_) => "sync_data only",
                        FailMode::SyncLies(_) | FailMode::Window { .. } | FailMode::Never => {
                            "never"
                        }
                    };
                    let total = figures.entry(name).or_default();
                    total.runs += run.runs;
                    total.never_fired += run.never_fired;
                    total.failed_open += run.failed_open;
                    total.surfaced += run.surfaced;
                    total.absorbed += run.absorbed;
                    total.refused_after += run.refused_after;
                    total.read_after += run.read_after;
                    total.acked_before_failure += run.acked_before_failure;
                    problems.extend(found.into_iter().map(|p| format!("{plan:?}: {p}")));
                }
                (figures, problems)
            })
        })
        .collect();
    let mut figures: BTreeMap<&'static str, SweepFigures> = BTreeMap::new();
    let mut problems = Vec::new();
    for thread in threads {
        let (part, found) = thread.join().unwrap();
        for (name, run) in part {
            let total = figures.entry(name).or_default();
            total.runs += run.runs;
            total.never_fired += run.never_fired;
            total.failed_open += run.failed_open;
            total.surfaced += run.surfaced;
            total.absorbed += run.absorbed;
            total.refused_after += run.refused_after;
            total.read_after += run.read_after;
            total.acked_before_failure += run.acked_before_failure;
        }
        problems.extend(found);
    }
    let panicked = panics_since(panics_before);
    println!("  {} runs in {:.1?}:", plans.len(), started.elapsed());
    for (name, f) in &figures {
        println!(
            "    {name}: {} runs; failure during open {}, refused an operation {} (then refused \
             the next write {}, still listed every task {}), absorbed without an error {}, never \
             reached {}; {} acknowledged operations checked after healing",
            f.runs,
            f.failed_open,
            f.surfaced,
            f.refused_after,
            f.read_after,
            f.absorbed,
            f.never_fired,
            f.acked_before_failure
        );
    }
    println!("  problems: {}, panics: {panicked}", problems.len());
    for problem in problems.iter().take(20) {
        println!("    {problem}");
    }
    assert!(problems.is_empty(), "FQ_SEED={seed}: {problems:#?}");
    assert_eq!(panicked, 0, "FQ_SEED={seed}: a thread panicked");
}

/// Negative control of the sweep: a disk that says it synced and did not (as an engine that
/// swallowed a failed fsync would look from outside) loses acknowledged operations when it
/// heals, and the sweep's checks must say so.
#[test]
fn error_sweep_catches_a_disk_that_loses_what_it_said_it_synced() {
    let seed = seed();
    let (figures, problems) = sweep_run(seed, 100, FailMode::SyncLies(20), SweepDisk::Store);
    assert_eq!(
        figures.surfaced, 0,
        "a lying disk never refuses: {figures:?}"
    );
    println!(
        "the lying disk: {} problem(s), first: {:?}",
        problems.len(),
        problems.first()
    );
    assert!(
        problems.iter().any(|p| p.contains("acknowledged")),
        "FQ_SEED={seed}: the healed lying disk lost acknowledged operations unnoticed: {problems:#?}"
    );
}

/// Self-healing (issue 15 §3): the disk fails for a while (a window of storage operations);
/// the engine refuses writes meanwhile and serves reads, then accepts writes again by itself,
/// without the caller reopening anything; after the disk heals (dropping whatever no sync
/// covered) every acknowledged operation is there.
#[test]
fn after_a_failure_window_the_engine_heals_by_itself_and_loses_nothing() {
    let seed = seed();
    let disk = FailingBackend::new(Vec::new(), FailMode::Never);
    let position = {
        let disk = disk.clone();
        Box::new(move || disk.ops())
    };
    let mut workload = Workload::new(seed, position);
    let engine = open_on_healing(disk.clone(), true).unwrap();
    let runtime = runtime();
    let accepted = runtime
        .block_on(async {
            for _ in 0..40 {
                workload.step(&engine).await.unwrap();
            }
            // The next 12 storage operations fail: the first write meets the failure, and the
            // first attempts to heal do too (each fails at its first read).
            disk.fail_next(12);
            let refused = loop {
                if let Err(error) = workload.step(&engine).await {
                    break error;
                }
            };
            assert!(
                matches!(refused, Error::Poisoned { .. } | Error::Store(_)),
                "{refused:?}"
            );
            // Writes are refused while the store fails, without an acknowledgment.
            let refused_after = engine
                .queue_task_named("power.loss.after", &json!({"args": [], "kwargs": {}}))
                .send()
                .await;
            assert!(
                matches!(refused_after, Err(Error::Poisoned { .. })),
                "{refused_after:?}"
            );
            // Then, with no reopen by the caller, writes are accepted again (new tasks: the
            // workload's model holds the failed operation's task as uncertain).
            let deadline = Instant::now() + PATIENCE;
            let mut refused_tries = 0;
            let mut accepted = Vec::new();
            while accepted.len() < 40 {
                let sent = engine
                    .queue_task_named(
                        "power.loss.healed",
                        &json!({"args": [accepted.len()], "kwargs": {}}),
                    )
                    .send()
                    .await;
                match sent {
                    Ok(id) => {
                        accepted.push(id);
                        workload.model.tasks.insert(id, (3, Vec::new()));
                        let pending = State {
                            status: TaskStatus::Pending,
                            attempts: 0,
                        };
                        workload.settle_model(id, pending, Ok(()))?;
                    }
                    Err(Error::Poisoned { .. })
                        if accepted.is_empty() && Instant::now() < deadline =>
                    {
                        refused_tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(other) => panic!("FQ_SEED={seed}: the engine did not heal: {other:?}"),
                }
            }
            println!(
                "healing: {} injected failures, {refused_tries} refused tries before the store \
             worked again, then 40 enqueues accepted",
                disk.failures(),
            );
            assert!(
                disk.failures() > 1,
                "the attempts to heal met the failing disk too"
            );
            let stats = engine.stats().await?;
            assert_eq!(stats.writes_refused, None, "healed: {stats:?}");
            Ok::<_, Error>(accepted)
        })
        .unwrap();
    drop(engine);
    disk.heal();
    let engine = open_on(disk.clone()).unwrap();
    runtime.block_on(async {
        for id in &accepted {
            assert!(
                engine.task(*id).await.unwrap().is_some(),
                "FQ_SEED={seed}: {id} lost"
            );
        }
    });
    let problems = runtime.block_on(verify_store(&engine, &workload.model, None));
    assert!(problems.is_empty(), "FQ_SEED={seed}: {problems:#?}");
}

/// An engine (healing or not) on a disk that has just failed a commit, with `ready` tasks of
/// `heal.ready` waiting: it refuses writes, and a worker's first claim meets the refusal.
async fn poisoned_with_ready_tasks(heal: bool, ready: u64) -> (Engine, FailingBackend) {
    let disk = FailingBackend::new(Vec::new(), FailMode::Never);
    let engine = open_on_healing(disk.clone(), heal).unwrap();
    queue_ready(&engine, ready).await;
    fail_and_see_writes_refused(&engine, &disk).await;
    (engine, disk)
}

/// Queues `ready` tasks of `heal.ready` through `engine` (local or connected).
async fn queue_ready(engine: &Engine, ready: u64) {
    for n in 0..ready {
        engine
            .queue_task_named("heal.ready", &json!({"args": [n], "kwargs": {}}))
            .send()
            .await
            .unwrap();
    }
}

/// Fails the next storage operations: an enqueue meets the failure, and the next is refused. A
/// healing engine's first attempts to heal (100 ms, then 200 ms, ... later) meet the failure
/// too, so that it heals only a second or more after these refusals.
async fn fail_and_see_writes_refused(engine: &Engine, disk: &FailingBackend) {
    disk.fail_next(6);
    for expected in ["the failure", "the refusal after it"] {
        let refused = engine
            .queue_task_named("heal.refused", &json!({"args": [], "kwargs": {}}))
            .send()
            .await;
        assert!(refused.is_err(), "{expected} was not met: {refused:?}");
    }
}

/// A worker that counts the runs of `heal.ready`.
fn counting_worker(engine: &Engine, ran: &Arc<std::sync::atomic::AtomicU64>) -> fq::WorkerManager {
    let mut registry = fq::Registry::new();
    let counter = Arc::clone(ran);
    registry.register_async(
        "heal.ready",
        move |_: serde_json::Value, _ctx: fq::TaskContext| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, fq::TaskError>(()) }
        },
    );
    let mut worker = engine.worker(registry);
    worker
        .set_handle_signals(false)
        .set_polling_interval(Duration::from_millis(50));
    worker
}

/// Waits until `ran` counts `ready` runs of the worker `running`, failing if the worker stops
/// first (it must wait for the healing engine, not give up) or the runs take past `PATIENCE`.
async fn wait_for_runs(
    ran: &std::sync::atomic::AtomicU64,
    ready: u64,
    running: &mut tokio::task::JoinHandle<fq::Result<fq::WorkerReport>>,
) {
    let deadline = Instant::now() + PATIENCE;
    while ran.load(std::sync::atomic::Ordering::SeqCst) < ready {
        assert!(
            !running.is_finished(),
            "the worker stopped while the engine healed: {:?}",
            running.await
        );
        assert!(Instant::now() < deadline, "the ready tasks never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker keeps serving its queues while the engine heals itself: a claim the poisoned engine
/// refuses makes it wait and claim again, instead of stopping until someone restarts it, and
/// the tasks that were ready at the failure run once the disk works.
#[test]
fn a_worker_waits_while_the_engine_heals_instead_of_stopping() {
    runtime().block_on(async {
        let ready = 20;
        let (engine, disk) = poisoned_with_ready_tasks(true, ready).await;
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut worker = counting_worker(&engine, &ran);
        let stop = worker.shutdown_handle();
        // Started while the engine refuses: its first claim of the ready tasks is refused.
        let mut running = tokio::spawn(async move { worker.start().await });
        wait_for_runs(&ran, ready, &mut running).await;
        assert!(
            disk.failures() > 1,
            "the attempts to heal met the failing disk too"
        );
        stop.shutdown();
        let report = running.await.unwrap().unwrap();
        assert_eq!(report.completed, ready, "{report:?}");
        println!(
            "a worker started on a poisoned engine ({} injected failures) ran all {ready} ready \
             tasks once it healed",
            disk.failures()
        );
    });
}

/// A task that ends while the engine heals is settled once it has healed: the worker keeps its
/// outcome and asks again, so the task is COMPLETED under its one attempt instead of staying
/// RUNNING until its lease runs out and running a second time.
#[test]
fn a_settlement_refused_while_the_engine_heals_is_made_once_it_has() {
    runtime().block_on(async {
        let disk = FailingBackend::new(Vec::new(), FailMode::Never);
        let engine = open_on_healing(disk.clone(), true).unwrap();
        let started = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Notify::new());
        let runs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut registry = fq::Registry::new();
        let (on_start, on_release, counter) = (
            Arc::clone(&started),
            Arc::clone(&release),
            Arc::clone(&runs),
        );
        registry.register_async(
            "heal.gated",
            move |_: serde_json::Value, _ctx: fq::TaskContext| {
                let (on_start, on_release) = (Arc::clone(&on_start), Arc::clone(&on_release));
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    on_start.notify_one();
                    on_release.notified().await;
                    Ok::<_, fq::TaskError>(())
                }
            },
        );
        let id = engine
            .queue_task_named("heal.gated", &json!({"args": [], "kwargs": {}}))
            .send()
            .await
            .unwrap();
        let mut worker = engine.worker(registry);
        worker.set_handle_signals(false);
        let stop = worker.shutdown_handle();
        let running = tokio::spawn(async move { worker.start().await });
        started.notified().await;

        // The disk fails while the task runs; the engine refuses writes, then heals by itself.
        fail_and_see_writes_refused(&engine, &disk).await;
        release.notify_one();
        let deadline = Instant::now() + PATIENCE;
        let record = loop {
            // Reads fail while the store cannot be reopened; they are tried again.
            if let Ok(Some(record)) = engine.task(id).await
                && record.status == TaskStatus::Completed
            {
                break record;
            }
            assert!(
                Instant::now() < deadline,
                "the task was not settled after the engine healed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(record.attempts, 1, "{record:?}");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        stop.shutdown();
        let report = running.await.unwrap().unwrap();
        assert_eq!(report.completed, 1, "{report:?}");
        println!(
            "a settlement refused while the engine healed ({} injected failures) was made after",
            disk.failures()
        );
    });
}

/// A worker across the control socket waits while the engine it reaches heals, as a local one
/// does: the refusal that crosses the socket says the engine heals. (A worker in another
/// process used to stop at the first refusal, since it could not tell.)
#[test]
fn a_remote_worker_waits_while_the_served_engine_heals() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("fq.sock");
        let disk = FailingBackend::new(Vec::new(), FailMode::Never);
        let engine =
            open_serving(disk.clone(), None::<FailingBackend>, true, Some(&socket)).unwrap();
        let remote = Engine::connect(&format!("unix:{}", socket.display()))
            .await
            .unwrap();
        let ready = 20;
        queue_ready(&remote, ready).await;
        fail_and_see_writes_refused(&engine, &disk).await;
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut worker = counting_worker(&remote, &ran);
        let stop = worker.shutdown_handle();
        // Started while the engine refuses: its first claim of the ready tasks is refused.
        let mut running = tokio::spawn(async move { worker.start().await });
        let refused = remote
            .queue_task_named("heal.refused", &json!({"args": [], "kwargs": {}}))
            .send()
            .await;
        assert!(
            matches!(&refused, Err(Error::Poisoned { healing: true, .. })),
            "the refusal across the socket does not say the engine heals: {refused:?}"
        );
        wait_for_runs(&ran, ready, &mut running).await;
        stop.shutdown();
        let report = running.await.unwrap().unwrap();
        assert_eq!(report.completed, ready, "{report:?}");
        println!(
            "a remote worker started on a poisoned engine ({} injected failures) ran all {ready} \
             ready tasks once it healed",
            disk.failures()
        );
    });
}

/// The other side: an engine built with `self_heal(false)` refuses writes until it is reopened,
/// so a worker whose claim it refuses stops with that refusal instead of waiting forever.
#[test]
fn a_worker_stops_when_the_engine_refuses_writes_for_good() {
    runtime().block_on(async {
        let (engine, _disk) = poisoned_with_ready_tasks(false, 5).await;
        let ran = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut worker = counting_worker(&engine, &ran);
        let ended = tokio::time::timeout(PATIENCE, worker.start()).await;
        assert!(
            matches!(ended, Ok(Err(Error::Poisoned { healing: false, .. }))),
            "the worker did not stop with the refusal: {ended:?}"
        );
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 0);
    });
}
