//! The RabbitMQ producer's move: applying a start or an outcome that the worker running a
//! forwarded task reported back (README "RabbitMQ", outcomes). Pure, as the rest of the state
//! machine: the task and the report in, the task after the move and its effects out.

use super::{Effect, Effects, Step, discard};
use crate::clock::Millis;
use crate::error::Error;
use crate::task::attempt::{AttemptOutcome, StoredAttempt};
use crate::task::{Outcome, Route, StoredFailure, StoredTask, TaskId, TaskStatus};

/// What the worker running a forwarded task reports back over RabbitMQ (README "RabbitMQ").
/// Serialized (postcard) only in the worker's outbox of unsent reports (`store/reports.rs`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) enum Report {
    /// Run `attempt` (1-based) started at `at`.
    Started { attempt: u32, at: Millis },
    /// A run ended.
    Ended(RunEnd),
}

/// Run `attempt` ended at `at`: COMPLETED with `result` (JSON text), RETRYING (the retry waits
/// in the worker's store, due at `retry_at`) or FAILED, with `error`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) struct RunEnd {
    pub(crate) attempt: u32,
    pub(crate) status: TaskStatus,
    pub(crate) started_at: Option<Millis>,
    pub(crate) at: Millis,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<StoredFailure>,
    pub(crate) retry_at: Option<Millis>,
}

impl Report {
    /// The report of run `attempt`, started at `started_at`, that ended at `at` with
    /// `outcome` and left the task `status` (COMPLETED, RETRYING or FAILED; due again at
    /// `retry_at` when RETRYING).
    pub(crate) fn ended(
        attempt: u32,
        status: TaskStatus,
        started_at: Option<Millis>,
        outcome: &Outcome,
        retry_at: Option<Millis>,
        at: Millis,
    ) -> Self {
        let (result, error) = match outcome {
            Outcome::Completed { result } => (Some(result.to_string()), None),
            Outcome::Failed { failure, .. } => (
                None,
                Some(StoredFailure {
                    message: failure.message.clone(),
                    kind: failure.kind,
                }),
            ),
            Outcome::Released => (None, None),
        };
        Report::Ended(RunEnd {
            attempt,
            status,
            started_at,
            at,
            result,
            error,
            retry_at,
        })
    }

    /// The run it is about.
    pub(crate) fn attempt(&self) -> u32 {
        match self {
            Report::Started { attempt, .. } | Report::Ended(RunEnd { attempt, .. }) => *attempt,
        }
    }

    /// How far along the task's life it is: (run, 1 for a start, 2 for an end).
    fn progress(&self) -> (u32, u8) {
        match self {
            Report::Started { attempt, .. } => (*attempt, 1),
            Report::Ended(RunEnd { attempt, .. }) => (*attempt, 2),
        }
    }
}

/// How far along its life a stored record is, in [`Report::progress`]'s terms: a RUNNING
/// record is at its run's start, any other at the end of its last run (0 before the first).
fn progress_of(task: &StoredTask) -> (u32, u8) {
    (
        task.attempts,
        if task.status == TaskStatus::Running {
            1
        } else {
            2
        },
    )
}

/// Applies a start or outcome reported for a task this store forwarded: RUNNING,
/// COMPLETED, RETRYING or FAILED on [`Route::Reported`], leaving whatever rows the record
/// held (the outbox's waiting row, FORWARDED's finished row) and entering the finished index
/// for COMPLETED and FAILED. Reports may arrive twice and out of order: only one newer than
/// the record (a later run, or the end of the run it shows started) is applied.
///
/// # Errors
/// `StaleAttempt` for a report that is not newer than the record; `WrongState` for an end
/// whose status is not COMPLETED, RETRYING or FAILED.
pub(crate) fn report(mut task: StoredTask, id: TaskId, report: &Report) -> Result<Step, Error> {
    if report.progress() <= progress_of(&task) {
        return Err(Error::StaleAttempt {
            id,
            attempt: report.attempt(),
            current: task.attempts,
            status: task.status,
        });
    }
    let previous = task.status;
    let leave = discard(&task).iter().next();
    let mut retry_at = None;
    // An outcome is a run that ended elsewhere: it joins the history here too (the worker
    // that ran it is not named over RabbitMQ).
    let ended = match report {
        Report::Started { .. } => None,
        Report::Ended(RunEnd {
            attempt,
            status,
            started_at,
            at,
            error,
            ..
        }) => Some(StoredAttempt {
            attempt: *attempt,
            started_at: started_at.unwrap_or(*at),
            finished_at: *at,
            worker: None,
            outcome: match (status, error) {
                (TaskStatus::Completed, _) => AttemptOutcome::Completed,
                (_, Some(error)) => AttemptOutcome::of_failure(error.kind),
                (_, None) => AttemptOutcome::Error,
            },
            error: error.clone(),
        }),
    };
    let enter = match report {
        Report::Started { attempt, at } => {
            task.status = TaskStatus::Running;
            task.attempts = *attempt;
            task.started_at = Some(*at);
            task.finished_at = None;
            task.result = None;
            None
        }
        Report::Ended(end) => {
            if !matches!(
                end.status,
                TaskStatus::Completed | TaskStatus::Retrying | TaskStatus::Failed
            ) {
                return Err(Error::WrongState {
                    id,
                    status: end.status,
                    operation: "apply a reported outcome",
                    allowed: "outcomes COMPLETED, RETRYING or FAILED",
                });
            }
            task.status = end.status;
            task.attempts = end.attempt;
            task.started_at = end.started_at.or(task.started_at);
            task.result = end.result.clone();
            task.error = end.error.clone();
            if end.status == TaskStatus::Retrying {
                task.finished_at = None;
                task.due_at = end.retry_at.unwrap_or(end.at);
                retry_at = Some(task.due_at);
                None
            } else {
                task.finished_at = Some(end.at);
                Some(Effect::Finish(end.status, end.at))
            }
        }
    };
    task.route = Some(Route::Reported);
    let effects = match (leave, enter) {
        (None, second) => Effects([second, None]),
        (first, second) => Effects([first, second]),
    };
    Ok(Step {
        task,
        previous: Some(previous),
        effects,
        retry_at,
        ended,
    })
}
