//! The control protocol's wire format (version 1, specified in docs/protocol.md): frames (a
//! 4-byte big-endian length, then that many bytes of UTF-8 JSON), the handshake, request and
//! response envelopes, each op's arguments and results, and the mapping between [`Error`] and
//! error objects. Shared by `server` and `client`; it owns no sockets and no engine state.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::broker::{CleanupReport, ListQuery};
use crate::task::{Payload, TaskFailure, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// The protocol version this build speaks; the handshake refuses any other.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// Bytes of the length prefix.
pub(crate) const HEADER_BYTES: usize = 4;
/// The largest response frame a client accepts. Responses are not bound by the request limit
/// (a claim of many tasks with large payloads is legitimately big), but a length prefix past
/// this is taken for garbage.
pub(crate) const MAX_RESPONSE_BYTES: usize = 1 << 30;
/// The most a `list` response holds, in bytes of records, before the page is cut short.
pub(crate) const MAX_LIST_BYTES: usize = 64 << 20;
/// The longest a claim may wait for work (one hour).
pub(crate) const MAX_WAIT_MS: u64 = 3_600_000;
/// The most tasks one claim may ask for.
pub(crate) const MAX_CLAIM: usize = 10_000;
/// How many requests of one connection the server works on at once; it reads no further
/// requests from that connection until one is answered.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

// --- frames -----------------------------------------------------------------------------------

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// A zero length prefix: every frame holds a JSON document.
    #[error("frame length is zero; every frame must hold a JSON document")]
    Empty,
    /// A length prefix over the limit; nothing was allocated for it.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length the prefix announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: the stream ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes received (of the header, or of the body).
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; `Ok(None)` when the stream ends cleanly between frames.
///
/// A zero or oversized length is refused before anything is allocated, and the body buffer
/// grows only as bytes actually arrive, so a lying length prefix costs no memory.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut filled = 0;
    while filled < HEADER_BYTES {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                got: filled,
                expected: HEADER_BYTES,
            });
        }
        filled += n;
    }
    let len = u64::from(u32::from_be_bytes(header));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let expected = match usize::try_from(len) {
        Ok(len) if len <= max => len,
        _ => return Err(FrameError::TooLarge { len, max }),
    };
    let mut body = Vec::with_capacity(expected.min(64 * 1024));
    reader.take(len).read_to_end(&mut body).await?;
    if body.len() < expected {
        return Err(FrameError::Truncated {
            got: body.len(),
            expected,
        });
    }
    Ok(Some(body))
}

/// A frame (length prefix included) holding `value` as JSON.
///
/// # Errors
/// A value that does not serialize, or a document over 4 GiB.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(&[0; HEADER_BYTES]);
    serde_json::to_writer(&mut frame, value)
        .map_err(|e| Error::Internal(format!("cannot encode a control frame: {e}")))?;
    let len = u32::try_from(frame.len() - HEADER_BYTES).map_err(|_| {
        Error::Internal(format!(
            "a control frame of {} bytes does not fit the 4-byte length prefix",
            frame.len()
        ))
    })?;
    frame[..HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// The JSON size of a frame from [`encode_frame`].
pub(crate) fn body_len(frame: &[u8]) -> usize {
    frame.len().saturating_sub(HEADER_BYTES)
}

// --- handshake --------------------------------------------------------------------------------

/// `{"hello": ...}`: the first frame in each direction.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloFrame<T> {
    pub(crate) hello: T,
}

/// What a client says first. `Debug` redacts the token.
#[derive(Serialize, Deserialize)]
pub(crate) struct ClientHello {
    /// The protocol version the client speaks.
    pub(crate) protocol: u32,
    /// A free-form name for logs, e.g. `fq-cli/0.1.0`.
    #[serde(default)]
    pub(crate) client: String,
    /// The control token, required on TCP when the server has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("protocol", &self.protocol)
            .field("client", &self.client)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Task defaults of the serving engine, so a connected engine queues as the server would.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireDefaults {
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    #[serde(default)]
    pub(crate) timeout_ms: Option<u64>,
}

/// The serving engine's retention (what `cleanup` applies by default).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct WireRetention {
    pub(crate) completed_ms: u64,
    pub(crate) failed_ms: u64,
}

