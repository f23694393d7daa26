//! Test helpers for applications that queue and run fq tasks (Oban.Testing's `perform_job`,
//! `assert_enqueued` and `drain_queue`; Sidekiq's `fake!` and `inline!`; Celery's eager mode).
//!
//! [`TestEngine`] is a real [`Engine`] whose store lives in memory (no file, no fsync) and whose
//! clock is a [`ManualClock`] that only the test moves. Application code that takes an
//! `&Engine` or an `impl TaskQueue` runs on it unchanged. Nothing runs until the test says so:
//!
//! - [`TestEngine::drain`] runs every task that is due, inline (one at a time, awaited by the
//!   test), until none is; delays and retries wait for the test to
//!   [`advance`](ManualClock::advance) the clock;
//! - [`TestEngine::perform`] runs one task's handler directly and returns its result;
//! - [`TestEngine::enqueued`] lists what waits, and [`TestEngine::assert_enqueued`] finds a task
//!   by type or name, queue and arguments ([`Enqueued`]), or panics listing what is there.
//!
//! Tasks go through the same store, state machine, attempt runner and events as in production,
//! so statuses, retries with backoff, timeouts, panics and follow-up tasks behave as they will
//! in the application. Draining and performing need a tokio runtime (`#[tokio::test]`), on
//! which handlers run as they would in a worker. Dropping the `TestEngine` stops its threads
//! and leaves no tokio task running; [`TestEngine::close`] also checks that nothing else still
//! holds the engine.
//!
//! ```
//! use std::time::Duration;
//! use fq::testing::{Enqueued, TestEngine};
//! use fq::{Registry, Task, TaskContext, TaskError, TaskSettings, TaskStatus};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String }
//!
//! impl Task for SendEmail {
//!     const NAME: &'static str = "myapp.tasks.send_email";
//!     const SETTINGS: TaskSettings = TaskSettings::new().queue("emails");
//!     type Output = String;
//!     async fn run(self, ctx: TaskContext) -> Result<String, TaskError> {
//!         if ctx.attempt() == 1 {
//!             return Err(TaskError::new("smtp timeout")); // retried with backoff
//!         }
//!         Ok(format!("sent to {}", self.to))
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> fq::Result<()> {
//! let mut registry = Registry::new();
//! registry.register::<SendEmail>();
//! let test = TestEngine::with_registry(registry)?;
//!
//! let id = SendEmail { to: "ada@example.com".into() }.delay(&test).await?;
//! test.assert_enqueued(Enqueued::task::<SendEmail>().queue("emails")
//!     .kwargs(serde_json::json!({"to": "ada@example.com"}))).await;
//!
//! let report = test.drain().await?;                  // the first run fails
//! assert_eq!((report.completed, report.retried), (0, 1));
//! test.clock().advance(Duration::from_secs(60));     // past the retry's backoff
//! assert_eq!(test.drain().await?.completed, 1);
//!
//! let record = test.task(id).await?.unwrap();        // `test` derefs to its `Engine`
//! assert_eq!(record.status, TaskStatus::Completed);
//! assert_eq!(record.result, Some(serde_json::json!("sent to ada@example.com")));
//! test.close().await?;                               // nothing left running
//! # Ok(()) }
//! ```

mod enqueued;

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use enqueued::Enqueued;

use crate::broker::local::LocalBroker;
use crate::broker::{ListQuery, NewTask, Outcome, QueueTask};
use crate::clock::ManualClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::handler::{Registry, Task, TaskQueue};
use crate::store::CustomBackend;
use crate::task::{FailureKind, TaskFailure, TaskRecord, TaskStatus};
use crate::worker::{WorkerManager, WorkerReport};
use crate::{Error, Result};

/// What a test engine's store is called in errors and logs (it has no file).
const IN_MEMORY_NAME: &str = "fq-testing (in memory)";
/// The default bound on the attempts one [`TestEngine::drain`] runs.
const DEFAULT_DRAIN_LIMIT: u64 = 10_000;
/// How long [`TestEngine::close`] waits for the runtime to drop aborted handlers.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How many records one page of [`TestEngine::enqueued`] reads.
const LIST_PAGE: usize = 1_000;

/// Why a test helper could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// A drain ran as many attempts as it may and tasks were still due: most likely a task
    /// that queues itself (or is retried) again at once, which would run forever.
    #[error(
        "drain stopped after {attempts} attempts with tasks still due (next: {next}, released \
         to PENDING); a task that queues itself again at once would run forever. Raise the \
         bound with TestEngineBuilder::drain_limit if the work is finite"
    )]
    DrainLimit {
        /// How many attempts the drain ran (its limit).
        attempts: u64,
        /// The name of the task that was due next.
        next: String,
    },
    /// After [`TestEngine::close`], something still holds the engine: a clone of its
    /// [`Engine`], a worker or a task context kept by a handler, so its threads run on until
    /// that handle drops.
    #[error(
        "the test engine is still open after close: a clone of its Engine, a WorkerManager or \
         a TaskContext is still alive elsewhere (a spawned task, a static), and keeps its \
         threads running"
    )]
    StillOpen,
}

