//! Hand-off to a waiting claim: a task queued while a worker waits for work is claimed for that
//! worker in the commit that queued it (or the one pipelined behind it), so its start waits for
//! one commit instead of two (its enqueue's, then a claim's after the enqueue was answered).
//! A pause committed while the worker waits still holds the queue's new tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fq::{Engine, Registry, TaskContext, TaskError, TaskStatus};
use serde_json::json;

use crate::common::{self, PATIENCE, RunningWorker};

/// A worker of one slot on `q` whose claims wait a minute for work: once started, it sits
/// registered for hand-offs (a shorter wait would leave gaps between its claims).
fn idle_worker(engine: &Engine, started: &Arc<AtomicUsize>) -> RunningWorker {
    let mut registry = Registry::new();
    let count = Arc::clone(started);
    registry.register_async(
        "test.quick",
        move |_: serde_json::Value, _ctx: TaskContext| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, TaskError>(json!("quick")) }
        },
    );
    let mut worker = engine.worker(registry);
    worker
        .set_queues(["q"])
        .set_concurrent_tasks(1)
        .set_handle_signals(false)
        .set_polling_interval(Duration::from_secs(60));
    let stop = worker.shutdown_handle();
    let handle = tokio::spawn(async move { worker.start().await });
    RunningWorker { stop, handle }
}

/// The engine's commits so far (`fq_writer_batch_size_count`: every commit is one batch).
async fn commits(engine: &Engine) -> fq::Result<f64> {
    let text = engine.metrics().await?;
    let line = text
        .lines()
        .find(|line| line.starts_with("fq_writer_batch_size_count "))
        .expect("the writer's batch-size histogram is exported");
    Ok(line
        .rsplit_once(' ')
        .and_then(|(_, value)| value.parse().ok())
        .expect("a numeric count"))
}

/// A lone task for an idle worker costs two commits from enqueue to settlement: one queued and
/// claimed it, one settled it. Without the hand-off it costs three (queued; claimed once the
/// worker saw it on the ready heap; settled). The worker registers within microseconds of its
/// start and of each empty claim, so a round that raced it is tried again; the claim without a
/// hand-off never gets below three.
#[tokio::test]
async fn a_task_queued_for_an_idle_worker_is_claimed_in_the_commit_that_queued_it() -> fq::Result<()>
{
    let (_dir, engine) = common::engine();
    two_commits_per_task(&engine, &engine).await
}

/// The same through the control socket: a remote worker's claim waits in the engine, so a task
/// queued while it waits is handed to it in the commit that queues it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_workers_waiting_claim_gets_its_task_in_the_commit_that_queued_it()
-> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    two_commits_per_task(&engine, &remote).await
}

/// An idle worker on `worker_engine` (the engine itself, or a handle on it through its socket)
/// takes a lone task queued on `engine` in two commits, enqueue to settlement.
async fn two_commits_per_task(engine: &Engine, worker_engine: &Engine) -> fq::Result<()> {
    let started = Arc::new(AtomicUsize::new(0));
    let worker = idle_worker(worker_engine, &started);
    let seen = commits_per_task(engine, worker).await?;
    assert_eq!(
        seen.last().copied(),
        Some(2.0),
        "commits from enqueue to settlement, by round: {seen:?}"
    );
    Ok(())
}

/// Queues one task at a time for `worker` (one slot waiting on `q`) and counts the commits each
/// costs from its enqueue to its settlement, up to the first round of two (five rounds at
/// most); then stops the worker.
async fn commits_per_task(engine: &Engine, worker: RunningWorker) -> fq::Result<Vec<f64>> {
    let mut seen = Vec::new();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = commits(engine).await?;
        let id = engine
            .queue_task_named("test.quick", &json!({ "kwargs": { "round": round } }))
            .queue("q")
            .send()
            .await?;
        let done = engine.wait(id, PATIENCE).await?;
        assert_eq!(done.status, TaskStatus::Completed);
        assert_eq!(done.attempts, 1);
        let used = commits(engine).await? - before;
        seen.push(used);
        if used == 2.0 {
            break;
        }
    }
    worker.stop().await;
    Ok(seen)
}

/// The worker waits with `q` among the queues it may take from; then `q` is paused. A task
/// queued after the pause is not handed to it (the hand-off goes through the same check of
/// paused queues as any claim): it stays PENDING until `q` resumes, then runs.
#[tokio::test]
async fn a_pause_committed_while_a_worker_waits_holds_the_tasks_queued_after_it() -> fq::Result<()>
{
    let (_dir, engine) = common::engine();
    let started = Arc::new(AtomicUsize::new(0));
    let worker = idle_worker(&engine, &started);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(engine.pause_queue("q").await?);
    let id = engine
        .queue_task_named("test.quick", &json!({}))
        .queue("q")
        .send()
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = engine.task(id).await?.map(|task| task.status);
    assert_eq!(
        held,
        Some(TaskStatus::Pending),
        "a paused queue's task was handed off"
    );
    assert_eq!(started.load(Ordering::SeqCst), 0);
    assert!(engine.resume_queue("q").await?);
    let done = engine.wait(id, PATIENCE).await?;
    assert_eq!(done.status, TaskStatus::Completed);
    worker.stop().await;
    Ok(())
}
