//! Each op's arguments and results as they cross the wire (docs/protocol.md "Ops"), with the
//! conversions to and from the broker's own types. Plain data: no I/O, no checks beyond shape.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::WireError;
use crate::broker::{CleanupReport, ListQuery, Queued};
use crate::task::{Payload, TaskFailure, TaskId, TaskRecord, TaskStatus};

/// A task to queue. Everything but `name` falls back to the server's defaults.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireTask {
    /// A fresh id chosen by the client (UUID v7); the server assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<TaskId>,
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_delay_ms: Option<u64>,
    /// First run no sooner than this (ms since the epoch); wins over `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run_at_ms: Option<i64>,
    /// First run no sooner than this long after the server receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delay_ms: Option<u64>,
    /// Queue it only if no task holds this key (README "Unique tasks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<String>,
    /// With `unique_key`: the key stays held this long after the task's creation, finished
    /// or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_for_ms: Option<u64>,
}

/// A task to queue as the Rust client writes it: the payload goes out as it is held.
#[derive(Serialize)]
pub(crate) struct WireTaskOut<'a> {
    pub(crate) id: TaskId,
    pub(crate) name: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) priority: i32,
    pub(crate) payload: &'a Payload,
    pub(crate) max_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) run_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unique_for_ms: Option<u64>,
}

/// `enqueue` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueArgs<T> {
    pub(crate) tasks: Vec<T>,
}

/// `enqueue` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EnqueueOk {
    /// Each task's id, in order; a duplicate's is the id of the task holding its key.
    pub(crate) ids: Vec<TaskId>,
    /// The positions (0-based) of the tasks that were duplicates; absent when none was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) duplicates: Vec<usize>,
}

impl EnqueueOk {
    /// The answer for what [`crate::Broker::enqueue`] returned.
    pub(crate) fn of(queued: &[Queued]) -> Self {
        Self {
            ids: queued.iter().map(|q| q.id).collect(),
            duplicates: queued
                .iter()
                .enumerate()
                .filter_map(|(index, q)| q.duplicate.then_some(index))
                .collect(),
        }
    }

    /// What [`crate::Broker::enqueue`] returns for this answer.
    pub(crate) fn into_queued(self) -> Vec<Queued> {
        let mut queued: Vec<Queued> = self.ids.into_iter().map(Queued::new).collect();
        for index in self.duplicates {
            if let Some(entry) = queued.get_mut(index) {
                entry.duplicate = true;
            }
        }
        queued
    }
}

/// `claim` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimArgs<'a> {
    #[serde(borrow)]
    pub(crate) queues: Vec<Cow<'a, str>>,
    #[serde(default = "one")]
    pub(crate) max: usize,
    #[serde(default)]
    pub(crate) wait_ms: u64,
}

fn one() -> usize {
    1
}

/// Tasks claimed (`claim`, `settle_and_claim`) or listed (`list`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TasksOk<T> {
    pub(crate) tasks: Vec<T>,
}

/// The part of a claimed task the client needs to release it if nobody takes it.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedRef {
    pub(crate) id: TaskId,
    pub(crate) attempts: u32,
}

/// `heartbeat` arguments (and the task/attempt part of others).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttemptArgs {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
}

/// `settle` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleArgs {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    /// `completed`, `failed` or `released`.
    pub(crate) outcome: String,
    /// `completed`: the handler's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<Value>,
    /// `failed`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<TaskFailure>,
    /// `failed`: a delay the handler asked for instead of the backoff formula.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
    /// Answer with the task's record after the change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) record: bool,
    /// The worker that ran the attempt (announced with `worker_announce`), for the task's
    /// attempt history. Sent only to servers that know the `worker_*` ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) worker: Option<crate::task::WorkerId>,
}

/// `settle` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SettleOk {
    pub(crate) status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<TaskRecord>,
}

/// `settle_and_claim` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleAndClaimArgs<'a> {
    pub(crate) settle: SettleArgs,
    #[serde(borrow)]
    pub(crate) queues: Vec<Cow<'a, str>>,
    #[serde(default = "one")]
    pub(crate) max: usize,
}

