//! Pipelined group commit: with the write-ahead log, the writer commits a batch to the B-tree,
//! appends its record, and hands the log's fdatasync to a sync thread; while the disk works it
//! applies the next batch. A batch is answered, and its effects reach memory, only once a sync
//! that covers it has returned; reads wait for the same (`store::visible`). While a sync runs,
//! a batch's B-tree transaction stays open for the next ones (`Commit::Held`, `store/held.rs`).
//!
//! One sync runs at a time, on one thread. A second may wait behind it, so that the disk starts
//! on what the writer committed meanwhile the moment the first returns, not once the writer is
//! free to look. After a failed fdatasync a later one may succeed without the pages the failed
//! one lost, so the thread runs nothing after a failure and nothing after it is taken as
//! durable. A failed sync fails its batches and every batch after them; the store then fences
//! its B-tree and reopens (`Store::log_sync_failed`).

use std::collections::VecDeque;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender};

use super::command::Answer;
use super::{Batch, Command, Shared, Writer};
use crate::Error;
use crate::store::{LogSync, StoreError};

/// A committed batch waiting for the sync that makes it durable (or for the batches before it).
pub(super) struct Committed {
    pub(super) batch: Batch,
    pub(super) lazy: bool,
    pub(super) n_commands: usize,
    pub(super) started: Instant,
    /// The commit's number when it became visible before its sync; `None`: durable already
    /// (or lazy, and answered after the batches before it).
    pub(super) seq: Option<u64>,
    /// The writer's counters before the batch, restored if its sync fails.
    pub(super) seq_before: u64,
    pub(super) waiting_before: u64,
    /// Lazy commits were waiting for a durable one when this batch committed: its sync makes
    /// them durable too.
    pub(super) flushes_lazy: bool,
}

/// Syncs handed to the sync thread and not reported yet: the running one, and one queued
/// behind it, which starts the moment the running one returns well.
const SYNCS_OUTSTANDING: usize = 2;

/// The sync thread and what the writer knows of it.
#[derive(Default)]
pub(crate) struct Pipeline {
    thread: Option<SyncThread>,
    /// The commit numbers the syncs handed to the thread cover, oldest (running) first.
    in_flight: VecDeque<u64>,
    /// Committed batches not answered yet, oldest first.
    unanswered: VecDeque<Committed>,
}

struct SyncThread {
    jobs: Sender<LogSync>,
    done: Receiver<(u64, std::io::Result<()>)>,
    handle: std::thread::JoinHandle<()>,
}

impl SyncThread {
    fn spawn() -> std::io::Result<Self> {
        let (jobs, job_queue) = crossbeam_channel::bounded::<LogSync>(SYNCS_OUTSTANDING);
        let (report, done) = crossbeam_channel::bounded(SYNCS_OUTSTANDING);
        let handle = std::thread::Builder::new()
            .name("fq-log-sync".into())
            .spawn(move || {
                // The highest commit number a sync returned for: a sync queued behind one
                // that covered its commits already has nothing left to do.
                let mut covered = 0;
                for job in job_queue {
                    let seq = job.covers();
                    let result = if seq <= covered { Ok(()) } else { job.run() };
                    let failed = result.is_err();
                    if !failed {
                        covered = seq;
                    }
                    // After a failed fdatasync a later one may succeed without the pages the
                    // failed one lost: the sync queued behind it never runs (the writer takes
                    // the thread's end as its failure).
                    if report.send((seq, result)).is_err() || failed {
                        break;
                    }
                }
            })?;
        Ok(Self { jobs, done, handle })
    }

    /// The result of the sync covering commits up to `in_flight`, waiting for it.
    fn receive(&self, in_flight: u64) -> (u64, std::io::Result<()>) {
        self.done.recv().unwrap_or_else(|_| thread_ended(in_flight))
    }
}

/// What a sync the thread never answered amounts to: it did not happen.
fn thread_ended(in_flight: u64) -> (u64, std::io::Result<()>) {
    (
        in_flight,
        Err(std::io::Error::other("the log's sync thread ended")),
    )
}

/// A sync the next commit may start itself, right after its record is in the log
/// (`Store::write_as`): offered only while no sync runs.
pub(super) struct EarlySync {
    jobs: Sender<LogSync>,
    started: std::cell::Cell<Option<u64>>,
}

impl EarlySync {
    /// Hands `job` to the sync thread. If the thread is gone the job is dropped: the writer's
    /// next sync (`start_sync`) covers the commit.
    pub(super) fn start(&self, job: LogSync) {
        let seq = job.seq;
        if self.jobs.send(job).is_ok() {
            self.started.set(Some(seq));
        }
    }

