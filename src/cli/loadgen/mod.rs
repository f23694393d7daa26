//! The load generator behind `fq bench`: measures this machine's fsync rate, then enqueue
//! (sequential, concurrent, batched), drain, a mixed steady state and an idle worker with
//! enqueue→start latency, store size per task, reopen time and peak memory, on fresh stores in
//! a temporary folder.

//!
//! Parts: `probes` (the machine: disk, file system, memory), `mixed` (the mixed phase), `idle`
//! (lone tasks on an idle worker),
//! `metrics_cost` (`fq bench --metrics-cost`); the plain phases and the reopen stay here.

mod idle;
mod metrics_cost;
mod mixed;
mod probes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use idle::{IdleReport, idle};
pub(crate) use metrics_cost::{MetricsCost, metrics_cost};
use mixed::{MixedReport, mixed};
use probes::{
    COMMIT_PAGES, file_system, fsync_rate, handed_off_fsync_rate, peak_rss_mib, redb_commit_rate,
};

use crate::{Config, Engine, Error, Registry, Result, TaskContext, TaskError};

const NOOP: &str = "fq.bench.noop";
/// How many tasks the one-producer phase enqueues at most: it runs at the disk's fsync rate.
const SEQUENTIAL_CAP: u64 = 2_000;

/// What to measure.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BenchParams {
    /// Tasks per phase.
    pub(crate) tasks: u64,
    /// Concurrent producers for the concurrent-enqueue phase.
    pub(crate) producers: usize,
    /// Worker concurrency for the drain and mixed phases.
    pub(crate) concurrency: usize,
    /// Approximate payload size of each task, in bytes.
    pub(crate) payload_bytes: usize,
    /// The tasks of the enqueue phases (so of the drain) queued with a unique key each (`fq
    /// bench --unique`): what unique tasks cost against the same run without them. The mixed
    /// phase stays plain.
    pub(crate) unique: bool,
    /// Folder for the stores (default: a fresh temporary folder, removed afterwards).
    #[serde(skip)]
    pub(crate) dir: Option<PathBuf>,
    /// The settings every store of the run is opened with (`--config`, else `fq.toml`, else
    /// the defaults, with the `FQ_*` overrides), as `fq bench` prepared them: see
    /// `cli::commands::bench::bench_config`.
    #[serde(skip)]
    pub(crate) config: Config,
    /// The configuration file given with `--config`, passed on to the fresh process that times
    /// the reopen so that it opens the store with the same settings.
    #[serde(skip)]
    pub(crate) config_file: Option<PathBuf>,
}

/// Everything `fq bench` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct BenchReport {
    /// What was measured (its keys sit at the top level of the JSON).
    #[serde(flatten)]
    pub(crate) params: BenchParams,
    /// Single durable writes per second on this disk (4 KiB write + fdatasync).
    pub(crate) fsync_per_sec: f64,
    /// The same durable write asked of a thread and awaited, one at a time, per second.
    pub(crate) fsync_handed_off_per_sec: f64,
    /// `fsync_handed_off_per_sec` over the same write done in place, in alternating slices of
    /// one probe: the most of the disk's rate one sequential producer can get through a writer
    /// thread on this machine, the ceiling of `sequential_to_fsync_ratio` in this design.
    pub(crate) fsync_handed_off_ratio: f64,
    /// Durable writes per second of what one small redb commit puts on the disk: as many
    /// scattered 4 KiB pages as an enqueue's commit writes ([`COMMIT_PAGES`]), then one
    /// fdatasync. The disk's own price for a copy-on-write B-tree commit.
    pub(crate) fsync_commit_pages_per_sec: f64,
    /// redb alone, no fq: one enqueue's three inserts (record, ready index, counter) per
    /// `Durability::Immediate` commit, commits/s.
    pub(crate) redb_commit_per_sec: f64,
    /// One producer, each enqueue awaited, tasks/s.
    pub(crate) enqueue_sequential_per_sec: f64,
    /// `enqueue_sequential_per_sec / fsync_per_sec`.
    pub(crate) sequential_to_fsync_ratio: f64,
    /// `enqueue_sequential_per_sec / redb_commit_per_sec`: what fq keeps of its store's limit.
    pub(crate) sequential_to_redb_ratio: f64,
    /// `producers` concurrent producers, tasks/s.
    pub(crate) enqueue_concurrent_per_sec: f64,
    /// Batch API, 1,000 tasks per call, tasks/s.
    pub(crate) enqueue_batch_per_sec: f64,
    /// Draining pre-queued no-op tasks at `concurrency`, tasks/s.
    pub(crate) drain_per_sec: f64,
    /// Producers and workers at once.
    pub(crate) mixed: MixedReport,
    /// Lone tasks on an idle worker.
    pub(crate) idle: IdleReport,
    /// Store file size divided by the tasks it holds (after the batch phase).
    pub(crate) store_bytes_per_task: f64,
    /// Time to reopen the store holding `tasks` pending tasks as its owner would, seconds:
    /// in a fresh process (`fq bench-open`), every page checksum verified, recovery run.
    pub(crate) reopen_seconds: f64,
    /// The same reopen in this process right after the store was written, without checksum
    /// verification (the page cache warm): a lower bound, not what a user gets.
    pub(crate) reopen_unverified_seconds: f64,
    /// Tasks the one-producer phase queued (at most 2,000, whatever `tasks` says).
    pub(crate) sequential_tasks: u64,
    /// Tasks the mixed phase queued and saw start.
    pub(crate) mixed_tasks: u64,
    /// The file system holding the stores (`ext4`, `xfs`, `tmpfs`, ...; `unknown` where it
    /// cannot be told).
    pub(crate) file_system: String,
    /// False when the stores sit in memory (tmpfs, ramfs): every durable figure then measures
    /// nothing of a disk.
    pub(crate) on_disk: bool,
    /// Peak resident memory of this process, MiB (Linux only).
    pub(crate) peak_rss_mib: Option<f64>,
}

