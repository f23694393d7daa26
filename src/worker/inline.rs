//! Attempts run inline by their caller, one after another as one worker slot runs them, through
//! the same attempt code as a worker (`runner::run_attempt`: claim, handler under its timeout
//! with panic capture, settlement that claims the next task in the same commit, events). What
//! `fq::testing` drains with; also one handler run outside the store (`Inline::perform`).
//! Owns no policy of its own: which queues, how many attempts and when time moves are the
//! caller's.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::manager::{DroppedRun, WorkerManager, WorkerReport, release_held};
use super::runner::{RunnerEnv, SlotTally, execute, run_attempt};
use crate::Result;
use crate::broker::{ClaimRequest, Outcome};
use crate::task::TaskRecord;

/// A worker slot that its caller runs, in its own task.
#[derive(Debug)]
pub(crate) struct Inline {
    env: Arc<RunnerEnv>,
}

/// What one [`Inline::drain`] did, besides its attempts' outcomes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drained {
    /// How many attempts ran.
    pub(crate) attempts: u64,
    /// The task that was due when the budget ran out, released to PENDING: `None` when the
    /// drain ended because nothing was due any more.
    pub(crate) cut_short: Option<TaskRecord>,
}

impl WorkerManager {
    /// This worker's registry and defaults, run inline over `queues`.
    pub(crate) fn inline(&self, queues: Vec<Arc<str>>) -> Inline {
        Inline {
            env: self.runner_env(queues, CancellationToken::new(), None),
        }
    }
}

impl Inline {
    /// Runs the tasks that are due in its queues, best first, until none is or `budget`
    /// attempts have run, adding their outcomes to `report`. A task that becomes due
    /// meanwhile (a follow-up, a retry due at once) runs too; one due later waits. Past the
    /// budget, the task claimed next is released to PENDING, its attempt uncounted (counted
    /// in `report.released`), and named in [`Drained::cut_short`].
    ///
    /// # Errors
    /// A claim the engine refuses ([`crate::Error::Poisoned`], [`crate::Error::ShutDown`]).
    pub(crate) async fn drain(&self, budget: u64, report: &mut WorkerReport) -> Result<Drained> {
        // A drain dropped mid-attempt (a test's timeout) releases what it held, as a dropped
        // worker run does, instead of leaving it RUNNING until its lease expires.
        let _dropped = DroppedRun {
            run: self.env.shutdown.clone(),
            cleanup: None,
            env: Arc::clone(&self.env),
            broker: Arc::clone(&self.env.broker),
        };
        let mut drained = Drained::default();
        let mut tally = SlotTally::default();
        let mut next = None;
        loop {
            let record = match next.take() {
                Some(record) => record,
                None => match self.claim_one().await? {
                    Some(record) => record,
                    None => break,
                },
            };
            if drained.attempts == budget {
                report.released += release_held(&*self.env.broker, &self.env.take_held()).await;
                drained.cut_short = Some(record);
                break;
            }
            drained.attempts += 1;
            let (outcome, chained) = run_attempt(record, &self.env).await;
            tally.add(outcome);
            next = chained;
        }
        report.add(tally);
        Ok(drained)
    }

    /// Claims the best task due now, without waiting for one.
    async fn claim_one(&self) -> Result<Option<TaskRecord>> {
        // A cancelled claim still takes what is ready; it only never waits.
        let no_wait = CancellationToken::new();
        no_wait.cancel();
        let claimed = self
            .env
            .broker
            .claim(ClaimRequest::new(
                &self.env.queues,
                1,
                Duration::ZERO,
                &no_wait,
            ))
            .await?;
        let record = claimed.into_iter().next();
        if let Some(record) = &record {
            self.env.hold(record.id, record.attempts);
        }
        Ok(record)
    }

    /// Runs the handler registered for `record` as an attempt runs it (its timeout, panic
    /// capture, a context that queues follow-ups on the engine), for a record that is not in
    /// the store: nothing is claimed, settled or emitted (its heartbeats find no lease and are
    /// ignored). `None` if the attempt was abandoned.
    pub(crate) async fn perform(&self, record: &TaskRecord) -> Option<Outcome> {
        execute(record, &self.env).await
    }
}
