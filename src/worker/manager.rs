//! The worker manager: claims tasks from its queues into `concurrency` slots, runs them, runs
//! retention cleanup on its interval, and shuts down gracefully on a signal or a handle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::runner::{HEALING_RETRY, RunnerEnv, SlotTally, waits_for_healing};
use super::signals::Signals;
use super::slot::run_slot;
use crate::broker::{Broker, ClaimRequest, EnqueueDefaults, Outcome, RetentionPolicy, Settlement};
use crate::broker::{WORKER_HEARTBEAT_INTERVAL, WorkerInfo};
use crate::config::{MAX_CLEANUP_INTERVAL_HOURS, MAX_RETAIN_DAYS, check_name};
use crate::handler::Registry;
use crate::task::{TaskId, WorkerId};
use crate::{Error, Result};

/// How often a running attempt renews its lease.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long to wait before claiming again after a transient claim error.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_millis(200);

/// Stops a running [`WorkerManager`] from another task or thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    token: CancellationToken,
    now: CancellationToken,
}

impl ShutdownHandle {
    /// Asks the worker to stop: it claims nothing new, waits for running tasks up to its
    /// shutdown timeout, then releases the rest to PENDING.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Asks the worker to stop at once (a second Ctrl-C, Celery's cold shutdown): it claims
    /// nothing new and, without waiting for its shutdown timeout, stops running tasks and
    /// releases them to PENDING, to be retried with their attempt uncounted.
    pub fn stop_now(&self) {
        self.token.cancel();
        self.now.cancel();
    }

    /// Resolves once shutdown was asked for: lets a web server stop with its workers.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// True once shutdown was asked for.
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// What a worker did between `start` and its return (or, for `fq::testing`, what one
/// `TestEngine::drain` ran).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerReport {
    /// Attempts that completed their task.
    pub completed: u64,
    /// Attempts that failed and will be retried.
    pub retried: u64,
    /// Attempts that failed their task for good.
    pub failed: u64,
    /// Attempts still running when the worker stopped (its shutdown timeout, or
    /// [`ShutdownHandle::stop_now`]), released to PENDING.
    pub released: u64,
    /// Attempts whose outcome could not be recorded (lost lease, storage failure).
    pub unrecorded: u64,
}

/// Processes tasks from a set of queues, as Framefox's `WorkerManager`.
#[derive(Debug)]
pub struct WorkerManager {
    broker: Arc<dyn Broker>,
    registry: Arc<Registry>,
    defaults: Arc<EnqueueDefaults>,
    queues: Vec<String>,
    concurrency: usize,
    polling_interval: Duration,
    cleanup_interval: Option<Duration>,
    retention: RetentionPolicy,
    shutdown_timeout: Duration,
    handle_signals: bool,
    heartbeat_every: Duration,
    shutdown: CancellationToken,
    /// Cancelled to stop at once, without waiting for running tasks (see
    /// [`ShutdownHandle::stop_now`]).
    stop_now: CancellationToken,
}

