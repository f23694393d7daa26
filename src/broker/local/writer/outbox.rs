//! The writer's side of the RabbitMQ bridge: the waiting tasks are the outbox the forwarder
//! publishes from (take, forward, give back), and runs of tasks delivered by RabbitMQ are
//! recorded here, as are the starts and outcomes workers report for tasks this store forwarded.

use super::{Batch, RunRecord, RunRecorded, Writer, load};
use crate::clock::Millis;
use crate::queue::ReadyTask;
use crate::store::{PendingReport, StoreError, WriteTables};
use crate::task::lifecycle;
use crate::task::{ReadyOrder, Route, StoredTask, TaskId, TaskStatus};
use crate::{Error, Result};

impl Writer {
    /// See [`super::Command::TakeForForwarding`]. Tasks cancelled (or otherwise moved on) since
    /// they were taken are dropped; a damaged record is logged and dropped.
    pub(super) fn take_for_forwarding(
        &mut self,
        tables: &WriteTables<'_>,
        tasks: Vec<ReadyTask>,
    ) -> Result<Vec<(ReadyTask, StoredTask)>, StoreError> {
        let mut found = Vec::with_capacity(tasks.len());
        for task in tasks {
            match load(tables, task.id)? {
                Ok(record) if record.waits_here() && record.seq == task.order.seq => {
                    self.forwarding.insert(task.id);
                    found.push((task, record));
                }
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(error) => {
                    tracing::error!(task.id = %task.id, %error, "cannot forward a task whose record is corrupt");
                }
            }
        }
        Ok(found)
    }

    /// See [`super::Command::Untake`].
    pub(super) fn untake(&mut self, tasks: Vec<ReadyTask>, requeue: bool) {
        for task in &tasks {
            self.forwarding.remove(&task.id);
        }
        if requeue {
            // Back on the heap only now that they are no longer marked: a forwarder that takes
            // them again marks them again, after this.
            for task in tasks {
                self.shared.ready.push(&task.queue, task.order, task.id);
            }
            self.shared.work.notify_waiters();
        }
    }

    /// Marks confirmed tasks FORWARDED; returns how many were. A task whose record moved on
    /// since it was taken (cancelled, or already run by a worker sharing this store) is left
    /// as it is.
    pub(super) fn forwarded(
        &mut self,
        tables: &mut WriteTables<'_>,
        tasks: Vec<(TaskId, ReadyOrder)>,
        at: Millis,
        batch: &mut Batch,
    ) -> Result<u64, StoreError> {
        let mut marked = 0;
        for (id, order) in tasks {
            self.forwarding.remove(&id);
            let task = match tables.get_task(id) {
                Ok(Some(task)) => task,
                Ok(None) | Err(StoreError::CorruptRecord { .. }) => continue,
                Err(other) => return Err(other),
            };
            let Ok(mut step) = lifecycle::forward(task, id, order, at) else {
                continue;
            };
            self.commit_step(tables, id, &mut step, at, batch)?;
            marked += 1;
        }
        Ok(marked)
    }

