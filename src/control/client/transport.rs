//! The client's connection to an engine's control socket: connecting and the handshake,
//! pipelining (a reader task matches answers to requests by id, a writer task gathers frames
//! into few writes), and re-establishing the connection with backoff when the engine restarts.
//! Knows the protocol's envelopes, not the meaning of any op beyond releasing unwanted claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::remote::settle_args;
use super::{ConnectOptions, Endpoint};
use crate::broker::{Outcome, Settlement};
use crate::control::protocol::{
    AbortArgs, ClaimedRef, ClientHello, FrameReader, FrameWriter, HelloFrame, MAX_RESPONSE_BYTES,
    Op, PROTOCOL_VERSION, RequestOut, ResponseIn, ServerHello, SettleOk, TasksOk, encode_body,
    error_from_wire,
};
use crate::task::RetryPolicy;
use crate::{Error, Result};

/// The first pause between reconnection attempts; it doubles up to [`MAX_BACKOFF`], without
/// jitter (docs/protocol.md promises these pauses).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
type Answer = Result<Box<RawValue>>;

/// A request waiting for its answer.
struct Waiter {
    reply: oneshot::Sender<Answer>,
    /// The answer hands over claimed tasks: if nobody takes it, they are released.
    hands_over_tasks: bool,
}

#[derive(Default)]
struct ConnState {
    /// Why the connection is gone; set once, after which nothing more is registered.
    dead: Option<String>,
    waiting: HashMap<u64, Waiter>,
}

/// One established connection.
pub(super) struct Conn {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    state: Mutex<ConnState>,
    /// Cancelled when the connection is gone (or the client dropped): stops its tasks.
    closed: CancellationToken,
    addr: Arc<str>,
}

impl Conn {
    pub(super) fn is_dead(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dead
            .is_some()
    }

    /// Registers request `id` and queues its frame; gives the frame back if the connection is
    /// gone.
    pub(super) fn send(
        &self,
        id: u64,
        frame: Vec<u8>,
        hands_over_tasks: bool,
    ) -> std::result::Result<oneshot::Receiver<Answer>, Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.dead.is_some() {
                return Err(frame);
            }
            state.waiting.insert(
                id,
                Waiter {
                    reply,
                    hands_over_tasks,
                },
            );
        }
        if let Err(mpsc::error::SendError(frame)) = self.outgoing.send(frame) {
            self.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .waiting
                .remove(&id);
            return Err(frame);
        }
        Ok(answer)
    }

    /// Marks the connection gone and fails every request still waiting.
    fn fail(&self, reason: &str) {
        let waiting = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.dead.is_some() {
                return;
            }
            state.dead = Some(reason.to_owned());
            std::mem::take(&mut state.waiting)
        };
        self.closed.cancel();
        for (_, waiter) in waiting {
            drop(waiter.reply.send(Err(Error::Connect {
                addr: self.addr.to_string(),
                message: format!(
                    "the connection was lost before the answer arrived, so the request may or may not have taken effect: {reason}"
                ),
            })));
        }
    }
}

/// The state of the link to the engine.
#[derive(Clone)]
pub(super) enum Link {
    Up(Arc<Conn>),
    /// Down, and why; a reconnection is under way.
    Down(Arc<str>),
}

/// What the broker handle, its connection's tasks and its reconnection loop share.
pub(super) struct ClientShared {
    pub(super) endpoint: Endpoint,
    pub(super) addr: Arc<str>,
    pub(super) options: ConnectOptions,
    pub(super) next_id: AtomicU64,
    pub(super) link: watch::Sender<Link>,
    /// The engine's clock minus ours, measured at the handshake.
    pub(super) clock_offset_ms: AtomicI64,
    pub(super) max_payload_bytes: AtomicUsize,
    pub(super) max_frame_bytes: AtomicUsize,
    /// Cancelled when the broker is dropped.
    pub(super) stop: CancellationToken,
}

impl ClientShared {
    fn connect_error(&self, message: impl Into<String>) -> Error {
        Error::Connect {
            addr: self.addr.to_string(),
            message: message.into(),
        }
    }

