//! The seam between workers/producers and a transport: the [`Broker`] trait, the requests that
//! cross it, and the queuing builder. `local` is the embedded redb engine (config value
//! `database`).

mod enqueue;
pub(crate) mod explain;
pub(crate) mod local;
pub(crate) mod rabbitmq;
pub(crate) mod workers;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub(crate) use enqueue::EnqueueDefaults;
pub use enqueue::{IntoDelay, QueueTask};
pub use explain::{EndReason, Explanation};
pub use rabbitmq::RabbitError;
pub use workers::{
    GoneReason, GoneWorker, LiveWorker, RunningAttempt, WORKER_HEARTBEAT_INTERVAL,
    WORKER_LOST_AFTER, WORKERS_GONE_KEPT, WorkerInfo, WorkersReport,
};

use crate::Result;
use crate::clock::Millis;
use crate::config::QueueLimits;
use crate::events::EventBus;
use crate::task::{AttemptRecord, Payload, TaskId, TaskRecord, TaskStatus, WorkerId};

/// A boxed, sendable future: what the object-safe [`Broker`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A task ready to be queued: checked, with every default resolved.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub(crate) id: TaskId,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) payload: Payload,
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry_delay: Option<Duration>,
    /// When it may first run; `None` means as soon as it is committed.
    pub(crate) run_at: Option<Millis>,
    /// Its unique key and period, checked (README "Unique tasks").
    pub(crate) unique: Option<crate::task::UniqueSpec>,
    /// The id was drawn for this value (`TaskId::new`) and the value was never cloned, so no
    /// stored task has it and the enqueue skips its lookup (which costs the writer about a
    /// tenth of its time per enqueued task). False for a remote client's own id, and for a
    /// clone and its original both (`FreshId`'s `Clone` clears both): a task
    /// sent twice is refused by name, as a caller's id in use is. Should a drawn id clash all
    /// the same, the store refuses the write (`StoreError::IdClash`).
    pub(crate) fresh_id: FreshId,
}

impl NewTask {
    /// No other value carries this task's id (see `fresh_id`).
    pub(crate) fn has_fresh_id(&self) -> bool {
        self.fresh_id.is_fresh()
    }
}

/// Whether a [`NewTask`]'s id was drawn for it and no other value carries it (see
/// `NewTask::fresh_id`). Cloning clears it on the clone and on the original alike: either may
/// be sent then, or both.
#[derive(Debug)]
pub(crate) struct FreshId(AtomicBool);

impl FreshId {
    pub(crate) fn is_fresh(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl From<bool> for FreshId {
    fn from(fresh: bool) -> Self {
        Self(AtomicBool::new(fresh))
    }
}

impl Clone for FreshId {
    fn clone(&self) -> Self {
        self.0.store(false, Ordering::Relaxed);
        Self(AtomicBool::new(false))
    }
}

impl NewTask {
    /// The id the task will have (unless it is a duplicate: see [`Queued`]).
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The unique key it is queued with, if any.
    pub fn unique_key(&self) -> Option<&str> {
        self.unique.as_ref().map(|spec| spec.key.as_str())
    }
}

/// What queuing one task did: the id of the task, and whether that task was already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Queued {
    /// The new task's id; for a duplicate, the id of the task holding the unique key.
    pub id: TaskId,
    /// True when a task holding the same unique key was already there: nothing was queued
    /// and no `task.queued` event was emitted.
    pub duplicate: bool,
}

impl Queued {
    /// A task that was queued.
    pub(crate) fn new(id: TaskId) -> Self {
        Self {
            id,
            duplicate: false,
        }
    }
}

pub use crate::task::Outcome;

/// The report of one attempt, fenced by its attempt number.
#[derive(Clone, Debug)]
pub struct Settlement {
    /// The task.
    pub id: TaskId,
    /// The attempt it was claimed under: the fencing token.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
}

/// What a settlement did.
#[derive(Clone, Debug)]
pub struct SettleReport {
    /// The task's status after it.
    pub status: TaskStatus,
    /// When the next attempt may start, for RETRYING.
    pub retry_at: Option<Millis>,
    /// The record after the change, when events are being listened to.
    pub record: Option<Arc<TaskRecord>>,
}

/// What [`Broker::settle_and_claim`] did: the settlement's result, and the tasks claimed in
/// the same commit.
#[derive(Debug)]
pub struct Chained {
    /// The settlement's result; a stale attempt is rejected here without failing the claim.
    pub settled: Result<SettleReport>,
    /// Tasks now RUNNING for the caller.
    pub claimed: Vec<TaskRecord>,
}

/// What a claim asks for: due tasks from `queues`, best first, at most `max`, waiting up to
/// `wait` for the first (returning early, possibly empty, when `cancel` fires).
#[derive(Clone, Copy, Debug)]
pub struct ClaimRequest<'a> {
    /// The queues to take from, in no order: priority and due time decide.
    pub queues: &'a [Arc<str>],
    /// How many tasks at most.
    pub max: usize,
    /// How long to wait for a first task; zero takes what is due now.
    pub wait: Duration,
    /// Ends the wait early.
    pub cancel: &'a CancellationToken,
}