impl WorkerManager {
    /// A worker over any broker, with the given defaults.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn with_broker(
        broker: Arc<dyn Broker>,
        registry: Registry,
        defaults: EnqueueDefaults,
        queues: Vec<String>,
        concurrency: usize,
        polling_interval: Duration,
        retention: RetentionPolicy,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            broker,
            registry: Arc::new(registry),
            defaults: Arc::new(defaults),
            queues,
            concurrency,
            polling_interval,
            cleanup_interval: None,
            retention,
            shutdown_timeout,
            handle_signals: true,
            heartbeat_every: DEFAULT_HEARTBEAT,
            shutdown: CancellationToken::new(),
            stop_now: CancellationToken::new(),
        }
    }

    /// The queues to serve (default: the configured `worker.queues`, else `["default"]`).
    pub fn set_queues<I, S>(&mut self, queues: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// How many tasks run at once (default: the configured `worker.concurrency`, else 10).
    pub fn set_concurrent_tasks(&mut self, concurrency: usize) -> &mut Self {
        self.concurrency = concurrency;
        self
    }

    /// The longest an idle worker waits before looking again (default 5 s). Workers are woken
    /// by new work at once; this only bounds idle rechecks.
    pub fn set_polling_interval(&mut self, interval: Duration) -> &mut Self {
        self.polling_interval = interval;
        self
    }

    /// Deletes finished tasks when the worker starts and every `interval_hours` after:
    /// FAILED and CANCELLED ones older than `retain_days`, COMPLETED ones older than the
    /// configured `completed_retention` (defaults from the `cleanup` configuration: every
    /// hour, 7 days, 1 day).
    pub fn set_cleanup_config(&mut self, interval_hours: u64, retain_days: u64) -> &mut Self {
        self.cleanup_interval = Some(Duration::from_secs(interval_hours.saturating_mul(3600)));
        self.retention.failed = Duration::from_secs(retain_days.saturating_mul(86_400));
        self
    }

    /// How long shutdown waits for running tasks before releasing them (default 30 s).
    pub fn set_shutdown_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether SIGINT/SIGTERM stop the worker (default true).
    pub fn set_handle_signals(&mut self, handle: bool) -> &mut Self {
        self.handle_signals = handle;
        self
    }

    /// How often running attempts renew their lease (default 10 s).
    pub fn set_heartbeat_interval(&mut self, every: Duration) -> &mut Self {
        self.heartbeat_every = every;
        self
    }

    /// A handle that stops this worker.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shutdown.clone(),
            now: self.stop_now.clone(),
        }
    }

    fn validate(&self) -> Result<Vec<Arc<str>>> {
        if !self.registry.rejected().is_empty() {
            return Err(Error::InvalidRegistration(
                self.registry.rejected().to_vec(),
            ));
        }
        if self.queues.is_empty() {
            return Err(Error::invalid(
                "queues",
                "a worker needs at least one queue",
            ));
        }
        for queue in &self.queues {
            check_name(queue).map_err(|problem| {
                Error::invalid("queues", format!("queue {queue:?} {problem}"))
            })?;
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(Error::invalid(
                "concurrency",
                format!("must be between 1 and 10000, got {}", self.concurrency),
            ));
        }
        if self.polling_interval.is_zero() {
            return Err(Error::invalid(
                "polling_interval",
                "must be greater than zero",
            ));
        }
        if self.heartbeat_every.is_zero() {
            return Err(Error::invalid(
                "heartbeat_interval",
                "must be greater than zero",
            ));
        }
        // The same bounds, key names and words as the `cleanup` configuration's, for values
        // given through `set_cleanup_config` (a zero interval would panic the cleanup timer).
        if let Some(every) = self.cleanup_interval {
            let hours = every.as_secs() / 3600;
            within("cleanup.interval_hours", hours, MAX_CLEANUP_INTERVAL_HOURS)?;
        }
        let retain_days = self.retention.failed.as_secs() / 86_400;
        within("cleanup.retain_days", retain_days, MAX_RETAIN_DAYS)?;
        Ok(self.queues.iter().map(|q| Arc::from(q.as_str())).collect())
    }

    /// What every attempt of one run over `queues` shares; `shutdown` ends the run.
    pub(super) fn runner_env(
        &self,
        queues: Vec<Arc<str>>,
        shutdown: CancellationToken,
        worker: Option<WorkerId>,
    ) -> Arc<RunnerEnv> {
        Arc::new(RunnerEnv {
            broker: Arc::clone(&self.broker),
            registry: Arc::clone(&self.registry),
            defaults: Arc::clone(&self.defaults),
            heartbeat_every: self.heartbeat_every,
            queues,
            shutdown,
            running: std::sync::Mutex::new(HashMap::new()),
            worker,
        })
    }

    /// Runs until shutdown (a [`ShutdownHandle`], or SIGINT/SIGTERM unless disabled).
    ///
    /// # Errors
    /// Invalid settings or registrations, before anything runs; [`Error::Poisoned`] when the
    /// engine refuses work for good (built with `self_heal(false)`, or its attempts to heal gave
    /// up: while it heals itself the worker waits and claims again), or [`Error::ShutDown`]
    /// when the engine stops.
    pub async fn start(&mut self) -> Result<WorkerReport> {
        let queues = self.validate()?;
        // This run's own token: cancelled by the manager's shutdown, and by the run alone when
        // its future is dropped (see `DroppedRun`), which must not stop later runs.
        let shutdown = self.shutdown.child_token();
        // Cancelled when `start` returns (or its future is dropped): ends the signal listener.
        let finished = CancellationToken::new();
        let _finished = finished.clone().drop_guard();
        if self.handle_signals {
            spawn_signal_listener(self.shutdown_handle(), finished.clone());
        }
        let cleanup = self.cleanup_interval.map(|every| {
            let broker = Arc::clone(&self.broker);
            let retention = self.retention;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {
                            if let Err(error) = broker.cleanup(retention).await {
                                tracing::error!(%error, "retention cleanup failed");
                            }
                        }
                        () = stop.cancelled() => break,
                    }
                }
            })
        });
        let announced = self.announce().await;
        let env = self.runner_env(queues.clone(), shutdown.clone(), Some(announced.id));
        let heartbeat = spawn_worker_heartbeat(
            Arc::clone(&self.broker),
            announced.clone(),
            Arc::clone(&env),
            finished.clone(),
        );
        let _dropped = DroppedRun {
            run: shutdown.clone(),
            cleanup,
            env: Arc::clone(&env),
            broker: Arc::clone(&self.broker),
        };
        tracing::info!(queues = ?self.queues, concurrency = self.concurrency, "worker started");
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut running: JoinSet<SlotTally> = JoinSet::new();
        let mut report = WorkerReport::default();
        let mut fatal = None;

        loop {
            let first = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while let Ok(permit) = Arc::clone(&slots).try_acquire_owned() {
                permits.push(permit);
            }
            match self
                .broker
                .claim(ClaimRequest::new(
                    &queues,
                    permits.len(),
                    self.polling_interval,
                    &shutdown,
                ))
                .await
            {
                Ok(claimed) => {
                    for record in claimed {
                        let Some(permit) = permits.pop() else {
                            tracing::error!("claimed more tasks than free slots");
                            break;
                        };
                        running.spawn(run_slot(record, Arc::clone(&env), permit));
                    }
                }
                // The engine heals itself (the default): its refusals end once the disk works,
                // and a worker that stopped here would leave its queues unserved until a human
                // restarted it.
                Err(error) if waits_for_healing(&error) => {
                    tracing::warn!(%error, "the engine refuses work while it heals; claiming again");
                    tokio::select! {
                        () = tokio::time::sleep(HEALING_RETRY) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Err(error @ (Error::Poisoned { .. } | Error::ShutDown)) => {
                    fatal = Some(error);
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "claiming tasks failed; retrying");
                    tokio::time::sleep(CLAIM_ERROR_BACKOFF).await;
                }
            }
            while let Some(joined) = running.try_join_next() {
                tally(&mut report, joined);
            }
        }

        tracing::info!(
            running = running.len(),
            "worker stopping; waiting for running tasks"
        );
        let stop_now = self.stop_now.clone();
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            loop {
                tokio::select! {
                    joined = running.join_next() => match joined {
                        Some(joined) => tally(&mut report, joined),
                        None => return true,
                    },
                    () = stop_now.cancelled() => return false,
                }
            }
        })
        .await;
        if drained != Ok(true) {
            running.abort_all();
            while let Some(joined) = running.join_next().await {
                tally(&mut report, joined);
            }
            report.released += release_held(&*self.broker, &env.take_held()).await;
        }
        heartbeat.abort();
        if let Err(error) = self.broker.worker_stopped(announced.id).await {
            tracing::debug!(%error, "could not say this worker stopped");
        }
        tracing::info!(?report, "worker stopped");
        match fatal {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

impl WorkerReport {
    /// Adds what one slot did.
    pub(super) fn add(&mut self, slot: SlotTally) {
        self.completed += slot.completed;
        self.retried += slot.retried;
        self.failed += slot.failed;
        self.unrecorded += slot.unrecorded;
    }
}

fn tally(
    report: &mut WorkerReport,
    joined: std::result::Result<SlotTally, tokio::task::JoinError>,
) {
    match joined {
        Ok(slot) => report.add(slot),
        // A slot aborted at the shutdown timeout: its attempt is released from the held set.
        Err(error) if error.is_cancelled() => {}
        Err(error) => {
            report.unrecorded += 1;
            tracing::error!(%error, "a worker slot panicked");
        }
    }
}

impl WorkerManager {
    /// Tells the broker this worker starts (README "Live workers"); a failure is logged, not
    /// fatal: the worker runs tasks all the same, unlisted.
    async fn announce(&self) -> WorkerInfo {
        let mut handlers: Vec<String> = self
            .registry
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        handlers.sort();
        let info = WorkerInfo::of_this_process(
            self.queues.clone(),
            handlers,
            self.concurrency,
            crate::clock::millis_to_datetime(self.broker.now_ms()),
        );
        if let Err(error) = self.broker.announce_worker(info.clone()).await {
            tracing::warn!(%error, "could not announce this worker; it runs unlisted");
        }
        info
    }
}

/// Heartbeats `info`'s worker with the attempts it holds until `finished`, announcing it
/// again when the broker does not know it (its owner restarted, or found it lost).
fn spawn_worker_heartbeat(
    broker: Arc<dyn Broker>,
    info: WorkerInfo,
    env: Arc<RunnerEnv>,
    finished: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(WORKER_HEARTBEAT_INTERVAL);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = finished.cancelled() => return,
            }
            match broker.worker_heartbeat(info.id, env.held()).await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(error) = broker.announce_worker(info.clone()).await {
                        tracing::debug!(%error, "could not announce this worker again");
                    }
                }
                Err(error) => tracing::debug!(%error, "worker heartbeat failed"),
            }
        }
    })
}

