//! The task state machine: every move a task makes between statuses, as a pure function from
//! the stored task and the move's inputs (clock, attempt, outcome) to the task after the move
//! and its effects. No storage, no runtime, no threads: the local broker's writer applies the
//! effects (index rows and per-queue counts inside its transaction; the ready heap, the delay
//! index and the lease table after the commit). An illegal move is the typed error fq reports
//! for it (`WrongState`, `StaleAttempt`) and changes nothing.
//!
//! | from \ move | claim | settle | orphan | cancel | retry (operator) | forward | discard |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | PENDING, RETRYING | RUNNING | Stale | Stale | CANCELLED | Wrong | FORWARDED | gone |
//! | RUNNING | Wrong | COMPLETED, RETRYING, FAILED, PENDING (release) | RETRYING, FAILED | Wrong | Wrong | Wrong | gone |
//! | COMPLETED, FORWARDED | Wrong | Stale | Stale | Wrong | Wrong | Wrong | gone |
//! | FAILED, CANCELLED | Wrong | Stale | Stale | Wrong | PENDING | Wrong | gone |
//!
//! A settlement or orphaning is fenced by the attempt number: only the attempt the task is
//! RUNNING under may end it.
//!
//! `report` (RabbitMQ mode, the producer's side) applies a start or an outcome a worker
//! reported for a task this store forwarded, whatever the record's status, when it is newer
//! than what the record shows (by attempt, then start before end); anything else is `Stale`.
//! A reported RUNNING or RETRYING record holds no lease and no waiting row (`Route::Reported`).

use std::time::Duration;

use super::attempt::{AttemptOutcome, StoredAttempt};
use super::{
    FailureKind, Outcome, ReadyOrder, RetryPolicy, StoredFailure, StoredTask, TaskFailure, TaskId,
    TaskStatus,
};
use crate::clock::Millis;
use crate::error::Error;

/// One change a move makes besides the task record itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Enters the waiting index under this order; after the commit, the ready heap (due) or the
    /// delay index (not yet due).
    Wait(ReadyOrder),
    /// Leaves the waiting index; it was taken off the ready heap already (a claim).
    Dequeue(ReadyOrder),
    /// Leaves the waiting index and, after the commit, the delay index if it sits there.
    Withdraw(ReadyOrder),
    /// A lease for this attempt; after the commit, the in-memory lease table.
    Lease(u32),
    /// The lease goes, row and in-memory entry.
    Unlease,
    /// Enters the finished index under this status and time.
    Finish(TaskStatus, Millis),
    /// Leaves the finished index entry under this status and time.
    Unfinish(TaskStatus, Millis),
}

/// The effects of one move: never more than two, kept inline (a move is on every task's hot
/// path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects([Option<Effect>; 2]);

impl Effects {
    fn of(effects: &[Effect]) -> Self {
        let mut slots = [None; 2];
        for (slot, effect) in slots.iter_mut().zip(effects) {
            *slot = Some(*effect);
        }
        Self(slots)
    }

    /// The effects, in the order the move made them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Effect> + '_ {
        self.0.iter().flatten().copied()
    }
}

/// A move made: the task after it, its status before (for the per-queue counts; `None` for a
/// new task) and its effects.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub(crate) task: StoredTask,
    pub(crate) previous: Option<TaskStatus>,
    pub(crate) effects: Effects,
    /// When the next attempt may start, for a move that ends in RETRYING.
    pub(crate) retry_at: Option<Millis>,
    /// The attempt this move ended, for the task's history (README "Attempt history"): its
    /// worker is left for the writer to fill in, the one place that knows it.
    pub(crate) ended: Option<StoredAttempt>,
}

/// Why a RUNNING attempt lost its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Orphaned {
    /// The lease ran out: the worker stopped renewing it.
    LeaseExpired,
    /// The store was opened with the attempt still RUNNING: its process ended mid-run.
    ProcessEnded,
}

/// What the settling moves need besides the task: the time, the engine's retry policy and the
/// source of sequence numbers for tasks that re-enter the waiting index.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    pub(crate) now: Millis,
    pub(crate) retry: RetryPolicy,
    pub(crate) next_seq: &'a mut u64,
}

