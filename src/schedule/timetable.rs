//! A schedule's fire times: a parsed cron expression in a time zone (croner and chrono-tz), or
//! a fixed interval from an anchor. Pure computation on milliseconds since the epoch.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use super::ScheduleSpec;
use crate::clock::Millis;
use crate::{Error, Result};

/// When a schedule fires.
#[derive(Clone, Debug)]
pub(crate) enum Timetable {
    /// Cron fields read as wall-clock time in `zone`.
    Cron { cron: Box<Cron>, zone: Tz },
    /// `anchor + n × every_ms`, for every whole n ≥ 1.
    Every { anchor: Millis, every_ms: i64 },
}

/// Milliseconds down to the whole second at or before them.
fn floor_second(ms: Millis) -> Millis {
    ms.div_euclid(1000) * 1000
}

impl Timetable {
    /// Checks `spec` and `zone`; an interval counts from `anchor`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `cron`, `every` or `zone`, with the reason.
    pub(crate) fn new(spec: &ScheduleSpec, zone: &str, anchor: Millis) -> Result<Self> {
        let zone: Tz = zone.parse().map_err(|_| {
            Error::invalid(
                "zone",
                format!("{zone:?} is not an IANA time zone name (e.g. UTC, Europe/Paris)"),
            )
        })?;
        match spec {
            ScheduleSpec::Cron(expression) => {
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(expression)
                    .map_err(|e| Error::invalid("cron", format!("{expression:?}: {e}")))?;
                let timetable = Timetable::Cron {
                    cron: Box::new(cron),
                    zone,
                };
                // A valid pattern that matches no date (`0 0 30 2 *`) would never fire.
                if timetable.next_after(anchor).is_none() {
                    return Err(Error::invalid(
                        "cron",
                        format!("{expression:?} matches no time in the coming years"),
                    ));
                }
                Ok(timetable)
            }
            ScheduleSpec::Every(interval) => {
                let every_ms = crate::clock::duration_millis(*interval);
                if every_ms < 1 {
                    return Err(Error::invalid(
                        "every",
                        "must be at least 1ms (0s would fire without end)",
                    ));
                }
                Ok(Timetable::Every { anchor, every_ms })
            }
        }
    }

    fn local(zone: Tz, ms: Millis) -> Option<DateTime<Tz>> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map(|at| at.with_timezone(&zone))
    }

    /// The first fire time strictly after `after`; `None` when there is none.
    pub(crate) fn next_after(&self, after: Millis) -> Option<Millis> {
        match self {
            Timetable::Cron { cron, zone } => {
                let start = Self::local(*zone, floor_second(after))?;
                let next = cron.find_next_occurrence(&start, false).ok()?;
                Some(next.timestamp_millis()).filter(|at| *at > after)
            }
            Timetable::Every { anchor, every_ms } => {
                let steps = if after < *anchor {
                    0
                } else {
                    (after - anchor) / every_ms
                };
                anchor.checked_add(every_ms.checked_mul(steps.checked_add(1)?)?)
            }
        }
    }

    /// The last fire time at or before `at`; `None` when there is none.
    pub(crate) fn latest_at_or_before(&self, at: Millis) -> Option<Millis> {
        match self {
            Timetable::Cron { cron, zone } => {
                let start = Self::local(*zone, floor_second(at))?;
                let previous = cron.find_previous_occurrence(&start, true).ok()?;
                Some(previous.timestamp_millis())
            }
            Timetable::Every { anchor, every_ms } => {
                if at < anchor + every_ms {
                    return None;
                }
                Some(anchor + (at - anchor) / every_ms * every_ms)
            }
        }
    }
}
