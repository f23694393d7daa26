//! The control server: serves an engine's [`Broker`] on its Unix socket (and on TCP when
//! configured) from a thread of its own with its own tokio runtime, so an engine opened outside
//! any runtime serves all the same. It owns the socket file's life (a private 0700 directory
//! with a link to it, race-free creation, stale replacement, removal), handshakes (the
//! constant-time token check), connection limits, and answering pipelined requests;
//! it knows nothing of the engine beyond the `Broker` trait.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::ControlError;
use super::protocol::{
    AbortArgs, AttemptArgs, ClaimArgs, CleanupArgs, CleanupOk, ClientHello, CountOk, Empty,
    EnqueueArgs, EnqueueOk, ErrorOut, FrameError, HelloFrame, IdArgs, ListArgs, MAX_CLAIM,
    MAX_IN_FLIGHT, MAX_LIST_BYTES, MAX_WAIT_MS, NoArgs, OkOut, Op, PROTOCOL_VERSION, ParsedRequest,
    PurgeArgs, RetryFailedArgs, ServerHello, SettleAndClaimArgs, SettleAndClaimOk, SettleArgs,
    SettleOk, Settled, TaskOk, TasksOk, WireDefaults, WireError, WireRetention, WireTask,
    decode_args, encode_frame, error_to_wire, parse_request, read_frame,
};
use crate::broker::{
    Broker, EnqueueDefaults, NewTask, Outcome, QueueTask, RetentionPolicy, SettleReport, Settlement,
};
use crate::clock::millis_to_datetime;
use crate::config::{MAX_TASK_DELAY, check_name};
use crate::task::TaskId;
use crate::{Error, Result};

/// Longest a Unix socket path may be: `sun_path` holds 108 bytes with the terminating NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;
/// How long a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing a refusal to an unwanted connection may take.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopping server waits for its connections to answer what they hold.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// After an error frame, how long the server reads (and drops) what the client still sends,
/// so that closing with unread input does not reset the connection before the client has read
/// the error (TCP discards queued data on a reset).
const LINGER: Duration = Duration::from_millis(500);
/// Abort answers of one connection waiting to be written, at most.
const ABORT_SLOTS: usize = 64;
/// How long probing an existing socket may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// What every connection of one server shares.
struct ServerCtx {
    broker: Arc<dyn Broker>,
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
        let layout = Layout::of(socket)?;
        let meta = match std::fs::symlink_metadata(socket) {
            Ok(meta) => meta,
            // No link; but an engine whose link was deleted by hand may still serve in its
            // directory, and must be named, not have its socket taken away.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match std::fs::symlink_metadata(&layout.real) {
                    Ok(meta) if meta.file_type().is_socket() => probe_live(&layout.real),
                    _ => Ok(()),
                };
            }
            Err(e) => return Err(ControlError::io("inspect the control socket", socket, e)),
        };
        // The path is fq's link into the private directory (or, left by an older fq, the
        // socket itself); anything else is somebody's file.
        let meta = if meta.file_type().is_symlink() {
            match std::fs::metadata(socket) {
                Ok(meta) => meta,
                // A dangling link: the private directory went away; `start` replaces it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(ControlError::io("inspect the control socket", socket, e)),
            }
        } else {
            meta
        };
        if !meta.file_type().is_socket() {
            return Err(ControlError::NotASocket {
                path: socket.to_path_buf(),
            });
        }
        probe_live(socket)
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
            && !listen.ip().is_loopback()
            && settings.token.is_none()
        {
            return Err(ControlError::InsecureListen { addr: listen });
        }
        let (unix, socket_id) = bind_unix(&settings.socket)?;
        let socket = settings.socket.clone();
        let cleanup = |error: ControlError| {
            remove_if_ours(&socket, socket_id);
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
                            serve(ctx, unix, tcp, thread_stop).await;
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
        remove_if_ours(&self.socket, self.socket_id);
        tracing::info!(socket = %self.socket.display(), "control server stopped");
    }
}

/// Where the pieces of one control socket live. The socket is bound inside a directory of
/// its own, `<socket>.d/` (mode 0700), and `<socket>` is a symbolic link to it: a client
/// connecting through the link must be able to enter the directory, so only its owner (and
/// root) can, whatever the mode of the directory `<socket>` sits in (the store's, usually
/// shared) and even on systems that ignore a socket's own mode. The link keeps the
/// documented path (`var/fq.redb.sock`) working.
#[derive(Debug)]
struct Layout {
    /// `<socket>.d`, the private directory.
    dir: PathBuf,
    /// `<socket>.d/s`, the socket itself.
    real: PathBuf,
    /// What the link at `<socket>` points to: `<name>.d/s`, relative so that the whole can be
    /// moved with its directory.
    target: PathBuf,
}

/// The socket's name inside its private directory: short, as the whole path must fit in
/// a Unix socket address.
const SOCKET_NAME: &str = "s";

