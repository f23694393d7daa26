//! The outbox forwarder: takes due tasks off the local ready heap (the store keeps them
//! waiting), publishes them with publisher confirms, pipelined (a window of unconfirmed
//! messages, not one at a time), and marks them FORWARDED in the store only after RabbitMQ's
//! confirm. A nack, an unroutable return or a lost connection puts the task back on the heap,
//! so it is published again; a crash before the mark republishes it at the next open. Both
//! can make a duplicate, never a loss (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use lapin::{Confirmation, PublisherConfirm};
use tokio::sync::mpsc;

use super::Bridge;
use super::RabbitError;
use super::link::{RPC_TIMEOUT, Session};
use super::message::encode;
use super::topology::{EXCHANGE, short};
use crate::clock::Millis;
use crate::queue::ReadyTask;
use crate::task::ReadyOrder;
use crate::task::TaskId;

/// Tasks taken off the heap at once.
const BATCH: usize = 256;
/// Published messages whose confirm may be outstanding, beyond those being awaited.
const WINDOW: usize = 1024;
/// How long an idle forwarder sleeps before looking again (new work wakes it sooner).
const IDLE: Duration = Duration::from_secs(1);
/// How long a nacked message waits before it is published again.
const NACK_DELAY: Duration = Duration::from_millis(200);
/// How long a stopping forwarder waits for the confirms of what it published.
const DRAIN: Duration = Duration::from_secs(2);

/// A published message waiting for its confirm.
struct Pending {
    task: ReadyTask,
    confirm: PublisherConfirm,
}

type Marks = mpsc::UnboundedSender<(Vec<(TaskId, ReadyOrder)>, Millis)>;

/// Runs until the bridge stops: one forwarding pass per session.
pub(crate) async fn run(bridge: Arc<Bridge>) {
    let (marks, marked) = mpsc::unbounded_channel();
    let marker = tokio::spawn(mark_loop(Arc::clone(&bridge), marked));
    while let Some(session) = bridge.link.wait(&bridge.shutdown).await {
        forward(&bridge, &session, &marks).await;
    }
    drop(marks);
    let _ = marker.await;
    bridge.forwarder_done.cancel();
}

/// Commits FORWARDED marks, as many as have arrived per commit.
async fn mark_loop(
    bridge: Arc<Bridge>,
    mut marked: mpsc::UnboundedReceiver<(Vec<(TaskId, ReadyOrder)>, Millis)>,
) {
    while let Some((mut tasks, mut at)) = marked.recv().await {
        while let Ok((more, more_at)) = marked.try_recv() {
            tasks.extend(more);
            at = at.max(more_at);
        }
        let count = tasks.len();
        if let Err(error) = bridge.local.mark_forwarded(tasks, at).await {
            // The tasks stay waiting in the store: the next open publishes them again.
            tracing::error!(%error, count, "could not mark confirmed tasks as forwarded");
        }
    }
}

async fn forward(bridge: &Arc<Bridge>, session: &Arc<Session>, marks: &Marks) {
    let (pending, confirms) = mpsc::channel(WINDOW);
    let confirmer = tokio::spawn(confirm_loop(
        Arc::clone(bridge),
        Arc::clone(session),
        confirms,
        marks.clone(),
    ));
    publish_loop(bridge, session, &pending).await;
    drop(pending);
    let _ = confirmer.await;
}

