//! The stored form of a task: the value the store keeps under its id, and its public view.
//! A plain value: encoding it (version byte, postcard, checksum) is the store's business.

use serde::{Deserialize, Serialize};

use super::{FailureKind, Payload, TaskFailure, TaskId, TaskRecord, TaskStatus};
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
}

impl StoredTask {
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
        }
    }
}
