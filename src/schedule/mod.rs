//! Recurring schedules: what a schedule is (a name, a spec, a time zone, a catch-up policy),
//! how its spec is checked, and which fire times fall due. It computes times only: storing a
//! schedule and queuing its tasks (in one transaction per fire) belong to the broker.
//!
//! # Time zones and daylight saving
//! A cron spec reads its fields as wall-clock time in the schedule's zone (default `UTC`),
//! following croner's rules, which are the Open Cron Pattern Specification's:
//! - a wall-clock time that does not exist (skipped by a spring-forward change) fires once, at
//!   the first instant after the gap: `30 2 * * *` in `Europe/Paris` on the last Sunday of March
//!   fires at 03:00 local time;
//! - a wall-clock time that happens twice (a fall-back change) fires once, at its first
//!   occurrence, for a spec with fixed seconds, minutes and hours (`30 2 * * *`); a spec with a
//!   wildcard or step in those fields (`*/15 * * * *`) fires at each real instant that matches,
//!   both occurrences included, so it keeps its rhythm in real time.
//!
//! An interval (`every 30s`) ignores the zone: it fires every interval of real time from the
//! moment the schedule was created (or its spec last changed).

mod timetable;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::task::{TaskId, TaskStatus};
use crate::{Error, Result};

pub(crate) use timetable::Timetable;

/// The most missed fire times a schedule with [`CatchUp::All`] queues after downtime.
pub const MAX_CATCH_UP: usize = 100;

/// How late a fire time may be reached by a running engine and still count as on time, in
/// milliseconds: later than this (the machine was asleep, the process stalled), it was missed.
/// A fire time before the engine opened was missed too, however recent.
pub const MISSED_AFTER_MS: i64 = 60_000;

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleSpec {
    /// A cron expression: 5 fields (minute hour day month weekday), or 6 with seconds first,
    /// or a nickname (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    Cron(String),
    /// A fixed interval of real time.
    Every(Duration),
}

impl ScheduleSpec {
    /// Reads the text form [`fmt::Display`] writes: `every 30s` for an interval (any duration
    /// [`crate::parse_duration`] reads), anything else a cron expression.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `every` when the interval does not parse.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        match text.strip_prefix("every ") {
            Some(interval) => crate::config::parse_duration(interval)
                .map(ScheduleSpec::Every)
                .map_err(|e| Error::invalid("every", e.to_string())),
            None => Ok(ScheduleSpec::Cron(text.to_owned())),
        }
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleSpec::Cron(expression) => f.write_str(expression),
            ScheduleSpec::Every(interval) => write!(
                f,
                "every {}",
                crate::config::format_duration(*interval, crate::config::DurationStyle::Exact)
            ),
        }
    }
}

/// What a schedule does about fire times that passed while no engine ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CatchUp {
    /// One run, for the most recent missed fire time (the default).
    #[default]
    Latest,
    /// One run per missed fire time, the most recent [`MAX_CATCH_UP`] of them.
    All,
    /// No run for a missed fire time (one that passed before the engine opened, or reached
    /// more than [`MISSED_AFTER_MS`] late); the schedule goes on from its next fire time.
    Skip,
}

impl CatchUp {
    /// The policy's name in config files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
            CatchUp::Skip => "skip",
        }
    }

    /// Reads a policy's name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `catch_up` for any other text.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "latest" => Ok(CatchUp::Latest),
            "all" => Ok(CatchUp::All),
            "skip" => Ok(CatchUp::Skip),
            other => Err(Error::invalid(
                "catch_up",
                format!("{other:?} is not a policy; use latest, all or skip"),
            )),
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            CatchUp::Latest => 0,
            CatchUp::All => 1,
            CatchUp::Skip => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            1 => CatchUp::All,
            2 => CatchUp::Skip,
            _ => CatchUp::Latest,
        }
    }
}

/// A recurring schedule's definition: give it to [`crate::Engine::schedule`] with the task it
/// queues at each fire time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub(crate) name: String,
    pub(crate) spec: ScheduleSpec,
    pub(crate) zone: String,
    pub(crate) catch_up: CatchUp,
    pub(crate) paused: bool,
}

impl Schedule {
    /// A schedule firing at the times of a cron expression, in UTC unless [`Schedule::zone`]
    /// says otherwise.
    pub fn cron(name: impl Into<String>, expression: impl Into<String>) -> Self {
        Self::new(name, ScheduleSpec::Cron(expression.into()))
    }

    /// A schedule firing every `interval` of real time, the first time one interval after it
    /// is created.
    pub fn every(name: impl Into<String>, interval: Duration) -> Self {
        Self::new(name, ScheduleSpec::Every(interval))
    }

