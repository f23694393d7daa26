//! Per-queue limits as values: [`QueueLimits`] (a concurrency limit and a [`Rate`]) and the
//! parsing of a rate (`"100/1m"`, `"50/s"`). Applying them to claims is the broker's job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::{DurationStyle, format_duration, parse_duration};

/// Most starts a rate may allow per period, and most tasks a concurrency limit may allow.
pub const MAX_QUEUE_LIMIT: u32 = 1_000_000;
/// Longest rate period (one day).
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(86_400);

/// The limits of one queue, across every worker of the store (local and remote). `None` means
/// no limit of that kind; both `None` removes the queue's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Most tasks of the queue RUNNING at once (config `concurrency`), at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Most starts per period, spread evenly (config `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

impl QueueLimits {
    /// True when neither limit is set.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }

    /// Checks the values; the error names the field (`concurrency`, `rate`) and the reason.
    ///
    /// # Errors
    /// `(field, reason)` for a concurrency of 0 or above [`MAX_QUEUE_LIMIT`].
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(concurrency) = self.concurrency
            && !(1..=MAX_QUEUE_LIMIT).contains(&concurrency)
        {
            return Err((
                "concurrency",
                format!(
                    "must be 1 to {MAX_QUEUE_LIMIT}, got {concurrency} (leave it out for no limit; \
                     pause the queue to start none)"
                ),
            ));
        }
        Ok(())
    }
}

/// A rate limit: at most `starts` task starts per `period`, spread evenly (one start every
/// `period / starts`, no burst). Written `"100/1m"`, `"50/s"`, `"5/500ms"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    starts: u32,
    period: Duration,
}

impl Rate {
    /// `starts` per `period`.
    ///
    /// # Errors
    /// A reason when `starts` is 0 or above [`MAX_QUEUE_LIMIT`], or `period` is under 1 ms or
    /// over a day.
    pub fn new(starts: u32, period: Duration) -> Result<Self, String> {
        if !(1..=MAX_QUEUE_LIMIT).contains(&starts) {
            return Err(format!(
                "the number of starts must be 1 to {MAX_QUEUE_LIMIT}, got {starts} (leave the \
                 rate out for no limit; pause the queue to start none)"
            ));
        }
        if period < Duration::from_millis(1) || period > MAX_RATE_PERIOD {
            return Err(format!(
                "the period must be 1ms to 1d, got {}",
                format_duration(period, DurationStyle::Exact)
            ));
        }
        Ok(Self { starts, period })
    }

    /// Starts allowed per period.
    #[must_use]
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The period.
    #[must_use]
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The period in whole milliseconds (at least 1, by construction).
    pub(crate) fn period_ms(&self) -> i128 {
        i128::try_from(self.period.as_millis()).unwrap_or(i128::MAX)
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `N/PERIOD`: `N` a whole number of starts, `PERIOD` a duration (`1m`, `30s`, `500ms`) or
    /// a bare unit (`s`, `m`, `h`, `d`, meaning one of it).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape =
            || format!("expected STARTS/PERIOD such as \"100/1m\" or \"50/s\", got {text:?}");
        let (starts, period) = text.trim().split_once('/').ok_or_else(shape)?;
        let starts: u32 = starts.trim().parse().map_err(|_| shape())?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(period)
        } else {
            parse_duration(&format!("1{period}"))
        }
        .map_err(|error| format!("bad period in {text:?}: {error}"))?;
        Self::new(starts, period)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = format_duration(self.period, DurationStyle::Exact);
        write!(f, "{}/{period}", self.starts)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_a_period_or_a_bare_unit() {
        let rate: Rate = "100/1m".parse().unwrap();
        assert_eq!(
            (rate.starts(), rate.period()),
            (100, Duration::from_secs(60))
        );
        let rate: Rate = "50/s".parse().unwrap();
        assert_eq!((rate.starts(), rate.period()), (50, Duration::from_secs(1)));
        let rate: Rate = " 5 / 500ms ".parse().unwrap();
        assert_eq!(rate.period(), Duration::from_millis(500));
        assert_eq!(rate.to_string(), "5/500ms");
        assert_eq!("20/s".parse::<Rate>().unwrap().to_string(), "20/1s");
    }

    #[test]
    fn bad_rates_say_why() {
        for (text, reason) in [
            ("0/s", "must be 1 to"),
            ("x", "expected STARTS/PERIOD"),
            ("10", "expected STARTS/PERIOD"),
            ("-1/s", "expected STARTS/PERIOD"),
            ("10/0s", "the period must be"),
            ("10/2d", "the period must be"),
            ("10/x", "bad period"),
        ] {
            let error = text.parse::<Rate>().unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn a_zero_concurrency_is_refused() {
        let limits = QueueLimits {
            concurrency: Some(0),
            rate: None,
        };
        let (field, reason) = limits.check().unwrap_err();
        assert_eq!(field, "concurrency");
        assert!(reason.contains("must be 1 to"), "{reason}");
    }
}
