//! The pipelined group commit seen from the engine: the writer commits the next batch while the
//! log's sync of the last one runs, and answers each batch only once a sync covering it has
//! returned. A sync that fails fails its batches and every batch committed behind it, and none
//! of them is in the store after the engine heals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use fq::{Engine, ListQuery, TaskId};
use serde_json::json;

use crate::common::backend::FailingBackend;

/// A redo log kept in memory (the suite's healthy simulated disk) whose next sync can be made
/// to wait for the test, then fail.
#[derive(Debug, Clone)]
struct HeldLog {
    disk: FailingBackend,
    gate: Arc<(Mutex<SyncGate>, Condvar)>,
}

#[derive(Debug, Default)]
struct SyncGate {
    /// The next sync waits until released, then fails.
    armed: bool,
    /// A sync is waiting for the release.
    waiting: bool,
    released: bool,
}

impl HeldLog {
    fn new() -> Self {
        Self {
            disk: FailingBackend::healthy(Vec::new()),
            gate: Arc::default(),
        }
    }

    fn arm(&self) {
        self.gate.0.lock().unwrap().armed = true;
    }

    fn wait_for_held_sync(&self) {
        let (lock, changed) = &*self.gate;
        let mut gate = lock.lock().unwrap();
        while !gate.waiting {
            let (next, timeout) = changed.wait_timeout(gate, Duration::from_secs(10)).unwrap();
            assert!(!timeout.timed_out(), "no sync of the log started");
            gate = next;
        }
    }

    fn release(&self) {
        self.gate.0.lock().unwrap().released = true;
        self.gate.1.notify_all();
    }
}

impl redb::StorageBackend for HeldLog {
    fn len(&self) -> std::io::Result<u64> {
        self.disk.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.disk.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.disk.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let (lock, changed) = &*self.gate;
        let mut gate = lock.lock().unwrap();
        if !gate.armed {
            drop(gate);
            return self.disk.sync_data();
        }
        gate.armed = false;
        gate.waiting = true;
        changed.notify_all();
        while !gate.released {
            gate = changed.wait(gate).unwrap();
        }
        Err(std::io::Error::other("injected failure of a held sync"))
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.write(offset, data)
    }
}

async fn enqueue(engine: &Engine, n: u64) -> fq::Result<TaskId> {
    engine
        .queue_task_named("log.sync", &json!({"args": [n], "kwargs": {}}))
        .send()
        .await
}

async fn listed(engine: &Engine) -> Vec<TaskId> {
    let query = ListQuery {
        limit: 1_000,
        ..ListQuery::default()
    };
    let mut ids: Vec<TaskId> = engine
        .list(query)
        .await
        .unwrap()
        .into_iter()
        .map(|task| task.id)
        .collect();
    ids.sort();
    ids
}

/// An engine whose store is in memory and whose redo log is `log`, every batch on the pipeline
/// (a lone one would otherwise sync on the writer's thread, with no batch behind its sync).
fn engine_on(log: &HeldLog) -> Arc<Engine> {
    open_on(
        log,
        Engine::builder(PathBuf::from("/simulated/fq.redb")).pipeline_every_batch(),
    )
}

/// As [`engine_on`], with the engine's default commits: a lone batch syncs on the writer.
fn engine_syncing_lone_batches_on(log: &HeldLog) -> Arc<Engine> {
    open_on(log, Engine::builder(PathBuf::from("/simulated/fq.redb")))
}

fn open_on(log: &HeldLog, builder: fq::EngineBuilder) -> Arc<Engine> {
    let engine = builder
        .control(false)
        .storage_backend(redb::backends::InMemoryBackend::new())
        .log_backend(log.clone())
        .open()
        .unwrap();
    Arc::new(engine)
}

/// Enqueues task `n` with the log's next sync held (it fails once released), returning once
/// that sync waits.
async fn enqueue_held(
    engine: &Arc<Engine>,
    log: &HeldLog,
    n: u64,
) -> tokio::task::JoinHandle<fq::Result<TaskId>> {
    log.arm();
    let enqueued = tokio::spawn({
        let engine = Arc::clone(engine);
        async move { enqueue(&engine, n).await }
    });
    let held = log.clone();
    tokio::task::spawn_blocking(move || held.wait_for_held_sync())
        .await
        .unwrap();
    enqueued
}