impl Context<'_> {
    fn take_seq(&mut self) -> u64 {
        let seq = *self.next_seq;
        *self.next_seq += 1;
        seq
    }
}

/// The waiting order of a task as stored.
pub(crate) fn order_of(task: &StoredTask) -> ReadyOrder {
    ReadyOrder::new(task.priority, task.due_at, task.seq)
}

/// A new task enters its queue: PENDING, waiting from its `due_at`.
pub(crate) fn queue(mut task: StoredTask, next_seq: &mut u64) -> Step {
    task.status = TaskStatus::Pending;
    task.seq = *next_seq;
    *next_seq += 1;
    let order = order_of(&task);
    Step {
        task,
        previous: None,
        effects: Effects::of(&[Effect::Wait(order)]),
        retry_at: None,
        ended: None,
    }
}

/// A worker claims a waiting task it took off the ready heap under `taken`: RUNNING, one more
/// attempt counted, leased.
///
/// # Errors
/// `WrongState` when the task no longer waits, or waits under another order (the heap entry is
/// stale: cancelled, or re-queued since it was pushed).
pub(crate) fn claim(
    mut task: StoredTask,
    id: TaskId,
    taken: ReadyOrder,
    now: Millis,
) -> Result<Step, Error> {
    waiting_under(&task, id, taken, "claim")?;
    let previous = task.status;
    task.status = TaskStatus::Running;
    task.attempts += 1;
    task.started_at = Some(now);
    let attempt = task.attempts;
    Ok(Step {
        task,
        previous: Some(previous),
        effects: Effects::of(&[Effect::Dequeue(taken), Effect::Lease(attempt)]),
        retry_at: None,
        ended: None,
    })
}

/// The worker of `attempt` reports how it ended: COMPLETED, RETRYING or FAILED (see
/// [`finish_run`]), or back to PENDING with the attempt uncounted when released.
///
/// # Errors
/// `StaleAttempt` unless the task is RUNNING under `attempt`.
pub(crate) fn settle(
    mut task: StoredTask,
    id: TaskId,
    attempt: u32,
    outcome: &Outcome,
    ctx: &mut Context<'_>,
) -> Result<Step, Error> {
    fence(&task, id, attempt)?;
    if matches!(outcome, Outcome::Released) {
        let ended = StoredAttempt {
            attempt,
            started_at: task.started_at.unwrap_or(ctx.now),
            finished_at: ctx.now,
            worker: None,
            outcome: AttemptOutcome::Released,
            error: None,
        };
        task.attempts -= 1;
        task.started_at = None;
        task.status = TaskStatus::Pending;
        task.due_at = ctx.now;
        task.seq = ctx.take_seq();
        let order = order_of(&task);
        return Ok(Step {
            task,
            previous: Some(TaskStatus::Running),
            effects: Effects::of(&[Effect::Unlease, Effect::Wait(order)]),
            retry_at: None,
            ended: Some(ended),
        });
    }
    let mut step = finish_run(task, id, outcome, ctx)?;
    let [first, _] = step.effects.0;
    step.effects = Effects([Some(Effect::Unlease), first]);
    Ok(step)
}

/// The attempt lost its worker: it counts as failed with [`FailureKind::WorkerLost`], and the
/// task runs again at once (the lease or the restart already made it wait) while retries
/// remain, else FAILED.
///
/// # Errors
/// `StaleAttempt` unless the task is RUNNING under `attempt` (a settlement won the race).
pub(crate) fn orphan(
    task: StoredTask,
    id: TaskId,
    attempt: u32,
    why: Orphaned,
    ctx: &mut Context<'_>,
) -> Result<Step, Error> {
    let message = match why {
        Orphaned::LeaseExpired => format!(
            "the worker running attempt {attempt} stopped renewing its lease (presumed dead)"
        ),
        Orphaned::ProcessEnded => format!(
            "the process running attempt {attempt} stopped before the attempt finished (crash or kill)"
        ),
    };
    let outcome = Outcome::Failed {
        failure: TaskFailure {
            message,
            kind: FailureKind::WorkerLost,
        },
        retry_after: Some(Duration::ZERO),
    };
    settle(task, id, attempt, &outcome, ctx)
}

