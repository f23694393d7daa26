//! Completions and failed attempts per minute over the last hour, counted from the engine's
//! events into a ring of 60 minutes (the overview's chart). Kept in memory by the dashboard:
//! reading an hour of finished records from the store on every page view would cost a scan.
//! Also the overview's section that draws them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::{Engine, Event, EventKind};

/// Minutes kept.
pub(crate) const MINUTES: usize = 60;

/// One minute's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Minute {
    /// Minutes since the Unix epoch.
    pub(crate) minute: i64,
    /// Runs that completed.
    pub(crate) completed: u64,
    /// Runs that failed (each failed attempt, retried or not).
    pub(crate) failed: u64,
}

/// The ring of the last hour's minutes, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    minutes: Mutex<VecDeque<Minute>>,
}

impl Activity {
    /// Counts one event at its time (only run outcomes count).
    pub(crate) fn record(&self, kind: EventKind, at: DateTime<Utc>) {
        let (completed, failed) = match kind {
            EventKind::AfterExecution => (1, 0),
            EventKind::ExecutionError => (0, 1),
            _ => return,
        };
        let minute = at.timestamp().div_euclid(60);
        // A poisoned lock only means a panic elsewhere mid-update of plain counters.
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        match minutes.iter_mut().rev().find(|m| m.minute == minute) {
            Some(slot) => {
                slot.completed += completed;
                slot.failed += failed;
            }
            None => {
                minutes.push_back(Minute {
                    minute,
                    completed,
                    failed,
                });
                minutes.make_contiguous().sort_by_key(|m| m.minute);
                while minutes.len() > MINUTES {
                    minutes.pop_front();
                }
            }
        }
    }

    /// The 60 minutes ending with `now`'s, oldest first, zero where nothing happened.
    pub(crate) fn last_hour(&self, now: DateTime<Utc>) -> Vec<Minute> {
        let last = now.timestamp().div_euclid(60);
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        (last - MINUTES as i64 + 1..=last)
            .map(|minute| {
                minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Minute::default()
                    })
            })
            .collect()
    }
}

/// Feeds `activity` from `engine`'s events until the engine closes or the dashboard is dropped.
/// Outside a tokio runtime nothing is counted (the chart stays empty).
pub(super) fn follow(engine: &Engine, activity: &Arc<Activity>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut events = engine.events().subscribe();
    // Weak: the task must not keep the dashboard's data alive, nor the engine (it holds only
    // the subscription, which ends when the engine closes).
    let activity: Weak<Activity> = Arc::downgrade(activity);
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            let Some(activity) = activity.upgrade() else {
                break;
            };
            let event: &Event = &event;
            activity.record(event.kind, event.at);
        }
    });
}

/// Completions and failed runs per minute over the last hour, as an inline SVG bar chart.
pub(super) fn activity_section(minutes: &[Minute]) -> Markup {
    let (width, height, bar) = (600u64, 120u64, 10u64);
    let peak = minutes
        .iter()
        .map(|m| m.completed.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let completed: u64 = minutes.iter().map(|m| m.completed).sum();
    let failed: u64 = minutes.iter().map(|m| m.failed).sum();
    let scale = |count: u64| count * (height - 20) / peak;
    html! {
        section #activity {
            h2 { "Last hour" }
            p {
                span #completed-hour { (completed) } " completed, "
                span #failed-hour { (failed) } " failed runs (counted since the dashboard started)"
            }
            svg.chart width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) }
                role="img" aria-label="completed and failed runs per minute" {
                @for (index, minute) in minutes.iter().enumerate() {
                    @let x = index as u64 * bar;
                    @let (c, f) = (scale(minute.completed), scale(minute.failed));
                    // Empty minutes draw nothing (the page stays small).
                    @if minute.completed > 0 {
                        rect.c x=(x) y=(height - 12 - c) width=(bar / 2) height=(c.max(1)) {
                            title { (minute.completed) " completed" }
                        }
                    }
                    @if minute.failed > 0 {
                        rect.f x=(x + bar / 2) y=(height - 12 - f) width=(bar / 2) height=(f.max(1)) {
                            title { (minute.failed) " failed" }
                        }
                    }
                }
                text x="0" y=(height) { "-" (MINUTES) " min" }
                text x=(width - 24) y=(height) { "now" }
                text x="0" y="10" { "peak " (peak) "/min" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: i64, second: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(minute * 60 + i64::from(second), 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn counts_outcomes_per_minute_and_forgets_past_an_hour() {
        let activity = Activity::default();
        activity.record(EventKind::AfterExecution, at(1000, 1));
        activity.record(EventKind::AfterExecution, at(1000, 59));
        activity.record(EventKind::ExecutionError, at(1001, 0));
        // Not outcomes: not counted.
        activity.record(EventKind::Queued, at(1001, 0));
        activity.record(EventKind::BeforeExecution, at(1001, 0));
        let hour = activity.last_hour(at(1001, 30));
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour[MINUTES - 2].completed, 2);
        assert_eq!(hour[MINUTES - 2].failed, 0);
        assert_eq!(hour[MINUTES - 1].failed, 1);
        assert_eq!(hour[MINUTES - 1].completed, 0);
        // An hour later minute 1000 is out of the window, and out of the ring once pushed out.
        for minute in 1002..1002 + MINUTES as i64 {
            activity.record(EventKind::AfterExecution, at(minute, 0));
        }
        let later = activity.last_hour(at(1000 + 60, 0));
        assert!(later.iter().all(|m| m.minute > 1000));
        let total: u64 = activity
            .last_hour(at(1061, 0))
            .iter()
            .map(|m| m.completed)
            .sum();
        assert_eq!(total, MINUTES as u64);
    }
}
