//! The crate's one error type, into which every layer's error converts.

use crate::task::{TaskId, TaskStatus};

/// Everything that can go wrong in fq, except a task handler's own failure (that is a
/// [`crate::TaskError`], recorded on the task).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store file could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A durable commit failed earlier; the engine refuses writes, so that nothing is
    /// acknowledged that may not be on disk, until its store works again (it retries by itself
    /// unless built with `self_heal(false)`) or it is reopened.
    #[error(
        "engine is poisoned and refuses writes until its store works again or it is reopened: {reason}"
    )]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
        /// The engine heals itself (`self_heal`, the default): it retries its store and takes
        /// writes again once the store works, so the same call may succeed later. False: it
        /// refuses writes until it is reopened (built with `self_heal(false)`, or its attempts
        /// to heal gave up, or a remote engine that does not say).
        healing: bool,
    },
    /// The engine has shut down.
    #[error("engine is shut down")]
    ShutDown,
    /// A request was refused because an argument is invalid; the message names the field and
    /// the limit.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The argument, e.g. `queue`, `payload`, `schedule_at`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No task has this id.
    #[error("no task with id {0}")]
    NotFound(TaskId),
    /// The task is in a state the operation does not apply to.
    #[error("task {id} is {status}; {operation} applies only to {allowed}")]
    WrongState {
        /// The task.
        id: TaskId,
        /// Its current status.
        status: TaskStatus,
        /// What was asked.
        operation: &'static str,
        /// The states it applies to.
        allowed: &'static str,
    },
    /// A completion or failure was reported for an attempt that is no longer current (the
    /// task was recovered or re-claimed meanwhile); it is rejected so that a zombie worker
    /// cannot overwrite a newer attempt.
    #[error(
        "stale attempt {attempt} for task {id}: the task has moved on (status {status}, attempt {current})"
    )]
    StaleAttempt {
        /// The task.
        id: TaskId,
        /// The attempt the report was made under.
        attempt: u32,
        /// The task's current attempt count.
        current: u32,
        /// The task's current status.
        status: TaskStatus,
    },
    /// A wait for a task's outcome (`Engine::wait`) ran out of time before the task was
    /// COMPLETED, FAILED or CANCELLED. The task is left as it is: still queued or running.
    #[error("task {id} has no outcome yet after waiting {}; it is left as it is", crate::config::format_duration(*.timeout, crate::config::DurationStyle::Exact))]
    WaitTimeout {
        /// The task.
        id: TaskId,
        /// How long the wait lasted.
        timeout: std::time::Duration,
    },
    /// The store holds as many pending tasks as configured (`limits.max_pending`).
    #[error("queue full: the store already holds {limit} pending tasks (limits.max_pending)")]
    QueueFull {
        /// The configured limit.
        limit: u64,
    },
    /// A worker's registry holds registrations with bad names.
    #[error("invalid task registrations: {}", .0.join("; "))]
    InvalidRegistration(Vec<String>),
    /// An event listener was registered for a name fq never emits.
    #[error(transparent)]
    UnknownEvent(#[from] crate::events::UnknownEvent),
    /// A background thread or task of the engine failed.
    #[error("internal failure: {0}")]
    Internal(String),
    /// The engine's control server could not start: its socket is served by another engine,
    /// the path is unusable, or a listener could not bind.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// No engine answers at a control address (`Engine::connect`), or the connection to it was
    /// lost while a request waited for its answer.
    #[error("cannot reach the fq engine at {addr}: {message}")]
    Connect {
        /// The address as given (`unix:PATH`, a path, `tcp:HOST:PORT`).
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The engine at the other end of a control connection refused a request (or the
    /// connection) with an error that has no closer variant here: a store failure on its side,
    /// a refused handshake (`unauthorized`, `unsupported_protocol`, `too_many_connections`) or
    /// a protocol violation. `kind` is the protocol's error kind (docs/protocol.md).
    #[error("remote engine: {message} ({kind})")]
    Remote {
        /// The error kind on the wire, e.g. `store`, `unauthorized`.
        kind: String,
        /// The remote engine's message.
        message: String,
    },
    /// The RabbitMQ bridge (config `broker: rabbitmq`) failed: RabbitMQ unreachable or
    /// refusing, a topology conflict, a full outbox.
    #[error(transparent)]
    Rabbit(#[from] crate::broker::RabbitError),
    /// No metrics exposition could be made: metrics are turned off, or encoding failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A test helper of [`crate::testing`] could not do what it was asked: a drain that never
    /// ends, a test engine still open after `close`.
    #[error(transparent)]
    Testing(#[from] crate::testing::TestingError),
}

impl Error {
    /// True when trying the same call again later may succeed (the engine was busy or shut
    /// down, not the request wrong).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::QueueFull { .. } | Error::Connect { .. } => true,
            // Refused by the free-space watermark: accepted again once space is freed. (A
            // commit that failed for want of space poisons the engine instead.)
            Error::Store(crate::store::StoreError::Full {
                needed_bytes: Some(_),
                ..
            }) => true,
            Error::Rabbit(error) => error.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            message: message.into(),
        }
    }
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The text a panic carried (`panic!` with a literal or a formatted message), for an error
/// that reports the panic instead of passing it on.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no text".to_owned())
}
