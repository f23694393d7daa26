//! Per-queue concurrency and rate limits: the in-memory table claims consult, and the writer's
//! admission of each claimed task against it. The writer decides: a task of a limited queue
//! starts only if the queue's RUNNING count, read from the COUNTS table inside the claim's own
//! transaction (so it includes every claim and settlement before it in the batch), is under
//! the limit, and a start is free in its rate schedule. Held tasks go back on the ready heap,
//! untouched (still PENDING). Claims skip a queue that is full or has no start free yet
//! (`open`), and sleep until the next free start or until a settlement of the queue wakes
//! them, so held tasks cost no CPU.
//!
//! The rate is GCRA without burst (a token bucket holding one token): one start every
//! `period / starts`, kept exactly in integer units of `1/starts` ms. A start taken less than
//! one interval late keeps the schedule (the writer's commit latency would otherwise slow the
//! rate by a few percent); one taken later restarts it from its own time, so time lost while
//! nothing waited is never made up by a burst. Hence a window of length `period` holds at
//! most `starts + 1` starts (only when a start came late and the next on time), and over a
//! long run `starts` per `period`.
//!
//! Limits live in memory: the config (`[queues.<name>]`) sets them at open and
//! `Engine::set_queue_limits` changes them at run time, until the engine closes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::LocalBroker;
use super::writer::{Batch, Publish, Writer};
use crate::clock::Millis;
use crate::config::QueueLimits;
use crate::queue::ReadyTask;
use crate::store::{StoreError, WriteTables};
use crate::sync::{AtomicBool, Mutex, MutexGuard};
use crate::task::TaskStatus;
use crate::task::lifecycle::Step;

/// One limited queue's limits and state.
#[derive(Debug)]
struct Limited {
    limits: QueueLimits,
    /// RUNNING tasks as of the last commit that changed them; `None` until one did since the
    /// limit was set (claims then try, and the writer's exact check decides).
    running: Option<u64>,
    /// The earliest time of the next start, in units of `1/starts` ms (GCRA's theoretical
    /// arrival time).
    next_start: i128,
}

impl Limited {
    fn full(&self) -> bool {
        matches!((self.limits.concurrency, self.running),
            (Some(limit), Some(running)) if running >= u64::from(limit))
    }

