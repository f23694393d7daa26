//! The worker's side of outcomes: each delivery that names a `reply_to` gets its run's start
//! reported as it is handed to a worker (in the background, confirmed; a lost start is made
//! good by the outcome, which the producer applies without it), and its outcome kept in the
//! store's report outbox in the commit that records the run, *before* the delivery is
//! acknowledged; the outbox is published with a window of unconfirmed reports and each row
//! deleted at its confirm, so a broker or a worker that goes away costs a report sent twice,
//! never an outcome. When the reply queue is this store's own (producer and worker share a
//! store), nothing goes over RabbitMQ: the start is applied directly and the recorded run is
//! the outcome.

use std::collections::HashSet;

use super::super::report::{encode_report, publish_report};
use super::*;
use crate::store::PendingReport;
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

/// How many outcome reports may wait for RabbitMQ's confirm at once.
const REPORT_WINDOW: usize = 1024;
/// How many rows one pass over the report outbox sends at most.
const RESEND_PAGE: usize = 10_000;
/// How often the outbox is read again for rows a failed publish left behind.
pub(crate) const RESEND_EVERY: Duration = Duration::from_secs(5);

/// The outcome reports being published: at most [`REPORT_WINDOW`] wait for a confirm, and a
/// row is never published twice at once.
#[derive(Debug)]
pub(crate) struct ReportsInFlight {
    sending: Mutex<HashSet<(TaskId, u32)>>,
    window: Arc<tokio::sync::Semaphore>,
    idle: Notify,
}

impl Default for ReportsInFlight {
    fn default() -> Self {
        Self {
            sending: Mutex::new(HashSet::new()),
            window: Arc::new(tokio::sync::Semaphore::new(REPORT_WINDOW)),
            idle: Notify::new(),
        }
    }
}

impl ReportsInFlight {
    /// Marks a report as being sent; false when it is already.
    fn start(&self, key: (TaskId, u32)) -> bool {
        self.sending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key)
    }

    fn done(&self, key: (TaskId, u32)) {
        let mut sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        sending.remove(&key);
        if sending.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Waits (at most `limit`) until no report waits for a confirm: a stopping bridge keeps
    /// its connection open for them, so a worker that stops leaves no outcome unsent.
    pub(crate) async fn drained(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self
                    .sending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
                {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

/// Publishes an outcome report from the report outbox in the background; its row leaves the
/// outbox at RabbitMQ's confirm. A report not confirmed (a lost connection, a refusal) stays
/// in the outbox and is sent again by [`resend`].
pub(super) fn send(bridge: &Arc<Bridge>, session: &Arc<Session>, pending: PendingReport) {
    let key = (pending.id, pending.report.attempt());
    if !bridge.reports.start(key) {
        return;
    }
    let bridge = Arc::clone(bridge);
    let session = Arc::clone(session);
    tokio::spawn(async move {
        let permit = Arc::clone(&bridge.reports.window).acquire_owned().await;
        match encode_report(pending.id, &pending.report) {
            Ok(message) => {
                match publish_report(&session, &bridge.reply_queues, &pending.reply_to, message)
                    .await
                {
                    Ok(()) => bridge.local.reports_sent(vec![key]),
                    Err(error) => {
                        tracing::debug!(task.id = %pending.id, %error, "an outcome's report was not confirmed; it stays in the outbox and is sent again");
                    }
                }
            }
            Err(reason) => {
                // Nothing sends it better later: the producer keeps its record as it was.
                tracing::error!(task.id = %pending.id, %reason, "dropping an outcome report that cannot be encoded");
                bridge.local.reports_sent(vec![key]);
            }
        }
        drop(permit);
        bridge.reports.done(key);
    });
}

/// Sends the reports waiting in the report outbox that are not being sent already: on every
/// new connection (rows left by a crash or a lost connection) and every [`RESEND_EVERY`].
pub(crate) async fn resend(bridge: &Arc<Bridge>) {
    let Some(session) = bridge.link.current() else {
        return;
    };
    match bridge.local.pending_reports(RESEND_PAGE).await {
        Ok(pending) => {
            if !pending.is_empty() {
                tracing::debug!(
                    count = pending.len(),
                    "sending outcome reports from the outbox"
                );
            }
            for report in pending {
                send(bridge, &session, report);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read the outcome report outbox"),
    }
}
