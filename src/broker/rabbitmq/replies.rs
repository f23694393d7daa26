//! The producer's side of outcomes: on every connection, consumes this store's reply queue
//! (manual acks), applies each batch of reports to the store through the writer (the
//! `report` move: idempotent by task and attempt, out-of-order safe, events after the
//! commit), and acks a batch only after its durable commit. A report that does not decode is
//! dropped with a warning (it cannot become applicable by waiting).

use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use lapin::Consumer;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};

use super::Bridge;
use super::consumer::{basic_consume, next_delivery};
use super::link::{Session, bounded, operation};
use super::report::{declare_reply_queue, decode_reports};

/// Unacknowledged report messages RabbitMQ sends ahead (a message is one report or a batch).
const PREFETCH: u16 = 256;
/// Reports applied in one commit at most (a batch message is never split across commits).
const APPLY_MAX: usize = 4096;
/// How long after a failed start (or a refused commit) consuming is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// How long an ack, nack or reject may take (a connection that died without closing).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Consumes the reply queue for as long as `session` lives.
pub(crate) async fn run(bridge: Arc<Bridge>, session: Arc<Session>) {
    let _running = bridge.replies_running.lock().await;
    loop {
        match start(&bridge, &session).await {
            Ok((channel, _)) if bridge.shutdown.is_cancelled() => {
                close(channel).await;
                return;
            }
            Ok(consumer) => {
                consume(&bridge, &session, consumer).await;
                return;
            }
            Err(error) => {
                tracing::warn!(%error, queue = %bridge.reply_queue, "cannot consume the reply queue; trying again");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = session.lost.cancelled() => return,
                    () = bridge.shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn start(
    bridge: &Bridge,
    session: &Session,
) -> Result<(lapin::Channel, Consumer), super::RabbitError> {
    declare_reply_queue(session, &bridge.reply_queue).await?;
    let channel = session.open_channel("open a reply channel").await?;
    bounded("basic.qos", async {
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(|e| operation("basic.qos", e))
    })
    .await?;
    let consumer = basic_consume(&channel, bridge.reply_queue.as_str().into()).await?;
    Ok((channel, consumer))
}

/// The next delivery if one is there already, without waiting.
fn ready_delivery(consumer: &mut Consumer) -> Option<lapin::Result<Delivery>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(consumer).poll_next(&mut cx) {
        std::task::Poll::Ready(next) => next,
        std::task::Poll::Pending => None,
    }
}

async fn consume(
    bridge: &Bridge,
    session: &Session,
    (channel, mut consumer): (lapin::Channel, Consumer),
) {
    loop {
        let first = tokio::select! {
            next = next_delivery(&mut consumer) => next,
            () = session.lost.cancelled() => break,
            () = bridge.shutdown.cancelled() => break,
        };
        let first = match first {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::debug!(%error, "the reply consumer failed with its connection");
                break;
            }
            None => {
                tracing::warn!(queue = %bridge.reply_queue, "RabbitMQ cancelled the reply consumer (queue deleted?); reconnecting");
                session.lost.cancel();
                break;
            }
        };
        let mut reports = Vec::new();
        let mut last = None;
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            match decode_reports(&delivery.data) {
                Ok(decoded) => {
                    for (index, reason) in decoded.refused {
                        tracing::warn!(index, %reason, "dropping a report of a batch fq cannot decode");
                    }
                    reports.extend(decoded.reports);
                    last = Some(delivery);
                }
                Err(reason) => {
                    tracing::warn!(%reason, "dropping a report fq cannot decode");
                    let _ = tokio::time::timeout(
                        ACK_TIMEOUT,
                        delivery.acker.reject(BasicRejectOptions { requeue: false }),
                    )
                    .await;
                }
            }
            if reports.len() < APPLY_MAX {
                next = match ready_delivery(&mut consumer) {
                    Some(Ok(delivery)) => Some(delivery),
                    _ => None,
                };
            }
        }
        // Acknowledging the last decoded one with `multiple` covers the batch (the rejected
        // ones are settled already).
        let Some(last) = last else {
            continue;
        };
        // Applied and committed durably first; only then acknowledged (all of the batch).
        match bridge.local.apply_reports(reports, false, false).await {
            Ok(_) => {
                let _ = tokio::time::timeout(
                    ACK_TIMEOUT,
                    last.acker.ack(BasicAckOptions { multiple: true }),
                )
                .await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot apply reported outcomes; RabbitMQ keeps them");
                let _ = tokio::time::timeout(
                    ACK_TIMEOUT,
                    last.acker.nack(BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    }),
                )
                .await;
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = session.lost.cancelled() => break,
                    () = bridge.shutdown.cancelled() => break,
                }
            }
        }
    }
    close(channel).await;
}

/// Closes the reply channel now, rather than leaving lapin to close it on drop while the
/// connection closes.
async fn close(channel: lapin::Channel) {
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        channel.close(200, "fq stopping".into()),
    )
    .await;
}
