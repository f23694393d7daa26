//! The writer's schedule commands. Each fire time's task is queued, and the schedule's next
//! fire time advanced past it, in the same write transaction: a crash before the commit loses
//! both (the fire time is queued again after the reopen), a crash after it keeps both, so each
//! fire time is queued exactly once. After every change the earliest armed fire time is
//! published to the timer's alarm.

use super::{Batch, Publish, Writer};
use crate::broker::NewTask;
use crate::clock::Millis;
use crate::schedule::{CatchUp, ScheduleAction, ScheduleSpec, Timetable, due_fire_times};
use crate::store::{StoreError, StoredSchedule, WriteTables};
use crate::task::{Payload, TaskId};
use crate::{Error, Result};

use super::command::{Answer, Reply};

/// A schedule's name and record, as the writer answers.
pub(crate) type NamedSchedule = (String, StoredSchedule);

/// A schedule request to the writer.
pub(crate) enum ScheduleCommand {
    /// Creates or replaces a schedule (its spec and zone already checked). A changed spec,
    /// zone or resume restarts its timetable from now; otherwise its position is kept.
    Upsert {
        name: String,
        schedule: Box<StoredSchedule>,
        reply: Reply<NamedSchedule>,
    },
    /// Pauses, resumes, triggers or removes a schedule.
    Act {
        name: String,
        action: ScheduleAction,
        reply: Reply<NamedSchedule>,
    },
    /// Queues the fire times that are due (sent by the timer).
    Fire,
}

impl ScheduleCommand {
    pub(super) fn fail(self, error: Error) {
        match self {
            ScheduleCommand::Upsert { reply, .. } | ScheduleCommand::Act { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            ScheduleCommand::Fire => {}
        }
    }
}

/// The timetable of a stored schedule.
fn timetable_of(schedule: &StoredSchedule) -> Result<Timetable> {
    let spec = ScheduleSpec::parse(&schedule.spec)?;
    Timetable::new(&spec, &schedule.zone, schedule.anchor)
}

/// Restarts a schedule's timetable at `now`: an interval counts from now, the next fire time
/// is the first after now.
fn restart(schedule: &mut StoredSchedule, now: Millis) -> Result<()> {
    schedule.anchor = now;
    schedule.next_fire = timetable_of(schedule)?.next_after(now);
    Ok(())
}

impl Writer {
    /// Applies a schedule command; an `Err` is a storage failure that aborts the batch.
    pub(super) fn apply_schedule(
        &mut self,
        tables: &mut WriteTables<'_>,
        command: ScheduleCommand,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        match command {
            ScheduleCommand::Upsert {
                name,
                schedule,
                reply,
            } => {
                let result = upsert(tables, name, *schedule, false, batch.now);
                let answer = keep_reply!(batch, reply, result);
                batch.answers.push(Answer::new(reply, answer, 0));
            }
            ScheduleCommand::Act {
                name,
                action,
                reply,
            } => {
                let result = self.act_on_schedule(tables, name, action, batch);
                let answer = keep_reply!(batch, reply, result);
                batch.answers.push(Answer::new(reply, answer, 0));
            }
            ScheduleCommand::Fire => self.fire_schedules(tables, batch)?,
        }
        self.publish_schedule_alarm(tables, batch)
    }

    fn publish_schedule_alarm(
        &self,
        tables: &mut WriteTables<'_>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let next = tables
            .all_schedules()?
            .iter()
            .filter(|(_, schedule)| schedule.armed())
            .filter_map(|(_, schedule)| schedule.next_fire)
            .min();
        batch.effects.push(Publish::ScheduleAlarm(next));
        Ok(())
    }

    fn act_on_schedule(
        &mut self,
        tables: &mut WriteTables<'_>,
        name: String,
        action: ScheduleAction,
        batch: &mut Batch,
    ) -> Result<Result<NamedSchedule>, StoreError> {
        let Some(mut schedule) = tables.get_schedule(&name)? else {
            return Ok(Err(Error::invalid(
                "schedule name",
                format!("no schedule named {name:?}"),
            )));
        };
        match action {
            ScheduleAction::Pause => schedule.paused = true,
            ScheduleAction::Resume => {
                if schedule.paused {
                    schedule.paused = false;
                    if let Err(error) = restart_position(&mut schedule, batch.now) {
                        return Ok(Err(error));
                    }
                }
            }
            ScheduleAction::Trigger => {
                let queued = self.queue_fire_times(tables, &mut schedule, &[batch.now], batch)?;
                if let Err(error) = queued {
                    return Ok(Err(error));
                }
            }
            ScheduleAction::Remove => {
                tables.remove_schedule(&name)?;
                return Ok(Ok((name, schedule)));
            }
        }
        tables.put_schedule(&name, &schedule)?;
        Ok(Ok((name, schedule)))
    }

