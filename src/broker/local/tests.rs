//! Unit tests of the local broker: failed commits (poisoning, self-healing), a panicking
//! writer or read, and tasks cancelled or purged while being forwarded to RabbitMQ.

use std::sync::atomic::Ordering;

use super::*;
use crate::Outcome;
use crate::clock::SystemClock;
use crate::task::Payload;
use tokio_util::sync::CancellationToken;

fn settings() -> LocalSettings {
    LocalSettings {
        store: StoreOptions::default(),
        retry: RetryPolicy::default(),
        lease: Duration::from_secs(60),
        max_pending: None,
        max_payload_bytes: 1 << 20,
        min_free_bytes: 0,
        self_heal: true,
        schedules: Vec::new(),
        metrics: None,
    }
}

/// A broker on a fresh store at `path`, on the system clock.
fn open_at(path: &std::path::Path) -> LocalBroker {
    LocalBroker::open(path, settings(), Arc::new(SystemClock), EventBus::new()).unwrap()
}

fn new_task() -> NewTask {
    NewTask {
        id: TaskId::new(),
        name: "t".into(),
        queue: "default".into(),
        priority: 0,
        payload: Payload::empty(),
        max_retries: 3,
        timeout: None,
        retry_delay: None,
        run_at: None,
        unique: None,
        fresh_id: true.into(),
    }
}

/// Enqueues a task as soon as the engine, healing by itself, takes writes again (within 20 s).
async fn enqueue_once_healed(broker: &LocalBroker) -> TaskId {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match broker.enqueue(vec![new_task()]).await {
            Ok(queued) => return queued[0].id,
            Err(Error::Poisoned { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("the engine did not heal: {other}"),
        }
    }
}

/// Enqueues a task and reads it back, then makes B-tree commits after the log fail and
/// enqueues another, which is answered before its B-tree commit; both ids. The read waits for
/// the first task's B-tree commit (the gate of `store/visible.rs`), so the failure cannot hit
/// that commit instead.
async fn keep_one_then_answer_one_failing(broker: &LocalBroker) -> (TaskId, TaskId) {
    let kept = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;
    assert!(broker.task(kept).await.unwrap().is_some());
    broker
        .store
        .fail_commit_after_log
        .store(true, Ordering::SeqCst);
    let answered = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;
    (kept, answered)
}

/// With healing off, a failed commit must never be acknowledged, and the engine must refuse
/// every later write (even once the disk recovers) until it is reopened, while reads keep
/// working.
#[tokio::test]
async fn a_failed_commit_poisons_the_engine_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let broker = LocalBroker::open(
        &path,
        LocalSettings {
            self_heal: false,
            ..settings()
        },
        Arc::new(SystemClock),
        EventBus::new(),
    )
    .unwrap();
    let kept = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;

    broker.store.fail_commits.store(true, Ordering::SeqCst);
    let lost = new_task();
    let lost_id = lost.id;
    let err = broker.enqueue(vec![lost]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { reason, .. } if reason.contains("committing")),
        "{err}"
    );

    broker.store.fail_commits.store(false, Ordering::SeqCst);
    let err = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(
        broker.task(kept).await.unwrap().is_some(),
        "reads stopped working"
    );
    assert!(broker.task(lost_id).await.unwrap().is_none());
    drop(broker);

    let broker = open_at(&path);
    assert_eq!(
        broker.recovery().waiting,
        1,
        "the unacknowledged task was stored"
    );
    broker.enqueue(vec![new_task()]).await.unwrap();
}

