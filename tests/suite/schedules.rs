//! Recurring schedules (issue 12 §1): each fire time queued exactly once, at its time, by the
//! engine's own timer on a manual clock; the catch-up policies after downtime; a DST change in
//! a named zone; bad specs refused with the field and the reason; upsert, pause, resume,
//! trigger and remove, locally and through the control socket; and a process killed with
//! SIGKILL at random points while firing, whose store then holds each fire time exactly once.
//!
//! A fired task's `scheduled_at` is its fire time: that is what these tests count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use fq::testing::TestEngine;
use fq::{CatchUp, Engine, ListQuery, Schedule, ScheduleAction, TaskRecord};
use serde_json::json;

const TASK: &str = "test.scheduled";

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn test_engine(at: DateTime<Utc>) -> TestEngine {
    TestEngine::builder().start_at(at).open().unwrap()
}

fn template(engine: &Engine) -> fq::QueueTask {
    engine.queue_task_named(TASK, &json!({"kwargs": {"report": "daily"}}))
}

/// Every task of the store, oldest first.
async fn all_tasks(engine: &Engine) -> Vec<TaskRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = engine
            .list(ListQuery {
                limit: 1_000,
                after,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        after = page.last().map(|record| record.id);
        let full = page.len() == 1_000;
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// How many tasks were queued per fire time (`scheduled_at`).
async fn fire_counts(engine: &Engine) -> BTreeMap<DateTime<Utc>, usize> {
    let mut counts = BTreeMap::new();
    for task in all_tasks(engine).await {
        assert_eq!(task.name, TASK);
        *counts.entry(task.scheduled_at).or_insert(0) += 1;
    }
    counts
}

/// Waits until the schedule `name` has queued its task for `fire` (the timer thread fires it
/// after a clock advance), failing after [`common::PATIENCE`].
async fn fired(engine: &Engine, name: &str, fire: DateTime<Utc>) {
    let deadline = std::time::Instant::now() + common::PATIENCE;
    loop {
        let schedules = engine.schedules().await.unwrap();
        let schedule = schedules.iter().find(|s| s.name == name).unwrap();
        if schedule.last_fire == Some(fire) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never fired at {fire}: {schedule:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn every_five_seconds_for_an_hour_fires_each_fire_time_once_at_its_time() {
    let test = test_engine(start());
    let info = test
        .schedule(Schedule::cron("tick", "*/5 * * * * *"), template(&test))
        .await
        .unwrap();
    let first = start() + chrono::Duration::seconds(5);
    assert_eq!(info.next_fire, Some(first));
    assert_eq!(info.last_fire, None);
    for n in 1..=720 {
        let fire = start() + chrono::Duration::seconds(5 * n);
        if n <= 10 {
            // Not a millisecond early: just before its time, nothing is queued.
            test.clock().advance(Duration::from_millis(4_999));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = test.schedules().await.unwrap();
            assert_eq!(
                before[0].last_fire,
                (n > 1).then(|| fire - chrono::Duration::seconds(5))
            );
            test.clock().advance(Duration::from_millis(1));
        } else {
            test.clock().advance(Duration::from_secs(5));
        }
        fired(&test, "tick", fire).await;
    }
    let tasks = all_tasks(&test).await;
    assert_eq!(tasks.len(), 720);
    let counts = fire_counts(&test).await;
    let expected: Vec<DateTime<Utc>> = (1..=720)
        .map(|n| start() + chrono::Duration::seconds(5 * n))
        .collect();
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
    assert!(counts.values().all(|n| *n == 1), "a fire time queued twice");
    // Queued at its fire time exactly (the manual clock stood there when it committed).
    assert!(tasks.iter().all(|t| t.created_at == t.scheduled_at));
    assert!(
        tasks
            .iter()
            .all(|t| t.payload.to_value()["kwargs"]["report"] == "daily")
    );
}

/// Downtime of a store on disk: the schedule is declared, the engine closed, the clock moves
/// 10 minutes (120 fire times of `*/5 * * * * *`), and the engine reopened.
async fn after_downtime(catch_up: CatchUp) -> BTreeMap<DateTime<Utc>, usize> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let clock = fq::ManualClock::new(start());
    {
        let engine = Engine::builder(&path)
            .clock(clock.clone())
            .control(false)
            .open()
            .unwrap();
        engine
            .schedule(
                Schedule::cron("tick", "*/5 * * * * *").catch_up(catch_up),
                template(&engine),
            )
            .await
            .unwrap();
        drop(engine);
    }
    clock.advance(Duration::from_secs(600) + Duration::from_millis(2_500));
    let engine = Engine::builder(&path)
        .clock(clock.clone())
        .control(false)
        .open()
        .unwrap();
    if catch_up != CatchUp::Skip {
        fired(&engine, "tick", start() + chrono::Duration::seconds(600)).await;
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = &engine.schedules().await.unwrap()[0];
    assert_eq!(
        info.next_fire,
        Some(start() + chrono::Duration::seconds(605)),
        "{catch_up:?}: the schedule goes on after now"
    );
    // And on time again afterwards.
    clock.advance(Duration::from_millis(2_500));
    fired(&engine, "tick", start() + chrono::Duration::seconds(605)).await;
    let counts = fire_counts(&engine).await;
    assert!(counts.values().all(|n| *n == 1), "a fire time queued twice");
    drop(engine);
    counts
}

#[tokio::test]
async fn catch_up_latest_queues_the_most_recent_missed_fire_time() {
    let counts = after_downtime(CatchUp::Latest).await;
    let times: Vec<_> = counts.keys().copied().collect();
    assert_eq!(
        times,
        vec![
            start() + chrono::Duration::seconds(600),
            start() + chrono::Duration::seconds(605)
        ]
    );
}

#[tokio::test]
async fn catch_up_all_queues_every_missed_fire_time_up_to_the_bound() {
    let counts = after_downtime(CatchUp::All).await;
    let times: Vec<_> = counts.keys().copied().collect();
    // 120 missed (00:00:05 .. 00:10:00): the most recent 100, then the on-time one.
    assert_eq!(times.len(), fq::MAX_CATCH_UP + 1);
    assert_eq!(times[0], start() + chrono::Duration::seconds(105));
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::seconds(5))
    );
}

#[tokio::test]
async fn catch_up_skip_queues_no_missed_fire_time() {
    let counts = after_downtime(CatchUp::Skip).await;
    let times: Vec<_> = counts.keys().copied().collect();
    assert_eq!(times, vec![start() + chrono::Duration::seconds(605)]);
}

/// Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00): a daily 02:30 fires once
/// that day, at 03:00 local (01:00 UTC); it falls back on 2026-10-25 at 03:00 (to 02:00): the
/// 02:30 that happens twice fires once, at the first (00:30 UTC).
#[tokio::test]
async fn a_daily_time_fires_once_across_each_dst_change_in_europe_paris() {
    for (from, fires) in [
        (
            Utc.with_ymd_and_hms(2026, 3, 28, 0, 0, 0).unwrap(),
            [(3, 28, 1, 30), (3, 29, 1, 0), (3, 30, 0, 30)],
        ),
        (
            Utc.with_ymd_and_hms(2026, 10, 24, 0, 0, 0).unwrap(),
            [(10, 24, 0, 30), (10, 25, 0, 30), (10, 26, 1, 30)],
        ),
    ] {
        let test = test_engine(from);
        test.schedule(
            Schedule::cron("nightly", "30 2 * * *").zone("Europe/Paris"),
            template(&test),
        )
        .await
        .unwrap();
        let expected: Vec<DateTime<Utc>> = fires
            .iter()
            .map(|(mo, d, h, mi)| Utc.with_ymd_and_hms(2026, *mo, *d, *h, *mi, 0).unwrap())
            .collect();
        // Walk the clock through three days a quarter of an hour at a time.
        let mut seen = Vec::new();
        for _ in 0..(3 * 24 * 4) {
            test.clock().advance(Duration::from_secs(15 * 60));
            let now = test.clock().now();
            if let Some(fire) = expected.iter().find(|f| **f <= now && !seen.contains(*f)) {
                fired(&test, "nightly", *fire).await;
                seen.push(*fire);
            }
        }
        let counts = fire_counts(&test).await;
        assert_eq!(counts.keys().copied().collect::<Vec<_>>(), expected);
        assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    }
}

fn refusal(result: fq::Result<fq::ScheduleInfo>) -> (&'static str, String) {
    match result {
        Err(fq::Error::InvalidInput { field, message }) => (field, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_field_and_the_reason() {
    let (_dir, local, remote) = common::engine_and_remote().await;
    for engine in [&local, &remote] {
        let (field, message) = refusal(
            engine
                .schedule(Schedule::cron("bad", "61 * * * *"), template(engine))
                .await,
        );
        assert_eq!(field, "cron", "{message}");
        assert!(message.contains("61"), "{message}");
        let (field, message) = refusal(
            engine
                .schedule(
                    Schedule::cron("bad", "* * * * *").zone("Mars/Olympus_Mons"),
                    template(engine),
                )
                .await,
        );
        assert_eq!(field, "zone", "{message}");
        assert!(message.contains("Mars/Olympus_Mons"), "{message}");
        let (field, message) = refusal(
            engine
                .schedule(Schedule::every("bad", Duration::ZERO), template(engine))
                .await,
        );
        assert_eq!(field, "every", "{message}");
        let (field, _) = refusal(
            engine
                .schedule(
                    Schedule::every("bad", Duration::from_secs(1)),
                    template(engine).delay(Duration::from_secs(5)),
                )
                .await,
        );
        assert_eq!(field, "task");
        let (field, message) = refusal(
            engine
                .schedule(
                    Schedule::every("bad", Duration::from_secs(1)),
                    template(engine).unique("one-at-a-time"),
                )
                .await,
        );
        assert_eq!(field, "task", "{message}");
        assert!(message.contains("unique key"), "{message}");
        let (field, _) = refusal(engine.trigger_schedule("nonesuch").await);
        assert_eq!(field, "schedule name");
        assert!(engine.schedules().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn pause_resume_trigger_remove_and_upsert_locally_and_over_the_socket() {
    let (_dir, local, remote) = common::engine_and_remote().await;
    for (n, engine) in [&local, &remote].into_iter().enumerate() {
        let name = format!("hourly-{n}");
        let info = engine
            .schedule(
                Schedule::cron(&name, "@hourly").catch_up(CatchUp::All),
                template(engine).queue("reports").priority(3),
            )
            .await
            .unwrap();
        assert_eq!(
            (info.spec.as_str(), info.zone.as_str(), info.queue.as_str()),
            ("@hourly", "UTC", "reports")
        );
        assert_eq!(info.catch_up, CatchUp::All);
        assert!(info.next_fire.is_some());
        let paused = engine.pause_schedule(&name).await.unwrap();
        assert!(paused.paused);
        assert_eq!(paused.next_fire, None);
        // Triggered while paused: one task now.
        let triggered = engine.trigger_schedule(&name).await.unwrap();
        let id = triggered.last_task.unwrap();
        assert_eq!(triggered.last_status, Some(fq::TaskStatus::Pending));
        let task = engine.task(id).await.unwrap().unwrap();
        assert_eq!((task.queue.as_str(), task.priority), ("reports", 3));
        let resumed = engine.resume_schedule(&name).await.unwrap();
        assert!(!resumed.paused);
        assert!(resumed.next_fire.is_some());
        // Upsert with a changed spec takes effect at once.
        let changed = engine
            .schedule(
                Schedule::every(&name, Duration::from_secs(30)),
                template(engine),
            )
            .await
            .unwrap();
        assert_eq!(changed.spec, "every 30s");
        let next = changed.next_fire.unwrap();
        let delta = next - Utc::now();
        assert!(delta <= chrono::Duration::seconds(30), "{next}");
        assert_eq!(changed.last_task, Some(id), "the history stays");
        let removed = engine
            .act_on_schedule(&name, ScheduleAction::Remove)
            .await
            .unwrap();
        assert_eq!(removed.name, name);
        assert!(
            engine
                .schedules()
                .await
                .unwrap()
                .iter()
                .all(|s| s.name != name),
            "removed"
        );
        // Its task stays.
        assert!(engine.task(id).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn a_schedule_and_its_pause_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    {
        let engine = Engine::builder(&path).control(false).open().unwrap();
        engine
            .schedule(Schedule::cron("kept", "0 3 * * *"), template(&engine))
            .await
            .unwrap();
        engine.pause_schedule("kept").await.unwrap();
        drop(engine);
    }
    let engine = Engine::builder(&path).control(false).open().unwrap();
    let schedules = engine.schedules().await.unwrap();
    assert_eq!(schedules.len(), 1);
    assert!(schedules[0].paused);
    assert_eq!(schedules[0].spec, "0 3 * * *");
}

// --- SIGKILL while firing -------------------------------------------------------------------

/// The interval of the killed child's schedule. With `catch_up = all`, a fire time missed
/// while no process ran is queued at the reopen, so the fire times form an unbroken series as
/// long as each restart takes less than `MAX_CATCH_UP` intervals (2.5 s).
const KILL_INTERVAL: Duration = Duration::from_millis(25);
const KILLS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_firing() -> fq::Result<()> {
    let Ok(dir) = std::env::var("FQ_SCHEDULE_CHILD") else {
        return Ok(()); // only meaningful as the child of `a_killed_process_queues_each_fire_time_once`
    };
    let engine = Engine::open(PathBuf::from(dir).join("fq.redb"))?;
    // Declared at every start, as an application does: the same spec keeps its place.
    engine
        .schedule(
            Schedule::every("rapid", KILL_INTERVAL).catch_up(CatchUp::All),
            template(&engine),
        )
        .await?;
    std::future::pending::<()>().await;
    Ok(())
}

fn spawn_child(dir: &Path) -> std::process::Child {
    crate::common::child::rerun("schedules::child_firing")
        .env("FQ_SCHEDULE_CHILD", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Regression guard for the one-commit rule of `writer/schedules.rs`. Negative control (run by
/// hand when this test was written): with the schedule's advance written in a second
/// transaction right after the one that queues the fire time's task (the alarm following the
/// second commit), three runs out of three found fire times queued twice.
#[tokio::test]
async fn a_killed_process_queues_each_fire_time_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..KILLS {
        let mut child = spawn_child(dir.path());
        std::thread::sleep(Duration::from_millis(fastrand::u64(100..400)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .control(false)
        .open()
        .unwrap();
    let before = engine.schedules().await.unwrap();
    assert_eq!(before.len(), 1, "the children declared the schedule");
    // Let the reopened engine catch up what the last kill missed, and fire a little more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.pause_schedule("rapid").await.unwrap();
    let counts = fire_counts(&engine).await;
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "fire times queued twice: {duplicates:?}"
    );
    let times: Vec<_> = counts.keys().copied().collect();
    assert!(times.len() > KILLS, "only {} fire times", times.len());
    let interval = chrono::Duration::from_std(KILL_INTERVAL).unwrap();
    let gaps: Vec<_> = times
        .windows(2)
        .filter(|w| w[1] - w[0] != interval)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(gaps.is_empty(), "fire times lost between: {gaps:?}");
    let info = &engine.schedules().await.unwrap()[0];
    assert_eq!(info.last_fire, times.last().copied());
}

// --- the CLI ----------------------------------------------------------------------------------

#[cfg(feature = "cli")]
fn fq_json(db: &Path, args: &[&str]) -> serde_json::Value {
    let out = common::child::fq()
        .arg("--db")
        .arg(db)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[cfg(feature = "cli")]
#[tokio::test]
async fn fq_schedules_lists_pauses_triggers_resumes_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fq.redb");
    {
        let engine = Engine::builder(&db).control(false).open().unwrap();
        engine
            .schedule(
                Schedule::cron("nightly", "30 2 * * *").zone("Europe/Paris"),
                template(&engine),
            )
            .await
            .unwrap();
    }
    let listed = fq_json(&db, &["schedules"]);
    let nightly = &listed[0];
    assert_eq!(nightly["name"], "nightly");
    assert_eq!(nightly["spec"], "30 2 * * *");
    assert_eq!(nightly["zone"], "Europe/Paris");
    assert_eq!(nightly["paused"], false);
    assert!(nightly["next_fire"].is_string(), "{nightly}");
    let paused = fq_json(&db, &["schedules", "pause", "nightly"]);
    assert_eq!(paused["paused"], true);
    let triggered = fq_json(&db, &["schedules", "trigger", "nightly"]);
    assert_eq!(triggered["last_status"], "PENDING", "{triggered}");
    let resumed = fq_json(&db, &["schedules", "resume", "nightly"]);
    assert_eq!(resumed["paused"], false);
    // The table names the last task and its status.
    let text = common::child::fq()
        .arg("--db")
        .arg(&db)
        .arg("schedules")
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("nightly") && text.contains("PENDING"),
        "{text}"
    );
    assert!(
        text.contains(triggered["last_task"].as_str().unwrap()),
        "{text}"
    );
    fq_json(&db, &["schedules", "remove", "nightly"]);
    assert_eq!(fq_json(&db, &["schedules"]), json!([]));
    let unknown = common::child::fq()
        .arg("--db")
        .arg(&db)
        .args(["schedules", "pause", "nonesuch"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("nonesuch"), "{stderr}");
}

// --- configuration --------------------------------------------------------------------------

fn config_engine(dir: &Path, toml: &str) -> fq::Result<Engine> {
    let mut config = fq::Config::from_toml_str(toml, &dir.join("fq.toml"))?;
    config.database = dir.join("fq.redb");
    Engine::builder(dir.join("fq.redb"))
        .config(config)
        .control(false)
        .open()
}

const TWO_SCHEDULES: &str = r#"
[[schedules]]
name = "nightly-report"
cron = "30 2 * * *"
zone = "Europe/Paris"
task = "myapp.tasks.report"
kwargs = { kind = "daily" }
queue = "reports"
catch_up = "all"

[[schedules]]
name = "heartbeat"
every = "30s"
task = "myapp.tasks.ping"
"#;

#[tokio::test]
async fn config_schedules_are_declared_at_open_and_orphaned_when_they_disappear() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = config_engine(dir.path(), TWO_SCHEDULES).unwrap();
        let schedules = engine.schedules().await.unwrap();
        let names: Vec<_> = schedules.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["heartbeat", "nightly-report"]);
        assert!(schedules.iter().all(|s| s.from_config && !s.orphaned));
        let nightly = &schedules[1];
        assert_eq!(
            (
                nightly.spec.as_str(),
                nightly.zone.as_str(),
                nightly.queue.as_str()
            ),
            ("30 2 * * *", "Europe/Paris", "reports")
        );
        assert_eq!(nightly.catch_up, CatchUp::All);
        assert_eq!(schedules[0].spec, "every 30s");
        let triggered = engine.trigger_schedule("nightly-report").await.unwrap();
        let task = engine
            .task(triggered.last_task.unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.payload.to_value()["kwargs"]["kind"], "daily");
    }
    // `heartbeat` leaves the file: disabled and shown as orphaned, not deleted.
    let one = TWO_SCHEDULES
        .split("\n[[schedules]]\nname = \"heartbeat\"")
        .next()
        .unwrap();
    {
        let engine = config_engine(dir.path(), one).unwrap();
        let schedules = engine.schedules().await.unwrap();
        assert_eq!(schedules.len(), 2);
        let heartbeat = &schedules[0];
        assert!(heartbeat.orphaned, "{heartbeat:?}");
        assert_eq!(heartbeat.next_fire, None, "an orphan does not fire");
        assert!(!schedules[1].orphaned);
    }
    // Back in the file: live again.
    let engine = config_engine(dir.path(), TWO_SCHEDULES).unwrap();
    let schedules = engine.schedules().await.unwrap();
    assert!(
        schedules
            .iter()
            .all(|s| !s.orphaned && s.next_fire.is_some())
    );
}

#[tokio::test]
async fn yaml_declares_schedules_under_task() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "task:\n  schedules:\n    - name: hourly\n      cron: \"@hourly\"\n      task: myapp.tasks.sync\n      args: [1, 2]\n";
    let mut config =
        fq::Config::from_yaml_str(yaml, &dir.path().join("config/services.yaml")).unwrap();
    config.database = dir.path().join("fq.redb");
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .config(config)
        .control(false)
        .open()
        .unwrap();
    let schedules = engine.schedules().await.unwrap();
    assert_eq!(schedules.len(), 1);
    assert_eq!(
        (schedules[0].name.as_str(), schedules[0].spec.as_str()),
        ("hourly", "@hourly")
    );
}

#[test]
fn bad_config_schedules_are_refused_naming_the_key_and_the_file() {
    for (entry, key, reason) in [
        ("cron = \"61 * * * *\"", "schedules[0].cron", "61"),
        (
            "cron = \"* * * * *\"\nzone = \"Mars/Olympus\"",
            "schedules[0].zone",
            "Mars/Olympus",
        ),
        ("every = \"0s\"", "schedules[0].every", "at least"),
        (
            "cron = \"@daily\"\nevery = \"1h\"",
            "schedules[0].every",
            "not both",
        ),
        (
            "cron = \"@daily\"\ncatch_up = \"some\"",
            "schedules[0].catch_up",
            "some",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("[[schedules]]\nname = \"bad\"\ntask = \"a.b\"\n{entry}\n");
        match config_engine(dir.path(), &toml) {
            Err(fq::Error::Config(fq::ConfigError::InvalidValue {
                path,
                key: got,
                message,
            })) => {
                assert_eq!(got, key, "{entry}: {message}");
                assert!(message.contains(reason), "{entry}: {message}");
                assert_eq!(path, Some(dir.path().join("fq.toml")));
            }
            other => panic!("{entry}: expected a refusal, got {other:?}"),
        }
        assert!(
            !dir.path().join("fq.redb").exists(),
            "{entry}: a store was created"
        );
    }
}