impl Layout {
    /// Refuses paths the kernel cannot bind, naming the setting to change: the socket bound is
    /// `<socket>.d/s`, 4 bytes longer than `<socket>`.
    fn of(socket: &Path) -> std::result::Result<Self, ControlError> {
        let Some(name) = socket.file_name() else {
            return Err(ControlError::io(
                "use as the control socket",
                socket,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the path names no file (set control.socket to a file path)",
                ),
            ));
        };
        let mut dir_name = name.to_owned();
        dir_name.push(".d");
        let dir = socket.with_file_name(&dir_name);
        let real = dir.join(SOCKET_NAME);
        let len = real.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ControlError::PathTooLong {
                path: socket.to_path_buf(),
                len,
            });
        }
        Ok(Self {
            dir,
            real,
            target: Path::new(&dir_name).join(SOCKET_NAME),
        })
    }
}

/// Whether anything answers on the socket file at `socket`: `Ok` when nobody does (a stale
/// socket, replaced by `start`), else an error naming the live engine or what answered.
fn probe_live(socket: &Path) -> std::result::Result<(), ControlError> {
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "replacing a stale control socket (no engine answers on it)");
            return Ok(());
        }
        Err(e) => return Err(ControlError::io("probe the control socket", socket, e)),
    };
    match probe_hello(stream) {
        Ok(hello) => Err(ControlError::AlreadyServed {
            socket: socket.to_path_buf(),
            pid: hello.pid,
            store: hello.store,
        }),
        Err(reason) => Err(ControlError::SocketInUse {
            socket: socket.to_path_buf(),
            reason,
        }),
    }
}

/// Says hello to whatever listens on an existing socket; its hello, or why it is not an fq
/// engine. Blocking, with timeouts: it runs before the engine has a runtime.
fn probe_hello(
    mut stream: std::os::unix::net::UnixStream,
) -> std::result::Result<ServerHello, String> {
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let hello = HelloFrame {
        hello: ClientHello {
            protocol: PROTOCOL_VERSION,
            client: format!("fq {} socket probe", env!("CARGO_PKG_VERSION")),
            token: None,
        },
    };
    let frame = encode_frame(&hello).map_err(|e| e.to_string())?;
    stream
        .write_all(&frame)
        .map_err(|e| format!("cannot write to it: {e}"))?;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("it accepts connections but does not answer a hello: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > 1 << 20 {
        return Err(format!(
            "it answered a frame of {len} bytes, not an fq hello"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("its answer was cut short: {e}"))?;
    match serde_json::from_slice::<HelloFrame<ServerHello>>(&body) {
        Ok(frame) => Ok(frame.hello),
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            Err(format!(
                "it answered {}, not an fq hello",
                text.chars().take(200).collect::<String>()
            ))
        }
    }
}

/// Creates the Unix socket for `path` (see [`Layout`]): a fresh directory `<path>.d` of mode
/// 0700, the socket inside it chmod'ed to 0600 (binding creates it with the umask's mode, but
/// nobody else can enter the directory meanwhile), then a link at `path` put in place by an
/// atomic rename, which replaces a stale socket or link. Changing the umask instead would race
/// with files other threads create meanwhile. The directory is made anew each time, so it is
/// this process's, with this mode, whoever left one there before.
fn bind_unix(
    path: &Path,
) -> std::result::Result<(std::os::unix::net::UnixListener, (u64, u64)), ControlError> {
    let layout = Layout::of(path)?;
    clear_stale_dir(path, &layout.dir)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&layout.dir)
        .map_err(|e| ControlError::io("create the control socket's directory", &layout.dir, e))?;
    let bound = (|| {
        // The umask may have taken the owner's bits too; it cannot have added any.
        std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |e| ControlError::io("set the control socket directory's mode", &layout.dir, e),
        )?;
        let listener = std::os::unix::net::UnixListener::bind(&layout.real)
            .map_err(|e| ControlError::io("bind the control socket", &layout.real, e))?;
        std::fs::set_permissions(&layout.real, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ControlError::io("set the control socket's mode", &layout.real, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ControlError::io("configure the control socket", &layout.real, e))?;
        let meta = std::fs::symlink_metadata(&layout.real)
            .map_err(|e| ControlError::io("inspect the control socket", &layout.real, e))?;
        // A fixed name, so that one left by an engine killed right here is reused, not
        // accumulated; it is only ever a link of ours.
        let mut link_name = std::ffi::OsString::from(".");
        link_name.push(path.file_name().unwrap_or_default());
        link_name.push(".link");
        let temp_link = path.with_file_name(link_name);
        if std::fs::symlink_metadata(&temp_link).is_ok_and(|meta| meta.file_type().is_symlink()) {
            drop(std::fs::remove_file(&temp_link));
        }
        std::os::unix::fs::symlink(&layout.target, &temp_link)
            .map_err(|e| ControlError::io("link the control socket", &temp_link, e))?;
        if let Err(e) = std::fs::rename(&temp_link, path) {
            drop(std::fs::remove_file(&temp_link));
            return Err(ControlError::io(
                "move the control socket into place",
                path,
                e,
            ));
        }
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    if bound.is_err() {
        drop(std::fs::remove_file(&layout.real));
        drop(std::fs::remove_dir(&layout.dir));
    }
    bound
}

/// Removes what a previous engine left at `<path>.d` (it was killed, or a stale socket was
/// found): the directory and its socket, nothing else. A directory holding anything more, or
/// a file or link in its place, is somebody else's and is refused, never deleted.
fn clear_stale_dir(path: &Path, dir: &Path) -> std::result::Result<(), ControlError> {
    let foreign = |reason: String| ControlError::ForeignDirectory {
        path: dir.to_path_buf(),
        socket: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ControlError::io(
                "inspect the control socket's directory",
                dir,
                e,
            ));
        }
    };
    if !meta.file_type().is_dir() {
        return Err(foreign("it is not a directory".to_owned()));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ControlError::io("read the control socket's directory", dir, e))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ControlError::io("read the control socket's directory", dir, e))?;
        let is_socket = entry.file_type().is_ok_and(|kind| kind.is_socket());
        if entry.file_name() != SOCKET_NAME || !is_socket {
            return Err(foreign(format!(
                "it holds {:?}, which fq did not put there",
                entry.file_name()
            )));
        }
        // Stale only if nobody answers: an engine whose link was deleted still serves here.
        probe_live(&entry.path())?;
        std::fs::remove_file(entry.path())
            .map_err(|e| ControlError::io("remove a stale control socket", &entry.path(), e))?;
    }
    std::fs::remove_dir(dir)
        .map_err(|e| ControlError::io("remove the stale control socket directory", dir, e))
}