/// An [`Engine`] for tests: its store lives in memory, its clock only moves when the test
/// advances it, and tasks run only when the test drains them. Derefs to its [`Engine`]; see
/// the [module docs](crate::testing).
#[derive(Debug)]
pub struct TestEngine {
    engine: Engine,
    /// Runs the drains: the registry and the engine's task defaults. It holds the engine's
    /// broker too, so the engine's threads stop once both have dropped.
    worker: WorkerManager,
    clock: Arc<ManualClock>,
    /// The memory the store lives in; held here to tell when the store has closed.
    backend: CustomBackend,
    drain_limit: u64,
}

/// Options for a [`TestEngine`].
#[derive(Debug)]
#[must_use = "a test engine opens only with .open()"]
pub struct TestEngineBuilder {
    config: Config,
    registry: Registry,
    start: DateTime<Utc>,
    drain_limit: u64,
}

impl TestEngineBuilder {
    /// The handlers that [`TestEngine::drain`] and [`TestEngine::perform_named`] run (default:
    /// none).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Task defaults, retry backoff, limits (default: [`Config::default`]). Its `database`,
    /// `broker` (always the embedded store) and `control` sections are not used.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Where the manual clock starts (default: the system clock's time when the engine opens).
    pub fn start_at(mut self, start: DateTime<Utc>) -> Self {
        self.start = start;
        self
    }

    /// The most attempts one [`TestEngine::drain`] runs before it gives up with
    /// [`TestingError::DrainLimit`] (default 10,000).
    pub fn drain_limit(mut self, attempts: u64) -> Self {
        self.drain_limit = attempts;
        self
    }

    /// Opens the engine on a fresh store in memory. No control socket is served.
    ///
    /// # Errors
    /// [`Error::InvalidRegistration`] for a registry holding a refused name; an invalid
    /// configuration; [`Error::Internal`] if the engine's threads cannot start.
    pub fn open(self) -> Result<TestEngine> {
        let rejected = self.registry.rejected();
        if !rejected.is_empty() {
            return Err(Error::InvalidRegistration(rejected.to_vec()));
        }
        let config = Config {
            broker: crate::config::BrokerKind::Database,
            ..self.config
        };
        let clock = ManualClock::new(self.start);
        let backend = CustomBackend::in_memory();
        let engine = Engine::builder(Path::new(IN_MEMORY_NAME))
            .config(config)
            .clock(clock.clone())
            .storage_backend(backend.clone())
            .control(false)
            .open()?;
        let worker = engine.worker(self.registry);
        Ok(TestEngine {
            engine,
            worker,
            clock,
            backend,
            drain_limit: self.drain_limit,
        })
    }
}

impl TestEngine {
    /// A test engine without handlers: for code that only queues.
    ///
    /// # Errors
    /// As [`TestEngineBuilder::open`].
    pub fn new() -> Result<TestEngine> {
        Self::builder().open()
    }

    /// A test engine that runs the handlers of `registry`.
    ///
    /// # Errors
    /// As [`TestEngineBuilder::open`].
    pub fn with_registry(registry: Registry) -> Result<TestEngine> {
        Self::builder().registry(registry).open()
    }

    /// Options: handlers, configuration, the clock's start, the drain bound.
    pub fn builder() -> TestEngineBuilder {
        TestEngineBuilder {
            config: Config::default(),
            registry: Registry::new(),
            start: Utc::now(),
            drain_limit: DEFAULT_DRAIN_LIMIT,
        }
    }

    /// The engine, for code that takes an `&Engine` (a `&TestEngine` also derefs to it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine's clock: `test.clock().advance(Duration::from_secs(60))` makes delayed tasks
    /// and retries due, for the next [`TestEngine::drain`].
    pub fn clock(&self) -> &Arc<ManualClock> {
        &self.clock
    }

    fn local(&self) -> Result<&Arc<LocalBroker>> {
        self.engine
            .local()
            .ok_or_else(|| Error::Internal("a test engine always owns its store".into()))
    }

