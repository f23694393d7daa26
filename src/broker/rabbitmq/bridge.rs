//! [`RabbitBroker`]: the [`Broker`] of an engine with `broker: rabbitmq`. The local store is
//! the durable outbox and the record of this process's runs; RabbitMQ carries the tasks
//! between processes. Holds the state the link, the forwarder and the consumers share.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::RabbitError;
use super::consumer::{self, Consumers};
use super::forwarder;
use super::link::{Link, Session, Target};
use super::message::DecodeDefaults;
use super::stats::{count_within, empty_stats};
use crate::broker::local::LocalBroker;
use crate::broker::{
    BoxFuture, Broker, Chained, CleanupReport, ListQuery, NewTask, RabbitStats, RetentionPolicy,
    SettleReport, Settlement, Stats,
};
use crate::clock::Millis;
use crate::config::Config;
use crate::events::EventBus;
use crate::queue::ReadyTask;
use crate::task::{TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// The outbox bound when `limits.max_pending` is not set: enough for a long outage, small
/// enough that a broken setup fails loudly instead of filling the disk.
pub(crate) const DEFAULT_OUTBOX_LIMIT: u64 = 1_000_000;
/// How often tasks held back by a topology conflict are tried again.
const UNPARK_EVERY: Duration = Duration::from_secs(30);
/// How long `stats` waits for the first connection attempt of a bridge that just started
/// (a short-lived `fq stats` opens the engine right before asking).
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long dropping the broker waits for the connection to close cleanly (after the
/// forwarder's last confirms).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a stopping bridge waits for the confirms of outcome reports in flight (within
/// [`CLOSE_WAIT`]); unconfirmed ones are sent at the next open.
const REPORTS_STOP_WAIT: Duration = Duration::from_secs(3);

/// Set when the link task has ended (closed its connection), even when the runtime drops it.
#[derive(Debug, Default)]
pub(crate) struct Closed {
    done: Mutex<bool>,
    signal: std::sync::Condvar,
}

impl Closed {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .signal
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Signals [`Closed`] when the link task ends or is dropped.
struct ClosedOnDrop(Arc<Closed>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// The bridge's settings, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct RabbitSettings {
    pub(crate) target: Target,
    /// Unacknowledged deliveries per worker: `rabbitmq.prefetch`, else `worker.concurrency`.
    pub(crate) prefetch: u16,
    /// How long a delivery may go without a heartbeat before it counts as a failed attempt.
    pub(crate) lease: Duration,
    pub(crate) decode: DecodeDefaults,
    pub(crate) outbox_limit: u64,
}

impl RabbitSettings {
    /// The settings a configuration asks for.
    pub(crate) fn from_config(config: &Config, lease: Duration) -> Result<Self, RabbitError> {
        let target = Target::parse(&config.rabbitmq.amqp_url())?;
        let prefetch = config
            .rabbitmq
            .prefetch
            .unwrap_or_else(|| u16::try_from(config.worker.concurrency).unwrap_or(u16::MAX));
        Ok(Self {
            target,
            prefetch: prefetch.max(1),
            lease,
            decode: DecodeDefaults {
                max_retries: config.defaults.max_retries,
                timeout: config.defaults.timeout,
                max_payload_bytes: config.limits.max_payload_bytes,
            },
            outbox_limit: config.limits.max_pending.unwrap_or(DEFAULT_OUTBOX_LIMIT),
        })
    }
}

/// A topology conflict, kept to refuse work for its queue with the same clear error.
#[derive(Debug, Clone)]
enum Conflict {
    Topology {
        object: String,
        expected: String,
        detail: String,
    },
    Name {
        queue: String,
        reason: String,
    },
}

impl Conflict {
    fn error(&self) -> RabbitError {
        match self.clone() {
            Conflict::Topology {
                object,
                expected,
                detail,
            } => RabbitError::TopologyConflict {
                object,
                expected,
                detail,
            },
            Conflict::Name { queue, reason } => RabbitError::QueueName { queue, reason },
        }
    }
}

#[derive(Debug)]
struct Parked {
    tasks: Vec<ReadyTask>,
    since: Instant,
}

/// What the link, the forwarder, the consumers and the broker handle share.
pub(crate) struct Bridge {
    pub(crate) settings: RabbitSettings,
    pub(crate) local: Arc<LocalBroker>,
    pub(crate) link: Arc<Link>,
    pub(crate) consumers: Consumers,
    /// Fires when the broker handle is dropped: every background task stops.
    pub(crate) shutdown: CancellationToken,
    /// Fires when the forwarder has stopped (its last confirms marked).
    pub(crate) forwarder_done: CancellationToken,
    /// Set when the connection is closed for good.
    closed: Arc<Closed>,
    /// Every queue this engine has used: declared on each new connection, shown by stats.
    known: Mutex<BTreeSet<String>>,
    conflicts: Mutex<HashMap<String, Conflict>>,
    /// Due tasks of conflicting queues, held off the heap so they are not retried in a loop.
    parked: Mutex<Parked>,
    /// This store's reply queue (`fq.replies.<store id>`): every forwarded message names it
    /// as `reply_to`, and the producer consumes it (`replies`).
    pub(crate) reply_queue: String,
    /// The reply queues this process's workers have declared on the current connection.
    pub(crate) reply_queues: super::report::Declared,
    /// Held by the reply consumer while it runs: a stopping link waits for it (the consumer
    /// closes its channel first), so that no channel is left closing under the connection's
    /// own close (lapin then logs errors, and a one-shot command prints them).
    pub(crate) replies_running: tokio::sync::Mutex<()>,
    /// Outcome reports of this process's workers waiting for RabbitMQ's confirm.
    pub(crate) reports: consumer::ReportsInFlight,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("endpoint", &self.settings.target.endpoint)
            .field("connected", &self.link.current().is_some())
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    pub(crate) fn lease_ms(&self) -> Millis {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn remember_queues(&self, queues: impl IntoIterator<Item = String>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in queues {
            if !known.contains(&queue) {
                known.insert(queue);
            }
        }
    }

    /// Remembers a conflict found for `queue` (other errors are not conflicts).
    pub(crate) fn note_conflict_for(&self, queue: &str, error: &RabbitError) {
        let conflict = match error {
            RabbitError::TopologyConflict {
                object,
                expected,
                detail,
            } => Conflict::Topology {
                object: object.clone(),
                expected: expected.clone(),
                detail: detail.clone(),
            },
            RabbitError::QueueName { queue, reason } => Conflict::Name {
                queue: queue.clone(),
                reason: reason.clone(),
            },
            _ => return,
        };
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned(), conflict);
    }

    /// The conflict known for `queue`, as an error.
    pub(crate) fn check_queue(&self, queue: &str) -> Result<(), RabbitError> {
        match self
            .conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
        {
            Some(conflict) => Err(conflict.error()),
            None => Ok(()),
        }
    }

    pub(crate) fn is_parked_queue(&self, queue: &str) -> bool {
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(queue)
    }

    pub(crate) fn park(&self, task: ReadyTask) {
        self.local.hold_back(vec![task.clone()]);
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tasks
            .push(task);
    }

    fn unpark(&self) {
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let tasks = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            parked.since = Instant::now();
            std::mem::take(&mut parked.tasks)
        };
        if !tasks.is_empty() {
            self.local.put_back(tasks);
        }
    }

    /// Every [`UNPARK_EVERY`], forgets conflicts and retries the tasks held back by them.
    pub(crate) fn unpark_if_due(&self) {
        let due = {
            let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            parked.since.elapsed() >= UNPARK_EVERY
        };
        let any = !self
            .conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if due && any {
            self.unpark();
        }
    }

    /// A new connection: retry what conflicts held back, declare every known queue, start
    /// every worker's consumers.
    async fn on_session(self: &Arc<Self>, session: Arc<Session>) {
        tokio::spawn(super::replies::run(Arc::clone(self), Arc::clone(&session)));
        self.unpark();
        let known: Vec<String> = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for queue in known {
            if let Err(error) = session.ensure_queue(&queue).await {
                tracing::error!(%error, "cannot declare a queue in RabbitMQ");
                self.note_conflict_for(&queue, &error);
            }
        }
        for set in self.consumers.all_sets() {
            if let Err(error) = consumer::start_set(self, &session, &set).await {
                tracing::error!(%error, "cannot start consuming from RabbitMQ");
            }
        }
        // Reports a crash or the lost connection left unconfirmed.
        consumer::resend(self).await;
    }

    async fn rabbit_stats(&self, queues: BTreeSet<String>) -> RabbitStats {
        let mut stats = empty_stats(&self.settings.target, &queues);
        let Some(session) = self.link.current() else {
            stats.error = Some(self.link.describe());
            return stats;
        };
        stats.connected = true;
        count_within(&session, &queues, &mut stats, |queue, error| {
            self.note_conflict_for(queue, error);
        })
        .await;
        stats
    }
}

/// The broker of an engine with `broker: rabbitmq`.
pub(crate) struct RabbitBroker {
    bridge: Arc<Bridge>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("bridge", &self.bridge)
            .field("outbox", &self.bridge.local)
            .finish()
    }
}

impl RabbitBroker {
    /// Starts the bridge over an open local store: the connection (made in the background,
    /// so enqueues succeed while RabbitMQ is down), the forwarder and the lease sweeper.
    pub(crate) fn start(local: Arc<LocalBroker>, settings: RabbitSettings) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RabbitError::NoRuntime)?;
        let reply_queue = super::report::reply_queue(&local.store_id()?);
        let now = local.clock().now_ms();
        let link = Arc::new(Link::new(settings.target.clone(), now));
        let (reports, report_queue) = consumer::ReportsInFlight::new();
        let bridge = Arc::new(Bridge {
            settings,
            local,
            link,
            consumers: Consumers::default(),
            shutdown: CancellationToken::new(),
            forwarder_done: CancellationToken::new(),
            closed: Arc::new(Closed::default()),
            // Only queues a task of this engine uses are declared (issue 11 #10): those it
            // queues to and those its workers claim from, as they first do.
            known: Mutex::new(BTreeSet::new()),
            conflicts: Mutex::new(HashMap::new()),
            parked: Mutex::new(Parked {
                tasks: Vec::new(),
                since: Instant::now(),
            }),
            reply_queue,
            reply_queues: super::report::Declared::default(),
            replies_running: tokio::sync::Mutex::new(()),
            reports,
        });
        let for_link = Arc::clone(&bridge);
        runtime.spawn(async move {
            let _closed = ClosedOnDrop(Arc::clone(&for_link.closed));
            let link = Arc::clone(&for_link.link);
            let clock = Arc::clone(for_link.local.clock());
            let hooks = Arc::clone(&for_link);
            // The link closes the connection once the forwarder has its last confirms, the
            // reply consumer has closed its channel and the outcome reports in flight have
            // their confirms (those that do not stay in the outbox for the next open).
            let drained = CancellationToken::new();
            let waiting = Arc::clone(&for_link);
            let ready = drained.clone();
            tokio::spawn(async move {
                waiting.forwarder_done.cancelled().await;
                let _stopped = waiting.replies_running.lock().await;
                waiting.reports.drained(REPORTS_STOP_WAIT).await;
                ready.cancel();
            });
            link.run(
                for_link.shutdown.clone(),
                drained,
                move || clock.now_ms(),
                move |session| {
                    let bridge = Arc::clone(&hooks);
                    async move { bridge.on_session(session).await }
                },
            )
            .await;
        });
        runtime.spawn(forwarder::run(Arc::clone(&bridge)));
        runtime.spawn(consumer::run_sender(Arc::downgrade(&bridge), report_queue));
        let for_sweep = Arc::clone(&bridge);
        runtime.spawn(async move {
            let mut last_resend = Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = for_sweep.shutdown.cancelled() => break,
                }
                consumer::sweep(&for_sweep).await;
                consumer::stop_idle_sets(&for_sweep).await;
                if last_resend.elapsed() >= consumer::RESEND_EVERY {
                    last_resend = Instant::now();
                    consumer::resend(&for_sweep).await;
                }
            }
        });
        tracing::info!(endpoint = %bridge.settings.target.endpoint, "RabbitMQ bridge started");
        Ok(Self { bridge })
    }

    /// Waits up to `timeout` for the connection; the error is why it is not there.
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<(), RabbitError> {
        self.bridge.link.ready(timeout).await
    }
}