/// Removes the socket, its directory and the link to it, if the socket is still the one with
/// `id`: a later engine that has put its own in place keeps it.
fn remove_if_ours(path: &Path, id: (u64, u64)) {
    let Ok(layout) = Layout::of(path) else {
        return;
    };
    let ours =
        std::fs::symlink_metadata(&layout.real).is_ok_and(|meta| (meta.dev(), meta.ino()) == id);
    if !ours {
        return;
    }
    if std::fs::read_link(path).is_ok_and(|target| target == layout.target)
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the control socket's link");
    }
    if let Err(e) = std::fs::remove_file(&layout.real) {
        tracing::warn!(socket = %layout.real.display(), error = %e, "cannot remove the control socket");
    }
    if let Err(e) = std::fs::remove_dir(&layout.dir) {
        tracing::warn!(dir = %layout.dir.display(), error = %e, "cannot remove the control socket's directory");
    }
}

/// Where a connection came from: a Unix peer is authenticated by the socket's mode, a TCP one
/// by the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts connections until `stop`, then gives open connections a moment to answer.
async fn serve(
    ctx: Arc<ServerCtx>,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    stop: CancellationToken,
) {
    let max = ctx.settings.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = unix.accept() => accepted.map(|(stream, _)| {
                let (read, write) = stream.into_split();
                (Transport::Unix, "unix socket".to_owned(), Box::new(read) as BoxRead, Box::new(write) as BoxWrite)
            }),
            accepted = accept_tcp(tcp.as_ref()) => accepted.map(|(stream, peer)| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let (read, write) = stream.into_split();
                (Transport::Tcp, peer.to_string(), Box::new(read) as BoxRead, Box::new(write) as BoxWrite)
            }),
        };
        let (transport, peer, read, write) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: wait instead of spinning.
                tracing::warn!(error = %e, "accepting a control connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(connection(
                    Arc::clone(&ctx),
                    read,
                    write,
                    transport,
                    peer,
                    stop.child_token(),
                    slot,
                ));
            }
            Err(_) => {
                tracing::warn!(%peer, max, "refusing a control connection: too many connections (control.max_connections)");
                let error = WireError::new(
                    "too_many_connections",
                    format!(
                        "the engine already serves {max} connections (control.max_connections); try again later"
                    ),
                );
                tokio::spawn(refuse(read, write, error));
            }
        }
    }
    let permits = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(permits))
        .await
        .is_err()
    {
        tracing::warn!("control connections still busy at shutdown; closing them");
    }
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Writes an error frame about the connection (no request id), then closes it.
async fn refuse(read: BoxRead, mut write: BoxWrite, error: WireError) {
    let frame = encode_frame(&ErrorOut {
        id: None,
        error: &error,
    });
    if let Ok(frame) = frame {
        let written = tokio::time::timeout(REFUSE_TIMEOUT, async {
            write.write_all(&frame).await?;
            write.flush().await?;
            write.shutdown().await
        })
        .await;
        if written.is_ok() {
            linger(read).await;
        }
    }
}

