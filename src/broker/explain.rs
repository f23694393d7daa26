//! `fq why` / `Engine::explain`: where a task stands and what it waits for, as facts (a
//! serializable struct) and the same facts in plain sentences. A pure function of what the
//! engine knows (the record, its attempt history, its place in its queue, the queue's pause
//! and limits, the live workers, the lease): the broker gathers them, nothing here reads
//! the store or the clock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::workers::WorkersReport;
use crate::config::QueueLimits;
use crate::task::{
    AttemptOutcome, AttemptRecord, FailureKind, TaskFailure, TaskId, TaskRecord, TaskStatus,
    WorkerId,
};

/// Why a finished task ended the way it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// Its handler returned a value.
    Completed,
    /// Every allowed run failed (`max_retries` spent).
    RetriesSpent,
    /// Its handler returned an error marked permanent.
    PermanentError,
    /// No worker that claimed it had a handler registered under its name.
    UnknownHandler,
    /// Its arguments did not fit its handler's argument type.
    BadArguments,
    /// It was cancelled before it ran to the end.
    Cancelled,
    /// It was handed to RabbitMQ (config `broker: rabbitmq`), which owns it now.
    Forwarded,
}

/// Where a task stands and what it waits for (`Engine::explain`, `fq why --json`). Fields
/// that do not apply to the task's status are `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Explanation {
    /// The task.
    pub id: TaskId,
    /// Its name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Its status.
    pub status: TaskStatus,
    /// The facts below, as sentences.
    pub sentences: Vec<String>,
    /// Runs started so far (the current one included).
    pub attempts: u32,
    /// Runs allowed: `max_retries + 1`.
    pub max_attempts: u32,
    /// PENDING/RETRYING: tasks of its queue that will start before it (by priority, then
    /// due time).
    pub ahead: Option<u64>,
    /// PENDING/RETRYING: when it may run (the retry time while RETRYING).
    pub due_at: Option<DateTime<Utc>>,
    /// PENDING/RETRYING: true when that time has come.
    pub due: Option<bool>,
    /// True when its queue is paused.
    pub queue_paused: bool,
    /// Its queue's concurrency and rate limits, when it has any.
    #[serde(default, skip_serializing_if = "QueueLimits::is_unlimited")]
    pub queue_limits: QueueLimits,
    /// PENDING/RETRYING: live workers serving its queue.
    pub workers_serving_queue: Option<usize>,
    /// PENDING/RETRYING: live workers serving its queue with a handler for its name.
    pub workers_with_handler: Option<usize>,
    /// The last error (RETRYING, FAILED; or a COMPLETED task's earlier failure).
    pub last_error: Option<TaskFailure>,
    /// RUNNING: the worker running it, when known.
    pub worker: Option<WorkerId>,
    /// RUNNING: that worker's host, when known.
    pub worker_host: Option<String>,
    /// RUNNING: when the current run started.
    pub running_since: Option<DateTime<Utc>>,
    /// RUNNING: when its lease expires unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// COMPLETED/FAILED/CANCELLED/FORWARDED: why it ended.
    pub ended_because: Option<EndReason>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// CANCELLED: who cancelled it, as they described themselves.
    pub cancelled_by: Option<String>,
    /// What an operator can do about it, as a command (`fq retry ID`).
    pub remedy: Option<String>,
}