    fn io_error(&self, error: &std::io::Error) -> Error {
        use std::io::ErrorKind;
        let message = match (&self.endpoint, error.kind()) {
            (Endpoint::Unix(path), ErrorKind::NotFound) => format!(
                "no control socket at {} (is an engine running on this store?)",
                path.display()
            ),
            (Endpoint::Unix(_), ErrorKind::ConnectionRefused) => {
                "nothing listens on the socket (the engine that created it is gone)".to_owned()
            }
            (Endpoint::Unix(_), ErrorKind::PermissionDenied) => {
                "permission denied: the control socket and its directory (modes 0600 and 0700) \
                 belong to another user; only the engine's owner (or root) can connect"
                    .to_owned()
            }
            (_, ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
            _ => error.to_string(),
        };
        self.connect_error(message)
    }

    /// Connects and handshakes once; starts the connection's reader and writer.
    pub(super) async fn connect_once(self: &Arc<Self>) -> Result<(Arc<Conn>, ServerHello)> {
        let timeout = self.options.connect_timeout;
        let connected = tokio::time::timeout(timeout, async {
            let (read, write): (BoxRead, BoxWrite) = match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.io_error(&e))?;
                    let (read, write) = stream.into_split();
                    (Box::new(read), Box::new(write))
                }
                Endpoint::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|e| self.io_error(&e))?;
                    stream.set_nodelay(true).map_err(|e| self.io_error(&e))?;
                    let (read, write) = stream.into_split();
                    (Box::new(read), Box::new(write))
                }
            };
            let mut reader = FrameReader::new(read, MAX_RESPONSE_BYTES);
            let mut writer = FrameWriter::new(write);
            let hello = encode_body(&HelloFrame {
                hello: ClientHello {
                    protocol: PROTOCOL_VERSION,
                    client: self.options.client.clone(),
                    // Only TCP servers check it; whatever listens on a Unix socket path (not
                    // necessarily the engine, if someone put their own there) never sees it.
                    token: match self.endpoint {
                        Endpoint::Tcp(_) => self.options.token.clone(),
                        Endpoint::Unix(_) => None,
                    },
                },
            })?;
            let sent_at = chrono::Utc::now().timestamp_millis();
            writer.send(&hello).await.map_err(|e| self.io_error(&e))?;
            writer.flush().await.map_err(|e| self.io_error(&e))?;
            let frame = reader
                .read_frame()
                .await
                .map_err(|e| self.connect_error(format!("the handshake failed: {e}")))?
                .ok_or_else(|| {
                    self.connect_error("the engine closed the connection during the handshake")
                })?;
            let answered_at = chrono::Utc::now().timestamp_millis();
            let response: ResponseIn = serde_json::from_slice(&frame).map_err(|e| {
                self.connect_error(format!(
                    "the handshake answer is not an fq control frame: {e}"
                ))
            })?;
            let hello = match (response.hello, response.error) {
                (Some(hello), _) => hello,
                (None, Some(error)) => return Err(error_from_wire(error)),
                (None, None) => {
                    return Err(self.connect_error("the handshake answer holds no hello"));
                }
            };
            Ok((reader, writer, hello, (sent_at + answered_at) / 2))
        })
        .await
        .map_err(|_| {
            self.connect_error(format!(
                "no answer to the handshake within {} s",
                timeout.as_secs()
            ))
        })?;
        let (reader, writer, hello, local_now) = connected?;
        self.clock_offset_ms
            .store(hello.now_ms.saturating_sub(local_now), Ordering::Relaxed);
        self.max_payload_bytes
            .store(hello.max_payload_bytes, Ordering::Relaxed);
        self.max_frame_bytes
            .store(hello.max_frame_bytes, Ordering::Relaxed);

        let (outgoing, frames) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            outgoing,
            state: Mutex::default(),
            closed: self.stop.child_token(),
            addr: Arc::clone(&self.addr),
        });
        tokio::spawn(write_loop(
            writer,
            frames,
            Arc::clone(&conn),
            Arc::downgrade(self),
        ));
        tokio::spawn(read_loop(reader, Arc::clone(&conn), Arc::downgrade(self)));
        Ok((conn, hello))
    }

    /// The connection is gone: if it was the current one, mark the link down and reconnect.
    fn lost(self: &Arc<Self>, conn: &Arc<Conn>, reason: &str) {
        let replaced = self.link.send_if_modified(|link| match link {
            Link::Up(current) if Arc::ptr_eq(current, conn) => {
                *link = Link::Down(Arc::from(reason));
                true
            }
            _ => false,
        });
        if replaced && !self.stop.is_cancelled() {
            tracing::warn!(addr = %self.addr, %reason, "lost the connection to the fq engine; reconnecting");
            tokio::spawn(reconnect(Arc::downgrade(self)));
        }
    }

    /// The live connection, waiting for one until `deadline`.
    pub(super) async fn current(&self, deadline: Instant) -> Result<Arc<Conn>> {
        let mut link = self.link.subscribe();
        loop {
            let why: Arc<str> = match &*link.borrow_and_update() {
                Link::Up(conn) if !conn.is_dead() => return Ok(Arc::clone(conn)),
                Link::Up(_) => Arc::from("the connection is closing"),
                Link::Down(why) => Arc::clone(why),
            };
            if self.stop.is_cancelled() {
                return Err(self.connect_error("the client is closed"));
            }
            match tokio::time::timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(self.connect_error("the client is closed")),
                Err(_) => {
                    return Err(self.connect_error(format!(
                        "not connected ({why}); reconnecting in the background"
                    )));
                }
            }
        }
    }

    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request's JSON, refused here if the engine would refuse its size.
    pub(super) fn request_body<A: Serialize>(&self, id: u64, op: Op, args: &A) -> Result<Vec<u8>> {
        let body = encode_body(&RequestOut {
            id,
            op: op.name(),
            args,
        })?;
        let max = self.max_frame_bytes.load(Ordering::Relaxed);
        if body.len() > max {
            return Err(Error::invalid(
                "request",
                format!(
                    "the {} request is {} bytes, over the engine's frame limit of {max} bytes \
                     (limits.max_frame_bytes); send fewer tasks per batch",
                    op.name(),
                    body.len()
                ),
            ));
        }
        Ok(body)
    }

    /// Sends a request (waiting up to `reconnect_wait` for a connection) and waits for its
    /// answer.
    pub(super) async fn call<A: Serialize>(
        &self,
        op: Op,
        args: &A,
        hands_over_tasks: bool,
    ) -> Answer {
        let deadline = Instant::now() + self.options.reconnect_wait;
        let id = self.next_id();
        let mut frame = self.request_body(id, op, args)?;
        let answer = loop {
            let conn = self.current(deadline).await?;
            match conn.send(id, frame, hands_over_tasks) {
                Ok(answer) => break answer,
                Err(back) => frame = back,
            }
        };
        answer.await.unwrap_or_else(|_| {
            Err(self.connect_error("the connection was lost before the answer arrived"))
        })
    }

    pub(super) async fn request<A: Serialize, T: DeserializeOwned>(
        &self,
        op: Op,
        args: &A,
    ) -> Result<T> {
        let raw = self.call(op, args, false).await?;
        decode(op, &raw)
    }

    /// Asks the engine to end request `id` (a claim) early; its answer still comes.
    pub(super) fn abort(&self, conn: &Conn, id: u64) {
        let abort_id = self.next_id();
        if let Ok(frame) = self.request_body(abort_id, Op::Abort, &AbortArgs { request: id }) {
            // Unregistered: the acknowledgement is dropped when it arrives.
            drop(conn.outgoing.send(frame));
        }
    }

    /// Gives back tasks whose claim answer nobody took (the caller stopped waiting).
    fn release(self: &Arc<Self>, answer: &RawValue) {
        let Ok(claimed) = serde_json::from_str::<TasksOk<ClaimedRef>>(answer.get()) else {
            return;
        };
        if claimed.tasks.is_empty() {
            return;
        }
        let shared = Arc::downgrade(self);
        tokio::spawn(async move {
            for task in claimed.tasks {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let args = settle_args(
                    &Settlement {
                        id: task.id,
                        attempt: task.attempts,
                        outcome: Outcome::Released,
                    },
                    false,
                );
                if let Err(e) = shared.request::<_, SettleOk>(Op::Settle, &args).await {
                    tracing::debug!(task.id = %task.id, error = %e, "could not release an unwanted claim; its lease will expire");
                }
            }
        });
    }
}