/// With healing on (the default), the engine refuses writes while its store fails, keeps
/// serving reads, and accepts writes again by itself once the store works, with nothing
/// of the failed batch stored and nothing acknowledged lost.
#[tokio::test]
async fn a_failed_commit_heals_by_itself_once_the_store_works_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let broker = open_at(&path);
    let kept = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;

    broker.store.fail_commits.store(true, Ordering::SeqCst);
    let lost = new_task();
    let lost_id = lost.id;
    let err = broker.enqueue(vec![lost]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    // While the store still fails, the attempts to heal fail too: writes stay refused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(broker.task(kept).await.unwrap().is_some(), "reads stopped");
    let refused = broker.stats().await.unwrap().writes_refused;
    assert!(
        refused.as_deref().is_some_and(|r| r.contains("committing")),
        "stats say why writes are refused: {refused:?}"
    );

    broker.store.fail_commits.store(false, Ordering::SeqCst);
    let healed = enqueue_once_healed(&broker).await;
    assert!(broker.task(lost_id).await.unwrap().is_none());
    assert_eq!(broker.stats().await.unwrap().writes_refused, None);
    drop(broker);
    let broker = open_at(&path);
    assert!(broker.task(kept).await.unwrap().is_some());
    assert!(broker.task(healed).await.unwrap().is_some());
}

/// A batch whose B-tree commit fails after its record is in the log, with the log's sync
/// already started for it (the writer offers the sync before the B-tree commits): the batch
/// fails, the engine heals by itself, and the failed batch never comes back, not even at a
/// reopen, while everything acknowledged stays.
#[tokio::test]
async fn a_commit_failing_after_its_log_sync_started_heals_and_never_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    // A lone request would sync on the writer's thread and be answered first (the next test);
    // a held transaction would commit after the answer (the test after it).
    let pipelined = LocalSettings {
        store: StoreOptions {
            sync_lone_batches_here: false,
            hold_batches: 1,
            ..StoreOptions::default()
        },
        ..settings()
    };
    let broker =
        LocalBroker::open(&path, pipelined, Arc::new(SystemClock), EventBus::new()).unwrap();
    let kept = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;

    broker
        .store
        .fail_commit_after_log
        .store(true, Ordering::SeqCst);
    let lost = new_task();
    let lost_id = lost.id;
    let err = broker.enqueue(vec![lost]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    broker
        .store
        .fail_commit_after_log
        .store(false, Ordering::SeqCst);

    let healed = enqueue_once_healed(&broker).await;
    let mut more = Vec::new();
    for _ in 0..8 {
        more.push(broker.enqueue(vec![new_task()]).await.unwrap()[0].id);
    }
    assert!(broker.task(lost_id).await.unwrap().is_none());
    drop(broker);
    let broker = open_at(&path);
    assert!(
        broker.task(lost_id).await.unwrap().is_none(),
        "the failed batch came back from the log"
    );
    for id in [kept, healed].into_iter().chain(more) {
        assert!(broker.task(id).await.unwrap().is_some(), "{id} was lost");
    }
}

/// A lone request synced on the writer's thread is answered before the B-tree commits it. If
/// that commit then fails, the answer stands: the change is durable in the log, reads see it
/// (the reopen after the failure applies the log again), the engine refuses writes (healing is
/// off here, so that it stays so), and the task is still there after the engine is reopened.
#[tokio::test]
async fn a_btree_commit_failing_after_a_lone_request_was_answered_keeps_its_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let no_healing = || LocalSettings {
        self_heal: false,
        ..settings()
    };
    let open = || LocalBroker::open(&path, no_healing(), Arc::new(SystemClock), EventBus::new());
    let broker = open().unwrap();
    let (kept, answered) = keep_one_then_answer_one_failing(&broker).await;
    assert!(
        broker.task(answered).await.unwrap().is_some(),
        "an answered change is missing from reads after its B-tree commit failed"
    );
    broker
        .store
        .fail_commit_after_log
        .store(false, Ordering::SeqCst);
    let err = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { reason, .. } if reason.contains("committing")),
        "the B-tree's commit did not fail: {err}"
    );
    drop(broker);
    let broker = open().unwrap();
    for id in [kept, answered] {
        assert!(broker.task(id).await.unwrap().is_some(), "{id} was lost");
    }
    broker.enqueue(vec![new_task()]).await.unwrap();
}

