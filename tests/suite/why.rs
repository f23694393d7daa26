//! `Engine::explain` / `fq why` (README "Why has my task not run?"): for each status, the
//! facts about where a task stands and what it waits for, and the sentences saying them.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::testing::TestEngine;
use fq::{EndReason, Explanation, Registry, TaskContext, TaskError, TaskStatus, WorkerInfo};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

#[derive(Deserialize)]
struct Mail {
    #[allow(dead_code)]
    to: String,
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_fn("test.ok", |_: serde_json::Value| -> Result<_, TaskError> {
        Ok(json!(1))
    });
    registry.register_fn(
        "test.fails",
        |_: serde_json::Value| -> Result<(), TaskError> { Err(TaskError::new("smtp down")) },
    );
    registry.register_fn(
        "test.permanent",
        |_: serde_json::Value| -> Result<(), TaskError> {
            Err(TaskError::permanent("no such account"))
        },
    );
    registry.register_fn("test.mail", |_: Mail| -> Result<(), TaskError> { Ok(()) });
    registry
}

fn says(explanation: &Explanation, needle: &str) -> bool {
    explanation.sentences.iter().any(|s| s.contains(needle))
}

#[tokio::test]
async fn pending_with_no_live_worker_serving_its_queue() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let id = engine
        .queue_task_named("app.mail", &json!({}))
        .queue("emails")
        .send()
        .await?;
    let why = engine.explain(id).await?;
    assert_eq!(why.status, TaskStatus::Pending);
    assert_eq!(why.workers_serving_queue, Some(0));
    assert_eq!(why.due, Some(true));
    assert_eq!(why.ahead, Some(0));
    assert!(
        says(&why, "No live worker serves queue emails"),
        "{:?}",
        why.sentences
    );
    Ok(())
}

#[tokio::test]
async fn pending_with_no_live_worker_having_its_handler_in_a_paused_queue() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    engine.pause_queue("emails").await?;
    let worker = common::start_worker(&engine, registry(), &["emails"], 1);
    let id = engine
        .queue_task_named("app.missing", &json!({}))
        .queue("emails")
        .send()
        .await?;
    common::eventually(
        "the worker listed",
        common::PATIENCE,
        Duration::from_millis(20),
        || {
            let engine = engine.clone();
            async move { engine.workers().await.is_ok_and(|r| r.live.len() == 1) }
        },
    )
    .await;
    let why = engine.explain(id).await?;
    assert_eq!(why.workers_serving_queue, Some(1));
    assert_eq!(why.workers_with_handler, Some(0));
    assert!(why.queue_paused);
    assert!(
        says(&why, "No live worker has handler app.missing"),
        "{:?}",
        why.sentences
    );
    assert!(says(&why, "Queue emails is paused"), "{:?}", why.sentences);

    // The same task under a name the worker has: no complaint about workers.
    let served = engine
        .queue_task_named("test.ok", &json!({}))
        .queue("emails")
        .send()
        .await?;
    let why = engine.explain(served).await?;
    assert_eq!(why.workers_with_handler, Some(1));
    assert!(!says(&why, "No live worker"), "{:?}", why.sentences);
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn pending_counts_the_tasks_ahead_by_priority_then_time_and_says_when_it_is_due()
-> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let queue = |priority| {
        engine
            .queue_task_named("test.ok", &json!({}))
            .queue("q")
            .priority(priority)
            .send()
    };
    let low = queue(0).await?;
    let _high = queue(5).await?;
    let _also_low = queue(0).await?;
    let urgent = queue(9).await?;
    let later = engine
        .queue_task_named("test.ok", &json!({}))
        .queue("q")
        .priority(9)
        .delay(Duration::from_secs(600))
        .send()
        .await?;
    assert_eq!(engine.explain(urgent).await?.ahead, Some(0));
    assert_eq!(
        engine.explain(low).await?.ahead,
        Some(2),
        "the two higher-priority tasks start first; the later equal one does not"
    );
    let why = engine.explain(later).await?;
    assert_eq!(why.due, Some(false));
    assert_eq!(
        why.due_at,
        Some(clock.now() + chrono::Duration::seconds(600))
    );
    // By its due time the others are due too: the earlier one of equal priority goes first.
    assert_eq!(why.ahead, Some(1));
    assert!(says(&why, "It becomes due at"), "{:?}", why.sentences);
    Ok(())
}