/// Applies a completed or failed run to a RUNNING task (no lease involved: [`settle`] adds
/// it; a run delivered by RabbitMQ has none): COMPLETED with its result; RETRYING in the
/// waiting index after the handler's delay or the backoff while the failure is retryable and
/// retries remain; FAILED otherwise.
///
/// # Errors
/// `WrongState` for a task that is not RUNNING or a released run (never recorded).
pub(crate) fn finish_run(
    mut task: StoredTask,
    id: TaskId,
    outcome: &Outcome,
    ctx: &mut Context<'_>,
) -> Result<Step, Error> {
    let wrong_state = |status| Error::WrongState {
        id,
        status,
        operation: "record the end of a run",
        allowed: "RUNNING tasks, with a completed or failed run",
    };
    if task.status != TaskStatus::Running {
        return Err(wrong_state(task.status));
    }
    let now = ctx.now;
    let mut retry_at = None;
    let ended = StoredAttempt {
        attempt: task.attempts,
        started_at: task.started_at.unwrap_or(now),
        finished_at: now,
        worker: None,
        outcome: match outcome {
            Outcome::Failed { failure, .. } => AttemptOutcome::of_failure(failure.kind),
            Outcome::Completed { .. } => AttemptOutcome::Completed,
            // Refused below: a released run is recorded by `settle`.
            Outcome::Released => AttemptOutcome::Released,
        },
        error: match outcome {
            Outcome::Failed { failure, .. } => Some(StoredFailure {
                message: failure.message.clone(),
                kind: failure.kind,
            }),
            Outcome::Completed { .. } | Outcome::Released => None,
        },
    };
    let effect = match outcome {
        Outcome::Completed { result } => {
            task.status = TaskStatus::Completed;
            task.result = Some(result.to_string());
            task.error = None;
            task.finished_at = Some(now);
            Effect::Finish(TaskStatus::Completed, now)
        }
        Outcome::Failed {
            failure,
            retry_after,
        } => {
            task.error = Some(StoredFailure {
                message: failure.message.clone(),
                kind: failure.kind,
            });
            if failure.kind.is_retryable() && task.attempts <= task.max_retries {
                let policy = RetryPolicy {
                    base: task
                        .retry_delay_ms
                        .map_or(ctx.retry.base, Duration::from_millis),
                    ..ctx.retry
                };
                let delay = retry_after.unwrap_or_else(|| policy.jittered_delay(task.attempts));
                let delay_ms = crate::clock::duration_millis(delay);
                task.status = TaskStatus::Retrying;
                task.due_at = now.saturating_add(delay_ms);
                task.seq = ctx.take_seq();
                retry_at = Some(task.due_at);
                Effect::Wait(order_of(&task))
            } else {
                task.status = TaskStatus::Failed;
                task.finished_at = Some(now);
                Effect::Finish(TaskStatus::Failed, now)
            }
        }
        Outcome::Released => return Err(wrong_state(task.status)),
    };
    Ok(Step {
        task,
        previous: Some(TaskStatus::Running),
        effects: Effects::of(&[effect]),
        retry_at,
        ended: Some(ended),
    })
}

/// An operator cancels a waiting task: CANCELLED, out of every waiting index, naming `by`
/// (who cancelled it, as the caller described itself).
///
/// # Errors
/// `WrongState` unless the task is PENDING or RETRYING and not being published to RabbitMQ
/// (`being_forwarded`: its message may be there already).
pub(crate) fn cancel(
    mut task: StoredTask,
    id: TaskId,
    being_forwarded: bool,
    now: Millis,
    by: String,
) -> Result<Step, Error> {
    if !task.status.is_waiting() {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation: "cancel",
            allowed: "PENDING or RETRYING tasks",
        });
    }
    if task.is_reported() {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation: "cancel",
            allowed: "tasks waiting in this store (this retry waits in the store of the \
                      RabbitMQ worker that ran the task)",
        });
    }
    if being_forwarded {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation: "cancel",
            allowed: "tasks that are not being published to RabbitMQ at this moment \
                      (try again: within seconds it is FORWARDED, or back in the outbox \
                      and cancellable)",
        });
    }
    let order = order_of(&task);
    let previous = task.status;
    task.status = TaskStatus::Cancelled;
    task.finished_at = Some(now);
    task.cancelled_by = Some(by);
    Ok(Step {
        task,
        previous: Some(previous),
        effects: Effects::of(&[
            Effect::Withdraw(order),
            Effect::Finish(TaskStatus::Cancelled, now),
        ]),
        retry_at: None,
        ended: None,
    })
}

