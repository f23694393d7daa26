//! Inspection and operation: stats from the counts table, listing with filters and pages,
//! retrying failed tasks, purging a queue. Each changes exactly what it says.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{
    Engine, Error, FailureKind, ListQuery, Outcome, Settlement, TaskFailure, TaskId, TaskStatus,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn claim_and_settle(engine: &Engine, queue: &str, outcome: Outcome) -> fq::Result<TaskId> {
    let broker = engine.broker();
    let queues: Vec<Arc<str>> = vec![Arc::from(queue)];
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues,
            1,
            Duration::from_secs(5),
            &CancellationToken::new(),
        ))
        .await?;
    let task = &claimed[0];
    broker
        .settle(Settlement {
            id: task.id,
            attempt: task.attempts,
            outcome,
        })
        .await?;
    Ok(task.id)
}

fn fail() -> Outcome {
    Outcome::Failed {
        failure: TaskFailure {
            message: "bad".into(),
            kind: FailureKind::Permanent,
        },
        retry_after: None,
    }
}

/// Queue "a": 2 completed, 2 failed, 1 cancelled, 1 ready, 1 scheduled; queue "b": 1 failed, 1 ready.
async fn populate(engine: &Engine) -> fq::Result<()> {
    for _ in 0..5 {
        engine
            .queue_task_named("t", &json!({}))
            .queue("a")
            .send()
            .await?;
    }
    claim_and_settle(engine, "a", Outcome::Completed { result: json!(1) }).await?;
    claim_and_settle(engine, "a", Outcome::Completed { result: json!(2) }).await?;
    claim_and_settle(engine, "a", fail()).await?;
    claim_and_settle(engine, "a", fail()).await?;
    let cancelled = engine
        .queue_task_named("t", &json!({}))
        .queue("a")
        .delay(60u64)
        .send()
        .await?;
    engine.cancel(cancelled).await?;
    engine
        .queue_task_named("t", &json!({}))
        .queue("a")
        .delay(3600u64)
        .send()
        .await?;
    engine
        .queue_task_named("t", &json!({}))
        .queue("b")
        .send()
        .await?;
    claim_and_settle(engine, "b", fail()).await?;
    engine
        .queue_task_named("t", &json!({}))
        .queue("b")
        .send()
        .await?;
    Ok(())
}

#[tokio::test]
async fn stats_count_every_status_exactly_and_survive_a_reopen() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    populate(&engine).await?;
    let check = |stats: &fq::Stats| {
        let a = stats.queues["a"];
        assert_eq!(
            (
                a.ready,
                a.scheduled,
                a.pending,
                a.running,
                a.retrying,
                a.completed,
                a.failed,
                a.cancelled
            ),
            (1, 1, 2, 0, 0, 2, 2, 1),
            "{a:?}"
        );
        let b = stats.queues["b"];
        assert_eq!((b.ready, b.pending, b.failed), (1, 1, 1), "{b:?}");
        assert_eq!(stats.total(), 9);
    };
    let stats = engine.stats().await?;
    check(&stats);
    assert_eq!(stats.queues["a"].completed_last_minute, 2);
    assert!(stats.queues["a"].oldest_ready_ms.is_some());

    let path = engine.path().to_path_buf();
    drop(engine);
    let engine = Engine::open(&path)?;
    check(&engine.stats().await?);
    Ok(())
}

#[tokio::test]
async fn list_filters_by_queue_and_status_and_pages() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    populate(&engine).await?;
    let failed_a = engine
        .list(ListQuery {
            queue: Some("a".into()),
            status: Some(TaskStatus::Failed),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(failed_a.len(), 2);
    assert!(
        failed_a
            .iter()
            .all(|t| t.queue == "a" && t.status == TaskStatus::Failed)
    );
    let all = engine.list(ListQuery::default()).await?;
    assert_eq!(all.len(), 9);
    assert!(
        all.windows(2).all(|w| w[0].id < w[1].id),
        "not oldest first"
    );
    let first = engine
        .list(ListQuery {
            limit: 4,
            ..ListQuery::default()
        })
        .await?;
    let rest = engine
        .list(ListQuery {
            after: Some(first[3].id),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(first.len() + rest.len(), 9);
    assert_eq!(first[3].id, all[3].id);
    assert_eq!(rest[0].id, all[4].id);
    Ok(())
}

#[tokio::test]
async fn retry_puts_failed_tasks_back_with_a_fresh_budget() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    populate(&engine).await?;
    let failed_b = engine
        .list(ListQuery {
            queue: Some("b".into()),
            status: Some(TaskStatus::Failed),
            ..ListQuery::default()
        })
        .await?;
    let record = engine.retry(failed_b[0].id).await?;
    assert_eq!((record.status, record.attempts), (TaskStatus::Pending, 0));
    assert_eq!(record.error, None);
    assert_eq!(record.finished_at, None);
    let err = engine.retry(failed_b[0].id).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                status: TaskStatus::Pending,
                ..
            }
        ),
        "{err}"
    );

    assert_eq!(engine.retry_failed(Some("a")).await?, 2);
    let stats = engine.stats().await?;
    assert_eq!(
        (
            stats.queues["a"].failed,
            stats.queues["a"].pending,
            stats.queues["a"].ready
        ),
        (0, 4, 3)
    );
    assert_eq!((stats.queues["b"].failed, stats.queues["b"].ready), (0, 2));
    assert_eq!(engine.retry_failed(None).await?, 0);

    // The retried tasks run again.
    let id = claim_and_settle(
        &engine,
        "b",
        Outcome::Completed {
            result: json!("again"),
        },
    )
    .await?;
    assert_eq!(
        engine.task(id).await?.unwrap().status,
        TaskStatus::Completed
    );
    Ok(())
}

#[tokio::test]
async fn purge_deletes_exactly_the_chosen_queue_and_status() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    populate(&engine).await?;
    assert_eq!(engine.purge("a", Some(TaskStatus::Failed)).await?, 2);
    let a = engine.stats().await?.queues["a"];
    assert_eq!(
        (a.failed, a.completed, a.pending, a.cancelled),
        (0, 2, 2, 1)
    );
    assert_eq!(engine.stats().await?.queues["b"].failed, 1);

    assert_eq!(engine.purge("a", None).await?, 5);
    let stats = engine.stats().await?;
    assert!(
        stats.queues.get("a").is_none_or(|a| a.total() == 0),
        "{stats:?}"
    );
    assert_eq!(stats.queues["b"].total(), 2);
    assert!(
        engine
            .list(ListQuery {
                queue: Some("a".into()),
                ..ListQuery::default()
            })
            .await?
            .is_empty()
    );

    // A purged ready task is gone from the heap too: nothing is claimed from "a".
    let broker = engine.broker();
    let none = broker
        .claim(fq::ClaimRequest::new(
            &[Arc::from("a")],
            5,
            Duration::from_millis(50),
            &CancellationToken::new(),
        ))
        .await?;
    assert!(none.is_empty());

    let err = engine
        .purge("b", Some(TaskStatus::Running))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "status",
                ..
            }
        ),
        "{err}"
    );
    let err = engine.purge("bad queue", None).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "queue", .. }),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn purging_many_tasks_spans_several_transactions() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let batch = (0..25_000).map(|n| {
        engine
            .queue_task_named("t", &json!({"kwargs": {"n": n}}))
            .queue("bulk")
    });
    engine.queue_batch(batch).await?;
    assert_eq!(engine.stats().await?.queues["bulk"].ready, 25_000);
    assert_eq!(engine.purge("bulk", None).await?, 25_000);
    assert_eq!(engine.stats().await?.total(), 0);
    Ok(())
}