impl<'a> ClaimRequest<'a> {
    /// A request for up to `max` tasks from `queues`, waiting up to `wait` unless `cancel` fires.
    pub fn new(
        queues: &'a [Arc<str>],
        max: usize,
        wait: Duration,
        cancel: &'a CancellationToken,
    ) -> Self {
        ClaimRequest {
            queues,
            max,
            wait,
            cancel,
        }
    }

    /// A request for up to `max` tasks due now: no wait, nothing to cancel it.
    pub fn now(queues: &'a [Arc<str>], max: usize) -> Self {
        static NEVER: std::sync::LazyLock<CancellationToken> =
            std::sync::LazyLock::new(CancellationToken::new);
        ClaimRequest::new(queues, max, Duration::ZERO, &NEVER)
    }
}

/// The future of [`Broker::claim`]: the claimed tasks.
pub type Claiming<'a> = BoxFuture<'a, Result<Vec<TaskRecord>>>;

/// The future of [`Broker::settle_and_claim`].
pub type Chaining<'a> = BoxFuture<'a, Result<Chained>>;

/// How long finished tasks are kept (DESIGN §2 "Retention").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// COMPLETED tasks older than this are deleted (default 1 day).
    pub completed: Duration,
    /// FAILED and CANCELLED tasks older than this are deleted (default 7 days).
    pub failed: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            completed: Duration::from_secs(86_400),
            failed: Duration::from_secs(7 * 86_400),
        }
    }
}

/// What a cleanup deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// COMPLETED tasks deleted.
    pub completed: u64,
    /// FAILED tasks deleted.
    pub failed: u64,
    /// CANCELLED tasks deleted.
    pub cancelled: u64,
}

/// Which tasks `list` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this status.
    pub status: Option<TaskStatus>,
    /// At most this many (0 means the default, 100).
    pub limit: usize,
    /// Only tasks created after this one (ids sort by creation): the previous page's last id.
    pub after: Option<TaskId>,
    /// Only tasks queued with this unique key (holding it or not).
    pub unique_key: Option<String>,
}

/// Counts of one queue's tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// PENDING or RETRYING tasks whose time has come: what workers would run now.
    pub ready: u64,
    /// PENDING or RETRYING tasks waiting for their scheduled or retry time.
    pub scheduled: u64,
    /// PENDING tasks (due or not).
    pub pending: u64,
    /// RUNNING tasks.
    pub running: u64,
    /// RETRYING tasks (due or not).
    pub retrying: u64,
    /// COMPLETED tasks still retained.
    pub completed: u64,
    /// FAILED tasks still retained.
    pub failed: u64,
    /// CANCELLED tasks still retained.
    pub cancelled: u64,
    /// FORWARDED tasks still retained: handed to RabbitMQ (config `broker: rabbitmq`).
    #[serde(default)]
    pub forwarded: u64,
    /// How long the longest-waiting ready task has been due, in milliseconds.
    pub oldest_ready_ms: Option<u64>,
    /// Tasks completed by this engine in the last 60 seconds.
    pub completed_last_minute: u64,
    /// True when the queue is paused: its tasks wait, none is started.
    #[serde(default)]
    pub paused: bool,
    /// The queue's concurrency and rate limits (applied by the engine that owns the store).
    #[serde(default, skip_serializing_if = "QueueLimits::is_unlimited")]
    pub limits: QueueLimits,
}

impl QueueStats {
    /// Every task of the queue, whatever its status.
    pub fn total(&self) -> u64 {
        self.pending
            + self.running
            + self.retrying
            + self.completed
            + self.failed
            + self.cancelled
            + self.forwarded
    }
}

