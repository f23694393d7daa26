//! Retention cleanup deletes exactly the finished tasks past their retention, nothing else.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{
    Engine, FailureKind, Outcome, RetentionPolicy, Settlement, TaskFailure, TaskId, TaskStatus,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn run_to(engine: &Engine, id: TaskId, outcome: Outcome) -> fq::Result<()> {
    let broker = engine.broker();
    let queues: Vec<Arc<str>> = vec![Arc::from("default")];
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues,
            1,
            Duration::from_secs(5),
            &CancellationToken::new(),
        ))
        .await?;
    assert_eq!(claimed[0].id, id);
    broker
        .settle(Settlement {
            id,
            attempt: 1,
            outcome,
        })
        .await?;
    Ok(())
}

fn failure() -> Outcome {
    Outcome::Failed {
        failure: TaskFailure {
            message: "no".into(),
            kind: FailureKind::Permanent,
        },
        retry_after: None,
    }
}

#[tokio::test]
async fn deletes_exactly_what_is_past_retention() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let policy = RetentionPolicy {
        completed: Duration::from_secs(86_400),
        failed: Duration::from_secs(7 * 86_400),
    };

    let old_completed = engine.queue_task_named("t", &json!({})).send().await?;
    run_to(
        &engine,
        old_completed,
        Outcome::Completed { result: json!(1) },
    )
    .await?;
    let old_failed = engine
        .queue_task_named("t", &json!({}))
        .max_retries(0)
        .send()
        .await?;
    run_to(&engine, old_failed, failure()).await?;
    let old_cancelled = engine
        .queue_task_named("t", &json!({}))
        .delay(60u64)
        .send()
        .await?;
    engine.cancel(old_cancelled).await?;

    clock.advance(Duration::from_secs(23 * 3600));
    let young_completed = engine.queue_task_named("t", &json!({})).send().await?;
    run_to(
        &engine,
        young_completed,
        Outcome::Completed { result: json!(2) },
    )
    .await?;
    let pending = engine
        .queue_task_named("t", &json!({}))
        .delay(30 * 86_400u64)
        .send()
        .await?;

    // 1 day and 1 ms after the first completion.
    clock.advance(Duration::from_millis(3600 * 1000 + 1));
    let report = engine.cleanup_with(policy).await?;
    assert_eq!(
        (report.completed, report.failed, report.cancelled),
        (1, 0, 0)
    );
    assert!(engine.task(old_completed).await?.is_none());
    for id in [old_failed, old_cancelled, young_completed, pending] {
        assert!(engine.task(id).await?.is_some(), "{id} deleted too early");
    }

    // 7 days and 1 ms after the first failures.
    clock.advance(Duration::from_secs(6 * 86_400));
    let report = engine.cleanup_with(policy).await?;
    assert_eq!(
        (report.completed, report.failed, report.cancelled),
        (1, 1, 1)
    );
    for id in [old_failed, old_cancelled, young_completed] {
        assert!(engine.task(id).await?.is_none(), "{id} kept past retention");
    }
    let kept = engine.task(pending).await?.unwrap();
    assert_eq!(kept.status, TaskStatus::Pending);

    let report = engine.cleanup_with(policy).await?;
    assert_eq!(report, fq::CleanupReport::default());
    Ok(())
}

#[tokio::test]
async fn the_worker_runs_cleanup_on_its_interval_with_retain_days() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let failed = engine
        .queue_task_named("t", &json!({}))
        .max_retries(0)
        .send()
        .await?;
    run_to(&engine, failed, failure()).await?;
    clock.advance(Duration::from_secs(2 * 86_400 + 1));

    let mut worker = engine.worker(fq::Registry::new());
    worker.set_handle_signals(false).set_cleanup_config(1, 2);
    let stop = worker.shutdown_handle();
    let handle = tokio::spawn(async move { worker.start().await });
    // The worker cleans up when it starts, then every interval.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while engine.task(failed).await?.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "cleanup never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    handle.await.unwrap()?;
    Ok(())
}

/// Regression (issue 11, defect 3): `set_cleanup_config(0, _)` was accepted, the cleanup timer
/// then panicked in a background task ("period must be non-zero") and retention silently never
/// ran. `start` now refuses it with the words the configuration uses for the same key; values
/// in range still start (the negative control).
#[tokio::test]
async fn start_refuses_cleanup_settings_the_configuration_refuses() -> fq::Result<()> {
    let (_dir, engine, _clock) = common::manual_engine();
    let refused = [
        (0, 7, "cleanup.interval_hours", "must be at least 1, got 0"),
        (
            8_761,
            7,
            "cleanup.interval_hours",
            "must be at most 8760, got 8761",
        ),
        (1, 0, "cleanup.retain_days", "must be at least 1, got 0"),
    ];
    for (hours, days, key, words) in refused {
        let mut worker = engine.worker(fq::Registry::new());
        worker
            .set_handle_signals(false)
            .set_cleanup_config(hours, days);
        // Bounded: a worker that accepts the settings runs until stopped.
        let started = tokio::time::timeout(common::PATIENCE, worker.start()).await;
        match started.expect("start refused at once") {
            Err(fq::Error::InvalidInput { field, message }) => {
                assert_eq!((field, message.as_str()), (key, words), "({hours}, {days})");
            }
            other => panic!("({hours}, {days}) was not refused: {other:?}"),
        }
    }
    let mut worker = engine.worker(fq::Registry::new());
    worker.set_handle_signals(false).set_cleanup_config(1, 1);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });
    stop.shutdown();
    running.await.expect("the worker task ends")?;
    Ok(())
}
