//! The writer thread: the only owner of write transactions. It drains every waiting command
//! into one transaction, commits it durably (one fsync for the whole batch), then publishes the
//! changes to the in-memory structures and answers each command.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::Shared;
use crate::broker::{Chained, CleanupReport, NewTask, Outcome, SettleReport, Settlement};
use crate::clock::{Millis, millis_to_datetime};
use crate::events::{Event, EventKind};
use crate::queue::ReadyTask;
use crate::store::{Store, StoreError, WriteTables};
use crate::task::{ReadyOrder, StoredFailure, StoredTask};
use crate::task::{FailureKind, RetryPolicy, TaskFailure, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// The most commands applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Bounds of the wait for follow-up requests after a commit (see `gather_follow_ups`).
const MIN_GATHER: Duration = Duration::from_micros(50);
const MAX_GATHER: Duration = Duration::from_millis(2);

type Reply<T> = oneshot::Sender<Result<T>>;

/// One chunk of a long admin operation: how many tasks it changed, and where to go on
/// (`None` when the scan is done).
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) changed: u64,
    pub(crate) next: Option<(usize, Vec<u8>)>,
}

/// The statuses a purge scans, in order: the waiting index, then each finished status.
const PURGE_PHASES: [Option<TaskStatus>; 5] = [
    None,
    Some(TaskStatus::Completed),
    Some(TaskStatus::Failed),
    Some(TaskStatus::Cancelled),
    Some(TaskStatus::Forwarded),
];

/// A committed new task, with its record when events are being listened to.
pub(crate) type Queued = (TaskId, Option<Arc<TaskRecord>>);

/// A request to the writer.
pub(crate) enum Command {
    Enqueue {
        tasks: Vec<NewTask>,
        reply: Reply<Vec<Queued>>,
    },
    Claim {
        tasks: Vec<ReadyTask>,
        lease_until: Millis,
        reply: Reply<Vec<TaskRecord>>,
    },
    /// Settles an attempt and, in the same transaction, claims `next` (possibly none).
    Settle {
        settlement: Settlement,
        next: Vec<ReadyTask>,
        lease_until: Millis,
        reply: Reply<Chained>,
    },
    Cancel {
        id: TaskId,
        reply: Reply<TaskRecord>,
    },
    Cleanup {
        completed_before: Millis,
        failed_before: Millis,
        limit: usize,
        reply: Reply<CleanupReport>,
    },
    /// Puts a FAILED or CANCELLED task back to PENDING with a fresh retry budget.
    Retry {
        id: TaskId,
        reply: Reply<TaskRecord>,
    },
    /// Retries up to `limit` FAILED tasks (of `queue`, if given) after the cursor `after`.
    RetryFailed {
        queue: Option<String>,
        after: Option<Vec<u8>>,
        limit: usize,
        reply: Reply<Page>,
    },
    /// Deletes up to `limit` tasks of `queue` (in `status`, if given) from scan phase `phase`
    /// after the cursor `after`. RUNNING tasks are never purged.
    Purge {
        queue: String,
        status: Option<TaskStatus>,
        phase: usize,
        after: Option<Vec<u8>>,
        limit: usize,
        reply: Reply<Page>,
    },
    /// A lease ran out: the attempt counts as failed (its worker is presumed dead).
    Expire { id: TaskId, attempt: u32 },
    /// RabbitMQ confirmed these tasks (id, the order they were taken from the heap under):
    /// each still waiting under that order becomes FORWARDED at `at`.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    Forwarded {
        tasks: Vec<(TaskId, ReadyOrder)>,
        at: Millis,
        reply: Reply<u64>,
    },
    /// The forwarder took these tasks off the ready heap to publish them: answers the records
    /// of those still waiting under the order they were taken with, and marks them as being
    /// forwarded, so that a cancel cannot slip in between their read and RabbitMQ's confirm.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    TakeForForwarding {
        tasks: Vec<ReadyTask>,
        reply: Reply<Vec<(ReadyTask, StoredTask)>>,
    },
    /// The forwarder gave these tasks back (publishing failed, or their queue is parked): they
    /// are no longer being forwarded, and, with `requeue`, go back on the ready heap.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    Untake {
        tasks: Vec<ReadyTask>,
        requeue: bool,
    },
    /// A run of a task delivered by RabbitMQ ended: record it (creating the record when this
    /// store has not seen the task), retrying it through the waiting index when retries remain.
    ///
    /// A `lazy` record (a successful run, already acknowledged to RabbitMQ) may be committed
    /// without an fsync of its own: it is visible at once and made durable by the next durable
    /// commit, at most [`LAZY_FLUSH`] later.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    RecordRun {
        run: Box<RunRecord>,
        lazy: bool,
        reply: Reply<SettleReport>,
    },
}

impl Command {
    /// True when the command's commit may skip the fsync (see [`Command::RecordRun`]).
    fn is_lazy(&self) -> bool {
        matches!(
            self,
            Command::RecordRun { lazy: true, .. }
                | Command::TakeForForwarding { .. }
                | Command::Untake { .. }
        )
    }
}

/// The longest a lazily committed change waits for a durable commit.
pub(crate) const LAZY_FLUSH: Duration = Duration::from_millis(100);

/// One finished run of a task delivered by RabbitMQ, as the worker saw it.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) struct RunRecord {
    pub(crate) id: TaskId,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) payload: String,
    pub(crate) max_retries: u32,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) retry_delay_ms: Option<u64>,
    pub(crate) created_at: Millis,
    pub(crate) scheduled_at: Millis,
    pub(crate) started_at: Millis,
    /// The run's number (1 for the first run).
    pub(crate) attempt: u32,
    /// Completed or Failed; a Released run is never recorded.
    pub(crate) outcome: Outcome,
}

