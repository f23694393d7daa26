//! The writer thread: the only owner of write transactions. It drains every waiting command
//! into one transaction, commits it durably (one fsync for the whole batch), then publishes the
//! changes to the in-memory structures and answers each command. What a command does to a task
//! is a move of the state machine (`crate::task::lifecycle`); this module applies the moves'
//! effects: rows in the transaction, the in-memory structures after the commit.

mod admin;
mod batch;
mod command;
mod heal;
mod moves;
mod outbox;
mod pipeline;
mod step;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Shared;
use crate::broker::Chained;
use crate::clock::Millis;
use crate::events::Event;
use crate::store::{Store, StoreError, WriteTables};

use crate::task::{ReadyOrder, RetryPolicy, StoredTask, TaskId, TaskRecord};
use crate::{Error, Result};

pub(super) use batch::Batch;
use command::Answer;
pub(crate) use command::{Command, LAZY_FLUSH, Page, RunRecord, RunRecorded};
pub(super) use step::write_step;

/// The most commands applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Bounds of the wait for follow-up requests after a commit (see `gather_follow_ups`).
const MIN_GATHER: Duration = Duration::from_micros(50);
const MAX_GATHER: Duration = Duration::from_millis(2);

/// How long an idle writer keeps a transaction carrying logged batches open (`store/held.rs`)
/// for the next batch, which then commits it while the log syncs, instead of committing it at
/// once on the way of that batch. A read waiting for it in that time asks the writer to commit
/// at its next wake-up, so a read waits at most this long for an idle writer.
const HELD_IDLE: Duration = Duration::from_micros(300);

/// A change to the in-memory structures, made only after the commit that backs it.
pub(super) enum Publish {
    Wait {
        queue: String,
        order: ReadyOrder,
        id: TaskId,
    },
    Withdraw {
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
    /// The task reached its outcome (or was deleted): its waiters look again.
    Outcome(TaskId),
    /// A queue was paused or resumed.
    Paused {
        queue: String,
        paused: bool,
    },
    /// The earliest fire time of the armed schedules, as committed.
    ScheduleAlarm(Option<Millis>),
    /// A task claimed in the commit that made it ready, for the claim that waited for it.
    HandOff {
        deliver: super::handoff::HandOffSender,
        record: Box<crate::task::TaskRecord>,
    },
    /// A limited queue's RUNNING count changed (see `limits`).
    Running {
        queue: String,
        running: u64,
    },
}

/// Settings the writer applies.
#[derive(Clone, Debug)]
pub(crate) struct WriterSettings {
    pub(crate) retry: RetryPolicy,
    pub(crate) max_pending: Option<u64>,
    /// Free bytes below which enqueues are refused (0: never).
    pub(crate) min_free_bytes: u64,
    /// After a failed commit, reopen the store by itself and accept writes again once the
    /// disk works (`heal`); off, the engine refuses writes until it is reopened.
    pub(crate) self_heal: bool,
    /// How long a claim's lease lasts, in milliseconds.
    pub(crate) lease_ms: i64,
}

/// Poisons the engine if the writer thread unwinds, so callers get an error instead of a
/// silent hang (fjall's `PoisonDart`), then tells waiting callers the writer has ended.
struct PoisonOnPanic<'a>(&'a Shared);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison("the writer thread panicked".into(), false);
        }
        self.0.writer_exit.mark();
    }
}

/// Unwraps a command's result; on a storage failure (which aborts the whole batch) the reply is
/// kept in the batch's answers before returning the error, so the caller is answered with the
/// batch's failure after the engine is poisoned, instead of seeing its reply dropped (which
/// reads as "engine is shut down").
macro_rules! keep_reply {
    ($batch:expr, $reply:ident, $result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => {
                $batch.answers.push(Answer::failed($reply));
                return Err(error);
            }
        }
    };
}

