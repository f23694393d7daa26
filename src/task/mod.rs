//! The task domain's values: identifiers, statuses, records, payloads, outcomes, the retry
//! policy and the state machine of how a task moves between statuses. Nothing here touches
//! storage, the runtime, the broker or the worker.

pub(crate) mod attempt;
mod id;
pub(crate) mod lifecycle;
mod order;
mod outcome;
mod payload;
mod record;
mod retry;
mod status;
mod stored;
mod task_error;
pub(crate) mod unique;

pub(crate) use attempt::StoredAttempt;
pub use attempt::{AttemptOutcome, AttemptRecord, DEFAULT_ATTEMPT_HISTORY, WorkerId};
pub use id::TaskId;
pub(crate) use order::ReadyOrder;
pub use outcome::Outcome;
pub use payload::{MAX_PAYLOAD_DEPTH, Payload};
pub(crate) use record::cancelled_by;
pub use record::{FailureKind, MAX_CANCELLED_BY_BYTES, TaskFailure, TaskRecord};
pub use retry::RetryPolicy;
pub use status::TaskStatus;
pub(crate) use stored::{Route, StoredFailure, StoredTask};
pub use task_error::{TaskError, TaskErrorKind};
pub(crate) use unique::UniqueSpec;
pub use unique::{MAX_UNIQUE_FOR, MAX_UNIQUE_KEY_BYTES};