/// Enqueues task `n` once the engine takes writes again (it heals by itself after a failed
/// commit: a reopen, then an empty durable commit); `None` if it has not within 10 s.
async fn enqueue_once_healed(engine: &Engine, n: u64) -> Option<TaskId> {
    for _ in 0..200 {
        match enqueue(engine, n).await {
            Ok(id) => return Some(id),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

/// Enqueues task `n` once the engine has healed from a failed sync, then checks that the store
/// holds exactly `kept` and that task, with sound indexes.
async fn assert_heals_holding_only(engine: &Engine, kept: TaskId, n: u64) {
    let after = enqueue_once_healed(engine, n)
        .await
        .expect("the engine did not heal after the failed sync");
    let mut expected = vec![kept, after];
    expected.sort();
    assert_eq!(listed(engine).await, expected);
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

/// An engine on a held log with one task kept, and a first enqueue whose sync is held (it
/// fails once released).
async fn first_enqueue_held() -> (
    Arc<Engine>,
    HeldLog,
    TaskId,
    tokio::task::JoinHandle<fq::Result<TaskId>>,
) {
    let log = HeldLog::new();
    let engine = engine_on(&log);
    let kept = enqueue(&engine, 0).await.unwrap();
    let first = enqueue_held(&engine, &log, 1).await;
    (engine, log, kept, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_sync_fails_every_batch_committed_behind_it_and_none_comes_back() {
    let (engine, log, kept, first) = first_enqueue_held().await;
    // The first batch's sync is held: the next enqueue is committed behind it, and a read
    // waits, since what it would see is not durable.
    let second = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { enqueue(&engine, 2).await }
    });
    let read = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { listed(&engine).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered_early = first.is_finished() || second.is_finished();
    let read_early = read.is_finished();
    // Released before asserting, so that a failure does not leave the sync thread held.
    log.release();
    assert!(
        !answered_early,
        "an enqueue was answered before the sync that covers it returned"
    );
    assert!(
        !read_early,
        "a read went on while the last commit it would see was not durable"
    );
    for (name, outcome) in [
        ("first", first.await.unwrap()),
        ("second", second.await.unwrap()),
    ] {
        let error = outcome.expect_err(name);
        assert!(
            error.to_string().contains("fq.redb-wal"),
            "the {name} enqueue's error does not name the log: {error}"
        );
    }
    let read = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a read waiting on the failed sync never returned");
    assert_eq!(
        read.unwrap(),
        vec![kept],
        "a read waiting on the failed sync saw a commit it covered"
    );

    // The engine heals by itself (reopen, then an empty durable commit) and takes writes.
    assert_heals_holding_only(&engine, kept, 3).await;
    println!("log_sync: two enqueues behind a failed sync failed; the engine healed");
}

/// A checkpoint makes every commit durable at once, so one taken while a sync of the log runs
/// would answer that sync's batch before the sync could fail it: the writer waits for the
/// running syncs before it checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_due_while_a_sync_runs_waits_for_it_and_its_failure_still_fails_the_batch() {
    let (engine, log, kept, first) = first_enqueue_held().await;
    // Past the checkpoint interval (1 s) the next batch finds a checkpoint due.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let second = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { enqueue(&engine, 2).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered_early = first.is_finished() || second.is_finished();
    log.release();
    assert!(
        !answered_early,
        "a batch was answered while the sync covering it still ran (a checkpoint overtook it)"
    );
    let first = first.await.unwrap();
    assert!(
        first.is_err(),
        "the batch whose sync failed was acknowledged: {first:?}"
    );
    // Whatever became of the second (failed with the first, or refused by the poisoned
    // engine), neither is in the store once the engine healed.
    let _ = second.await.unwrap();
    let mut healed = false;
    for _ in 0..200 {
        if enqueue(&engine, 3).await.is_ok() {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed, "the engine did not heal after the failed sync");
    let listed = listed(&engine).await;
    assert!(listed.contains(&kept));
    assert_eq!(
        listed.len(),
        2,
        "a batch behind the failed sync came back: {listed:?}"
    );
    println!("log_sync: a checkpoint due during a sync waited for it; the failed batch failed");
}

/// A task queued while a claim waits for work is handed to it in the commit that queues it
/// (`local::handoff`). When that commit's log sync fails, the claim gets nothing: the task
/// and its claim are taken back together. The claim goes on waiting, and once the engine has
/// healed, the next task queued is handed to it, RUNNING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_whose_sync_fails_delivers_nothing_and_the_claim_waits_on() {
    let log = HeldLog::new();
    let engine = engine_on(&log);
    let cancel = tokio_util::sync::CancellationToken::new();
    let claim = tokio::spawn({
        let (engine, cancel) = (Arc::clone(&engine), cancel.clone());
        async move {
            let queues = [Arc::<str>::from("default")];
            let request = fq::ClaimRequest::new(&queues, 4, Duration::from_secs(60), &cancel);
            engine.broker().claim(request).await
        }
    });
    // The claim finds nothing and waits, registered for hand-offs.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let first = enqueue_held(&engine, &log, 1).await;
    log.release();
    assert!(
        first.await.unwrap().is_err(),
        "an enqueue whose sync failed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let returned_early = claim.is_finished();

    let after = enqueue_once_healed(&engine, 2).await;
    cancel.cancel();
    assert!(
        !returned_early,
        "the claim returned after its hand-off's commit failed"
    );
    let after = after.expect("the engine did not heal after the failed sync");
    let claimed = tokio::time::timeout(Duration::from_secs(20), claim)
        .await
        .expect("the claim never returned")
        .unwrap()
        .unwrap();
    let claimed: Vec<(TaskId, fq::TaskStatus)> =
        claimed.iter().map(|task| (task.id, task.status)).collect();
    assert_eq!(claimed, vec![(after, fq::TaskStatus::Running)]);
    assert_eq!(listed(&engine).await, vec![after]);
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

/// A claim made while the engine is poisoned (after a failed log sync, before it heals) has
/// taken its tasks off the ready heap when it is refused: they go back, so that once the
/// engine heals they are claimed as any other. Regression: they stayed PENDING in the store
/// but off the heap, unseen by every claim until the engine was reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_refused_by_a_poisoned_engine_leaves_its_tasks_claimable_after_it_heals() {
    let (engine, log, kept, first) = first_enqueue_held().await;
    log.release();
    assert!(
        first.await.unwrap().is_err(),
        "an enqueue whose sync failed"
    );
    // Poisoned until it heals (its first attempt comes 100 ms after the failure).
    let queues = [Arc::<str>::from("default")];
    let refused = engine
        .broker()
        .claim(fq::ClaimRequest::now(&queues, 4))
        .await;
    assert!(
        refused.is_err(),
        "the claim went through before the engine healed: {refused:?}"
    );
    let after = enqueue_once_healed(&engine, 2)
        .await
        .expect("the engine did not heal after the failed sync");
    let never = tokio_util::sync::CancellationToken::new();
    let request = fq::ClaimRequest::new(&queues, 4, Duration::from_secs(2), &never);
    let mut claimed: Vec<TaskId> = engine
        .broker()
        .claim(request)
        .await
        .unwrap()
        .iter()
        .map(|task| task.id)
        .collect();
    claimed.sort();
    let mut expected = vec![kept, after];
    expected.sort();
    assert_eq!(claimed, expected, "a task taken by the refused claim");
}

/// A lone request syncs the log on the writer's own thread and is answered before the B-tree
/// commits. With that sync held, it is not answered and a read returns what is durable without
/// waiting for it; once the sync fails, the request fails naming the log, the engine heals by
/// itself, and the task never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_whose_sync_fails_on_the_writer_is_neither_answered_nor_kept() {
    let log = HeldLog::new();
    let engine = engine_syncing_lone_batches_on(&log);
    let kept = enqueue(&engine, 0).await.unwrap();
    let held = enqueue_held(&engine, &log, 1).await;
    let read = tokio::time::timeout(Duration::from_secs(10), listed(&engine)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answered_early = held.is_finished();
    // Released before asserting, so that a failure does not leave the writer held.
    log.release();
    assert_eq!(
        read.expect("a read waited for a change the B-tree does not hold"),
        vec![kept]
    );
    assert!(
        !answered_early,
        "a lone request was answered before its sync returned"
    );
    let error = held
        .await
        .unwrap()
        .expect_err("a lone request was answered despite its failed sync");
    assert!(
        error.to_string().contains("fq.redb-wal"),
        "the error does not name the log: {error}"
    );
    assert_heals_holding_only(&engine, kept, 2).await;
}
