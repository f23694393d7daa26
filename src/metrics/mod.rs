//! Prometheus metrics of one engine: the metric names, their labels, their registration in a
//! registry of the engine's own (never a process-wide recorder: a process may open many
//! engines), the recording of what the writer committed, and the text exposition that
//! `/metrics` and `fq metrics` serve. It reads the task lifecycle (statuses) and the broker's
//! `Stats`; it never touches the store, the heap or the events itself.
//!
//! Counters and histograms are fed by the writer after each commit (so a batch whose commit
//! fails counts nothing); queue depths, dropped events and the RabbitMQ figures are read at
//! scrape time from [`Stats`] and the event bus.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::broker::Stats;
use crate::clock::Millis;
use crate::task::TaskStatus;

/// The `Content-Type` of [`render`]'s text: the OpenMetrics text format, which Prometheus
/// scrapes natively (and which is the Prometheus text format plus a closing `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Longest wait of a scrape for the writer to record the batches it has answered.
const CATCH_UP: Duration = Duration::from_millis(100);

/// Why no exposition could be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The engine was opened with `metrics.enabled = false`.
    #[error(
        "metrics are turned off for this engine (metrics.enabled = false in the configuration)"
    )]
    Disabled,
    /// The exposition could not be written (a label value the encoder refuses).
    #[error("cannot encode the metrics: {0}")]
    Encode(String),
}

/// `queue` and `name` of a task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    queue: String,
    name: String,
}

/// `name` of a task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

/// `queue`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// `queue` and `status` of a depth.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    queue: String,
    status: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Run times and waits: 1 ms to about 4.7 hours, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

/// Commit durations: 50 µs to about 1.6 s, doubling.
fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Commands per commit: 1 to 4096 (the writer's batch cap), doubling.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// A task's move that a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Queued,
    Started,
    Completed,
    Retried,
    Failed,
    Cancelled,
    /// Handed to RabbitMQ (publisher-confirmed), in `broker: rabbitmq` mode.
    Forwarded,
}

impl Transition {
    /// The move from `previous` to `status`, when a counter counts it: a new PENDING task is
    /// queued; any move into RUNNING is a start; RUNNING ends COMPLETED, RETRYING (a failed
    /// attempt with retries left) or FAILED; a waiting task may be CANCELLED (or FAILED, when
    /// it cannot run at all). Releases at shutdown and an operator's retry count nothing.
    pub(crate) fn of(previous: Option<TaskStatus>, status: TaskStatus) -> Option<Self> {
        if previous == Some(status) {
            return None;
        }
        match (previous, status) {
            (None, TaskStatus::Pending) => Some(Self::Queued),
            (_, TaskStatus::Running) => Some(Self::Started),
            (_, TaskStatus::Completed) => Some(Self::Completed),
            (Some(TaskStatus::Running), TaskStatus::Retrying) => Some(Self::Retried),
            (_, TaskStatus::Failed) => Some(Self::Failed),
            (_, TaskStatus::Cancelled) => Some(Self::Cancelled),
            (_, TaskStatus::Forwarded) => Some(Self::Forwarded),
            _ => None,
        }
    }
}

/// The instruments of one task name in one queue, resolved once from the families: the
/// writer then counts with an atomic add, without hashing labels or allocating.
#[derive(Debug)]
pub(crate) struct TaskInstruments {
    queued: Counter,
    started: Counter,
    completed: Counter,
    retried: Counter,
    failed: Counter,
    cancelled: Counter,
    /// `fq_task_run_seconds{name}`.
    run: Histogram,
    /// `fq_task_start_latency_seconds{queue}`.
    latency: Histogram,
}

/// The writer's cache of [`TaskInstruments`] by queue, then task name (looked up by `&str`,
/// so a hit allocates nothing). It grows with the (queue, name) pairs seen, as the metric
/// families themselves do.
#[derive(Debug)]
pub(crate) struct InstrumentCache {
    metrics: Arc<Metrics>,
    by_queue: HashMap<String, HashMap<String, Arc<TaskInstruments>>>,
}