/// A task whose value was cloned is looked up before it is written, the original as well as
/// the clone, whichever is sent first: the second is refused by name, with no failed commit.
#[tokio::test]
async fn a_cloned_task_sent_twice_is_refused_whichever_copy_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_at(&dir.path().join("fq.redb"));
    let original = new_task();
    assert!(original.has_fresh_id());
    let copy = original.clone();
    assert!(!original.has_fresh_id() && !copy.has_fresh_id());
    let id = broker.enqueue(vec![copy]).await.unwrap()[0].id;
    let err = broker.enqueue(vec![original]).await.unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");
    assert!(
        broker.shared.poisoned().is_none(),
        "the second copy failed a commit"
    );
    assert!(broker.task(id).await.unwrap().is_some());
}

/// An id drawn by this process is not looked up before its task is written: should one
/// clash with a stored task all the same, the store refuses the write, the batch fails by
/// name and is never acknowledged, and the stored task is kept through the healing reopen. A
/// caller's own id is looked up first and refused as invalid, with no failed commit.
#[tokio::test]
async fn a_drawn_id_clashing_with_a_stored_task_fails_its_batch_and_keeps_the_stored_task() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_at(&dir.path().join("fq.redb"));
    let stored = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;
    let intruder = |fresh_id: bool| NewTask {
        id: stored,
        name: "intruder".into(),
        fresh_id: fresh_id.into(),
        ..new_task()
    };

    let err = broker.enqueue(vec![intruder(false)]).await.unwrap_err();
    assert!(err.to_string().contains("already in use"), "{err}");
    assert!(
        broker.shared.poisoned().is_none(),
        "a caller's id in use failed a commit"
    );

    let err = broker.enqueue(vec![intruder(true)]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("a new task's id is already stored"),
        "{err}"
    );
    enqueue_once_healed(&broker).await;
    let kept = broker
        .task(stored)
        .await
        .unwrap()
        .expect("the stored task was lost");
    assert_eq!(kept.name, "t");
    assert_eq!(kept.status, TaskStatus::Pending);
    // The stored task and the one queued after the healing: the intruder's count is gone too.
    assert_eq!(broker.stats().await.unwrap().queues["default"].pending, 2);
}

/// A batch on the pipeline is answered once its log sync returns, while the B-tree
/// transaction carrying it stays open for later batches (`store/held.rs`); the writer commits
/// it before it sleeps. If that commit fails, the answers stand: the batches are durable in
/// the log, reads wait for the reopen that applies it again and then see them, the engine
/// refuses writes until it heals, and a reopened engine has them too.
#[tokio::test]
async fn a_held_transaction_failing_after_its_batches_were_answered_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    // A batch is held only while a sync runs, which a test cannot time.
    let holding = LocalSettings {
        store: StoreOptions {
            sync_lone_batches_here: false,
            hold_every_batch: true,
            ..StoreOptions::default()
        },
        ..settings()
    };
    let broker = LocalBroker::open(&path, holding, Arc::new(SystemClock), EventBus::new()).unwrap();
    let (kept, answered) = keep_one_then_answer_one_failing(&broker).await;
    // The writer commits the held transaction before it sleeps, right after the answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broker.shared.poisoned().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Poisoned { reason, healing: true } if reason.contains("committing")),
        "the held transaction's commit did not fail: {refused}"
    );
    assert!(
        broker.task(answered).await.unwrap().is_some(),
        "an answered batch is missing from reads after its held transaction failed to commit"
    );
    broker
        .store
        .fail_commit_after_log
        .store(false, Ordering::SeqCst);
    let healed = enqueue_once_healed(&broker).await;
    drop(broker);
    let broker = open_at(&path);
    for id in [kept, answered, healed] {
        assert!(broker.task(id).await.unwrap().is_some(), "{id} was lost");
    }
}