mod schedules;
pub(in crate::broker::local) use schedules::sync_config;
pub(crate) use schedules::{NamedSchedule, ScheduleCommand};

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
    /// When the idle writer commits the transaction it holds (`HELD_IDLE`).
    pub(crate) held_commit_at: Option<std::time::Instant>,
    /// Tasks the RabbitMQ forwarder is publishing (read, not yet confirmed or given back):
    /// cancelling one is refused, since its message may already be in RabbitMQ.
    pub(crate) forwarding: std::collections::HashSet<TaskId>,
    /// The attempt to heal after a failed commit, while one is planned.
    pub(crate) healing: Option<heal::Healing>,
    /// The metrics' instruments by queue and task name (`None`: metrics off).
    pub(crate) instruments: Option<crate::metrics::InstrumentCache>,
    /// Batches committed ahead of their log sync, and the thread that syncs the log.
    pub(crate) pipeline: pipeline::Pipeline,
}

impl Writer {
    pub(crate) fn run(mut self, commands: &crossbeam_channel::Receiver<Command>) {
        let shared = Arc::clone(&self.shared);
        let _guard = PoisonOnPanic(&shared);
        crate::store::exempt_this_thread();
        loop {
            let idle = self.pipeline.is_idle() && commands.is_empty();
            if self.store.commit_wanted() {
                self.commit_held();
            }
            if idle {
                self.checkpoint(true);
            }
            self.held_commit_at = self.held_commit_due(idle);
            let flush_at = self.unflushed_since.map(|since| since + LAZY_FLUSH);
            let deadline = [flush_at, self.heal_due_at(), self.held_commit_at]
                .into_iter()
                .flatten()
                .min();
            let first = match self.pipeline.wait(commands, deadline) {
                pipeline::Wake::Command(command) => command,
                pipeline::Wake::Synced(seq, result) => {
                    self.synced(seq, result);
                    continue;
                }
                pipeline::Wake::Deadline => {
                    self.heal_if_due();
                    if flush_at.is_some_and(|at| at <= std::time::Instant::now()) {
                        self.answer_all();
                        self.flush();
                    }
                    continue;
                }
                pipeline::Wake::Closed => break,
            };
            let mut pending = Vec::with_capacity(64);
            pending.push(first);
            while pending.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => pending.push(command),
                    Err(_) => break,
                }
            }
            // While a sync runs, what arrived goes into the next batch at once: its commit
            // overlaps the sync instead of waiting for stragglers.
            if !self.pipeline.syncing() {
                self.gather_follow_ups(commands, &mut pending);
            }
            // Under a steady stream of commands the deadline above never times out.
            self.heal_if_due();
            if self.store.checkpoint_due() {
                // A checkpoint makes every commit durable, so it waits for the log's running
                // syncs: one failing behind it must fail what it covers, not go unseen.
                self.answer_all();
                self.checkpoint(false);
            }
            if let Some(reason) = self.shared.poisoned() {
                for command in pending {
                    command.fail(self.shared.refusal(reason.clone()));
                }
                continue;
            }
            let lone = self.pipeline.is_idle()
                && commands.is_empty()
                && self.store.syncs_lone_batches_here();
            // What was already queued when the answers went out is not a follow-up; a batch
            // answered in place was answered just now, so what is queued is what it caused.
            if !self.apply_batch(pending, lone) {
                self.follow_ups += commands.len();
            }
        }
        // Closing: every batch answered, the held transaction committed (a read may wait for
        // it), and what was committed lazily reaches the disk before the file closes.
        self.answer_all();
        self.commit_held();
        self.pipeline.stop();
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
            self.shared.poison(reason, false);
            self.reopen_for_reads();
        }
    }

    /// When an idle writer is to commit the transaction it holds: `HELD_IDLE` after it went
    /// idle; committed now once that has passed. `None` while it is busy (the next batch's
    /// write commits it, or carries it on) or holds nothing.
    fn held_commit_due(&mut self, idle: bool) -> Option<std::time::Instant> {
        if !idle || !self.store.holds() {
            return None;
        }
        let now = std::time::Instant::now();
        let at = *self.held_commit_at.get_or_insert(now + HELD_IDLE);
        if at > now {
            return Some(at);
        }
        self.commit_held();
        None
    }

    /// Commits the B-tree transaction carrying logged batches, if one is held. If that fails,
    /// the batches are in the log: what its syncs cover is answered, and the engine, poisoned,
    /// reopens the store, which applies the log again before any read goes on.
    fn commit_held(&mut self) {
        if self.shared.poisoned().is_some() {
            return;
        }
        if let Err(error) = self.store.commit_held() {
            self.answer_all();
            if self.shared.poisoned().is_none() {
                self.commit_failed(&error.to_string());
            }
        }
    }

    /// Lets the store checkpoint its log (`Store::checkpoint_when`), with no sync of it
    /// running; `idle`: no request waits. A checkpoint is a durable commit of everything
    /// before it, lazy commits included.
    fn checkpoint(&mut self, idle: bool) {
        if self.shared.poisoned().is_some() {
            return;
        }
        match self.store.checkpoint_when(idle) {
            Ok(false) => {}
            Ok(true) => self.unflushed_since = None,
            Err(error) => self.commit_failed(&error.to_string()),
        }
    }

    /// After a failed commit: the engine refuses writes, serves reads from the reopened store,
    /// and plans to heal.
    fn commit_failed(&mut self, reason: &str) {
        tracing::error!(error = %reason, "commit failed; the engine refuses writes until the store works again");
        let healing = self.start_healing(reason);
        self.shared.poison(reason.to_owned(), healing);
        self.reopen_for_reads();
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

    /// Applies one command. An `Err` is a storage failure that aborts the whole transaction;
    /// a problem with the command alone becomes its answer.
    fn apply(
        &mut self,
        tables: &mut WriteTables<'_>,
        command: Command,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        match command {
            Command::Enqueue { tasks, reply } => {
                let result = keep_reply!(batch, reply, self.enqueue(tables, tasks, batch));
                batch.answers.push(Answer::new(reply, result, 1));
            }
            Command::Claim {
                tasks,
                lease_until,
                reply,
            } => {
                let tasks = self.hold_paused(tasks, batch);
                let claimed =
                    keep_reply!(batch, reply, self.claim(tables, tasks, lease_until, batch));
                let follow_ups = claimed.len();
                batch
                    .answers
                    .push(Answer::new(reply, Ok(claimed), follow_ups));
            }
            Command::Settle {
                settlement,
                next,
                lease_until,
                reply,
            } => {
                let settled = keep_reply!(batch, reply, self.settle(tables, &settlement, batch));
                let next = self.hold_paused(next, batch);
                let claimed = if next.is_empty() {
                    Vec::new()
                } else {
                    keep_reply!(batch, reply, self.claim(tables, next, lease_until, batch))
                };
                let follow_ups = claimed.len();
                let chained = Chained { settled, claimed };
                batch
                    .answers
                    .push(Answer::new(reply, Ok(chained), follow_ups));
            }
            Command::Cancel { id, by, reply } => {
                let result = keep_reply!(
                    batch,
                    reply,
                    self.operate(tables, id, moves::Operation::Cancel { by }, batch)
                );
                batch.answers.push(Answer::new(reply, result, 0));
            }
            Command::Cleanup {
                completed_before,
                failed_before,
                limit,
                reply,
            } => {
                let report = keep_reply!(
                    batch,
                    reply,
                    admin::cleanup(tables, completed_before, failed_before, limit)
                );
                batch.answers.push(Answer::new(reply, Ok(report), 0));
            }
            Command::Retry { id, reply } => {
                let result = keep_reply!(
                    batch,
                    reply,
                    self.operate(tables, id, moves::Operation::Retry, batch)
                );
                batch.answers.push(Answer::new(reply, result, 0));
            }
            Command::RetryFailed {
                queue,
                after,
                limit,
                reply,
            } => {
                let page = keep_reply!(
                    batch,
                    reply,
                    self.retry_failed(tables, queue.as_deref(), after.as_deref(), limit, batch)
                );
                batch.answers.push(Answer::new(reply, Ok(page), 0));
            }
            Command::Purge {
                queue,
                status,
                phase,
                after,
                limit,
                reply,
            } => {
                let scan = admin::PurgeScan {
                    queue,
                    status,
                    phase,
                    after,
                    limit,
                };
                let page = keep_reply!(batch, reply, self.purge(tables, scan, batch));
                batch.answers.push(Answer::new(reply, Ok(page), 0));
            }
            Command::Forwarded { tasks, at, reply } => {
                let marked = keep_reply!(batch, reply, self.forwarded(tables, tasks, at, batch));
                batch.answers.push(Answer::new(reply, Ok(marked), 0));
            }
            Command::TakeForForwarding { tasks, reply } => {
                let taken = keep_reply!(batch, reply, self.take_for_forwarding(tables, tasks));
                batch.answers.push(Answer::new(reply, Ok(taken), 0));
            }
            Command::Untake { tasks, requeue } => self.untake(tasks, requeue),
            Command::ReportsSent { sent } => tables.remove_reports(&sent)?,
            Command::RecordRun { run, reply, .. } => {
                let result = keep_reply!(batch, reply, self.record_run(tables, *run, batch));
                batch.answers.push(Answer::new(reply, result, 0));
            }
            Command::Report {
                reports,
                quiet,
                reply,
                ..
            } => {
                let applied = keep_reply!(
                    batch,
                    reply,
                    self.apply_reports(tables, reports, quiet, batch)
                );
                batch.answers.push(Answer::new(reply, Ok(applied), 0));
            }
            Command::Pause {
                queue,
                paused,
                reply,
            } => {
                batch.pauses = true;
                let changed = keep_reply!(batch, reply, self.pause(tables, queue, paused, batch));
                batch.answers.push(Answer::new(reply, Ok(changed), 0));
            }
            Command::Schedule(command) => self.apply_schedule(tables, command, batch)?,
            Command::Expire { id, attempt } => self.expire(tables, id, attempt, batch)?,
        }
        Ok(())
    }

    fn snapshot(batch: &Batch, id: TaskId, task: &StoredTask) -> Option<Arc<TaskRecord>> {
        batch.audience.then(|| Arc::new(task.to_record(id)))
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

/// Why the engine refuses writes, and whether the writer plans to heal it: one value, so that
/// no reader sees a poisoning without its plan.
#[derive(Debug)]
pub(crate) struct Poisoning {
    reason: String,
    healing: bool,
}

impl Shared {
    fn poisoning(&self) -> crate::sync::MutexGuard<'_, Option<Poisoning>> {
        self.poison
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses writes for `reason`; `healing`: the writer plans to heal the store. A second
    /// poisoning keeps the first's reason and takes the writer's latest plan (a commit failing
    /// again replans the healing; a panicking writer heals nothing).
    pub(crate) fn poison(&self, reason: String, healing: bool) {
        let mut slot = self.poisoning();
        match slot.as_mut() {
            Some(poisoning) => poisoning.healing = healing,
            None => *slot = Some(Poisoning { reason, healing }),
        }
        self.poisoned_flag.store(true, Ordering::SeqCst);
    }

    /// Lifts the poison: the writer healed the store.
    pub(crate) fn unpoison(&self) {
        let mut slot = self.poisoning();
        *slot = None;
        self.poisoned_flag.store(false, Ordering::SeqCst);
    }

    /// The writer gave up healing: writes stay refused until the engine is reopened.
    pub(crate) fn stop_healing(&self) {
        if let Some(poisoning) = self.poisoning().as_mut() {
            poisoning.healing = false;
        }
    }

    /// The refusal of a call while the engine is poisoned, if it is.
    pub(crate) fn refused(&self) -> Option<Error> {
        if !self.poisoned_flag.load(Ordering::SeqCst) {
            return None;
        }
        self.poisoning().as_ref().map(|poisoning| Error::Poisoned {
            reason: poisoning.reason.clone(),
            healing: poisoning.healing,
        })
    }

    /// The refusal for a failure that `reason` names, saying whether the engine heals (an
    /// engine no longer poisoned has healed: the call may be made again).
    pub(crate) fn refusal(&self, reason: String) -> Error {
        let healing = self.poisoning().as_ref().is_none_or(|p| p.healing);
        Error::Poisoned { reason, healing }
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        if !self.poisoned_flag.load(Ordering::SeqCst) {
            return None;
        }
        self.poisoning()
            .as_ref()
            .map(|poisoning| poisoning.reason.clone())
    }
}
