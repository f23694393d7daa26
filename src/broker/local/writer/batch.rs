//! One batch of the writer: the commands drained into one transaction, applied and committed
//! together, and answered once that commit is durable (`pipeline.rs`). Owns the batch's
//! scratch state and its way from commands to answers.

use std::sync::Arc;

use super::command::{Answer, Command, LAZY_FLUSH};
use super::{Publish, Writer, pipeline};
use crate::clock::Millis;
use crate::events::Event;
use crate::store::{Commit, StoreError, WriteTables};
use crate::task::TaskRecord;

/// The per-transaction scratch state.
pub(in crate::broker::local) struct Batch {
    pub(in crate::broker::local) now: Millis,
    pub(in crate::broker::local) effects: Vec<Publish>,
    pub(super) answers: Vec<Answer>,
    pub(super) audience: bool,
    /// Completions per queue, for the engine's throughput figures.
    pub(super) completed: std::collections::HashMap<String, u64>,
    /// The store's free space, probed once per batch by its first enqueue.
    pub(super) free_bytes: Option<Option<u64>>,
    /// The moves the metrics count, recorded only once the commit succeeded; stays empty
    /// when the engine's metrics are off.
    pub(super) observed: Vec<crate::metrics::Observation>,
    /// Leases that ran out in this batch, for the metrics.
    pub(super) leases_expired: u64,
    /// Tasks this batch made ready, noted while a claim waits for work (`hand_off`).
    pub(super) ready: Vec<crate::queue::ReadyTask>,
    /// The batch pauses or resumes a queue: it hands nothing off, since the claims' view of
    /// what is paused is the one before it.
    pub(super) pauses: bool,
}

impl Batch {
    /// Queues an event of `kind` about `task`, at the batch's time, for after the commit.
    pub(super) fn emit(&mut self, kind: crate::events::EventKind, task: Arc<TaskRecord>) {
        let at = crate::clock::millis_to_datetime(self.now);
        self.effects.push(Publish::Emit(Event::new(kind, task, at)));
    }
}