/// How the settlement of a `settle_and_claim` went: `{"ok": ...}` or `{"error": ...}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Settled {
    Ok(SettleOk),
    Error(WireError),
}

/// `settle_and_claim` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SettleAndClaimOk<T> {
    pub(crate) settled: Settled,
    pub(crate) tasks: Vec<T>,
}

/// Arguments naming one task (`task`, `retry`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdArgs {
    pub(crate) id: TaskId,
}

/// `cancel` arguments: the task, and who cancels it as the client describes itself (the
/// server adds that it came over the control socket).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelArgs {
    pub(crate) id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) by: Option<String>,
}

/// `wait` arguments: the task, and how long the server waits for its outcome (capped at
/// `MAX_WAIT_MS`; a client wanting longer asks again).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitArgs {
    pub(crate) id: TaskId,
    pub(crate) timeout_ms: u64,
}

/// `pause` and `resume` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueArgs {
    pub(crate) queue: String,
}

/// `limit` arguments: the queue and its new limits (an absent one is removed).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitArgs {
    pub(crate) queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<crate::config::Rate>,
}

/// `pause` and `resume` result: whether the queue's state changed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChangedOk {
    pub(crate) changed: bool,
}

/// One task's record, or `null` (`task`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskOk<T> {
    pub(crate) task: Option<T>,
}

/// `list` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<TaskStatus>,
    #[serde(default)]
    pub(crate) limit: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique_key: Option<String>,
}

impl From<ListQuery> for ListArgs {
    fn from(query: ListQuery) -> Self {
        Self {
            queue: query.queue,
            status: query.status,
            limit: query.limit,
            after: query.after,
            unique_key: query.unique_key,
        }
    }
}

impl From<ListArgs> for ListQuery {
    fn from(args: ListArgs) -> Self {
        Self {
            queue: args.queue,
            status: args.status,
            limit: args.limit,
            after: args.after,
            unique_key: args.unique_key,
        }
    }
}

/// `retry_failed` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFailedArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
}

/// `purge` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeArgs {
    pub(crate) queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<TaskStatus>,
}

/// A count of tasks changed (`retry_failed`, `purge`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CountOk {
    pub(crate) count: u64,
}

/// `cleanup` arguments; absent values use the server's configured retention.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CleanupArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) completed_retention_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed_retention_ms: Option<u64>,
}

/// `cleanup` result.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CleanupOk {
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
}

impl From<CleanupReport> for CleanupOk {
    fn from(report: CleanupReport) -> Self {
        Self {
            completed: report.completed,
            failed: report.failed,
            cancelled: report.cancelled,
        }
    }
}

impl From<CleanupOk> for CleanupReport {
    fn from(ok: CleanupOk) -> Self {
        Self {
            completed: ok.completed,
            failed: ok.failed,
            cancelled: ok.cancelled,
        }
    }
}

/// `abort` arguments: the in-flight request (a claim) to end early.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortArgs {
    pub(crate) request: u64,
}

/// An empty object, the result of `heartbeat` and `abort`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Empty {}

/// The arguments of an op that takes none (`stats`): an empty object, and unknown keys are
/// errors as for every other op. (Not [`Empty`], which clients read leniently in answers.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// `attempts` result: the task's attempt history, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AttemptsOk {
    pub(crate) attempts: Vec<crate::task::AttemptRecord>,
}

/// `worker_announce` arguments: what the worker says about itself.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerAnnounceArgs {
    pub(crate) worker: crate::broker::WorkerInfo,
}

/// One attempt a worker runs, in a `worker_heartbeat`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunningArgs {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
}

/// `worker_heartbeat` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerHeartbeatArgs {
    pub(crate) worker: crate::task::WorkerId,
    #[serde(default)]
    pub(crate) running: Vec<RunningArgs>,
}

/// `worker_heartbeat` result: false when the server does not know the worker (announce it
/// again).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KnownOk {
    pub(crate) known: bool,
}

/// `worker_stopped` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkerArgs {
    pub(crate) worker: crate::task::WorkerId,
}

/// The result of `metrics`: the serving engine's exposition, as `Engine::metrics` renders it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MetricsOk {
    pub(crate) text: String,
}