/// What the server answers to a good hello.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ServerHello {
    pub(crate) protocol: u32,
    /// `fq <version>`.
    pub(crate) server: String,
    pub(crate) pid: u32,
    /// The store file the engine owns.
    pub(crate) store: String,
    /// The engine's clock, milliseconds since the epoch.
    pub(crate) now_ms: i64,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_payload_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) lease_ms: u64,
    pub(crate) defaults: WireDefaults,
    pub(crate) retention: WireRetention,
}

// --- envelopes --------------------------------------------------------------------------------

/// The operations of protocol version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Enqueue,
    Claim,
    Heartbeat,
    Settle,
    SettleAndClaim,
    Task,
    Cancel,
    List,
    Retry,
    RetryFailed,
    Purge,
    Stats,
    Cleanup,
    Abort,
}

impl Op {
    /// Every op, for messages.
    pub(crate) const ALL: [Op; 14] = [
        Op::Enqueue,
        Op::Claim,
        Op::Heartbeat,
        Op::Settle,
        Op::SettleAndClaim,
        Op::Task,
        Op::Cancel,
        Op::List,
        Op::Retry,
        Op::RetryFailed,
        Op::Purge,
        Op::Stats,
        Op::Cleanup,
        Op::Abort,
    ];

    /// The op's name on the wire.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Enqueue => "enqueue",
            Op::Claim => "claim",
            Op::Heartbeat => "heartbeat",
            Op::Settle => "settle",
            Op::SettleAndClaim => "settle_and_claim",
            Op::Task => "task",
            Op::Cancel => "cancel",
            Op::List => "list",
            Op::Retry => "retry",
            Op::RetryFailed => "retry_failed",
            Op::Purge => "purge",
            Op::Stats => "stats",
            Op::Cleanup => "cleanup",
            Op::Abort => "abort",
        }
    }

    /// The op named `name`.
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// A request as the server reads it: the args stay unparsed until the op's handler runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestIn<'a> {
    id: u64,
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// A request frame checked for shape: its id, op, and where its args sit in the frame.
#[derive(Debug)]
pub(crate) struct ParsedRequest {
    pub(crate) id: u64,
    pub(crate) op: Op,
    /// Byte range of the `args` value inside the frame; `None` when absent.
    pub(crate) args: Option<Range<usize>>,
}

/// Why a frame is not a request; the connection is closed after answering it.
#[derive(Debug)]
pub(crate) struct BadRequest {
    /// The request id, when one could be read.
    pub(crate) id: Option<u64>,
    pub(crate) error: WireError,
}

/// Checks a request frame's envelope: `{"id": N, "op": "...", "args": {...}}`.
pub(crate) fn parse_request(frame: &[u8]) -> std::result::Result<ParsedRequest, Box<BadRequest>> {
    let request: RequestIn<'_> = match serde_json::from_slice(frame) {
        Ok(request) => request,
        Err(e) => {
            /// Just the id, to address the error to the request when possible.
            #[derive(Deserialize)]
            struct IdOnly {
                id: u64,
            }
            let id = serde_json::from_slice::<IdOnly>(frame).ok().map(|r| r.id);
            let kind = if e.is_syntax() || e.is_eof() {
                "bad_frame"
            } else {
                "bad_request"
            };
            let message = if kind == "bad_frame" {
                format!("frame is not valid JSON: {e}")
            } else {
                format!(
                    "frame is not a request {{\"id\": <u64>, \"op\": \"<name>\", \"args\": {{...}}}}: {e}"
                )
            };
            return Err(Box::new(BadRequest {
                id,
                error: WireError::new(kind, message),
            }));
        }
    };
    let Some(op) = Op::from_name(&request.op) else {
        let known: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        return Err(Box::new(BadRequest {
            id: Some(request.id),
            error: WireError::new(
                "unknown_op",
                format!(
                    "unknown op {:?}; protocol {PROTOCOL_VERSION} has: {}",
                    request.op,
                    known.join(", ")
                ),
            ),
        }));
    };
    let args = request.args.map(|raw| {
        // The raw value borrows from `frame`: its offset locates it without copying.
        let start = raw.get().as_ptr() as usize - frame.as_ptr() as usize;
        start..start + raw.get().len()
    });
    Ok(ParsedRequest {
        id: request.id,
        op,
        args,
    })
}

