//! Waiting for a task's outcome (`Engine::wait`, `QueueTask::send_and_wait`, issue 12 §4):
//! waiters are woken by the commit that settles their task (1,000 at once), a task already
//! final answers at once, a retry is not an outcome, a timeout is a typed error that leaves
//! the task alone, and the same holds over `Engine::connect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fq::testing::TestEngine;
use fq::{Error, Registry, TaskContext, TaskError, TaskStatus};
use serde_json::{Value, json};

use crate::common::{self, PATIENCE};

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.echo", |args: Value, _ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({"echo": args}))
    });
    // Fails its first attempt, succeeds on the second.
    registry.register_async("test.flaky", |_args: Value, ctx: TaskContext| async move {
        if ctx.attempt() == 1 {
            return Err(TaskError::new("first attempt fails"));
        }
        Ok(json!({"attempt": ctx.attempt()}))
    });
    registry.register_async(
        "test.broken",
        |_args: Value, _ctx: TaskContext| async move {
            Err::<Value, _>(TaskError::new("always broken"))
        },
    );
    registry
}

/// Gives spawned waiters time to register; none may have returned before the drain.
async fn settle_in(waiters: &[tokio::task::JoinHandle<fq::Result<fq::TaskRecord>>]) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = waiters.iter().filter(|w| w.is_finished()).count();
    assert_eq!(early, 0, "waiters returned before their tasks ran");
}

#[tokio::test]
async fn a_thousand_waiters_on_a_thousand_tasks_all_wake() {
    let test = TestEngine::with_registry(registry()).unwrap();
    let engine = test.engine().clone();
    let mut ids = Vec::new();
    for n in 0..1_000 {
        let id = engine
            .queue_task_named("test.echo", &json!({"kwargs": {"n": n}}))
            .send()
            .await
            .unwrap();
        ids.push(id);
    }
    let waiters: Vec<_> = ids
        .iter()
        .map(|&id| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.wait(id, Duration::from_secs(600)).await })
        })
        .collect();
    settle_in(&waiters).await;
    let report = test.drain().await.unwrap();
    assert_eq!(report.completed, 1_000);
    let all = tokio::time::timeout(PATIENCE, futures_join(waiters))
        .await
        .expect("every waiter wakes");
    for (record, id) in all.into_iter().zip(&ids) {
        let record = record.unwrap();
        assert_eq!(record.id, *id);
        assert_eq!(record.status, TaskStatus::Completed);
        assert!(record.result.is_some(), "the result comes with the record");
    }
}

async fn futures_join(
    waiters: Vec<tokio::task::JoinHandle<fq::Result<fq::TaskRecord>>>,
) -> Vec<fq::Result<fq::TaskRecord>> {
    let mut out = Vec::with_capacity(waiters.len());
    for waiter in waiters {
        out.push(waiter.await.expect("waiter task joins"));
    }
    out
}

#[tokio::test]
async fn a_task_already_final_answers_at_once() {
    let test = TestEngine::with_registry(registry()).unwrap();
    let engine = test.engine();
    let done = engine
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await
        .unwrap();
    let broken = engine
        .queue_task_named("test.broken", &json!({}))
        .max_retries(0)
        .send()
        .await
        .unwrap();
    let cancelled = engine
        .queue_task_named("test.echo", &json!({}))
        .delay(Duration::from_secs(3600))
        .send()
        .await
        .unwrap();
    engine.cancel(cancelled).await.unwrap();
    test.drain().await.unwrap();

    // Each answers within a short timeout, which a wait for a wake-up would exceed.
    let short = Duration::from_millis(1);
    let record = engine.wait(done, short).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result, Some(json!({"echo": {}})));
    let record = engine.wait(broken, short).await.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.error.unwrap().message, "always broken");
    let record = engine.wait(cancelled, short).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);
}

#[tokio::test]
async fn a_waiter_across_a_retry_wakes_only_at_the_final_outcome() {
    let test = TestEngine::with_registry(registry()).unwrap();
    let engine = test.engine().clone();
    let id = engine
        .queue_task_named("test.flaky", &json!({}))
        .send()
        .await
        .unwrap();
    let waiter = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.wait(id, Duration::from_secs(600)).await })
    };
    settle_in(std::slice::from_ref(&waiter)).await;

    test.drain().await.unwrap();
    assert_eq!(
        engine.task(id).await.unwrap().unwrap().status,
        TaskStatus::Retrying
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the waiter woke at a retry");

    test.clock().advance(Duration::from_secs(3600));
    test.drain().await.unwrap();
    let record = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the waiter wakes at the outcome")
        .unwrap()
        .unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 2);
}

#[tokio::test]
async fn a_timeout_is_a_typed_error_that_leaves_the_task_alone() {
    let test = TestEngine::with_registry(registry()).unwrap();
    let engine = test.engine();
    let id = engine
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await
        .unwrap();
    let err = engine
        .wait(id, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WaitTimeout { id: got, timeout } if got == id && timeout == Duration::from_millis(50)),
        "{err}"
    );
    assert_eq!(
        engine.task(id).await.unwrap().unwrap().status,
        TaskStatus::Pending
    );
    let err = engine
        .wait(fq::TaskId::new(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    // It still runs, and a later wait gets its outcome.
    test.drain().await.unwrap();
    let record = engine.wait(id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
}

#[tokio::test]
async fn send_and_wait_returns_the_outcome() {
    let (_dir, engine) = common::engine();
    let worker = common::start_worker(&engine, registry(), &["default"], 4);
    let record = engine
        .queue_task_named("test.echo", &json!({"kwargs": {"x": 1}}))
        .send_and_wait(PATIENCE)
        .await
        .unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result, Some(json!({"echo": {"x": 1}})));
    worker.stop().await;
}

/// Over the control socket: a remote waiter is woken by the serving engine's settlement, many
/// waits on one connection do not hold up its other requests, and a timeout arrives as the
/// same typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_work_over_engine_connect() {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            remote
                .queue_task_named("test.echo", &json!({}))
                .send()
                .await
                .unwrap(),
        );
    }
    let waiters: Vec<_> = ids
        .iter()
        .map(|&id| {
            let remote = remote.clone();
            tokio::spawn(async move { remote.wait(id, Duration::from_secs(600)).await })
        })
        .collect();
    settle_in(&waiters).await;
    // The same connection still answers other requests while the waits are held.
    let stats = tokio::time::timeout(Duration::from_secs(5), remote.stats())
        .await
        .expect("a request beside pending waits is answered")
        .unwrap();
    assert_eq!(stats.queues["default"].pending, 100);

    let err = remote
        .wait(ids[0], Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WaitTimeout { id, .. } if id == ids[0]),
        "{err}"
    );

    let worker = common::start_worker(&engine, registry(), &["default"], 8);
    let all = tokio::time::timeout(PATIENCE, futures_join(waiters))
        .await
        .expect("every remote waiter wakes");
    for record in all {
        assert_eq!(record.unwrap().status, TaskStatus::Completed);
    }
    worker.stop().await;
}
