//! [`RabbitBroker`]: the [`Broker`] of an engine with `broker: rabbitmq`. Starts the
//! [`Bridge`]'s background tasks (link, forwarder, report sender, lease sweeper), stops them
//! when dropped, and answers the trait from RabbitMQ or from the local store, the outbox and
//! the record of this process's runs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::RabbitError;
use super::bridge::{Bridge, RabbitSettings};
use super::consumer;
use super::forwarder;
use crate::broker::local::LocalBroker;
use crate::broker::{
    BoxFuture, Broker, Chained, Chaining, ClaimRequest, Claiming, CleanupReport, ListQuery,
    NewTask, RetentionPolicy, SettleReport, Settlement, Stats,
};
use crate::clock::Millis;
use crate::events::EventBus;
use crate::task::{TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

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
        let (reports, report_queue) = consumer::ReportsInFlight::new();
        let bridge = Arc::new(Bridge::new(local, settings, reports)?);
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

    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> Claiming<'a> {
        let (queues, max, wait, cancel) =
            (request.queues, request.max, request.wait, request.cancel);
        Box::pin(consumer::claim(&self.bridge, queues, max, wait, cancel))
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        Box::pin(consumer::settle(&self.bridge, settlement))
    }

    fn settle_and_claim<'a>(&'a self, ended: Settlement, next: ClaimRequest<'a>) -> Chaining<'a> {
        Box::pin(async move {
            let settled = consumer::settle(&self.bridge, ended).await;
            let claimed = consumer::claim_buffered(&self.bridge, next.queues, next.max);
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
            let mut queues = self.bridge.known_queues();
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