/// Decodes an op's arguments; an error names the JSON path at fault as an `invalid_input`.
pub(crate) fn decode_args<'a, T: Deserialize<'a>>(op: Op, args: &'a [u8]) -> Result<T> {
    let args: &'a [u8] = if args.is_empty() { b"{}" } else { args };
    let mut deserializer = serde_json::Deserializer::from_slice(args);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let top = path
            .split(['.', '['])
            .find(|segment| !segment.is_empty())
            .unwrap_or("args");
        let field = intern_field(top);
        let message = if path == "." {
            format!("{} arguments: {}", op.name(), e.inner())
        } else {
            format!("{} argument {path}: {}", op.name(), e.inner())
        };
        Error::InvalidInput { field, message }
    })
}

/// A request as the client writes it.
#[derive(Serialize)]
pub(crate) struct RequestOut<'a, A: Serialize> {
    pub(crate) id: u64,
    pub(crate) op: &'a str,
    pub(crate) args: &'a A,
}

/// A successful response as the server writes it.
#[derive(Serialize)]
pub(crate) struct OkOut<'a, T: Serialize> {
    pub(crate) id: u64,
    pub(crate) ok: &'a T,
}

/// An error response (or, with no id, an error about the connection) as the server writes it.
#[derive(Serialize)]
pub(crate) struct ErrorOut<'a> {
    pub(crate) id: Option<u64>,
    pub(crate) error: &'a WireError,
}

/// A response or a connection error as the client reads it.
#[derive(Deserialize)]
pub(crate) struct ResponseIn {
    #[serde(default)]
    pub(crate) id: Option<u64>,
    #[serde(default)]
    pub(crate) ok: Option<Box<RawValue>>,
    #[serde(default)]
    pub(crate) error: Option<WireError>,
    /// A server hello (only as the first frame).
    #[serde(default)]
    pub(crate) hello: Option<ServerHello>,
}

// --- errors -----------------------------------------------------------------------------------

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
    "after",
    "allowed",
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
        Error::Poisoned { .. } => WireError::new("poisoned", message),
        Error::ShutDown => WireError::new("shut_down", message),
        Error::Store(_) => WireError::new("store", message),
        Error::Config(_) => WireError::new("config", message),
        Error::InvalidRegistration(_) => WireError::new("invalid_registration", message),
        Error::UnknownEvent(_) => WireError::new("unknown_event", message),
        Error::Internal(_) => WireError::new("internal", message),
        Error::Control(_) => WireError::new("control", message),
        Error::Connect { .. } => WireError::new("connect", message),
        Error::Rabbit(_) => WireError::new("rabbitmq", message),
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
        "poisoned" => Some(Error::Poisoned {
            reason: strip(
                "engine is poisoned and refuses writes until reopened: ",
                &wire.message,
            ),
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

// --- op arguments and results -----------------------------------------------------------------

/// A task to queue. Everything but `name` falls back to the server's defaults.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WireTask {
    /// A fresh id chosen by the client (UUID v7); the server assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<TaskId>,
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payload: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_delay_ms: Option<u64>,
    /// First run no sooner than this (ms since the epoch); wins over `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) run_at_ms: Option<i64>,
    /// First run no sooner than this long after the server receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) delay_ms: Option<u64>,
}

/// A task to queue as the Rust client writes it: the payload goes out as it is held.
#[derive(Serialize)]
pub(crate) struct WireTaskOut<'a> {
    pub(crate) id: TaskId,
    pub(crate) name: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) priority: i32,
    pub(crate) payload: &'a Payload,
    pub(crate) max_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) run_at_ms: Option<i64>,
}

/// `enqueue` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueArgs<T> {
    pub(crate) tasks: Vec<T>,
}

/// `enqueue` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EnqueueOk {
    pub(crate) ids: Vec<TaskId>,
}

/// `claim` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimArgs<'a> {
    #[serde(borrow)]
    pub(crate) queues: Vec<Cow<'a, str>>,
    #[serde(default = "one")]
    pub(crate) max: usize,
    #[serde(default)]
    pub(crate) wait_ms: u64,
}