pub(super) fn decode<T: DeserializeOwned>(op: Op, raw: &RawValue) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|e| Error::Remote {
        kind: "bad_response".into(),
        message: format!("cannot read the engine's answer to {}: {e}", op.name()),
    })
}

/// Reads answers and hands each to the request waiting for it, until the connection ends.
async fn read_loop(mut reader: FrameReader<BoxRead>, conn: Arc<Conn>, shared: Weak<ClientShared>) {
    // An error the engine sent about the connection itself, which it closes next.
    let mut refused: Option<String> = None;
    let reason = loop {
        let frame = tokio::select! {
            () = conn.closed.cancelled() => break "the connection was closed".to_owned(),
            frame = reader.read_frame() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                break refused
                    .take()
                    .unwrap_or_else(|| "the engine closed the connection".to_owned());
            }
            Err(e) => break refused.take().unwrap_or_else(|| e.to_string()),
        };
        let response: ResponseIn = match serde_json::from_slice(&frame) {
            Ok(response) => response,
            Err(e) => break format!("the engine sent a frame that is not a response: {e}"),
        };
        let Some(id) = response.id else {
            if let Some(error) = response.error {
                tracing::warn!(kind = %error.kind, error = %error.message, "the fq engine refused the connection");
                refused = Some(format!(
                    "the engine refused the connection: {} ({})",
                    error.message, error.kind
                ));
            }
            continue;
        };
        let waiter = conn
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
            .remove(&id);
        // No waiter: an abort's acknowledgement, or an answer to a request already failed.
        let Some(waiter) = waiter else { continue };
        let answer = match (response.ok, response.error) {
            (Some(ok), _) => Ok(ok),
            (None, Some(error)) => Err(error_from_wire(error)),
            (None, None) => Err(Error::Remote {
                kind: "bad_response".into(),
                message: "the engine's answer holds neither ok nor error".into(),
            }),
        };
        if let Err(Ok(unwanted)) = waiter.reply.send(answer)
            && waiter.hands_over_tasks
            && let Some(shared) = shared.upgrade()
        {
            shared.release(&unwanted);
        }
    };
    conn.fail(&reason);
    if let Some(shared) = shared.upgrade() {
        shared.lost(&conn, &reason);
    }
}

