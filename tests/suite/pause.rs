//! Pausing a queue (`Engine::pause_queue`, `resume_queue`, issue 12 §3): nothing new starts
//! from a paused queue while running tasks finish, queuing into it goes on, `Stats` shows it,
//! a queue can be paused ahead, the pause survives a reopen, and remote workers
//! (`Engine::connect`) are held the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fq::{Engine, Registry, TaskContext, TaskError, TaskStatus};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::common::{self, PATIENCE};

/// `test.gated` counts its starts and runs until the gate lets it finish.
fn gated(started: Arc<AtomicUsize>, gate: Arc<Semaphore>) -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.gated", move |_args: Value, _ctx: TaskContext| {
        let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.map_err(TaskError::new)?.forget();
            Ok::<_, TaskError>(json!("done"))
        }
    });
    registry
}

async fn queue_n(engine: &Engine, queue: &str, n: usize) -> Vec<fq::TaskId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            engine
                .queue_task_named("test.gated", &json!({}))
                .queue(queue)
                .send()
                .await
                .unwrap(),
        );
    }
    ids
}

async fn count(engine: &Engine, queue: &str, status: TaskStatus) -> usize {
    let query = fq::ListQuery {
        queue: Some(queue.into()),
        status: Some(status),
        limit: 1000,
        after: None,
        unique_key: None,
    };
    engine.list(query).await.unwrap().len()
}

/// Waits until `n` tasks of `queue` are COMPLETED.
async fn until_completed(engine: &Engine, queue: &str, n: usize) {
    common::eventually(
        "tasks to complete",
        PATIENCE,
        Duration::from_millis(10),
        || async { count(engine, queue, TaskStatus::Completed).await == n },
    )
    .await;
}

/// A claim on `queue` that waits `wait`: what a worker would get.
async fn claim(engine: &Engine, queue: &str, wait: Duration) -> Vec<fq::TaskRecord> {
    let queues = [Arc::<str>::from(queue)];
    engine
        .broker()
        .claim(fq::ClaimRequest::new(
            &queues,
            10,
            wait,
            &CancellationToken::new(),
        ))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_resume_with_tasks_running_across_the_pause() {
    let (_dir, engine) = common::engine();
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    queue_n(&engine, "emails", 6).await;
    let worker = common::start_worker(
        &engine,
        gated(Arc::clone(&started), Arc::clone(&gate)),
        &["emails"],
        2,
    );
    common::eventually(
        "two tasks running",
        PATIENCE,
        Duration::from_millis(10),
        || {
            let started = Arc::clone(&started);
            async move { started.load(Ordering::SeqCst) == 2 }
        },
    )
    .await;

    assert!(engine.pause_queue("emails").await.unwrap());
    assert!(!engine.pause_queue("emails").await.unwrap(), "paused twice");
    assert!(engine.stats().await.unwrap().queues["emails"].paused);
    // Queuing into a paused queue works.
    queue_n(&engine, "emails", 2).await;
    // The two running tasks finish; nothing new starts in their slots.
    gate.add_permits(2);
    until_completed(&engine, "emails", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "a task started while paused"
    );
    assert_eq!(count(&engine, "emails", TaskStatus::Pending).await, 6);

    assert!(engine.resume_queue("emails").await.unwrap());
    assert!(!engine.stats().await.unwrap().queues["emails"].paused);
    gate.add_permits(100);
    until_completed(&engine, "emails", 8).await;
    assert_eq!(started.load(Ordering::SeqCst), 8);
    worker.stop().await;
}

#[tokio::test]
async fn a_pause_made_ahead_survives_a_reopen_and_holds_tasks_queued_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    {
        let engine = Engine::open(&path).unwrap();
        assert!(engine.pause_queue("later").await.unwrap());
        let stats = engine.stats().await.unwrap();
        assert!(stats.queues["later"].paused, "a queue paused ahead shows");
        assert_eq!(stats.queues["later"].total(), 0);
    }
    let engine = Engine::open(&path).unwrap();
    assert!(engine.stats().await.unwrap().queues["later"].paused);
    queue_n(&engine, "later", 3).await;
    queue_n(&engine, "other", 1).await;
    assert!(
        claim(&engine, "later", Duration::from_millis(200))
            .await
            .is_empty()
    );
    assert_eq!(claim(&engine, "other", Duration::ZERO).await.len(), 1);
    assert_eq!(count(&engine, "later", TaskStatus::Pending).await, 3);

    // A claim waiting on the paused queue is woken by the resume.
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move { claim(&engine, "later", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(engine.resume_queue("later").await.unwrap());
    let claimed = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the resume wakes the claim")
        .unwrap();
    assert_eq!(claimed.len(), 3);
    drop(engine);
    let engine = Engine::open(&path).unwrap();
    assert!(!engine.stats().await.unwrap().queues["later"].paused);
}

/// A remote worker (through `Engine::connect`) starts nothing from a paused queue, and a pause
/// or resume made through the socket acts like a local one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_does_not_start_tasks_of_a_paused_queue() {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    assert!(remote.pause_queue("emails").await.unwrap());
    assert!(engine.stats().await.unwrap().queues["emails"].paused);
    assert!(remote.stats().await.unwrap().queues["emails"].paused);
    queue_n(&remote, "emails", 4).await;

    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(100));
    let worker = common::start_worker(&remote, gated(Arc::clone(&started), gate), &["emails"], 2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "a remote worker started a paused task"
    );
    assert_eq!(count(&engine, "emails", TaskStatus::Pending).await, 4);

    assert!(remote.resume_queue("emails").await.unwrap());
    until_completed(&engine, "emails", 4).await;
    worker.stop().await;
    let err = remote.pause_queue("bad queue!").await.unwrap_err();
    assert!(
        matches!(err, fq::Error::InvalidInput { field: "queue", .. }),
        "{err}"
    );
}
