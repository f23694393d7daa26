//! The engine's schedule verbs: declare a recurring schedule with the task it queues, list
//! the schedules, and pause, resume, trigger or remove one. The broker keeps and fires them.

use super::Engine;
use crate::Result;
use crate::broker::QueueTask;
use crate::schedule::{Schedule, ScheduleAction, ScheduleInfo, check_schedule_name};

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