impl InstrumentCache {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            by_queue: HashMap::new(),
        }
    }

    fn get(&mut self, queue: &str, name: &str) -> Arc<TaskInstruments> {
        if let Some(found) = self.by_queue.get(queue).and_then(|names| names.get(name)) {
            return Arc::clone(found);
        }
        let m = &self.metrics;
        let labels = TaskLabels {
            queue: queue.to_owned(),
            name: name.to_owned(),
        };
        let instruments = Arc::new(TaskInstruments {
            queued: m.queued.get_or_create_owned(&labels),
            started: m.started.get_or_create_owned(&labels),
            completed: m.completed.get_or_create_owned(&labels),
            retried: m.retried.get_or_create_owned(&labels),
            failed: m.failed.get_or_create_owned(&labels),
            cancelled: m.cancelled.get_or_create_owned(&labels),
            run: m.run_seconds.get_or_create_owned(&NameLabels {
                name: name.to_owned(),
            }),
            latency: m.start_latency.get_or_create_owned(&QueueLabels {
                queue: queue.to_owned(),
            }),
        });
        self.by_queue
            .entry(labels.queue)
            .or_default()
            .insert(labels.name, Arc::clone(&instruments));
        instruments
    }
}

/// One committed move, kept by the writer until its commit succeeds.
#[derive(Debug)]
pub(crate) struct Observation {
    transition: Transition,
    instruments: Arc<TaskInstruments>,
    /// The start's wait since the task was due (`Started`), or the attempt's run time (the
    /// end of a run), in milliseconds.
    elapsed_ms: Option<Millis>,
}

impl Observation {
    /// The move of task `name` in `queue` from `previous` to `status` at `now`; `due_at` and
    /// `started_at` are the task's after the move. `None` when no metric counts it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of(
        previous: Option<TaskStatus>,
        status: TaskStatus,
        queue: &str,
        name: &str,
        due_at: Millis,
        started_at: Option<Millis>,
        now: Millis,
        cache: &mut InstrumentCache,
    ) -> Option<Self> {
        let transition = Transition::of(previous, status)?;
        let elapsed_ms = match transition {
            Transition::Started => Some(now.saturating_sub(due_at).max(0)),
            Transition::Completed | Transition::Retried | Transition::Failed
                if previous == Some(TaskStatus::Running) =>
            {
                started_at.map(|started| now.saturating_sub(started).max(0))
            }
            _ => None,
        };
        Some(Self {
            transition,
            instruments: cache.get(queue, name),
            elapsed_ms,
        })
    }
}

/// One engine's metrics: the instruments the writer feeds, in a registry of their own.
pub(crate) struct Metrics {
    registry: Registry,
    queued: Family<TaskLabels, Counter>,
    started: Family<TaskLabels, Counter>,
    completed: Family<TaskLabels, Counter>,
    retried: Family<TaskLabels, Counter>,
    failed: Family<TaskLabels, Counter>,
    cancelled: Family<TaskLabels, Counter>,
    run_seconds: HistogramFamily<NameLabels>,
    start_latency: HistogramFamily<QueueLabels>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    leases_expired: Counter,
    forwarded: Counter,
    /// Whether the RabbitMQ figures belong in the exposition (config `broker: rabbitmq`).
    rabbitmq: bool,
    /// Batches answered, and batches whose metrics are recorded: the writer records after it
    /// answers (so callers do not wait for the counters), and a scrape waits for the two to
    /// meet, so that what a caller saw acknowledged is counted in the next exposition.
    answered: AtomicU64,
    recorded: AtomicU64,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("rabbitmq", &self.rabbitmq)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of instruments (all at zero); with `rabbitmq`, the bridge's too.
    pub(crate) fn new(rabbitmq: bool) -> Arc<Self> {
        let mut registry = Registry::default();
        let metrics = Self {
            registry: Registry::default(),
            queued: Family::default(),
            started: Family::default(),
            completed: Family::default(),
            retried: Family::default(),
            failed: Family::default(),
            cancelled: Family::default(),
            run_seconds: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            start_latency: Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            batch_size: batch_histogram(),
            commit_seconds: commit_histogram(),
            leases_expired: Counter::default(),
            forwarded: Counter::default(),
            rabbitmq,
            answered: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        };
        // Registering clones the handles: the registry and the fields share the same values.
        let counters = [
            ("fq_tasks_queued", "Tasks queued", &metrics.queued),
            ("fq_tasks_started", "Attempts started", &metrics.started),
            ("fq_tasks_completed", "Tasks completed", &metrics.completed),
            (
                "fq_tasks_retried",
                "Failed attempts that will run again (status RETRYING)",
                &metrics.retried,
            ),
            (
                "fq_tasks_failed",
                "Tasks failed for good (retries spent, permanent error)",
                &metrics.failed,
            ),
            (
                "fq_tasks_cancelled",
                "Waiting tasks cancelled",
                &metrics.cancelled,
            ),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "fq_task_run_seconds",
            "Run time of an attempt, from its start to its settlement",
            metrics.run_seconds.clone(),
        );
        registry.register(
            "fq_task_start_latency_seconds",
            "Wait of an attempt from the moment it was due (queued, scheduled or retry time) to its start",
            metrics.start_latency.clone(),
        );
        registry.register(
            "fq_writer_batch_size",
            "Commands applied in one writer transaction",
            metrics.batch_size.clone(),
        );
        registry.register(
            "fq_writer_commit_seconds",
            "Duration of one durable writer transaction: applying its commands and the commit's fsync",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "fq_leases_expired",
            "Attempts whose lease ran out (their worker stopped renewing it)",
            metrics.leases_expired.clone(),
        );
        if rabbitmq {
            registry.register(
                "fq_rabbitmq_forwarded",
                "Tasks forwarded to RabbitMQ (publisher-confirmed)",
                metrics.forwarded.clone(),
            );
        }
        Arc::new(Self {
            registry,
            ..metrics
        })
    }

