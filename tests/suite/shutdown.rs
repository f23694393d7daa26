//! Graceful shutdown: running tasks may finish within the timeout, nothing new is claimed, and
//! a task still running at the timeout returns to PENDING without losing an attempt.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{Registry, TaskContext, TaskError, TaskStatus};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

#[derive(Deserialize)]
struct Gate {
    hang: bool,
}

fn registry(gate: &Arc<Notify>) -> Registry {
    let gate = Arc::clone(gate);
    let mut registry = Registry::new();
    registry.register_async("test.gated", move |args: Gate, _ctx: TaskContext| {
        let gate = Arc::clone(&gate);
        async move {
            if args.hang {
                std::future::pending::<()>().await;
            }
            gate.notified().await;
            Ok::<_, TaskError>(json!("finished"))
        }
    });
    registry
}

#[tokio::test]
async fn a_running_task_finishes_and_nothing_new_is_claimed() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let gate = Arc::new(Notify::new());
    let mut events = engine.events().subscribe();
    let first = engine
        .queue_task_named("test.gated", &json!({"kwargs": {"hang": false}}))
        .send()
        .await?;
    let second = engine
        .queue_task_named("test.gated", &json!({"kwargs": {"hang": false}}))
        .send()
        .await?;
    let mut worker = engine.worker(registry(&gate));
    worker
        .set_queues(["default"])
        .set_concurrent_tasks(1)
        .set_handle_signals(false)
        .set_shutdown_timeout(Duration::from_secs(30));
    let stop = worker.shutdown_handle();
    let handle = tokio::spawn(async move { worker.start().await });

    common::task_event(&mut events, "worker.task.before_execution", first).await;
    stop.shutdown();
    gate.notify_one();
    let report = tokio::time::timeout(common::PATIENCE, handle)
        .await
        .unwrap()
        .unwrap()?;

    assert_eq!(report.completed, 1);
    assert_eq!(report.released, 0);
    let first = engine.task(first).await?.unwrap();
    assert_eq!(first.status, TaskStatus::Completed);
    let second = engine.task(second).await?.unwrap();
    assert_eq!(second.status, TaskStatus::Pending);
    assert_eq!(second.attempts, 0);
    Ok(())
}

#[tokio::test]
async fn a_task_still_running_at_the_timeout_goes_back_to_pending() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let gate = Arc::new(Notify::new());
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.gated", &json!({"kwargs": {"hang": true}}))
        .send()
        .await?;
    let mut worker = engine.worker(registry(&gate));
    worker
        .set_queues(["default"])
        .set_concurrent_tasks(2)
        .set_handle_signals(false)
        .set_shutdown_timeout(Duration::from_millis(200));
    let stop = worker.shutdown_handle();
    let handle = tokio::spawn(async move { worker.start().await });
    common::task_event(&mut events, "worker.task.before_execution", id).await;
    assert_eq!(engine.task(id).await?.unwrap().attempts, 1);
    stop.shutdown();
    let report = tokio::time::timeout(common::PATIENCE, handle)
        .await
        .unwrap()
        .unwrap()?;

    assert_eq!(report.released, 1);
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Pending);
    assert_eq!(record.attempts, 0, "the interrupted attempt was counted");

    // It runs again on the next worker, as its first attempt.
    let mut registry = Registry::new();
    registry.register_fn(
        "test.gated",
        |_: serde_json::Value| -> Result<&'static str, TaskError> { Ok("second run") },
    );
    let worker = common::start_worker(&engine, registry, &["default"], 1);
    common::task_event(&mut events, "worker.task.after_execution", id).await;
    worker.stop().await;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 1);
    Ok(())
}