/// A lone request's commit can hand its task to a claim waiting for work, and is answered
/// before the B-tree commits. If that commit then fails, the claim stands as the enqueue does:
/// the worker that got the task runs attempt 1, its settlement meets the poisoned engine, and
/// the reopen finds the task claimed under attempt 1 (the log kept the claim with the enqueue),
/// so it orphans that attempt as for any process that ended mid-run: attempt 1 can no longer
/// settle, and the task runs again as attempt 2.
#[tokio::test]
async fn a_task_handed_to_a_waiting_claim_stays_claimed_when_the_b_tree_commit_fails_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let open = || {
        let settings = LocalSettings {
            self_heal: false,
            retry: RetryPolicy {
                base: Duration::from_millis(50),
                jitter: 0.0,
                ..RetryPolicy::default()
            },
            ..settings()
        };
        LocalBroker::open(&path, settings, Arc::new(SystemClock), EventBus::new())
    };
    let broker = Arc::new(open().unwrap());
    let kept = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;
    let cancel = CancellationToken::new();
    let queues: Vec<Arc<str>> = vec!["default".into()];
    let first = broker
        .claim(ClaimRequest::new(&queues, 1, Duration::ZERO, &cancel))
        .await
        .unwrap();
    assert_eq!(first[0].id, kept);
    let done = Outcome::Completed {
        result: serde_json::Value::Null,
    };
    let settled = broker
        .settle(Settlement {
            id: kept,
            attempt: 1,
            outcome: done.clone(),
        })
        .await
        .unwrap();
    assert_eq!(settled.status, TaskStatus::Completed);
    // The settlement was answered before its own B-tree commit; a read waits for that commit,
    // so the failure armed below cannot hit it instead.
    let read = broker.task(kept).await.unwrap().map(|task| task.status);
    assert_eq!(read, Some(TaskStatus::Completed));

    let claimer = {
        let broker = Arc::clone(&broker);
        let queues = queues.clone();
        tokio::spawn(async move {
            let cancel = CancellationToken::new();
            let request = ClaimRequest::new(&queues, 1, Duration::from_secs(10), &cancel);
            broker.claim(request).await
        })
    };
    let registered_by = std::time::Instant::now() + Duration::from_secs(10);
    while !broker.shared.handoffs.any() {
        assert!(
            std::time::Instant::now() < registered_by,
            "the claim never waited"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    broker
        .store
        .fail_commit_after_log
        .store(true, Ordering::SeqCst);
    let handed = broker.enqueue(vec![new_task()]).await.unwrap()[0].id;
    let claimed = claimer.await.unwrap().unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].id, claimed[0].attempts, claimed[0].status),
        (handed, 1, TaskStatus::Running),
        "the waiting claim did not get the task in the enqueue's commit"
    );
    // The answer came before the B-tree's commit: a read waits for that commit (or for the
    // reopen after its failure), so the failure is not disarmed before the commit meets it.
    let read = broker.task(handed).await.unwrap().map(|task| task.status);
    assert_eq!(read, Some(TaskStatus::Running));
    broker
        .store
        .fail_commit_after_log
        .store(false, Ordering::SeqCst);
    let completed = || Settlement {
        id: handed,
        attempt: 1,
        outcome: done.clone(),
    };
    let err = broker.settle(completed()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { reason, .. } if reason.contains("committing")),
        "the B-tree's commit did not fail: {err}"
    );
    drop(broker);

    let broker = open().unwrap();
    let record = broker
        .task(handed)
        .await
        .unwrap()
        .expect("the handed task was lost");
    assert_eq!(
        (record.status, record.attempts),
        (TaskStatus::Retrying, 1),
        "the reopen did not find the claim made in the failed commit"
    );
    let err = broker.settle(completed()).await.unwrap_err();
    assert!(
        matches!(err, Error::StaleAttempt { attempt: 1, .. }),
        "attempt 1 settled after the reopen had orphaned it: {err}"
    );
    let again = broker
        .claim(ClaimRequest::new(
            &queues,
            1,
            Duration::from_secs(10),
            &cancel,
        ))
        .await
        .unwrap();
    assert_eq!(
        (again[0].id, again[0].attempts),
        (handed, 2),
        "the task did not run again as attempt 2"
    );
    let report = broker
        .settle(Settlement {
            attempt: 2,
            ..completed()
        })
        .await
        .unwrap();
    assert_eq!(report.status, TaskStatus::Completed);
}