/// Reads and drops what the peer still sends, for at most [`LINGER`], so that the error frame
/// just written reaches it before the connection is closed.
async fn linger<R: AsyncRead + Unpin>(mut read: R) {
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0usize;
        while let Ok(n) = read.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

/// A response waiting for the connection's writer.
struct Outgoing {
    frame: Vec<u8>,
    /// Tasks the frame hands over (claims): released if it cannot be delivered.
    claimed: Vec<(TaskId, u32)>,
    /// The request's in-flight slot, freed once the answer is written.
    _slot: Option<OwnedSemaphorePermit>,
}

/// Serves one connection: handshake, then requests until the client leaves, sends garbage, or
/// the server stops. Each request runs as its own task (a long-poll claim holds nobody up) and
/// at most [`MAX_IN_FLIGHT`] run at once; the answers go through one writer task.
async fn connection(
    ctx: Arc<ServerCtx>,
    read: BoxRead,
    write: BoxWrite,
    transport: Transport,
    peer: String,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let hello = match handshake(&ctx, &mut reader, transport).await {
        Ok(hello) => hello,
        Err(None) => return,
        Err(Some(error)) => {
            tracing::warn!(%peer, kind = %error.kind, error = %error.message, "refusing a control connection");
            refuse(Box::new(reader), Box::new(writer), error).await;
            return;
        }
    };
    let answer = server_hello(&ctx);
    let sent = match encode_frame(&HelloFrame { hello: answer }) {
        Ok(frame) => async {
            writer.write_all(&frame).await?;
            writer.flush().await
        }
        .await
        .is_ok(),
        Err(_) => false,
    };
    if !sent {
        return;
    }
    tracing::debug!(%peer, client = %hello.client, "control connection opened");

    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_task = tokio::spawn(write_loop(writer, out_rx, Arc::clone(&ctx), stop.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Aborts are answered without a request slot, so they get slots of their own: a client
    // that sends aborts but never reads cannot grow the answer queue without bound.
    let abort_slots = Arc::new(Semaphore::new(ABORT_SLOTS));
    let claims: Arc<Mutex<HashMap<u64, CancellationToken>>> = Arc::default();
    let mut errored = false;
    let reason = loop {
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => break "closing".to_owned(),
            frame = read_frame(&mut reader, ctx.settings.max_frame_bytes) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break "closed by the client".to_owned(),
            Err(FrameError::Io(e)) => break format!("read failed: {e}"),
            Err(e) => {
                let (kind, message) = match e {
                    FrameError::TooLarge { .. } => {
                        ("frame_too_large", format!("{e} (limits.max_frame_bytes)"))
                    }
                    _ => ("bad_frame", e.to_string()),
                };
                tracing::warn!(%peer, error = %e, "bad control frame; closing the connection");
                send_error(&out_tx, None, &WireError::new(kind, message));
                errored = true;
                break e.to_string();
            }
        };
        let request = match parse_request(&frame) {
            Ok(request) => request,
            Err(bad) => {
                tracing::warn!(%peer, kind = %bad.error.kind, error = %bad.error.message, "bad control request; closing the connection");
                let reason = bad.error.message.clone();
                send_error(&out_tx, bad.id, &bad.error);
                errored = true;
                break reason;
            }
        };
        if request.op == Op::Abort {
            // Answered here, with a slot of its own: it must get through even when long-poll
            // claims hold every request slot.
            let slot = tokio::select! {
                slot = Arc::clone(&abort_slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break "closing".to_owned(),
                },
                () = stop.cancelled() => break "closing".to_owned(),
            };
            let args = request.args.clone().map_or(&b""[..], |range| &frame[range]);
            let answer = decode_args::<AbortArgs>(Op::Abort, args).map(|abort| {
                if let Some(token) = claims
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&abort.request)
                {
                    token.cancel();
                }
            });
            let frame = match answer {
                Ok(()) => ok_frame(request.id, &Empty {}),
                Err(error) => Err(error),
            };
            let frame = frame.unwrap_or_else(|error| error_frame(Some(request.id), &error));
            if out_tx
                .send(Outgoing {
                    frame,
                    claimed: Vec::new(),
                    _slot: Some(slot),
                })
                .is_err()
            {
                break "writer stopped".to_owned();
            }
            continue;
        }
        let slot = tokio::select! {
            slot = Arc::clone(&in_flight).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break "closing".to_owned(),
            },
            () = stop.cancelled() => break "closing".to_owned(),
        };
        let claim_token = (request.op == Op::Claim).then(|| {
            let token = stop.child_token();
            claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(request.id, token.clone());
            token
        });
        let (ctx, out_tx, claims) = (Arc::clone(&ctx), out_tx.clone(), Arc::clone(&claims));
        tokio::spawn(async move {
            let (frame, claimed) = handle(&ctx, &request, &frame, claim_token.as_ref()).await;
            if claim_token.is_some() {
                claims
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request.id);
            }
            let outgoing = Outgoing {
                frame,
                claimed,
                _slot: Some(slot),
            };
            if let Err(mpsc::error::SendError(lost)) = out_tx.send(outgoing) {
                release(&ctx.broker, lost.claimed);
            }
        });
    };
    // Ends this connection's long-poll claims at once: they answer with what they have.
    stop.cancel();
    drop(out_tx);
    let writer = writer_task.await.ok().flatten();
    if let Some(mut writer) = writer {
        drop(writer.shutdown().await);
    }
    if errored {
        linger(reader).await;
    }
    tracing::debug!(%peer, %reason, "control connection closed");
}

