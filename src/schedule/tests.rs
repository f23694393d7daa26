use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;
use crate::Millis;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Millis {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .map(|t| t.timestamp_millis())
        .expect("a valid UTC time")
}

fn cron(expression: &str, zone: &str) -> Timetable {
    Timetable::new(&ScheduleSpec::Cron(expression.into()), zone, 0).expect("a valid spec")
}

/// The fire times after `from`, `n` of them.
fn fires(timetable: &Timetable, from: Millis, n: usize) -> Vec<Millis> {
    let mut out = Vec::new();
    let mut at = from;
    while out.len() < n {
        at = timetable.next_after(at).expect("a next fire time");
        out.push(at);
    }
    out
}

fn refused(spec: &ScheduleSpec, zone: &str) -> (&'static str, String) {
    match Timetable::new(spec, zone, 0) {
        Err(Error::InvalidInput { field, message }) => (field, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_specs_are_refused_with_the_field_and_the_reason() {
    let (field, message) = refused(&ScheduleSpec::Cron("61 * * * *".into()), "UTC");
    assert_eq!(field, "cron");
    assert!(message.contains("61 * * * *"), "{message}");
    let (field, message) = refused(&ScheduleSpec::Cron("* * * * *".into()), "Mars/Olympus");
    assert_eq!(field, "zone");
    assert!(message.contains("Mars/Olympus"), "{message}");
    let (field, message) = refused(&ScheduleSpec::Every(Duration::ZERO), "UTC");
    assert_eq!(field, "every");
    assert!(message.contains("at least"), "{message}");
    let (field, _) = refused(&ScheduleSpec::Cron("0 0 30 2 *".into()), "UTC");
    assert_eq!(field, "cron");
    // Seven fields (a year) are not accepted: 5, or 6 with seconds.
    let (field, _) = refused(&ScheduleSpec::Cron("0 0 0 1 1 * 2030".into()), "UTC");
    assert_eq!(field, "cron");
    match ScheduleSpec::parse("every 0x") {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "every"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn specs_round_trip_through_their_text() {
    for text in ["*/5 * * * * *", "@daily", "every 30s", "every 1h30m"] {
        let spec = ScheduleSpec::parse(text).unwrap();
        assert_eq!(spec.to_string(), text);
    }
    assert_eq!(
        ScheduleSpec::parse("every 30s").unwrap(),
        ScheduleSpec::Every(Duration::from_secs(30))
    );
}

#[test]
fn five_fields_six_fields_and_nicknames() {
    let start = utc(2026, 1, 1, 0, 0, 0);
    assert_eq!(
        fires(&cron("*/5 * * * * *", "UTC"), start, 3),
        vec![start + 5_000, start + 10_000, start + 15_000]
    );
    assert_eq!(
        fires(&cron("*/15 * * * *", "UTC"), start, 2),
        vec![start + 900_000, start + 1_800_000]
    );
    assert_eq!(
        fires(&cron("@hourly", "UTC"), start + 1, 1),
        vec![start + 3_600_000]
    );
    assert_eq!(
        fires(&cron("@daily", "UTC"), start, 1),
        vec![utc(2026, 1, 2, 0, 0, 0)]
    );
}

#[test]
fn intervals_count_from_their_anchor() {
    let anchor = utc(2026, 1, 1, 0, 0, 0);
    let every =
        Timetable::new(&ScheduleSpec::Every(Duration::from_secs(30)), "UTC", anchor).unwrap();
    assert_eq!(every.next_after(anchor), Some(anchor + 30_000));
    assert_eq!(every.next_after(anchor + 29_999), Some(anchor + 30_000));
    assert_eq!(every.next_after(anchor + 30_000), Some(anchor + 60_000));
    assert_eq!(every.latest_at_or_before(anchor + 29_999), None);
    assert_eq!(
        every.latest_at_or_before(anchor + 65_000),
        Some(anchor + 60_000)
    );
}

/// Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
/// 2026-10-25 at 03:00 (to 02:00).
#[test]
fn a_fixed_time_fires_once_across_each_dst_change_in_a_named_zone() {
    let daily = cron("30 2 * * *", "Europe/Paris");
    // Spring: 02:30 does not exist on the 29th; it fires once, at 03:00 CEST (01:00 UTC).
    assert_eq!(
        fires(&daily, utc(2026, 3, 27, 12, 0, 0), 3),
        vec![
            utc(2026, 3, 28, 1, 30, 0), // 02:30 CET
            utc(2026, 3, 29, 1, 0, 0),  // the first instant after the gap
            utc(2026, 3, 30, 0, 30, 0), // 02:30 CEST
        ]
    );
    // Autumn: 02:30 happens twice on the 25th; it fires once, at the first (CEST).
    assert_eq!(
        fires(&daily, utc(2026, 10, 24, 12, 0, 0), 3),
        vec![
            utc(2026, 10, 25, 0, 30, 0), // 02:30 CEST, the first occurrence
            utc(2026, 10, 26, 1, 30, 0), // 02:30 CET
            utc(2026, 10, 27, 1, 30, 0),
        ]
    );
}

#[test]
fn a_stepped_spec_keeps_its_rhythm_in_real_time_across_the_fall_back() {
    let half_hourly = cron("*/30 * * * *", "Europe/Paris");
    let from = utc(2026, 10, 24, 23, 45, 0); // 01:45 CEST
    let times = fires(&half_hourly, from, 6);
    let expected: Vec<Millis> = (0..6)
        .map(|i| utc(2026, 10, 25, 0, 0, 0) + i * 1_800_000)
        .collect();
    assert_eq!(
        times, expected,
        "each real half hour fires once, none twice"
    );
}

#[test]
fn catch_up_policies_choose_among_the_missed_fire_times() {
    let minutely = cron("* * * * *", "UTC");
    let first = utc(2026, 1, 1, 0, 1, 0);
    // 500 fire times missed: 00:01 .. 08:20.
    let now = utc(2026, 1, 1, 8, 20, 30);
    let (latest, next) = due_fire_times(
        &minutely,
        first,
        now,
        now - MISSED_AFTER_MS,
        CatchUp::Latest,
    );
    assert_eq!(latest, vec![utc(2026, 1, 1, 8, 20, 0)]);
    assert_eq!(next, Some(utc(2026, 1, 1, 8, 21, 0)));
    let (all, _) = due_fire_times(&minutely, first, now, now - MISSED_AFTER_MS, CatchUp::All);
    assert_eq!(all.len(), MAX_CATCH_UP);
    assert_eq!(all.first(), Some(&utc(2026, 1, 1, 6, 41, 0)));
    assert_eq!(all.last(), Some(&utc(2026, 1, 1, 8, 20, 0)));
    assert!(all.windows(2).all(|w| w[1] - w[0] == 60_000));
    // Reopened at `now`: every due fire time passed while no engine ran.
    let (skipped, next) = due_fire_times(&minutely, first, now, now, CatchUp::Skip);
    assert_eq!(skipped, Vec::<Millis>::new());
    assert_eq!(next, Some(utc(2026, 1, 1, 8, 21, 0)));
    // On time, every policy fires the one due time.
    let on_time = utc(2026, 1, 1, 0, 1, 0);
    for policy in [CatchUp::Latest, CatchUp::All, CatchUp::Skip] {
        let (fired, next) =
            due_fire_times(&minutely, first, on_time, on_time - MISSED_AFTER_MS, policy);
        assert_eq!(fired, vec![first], "{policy:?}");
        assert_eq!(next, Some(first + 60_000));
    }
    // Three missed with `all`: all three.
    let (all, _) = due_fire_times(&minutely, first, first + 120_000, 0, CatchUp::All);
    assert_eq!(all, vec![first, first + 60_000, first + 120_000]);
    // Skip: a fire time seconds before the engine opened was missed all the same.
    let opened = first + 2_500;
    let (skipped, _) = due_fire_times(&minutely, first, opened, opened, CatchUp::Skip);
    assert_eq!(skipped, Vec::<Millis>::new());
    let (kept, _) = due_fire_times(&minutely, first, opened, first, CatchUp::Skip);
    assert_eq!(kept, vec![first]);
}