/// A panicking writer dropped the replies it held before its guard raised the poison
/// flag, so their callers were told "engine is shut down".
#[tokio::test]
async fn regression_a_writer_panic_was_reported_as_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let broker = open_at(&path);
    broker.enqueue(vec![new_task()]).await.unwrap();
    broker.store.panic_on_write.store(true, Ordering::SeqCst);
    let err = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { reason, .. } if reason.contains("panicked")),
        "{err}"
    );
    let err = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
}

/// A redb panic inside a read (some damage no checksum catches, e.g. a zeroed page) came
/// back as an internal error without the file's name.
#[tokio::test]
async fn regression_a_panic_inside_a_read_was_an_internal_error_without_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let broker = open_at(&path);
    let err = read_off_the_runtime(&broker.store, |_store| -> Result<()> {
        panic!("invalid page type 0")
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Store(StoreError::Corrupt { path: at, detail })
            if *at == path && detail.contains("invalid page type 0")),
        "{err:?}"
    );
}

/// RabbitMQ mode: a cancel that landed while the forwarder was publishing a task (after it
/// read the record, before RabbitMQ's confirm) reported CANCELLED although the message was
/// already published, so the "cancelled" task ran anyway.
#[tokio::test]
async fn regression_a_cancel_while_the_task_was_being_forwarded_was_reported_cancelled() {
    use crate::broker::Broker;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_at(&dir.path().join("fq.redb"));
    let ids: Vec<TaskId> = broker
        .enqueue(vec![new_task(), new_task(), new_task()])
        .await
        .unwrap()
        .into_iter()
        .map(|queued| queued.id)
        .collect();

    // Being published: refused, and the task stays PENDING.
    let taken = broker.take_due(1);
    assert_eq!(taken.len(), 1);
    let publishing = taken[0].id;
    let read = broker.read_taken(taken.clone()).await.unwrap();
    assert_eq!(read.len(), 1);
    let err = broker.cancel(publishing, "test".into()).await.unwrap_err();
    assert!(
        matches!(&err, Error::WrongState { status: TaskStatus::Pending, allowed, .. }
            if allowed.contains("being published to RabbitMQ")),
        "{err}"
    );
    // Publishing failed: the task is back in the outbox, and cancellable.
    broker.put_back(taken);
    let record = broker.cancel(publishing, "test".into()).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancelled);

    // Cancelled after the forwarder took it but before it read it: not published.
    let taken = broker.take_due(1);
    let cancelled = taken[0].id;
    broker.cancel(cancelled, "test".into()).await.unwrap();
    assert!(broker.read_taken(taken).await.unwrap().is_empty());

    // Confirmed: FORWARDED, and cancel says so.
    let taken = broker.take_due(1);
    let forwarded = taken[0].id;
    let read = broker.read_taken(taken).await.unwrap();
    let marks = read.iter().map(|(t, _)| (t.id, t.order)).collect();
    assert_eq!(broker.mark_forwarded(marks, 1).await.unwrap(), 1);
    let err = broker.cancel(forwarded, "test".into()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                status: TaskStatus::Forwarded,
                ..
            }
        ),
        "{err}"
    );
    for id in [publishing, cancelled, forwarded] {
        assert!(ids.contains(&id), "{id} was not queued here");
    }
}

/// RabbitMQ mode: purging a queue deleted a task the forwarder was publishing at that
/// moment and counted it purged, though its message could already be in RabbitMQ.
#[tokio::test]
async fn regression_a_purge_deleted_a_task_that_was_being_forwarded() {
    use crate::broker::Broker;
    let dir = tempfile::tempdir().unwrap();
    let broker = open_at(&dir.path().join("fq.redb"));
    broker
        .enqueue(vec![new_task(), new_task(), new_task()])
        .await
        .unwrap();
    let taken = broker.take_due(1);
    let read = broker.read_taken(taken).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(broker.purge("default".into(), None).await.unwrap(), 2);
    let marks = read.iter().map(|(t, _)| (t.id, t.order)).collect();
    assert_eq!(broker.mark_forwarded(marks, 1).await.unwrap(), 1);
    let record = broker.task(read[0].0.id).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Forwarded);
}