impl Drop for RabbitBroker {
    /// Stops the bridge. On a multi-threaded runtime it also waits (up to 5 s) for the
    /// forwarder's last confirms and a clean close of the connection, so that RabbitMQ
    /// requeues this process's unacknowledged deliveries at once and a short-lived process
    /// (the CLI) leaves nothing half-done. A current-thread runtime cannot run the closing
    /// while this waits, so there the bridge closes in the background.
    fn drop(&mut self) {
        self.bridge.shutdown.cancel();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let closed = Arc::clone(&self.bridge.closed);
        tokio::task::block_in_place(move || closed.wait(CLOSE_WAIT));
    }
}

impl Broker for RabbitBroker {
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<crate::broker::Queued>>> {
        Box::pin(async move {
            for task in &tasks {
                self.bridge.check_queue(&task.queue)?;
            }
            self.bridge
                .remember_queues(tasks.iter().map(|t| t.queue.clone()));
            match self.bridge.local.enqueue(tasks).await {
                Err(Error::QueueFull { limit }) => Err(RabbitError::OutboxFull {
                    limit,
                    state: self.bridge.link.describe(),
                }
                .into()),
                other => other,
            }
        })
    }

    fn claim<'a>(
        &'a self,
        queues: &'a [Arc<str>],
        max: usize,
        wait: Duration,
        cancel: &'a tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<TaskRecord>>> {
        Box::pin(consumer::claim(&self.bridge, queues, max, wait, cancel))
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        Box::pin(consumer::settle(&self.bridge, settlement))
    }

    fn settle_and_claim<'a>(
        &'a self,
        settlement: Settlement,
        queues: &'a [Arc<str>],
        max: usize,
    ) -> BoxFuture<'a, Result<Chained>> {
        Box::pin(async move {
            let settled = consumer::settle(&self.bridge, settlement).await;
            let claimed = consumer::claim_buffered(&self.bridge, queues, max);
            Ok(Chained { settled, claimed })
        })
    }

    fn heartbeat(&self, id: TaskId, attempt: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { consumer::heartbeat(&self.bridge, id, attempt) })
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        self.bridge.local.task(id)
    }

    fn wait(&self, id: TaskId, timeout: Duration) -> BoxFuture<'_, Result<TaskRecord>> {
        self.bridge.local.wait(id, timeout)
    }

    fn set_paused(&self, queue: String, paused: bool) -> BoxFuture<'_, Result<bool>> {
        self.bridge.local.set_paused(queue, paused)
    }

    /// Schedules live in the local store, which is the outbox: each fire time's task is
    /// queued there and forwarded like any other.
    fn upsert_schedule(
        &self,
        schedule: crate::Schedule,
        task: NewTask,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(self.bridge.local.put_schedule(schedule, task))
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<crate::ScheduleInfo>>> {
        Box::pin(self.bridge.local.schedule_list())
    }

    fn act_on_schedule(
        &self,
        name: String,
        action: crate::ScheduleAction,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(self.bridge.local.schedule_action(name, action))
    }

    /// Refused (but removing limits is fine): limits hold back local claims, and nothing
    /// claims locally in RabbitMQ mode (consumers are bounded by `rabbitmq.prefetch`).
    fn set_limits(
        &self,
        queue: String,
        limits: crate::config::QueueLimits,
    ) -> BoxFuture<'_, Result<()>> {
        if limits.is_unlimited() {
            return self.bridge.local.set_limits(queue, limits);
        }
        Box::pin(async move {
            Err(Error::invalid(
                "limits",
                format!("queue {queue}: {}", crate::config::RABBITMQ_LIMITS),
            ))
        })
    }

    fn cancel(&self, id: TaskId, by: String) -> BoxFuture<'_, Result<TaskRecord>> {
        self.bridge.local.cancel(id, by)
    }

    fn cleanup(&self, policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>> {
        self.bridge.local.cleanup(policy)
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>> {
        self.bridge.local.list(query)
    }

    fn retry(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        self.bridge.local.retry(id)
    }

    fn retry_failed(&self, queue: Option<String>) -> BoxFuture<'_, Result<u64>> {
        self.bridge.local.retry_failed(queue)
    }

    fn purge(&self, queue: String, status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>> {
        self.bridge.local.purge(queue, status)
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        Box::pin(async move {
            if self.bridge.link.current().is_none() && !self.bridge.link.has_tried() {
                let _ = self.bridge.link.ready(FIRST_CONNECT_WAIT).await;
            }
            let mut stats = self.bridge.local.stats().await?;
            let mut queues: BTreeSet<String> = self
                .bridge
                .known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            queues.extend(stats.queues.keys().cloned());
            stats.rabbitmq = Some(self.bridge.rabbit_stats(queues).await);
            Ok(stats)
        })
    }

    /// Starts are emitted as deliveries are handed to workers, ends by the local writer that
    /// records each run.
    fn emits_events(&self) -> bool {
        true
    }

    fn events(&self) -> &EventBus {
        self.bridge.local.events()
    }

    fn now_ms(&self) -> Millis {
        self.bridge.local.now_ms()
    }

    fn max_payload_bytes(&self) -> usize {
        self.bridge.local.max_payload_bytes()
    }

    // The local store keeps the runs this engine's workers made, and its workers are listed
    // by the local engine: the bridge answers from there.
    fn attempts(&self, id: TaskId) -> BoxFuture<'_, Result<Vec<crate::AttemptRecord>>> {
        self.bridge.local.attempts(id)
    }

    fn explain(&self, id: TaskId) -> BoxFuture<'_, Result<crate::Explanation>> {
        self.bridge.local.explain(id)
    }

    fn announce_worker(&self, info: crate::WorkerInfo) -> BoxFuture<'_, Result<()>> {
        self.bridge.local.announce_worker(info)
    }

    fn worker_heartbeat(
        &self,
        worker: crate::WorkerId,
        running: Vec<(TaskId, u32)>,
    ) -> BoxFuture<'_, Result<bool>> {
        self.bridge.local.worker_heartbeat(worker, running)
    }

    fn worker_stopped(&self, worker: crate::WorkerId) -> BoxFuture<'_, Result<()>> {
        self.bridge.local.worker_stopped(worker)
    }

    fn worker_claimed(&self, worker: crate::WorkerId, attempts: &[(TaskId, u32)]) {
        self.bridge.local.worker_claimed(worker, attempts);
    }

    fn workers(&self) -> BoxFuture<'_, Result<crate::WorkersReport>> {
        self.bridge.local.workers()
    }
}