/// A change to the in-memory structures, made only after the commit that backs it.
enum Effect {
    Wait {
        queue: String,
        order: ReadyOrder,
        id: TaskId,
    },
    Unwait {
        queue: String,
        order: ReadyOrder,
    },
    Lease {
        id: TaskId,
        attempt: u32,
        until: Millis,
    },
    Unlease {
        id: TaskId,
    },
    Emit(Event),
}

/// What one command produced, waiting for the commit.
enum Answer {
    Enqueue(Reply<Vec<Queued>>, Result<Vec<Queued>>),
    Claim(Reply<Vec<TaskRecord>>, Result<Vec<TaskRecord>>),
    Settle(Reply<Chained>, Result<Chained>),
    Cancel(Reply<TaskRecord>, Result<TaskRecord>),
    Cleanup(Reply<CleanupReport>, Result<CleanupReport>),
    Record(Reply<TaskRecord>, Result<TaskRecord>),
    Page(Reply<Page>, Result<Page>),
    Count(Reply<u64>, Result<u64>),
    Report(Reply<SettleReport>, Result<SettleReport>),
    Taken(
        Reply<Vec<(ReadyTask, StoredTask)>>,
        Result<Vec<(ReadyTask, StoredTask)>>,
    ),
    None,
}

impl Answer {
    /// How many requests this answer is likely to cause at once: a producer's next enqueue, a
    /// settlement for each claimed task.
    fn follow_ups(&self) -> usize {
        match self {
            Answer::Enqueue(_, _) => 1,
            Answer::Claim(_, Ok(claimed)) => claimed.len(),
            Answer::Settle(_, Ok(chained)) => chained.claimed.len(),
            _ => 0,
        }
    }

    fn send(self) {
        // A closed reply channel means the caller stopped waiting; the change is committed
        // regardless, exactly as if the answer had been read.
        match self {
            Answer::Enqueue(r, v) => drop(r.send(v)),
            Answer::Claim(r, v) => drop(r.send(v)),
            Answer::Settle(r, v) => drop(r.send(v)),
            Answer::Cancel(r, v) => drop(r.send(v)),
            Answer::Cleanup(r, v) => drop(r.send(v)),
            Answer::Record(r, v) => drop(r.send(v)),
            Answer::Page(r, v) => drop(r.send(v)),
            Answer::Count(r, v) => drop(r.send(v)),
            Answer::Report(r, v) => drop(r.send(v)),
            Answer::Taken(r, v) => drop(r.send(v)),
            Answer::None => {}
        }
    }

    fn fail(self, error: &dyn Fn() -> Error) {
        match self {
            Answer::Enqueue(r, _) => drop(r.send(Err(error()))),
            Answer::Claim(r, _) => drop(r.send(Err(error()))),
            Answer::Settle(r, _) => drop(r.send(Err(error()))),
            Answer::Cancel(r, _) => drop(r.send(Err(error()))),
            Answer::Cleanup(r, _) => drop(r.send(Err(error()))),
            Answer::Record(r, _) => drop(r.send(Err(error()))),
            Answer::Page(r, _) => drop(r.send(Err(error()))),
            Answer::Count(r, _) => drop(r.send(Err(error()))),
            Answer::Report(r, _) => drop(r.send(Err(error()))),
            Answer::Taken(r, _) => drop(r.send(Err(error()))),
            Answer::None => {}
        }
    }
}

fn fail_command(command: Command, error: &dyn Fn() -> Error) {
    match command {
        Command::Enqueue { reply, .. } => drop(reply.send(Err(error()))),
        Command::Claim { reply, .. } => drop(reply.send(Err(error()))),
        Command::Settle { reply, .. } => drop(reply.send(Err(error()))),
        Command::Cancel { reply, .. } => drop(reply.send(Err(error()))),
        Command::Cleanup { reply, .. } => drop(reply.send(Err(error()))),
        Command::Retry { reply, .. } => drop(reply.send(Err(error()))),
        Command::RetryFailed { reply, .. } | Command::Purge { reply, .. } => {
            drop(reply.send(Err(error())));
        }
        Command::Forwarded { reply, .. } => drop(reply.send(Err(error()))),
        Command::RecordRun { reply, .. } => drop(reply.send(Err(error()))),
        Command::TakeForForwarding { reply, .. } => drop(reply.send(Err(error()))),
        Command::Expire { .. } | Command::Untake { .. } => {}
    }
}

/// Settings the writer applies.
#[derive(Clone, Debug)]
pub(crate) struct WriterSettings {
    pub(crate) retry: RetryPolicy,
    pub(crate) max_pending: Option<u64>,
    /// Free bytes below which enqueues are refused (0: never).
    pub(crate) min_free_bytes: u64,
}

/// Poisons the engine if the writer thread unwinds, so callers get an error instead of a
/// silent hang (fjall's `PoisonDart`), then tells waiting callers the writer has ended.
struct PoisonOnPanic<'a>(&'a Shared);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("the writer thread panicked".into());
        }
        self.0.writer_exit.mark();
    }
}

/// Unwraps a command's result; on a storage failure (which aborts the whole batch) the reply is
/// kept in the batch's answers before returning the error, so the caller is answered with the
/// batch's failure after the engine is poisoned, instead of seeing its reply dropped (which
/// reads as "engine is shut down").
macro_rules! keep_reply {
    ($batch:expr, $variant:path, $reply:ident, $result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => {
                $batch.answers.push($variant(
                    $reply,
                    Err(Error::Internal("the batch was aborted".into())),
                ));
                return Err(error);
            }
        }
    };
}

