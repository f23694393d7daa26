//! Ending a RabbitMQ delivery: heartbeats, and the settlement of a run (recorded in the local
//! store, then acknowledged, retried through the outbox, or dead-lettered).

use super::report;
use super::*;

/// Extends a delivery's lease; a delivery whose connection was lost is stale (RabbitMQ gives
/// it to another worker), so the runner abandons the attempt.
pub(crate) fn heartbeat(bridge: &Arc<Bridge>, id: TaskId, attempt: u32) -> Result<()> {
    let generation = bridge.link.current().map_or(0, |s| s.generation);
    let deadline = bridge
        .local
        .clock()
        .now_ms()
        .saturating_add(bridge.lease_ms());
    let mut inflight = bridge
        .consumers
        .inflight
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match inflight.get_mut(&id) {
        Some(entry) if entry.attempt == attempt && entry.generation == generation => {
            entry.deadline = deadline;
            Ok(())
        }
        _ => Err(stale(id, attempt)),
    }
}

/// Settles a delivery: records the outcome locally first, then tells RabbitMQ.
pub(crate) async fn settle(bridge: &Arc<Bridge>, settlement: Settlement) -> Result<SettleReport> {
    let Settlement {
        id,
        attempt,
        outcome,
    } = settlement;
    let entry = match bridge.consumers.take(id) {
        Some(entry) if entry.attempt == attempt => entry,
        Some(other) => {
            bridge
                .consumers
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, other);
            return Err(stale(id, attempt));
        }
        None => return Err(stale(id, attempt)),
    };
    let session = bridge
        .link
        .current()
        .filter(|s| s.generation == entry.generation);
    let Some(session) = session else {
        // Its connection is gone: RabbitMQ has requeued the message, and recording a retry
        // here would run it twice.
        return Err(stale(id, attempt));
    };
    if matches!(outcome, Outcome::Released) {
        if !acknowledge("nack", entry.delivery.acker.nack(requeue())).await {
            tracing::warn!(task.id = %id, "could not release a delivery; RabbitMQ redelivers it when the connection closes");
        }
        return Ok(SettleReport {
            status: TaskStatus::Pending,
            retry_at: None,
            record: None,
        });
    }
    let failure = match &outcome {
        Outcome::Failed { failure, .. } => Some(failure.clone()),
        _ => None,
    };
    // A reply queue of another store gets the outcome through the report outbox.
    let reports_elsewhere = entry
        .incoming
        .reply_to
        .as_deref()
        .is_some_and(|reply_to| reply_to != bridge.reply_queue);
    let run = RunRecord {
        id,
        name: entry.incoming.name.clone(),
        queue: entry.queue.to_string(),
        priority: entry.incoming.priority,
        payload: entry.incoming.payload.as_str().to_owned(),
        max_retries: entry.incoming.max_retries,
        timeout_ms: entry.incoming.timeout.map(crate::clock::duration_ms),
        retry_delay_ms: entry.incoming.retry_delay.map(crate::clock::duration_ms),
        created_at: entry.incoming.created_at,
        scheduled_at: entry.incoming.scheduled_at,
        started_at: entry.started_at,
        attempt,
        outcome,
        reply_to: entry.incoming.reply_to.clone(),
        report: reports_elsewhere,
    };
    if matches!(run.outcome, Outcome::Completed { .. }) && !reports_elsewhere {
        // Success needs no local commit before the ack (DESIGN §5: "Success: ack"): the run's
        // record joins the writer's queue first and the ack goes out while it commits. That
        // commit skips its own fsync (the writer makes it durable within 100 ms): the worker
        // slot waits only until the record is visible, so events still follow the record,
        // and a busy disk does not bound how fast a worker drains its queue. A run whose
        // producer waits for its outcome takes the durable path below instead: its report
        // must outlive a crash once the delivery is acknowledged.
        let pending = match bridge.local.record_run_detached(run) {
            Ok(pending) => pending,
            Err(error) => {
                acknowledge("nack", entry.delivery.acker.nack(requeue())).await;
                return Err(error);
            }
        };
        if !acknowledge("ack", entry.delivery.acker.ack(BasicAckOptions::default())).await {
            tracing::warn!(
                task.id = %id,
                "the run succeeded but its acknowledgement did not reach RabbitMQ; it will be delivered again (at-least-once)"
            );
        }
        return match pending.await {
            Ok(recorded) => recorded.map(|recorded| recorded.settled),
            Err(_) => Err(Error::ShutDown),
        };
    }
    let recorded = match bridge.local.record_run(run).await {
        Ok(recorded) => recorded,
        Err(error) => {
            // Not recorded, so not acknowledged: RabbitMQ delivers it again.
            acknowledge("nack", entry.delivery.acker.nack(requeue())).await;
            return Err(error);
        }
    };
    if let Some(pending) = recorded.report {
        report::send(bridge, pending);
    }
    let report = recorded.settled;
    if report.status == TaskStatus::Failed {
        let (reason, kind) = match &failure {
            Some(failure) if failure.kind.is_retryable() => (
                format!(
                    "failed on run {attempt} of {} (retries exhausted): {}",
                    entry.incoming.max_retries + 1,
                    failure.message
                ),
                failure.kind.as_str(),
            ),
            Some(failure) => (failure.message.clone(), failure.kind.as_str()),
            None => ("failed".to_owned(), "error"),
        };
        let now = bridge.local.clock().now_ms();
        dead_letter(
            &session,
            &entry.queue,
            &entry.delivery,
            &reason,
            kind,
            Some(attempt),
            now,
        )
        .await;
    } else {
        if !acknowledge("ack", entry.delivery.acker.ack(BasicAckOptions::default())).await {
            tracing::warn!(
                task.id = %id,
                "the run was recorded but its acknowledgement did not reach RabbitMQ; it will be delivered again (at-least-once)"
            );
        }
    }
    Ok(report)
}