    /// Records a finished run of a task delivered by RabbitMQ. The record is created, or
    /// replaced when this store already has the task (it queued it, or ran it before), with
    /// its old rows removed first so counts and indexes stay exact.
    pub(super) fn record_run(
        &mut self,
        tables: &mut WriteTables<'_>,
        run: RunRecord,
        batch: &mut Batch,
    ) -> Result<Result<RunRecorded>, StoreError> {
        let id = run.id;
        let existing = match tables.get_task(id) {
            Ok(existing) => existing,
            Err(StoreError::CorruptRecord { id, detail }) => {
                tracing::error!(task.id = %id, %detail, "replacing a corrupt record with the run delivered by RabbitMQ");
                tables.remove_corrupt_record(id)?;
                None
            }
            Err(other) => return Err(other),
        };
        if let Some(old) = &existing {
            self.discard(tables, id, old, batch)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = StoredTask {
            name: run.name,
            queue: run.queue,
            priority: run.priority,
            payload: run.payload,
            status: TaskStatus::Running,
            attempts: run.attempt,
            max_retries: run.max_retries,
            timeout_ms: run.timeout_ms,
            retry_delay_ms: run.retry_delay_ms,
            created_at: existing
                .as_ref()
                .map_or(run.created_at, |old| old.created_at),
            scheduled_at: run.scheduled_at,
            due_at: run.started_at,
            seq,
            started_at: Some(run.started_at),
            finished_at: None,
            result: None,
            error: None,
            route: run.reply_to.clone().map(Route::ReplyTo),
            // A run recorded over the record this store queued (it forwarded the task and
            // consumed it too) keeps the task's unique key held.
            unique: existing.and_then(|old| old.unique),
            last_attempt: None,
            cancelled_by: None,
        };
        let mut ctx = self.context(batch.now);
        let mut step = match lifecycle::finish_run(task, id, &run.outcome, &mut ctx) {
            Ok(step) => step,
            Err(error) => return Ok(Err(error)),
        };
        // The record is new to the store (any old one was discarded above).
        step.previous = None;
        self.name_worker(id, &mut step);
        self.commit_step(tables, id, &mut step, batch.now, batch)?;
        let report = match run.reply_to {
            Some(reply_to) if run.report => {
                let report = lifecycle::Report::ended(
                    run.attempt,
                    step.task.status,
                    Some(run.started_at),
                    &run.outcome,
                    step.retry_at,
                    batch.now,
                );
                tables.put_report(id, &reply_to, &report)?;
                Some(PendingReport {
                    id,
                    reply_to,
                    report,
                })
            }
            _ => None,
        };
        let settled = Self::attempt_ended(batch, id, &step, &run.outcome);
        Ok(Ok(RunRecorded { settled, report }))
    }
}

impl Writer {
    /// Applies starts and outcomes reported over RabbitMQ for tasks this store forwarded (the
    /// `report` move), each with its events after the commit unless `quiet` (a start this
    /// process's own consumer already announced). Returns how many were applied; stale,
    /// duplicate and unknown ones are skipped.
    pub(super) fn apply_reports(
        &mut self,
        tables: &mut WriteTables<'_>,
        reports: Vec<(TaskId, lifecycle::Report)>,
        quiet: bool,
        batch: &mut Batch,
    ) -> Result<u64, StoreError> {
        let mut applied = 0;
        for (id, report) in reports {
            let task = match tables.get_task(id) {
                Ok(Some(task)) => task,
                Ok(None) => continue,
                Err(StoreError::CorruptRecord { id, detail }) => {
                    tracing::error!(task.id = %id, %detail, "cannot apply a reported outcome to a corrupt record");
                    continue;
                }
                Err(other) => return Err(other),
            };
            let Ok(mut step) = lifecycle::report(task, id, &report) else {
                continue;
            };
            self.commit_step(tables, id, &mut step, batch.now, batch)?;
            applied += 1;
            if quiet || !batch.audience {
                continue;
            }
            let record = std::sync::Arc::new(step.task.to_record(id));
            let at = crate::clock::millis_to_datetime(batch.now);
            match &report {
                lifecycle::Report::Started { .. } => {
                    batch.emit(crate::events::EventKind::BeforeExecution, record);
                }
                lifecycle::Report::Ended(_) => {
                    let outcome = match (&record.result, &record.error) {
                        (_, Some(failure)) if step.task.status != TaskStatus::Completed => {
                            crate::task::Outcome::Failed {
                                failure: failure.clone(),
                                retry_after: None,
                            }
                        }
                        (result, _) => crate::task::Outcome::Completed {
                            result: result.clone().unwrap_or(serde_json::Value::Null),
                        },
                    };
                    let events = crate::events::Event::of_attempt_end(
                        &outcome,
                        step.task.status,
                        &record,
                        step.retry_at.map(crate::clock::millis_to_datetime),
                        at,
                    );
                    batch.effects.extend(events.map(super::Publish::Emit));
                }
            }
        }
        Ok(applied)
    }
}