impl Writer {
    /// Applies `commands` in one transaction and commits it; the batch is answered once that
    /// commit is durable (`pipeline.rs`). A failed commit fails the whole batch.
    ///
    /// A `lone` batch (no sync runs, nothing else waits) syncs the log on this thread and is
    /// answered before the B-tree commits (`Commit::SyncedHere`): no hand-off to the sync
    /// thread and back, and the commit overlaps the callers' next requests instead of delaying
    /// their answers. Returns true when the batch was answered so.
    pub(super) fn apply_batch(&mut self, commands: Vec<Command>, lone: bool) -> bool {
        let mut batch = Batch {
            now: self.shared.clock.now_ms(),
            effects: Vec::new(),
            answers: Vec::with_capacity(commands.len()),
            audience: self.shared.events.has_audience(),
            completed: std::collections::HashMap::new(),
            free_bytes: None,
            observed: Vec::new(),
            leases_expired: 0,
            ready: Vec::new(),
            pauses: false,
        };
        let n_commands = commands.len();
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
        let mode = if lazy {
            Commit::Lazy
        } else if lone {
            Commit::SyncedHere
        } else if self.pipeline.syncing() || store.holds_every_batch() {
            // More batches come before the writer is idle: the B-tree's transaction may carry
            // them (`store/held.rs`).
            Commit::Held
        } else {
            // The first sync of a burst: its B-tree commit overlaps that sync.
            Commit::Deferred
        };
        // Commands not applied when a storage failure aborts the batch (or the transaction
        // never opened) stay here, to be answered with that failure rather than dropped.
        let mut unapplied = commands;
        // Only a commit on the pipeline hands its sync to the sync thread.
        let early = matches!(mode, Commit::Deferred | Commit::Held)
            .then(|| self.pipeline.early_sync())
            .flatten();
        let start = |job| {
            if let Some(early) = &early {
                early.start(job);
            }
        };
        let apply = |tables: &mut crate::store::WriteTables<'_>| {
            let mut commands = std::mem::take(&mut unapplied).into_iter();
            while let Some(command) = commands.next() {
                if let Err(error) = self.apply(tables, command, &mut batch) {
                    unapplied.extend(commands);
                    return Err(error);
                }
            }
            // A lazy commit is answered without a sync: no claim rides it.
            if lazy {
                return Ok(());
            }
            self.hand_off(tables, &mut batch)
        };
        let (committed, pending) = if mode == Commit::SyncedHere {
            match store.write_synced_here(apply) {
                Ok((result, pending)) => (Ok((result, None)), pending),
                Err(error) => (Err(error), None),
            }
        } else {
            (store.write_as(mode, Some(&start), apply), None)
        };
        // Whatever became of the commit, a sync it started runs: it is waited for as any other.
        if let Some(seq) = early.and_then(|early| early.started()) {
            self.pipeline.sync_started(seq);
        }
        match committed {
            Ok(((), seq)) => {
                let flushes_lazy = !lazy && self.unflushed_since.is_some();
                if lazy {
                    self.unflushed_since.get_or_insert(started);
                } else {
                    self.unflushed_since = None;
                }
                self.last_commit = started.elapsed();
                self.committed(pipeline::Committed {
                    batch,
                    lazy,
                    n_commands,
                    started,
                    seq,
                    seq_before,
                    waiting_before,
                    flushes_lazy,
                });
                // Answered above: the change is durable in the log whatever the B-tree does.
                if let Some(pending) = pending {
                    if let Err(error) = pending.commit() {
                        // The reopen applies the log again, answered change included.
                        self.commit_failed(&error.to_string());
                    }
                    return true;
                }
            }
            Err(error) => {
                // The batches before this one are answered (or failed) first: they committed.
                self.answer_all();
                if self.shared.poisoned().is_none() {
                    self.next_seq = seq_before;
                    self.waiting = waiting_before;
                }
                let reason = error.to_string();
                if self.shared.poisoned().is_none() {
                    self.commit_failed(&reason);
                }
                // The batch's own callers learn why their commit failed: a full disk is
                // something they can act on, and must not read as a bug. Later writes see
                // the poisoning, which names the same cause.
                pipeline::fail_answers(&self.shared, batch.answers, &error, &reason);
                pipeline::fail_commands(&self.shared, unapplied, &error, &reason);
            }
        }
        false
    }

    /// Answers a batch whose commit is durable: its effects reach memory, then its callers.
    pub(super) fn answer_batch(&mut self, committed: pipeline::Committed) {
        let pipeline::Committed {
            batch,
            lazy,
            n_commands,
            started,
            ..
        } = committed;
        // Before anything of the batch becomes visible (events, waiters, answers): a scrape
        // from then on waits for its metrics.
        if let Some(metrics) = &self.shared.metrics {
            metrics.answering();
        }
        self.publish(batch.effects, batch.now);
        if !batch.completed.is_empty() {
            self.shared.completions.record(batch.now, &batch.completed);
        }
        self.follow_ups += batch.answers.iter().map(Answer::follow_ups).sum::<usize>();
        for answer in batch.answers {
            answer.send();
        }
        self.answered_at = Some(std::time::Instant::now());
        // Recorded after the answers went out: the callers (and the workers they feed) need
        // not wait for the counters.
        if let Some(metrics) = &self.shared.metrics {
            let durable = (!lazy).then(|| started.elapsed());
            metrics.committed(batch.observed, n_commands, durable);
            if batch.leases_expired > 0 {
                metrics.leases_expired(batch.leases_expired);
            }
        }
    }

    /// Claims tasks this batch made ready for the claims waiting for work, in this batch's
    /// commit: each claimer gets its tasks once the commit is durable, and a task handed off
    /// never reaches the ready heap. Only this batch's tasks: a failed commit then takes back
    /// a task and its claim together.
    fn hand_off(
        &mut self,
        tables: &mut WriteTables<'_>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        if batch.ready.is_empty() || batch.pauses || !self.shared.handoffs.any() {
            return Ok(());
        }
        let mut ready = std::mem::take(&mut batch.ready);
        ready.sort_unstable_by_key(|task| task.order);
        let assigned = self.shared.handoffs.assign(|queues, room| {
            let mut taken = Vec::new();
            ready.retain(|task| {
                let take = taken.len() < room && queues.contains(&task.queue);
                if take {
                    taken.push(task.clone());
                }
                !take
            });
            taken
        });
        if assigned.is_empty() {
            return Ok(());
        }
        let handed: std::collections::HashSet<_> = assigned
            .iter()
            .flat_map(|(_, tasks)| tasks.iter().map(|task| (task.id, task.order)))
            .collect();
        batch.effects.retain(|effect| {
            !matches!(effect, Publish::Wait { id, order, .. } if handed.contains(&(*id, *order)))
        });
        let lease_until = batch.now.saturating_add(self.settings.lease_ms);
        for (deliver, tasks) in assigned {
            let tasks = self.hold_paused(tasks, batch);
            for record in self.claim(tables, tasks, lease_until, batch)? {
                batch.effects.push(Publish::HandOff {
                    deliver: deliver.clone(),
                    record: Box::new(record),
                });
            }
        }
        Ok(())
    }
}