/// Publishes the message to `tasks.dead` under `<queue>.dead` with the reason in its headers
/// and, once RabbitMQ confirms it, acks the original. Should that fail, the original is
/// rejected without requeue, so RabbitMQ's own dead-lettering (the queue's arguments) still
/// moves it to `<queue>.dead`, without fq's headers.
pub(crate) async fn dead_letter(
    session: &Session,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
    kind: &str,
    attempt: Option<u32>,
    now: Millis,
) {
    let properties = dead_letter_properties(&delivery.properties, reason, kind, attempt, now);
    let published = async {
        session.ensure_queue(queue).await?;
        let routing = short(queue, &dead_queue(queue))?;
        let confirm = bounded("dead-letter publish", async {
            session
                .publish_mandatory(DEAD_EXCHANGE, routing, &delivery.data, properties)
                .await
                .map_err(|e| operation("dead-letter publish", e))
        })
        .await?;
        match tokio::time::timeout(DEAD_LETTER_CONFIRM, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(other)) => Err(RabbitError::Operation {
                action: "dead-letter publish",
                reason: format!("RabbitMQ did not take it ({other:?})"),
                source: None,
            }),
            Ok(Err(error)) => Err(operation("dead-letter publish", error)),
            Err(_) => Err(RabbitError::Operation {
                action: "dead-letter publish",
                reason: format!("no confirm within {DEAD_LETTER_CONFIRM:?}"),
                source: None,
            }),
        }
    }
    .await;
    match published {
        Ok(()) => {
            if !acknowledge("ack", delivery.acker.ack(BasicAckOptions::default())).await {
                tracing::warn!(
                    queue,
                    "dead letter published; acknowledging the original failed, so it may be dead-lettered twice"
                );
            }
        }
        Err(error) => {
            tracing::warn!(%error, queue, "could not publish the dead letter; rejecting the message so RabbitMQ dead-letters it");
            acknowledge(
                "reject",
                delivery.acker.reject(BasicRejectOptions { requeue: false }),
            )
            .await;
        }
    }
}
