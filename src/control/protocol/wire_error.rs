//! Error objects on the wire (docs/protocol.md "Errors"): [`WireError`], and the mapping
//! between it and the engine's [`Error`] in both directions, so that a connected engine sees
//! the same error variants as the serving one.

use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::task::{TaskId, TaskStatus};

/// An error object: `kind` for programs, `message` for people, and the fields a kind carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: String,
    pub(crate) message: String,
    /// `invalid_input`: the argument at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
    /// `not_found`, `wrong_state`, `stale_attempt`: the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) task: Option<TaskId>,
    /// `stale_attempt`: the attempt the report was made under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attempt: Option<u32>,
    /// `stale_attempt`: the task's current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) current: Option<u32>,
    /// `wrong_state`, `stale_attempt`: the task's current status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<TaskStatus>,
    /// `wrong_state`: what was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) operation: Option<String>,
    /// `wrong_state`: the statuses it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) allowed: Option<String>,
    /// `queue_full`: the configured limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<u64>,
    /// `wait_timeout`: how long the wait lasted, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) waited_ms: Option<u64>,
    /// `poisoned`: the engine heals itself, so the call may succeed later (absent, from a
    /// server that does not say: it may not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) healing: Option<bool>,
}

impl WireError {
    pub(crate) fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.to_owned(),
            message: message.into(),
            ..Self::default()
        }
    }
}

/// Argument names the engine reports in `InvalidInput`; an error arriving with one of these
/// becomes `Error::InvalidInput` with the same `&'static str`.
const KNOWN_FIELDS: &[&str] = &[
    "action",
    "after",
    "allowed",
    "catch_up",
    "cron",
    "every",
    "schedule name",
    "task",
    "zone",
    "args",
    "attempt",
    "broker",
    "concurrency",
    "connect",
    "delay",
    "delay_ms",
    "error",
    "heartbeat_interval",
    "id",
    "limit",
    "max",
    "max_retries",
    "name",
    "outcome",
    "payload",
    "polling_interval",
    "priority",
    "queue",
    "queues",
    "request",
    "result",
    "retry_after_ms",
    "retry_delay",
    "retry_delay_ms",
    "run_at_ms",
    "schedule_at",
    "settle",
    "status",
    "task name",
    "tasks",
    "timeout",
    "timeout_ms",
    "wait_ms",
    "worker",
    "running",
    "completed_retention_ms",
    "failed_retention_ms",
];

/// Most field names outside [`KNOWN_FIELDS`] kept for the process's life.
const MAX_EXTRA_FIELDS: usize = 64;

/// A `&'static str` for a field name: a known one, else a leaked copy (at most
/// [`MAX_EXTRA_FIELDS`] of them, so a peer cannot grow memory without bound), else `"input"`.
pub(crate) fn intern_field(name: &str) -> &'static str {
    if let Some(known) = KNOWN_FIELDS.iter().find(|known| **known == name) {
        return known;
    }
    static EXTRA: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut extra = EXTRA
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = extra.iter().find(|known| **known == name) {
        return found;
    }
    if extra.len() >= MAX_EXTRA_FIELDS || name.len() > 64 {
        return "input";
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    extra.push(leaked);
    leaked
}

/// `WrongState` operations and their allowed statuses, as the engine names them.
const WRONG_STATES: &[(&str, &str)] = &[
    ("cancel", "PENDING or RETRYING tasks"),
    ("retry", "FAILED or CANCELLED tasks"),
];

