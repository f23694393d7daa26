//! The precedence of task settings, level by level: the call's builder, then what the task type
//! declares, then the configuration's `[defaults]`, then fq's built-in values; for tasks queued
//! on the engine and for follow-up tasks queued from a running handler.

use crate::common;

use std::time::Duration;

use fq::{
    Config, Engine, Registry, Task, TaskContext, TaskError, TaskId, TaskRecord, TaskSettings,
};
use serde::{Deserialize, Serialize};

/// Declares nothing: every value comes from `[defaults]` or fq's built-ins.
#[derive(Serialize, Deserialize)]
struct Undeclared {}

impl Task for Undeclared {
    const NAME: &'static str = "test.undeclared";
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Declares every value, and explicitly no time limit.
#[derive(Serialize, Deserialize)]
struct Declared {}

impl Task for Declared {
    const NAME: &'static str = "test.declared";
    const SETTINGS: TaskSettings = TaskSettings::new()
        .queue("emails")
        .priority(9)
        .max_retries(1)
        .no_timeout();
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Declares only a queue and a time limit; the rest comes from `[defaults]`.
#[derive(Serialize, Deserialize)]
struct PartlyDeclared {}

impl Task for PartlyDeclared {
    const NAME: &'static str = "test.partly_declared";
    const SETTINGS: TaskSettings = TaskSettings::new()
        .queue("reports")
        .timeout(Duration::from_secs(2));
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Queues one `Undeclared` and one `Declared` follow-up from inside its run.
#[derive(Serialize, Deserialize)]
struct Parent {}

impl Task for Parent {
    const NAME: &'static str = "test.parent";
    type Output = Vec<TaskId>;

    async fn run(self, ctx: TaskContext) -> Result<Vec<TaskId>, TaskError> {
        let failed = |e: fq::Error| TaskError::permanent(e.to_string());
        let undeclared = Undeclared {}.delay(&ctx).await.map_err(failed)?;
        let declared = Declared {}.delay(&ctx).await.map_err(failed)?;
        Ok(vec![undeclared, declared])
    }
}

/// `[defaults]` with a value of its own for each setting a task type can declare.
fn config_with_defaults(dir: &tempfile::TempDir) -> Config {
    let base = Config::default();
    Config {
        database: dir.path().join("fq.redb"),
        defaults: fq::config::TaskDefaults {
            queue: "jobs".into(),
            priority: 4,
            max_retries: 7,
            timeout: Some(Duration::from_secs(9)),
            ..base.defaults.clone()
        },
        ..base
    }
}

/// (queue, priority, max_retries, timeout) of a stored task.
fn settings_of(record: &TaskRecord) -> (&str, i32, u32, Option<Duration>) {
    (
        record.queue.as_str(),
        record.priority,
        record.max_retries,
        record.timeout,
    )
}

async fn stored(engine: &Engine, id: TaskId) -> TaskRecord {
    engine
        .task(id)
        .await
        .expect("read task")
        .expect("task exists")
}

#[tokio::test]
async fn a_task_type_that_declares_nothing_gets_fqs_built_in_values() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let id = Undeclared {}.delay(&engine).await?;
    assert_eq!(
        settings_of(&stored(&engine, id).await),
        ("default", 0, 3, None)
    );
    Ok(())
}

#[tokio::test]
async fn undeclared_values_come_from_the_configurations_defaults() -> fq::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::from_config(config_with_defaults(&dir))?;

    let id = Undeclared {}.delay(&engine).await?;
    assert_eq!(
        settings_of(&stored(&engine, id).await),
        ("jobs", 4, 7, Some(Duration::from_secs(9)))
    );

    let id = PartlyDeclared {}.delay(&engine).await?;
    assert_eq!(
        settings_of(&stored(&engine, id).await),
        ("reports", 4, 7, Some(Duration::from_secs(2))),
        "declared queue and timeout, priority and retries from [defaults]"
    );
    Ok(())
}

#[tokio::test]
async fn what_a_task_type_declares_wins_over_the_configurations_defaults() -> fq::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::from_config(config_with_defaults(&dir))?;
    let id = Declared {}.delay(&engine).await?;
    assert_eq!(
        settings_of(&stored(&engine, id).await),
        ("emails", 9, 1, None),
        "no_timeout() overrides defaults.timeout = 9s"
    );
    Ok(())
}

#[tokio::test]
async fn the_calls_builder_wins_over_the_task_type_and_the_defaults() -> fq::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::from_config(config_with_defaults(&dir))?;
    let id = engine
        .queue_task(Declared {})
        .queue("calls")
        .priority(-2)
        .max_retries(0)
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    assert_eq!(
        settings_of(&stored(&engine, id).await),
        ("calls", -2, 0, Some(Duration::from_secs(5)))
    );
    Ok(())
}

#[tokio::test]
async fn follow_up_tasks_queued_by_a_handler_follow_the_same_precedence() -> fq::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::from_config(config_with_defaults(&dir))?;
    let mut registry = Registry::new();
    registry.register::<Parent>();
    let parent = engine.queue_task(Parent {}).queue("parents").send().await?;
    let worker = common::start_worker(&engine, registry, &["parents"], 1);
    common::eventually(
        "the parent task completes",
        common::PATIENCE,
        Duration::from_millis(20),
        || async { stored(&engine, parent).await.status == fq::TaskStatus::Completed },
    )
    .await;
    worker.stop().await;

    let result = stored(&engine, parent)
        .await
        .result
        .expect("parent's result");
    let children: Vec<TaskId> = serde_json::from_value(result).expect("two task ids");
    assert_eq!(
        settings_of(&stored(&engine, children[0]).await),
        ("jobs", 4, 7, Some(Duration::from_secs(9)))
    );
    assert_eq!(
        settings_of(&stored(&engine, children[1]).await),
        ("emails", 9, 1, None)
    );
    Ok(())
}