async fn publish_loop(
    bridge: &Arc<Bridge>,
    session: &Arc<Session>,
    pending: &mpsc::Sender<Pending>,
) {
    let local = &bridge.local;
    loop {
        if session.lost.is_cancelled() || bridge.shutdown.is_cancelled() {
            return;
        }
        let notified = local.due_signal().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let taken = local.take_due(BATCH);
        if taken.is_empty() {
            bridge.unpark_if_due();
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(IDLE) => {}
                () = session.lost.cancelled() => return,
                () = bridge.shutdown.cancelled() => return,
            }
            continue;
        }
        let records = match local.read_taken(taken.clone()).await {
            Ok(records) => records,
            Err(error) => {
                tracing::error!(%error, "cannot read tasks to forward; retrying in a second");
                local.put_back(taken);
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        let mut records = records.into_iter();
        while let Some((task, record)) = records.next() {
            let stop = session.lost.is_cancelled() || bridge.shutdown.is_cancelled();
            if stop {
                local.put_back(std::iter::once(task).chain(records.map(|(t, _)| t)));
                return;
            }
            if bridge.is_parked_queue(&task.queue) {
                bridge.park(task);
                continue;
            }
            if let Err(error) = session.ensure_queue(&task.queue).await {
                match error {
                    RabbitError::TopologyConflict { .. } | RabbitError::QueueName { .. } => {
                        tracing::error!(%error, "tasks of this queue wait in the outbox until the conflict is resolved");
                        bridge.note_conflict_for(&task.queue, &error);
                        bridge.park(task);
                        continue;
                    }
                    other => {
                        tracing::warn!(error = %other, "declaring a queue failed; reconnecting");
                        local.put_back(std::iter::once(task).chain(records.map(|(t, _)| t)));
                        session.lost.cancel();
                        return;
                    }
                }
            }
            let message = match encode(task.id, &record, &bridge.reply_queue) {
                Ok(message) => message,
                Err(reason) => {
                    tracing::error!(task.id = %task.id, %reason, "a task cannot be encoded; it stays in the outbox");
                    bridge.park(task);
                    continue;
                }
            };
            let routing = match short(&task.queue, &task.queue) {
                Ok(routing) => routing,
                Err(error) => {
                    tracing::error!(%error, "tasks of this queue stay in the outbox");
                    bridge.park(task);
                    continue;
                }
            };
            let publish =
                session.publish_mandatory(EXCHANGE, routing, &message.body, message.properties);
            // A connection that died without closing must not hold the forwarder.
            let published = tokio::select! {
                published = publish => published.map_err(|e| e.to_string()),
                () = session.lost.cancelled() => Err("the connection was lost".to_owned()),
                () = tokio::time::sleep(RPC_TIMEOUT) => Err(format!("no answer within {RPC_TIMEOUT:?}")),
            };
            match published {
                Ok(confirm) => {
                    if let Err(refused) = pending.send(Pending { task, confirm }).await {
                        local.put_back(
                            std::iter::once(refused.0.task).chain(records.map(|(t, _)| t)),
                        );
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "publishing to RabbitMQ failed; the task is published again after reconnecting");
                    local.put_back(std::iter::once(task).chain(records.map(|(t, _)| t)));
                    session.lost.cancel();
                    return;
                }
            }
        }
    }
}

async fn confirm_loop(
    bridge: Arc<Bridge>,
    session: Arc<Session>,
    mut confirms: mpsc::Receiver<Pending>,
    marks: Marks,
) {
    let local = &bridge.local;
    let mut acked = Vec::new();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if drain_deadline.is_none() && bridge.shutdown.is_cancelled() {
            drain_deadline = Some(tokio::time::Instant::now() + DRAIN);
        }
        let next = match confirms.try_recv() {
            Ok(next) => Some(next),
            Err(_) => {
                if !acked.is_empty() {
                    let at = local.clock().now_ms();
                    let _ = marks.send((std::mem::take(&mut acked), at));
                }
                confirms.recv().await
            }
        };
        let Some(Pending { task, confirm }) = next else {
            break;
        };
        let give_up = async {
            match drain_deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let confirmed = tokio::select! {
            confirmed = confirm => Some(confirmed),
            () = session.lost.cancelled() => None,
            () = give_up => None,
        };
        match confirmed {
            Some(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {
                acked.push((task.id, task.order));
            }
            Some(Ok(Confirmation::Ack(Some(returned)))) => {
                tracing::warn!(queue = %task.queue, reply = %returned.reply_text, "RabbitMQ could not route a task (queue deleted?); declaring it again and republishing");
                session.forget_queue(&task.queue);
                local.put_back([task]);
            }
            Some(Ok(Confirmation::Nack(_))) => {
                tracing::warn!(task.id = %task.id, "RabbitMQ refused a task (nack); publishing it again");
                let local = Arc::clone(&bridge.local);
                tokio::spawn(async move {
                    tokio::time::sleep(NACK_DELAY).await;
                    local.put_back([task]);
                });
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "a confirm failed with the connection");
                session.lost.cancel();
                local.put_back([task]);
            }
            None => {
                // Unconfirmed: the task stays waiting in the store and goes back on the heap.
                local.put_back([task]);
                confirms.close();
                while let Ok(rest) = confirms.try_recv() {
                    local.put_back([rest.task]);
                }
            }
        }
    }
    if !acked.is_empty() {
        let at = local.clock().now_ms();
        let _ = marks.send((acked, at));
    }
}