    /// The commit number the sync it started covers, if it started one.
    pub(super) fn started(&self) -> Option<u64> {
        self.started.get()
    }
}

/// What the writer's loop woke up for.
pub(super) enum Wake {
    Command(Command),
    Synced(u64, std::io::Result<()>),
    Deadline,
    Closed,
}

impl Pipeline {
    /// Nothing committed waits for an answer.
    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.unanswered.is_empty()
    }

    /// A sync of the log is running.
    pub(super) fn syncing(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Waits for the next command, the running sync's result, or `deadline`.
    pub(super) fn wait(&self, commands: &Receiver<Command>, deadline: Option<Instant>) -> Wake {
        let done = self
            .thread
            .as_ref()
            .filter(|_| !self.in_flight.is_empty())
            .map(|thread| &thread.done);
        let Some(done) = done else {
            // One channel: a plain receive. A `Select` woken by a sender takes the channel's
            // waker lock to unregister while the sender may still hold it (it wakes the
            // receiver under that lock), which costs the lone request a futex round trip.
            return match deadline {
                Some(deadline) => match commands.recv_deadline(deadline) {
                    Ok(command) => Wake::Command(command),
                    Err(RecvTimeoutError::Timeout) => Wake::Deadline,
                    Err(RecvTimeoutError::Disconnected) => Wake::Closed,
                },
                None => commands.recv().map_or(Wake::Closed, Wake::Command),
            };
        };
        let mut select = Select::new();
        let command_index = select.recv(commands);
        select.recv(done);
        let operation = match deadline {
            Some(deadline) => match select.select_deadline(deadline) {
                Ok(operation) => operation,
                Err(_) => return Wake::Deadline,
            },
            None => select.select(),
        };
        if operation.index() == command_index {
            return match operation.recv(commands) {
                Ok(command) => Wake::Command(command),
                Err(_) => Wake::Closed,
            };
        }
        let (seq, result) = match operation.recv(done) {
            Ok(report) => report,
            Err(_) => thread_ended(self.in_flight.front().copied().unwrap_or(0)),
        };
        Wake::Synced(seq, result)
    }

    /// The sync the next commit may start itself: `None` while the thread has as many as it
    /// takes, or before the first sync started the thread (an engine without the log never
    /// starts it).
    pub(super) fn early_sync(&self) -> Option<EarlySync> {
        if self.in_flight.len() >= SYNCS_OUTSTANDING {
            return None;
        }
        let thread = self.thread.as_ref()?;
        Some(EarlySync {
            jobs: thread.jobs.clone(),
            started: std::cell::Cell::new(None),
        })
    }

    /// A commit started the sync covering commits up to `seq` (`EarlySync`).
    pub(super) fn sync_started(&mut self, seq: u64) {
        self.in_flight.push_back(seq);
    }

    /// The sync thread, started on first use.
    fn thread(&mut self) -> std::io::Result<&SyncThread> {
        let thread = match self.thread.take() {
            Some(thread) => thread,
            None => SyncThread::spawn()?,
        };
        Ok(self.thread.insert(thread))
    }

    /// Stops the sync thread (nothing runs on it once the writer has settled).
    pub(super) fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            drop(thread.jobs);
            if thread.handle.join().is_err() {
                tracing::error!("the log's sync thread panicked");
            }
        }
    }
}

impl Writer {
    /// A batch committed: answered at once when durable (and nothing before it waits), else
    /// once a sync covers it.
    pub(super) fn committed(&mut self, committed: Committed) {
        self.pipeline.unanswered.push_back(committed);
        self.answer_durable();
        self.start_sync();
    }

    /// Answers, oldest first, the batches the store knows durable.
    fn answer_durable(&mut self) {
        let durable = self.store.durable_seq();
        let mut answered = false;
        while self
            .pipeline
            .unanswered
            .front()
            .is_some_and(|batch| batch.seq.is_none_or(|seq| seq <= durable))
        {
            if let Some(batch) = self.pipeline.unanswered.pop_front() {
                if !answered {
                    self.follow_ups = 0;
                    answered = true;
                }
                self.answer_batch(batch);
            }
        }
    }