/// A refusal says whether the engine heals, from one value the writer sets with the poisoning:
/// healing while planned, for good once the writer gives up (or never planned it), and none
/// once the poison is lifted.
#[tokio::test]
async fn a_refusal_says_whether_the_engine_heals_until_it_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_at(&dir.path().join("fq.redb"));
    let shared = &broker.shared;
    assert!(shared.refused().is_none());
    shared.poison("disk gone".into(), true);
    let refusal = shared.refused();
    assert!(
        matches!(&refusal, Some(Error::Poisoned { reason, healing: true }) if reason == "disk gone"),
        "{refusal:?}"
    );
    let refused = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Poisoned { healing: true, .. }),
        "{refused:?}"
    );
    // A second failure while poisoned keeps the first reason and takes the latest plan.
    shared.poison("another".into(), false);
    assert!(matches!(
        shared.refused(),
        Some(Error::Poisoned { reason, healing: false }) if reason == "disk gone"
    ));
    shared.poison("again".into(), true);
    assert!(matches!(
        shared.refused(),
        Some(Error::Poisoned { reason, healing: true }) if reason == "disk gone"
    ));
    shared.stop_healing();
    let refused = broker.enqueue(vec![new_task()]).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Poisoned { reason, healing: false } if reason == "disk gone"),
        "{refused:?}"
    );
    shared.unpoison();
    assert!(shared.refused().is_none());
    // A refusal made as the poison lifts says the call may be made again.
    assert!(matches!(
        shared.refusal("disk gone".into()),
        Error::Poisoned { healing: true, .. }
    ));
    broker.enqueue(vec![new_task()]).await.unwrap();
}

/// A read that redb refuses because a checkpoint's commit just failed (`PreviousIo`: every
/// access fails until the database is reopened) waits for the writer's reopen, which follows
/// every failed commit, and is made again. Found by CI (2026-12-07): on an engine reopened
/// while its disk was full, an idle checkpoint ran into the wall and a read failed with
/// redb's "previous I/O error" before the reopen (`disk_full.rs`, 1 run in 30 under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_refused_after_a_failed_checkpoint_waits_for_the_reopen() {
    use crate::store::flaky_disk::SharedFlakyDisk;
    use std::sync::atomic::Ordering::SeqCst;
    let disk = SharedFlakyDisk::default();
    let options = StoreOptions {
        backend: Some(disk.clone().into()),
        log_backend: Some(SharedFlakyDisk::default().into()),
        wal_checkpoint_bytes: 8,
        // Reads go to the disk, where redb checks for a failed write; from its cache they
        // would not fail.
        cache_bytes: 4096,
        ..StoreOptions::default()
    };
    let store =
        std::sync::Arc::new(Store::open(std::path::Path::new("/flaky/fq.redb"), &options).unwrap());
    let id = crate::store::queue_sample(&store);
    disk.0.failing_syncs.store(u32::MAX, SeqCst);
    assert!(
        store.checkpoint_when(true).is_err(),
        "the checkpoint's sync did not fail"
    );
    let refused = store.read_task(id).unwrap_err();
    assert!(refused.is_refused_after_failed_write(), "{refused:?}");

    let reopening = {
        let (store, disk) = (std::sync::Arc::clone(&store), disk.clone());
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            disk.0.failing_syncs.store(0, SeqCst);
            store.reopen().unwrap();
        })
    };
    let read = read_off_the_runtime(&store, move |store| Ok(store.read_task(id)?)).await;
    reopening.join().unwrap();
    assert!(
        read.unwrap().is_some(),
        "the task is missing after the reopen"
    );
}