    /// When the next start is free, in ms (`None`: no rate limit).
    fn next_start_ms(&self) -> Option<Millis> {
        let rate = self.limits.rate?;
        let starts = i128::from(rate.starts());
        // Rounded up: a start is free at the first whole millisecond at or after it.
        let ms = (self.next_start + starts - 1).div_euclid(starts);
        let ms = ms.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        Some(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Takes a start at `now` if one is free.
    fn take_start(&mut self, now: Millis) -> bool {
        let Some(rate) = self.limits.rate else {
            return true;
        };
        let scaled_now = i128::from(now) * i128::from(rate.starts());
        if scaled_now < self.next_start {
            return false;
        }
        // A start taken less than one interval after it became free keeps the schedule, so
        // the time a claim takes to reach the writer's next batch does not slow the rate; one
        // taken later starts the schedule afresh from now (time lost while nothing waited is
        // not made up by a burst).
        let on_time = scaled_now - self.next_start < rate.period_ms();
        let from = if on_time { self.next_start } else { scaled_now };
        self.next_start = from + rate.period_ms();
        true
    }
}

/// The limited queues. `any` lets claims skip the lock while no queue is limited, so an engine
/// without limits pays one atomic load per claim.
#[derive(Debug, Default)]
pub(crate) struct QueueLimiter {
    any: AtomicBool,
    queues: Mutex<HashMap<String, Limited>>,
}

/// Whether the writer may start a claimed task of a limited queue.
enum Admission {
    Start,
    Hold,
}

impl QueueLimiter {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Limited>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (or, when both are `None`, removes) `queue`'s limits. A changed rate starts its
    /// schedule afresh; the running count is kept.
    pub(crate) fn set(&self, queue: &str, limits: QueueLimits) {
        let mut queues = self.lock();
        if limits.is_unlimited() {
            queues.remove(queue);
        } else {
            let entry = queues.entry(queue.to_owned()).or_insert(Limited {
                limits,
                running: None,
                next_start: 0,
            });
            if entry.limits.rate != limits.rate {
                entry.next_start = 0;
            }
            entry.limits = limits;
        }
        self.any.store(!queues.is_empty(), Ordering::SeqCst);
    }

    /// True when `queue` has a limit.
    pub(crate) fn is_limited(&self, queue: &str) -> bool {
        self.any.load(Ordering::SeqCst) && self.lock().contains_key(queue)
    }

    /// `queues` without those that are full or have no start free at `now()` (borrowed as they
    /// are when none is limited: then the clock is not even read), and the earliest time a
    /// start of a left-out queue is free.
    pub(crate) fn open<'a>(
        &self,
        queues: &'a [Arc<str>],
        now: impl FnOnce() -> Millis,
    ) -> (Cow<'a, [Arc<str>]>, Option<Millis>) {
        if !self.any.load(Ordering::SeqCst) {
            return (Cow::Borrowed(queues), None);
        }
        let now = now();
        let limited = self.lock();
        let mut next_free: Option<Millis> = None;
        let open = queues
            .iter()
            .filter(|queue| {
                let Some(entry) = limited.get(&***queue) else {
                    return true;
                };
                if entry.full() {
                    return false;
                }
                match entry.next_start_ms() {
                    Some(free_at) if free_at > now => {
                        next_free = Some(next_free.map_or(free_at, |t| t.min(free_at)));
                        false
                    }
                    _ => true,
                }
            })
            .cloned()
            .collect();
        (Cow::Owned(open), next_free)
    }

    /// The writer's check for one task of `queue` about to start at `now`, `running` being its
    /// RUNNING count in the claim's transaction. Takes a start of the rate when it admits.
    fn admit(&self, queue: &str, running: u64, now: Millis) -> Admission {
        let mut limited = self.lock();
        let Some(entry) = limited.get_mut(queue) else {
            return Admission::Start;
        };
        if let Some(limit) = entry.limits.concurrency
            && running >= u64::from(limit)
        {
            entry.running = Some(running);
            return Admission::Hold;
        }
        if entry.take_start(now) {
            Admission::Start
        } else {
            Admission::Hold
        }
    }

    /// Records `queue`'s RUNNING count after a commit; true when it has room for a start.
    fn set_running(&self, queue: &str, running: u64) -> bool {
        let mut limited = self.lock();
        let Some(entry) = limited.get_mut(queue) else {
            return false;
        };
        entry.running = Some(running);
        !entry.full()
    }

    /// Every limited queue with its limits, sorted by name.
    pub(crate) fn list(&self) -> Vec<(String, QueueLimits)> {
        let mut list: Vec<_> = self
            .lock()
            .iter()
            .map(|(queue, entry)| (queue.clone(), entry.limits))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

impl LocalBroker {
    /// The queues of `queues` a claim may take from now (not paused, not full, a start free),
    /// and when a start of a rate-held one is free next (`None`: none is held by its rate).
    pub(super) fn claimable<'a>(
        &self,
        queues: &'a [Arc<str>],
    ) -> (Cow<'a, [Arc<str>]>, Option<Millis>) {
        let active = self.shared.paused.active(queues);
        let (open, next_free) = self
            .shared
            .limits
            .open(&active, || self.shared.clock.now_ms());
        let open = match open {
            Cow::Borrowed(_) => active,
            Cow::Owned(open) => Cow::Owned(open),
        };
        (open, next_free)
    }

    /// How long a claim that found nothing may sleep before a held start is free: until
    /// `deadline`, or less when a rate frees a start sooner (by the engine's clock).
    pub(super) fn sleep_until(
        &self,
        deadline: tokio::time::Instant,
        next_free: Option<Millis>,
    ) -> tokio::time::Instant {
        let Some(free_at) = next_free else {
            return deadline;
        };
        let wait_ms = free_at.saturating_sub(self.shared.clock.now_ms()).max(1);
        let wait = std::time::Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX));
        deadline.min(tokio::time::Instant::now() + wait)
    }

    /// Sets `queue`'s limits (see [`QueueLimiter::set`]) and wakes waiting claims, since a
    /// raised or removed limit may free held tasks.
    pub(crate) fn set_queue_limits(&self, queue: &str, limits: QueueLimits) {
        self.shared.limits.set(queue, limits);
        self.shared.work.notify_waiters();
    }
}

impl Writer {
    /// Whether the claimed task `ready`, whose claim move is `step`, may start now. A held task
    /// goes back on the ready heap after the commit, still PENDING.
    pub(super) fn admit_claim(
        &self,
        tables: &WriteTables<'_>,
        ready: &ReadyTask,
        batch: &mut Batch,
    ) -> Result<bool, StoreError> {
        let limiter = &self.shared.limits;
        if !limiter.is_limited(&ready.queue) {
            return Ok(true);
        }
        let running = tables.count_now(&ready.queue, TaskStatus::Running)?;
        match limiter.admit(&ready.queue, running, batch.now) {
            Admission::Start => Ok(true),
            Admission::Hold => {
                batch.effects.push(Publish::Wait {
                    queue: ready.queue.to_string(),
                    order: ready.order,
                    id: ready.id,
                });
                Ok(false)
            }
        }
    }

