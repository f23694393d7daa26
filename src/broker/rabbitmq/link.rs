//! The connection to RabbitMQ: connecting (with the password kept out of lapin's URI, so not
//! even lapin's trace logs can show it), one [`Session`] per connection, and the loop that
//! reconnects with backoff when it breaks. Sessions are published on a watch channel; every
//! other part of the bridge waits for one and stops using it when its `lost` token fires.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RabbitError;
pub(crate) use super::target::{Target, connect_error};
use super::topology::{declare_exchanges, declare_queue};
use crate::clock::{Millis, millis_to_datetime};
use crate::task::RetryPolicy;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Each wait is lengthened at random by up to this fraction of itself.
const BACKOFF_JITTER: f64 = 0.25;
/// How often a session checks that its connection is still up.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Failed attempts are logged at warn level at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How long a stopping link waits for a connection attempt in flight, and then for a clean close.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// One connection to RabbitMQ and what lives on it.
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// Publisher-confirm channel for the forwarder and dead letters.
    pub(crate) publish: Channel,
    /// Fires when the connection is lost (or the bridge stops): everything using this
    /// session gives up on it.
    pub(crate) lost: CancellationToken,
    /// Queues declared on this connection.
    declared: Mutex<HashSet<String>>,
    /// The channel declarations run on; a failed declaration closes it, so it is replaced.
    topology: tokio::sync::Mutex<Option<Channel>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("lost", &self.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Publishes on the confirm channel with `mandatory` set, as every fq publish does: a
    /// message no queue takes comes back (`basic.return`) instead of vanishing, and its
    /// confirm says so.
    pub(crate) async fn publish_mandatory(
        &self,
        exchange: &str,
        routing: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublisherConfirm> {
        self.publish
            .basic_publish(
                exchange.into(),
                routing,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
    }

    /// Declares `queue`'s topology once per connection.
    pub(crate) async fn ensure_queue(&self, queue: &str) -> Result<(), RabbitError> {
        bounded("declare", self.declare_once(queue)).await
    }

    async fn declare_once(&self, queue: &str) -> Result<(), RabbitError> {
        let known = |declared: &Mutex<HashSet<String>>| {
            declared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(queue)
        };
        if known(&self.declared) {
            return Ok(());
        }
        let mut slot = self.topology.lock().await;
        if known(&self.declared) {
            return Ok(());
        }
        let channel = match slot.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => {
                let channel = self.open_channel("open a channel").await?;
                declare_exchanges(&channel).await?;
                channel
            }
        };
        declare_queue(&channel, queue).await?;
        *slot = Some(channel);
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned());
        Ok(())
    }

    /// Forgets that `queue` was declared (a publish to it was returned unroutable).
    pub(crate) fn forget_queue(&self, queue: &str) {
        self.declared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
    }

    /// Closes the connection cleanly (its channels with it), waiting at most [`STOP_WAIT`].
    pub(crate) async fn close(&self, reason: &str) {
        let _ = tokio::time::timeout(STOP_WAIT, self.connection.close(200, reason.into())).await;
    }

    /// A new channel on this connection.
    pub(crate) async fn open_channel(&self, action: &'static str) -> Result<Channel, RabbitError> {
        bounded(action, async {
            self.connection
                .create_channel()
                .await
                .map_err(|e| operation(action, e))
        })
        .await
    }
}

/// How long any single AMQP request may take before fq gives up on it (a connection that
/// died without closing must never hold a worker slot or the forwarder).
pub(crate) const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// `request`, failing with an `Operation` error when RabbitMQ does not answer within
/// [`RPC_TIMEOUT`].
pub(crate) async fn bounded<T>(
    action: &'static str,
    request: impl std::future::Future<Output = Result<T, RabbitError>>,
) -> Result<T, RabbitError> {
    tokio::time::timeout(RPC_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(RabbitError::Operation {
                action,
                reason: format!("no answer from RabbitMQ within {RPC_TIMEOUT:?}"),
                source: None,
            })
        })
}

/// An AMQP operation's failure.
pub(crate) fn operation(action: &'static str, error: lapin::Error) -> RabbitError {
    RabbitError::Operation {
        action,
        reason: error.to_string(),
        source: Some(Box::new(error)),
    }
}