    /// Called by the writer right after a commit, before anything of the batch is visible
    /// (events, waiters, answers); it records the batch's metrics once it has answered
    /// ([`Metrics::committed`]).
    pub(crate) fn answering(&self) {
        self.answered.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits (briefly: the writer records right after answering) until every batch answered
    /// so far is recorded; gives up after [`CATCH_UP`] (a writer that died meanwhile).
    fn catch_up(&self) {
        let target = self.answered.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + CATCH_UP;
        while self.recorded.load(Ordering::SeqCst) < target && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    /// Records what one committed transaction did: its moves, how many commands it applied,
    /// and (for a durable commit) how long it took.
    pub(crate) fn committed(
        &self,
        observations: Vec<Observation>,
        commands: usize,
        durable_commit: Option<Duration>,
    ) {
        self.record(observations, commands, durable_commit);
        self.recorded.fetch_add(1, Ordering::SeqCst);
    }

    fn record(
        &self,
        observations: Vec<Observation>,
        commands: usize,
        durable_commit: Option<Duration>,
    ) {
        self.batch_size.observe(commands as f64);
        if let Some(took) = durable_commit {
            self.commit_seconds.observe(took.as_secs_f64());
        }
        for observation in observations {
            let instruments = &observation.instruments;
            let counter = match observation.transition {
                Transition::Queued => &instruments.queued,
                Transition::Started => &instruments.started,
                Transition::Completed => &instruments.completed,
                Transition::Retried => &instruments.retried,
                Transition::Failed => &instruments.failed,
                Transition::Cancelled => &instruments.cancelled,
                Transition::Forwarded => &self.forwarded,
            };
            counter.inc();
            let Some(ms) = observation.elapsed_ms else {
                continue;
            };
            let seconds = ms as f64 / 1000.0;
            if observation.transition == Transition::Started {
                instruments.latency.observe(seconds);
            } else {
                instruments.run.observe(seconds);
            }
        }
    }

    /// Counts `n` leases that ran out.
    pub(crate) fn leases_expired(&self, n: u64) {
        self.leases_expired.inc_by(n);
    }

    /// The text exposition: the recorded instruments, then the scrape-time figures from
    /// `stats` (queue depths by status; the RabbitMQ outbox and connection) and
    /// `events_dropped`.
    ///
    /// # Errors
    /// [`MetricsError::Encode`] when the encoder refuses a value.
    pub(crate) fn render(
        &self,
        stats: &Stats,
        events_dropped: u64,
    ) -> Result<String, MetricsError> {
        self.catch_up();
        let mut scrape = Registry::default();
        let depth: Family<DepthLabels, Gauge> = Family::default();
        let mut outbox = 0u64;
        for (queue, counts) in &stats.queues {
            let by_status = [
                ("pending", counts.pending),
                ("running", counts.running),
                ("retrying", counts.retrying),
                ("completed", counts.completed),
                ("failed", counts.failed),
                ("cancelled", counts.cancelled),
            ];
            for (status, count) in by_status {
                set(&depth, queue, status, count);
            }
            if self.rabbitmq {
                set(&depth, queue, "forwarded", counts.forwarded);
            }
            outbox = outbox.saturating_add(counts.ready.saturating_add(counts.scheduled));
        }
        scrape.register(
            "fq_queue_tasks",
            "Tasks in the store by queue and status (retained finished ones included)",
            depth,
        );
        scrape.register(
            "fq_events_dropped",
            "Lifecycle events dropped because listeners fell too far behind",
            ConstCounter::new(events_dropped),
        );
        if self.rabbitmq {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(outbox).unwrap_or(i64::MAX));
            scrape.register(
                "fq_rabbitmq_outbox_tasks",
                "Tasks waiting in the local store to be forwarded to RabbitMQ (due or not)",
                gauge,
            );
            let connected = stats.rabbitmq.as_ref().is_some_and(|r| r.connected);
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::from(connected));
            scrape.register(
                "fq_rabbitmq_connected",
                "1 while the engine is connected to RabbitMQ, else 0",
                gauge,
            );
        }
        let mut text = String::with_capacity(8 * 1024);
        let encode = |e: fmt::Error| MetricsError::Encode(e.to_string());
        encode_registry(&mut text, &self.registry).map_err(encode)?;
        encode_registry(&mut text, &scrape).map_err(encode)?;
        encode_eof(&mut text).map_err(encode)?;
        Ok(text)
    }
}

