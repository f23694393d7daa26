//! The client side of the control socket: [`RemoteBroker`], a [`Broker`] over one connection to
//! an engine's control socket, behind `Engine::connect`. Requests are pipelined (a reader task
//! matches answers to requests by id, a writer task batches frames into few writes), and the
//! connection is re-established with backoff when the engine restarts. Owns no engine state:
//! the serving engine holds the truth.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::protocol::{
    AbortArgs, AttemptArgs, ClaimArgs, ClaimedRef, CleanupArgs, CleanupOk, ClientHello, CountOk,
    Empty, EnqueueArgs, EnqueueOk, HelloFrame, IdArgs, ListArgs, MAX_RESPONSE_BYTES, Op,
    PROTOCOL_VERSION, PurgeArgs, RequestOut, ResponseIn, RetryFailedArgs, ServerHello,
    SettleAndClaimArgs, SettleAndClaimOk, SettleArgs, SettleOk, Settled, TaskOk, TasksOk,
    WireTaskOut, body_len, encode_frame, error_from_wire, read_frame,
};
use crate::broker::{
    BoxFuture, Broker, Chained, CleanupReport, ListQuery, NewTask, Outcome, RetentionPolicy,
    SettleReport, Settlement, Stats,
};
use crate::clock::{Millis, millis_to_datetime};
use crate::events::{Event, EventBus, EventKind};
use crate::task::{RetryPolicy, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// The environment variable [`ConnectOptions::from_env`] reads the token from.
pub(crate) const TOKEN_VAR: &str = "FQ_TOKEN";
/// The first pause between reconnection attempts; it doubles up to [`MAX_BACKOFF`], without
/// jitter (docs/protocol.md promises these pauses).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;
type Answer = Result<Box<RawValue>>;

/// Options for [`Engine::connect_with`](crate::Engine::connect_with).
#[derive(Clone)]
#[must_use]
pub struct ConnectOptions {
    token: Option<String>,
    client: String,
    reconnect_wait: Duration,
    connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: None,
            client: format!("fq-rust/{}", env!("CARGO_PKG_VERSION")),
            reconnect_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client", &self.client)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// No token, the default name and waits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults, with the token from the `FQ_TOKEN` environment variable when it is set
    /// (what [`Engine::connect`](crate::Engine::connect) uses).
    pub fn from_env() -> Self {
        Self {
            token: std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()),
            ..Self::default()
        }
    }

    /// The control token (the server's `control.token`), needed over TCP when the server has
    /// one; Unix-socket connections do not need it (default: none).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A name for the server's logs (default `fq-rust/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client = name.into();
        self
    }

    /// How long a request made while the connection is down waits for it to come back before
    /// failing with [`Error::Connect`] (default 10 s). Claims wait at most their own wait.
    pub fn reconnect_wait(mut self, wait: Duration) -> Self {
        self.reconnect_wait = wait;
        self
    }

    /// How long connecting, and the handshake, may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// Where the engine listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl Endpoint {
    /// `unix:PATH`, `tcp:HOST:PORT`, or a bare path: a socket, or a store file (`*.redb`),
    /// whose default socket is its path plus `.sock`.
    fn parse(addr: &str) -> Result<Self> {
        if let Some(rest) = addr.strip_prefix("tcp:") {
            let port = rest
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            return match port {
                Some((host, Ok(_))) if !host.is_empty() => Ok(Endpoint::Tcp(rest.to_owned())),
                _ => Err(Error::invalid(
                    "connect",
                    format!("{addr:?} is not tcp:HOST:PORT, e.g. tcp:127.0.0.1:7878"),
                )),
            };
        }
        let path = addr.strip_prefix("unix:").unwrap_or(addr);
        if path.is_empty() {
            return Err(Error::invalid(
                "connect",
                "expected unix:PATH, tcp:HOST:PORT or a socket path, got an empty address",
            ));
        }
        if addr.starts_with("unix:") || !path.ends_with(".redb") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        Ok(Endpoint::Unix(PathBuf::from(format!("{path}.sock"))))
    }
}

/// What the engine said about itself when the connection was made.
#[derive(Clone, Debug)]
pub(crate) struct RemoteInfo {
    pub(crate) store: PathBuf,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retention: RetentionPolicy,
    pub(crate) lease: Duration,
}

