//! The composition root: [`Engine`] opens the store through the embedded broker, wires events,
//! clock and configuration together, and hands out the queuing API and workers.

mod builder;
mod observe;
mod schedules;

pub use builder::EngineBuilder;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::broker::local::{LocalBroker, LocalSettings, ReadOnlyBroker, RecoveryReport};
#[cfg(feature = "rabbitmq")]
use crate::broker::rabbitmq::{RabbitBroker, RabbitSettings};
use crate::broker::{
    Broker, CleanupReport, EnqueueDefaults, ListQuery, QueueTask, Queued, RetentionPolicy, Stats,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerKind, Config};
use crate::control::{ConnectOptions, ControlServer, RemoteBroker, ServerSettings};
use crate::events::EventBus;
use crate::handler::{Registry, Task, TaskQueue, queue_typed};
use crate::metrics::Metrics;
use crate::store::CustomBackend;
use crate::store::StoreOptions;
use crate::task::{RetryPolicy, TaskId, TaskRecord, TaskStatus};
use crate::worker::WorkerManager;
use crate::{Error, Result};

/// How long a claimed attempt stays leased without a heartbeat.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How often workers renew their leases when the lease leaves room for it (as the worker's own
/// default).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

struct EngineInner {
    /// The control server, first so that it drops first: it holds the broker until its thread
    /// has stopped, and the store closes only after that.
    control: Option<ControlServer>,
    broker: Arc<dyn Broker>,
    /// The embedded broker, when this engine owns the store (not for `Engine::connect`).
    local: Option<Arc<LocalBroker>>,
    /// The RabbitMQ bridge, when the configuration says `broker: rabbitmq`.
    #[cfg(feature = "rabbitmq")]
    rabbit: Option<Arc<RabbitBroker>>,
    config: Config,
    defaults: EnqueueDefaults,
    events: EventBus,
    /// How long a claimed attempt stays leased (the serving engine's, when connected): workers
    /// heartbeat well within it.
    lease: Duration,
    /// Where [`Engine::metrics`] gets its exposition.
    metrics: MetricsSource,
}

/// Where an engine's metrics live.
#[derive(Debug)]
pub(crate) enum MetricsSource {
    /// This process records them (an owning engine, or one reading a store directly, which
    /// has only the scrape-time figures to show).
    Local(Arc<Metrics>),
    /// Turned off (`metrics.enabled = false`).
    Off,
    /// The serving engine's, asked over the control socket.
    Remote,
}

impl MetricsSource {
    /// Fresh metrics when `config` turns them on.
    pub(crate) fn of(config: &Config) -> Self {
        if config.metrics.enabled {
            Self::Local(Metrics::new(config.broker == BrokerKind::Rabbitmq))
        } else {
            Self::Off
        }
    }

    /// The instruments, when this process records them.
    pub(crate) fn local(&self) -> Option<&Arc<Metrics>> {
        match self {
            Self::Local(metrics) => Some(metrics),
            Self::Off | Self::Remote => None,
        }
    }
}