/// Progress of a phase: its name, work done, work in total.
pub(crate) type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

fn payload(size: usize, extra: &serde_json::Value) -> serde_json::Value {
    let overhead = r#"{"args":[],"kwargs":{"pad":""}}"#.len() + extra.to_string().len();
    json!({"kwargs": {"pad": "x".repeat(size.saturating_sub(overhead)), "t": extra}})
}

/// A no-op task whose arguments carry `extra`, with a unique key of its own when the run
/// measures unique tasks (every key distinct, so each is checked, taken and freed).
fn noop_task(
    engine: &Engine,
    unique: bool,
    size: usize,
    extra: &serde_json::Value,
) -> crate::QueueTask {
    let task = engine.queue_task_named(NOOP, &payload(size, extra));
    if unique {
        task.unique(format!("bench:{extra}"))
    } else {
        task
    }
}

/// Enqueue→start latency percentiles of a phase, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct StartLatency {
    pub(crate) latency_p50_ms: f64,
    /// 99th percentile.
    pub(crate) latency_p99_ms: f64,
    /// Worst.
    pub(crate) latency_max_ms: f64,
}

impl StartLatency {
    /// Of latencies in microseconds, sorted.
    fn of(sorted: &[u64]) -> Self {
        let quantile = |p: f64| {
            let at = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
            sorted.get(at).map_or(0.0, |us| *us as f64 / 1000.0)
        };
        Self {
            latency_p50_ms: quantile(0.50),
            latency_p99_ms: quantile(0.99),
            latency_max_ms: quantile(1.0),
        }
    }
}