#[tokio::test]
async fn a_queue_at_its_concurrency_limit_is_said_to_hold_the_task() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    engine
        .set_queue_limits(
            "q",
            fq::QueueLimits {
                concurrency: Some(1),
                rate: None,
            },
        )
        .await?;
    let gate = Arc::new(Semaphore::new(0));
    let mut registry = Registry::new();
    let held = Arc::clone(&gate);
    registry.register_async("test.block", move |_: serde_json::Value, _: TaskContext| {
        let held = Arc::clone(&held);
        async move {
            held.acquire()
                .await
                .map_err(|_| TaskError::new("closed"))?
                .forget();
            Ok(json!(null))
        }
    });
    let worker = common::start_worker(&engine, registry, &["q"], 2);
    let first = engine
        .queue_task_named("test.block", &json!({}))
        .queue("q")
        .send()
        .await?;
    let second = engine
        .queue_task_named("test.block", &json!({}))
        .queue("q")
        .send()
        .await?;
    common::until_status(&engine, first, TaskStatus::Running).await;
    let why = engine.explain(second).await?;
    assert_eq!(why.status, TaskStatus::Pending);
    assert_eq!(why.queue_limits.concurrency, Some(1));
    assert!(
        says(&why, "at its concurrency limit"),
        "{:?}",
        why.sentences
    );
    gate.add_permits(2);
    engine.wait(second, common::PATIENCE).await?;
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn retrying_says_which_attempt_failed_how_and_when_the_next_runs() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named("test.fails", &json!({}))
        .max_retries(2)
        .send()
        .await?;
    test.drain().await?;
    let why = test.explain(id).await?;
    assert_eq!(why.status, TaskStatus::Retrying);
    assert_eq!((why.attempts, why.max_attempts), (1, 3));
    assert_eq!(
        why.last_error.as_ref().map(|e| e.message.as_str()),
        Some("smtp down")
    );
    assert_eq!(why.due, Some(false));
    assert!(why.due_at.is_some_and(|at| at > test.clock().now()));
    assert!(says(&why, "attempt 1 of 3 failed"), "{:?}", why.sentences);
    assert!(says(&why, "Its next run is due at"), "{:?}", why.sentences);
    Ok(())
}

#[tokio::test]
async fn running_names_the_worker_and_the_lease() -> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let gate = Arc::new(Semaphore::new(0));
    let mut registry = Registry::new();
    let held = Arc::clone(&gate);
    registry.register_async("test.block", move |_: serde_json::Value, _: TaskContext| {
        let held = Arc::clone(&held);
        async move {
            held.acquire()
                .await
                .map_err(|_| TaskError::new("closed"))?
                .forget();
            Ok(json!(null))
        }
    });
    let worker = common::start_worker(&engine, registry, &["q"], 1);
    let id = engine
        .queue_task_named("test.block", &json!({}))
        .queue("q")
        .send()
        .await?;
    common::eventually(
        "the task running",
        common::PATIENCE,
        Duration::from_millis(20),
        || {
            let engine = engine.clone();
            async move { engine.explain(id).await.is_ok_and(|w| w.worker.is_some()) }
        },
    )
    .await;
    let why = engine.explain(id).await?;
    let live = engine.workers().await?;
    assert_eq!(why.status, TaskStatus::Running);
    assert_eq!(why.worker, Some(live.live[0].info.id));
    assert!(why.running_since.is_some());
    assert!(
        why.lease_expires_at
            .is_some_and(|at| at > chrono::Utc::now())
    );
    assert!(says(&why, "runs it"), "{:?}", why.sentences);
    // The control socket returns the same explanation.
    assert_eq!(remote.explain(id).await?.worker, why.worker);
    gate.add_permits(1);
    engine.wait(id, common::PATIENCE).await?;
    worker.stop().await;
    Ok(())
}

/// The end reason and remedy of a task of `name` with `payload` after the test engine ran
/// it until it ended.
async fn ended(
    name: &str,
    payload: serde_json::Value,
    max_retries: u32,
) -> fq::Result<Explanation> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task_named(name, &payload)
        .max_retries(max_retries)
        .send()
        .await?;
    for _ in 0..=max_retries {
        test.drain().await?;
        test.clock().advance(Duration::from_secs(3_600));
    }
    test.explain(id).await
}

#[tokio::test]
async fn failed_says_why_it_ended_and_what_to_do() -> fq::Result<()> {
    let spent = ended("test.fails", json!({}), 1).await?;
    assert_eq!(spent.status, TaskStatus::Failed);
    assert_eq!(spent.ended_because, Some(EndReason::RetriesSpent));
    assert_eq!(spent.remedy, Some(format!("fq retry {}", spent.id)));
    assert!(
        says(&spent, "all 2 allowed runs failed"),
        "{:?}",
        spent.sentences
    );

    let permanent = ended("test.permanent", json!({}), 3).await?;
    assert_eq!(permanent.ended_because, Some(EndReason::PermanentError));
    assert_eq!(permanent.attempts, 1);

    let unknown = ended("app.nobody_has_this", json!({}), 3).await?;
    assert_eq!(unknown.ended_because, Some(EndReason::UnknownHandler));

    let bad = ended("test.mail", json!({"kwargs": {"wrong": 1}}), 3).await?;
    assert_eq!(bad.ended_because, Some(EndReason::BadArguments));
    assert!(says(&bad, "arguments do not fit"), "{:?}", bad.sentences);
    Ok(())
}