    /// A schedule with `spec`.
    pub fn new(name: impl Into<String>, spec: ScheduleSpec) -> Self {
        Self {
            name: name.into(),
            spec,
            zone: "UTC".to_owned(),
            catch_up: CatchUp::default(),
            paused: false,
        }
    }

    /// The IANA time zone the cron fields are read in (`Europe/Paris`); default `UTC`.
    #[must_use]
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = zone.into();
        self
    }

    /// What to do about fire times missed while no engine ran; default [`CatchUp::Latest`].
    #[must_use]
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Created (or updated) paused: it queues nothing until resumed; default false.
    #[must_use]
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the name, the spec and the zone, and builds the timetable (an interval counts
    /// from `anchor`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field at fault (`schedule name`, `cron`, `every`,
    /// `zone`) and the reason.
    pub(crate) fn timetable(&self, anchor: crate::Millis) -> Result<Timetable> {
        check_schedule_name(&self.name)?;
        Timetable::new(&self.spec, &self.zone, anchor)
    }
}

/// Checks a schedule's name (the rules of task and queue names).
///
/// # Errors
/// [`Error::InvalidInput`] naming `schedule name`.
pub(crate) fn check_schedule_name(name: &str) -> Result<()> {
    crate::config::check_name(name).map_err(|problem| Error::invalid("schedule name", problem))
}

/// A schedule as stored, with its recent history: what `fq schedules` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's name.
    pub name: String,
    /// Its spec in text form (a cron expression, or `every 30s`).
    pub spec: String,
    /// The time zone its cron fields are read in.
    pub zone: String,
    /// Its catch-up policy.
    pub catch_up: CatchUp,
    /// The task it queues.
    pub task: String,
    /// The queue it queues into.
    pub queue: String,
    /// The next fire time (`None` when paused, orphaned, or the spec never fires again).
    pub next_fire: Option<chrono::DateTime<chrono::Utc>>,
    /// The fire time of the last task it queued.
    pub last_fire: Option<chrono::DateTime<chrono::Utc>>,
    /// The last task it queued.
    pub last_task: Option<TaskId>,
    /// That task's status now (`None` when it was deleted, or for no task).
    pub last_status: Option<TaskStatus>,
    /// Paused: it queues nothing until resumed.
    pub paused: bool,
    /// Declared in a config file that no longer declares it: disabled, kept for inspection
    /// until removed (`fq schedules remove`) or declared again.
    pub orphaned: bool,
    /// Declared in a config file (rather than in code or through the API).
    pub from_config: bool,
}

/// What to do to a stored schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleAction {
    /// Stop queuing its tasks (durably).
    Pause,
    /// Queue its tasks again from its next fire time on (fire times passed while paused are
    /// not caught up).
    Resume,
    /// Queue its task once now, outside its timetable.
    Trigger,
    /// Delete it (its queued tasks stay).
    Remove,
}

impl ScheduleAction {
    /// The action's name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleAction::Pause => "pause",
            ScheduleAction::Resume => "resume",
            ScheduleAction::Trigger => "trigger",
            ScheduleAction::Remove => "remove",
        }
    }
}

/// The fire times due by `now` for a schedule whose next fire time is `next_fire` (at most
/// `now`), under `catch_up`, oldest first, and the fire time after `now`. Fire times before
/// `on_time_from` were missed (see [`CatchUp::Skip`]).
pub(crate) fn due_fire_times(
    timetable: &Timetable,
    next_fire: crate::Millis,
    now: crate::Millis,
    on_time_from: crate::Millis,
    catch_up: CatchUp,
) -> (Vec<crate::Millis>, Option<crate::Millis>) {
    let after = timetable.next_after(now);
    // The most recent fire time at or before `now`; a spec whose previous time cannot be
    // found (it should be `next_fire` at the earliest) falls back to `next_fire`.
    let latest = timetable
        .latest_at_or_before(now)
        .filter(|at| *at >= next_fire)
        .unwrap_or(next_fire);
    let fired = match catch_up {
        CatchUp::Latest => vec![latest],
        CatchUp::Skip if latest >= on_time_from => vec![latest],
        CatchUp::Skip => Vec::new(),
        CatchUp::All => {
            let mut times = vec![latest];
            while times.len() < MAX_CATCH_UP {
                let Some(last) = times.last().copied() else {
                    break;
                };
                match timetable.latest_at_or_before(last - 1) {
                    Some(before) if before >= next_fire => times.push(before),
                    _ => break,
                }
            }
            times.reverse();
            times
        }
    };
    (fired, after)
}

#[cfg(test)]
mod tests;
