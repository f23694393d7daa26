//! The embedded broker (config `broker: database`): a redb store written by one writer
//! thread with group commit, a lock-free ready heap and a delay index fed after each commit,
//! and a timer thread for due times and lease deadlines.

mod api;
mod handoff;
mod lease;
mod limits;
mod observe;
mod open;
mod pause;
mod read_only;
mod schedules;
mod timer;
mod waiters;
mod writer;

use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use self::lease::LeaseTable;
pub(crate) use self::read_only::ReadOnlyBroker;
#[cfg(feature = "rabbitmq")]
pub(crate) use self::read_only::StatsProbe;
use self::timer::TimerSignal;
use self::writer::{Command, Page, Writer, WriterSettings};
pub(crate) use self::writer::{RunRecord, RunRecorded};
use super::{
    BoxFuture, Broker, Chaining, ClaimRequest, Claiming, CleanupReport, ListQuery, NewTask, Queued,
    RetentionPolicy, SettleReport, Settlement, Stats,
};
use crate::clock::{Clock, Millis};
use crate::events::EventBus;
use crate::queue::{DelayIndex, ReadyHeap, ReadyTask};
use crate::store::{Store, StoreError, StoreOptions};
use crate::sync::{AtomicBool, Mutex};
use crate::task::lifecycle::{self, Orphaned};
use crate::task::{ReadyOrder, StoredTask};
use crate::task::{RetryPolicy, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// How many finished tasks one cleanup transaction deletes at most.
const CLEANUP_CHUNK: usize = 10_000;
/// How long a caller whose reply was dropped waits for the writer thread to end (it is
/// unwinding a panic, or stopping) before it reports which.
const WRITER_EXIT_WAIT: Duration = Duration::from_secs(1);

/// Settings of an embedded broker.
#[derive(Clone, Debug)]
pub(crate) struct LocalSettings {
    pub(crate) store: StoreOptions,
    pub(crate) retry: RetryPolicy,
    pub(crate) lease: Duration,
    pub(crate) max_pending: Option<u64>,
    pub(crate) max_payload_bytes: usize,
    /// Enqueues are refused while the store's file system has less free space than this
    /// (`limits.min_free_bytes`; 0 turns the check off).
    pub(crate) min_free_bytes: u64,
    /// After a failed commit, reopen the store and accept writes again once the disk works.
    pub(crate) self_heal: bool,
    /// The configuration's schedules (`[[schedules]]`), checked, declared at open.
    pub(crate) schedules: Vec<(crate::Schedule, NewTask)>,
    /// The engine's metrics, fed by the writer after each commit; `None` when turned off
    /// (`metrics.enabled = false`).
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Completions per queue over the last minute, in one-second buckets.
#[derive(Debug, Default)]
pub(crate) struct CompletionRate {
    buckets: Mutex<std::collections::HashMap<String, std::collections::VecDeque<(i64, u64)>>>,
}

impl CompletionRate {
    const WINDOW_SECONDS: i64 = 60;

    pub(crate) fn record(&self, now: Millis, completed: &std::collections::HashMap<String, u64>) {
        let second = now.div_euclid(1000);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for (queue, count) in completed {
            let ring = buckets.entry(queue.clone()).or_default();
            match ring.back_mut() {
                Some((at, n)) if *at == second => *n += count,
                _ => ring.push_back((second, *count)),
            }
            while ring
                .front()
                .is_some_and(|(at, _)| *at <= second - Self::WINDOW_SECONDS)
            {
                ring.pop_front();
            }
        }
    }

    pub(crate) fn last_minute(&self, queue: &str, now: Millis) -> u64 {
        let second = now.div_euclid(1000);
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.get(queue).map_or(0, |ring| {
            ring.iter()
                .filter(|(at, _)| *at > second - Self::WINDOW_SECONDS)
                .map(|(_, n)| n)
                .sum()
        })
    }
}

/// State shared by the broker handle, the writer thread and the timer thread.
pub(crate) struct Shared {
    pub(crate) ready: ReadyHeap,
    pub(crate) delayed: DelayIndex,
    pub(crate) leases: LeaseTable,
    /// Wakes workers waiting for work; notified after every commit that made tasks ready.
    pub(crate) work: Notify,
    pub(crate) timer: TimerSignal,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) events: EventBus,
    pub(crate) stopping: AtomicBool,
    pub(crate) completions: CompletionRate,
    poisoned_flag: AtomicBool,
    poison: Mutex<Option<writer::Poisoning>>,
    pub(crate) writer_exit: WriterExit,
    /// Callers of `wait`, woken by the writer after the commit that settles their task.
    pub(crate) waiters: waiters::Waiters,
    /// Queues whose tasks are not claimed (`pause_queue`), as committed.
    pub(crate) paused: pause::PausedQueues,
    /// The earliest fire time of the armed schedules, as committed: the timer's alarm.
    pub(crate) schedule_alarm: schedules::ScheduleAlarm,
    /// Per-queue concurrency and rate limits, consulted by claims and the writer.
    pub(crate) limits: limits::QueueLimiter,
    /// The live workers and who runs which attempt (memory only); the writer reads it to name
    /// the worker in each attempt's history.
    pub(crate) workers: crate::broker::workers::WorkerRegistry,
    /// The engine's metrics (`None`: turned off), fed by the writer after its commits.
    pub(crate) metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Claims waiting for work, to which tasks are handed in the commit that makes them ready.
    pub(crate) handoffs: handoff::HandOffs,
}

/// Tells callers that the writer thread has ended, and so whether a dropped reply means
/// "shut down" or "poisoned": a panicking writer drops the replies it holds while it unwinds,
/// before its guard raises the poison flag.
#[derive(Debug, Default)]
pub(crate) struct WriterExit {
    exited: std::sync::atomic::AtomicBool,
    done: Notify,
}

impl WriterExit {
    /// Called once, by the writer thread's guard, after any poisoning.
    pub(crate) fn mark(&self) {
        self.exited.store(true, std::sync::atomic::Ordering::SeqCst);
        self.done.notify_waiters();
    }

    /// Waits (at most `limit`) until the writer thread has ended.
    async fn wait(&self, limit: Duration) {
        let done = self.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !self.exited.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tokio::time::timeout(limit, done).await;
        }
    }
}

