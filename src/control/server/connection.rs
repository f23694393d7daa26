//! Connections to the control server: accepting them on the Unix socket and the optional TCP
//! listener within `control.max_connections`, refusing the ones over it, and serving each
//! accepted one (handshake, then pipelined requests answered through one writer task, at most
//! [`MAX_IN_FLIGHT`] at once) until the client leaves, sends garbage, or the server stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::ServerCtx;
use super::dispatch::{error_body, fallback_error_body, handle, ok_body, release};
use super::handshake::{handshake, server_hello};
use crate::control::protocol::{
    AbortArgs, Empty, ErrorOut, FrameError, FrameReader, FrameWriter, HelloFrame, MAX_IN_FLIGHT,
    Op, WireError, decode_args, encode_body, parse_request,
};
use crate::task::TaskId;

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

/// Where a connection came from: a Unix peer is authenticated by the socket's mode, a TCP one
/// by the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
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
pub(super) async fn serve(
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
                tokio::spawn(refuse(read, FrameWriter::new(write), error));
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
async fn refuse(read: BoxRead, mut writer: FrameWriter<BoxWrite>, error: WireError) {
    let body = encode_body(&ErrorOut {
        id: None,
        error: &error,
    });
    if let Ok(body) = body {
        let written = tokio::time::timeout(REFUSE_TIMEOUT, async {
            writer.send(&body).await?;
            writer.shutdown().await
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
    /// The answer's JSON, framed by the writer.
    body: Vec<u8>,
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
    let mut reader = FrameReader::new(read, ctx.settings.max_frame_bytes);
    let mut writer = FrameWriter::new(write);
    let hello = match handshake(&ctx, &mut reader, transport).await {
        Ok(hello) => hello,
        Err(None) => return,
        Err(Some(error)) => {
            tracing::warn!(%peer, kind = %error.kind, error = %error.message, "refusing a control connection");
            refuse(reader.into_inner(), writer, error).await;
            return;
        }
    };
    let answer = server_hello(&ctx);
    let sent = match encode_body(&HelloFrame { hello: answer }) {
        Ok(body) => async {
            writer.send(&body).await?;
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
            frame = reader.read_frame() => frame,
        };
        let frame = match frame {
            // Copied out of the read buffer, which a request's task would otherwise keep
            // alive (a whole buffer) for as long as it runs: an hour, for a long-poll claim.
            Ok(Some(frame)) => Vec::from(frame),
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
            let body = match answer {
                Ok(()) => ok_body(request.id, &Empty {}),
                Err(error) => Err(error),
            };
            let body = body.unwrap_or_else(|error| error_body(Some(request.id), &error));
            if out_tx
                .send(Outgoing {
                    body,
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
        // Long requests (a claim's long poll, a wait) can be aborted and end with the connection.
        let claim_token = matches!(request.op, Op::Claim | Op::Wait).then(|| {
            let token = stop.child_token();
            claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(request.id, token.clone());
            token
        });
        let (ctx, out_tx, claims) = (Arc::clone(&ctx), out_tx.clone(), Arc::clone(&claims));
        tokio::spawn(async move {
            let (body, claimed) = handle(&ctx, &request, &frame, claim_token.as_ref()).await;
            if claim_token.is_some() {
                claims
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request.id);
            }
            let outgoing = Outgoing {
                body,
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
        linger(reader.into_inner()).await;
    }
    tracing::debug!(%peer, %reason, "control connection closed");
}

/// Writes answers in arrival order, flushing when no more are waiting (one write system call
/// serves many pipelined answers). Returns the writer, or `None` when the socket failed; then
/// claims that could not be delivered are released.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    ctx: Arc<ServerCtx>,
    connection: CancellationToken,
) -> Option<FrameWriter<W>> {
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
            if writer.send(&message.body).await.is_err() {
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

fn send_error(out: &mpsc::UnboundedSender<Outgoing>, id: Option<u64>, error: &WireError) {
    let body = encode_body(&ErrorOut { id, error }).unwrap_or_else(|_| fallback_error_body());
    drop(out.send(Outgoing {
        body,
        claimed: Vec::new(),
        _slot: None,
    }));
}
