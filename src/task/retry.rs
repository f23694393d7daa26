//! When something that failed is tried again: exponential backoff with a cap and jitter, for
//! failed tasks ([`RetryPolicy`]) and for reconnecting to a peer that went away ([`Backoff`]).
//! Pure arithmetic over durations: no clock, no sleeping.

use std::time::Duration;

/// Backoff after a failed attempt: `base × 2^(retry_count-1)`, capped at `max`, then spread by
/// ±`jitter` so tasks that failed together do not all come back in the same instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry (default 5 s).
    pub base: Duration,
    /// Longest delay between two attempts (default 1 h).
    pub max: Duration,
    /// Relative spread, 0.2 for ±20%.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            max: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry_count` (1 for the first retry) without jitter.
    pub fn nominal_delay(&self, retry_count: u32) -> Duration {
        let exponent = retry_count.saturating_sub(1).min(63);
        let factor = 1u64 << exponent;
        let base_ms = crate::clock::duration_ms(self.base);
        let max_ms = crate::clock::duration_ms(self.max);
        Duration::from_millis(base_ms.saturating_mul(factor).min(max_ms))
    }

    /// The delay before retry number `retry_count`, spread by `unit_random` (uniform in
    /// `[0, 1)`) across the jitter band.
    pub fn delay(&self, retry_count: u32, unit_random: f64) -> Duration {
        let nominal = self.nominal_delay(retry_count).as_secs_f64();
        let spread = 1.0 + self.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((nominal * spread).max(0.0))
    }

    /// The delay before retry number `retry_count` with fresh randomness.
    pub fn jittered_delay(&self, retry_count: u32) -> Duration {
        self.delay(retry_count, fastrand::f64())
    }
}

impl RetryPolicy {
    /// The pauses of a reconnection loop: `first` doubling up to `max`, each lengthened at random
    /// by up to `jitter` of itself (0.25 for up to a quarter more; 0 for none).
    pub(crate) fn reconnect_backoff(first: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            doubling: RetryPolicy {
                base: first,
                max,
                jitter: 0.0,
            },
            failures: 0,
            jitter,
        }
    }
}

/// The pauses between attempts to reach a peer that went away (the control client's reconnects,
/// the RabbitMQ link's), one implementation for every reconnection loop. The doubling is
/// [`RetryPolicy::nominal_delay`]'s; the jitter only ever lengthens a pause (in whole
/// milliseconds), so the first pause is never shorter than asked, and peers cut off together do
/// not all knock again at the same instant.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    /// `first` as the base, `max` as the cap, no jitter of its own.
    doubling: RetryPolicy,
    /// Attempts failed so far.
    failures: u32,
    /// The most, as a fraction of the pause, that is added at random.
    jitter: f64,
}

impl Backoff {
    /// The pause after one more failed attempt.
    pub(crate) fn next_pause(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = self.doubling.nominal_delay(self.failures);
        if self.jitter <= 0.0 {
            return pause;
        }
        let pause_ms = crate::clock::duration_ms(pause);
        // Truncated toward zero: with 0.25 this is `pause_ms / 4`, exactly.
        let most = (pause_ms as f64 * self.jitter) as u64;
        pause + Duration::from_millis(fastrand::u64(0..=most))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_stops_at_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.nominal_delay(1), Duration::from_secs(5));
        assert_eq!(policy.nominal_delay(2), Duration::from_secs(10));
        assert_eq!(policy.nominal_delay(3), Duration::from_secs(20));
        assert_eq!(policy.nominal_delay(11), Duration::from_secs(3600));
        assert_eq!(policy.nominal_delay(500), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(2, 0.0), Duration::from_secs(8));
        assert_eq!(policy.delay(2, 0.5), Duration::from_secs(10));
        assert!(policy.delay(2, 0.999_999) <= Duration::from_secs(12));
        for _ in 0..1000 {
            let d = policy.jittered_delay(3).as_secs_f64();
            assert!((16.0..=24.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn reconnect_pauses_double_up_to_the_cap() {
        let mut backoff =
            RetryPolicy::reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1), 0.0);
        let pauses: Vec<u64> = (0..8)
            .map(|_| u64::try_from(backoff.next_pause().as_millis()).unwrap())
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn reconnect_jitter_only_lengthens_by_up_to_its_fraction() {
        for _ in 0..200 {
            let mut backoff = RetryPolicy::reconnect_backoff(
                Duration::from_millis(100),
                Duration::from_secs(2),
                0.25,
            );
            for nominal in [100u64, 200, 400, 800, 1600, 2000, 2000] {
                let pause = u64::try_from(backoff.next_pause().as_millis()).unwrap();
                assert!(
                    (nominal..=nominal + nominal / 4).contains(&pause),
                    "{pause} ms for a nominal {nominal} ms"
                );
            }
        }
    }
}