/// What recovery at open found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Tasks waiting (PENDING or RETRYING) in the store.
    pub waiting: u64,
    /// RUNNING tasks left by the previous process, now RETRYING.
    pub orphans_retrying: u64,
    /// RUNNING tasks left by the previous process whose retries were spent, now FAILED.
    pub orphans_failed: u64,
    /// The store's write-ahead log was missing after a crash and the open went on without it
    /// ([`crate::EngineBuilder::forget_missing_log`]): the changes only that log held are lost.
    pub missing_log_forgotten: bool,
}

/// The embedded broker.
pub(crate) struct LocalBroker {
    shared: Arc<Shared>,
    store: Arc<Store>,
    commands: Option<crossbeam_channel::Sender<Command>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    settings: LocalSettings,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("store", &self.store.path())
            .field("ready", &self.shared.ready.len())
            .field("delayed", &self.shared.delayed.len())
            .field("running", &self.shared.leases.len())
            .finish()
    }
}

impl LocalBroker {
    /// What recovery at open found.
    pub(crate) fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// Checks that the store's indexes and counts agree with its task records.
    pub(crate) async fn check_integrity(&self) -> Result<crate::store::IntegrityReport> {
        self.read(|store| Ok(store.check_integrity()?)).await
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        if let Some(refusal) = self.shared.refused() {
            return Err(refusal);
        }
        let commands = self.commands.as_ref().ok_or(Error::ShutDown)?;
        let (reply, answer) = oneshot::channel();
        commands.send(make(reply)).map_err(|_| Error::ShutDown)?;
        match answer.await {
            Ok(result) => result,
            Err(_) => {
                // The writer dropped the reply: it stopped, or it panicked and is unwinding
                // (the poison flag goes up only once it has dropped what it held).
                self.shared.writer_exit.wait(WRITER_EXIT_WAIT).await;
                Err(self.shared.refused().unwrap_or(Error::ShutDown))
            }
        }
    }

