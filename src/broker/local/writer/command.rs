//! What callers ask of the writer (`Command`) and how each is answered: one reply type for
//! every command, sent only after the commit that backs it, or failed with the batch.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::broker::{Chained, CleanupReport, NewTask, Outcome, Queued, SettleReport, Settlement};
use crate::clock::Millis;
use crate::queue::ReadyTask;
use crate::task::{ReadyOrder, StoredTask, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// One chunk of a long admin operation: how many tasks it changed, and where to go on
/// (`None` when the scan is done).
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) changed: u64,
    pub(crate) next: Option<(usize, Vec<u8>)>,
}

/// The longest a lazily committed change waits for a durable commit.
pub(crate) const LAZY_FLUSH: Duration = Duration::from_millis(100);

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
        /// Who cancels it, as the caller described itself.
        by: String,
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
    /// Pauses (`paused`) or resumes a queue; answers whether that changed it.
    Pause {
        queue: String,
        paused: bool,
        reply: Reply<bool>,
    },
    /// A schedule request (`writer/schedules.rs`).
    Schedule(super::schedules::ScheduleCommand),
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
        reply: Reply<RunRecorded>,
    },
    /// RabbitMQ confirmed these outcome reports (task, run) to their producers: their rows
    /// leave the report outbox. Lazy: a row a crash brings back is sent again, and producers
    /// apply a report once.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    ReportsSent { sent: Vec<(TaskId, u32)> },
    /// Starts and outcomes reported over RabbitMQ for tasks this store forwarded: each is
    /// applied when newer than its record (the `report` move). With `lazy`, the commit may skip
    /// its fsync (as [`Command::RecordRun`]); `quiet` applies them without events.
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    Report {
        reports: Vec<(TaskId, crate::task::lifecycle::Report)>,
        lazy: bool,
        quiet: bool,
        reply: Reply<u64>,
    },
}

impl Command {
    /// True when the command's commit may skip the fsync (see [`Command::RecordRun`]).
    pub(super) fn is_lazy(&self) -> bool {
        matches!(
            self,
            Command::RecordRun { lazy: true, .. }
                | Command::Report { lazy: true, .. }
                | Command::TakeForForwarding { .. }
                | Command::Untake { .. }
                | Command::ReportsSent { .. }
        )
    }

    /// Answers the command with `error` without applying it (a poisoned engine, or a batch
    /// that failed before reaching it).
    pub(super) fn fail(self, error: Error) {
        let answer = match self {
            Command::Schedule(command) => return command.fail(error),
            Command::Enqueue { reply, .. } => Answer::failed(reply),
            Command::Claim { reply, .. } => Answer::failed(reply),
            Command::Settle { reply, .. } => Answer::failed(reply),
            Command::Cancel { reply, .. } | Command::Retry { reply, .. } => Answer::failed(reply),
            Command::Cleanup { reply, .. } => Answer::failed(reply),
            Command::RetryFailed { reply, .. } | Command::Purge { reply, .. } => {
                Answer::failed(reply)
            }
            Command::Forwarded { reply, .. } => Answer::failed(reply),
            Command::RecordRun { reply, .. } => Answer::failed(reply),
            Command::Report { reply, .. } => Answer::failed(reply),
            Command::TakeForForwarding { reply, .. } => Answer::failed(reply),
            Command::Pause { reply, .. } => Answer::failed(reply),
            Command::Expire { .. } | Command::Untake { .. } | Command::ReportsSent { .. } => {
                return;
            }
        };
        answer.fail(error);
    }
}

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
    /// Where the run's start and outcome are reported (the message's `reply_to`), kept so a
    /// retry forwarded from this store names it again.
    pub(crate) reply_to: Option<String>,
    /// Set when `reply_to` is another store's reply queue: the run's outcome report joins the
    /// report outbox in the commit that records the run.
    pub(crate) report: bool,
}

/// What recording a run did: the settlement, and the outcome report it left in the report
/// outbox (when the run asked for one).
#[derive(Debug)]
#[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
pub(crate) struct RunRecorded {
    pub(crate) settled: SettleReport,
    pub(crate) report: Option<crate::store::PendingReport>,
}

/// A command's answer, held until the commit that backs it: sent after it, or failed with the
/// batch. One type for every command's reply.
pub(super) struct Answer(Box<dyn Respond>);

trait Respond: Send {
    fn send(self: Box<Self>);
    fn fail(self: Box<Self>, error: Error);
    fn follow_ups(&self) -> usize;
}

struct Held<T> {
    reply: Reply<T>,
    result: Result<T>,
    follow_ups: usize,
}

impl<T: Send> Respond for Held<T> {
    // A closed reply channel means the caller stopped waiting; the change is committed
    // regardless, exactly as if the answer had been read.
    fn send(self: Box<Self>) {
        drop(self.reply.send(self.result));
    }

    fn fail(self: Box<Self>, error: Error) {
        drop(self.reply.send(Err(error)));
    }

    fn follow_ups(&self) -> usize {
        self.follow_ups
    }
}

impl Answer {
    /// `result` for `reply`, expected to cause `follow_ups` requests at once when answered (a
    /// producer's next enqueue, a settlement for each claimed task).
    pub(super) fn new<T: Send + 'static>(
        reply: Reply<T>,
        result: Result<T>,
        follow_ups: usize,
    ) -> Self {
        Self(Box::new(Held {
            reply,
            result,
            follow_ups,
        }))
    }

    /// A reply whose command never produced a result: only [`Answer::fail`] makes sense.
    pub(super) fn failed<T: Send + 'static>(reply: Reply<T>) -> Self {
        Self::new(
            reply,
            Err(Error::Internal("the batch was aborted".into())),
            0,
        )
    }

    pub(super) fn send(self) {
        self.0.send();
    }

    pub(super) fn fail(self, error: Error) {
        self.0.fail(error);
    }

    pub(super) fn follow_ups(&self) -> usize {
        self.0.follow_ups()
    }
}