fn one() -> usize {
    1
}

/// Tasks claimed (`claim`, `settle_and_claim`) or listed (`list`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TasksOk<T> {
    pub(crate) tasks: Vec<T>,
}

/// The part of a claimed task the client needs to release it if nobody takes it.
#[derive(Debug, Deserialize)]
pub(crate) struct ClaimedRef {
    pub(crate) id: TaskId,
    pub(crate) attempts: u32,
}

/// `heartbeat` arguments (and the task/attempt part of others).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttemptArgs {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
}

/// `settle` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleArgs {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    /// `completed`, `failed` or `released`.
    pub(crate) outcome: String,
    /// `completed`: the handler's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<Value>,
    /// `failed`: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<TaskFailure>,
    /// `failed`: a delay the handler asked for instead of the backoff formula.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
    /// Answer with the task's record after the change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) record: bool,
}

/// `settle` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SettleOk {
    pub(crate) status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retry_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) record: Option<TaskRecord>,
}

/// `settle_and_claim` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleAndClaimArgs<'a> {
    pub(crate) settle: SettleArgs,
    #[serde(borrow)]
    pub(crate) queues: Vec<Cow<'a, str>>,
    #[serde(default = "one")]
    pub(crate) max: usize,
}

/// How the settlement of a `settle_and_claim` went: `{"ok": ...}` or `{"error": ...}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Settled {
    Ok(SettleOk),
    Error(WireError),
}

/// `settle_and_claim` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SettleAndClaimOk<T> {
    pub(crate) settled: Settled,
    pub(crate) tasks: Vec<T>,
}

/// Arguments naming one task (`task`, `cancel`, `retry`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdArgs {
    pub(crate) id: TaskId,
}

/// One task's record, or `null` (`task`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TaskOk<T> {
    pub(crate) task: Option<T>,
}

/// `list` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<TaskStatus>,
    #[serde(default)]
    pub(crate) limit: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) after: Option<TaskId>,
}

impl From<ListQuery> for ListArgs {
    fn from(query: ListQuery) -> Self {
        Self {
            queue: query.queue,
            status: query.status,
            limit: query.limit,
            after: query.after,
        }
    }
}

impl From<ListArgs> for ListQuery {
    fn from(args: ListArgs) -> Self {
        Self {
            queue: args.queue,
            status: args.status,
            limit: args.limit,
            after: args.after,
        }
    }
}

/// `retry_failed` arguments.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFailedArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) queue: Option<String>,
}

/// `purge` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurgeArgs {
    pub(crate) queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<TaskStatus>,
}

/// A count of tasks changed (`retry_failed`, `purge`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CountOk {
    pub(crate) count: u64,
}

/// `cleanup` arguments; absent values use the server's configured retention.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CleanupArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) completed_retention_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed_retention_ms: Option<u64>,
}

/// `cleanup` result.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CleanupOk {
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
}

impl From<CleanupReport> for CleanupOk {
    fn from(report: CleanupReport) -> Self {
        Self {
            completed: report.completed,
            failed: report.failed,
            cancelled: report.cancelled,
        }
    }
}

impl From<CleanupOk> for CleanupReport {
    fn from(ok: CleanupOk) -> Self {
        Self {
            completed: ok.completed,
            failed: ok.failed,
            cancelled: ok.cancelled,
        }
    }
}

/// `abort` arguments: the in-flight request (a claim) to end early.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AbortArgs {
    pub(crate) request: u64,
}

/// An empty object, the result of `heartbeat` and `abort`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Empty {}