    /// Runs every task that is due now (by the engine's clock), one at a time while the caller
    /// awaits, highest priority first, as a worker serving every queue would, until none is due:
    /// tasks that become due meanwhile (follow-ups queued by a handler, retries due at once)
    /// run too; delayed tasks and retries with a backoff wait for the clock. Handlers run
    /// under their timeout, panics are caught, and every outcome is committed and its events
    /// emitted as in production. Returns the attempts by outcome.
    ///
    /// # Errors
    /// [`TestingError::DrainLimit`] when tasks are still due after the drain limit (10,000
    /// attempts unless set with [`TestEngineBuilder::drain_limit`]); a storage failure.
    pub async fn drain(&self) -> Result<WorkerReport> {
        self.drain_queues(None).await
    }

    /// [`TestEngine::drain`] for one queue only: tasks of other queues stay where they are.
    ///
    /// # Errors
    /// A malformed queue name ([`Error::InvalidInput`]), or as [`TestEngine::drain`].
    pub async fn drain_queue(&self, queue: &str) -> Result<WorkerReport> {
        crate::config::check_queue(queue)?;
        self.drain_queues(Some(queue)).await
    }

    async fn drain_queues(&self, only: Option<&str>) -> Result<WorkerReport> {
        let local = self.local()?;
        let mut report = WorkerReport::default();
        let mut attempts = 0;
        loop {
            // Right here rather than by the timer thread, which may not have looked yet since
            // the test advanced the clock.
            local.promote_due();
            // Again each round: a handler may have queued a task into a new queue.
            let queues = only.map_or_else(|| local.queue_names(), |queue| vec![queue.into()]);
            let drained = self
                .worker
                .inline(queues)
                .drain(self.drain_limit - attempts, &mut report)
                .await?;
            attempts += drained.attempts;
            if let Some(next) = drained.cut_short {
                return Err(TestingError::DrainLimit {
                    attempts,
                    next: next.name,
                }
                .into());
            }
            if drained.attempts == 0 {
                return Ok(report);
            }
        }
    }

    /// Runs the handler of task type `T` on `task` at once, as its first attempt would run
    /// (arguments through JSON, the task's timeout, panics caught), and returns what it
    /// returned as the JSON a COMPLETED record would hold: Oban's `perform_job`. The task is
    /// not stored, no event is emitted, and the test engine's registry is not consulted;
    /// follow-up tasks the handler queues go to this engine.
    ///
    /// # Errors
    /// The attempt's failure, as a RETRYING or FAILED record would hold it: the handler's
    /// error, a panic, a timeout; [`FailureKind::BadArguments`] for a task that could not be
    /// queued (its arguments do not serialize, a bad name).
    pub async fn perform<T: Task>(&self, task: T) -> std::result::Result<Value, TaskFailure> {
        let mut registry = Registry::new();
        registry.register::<T>();
        let worker = self.engine.worker(registry);
        self.perform_with(&worker, self.engine.queue_task(task))
            .await
    }

    /// Runs the handler registered under `name` (in this test engine's registry) on `payload`
    /// (`{"args": [...], "kwargs": {...}}`), as [`TestEngine::perform`] does.
    ///
    /// # Errors
    /// As [`TestEngine::perform`]; [`FailureKind::UnknownTask`] when no handler is registered
    /// under `name`.
    pub async fn perform_named(
        &self,
        name: &str,
        payload: &Value,
    ) -> std::result::Result<Value, TaskFailure> {
        self.perform_with(&self.worker, self.engine.queue_task_named(name, payload))
            .await
    }

    async fn perform_with(
        &self,
        worker: &WorkerManager,
        draft: QueueTask,
    ) -> std::result::Result<Value, TaskFailure> {
        let task = draft.build().map_err(|error| TaskFailure {
            message: error.to_string(),
            kind: FailureKind::BadArguments,
        })?;
        let record = first_attempt(task, self.clock.now());
        match worker.inline(Vec::new()).perform(&record).await {
            Some(Outcome::Completed { result }) => Ok(result),
            Some(Outcome::Failed { failure, .. }) => Err(failure),
            Some(Outcome::Released) | None => Err(TaskFailure {
                message: "the attempt was abandoned".into(),
                kind: FailureKind::WorkerLost,
            }),
        }
    }

