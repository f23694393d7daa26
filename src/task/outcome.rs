//! How a claimed attempt ended, as the worker that ran it reports it: the input of the
//! settling transitions in [`super::lifecycle`].

use std::time::Duration;

use serde_json::Value;

use super::TaskFailure;

/// How a claimed attempt ended, as reported by the worker that ran it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler returned a value.
    Completed {
        /// The value, stored with the COMPLETED task.
        result: Value,
    },
    /// The attempt failed; the engine decides between RETRYING and FAILED.
    Failed {
        /// What went wrong.
        failure: TaskFailure,
        /// A delay asked for by the handler instead of the backoff formula.
        retry_after: Option<Duration>,
    },
    /// The worker gives the task back without running it to the end (shutdown): it returns
    /// to PENDING and the attempt is not counted.
    Released,
}
