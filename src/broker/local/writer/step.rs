//! The effects of a move: written as rows in the batch's transaction, and published to the
//! in-memory structures (ready heap, delay index, lease table, events) after its commit.

use super::{Batch, Publish, Writer};
use crate::clock::Millis;
use crate::store::{StoreError, WriteTables};
use crate::task::lifecycle::{Effect, Step};
use crate::task::{StoredTask, TaskId};

impl Writer {
    pub(super) fn publish(&self, effects: Vec<Publish>, now: Millis) {
        let mut woke = false;
        let mut poke = false;
        let mut outcomes = Vec::new();
        for effect in effects {
            match effect {
                Publish::Wait { queue, order, id } => {
                    if order.due_at <= now {
                        self.shared.ready.push(&queue, order, id);
                        woke = true;
                    } else {
                        self.shared
                            .delayed
                            .insert(self.shared.ready.intern(&queue), order, id);
                        poke = true;
                    }
                }
                Publish::Withdraw { queue, order } => {
                    self.shared
                        .delayed
                        .withdraw(&self.shared.ready, &queue, order);
                }
                Publish::Lease { id, attempt, until } => {
                    self.shared.leases.grant(id, attempt, until)
                }
                Publish::Unlease { id } => self.shared.leases.release(id),
                Publish::Emit(event) => self.shared.events.emit(|| event),
                Publish::Outcome(id) => outcomes.push(id),
                Publish::Paused { queue, paused } => {
                    self.shared.paused.set(&queue, paused);
                    woke |= !paused;
                }
                Publish::ScheduleAlarm(next) => {
                    self.shared.schedule_alarm.set(next, now);
                    poke = true;
                }
                Publish::HandOff { deliver, record } => {
                    let id = record.id;
                    if deliver.send(*record).is_err() {
                        tracing::warn!(task.id = %id, "the claim a task was handed to went away; \
                            it runs again once its lease expires, as after a lost worker");
                    }
                }
                Publish::Running { queue, running } => {
                    woke |= self.publish_running(&queue, running);
                }
            }
        }
        self.shared.waiters.wake(&outcomes);
        if woke {
            self.shared.work.notify_waiters();
        }
        if poke {
            self.shared.timer.poke();
        }
    }

    /// What the settling moves need: the batch's time, the retry policy, the sequence.
    pub(super) fn context(&mut self, now: Millis) -> crate::task::lifecycle::Context<'_> {
        crate::task::lifecycle::Context {
            now,
            retry: self.settings.retry,
            next_seq: &mut self.next_seq,
        }
    }

    /// Writes a move's task and rows in the batch's transaction and queues its in-memory
    /// effects for after the commit; `lease_until` is the deadline of a lease it grants.
    pub(super) fn commit_step(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        step: &mut Step,
        lease_until: Millis,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        write_step(tables, id, step)?;
        self.note_running(tables, step, batch)?;
        self.publish_effects(id, &step.task, step.effects.iter(), lease_until, batch);
        if super::super::waiters::is_outcome(step.task.status) {
            batch.effects.push(Publish::Outcome(id));
        }
        if step.task.status == crate::task::TaskStatus::Completed {
            *batch.completed.entry(step.task.queue.clone()).or_insert(0) += 1;
        }
        // Every counted move of the state machine passes here: the one place metrics are fed.
        if let Some(cache) = &mut self.instruments
            && let Some(observation) = crate::metrics::Observation::of(
                step.previous,
                step.task.status,
                &step.task.queue,
                &step.task.name,
                step.task.due_at,
                step.task.started_at,
                batch.now,
                cache,
            )
        {
            batch.observed.push(observation);
        }
        Ok(())
    }

    /// Deletes a task whatever its status, with its rows (purge, or a RabbitMQ run replacing
    /// the record).
    pub(super) fn discard(
        &mut self,
        tables: &mut WriteTables<'_>,
        id: TaskId,
        task: &StoredTask,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let effects = crate::task::lifecycle::discard(task);
        for effect in effects.iter() {
            write_effect(tables, id, task, effect)?;
        }
        tables.delete_task(id, task)?;
        self.publish_effects(id, task, effects.iter(), batch.now, batch);
        batch.effects.push(Publish::Outcome(id));
        Ok(())
    }

    /// Keeps the waiting count and queues the in-memory side of `effects`.
    fn publish_effects(
        &mut self,
        id: TaskId,
        task: &StoredTask,
        effects: impl Iterator<Item = Effect>,
        lease_until: Millis,
        batch: &mut Batch,
    ) {
        for effect in effects {
            let publish = match effect {
                Effect::Wait(order) => {
                    self.waiting += 1;
                    // Noted only while a claim waits for work: it is what the note is for.
                    if order.due_at <= batch.now && self.shared.handoffs.any() {
                        batch.ready.push(crate::queue::ReadyTask {
                            queue: self.shared.ready.intern(&task.queue),
                            order,
                            id,
                        });
                    }
                    Publish::Wait {
                        queue: task.queue.clone(),
                        order,
                        id,
                    }
                }
                Effect::Dequeue(_) => {
                    self.waiting = self.waiting.saturating_sub(1);
                    continue;
                }
                Effect::Withdraw(order) => {
                    self.waiting = self.waiting.saturating_sub(1);
                    Publish::Withdraw {
                        queue: task.queue.clone(),
                        order,
                    }
                }
                Effect::Lease(attempt) => Publish::Lease {
                    id,
                    attempt,
                    until: lease_until,
                },
                Effect::Unlease => Publish::Unlease { id },
                Effect::Finish(..) | Effect::Unfinish(..) => continue,
            };
            batch.effects.push(publish);
        }
    }
}

/// Writes a move's rows and its task in the current transaction: the store side of a move,
/// shared by the writer and by recovery at open. A run the move ended becomes the record's
/// newest attempt (`step.task.last_attempt`), the one before it joins the history row.
pub(in crate::broker::local) fn write_step(
    tables: &mut WriteTables<'_>,
    id: TaskId,
    step: &mut Step,
) -> Result<(), StoreError> {
    for effect in step.effects.iter() {
        write_effect(tables, id, &step.task, effect)?;
    }
    if let Some(ended) = &step.ended {
        tables.record_attempt(id, &mut step.task, ended.clone())?;
    }
    tables.put_task(id, &step.task, step.previous)
}

fn write_effect(
    tables: &mut WriteTables<'_>,
    id: TaskId,
    task: &StoredTask,
    effect: Effect,
) -> Result<(), StoreError> {
    match effect {
        Effect::Wait(order) => tables.insert_waiting(&task.queue, order, id),
        Effect::Dequeue(order) | Effect::Withdraw(order) => {
            tables.remove_waiting(&task.queue, order)
        }
        Effect::Lease(attempt) => tables.insert_lease(id, attempt),
        Effect::Unlease => tables.remove_lease(id),
        Effect::Finish(status, at) => tables.insert_finished(status, at, id),
        Effect::Unfinish(status, at) => tables.remove_finished(status, at, id),
    }
}
