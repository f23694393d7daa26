//! One task's attempt history: how each run ended, when, and on which worker. The stored
//! form (kept by the store beside the task record, written in the settlement's commit) and
//! the public view `Engine::attempts` returns. No storage here: only the values.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{FailureKind, StoredFailure, TaskFailure};
use crate::clock::{Millis, millis_to_datetime};

/// The default number of attempts kept per task (`limits.attempt_history`).
pub const DEFAULT_ATTEMPT_HISTORY: usize = 25;

/// The identifier of one worker (a `WorkerManager`, local or connected over the control
/// socket): a UUID v7 chosen when it starts, so ids sort by start time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Uuid);

super::id::uuid_v7_id!(WorkerId, "A fresh id for a worker starting now.");

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({})", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for WorkerId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The handler returned a value.
    Completed,
    /// The handler returned an error (retryable or not: see the attempt's error kind).
    Error,
    /// The attempt ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The worker running it disappeared (its lease expired, or its process ended).
    WorkerLost,
    /// The worker gave the task back unfinished at shutdown; the attempt was not counted.
    Released,
}

impl AttemptOutcome {
    /// The snake_case name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Completed => "completed",
            AttemptOutcome::Error => "error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Panic => "panic",
            AttemptOutcome::WorkerLost => "worker_lost",
            AttemptOutcome::Released => "released",
        }
    }

    /// The outcome of an attempt that failed with `kind`.
    pub(crate) fn of_failure(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Timeout => AttemptOutcome::Timeout,
            FailureKind::Panic => AttemptOutcome::Panic,
            FailureKind::WorkerLost => AttemptOutcome::WorkerLost,
            _ => AttemptOutcome::Error,
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One attempt as stored (postcard, inside the store's history row of its task).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredAttempt {
    pub(crate) attempt: u32,
    pub(crate) started_at: Millis,
    pub(crate) finished_at: Millis,
    /// The worker that ran it, when it said who it was (`None`: an unnamed or older worker).
    pub(crate) worker: Option<u128>,
    pub(crate) outcome: AttemptOutcome,
    pub(crate) error: Option<StoredFailure>,
}

impl StoredAttempt {
    /// The public view.
    pub(crate) fn to_record(&self) -> AttemptRecord {
        AttemptRecord {
            attempt: self.attempt,
            started_at: millis_to_datetime(self.started_at),
            finished_at: millis_to_datetime(self.finished_at),
            duration_ms: u64::try_from(self.finished_at.saturating_sub(self.started_at))
                .unwrap_or(0),
            worker: self.worker.map(WorkerId::from_u128),
            outcome: self.outcome,
            error: self.error.as_ref().map(|e| TaskFailure {
                message: e.message.clone(),
                kind: e.kind,
            }),
        }
    }
}

/// One attempt of a task, as `Engine::attempts` and `fq show` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AttemptRecord {
    /// The attempt number (1 for the first run; a released run shares its number with the
    /// run that follows, since it was not counted).
    pub attempt: u32,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// `finished_at - started_at`, in milliseconds.
    pub duration_ms: u64,
    /// The worker that ran it, when known.
    pub worker: Option<WorkerId>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error, for a failed attempt.
    pub error: Option<TaskFailure>,
}

/// Appends `attempt` to `history`, keeping only the newest `keep` entries.
pub(crate) fn push_bounded(history: &mut Vec<StoredAttempt>, attempt: StoredAttempt, keep: usize) {
    history.push(attempt);
    if history.len() > keep {
        let excess = history.len() - keep;
        history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> StoredAttempt {
        StoredAttempt {
            attempt: n,
            started_at: 1_000,
            finished_at: 1_250,
            worker: None,
            outcome: AttemptOutcome::Completed,
            error: None,
        }
    }

    #[test]
    fn history_keeps_the_newest_entries() {
        let mut history = Vec::new();
        for n in 1..=30 {
            push_bounded(&mut history, attempt(n), 25);
        }
        assert_eq!(history.len(), 25);
        assert_eq!(history[0].attempt, 6);
        assert_eq!(history[24].attempt, 30);
    }

    #[test]
    fn record_reports_duration_and_outcome_names() {
        let record = attempt(1).to_record();
        assert_eq!(record.duration_ms, 250);
        assert_eq!(
            AttemptOutcome::of_failure(FailureKind::Timeout),
            AttemptOutcome::Timeout
        );
        assert_eq!(
            AttemptOutcome::of_failure(FailureKind::Permanent),
            AttemptOutcome::Error
        );
        assert_eq!(AttemptOutcome::WorkerLost.as_str(), "worker_lost");
    }
}
