//! The public view of one task: everything `Engine::task` and the CLI report about it.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Payload, TaskId, TaskStatus};
use crate::error::Error;

/// What kind of failure ended an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler returned an error marked permanent: no retry.
    Permanent,
    /// The handler panicked.
    Panic,
    /// The attempt ran past its timeout.
    Timeout,
    /// No handler is registered under the task's name in the worker that claimed it.
    UnknownTask,
    /// The stored arguments do not fit the handler's argument type.
    BadArguments,
    /// The worker running it disappeared (process crash or expired lease).
    WorkerLost,
}

impl FailureKind {
    /// The snake_case name used in JSON and events.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Permanent => "permanent",
            FailureKind::Panic => "panic",
            FailureKind::Timeout => "timeout",
            FailureKind::UnknownTask => "unknown_task",
            FailureKind::BadArguments => "bad_arguments",
            FailureKind::WorkerLost => "worker_lost",
        }
    }

    /// False for failures that running the task again cannot fix.
    pub fn is_retryable(self) -> bool {
        !matches!(
            self,
            FailureKind::Permanent | FailureKind::UnknownTask | FailureKind::BadArguments
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error of a failed attempt, as stored with RETRYING and FAILED tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// What went wrong, as the handler (or the engine) said it.
    pub message: String,
    /// The kind of failure.
    pub kind: FailureKind,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The longest description of who cancelled a task that a record keeps, in bytes.
pub const MAX_CANCELLED_BY_BYTES: usize = 256;

/// `by`, checked as the description of who cancels a task (`default` when absent or blank).
///
/// # Errors
/// `InvalidInput` naming `by` when it is longer than [`MAX_CANCELLED_BY_BYTES`] or holds a
/// control character.
pub(crate) fn cancelled_by(by: Option<&str>, default: &str) -> Result<String, Error> {
    let by = by
        .map(str::trim)
        .filter(|by| !by.is_empty())
        .unwrap_or(default);
    if by.len() > MAX_CANCELLED_BY_BYTES {
        return Err(Error::invalid(
            "by",
            format!("at most {MAX_CANCELLED_BY_BYTES} bytes, got {}", by.len()),
        ));
    }
    if by.chars().any(char::is_control) {
        return Err(Error::invalid("by", "must not hold control characters"));
    }
    Ok(by.to_owned())
}

/// Everything known about one task. Serialized with these field names (the CLI's `--json` and
/// the control protocol); deserializes from the same shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// The registered task name, e.g. `myapp.tasks.send_email`.
    pub name: String,
    /// The queue it waits in.
    pub queue: String,
    /// Higher runs first.
    pub priority: i32,
    /// The arguments, `{"args": [...], "kwargs": {...}}`.
    pub payload: Payload,
    /// Where the task is in its life.
    pub status: TaskStatus,
    /// How many runs have started (the current run included).
    pub attempts: u32,
    /// Retries allowed after the first run: up to `max_retries + 1` runs.
    pub max_retries: u32,
    /// Per-attempt time limit, if any.
    #[serde(with = "opt_duration_ms", rename = "timeout_ms", default)]
    pub timeout: Option<Duration>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was first allowed to run (`schedule_at`, or queue time plus delay).
    pub scheduled_at: DateTime<Utc>,
    /// When its next run may start (the retry time while RETRYING).
    pub due_at: DateTime<Utc>,
    /// When the latest run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached COMPLETED, FAILED or CANCELLED.
    pub finished_at: Option<DateTime<Utc>>,
    /// The handler's return value, for COMPLETED tasks.
    pub result: Option<Value>,
    /// The last error, for RETRYING and FAILED tasks.
    pub error: Option<TaskFailure>,
    /// The unique key it was queued with (`QueueTask::unique`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// How long after its creation a finished task still holds its unique key
    /// (`QueueTask::unique_for`); `None`: only until it finishes.
    #[serde(
        with = "opt_duration_ms",
        rename = "unique_for_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unique_for: Option<Duration>,
    /// Who cancelled it, for a CANCELLED task: the caller's own description, e.g. `fq cancel
    /// (pid 4242, user ana) over the control socket`, or `the API (pid 4242)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}

mod opt_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` hands us a reference
    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&crate::clock::duration_ms(*d)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(deserializer)?.map(Duration::from_millis))
    }
}
