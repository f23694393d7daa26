//! One worker slot: runs its claimed tasks one after another, each settlement claiming the
//! slot's next task in the same commit. While its handlers are short, the slot runs its next
//! task while the last one's settlement commits (two settlements in flight), so a busy slot
//! does not wait out a whole commit per task; a task claimed ahead that waits too long behind
//! a running handler is handed back for another slot or worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::manager::release_held;
use super::runner::{RunnerEnv, SlotTally, Tally, attempt_span, begin, conclude, settle_holding};
use crate::Error;
use crate::broker::{Outcome, SettleReport};
use crate::task::{TaskId, TaskRecord};

/// At most this many settlements of one slot in flight: the slot runs one task while the
/// settlement of the one before commits.
const SETTLING_MAX: usize = 2;

/// A slot claims a task ahead only after a handler shorter than this: with longer handlers a
/// commit is a small part of each task, and a task claimed ahead would wait behind them.
const SHORT_RUN: Duration = Duration::from_millis(1);

/// How long a task claimed ahead may wait behind the slot's running handler (one that was
/// expected to be short) before it is handed back: PENDING again, its attempt uncounted, for
/// any free slot or worker to claim.
const AHEAD_WAIT_LIMIT: Duration = Duration::from_millis(10);

/// A settlement on its way to the store.
struct Settling {
    record: Arc<TaskRecord>,
    outcome: Outcome,
    span: tracing::Span,
    answer: AbortOnDropHandle<(crate::Result<SettleReport>, Vec<TaskRecord>)>,
}

struct Slot {
    env: Arc<RunnerEnv>,
    tally: SlotTally,
    /// Tasks claimed for this slot, not started yet (held: their leases are renewed).
    ready: VecDeque<TaskRecord>,
    /// Settlements not concluded yet, oldest first.
    settling: VecDeque<Settling>,
}

/// Runs a claimed task in one worker slot, then, for as long as tasks are ready, the next ones
/// (each claimed with a settlement). The slot is given back when no task is ready (the
/// dispatcher takes over).
pub(super) async fn run_slot(
    first: TaskRecord,
    env: Arc<RunnerEnv>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> SlotTally {
    env.hold(first.id, first.attempts);
    let mut slot = Slot {
        env,
        tally: SlotTally::default(),
        ready: VecDeque::from([first]),
        settling: VecDeque::new(),
    };
    loop {
        if slot.settling.len() < SETTLING_MAX
            && let Some(record) = slot.ready.pop_front()
        {
            slot.run(record).await;
            continue;
        }
        let Some(settling) = slot.settling.pop_front() else {
            break;
        };
        slot.conclude(settling).await;
    }
    drop(permit);
    slot.tally
}

impl Slot {
    /// Runs `record`'s handler and sends its settlement on its way. The settlement claims what
    /// tops up the tasks this slot has in hand or coming (with the settlements in flight) to
    /// two after a short handler, to one after a longer one.
    async fn run(&mut self, record: TaskRecord) {
        let record = Arc::new(record);
        let span = attempt_span(&record);
        let env = Arc::clone(&self.env);
        let started = Instant::now();
        let outcome = {
            let run = begin(&record, &env).instrument(span.clone());
            tokio::pin!(run);
            if self.ready.is_empty() && self.settling.is_empty() {
                run.await
            } else {
                tokio::select! {
                    outcome = &mut run => outcome,
                    () = tokio::time::sleep(AHEAD_WAIT_LIMIT) => {
                        self.hand_back_ahead().await;
                        run.await
                    }
                }
            }
        };
        let short = started.elapsed() < SHORT_RUN;
        let Some(outcome) = outcome else {
            env.drop_hold(record.id);
            self.tally.add(Tally::Unrecorded);
            return;
        };
        let wanted: usize = if short { SETTLING_MAX } else { 1 };
        let claim = if env.shutdown.is_cancelled() {
            0
        } else {
            wanted.saturating_sub(self.ready.len() + self.settling.len())
        };
        let settle = {
            let (record, outcome) = (Arc::clone(&record), outcome.clone());
            async move { settle_holding(&env, &record, outcome, claim).await }
        };
        self.settling.push_back(Settling {
            answer: AbortOnDropHandle::new(tokio::spawn(settle.instrument(span.clone()))),
            record,
            outcome,
            span,
        });
    }

    /// Waits for the oldest settlement's answer: the tasks claimed with it join the queue, and
    /// the attempt is concluded.
    async fn conclude(&mut self, settling: Settling) {
        let Settling {
            record,
            outcome,
            span,
            answer,
        } = settling;
        let (settled, claimed) = match answer.await {
            Ok(answer) => answer,
            Err(error) => {
                self.env.drop_hold(record.id);
                let error = Error::Internal(format!("settling an attempt failed: {error}"));
                (Err(error), Vec::new())
            }
        };
        self.ready.extend(claimed);
        let tally = span.in_scope(|| conclude(&record, &outcome, settled, &self.env));
        self.tally.add(tally);
    }

    /// The running handler outlasted [`AHEAD_WAIT_LIMIT`]: every task claimed ahead of it (those
    /// in hand and those the settlements in flight bring) goes back to PENDING.
    async fn hand_back_ahead(&mut self) {
        while let Some(settling) = self.settling.pop_front() {
            self.conclude(settling).await;
        }
        if !self.ready.is_empty() {
            tracing::debug!(
                tasks = self.ready.len(),
                "a handler ran long; handing back the tasks claimed ahead of it"
            );
            self.release_ready().await;
        }
    }

    /// Releases every task claimed for this slot and not started: PENDING again, the attempt
    /// uncounted.
    async fn release_ready(&mut self) {
        let ahead: Vec<(TaskId, u32)> = self
            .ready
            .drain(..)
            .map(|record| (record.id, record.attempts))
            .collect();
        release_held(&*self.env.broker, &ahead).await;
        for (id, _) in ahead {
            self.env.drop_hold(id);
        }
    }
}