    /// After a move that starts or ends a run of a limited queue, queues its RUNNING count (as
    /// of this point of the transaction) for the in-memory table after the commit.
    pub(super) fn note_running(
        &self,
        tables: &WriteTables<'_>,
        step: &Step,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let was_running = step.previous == Some(TaskStatus::Running);
        let is_running = step.task.status == TaskStatus::Running;
        if was_running == is_running || !self.shared.limits.is_limited(&step.task.queue) {
            return Ok(());
        }
        let running = tables.count_now(&step.task.queue, TaskStatus::Running)?;
        batch.effects.push(Publish::Running {
            queue: step.task.queue.clone(),
            running,
        });
        Ok(())
    }

    /// Applies a committed RUNNING count; true when the queue has room (claims should look).
    pub(super) fn publish_running(&self, queue: &str, running: u64) -> bool {
        self.shared.limits.set_running(queue, running)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Rate;

    fn limiter(limits: QueueLimits) -> QueueLimiter {
        let limiter = QueueLimiter::default();
        limiter.set("q", limits);
        limiter
    }

    #[test]
    fn a_rate_limit_spaces_starts_evenly_and_never_exceeds_its_window() {
        let rate = Rate::new(3, Duration::from_secs(1)).unwrap();
        let limiter = limiter(QueueLimits {
            concurrency: None,
            rate: Some(rate),
        });
        let mut starts = Vec::new();
        for now in 0..10_000 {
            if matches!(limiter.admit("q", 0, now), Admission::Start) {
                starts.push(now);
            }
        }
        assert_eq!(starts.len(), 30, "{starts:?}");
        assert_eq!(&starts[..4], &[0, 334, 667, 1000]);
        for window in starts.windows(4) {
            assert!(
                window[3] - window[0] >= 1000,
                "4 starts within 1s: {window:?}"
            );
        }

        // Claims every 7 ms (so starts a little late): never N + 2 = 5 starts within 1 s, and
        // no drift over 10 s.
        let late = self::limiter(QueueLimits {
            concurrency: None,
            rate: Some(rate),
        });
        let starts: Vec<Millis> = (0..10_000)
            .step_by(7)
            .filter(|&now| matches!(late.admit("q", 0, now), Admission::Start))
            .collect();
        assert_eq!(starts.len(), 30, "{starts:?}");
        for window in starts.windows(5) {
            assert!(window[4] - window[0] >= 1000, "5 starts in 1s: {window:?}");
        }
    }

    /// A start a little late keeps the schedule (no drift); one over an interval late moves
    /// it, without a burst to make up.
    #[test]
    fn a_late_start_keeps_the_schedule_unless_an_interval_late() {
        let limiter = limiter(QueueLimits {
            concurrency: None,
            rate: Some("20/s".parse().unwrap()),
        });
        let admitted = |now| matches!(limiter.admit("q", 0, now), Admission::Start);
        assert!(admitted(1_000));
        assert!(admitted(1_060), "free at 1,050");
        assert!(!admitted(1_099), "free at 1,100 still");
        assert!(admitted(1_100));
        assert!(
            admitted(1_300),
            "an interval late or more: the schedule starts again"
        );
        assert!(!admitted(1_340));
        assert!(admitted(1_350));
    }

    #[test]
    fn a_full_queue_is_left_out_of_claims_until_a_run_ends() {
        let limiter = limiter(QueueLimits {
            concurrency: Some(2),
            rate: None,
        });
        let queues: Vec<Arc<str>> = vec!["q".into(), "other".into()];
        assert_eq!(limiter.open(&queues, || 0).0.len(), 2);
        assert!(matches!(limiter.admit("q", 2, 0), Admission::Hold));
        assert_eq!(
            &*limiter.open(&queues, || 0).0,
            &["other".into()] as &[Arc<str>]
        );
        assert!(limiter.set_running("q", 1));
        assert_eq!(limiter.open(&queues, || 0).0.len(), 2);
        assert!(matches!(limiter.admit("q", 1, 0), Admission::Start));
    }

    #[test]
    fn a_queue_without_a_free_start_says_when_the_next_one_is() {
        let limiter = limiter(QueueLimits {
            concurrency: None,
            rate: Some("20/s".parse().unwrap()),
        });
        let queues: Vec<Arc<str>> = vec!["q".into()];
        assert!(matches!(limiter.admit("q", 0, 1_000), Admission::Start));
        let (open, next) = limiter.open(&queues, || 1_010);
        assert!(open.is_empty());
        assert_eq!(next, Some(1_050));
        assert_eq!(limiter.open(&queues, || 1_050).0.len(), 1);
    }
}
