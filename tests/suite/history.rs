//! Attempt history (README "Attempt history"): every ended run of a task is kept with its
//! number, times, worker, outcome and error, bounded per task by `limits.attempt_history`,
//! written in the settlement's commit, and deleted with the task.

use crate::common;

use std::time::Duration;

use fq::testing::TestEngine;
use fq::{
    AttemptOutcome, Config, Engine, FailureKind, Registry, TaskContext, TaskError, TaskStatus,
};
use serde_json::json;

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async(
        "test.flaky",
        |_: serde_json::Value, ctx: TaskContext| async move {
            if ctx.attempt() < 3 {
                return Err(TaskError::new(format!(
                    "flaky on attempt {}",
                    ctx.attempt()
                )));
            }
            Ok(json!({"ok": ctx.attempt()}))
        },
    );
    registry.register_fn(
        "test.panics",
        |_: serde_json::Value| -> Result<(), TaskError> { panic!("handler exploded") },
    );
    registry.register_fn(
        "test.fails",
        |_: serde_json::Value| -> Result<(), TaskError> { Err(TaskError::new("always")) },
    );
    registry
}

#[tokio::test]
async fn every_attempt_is_kept_with_its_outcome_and_error() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;
    assert!(test.attempts(id).await?.is_empty(), "no run ended yet");
    for _ in 0..3 {
        test.drain().await?;
        test.clock().advance(Duration::from_secs(60));
    }
    assert_eq!(test.task(id).await?.unwrap().status, TaskStatus::Completed);

    let history = test.attempts(id).await?;
    let summary: Vec<_> = history
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.outcome,
                a.error.as_ref().map(|e| e.message.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                1,
                AttemptOutcome::Error,
                Some("flaky on attempt 1".to_owned())
            ),
            (
                2,
                AttemptOutcome::Error,
                Some("flaky on attempt 2".to_owned())
            ),
            (3, AttemptOutcome::Completed, None),
        ]
    );
    assert_eq!(history[0].error.as_ref().unwrap().kind, FailureKind::Error);
    assert!(history.iter().all(|a| a.finished_at >= a.started_at));
    assert!(
        history[1].started_at > history[0].finished_at,
        "the retry ran later"
    );
    Ok(())
}

#[tokio::test]
async fn a_panic_is_an_attempt_of_its_own_kind() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.panics", &json!({}))
        .max_retries(0)
        .send()
        .await?;
    test.drain().await?;
    let history = test.attempts(id).await?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, AttemptOutcome::Panic);
    assert_eq!(history[0].error.as_ref().unwrap().kind, FailureKind::Panic);
    Ok(())
}

#[tokio::test]
async fn history_is_bounded_by_the_configured_limit() -> fq::Result<()> {
    let mut config = Config::default();
    config.limits.attempt_history = 2;
    let test = TestEngine::builder()
        .registry(registry())
        .config(config)
        .open()?;
    let id = test
        .queue_task_named("test.fails", &json!({}))
        .max_retries(4)
        .send()
        .await?;
    for _ in 0..5 {
        test.drain().await?;
        test.clock().advance(Duration::from_secs(3_600));
    }
    assert_eq!(test.task(id).await?.unwrap().status, TaskStatus::Failed);
    let kept: Vec<u32> = test.attempts(id).await?.iter().map(|a| a.attempt).collect();
    assert_eq!(kept, vec![4, 5], "only the newest two are kept");
    Ok(())
}

#[tokio::test]
async fn unknown_tasks_have_no_history_and_purged_ones_lose_it() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    assert!(matches!(
        test.attempts(fq::TaskId::new()).await,
        Err(fq::Error::NotFound(_))
    ));
    let id = test
        .queue_task_named("test.fails", &json!({}))
        .queue("doomed")
        .max_retries(0)
        .send()
        .await?;
    test.drain_queue("doomed").await?;
    assert_eq!(test.attempts(id).await?.len(), 1);
    assert_eq!(test.engine().purge("doomed", None).await?, 1);
    assert!(matches!(
        test.attempts(id).await,
        Err(fq::Error::NotFound(_))
    ));
    // The history row went with the record, in the same commit.
    let report = test.engine().check_integrity().await?;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    Ok(())
}

