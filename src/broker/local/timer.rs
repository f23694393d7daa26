//! The timer thread: sleeps until the earliest due time or lease deadline (or a poke), then
//! moves due tasks into the ready heap and hands expired leases to the writer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::Shared;
use super::writer::Command;

/// The longest the timer sleeps without looking, so that a jump of the system clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Wakes the timer early: a new due time may be earlier than the one it sleeps towards.
#[derive(Debug, Default)]
pub(crate) struct TimerSignal {
    poked: Mutex<bool>,
    condvar: Condvar,
}

impl TimerSignal {
    pub(crate) fn poke(&self) {
        *self.poked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.condvar.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let poked = self.poked.lock().unwrap_or_else(PoisonError::into_inner);
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
        let due = shared.delayed.pop_due(now);
        if !due.is_empty() {
            for task in due {
                shared.ready.push(&task.queue, task.order, task.id);
            }
            shared.work.notify_waiters();
        }
        for (id, attempt) in shared.leases.take_expired(now) {
            if commands.send(Command::Expire { id, attempt }).is_err() {
                return;
            }
        }
        let next = [shared.delayed.next_due(), shared.leases.next_deadline()]
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