/// An operator retries a FAILED or CANCELLED task: PENDING now, with a fresh retry budget.
///
/// # Errors
/// `WrongState` for any other status.
pub(crate) fn retry(
    mut task: StoredTask,
    id: TaskId,
    ctx: &mut Context<'_>,
) -> Result<Step, Error> {
    if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation: "retry",
            allowed: "FAILED or CANCELLED tasks",
        });
    }
    let previous = task.status;
    let unfinish = task.finished_at.map(|at| Effect::Unfinish(previous, at));
    if task.is_reported() {
        // Queued again here: this store forwards it and hears of its runs anew.
        task.route = None;
    }
    task.attempts = 0;
    task.error = None;
    task.result = None;
    task.started_at = None;
    task.finished_at = None;
    task.cancelled_by = None;
    task.status = TaskStatus::Pending;
    task.due_at = ctx.now;
    task.seq = ctx.take_seq();
    let wait = Effect::Wait(order_of(&task));
    let effects = match unfinish {
        Some(unfinish) => Effects::of(&[unfinish, wait]),
        None => Effects::of(&[wait]),
    };
    Ok(Step {
        task,
        previous: Some(previous),
        effects,
        retry_at: None,
        ended: None,
    })
}

/// RabbitMQ confirmed a task the forwarder took under `taken`: FORWARDED at `at`, a terminal
/// status for this store (RabbitMQ owns the task now).
///
/// # Errors
/// `WrongState` when the task moved on since it was taken (cancelled, or already run).
pub(crate) fn forward(
    mut task: StoredTask,
    id: TaskId,
    taken: ReadyOrder,
    at: Millis,
) -> Result<Step, Error> {
    waiting_under(&task, id, taken, "forward")?;
    let previous = task.status;
    task.status = TaskStatus::Forwarded;
    task.finished_at = Some(at);
    Ok(Step {
        task,
        previous: Some(previous),
        effects: Effects::of(&[
            // Taken off the heap already; this matters only if it was put back meanwhile.
            Effect::Withdraw(taken),
            Effect::Finish(TaskStatus::Forwarded, at),
        ]),
        retry_at: None,
        ended: None,
    })
}

/// The task leaves the store whatever its status (purge, or a RabbitMQ run replacing the
/// record): the index rows and in-memory entries to remove with its record.
pub(crate) fn discard(task: &StoredTask) -> Effects {
    if task.waits_here() {
        Effects::of(&[Effect::Withdraw(order_of(task))])
    } else if task.leased_here() {
        Effects::of(&[Effect::Unlease])
    } else if let Some(at) = task.finished_at.filter(|_| task.status.is_terminal()) {
        Effects::of(&[Effect::Unfinish(task.status, at)])
    } else {
        Effects::default()
    }
}

fn fence(task: &StoredTask, id: TaskId, attempt: u32) -> Result<(), Error> {
    if !task.leased_here() || task.attempts != attempt {
        return Err(Error::StaleAttempt {
            id,
            attempt,
            current: task.attempts,
            status: task.status,
        });
    }
    Ok(())
}

fn waiting_under(
    task: &StoredTask,
    id: TaskId,
    taken: ReadyOrder,
    operation: &'static str,
) -> Result<(), Error> {
    if !task.waits_here() {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation,
            allowed: "PENDING or RETRYING tasks",
        });
    }
    if task.seq != taken.seq {
        return Err(Error::WrongState {
            id,
            status: task.status,
            operation,
            allowed: "tasks still waiting under the order they were taken with",
        });
    }
    Ok(())
}

mod report;

pub(crate) use report::{Report, report};
// Named outside this module only by the RabbitMQ bridge and the report outbox's tests.
#[cfg_attr(not(feature = "rabbitmq"), allow(unused_imports))]
pub(crate) use report::RunEnd;

#[cfg(test)]
mod tests;
