//! The control server: serves an engine's [`Broker`] on its Unix socket (and on TCP when
//! configured) from a thread of its own with its own tokio runtime, so an engine opened outside
//! any runtime serves all the same. This file owns the server's life (start, stop); the socket
//! file's life is in `socket`, connections and their limits in `connection`, the hello and the
//! token check in `handshake`, and running requests against the broker in `dispatch`. It knows
//! nothing of the engine beyond the `Broker` trait.

mod connection;
mod dispatch;
mod handshake;
mod socket;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use super::ControlError;
use crate::broker::{Broker, EnqueueDefaults, RetentionPolicy};

/// What the server needs from its engine. Not `Debug`: it holds the token.
#[derive(Clone)]
pub(crate) struct ServerSettings {
    /// The Unix socket to create.
    pub(crate) socket: PathBuf,
    /// A TCP address to listen on as well.
    pub(crate) listen: Option<SocketAddr>,
    /// The token TCP clients must present.
    pub(crate) token: Option<String>,
    pub(crate) max_connections: usize,
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_payload_bytes: usize,
    /// The store file, reported in the hello.
    pub(crate) store: PathBuf,
    /// Defaults for tasks queued without them, reported in the hello.
    pub(crate) defaults: EnqueueDefaults,
    /// What `cleanup` applies when the request names no retention.
    pub(crate) retention: RetentionPolicy,
    pub(crate) lease: Duration,
    /// The engine's metrics, for the `metrics` op; `None` when turned off.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// What every connection of one server shares.
struct ServerCtx {
    /// What requests run against.
    broker: Arc<dyn Broker>,
    /// Limits, the token, and what the hello reports.
    settings: ServerSettings,
}

/// A running control server. Dropping it stops the server, waits for its thread, and removes
/// the socket file (if it is still the one this server created).
#[derive(Debug)]
pub(crate) struct ControlServer {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
    /// (device, inode) of the socket file this server created, so that dropping it never
    /// removes a socket another engine has put in its place since.
    socket_id: (u64, u64),
    tcp: Option<SocketAddr>,
}

impl ControlServer {
    /// Checks, before the store is opened, that no live engine serves `socket` and that a
    /// server could bind it: an error names the live engine's pid, a path that is too long, or
    /// a file that is not a socket. A stale socket (nobody answers) is left for `start` to
    /// replace.
    pub(crate) fn probe(socket: &Path) -> std::result::Result<(), ControlError> {
        socket::probe(socket)
    }

    /// Binds the listeners and starts serving `broker` on a thread of its own.
    ///
    /// # Errors
    /// [`ControlError`] for a socket or TCP address that cannot be bound, or a thread or
    /// runtime that cannot start.
    pub(crate) fn start(
        broker: Arc<dyn Broker>,
        mut settings: ServerSettings,
    ) -> std::result::Result<Self, ControlError> {
        // Clients may run elsewhere: the hello names the store by an absolute path.
        if let Ok(absolute) = std::path::absolute(&settings.store) {
            settings.store = absolute;
        }
        if let Some(listen) = settings.listen
            && crate::config::exposed_without_token(listen, settings.token.as_deref())
        {
            return Err(ControlError::InsecureListen { addr: listen });
        }
        let (unix, socket_id) = socket::bind_unix(&settings.socket)?;
        let socket = settings.socket.clone();
        let cleanup = |error: ControlError| {
            socket::remove_if_ours(&socket, socket_id);
            error
        };
        let tcp = match settings.listen {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .and_then(|listener| {
                        listener.set_nonblocking(true)?;
                        Ok(listener)
                    })
                    .map_err(|e| cleanup(ControlError::Bind { addr, source: e }))?,
            ),
            None => None,
        };
        let tcp_addr = match &tcp {
            Some(listener) => Some(listener.local_addr().map_err(|e| {
                cleanup(ControlError::io(
                    "read the TCP listener's address",
                    &socket,
                    e,
                ))
            })?),
            None => None,
        };
        let stop = CancellationToken::new();
        let ctx = Arc::new(ServerCtx { broker, settings });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fq-control".into())
            .spawn(move || {
                // The runtime is built, used and dropped on this thread: dropping a runtime
                // inside another one's context panics, and `Engine::open` may be called there.
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fq-control")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        drop(ready_tx.send(Err(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listeners = UnixListener::from_std(unix).and_then(|unix| {
                        let tcp = tcp.map(TcpListener::from_std).transpose()?;
                        Ok((unix, tcp))
                    });
                    match listeners {
                        Ok((unix, tcp)) => {
                            drop(ready_tx.send(Ok(())));
                            connection::serve(ctx, unix, tcp, thread_stop).await;
                        }
                        Err(e) => drop(ready_tx.send(Err(e))),
                    }
                });
            })
            .map_err(|e| cleanup(ControlError::io("start the control thread", &socket, e)))?;
        let started = ready_rx.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the control thread stopped before serving",
            ))
        });
        if let Err(e) = started {
            drop(thread.join());
            return Err(cleanup(ControlError::io(
                "start the control server",
                &socket,
                e,
            )));
        }
        tracing::info!(socket = %socket.display(), tcp = ?tcp_addr, "control server listening");
        Ok(Self {
            stop,
            thread: Some(thread),
            socket,
            socket_id,
            tcp: tcp_addr,
        })
    }

    /// The Unix socket's path.
    pub(crate) fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The TCP address listened on (with the port chosen when `control.listen` asked for 0).
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the control server thread panicked");
        }
        socket::remove_if_ours(&self.socket, self.socket_id);
        tracing::info!(socket = %self.socket.display(), "control server stopped");
    }
}