/// Reads and checks the client's hello. `Err(None)`: the client left without one.
async fn handshake<R: AsyncRead + Unpin>(
    ctx: &ServerCtx,
    reader: &mut R,
    transport: Transport,
) -> std::result::Result<ClientHello, Option<WireError>> {
    let frame = match tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame(reader, ctx.settings.max_frame_bytes),
    )
    .await
    {
        Err(_) => {
            return Err(Some(WireError::new(
                "handshake_timeout",
                format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
            )));
        }
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None) | Err(FrameError::Io(_))) => return Err(None),
        Ok(Err(e @ FrameError::TooLarge { .. })) => {
            return Err(Some(WireError::new(
                "frame_too_large",
                format!("{e} (limits.max_frame_bytes)"),
            )));
        }
        Ok(Err(e)) => return Err(Some(WireError::new("bad_frame", e.to_string()))),
    };
    let hello = match serde_json::from_slice::<HelloFrame<ClientHello>>(&frame) {
        Ok(frame) => frame.hello,
        Err(e) => {
            return Err(Some(WireError::new(
                "hello_required",
                format!(
                    "the first frame must be a hello such as {{\"hello\": {{\"protocol\": {PROTOCOL_VERSION}, \"client\": \"my-app\"}}}}: {e}"
                ),
            )));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Some(WireError::new(
            "unsupported_protocol",
            format!(
                "this engine speaks control protocol {PROTOCOL_VERSION}; the client asked for protocol {}",
                hello.protocol
            ),
        )));
    }
    if transport == Transport::Tcp
        && let Some(token) = &ctx.settings.token
        && !hello
            .token
            .as_deref()
            .is_some_and(|given| same_token(token, given))
    {
        let problem = if hello.token.is_some() {
            "wrong control token"
        } else {
            "a control token is required over TCP"
        };
        return Err(Some(WireError::new(
            "unauthorized",
            format!("{problem} (the server's control.token; clients pass it as FQ_TOKEN)"),
        )));
    }
    Ok(hello)
}

/// Compares in time that depends only on `expected`'s length (the server's own token), so a
/// client can find neither the token byte by byte nor its length by timing refusals. `subtle`
/// keeps the optimizer from turning the loop into an early exit; its slice comparison is not
/// used because it returns at once on a length mismatch.
fn same_token(expected: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (expected, given) = (expected.as_bytes(), given.as_bytes());
    let mut equal = expected.len().ct_eq(&given.len());
    for (index, byte) in expected.iter().enumerate() {
        // Past the end of `given` the lengths already differ; 0 only keeps the work the same.
        equal &= byte.ct_eq(&given.get(index).copied().unwrap_or(0));
    }
    bool::from(equal)
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn server_hello(ctx: &ServerCtx) -> ServerHello {
    let settings = &ctx.settings;
    ServerHello {
        protocol: PROTOCOL_VERSION,
        server: format!("fq {}", env!("CARGO_PKG_VERSION")),
        pid: std::process::id(),
        store: settings.store.display().to_string(),
        now_ms: ctx.broker.now_ms(),
        max_frame_bytes: settings.max_frame_bytes,
        max_payload_bytes: settings.max_payload_bytes,
        max_in_flight: MAX_IN_FLIGHT,
        lease_ms: duration_ms(settings.lease),
        defaults: WireDefaults {
            queue: settings.defaults.queue.clone(),
            priority: settings.defaults.priority,
            max_retries: settings.defaults.max_retries,
            timeout_ms: settings.defaults.timeout.map(duration_ms),
        },
        retention: WireRetention {
            completed_ms: duration_ms(settings.retention.completed),
            failed_ms: duration_ms(settings.retention.failed),
        },
    }
}

/// Writes answers in arrival order, flushing when no more are waiting (one write system call
/// serves many pipelined answers). Returns the writer, or `None` when the socket failed; then
/// claims that could not be delivered are released.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: BufWriter<W>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    ctx: Arc<ServerCtx>,
    connection: CancellationToken,
) -> Option<BufWriter<W>> {
    let mut batch = Vec::with_capacity(64);
    // Claimed tasks in frames written to the buffer but not yet flushed to the socket.
    let mut unflushed: Vec<(TaskId, u32)> = Vec::new();
    let mut failed = false;
    while outgoing.recv_many(&mut batch, 64).await > 0 {
        for message in batch.drain(..) {
            if failed {
                release(&ctx.broker, message.claimed);
                continue;
            }
            if writer.write_all(&message.frame).await.is_err() {
                failed = true;
                connection.cancel();
                release(&ctx.broker, message.claimed);
                release(&ctx.broker, std::mem::take(&mut unflushed));
                continue;
            }
            unflushed.extend(message.claimed);
        }
        if !failed && outgoing.is_empty() {
            if writer.flush().await.is_err() {
                failed = true;
                connection.cancel();
                release(&ctx.broker, std::mem::take(&mut unflushed));
            } else {
                unflushed.clear();
            }
        }
    }
    (!failed).then_some(writer)
}

