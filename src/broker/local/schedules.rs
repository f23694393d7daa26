//! Recurring schedules in the embedded broker: the alarm the timer thread keeps for the
//! earliest fire time (set only after the writer's commit, loaded at open), and the broker's
//! schedule requests, turned into writer commands (`writer/schedules.rs` applies them) and
//! answered as [`ScheduleInfo`].

use std::sync::PoisonError;

use super::LocalBroker;
use super::writer::{Command, NamedSchedule, ScheduleCommand};
use crate::broker::NewTask;
use crate::clock::{Millis, millis_to_datetime};
use crate::schedule::{Schedule, ScheduleAction, ScheduleInfo};
use crate::store::{ScheduledTask, Store, StoredSchedule};
use crate::sync::Mutex;
use crate::task::TaskId;
use crate::{CatchUp, Error, Result};

/// How long the timer waits before sending a fire request again when the last one did not
/// move the alarm (its commit failed, or its tasks were refused): no busy loop, no lost fire.
const REFIRE_AFTER_MS: Millis = 1_000;

/// The earliest fire time of the armed schedules, and whether a fire request for it is out.
#[derive(Debug, Default)]
pub(crate) struct ScheduleAlarm {
    state: Mutex<AlarmState>,
    /// When the engine opened: fire times before it were missed (`CatchUp::Skip`).
    opened_at: Millis,
}

#[derive(Debug, Default)]
struct AlarmState {
    next: Option<Millis>,
    /// When the last fire request was sent, while its answer is awaited.
    sent_at: Option<Millis>,
}

impl ScheduleAlarm {
    pub(crate) fn new(next: Option<Millis>, opened_at: Millis) -> Self {
        Self {
            state: Mutex::new(AlarmState {
                next,
                sent_at: None,
            }),
            opened_at,
        }
    }

    /// The earliest fire time that, reached at `now`, is on time rather than missed.
    pub(crate) fn on_time_from(&self, now: Millis) -> Millis {
        self.opened_at
            .max(now.saturating_sub(crate::schedule::MISSED_AFTER_MS))
    }

    /// Called after a commit that changed schedules, at the batch's time `now`. A fire time
    /// still due after it (its tasks were refused) is tried again after `REFIRE_AFTER_MS`.
    pub(crate) fn set(&self, next: Option<Millis>, now: Millis) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next = next;
        state.sent_at = next.filter(|at| *at <= now).map(|_| now);
    }

    /// True when a fire request is to be sent now (and marks it sent).
    pub(crate) fn take_due(&self, now: Millis) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = state.next.is_some_and(|at| at <= now)
            && state
                .sent_at
                .is_none_or(|sent| now.saturating_sub(sent) >= REFIRE_AFTER_MS);
        if due {
            state.sent_at = Some(now);
        }
        due
    }

    /// When the timer should look again for schedules.
    pub(crate) fn wake_at(&self) -> Option<Millis> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.sent_at {
            Some(sent) => Some(sent.saturating_add(REFIRE_AFTER_MS)),
            None => state.next,
        }
    }
}

/// A schedule and its task template, checked, as the store keeps it.
pub(crate) fn stored_schedule(
    schedule: &Schedule,
    task: &NewTask,
    from_config: bool,
) -> Result<StoredSchedule> {
    // Checked here, so a bad spec is refused before it reaches the writer; the writer builds
    // the timetable again from the stored text, with its own anchor.
    schedule.timetable(0)?;
    if task.run_at.is_some() {
        return Err(Error::invalid(
            "task",
            "a scheduled task takes no delay or schedule_at: its fire time is its scheduled time",
        ));
    }
    if task.unique.is_some() {
        // Not kept with the schedule yet: refused rather than dropped without a word.
        return Err(Error::invalid(
            "task",
            "a scheduled task takes no unique key (schedules queue exactly one task per fire time)",
        ));
    }
    let ms = |duration: Option<std::time::Duration>| duration.map(crate::clock::duration_ms);
    Ok(StoredSchedule {
        spec: schedule.spec.to_string(),
        zone: schedule.zone.clone(),
        anchor: 0,
        catch_up: schedule.catch_up.code(),
        paused: schedule.paused,
        from_config,
        orphaned: false,
        next_fire: None,
        last_fire: None,
        last_task: None,
        task: ScheduledTask {
            name: task.name.clone(),
            payload: task.payload.as_str().to_owned(),
            queue: task.queue.clone(),
            priority: task.priority,
            max_retries: task.max_retries,
            timeout_ms: ms(task.timeout),
            retry_delay_ms: ms(task.retry_delay),
        },
    })
}