/// What the broker knows about a task, gathered for [`explain`].
#[derive(Debug)]
pub(crate) struct Facts {
    pub(crate) record: TaskRecord,
    pub(crate) history: Vec<AttemptRecord>,
    /// Tasks ahead of it in its queue (PENDING/RETRYING only).
    pub(crate) ahead: Option<u64>,
    pub(crate) paused: bool,
    pub(crate) limits: QueueLimits,
    /// RUNNING tasks of its queue now (to say a concurrency limit is reached).
    pub(crate) running_in_queue: u64,
    pub(crate) workers: WorkersReport,
    pub(crate) lease_expires_at: Option<DateTime<Utc>>,
    pub(crate) now: DateTime<Utc>,
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// The explanation of a task from the facts about it.
pub(crate) fn explain(facts: Facts) -> Explanation {
    let Facts {
        record,
        history,
        ahead,
        paused,
        limits,
        running_in_queue,
        workers,
        lease_expires_at,
        now,
    } = facts;
    let id = record.id;
    let max_attempts = record.max_retries.saturating_add(1);
    let mut out = Explanation {
        id,
        name: record.name.clone(),
        queue: record.queue.clone(),
        status: record.status,
        sentences: Vec::new(),
        attempts: record.attempts,
        max_attempts,
        ahead: None,
        due_at: None,
        due: None,
        queue_paused: paused,
        queue_limits: limits,
        workers_serving_queue: None,
        workers_with_handler: None,
        last_error: record.error.clone(),
        worker: None,
        worker_host: None,
        running_since: None,
        lease_expires_at: None,
        ended_because: None,
        finished_at: record.finished_at,
        cancelled_by: record.cancelled_by.clone(),
        remedy: None,
    };
    let says = &mut out.sentences;
    let queue = &record.queue;
    match record.status {
        TaskStatus::Pending | TaskStatus::Retrying => {
            if record.status == TaskStatus::Retrying {
                says.push(format!(
                    "Task {id} is RETRYING: attempt {} of {max_attempts} failed.",
                    record.attempts
                ));
                if let Some(error) = &record.error {
                    says.push(format!(
                        "Its last error ({}): {}.",
                        error.kind, error.message
                    ));
                }
            } else {
                says.push(format!("Task {id} is PENDING in queue {queue}."));
            }
            let due = record.due_at <= now;
            out.due_at = Some(record.due_at);
            out.due = Some(due);
            if due {
                says.push(format!("It has been due since {}.", when(record.due_at)));
            } else {
                let verb = if record.status == TaskStatus::Retrying {
                    "Its next run is due at"
                } else {
                    "It becomes due at"
                };
                says.push(format!("{verb} {}.", when(record.due_at)));
            }
            if let Some(ahead) = ahead {
                out.ahead = Some(ahead);
                says.push(match ahead {
                    0 => format!("No task of queue {queue} will start before it."),
                    1 => format!("1 task of queue {queue} will start before it."),
                    n => format!("{n} tasks of queue {queue} will start before it."),
                });
            }
            if paused {
                says.push(format!(
                    "Queue {queue} is paused: none of its tasks start until `fq resume {queue}`."
                ));
            }
            if let Some(concurrency) = limits.concurrency
                && running_in_queue >= u64::from(concurrency)
            {
                says.push(format!(
                    "Queue {queue} is at its concurrency limit ({running_in_queue} running, \
                     limit {concurrency}): it starts when one of them ends."
                ));
            }
            if let Some(rate) = limits.rate {
                says.push(format!(
                    "Queue {queue} is rate-limited to {rate}: its starts are spread out."
                ));
            }
            let serving: Vec<_> = workers.serving(queue).collect();
            let with_handler = serving
                .iter()
                .filter(|w| w.info.handlers.contains(&record.name))
                .count();
            out.workers_serving_queue = Some(serving.len());
            out.workers_with_handler = Some(with_handler);
            if serving.is_empty() {
                says.push(format!(
                    "No live worker serves queue {queue}: start one with \
                     `fq worker start --queues {queue}`."
                ));
            } else if with_handler == 0 {
                says.push(format!(
                    "No live worker has handler {}: {} worker(s) serve queue {queue}, none \
                     registers that name (it would fail as an unknown task).",
                    record.name,
                    serving.len()
                ));
            } else {
                says.push(format!(
                    "{with_handler} live worker(s) serve queue {queue} with handler {}.",
                    record.name
                ));
            }
        }
        TaskStatus::Running => {
            says.push(format!(
                "Task {id} is RUNNING: attempt {} of {max_attempts}.",
                record.attempts
            ));
            out.running_since = record.started_at;
            out.lease_expires_at = lease_expires_at;
            match workers.running(id) {
                Some((worker, run)) if run.attempt == record.attempts => {
                    out.worker = Some(worker.info.id);
                    out.worker_host = Some(worker.info.host.clone());
                    says.push(format!(
                        "Worker {} on {} (pid {}) runs it.",
                        worker.info.id, worker.info.host, worker.info.pid
                    ));
                }
                _ => says.push("No live worker says it runs it.".to_owned()),
            }
            if let Some(since) = record.started_at {
                says.push(format!("It started at {}.", when(since)));
            }
            if let Some(expires) = lease_expires_at {
                says.push(format!(
                    "Its lease expires at {} unless the worker renews it; then it is retried.",
                    when(expires)
                ));
            }
        }
        TaskStatus::Completed => {
            out.ended_because = Some(EndReason::Completed);
            says.push(format!(
                "Task {id} is COMPLETED: its handler returned a value on attempt {} of {max_attempts}.",
                record.attempts
            ));
            let failed_before = history
                .iter()
                .filter(|a| a.outcome != AttemptOutcome::Completed)
                .count();
            if failed_before > 0 {
                says.push(format!(
                    "{failed_before} earlier attempt(s) did not complete (see `fq show {id}`)."
                ));
            }
            out.last_error = history.iter().rev().find_map(|a| a.error.clone());
        }
        TaskStatus::Failed => {
            let kind = record.error.as_ref().map(|e| e.kind);
            let reason = match kind {
                Some(FailureKind::Permanent) => EndReason::PermanentError,
                Some(FailureKind::UnknownTask) => EndReason::UnknownHandler,
                Some(FailureKind::BadArguments) => EndReason::BadArguments,
                _ => EndReason::RetriesSpent,
            };
            out.ended_because = Some(reason);
            let why = match reason {
                EndReason::PermanentError => "its handler returned a permanent error".to_owned(),
                EndReason::UnknownHandler => format!(
                    "the worker that claimed it has no handler registered under {}",
                    record.name
                ),
                EndReason::BadArguments => {
                    "its arguments do not fit its handler's argument type".to_owned()
                }
                _ => format!(
                    "all {max_attempts} allowed runs failed (max_retries {})",
                    record.max_retries
                ),
            };
            says.push(format!(
                "Task {id} is FAILED after {} attempt(s): {why}.",
                record.attempts
            ));
            if let Some(error) = &record.error {
                says.push(format!(
                    "Its last error ({}): {}.",
                    error.kind, error.message
                ));
            }
            out.remedy = Some(format!("fq retry {id}"));
            says.push(format!(
                "To run it again with a fresh retry budget: `fq retry {id}`."
            ));
        }
        TaskStatus::Cancelled => {
            out.ended_because = Some(EndReason::Cancelled);
            let by = record
                .cancelled_by
                .as_deref()
                // Records cancelled before fq kept who did it.
                .unwrap_or("`fq cancel` or the API");
            match record.finished_at {
                Some(at) => says.push(format!(
                    "Task {id} is CANCELLED: it was cancelled at {} by {by} before it ran to the end.",
                    when(at)
                )),
                None => says.push(format!("Task {id} is CANCELLED by {by}.")),
            }
            out.remedy = Some(format!("fq retry {id}"));
            says.push(format!("To queue it again: `fq retry {id}`."));
        }
        _ => {
            out.ended_because = Some(EndReason::Forwarded);
            says.push(format!(
                "Task {id} is {}: it was handed to RabbitMQ, which owns it now; the store of \
                 the worker that runs it records its runs.",
                record.status
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::workers::{WorkerInfo, WorkerRegistry};
    use crate::clock::millis_to_datetime;

    fn record(status: TaskStatus) -> TaskRecord {
        let mut record: TaskRecord = serde_json::from_value(serde_json::json!({
            "id": TaskId::new(), "name": "app.mail", "queue": "emails", "priority": 0,
            "payload": {"args": [], "kwargs": {}}, "status": status, "attempts": 1,
            "max_retries": 3, "created_at": millis_to_datetime(0),
            "scheduled_at": millis_to_datetime(0), "due_at": millis_to_datetime(0),
            "started_at": null, "finished_at": null, "result": null, "error": null
        }))
        .unwrap();
        record.attempts = 1;
        record
    }

    fn facts(record: TaskRecord, workers: WorkersReport) -> Facts {
        Facts {
            record,
            history: Vec::new(),
            ahead: Some(2),
            paused: false,
            limits: QueueLimits::default(),
            running_in_queue: 0,
            workers,
            lease_expires_at: None,
            now: millis_to_datetime(1_000),
        }
    }

    fn workers_with(queues: &[&str], handlers: &[&str]) -> WorkersReport {
        let registry = WorkerRegistry::default();
        registry.announce(
            WorkerInfo::of_this_process(
                queues.iter().map(|q| (*q).to_owned()).collect(),
                handlers.iter().map(|h| (*h).to_owned()).collect(),
                1,
                millis_to_datetime(0),
            ),
            1_000,
        );
        registry.report(1_000)
    }

    #[test]
    fn pending_names_what_it_waits_for() {
        let none = explain(facts(record(TaskStatus::Pending), WorkersReport::default()));
        assert_eq!(none.ahead, Some(2));
        assert_eq!(none.workers_serving_queue, Some(0));
        assert!(
            none.sentences
                .iter()
                .any(|s| s.contains("No live worker serves queue emails"))
        );
        let wrong = explain(facts(
            record(TaskStatus::Pending),
            workers_with(&["emails"], &["app.other"]),
        ));
        assert_eq!(wrong.workers_with_handler, Some(0));
        assert!(
            wrong
                .sentences
                .iter()
                .any(|s| s.contains("No live worker has handler app.mail"))
        );
        let good = explain(facts(
            record(TaskStatus::Pending),
            workers_with(&["emails"], &["app.mail"]),
        ));
        assert_eq!(good.workers_with_handler, Some(1));
        assert!(!good.sentences.iter().any(|s| s.contains("No live worker")));
    }

    #[test]
    fn failed_says_why_and_what_to_do() {
        let mut failed = record(TaskStatus::Failed);
        failed.error = Some(TaskFailure {
            message: "no handler".into(),
            kind: FailureKind::UnknownTask,
        });
        let explained = explain(facts(failed, WorkersReport::default()));
        assert_eq!(explained.ended_because, Some(EndReason::UnknownHandler));
        assert_eq!(explained.remedy, Some(format!("fq retry {}", explained.id)));
    }
}