    /// The tasks waiting to run (PENDING or RETRYING, due or not), oldest first. A record
    /// shows each one's name, queue, `payload` (`payload.to_value()` for JSON), priority,
    /// `scheduled_at` and `due_at`.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn enqueued(&self) -> Result<Vec<TaskRecord>> {
        let mut waiting = Vec::new();
        for status in [TaskStatus::Pending, TaskStatus::Retrying] {
            let mut after = None;
            loop {
                let page = self
                    .engine
                    .list(ListQuery {
                        status: Some(status),
                        limit: LIST_PAGE,
                        after,
                        ..ListQuery::default()
                    })
                    .await?;
                after = page.last().map(|record| record.id);
                let full = page.len() == LIST_PAGE;
                waiting.extend(page);
                if !full {
                    break;
                }
            }
        }
        waiting.sort_by_key(|record| record.id);
        Ok(waiting)
    }

    /// The waiting tasks that `expected` matches, oldest first.
    ///
    /// # Errors
    /// A storage failure.
    pub async fn enqueued_matching(&self, expected: &Enqueued) -> Result<Vec<TaskRecord>> {
        let mut waiting = self.enqueued().await?;
        waiting.retain(|record| expected.matches(record));
        Ok(waiting)
    }

    /// The oldest waiting task that `expected` matches: Oban's `assert_enqueued`.
    ///
    /// # Panics
    /// When no waiting task matches, with what was expected and a listing of every waiting
    /// task; when the store cannot be read.
    pub async fn assert_enqueued(&self, expected: Enqueued) -> TaskRecord {
        let waiting = self.waiting_or_panic().await;
        match waiting.iter().find(|record| expected.matches(record)) {
            Some(found) => found.clone(),
            None => panic!(
                "no waiting task matches {expected}\n{}",
                enqueued::listing(&waiting)
            ),
        }
    }

    /// Oban's `refute_enqueued`: checks that no waiting task matches `unexpected`.
    ///
    /// # Panics
    /// When one does, listing the waiting tasks; when the store cannot be read.
    pub async fn assert_not_enqueued(&self, unexpected: Enqueued) {
        let waiting = self.waiting_or_panic().await;
        let found: Vec<TaskRecord> = waiting
            .into_iter()
            .filter(|record| unexpected.matches(record))
            .collect();
        assert!(
            found.is_empty(),
            "expected no waiting task matching {unexpected}, found {}\n{}",
            found.len(),
            enqueued::listing(&found)
        );
    }

    async fn waiting_or_panic(&self) -> Vec<TaskRecord> {
        match self.enqueued().await {
            Ok(waiting) => waiting,
            Err(error) => panic!("cannot list the waiting tasks: {error}"),
        }
    }

    /// Closes the engine and checks that it is gone: its store closed and its threads
    /// stopped. Dropping a `TestEngine` does the same without the check (a handler aborted at
    /// its timeout lets go of the engine when the runtime next turns, or when it ends).
    ///
    /// # Errors
    /// [`TestingError::StillOpen`] when, after up to a second, a clone of its [`Engine`] (or
    /// a worker, or a handler's task context) is still alive elsewhere, keeping the engine's
    /// threads running.
    pub async fn close(self) -> Result<()> {
        let TestEngine {
            engine,
            worker,
            backend,
            ..
        } = self;
        drop(worker);
        // The last handle's drop stops the writer and timer threads and joins them before the
        // store (and so its hold on the backend) goes.
        drop(engine);
        // A handler aborted at its timeout still holds its task context (and so the engine)
        // until the runtime drops its future, at its next turn: let it turn.
        let deadline = std::time::Instant::now() + CLOSE_WAIT;
        while backend.is_held_elsewhere() {
            if std::time::Instant::now() >= deadline {
                return Err(TestingError::StillOpen.into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// A task's record at the start of its first attempt, for a run outside the store.
fn first_attempt(task: NewTask, now: DateTime<Utc>) -> TaskRecord {
    TaskRecord {
        id: task.id,
        name: task.name,
        queue: task.queue,
        priority: task.priority,
        payload: task.payload,
        status: TaskStatus::Running,
        attempts: 1,
        max_retries: task.max_retries,
        timeout: task.timeout,
        created_at: now,
        scheduled_at: now,
        due_at: now,
        started_at: Some(now),
        finished_at: None,
        result: None,
        error: None,
        unique_key: task.unique.as_ref().map(|spec| spec.key.clone()),
        unique_for: task
            .unique
            .as_ref()
            .and_then(|spec| spec.for_ms)
            .map(Duration::from_millis),
        cancelled_by: None,
    }
}

impl Deref for TestEngine {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl TaskQueue for TestEngine {
    fn queue_task<T: Task>(&self, task: T) -> QueueTask {
        self.engine.queue_task(task)
    }
}