pub(crate) struct Writer {
    pub(crate) store: Arc<Store>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) next_seq: u64,
    pub(crate) waiting: u64,
    pub(crate) settings: WriterSettings,
    /// Requests expected right after the last batch: those already queued when it was
    /// answered, plus those its answers are expected to cause.
    pub(crate) follow_ups: usize,
    /// When the last batch was answered; `None` once a batch has used it.
    pub(crate) answered_at: Option<std::time::Instant>,
    /// How long the last commit took.
    pub(crate) last_commit: Duration,
    /// When a lazy (non-durable) commit is waiting for a durable one: since when.
    pub(crate) unflushed_since: Option<std::time::Instant>,
    /// Tasks the RabbitMQ forwarder is publishing (read, not yet confirmed or given back):
    /// cancelling one is refused, since its message may already be in RabbitMQ.
    pub(crate) forwarding: std::collections::HashSet<TaskId>,
}

/// The per-transaction scratch state.
struct Batch {
    now: Millis,
    effects: Vec<Effect>,
    answers: Vec<Answer>,
    audience: bool,
    /// Completions per queue, for the engine's throughput figures.
    completed: std::collections::HashMap<String, u64>,
    /// The store's free space, probed once per batch by its first enqueue.
    free_bytes: Option<Option<u64>>,
}

