//! Pipelined group commit: with the write-ahead log, the writer commits a batch to the B-tree,
//! appends its record, and hands the log's fdatasync to a sync thread; while the disk works it
//! applies the next batch. A batch is answered, and its effects reach memory, only once a sync
//! that covers it has returned; reads wait for the same (`store::visible`).
//!
//! One sync runs at a time, and its result is handled before any other sync of the log starts:
//! after a failed fdatasync a later one may succeed without the pages the failed one lost, so
//! nothing after a failure is taken as durable. A failed sync fails its batches and every
//! batch after them; the store then fences its B-tree and reopens (`Store::log_sync_failed`).

use std::collections::VecDeque;
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender};

use super::command::Answer;
use super::{Batch, Command, Writer};
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

/// The sync thread and what the writer knows of it.
#[derive(Default)]
pub(crate) struct Pipeline {
    thread: Option<SyncThread>,
    /// The commit number the running sync covers, while one runs.
    in_flight: Option<u64>,
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
        let (jobs, job_queue) = crossbeam_channel::bounded::<LogSync>(1);
        let (report, done) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name("fq-log-sync".into())
            .spawn(move || {
                for job in job_queue {
                    if report.send((job.seq, job.run())).is_err() {
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
        self.in_flight.is_none() && self.unanswered.is_empty()
    }

    /// A sync of the log is running.
    pub(super) fn syncing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the next command, the running sync's result, or `deadline`.
    pub(super) fn wait(&self, commands: &Receiver<Command>, deadline: Option<Instant>) -> Wake {
        let done = self
            .thread
            .as_ref()
            .filter(|_| self.in_flight.is_some())
            .map(|thread| &thread.done);
        let mut select = Select::new();
        let command_index = select.recv(commands);
        if let Some(done) = done {
            select.recv(done);
        }
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
        let (seq, result) = match done.map(|done| operation.recv(done)) {
            Some(Ok(report)) => report,
            _ => thread_ended(self.in_flight.unwrap_or(0)),
        };
        Wake::Synced(seq, result)
    }

    /// The sync the next commit may start itself: `None` while one runs (one at a time), or
    /// before the first sync started the thread (an engine without the log never starts it).
    pub(super) fn early_sync(&self) -> Option<EarlySync> {
        if self.in_flight.is_some() {
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
        self.in_flight = Some(seq);
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

    /// Starts a sync of what waits for one, unless one runs. Without a sync thread (it could
    /// not be started) the sync runs here.
    fn start_sync(&mut self) {
        if self.pipeline.in_flight.is_some() {
            return;
        }
        let Some(job) = self.store.log_sync() else {
            return;
        };
        let seq = job.seq;
        let thread = match self.pipeline.thread() {
            Ok(thread) => thread,
            Err(error) => {
                tracing::warn!(%error, "cannot start the log's sync thread; syncing inline");
                return self.sync_here(&job);
            }
        };
        match thread.jobs.send(job) {
            Ok(()) => self.pipeline.in_flight = Some(seq),
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
        self.pipeline.in_flight = None;
        let failure = match result {
            Ok(()) => {
                self.store.log_synced(seq);
                None
            }
            Err(error) => self.store.log_sync_failed(seq, error),
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
            if let Some(in_flight) = self.pipeline.in_flight {
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
            fail_answers(batch.batch.answers, error, &reason);
        }
    }
}

/// What a caller whose commit failed with `error` is told: a full disk as such (something they
/// can act on), anything else as the engine's poisoning, which names the same cause.
pub(super) fn answer_error(error: &StoreError, reason: &str) -> Error {
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
        _ => Error::Poisoned {
            reason: reason.to_owned(),
        },
    }
}

/// Fails commands that were never applied with the answer for `error`.
pub(super) fn fail_commands(commands: Vec<Command>, error: &StoreError, reason: &str) {
    for command in commands {
        command.fail(answer_error(error, reason));
    }
}

/// Fails the answers of a batch whose commit failed.
pub(super) fn fail_answers(answers: Vec<Answer>, error: &StoreError, reason: &str) {
    for answer in answers {
        answer.fail(answer_error(error, reason));
    }
}