/// Gives back tasks claimed for a connection that is gone, so they run again at once instead
/// of after their lease.
fn release(broker: &Arc<dyn Broker>, claimed: Vec<(TaskId, u32)>) {
    if claimed.is_empty() {
        return;
    }
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        for (id, attempt) in claimed {
            let settlement = Settlement {
                id,
                attempt,
                outcome: Outcome::Released,
            };
            match broker.settle(settlement).await {
                Ok(_) => {
                    tracing::debug!(task.id = %id, "released a claim its client did not receive")
                }
                Err(e) => {
                    tracing::debug!(task.id = %id, error = %e, "could not release an undelivered claim; its lease will expire")
                }
            }
        }
    });
}

fn send_error(out: &mpsc::UnboundedSender<Outgoing>, id: Option<u64>, error: &WireError) {
    let frame = encode_frame(&ErrorOut { id, error }).unwrap_or_else(|_| fallback_error_frame());
    drop(out.send(Outgoing {
        frame,
        claimed: Vec::new(),
        _slot: None,
    }));
}

fn ok_frame<T: Serialize>(id: u64, value: &T) -> Result<Vec<u8>> {
    encode_frame(&OkOut { id, ok: value })
}

fn error_frame(id: Option<u64>, error: &Error) -> Vec<u8> {
    encode_frame(&ErrorOut {
        id,
        error: &error_to_wire(error),
    })
    .unwrap_or_else(|_| fallback_error_frame())
}

/// An error frame that cannot fail to encode.
fn fallback_error_frame() -> Vec<u8> {
    let body = br#"{"id":null,"error":{"kind":"internal","message":"cannot encode the answer"}}"#;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// Runs one request; its answer frame and the tasks it hands over.
async fn handle(
    ctx: &ServerCtx,
    request: &ParsedRequest,
    frame: &[u8],
    claim_cancel: Option<&CancellationToken>,
) -> (Vec<u8>, Vec<(TaskId, u32)>) {
    let args = request.args.clone().map_or(&b""[..], |range| &frame[range]);
    let mut claimed = Vec::new();
    let answer = dispatch(ctx, request, args, claim_cancel, &mut claimed).await;
    match answer {
        Ok(frame) => (frame, claimed),
        Err(error) => {
            tracing::trace!(op = request.op.name(), %error, "control request failed");
            // Claimed, then failed to answer (encoding): nobody will run those tasks.
            release(&ctx.broker, claimed);
            (error_frame(Some(request.id), &error), Vec::new())
        }
    }
}

fn check_queues(queues: &[std::borrow::Cow<'_, str>]) -> Result<Vec<Arc<str>>> {
    if queues.is_empty() {
        return Err(Error::invalid("queues", "name at least one queue"));
    }
    queues
        .iter()
        .map(|queue| {
            check_name(queue)
                .map(|()| Arc::from(queue.as_ref()))
                .map_err(|problem| Error::invalid("queues", format!("queue {queue:?} {problem}")))
        })
        .collect()
}

fn settlement(args: SettleArgs) -> Result<Settlement> {
    let outcome = match args.outcome.as_str() {
        "completed" => {
            if args.error.is_some() || args.retry_after_ms.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"completed\" takes a result, not error or retry_after_ms",
                ));
            }
            Outcome::Completed {
                result: args.result.unwrap_or(serde_json::Value::Null),
            }
        }
        "failed" => {
            let Some(failure) = args.error else {
                return Err(Error::invalid(
                    "error",
                    "outcome \"failed\" needs an error {\"message\": \"...\", \"kind\": \"error\"}",
                ));
            };
            if args.result.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"failed\" takes an error, not a result",
                ));
            }
            let retry_after = args.retry_after_ms.map(Duration::from_millis);
            if retry_after.is_some_and(|after| after > MAX_TASK_DELAY) {
                return Err(Error::invalid("retry_after_ms", "must be at most 365 days"));
            }
            Outcome::Failed {
                failure,
                retry_after,
            }
        }
        "released" => {
            if args.result.is_some() || args.error.is_some() || args.retry_after_ms.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"released\" takes no result, error or retry_after_ms",
                ));
            }
            Outcome::Released
        }
        other => {
            return Err(Error::invalid(
                "outcome",
                format!("expected \"completed\", \"failed\" or \"released\", got {other:?}"),
            ));
        }
    };
    Ok(Settlement {
        id: args.id,
        attempt: args.attempt,
        outcome,
    })
}