impl Writer {
    pub(crate) fn run(mut self, commands: &crossbeam_channel::Receiver<Command>) {
        let shared = Arc::clone(&self.shared);
        let _guard = PoisonOnPanic(&shared);
        loop {
            let received = match self.unflushed_since {
                None => commands.recv().map_err(|_| ()),
                Some(since) => match commands.recv_deadline(since + LAZY_FLUSH) {
                    Ok(command) => Ok(command),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        self.flush();
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(()),
                },
            };
            let Ok(first) = received else { break };
            let mut pending = Vec::with_capacity(64);
            pending.push(first);
            while pending.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => pending.push(command),
                    Err(_) => break,
                }
            }
            self.gather_follow_ups(commands, &mut pending);
            if let Some(reason) = self.shared.poisoned() {
                for command in pending {
                    fail_command(command, &|| Error::Poisoned {
                        reason: reason.clone(),
                    });
                }
                continue;
            }
            self.apply_batch(pending);
            // What was already queued when the answers went out is not a follow-up.
            self.follow_ups += commands.len();
        }
        // Closing: what was committed lazily reaches the disk before the file closes.
        self.flush();
    }

    /// Makes lazily committed changes durable with an empty durable commit.
    fn flush(&mut self) {
        if self.unflushed_since.take().is_none() || self.shared.poisoned().is_some() {
            return;
        }
        if let Err(error) = self.store.write(|_| Ok(())) {
            let reason = error.to_string();
            tracing::error!(error = %reason, "commit failed; the engine refuses writes until reopened");
            self.shared.poison(reason);
            self.reopen_for_reads();
        }
    }

    /// After a failed commit redb refuses every access, reads included, until its database is
    /// reopened. The engine is poisoned first, so nothing writes to the reopened database; it
    /// serves reads of what the file holds (a full disk must not stop reads).
    fn reopen_for_reads(&self) {
        if let Err(error) = self.store.reopen() {
            tracing::error!(%error, "cannot reopen the store for reads after a failed commit");
        }
    }

    /// Waits briefly for the requests the previous batch's answers are about to cause.
    ///
    /// Workers answered by a commit come straight back (a finished task's settlement, a
    /// producer's next enqueue) a few dozen microseconds later. Committing without them splits
    /// the busy callers into two groups that alternate between commits, so each waits for two
    /// fsyncs per operation. Waiting up to half a commit's duration for them, and only right
    /// after a commit that answered them, lets one fsync serve them all; an idle engine never
    /// waits, so a lone request still costs one fsync.
    fn gather_follow_ups(
        &mut self,
        commands: &crossbeam_channel::Receiver<Command>,
        pending: &mut Vec<Command>,
    ) {
        let Some(answered_at) = self.answered_at.take() else {
            return;
        };
        let window = (self.last_commit / 2).clamp(MIN_GATHER, MAX_GATHER);
        let deadline = answered_at + window;
        while pending.len() < self.follow_ups.min(MAX_BATCH) {
            match commands.recv_deadline(deadline) {
                Ok(command) => pending.push(command),
                Err(_) => break,
            }
        }
    }

    fn apply_batch(&mut self, commands: Vec<Command>) {
        let mut batch = Batch {
            now: self.shared.clock.now_ms(),
            effects: Vec::new(),
            answers: Vec::with_capacity(commands.len()),
            audience: self.shared.events.has_audience(),
            completed: std::collections::HashMap::new(),
            free_bytes: None,
        };
        let seq_before = self.next_seq;
        let waiting_before = self.waiting;
        let store = Arc::clone(&self.store);
        let started = std::time::Instant::now();
        // A batch of lazy commands only skips the fsync, unless lazy changes have waited
        // long enough: then this commit makes them durable too.
        let lazy = commands.iter().all(Command::is_lazy)
            && self
                .unflushed_since
                .is_none_or(|since| since.elapsed() < LAZY_FLUSH);
        // Commands not applied when a storage failure aborts the batch (or the transaction
        // never opened) stay here, to be answered with that failure rather than dropped.
        let mut unapplied = commands;
        let committed = store.write_with(!lazy, |tables| {
            let mut commands = std::mem::take(&mut unapplied).into_iter();
            while let Some(command) = commands.next() {
                if let Err(error) = self.apply(tables, command, &mut batch) {
                    unapplied.extend(commands);
                    return Err(error);
                }
            }
            Ok(())
        });
        match committed {
            Ok(()) => {
                if lazy {
                    self.unflushed_since.get_or_insert(started);
                } else {
                    self.unflushed_since = None;
                }
                self.last_commit = started.elapsed();
                self.publish(batch.effects, batch.now);
                if !batch.completed.is_empty() {
                    self.shared.completions.record(batch.now, &batch.completed);
                }
                self.follow_ups = batch.answers.iter().map(Answer::follow_ups).sum();
                for answer in batch.answers {
                    answer.send();
                }
                self.answered_at = Some(std::time::Instant::now());
            }
            Err(error) => {
                self.next_seq = seq_before;
                self.waiting = waiting_before;
                let reason = error.to_string();
                tracing::error!(error = %reason, "commit failed; the engine refuses writes until reopened");
                self.shared.poison(reason.clone());
                self.reopen_for_reads();
                // The batch's own callers learn why their commit failed: a full disk is
                // something they can act on, and must not read as a bug. Later writes see
                // the poisoning, which names the same cause.
                let answer_error = || match &error {
                    StoreError::Full {
                        path,
                        free_bytes,
                        needed_bytes,
                    } => Error::Store(StoreError::Full {
                        path: path.clone(),
                        free_bytes: *free_bytes,
                        needed_bytes: *needed_bytes,
                    }),
                    _ => Error::Poisoned {
                        reason: reason.clone(),
                    },
                };
                for answer in batch.answers {
                    answer.fail(&answer_error);
                }
                for command in unapplied {
                    fail_command(command, &answer_error);
                }
            }
        }
    }

    fn publish(&self, effects: Vec<Effect>, now: Millis) {
        let mut woke = false;
        let mut poke = false;
        for effect in effects {
            match effect {
                Effect::Wait { queue, order, id } => {
                    if order.due_at <= now {
                        self.shared.ready.push(&queue, order, id);
                        woke = true;
                    } else {
                        self.shared
                            .delayed
                            .insert(self.shared.ready.intern(&queue), order, id);
                        poke = true;
                    }
                }
                Effect::Unwait { queue, order } => {
                    self.shared
                        .delayed
                        .withdraw(&self.shared.ready, &queue, order);
                }
                Effect::Lease { id, attempt, until } => {
                    self.shared.leases.grant(id, attempt, until)
                }
                Effect::Unlease { id } => self.shared.leases.release(id),
                Effect::Emit(event) => self.shared.events.emit(|| event),
            }
        }
        if woke {
            self.shared.work.notify_waiters();
        }
        if poke {
            self.shared.timer.poke();
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Applies one command. An `Err` is a storage failure that aborts the whole transaction;
    /// a problem with the command alone becomes its answer.
    /// Deletes finished tasks past their retention, at most `limit` in all.
    fn cleanup(
        tables: &mut WriteTables<'_>,
        completed_before: Millis,
        failed_before: Millis,
        limit: usize,
    ) -> Result<CleanupReport, StoreError> {
        let mut report = CleanupReport {
            completed: tables
                .delete_finished_before(TaskStatus::Completed, completed_before, limit)?
                .len() as u64,
            ..CleanupReport::default()
        };
        let room = limit.saturating_sub(usize::try_from(report.completed).unwrap_or(usize::MAX));
        report.failed = tables
            .delete_finished_before(TaskStatus::Failed, failed_before, room)?
            .len() as u64;
        let room = room.saturating_sub(usize::try_from(report.failed).unwrap_or(usize::MAX));
        report.cancelled = tables
            .delete_finished_before(TaskStatus::Cancelled, failed_before, room)?
            .len() as u64;
        // FORWARDED records (rabbitmq mode) follow the COMPLETED retention and are
        // counted with them: both are tasks whose local life ended well.
        let room = room.saturating_sub(usize::try_from(report.cancelled).unwrap_or(usize::MAX));
        report.completed += tables
            .delete_finished_before(TaskStatus::Forwarded, completed_before, room)?
            .len() as u64;
        Ok(report)
    }

    fn apply(
        &mut self,
        tables: &mut WriteTables<'_>,
        command: Command,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        match command {
            Command::Enqueue { tasks, reply } => {
                let result = keep_reply!(
                    batch,
                    Answer::Enqueue,
                    reply,
                    self.enqueue(tables, tasks, batch)
                );
                batch.answers.push(Answer::Enqueue(reply, result));
            }
            Command::Claim {
                tasks,
                lease_until,
                reply,
            } => {
                let result = keep_reply!(
                    batch,
                    Answer::Claim,
                    reply,
                    self.claim(tables, tasks, lease_until, batch)
                );
                batch.answers.push(Answer::Claim(reply, Ok(result)));
            }
            Command::Settle {
                settlement,
                next,
                lease_until,
                reply,
            } => {
                let settled = keep_reply!(
                    batch,
                    Answer::Settle,
                    reply,
                    self.settle(tables, &settlement, batch)
                );
                let claimed = if next.is_empty() {
                    Vec::new()
                } else {
                    keep_reply!(
                        batch,
                        Answer::Settle,
                        reply,
                        self.claim(tables, next, lease_until, batch)
                    )
                };
                batch
                    .answers
                    .push(Answer::Settle(reply, Ok(Chained { settled, claimed })));
            }
            Command::Cancel { id, reply } => {
                let result =
                    keep_reply!(batch, Answer::Cancel, reply, self.cancel(tables, id, batch));
                batch.answers.push(Answer::Cancel(reply, result));
            }
            Command::Cleanup {
                completed_before,
                failed_before,
                limit,
                reply,
            } => {
                let report = keep_reply!(
                    batch,
                    Answer::Cleanup,
                    reply,
                    Self::cleanup(tables, completed_before, failed_before, limit)
                );
                batch.answers.push(Answer::Cleanup(reply, Ok(report)));
            }
            Command::Retry { id, reply } => {
                let result =
                    keep_reply!(batch, Answer::Record, reply, self.retry(tables, id, batch));
                batch.answers.push(Answer::Record(reply, result));
            }
            Command::RetryFailed {
                queue,
                after,
                limit,
                reply,
            } => {
                let result = keep_reply!(
                    batch,
                    Answer::Page,
                    reply,
                    self.retry_failed(tables, queue.as_deref(), after.as_deref(), limit, batch)
                );
                batch.answers.push(Answer::Page(reply, Ok(result)));
            }
            Command::Purge {
                queue,
                status,
                phase,
                after,
                limit,
                reply,
            } => {
                let result = keep_reply!(
                    batch,
                    Answer::Page,
                    reply,
                    self.purge(tables, &queue, status, phase, after, limit, batch)
                );
                batch.answers.push(Answer::Page(reply, Ok(result)));
            }
            Command::Forwarded { tasks, at, reply } => {
                let marked = keep_reply!(
                    batch,
                    Answer::Count,
                    reply,
                    self.forwarded(tables, tasks, at, batch)
                );
                batch.answers.push(Answer::Count(reply, Ok(marked)));
            }
            Command::TakeForForwarding { tasks, reply } => {
                let taken = keep_reply!(
                    batch,
                    Answer::Taken,
                    reply,
                    self.take_for_forwarding(tables, tasks)
                );
                batch.answers.push(Answer::Taken(reply, Ok(taken)));
            }
            Command::Untake { tasks, requeue } => {
                for task in &tasks {
                    self.forwarding.remove(&task.id);
                }
                if requeue {
                    // Back on the heap only now that they are no longer marked: a forwarder
                    // that takes them again marks them again, after this.
                    for task in tasks {
                        self.shared.ready.push(&task.queue, task.order, task.id);
                    }
                    self.shared.work.notify_waiters();
                }
            }
            Command::RecordRun { run, reply, .. } => {
                let result = keep_reply!(
                    batch,
                    Answer::Report,
                    reply,
                    self.record_run(tables, *run, batch)
                );
                batch.answers.push(Answer::Report(reply, result));
            }
            Command::Expire { id, attempt } => {
                let failure = TaskFailure {
                    message: format!(
                        "the worker running attempt {attempt} stopped renewing its lease (presumed dead)"
                    ),
                    kind: FailureKind::WorkerLost,
                };
                // Swept as recovery at open does (DESIGN §2): RETRYING at once, the attempt
                // counted; the lease already made the task wait, so no backoff on top.
                let settlement = Settlement {
                    id,
                    attempt,
                    outcome: Outcome::Failed {
                        failure,
                        retry_after: Some(Duration::ZERO),
                    },
                };
                // A settlement that raced the expiry makes this stale: nothing to do then.
                if let Ok(report) = self.settle(tables, &settlement, batch)?
                    && let Some(record) = report.record
                {
                    let kind = if report.status == TaskStatus::Retrying {
                        EventKind::Retrying
                    } else {
                        EventKind::Failed
                    };
                    let mut event =
                        Event::new(kind, Arc::clone(&record), millis_to_datetime(batch.now));
                    event.error.clone_from(&record.error);
                    event.retry_at = report.retry_at.map(millis_to_datetime);
                    batch.effects.push(Effect::Emit(event));
                }
                batch.answers.push(Answer::None);
            }
        }
        Ok(())
    }

    fn snapshot(batch: &Batch, id: TaskId, task: &StoredTask) -> Option<Arc<TaskRecord>> {
        batch.audience.then(|| Arc::new(task.to_record(id)))
    }

    fn enqueue(
        &mut self,
        tables: &mut WriteTables<'_>,
        tasks: Vec<NewTask>,
        batch: &mut Batch,
    ) -> Result<Result<Vec<Queued>>, StoreError> {
        if let Some(limit) = self.settings.max_pending
            && self.waiting.saturating_add(tasks.len() as u64) > limit
        {
            return Ok(Err(Error::QueueFull { limit }));
        }
        // Refused before the disk is exhausted, so that claims and settlements (which need a
        // few copy-on-write pages each) can still commit and drain the queue; no commit is
        // attempted, so nothing is poisoned and enqueues work again once space is freed.
        let watermark = self.settings.min_free_bytes;
        if watermark > 0 {
            let store = &self.store;
            if let Some(free) = *batch.free_bytes.get_or_insert_with(|| store.free_bytes())
                && free < watermark
            {
                return Ok(Err(StoreError::Full {
                    path: store.path().to_path_buf(),
                    free_bytes: Some(free),
                    needed_bytes: Some(watermark),
                }
                .into()));
            }
        }
        // Ids come from callers (remote clients choose theirs): an id in use would overwrite
        // another task, so the whole request is refused before anything is written.
        let mut fresh = std::collections::HashSet::with_capacity(tasks.len());
        for new in &tasks {
            if !fresh.insert(new.id) || tables.contains_task(new.id)? {
                return Ok(Err(Error::invalid(
                    "id",
                    format!("task id {} is already in use", new.id),
                )));
            }
        }
        let mut ids = Vec::with_capacity(tasks.len());
        for new in tasks {
            let due_at = new.run_at.unwrap_or(batch.now);
            let seq = self.take_seq();
            let task = StoredTask {
                name: new.name,
                queue: new.queue,
                priority: new.priority,
                payload: new.payload.as_str().to_owned(),
                status: TaskStatus::Pending,
                attempts: 0,
                max_retries: new.max_retries,
                timeout_ms: new.timeout.map(duration_ms),
                retry_delay_ms: new.retry_delay.map(duration_ms),
                created_at: batch.now,
                scheduled_at: due_at,
                due_at,
                seq,
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
            };
            let order = ReadyOrder::new(task.priority, due_at, seq);
            tables.put_task(new.id, &task, None)?;
            tables.insert_waiting(&task.queue, order, new.id)?;
            self.waiting += 1;
            ids.push((new.id, Self::snapshot(batch, new.id, &task)));
            batch.effects.push(Effect::Wait {
                queue: task.queue,
                order,
                id: new.id,
            });
        }
        Ok(Ok(ids))
    }

    fn claim(
        &mut self,
        tables: &mut WriteTables<'_>,
        tasks: Vec<ReadyTask>,
        lease_until: Millis,
        batch: &mut Batch,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut claimed = Vec::with_capacity(tasks.len());
        for ready in tasks {
            let mut task = match tables.get_task(ready.id) {
                Ok(Some(task)) => task,
                Ok(None) => continue,
                Err(StoreError::CorruptRecord { id, detail }) => {
                    tracing::error!(task.id = %id, %detail, "skipping a task whose record is corrupt");
                    continue;
                }
                Err(other) => return Err(other),
            };
            // The heap is a cache: an entry for a task that was cancelled or re-queued under
            // another order since it was pushed is stale and simply dropped.
            if !task.status.is_waiting() || task.seq != ready.order.seq {
                continue;
            }
            tables.remove_waiting(&task.queue, ready.order)?;
            self.waiting = self.waiting.saturating_sub(1);
            let previous = task.status;
            task.status = TaskStatus::Running;
            task.attempts += 1;
            task.started_at = Some(batch.now);
            tables.put_task(ready.id, &task, Some(previous))?;
            tables.insert_lease(ready.id, task.attempts)?;
            batch.effects.push(Effect::Lease {
                id: ready.id,
                attempt: task.attempts,
                until: lease_until,
            });
            claimed.push(task.to_record(ready.id));
        }
        Ok(claimed)
    }

    fn settle(
        &mut self,
        tables: &mut WriteTables<'_>,
        settlement: &Settlement,
        batch: &mut Batch,
    ) -> Result<Result<SettleReport>, StoreError> {
        let id = settlement.id;
        let mut task = match load(tables, id)? {
            Ok(task) => task,
            Err(error) => return Ok(Err(error)),
        };
        if task.status != TaskStatus::Running || task.attempts != settlement.attempt {
            return Ok(Err(Error::StaleAttempt {
                id,
                attempt: settlement.attempt,
                current: task.attempts,
                status: task.status,
            }));
        }
        let retry_at = match &settlement.outcome {
            Outcome::Released => {
                task.attempts -= 1;
                task.started_at = None;
                self.requeue(tables, id, &mut task, TaskStatus::Pending, batch.now, batch)?;
                None
            }
            outcome => self.conclude(tables, id, &mut task, outcome, batch)?,
        };
        tables.put_task(id, &task, Some(TaskStatus::Running))?;
        tables.remove_lease(id)?;
        batch.effects.push(Effect::Unlease { id });
        Ok(Ok(SettleReport {
            status: task.status,
            retry_at,
            record: Self::snapshot(batch, id, &task),
        }))
    }

    /// Applies a Completed or Failed outcome to a task that was running: COMPLETED with its
    /// result, RETRYING in the waiting index (returning the retry time), or FAILED.
    fn conclude(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        task: &mut StoredTask,
        outcome: &Outcome,
        batch: &mut Batch,
    ) -> Result<Option<Millis>, StoreError> {
        match outcome {
            Outcome::Completed { result } => {
                task.status = TaskStatus::Completed;
                *batch.completed.entry(task.queue.clone()).or_insert(0) += 1;
                task.result = Some(result_text(result));
                task.error = None;
                task.finished_at = Some(batch.now);
                tables.insert_finished(TaskStatus::Completed, batch.now, id)?;
                Ok(None)
            }
            Outcome::Failed {
                failure,
                retry_after,
            } => {
                task.error = Some(StoredFailure {
                    message: failure.message.clone(),
                    kind: failure.kind,
                });
                if failure.kind.is_retryable() && task.attempts <= task.max_retries {
                    let policy = RetryPolicy {
                        base: task
                            .retry_delay_ms
                            .map_or(self.settings.retry.base, Duration::from_millis),
                        ..self.settings.retry
                    };
                    let delay = retry_after.unwrap_or_else(|| policy.jittered_delay(task.attempts));
                    let due_at = batch
                        .now
                        .saturating_add(duration_ms(delay).try_into().unwrap_or(i64::MAX));
                    self.requeue(tables, id, task, TaskStatus::Retrying, due_at, batch)?;
                    Ok(Some(due_at))
                } else {
                    task.status = TaskStatus::Failed;
                    task.finished_at = Some(batch.now);
                    tables.insert_finished(TaskStatus::Failed, batch.now, id)?;
                    Ok(None)
                }
            }
            // Settle handles a release itself; a release is never recorded as a run.
            Outcome::Released => Ok(None),
        }
    }

    /// Marks confirmed tasks FORWARDED; returns how many were. A task whose record moved on
    /// since it was taken (cancelled, or already run by a worker sharing this store) is left
    /// as it is.
    fn forwarded(
        &mut self,
        tables: &mut WriteTables<'_>,
        tasks: Vec<(TaskId, ReadyOrder)>,
        at: Millis,
        batch: &mut Batch,
    ) -> Result<u64, StoreError> {
        let mut marked = 0;
        for (id, order) in tasks {
            self.forwarding.remove(&id);
            let mut task = match tables.get_task(id) {
                Ok(Some(task)) => task,
                Ok(None) | Err(StoreError::CorruptRecord { .. }) => continue,
                Err(other) => return Err(other),
            };
            if !task.status.is_waiting() || task.seq != order.seq {
                continue;
            }
            tables.remove_waiting(&task.queue, order)?;
            self.waiting = self.waiting.saturating_sub(1);
            let previous = task.status;
            task.status = TaskStatus::Forwarded;
            task.finished_at = Some(at);
            tables.put_task(id, &task, Some(previous))?;
            tables.insert_finished(TaskStatus::Forwarded, at, id)?;
            // Taken from the heap already; this only matters if it was put back meanwhile.
            batch.effects.push(Effect::Unwait {
                queue: task.queue.clone(),
                order,
            });
            marked += 1;
        }
        Ok(marked)
    }

    /// Records a finished run of a task delivered by RabbitMQ. The record is created, or
    /// replaced when this store already has the task (it queued it, or ran it before), with
    /// its old index entries removed first so counts and indexes stay exact.
    fn record_run(
        &mut self,
        tables: &mut WriteTables<'_>,
        run: RunRecord,
        batch: &mut Batch,
    ) -> Result<Result<SettleReport>, StoreError> {
        let id = run.id;
        let existing = match tables.get_task(id) {
            Ok(existing) => existing,
            Err(StoreError::CorruptRecord { id, detail }) => {
                tracing::error!(task.id = %id, %detail, "replacing a corrupt record with the run delivered by RabbitMQ");
                None
            }
            Err(other) => return Err(other),
        };
        if let Some(old) = &existing {
            if old.status.is_waiting() {
                let order = ReadyOrder::new(old.priority, old.due_at, old.seq);
                tables.remove_waiting(&old.queue, order)?;
                self.waiting = self.waiting.saturating_sub(1);
                batch.effects.push(Effect::Unwait {
                    queue: old.queue.clone(),
                    order,
                });
            } else if old.status == TaskStatus::Running {
                tables.remove_lease(id)?;
                batch.effects.push(Effect::Unlease { id });
            } else if let Some(finished_at) = old.finished_at {
                tables.remove_finished(old.status, finished_at, id)?;
            }
            tables.delete_task(id, old)?;
        }
        let seq = self.take_seq();
        let mut task = StoredTask {
            name: run.name,
            queue: run.queue,
            priority: run.priority,
            payload: run.payload,
            status: TaskStatus::Running,
            attempts: run.attempt,
            max_retries: run.max_retries,
            timeout_ms: run.timeout_ms,
            retry_delay_ms: run.retry_delay_ms,
            created_at: existing
                .as_ref()
                .map_or(run.created_at, |old| old.created_at),
            scheduled_at: run.scheduled_at,
            due_at: run.started_at,
            seq,
            started_at: Some(run.started_at),
            finished_at: None,
            result: None,
            error: None,
        };
        let retry_at = self.conclude(tables, id, &mut task, &run.outcome, batch)?;
        tables.put_task(id, &task, None)?;
        Ok(Ok(SettleReport {
            status: task.status,
            retry_at,
            record: Self::snapshot(batch, id, &task),
        }))
    }

    fn requeue(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        task: &mut StoredTask,
        status: TaskStatus,
        due_at: Millis,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        task.status = status;
        task.due_at = due_at;
        task.seq = self.take_seq();
        let order = ReadyOrder::new(task.priority, due_at, task.seq);
        tables.insert_waiting(&task.queue, order, id)?;
        self.waiting += 1;
        batch.effects.push(Effect::Wait {
            queue: task.queue.clone(),
            order,
            id,
        });
        Ok(())
    }

    fn cancel(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        batch: &mut Batch,
    ) -> Result<Result<TaskRecord>, StoreError> {
        let mut task = match load(tables, id)? {
            Ok(task) => task,
            Err(error) => return Ok(Err(error)),
        };
        if !task.status.is_waiting() {
            return Ok(Err(Error::WrongState {
                id,
                status: task.status,
                operation: "cancel",
                allowed: "PENDING or RETRYING tasks",
            }));
        }
        if self.forwarding.contains(&id) {
            return Ok(Err(Error::WrongState {
                id,
                status: task.status,
                operation: "cancel",
                allowed: "tasks that are not being published to RabbitMQ at this moment \
                          (try again: within seconds it is FORWARDED, or back in the outbox \
                          and cancellable)",
            }));
        }
        let order = ReadyOrder::new(task.priority, task.due_at, task.seq);
        tables.remove_waiting(&task.queue, order)?;
        self.waiting = self.waiting.saturating_sub(1);
        let previous = task.status;
        task.status = TaskStatus::Cancelled;
        task.finished_at = Some(batch.now);
        tables.put_task(id, &task, Some(previous))?;
        tables.insert_finished(TaskStatus::Cancelled, batch.now, id)?;
        batch.effects.push(Effect::Unwait {
            queue: task.queue.clone(),
            order,
        });
        Ok(Ok(task.to_record(id)))
    }
}

impl Writer {
    /// See [`Command::TakeForForwarding`]. Tasks cancelled (or otherwise moved on) since they
    /// were taken are dropped; a damaged record is logged and dropped.
    fn take_for_forwarding(
        &mut self,
        tables: &WriteTables<'_>,
        tasks: Vec<ReadyTask>,
    ) -> Result<Vec<(ReadyTask, StoredTask)>, StoreError> {
        let mut found = Vec::with_capacity(tasks.len());
        for task in tasks {
            match load(tables, task.id)? {
                Ok(record) if record.status.is_waiting() && record.seq == task.order.seq => {
                    self.forwarding.insert(task.id);
                    found.push((task, record));
                }
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(error) => {
                    tracing::error!(task.id = %task.id, %error, "cannot forward a task whose record is corrupt");
                }
            }
        }
        Ok(found)
    }

    fn retry(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        batch: &mut Batch,
    ) -> Result<Result<TaskRecord>, StoreError> {
        let mut task = match load(tables, id)? {
            Ok(task) => task,
            Err(error) => return Ok(Err(error)),
        };
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Ok(Err(Error::WrongState {
                id,
                status: task.status,
                operation: "retry",
                allowed: "FAILED or CANCELLED tasks",
            }));
        }
        let previous = task.status;
        if let Some(finished_at) = task.finished_at {
            tables.remove_finished(previous, finished_at, id)?;
        }
        task.attempts = 0;
        task.error = None;
        task.result = None;
        task.started_at = None;
        task.finished_at = None;
        self.requeue(tables, id, &mut task, TaskStatus::Pending, batch.now, batch)?;
        tables.put_task(id, &task, Some(previous))?;
        Ok(Ok(task.to_record(id)))
    }

    fn retry_failed(
        &mut self,
        tables: &mut WriteTables<'_>,
        queue: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<Page, StoreError> {
        let page = tables.finished_page(TaskStatus::Failed, after, limit)?;
        let mut result = Page {
            changed: 0,
            next: (page.len() == limit)
                .then(|| page.last().map(|(key, _)| (0, key.clone())))
                .flatten(),
        };
        for (_, id) in page {
            let in_queue = match tables.get_task(id) {
                Ok(Some(task)) => queue.is_none_or(|q| q == task.queue),
                Ok(None) | Err(StoreError::CorruptRecord { .. }) => false,
                Err(other) => return Err(other),
            };
            if in_queue && self.retry(tables, id, batch)?.is_ok() {
                result.changed += 1;
            }
        }
        Ok(result)
    }

    #[allow(clippy::too_many_arguments)]
    fn purge(
        &mut self,
        tables: &mut WriteTables<'_>,
        queue: &str,
        status: Option<TaskStatus>,
        mut phase: usize,
        mut after: Option<Vec<u8>>,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<Page, StoreError> {
        let mut changed = 0;
        let mut budget = limit;
        while phase < PURGE_PHASES.len() && budget > 0 {
            let phase_status = PURGE_PHASES[phase];
            let applies = match (phase_status, status) {
                (None, None) => true,
                (None, Some(wanted)) => wanted.is_waiting(),
                (Some(finished), wanted) => wanted.is_none_or(|w| w == finished),
            };
            if !applies {
                phase += 1;
                after = None;
                continue;
            }
            let page = match phase_status {
                None => tables.waiting_page(queue, after.as_deref(), budget)?,
                Some(finished) => tables.finished_page(finished, after.as_deref(), budget)?,
            };
            let full = page.len() == budget;
            budget -= page.len();
            after = page.last().map(|(key, _)| key.clone());
            for (_, id) in page {
                let task = match tables.get_task(id) {
                    Ok(Some(task)) => task,
                    Ok(None) | Err(StoreError::CorruptRecord { .. }) => continue,
                    Err(other) => return Err(other),
                };
                if task.queue != queue || status.is_some_and(|s| s != task.status) {
                    continue;
                }
                // Being published to RabbitMQ (see `forwarding`): its message may be there
                // already, so it is left to become FORWARDED rather than reported purged.
                if self.forwarding.contains(&id) {
                    continue;
                }
                if task.status.is_waiting() {
                    self.waiting = self.waiting.saturating_sub(1);
                    batch.effects.push(Effect::Unwait {
                        queue: task.queue.clone(),
                        order: ReadyOrder::new(task.priority, task.due_at, task.seq),
                    });
                }
                tables.purge_task(id, &task)?;
                changed += 1;
            }
            if !full {
                phase += 1;
                after = None;
            }
        }
        let next = (phase < PURGE_PHASES.len()).then(|| (phase, after.unwrap_or_default()));
        Ok(Page { changed, next })
    }
}

/// The task `id` for a command: a missing or corrupt record is that command's error, any other
/// storage failure aborts the whole transaction.
fn load(tables: &WriteTables<'_>, id: TaskId) -> Result<Result<StoredTask>, StoreError> {
    match tables.get_task(id) {
        Ok(Some(task)) => Ok(Ok(task)),
        Ok(None) => Ok(Err(Error::NotFound(id))),
        Err(error @ StoreError::CorruptRecord { .. }) => Ok(Err(error.into())),
        Err(other) => Err(other),
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn result_text(result: &Value) -> String {
    result.to_string()
}

impl Shared {
    pub(crate) fn poison(&self, reason: String) {
        let mut slot = self
            .poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.poisoned_flag.store(true, Ordering::SeqCst);
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        if !self.poisoned_flag.load(Ordering::SeqCst) {
            return None;
        }
        self.poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