    /// Sends a command claiming `picked`, tasks taken off the ready heap. If it fails (the engine
    /// is poisoned, or the commit failed and was taken back), the tasks go back on the heap:
    /// they are still PENDING in the store, and nothing refills the heap before a reopen, so
    /// they would wait unseen after the engine heals. A task whose claim committed after all
    /// leaves only a stale entry, dropped at its next claim.
    async fn claiming<T>(
        &self,
        picked: Vec<ReadyTask>,
        make: impl FnOnce(Vec<ReadyTask>, oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        if picked.is_empty() {
            return self.request(|reply| make(picked, reply)).await;
        }
        let kept = picked.clone();
        let result = self.request(|reply| make(picked, reply)).await;
        if result.is_err() {
            for task in kept {
                self.shared.ready.push(&task.queue, task.order, task.id);
            }
            self.shared.work.notify_waiters();
        }
        result
    }

    /// Runs a paged admin command chunk by chunk (`make` builds each chunk's command from the
    /// cursor the previous chunk returned) until the scan is done; returns the tasks changed.
    async fn page_through(
        &self,
        mut make: impl FnMut(Option<(usize, Vec<u8>)>, oneshot::Sender<Result<Page>>) -> Command,
    ) -> Result<u64> {
        let mut total = 0;
        let mut cursor = None;
        loop {
            let page = self.request(|reply| make(cursor.take(), reply)).await?;
            total += page.changed;
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(total),
            }
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl Fn(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        read_off_the_runtime(&self.store, read).await
    }

    /// Moves the tasks whose time has come (by the clock, now) from the delay index to the
    /// ready heap, as the timer thread does, and wakes waiting claims; how many moved. Lets
    /// `fq::testing` drain right after advancing a manual clock, without racing the timer.
    pub(crate) fn promote_due(&self) -> usize {
        let moved = self
            .shared
            .delayed
            .promote_due(self.shared.clock.now_ms(), &self.shared.ready);
        if moved > 0 {
            self.shared.work.notify_waiters();
        }
        moved
    }

    /// The queues this engine has seen tasks in since it opened (ready, delayed or claimed).
    pub(crate) fn queue_names(&self) -> Vec<Arc<str>> {
        self.shared.ready.names()
    }

    fn lease_deadline(&self) -> Millis {
        self.shared
            .clock
            .now_ms()
            .saturating_add(crate::clock::duration_millis(self.settings.lease))
    }
}

/// The outbox side of the store, for the RabbitMQ bridge: in rabbitmq mode the waiting tasks
/// are the outbox, the ready heap holds those due to be forwarded, and nobody claims locally.
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
impl LocalBroker {
    /// Takes up to `max` due tasks of every queue off the ready heap, best first. They stay
    /// waiting in the store until [`LocalBroker::mark_forwarded`] or a [`LocalBroker::put_back`].
    pub(crate) fn take_due(&self, max: usize) -> Vec<ReadyTask> {
        let names = self.shared.ready.names();
        // A paused queue's tasks stay in the outbox.
        let selection = self.shared.ready.select(&self.shared.paused.active(&names));
        std::iter::from_fn(|| selection.pop()).take(max).collect()
    }

    /// Notified after every commit or timer tick that made tasks due.
    pub(crate) fn due_signal(&self) -> &Notify {
        &self.shared.work
    }

    /// Puts taken tasks back on the ready heap (their forwarding failed), waking the forwarder;
    /// they can be cancelled again. Through the writer, so that the "being forwarded" mark
    /// goes before the heap entry comes back.
    pub(crate) fn put_back(&self, tasks: impl IntoIterator<Item = ReadyTask>) {
        self.untake(tasks.into_iter().collect(), true);
    }

    /// Tasks the forwarder holds back (their queue is parked): no longer being forwarded, so
    /// they can be cancelled while they wait; they come back with [`LocalBroker::put_back`].
    pub(crate) fn hold_back(&self, tasks: Vec<ReadyTask>) {
        self.untake(tasks, false);
    }

    fn untake(&self, tasks: Vec<ReadyTask>, requeue: bool) {
        if tasks.is_empty() {
            return;
        }
        let sent = self
            .commands
            .as_ref()
            .map(|commands| commands.send(Command::Untake { tasks, requeue }));
        if !matches!(sent, Some(Ok(()))) {
            // The writer is gone (the engine is closing): nothing will be forwarded or
            // cancelled any more, and reopening rebuilds the heap from the store.
            tracing::debug!("the writer is gone; taken tasks stay in the store for the next open");
        }
    }

    /// The records of taken tasks that still wait under the order they were taken with, now
    /// marked as being forwarded (a cancel is refused until they are confirmed or put back);
    /// tasks cancelled (or otherwise moved on) since are dropped, corrupt ones logged and
    /// dropped.
    pub(crate) async fn read_taken(
        &self,
        taken: Vec<ReadyTask>,
    ) -> Result<Vec<(ReadyTask, StoredTask)>> {
        self.request(|reply| Command::TakeForForwarding {
            tasks: taken,
            reply,
        })
        .await
    }

    /// Marks confirmed tasks FORWARDED at `at` (one commit); returns how many were still
    /// waiting under their order.
    pub(crate) async fn mark_forwarded(
        &self,
        tasks: Vec<(TaskId, ReadyOrder)>,
        at: Millis,
    ) -> Result<u64> {
        self.request(|reply| Command::Forwarded { tasks, at, reply })
            .await
    }

    /// Records a finished run of a task delivered by RabbitMQ (see `writer::RunRecord`), with
    /// its outcome report in the report outbox when the run asks for one; answers after the
    /// durable commit.
    pub(crate) async fn record_run(&self, run: RunRecord) -> Result<RunRecorded> {
        self.request(|reply| Command::RecordRun {
            run: Box::new(run),
            lazy: false,
            reply,
        })
        .await
    }

    /// Queues the record of a successful run for the writer's next group commit without
    /// waiting for it: the request is in the writer's queue when this returns, so later
    /// requests commit after it. The commit may skip its fsync (the run's delivery is
    /// acknowledged already, so nothing is lost but the record itself in a crash): it is
    /// visible at once and durable within `writer::LAZY_FLUSH`. The receiver tells how the
    /// commit went.
    pub(crate) fn record_run_detached(
        &self,
        run: RunRecord,
    ) -> Result<oneshot::Receiver<Result<RunRecorded>>> {
        if let Some(refusal) = self.shared.refused() {
            return Err(refusal);
        }
        let commands = self.commands.as_ref().ok_or(Error::ShutDown)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::RecordRun {
                run: Box::new(run),
                lazy: true,
                reply,
            })
            .map_err(|_| Error::ShutDown)?;
        Ok(answer)
    }

    /// Applies starts and outcomes reported over RabbitMQ (see `writer::Command::Report`);
    /// answers after their commit (without an fsync of its own when `lazy`).
    pub(crate) async fn apply_reports(
        &self,
        reports: Vec<(TaskId, crate::task::lifecycle::Report)>,
        lazy: bool,
        quiet: bool,
    ) -> Result<u64> {
        self.request(|reply| Command::Report {
            reports,
            lazy,
            quiet,
            reply,
        })
        .await
    }

    /// Takes sent outcome reports out of the report outbox (lazily: see
    /// `writer::Command::ReportsSent`).
    pub(crate) fn reports_sent(&self, sent: Vec<(TaskId, u32)>) {
        if let Some(commands) = &self.commands {
            // A writer that has stopped keeps the rows: they are sent again at the next open.
            let _ = commands.send(Command::ReportsSent { sent });
        }
    }

    /// Up to `limit` outcome reports waiting in the report outbox.
    pub(crate) async fn pending_reports(
        &self,
        limit: usize,
    ) -> Result<Vec<crate::store::PendingReport>> {
        read_off_the_runtime(&self.store, move |store| Ok(store.pending_reports(limit)?)).await
    }

    /// The store's own id (made once and kept in the file).
    pub(crate) fn store_id(&self) -> Result<String> {
        Ok(self.store.store_id()?)
    }

    /// `Err(Poisoned)` once a failed commit made the store refuse writes.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match self.shared.refused() {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }

    /// The clock of this store.
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.timer.poke();
        // Dropping the last sender lets the writer finish what it holds and exit; joining
        // means the store file is closed when the broker is gone, so it can be reopened.
        self.commands = None;
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an engine thread panicked while stopping");
            }
        }
    }
}

