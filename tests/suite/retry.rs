//! Failed attempts are retried with exponential backoff and jitter until `max_retries` is
//! spent; permanent errors and handler-chosen delays are honoured.

use crate::common;

use std::time::Duration;

use fq::{FailureKind, Registry, TaskContext, TaskError, TaskStatus};
use serde_json::json;

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async(
        "test.flaky",
        |_: serde_json::Value, ctx: TaskContext| async move {
            if ctx.attempt() < 3 {
                return Err(TaskError::new(format!(
                    "flaky failure on attempt {}",
                    ctx.attempt()
                )));
            }
            Ok(json!({"succeeded_on": ctx.attempt()}))
        },
    );
    registry.register_async(
        "test.always_fails",
        |_: serde_json::Value, ctx: TaskContext| async move {
            Err::<(), _>(TaskError::new(format!("boom {}", ctx.attempt())))
        },
    );
    registry.register_fn(
        "test.permanent",
        |_: serde_json::Value| -> Result<(), TaskError> {
            Err(TaskError::permanent("the account does not exist"))
        },
    );
    registry.register_fn(
        "test.retry_after",
        |_: serde_json::Value| -> Result<(), TaskError> {
            Err(TaskError::retry_after(
                "rate limited",
                Duration::from_secs(42),
            ))
        },
    );
    registry
}

fn millis_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> i64 {
    (to - from).num_milliseconds()
}

#[tokio::test]
async fn a_flaky_task_completes_on_its_third_attempt_after_backoff() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 2);

    // Retry 1: 5 s ± 20%. Retry 2: 10 s ± 20%.
    for (retry, nominal_ms) in [(1, 5_000), (2, 10_000)] {
        let retrying = common::task_event(&mut events, "task.retrying", id).await;
        let delay = millis_between(retrying.at, retrying.retry_at.unwrap());
        let low = nominal_ms * 8 / 10;
        let high = nominal_ms * 12 / 10;
        assert!(
            (low..=high).contains(&delay),
            "retry {retry}: delay {delay} ms outside {low}..={high}"
        );
        let record = engine.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Retrying);
        assert_eq!(record.attempts, retry);
        assert_eq!(
            record.error.unwrap().message,
            format!("flaky failure on attempt {retry}")
        );
        // One millisecond before it is due it still waits.
        clock.advance(Duration::from_millis(u64::try_from(delay).unwrap() - 1));
        assert_eq!(engine.task(id).await?.unwrap().status, TaskStatus::Retrying);
        clock.advance(Duration::from_millis(1));
    }
    common::task_event(&mut events, "worker.task.after_execution", id).await;
    worker.stop().await;

    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.result, Some(json!({"succeeded_on": 3})));
    assert_eq!(record.error, None);
    Ok(())
}

#[tokio::test]
async fn flaky_task_emits_exactly_two_execution_errors() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    let mut errors = 0;
    loop {
        let event = common::any_event(&mut events).await;
        if event.task.id != id {
            continue;
        }
        match event.name() {
            "worker.task.execution_error" => errors += 1,
            "task.retrying" => clock.advance(Duration::from_secs(3600)),
            "worker.task.after_execution" => break,
            _ => {}
        }
    }
    worker.stop().await;
    assert_eq!(errors, 2);
    Ok(())
}

#[tokio::test]
async fn an_always_failing_task_runs_max_retries_plus_one_times_then_fails() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.always_fails", &json!({}))
        .max_retries(2)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    let mut runs = 0;
    let failed = loop {
        let event = common::any_event(&mut events).await;
        match event.name() {
            "worker.task.before_execution" => runs += 1,
            "task.retrying" => clock.advance(Duration::from_secs(3600)),
            "task.failed" => break event,
            _ => {}
        }
    };
    worker.stop().await;
    assert_eq!(runs, 3);
    assert_eq!(failed.error.as_ref().unwrap().message, "boom 3");
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 3);
    let error = record.error.unwrap();
    assert_eq!(error.message, "boom 3");
    assert_eq!(error.kind, FailureKind::Error);
    assert!(record.finished_at.is_some());
    Ok(())
}

#[tokio::test]
async fn a_permanent_error_fails_after_one_run() -> fq::Result<()> {
    let (_dir, engine, _clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.permanent", &json!({}))
        .max_retries(5)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    common::task_event(&mut events, "task.failed", id).await;
    worker.stop().await;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.error.unwrap().kind, FailureKind::Permanent);
    Ok(())
}

#[tokio::test]
async fn a_handler_can_choose_its_retry_delay() -> fq::Result<()> {
    let (_dir, engine, _clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.retry_after", &json!({}))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    let retrying = common::task_event(&mut events, "task.retrying", id).await;
    worker.stop().await;
    assert_eq!(
        millis_between(retrying.at, retrying.retry_at.unwrap()),
        42_000
    );
    let record = engine.task(id).await?.unwrap();
    assert_eq!(millis_between(retrying.at, record.due_at), 42_000);
    Ok(())
}

#[tokio::test]
async fn a_per_task_retry_delay_replaces_the_base() -> fq::Result<()> {
    let (_dir, engine, _clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.always_fails", &json!({}))
        .retry_delay(Duration::from_secs(100))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    let retrying = common::task_event(&mut events, "task.retrying", id).await;
    worker.stop().await;
    let delay = millis_between(retrying.at, retrying.retry_at.unwrap());
    assert!((80_000..=120_000).contains(&delay), "{delay}");
    Ok(())
}