/// Microseconds since `epoch`: the clock the latency phases stamp their tasks with.
fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A registry whose no-op handler reports, for each task stamped with `"t"` (microseconds
/// since `epoch` when it was queued), how long it waited to start.
fn start_latency_registry(
    epoch: Instant,
    report: impl Fn(u64) + Send + Sync + 'static,
) -> Registry {
    let mut registry = Registry::new();
    registry.register_async(NOOP, move |args: serde_json::Value, _ctx: TaskContext| {
        if let Some(queued_us) = args.get("t").and_then(serde_json::Value::as_u64) {
            report(micros_since(epoch).saturating_sub(queued_us));
        }
        async { Ok::<(), TaskError>(()) }
    });
    registry
}

/// Starts a worker at the phase's concurrency, signals left to the bench.
fn start_worker(
    engine: &Engine,
    registry: Registry,
    params: &BenchParams,
) -> (
    crate::ShutdownHandle,
    tokio::task::JoinHandle<Result<crate::WorkerReport>>,
) {
    let mut worker = engine.worker(registry);
    worker
        .set_concurrent_tasks(params.concurrency)
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    (stop, tokio::spawn(async move { worker.start().await }))
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn open(path: &Path, params: &BenchParams) -> Result<Engine> {
    Engine::builder(path)
        .config(params.config.clone())
        .verify_on_open(false)
        .open()
}

/// Runs every phase.
///
/// # Errors
/// A store that cannot be created or written, or a task that does not complete.
pub(crate) async fn run(params: &BenchParams, progress: Progress<'_>) -> Result<BenchReport> {
    let temp;
    let dir = match &params.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::invalid("dir", format!("cannot create {}: {e}", dir.display()))
            })?;
            dir.clone()
        }
        None => {
            temp = TempDir::new()?;
            temp.path.clone()
        }
    };
    let file_system = file_system(&dir);
    let mut report = BenchReport {
        params: params.clone(),
        on_disk: !matches!(file_system, "tmpfs" | "ramfs"),
        file_system: file_system.to_owned(),
        ..BenchReport::default()
    };
    if !report.on_disk {
        tracing::warn!(
            dir = %dir.display(),
            file_system,
            "the bench's stores are on {file_system}, in memory: fsync costs nothing there, and \
             no durable figure says anything about a disk; pass --db PATH on a disk"
        );
    }
    // The probes run right before the sequential phase: the disk's speed drifts with the
    // machine's load, and the ratios only mean something between neighbouring measurements.
    report.fsync_per_sec = fsync_rate(&dir.join("fsync.probe"), 0, progress)?;
    let handed_off = handed_off_fsync_rate(&dir.join("handoff.probe"), progress).await?;
    report.fsync_handed_off_per_sec = handed_off.handed_off_per_sec;
    report.fsync_handed_off_ratio =
        handed_off.handed_off_per_sec / handed_off.here_per_sec.max(1e-9);
    report.fsync_commit_pages_per_sec =
        fsync_rate(&dir.join("pages.probe"), COMMIT_PAGES, progress)?;
    report.redb_commit_per_sec = redb_commit_rate(&dir.join("redb.probe"), progress)?;

    let sequential = params.tasks.min(SEQUENTIAL_CAP);
    report.sequential_tasks = sequential;
    let engine = open(&dir.join("sequential.redb"), params)?;
    let started = Instant::now();
    for n in 0..sequential {
        noop_task(&engine, params.unique, params.payload_bytes, &json!(n))
            .send()
            .await?;
        progress("enqueue, 1 producer", n + 1, sequential);
    }
    report.enqueue_sequential_per_sec = rate(sequential, started.elapsed());
    report.sequential_to_fsync_ratio =
        report.enqueue_sequential_per_sec / report.fsync_per_sec.max(1e-9);
    report.sequential_to_redb_ratio =
        report.enqueue_sequential_per_sec / report.redb_commit_per_sec.max(1e-9);
    drop(engine);

    let engine = open(&dir.join("concurrent.redb"), params)?;
    report.enqueue_concurrent_per_sec = enqueue_concurrently(&engine, params, progress).await?;
    drop(engine);

    let batch_path = dir.join("batch.redb");
    let engine = open(&batch_path, params)?;
    let started = Instant::now();
    let mut queued = 0;
    while queued < params.tasks {
        let chunk = (params.tasks - queued).min(1_000);
        let batch = (0..chunk).map(|n| {
            noop_task(
                &engine,
                params.unique,
                params.payload_bytes,
                &json!(queued + n),
            )
        });
        engine.queue_batch(batch).await?;
        queued += chunk;
        progress("enqueue, batch API", queued, params.tasks);
    }
    report.enqueue_batch_per_sec = rate(params.tasks, started.elapsed());
    drop(engine);
    let size = std::fs::metadata(&batch_path).map(|m| m.len()).unwrap_or(0);
    report.store_bytes_per_task = size as f64 / params.tasks.max(1) as f64;

    progress("reopen", 0, 2);
    report.reopen_seconds = open_in_a_fresh_process(&batch_path, params)?;
    progress("reopen", 1, 2);
    let started = Instant::now();
    let engine = open(&batch_path, params)?;
    report.reopen_unverified_seconds = started.elapsed().as_secs_f64();
    progress("reopen", 2, 2);

    report.drain_per_sec = drain(&engine, params, progress).await?;
    drop(engine);

    report.mixed = mixed(
        &dir.join("mixed.redb"),
        params,
        report.drain_per_sec / 2.0,
        progress,
    )
    .await?;
    report.mixed_tasks = report.mixed.tasks;
    report.idle = idle(&dir.join("idle.redb"), params, progress).await?;
    report.peak_rss_mib = peak_rss_mib();
    Ok(report)
}

