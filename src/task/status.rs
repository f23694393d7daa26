//! The lifecycle states of a task, with Framefox's names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a task is in its life.
///
/// PENDING → RUNNING → COMPLETED | RETRYING | FAILED; RETRYING → RUNNING once its backoff is
/// due; PENDING and RETRYING → CANCELLED on request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum TaskStatus {
    /// Waiting to be processed (possibly scheduled for later).
    Pending,
    /// Claimed by a worker and executing.
    Running,
    /// Finished successfully; its result is stored.
    Completed,
    /// Failed for good: retries spent or the error was permanent.
    Failed,
    /// Failed, and will run again when its backoff is due.
    Retrying,
    /// Cancelled before it ran.
    Cancelled,
    /// Handed to RabbitMQ (config `broker: rabbitmq`): the producer's store keeps it, with the
    /// time of RabbitMQ's publisher confirm as `finished_at`, until the worker that runs it
    /// reports the run's start or outcome over RabbitMQ (RUNNING, COMPLETED, RETRYING or
    /// FAILED follow), or, for a message that names no reply queue, until retention removes it.
    /// The runs are recorded by the stores of the workers that consume it.
    Forwarded,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Retrying,
        TaskStatus::Cancelled,
        TaskStatus::Forwarded,
    ];

    /// The name Framefox uses (`PENDING`, `RUNNING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Failed => "FAILED",
            TaskStatus::Retrying => "RETRYING",
            TaskStatus::Cancelled => "CANCELLED",
            TaskStatus::Forwarded => "FORWARDED",
        }
    }

    /// True for states that end a task's life in this store (COMPLETED, FAILED, CANCELLED, and
    /// FORWARDED: handed to RabbitMQ), the ones retention deletes.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::Forwarded
        )
    }

    /// True for states waiting for a worker (PENDING, RETRYING).
    pub fn is_waiting(self) -> bool {
        matches!(self, TaskStatus::Pending | TaskStatus::Retrying)
    }

    /// The one-byte code used in store keys.
    pub(crate) fn code(self) -> u8 {
        match self {
            TaskStatus::Pending => 0,
            TaskStatus::Running => 1,
            TaskStatus::Completed => 2,
            TaskStatus::Failed => 3,
            TaskStatus::Retrying => 4,
            TaskStatus::Cancelled => 5,
            TaskStatus::Forwarded => 6,
        }
    }

    /// The status stored as `code`, if the code is known.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        TaskStatus::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The text is not one of the status names.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown status {0:?}: expected one of pending, running, completed, failed, retrying, cancelled, forwarded"
)]
pub struct ParseStatusError(String);

impl FromStr for TaskStatus {
    type Err = ParseStatusError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| ParseStatusError(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_parsing_agree() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::from_code(status.code()), Some(status));
            assert_eq!(status.as_str().parse::<TaskStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!("failed".parse::<TaskStatus>().unwrap(), TaskStatus::Failed);
        assert!("done".parse::<TaskStatus>().is_err());
        assert_eq!(TaskStatus::from_code(99), None);
    }
}