/// Runs a read of `store` on the blocking pool: redb reads touch the disk, so they stay off the
/// async worker threads.
async fn read_off_the_runtime<T: Send + 'static>(
    store: &Arc<Store>,
    read: impl Fn(&Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = store.path().to_path_buf();
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        // A read that the writer's reopen (after a failed commit, or while healing) closed
        // under it is made again on the new handle. So is one that redb refused because a
        // commit had just failed (a checkpoint on a full disk, say): the writer reopens the
        // store after every failed commit, and the read waits for that.
        let mut tries = 1;
        loop {
            let generation = store.read_generation();
            match crate::store::under_damage_guard(|| read(&store)) {
                Err(Error::Store(StoreError::Reopened { .. })) if tries < READ_TRIES => tries += 1,
                Err(Error::Store(ref error))
                    if error.is_refused_after_failed_write()
                        && tries < READ_TRIES
                        && store.wait_reopened_since(generation, REOPEN_WAIT) =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(|error| {
        if !error.is_panic() {
            return Error::Internal(format!("a store read failed: {error}"));
        }
        // redb panics on some damage no checksum catches (a page of zeros read as a tree
        // node): that is this file's corruption, reported with its name, not an fq bug.
        let detail = crate::error::panic_message(&*error.into_panic());
        Error::Store(StoreError::Corrupt {
            path,
            detail: format!("reading it failed inside redb ({detail})"),
        })
    })?
}

/// How often a read closed under it by a reopen is made.
const READ_TRIES: u32 = 5;
/// How long a read refused after a failed commit waits for the writer's reopen before it
/// reports the refusal.
const REOPEN_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests;
