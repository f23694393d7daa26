//! The consumer's upkeep, run periodically by the bridge: closing consumer sets nobody claims
//! from, and taking back deliveries whose worker stopped heartbeating.

use super::*;

/// Stops the consumers of sets nobody claims from any more (their worker stopped): after
/// [`IDLE_SET`] without a claim and with no delivery held by a worker, the set's channel is
/// closed, so RabbitMQ requeues what it had prefetched at once; the next claim starts it again.
pub(crate) async fn stop_idle_sets(bridge: &Arc<Bridge>) {
    use std::sync::atomic::Ordering;
    for set in bridge.consumers.all_sets() {
        let idle = set.claiming.load(Ordering::SeqCst) == 0
            && set.held.load(Ordering::SeqCst) == 0
            && set
                .last_claim
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed()
                >= IDLE_SET;
        if !idle {
            continue;
        }
        let running = set
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((channel, stop)) = running else {
            continue;
        };
        set.started.lock().await.generation = 0;
        stop.cancel();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            channel.close(200, "fq worker stopped consuming".into()),
        )
        .await;
        set.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        tracing::debug!(queues = ?set.queues, "stopped consuming for a worker that stopped claiming");
    }
}

/// Settles deliveries whose lease ran out (their worker stopped heartbeating, e.g. a remote
/// worker that died) as failed attempts, and forgets those of lost connections.
pub(crate) async fn sweep(bridge: &Arc<Bridge>) {
    let now = bridge.local.clock().now_ms();
    let generation = bridge.link.current().map_or(0, |s| s.generation);
    let expired: Vec<(TaskId, u32)> = {
        let mut inflight = bridge
            .consumers
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        inflight.retain(|_, entry| entry.generation == generation);
        inflight
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(id, entry)| (*id, entry.attempt))
            .collect()
    };
    for (id, attempt) in expired {
        let failure = crate::task::TaskFailure {
            message: format!(
                "the worker running attempt {attempt} stopped renewing its lease (presumed dead)"
            ),
            kind: crate::task::FailureKind::WorkerLost,
        };
        let settled = settle(
            bridge,
            Settlement {
                id,
                attempt,
                outcome: Outcome::Failed {
                    failure,
                    retry_after: None,
                },
            },
        )
        .await;
        if let Err(error) = settled {
            tracing::debug!(task.id = %id, %error, "settling an expired delivery");
        }
    }
}
