//! Time source for everything that stores or compares wall-clock times: the real clock, and a
//! manual one so tests can move time without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, TimeZone, Utc};

/// Milliseconds since the Unix epoch, UTC: the unit every stored time uses.
pub type Millis = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;

    /// Registers a callback run whenever this clock jumps forward by itself. Only clocks that
    /// move in steps (the manual clock) call it; the system clock never does, because sleeping
    /// timers already notice its progress.
    fn on_advance(&self, callback: Box<dyn Fn() + Send + Sync>) {
        drop(callback);
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to, for tests of delays, schedules and retries.
pub struct ManualClock {
    now_ms: AtomicI64,
    listeners: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl ManualClock {
    /// A manual clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        Arc::new(Self {
            now_ms: AtomicI64::new(start.timestamp_millis()),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// Moves the clock forward and wakes whatever waits on a due time.
    pub fn advance(&self, by: std::time::Duration) {
        let by_ms = duration_millis(by);
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for listener in listeners.iter() {
            listener();
        }
    }

    /// The clock's current reading as a date.
    pub fn now(&self) -> DateTime<Utc> {
        millis_to_datetime(self.now_ms())
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn on_advance(&self, callback: Box<dyn Fn() + Send + Sync>) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(callback);
    }
}

/// A duration in whole milliseconds, as far as [`Millis`] reaches (longer ones clamp to its
/// maximum: a lease or delay that long never ends).
pub(crate) fn duration_millis(duration: std::time::Duration) -> Millis {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in whole milliseconds as sent and shown (the wire's and JSON's `*_ms` fields),
/// clamped to `u64::MAX`.
pub(crate) fn duration_ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Converts stored milliseconds to a date; out-of-range values clamp to the representable range.
pub(crate) fn millis_to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_notifies() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        clock.on_advance(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        assert_eq!(clock.now(), start);
        clock.advance(std::time::Duration::from_millis(1500));
        assert_eq!(clock.now_ms(), start.timestamp_millis() + 1500);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn millis_round_trip_and_clamp() {
        let when = Utc.with_ymd_and_hms(2030, 6, 1, 0, 0, 0).unwrap();
        assert_eq!(millis_to_datetime(when.timestamp_millis()), when);
        assert_eq!(millis_to_datetime(i64::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