/// Per-queue counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Stats {
    /// Counts by queue name.
    pub queues: std::collections::BTreeMap<String, QueueStats>,
    /// RabbitMQ's own view, for an engine with `broker: rabbitmq`: beside the local store
    /// (the outbox, and the runs this engine's workers made) it shows what waits in RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<RabbitStats>,
    /// Why the engine refuses writes right now (a commit failed; it retries its store by
    /// itself), or `None` when it accepts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_refused: Option<String>,
}

/// RabbitMQ's queue depths and consumers, as `fq stats` shows them in rabbitmq mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RabbitStats {
    /// Where the engine connects, without the password.
    pub endpoint: String,
    /// Whether the engine is connected right now.
    pub connected: bool,
    /// Why the numbers are missing or incomplete (not connected, a failed query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per fq queue: RabbitMQ's counts of `<queue>` and `<queue>.dead`.
    pub queues: std::collections::BTreeMap<String, RabbitQueueStats>,
}

/// RabbitMQ's counts for one fq queue; `None` when the queue does not exist in RabbitMQ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RabbitQueueStats {
    /// Messages ready in `<queue>` (not counting those delivered and not yet acknowledged).
    pub messages: Option<u64>,
    /// Consumers of `<queue>`.
    pub consumers: Option<u64>,
    /// Messages in `<queue>.dead`.
    pub dead: Option<u64>,
}

impl Stats {
    /// Every task in the store.
    pub fn total(&self) -> u64 {
        self.queues.values().map(QueueStats::total).sum()
    }
}