impl From<&ServerHello> for RemoteInfo {
    fn from(hello: &ServerHello) -> Self {
        Self {
            store: PathBuf::from(&hello.store),
            queue: hello.defaults.queue.clone(),
            priority: hello.defaults.priority,
            max_retries: hello.defaults.max_retries,
            timeout: hello.defaults.timeout_ms.map(Duration::from_millis),
            retention: RetentionPolicy {
                completed: Duration::from_millis(hello.retention.completed_ms),
                failed: Duration::from_millis(hello.retention.failed_ms),
            },
            lease: Duration::from_millis(hello.lease_ms),
        }
    }
}

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
struct Conn {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    state: Mutex<ConnState>,
    /// Cancelled when the connection is gone (or the client dropped): stops its tasks.
    closed: CancellationToken,
    addr: Arc<str>,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dead
            .is_some()
    }

    /// Registers request `id` and queues its frame; gives the frame back if the connection is
    /// gone.
    fn send(
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
enum Link {
    Up(Arc<Conn>),
    /// Down, and why; a reconnection is under way.
    Down(Arc<str>),
}

/// What the broker handle, its connection's tasks and its reconnection loop share.
struct ClientShared {
    endpoint: Endpoint,
    addr: Arc<str>,
    options: ConnectOptions,
    next_id: AtomicU64,
    link: watch::Sender<Link>,
    /// The engine's clock minus ours, measured at the handshake.
    clock_offset_ms: AtomicI64,
    max_payload_bytes: AtomicUsize,
    max_frame_bytes: AtomicUsize,
    /// Cancelled when the broker is dropped.
    stop: CancellationToken,
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
    async fn connect_once(self: &Arc<Self>) -> Result<(Arc<Conn>, ServerHello)> {
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
            let mut reader = BufReader::with_capacity(64 * 1024, read);
            let mut writer = BufWriter::with_capacity(64 * 1024, write);
            let hello = encode_frame(&HelloFrame {
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
            writer
                .write_all(&hello)
                .await
                .map_err(|e| self.io_error(&e))?;
            writer.flush().await.map_err(|e| self.io_error(&e))?;
            let frame = read_frame(&mut reader, MAX_RESPONSE_BYTES)
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
    async fn current(&self, deadline: Instant) -> Result<Arc<Conn>> {
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

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request frame, refused here if the engine would refuse its size.
    fn request_frame<A: Serialize>(&self, id: u64, op: Op, args: &A) -> Result<Vec<u8>> {
        let frame = encode_frame(&RequestOut {
            id,
            op: op.name(),
            args,
        })?;
        let max = self.max_frame_bytes.load(Ordering::Relaxed);
        if body_len(&frame) > max {
            return Err(Error::invalid(
                "request",
                format!(
                    "the {} request is {} bytes, over the engine's frame limit of {max} bytes \
                     (limits.max_frame_bytes); send fewer tasks per batch",
                    op.name(),
                    body_len(&frame)
                ),
            ));
        }
        Ok(frame)
    }

    /// Sends a request (waiting up to `reconnect_wait` for a connection) and waits for its
    /// answer.
    async fn call<A: Serialize>(&self, op: Op, args: &A, hands_over_tasks: bool) -> Answer {
        let deadline = Instant::now() + self.options.reconnect_wait;
        let id = self.next_id();
        let mut frame = self.request_frame(id, op, args)?;
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

    async fn request<A: Serialize, T: DeserializeOwned>(&self, op: Op, args: &A) -> Result<T> {
        let raw = self.call(op, args, false).await?;
        decode(op, &raw)
    }

    /// Asks the engine to end request `id` (a claim) early; its answer still comes.
    fn abort(&self, conn: &Conn, id: u64) {
        let abort_id = self.next_id();
        if let Ok(frame) = self.request_frame(abort_id, Op::Abort, &AbortArgs { request: id }) {
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

fn decode<T: DeserializeOwned>(op: Op, raw: &RawValue) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|e| Error::Remote {
        kind: "bad_response".into(),
        message: format!("cannot read the engine's answer to {}: {e}", op.name()),
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn settle_args(settlement: &Settlement, record: bool) -> SettleArgs {
    let mut args = SettleArgs {
        id: settlement.id,
        attempt: settlement.attempt,
        outcome: String::new(),
        result: None,
        error: None,
        retry_after_ms: None,
        record,
    };
    match &settlement.outcome {
        Outcome::Completed { result } => {
            args.outcome = "completed".into();
            args.result = Some(result.clone());
        }
        Outcome::Failed {
            failure,
            retry_after,
        } => {
            args.outcome = "failed".into();
            args.error = Some(failure.clone());
            args.retry_after_ms = retry_after.map(millis);
        }
        Outcome::Released => args.outcome = "released".into(),
    }
    args
}

fn settle_report(ok: SettleOk) -> SettleReport {
    SettleReport {
        status: ok.status,
        retry_at: ok.retry_at_ms,
        record: ok.record.map(Arc::new),
    }
}

/// Reads answers and hands each to the request waiting for it, until the connection ends.
async fn read_loop(mut reader: BufReader<BoxRead>, conn: Arc<Conn>, shared: Weak<ClientShared>) {
    // An error the engine sent about the connection itself, which it closes next.
    let mut refused: Option<String> = None;
    let reason = loop {
        let frame = tokio::select! {
            () = conn.closed.cancelled() => break "the connection was closed".to_owned(),
            frame = read_frame(&mut reader, MAX_RESPONSE_BYTES) => frame,
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
    mut writer: BufWriter<BoxWrite>,
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
            if let Err(e) = writer.write_all(&frame).await {
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

/// A [`Broker`] over an engine's control socket. Worker-side events (before/after execution,
/// execution error, retrying, failed, from this process's workers) and `task.cancelled` (for
/// cancels made here) fire on its own event bus; the serving engine's events
/// (`task.queued`, lease expiries) stay in that process.
pub(crate) struct RemoteBroker {
    shared: Arc<ClientShared>,
    events: EventBus,
    /// Stops the connection's tasks and the reconnection loop when the broker goes.
    _stop: DropGuard,
}

impl std::fmt::Debug for RemoteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = matches!(&*self.shared.link.borrow(), Link::Up(conn) if !conn.is_dead());
        f.debug_struct("RemoteBroker")
            .field("addr", &self.shared.addr)
            .field("connected", &connected)
            .finish_non_exhaustive()
    }
}

impl RemoteBroker {
    /// Connects to the engine at `addr` (see [`Endpoint::parse`]) and handshakes.
    pub(crate) async fn connect(addr: &str, options: ConnectOptions) -> Result<(Self, RemoteInfo)> {
        let endpoint = Endpoint::parse(addr)?;
        let stop = CancellationToken::new();
        let (link, _) = watch::channel(Link::Down(Arc::from("connecting")));
        let shared = Arc::new(ClientShared {
            endpoint,
            addr: Arc::from(addr),
            options,
            next_id: AtomicU64::new(1),
            link,
            clock_offset_ms: AtomicI64::new(0),
            max_payload_bytes: AtomicUsize::new(0),
            max_frame_bytes: AtomicUsize::new(0),
            stop: stop.clone(),
        });
        let (conn, hello) = shared.connect_once().await?;
        shared.link.send_replace(Link::Up(conn));
        tracing::debug!(%addr, server = %hello.server, pid = hello.pid, "connected to an fq engine");
        let info = RemoteInfo::from(&hello);
        Ok((
            Self {
                shared,
                events: EventBus::new(),
                _stop: stop.drop_guard(),
            },
            info,
        ))
    }
}

fn queue_names(queues: &[Arc<str>]) -> Vec<Cow<'_, str>> {
    queues.iter().map(|queue| Cow::Borrowed(&**queue)).collect()
}

impl Broker for RemoteBroker {
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<TaskId>>> {
        Box::pin(async move {
            if tasks.is_empty() {
                return Ok(Vec::new());
            }
            let wire: Vec<WireTaskOut<'_>> = tasks
                .iter()
                .map(|task| WireTaskOut {
                    id: task.id,
                    name: &task.name,
                    queue: &task.queue,
                    priority: task.priority,
                    payload: &task.payload,
                    max_retries: task.max_retries,
                    timeout_ms: task.timeout.map(millis),
                    retry_delay_ms: task.retry_delay.map(millis),
                    run_at_ms: task.run_at,
                })
                .collect();
            let ok: EnqueueOk = self
                .shared
                .request(Op::Enqueue, &EnqueueArgs { tasks: wire })
                .await?;
            Ok(ok.ids)
        })
    }

    fn claim<'a>(
        &'a self,
        queues: &'a [Arc<str>],
        max: usize,
        wait: Duration,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<TaskRecord>>> {
        Box::pin(async move {
            let shared = &self.shared;
            let deadline = Instant::now() + wait;
            loop {
                if cancel.is_cancelled() {
                    return Ok(Vec::new());
                }
                // While the engine is away, a claim waits for it (up to its own wait) and then
                // finds nothing: a worker idles through a restart instead of erroring in a loop.
                let conn = tokio::select! {
                    conn = shared.current(deadline) => match conn {
                        Ok(conn) => conn,
                        Err(_) => return Ok(Vec::new()),
                    },
                    () = cancel.cancelled() => return Ok(Vec::new()),
                };
                let id = shared.next_id();
                let wait_ms = millis(deadline.saturating_duration_since(Instant::now()));
                let args = ClaimArgs {
                    queues: queue_names(queues),
                    max,
                    wait_ms,
                };
                let frame = shared.request_frame(id, Op::Claim, &args)?;
                let Ok(mut answer) = conn.send(id, frame, true) else {
                    continue;
                };
                let answer = tokio::select! {
                    answer = &mut answer => answer,
                    () = cancel.cancelled() => {
                        // The engine ends the claim early; tasks it already claimed still
                        // come back, and must reach the worker.
                        shared.abort(&conn, id);
                        answer.await
                    }
                };
                match answer {
                    Ok(Ok(raw)) => return Ok(decode::<TasksOk<TaskRecord>>(Op::Claim, &raw)?.tasks),
                    Ok(Err(Error::Connect { .. })) | Err(_) => {
                        if Instant::now() >= deadline {
                            return Ok(Vec::new());
                        }
                    }
                    Ok(Err(error)) => return Err(error),
                }
            }
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        Box::pin(async move {
            let args = settle_args(&settlement, self.events.has_audience());
            let ok: SettleOk = self.shared.request(Op::Settle, &args).await?;
            Ok(settle_report(ok))
        })
    }

    fn settle_and_claim<'a>(
        &'a self,
        settlement: Settlement,
        queues: &'a [Arc<str>],
        max: usize,
    ) -> BoxFuture<'a, Result<Chained>> {
        Box::pin(async move {
            let args = SettleAndClaimArgs {
                settle: settle_args(&settlement, self.events.has_audience()),
                queues: queue_names(queues),
                max,
            };
            let raw = self.shared.call(Op::SettleAndClaim, &args, true).await?;
            let ok: SettleAndClaimOk<TaskRecord> = decode(Op::SettleAndClaim, &raw)?;
            let settled = match ok.settled {
                Settled::Ok(report) => Ok(settle_report(report)),
                Settled::Error(error) => Err(error_from_wire(error)),
            };
            Ok(Chained {
                settled,
                claimed: ok.tasks,
            })
        })
    }

    fn heartbeat(&self, id: TaskId, attempt: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _: Empty = self
                .shared
                .request(Op::Heartbeat, &AttemptArgs { id, attempt })
                .await?;
            Ok(())
        })
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        Box::pin(async move {
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Task, &IdArgs { id }).await?;
            Ok(ok.task)
        })
    }

    fn cancel(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Cancel, &IdArgs { id }).await?;
            let record = ok.task.ok_or_else(|| Error::Remote {
                kind: "bad_response".into(),
                message: "the engine's answer to cancel holds no task".into(),
            })?;
            let now = millis_to_datetime(self.now_ms());
            let snapshot = Arc::new(record.clone());
            self.events
                .emit(|| Event::new(EventKind::Cancelled, snapshot, now));
            Ok(record)
        })
    }

    fn cleanup(&self, policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>> {
        Box::pin(async move {
            let args = CleanupArgs {
                completed_retention_ms: Some(millis(policy.completed)),
                failed_retention_ms: Some(millis(policy.failed)),
            };
            let ok: CleanupOk = self.shared.request(Op::Cleanup, &args).await?;
            Ok(ok.into())
        })
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>> {
        Box::pin(async move {
            let ok: TasksOk<TaskRecord> = self
                .shared
                .request(Op::List, &ListArgs::from(query))
                .await?;
            Ok(ok.tasks)
        })
    }

    fn retry(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Retry, &IdArgs { id }).await?;
            ok.task.ok_or_else(|| Error::Remote {
                kind: "bad_response".into(),
                message: "the engine's answer to retry holds no task".into(),
            })
        })
    }

    fn retry_failed(&self, queue: Option<String>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let ok: CountOk = self
                .shared
                .request(Op::RetryFailed, &RetryFailedArgs { queue })
                .await?;
            Ok(ok.count)
        })
    }

    fn purge(&self, queue: String, status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let ok: CountOk = self
                .shared
                .request(Op::Purge, &PurgeArgs { queue, status })
                .await?;
            Ok(ok.count)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        Box::pin(self.shared.request(Op::Stats, &Empty {}))
    }

    fn events(&self) -> &EventBus {
        &self.events
    }

    fn now_ms(&self) -> Millis {
        chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(self.shared.clock_offset_ms.load(Ordering::Relaxed))
    }

    fn max_payload_bytes(&self) -> usize {
        self.shared.max_payload_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Endpoint::parse("unix:/run/fq.sock").unwrap(),
            Endpoint::Unix("/run/fq.sock".into())
        );
        assert_eq!(
            Endpoint::parse("var/fq.redb.sock").unwrap(),
            Endpoint::Unix("var/fq.redb.sock".into())
        );
        assert_eq!(
            Endpoint::parse("var/fq.redb").unwrap(),
            Endpoint::Unix("var/fq.redb.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:var/fq.redb").unwrap(),
            Endpoint::Unix("var/fq.redb".into())
        );
        assert_eq!(
            Endpoint::parse("tcp:127.0.0.1:7878").unwrap(),
            Endpoint::Tcp("127.0.0.1:7878".into())
        );
        assert_eq!(
            Endpoint::parse("tcp:[::1]:7878").unwrap(),
            Endpoint::Tcp("[::1]:7878".into())
        );
        for bad in ["", "unix:", "tcp:7878", "tcp:host:port", "tcp::1"] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "connect",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn options_hide_the_token() {
        let options = ConnectOptions::new().token("hunter2");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