/// The arguments of an op that takes none (`stats`): an empty object, and unknown keys are
/// errors as for every other op. (Not [`Empty`], which clients read leniently in answers.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskStatus;

    #[tokio::test]
    async fn frames_round_trip_and_bad_prefixes_are_refused_before_allocating() {
        let frame = encode_frame(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(&frame[..4], &7u32.to_be_bytes());
        let mut reader = &frame[..];
        assert_eq!(
            read_frame(&mut reader, 100).await.unwrap().unwrap(),
            br#"{"a":1}"#
        );
        assert!(read_frame(&mut reader, 100).await.unwrap().is_none());

        let mut zero = &[0u8, 0, 0, 0][..];
        assert!(matches!(
            read_frame(&mut zero, 100).await,
            Err(FrameError::Empty)
        ));
        // 4 GiB - 1 announced, nothing behind it: refused on the prefix alone.
        let mut huge = &[0xffu8, 0xff, 0xff, 0xff][..];
        assert!(matches!(
            read_frame(&mut huge, 2 << 20).await,
            Err(FrameError::TooLarge {
                len: 4_294_967_295,
                ..
            })
        ));
        let mut short_header = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut short_header, 100).await,
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        let mut short_body = &[0u8, 0, 0, 10, b'{'][..];
        assert!(matches!(
            read_frame(&mut short_body, 100).await,
            Err(FrameError::Truncated {
                got: 1,
                expected: 10
            })
        ));
    }

    #[test]
    fn requests_are_checked_for_shape() {
        let frame = br#"{"id": 7, "op": "claim", "args": {"queues": ["a"]}}"#;
        let parsed = parse_request(frame).unwrap();
        assert_eq!((parsed.id, parsed.op), (7, Op::Claim));
        let args = &frame[parsed.args.unwrap()];
        assert_eq!(args, br#"{"queues": ["a"]}"#);
        let claim: ClaimArgs<'_> = decode_args(Op::Claim, args).unwrap();
        assert_eq!((claim.max, claim.wait_ms), (1, 0));

        let bad = parse_request(b"{nope").unwrap_err();
        assert_eq!((bad.id, bad.error.kind.as_str()), (None, "bad_frame"));
        let bad = parse_request(br#"{"id": 3, "op": 5}"#).unwrap_err();
        assert_eq!((bad.id, bad.error.kind.as_str()), (Some(3), "bad_request"));
        let bad = parse_request(br#"{"id": 4, "op": "fly"}"#).unwrap_err();
        assert_eq!((bad.id, bad.error.kind.as_str()), (Some(4), "unknown_op"));
        assert!(bad.error.message.contains("settle_and_claim"));
    }

    #[test]
    fn argument_errors_name_the_path() {
        let err = decode_args::<ClaimArgs<'_>>(Op::Claim, br#"{"queues": ["a"], "max": "x"}"#)
            .unwrap_err();
        let Error::InvalidInput { field, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "max");
        assert!(
            message.starts_with("claim argument max: invalid type"),
            "{message}"
        );
        let err = decode_args::<EnqueueArgs<WireTask>>(
            Op::Enqueue,
            br#"{"tasks": [{"name": "a"}, {"name": 5}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("tasks[1].name"), "{err}");
        let err = decode_args::<ClaimArgs<'_>>(Op::Claim, b"").unwrap_err();
        assert!(err.to_string().contains("missing field `queues`"), "{err}");
    }

    #[test]
    fn errors_survive_the_wire() {
        let id = TaskId::new();
        let errors = [
            Error::invalid("queue", "must not be empty"),
            Error::NotFound(id),
            Error::WrongState {
                id,
                status: TaskStatus::Running,
                operation: "cancel",
                allowed: "PENDING or RETRYING tasks",
            },
            Error::StaleAttempt {
                id,
                attempt: 1,
                current: 2,
                status: TaskStatus::Running,
            },
            Error::QueueFull { limit: 10 },
            Error::Poisoned {
                reason: "disk full".into(),
            },
        ];
        for error in errors {
            let wire = error_to_wire(&error);
            let text = serde_json::to_string(&wire).unwrap();
            let back = error_from_wire(serde_json::from_str(&text).unwrap());
            assert_eq!(back.to_string(), error.to_string(), "{text}");
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&error),
                "{text}"
            );
        }
        let back = error_from_wire(error_to_wire(&Error::invalid("queue", "bad")));
        assert!(matches!(back, Error::InvalidInput { field: "queue", .. }));
        let remote = error_from_wire(WireError::new("store", "disk on fire"));
        assert!(
            matches!(&remote, Error::Remote { kind, message } if kind == "store" && message == "disk on fire")
        );
        assert_eq!(intern_field("made_up_field"), "made_up_field");
        assert_eq!(intern_field("x".repeat(100).as_str()), "input");
    }
}
