//! Unique tasks (`QueueTask::unique`, issue 12 §2): a task queued under a key some task holds
//! is a duplicate (the holder's id, marked, nothing queued, no `task.queued`); a key is held
//! while its task is PENDING, scheduled, RUNNING or RETRYING, and with `unique_for` until the
//! period ends; the check and the insert are one commit, so racing producers and one batch
//! make exactly one task; and all of it holds across a kill and reopen, through the control
//! socket, and after retention deletes a task.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fq::{
    Engine, ListQuery, Outcome, Queued, Settlement, TaskFailure, TaskId, TaskRecord, TaskStatus,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{self, PATIENCE};

const NAME: &str = "test.unique";

/// A task of queue `unique` with unique key `key`.
fn keyed(engine: &Engine, key: &str) -> fq::QueueTask {
    engine
        .queue_task_named(NAME, &json!({}))
        .queue("unique")
        .unique(key)
}

async fn submit(engine: &Engine, key: &str) -> Queued {
    keyed(engine, key).submit().await.unwrap()
}

/// Queues a task under `key`, asserting it was new.
async fn queue_new(engine: &Engine, key: &str) -> TaskId {
    let queued = submit(engine, key).await;
    assert!(!queued.duplicate, "{key} was held already");
    queued.id
}

/// Asserts a task under `key` is a duplicate of `holder`.
async fn assert_duplicate(engine: &Engine, key: &str, holder: TaskId) {
    let queued = submit(engine, key).await;
    assert_eq!(
        queued,
        Queued {
            id: holder,
            duplicate: true
        },
        "{key} should be held by {holder}"
    );
}

async fn record(engine: &Engine, id: TaskId) -> TaskRecord {
    engine.task(id).await.unwrap().expect("the task exists")
}

async fn with_key(engine: &Engine, key: &str) -> Vec<TaskRecord> {
    engine
        .list(ListQuery {
            unique_key: Some(key.into()),
            limit: 1000,
            ..ListQuery::default()
        })
        .await
        .unwrap()
}

/// Claims the due task of queue `unique` (one at most).
async fn claim(engine: &Engine) -> TaskRecord {
    let queues = [Arc::<str>::from("unique")];
    let mut claimed = engine
        .broker()
        .claim(fq::ClaimRequest::new(
            &queues,
            1,
            PATIENCE,
            &CancellationToken::new(),
        ))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "one task to claim");
    claimed.remove(0)
}

async fn settle(engine: &Engine, task: &TaskRecord, outcome: Outcome) -> TaskStatus {
    engine
        .broker()
        .settle(Settlement {
            id: task.id,
            attempt: task.attempts,
            outcome,
        })
        .await
        .unwrap()
        .status
}

fn failed() -> Outcome {
    Outcome::Failed {
        failure: TaskFailure {
            message: "boom".into(),
            kind: fq::FailureKind::Error,
        },
        retry_after: Some(Duration::from_secs(3600)),
    }
}

