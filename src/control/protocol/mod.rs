//! The control protocol's wire format (version 1, specified in docs/protocol.md): the
//! handshake, request and response envelopes and the protocol's limits, with the frames in
//! `frame`, the error objects in `wire_error` and each op's arguments and results in `ops`.
//! Shared by `server` and `client`; it owns no sockets and no engine state.

mod frame;
mod ops;
mod schedules;
mod wire_error;

pub(crate) use frame::*;
pub(crate) use ops::*;
pub(crate) use schedules::*;
pub(crate) use wire_error::*;

use std::borrow::Cow;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, Result};

/// The protocol version this build speaks; the handshake refuses any other.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// The most a `list` response holds, in bytes of records, before the page is cut short.
pub(crate) const MAX_LIST_BYTES: usize = 64 << 20;
/// The longest a claim may wait for work (one hour).
pub(crate) const MAX_WAIT_MS: u64 = 3_600_000;
/// The most tasks one claim may ask for.
pub(crate) const MAX_CLAIM: usize = 10_000;
/// How many requests of one connection the server works on at once; it reads no further
/// requests from that connection until one is answered.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

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
    Wait,
    Pause,
    Resume,
    Schedule,
    Schedules,
    ScheduleAction,
    Limit,
    Attempts,
    Explain,
    Workers,
    WorkerAnnounce,
    WorkerHeartbeat,
    WorkerStopped,
    Metrics,
}

impl Op {
    /// Every op, for messages.
    pub(crate) const ALL: [Op; 28] = [
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
        Op::Wait,
        Op::Pause,
        Op::Resume,
        Op::Schedule,
        Op::Schedules,
        Op::ScheduleAction,
        Op::Limit,
        Op::Attempts,
        Op::Explain,
        Op::Workers,
        Op::WorkerAnnounce,
        Op::WorkerHeartbeat,
        Op::WorkerStopped,
        Op::Metrics,
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
            Op::Wait => "wait",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Schedule => "schedule",
            Op::Schedules => "schedules",
            Op::ScheduleAction => "schedule_action",
            Op::Limit => "limit",
            Op::Attempts => "attempts",
            Op::Explain => "explain",
            Op::Workers => "workers",
            Op::WorkerAnnounce => "worker_announce",
            Op::WorkerHeartbeat => "worker_heartbeat",
            Op::WorkerStopped => "worker_stopped",
            Op::Metrics => "metrics",
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

#[cfg(test)]
mod tests;