fn set(family: &Family<DepthLabels, Gauge>, queue: &str, status: &'static str, count: u64) {
    let labels = DepthLabels {
        queue: queue.to_owned(),
        status,
    };
    family
        .get_or_create(&labels)
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// The `/metrics` body of `engine` (the web dashboard serves it with [`CONTENT_TYPE`]); the
/// same as [`crate::Engine::metrics`].
///
/// # Errors
/// As [`crate::Engine::metrics`]: [`MetricsError::Disabled`] when metrics are turned off.
pub async fn render(engine: &crate::Engine) -> crate::Result<String> {
    engine.metrics().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which moves count, and as what: a release at shutdown or an operator's retry (FAILED
    /// back to PENDING) must count nothing, a lease expiry counts as a retry or a failure.
    #[test]
    fn transitions_count_the_moves_of_the_state_machine() {
        use TaskStatus::*;
        let cases = [
            (None, Pending, Some(Transition::Queued)),
            (Some(Pending), Running, Some(Transition::Started)),
            (Some(Retrying), Running, Some(Transition::Started)),
            (Some(Running), Completed, Some(Transition::Completed)),
            (Some(Running), Retrying, Some(Transition::Retried)),
            (Some(Running), Failed, Some(Transition::Failed)),
            (Some(Pending), Cancelled, Some(Transition::Cancelled)),
            (Some(Retrying), Cancelled, Some(Transition::Cancelled)),
            (Some(Pending), Forwarded, Some(Transition::Forwarded)),
            (Some(Running), Pending, None),
            (Some(Failed), Pending, None),
            (Some(Cancelled), Pending, None),
            (Some(Running), Running, None),
        ];
        for (previous, status, expected) in cases {
            assert_eq!(
                Transition::of(previous, status),
                expected,
                "{previous:?} -> {status:?}"
            );
        }
    }

    /// A start measures its wait from the due time; an attempt's end its run time; a cancel
    /// nothing.
    #[test]
    fn observations_measure_waits_and_runs() {
        let mut cache = InstrumentCache::new(Metrics::new(false));
        let (pending, running) = (Some(TaskStatus::Pending), Some(TaskStatus::Running));
        for (from, to, started, now, elapsed) in [
            (
                pending,
                TaskStatus::Running,
                Some(3_500),
                3_500,
                Some(2_500),
            ),
            (
                running,
                TaskStatus::Completed,
                Some(3_500),
                4_000,
                Some(500),
            ),
            (pending, TaskStatus::Cancelled, None, 4_000, None),
        ] {
            let observed = Observation::of(from, to, "q", "n", 1_000, started, now, &mut cache);
            assert_eq!(observed.map(|o| o.elapsed_ms), Some(elapsed), "{to:?}");
        }
    }
}
