//! Failed attempts are retried with exponential backoff and jitter until `max_retries` is
//! spent; permanent errors and handler-chosen delays are honoured. On `fq::testing`'s test
//! engine: attempts run when drained, and retries wait for its manual clock.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::testing::TestEngine;
use fq::{
    Event, FailureKind, Registry, TaskContext, TaskError, TaskRecord, TaskStatus, WorkerReport,
};
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

/// How long after the test engine's "now" the task is due, in milliseconds.
async fn due_in_ms(test: &TestEngine, id: fq::TaskId) -> fq::Result<i64> {
    let record = test.task(id).await?.expect("the task exists");
    Ok((record.due_at - test.clock().now()).num_milliseconds())
}

#[tokio::test]
async fn a_flaky_task_completes_on_its_third_attempt_after_backoff() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;

    // Retry 1: 5 s ± 20%. Retry 2: 10 s ± 20%.
    for (retry, nominal_ms) in [(1, 5_000), (2, 10_000)] {
        assert_eq!(test.drain().await?.retried, 1);
        let record = test.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Retrying);
        assert_eq!(record.attempts, retry);
        assert_eq!(
            record.error.unwrap().message,
            format!("flaky failure on attempt {retry}")
        );
        let delay = due_in_ms(&test, id).await?;
        let low = nominal_ms * 8 / 10;
        let high = nominal_ms * 12 / 10;
        assert!(
            (low..=high).contains(&delay),
            "retry {retry}: delay {delay} ms outside {low}..={high}"
        );
        // One millisecond before it is due it still waits.
        test.clock()
            .advance(Duration::from_millis(u64::try_from(delay).unwrap() - 1));
        assert_eq!(test.drain().await?, WorkerReport::default());
        assert_eq!(test.task(id).await?.unwrap().status, TaskStatus::Retrying);
        test.clock().advance(Duration::from_millis(1));
    }
    assert_eq!(test.drain().await?.completed, 1);

    let record = test.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 3);
    assert_eq!(record.result, Some(json!({"succeeded_on": 3})));
    assert_eq!(record.error, None);
    Ok(())
}

/// Drains, moving the clock an hour on after each drain that left a retry waiting, until
/// nothing is left; returns the task's final record and every event of the run, in order.
async fn run_to_the_end(
    test: TestEngine,
    id: fq::TaskId,
) -> fq::Result<(TaskRecord, Vec<Arc<Event>>)> {
    let mut events = test.events().subscribe();
    while test.drain().await?.retried > 0 {
        test.clock().advance(Duration::from_secs(3600));
    }
    assert!(test.enqueued().await?.is_empty());
    let record = test.task(id).await?.expect("the task exists");
    test.close().await?;
    // The engine is gone, so the stream ends after its last event.
    let mut seen = Vec::new();
    while let Some(event) = events.recv().await {
        seen.push(event);
    }
    Ok((record, seen))
}

fn named<'a>(events: &'a [Arc<Event>], name: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|event| event.name() == name)
        .map(|event| &**event)
        .collect()
}

#[tokio::test]
async fn flaky_task_emits_exactly_two_execution_errors() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;
    let (_, events) = run_to_the_end(test, id).await?;
    assert_eq!(named(&events, "worker.task.execution_error").len(), 2);
    assert_eq!(named(&events, "worker.task.after_execution").len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_always_failing_task_runs_max_retries_plus_one_times_then_fails() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.always_fails", &json!({}))
        .max_retries(2)
        .send()
        .await?;
    let (record, events) = run_to_the_end(test, id).await?;
    assert_eq!(named(&events, "worker.task.before_execution").len(), 3);
    assert_eq!(named(&events, "task.retrying").len(), 2);
    let failed = named(&events, "task.failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].error.as_ref().unwrap().message, "boom 3");
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
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.permanent", &json!({}))
        .max_retries(5)
        .send()
        .await?;
    assert_eq!(test.drain().await?.failed, 1);
    let record = test.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.error.unwrap().kind, FailureKind::Permanent);
    Ok(())
}

#[tokio::test]
async fn a_handler_can_choose_its_retry_delay() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let mut events = test.events().subscribe();
    let id = test
        .queue_task_named("test.retry_after", &json!({}))
        .send()
        .await?;
    assert_eq!(test.drain().await?.retried, 1);
    assert_eq!(due_in_ms(&test, id).await?, 42_000);
    let retrying = common::task_event(&mut events, "task.retrying", id).await;
    assert_eq!(
        (retrying.retry_at.unwrap() - retrying.at).num_milliseconds(),
        42_000
    );
    Ok(())
}

#[tokio::test]
async fn a_per_task_retry_delay_replaces_the_base() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.always_fails", &json!({}))
        .retry_delay(Duration::from_secs(100))
        .send()
        .await?;
    assert_eq!(test.drain().await?.retried, 1);
    let delay = due_in_ms(&test, id).await?;
    assert!((80_000..=120_000).contains(&delay), "{delay}");
    Ok(())
}
