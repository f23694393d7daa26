//! When a failed task runs again: exponential backoff with a cap and jitter.

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
        let base_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let max_ms = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX);
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
}