/// A handle to an open fq engine: cheap to clone, shared by producers and workers. The store
/// closes when the last handle (and the last worker) is gone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("broker", &self.inner.broker)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (or creates) the store at `path` with default settings.
    ///
    /// # Errors
    /// As [`EngineBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine> {
        Self::builder(path).open()
    }

    /// Options for opening the store at `path`.
    pub fn builder(path: impl AsRef<Path>) -> EngineBuilder {
        EngineBuilder {
            path: path.as_ref().to_path_buf(),
            config: Config::default(),
            clock: Arc::new(SystemClock),
            store: StoreOptions::default(),
            lease: DEFAULT_LEASE,
            control: true,
            read_only: false,
            self_heal: true,
        }
    }

    /// Opens the engine a configuration describes (its `database` path and settings).
    ///
    /// # Errors
    /// As [`EngineBuilder::open`].
    pub fn from_config(config: Config) -> Result<Engine> {
        Self::builder(config.database.clone()).config(config).open()
    }

    /// Loads a configuration file (or, with `None`, `fq.toml` then `config/services.yaml`)
    /// and opens the engine it describes.
    ///
    /// # Errors
    /// A bad configuration file, or as [`EngineBuilder::open`].
    pub fn from_config_file(path: Option<&Path>) -> Result<Engine> {
        Self::from_config(Config::load(path)?)
    }

    /// Queues a typed task (Framefox's `TaskManager.queue_task(task, ...)`); set options on the
    /// builder, then `.send().await`.
    pub fn queue_task<T: Task>(&self, task: T) -> QueueTask {
        queue_typed(Arc::clone(&self.inner.broker), &self.inner.defaults, task)
    }

    /// Queues a task by name, for tasks this program does not define; `payload` is
    /// `{"args": [...], "kwargs": {...}}`.
    pub fn queue_task_named(&self, name: &str, payload: &Value) -> QueueTask {
        QueueTask::named(
            Arc::clone(&self.inner.broker),
            &self.inner.defaults,
            name,
            payload,
        )
    }

    /// Queues many tasks in one durable commit, all or none. A task whose unique key is held
    /// (by a task already there, or by an earlier task of the same batch) is not queued: its
    /// place holds the holder's id; [`Engine::submit_batch`] tells which they are.
    ///
    /// # Errors
    /// The first invalid task's error (then nothing is queued), or a storage failure.
    pub async fn queue_batch(
        &self,
        tasks: impl IntoIterator<Item = QueueTask>,
    ) -> Result<Vec<TaskId>> {
        let queued = self.submit_batch(tasks).await?;
        Ok(queued.into_iter().map(|queued| queued.id).collect())
    }

    /// As [`Engine::queue_batch`], answering for each task whether it was a duplicate
    /// ([`Queued::duplicate`]).
    ///
    /// # Errors
    /// As [`Engine::queue_batch`].
    pub async fn submit_batch(
        &self,
        tasks: impl IntoIterator<Item = QueueTask>,
    ) -> Result<Vec<Queued>> {
        let built = tasks
            .into_iter()
            .map(QueueTask::build)
            .collect::<Result<Vec<_>>>()?;
        self.inner.broker.enqueue(built).await
    }

    /// The task's record, or `None` for an unknown id.
    ///
    /// # Errors
    /// A storage failure or a corrupt record.
    pub async fn task(&self, id: TaskId) -> Result<Option<TaskRecord>> {
        self.inner.broker.task(id).await
    }

    /// Waits for the task's outcome and returns its final record: COMPLETED with its result,
    /// FAILED with its error, or CANCELLED. Returns at once for a task already final; otherwise
    /// it is woken by the commit that settles the task (never by polling). A failed attempt
    /// that will be retried is not an outcome: the wait goes on. Works the same on an engine
    /// from [`Engine::connect`].
    ///
    /// # Errors
    /// [`Error::WaitTimeout`] when `timeout` passes first: the task is left as it is.
    /// [`Error::NotFound`] for an unknown task (or one purged meanwhile); on a connected
    /// engine, [`Error::Connect`] when the connection is lost.
    pub async fn wait(&self, id: TaskId, timeout: Duration) -> Result<TaskRecord> {
        self.inner.broker.wait(id, timeout).await
    }

    /// Pauses `queue`, durably (it stays paused across a reopen): no new task of it starts,
    /// on any worker of the store, local or remote; running ones finish, queuing into it goes
    /// on, and its tasks stay queued (not failed, not retried). A queue that holds no task yet
    /// can be paused ahead. Returns false when it was paused already.
    ///
    /// # Errors
    /// A malformed queue name ([`Error::InvalidInput`]) or a storage failure.
    pub async fn pause_queue(&self, queue: &str) -> Result<bool> {
        crate::config::check_queue(queue)?;
        self.inner.broker.set_paused(queue.to_owned(), true).await
    }

    /// Resumes a paused queue: its waiting tasks start again at once. Returns false when it
    /// was not paused.
    ///
    /// # Errors
    /// A malformed queue name ([`Error::InvalidInput`]) or a storage failure.
    pub async fn resume_queue(&self, queue: &str) -> Result<bool> {
        crate::config::check_queue(queue)?;
        self.inner.broker.set_paused(queue.to_owned(), false).await
    }

    /// Sets `queue`'s concurrency and rate limits, for every worker of the store, local and
    /// remote, from the next claim on (running tasks are left alone); both `None` removes
    /// them. Limits last until the engine closes; `[queues.<name>]` in the config sets them at
    /// open. Tasks held back stay PENDING. Works the same on an engine from
    /// [`Engine::connect`]. In RabbitMQ mode they limit this engine's own claims only, and
    /// nothing claims locally there: RabbitMQ consumers are bounded by `rabbitmq.prefetch`.
    ///
    /// # Errors
    /// A malformed queue name or a concurrency of 0 ([`Error::InvalidInput`] naming the
    /// field); on a store nobody serves, that no engine owns it.
    pub async fn set_queue_limits(&self, queue: &str, limits: crate::QueueLimits) -> Result<()> {
        crate::config::check_queue(queue)?;
        limits
            .check()
            .map_err(|(field, reason)| Error::invalid(field, reason))?;
        self.inner.broker.set_limits(queue.to_owned(), limits).await
    }

    /// Cancels a PENDING or RETRYING task. Its record says it was cancelled by `the API
    /// (pid N)`; [`Engine::cancel_by`] names someone else.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongState`] for a task that is running or finished.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskRecord> {
        let by = format!("the API (pid {})", std::process::id());
        self.inner.broker.cancel(id, by).await
    }

    /// Cancels a PENDING or RETRYING task as [`Engine::cancel`] does, recording `by` as who
    /// cancelled it (`TaskRecord::cancelled_by`, `fq why`), e.g. `"admin page, user 42"`.
    ///
    /// # Errors
    /// As [`Engine::cancel`]; [`Error::InvalidInput`] naming `by` when it is longer than
    /// [`crate::MAX_CANCELLED_BY_BYTES`] or holds a control character.
    pub async fn cancel_by(&self, id: TaskId, by: &str) -> Result<TaskRecord> {
        let by = crate::task::cancelled_by(Some(by), "the API")?;
        self.inner.broker.cancel(id, by).await
    }

    /// Deletes finished tasks past the configured retention (`cleanup.completed_retention`,
    /// `cleanup.retain_days`).
    ///
    /// # Errors
    /// A storage failure.
    pub async fn cleanup(&self) -> Result<CleanupReport> {
        self.cleanup_with(self.retention()).await
    }

    /// Deletes finished tasks past the given retention.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn cleanup_with(&self, policy: RetentionPolicy) -> Result<CleanupReport> {
        self.inner.broker.cleanup(policy).await
    }

    fn retention(&self) -> RetentionPolicy {
        retention_of(&self.inner.config)
    }

    /// Counts of tasks by queue and status, with ready/scheduled split, the age of the
    /// longest-waiting ready task and recent throughput. Reads no task records.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn stats(&self) -> Result<Stats> {
        self.inner.broker.stats().await
    }

    /// Tasks matching `query`, oldest first.
    ///
    /// # Errors
    /// A malformed queue name ([`Error::InvalidInput`]), a storage failure or a corrupt record.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<TaskRecord>> {
        // As the control socket does: a malformed queue is an error, not an empty page.
        if let Some(queue) = &query.queue {
            crate::config::check_queue(queue)?;
        }
        self.inner.broker.list(query).await
    }

    /// Puts a FAILED or CANCELLED task back to PENDING with a fresh retry budget.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongState`] for any other status.
    pub async fn retry(&self, id: TaskId) -> Result<TaskRecord> {
        self.inner.broker.retry(id).await
    }

    /// Retries every FAILED task, of `queue` if given; returns how many.
    ///
    /// # Errors
    /// A malformed queue name ([`Error::InvalidInput`]) or a storage failure.
    pub async fn retry_failed(&self, queue: Option<&str>) -> Result<u64> {
        if let Some(queue) = queue {
            crate::config::check_queue(queue)?;
        }
        self.inner
            .broker
            .retry_failed(queue.map(str::to_owned))
            .await
    }

    /// Deletes the tasks of `queue` (only those in `status`, if given), except RUNNING ones;
    /// returns how many.
    ///
    /// # Errors
    /// A bad queue name, `status` RUNNING, or a storage failure.
    pub async fn purge(&self, queue: &str, status: Option<TaskStatus>) -> Result<u64> {
        crate::config::check_queue(queue)?;
        self.inner.broker.purge(queue.to_owned(), status).await
    }

    /// The engine's metrics in the Prometheus (OpenMetrics) text format, the body of a
    /// `/metrics` endpoint (served with [`crate::metrics::CONTENT_TYPE`]): counters and
    /// histograms recorded since the engine opened, and queue depths read now. A connected
    /// engine asks the serving engine over the control socket; an engine reading a store
    /// directly (no owner running) shows the depths only, its counters at zero.
    ///
    /// # Errors
    /// [`Error::Metrics`] with [`crate::MetricsError::Disabled`] when the configuration says
    /// `metrics.enabled = false` (for a connected engine: the serving engine's); a storage or
    /// connection failure while reading the depths.
    pub async fn metrics(&self) -> Result<String> {
        match &self.inner.metrics {
            MetricsSource::Local(metrics) => {
                let stats = self.stats().await?;
                Ok(metrics.render(&stats, self.inner.events.dropped())?)
            }
            MetricsSource::Off => Err(crate::metrics::MetricsError::Disabled.into()),
            MetricsSource::Remote => self.inner.broker.metrics().await,
        }
    }

    /// The lifecycle events: `add_listener(name, fn)` or `subscribe()`.
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// The broker behind this engine, for workers of your own (claim, heartbeat, settle).
    pub fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.inner.broker)
    }

    /// An engine over another broker (a remote engine's control socket, RabbitMQ), with
    /// `config` for task defaults and worker settings.
    pub(crate) fn from_broker(
        broker: Arc<dyn Broker>,
        config: Config,
        lease: Duration,
        metrics: MetricsSource,
    ) -> Engine {
        let defaults = EnqueueDefaults::from_config(&config);
        Engine {
            inner: Arc::new(EngineInner {
                control: None,
                events: broker.events().clone(),
                broker,
                local: None,
                #[cfg(feature = "rabbitmq")]
                rabbit: None,
                config,
                defaults,
                lease,
                metrics,
            }),
        }
    }

    /// Connects to the engine serving a store through its control socket, for producing,
    /// remote workers and inspection from another process: the same API as an embedded engine.
    ///
    /// `addr` is `unix:PATH`, a socket path, a store path ending in `.redb` (meaning its
    /// default socket, the path plus `.sock`), or `tcp:HOST:PORT`. Over TCP the token comes
    /// from the `FQ_TOKEN` environment variable; [`Engine::connect_with`] takes it directly.
    ///
    /// The connected engine queues with the serving engine's task defaults and cleans up with
    /// its retention. If the serving engine restarts, the connection is re-established in the
    /// background (backoff up to 1 s): requests made meanwhile wait for it up to
    /// [`ConnectOptions::reconnect_wait`] (10 s) and then fail with [`Error::Connect`];
    /// requests in flight when it broke fail with [`Error::Connect`] (they may or may not have
    /// taken effect); a worker's claims simply find nothing until it is back. The connection's
    /// tasks run on the tokio runtime that called `connect`.
    ///
    /// Events: a connected engine's own workers emit `worker.task.*`, `task.retrying` and
    /// `task.failed` on its [`Engine::events`], and its cancels emit `task.cancelled`; events
    /// of the serving engine (`task.queued`, expired leases) are not streamed over the socket.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (field `connect`) for a malformed address; [`Error::Connect`]
    /// when nothing answers there; [`Error::Remote`] when the engine refuses the handshake
    /// (`unauthorized`, `unsupported_protocol`, `too_many_connections`).
    pub async fn connect(addr: &str) -> Result<Engine> {
        Self::connect_with(addr, ConnectOptions::from_env()).await
    }

    /// [`Engine::connect`] with explicit options (token, client name, reconnection wait).
    ///
    /// # Errors
    /// As [`Engine::connect`].
    pub async fn connect_with(addr: &str, options: ConnectOptions) -> Result<Engine> {
        let (broker, info) = RemoteBroker::connect(addr, options).await?;
        let mut config = Config {
            database: info.store,
            ..Config::default()
        };
        config.defaults.queue = info.queue;
        config.defaults.priority = info.priority;
        config.defaults.max_retries = info.max_retries;
        config.defaults.timeout = info.timeout;
        config.cleanup.completed_retention = info.retention.completed;
        config.cleanup.retain_days = info.retention.failed.as_secs().div_ceil(86_400).max(1);
        Ok(Engine::from_broker(
            Arc::new(broker),
            config,
            info.lease,
            MetricsSource::Remote,
        ))
    }

    /// The control socket this engine serves, `None` for a connected engine or one opened with
    /// the control server turned off.
    pub fn control_socket(&self) -> Option<&Path> {
        self.inner.control.as_ref().map(ControlServer::socket_path)
    }

    /// The TCP address the control server listens on (`control.listen`, with the port the
    /// system chose for port 0), if any.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.inner
            .control
            .as_ref()
            .and_then(ControlServer::tcp_addr)
    }

    /// The embedded broker, when this engine owns its store (for `fq::testing`'s drain).
    pub(crate) fn local(&self) -> Option<&Arc<LocalBroker>> {
        self.inner.local.as_ref()
    }

    /// True when this engine owns its store file (opened, not connected).
    pub fn is_embedded(&self) -> bool {
        self.inner.local.is_some()
    }

    /// Checks that the store's waiting, running and finished indexes and its counts agree with
    /// the task records (one read snapshot). For fq's own reliability tests; not a stable API.
    ///
    /// # Errors
    /// A storage failure; [`Error::Internal`] for a connected engine, which has no store.
    #[doc(hidden)]
    pub async fn check_integrity(&self) -> Result<crate::store::IntegrityReport> {
        match &self.inner.local {
            Some(local) => local.check_integrity().await,
            None => Err(Error::Internal(
                "a connected engine cannot check the store of another process".into(),
            )),
        }
    }

    /// What recovery found when the store was opened (all zero for a connected engine).
    pub fn recovery(&self) -> RecoveryReport {
        self.inner
            .local
            .as_ref()
            .map_or_else(RecoveryReport::default, |local| local.recovery())
    }

    /// Waits until the engine's transport is ready: at once for the embedded store and a
    /// connected engine; with `broker: rabbitmq`, until the bridge is connected to RabbitMQ
    /// (it connects in the background from [`EngineBuilder::open`] on, and again after every
    /// outage). Queuing does not need this: tasks wait in the outbox meanwhile.
    ///
    /// # Errors
    /// [`Error::Rabbit`] with the last connection failure ([`crate::RabbitError::Unreachable`]
    /// when nothing answers, [`crate::RabbitError::Refused`] for bad credentials or vhost) when
    /// not connected within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<()> {
        #[cfg(feature = "rabbitmq")]
        if let Some(rabbit) = &self.inner.rabbit {
            return Ok(rabbit.ready(timeout).await?);
        }
        let _ = timeout;
        Ok(())
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.inner.config.database
    }

    /// A worker over this engine with the configured `worker` settings; adjust it with its
    /// setters, then `start().await`.
    pub fn worker(&self, registry: Registry) -> WorkerManager {
        WorkerManager::new(self.clone(), registry)
    }
}