    /// Hands the thread a sync of what waits for one and no sync handed to it covers, unless
    /// it has as many as it takes. Without a sync thread (it could not be started) the sync
    /// runs here.
    fn start_sync(&mut self) {
        if self.pipeline.in_flight.len() >= SYNCS_OUTSTANDING {
            return;
        }
        let Some(job) = self.store.log_sync() else {
            return;
        };
        let seq = job.seq;
        if self
            .pipeline
            .in_flight
            .back()
            .is_some_and(|&last| last >= seq)
        {
            return;
        }
        let thread = match self.pipeline.thread() {
            Ok(thread) => thread,
            Err(error) => {
                tracing::warn!(%error, "cannot start the log's sync thread; syncing inline");
                return self.sync_here(&job);
            }
        };
        match thread.jobs.send(job) {
            Ok(()) => self.pipeline.in_flight.push_back(seq),
            // The thread ended after a failed sync whose report waits to be read: a sync that
            // succeeds after it may lack the pages the failed one lost, so none runs here. The
            // report, or the thread's end, fails this commit with the others.
            Err(_) if !self.pipeline.in_flight.is_empty() => {
                self.pipeline.in_flight.push_back(seq);
            }
            Err(crossbeam_channel::SendError(job)) => self.sync_here(&job),
        }
    }

    /// Runs `job` on the writer's own thread (no sync runs elsewhere).
    fn sync_here(&mut self, job: &LogSync) {
        let result = job.run();
        self.synced(job.seq, result);
    }

    /// The sync covering commits up to `seq` returned `result`.
    pub(super) fn synced(&mut self, seq: u64, result: std::io::Result<()>) {
        self.pipeline.in_flight.pop_front();
        let failure = match result {
            Ok(()) => {
                self.store.log_synced(seq);
                None
            }
            Err(error) => {
                // The thread ends after a failed sync, the one queued behind it unrun: it is
                // failed with this one, and the next sync starts a new thread.
                self.pipeline.in_flight.clear();
                self.pipeline.stop();
                self.store.log_sync_failed(seq, error)
            }
        };
        self.answer_durable();
        match failure {
            None => self.start_sync(),
            Some(error) => self.fail_unanswered(&error),
        }
    }

    /// Waits for the running sync and syncs what is left, here, until every committed batch
    /// is answered: before anything that must not overlap a sync (an inline sync, a reopen,
    /// the close).
    pub(super) fn answer_all(&mut self) {
        loop {
            if let Some(&in_flight) = self.pipeline.in_flight.front() {
                let (seq, result) = match &self.pipeline.thread {
                    Some(thread) => thread.receive(in_flight),
                    None => thread_ended(in_flight),
                };
                self.synced(seq, result);
                continue;
            }
            let Some(job) = self.store.log_sync() else {
                break;
            };
            self.sync_here(&job);
        }
        // Whatever is left was lazy, or durable without a number.
        self.answer_durable();
    }

    /// A sync failed: every batch not answered fails with `error`; the engine is poisoned and
    /// the store reopened (rolled back to what is durable), as after any failed commit.
    fn fail_unanswered(&mut self, error: &StoreError) {
        let failed: Vec<Committed> = self.pipeline.unanswered.drain(..).collect();
        if let Some(first) = failed.first() {
            self.next_seq = first.seq_before;
            self.waiting = first.waiting_before;
        }
        if failed.iter().any(|batch| batch.lazy || batch.flushes_lazy) {
            // Lazy changes went with them: the memory may hold what the disk lost.
            self.unflushed_since.get_or_insert_with(Instant::now);
        }
        let reason = error.to_string();
        self.commit_failed(&reason);
        for batch in failed {
            fail_answers(&self.shared, batch.batch.answers, error, &reason);
        }
    }
}

/// What a caller whose commit failed with `error` is told: a full disk as such (something they
/// can act on), anything else as the engine's poisoning, which names the same cause and says
/// whether the engine heals.
pub(super) fn answer_error(shared: &Shared, error: &StoreError, reason: &str) -> Error {
    match error {
        StoreError::Full {
            path,
            free_bytes,
            needed_bytes,
        } => Error::Store(StoreError::Full {
            path: path.clone(),
            free_bytes: *free_bytes,
            needed_bytes: *needed_bytes,
        }),
        _ => shared.refusal(reason.to_owned()),
    }
}

/// Fails commands that were never applied with the answer for `error`.
pub(super) fn fail_commands(
    shared: &Shared,
    commands: Vec<Command>,
    error: &StoreError,
    reason: &str,
) {
    for command in commands {
        command.fail(answer_error(shared, error, reason));
    }
}

/// Fails the answers of a batch whose commit failed.
pub(super) fn fail_answers(
    shared: &Shared,
    answers: Vec<Answer>,
    error: &StoreError,
    reason: &str,
) {
    for answer in answers {
        answer.fail(answer_error(shared, error, reason));
    }
}

#[cfg(test)]
mod tests;