/// Stops the worker on SIGINT or SIGTERM, through the same handlers as the CLI.
fn spawn_signal_listener(stop: ShutdownHandle, finished: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = match Signals::listen() {
            Ok(signals) => signals,
            Err(error) => {
                tracing::warn!("{error}");
                return;
            }
        };
        tokio::select! {
            name = signals.recv() => tracing::info!("{name} received; shutting down"),
            () = stop.cancelled() => {}
            () = finished.cancelled() => return,
        }
        stop.shutdown();
        // A second signal while running tasks drain stops at once (Celery's cold shutdown).
        tokio::select! {
            name = signals.recv() => {
                tracing::warn!("{name} received again; stopping now and releasing running tasks");
                stop.stop_now();
            }
            () = finished.cancelled() => {}
        }
    });
}

/// `value` in 1..=`max`, or the error the configuration gives for the same key.
fn within(key: &'static str, value: u64, max: u64) -> Result<()> {
    if value < 1 {
        return Err(Error::invalid(
            key,
            format!("must be at least 1, got {value}"),
        ));
    }
    if value > max {
        return Err(Error::invalid(
            key,
            format!("must be at most {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Releases held attempts to PENDING (their attempt uncounted): those still held at shutdown,
/// or a slot's tasks claimed ahead. Returns how many were.
pub(super) async fn release_held(broker: &dyn Broker, held: &[(TaskId, u32)]) -> u64 {
    let mut released = 0;
    for &(id, attempt) in held {
        let settlement = Settlement {
            id,
            attempt,
            outcome: Outcome::Released,
        };
        match broker.settle(settlement).await {
            Ok(_) => released += 1,
            Err(Error::StaleAttempt { .. }) => {}
            Err(error) => {
                tracing::error!(task.id = %id, %error, "could not release a held task; it will be recovered when its lease expires or on the next open");
            }
        }
    }
    released
}

/// What a run of `start` must not leave behind when its future is dropped before it returns
/// (a `select!` against a web server, a timeout, an abort): on drop it stops the run's claims
/// and cleanup timer, and releases the attempts its slots still held, as the shutdown timeout
/// does (its running tasks stop with the run's `JoinSet`). After a normal return there is
/// nothing left for it to do. (An inline drain, `worker/inline.rs`, uses it the same way.)
pub(super) struct DroppedRun {
    pub(super) run: CancellationToken,
    pub(super) cleanup: Option<tokio::task::JoinHandle<()>>,
    pub(super) env: Arc<RunnerEnv>,
    pub(super) broker: Arc<dyn Broker>,
}

impl Drop for DroppedRun {
    fn drop(&mut self) {
        self.run.cancel();
        if let Some(cleanup) = self.cleanup.take() {
            cleanup.abort();
        }
        let held = self.env.take_held();
        if held.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let broker = Arc::clone(&self.broker);
                tracing::warn!(
                    running = held.len(),
                    "worker dropped while running tasks; releasing them"
                );
                runtime.spawn(async move { release_held(&*broker, &held).await });
            }
            Err(_) => tracing::warn!(
                running = held.len(),
                "worker dropped outside a runtime; its running tasks are retried when their leases expire"
            ),
        }
    }
}
