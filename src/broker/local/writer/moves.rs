//! The writer's task commands: each loads the task, makes its move of the state machine
//! (`crate::task::lifecycle`) and commits the step; only enqueue has checks of its own
//! (capacity, free space, ids in use).

use std::sync::Arc;

use super::{Batch, Publish, Writer, load};
use crate::broker::{NewTask, Queued, SettleReport, Settlement};
use crate::clock::{Millis, millis_to_datetime};
use crate::events::{Event, EventKind};
use crate::queue::ReadyTask;
use crate::store::{StoreError, WriteTables};
use crate::task::Outcome;
use crate::task::lifecycle::{self, Orphaned};
use crate::task::{StoredTask, TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

impl Writer {
    pub(super) fn enqueue(
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
        // A remote client may choose its tasks' ids, and a task may be sent twice: an id in use
        // would overwrite another task, so the whole request is refused before anything is
        // written. Ids drawn for a task never sent are not looked up (`NewTask::fresh_id`).
        let mut seen = std::collections::HashSet::new();
        for new in tasks.iter().filter(|new| !new.has_fresh_id()) {
            if !seen.insert(new.id) || tables.contains_task(new.id)? {
                return Ok(Err(Error::invalid(
                    "id",
                    format!("task id {} is already in use", new.id),
                )));
            }
        }
        let mut queued = Vec::with_capacity(tasks.len());
        for new in tasks {
            // Checked in the transaction that inserts: a task queued earlier in this batch (by
            // this request or another) holds its key already, so no two tasks take one key.
            if let Some(spec) = &new.unique
                && let Some(holder) = tables.unique_holder(&spec.key, batch.now)?
            {
                queued.push(Queued {
                    id: holder,
                    duplicate: true,
                });
                continue;
            }
            let due_at = new.run_at.unwrap_or(batch.now);
            let task = StoredTask {
                name: new.name,
                queue: new.queue,
                priority: new.priority,
                payload: new.payload.as_str().to_owned(),
                status: TaskStatus::Pending,
                attempts: 0,
                max_retries: new.max_retries,
                timeout_ms: new.timeout.map(crate::clock::duration_ms),
                retry_delay_ms: new.retry_delay.map(crate::clock::duration_ms),
                created_at: batch.now,
                scheduled_at: due_at,
                due_at,
                seq: 0,
                started_at: None,
                finished_at: None,
                result: None,
                error: None,
                route: None,
                unique: new.unique,
                last_attempt: None,
                cancelled_by: None,
            };
            let mut step = lifecycle::queue(task, &mut self.next_seq);
            self.commit_step(tables, new.id, &mut step, batch.now, batch)?;
            if let Some(record) = Self::snapshot(batch, new.id, &step.task) {
                batch.emit(EventKind::Queued, record);
            }
            queued.push(Queued::new(new.id));
        }
        Ok(Ok(queued))
    }

    pub(super) fn claim(
        &mut self,
        tables: &mut WriteTables<'_>,
        tasks: Vec<ReadyTask>,
        lease_until: Millis,
        batch: &mut Batch,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut claimed = Vec::with_capacity(tasks.len());
        for ready in tasks {
            let task = match tables.get_task(ready.id) {
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
            let Ok(mut step) = lifecycle::claim(task, ready.id, ready.order, batch.now) else {
                continue;
            };
            if !self.admit_claim(tables, &ready, batch)? {
                continue;
            }
            self.commit_step(tables, ready.id, &mut step, lease_until, batch)?;
            let record = step.task.to_record(ready.id);
            if batch.audience {
                batch.emit(EventKind::BeforeExecution, Arc::new(record.clone()));
            }
            claimed.push(record);
        }
        Ok(claimed)
    }

    pub(super) fn settle(
        &mut self,
        tables: &mut WriteTables<'_>,
        settlement: &Settlement,
        batch: &mut Batch,
    ) -> Result<Result<SettleReport>, StoreError> {
        let id = settlement.id;
        let task = match load(tables, id)? {
            Ok(task) => task,
            Err(error) => return Ok(Err(error)),
        };
        let mut ctx = self.context(batch.now);
        let mut step =
            match lifecycle::settle(task, id, settlement.attempt, &settlement.outcome, &mut ctx) {
                Ok(step) => step,
                Err(error) => return Ok(Err(error)),
            };
        self.name_worker(id, &mut step);
        self.commit_step(tables, id, &mut step, batch.now, batch)?;
        Ok(Ok(Self::attempt_ended(
            batch,
            id,
            &step,
            &settlement.outcome,
        )))
    }

    /// Names, in the history entry of the attempt `step` ended, the worker that claimed it
    /// (which the registry forgets then).
    pub(super) fn name_worker(&self, id: TaskId, step: &mut lifecycle::Step) {
        if let Some(ended) = &mut step.ended {
            let completed = ended.outcome == crate::task::AttemptOutcome::Completed;
            ended.worker = self
                .shared
                .workers
                .ended(id, ended.attempt, completed)
                .map(crate::task::WorkerId::as_u128);
        }
    }

    /// The report of an attempt's end, and its events (see `Event::of_attempt_end`).
    pub(super) fn attempt_ended(
        batch: &mut Batch,
        id: TaskId,
        step: &lifecycle::Step,
        outcome: &Outcome,
    ) -> SettleReport {
        let record = Self::snapshot(batch, id, &step.task);
        if let Some(record) = &record {
            let events = Event::of_attempt_end(
                outcome,
                step.task.status,
                record,
                step.retry_at.map(millis_to_datetime),
                millis_to_datetime(batch.now),
            );
            batch.effects.extend(events.map(Publish::Emit));
        }
        SettleReport {
            status: step.task.status,
            retry_at: step.retry_at,
            record,
        }
    }

    /// A lease ran out: the same orphan move as recovery at open, and the event it makes.
    /// A settlement that raced the expiry makes the move stale: nothing to do then.
    pub(super) fn expire(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        attempt: u32,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let Ok(task) = load(tables, id)? else {
            return Ok(());
        };
        let mut ctx = self.context(batch.now);
        let Ok(mut step) = lifecycle::orphan(task, id, attempt, Orphaned::LeaseExpired, &mut ctx)
        else {
            return Ok(());
        };
        self.name_worker(id, &mut step);
        self.commit_step(tables, id, &mut step, batch.now, batch)?;
        batch.leases_expired += 1;
        if let Some(record) = Self::snapshot(batch, id, &step.task) {
            let error = record.error.clone();
            let event = Event::settled(
                step.task.status,
                Arc::clone(&record),
                error,
                step.retry_at.map(millis_to_datetime),
                millis_to_datetime(batch.now),
            );
            batch.effects.extend(event.map(Publish::Emit));
        }
        Ok(())
    }

    /// An operator's move on task `id` (cancel, retry): commits it and answers the task as it
    /// is after the move, or why the move was refused.
    pub(super) fn operate(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        operation: Operation,
        batch: &mut Batch,
    ) -> Result<Result<TaskRecord>, StoreError> {
        let task = match load(tables, id)? {
            Ok(task) => task,
            Err(error) => return Ok(Err(error)),
        };
        let now = batch.now;
        let cancel = matches!(operation, Operation::Cancel { .. });
        let moved = match operation {
            Operation::Cancel { by } => {
                lifecycle::cancel(task, id, self.forwarding.contains(&id), now, by)
            }
            Operation::Retry => lifecycle::retry(task, id, &mut self.context(now)),
        };
        let mut step = match moved {
            Ok(step) => step,
            Err(error) => return Ok(Err(error)),
        };
        self.commit_step(tables, id, &mut step, now, batch)?;
        let record = step.task.to_record(id);
        if cancel && batch.audience {
            batch.emit(EventKind::Cancelled, Arc::new(record.clone()));
        }
        Ok(Ok(record))
    }
}

/// The moves an operator makes on one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Operation {
    /// Cancel, naming who does.
    Cancel {
        by: String,
    },
    Retry,
}