/// A transport that queues, hands out and settles tasks. Object-safe, so workers can run over
/// the embedded engine, a remote one or RabbitMQ alike.
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// True when the broker emits the lifecycle events of the moves it commits (queued,
    /// started, finished, retrying, failed, cancelled) on [`Broker::events`], each after the
    /// commit that made it true. A worker over a broker that does not (a remote engine, whose
    /// events happen in its own process) emits them itself from the answers it gets.
    fn emits_events(&self) -> bool {
        false
    }

    /// Commits new tasks durably and returns, for each in order, its id, or for a task whose
    /// unique key is held (by a task already there or an earlier one of the same call), the
    /// holder's id marked as a duplicate. The key checks and the inserts are one commit.
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Queued>>>;

    /// Claims what `request` asks for. Each claimed task is RUNNING under a lease, with its
    /// attempt counted, before this returns.
    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> Claiming<'a>;

    /// Records how an attempt ended. A settlement under a stale attempt is rejected with
    /// [`crate::Error::StaleAttempt`].
    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>>;

    /// Settles an attempt and, in the same commit, claims what `next` asks for without waiting
    /// (its `wait` is not used), so that a worker slot goes from one task to the next with one
    /// commit. The default settles and claims nothing.
    fn settle_and_claim<'a>(&'a self, ended: Settlement, next: ClaimRequest<'a>) -> Chaining<'a> {
        let _ = next;
        Box::pin(async move {
            Ok(Chained {
                settled: self.settle(ended).await,
                claimed: Vec::new(),
            })
        })
    }

    /// Extends the lease of a running attempt.
    fn heartbeat(&self, id: TaskId, attempt: u32) -> BoxFuture<'_, Result<()>>;

    /// The task's record.
    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>>;

    /// The task's record once it is COMPLETED, FAILED or CANCELLED (at once when it already
    /// is), woken by the commit that settles it, never by polling. A retry in between is not
    /// an outcome: the wait goes on.
    ///
    /// # Errors
    /// [`crate::Error::WaitTimeout`] when `timeout` passes first (the task is left alone);
    /// [`crate::Error::NotFound`] for an unknown task, or one deleted while waited for.
    fn wait(&self, id: TaskId, timeout: Duration) -> BoxFuture<'_, Result<TaskRecord>>;

    /// Pauses (`paused`) or resumes `queue`, durably: no task of a paused queue is claimed
    /// (running ones finish; queuing into it goes on). Returns true when that changed it.
    fn set_paused(&self, queue: String, paused: bool) -> BoxFuture<'_, Result<bool>>;

    /// Creates or replaces (by name) a recurring schedule queuing `task` at each of its fire
    /// times, each exactly once; a changed spec or zone takes effect at once.
    fn upsert_schedule(
        &self,
        schedule: crate::Schedule,
        task: NewTask,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>>;

    /// Every schedule, by name.
    fn schedules(&self) -> BoxFuture<'_, Result<Vec<crate::ScheduleInfo>>>;

    /// Pauses, resumes, triggers or removes the schedule `name`; returns it as it is after
    /// (as it was, for a removal).
    fn act_on_schedule(
        &self,
        name: String,
        action: crate::ScheduleAction,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>>;
    /// Sets `queue`'s concurrency and rate limits (both `None` removes them), for every claim
    /// of the store from now on, until the engine closes.
    fn set_limits(&self, queue: String, limits: QueueLimits) -> BoxFuture<'_, Result<()>>;

    /// Cancels a PENDING or RETRYING task; `by` says who does (kept in the record).
    fn cancel(&self, id: TaskId, by: String) -> BoxFuture<'_, Result<TaskRecord>>;

    /// Deletes finished tasks past their retention.
    fn cleanup(&self, policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>>;

    /// Tasks matching `query`, oldest first.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>>;

    /// Puts a FAILED or CANCELLED task back to PENDING with a fresh retry budget.
    fn retry(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>>;

    /// Retries every FAILED task (of `queue`, if given); returns how many.
    fn retry_failed(&self, queue: Option<String>) -> BoxFuture<'_, Result<u64>>;

    /// Deletes the tasks of `queue` (in `status`, if given), except RUNNING ones; returns how
    /// many.
    fn purge(&self, queue: String, status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>>;

    /// Per-queue counts.
    fn stats(&self) -> BoxFuture<'_, Result<Stats>>;

    /// The Prometheus exposition of the engine behind this broker, for a broker that reaches
    /// another process's engine (the control socket); an engine that owns its store renders
    /// its own (`Engine::metrics`), so the default refuses.
    fn metrics(&self) -> BoxFuture<'_, Result<String>> {
        Box::pin(async { Err(crate::metrics::MetricsError::Disabled.into()) })
    }

    /// The lifecycle event bus.
    fn events(&self) -> &EventBus;

    /// The broker's current time, in milliseconds since the epoch.
    fn now_ms(&self) -> Millis;

    /// The largest payload accepted, in bytes.
    fn max_payload_bytes(&self) -> usize;

    /// Task `id`'s attempt history, oldest first (README "Attempt history"). The default,
    /// for a broker that keeps none, is empty.
    fn attempts(&self, id: TaskId) -> BoxFuture<'_, Result<Vec<AttemptRecord>>> {
        let _ = id;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Where task `id` stands and what it waits for (`fq why`).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown task; [`crate::Error::Internal`] for a
    /// broker that cannot tell (the default).
    fn explain(&self, id: TaskId) -> BoxFuture<'_, Result<Explanation>> {
        let _ = id;
        Box::pin(async {
            Err(crate::Error::Internal(
                "explaining a task (fq why) needs the engine that owns the store".into(),
            ))
        })
    }

    /// A worker starts: the engine that owns the store lists it as live (README "Live
    /// workers"). The default ignores it.
    fn announce_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>> {
        let _ = info;
        Box::pin(async { Ok(()) })
    }

    /// A worker's periodic heartbeat, with the attempts it runs. False when the owner does
    /// not know the worker (it restarted, or found the worker lost): announce it again.
    fn worker_heartbeat(
        &self,
        worker: WorkerId,
        running: Vec<(TaskId, u32)>,
    ) -> BoxFuture<'_, Result<bool>> {
        let _ = (worker, running);
        Box::pin(async { Ok(true) })
    }

    /// A worker stops.
    fn worker_stopped(&self, worker: WorkerId) -> BoxFuture<'_, Result<()>> {
        let _ = worker;
        Box::pin(async { Ok(()) })
    }

    /// Worker `worker` claimed these attempts: each one's history names it. Called right
    /// after the claim, before the attempts are settled; costs no I/O (a remote broker
    /// sends it with each settlement).
    fn worker_claimed(&self, worker: WorkerId, attempts: &[(TaskId, u32)]) {
        let _ = (worker, attempts);
    }

    /// The live workers, and those gone in the last hour. The default knows none.
    fn workers(&self) -> BoxFuture<'_, Result<WorkersReport>> {
        Box::pin(async { Ok(WorkersReport::default()) })
    }
}

/// A claim's wait for its next look: true when `woken` fires (new work may be there), false
/// when the claim should give up empty-handed (its deadline passed, or it was cancelled).
/// (The embedded broker's claims wait for hand-offs too: `local::api`.)
#[cfg(feature = "rabbitmq")]
pub(crate) async fn wait_for_work(
    woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> bool {
    if cancel.is_cancelled() {
        return false;
    }
    tokio::select! {
        () = woken => true,
        () = tokio::time::sleep_until(deadline) => false,
        () = cancel.cancelled() => false,
    }
}
