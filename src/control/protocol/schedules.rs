//! The schedule ops' arguments and results as they cross the wire (docs/protocol.md,
//! "schedule", "schedules", "schedule_action"). Plain data: the checks are the engine's.

use serde::{Deserialize, Serialize};

use crate::schedule::{CatchUp, Schedule, ScheduleAction, ScheduleInfo, ScheduleSpec};
use crate::{Error, Result};

/// `schedule` arguments: the schedule, and the task it queues (`WireTask` without a run time).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleArgs<T> {
    pub(crate) name: String,
    /// A cron expression, or `every <duration>`.
    pub(crate) spec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) catch_up: Option<CatchUp>,
    #[serde(default)]
    pub(crate) paused: bool,
    pub(crate) task: T,
}

impl<T> ScheduleArgs<T> {
    /// The schedule these arguments describe (its spec checked later, with its zone).
    pub(crate) fn schedule(&self) -> Result<Schedule> {
        let mut schedule = Schedule::new(self.name.clone(), ScheduleSpec::parse(&self.spec)?)
            .catch_up(self.catch_up.unwrap_or_default())
            .paused(self.paused);
        if let Some(zone) = &self.zone {
            schedule = schedule.zone(zone.clone());
        }
        Ok(schedule)
    }

    /// The arguments describing `schedule`, with its task as `task`.
    pub(crate) fn of(schedule: &Schedule, task: T) -> Self {
        Self {
            name: schedule.name.clone(),
            spec: schedule.spec.to_string(),
            zone: Some(schedule.zone.clone()),
            catch_up: Some(schedule.catch_up),
            paused: schedule.paused,
            task,
        }
    }
}

/// `schedule_action` arguments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleActionArgs {
    pub(crate) name: String,
    /// `pause`, `resume`, `trigger` or `remove`.
    pub(crate) action: String,
}

impl ScheduleActionArgs {
    pub(crate) fn action(&self) -> Result<ScheduleAction> {
        [
            ScheduleAction::Pause,
            ScheduleAction::Resume,
            ScheduleAction::Trigger,
            ScheduleAction::Remove,
        ]
        .into_iter()
        .find(|action| action.as_str() == self.action)
        .ok_or_else(|| {
            Error::invalid(
                "action",
                format!(
                    "{:?} is not a schedule action; use pause, resume, trigger or remove",
                    self.action
                ),
            )
        })
    }
}

/// `schedule` and `schedule_action` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScheduleOk {
    pub(crate) schedule: ScheduleInfo,
}

/// `schedules` result.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SchedulesOk {
    pub(crate) schedules: Vec<ScheduleInfo>,
}
