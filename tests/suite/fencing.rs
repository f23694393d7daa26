//! A claimed attempt is fenced by its attempt number: a completion or failure reported under a
//! stale number is rejected, so a zombie worker cannot overwrite a newer attempt.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{Error, FailureKind, Outcome, Settlement, TaskStatus};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn queues() -> Vec<Arc<str>> {
    vec![Arc::from("default")]
}

#[tokio::test]
async fn a_completion_with_a_stale_attempt_is_rejected() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let broker = engine.broker();
    let id = engine
        .queue_task_named("test.any", &json!({}))
        .send()
        .await?;
    let never = CancellationToken::new();
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues(),
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].status, TaskStatus::Running);

    let wrong = Settlement {
        id,
        attempt: 2,
        outcome: Outcome::Completed {
            result: json!("zombie"),
        },
    };
    let err = broker.settle(wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleAttempt {
                attempt: 2,
                current: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(engine.task(id).await?.unwrap().status, TaskStatus::Running);

    let right = Settlement {
        id,
        attempt: 1,
        outcome: Outcome::Completed {
            result: json!("ok"),
        },
    };
    assert_eq!(broker.settle(right).await?.status, TaskStatus::Completed);

    let again = Settlement {
        id,
        attempt: 1,
        outcome: Outcome::Completed {
            result: json!("twice"),
        },
    };
    let err = broker.settle(again).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleAttempt {
                status: TaskStatus::Completed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(engine.task(id).await?.unwrap().result, Some(json!("ok")));
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_retries_the_task_and_fences_out_its_old_worker() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let clock = fq::ManualClock::new(chrono::Utc::now());
    let engine = fq::Engine::builder(dir.path().join("fq.redb"))
        .clock(clock.clone())
        .lease_duration(Duration::from_secs(30))
        .open()?;
    let broker = engine.broker();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.any", &json!({}))
        .send()
        .await?;
    let never = CancellationToken::new();
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues(),
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!(claimed[0].attempts, 1);

    // A heartbeat keeps the lease alive past its first deadline.
    clock.advance(Duration::from_secs(20));
    broker.heartbeat(id, 1).await?;
    clock.advance(Duration::from_secs(20));
    assert_eq!(engine.task(id).await?.unwrap().status, TaskStatus::Running);

    // Silence past the deadline: the attempt is presumed dead and the task retried.
    clock.advance(Duration::from_secs(31));
    let retrying = common::task_event(&mut events, "task.retrying", id).await;
    assert_eq!(
        retrying.error.as_ref().unwrap().kind,
        FailureKind::WorkerLost
    );
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Retrying);
    assert_eq!(record.attempts, 1);

    let late = Settlement {
        id,
        attempt: 1,
        outcome: Outcome::Completed {
            result: json!("late"),
        },
    };
    assert!(matches!(
        broker.settle(late).await,
        Err(Error::StaleAttempt { .. })
    ));
    assert!(matches!(
        broker.heartbeat(id, 1).await,
        Err(Error::StaleAttempt { .. })
    ));

    // The retry is claimed under attempt 2, and only attempt 2 may settle it.
    clock.advance(Duration::from_secs(3600));
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues(),
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!(claimed[0].attempts, 2);
    let stale = Settlement {
        id,
        attempt: 1,
        outcome: Outcome::Completed {
            result: json!("late"),
        },
    };
    assert!(matches!(
        broker.settle(stale).await,
        Err(Error::StaleAttempt { .. })
    ));
    let fresh = Settlement {
        id,
        attempt: 2,
        outcome: Outcome::Completed {
            result: json!("fresh"),
        },
    };
    broker.settle(fresh).await?;
    assert_eq!(engine.task(id).await?.unwrap().result, Some(json!("fresh")));
    Ok(())
}

#[tokio::test]
async fn a_task_id_already_in_use_is_refused_without_overwriting() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let broker = engine.broker();
    let first = engine
        .queue_task_named("test.any", &json!({"kwargs": {"n": 1}}))
        .build()?;
    let id = first.id();
    broker.enqueue(vec![first.clone()]).await?;
    let err = broker.enqueue(vec![first.clone()]).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "id", .. }),
        "{err}"
    );
    let other = engine.queue_task_named("test.any", &json!({})).build()?;
    let err = broker
        .enqueue(vec![other.clone(), other])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "id", .. }),
        "{err}"
    );
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.payload.to_value()["kwargs"]["n"], 1);
    assert_eq!(engine.stats().await?.total(), 1);
    Ok(())
}

/// DESIGN §2: expired leases are swept as recovery at open does, RETRYING at once with the
/// attempt counted. They used to wait out the retry backoff (`retry_delay`, 5 s by default), so
/// the orphans of a dead remote worker sat idle for seconds after their lease ran out.
#[tokio::test]
async fn regression_an_expired_lease_waited_out_the_retry_backoff() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let clock = fq::ManualClock::new(chrono::Utc::now());
    let engine = fq::Engine::builder(dir.path().join("fq.redb"))
        .clock(clock.clone())
        .lease_duration(Duration::from_secs(30))
        .control(false)
        .open()?;
    let broker = engine.broker();
    let mut events = engine.events().subscribe();
    let id = engine
        .queue_task_named("test.any", &json!({}))
        .send()
        .await?;
    let never = CancellationToken::new();
    let claimed = broker
        .claim(fq::ClaimRequest::new(
            &queues(),
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!(claimed[0].attempts, 1);
    clock.advance(Duration::from_secs(31));
    common::task_event(&mut events, "task.retrying", id).await;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Retrying);
    assert_eq!(record.error.unwrap().kind, FailureKind::WorkerLost);
    assert!(record.due_at <= clock.now(), "it waits out a backoff");
    // Claimable at once, without the clock moving on.
    let again = broker
        .claim(fq::ClaimRequest::new(
            &queues(),
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!((again[0].id, again[0].attempts), (id, 2));
    Ok(())
}
