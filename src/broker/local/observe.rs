//! What the embedded broker tells about tasks and workers beyond their records: attempt
//! histories (read from the store), the live workers (kept in memory by `Shared::workers`)
//! and the facts `explain` turns into sentences. Reads only: nothing here writes the store.

use super::api::read_record;
use super::*;
use crate::broker::explain::{Explanation, Facts, explain};
use crate::broker::workers::WorkersReport;
use crate::clock::millis_to_datetime;
use crate::config::QueueLimits;
use crate::task::AttemptRecord;

/// What the store says about a task for `explain`: its record, history, place in its queue
/// and the number of RUNNING tasks of its queue.
pub(super) struct StoreFacts {
    record: TaskRecord,
    history: Vec<AttemptRecord>,
    ahead: Option<u64>,
    running_in_queue: u64,
}

impl StoreFacts {
    /// The task's queue.
    pub(super) fn queue(&self) -> &String {
        &self.record.queue
    }
}

/// Task `id`'s history, as the public records.
pub(super) fn read_attempts(store: &Store, id: TaskId) -> Result<Vec<AttemptRecord>> {
    Ok(store
        .read_attempts(id)?
        .iter()
        .map(crate::task::StoredAttempt::to_record)
        .collect())
}

/// The store's facts about task `id` at `now`, or `NotFound`.
pub(super) fn store_facts(store: &Store, id: TaskId, now: Millis) -> Result<StoreFacts> {
    let task = store.read_task(id)?.ok_or(Error::NotFound(id))?;
    let ahead = if task.waits_here() {
        Some(store.count_ahead(&task.queue, lifecycle::order_of(&task), now)?)
    } else {
        None
    };
    let running_in_queue = store
        .counts()?
        .get(&(task.queue.clone(), TaskStatus::Running))
        .copied()
        .unwrap_or(0);
    Ok(StoreFacts {
        record: task.to_record(id),
        history: read_attempts(store, id)?,
        ahead,
        running_in_queue,
    })
}

/// What the engine that owns the store adds to the store's facts (`None` fields for a
/// store opened only to look at it).
pub(super) struct LiveFacts {
    pub(super) paused: bool,
    pub(super) limits: QueueLimits,
    pub(super) workers: WorkersReport,
    pub(super) lease_expires_at: Option<Millis>,
}

/// The explanation from both kinds of facts.
pub(super) fn explain_with(stored: StoreFacts, live: LiveFacts, now: Millis) -> Explanation {
    explain(Facts {
        record: stored.record,
        history: stored.history,
        ahead: stored.ahead,
        paused: live.paused,
        limits: live.limits,
        running_in_queue: stored.running_in_queue,
        workers: live.workers,
        lease_expires_at: live.lease_expires_at.map(millis_to_datetime),
        now: millis_to_datetime(now),
    })
}

impl LocalBroker {
    /// `Broker::attempts` of the embedded broker.
    pub(super) async fn attempt_history(&self, id: TaskId) -> Result<Vec<AttemptRecord>> {
        self.read(move |store| {
            // An unknown task is an error, not an empty history.
            read_record(store, id)?.ok_or(Error::NotFound(id))?;
            read_attempts(store, id)
        })
        .await
    }

    /// `Broker::explain` of the embedded broker.
    pub(super) async fn explanation(&self, id: TaskId) -> Result<Explanation> {
        let now = self.now_ms();
        let stored = self.read(move |store| store_facts(store, id, now)).await?;
        let queue = stored.record.queue.clone();
        let limits = self
            .shared
            .limits
            .list()
            .into_iter()
            .find_map(|(name, limits)| (name == queue).then_some(limits))
            .unwrap_or_default();
        let live = LiveFacts {
            paused: self.shared.paused.contains(&queue),
            limits,
            workers: self.shared.workers.report(now),
            lease_expires_at: self.shared.leases.deadline_of(id, stored.record.attempts),
        };
        Ok(explain_with(stored, live, now))
    }
}
