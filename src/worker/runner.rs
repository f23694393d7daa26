//! One attempt, start to finish: look up the handler, run it (async on the runtime, sync on
//! the blocking pool) under its timeout with heartbeats, turn an error, a panic or a timeout
//! into a failed attempt, settle it, and emit the lifecycle events in order. In two halves
//! (`begin`, then `settle_holding` and `conclude`), so that a worker slot (`slot.rs`) can run
//! its next task while the last one's settlement commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::Error;
use crate::broker::{
    Broker, Chained, ClaimRequest, EnqueueDefaults, Outcome, SettleReport, Settlement,
};
use crate::clock::millis_to_datetime;
use crate::events::{Event, EventKind};
use crate::handler::{HandlerFn, Registry, RunError, TaskContext};
use crate::task::{FailureKind, TaskErrorKind, TaskFailure, TaskId, TaskRecord, TaskStatus};

/// What every attempt of one worker shares.
#[derive(Debug)]
pub(super) struct RunnerEnv {
    pub(super) broker: Arc<dyn Broker>,
    pub(super) registry: Arc<Registry>,
    pub(super) defaults: Arc<EnqueueDefaults>,
    pub(super) heartbeat_every: Duration,
    pub(super) queues: Vec<Arc<str>>,
    pub(super) shutdown: CancellationToken,
    /// The attempts this worker holds: released to PENDING if shutdown times out.
    pub(super) running: Mutex<HashMap<TaskId, u32>>,
    /// The id this worker announced, if it did: named as the worker of each attempt it holds.
    pub(super) worker: Option<crate::task::WorkerId>,
}

impl RunnerEnv {
    pub(super) fn hold(&self, id: TaskId, attempt: u32) {
        if let Some(worker) = self.worker {
            self.broker.worker_claimed(worker, &[(id, attempt)]);
        }
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, attempt);
    }

    pub(super) fn drop_hold(&self, id: TaskId) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Every attempt held now (for the worker's heartbeat).
    pub(super) fn held(&self) -> Vec<(TaskId, u32)> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, attempt)| (*id, *attempt))
            .collect()
    }

    /// Takes every attempt still held.
    pub(super) fn take_held(&self) -> Vec<(TaskId, u32)> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect()
    }
}

/// How an attempt ended, for the worker's tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tally {
    Completed,
    Retrying,
    Failed,
    /// The outcome could not be recorded (stale attempt, storage failure).
    Unrecorded,
}

/// What one slot did: its attempts, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SlotTally {
    pub(super) completed: u64,
    pub(super) retried: u64,
    pub(super) failed: u64,
    pub(super) unrecorded: u64,
}

impl SlotTally {
    pub(super) fn add(&mut self, tally: Tally) {
        match tally {
            Tally::Completed => self.completed += 1,
            Tally::Retrying => self.retried += 1,
            Tally::Failed => self.failed += 1,
            Tally::Unrecorded => self.unrecorded += 1,
        }
    }
}

fn panic_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => crate::error::panic_message(&*panic),
        Err(error) => format!("the handler was cancelled: {error}"),
    }
}

fn failed(kind: FailureKind, message: String, retry_after: Option<Duration>) -> Outcome {
    Outcome::Failed {
        failure: TaskFailure { message, kind },
        retry_after,
    }
}

/// Runs the handler; `None` when the attempt lost its lease and must not be settled.
pub(super) async fn execute(record: &TaskRecord, env: &RunnerEnv) -> Option<Outcome> {
    let Some(handler) = env.registry.get(&record.name) else {
        let known = env.registry.names().join(", ");
        return Some(failed(
            FailureKind::UnknownTask,
            format!(
                "no task named {:?} is registered in this worker (registered: {known})",
                record.name
            ),
            None,
        ));
    };
    let ctx = TaskContext::new(record, Arc::clone(&env.broker), Arc::clone(&env.defaults));
    let payload = record.payload.clone();
    // Aborted when this attempt is dropped (the shutdown timeout, a dropped `start`): a handler
    // left running detached would keep its context, and so the engine, alive. (A blocking
    // handler already running cannot be stopped; it ends on its own.)
    let mut join = AbortOnDropHandle::new(match &handler.run {
        HandlerFn::Async(run) => tokio::spawn(run(payload, ctx)),
        HandlerFn::Blocking(run) => {
            let run = Arc::clone(run);
            tokio::task::spawn_blocking(move || run(payload, ctx))
        }
    });
    let timeout = record.timeout.or(handler.timeout);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let expiry = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    // The first beat is one period away: an interval's immediate first tick still goes through
    // the timer wheel, which would cost every attempt a millisecond.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + env.heartbeat_every,
        env.heartbeat_every,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            joined = &mut join => {
                return Some(match joined {
                    Ok(Ok(value)) => Outcome::Completed { result: value },
                    Ok(Err(RunError::Task(error))) => match error.kind() {
                        TaskErrorKind::Permanent => failed(FailureKind::Permanent, error.message().to_owned(), None),
                        TaskErrorKind::Retryable { after } => failed(FailureKind::Error, error.message().to_owned(), after),
                    },
                    Ok(Err(RunError::BadArguments(message))) => failed(FailureKind::BadArguments, message, None),
                    Err(error) => failed(FailureKind::Panic, panic_message(error), None),
                });
            }
            () = &mut expiry => {
                join.abort();
                let limit = timeout.unwrap_or_default();
                return Some(failed(FailureKind::Timeout, format!("the attempt ran past its timeout of {limit:?}"), None));
            }
            _ = heartbeat.tick() => {
                if let Err(error @ Error::StaleAttempt { .. }) = env.broker.heartbeat(record.id, record.attempts).await {
                    tracing::warn!(%error, "attempt lost its lease; abandoning it");
                    join.abort();
                    return None;
                }
            }
        }
    }
}

