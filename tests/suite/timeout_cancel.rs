//! Per-attempt timeouts fail the attempt; cancelling stops a waiting task from ever running and
//! is refused for tasks that already ran.

use crate::common;

use std::time::Duration;

use fq::{Error, FailureKind, Registry, Task, TaskContext, TaskError, TaskSettings, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct Stuck {}

impl Task for Stuck {
    const NAME: &'static str = "test.stuck";
    const SETTINGS: TaskSettings = TaskSettings::new()
        .max_retries(1)
        .timeout(Duration::from_millis(50));
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<Stuck>();
    registry.register_fn(
        "test.noop",
        |_: serde_json::Value| -> Result<(), TaskError> { Ok(()) },
    );
    registry
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_and_is_retried_then_failed() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let mut events = engine.events().subscribe();
    let from_definition = Stuck {}.delay(&engine).await?;
    let from_call = engine
        .queue_task_named("test.stuck", &json!({}))
        .max_retries(0)
        .timeout(Duration::from_millis(30))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 2);
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let event = common::any_event(&mut events).await;
        match event.name() {
            "task.retrying" => {
                assert_eq!(event.task.id, from_definition);
                assert_eq!(event.error.as_ref().unwrap().kind, FailureKind::Timeout);
                clock.advance(Duration::from_secs(3600));
            }
            "task.failed" => failed.push(event.task.id),
            _ => {}
        }
    }
    failed.sort();
    let mut expected = vec![from_definition, from_call];
    expected.sort();
    assert_eq!(failed, expected);
    worker.stop().await;

    let record = engine.task(from_definition).await?.unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Failed, 2));
    assert_eq!(record.timeout, Some(Duration::from_millis(50)));
    let error = record.error.unwrap();
    assert_eq!(error.kind, FailureKind::Timeout);
    assert!(error.message.contains("50ms"), "{}", error.message);
    let record = engine.task(from_call).await?.unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Failed, 1));
    assert!(record.error.unwrap().message.contains("30ms"));
    Ok(())
}

#[tokio::test]
async fn a_cancelled_task_never_runs() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut events = engine.events().subscribe();
    let doomed = engine
        .queue_task_named("test.noop", &json!({}))
        .priority(9)
        .send()
        .await?;
    let delayed = engine
        .queue_task_named("test.noop", &json!({}))
        .delay(3600u64)
        .send()
        .await?;
    let cancelled = engine.cancel(doomed).await?;
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    common::task_event(&mut events, "task.cancelled", doomed).await;
    engine.cancel(delayed).await?;

    let survivor = engine
        .queue_task_named("test.noop", &json!({}))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    common::task_event(&mut events, "worker.task.after_execution", survivor).await;
    let report = worker.stop().await;
    assert_eq!(report.completed, 1);
    for id in [doomed, delayed] {
        let record = engine.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Cancelled);
        assert_eq!(record.attempts, 0);
    }

    let err = engine.cancel(survivor).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                status: TaskStatus::Completed,
                ..
            }
        ),
        "{err}"
    );
    let err = engine.cancel(doomed).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                status: TaskStatus::Cancelled,
                ..
            }
        ),
        "{err}"
    );
    let unknown = fq::TaskId::new();
    assert!(matches!(engine.cancel(unknown).await, Err(Error::NotFound(id)) if id == unknown));
    Ok(())
}

#[tokio::test]
async fn a_cancelled_task_stays_cancelled_after_a_reopen() -> fq::Result<()> {
    let (dir, engine) = common::engine();
    let path = engine.path().to_path_buf();
    let id = engine
        .queue_task_named("test.noop", &json!({}))
        .send()
        .await?;
    engine.cancel(id).await?;
    drop(engine);
    let engine = fq::Engine::open(&path)?;
    assert_eq!(engine.recovery().waiting, 0);
    let mut events = engine.events().subscribe();
    let marker = engine
        .queue_task_named("test.noop", &json!({}))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["default"], 1);
    common::task_event(&mut events, "worker.task.after_execution", marker).await;
    worker.stop().await;
    assert_eq!(
        engine.task(id).await?.unwrap().status,
        TaskStatus::Cancelled
    );
    drop(dir);
    Ok(())
}

#[tokio::test]
async fn an_engine_opens_from_a_framefox_services_yaml() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data").join("tasks.redb");
    let yaml = dir.path().join("services.yaml");
    std::fs::write(
        &yaml,
        format!(
            "framework:\n  debug: true\ntask:\n  broker: database\n  database: {}\n  defaults:\n    queue: mail\n    priority: 3\n    max_retries: 7\n",
            store.display()
        ),
    )
    .unwrap();
    let engine = fq::Engine::from_config_file(Some(&yaml))?;
    assert_eq!(engine.path(), store.as_path());
    let id = engine
        .queue_task_named("test.noop", &json!({}))
        .send()
        .await?;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(
        (record.queue.as_str(), record.priority, record.max_retries),
        ("mail", 3, 7)
    );
    assert!(store.exists());
    Ok(())
}
