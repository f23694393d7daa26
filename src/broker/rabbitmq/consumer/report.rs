//! The worker's side of outcomes: each delivery that names a `reply_to` gets its run's start
//! reported as it is handed to a worker (best effort: a lost start is made good by the
//! outcome, which the producer applies without it), and its outcome kept in the store's
//! report outbox in the commit that records the run, *before* the delivery is acknowledged.
//! One sender loop per bridge publishes them: what waits when it gets a turn goes out as one
//! batch message per reply queue (confirmed), a start waits up to [`START_LINGER`] and is
//! left out when its outcome comes first, and at most [`BATCHES_IN_FLIGHT`] batches wait for a confirm, so reports
//! gather while RabbitMQ syncs. An outcome's outbox row is deleted at its batch's confirm: a
//! broker or a worker that goes away costs a report sent twice, never an outcome. When the
//! reply queue is this store's own (producer and worker share a store), nothing goes over
//! RabbitMQ: the start is applied directly and the recorded run is the outcome.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Weak;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::report::{EncodedBatch, encode_batch, publish_report};
use super::*;
use crate::store::PendingReport;
use crate::task::lifecycle::{Report, RunEnd};

/// Reports the starts of runs just handed to workers: (task, reply queue, run, start time).
pub(super) fn report_starts(bridge: &Arc<Bridge>, starts: Vec<(TaskId, String, u32, Millis)>) {
    let mut own = Vec::new();
    for (id, reply_to, attempt, at) in starts {
        let report = Report::Started { attempt, at };
        if reply_to == bridge.reply_queue {
            own.push((id, report));
            continue;
        }
        bridge.reports.push(Outgoing::Start {
            id,
            reply_to,
            report,
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

/// How long a start's report waits for its run's outcome before it goes alone.
const START_LINGER: Duration = Duration::from_millis(100);
/// Batch messages that may wait for RabbitMQ's confirm at once.
const BATCHES_IN_FLIGHT: usize = 16;
/// Reports in one batch message at most.
const BATCH_REPORTS: usize = 512;
/// About how many body bytes one batch message holds at most (a large result goes alone).
const BATCH_BYTES: usize = 1 << 20;
/// How many rows one pass over the report outbox sends at most.
const RESEND_PAGE: usize = 10_000;
/// How often the outbox is read again for rows a failed publish left behind.
pub(crate) const RESEND_EVERY: Duration = Duration::from_secs(5);

/// A report waiting for the sender loop.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A run's start: best effort (its outcome's report stands for it).
    Start {
        id: TaskId,
        reply_to: String,
        report: Report,
    },
    /// An outcome from the outbox: its row is deleted at its batch's confirm.
    Outcome(PendingReport),
}

impl Outgoing {
    fn key(&self) -> (TaskId, u32) {
        match self {
            Self::Start { id, report, .. } => (*id, report.attempt()),
            Self::Outcome(pending) => (pending.id, pending.report.attempt()),
        }
    }

    fn reply_to(&self) -> &str {
        match self {
            Self::Start { reply_to, .. } => reply_to,
            Self::Outcome(pending) => &pending.reply_to,
        }
    }

    fn report(&self) -> &Report {
        match self {
            Self::Start { report, .. } => report,
            Self::Outcome(pending) => &pending.report,
        }
    }

    /// About how many bytes its JSON takes.
    fn size(&self) -> usize {
        let report = self.report();
        let (result, error) = match report {
            Report::Started { .. } => (0, 0),
            Report::Ended(RunEnd { result, error, .. }) => (
                result.as_ref().map_or(0, String::len),
                error.as_ref().map_or(0, |e| e.message.len()),
            ),
        };
        192 + result + error
    }
}

/// The reports on their way out: the queue the sender loop reads, the outcomes being sent
/// (never one twice at once), and a signal for a stopping bridge that none is left.
#[derive(Debug)]
pub(crate) struct ReportsInFlight {
    queue: mpsc::UnboundedSender<Outgoing>,
    sending: Mutex<HashSet<(TaskId, u32)>>,
    idle: Notify,
}

/// The sender loop's end of the queue ([`ReportsInFlight::new`], [`run_sender`]).
#[derive(Debug)]
pub(crate) struct ReportQueue(mpsc::UnboundedReceiver<Outgoing>);

impl ReportsInFlight {
    /// The reports in flight, and the queue its sender loop reads.
    pub(crate) fn new() -> (Self, ReportQueue) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let reports = Self {
            queue,
            sending: Mutex::new(HashSet::new()),
            idle: Notify::new(),
        };
        (reports, ReportQueue(receiver))
    }

    /// Queues a report for the sender loop; an outcome already on its way is not queued
    /// again.
    fn push(&self, outgoing: Outgoing) {
        if let Outgoing::Outcome(pending) = &outgoing
            && !self
                .sending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((pending.id, pending.report.attempt()))
        {
            return;
        }
        let key = outgoing.key();
        let is_outcome = matches!(outgoing, Outgoing::Outcome(_));
        // Only a stopped sender loop closes the queue: its outcomes stay in the outbox.
        if self.queue.send(outgoing).is_err() && is_outcome {
            self.done([key]);
        }
    }

    fn done(&self, keys: impl IntoIterator<Item = (TaskId, u32)>) {
        let mut sending = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            sending.remove(&key);
        }
        if sending.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Waits (at most `limit`) until no outcome report waits to be sent or confirmed: a
    /// stopping bridge keeps its connection open for them, so a worker that stops leaves no
    /// outcome unsent.
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

/// Publishes an outcome report from the report outbox; its row leaves the outbox at
/// RabbitMQ's confirm. A report not confirmed (a lost connection, a refusal) stays in the
/// outbox and is sent again by [`resend`].
pub(super) fn send(bridge: &Bridge, pending: PendingReport) {
    bridge.reports.push(Outgoing::Outcome(pending));
}

/// The sender loop: takes what waits, as one batch per reply queue, while fewer than
/// [`BATCHES_IN_FLIGHT`] wait for a confirm. A start waits up to [`START_LINGER`] for its
/// outcome, which then reports the run alone (most runs are short: this halves what the
/// producer applies). Ends with the bridge.
pub(crate) async fn run_sender(bridge: Weak<Bridge>, ReportQueue(mut queue): ReportQueue) {
    let window = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    // Starts not sent yet, oldest first, with when they arrived.
    let mut lingering: VecDeque<(Instant, Outgoing)> = VecDeque::new();
    loop {
        let received = match lingering.front() {
            Some((since, _)) => tokio::time::timeout_at(*since + START_LINGER, queue.recv())
                .await
                .ok(),
            None => Some(queue.recv().await),
        };
        let mut waiting = match received {
            // The bridge is gone: what lingers was best effort.
            Some(None) => return,
            Some(Some(first)) => vec![first],
            // The oldest start's wait is over.
            None => Vec::new(),
        };
        // Reports gather in the queue while the window is full: the next batch is bigger.
        let Ok(permit) = Arc::clone(&window).acquire_owned().await else {
            return;
        };
        while waiting.len() < BATCH_REPORTS * BATCHES_IN_FLIGHT {
            match queue.try_recv() {
                Ok(outgoing) => waiting.push(outgoing),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let due = take_due(&mut lingering, waiting, now);
        if due.is_empty() {
            continue;
        }
        let Some(bridge) = bridge.upgrade() else {
            return;
        };
        let mut permit = Some(permit);
        for (reply_to, batch) in batches(due) {
            let permit = match permit.take() {
                Some(permit) => permit,
                None => match Arc::clone(&window).acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let bridge = Arc::clone(&bridge);
            tokio::spawn(async move {
                publish_batch(&bridge, &reply_to, batch).await;
                drop(permit);
            });
        }
    }
}

/// What goes out now, given what just arrived at `now`: every outcome, and the starts that
/// have lingered [`START_LINGER`] without one. New starts join `lingering`; a start whose
/// outcome arrived leaves it unsent.
fn take_due(
    lingering: &mut VecDeque<(Instant, Outgoing)>,
    arrived: Vec<Outgoing>,
    now: Instant,
) -> Vec<Outgoing> {
    let mut due = Vec::new();
    for outgoing in arrived {
        match outgoing {
            Outgoing::Start { .. } => lingering.push_back((now, outgoing)),
            Outgoing::Outcome(_) => due.push(outgoing),
        }
    }
    if !due.is_empty() && !lingering.is_empty() {
        let ended: HashSet<(TaskId, u32)> = due.iter().map(Outgoing::key).collect();
        lingering.retain(|(_, start)| !ended.contains(&start.key()));
    }
    while lingering
        .front()
        .is_some_and(|(since, _)| *since + START_LINGER <= now)
    {
        if let Some((_, start)) = lingering.pop_front() {
            due.push(start);
        }
    }
    due
}

/// Groups reports by reply queue into batches of at most [`BATCH_REPORTS`] reports and
/// about [`BATCH_BYTES`] bytes, leaving out each start whose outcome is among them.
fn batches(waiting: Vec<Outgoing>) -> Vec<(String, Vec<Outgoing>)> {
    let ended: HashSet<(TaskId, u32)> = waiting
        .iter()
        .filter(|outgoing| matches!(outgoing, Outgoing::Outcome(_)))
        .map(Outgoing::key)
        .collect();
    // Per reply queue: its batches, each with about how many bytes it holds.
    let mut by_queue: BTreeMap<String, Vec<(usize, Vec<Outgoing>)>> = BTreeMap::new();
    for outgoing in waiting {
        if matches!(outgoing, Outgoing::Start { .. }) && ended.contains(&outgoing.key()) {
            continue;
        }
        let size = outgoing.size();
        let chunks = by_queue.entry(outgoing.reply_to().to_owned()).or_default();
        match chunks.last_mut() {
            Some((bytes, chunk)) if chunk.len() < BATCH_REPORTS && *bytes + size <= BATCH_BYTES => {
                *bytes += size;
                chunk.push(outgoing);
            }
            _ => chunks.push((size, vec![outgoing])),
        }
    }
    by_queue
        .into_iter()
        .flat_map(|(queue, chunks)| chunks.into_iter().map(move |(_, c)| (queue.clone(), c)))
        .collect()
}

/// Publishes one batch and waits for its confirm; its outcomes leave the outbox then.
async fn publish_batch(bridge: &Bridge, reply_to: &str, batch: Vec<Outgoing>) {
    let outcomes: Vec<(TaskId, u32)> = batch
        .iter()
        .filter(|outgoing| matches!(outgoing, Outgoing::Outcome(_)))
        .map(Outgoing::key)
        .collect();
    let EncodedBatch {
        count,
        message,
        refused,
    } = encode_batch(
        batch
            .iter()
            .map(|outgoing| (outgoing.key().0, outgoing.report())),
    );
    let mut unsendable = Vec::new();
    for (index, reason) in refused {
        if let Some(outgoing @ Outgoing::Outcome(_)) = batch.get(index) {
            // Nothing sends it better later: the producer keeps its record as it was.
            tracing::error!(task.id = %outgoing.key().0, %reason, "dropping an outcome report that cannot be encoded");
            unsendable.push(outgoing.key());
        }
    }
    if !unsendable.is_empty() {
        bridge.local.reports_sent(unsendable);
    }
    let sent = match (message, bridge.link.current()) {
        (Some(message), Some(session)) => {
            match publish_report(&session, &bridge.reply_queues, reply_to, message).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, count, reply_to, "a batch of reports was not confirmed; its outcomes stay in the outbox and are sent again");
                    false
                }
            }
        }
        (Some(_), None) => false,
        (None, _) => true,
    };
    if sent && !outcomes.is_empty() {
        bridge.local.reports_sent(outcomes.clone());
    }
    bridge.reports.done(outcomes);
}

/// Sends the reports waiting in the report outbox that are not being sent already: on every
/// new connection (rows left by a crash or a lost connection) and every [`RESEND_EVERY`].
pub(crate) async fn resend(bridge: &Arc<Bridge>) {
    if bridge.link.current().is_none() {
        return;
    }
    match bridge.local.pending_reports(RESEND_PAGE).await {
        Ok(pending) => {
            if !pending.is_empty() {
                tracing::debug!(
                    count = pending.len(),
                    "sending outcome reports from the outbox"
                );
            }
            for report in pending {
                send(bridge, report);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read the outcome report outbox"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskStatus;

    fn ended(id: TaskId, attempt: u32, reply_to: &str) -> Outgoing {
        Outgoing::Outcome(PendingReport {
            id,
            reply_to: reply_to.to_owned(),
            report: Report::Ended(RunEnd {
                attempt,
                status: TaskStatus::Completed,
                started_at: Some(1),
                at: 2,
                result: None,
                error: None,
                retry_at: None,
            }),
        })
    }

    fn started(id: TaskId, attempt: u32, reply_to: &str) -> Outgoing {
        Outgoing::Start {
            id,
            reply_to: reply_to.to_owned(),
            report: Report::Started { attempt, at: 1 },
        }
    }

    #[test]
    fn batches_group_by_reply_queue_and_drop_starts_whose_outcome_is_there() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let batches = batches(vec![
            started(a, 1, "fq.replies.x"),
            started(b, 1, "fq.replies.y"),
            started(a, 2, "fq.replies.x"),
            ended(a, 1, "fq.replies.x"),
        ]);
        // (reply queue, [(task and run, is an outcome)]) per batch.
        type Shape = Vec<(String, Vec<((TaskId, u32), bool)>)>;
        let shape: Shape = batches
            .iter()
            .map(|(queue, batch)| {
                (
                    queue.clone(),
                    batch
                        .iter()
                        .map(|o| (o.key(), matches!(o, Outgoing::Outcome(_))))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (
                    "fq.replies.x".to_owned(),
                    // a's first start is covered by its outcome; its second run's start stays.
                    vec![((a, 2), false), ((a, 1), true)]
                ),
                ("fq.replies.y".to_owned(), vec![((b, 1), false)]),
            ]
        );
    }

    #[test]
    fn starts_linger_until_their_outcome_or_their_time() {
        let (a, b) = (TaskId::new(), TaskId::new());
        let t0 = Instant::now();
        let mut lingering = VecDeque::new();
        // Starts arrive: nothing goes out yet.
        let due = take_due(
            &mut lingering,
            vec![started(a, 1, "q"), started(b, 1, "q")],
            t0,
        );
        assert!(due.is_empty());
        // a's outcome arrives: it goes, and a's start is never sent.
        let due = take_due(
            &mut lingering,
            vec![ended(a, 1, "q")],
            t0 + START_LINGER / 2,
        );
        let keys: Vec<_> = due.iter().map(Outgoing::key).collect();
        assert_eq!(keys, vec![(a, 1)]);
        assert!(matches!(due[0], Outgoing::Outcome(_)));
        // b's run goes on: its start goes once it has lingered long enough, not before.
        assert!(take_due(&mut lingering, Vec::new(), t0 + START_LINGER / 2).is_empty());
        let due = take_due(&mut lingering, Vec::new(), t0 + START_LINGER);
        let keys: Vec<_> = due.iter().map(Outgoing::key).collect();
        assert_eq!(keys, vec![(b, 1)]);
        assert!(matches!(due[0], Outgoing::Start { .. }));
        assert!(lingering.is_empty());
    }

    #[test]
    fn batches_are_split_by_count_and_by_size() {
        let many: Vec<Outgoing> = (0..BATCH_REPORTS + 1)
            .map(|_| ended(TaskId::new(), 1, "q"))
            .collect();
        let sizes: Vec<usize> = batches(many).iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, vec![BATCH_REPORTS, 1]);

        let big = |id| {
            Outgoing::Outcome(PendingReport {
                id,
                reply_to: "q".to_owned(),
                report: Report::Ended(RunEnd {
                    attempt: 1,
                    status: TaskStatus::Completed,
                    started_at: None,
                    at: 2,
                    result: Some("x".repeat(BATCH_BYTES / 2)),
                    error: None,
                    retry_at: None,
                }),
            })
        };
        let sizes: Vec<usize> = batches(vec![big(TaskId::new()), big(TaskId::new())])
            .iter()
            .map(|(_, b)| b.len())
            .collect();
        assert_eq!(sizes, vec![1, 1]);
    }
}