/// The answer to a settlement; with the record when asked (read if the engine did not keep
/// one for its own listeners).
async fn settle_ok(ctx: &ServerCtx, id: TaskId, report: SettleReport, record: bool) -> SettleOk {
    let mut ok = SettleOk {
        status: report.status,
        retry_at_ms: report.retry_at,
        record: None,
    };
    if record {
        ok.record = match report.record {
            Some(record) => Some(Arc::unwrap_or_clone(record)),
            None => ctx.broker.task(id).await.ok().flatten(),
        };
    }
    ok
}

fn build_task(ctx: &ServerCtx, wire: WireTask) -> Result<NewTask> {
    let payload = wire.payload.unwrap_or_else(|| json!({}));
    let mut draft = QueueTask::named(
        Arc::clone(&ctx.broker),
        &ctx.settings.defaults,
        &wire.name,
        &payload,
    );
    if let Some(queue) = wire.queue {
        draft = draft.queue(queue);
    }
    if let Some(priority) = wire.priority {
        draft = draft.priority(priority);
    }
    if let Some(max_retries) = wire.max_retries {
        draft = draft.max_retries(max_retries);
    }
    let bounded = |field: &'static str, ms: u64| {
        let duration = Duration::from_millis(ms);
        if duration > MAX_TASK_DELAY {
            return Err(Error::invalid(field, "must be at most 365 days"));
        }
        Ok(duration)
    };
    if let Some(ms) = wire.timeout_ms {
        draft = draft.timeout(bounded("timeout_ms", ms)?);
    }
    if let Some(ms) = wire.retry_delay_ms {
        draft = draft.retry_delay(bounded("retry_delay_ms", ms)?);
    }
    if let Some(at) = wire.run_at_ms {
        draft = draft.schedule_at(millis_to_datetime(at));
    } else if let Some(ms) = wire.delay_ms {
        draft = draft.delay(Duration::from_millis(ms));
    }
    let mut task = draft.build()?;
    if let Some(id) = wire.id {
        task.id = id;
    }
    Ok(task)
}

/// A `list` page, serialized from a borrowed slice so it can be cut short and re-encoded.
#[derive(Serialize)]
struct Page<'a> {
    tasks: &'a [crate::task::TaskRecord],
}

/// Says which task of a batch an error is about.
fn in_batch(error: Error, index: usize, len: usize) -> Error {
    match error {
        Error::InvalidInput { field, message } if len > 1 => Error::InvalidInput {
            field,
            message: format!("{message} (task {index} of the batch; nothing was queued)"),
        },
        other => other,
    }
}

