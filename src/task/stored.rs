//! The stored form of a task: the value the store keeps under its id, and its public view.
//! A plain value: encoding it (version byte, postcard, checksum) is the store's business.

use serde::{Deserialize, Serialize};

use super::attempt::StoredAttempt;
use super::{FailureKind, Payload, TaskFailure, TaskId, TaskRecord, TaskStatus, UniqueSpec};
use crate::clock::{Millis, millis_to_datetime};

/// A failure as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredFailure {
    pub(crate) message: String,
    pub(crate) kind: FailureKind,
}

/// One task as stored in the TASKS table (its id is the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredTask {
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) payload: String,
    pub(crate) status: TaskStatus,
    pub(crate) attempts: u32,
    pub(crate) max_retries: u32,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) retry_delay_ms: Option<u64>,
    pub(crate) created_at: Millis,
    pub(crate) scheduled_at: Millis,
    /// When the next run may start; with `priority` and `seq` it is the WAITING key.
    pub(crate) due_at: Millis,
    pub(crate) seq: u64,
    pub(crate) started_at: Option<Millis>,
    pub(crate) finished_at: Option<Millis>,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<StoredFailure>,
    /// How the task's runs relate to RabbitMQ, when they do (`None`: a plain local task).
    /// Kept out of the serde shape: the store's codec writes it after the body, only when
    /// set, so records without it keep the format older builds read.
    #[serde(skip)]
    pub(crate) route: Option<Route>,
    /// The unique key the task was queued with, if any (README "Unique tasks"). Kept out of
    /// the serde shape as `route` is: the codec writes it only when set (format 3).
    #[serde(skip)]
    pub(crate) unique: Option<UniqueSpec>,
    /// The newest run that ended, kept in the record so that a task's first run writes no
    /// history row of its own (the ATTEMPTS row holds only older runs; README "Attempt
    /// history"). Kept out of the serde shape: the codec writes it only when set (format 4).
    #[serde(skip)]
    pub(crate) last_attempt: Option<StoredAttempt>,
    /// Who cancelled the task, as the caller described itself (README "fq why"). Out of the
    /// serde shape, as `last_attempt`.
    #[serde(skip)]
    pub(crate) cancelled_by: Option<String>,
}

/// How a task's runs relate to RabbitMQ (README "RabbitMQ", outcomes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Route {
    /// This store forwarded the task and its runs happen elsewhere: their starts and outcomes
    /// come back over RabbitMQ and are applied here. A RUNNING or RETRYING record on this
    /// route has no lease row and no waiting row (the worker's store holds the retry).
    Reported,
    /// This store ran the task for another one: each start and outcome is reported to this
    /// queue (the message's `reply_to`), and a retry forwarded from here names it again.
    ReplyTo(String),
}

impl StoredTask {
    /// A PENDING task of `queue` at priority 0, due at 0 with sequence `seq`, 3 retries and
    /// nothing else set: what the state machine's tests and the fuzz model start from.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn pending_example(name: &str, queue: &str, payload: &str, seq: u64) -> StoredTask {
        StoredTask {
            name: name.to_owned(),
            queue: queue.to_owned(),
            priority: 0,
            payload: payload.to_owned(),
            status: TaskStatus::Pending,
            attempts: 0,
            max_retries: 3,
            timeout_ms: None,
            retry_delay_ms: None,
            created_at: 0,
            scheduled_at: 0,
            due_at: 0,
            seq,
            started_at: None,
            finished_at: None,
            result: None,
            error: None,
            route: None,
            unique: None,
            last_attempt: None,
            cancelled_by: None,
        }
    }

    /// True when the task's runs are reported here from another store (see [`Route`]).
    pub(crate) fn is_reported(&self) -> bool {
        self.route == Some(Route::Reported)
    }

    /// True when the record waits in this store's waiting index (PENDING or RETRYING, and
    /// not a retry held by another store).
    pub(crate) fn waits_here(&self) -> bool {
        self.status.is_waiting() && !self.is_reported()
    }

    /// True when the record is RUNNING under a lease of this store.
    pub(crate) fn leased_here(&self) -> bool {
        self.status == TaskStatus::Running && !self.is_reported()
    }

    /// Where to report this task's starts and outcomes, if anywhere.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) fn reply_to(&self) -> Option<&str> {
        match &self.route {
            Some(Route::ReplyTo(queue)) => Some(queue),
            _ => None,
        }
    }

    /// The public view of this record.
    pub(crate) fn to_record(&self, id: TaskId) -> TaskRecord {
        TaskRecord {
            id,
            name: self.name.clone(),
            queue: self.queue.clone(),
            priority: self.priority,
            payload: Payload::from_trusted(self.payload.clone()),
            status: self.status,
            attempts: self.attempts,
            max_retries: self.max_retries,
            timeout: self.timeout_ms.map(std::time::Duration::from_millis),
            created_at: millis_to_datetime(self.created_at),
            scheduled_at: millis_to_datetime(self.scheduled_at),
            due_at: millis_to_datetime(self.due_at),
            started_at: self.started_at.map(millis_to_datetime),
            finished_at: self.finished_at.map(millis_to_datetime),
            result: self
                .result
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(serde_json::Value::Null)),
            error: self.error.as_ref().map(|e| TaskFailure {
                message: e.message.clone(),
                kind: e.kind,
            }),
            unique_key: self.unique.as_ref().map(|spec| spec.key.clone()),
            unique_for: self
                .unique
                .as_ref()
                .and_then(|spec| spec.for_ms)
                .map(std::time::Duration::from_millis),
            cancelled_by: self.cancelled_by.clone(),
        }
    }
}