/// Writes queued frames, flushing when none are left waiting, so many pipelined requests go
/// out in one write.
async fn write_loop(
    mut writer: FrameWriter<BoxWrite>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    conn: Arc<Conn>,
    shared: Weak<ClientShared>,
) {
    let mut batch = Vec::with_capacity(64);
    let failure = loop {
        let received = tokio::select! {
            received = frames.recv_many(&mut batch, 64) => received,
            () = conn.closed.cancelled() => 0,
        };
        if received == 0 {
            break None;
        }
        let mut failure = None;
        for frame in batch.drain(..) {
            if let Err(e) = writer.send(&frame).await {
                failure = Some(format!("writing to the engine failed: {e}"));
                break;
            }
        }
        if failure.is_none()
            && frames.is_empty()
            && let Err(e) = writer.flush().await
        {
            failure = Some(format!("writing to the engine failed: {e}"));
        }
        if failure.is_some() {
            break failure;
        }
    };
    match failure {
        Some(reason) => {
            conn.fail(&reason);
            if let Some(shared) = shared.upgrade() {
                shared.lost(&conn, &reason);
            }
        }
        None => drop(writer.shutdown().await),
    }
}

/// Re-establishes the connection with backoff until it works or the client is dropped.
async fn reconnect(shared: Weak<ClientShared>) {
    let mut backoff = RetryPolicy::reconnect_backoff(FIRST_BACKOFF, MAX_BACKOFF, 0.0);
    loop {
        let Some(client) = shared.upgrade() else {
            return;
        };
        if client.stop.is_cancelled() {
            return;
        }
        match client.connect_once().await {
            Ok((conn, _)) => {
                tracing::info!(addr = %client.addr, "reconnected to the fq engine");
                client.link.send_replace(Link::Up(conn));
                return;
            }
            Err(e) => {
                tracing::debug!(addr = %client.addr, error = %e, "reconnecting to the fq engine failed");
                let why: Arc<str> = Arc::from(e.to_string());
                client.link.send_replace(Link::Down(why));
            }
        }
        let stop = client.stop.clone();
        drop(client);
        tokio::select! {
            () = tokio::time::sleep(backoff.next_pause()) => {}
            () = stop.cancelled() => return,
        }
    }
}