#[tokio::test]
async fn each_attempt_names_the_worker_that_ran_it_also_over_the_socket() -> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let local_id = engine
        .queue_task_named("test.fails", &json!({}))
        .queue("here")
        .max_retries(0)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["here"], 1);
    let failed = engine.wait(local_id, common::PATIENCE).await?;
    assert_eq!(failed.status, TaskStatus::Failed);
    let live = engine.workers().await?;
    assert_eq!(live.live.len(), 1);
    let worker_id = live.live[0].info.id;
    let history = engine.attempts(local_id).await?;
    assert_eq!(history[0].worker, Some(worker_id));
    // The control socket returns the same history.
    assert_eq!(remote.attempts(local_id).await?, history);
    worker.stop().await;

    // A worker connected over the socket names itself in the attempts it settles.
    let remote_id = remote
        .queue_task_named("test.fails", &json!({}))
        .queue("there")
        .max_retries(0)
        .send()
        .await?;
    let remote_worker = common::start_worker(&remote, registry(), &["there"], 1);
    remote.wait(remote_id, common::PATIENCE).await?;
    let report = engine.workers().await?;
    let remote_worker_id = report
        .live
        .iter()
        .find(|w| w.info.queues == ["there"])
        .map(|w| w.info.id)
        .expect("the remote worker is listed by the owner");
    assert_eq!(
        engine.attempts(remote_id).await?[0].worker,
        Some(remote_worker_id)
    );
    remote_worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_store_written_before_histories_opens_and_reports_none() -> fq::Result<()> {
    // The ATTEMPTS table is created by the first settlement: a store without it (any store
    // made before this feature) opens, answers empty histories, and gains the table later.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fq.redb");
    let id = {
        let engine = Engine::open(&path)?;
        let id = engine
            .queue_task_named("test.fails", &json!({}))
            .send()
            .await?;
        drop(engine);
        id
    };
    let engine = Engine::open(&path)?;
    assert!(engine.attempts(id).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn retention_deletes_the_history_with_the_task() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.flaky", &json!({}))
        .max_retries(3)
        .send()
        .await?;
    for _ in 0..3 {
        test.drain().await?;
        test.clock().advance(Duration::from_secs(60));
    }
    assert_eq!(test.attempts(id).await?.len(), 3);
    test.clock().advance(Duration::from_secs(2 * 86_400));
    assert_eq!(test.engine().cleanup().await?.completed, 1);
    let report = test.engine().check_integrity().await?;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    Ok(())
}

#[tokio::test]
async fn a_run_released_at_shutdown_is_listed_as_released() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut registry = Registry::new();
    registry.register_async(
        "test.forever",
        |_: serde_json::Value, _: TaskContext| async {
            std::future::pending::<()>().await;
            Ok(json!(null))
        },
    );
    let mut worker = engine.worker(registry);
    worker
        .set_queues(["slow"])
        .set_handle_signals(false)
        .set_shutdown_timeout(Duration::from_millis(50));
    let stop = worker.shutdown_handle();
    let run = tokio::spawn(async move { worker.start().await });
    let id = engine
        .queue_task_named("test.forever", &json!({}))
        .queue("slow")
        .send()
        .await?;
    common::until_status(&engine, id, TaskStatus::Running).await;
    let worker_id = engine.workers().await?.live[0].info.id;
    stop.shutdown();
    let report = run.await.expect("the worker joins")?;
    assert_eq!(report.released, 1);
    let record = engine.task(id).await?.unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Pending, 0));
    let history = engine.attempts(id).await?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].attempt, 1);
    assert_eq!(history[0].outcome, AttemptOutcome::Released);
    assert_eq!(history[0].worker, Some(worker_id));
    Ok(())
}

#[test]
fn a_run_whose_process_ended_is_listed_as_worker_lost_after_recovery() -> fq::Result<()> {
    let mut model = fq::internals::ModelEngine::create(Duration::from_secs(60))?;
    let id = model.block_on(
        model
            .engine()
            .queue_task_named("test.fails", &json!({}))
            .send(),
    )?;
    assert_eq!(model.claim(&["default"], 1)?.len(), 1);
    model.crash_and_reopen()?;
    let history = model.block_on(model.engine().attempts(id))?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].outcome, AttemptOutcome::WorkerLost);
    assert_eq!(
        history[0].error.as_ref().map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );
    Ok(())
}
