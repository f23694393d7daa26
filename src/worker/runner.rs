//! One attempt, start to finish: look up the handler, run it (async on the runtime, sync on
//! the blocking pool) under its timeout with heartbeats, turn an error, a panic or a timeout
//! into a failed attempt, settle it, and emit the lifecycle events in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinError;
use tracing::Instrument;

use super::TaskContext;
use crate::Error;
use crate::broker::{Broker, EnqueueDefaults, Outcome, Settlement};
use crate::clock::millis_to_datetime;
use crate::events::{Event, EventKind};
use crate::task::{
    FailureKind, HandlerFn, Registry, RunError, TaskErrorKind, TaskFailure, TaskRecord, TaskStatus,
};

/// What every attempt of one worker shares.
#[derive(Debug)]
pub(super) struct RunnerEnv {
    pub(super) broker: Arc<dyn Broker>,
    pub(super) registry: Arc<Registry>,
    pub(super) defaults: Arc<EnqueueDefaults>,
    pub(super) heartbeat_every: Duration,
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

fn panic_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-text payload".to_owned()),
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
async fn execute(record: &TaskRecord, env: &RunnerEnv) -> Option<Outcome> {
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
    let mut join = match &handler.run {
        HandlerFn::Async(run) => tokio::spawn(run(payload, ctx)),
        HandlerFn::Blocking(run) => {
            let run = Arc::clone(run);
            tokio::task::spawn_blocking(move || run(payload, ctx))
        }
    };
    let timeout = record.timeout.or(handler.timeout);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let expiry = async move {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let mut heartbeat = tokio::time::interval(env.heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
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

/// Runs one claimed attempt to its settlement.
pub(super) async fn run_attempt(record: TaskRecord, env: Arc<RunnerEnv>) -> Tally {
    let span = tracing::debug_span!(
        "task",
        task.id = %record.id,
        task.name = %record.name,
        queue = %record.queue,
        attempt = record.attempts,
    );
    async move {
        let events = env.broker.events();
        let record = Arc::new(record);
        let now = || millis_to_datetime(env.broker.now_ms());
        events.emit(|| Event::new(EventKind::BeforeExecution, Arc::clone(&record), now()));
        tracing::debug!("running");
        let Some(outcome) = execute(&record, &env).await else {
            return Tally::Unrecorded;
        };
        let settlement = Settlement {
            id: record.id,
            attempt: record.attempts,
            outcome: outcome.clone(),
        };
        let report = match env.broker.settle(settlement).await {
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
        let snapshot = report.record.clone().unwrap_or_else(|| Arc::clone(&record));
        match outcome {
            Outcome::Completed { result } => {
                tracing::debug!("completed");
                events.emit(|| {
                    let mut event =
                        Event::new(EventKind::AfterExecution, Arc::clone(&snapshot), now());
                    event.result = Some(result);
                    event
                });
            }
            Outcome::Failed { failure, .. } => {
                events.emit(|| {
                    let mut event =
                        Event::new(EventKind::ExecutionError, Arc::clone(&snapshot), now());
                    event.error = Some(failure.clone());
                    event
                });
                if report.status == TaskStatus::Retrying {
                    tracing::debug!(error = %failure, "attempt failed; retrying");
                    events.emit(|| {
                        let mut event =
                            Event::new(EventKind::Retrying, Arc::clone(&snapshot), now());
                        event.error = Some(failure.clone());
                        event.retry_at = report.retry_at.map(millis_to_datetime);
                        event
                    });
                } else {
                    tracing::warn!(error = %failure, "task failed for good");
                    events.emit(|| {
                        let mut event = Event::new(EventKind::Failed, Arc::clone(&snapshot), now());
                        event.error = Some(failure);
                        event
                    });
                }
            }
            Outcome::Released => {}
        }
        match report.status {
            TaskStatus::Completed => Tally::Completed,
            TaskStatus::Retrying => Tally::Retrying,
            TaskStatus::Failed => Tally::Failed,
            _ => Tally::Unrecorded,
        }
    }
    .instrument(span)
    .await
}