async fn enqueue_concurrently(
    engine: &Engine,
    params: &BenchParams,
    progress: Progress<'_>,
) -> Result<f64> {
    let producers = params.producers.max(1) as u64;
    let per_producer = params.tasks / producers;
    let total = per_producer * producers;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for producer in 0..producers {
        let engine = engine.clone();
        let done = Arc::clone(&done);
        let (size, unique) = (params.payload_bytes, params.unique);
        handles.push(tokio::spawn(async move {
            for n in 0..per_producer {
                noop_task(&engine, unique, size, &json!([producer, n]))
                    .send()
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            // Each producer notes when it finished: the phase ends with the last of them, not
            // at the progress loop's next look.
            Ok::<Instant, Error>(Instant::now())
        }));
    }
    while !handles.iter().all(tokio::task::JoinHandle::is_finished) {
        progress(
            "enqueue, concurrent producers",
            done.load(Ordering::Relaxed),
            total,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut finished = started;
    for handle in handles {
        let ended = handle
            .await
            .map_err(|e| Error::Internal(format!("a producer failed: {e}")))??;
        finished = finished.max(ended);
    }
    progress("enqueue, concurrent producers", total, total);
    Ok(rate(total, finished.duration_since(started)))
}

async fn drain(engine: &Engine, params: &BenchParams, progress: Progress<'_>) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&done);
    // The last handler's start wakes the loop below at once: sleeping out its progress period
    // would add up to 20 ms to a phase of about half a second.
    let last_started = Arc::new(tokio::sync::Notify::new());
    let notify_last = Arc::clone(&last_started);
    let tasks = params.tasks;
    let mut registry = Registry::new();
    registry.register_async(NOOP, move |_: serde_json::Value, _ctx: TaskContext| {
        if counter.fetch_add(1, Ordering::Relaxed) + 1 == tasks {
            notify_last.notify_one();
        }
        async { Ok::<(), TaskError>(()) }
    });
    let started = Instant::now();
    let (stop, running) = start_worker(engine, registry, params);
    while done.load(Ordering::Relaxed) < params.tasks && !running.is_finished() {
        progress("drain", done.load(Ordering::Relaxed), params.tasks);
        tokio::select! {
            () = last_started.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    // The last handlers have started; the phase ends when their completions are committed,
    // looked for every millisecond so that the progress loop's period does not count.
    while !running.is_finished() && completed(engine).await? < params.tasks {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    stop.shutdown();
    let report = running
        .await
        .map_err(|e| Error::Internal(format!("the worker failed: {e}")))??;
    progress("drain", params.tasks, params.tasks);
    if report.completed < params.tasks {
        return Err(Error::Internal(format!(
            "only {} of {} tasks completed",
            report.completed, params.tasks
        )));
    }
    Ok(rate(params.tasks, elapsed))
}

/// COMPLETED tasks in the store, all queues.
async fn completed(engine: &Engine) -> Result<u64> {
    Ok(engine
        .stats()
        .await?
        .queues
        .values()
        .map(|q| q.completed)
        .sum())
}

/// Opens the store at `path` in a fresh process of this program (`bench-open`), as its owner
/// would, with the run's configuration file, and returns the seconds the open took there.
fn open_in_a_fresh_process(path: &Path, params: &BenchParams) -> Result<f64> {
    let failed =
        |why: String| Error::Internal(format!("the reopen in a fresh process failed: {why}"));
    let program = std::env::current_exe().map_err(|e| failed(e.to_string()))?;
    let mut command = std::process::Command::new(program);
    if let Some(file) = &params.config_file {
        command.arg("--config").arg(file);
    }
    let out = command
        .arg("--json")
        .arg("bench-open")
        .arg(path)
        .env_remove("FQ_DATABASE")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.get("open_seconds").and_then(serde_json::Value::as_f64))
        .ok_or_else(|| {
            failed(format!(
                "unexpected output {:?}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
}

/// The seconds an owner's open of the store at `path` takes in this process: what
/// `fq bench-open` prints.
pub(crate) fn time_open(path: &Path, config: Config) -> Result<f64> {
    let started = Instant::now();
    let engine = Engine::builder(path).config(config).control(false).open()?;
    let seconds = started.elapsed().as_secs_f64();
    drop(engine);
    Ok(seconds)
}

/// A temporary folder removed on drop (the `tempfile` crate is only a dev-dependency).
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "fq-bench-{}-{}",
            std::process::id(),
            crate::TaskId::new()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::invalid("dir", format!("cannot create {}: {e}", path.display())))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