/// The retention a configuration asks for.
fn retention_of(config: &Config) -> RetentionPolicy {
    let cleanup = &config.cleanup;
    RetentionPolicy {
        completed: cleanup.completed_retention,
        failed: Duration::from_secs(cleanup.retain_days.saturating_mul(86_400)),
    }
}

impl WorkerManager {
    /// A worker for `engine` running the tasks in `registry`, configured from the engine's
    /// `worker` and `cleanup` settings. Running attempts heartbeat every 10 s, or every third
    /// of the engine's lease when that is shorter (for a connected engine, the serving
    /// engine's lease).
    #[allow(clippy::needless_pass_by_value)] // takes the handle as Framefox's WorkerManager(broker) does
    pub fn new(engine: Engine, registry: Registry) -> Self {
        let config = &engine.inner.config;
        let mut worker = WorkerManager::with_broker(
            engine.broker(),
            registry,
            engine.inner.defaults.clone(),
            config.worker.queues.clone(),
            config.worker.concurrency,
            config.worker.polling_interval,
            engine.retention(),
            config.worker.shutdown_timeout,
        );
        worker.set_cleanup_config(config.cleanup.interval_hours, config.cleanup.retain_days);
        let beat = (engine.inner.lease / 3).max(Duration::from_millis(1));
        if beat < DEFAULT_HEARTBEAT {
            worker.set_heartbeat_interval(beat);
        }
        worker
    }
}

impl TaskQueue for Engine {
    fn queue_task<T: Task>(&self, task: T) -> QueueTask {
        Engine::queue_task(self, task)
    }
}
