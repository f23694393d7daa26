//! # fq: durable background tasks, embedded
//!
//! fq runs the background-task model of the Framefox web framework in Rust: tasks defined
//! once and queued with [`Task::delay`] or [`Engine::queue_task`], named queues, integer
//! priorities (higher runs first), delays and `schedule_at`, automatic retries with
//! exponential backoff, the statuses PENDING, RUNNING, COMPLETED, FAILED, RETRYING (and
//! CANCELLED), a [`WorkerManager`], and lifecycle [`Event`]s.
//!
//! **What it is**: an engine you embed. One local redb file holds every task; a writer thread
//! commits in groups (one fsync serves hundreds of operations); a lock-free ready heap feeds
//! tokio workers that are woken by new work, not by polling.
//!
//! A caller can wait for a task's outcome ([`Engine::wait`], [`QueueTask::send_and_wait`]: woken
//! by the commit that settles it) and pause a queue durably ([`Engine::pause_queue`]).
//!
//! **What it is not**: a distributed system. One process owns a store file; other processes on
//! the machine (producers, remote workers, the `fq` CLI) reach it through its control socket
//! with [`Engine::connect`] (protocol: `docs/protocol.md`). Delivery is *at least once*: a task
//! whose worker dies mid-run runs again, so handlers must be idempotent.
//!
//! ```
//! use fq::{Engine, Registry, Task, TaskContext, TaskError, TaskStatus};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String, subject: String }
//!
//! impl Task for SendEmail {
//!     const NAME: &'static str = "myapp.tasks.send_email";
//!     type Output = serde_json::Value;
//!     async fn run(self, _ctx: TaskContext) -> Result<Self::Output, TaskError> {
//!         Ok(serde_json::json!({"status": "sent", "recipient": self.to}))
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> fq::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path().join("fq.redb"))?;
//! let id = SendEmail { to: "ada@example.com".into(), subject: "Welcome!".into() }
//!     .delay(&engine)
//!     .await?;
//!
//! let mut registry = Registry::new();
//! registry.register::<SendEmail>();
//! let mut worker = engine.worker(registry);
//! worker.set_concurrent_tasks(4).set_handle_signals(false);
//! let stop = worker.shutdown_handle();
//! let mut done = engine.events().subscribe();
//! let running = tokio::spawn(async move { worker.start().await });
//! while let Some(event) = done.recv().await {
//!     if event.name() == "worker.task.after_execution" { break; }
//! }
//! stop.shutdown();
//! running.await.unwrap()?;
//! let record = engine.task(id).await?.unwrap();
//! assert_eq!(record.status, TaskStatus::Completed);
//! assert_eq!(record.result.unwrap()["recipient"], "ada@example.com");
//! # Ok(()) }
//! ```
//!
//! ## RabbitMQ
//! With `broker: rabbitmq` in the configuration (cargo feature `rabbitmq`), the same API runs
//! over RabbitMQ: the store becomes a durable outbox that is forwarded with publisher confirms,
//! workers consume with manual acks, and each run's start and outcome come back to the
//! producer's store over RabbitMQ (so `Engine::task` shows the result or the error there
//! too). Nothing else changes in the application:
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> fq::Result<()> {
//! let mut config = fq::Config::default();
//! config.broker = fq::BrokerKind::Rabbitmq;
//! config.rabbitmq.url = Some("amqp://guest:guest@127.0.0.1:5672/%2f".into());
//! let engine = fq::Engine::from_config(config)?; // connects in the background
//! engine.ready(std::time::Duration::from_secs(10)).await?; // optional: wait for it
//! # Ok(()) }
//! ```
//!
//! ## Testing
//! [`testing::TestEngine`] is an engine for application tests: its store lives in memory, its
//! clock moves only when the test advances it, `drain()` runs what is due inline, `perform`
//! runs one handler, and `assert_enqueued` checks what code under test queued.
//!
//! ## Features
//! `cli` (default): the `fq` binary and `fq::cli::run`; it includes `web`. `web`: the dashboard,
//! [`web::router`] (axum and maud, no TLS). `rabbitmq`: the RabbitMQ bridge
//! (lapin, on tokio, without TLS); without it, `broker: rabbitmq` is refused with
//! [`RabbitError::NotBuilt`].
//!
//! ## Layout
//! `task` (definitions, records, retry policy) · `store` (the redb file) · `queue` (ready heap,
//! delay index) · `broker` (the transport seam; `local` is the embedded engine, `rabbitmq` the
//! RabbitMQ bridge) · `events` · `worker` (manager, runner) · `control` (the control socket:
//! protocol, server, remote broker) · `config` · `engine` (wiring) · `testing` (test helpers
//! for applications) · `web` (the dashboard, over the public API only). See ARCHITECTURE.md.

// fq runs on Unix only (the control socket is a Unix socket, the free-space watermark reads
// statvfs): one clear error instead of a cascade of them elsewhere.
#[cfg(not(unix))]
compile_error!(
    "fq builds on Unix only (Linux, macOS, the BSDs): its control socket is a Unix-domain socket"
);

mod broker;
#[cfg(feature = "cli")]
pub mod cli;
mod clock;
pub mod config;
mod control;
mod engine;
mod error;
mod events;
mod handler;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
pub mod metrics;
mod queue;
#[cfg(all(doctest, feature = "cli"))]
mod readme;
mod schedule;
mod store;
mod sync;
mod task;
pub mod testing;
#[cfg(feature = "web")]
pub mod web;
mod worker;

pub use broker::local::RecoveryReport;
pub use broker::{
    BoxFuture, Broker, Chained, Chaining, ClaimRequest, Claiming, CleanupReport, EndReason,
    Explanation, GoneReason, GoneWorker, IntoDelay, ListQuery, LiveWorker, NewTask, Outcome,
    QueueStats, QueueTask, Queued, RabbitError, RabbitQueueStats, RabbitStats, RetentionPolicy,
    RunningAttempt, SettleReport, Settlement, Stats, WORKER_HEARTBEAT_INTERVAL, WORKER_LOST_AFTER,
    WORKERS_GONE_KEPT, WorkerInfo, WorkersReport,
};
pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use config::{
    BrokerKind, Config, ConfigError, ControlConfig, DurationError, HttpConfig, QueueLimits, Rate,
    parse_duration,
};
pub use control::{ConnectOptions, ControlError};
pub use engine::{Engine, EngineBuilder};
pub use error::{Error, Result};
pub use events::{Event, EventBus, EventKind, EventStream, UnknownEvent};
pub use handler::{Registry, Task, TaskContext, TaskQueue, TaskSettings};
pub use metrics::MetricsError;
pub use schedule::{
    CatchUp, MAX_CATCH_UP, MISSED_AFTER_MS, Schedule, ScheduleAction, ScheduleInfo, ScheduleSpec,
};
#[doc(hidden)]
pub use store::{CustomBackend, IntegrityReport};
pub use store::{StoreError, quiet_caught_storage_panics, store_commit_rate};
pub use task::{
    AttemptOutcome, AttemptRecord, DEFAULT_ATTEMPT_HISTORY, FailureKind, MAX_CANCELLED_BY_BYTES,
    MAX_PAYLOAD_DEPTH, MAX_UNIQUE_FOR, MAX_UNIQUE_KEY_BYTES, Payload, RetryPolicy, TaskError,
    TaskErrorKind, TaskFailure, TaskId, TaskRecord, TaskStatus, WorkerId,
};
pub use worker::{ShutdownHandle, SignalError, Signals, WorkerManager, WorkerReport};