/// The error object for an engine error.
pub(crate) fn error_to_wire(error: &Error) -> WireError {
    let message = error.to_string();
    match error {
        Error::InvalidInput { field, .. } => WireError {
            field: Some((*field).to_owned()),
            ..WireError::new("invalid_input", message)
        },
        Error::NotFound(id) => WireError {
            task: Some(*id),
            ..WireError::new("not_found", message)
        },
        Error::WrongState {
            id,
            status,
            operation,
            allowed,
        } => WireError {
            task: Some(*id),
            status: Some(*status),
            operation: Some((*operation).to_owned()),
            allowed: Some((*allowed).to_owned()),
            ..WireError::new("wrong_state", message)
        },
        Error::StaleAttempt {
            id,
            attempt,
            current,
            status,
        } => WireError {
            task: Some(*id),
            attempt: Some(*attempt),
            current: Some(*current),
            status: Some(*status),
            ..WireError::new("stale_attempt", message)
        },
        Error::QueueFull { limit } => WireError {
            limit: Some(*limit),
            ..WireError::new("queue_full", message)
        },
        Error::WaitTimeout { id, timeout } => WireError {
            task: Some(*id),
            waited_ms: Some(crate::clock::duration_ms(*timeout)),
            ..WireError::new("wait_timeout", message)
        },
        Error::Poisoned { healing, .. } => WireError {
            healing: Some(*healing),
            ..WireError::new("poisoned", message)
        },
        Error::ShutDown => WireError::new("shut_down", message),
        Error::Store(_) => WireError::new("store", message),
        Error::Config(_) => WireError::new("config", message),
        Error::InvalidRegistration(_) => WireError::new("invalid_registration", message),
        Error::UnknownEvent(_) => WireError::new("unknown_event", message),
        // A test helper's error never crosses a socket; it reads as internal if one did.
        Error::Internal(_) | Error::Testing(_) => WireError::new("internal", message),
        Error::Control(_) => WireError::new("control", message),
        Error::Connect { .. } => WireError::new("connect", message),
        Error::Rabbit(_) => WireError::new("rabbitmq", message),
        Error::Metrics(_) => WireError::new("metrics", message),
        Error::Remote { kind, message } => WireError::new(kind, message.clone()),
    }
}

/// The engine error for an error object: the same variant when this build knows it, else
/// [`Error::Remote`] with the kind and message as received.
pub(crate) fn error_from_wire(wire: WireError) -> Error {
    let strip =
        |prefix: &str, message: &str| message.strip_prefix(prefix).unwrap_or(message).to_owned();
    let known = match wire.kind.as_str() {
        "invalid_input" => wire.field.as_deref().map(|field| Error::InvalidInput {
            field: intern_field(field),
            message: strip(&format!("invalid {field}: "), &wire.message),
        }),
        "not_found" => wire.task.map(Error::NotFound),
        "wrong_state" => match (wire.task, wire.status, &wire.operation, &wire.allowed) {
            (Some(id), Some(status), Some(operation), Some(allowed)) => WRONG_STATES
                .iter()
                .find(|(op, ok)| op == operation && ok == allowed)
                .map(|(operation, allowed)| Error::WrongState {
                    id,
                    status,
                    operation,
                    allowed,
                }),
            _ => None,
        },
        "stale_attempt" => match (wire.task, wire.attempt, wire.current, wire.status) {
            (Some(id), Some(attempt), Some(current), Some(status)) => Some(Error::StaleAttempt {
                id,
                attempt,
                current,
                status,
            }),
            _ => None,
        },
        "queue_full" => wire.limit.map(|limit| Error::QueueFull { limit }),
        "wait_timeout" => match (wire.task, wire.waited_ms) {
            (Some(id), Some(ms)) => Some(Error::WaitTimeout {
                id,
                timeout: std::time::Duration::from_millis(ms),
            }),
            _ => None,
        },
        "poisoned" => Some(Error::Poisoned {
            reason: strip(
                "engine is poisoned and refuses writes until its store works again or it is reopened: ",
                &wire.message,
            ),
            healing: wire.healing.unwrap_or(false),
        }),
        // Not `Error::ShutDown`: that would stop a remote worker for good, while a server
        // shutting down is one that restarts; the worker reconnects instead.
        _ => None,
    };
    known.unwrap_or(Error::Remote {
        kind: wire.kind,
        message: wire.message,
    })
}
