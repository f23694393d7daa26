//! Human-readable durations (`"90s"`, `"1h30m"`, `"500ms"`, `"2d"`) for config files and the
//! CLI's `--delay`; it knows nothing about files or keys.

use std::time::Duration;

/// The units [`parse_duration`] accepts, as named in its error messages.
const UNITS: &str = "ms, s, m, h or d";

/// Why a duration string could not be parsed. Each message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The text is empty or only whitespace.
    #[error("empty duration: expected e.g. \"90s\", \"1h30m\" or a number of seconds")]
    Empty,
    /// The text starts with a minus sign.
    #[error("negative duration {input:?}: durations cannot be negative")]
    Negative {
        /// The whole text given.
        input: String,
    },
    /// A number in a multi-part duration has no unit (`"1h 30"`).
    #[error("missing unit after {number} in {input:?} (use {UNITS})")]
    MissingUnit {
        /// The number without a unit.
        number: String,
        /// The whole text given.
        input: String,
    },
    /// A unit fq does not know (`"5x"`, `"3w"`).
    #[error("unknown unit {unit:?} in {input:?} (use {UNITS})")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The whole text given.
        input: String,
    },
    /// A fractional number (`"1.5h"`).
    #[error(
        "fractions are not supported in {input:?}: use a smaller unit, e.g. \"90m\" for \"1.5h\""
    )]
    Fraction {
        /// The whole text given.
        input: String,
    },
    /// A character that cannot start a number (`"h5"`, `"five"`).
    #[error("unexpected {found:?} in {input:?}: expected a number")]
    Unexpected {
        /// The offending character.
        found: char,
        /// The whole text given.
        input: String,
    },
    /// The total does not fit in a `Duration`.
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The whole text given.
        input: String,
    },
}

/// Parses a human duration.
///
/// The text is one or more `<number><unit>` parts, optionally separated by whitespace, summed:
/// `"90s"`, `"1h30m"`, `"1h 30m"`, `"500ms"`, `"2d"`. Units are `ms`, `s`, `m` (minutes), `h` and
/// `d` (24 hours). A bare number (`"90"`) means seconds. Leading and trailing whitespace is ignored.
/// Fractions (`"1.5h"`) are refused rather than rounded: write `"90m"`.
///
/// # Errors
///
/// Empty text, a negative or fractional number, a missing or unknown unit, any other character,
/// or a total too large for a `Duration`; the error quotes the text.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let input = text.trim();
    let owned = || input.to_owned();
    let overflow = || DurationError::Overflow { input: owned() };
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input.starts_with('-') {
        return Err(DurationError::Negative { input: owned() });
    }
    if input.bytes().all(|b| b.is_ascii_digit()) {
        return input
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| overflow());
    }

    let mut total = Duration::ZERO;
    let mut rest = input;
    while let Some(found) = rest.chars().next() {
        let (number, after) = split_run(rest, |c| c.is_ascii_digit());
        if number.is_empty() {
            return Err(DurationError::Unexpected {
                found,
                input: owned(),
            });
        }
        if after.starts_with(['.', ',']) {
            return Err(DurationError::Fraction { input: owned() });
        }
        let (unit, after) = split_run(after.trim_start(), char::is_alphabetic);
        if unit.is_empty() {
            let number = number.to_owned();
            return Err(DurationError::MissingUnit {
                number,
                input: owned(),
            });
        }
        let value = number.parse::<u64>().map_err(|_| overflow())?;
        let part = match unit {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3_600).map(Duration::from_secs),
            "d" => value.checked_mul(86_400).map(Duration::from_secs),
            _ => {
                let unit = unit.to_owned();
                return Err(DurationError::UnknownUnit {
                    unit,
                    input: owned(),
                });
            }
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(overflow)?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// `text` split where its leading run of `in_run` characters ends.
fn split_run(text: &str, in_run: fn(char) -> bool) -> (&str, &str) {
    text.split_at(text.find(|c| !in_run(c)).unwrap_or(text.len()))
}

/// How [`format_duration`] writes a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationStyle {
    /// Exactly, the way [`parse_duration`] reads it (`1h30m`, `1s500ms`, `0s`), for messages
    /// about settings. Durations finer than a millisecond fall back to `Debug` (`1.5µs`).
    Exact,
    /// Rounded to at most two units, for people scanning tables and banners: `750ms`, `4.2s`,
    /// `3m 5s`, `2h 10m`, `3d 4h` (the smaller unit left out when zero).
    Short,
}

/// Formats `duration` in `style`.
pub fn format_duration(duration: Duration, style: DurationStyle) -> String {
    if style == DurationStyle::Short {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let two = |big: u64, big_unit: char, small: u64, small_unit: char| match small {
            0 => format!("{big}{big_unit}"),
            _ => format!("{big}{big_unit} {small}{small_unit}"),
        };
        return match ms / 1000 {
            0 => format!("{ms}ms"),
            secs @ 1..=59 if ms.is_multiple_of(1000) => format!("{secs}s"),
            secs @ 1..=59 => format!("{secs}.{}s", (ms % 1000) / 100),
            secs @ 60..=3_599 => two(secs / 60, 'm', secs % 60, 's'),
            secs @ 3_600..=86_399 => two(secs / 3600, 'h', (secs % 3600) / 60, 'm'),
            secs => two(secs / 86_400, 'd', (secs % 86_400) / 3600, 'h'),
        };
    }
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{duration:?}");
    }
    if duration.is_zero() {
        return "0s".to_owned();
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    let millis = duration.subsec_millis();
    if millis != 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}
