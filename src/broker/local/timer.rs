//! The timer thread: sleeps until the earliest due time or lease deadline (or a poke), then
//! moves due tasks into the ready heap and hands expired leases to the writer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::Shared;
use super::writer::Command;
use crate::sync::{Condvar, Mutex};

/// The longest the timer sleeps without looking, so that a jump of the system clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Wakes the timer early: a new due time may be earlier than the one it sleeps towards.
#[derive(Debug, Default)]
pub(crate) struct TimerSignal {
    poked: Mutex<bool>,
    condvar: Condvar,
    /// A deliberate fault, so the loom models are shown to catch a broken signal.
    #[cfg(all(test, fq_loom))]
    breakage: Option<Breakage>,
}

/// The faults the loom models must catch (negative controls; loom builds only).
#[cfg(all(test, fq_loom))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breakage {
    /// `poke` notifies without raising the flag: a poke before the wait is lost.
    PokeWithoutFlag,
    /// `wait` ignores a flag raised before it: the same loss from the other side.
    WaitIgnoresFlag,
}

impl TimerSignal {
    pub(crate) fn poke(&self) {
        #[cfg(all(test, fq_loom))]
        if self.breakage == Some(Breakage::PokeWithoutFlag) {
            self.condvar.notify_one();
            return;
        }
        *self.poked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.condvar.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let poked = self.poked.lock().unwrap_or_else(PoisonError::into_inner);
        #[cfg(all(test, fq_loom))]
        if self.breakage == Some(Breakage::WaitIgnoresFlag) {
            let (mut poked, _) = self
                .condvar
                .wait_timeout(poked, timeout)
                .unwrap_or_else(PoisonError::into_inner);
            *poked = false;
            return;
        }
        let (mut poked, _) = self
            .condvar
            .wait_timeout_while(poked, timeout, |poked| !*poked)
            .unwrap_or_else(PoisonError::into_inner);
        *poked = false;
    }
}

pub(super) fn run(shared: &Arc<Shared>, commands: &crossbeam_channel::Sender<Command>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let now = shared.clock.now_ms();
        if shared.delayed.promote_due(now, &shared.ready) > 0 {
            shared.work.notify_waiters();
        }
        for (id, attempt) in shared.leases.take_expired(now) {
            if commands.send(Command::Expire { id, attempt }).is_err() {
                return;
            }
        }
        // Schedules fire in the writer, which queues each fire time's task and advances the
        // schedule in one commit; the alarm moves after that commit.
        if shared.schedule_alarm.take_due(now)
            && commands
                .send(Command::Schedule(super::writer::ScheduleCommand::Fire))
                .is_err()
        {
            return;
        }
        let next = [
            shared.delayed.next_due(),
            shared.leases.next_deadline(),
            shared.schedule_alarm.wake_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = next.map_or(MAX_SLEEP, |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0)).min(MAX_SLEEP)
        });
        if !sleep.is_zero() {
            shared.timer.wait(sleep);
        }
    }
}