/// The tracing span of one attempt.
pub(super) fn attempt_span(record: &TaskRecord) -> tracing::Span {
    tracing::debug_span!(
        "task",
        task.id = %record.id,
        task.name = %record.name,
        queue = %record.queue,
        attempt = record.attempts,
    )
}

/// Events come from the broker when it emits them after its commits (the embedded engine);
/// over a remote one they happen in its process, so the worker emits them.
fn worker_events(env: &RunnerEnv) -> Option<&crate::events::EventBus> {
    (!env.broker.emits_events()).then(|| env.broker.events())
}

/// Runs one claimed attempt to its settlement; returns the next task claimed with it.
pub(super) async fn run_attempt(
    record: TaskRecord,
    env: &RunnerEnv,
) -> (Tally, Option<TaskRecord>) {
    let span = attempt_span(&record);
    async move {
        let record = Arc::new(record);
        let Some(outcome) = begin(&record, env).await else {
            env.drop_hold(record.id);
            return (Tally::Unrecorded, None);
        };
        let claim = usize::from(!env.shutdown.is_cancelled());
        let (settled, claimed) = settle_holding(env, &record, outcome.clone(), claim).await;
        let tally = conclude(&record, &outcome, settled, env);
        (tally, claimed.into_iter().next())
    }
    .instrument(span)
    .await
}

/// The first half of an attempt: its start announced, its handler run. `None` when the
/// attempt lost its lease and must not be settled.
pub(super) async fn begin(record: &Arc<TaskRecord>, env: &RunnerEnv) -> Option<Outcome> {
    if let Some(events) = worker_events(env) {
        let now = millis_to_datetime(env.broker.now_ms());
        events.emit(|| Event::new(EventKind::BeforeExecution, Arc::clone(record), now));
    }
    tracing::debug!("running");
    execute(record, env).await
}

/// Settles `record`'s attempt with `outcome`, claiming up to `claim` tasks in the same commit.
/// The tasks claimed are held and `record` let go with no await between the answer and that,
/// so an abort cannot lose track of a task claimed with it.
pub(super) async fn settle_holding(
    env: &RunnerEnv,
    record: &TaskRecord,
    outcome: Outcome,
    claim: usize,
) -> (crate::Result<SettleReport>, Vec<TaskRecord>) {
    let chained = loop {
        let settlement = Settlement {
            id: record.id,
            attempt: record.attempts,
            outcome: outcome.clone(),
        };
        let chained = if claim == 0 {
            env.broker.settle(settlement).await.map(|report| Chained {
                settled: Ok(report),
                claimed: Vec::new(),
            })
        } else {
            env.broker
                .settle_and_claim(settlement, ClaimRequest::now(&env.queues, claim))
                .await
        };
        // Refused, so not recorded: the attempt keeps its hold (its lease is renewed) and its
        // outcome, and is settled once the engine has healed, instead of running again after
        // its lease. A settlement that did land meanwhile makes the next one stale.
        match chained {
            Err(error) if waits_for_healing(&error) => {
                tracing::warn!(%error, "the engine refuses the settlement while it heals; trying again");
                tokio::time::sleep(HEALING_RETRY).await;
            }
            chained => break chained,
        }
    };
    let answer = match chained {
        Ok(Chained { settled, claimed }) => {
            for next in &claimed {
                env.hold(next.id, next.attempts);
            }
            (settled, claimed)
        }
        Err(error) => (Err(error), Vec::new()),
    };
    env.drop_hold(record.id);
    answer
}

/// How long a worker waits before it asks again an engine that refused it while healing.
pub(super) const HEALING_RETRY: Duration = Duration::from_millis(200);

/// The engine refused `error`'s call while it heals itself, locally or across the control
/// socket: the same call is accepted once it has healed, so a worker waits and asks again.
pub(super) fn waits_for_healing(error: &Error) -> bool {
    matches!(error, Error::Poisoned { healing: true, .. })
}

/// The second half of an attempt: what its settlement came to, logged, and its lifecycle
/// events emitted (over a remote broker).
pub(super) fn conclude(
    record: &Arc<TaskRecord>,
    outcome: &Outcome,
    settled: crate::Result<SettleReport>,
    env: &RunnerEnv,
) -> Tally {
    let report = match settled {
        Ok(report) => report,
        Err(error @ Error::StaleAttempt { .. }) => {
            tracing::warn!(%error, "outcome of a stale attempt rejected");
            return Tally::Unrecorded;
        }
        Err(error) => {
            tracing::error!(%error, "could not record the attempt's outcome");
            return Tally::Unrecorded;
        }
    };
    match outcome {
        Outcome::Completed { .. } => tracing::debug!("completed"),
        Outcome::Failed { failure, .. } if report.status == TaskStatus::Retrying => {
            tracing::debug!(error = %failure, "attempt failed; retrying");
        }
        Outcome::Failed { failure, .. } => {
            tracing::warn!(error = %failure, "task failed for good")
        }
        Outcome::Released => {}
    }
    if let Some(events) = worker_events(env).filter(|events| events.has_audience()) {
        let snapshot = report.record.clone().unwrap_or_else(|| Arc::clone(record));
        let retry_at = report.retry_at.map(millis_to_datetime);
        let now = millis_to_datetime(env.broker.now_ms());
        for event in Event::of_attempt_end(outcome, report.status, &snapshot, retry_at, now) {
            events.emit(|| event);
        }
    }
    match report.status {
        TaskStatus::Completed => Tally::Completed,
        TaskStatus::Retrying => Tally::Retrying,
        TaskStatus::Failed => Tally::Failed,
        _ => Tally::Unrecorded,
    }
}