    /// Queues the due fire times of every armed schedule and advances each past `now`.
    fn fire_schedules(
        &mut self,
        tables: &mut WriteTables<'_>,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let now = batch.now;
        for (name, mut schedule) in tables.all_schedules()? {
            let Some(next_fire) = schedule.next_fire.filter(|at| *at <= now) else {
                continue;
            };
            if !schedule.armed() {
                continue;
            }
            let timetable = match timetable_of(&schedule) {
                Ok(timetable) => timetable,
                Err(error) => {
                    // Only a record written by another build could hold a spec this one
                    // refuses; it stops rather than firing at a wrong time.
                    tracing::error!(schedule = %name, %error, "schedule's spec does not parse: stopped");
                    schedule.next_fire = None;
                    tables.put_schedule(&name, &schedule)?;
                    continue;
                }
            };
            let catch_up = CatchUp::from_code(schedule.catch_up);
            let on_time_from = self.shared.schedule_alarm.on_time_from(now);
            let (fire_times, after) =
                due_fire_times(&timetable, next_fire, now, on_time_from, catch_up);
            if fire_times.first() != Some(&next_fire) {
                tracing::info!(schedule = %name, policy = catch_up.as_str(), queued = fire_times.len(), "missed fire times caught up");
            }
            match self.queue_fire_times(tables, &mut schedule, &fire_times, batch)? {
                Ok(()) => schedule.next_fire = after,
                Err(error) => {
                    // Refused (queue full, disk nearly full): the fire times stay due and are
                    // tried again, so none is lost.
                    tracing::warn!(schedule = %name, %error, "schedule's task refused; retrying");
                }
            }
            tables.put_schedule(&name, &schedule)?;
        }
        Ok(())
    }

    /// Queues the schedule's task for each of `fire_times` (as its scheduled time) and records
    /// the last one; all or none.
    fn queue_fire_times(
        &mut self,
        tables: &mut WriteTables<'_>,
        schedule: &mut StoredSchedule,
        fire_times: &[Millis],
        batch: &mut Batch,
    ) -> Result<Result<()>, StoreError> {
        if fire_times.is_empty() {
            return Ok(Ok(()));
        }
        let template = &schedule.task;
        let duration = |ms: Option<u64>| ms.map(std::time::Duration::from_millis);
        let tasks: Vec<NewTask> = fire_times
            .iter()
            .map(|fire_time| NewTask {
                id: TaskId::new(),
                name: template.name.clone(),
                queue: template.queue.clone(),
                priority: template.priority,
                payload: Payload::from_trusted(template.payload.clone()),
                max_retries: template.max_retries,
                timeout: duration(template.timeout_ms),
                retry_delay: duration(template.retry_delay_ms),
                run_at: Some(*fire_time),
                unique: None,
                fresh_id: true.into(),
            })
            .collect();
        let ids = match self.enqueue(tables, tasks, batch)? {
            Ok(ids) => ids,
            Err(error) => return Ok(Err(error)),
        };
        schedule.last_fire = fire_times.last().copied();
        schedule.last_task = ids.last().map(|queued| queued.id.as_u128());
        Ok(Ok(()))
    }
}

/// Creates or replaces a schedule in `tables` at time `now`: a changed spec or zone restarts
/// its timetable from now, a resumed one goes on from its next fire time after now; otherwise
/// it keeps its place and history. With `keep_paused`, a pause already stored stays (a
/// config file's declaration does not undo `fq schedules pause`).
fn upsert(
    tables: &mut WriteTables<'_>,
    name: String,
    mut schedule: StoredSchedule,
    keep_paused: bool,
    now: Millis,
) -> Result<Result<NamedSchedule>, StoreError> {
    let existing = tables.get_schedule(&name)?;
    if keep_paused && let Some(existing) = &existing {
        schedule.paused |= existing.paused;
    }
    let restarted = match &existing {
        Some(existing) => {
            schedule.anchor = existing.anchor;
            schedule.next_fire = existing.next_fire;
            schedule.last_fire = existing.last_fire;
            schedule.last_task = existing.last_task;
            if existing.spec != schedule.spec || existing.zone != schedule.zone {
                restart(&mut schedule, now)
            } else if !existing.armed() && schedule.armed() {
                restart_position(&mut schedule, now)
            } else {
                Ok(())
            }
        }
        None => restart(&mut schedule, now),
    };
    if let Err(error) = restarted {
        return Ok(Err(error));
    }
    tables.put_schedule(&name, &schedule)?;
    Ok(Ok((name, schedule)))
}

/// Declares a config file's schedules at open (before the writer starts): each is upserted
/// and marked as from the config; a schedule from the config that it no longer declares is
/// marked orphaned (disabled, kept for `fq schedules`), and declared again it is live again.
pub(in crate::broker::local) fn sync_config(
    tables: &mut WriteTables<'_>,
    declared: Vec<NamedSchedule>,
    now: Millis,
) -> Result<Result<()>, StoreError> {
    let names: std::collections::HashSet<&str> =
        declared.iter().map(|(name, _)| name.as_str()).collect();
    for (name, mut schedule) in tables.all_schedules()? {
        if schedule.from_config && !schedule.orphaned && !names.contains(name.as_str()) {
            tracing::warn!(schedule = %name, "schedule no longer in the config: disabled, shown as orphaned");
            schedule.orphaned = true;
            tables.put_schedule(&name, &schedule)?;
        }
    }
    for (name, schedule) in declared {
        if let Err(error) = upsert(tables, name, schedule, true, now)? {
            return Ok(Err(error));
        }
    }
    Ok(Ok(()))
}

/// A resumed schedule goes on from its next fire time after now: the fire times passed while
/// it was paused are not caught up.
fn restart_position(schedule: &mut StoredSchedule, now: Millis) -> Result<()> {
    schedule.next_fire = timetable_of(schedule)?.next_after(now);
    Ok(())
}