/// Loom models of the timer's hand-offs, running the real `run` loop and `TimerSignal` on
/// loom's Mutex, Condvar and AtomicBool (see `crate::sync`). Under loom a timed wait never
/// times out, so each model passes only if every wake-up the timer needs comes from a poke:
/// a lost one leaves the timer asleep and loom reports the deadlock.
/// `RUSTFLAGS="--cfg fq_loom" cargo test --release --lib loom`.
#[cfg(all(test, fq_loom))]
mod loom_tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::events::EventBus;
    use crate::queue::{DelayIndex, ReadyHeap};
    use crate::sync::{AtomicBool, Mutex};
    use crate::task::ReadyOrder;
    use crate::task::TaskId;

    fn shared(clock: Arc<ManualClock>) -> Arc<Shared> {
        shared_with(clock, None)
    }

    fn shared_with(clock: Arc<ManualClock>, breakage: Option<Breakage>) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            ready: ReadyHeap::new(),
            delayed: DelayIndex::new(),
            leases: super::super::LeaseTable::default(),
            workers: crate::broker::workers::WorkerRegistry::default(),
            work: tokio::sync::Notify::new(),
            timer: TimerSignal {
                breakage,
                ..TimerSignal::default()
            },
            clock,
            events: EventBus::new(),
            stopping: AtomicBool::new(false),
            completions: super::super::CompletionRate::default(),
            poisoned_flag: AtomicBool::new(false),
            poison: Mutex::new(None),
            writer_exit: super::super::WriterExit::default(),
            waiters: Default::default(),
            paused: super::super::pause::PausedQueues::new(Vec::new()),
            schedule_alarm: super::super::schedules::ScheduleAlarm::default(),
            limits: super::super::limits::QueueLimiter::default(),
            metrics: None,
            handoffs: Default::default(),
        });
        // As `LocalBroker::open` wires it.
        let weak = Arc::downgrade(&shared);
        shared.clock.on_advance(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.timer.poke();
            }
        }));
        shared
    }

    fn clock() -> Arc<ManualClock> {
        ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap())
    }

    fn spawn_timer(shared: &Arc<Shared>) -> loom::thread::JoinHandle<()> {
        let shared = Arc::clone(shared);
        let (commands, _) = crossbeam_channel::unbounded();
        crate::sync::loom_spawn(move || run(&shared, &commands))
    }

    /// `LocalBroker::drop`'s protocol.
    fn stop(shared: &Shared) {
        shared.stopping.store(true, Ordering::SeqCst);
        shared.timer.poke();
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(crate::sync::loom_body(f));
    }

    /// Stopping the engine wakes a timer that sleeps with nothing to do, wherever in its loop
    /// the stop lands.
    #[test]
    fn loom_stop_wakes_an_idle_timer() {
        model(|| {
            let shared = shared(clock());
            let timer = spawn_timer(&shared);
            stop(&shared);
            timer.join().unwrap();
        });
    }

    /// The stop model has teeth: with either deliberate fault in the signal, a stop's poke
    /// that lands before the timer's wait is lost, and loom reports the sleeping timer.
    #[test]
    fn loom_a_broken_signal_is_caught_as_a_sleeping_timer() {
        for breakage in [Breakage::PokeWithoutFlag, Breakage::WaitIgnoresFlag] {
            let caught = std::panic::catch_unwind(move || {
                model(move || {
                    let shared = shared_with(clock(), Some(breakage));
                    let timer = spawn_timer(&shared);
                    stop(&shared);
                    timer.join().unwrap();
                });
            });
            assert!(
                caught.is_err(),
                "loom found no lost wake-up with {breakage:?}"
            );
        }
    }

    /// A task inserted into the delay index (due by the time the timer looks) followed by a
    /// poke, as `Writer::publish` does, reaches the ready heap even when the timer computed
    /// its sleep before the insert.
    #[test]
    fn loom_a_new_due_time_wakes_the_timer() {
        model(|| {
            let clock = clock();
            let now = clock.now_ms();
            let shared = shared(clock);
            let timer = spawn_timer(&shared);
            let ready = shared.ready.intern("q");
            shared
                .delayed
                .insert(ready, ReadyOrder::new(0, now, 1), TaskId::from_u128(1));
            shared.timer.poke();
            while shared.ready.len() == 0 {
                loom::thread::yield_now();
            }
            stop(&shared);
            timer.join().unwrap();
            assert_eq!(shared.delayed.len(), 0);
        });
    }

    /// A manual clock's advance wakes a timer sleeping towards a later due time (the sleep
    /// it computed would never end under loom), and the task becomes ready.
    #[test]
    fn loom_a_clock_advance_wakes_the_timer() {
        model(|| {
            let clock = clock();
            let due = clock.now_ms() + 1_000;
            let shared = shared(Arc::clone(&clock));
            let queue = shared.ready.intern("q");
            shared
                .delayed
                .insert(queue, ReadyOrder::new(0, due, 1), TaskId::from_u128(1));
            let timer = spawn_timer(&shared);
            clock.advance(Duration::from_millis(1_000));
            while shared.ready.len() == 0 {
                loom::thread::yield_now();
            }
            stop(&shared);
            timer.join().unwrap();
        });
    }

    /// Whoever sees the poison flag also finds the reason (`Shared::poison` writes the
    /// reason, then raises the flag).
    #[test]
    fn loom_a_raised_poison_flag_always_has_its_reason() {
        model(|| {
            let shared = shared(clock());
            let writer = {
                let shared = Arc::clone(&shared);
                loom::thread::spawn(move || shared.poison("disk gone".into(), false))
            };
            if shared.poisoned_flag.load(Ordering::SeqCst) {
                assert_eq!(shared.poisoned().as_deref(), Some("disk gone"));
            }
            writer.join().unwrap();
            assert_eq!(shared.poisoned().as_deref(), Some("disk gone"));
        });
    }
}
