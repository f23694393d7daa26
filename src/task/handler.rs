//! How a task is defined: the [`Task`] trait (Framefox's `@AsyncTask` decorator as associated
//! constants) and the error a handler returns.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::worker::TaskContext;

/// A background task: its arguments are the struct's fields (Framefox's kwargs), its defaults
/// are the decorator's options, and `run` is its body.
///
/// ```
/// use fq::{Task, TaskContext, TaskError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String, subject: String }
///
/// impl Task for SendEmail {
///     const NAME: &'static str = "myapp.tasks.send_email";
///     const QUEUE: &'static str = "emails";
///     type Output = serde_json::Value;
///
///     async fn run(self, _ctx: TaskContext) -> Result<Self::Output, TaskError> {
///         Ok(serde_json::json!({"status": "sent", "recipient": self.to}))
///     }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The name the task is queued and registered under, e.g. `myapp.tasks.send_email`.
    const NAME: &'static str;
    /// The queue it goes to unless the caller says otherwise (default `default`).
    const QUEUE: &'static str = "default";
    /// Its priority unless the caller says otherwise; higher runs first (default 0).
    const PRIORITY: i32 = 0;
    /// Retries after the first failed run (default 3: up to 4 runs).
    const MAX_RETRIES: u32 = 3;
    /// Time limit per attempt (default none).
    const TIMEOUT: Option<Duration> = None;

    /// What a successful run returns; stored with the COMPLETED task as JSON.
    type Output: Serialize + Send + 'static;

    /// The task's body. An `Err` (or a panic, or a timeout) is a failed attempt.
    fn run(self, ctx: TaskContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;

    /// Queues the task now with its defaults, as Framefox's `task.delay(...)`. (Framefox's
    /// `delay=3600` keyword, a postponement, is [`crate::QueueTask::delay`]:
    /// `engine.queue_task(task).delay(3600).send()`.)
    ///
    /// # Errors
    /// As [`crate::Engine::queue_task`]'s `send`.
    fn delay(
        self,
        engine: &crate::Engine,
    ) -> impl Future<Output = crate::Result<crate::TaskId>> + Send
    where
        Self: Sized,
    {
        engine.queue_task(self).send()
    }
}

/// Whether and when a failed attempt may run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// Retry per the retry policy, or after the given delay.
    Retryable {
        /// A delay chosen by the handler instead of the backoff formula.
        after: Option<Duration>,
    },
    /// Do not retry: the task ends FAILED now.
    Permanent,
}

/// The error a task handler returns. Any `std::error::Error` converts into a retryable one, so
/// handlers can use `?`.
#[derive(Clone, Debug)]
pub struct TaskError {
    message: String,
    kind: TaskErrorKind,
}

impl TaskError {
    /// A failure that is retried per the task's retry policy.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            kind: TaskErrorKind::Retryable { after: None },
        }
    }

    /// A failure that no retry can fix: the task ends FAILED at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            kind: TaskErrorKind::Permanent,
        }
    }

    /// A failure to retry after exactly `delay` (rate limits, `Retry-After` headers).
    pub fn retry_after(message: impl fmt::Display, delay: Duration) -> Self {
        Self {
            message: message.to_string(),
            kind: TaskErrorKind::Retryable { after: Some(delay) },
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether it may be retried, and when.
    pub fn kind(&self) -> TaskErrorKind {
        self.kind
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        Self::new(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_and_keep_their_kind() {
        fn fails() -> Result<(), TaskError> {
            let _n: u32 = "x".parse()?;
            Ok(())
        }
        let err = fails().unwrap_err();
        assert_eq!(err.kind(), TaskErrorKind::Retryable { after: None });
        assert!(err.message().contains("invalid digit"));
        assert_eq!(TaskError::permanent("no").kind(), TaskErrorKind::Permanent);
        assert_eq!(
            TaskError::retry_after("later", Duration::from_secs(9)).kind(),
            TaskErrorKind::Retryable {
                after: Some(Duration::from_secs(9))
            }
        );
    }
}