fn completed() -> Outcome {
    Outcome::Completed { result: json!(1) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_racing_producers_make_exactly_one_task() {
    let (_dir, engine) = common::engine();
    let mut events = engine.events().subscribe();
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let producers: Vec<_> = (0..64)
        .map(|_| {
            let (engine, start) = (engine.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                submit(&engine, "race").await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for producer in producers {
        answers.push(producer.await.unwrap());
    }
    let created: Vec<&Queued> = answers.iter().filter(|q| !q.duplicate).collect();
    assert_eq!(created.len(), 1, "exactly one producer should have queued");
    let winner = created[0].id;
    assert_eq!(
        answers
            .iter()
            .filter(|q| q.duplicate && q.id == winner)
            .count(),
        63,
        "63 duplicate answers naming the winner"
    );
    let stored = with_key(&engine, "race").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(engine.stats().await.unwrap().total(), 1);
    // One task.queued event, the winner's.
    let queued = common::task_event(&mut events, "task.queued", winner).await;
    assert_eq!(queued.task.unique_key.as_deref(), Some("race"));
    let more = events.recv_timeout(Duration::from_millis(200)).await;
    assert!(
        more.is_none_or(|event| event.name() != "task.queued"),
        "a duplicate emitted task.queued"
    );
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn each_unfinished_state_holds_the_key_and_finishing_frees_it() {
    let (_dir, engine) = common::engine();

    // PENDING.
    let pending = queue_new(&engine, "state").await;
    assert_eq!(record(&engine, pending).await.status, TaskStatus::Pending);
    assert_duplicate(&engine, "state", pending).await;

    // RUNNING.
    let running = claim(&engine).await;
    assert_eq!(running.id, pending);
    assert_duplicate(&engine, "state", pending).await;

    // RETRYING (its retry is an hour away).
    assert_eq!(
        settle(&engine, &running, failed()).await,
        TaskStatus::Retrying
    );
    assert_duplicate(&engine, "state", pending).await;

    assert_eq!(record(&engine, pending).await.status, TaskStatus::Retrying);

    // Scheduled: a task delayed by an hour holds its key too.
    let scheduled = keyed(&engine, "scheduled")
        .delay(Duration::from_secs(3600))
        .submit()
        .await
        .unwrap();
    assert!(!scheduled.duplicate);
    assert_duplicate(&engine, "scheduled", scheduled.id).await;

    // Each finished status frees its key: COMPLETED, FAILED, CANCELLED.
    let done = queue_new(&engine, "completed").await;
    let task = claim_id(&engine, done).await;
    assert_eq!(
        settle(&engine, &task, completed()).await,
        TaskStatus::Completed
    );
    let next = queue_new(&engine, "completed").await;
    assert_ne!(next, done);

    let doomed = keyed(&engine, "failed")
        .max_retries(0)
        .send()
        .await
        .unwrap();
    let task = claim_id(&engine, doomed).await;
    assert_eq!(settle(&engine, &task, failed()).await, TaskStatus::Failed);
    assert_ne!(queue_new(&engine, "failed").await, doomed);

    engine.cancel(scheduled.id).await.unwrap();
    assert_ne!(queue_new(&engine, "scheduled").await, scheduled.id);

    // The first task's key stays held while it is RETRYING.
    assert_duplicate(&engine, "state", pending).await;
    assert_eq!(with_key(&engine, "completed").await.len(), 2);
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

/// Claims due tasks of queue `unique` until `id` is among them, settling the others back.
async fn claim_id(engine: &Engine, id: TaskId) -> TaskRecord {
    loop {
        let task = claim(engine).await;
        if task.id == id {
            return task;
        }
        settle(engine, &task, Outcome::Released).await;
    }
}

#[tokio::test]
async fn unique_for_holds_a_finished_tasks_key_until_the_period_ends() {
    let (_dir, engine, clock) = common::manual_engine();
    let first = keyed(&engine, "daily-report")
        .unique_for(Duration::from_secs(3600))
        .submit()
        .await
        .unwrap();
    assert!(!first.duplicate);
    let stored = record(&engine, first.id).await;
    assert_eq!(stored.unique_key.as_deref(), Some("daily-report"));
    assert_eq!(stored.unique_for, Some(Duration::from_secs(3600)));
    let task = claim(&engine).await;
    assert_eq!(
        settle(&engine, &task, completed()).await,
        TaskStatus::Completed
    );

    // Finished, and still within the hour: a duplicate.
    clock.advance(Duration::from_secs(3599));
    assert_duplicate(&engine, "daily-report", first.id).await;
    // At the end of the period the key is free.
    clock.advance(Duration::from_secs(1));
    let second = queue_new(&engine, "daily-report").await;
    assert_ne!(second, first.id);
    // The second task, queued without a period, holds the key until it finishes.
    assert_duplicate(&engine, "daily-report", second).await;
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn retention_cleanup_frees_the_keys_of_the_tasks_it_deletes() {
    let (_dir, engine, clock) = common::manual_engine();
    let first = keyed(&engine, "kept")
        .unique_for(Duration::from_secs(30 * 86_400))
        .send()
        .await
        .unwrap();
    let task = claim(&engine).await;
    settle(&engine, &task, completed()).await;
    clock.advance(Duration::from_secs(2 * 86_400));
    assert_duplicate(&engine, "kept", first).await;
    // Retention (a day for COMPLETED) deletes the task before its period ends: its key goes
    // with it, rather than pointing at a task nobody can see.
    let report = engine.cleanup().await.unwrap();
    assert_eq!(report.completed, 1);
    assert!(engine.task(first).await.unwrap().is_none());
    assert_ne!(queue_new(&engine, "kept").await, first);
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
}

#[tokio::test]
async fn duplicates_inside_one_batch_are_answered_as_duplicates() {
    let (_dir, engine) = common::engine();
    let held = queue_new(&engine, "held").await;
    let task = |key: &str| keyed(&engine, key);
    let answers = engine
        .submit_batch([
            task("a"),
            task("b"),
            task("a"),
            task("held"),
            engine.queue_task_named(NAME, &json!({})).queue("unique"),
            task("b"),
        ])
        .await
        .unwrap();
    let flags: Vec<bool> = answers.iter().map(|q| q.duplicate).collect();
    assert_eq!(flags, [false, false, true, true, false, true]);
    assert_eq!(answers[2].id, answers[0].id);
    assert_eq!(answers[3].id, held);
    assert_eq!(answers[5].id, answers[1].id);
    // held + a + b + the plain task.
    assert_eq!(engine.stats().await.unwrap().total(), 4);
    // The plain batch API answers the holders' ids in the duplicates' places.
    let ids = engine.queue_batch([task("a"), task("c")]).await.unwrap();
    assert_eq!(ids[0], answers[0].id);
    assert_eq!(engine.stats().await.unwrap().total(), 5);
}

#[tokio::test]
async fn a_key_derived_from_the_arguments_ignores_their_order() {
    let (_dir, engine) = common::engine();
    let by_args = |payload: serde_json::Value| {
        engine
            .queue_task_named(NAME, &payload)
            .queue("unique")
            .unique_by_arguments()
    };
    let first = by_args(json!({"kwargs": {"user": 7, "kind": "welcome"}}))
        .submit()
        .await
        .unwrap();
    let same = by_args(json!({"kwargs": {"kind": "welcome", "user": 7}}))
        .submit()
        .await
        .unwrap();
    let other = by_args(json!({"kwargs": {"kind": "welcome", "user": 8}}))
        .submit()
        .await
        .unwrap();
    assert!(!first.duplicate && same.duplicate && !other.duplicate);
    assert_eq!(same.id, first.id);
    assert_eq!(
        record(&engine, first.id).await.unique_key.as_deref(),
        Some(r#"test.unique:{"args":[],"kwargs":{"kind":"welcome","user":7}}"#)
    );
}

#[tokio::test]
async fn bad_unique_keys_and_periods_are_refused_with_the_field_and_reason() {
    let (_dir, engine) = common::engine();
    let refused = |result: fq::Result<Queued>, field: &str, reason: &str| match result {
        Err(fq::Error::InvalidInput {
            field: got,
            message,
        }) => {
            assert_eq!(got, field);
            assert!(message.contains(reason), "{message}");
        }
        other => panic!("expected {field} to be refused, got {other:?}"),
    };
    let task = || engine.queue_task_named(NAME, &json!({}));
    refused(
        task().unique("").submit().await,
        "unique_key",
        "must not be empty",
    );
    refused(
        task().unique("k".repeat(1025)).submit().await,
        "unique_key",
        "at most 1024 bytes",
    );
    refused(
        task().unique("a\u{7}b").submit().await,
        "unique_key",
        "control character",
    );
    refused(
        task().unique("k").unique_for(Duration::ZERO).submit().await,
        "unique_for",
        "greater than zero",
    );
    refused(
        task()
            .unique("k")
            .unique_for(Duration::from_secs(366 * 86_400))
            .submit()
            .await,
        "unique_for",
        "at most 365 days",
    );
    refused(
        task().unique_for(Duration::from_secs(60)).submit().await,
        "unique_for",
        "needs a unique key",
    );
    let long = json!({"kwargs": {"text": "x".repeat(2000)}});
    refused(
        engine
            .queue_task_named(NAME, &long)
            .unique_by_arguments()
            .submit()
            .await,
        "unique_key",
        "at most 1024 bytes",
    );
    assert_eq!(engine.stats().await.unwrap().total(), 0);
}

#[tokio::test]
async fn keys_work_the_same_through_the_control_socket() {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let first = submit(&remote, "remote").await;
    assert!(!first.duplicate);
    // Held for the embedded engine and the remote one alike.
    assert_duplicate(&engine, "remote", first.id).await;
    assert_duplicate(&remote, "remote", first.id).await;
    let stored = record(&remote, first.id).await;
    assert_eq!(stored.unique_key.as_deref(), Some("remote"));
    // A batch over the socket marks its duplicates.
    let task = |key: &str| keyed(&remote, key).unique_for(Duration::from_secs(60));
    let answers = remote
        .submit_batch([task("x"), task("x"), task("remote")])
        .await
        .unwrap();
    let flags: Vec<bool> = answers.iter().map(|q| q.duplicate).collect();
    assert_eq!(flags, [false, true, true]);
    assert_eq!(answers[2].id, first.id);
    assert_eq!(
        record(&remote, answers[0].id).await.unique_for,
        Some(Duration::from_secs(60))
    );
    // Listing by key over the socket.
    assert_eq!(with_key(&remote, "x").await.len(), 1);
    // Bad input is refused by the server with the field.
    let refused = remote
        .queue_task_named(NAME, &json!({}))
        .unique("")
        .submit()
        .await;
    assert!(
        matches!(&refused, Err(fq::Error::InvalidInput { field, .. }) if *field == "unique_key"),
        "{refused:?}"
    );
}

const CHILD_ENV: &str = "FQ_UNIQUE_CHILD";

/// The child of `keys_survive_a_kill_and_reopen`: leaves a PENDING, a RUNNING and a COMPLETED
/// task with keys, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // only meaningful as the child of `keys_survive_a_kill_and_reopen`
    };
    let dir = PathBuf::from(dir);
    let engine = Engine::open(dir.join("fq.redb")).unwrap();
    let done = queue_new(&engine, "completed").await;
    let task = claim(&engine).await;
    assert_eq!(task.id, done);
    settle(&engine, &task, completed()).await;
    let running = queue_new(&engine, "running").await;
    assert_eq!(claim(&engine).await.id, running);
    let pending = queue_new(&engine, "pending").await;
    let ids = format!("{done} {running} {pending}");
    std::fs::write(dir.join("ids.tmp"), ids).unwrap();
    std::fs::rename(dir.join("ids.tmp"), dir.join("ids")).unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn keys_survive_a_kill_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::child::spawn_logged(
        {
            let mut command = common::child::rerun("unique::child_process");
            command.env(CHILD_ENV, dir.path());
            command
        },
        dir.path(),
        "unique-child",
    );
    let ids_file = dir.path().join("ids");
    common::eventually(
        "the child's tasks",
        PATIENCE,
        Duration::from_millis(20),
        || {
            let ready = ids_file.exists();
            async move { ready }
        },
    )
    .await;
    child.kill();
    let ids: Vec<TaskId> = std::fs::read_to_string(&ids_file)
        .unwrap()
        .split(' ')
        .map(|id| id.parse().unwrap())
        .collect();
    let [done, running, pending] = ids[..] else {
        panic!("three ids");
    };

    let engine = Engine::open(dir.path().join("fq.redb")).unwrap();
    // The orphaned run is RETRYING after recovery, and still holds its key.
    assert_eq!(record(&engine, running).await.status, TaskStatus::Retrying);
    assert_duplicate(&engine, "running", running).await;
    assert_duplicate(&engine, "pending", pending).await;
    // The completed task's key was freed by the commit that completed it.
    assert_ne!(queue_new(&engine, "completed").await, done);
    assert!(engine.check_integrity().await.unwrap().problems.is_empty());
    drop(engine);

    // And after a clean reopen, the same.
    let engine = Engine::open(dir.path().join("fq.redb")).unwrap();
    assert_duplicate(&engine, "pending", pending).await;
    assert_eq!(with_key(&engine, "completed").await.len(), 2);
}

/// `fq enqueue --unique-key KEY [--unique-for 1h]`, `fq show`, `fq list --unique-key`, on a
/// store no engine serves.
#[cfg(feature = "cli")]
#[test]
fn the_cli_queues_shows_and_lists_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fq.redb");
    let fq = |args: &[&str]| {
        let output = common::child::fq()
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let errors = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), text, errors)
    };
    let queue = [
        "enqueue",
        NAME,
        "--unique-key",
        "cli:k",
        "--unique-for",
        "1h",
        "--json",
    ];
    let (code, first, errors) = fq(&queue);
    assert_eq!(code, Some(0), "{errors}");
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["unique_key"], "cli:k");
    assert_eq!(first["unique_for_ms"], 3_600_000);
    assert!(first.get("duplicate").is_none(), "{first}");
    let (code, again, errors) = fq(&queue);
    assert_eq!(code, Some(0), "{errors}");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&first["id"], &json!(true))
    );
    let (code, text, _) = fq(&["enqueue", NAME, "--unique-key", "cli:k"]);
    assert_eq!(code, Some(0));
    assert!(text.starts_with("duplicate: "), "{text}");

    let id = first["id"].as_str().unwrap();
    let (code, shown, _) = fq(&["show", id]);
    assert_eq!(code, Some(0));
    assert!(shown.contains(r#"unique_key   "cli:k""#), "{shown}");
    let (code, listed, _) = fq(&["list", "--unique-key", "cli:k", "--json"]);
    assert_eq!(code, Some(0));
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 1);
    let (_, other, _) = fq(&["list", "--unique-key", "cli:other", "--json"]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&other)
            .unwrap()
            .len(),
        0
    );

    // Bad input is a usage error (exit 2) naming the field.
    let (code, _, errors) = fq(&["enqueue", NAME, "--unique-key", ""]);
    assert_eq!(code, Some(2), "{errors}");
    assert!(errors.contains("unique_key"), "{errors}");
    let (code, _, errors) = fq(&["enqueue", NAME, "--unique-for", "1h"]);
    assert_eq!(code, Some(2), "{errors}");
    assert!(errors.contains("--unique-key"), "{errors}");
}
