//! The worker's side of outcomes: each delivery that names a `reply_to` gets its run's start
//! reported as it is handed to a worker (in the background, confirmed; a lost start is made
//! good by the outcome, which the producer applies without it), and its outcome reported and
//! confirmed *before* the delivery is acknowledged, so a broker that goes away in between
//! costs a second run, never an outcome. When the reply queue is this store's own (producer
//! and worker share a store), nothing goes over RabbitMQ: the start is applied directly and
//! the recorded run is the outcome.

use super::super::report::{encode_report, publish_report};
use super::*;
use crate::task::StoredFailure;
use crate::task::lifecycle::Report;

/// Reports the starts of runs just handed to workers: (task, reply queue, run, start time).
pub(super) fn report_starts(
    bridge: &Arc<Bridge>,
    session: &Arc<Session>,
    starts: Vec<(TaskId, String, u32, Millis)>,
) {
    let mut own = Vec::new();
    for (id, reply_to, attempt, at) in starts {
        let report = Report::Started { attempt, at };
        if reply_to == bridge.reply_queue {
            own.push((id, report));
            continue;
        }
        let message = match encode_report(id, &report) {
            Ok(message) => message,
            Err(reason) => {
                tracing::warn!(task.id = %id, %reason, "cannot encode a start's report");
                continue;
            }
        };
        let bridge = Arc::clone(bridge);
        let session = Arc::clone(session);
        tokio::spawn(async move {
            if let Err(error) =
                publish_report(&session, &bridge.reply_queues, &reply_to, message).await
            {
                tracing::debug!(task.id = %id, %error, "a start's report was not confirmed; its outcome's report stands for it");
            }
        });
    }
    if !own.is_empty() {
        // This process's consumer announced the starts already: applied without events.
        let local = Arc::clone(&bridge.local);
        tokio::spawn(async move {
            if let Err(error) = local.apply_reports(own, true, true).await {
                tracing::debug!(%error, "could not record the start of runs");
            }
        });
    }
}

/// The outcome to report for a run that ended as `status` (COMPLETED, RETRYING or FAILED).
pub(super) fn ended(
    entry: &InFlight,
    status: TaskStatus,
    outcome: &Outcome,
    retry_at: Option<Millis>,
    at: Millis,
) -> Report {
    let (result, error) = match outcome {
        Outcome::Completed { result } => (Some(result.to_string()), None),
        Outcome::Failed { failure, .. } => (
            None,
            Some(StoredFailure {
                message: failure.message.clone(),
                kind: failure.kind,
            }),
        ),
        Outcome::Released => (None, None),
    };
    Report::Ended {
        attempt: entry.attempt,
        status,
        started_at: Some(entry.started_at),
        at,
        result,
        error,
        retry_at,
    }
}

/// Reports a run's outcome to `reply_to` and waits for RabbitMQ's confirm; nothing to do
/// when the reply queue is this store's own (the recorded run is the outcome).
pub(super) async fn report_end(
    bridge: &Arc<Bridge>,
    session: &Session,
    id: TaskId,
    reply_to: &str,
    report: &Report,
) -> Result<()> {
    if reply_to == bridge.reply_queue {
        return Ok(());
    }
    let message = encode_report(id, report).map_err(|reason| {
        Error::Rabbit(RabbitError::Operation {
            action: "report an outcome",
            reason,
            source: None,
        })
    })?;
    publish_report(session, &bridge.reply_queues, reply_to, message).await?;
    Ok(())
}
