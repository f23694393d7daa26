//! Delayed and scheduled tasks never start before their time and start as soon as it comes.
//! Time is a manual clock: nothing here sleeps.

use crate::common;

use std::time::Duration;

use chrono::TimeDelta;
use fq::testing::TestEngine;
use fq::{Registry, TaskError, TaskStatus, WorkerReport};
use serde_json::json;

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_fn(
        "test.noop",
        |_: serde_json::Value| -> Result<(), TaskError> { Ok(()) },
    );
    registry
}

#[tokio::test]
async fn delayed_and_scheduled_tasks_wait_for_their_time() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let start = test.clock().now();
    let delayed = test
        .queue_task_named("test.noop", &json!({"kwargs": {"which": "delayed"}}))
        .delay(3600u64)
        .send()
        .await?;
    let scheduled = test
        .queue_task_named("test.noop", &json!({"kwargs": {"which": "scheduled"}}))
        .schedule_at(start + TimeDelta::hours(2))
        .send()
        .await?;
    assert_eq!(test.drain().await?, WorkerReport::default());
    for id in [delayed, scheduled] {
        let record = test.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Pending);
        assert_eq!(record.started_at, None);
    }

    test.clock().advance(Duration::from_millis(3_599_999));
    assert_eq!(
        test.drain().await?,
        WorkerReport::default(),
        "ran 1 ms early"
    );
    test.clock().advance(Duration::from_millis(1));
    assert_eq!(test.drain().await?.completed, 1);
    let record = test.task(delayed).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.scheduled_at, start + TimeDelta::hours(1));
    assert_eq!(
        record.started_at,
        Some(start + TimeDelta::hours(1)),
        "started late"
    );
    assert_eq!(
        test.task(scheduled).await?.unwrap().status,
        TaskStatus::Pending
    );

    test.clock().advance(Duration::from_secs(3600));
    assert_eq!(test.drain().await?.completed, 1);
    let record = test.task(scheduled).await?.unwrap();
    assert_eq!(record.started_at, Some(start + TimeDelta::hours(2)));
    Ok(())
}

#[tokio::test]
async fn schedule_at_wins_over_delay_and_a_past_time_means_now() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let start = test.clock().now();
    let both = test
        .queue_task_named("test.noop", &json!({}))
        .delay(Duration::from_secs(10))
        .schedule_at(start + TimeDelta::minutes(5))
        .send()
        .await?;
    assert_eq!(
        test.task(both).await?.unwrap().scheduled_at,
        start + TimeDelta::minutes(5)
    );

    let past = test
        .queue_task_named("test.noop", &json!({}))
        .schedule_at(start - TimeDelta::days(3))
        .send()
        .await?;
    assert_eq!(test.drain().await?.completed, 1);
    assert_eq!(
        test.task(past).await?.unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(test.task(both).await?.unwrap().status, TaskStatus::Pending);
    Ok(())
}

#[tokio::test]
async fn timedelta_delays_work_and_negative_ones_are_refused() -> fq::Result<()> {
    let test = TestEngine::new()?;
    let id = test
        .queue_task_named("test.noop", &json!({}))
        .delay(TimeDelta::hours(1) + TimeDelta::minutes(30))
        .send()
        .await?;
    assert_eq!(
        test.task(id).await?.unwrap().scheduled_at,
        test.clock().now() + TimeDelta::minutes(90)
    );
    let err = test
        .queue_task_named("test.noop", &json!({}))
        .delay(TimeDelta::seconds(-5))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, fq::Error::InvalidInput { field: "delay", .. }),
        "{err}"
    );
    Ok(())
}

/// On a store file and a real worker: the timer thread wakes the worker when the clock
/// reaches a due time (the test engine above drains instead).
#[tokio::test]
async fn delayed_tasks_survive_a_reopen_and_still_wait() -> fq::Result<()> {
    let (dir, engine, clock) = common::manual_engine();
    let path = engine.path().to_path_buf();
    let id = engine
        .queue_task_named("test.noop", &json!({}))
        .delay(600u64)
        .send()
        .await?;
    drop(engine);
    let engine = fq::Engine::builder(&path).clock(clock.clone()).open()?;
    let mut events = engine.events().subscribe();
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    let marker = engine
        .queue_task_named("test.noop", &json!({}))
        .send()
        .await?;
    common::task_event(&mut events, "worker.task.after_execution", marker).await;
    assert_eq!(engine.task(id).await?.unwrap().status, TaskStatus::Pending);
    clock.advance(Duration::from_secs(600));
    common::task_event(&mut events, "worker.task.after_execution", id).await;
    worker.stop().await;
    drop(dir);
    Ok(())
}