#[tokio::test]
async fn cancelled_and_completed_say_how_they_ended() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let cancelled = test
        .queue_task_named("test.ok", &json!({}))
        .delay(Duration::from_secs(60))
        .send()
        .await?;
    test.cancel(cancelled).await?;
    let why = test.explain(cancelled).await?;
    assert_eq!(why.ended_because, Some(EndReason::Cancelled));
    assert_eq!(why.remedy, Some(format!("fq retry {cancelled}")));
    let api = format!("the API (pid {})", std::process::id());
    assert_eq!(why.cancelled_by.as_deref(), Some(api.as_str()));
    assert!(
        says(&why, &format!("by {api} before")),
        "{:?}",
        why.sentences
    );

    // Whoever cancels can say who they are, within bounds; the record keeps it until an
    // operator's retry queues the task again.
    let named = test
        .queue_task_named("test.ok", &json!({}))
        .delay(Duration::from_secs(60))
        .send()
        .await?;
    let record = test.cancel_by(named, "billing admin, user 7").await?;
    assert_eq!(
        record.cancelled_by.as_deref(),
        Some("billing admin, user 7")
    );
    let why = test.explain(named).await?;
    assert!(
        says(&why, "by billing admin, user 7 before"),
        "{:?}",
        why.sentences
    );
    for bad in [
        "x".repeat(fq::MAX_CANCELLED_BY_BYTES + 1),
        "two\nlines".to_owned(),
    ] {
        let other = test
            .queue_task_named("test.ok", &json!({}))
            .delay(Duration::from_secs(60))
            .send()
            .await?;
        assert!(
            matches!(
                test.cancel_by(other, &bad).await,
                Err(fq::Error::InvalidInput { field: "by", .. })
            ),
            "{bad:?} accepted"
        );
        assert_eq!(test.task(other).await?.unwrap().status, TaskStatus::Pending);
    }
    let retried = test.retry(named).await?;
    assert_eq!(
        retried.cancelled_by, None,
        "a retried task is no longer cancelled"
    );

    let done = ended("test.ok", json!({}), 0).await?;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.ended_because, Some(EndReason::Completed));
    assert_eq!(done.remedy, None);
    Ok(())
}

#[tokio::test]
async fn a_cancel_over_the_control_socket_names_the_client_and_the_socket() -> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let later = || {
        engine
            .queue_task_named("test.ok", &json!({}))
            .delay(Duration::from_secs(60))
            .send()
    };
    let (plain, named) = (later().await?, later().await?);
    remote.cancel(plain).await?;
    remote.cancel_by(named, "nightly cleanup script").await?;
    let api = format!(
        "the API (pid {}), over the control socket",
        std::process::id()
    );
    let plain = engine.task(plain).await?.unwrap();
    assert_eq!(plain.cancelled_by.as_deref(), Some(api.as_str()));
    let why = engine.explain(named).await?;
    assert_eq!(
        why.cancelled_by.as_deref(),
        Some("nightly cleanup script, over the control socket")
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_task_is_not_found_and_a_store_nobody_serves_has_no_live_worker()
-> fq::Result<()> {
    let (dir, engine) = common::engine();
    assert!(matches!(
        engine.explain(fq::TaskId::new()).await,
        Err(fq::Error::NotFound(_))
    ));
    // A worker announced on the engine, then the engine closed: read-only, nobody is live.
    engine
        .broker()
        .announce_worker(WorkerInfo::of_this_process(
            vec!["q".into()],
            vec!["test.ok".into()],
            1,
            chrono::Utc::now(),
        ))
        .await?;
    let id = engine
        .queue_task_named("test.ok", &json!({}))
        .queue("q")
        .send()
        .await?;
    assert_eq!(engine.explain(id).await?.workers_with_handler, Some(1));
    drop(engine);
    let read_only = fq::Engine::builder(dir.path().join("fq.redb"))
        .read_only(true)
        .open()?;
    let why = read_only.explain(id).await?;
    assert_eq!(why.workers_serving_queue, Some(0));
    assert_eq!(why.ahead, Some(0));
    Ok(())
}