/// What the link knows about its connection, for stats and errors.
#[derive(Debug, Default)]
struct LinkState {
    connected_since: Option<Millis>,
    down_since: Option<Millis>,
    last_error: Option<LastError>,
}

#[derive(Debug, Clone)]
struct LastError {
    refused: bool,
    reason: String,
    source: Option<lapin::Error>,
}

/// The current session, if any, and the connection's history.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) target: Target,
    session: watch::Sender<Option<Arc<Session>>>,
    state: Mutex<LinkState>,
    generation: AtomicU64,
}

impl Link {
    pub(crate) fn new(target: Target, now: Millis) -> Self {
        Self {
            target,
            session: watch::Sender::new(None),
            state: Mutex::new(LinkState {
                down_since: Some(now),
                ..LinkState::default()
            }),
            generation: AtomicU64::new(0),
        }
    }

    /// The live session, if connected.
    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.session
            .borrow()
            .as_ref()
            .filter(|s| !s.lost.is_cancelled())
            .cloned()
    }

    /// Waits for a live session; `None` once `stop` fires.
    pub(crate) async fn wait(&self, stop: &CancellationToken) -> Option<Arc<Session>> {
        let mut updates = self.session.subscribe();
        loop {
            // Checked first: a stopping bridge keeps its session open for a moment (for the
            // forwarder's last confirms), and must not hand it out again meanwhile.
            if stop.is_cancelled() {
                return None;
            }
            if let Some(session) = self.current() {
                return Some(session);
            }
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = stop.cancelled() => return None,
                // A session can be lost between the update and the look; look again soon.
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Waits up to `timeout` for a connection; the error is the last failure (or a timeout).
    pub(crate) async fn ready(&self, timeout: Duration) -> Result<(), RabbitError> {
        let stop = CancellationToken::new();
        if tokio::time::timeout(timeout, self.wait(&stop))
            .await
            .is_ok()
        {
            return Ok(());
        }
        Err(self
            .last_error()
            .unwrap_or_else(|| RabbitError::Unreachable {
                endpoint: self.target.endpoint.clone(),
                reason: format!("not connected within {timeout:?}"),
                source: None,
            }))
    }

    /// True once a connection attempt has succeeded or failed.
    pub(crate) fn has_tried(&self) -> bool {
        self.generation.load(Ordering::SeqCst) > 0
            || self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_error
                .is_some()
    }

    /// The last connection failure, as an error.
    pub(crate) fn last_error(&self) -> Option<RabbitError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let last = state.last_error.clone()?;
        let endpoint = self.target.endpoint.clone();
        let source = last.source.map(|e| Box::new(e) as super::error::BoxError);
        Some(if last.refused {
            RabbitError::Refused {
                endpoint,
                reason: last.reason,
                source,
            }
        } else {
            RabbitError::Unreachable {
                endpoint,
                reason: last.reason,
                source,
            }
        })
    }

    /// One line about the connection: connected, or down since when and why.
    pub(crate) fn describe(&self) -> String {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if self.current().is_some() {
            return format!("connected to {}", self.target.endpoint);
        }
        let since = state
            .down_since
            .map(|at| {
                format!(
                    " since {}",
                    millis_to_datetime(at).format("%Y-%m-%dT%H:%M:%SZ")
                )
            })
            .unwrap_or_default();
        match &state.last_error {
            Some(last) => format!(
                "RabbitMQ at {} is unreachable{since}: {}",
                self.target.endpoint, last.reason
            ),
            None => format!("not yet connected to {}", self.target.endpoint),
        }
    }

    fn record_failure(&self, error: &RabbitError, now: Millis) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (refused, reason, source) = match error {
            RabbitError::Refused { reason, source, .. } => (true, reason.clone(), source),
            RabbitError::Unreachable { reason, source, .. } => (false, reason.clone(), source),
            other => (false, other.to_string(), &None),
        };
        let source = source
            .as_ref()
            .and_then(|s| s.downcast_ref::<lapin::Error>())
            .cloned();
        let first = state.last_error.is_none();
        state.last_error = Some(LastError {
            refused,
            reason,
            source,
        });
        state.down_since.get_or_insert(now);
        state.connected_since = None;
        first
    }

    /// One connection made now, without the watch that reconnects it: a one-shot look at
    /// RabbitMQ, closed by the caller ([`Session::close`]).
    pub(crate) async fn connect_once(&self) -> Result<Session, RabbitError> {
        self.open().await
    }

    async fn open(&self) -> Result<Session, RabbitError> {
        let endpoint = &self.target.endpoint;
        let connection = self.target.connect(CONNECT_TIMEOUT).await?;
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| connect_error(endpoint, e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| connect_error(endpoint, e))?;
        Ok(Session {
            generation: self.generation.fetch_add(1, Ordering::SeqCst) + 1,
            connection,
            publish,
            lost: CancellationToken::new(),
            declared: Mutex::new(HashSet::new()),
            topology: tokio::sync::Mutex::new(None),
        })
    }

    /// Connects, publishes the session, watches it, and reconnects with backoff when it is
    /// lost, until `stop` fires. `on_session` runs for each new session before it is
    /// published (declaring the known queues, starting consumers).
    ///
    /// On `stop`, the connection stays open until `drained` fires (the forwarder has its last
    /// confirms) or 3 seconds pass, then closes cleanly.
    pub(crate) async fn run<F, Fut>(
        self: Arc<Self>,
        stop: CancellationToken,
        drained: CancellationToken,
        now: impl Fn() -> Millis,
        on_session: F,
    ) where
        F: Fn(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut backoff = RetryPolicy::reconnect_backoff(BACKOFF_MIN, BACKOFF_MAX, BACKOFF_JITTER);
        let mut last_log: Option<std::time::Instant> = None;
        while !stop.is_cancelled() {
            let opening = self.open();
            tokio::pin!(opening);
            let opened = tokio::select! {
                opened = &mut opening => opened,
                () = stop.cancelled() => {
                    // A connection dropped half-open leaves lapin's I/O loop running into the
                    // runtime's end (a short-lived process then prints its panic): let the
                    // attempt finish, briefly, and close what it opened.
                    if let Ok(Ok(session)) = tokio::time::timeout(STOP_WAIT, &mut opening).await {
                        let _ = tokio::time::timeout(
                            STOP_WAIT,
                            session.connection.close(200, "fq engine stopped".into()),
                        )
                        .await;
                    }
                    break;
                }
            };
            let session = match opened {
                Ok(session) => Arc::new(session),
                Err(error) => {
                    let first = self.record_failure(&error, now());
                    if first || last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                        tracing::warn!(%error, "cannot connect to RabbitMQ; tasks wait in the outbox and fq keeps trying");
                        last_log = Some(std::time::Instant::now());
                    } else {
                        tracing::debug!(%error, "RabbitMQ connection attempt failed");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next_pause()) => {}
                        () = stop.cancelled() => break,
                    }
                    continue;
                }
            };
            // Connected: the next loss starts again from the first pause.
            backoff = RetryPolicy::reconnect_backoff(BACKOFF_MIN, BACKOFF_MAX, BACKOFF_JITTER);
            last_log = None;
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.connected_since = Some(now());
                state.down_since = None;
                state.last_error = None;
            }
            tracing::info!(endpoint = %self.target.endpoint, generation = session.generation, "connected to RabbitMQ");
            // Published first, so deliveries of consumers started by `on_session` are seen
            // as belonging to the live session.
            self.session.send_replace(Some(Arc::clone(&session)));
            on_session(Arc::clone(&session)).await;
            loop {
                tokio::select! {
                    () = session.lost.cancelled() => break,
                    () = stop.cancelled() => {
                        let _ = tokio::time::timeout(Duration::from_secs(3), drained.cancelled()).await;
                        session.lost.cancel();
                        break;
                    }
                    () = tokio::time::sleep(WATCH_EVERY) => {
                        if !session.connection.status().connected() {
                            session.lost.cancel();
                        }
                    }
                }
            }
            self.session.send_replace(None);
            if stop.is_cancelled() {
                // A clean close tells RabbitMQ to requeue unacknowledged deliveries at once.
                session.close("fq engine stopped").await;
                break;
            }
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.connected_since = None;
                state.down_since = Some(now());
            }
            tracing::warn!(endpoint = %self.target.endpoint, "lost the connection to RabbitMQ; reconnecting");
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                session.connection.close(200, "fq reconnecting".into()),
            )
            .await;
        }
    }
}
