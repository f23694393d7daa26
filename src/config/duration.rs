//! Human-readable durations (`"90s"`, `"1h30m"`, `"500ms"`, `"2d"`, `"1w"`) for config files and
//! the CLI's `--delay`, read by the `humantime` crate; it knows nothing about files or keys.

use std::time::Duration;

/// The units [`parse_duration`] accepts, as named in its error messages.
const UNITS: &str = "ns, us, ms, s, m, h, d, w, M or y, or a long form such as sec or hours";

/// Why a duration string could not be parsed. The message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parses a human duration.
///
/// The text is one or more `<number><unit>` parts, optionally separated by whitespace, summed:
/// `"90s"`, `"1h30m"`, `"1h 30m"`, `"500ms"`, `"2d"`. The units are `humantime`'s: `ns`, `us`,
/// `ms`, `s`, `m` (minutes), `h`, `d` (24 hours), `w` (7 days), `M` (30.44 days) and `y` (365.25
/// days), or their long forms (`sec`, `min`, `hours`, `days`, `weeks`, ...). A bare number
/// (`"90"`) means seconds. Leading and trailing whitespace is ignored. Fractions (`"1.5h"`) are
/// refused rather than rounded: write `"90m"`.
///
/// # Errors
///
/// Empty text, a negative or fractional number, a missing or unknown unit, any other character,
/// or a total too large for a `Duration`; the error quotes the text.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let input = text.trim();
    let too_large = || DurationError(format!("duration {input:?} is too large"));
    let refuse = |message: String| Err(DurationError(message));
    if input.is_empty() {
        let expected = "expected e.g. \"90s\", \"1h30m\" or a number of seconds";
        return refuse(format!("empty duration: {expected}"));
    }
    if input.starts_with('-') {
        return refuse(format!(
            "negative duration {input:?}: durations cannot be negative"
        ));
    }
    // humantime reads "1.5h" as 90 minutes; fq has always refused fractions, and still does.
    let bytes = input.as_bytes();
    if bytes
        .windows(2)
        .any(|pair| pair[0].is_ascii_digit() && b".,".contains(&pair[1]))
    {
        return refuse(format!(
            "fractions are not supported in {input:?}: use a smaller unit, e.g. \"90m\" for \"1.5h\""
        ));
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return input
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| too_large());
    }
    humantime::parse_duration(input).map_err(|err| {
        use humantime::DurationError as Humantime;
        let found = |at: usize| input.get(at..).and_then(|rest| rest.chars().next());
        DurationError(match err {
            Humantime::NumberOverflow => return too_large(),
            Humantime::UnknownUnit { unit, value, .. } if unit.is_empty() => {
                format!("missing unit after {value} in {input:?} (use {UNITS})")
            }
            Humantime::UnknownUnit { unit, .. } => {
                format!("unknown unit {unit:?} in {input:?} (use {UNITS})")
            }
            Humantime::NumberExpected(at) | Humantime::InvalidCharacter(at) => {
                let found = found(at).unwrap_or_default();
                format!("unexpected {found:?} in {input:?}: expected a number")
            }
            err => format!("invalid duration {input:?}: {err}"),
        })
    })
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
        let ms = crate::clock::duration_ms(duration);
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
