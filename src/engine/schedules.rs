//! The engine's schedule verbs: declare a recurring schedule with the task it queues, list
//! the schedules, and pause, resume, trigger or remove one. The broker keeps and fires them.

use super::Engine;
use crate::broker::{NewTask, QueueTask};
use crate::config::{Config, ScheduleConfig};
use crate::schedule::{
    CatchUp, Schedule, ScheduleAction, ScheduleInfo, ScheduleSpec, check_schedule_name,
};
use crate::{Error, Result};

impl Engine {
    /// Creates or replaces (by name) a recurring schedule that queues `task` at each fire
    /// time, exactly once per fire time, across crashes: queuing a fire time's task and
    /// advancing the schedule commit together. A changed spec or zone takes effect at once
    /// (the next fire time is the new spec's first after now); otherwise the schedule keeps its
    /// place, so declaring the same schedule at every start is harmless. The queued task's
    /// `scheduled_at` is its fire time.
    ///
    /// ```no_run
    /// # async fn demo(engine: fq::Engine) -> fq::Result<()> {
    /// use fq::{CatchUp, Schedule};
    /// let report = engine.queue_task_named("myapp.tasks.report", &serde_json::json!({}));
    /// engine
    ///     .schedule(Schedule::cron("nightly-report", "0 3 * * *").zone("Europe/Paris"), report)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field at fault: `schedule name`, `cron`, `every`,
    /// `zone`, or the task's own fields (`task name`, `queue`, `payload`, ...); a task given a
    /// delay or `schedule_at` (its fire time is its scheduled time); a storage failure.
    pub async fn schedule(&self, schedule: Schedule, task: QueueTask) -> Result<ScheduleInfo> {
        // Checked here too, so a bad spec is refused before a request leaves this process.
        schedule.timetable(0)?;
        let task = task.build()?;
        self.inner.broker.upsert_schedule(schedule, task).await
    }

    /// Every schedule, by name, with its next and last fire times and its last task's status.
    ///
    /// # Errors
    /// A storage or connection failure.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        self.inner.broker.schedules().await
    }

    /// Pauses a schedule, durably: it queues nothing until resumed.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown schedule; a storage failure.
    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.act_on_schedule(name, ScheduleAction::Pause).await
    }

    /// Resumes a paused schedule from its next fire time after now (the fire times passed
    /// while it was paused are not caught up).
    ///
    /// # Errors
    /// As [`Engine::pause_schedule`].
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.act_on_schedule(name, ScheduleAction::Resume).await
    }

    /// Queues the schedule's task once, now, outside its timetable (paused or not); the
    /// returned schedule's `last_task` is the new task.
    ///
    /// # Errors
    /// As [`Engine::pause_schedule`], or the task refused (a full queue, a nearly full disk).
    pub async fn trigger_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.act_on_schedule(name, ScheduleAction::Trigger).await
    }

    /// Deletes a schedule (the tasks it queued stay); returns it as it was.
    ///
    /// # Errors
    /// As [`Engine::pause_schedule`].
    pub async fn remove_schedule(&self, name: &str) -> Result<ScheduleInfo> {
        self.act_on_schedule(name, ScheduleAction::Remove).await
    }

    /// Pauses, resumes, triggers or removes the schedule `name`.
    ///
    /// # Errors
    /// As [`Engine::pause_schedule`].
    pub async fn act_on_schedule(
        &self,
        name: &str,
        action: ScheduleAction,
    ) -> Result<ScheduleInfo> {
        check_schedule_name(name)?;
        self.inner
            .broker
            .act_on_schedule(name.to_owned(), action)
            .await
    }
}

/// The configuration's schedules (`[[schedules]]`), each checked as [`Engine::schedule`] checks
/// one; a refusal names the entry's key (`schedules[2].cron`) and the file.
///
/// # Errors
/// [`Error::Config`] for the first bad entry.
pub(super) fn config_schedules(config: &Config) -> Result<Vec<(Schedule, NewTask)>> {
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(config.schedules.len());
    for (index, entry) in config.schedules.iter().enumerate() {
        let refuse = |field: &str, message: String| -> Error {
            ScheduleConfig::refusal(config.source.as_deref(), index, field, message).into()
        };
        // The entry's key for a field the engine names.
        let rekey = |error: Error| match error {
            Error::InvalidInput { field, message } => {
                let key = match field {
                    "schedule name" => "name",
                    "task name" => "task",
                    "payload" => "kwargs",
                    other => other,
                };
                refuse(key, message)
            }
            other => other,
        };
        let spec = match (&entry.cron, entry.every) {
            (Some(cron), None) => ScheduleSpec::Cron(cron.clone()),
            (None, Some(every)) => ScheduleSpec::Every(every),
            (Some(_), Some(_)) => {
                return Err(refuse("every", "give cron or every, not both".into()));
            }
            (None, None) => return Err(refuse("cron", "give cron or every".into())),
        };
        if !names.insert(entry.name.as_str()) {
            return Err(refuse(
                "name",
                format!("{:?} is declared twice", entry.name),
            ));
        }
        let mut schedule = Schedule::new(entry.name.clone(), spec).paused(entry.paused);
        if let Some(zone) = &entry.zone {
            schedule = schedule.zone(zone.clone());
        }
        if let Some(catch_up) = &entry.catch_up {
            schedule = schedule.catch_up(CatchUp::parse(catch_up).map_err(rekey)?);
        }
        schedule.timetable(0).map_err(rekey)?;
        let mut task = QueueTask::offline(config, &entry.task, &entry.payload());
        if let Some(queue) = &entry.queue {
            task = task.queue(queue.clone());
        }
        if let Some(priority) = entry.priority {
            task = task.priority(priority);
        }
        if let Some(max_retries) = entry.max_retries {
            task = task.max_retries(max_retries);
        }
        if let Some(timeout) = entry.timeout {
            task = task.timeout(timeout);
        }
        out.push((schedule, task.build().map_err(rekey)?));
    }
    Ok(out)
}