async fn dispatch(
    ctx: &ServerCtx,
    request: &ParsedRequest,
    args: &[u8],
    claim_cancel: Option<&CancellationToken>,
    claimed: &mut Vec<(TaskId, u32)>,
) -> Result<Vec<u8>> {
    let (id, op) = (request.id, request.op);
    let broker = &ctx.broker;
    match op {
        Op::Enqueue => {
            let args: EnqueueArgs<WireTask> = decode_args(op, args)?;
            let len = args.tasks.len();
            let tasks = args
                .tasks
                .into_iter()
                .enumerate()
                .map(|(index, wire)| build_task(ctx, wire).map_err(|e| in_batch(e, index, len)))
                .collect::<Result<Vec<_>>>()?;
            let ids = broker.enqueue(tasks).await?;
            ok_frame(id, &EnqueueOk { ids })
        }
        Op::Claim => {
            let args: ClaimArgs<'_> = decode_args(op, args)?;
            let queues = check_queues(&args.queues)?;
            let max = args.max.clamp(1, MAX_CLAIM);
            let wait = Duration::from_millis(args.wait_ms.min(MAX_WAIT_MS));
            let never = CancellationToken::new();
            let cancel = claim_cancel.unwrap_or(&never);
            let tasks = broker.claim(&queues, max, wait, cancel).await?;
            claimed.extend(tasks.iter().map(|task| (task.id, task.attempts)));
            ok_frame(id, &TasksOk { tasks })
        }
        Op::Heartbeat => {
            let args: AttemptArgs = decode_args(op, args)?;
            broker.heartbeat(args.id, args.attempt).await?;
            ok_frame(id, &Empty {})
        }
        Op::Settle => {
            let args: SettleArgs = decode_args(op, args)?;
            let (task, record) = (args.id, args.record);
            let report = broker.settle(settlement(args)?).await?;
            ok_frame(id, &settle_ok(ctx, task, report, record).await)
        }
        Op::SettleAndClaim => {
            let args: SettleAndClaimArgs<'_> = decode_args(op, args)?;
            let max = args.max.min(MAX_CLAIM);
            let queues = if max == 0 && args.queues.is_empty() {
                Vec::new()
            } else {
                check_queues(&args.queues)?
            };
            let (task, record) = (args.settle.id, args.settle.record);
            let chained = broker
                .settle_and_claim(settlement(args.settle)?, &queues, max)
                .await?;
            claimed.extend(chained.claimed.iter().map(|t| (t.id, t.attempts)));
            let settled = match chained.settled {
                Ok(report) => Settled::Ok(settle_ok(ctx, task, report, record).await),
                Err(error) => Settled::Error(error_to_wire(&error)),
            };
            ok_frame(
                id,
                &SettleAndClaimOk {
                    settled,
                    tasks: chained.claimed,
                },
            )
        }
        Op::Task => {
            let args: IdArgs = decode_args(op, args)?;
            let task = broker.task(args.id).await?;
            ok_frame(id, &TaskOk { task })
        }
        Op::Cancel => {
            let args: IdArgs = decode_args(op, args)?;
            let task = broker.cancel(args.id).await?;
            ok_frame(id, &TaskOk { task: Some(task) })
        }
        Op::Retry => {
            let args: IdArgs = decode_args(op, args)?;
            let task = broker.retry(args.id).await?;
            ok_frame(id, &TaskOk { task: Some(task) })
        }
        Op::List => {
            let mut args: ListArgs = decode_args(op, args)?;
            if let Some(queue) = &args.queue {
                crate::config::check_queue(queue)?;
            }
            args.limit = args.limit.min(MAX_CLAIM);
            let mut tasks = broker.list(args.into()).await?;
            let mut frame = ok_frame(id, &Page { tasks: &tasks })?;
            // A page of large records is cut short rather than sent as one huge frame; the
            // client asks for the next page with `after` as usual.
            while frame.len() > MAX_LIST_BYTES && tasks.len() > 1 {
                tasks.truncate(tasks.len() / 2);
                frame = ok_frame(id, &Page { tasks: &tasks })?;
            }
            Ok(frame)
        }
        Op::RetryFailed => {
            let args: RetryFailedArgs = decode_args(op, args)?;
            if let Some(queue) = &args.queue {
                crate::config::check_queue(queue)?;
            }
            let count = broker.retry_failed(args.queue).await?;
            ok_frame(id, &CountOk { count })
        }
        Op::Purge => {
            let args: PurgeArgs = decode_args(op, args)?;
            crate::config::check_queue(&args.queue)?;
            let count = broker.purge(args.queue, args.status).await?;
            ok_frame(id, &CountOk { count })
        }
        Op::Stats => {
            let _: NoArgs = decode_args(op, args)?;
            let stats = broker.stats().await?;
            ok_frame(id, &stats)
        }
        Op::Cleanup => {
            let args: CleanupArgs = decode_args(op, args)?;
            let defaults = ctx.settings.retention;
            let policy = RetentionPolicy {
                completed: args
                    .completed_retention_ms
                    .map_or(defaults.completed, Duration::from_millis),
                failed: args
                    .failed_retention_ms
                    .map_or(defaults.failed, Duration::from_millis),
            };
            let report = broker.cleanup(policy).await?;
            ok_frame(id, &CleanupOk::from(report))
        }
        // Answered by the connection's reader; kept here so every op has one home.
        Op::Abort => ok_frame(id, &Empty {}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(!same_token("s3cret", "s3cre"));
        assert!(!same_token("s3cret", "s3cret!"));
        assert!(!same_token("s3cret", "S3cret"));
        assert!(!same_token("s3cret", ""));
    }

    /// Every wrong token is refused: each proper prefix (the empty one too), the token with
    /// anything appended, every single-byte change at every position (to every other byte
    /// value), a NUL-padded token (the comparison pads the shorter side with 0 internally),
    /// and tokens of every length up to twice the real one.
    #[test]
    fn wrong_tokens_of_every_length_and_prefix_are_refused() {
        let token = "k7#Qx9-v\u{e9}t\u{2603}z";
        let bytes = token.as_bytes();
        let mut refused = 0usize;
        let mut check = |given: &[u8]| {
            if given == bytes {
                return;
            }
            let given = String::from_utf8_lossy(given);
            if given.as_bytes() == bytes {
                return;
            }
            assert!(!same_token(token, &given), "accepted {given:?}");
            refused += 1;
        };
        for len in 0..bytes.len() {
            check(&bytes[..len]);
            check(&bytes[len + 1..]);
        }
        for extra in [&b"\0"[..], b"x", b"\0\0\0", bytes] {
            check(&[bytes, extra].concat());
        }
        for index in 0..bytes.len() {
            for value in 0..=u8::MAX {
                let mut changed = bytes.to_vec();
                changed[index] = value;
                check(&changed);
            }
        }
        for len in 0..=2 * bytes.len() {
            check(&vec![b'a'; len]);
            check(&vec![0; len]);
        }
        assert!(same_token(token, token));
        assert!(refused > 255 * bytes.len(), "{refused}");
        println!("same_token: {refused} wrong tokens refused");
    }

    #[test]
    fn long_socket_paths_are_refused_naming_the_setting() {
        let long = PathBuf::from(format!("/tmp/{}/fq.redb.sock", "d".repeat(120)));
        let err = ControlServer::probe(&long).unwrap_err().to_string();
        assert!(err.contains("control.socket"), "{err}");
        assert!(err.contains("bytes"), "{err}");
    }
}
