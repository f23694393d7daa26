//! The error a task handler returns, and whether it may be retried.

use std::fmt;
use std::time::Duration;

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
