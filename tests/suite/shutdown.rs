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

/// Regression (issue 11, defect 2): `WorkerManager::start` was not cancel-safe. Dropping its
/// future (here: a `select!` that stops waiting, as one against a web server would) left a
/// background task holding the engine, so the store never closed in this process and the next
/// `Engine::open` failed with "already open in another process". Now the dropped run stops
/// what it started and releases its running task (PENDING, attempt uncounted), the store
/// closes with the last handle, and opening it twice in one process says "this process".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_start_future_stops_the_worker_and_closes_the_store() -> fq::Result<()> {
    let (dir, engine) = common::engine();
    let path = dir.path().join("fq.redb");
    match fq::Engine::open(&path) {
        Err(error) => assert!(error.to_string().contains("this process"), "{error}"),
        Ok(_) => panic!("the store opened twice in one process"),
    }
    // Without a control socket to find first, the store's own lock says the same.
    match fq::Engine::builder(&path).control(false).open() {
        Err(fq::Error::Store(fq::StoreError::OpenInThisProcess { .. })) => {}
        other => panic!("a second open without control: {other:?}"),
    }
    let started = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let signal = Arc::clone(&started);
    registry.register_async(
        "test.forever",
        move |_: serde_json::Value, _ctx: TaskContext| {
            let signal = Arc::clone(&signal);
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, TaskError>(())
            }
        },
    );
    let id = engine
        .queue_task_named("test.forever", &json!({}))
        .send()
        .await?;
    let mut worker = engine.worker(registry);
    worker.set_handle_signals(false);
    tokio::select! {
        ended = worker.start() => panic!("the worker ended on its own: {ended:?}"),
        () = started.notified() => {}
    }
    drop(worker);
    drop(engine);
    // The released attempt's settlement and the aborted tasks finish on the runtime; then
    // nothing holds the store.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let reopened = loop {
        match fq::Engine::open(&path) {
            Ok(engine) => break engine,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the store never closed: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let record = reopened.task(id).await?.expect("the task is kept");
    assert_eq!(record.status, TaskStatus::Pending, "{record:?}");
    assert_eq!(record.attempts, 0, "a released attempt is not counted");
    Ok(())
}
