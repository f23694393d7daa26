//! The composition root: [`Engine`] opens the store through the embedded broker, wires events,
//! clock and configuration together, and hands out the queuing API and workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::broker::local::{LocalBroker, LocalSettings, RecoveryReport};
use crate::broker::{
    Broker, CleanupReport, EnqueueDefaults, ListQuery, QueueTask, RetentionPolicy, Stats,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{BrokerKind, Config};
use crate::events::EventBus;
use crate::store::StoreOptions;
use crate::task::{Registry, RetryPolicy, Task, TaskId, TaskRecord, TaskStatus};
use crate::worker::WorkerManager;
use crate::{Error, Result};

/// How long a claimed attempt stays leased without a heartbeat.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

struct EngineInner {
    broker: Arc<dyn Broker>,
    /// The embedded broker, when this engine owns the store (not for `Engine::connect`).
    local: Option<Arc<LocalBroker>>,
    config: Config,
    defaults: EnqueueDefaults,
    events: EventBus,
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

/// Options for opening an [`Engine`].
#[must_use = "an engine opens only with .open()"]
pub struct EngineBuilder {
    path: PathBuf,
    config: Config,
    clock: Arc<dyn Clock>,
    store: StoreOptions,
    lease: Duration,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field("clock", &self.clock)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Settings from a configuration (default: [`Config::default`]). The builder's path wins
    /// over `config.database`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The time source (default: the system clock). Tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The store's page cache in bytes (default 64 MiB).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.store.cache_bytes = bytes;
        self
    }

    /// Verify every page checksum when opening (default true): a damaged file is refused at
    /// open. Turning it off makes opening a large store faster.
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.store.verify_on_open = verify;
        self
    }

    /// How long a claimed attempt stays leased without a heartbeat before it is presumed dead
    /// and retried (default 60 s; workers heartbeat every 10 s).
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Opens the store (creating it if missing), recovers what a previous process left
    /// running, and starts the engine's threads.
    ///
    /// # Errors
    /// An invalid configuration; a store that is not fq's, corrupt, newer, locked by another
    /// process or unreadable ([`crate::StoreError`]).
    pub fn open(self) -> Result<Engine> {
        let config = self.config;
        config.validate()?;
        if config.broker == BrokerKind::Rabbitmq {
            return Err(Error::invalid(
                "broker",
                "\"rabbitmq\" is not available in this build; use \"database\"",
            ));
        }
        let settings = LocalSettings {
            store: self.store,
            retry: RetryPolicy {
                base: config.defaults.retry_delay,
                max: config.defaults.retry_max_delay,
                ..RetryPolicy::default()
            },
            lease: self.lease,
            max_pending: config.limits.max_pending,
            max_payload_bytes: config.limits.max_payload_bytes,
        };
        let events = EventBus::new();
        let local = Arc::new(LocalBroker::open(
            &self.path,
            settings,
            self.clock,
            events.clone(),
        )?);
        let broker: Arc<dyn Broker> = local.clone();
        let defaults = EnqueueDefaults::from_config(&config);
        Ok(Engine {
            inner: Arc::new(EngineInner {
                broker,
                local: Some(local),
                config: Config {
                    database: self.path,
                    ..config
                },
                defaults,
                events,
            }),
        })
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
        QueueTask::typed(Arc::clone(&self.inner.broker), task)
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

    /// Queues many tasks in one durable commit, all or none.
    ///
    /// # Errors
    /// The first invalid task's error (then nothing is queued), or a storage failure.
    pub async fn queue_batch(
        &self,
        tasks: impl IntoIterator<Item = QueueTask>,
    ) -> Result<Vec<TaskId>> {
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

    /// Cancels a PENDING or RETRYING task.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::WrongState`] for a task that is running or finished.
    pub async fn cancel(&self, id: TaskId) -> Result<TaskRecord> {
        self.inner.broker.cancel(id).await
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
        let cleanup = &self.inner.config.cleanup;
        RetentionPolicy {
            completed: cleanup.completed_retention,
            failed: Duration::from_secs(cleanup.retain_days.saturating_mul(86_400)),
        }
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
    /// A storage failure or a corrupt record.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<TaskRecord>> {
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
    /// A storage failure.
    pub async fn retry_failed(&self, queue: Option<&str>) -> Result<u64> {
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
        crate::config::check_name(queue).map_err(|problem| Error::invalid("queue", problem))?;
        self.inner.broker.purge(queue.to_owned(), status).await
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
    #[allow(dead_code)] // used by the transports that build on it
    pub(crate) fn from_broker(broker: Arc<dyn Broker>, config: Config) -> Engine {
        let defaults = EnqueueDefaults::from_config(&config);
        Engine {
            inner: Arc::new(EngineInner {
                events: broker.events().clone(),
                broker,
                local: None,
                config,
                defaults,
            }),
        }
    }

    /// Connects to the engine serving a store (its control socket), for producing, workers and
    /// inspection from another process: `unix:PATH`, a socket path, or `tcp:HOST:PORT`.
    ///
    /// # Errors
    /// Not available yet in this build.
    pub async fn connect(addr: &str) -> Result<Engine> {
        Err(Error::invalid(
            "connect",
            format!(
                "cannot connect to {addr}: the control socket is not available in this build yet"
            ),
        ))
    }

    /// True when this engine owns its store file (opened, not connected).
    pub fn is_embedded(&self) -> bool {
        self.inner.local.is_some()
    }

    /// What recovery found when the store was opened (all zero for a connected engine).
    pub fn recovery(&self) -> RecoveryReport {
        self.inner
            .local
            .as_ref()
            .map_or_else(RecoveryReport::default, |local| local.recovery())
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

impl WorkerManager {
    /// A worker for `engine` running the tasks in `registry`, configured from the engine's
    /// `worker` and `cleanup` settings.
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
        worker
    }
}