/// Declares the configuration's schedules in `store` at open, before the writer starts (see
/// `writer::sync_config`); a store with nothing from a configuration, declared or stored, is
/// not written.
pub(crate) fn declare_config_schedules(
    store: &Store,
    schedules: &[(Schedule, NewTask)],
    now: Millis,
) -> Result<()> {
    let declared = schedules
        .iter()
        .map(|(schedule, task)| {
            stored_schedule(schedule, task, true).map(|stored| (schedule.name.clone(), stored))
        })
        .collect::<Result<Vec<_>>>()?;
    let stored_from_config = store
        .schedules()?
        .iter()
        .any(|(_, schedule)| schedule.from_config && !schedule.orphaned);
    if declared.is_empty() && !stored_from_config {
        return Ok(());
    }
    store.write(|tables| super::writer::sync_config(tables, declared, now))?
}

/// What `fq schedules` shows of a stored schedule; its last task's status is read from `store`.
pub(crate) fn schedule_info(
    store: &Store,
    (name, schedule): NamedSchedule,
) -> Result<ScheduleInfo> {
    let last_task = schedule.last_task.map(TaskId::from_u128);
    let last_status = match last_task {
        Some(id) => store.read_task(id)?.map(|task| task.status),
        None => None,
    };
    let armed = schedule.armed();
    Ok(ScheduleInfo {
        name,
        spec: schedule.spec,
        zone: schedule.zone,
        catch_up: CatchUp::from_code(schedule.catch_up),
        task: schedule.task.name,
        queue: schedule.task.queue,
        next_fire: schedule.next_fire.filter(|_| armed).map(millis_to_datetime),
        last_fire: schedule.last_fire.map(millis_to_datetime),
        last_task,
        last_status,
        paused: schedule.paused,
        orphaned: schedule.orphaned,
        from_config: schedule.from_config,
    })
}

/// Every schedule of `store`, by name.
pub(crate) fn list_schedules(store: &Store) -> Result<Vec<ScheduleInfo>> {
    store
        .schedules()?
        .into_iter()
        .map(|named| schedule_info(store, named))
        .collect()
}

impl LocalBroker {
    async fn info(&self, named: NamedSchedule) -> Result<ScheduleInfo> {
        let named = std::sync::Arc::new(named);
        self.read(move |store| schedule_info(store, (*named).clone()))
            .await
    }

    /// Creates or replaces the schedule `schedule`, queuing `task` at its fire times.
    pub(crate) async fn put_schedule(
        &self,
        schedule: Schedule,
        task: NewTask,
    ) -> Result<ScheduleInfo> {
        let stored = stored_schedule(&schedule, &task, false)?;
        let named = self
            .request(|reply| {
                Command::Schedule(ScheduleCommand::Upsert {
                    name: schedule.name.clone(),
                    schedule: Box::new(stored),
                    reply,
                })
            })
            .await?;
        self.info(named).await
    }

    /// Pauses, resumes, triggers or removes the schedule `name`.
    pub(crate) async fn schedule_action(
        &self,
        name: String,
        action: ScheduleAction,
    ) -> Result<ScheduleInfo> {
        let named = self
            .request(|reply| {
                Command::Schedule(ScheduleCommand::Act {
                    name,
                    action,
                    reply,
                })
            })
            .await?;
        self.info(named).await
    }

    /// Every schedule, by name.
    pub(crate) async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        self.read(list_schedules).await
    }
}
