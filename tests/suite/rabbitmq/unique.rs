//! Unique tasks in RabbitMQ mode (issue 12 §2, README "Unique tasks"): the producer's store
//! checks keys before a task enters its outbox; a forwarded task holds its key while FORWARDED
//! and until its outcome comes back over the reply queue; the consuming store knows nothing of
//! the key.
#![allow(clippy::unwrap_used)]

use super::*;

async fn submit(engine: &Engine, n: u32, key: &str) -> fq::Queued {
    engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": n}}))
        .unique(key)
        .submit()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_task_holds_its_key_until_its_outcome_comes_back() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("unique").await else {
        return Ok(());
    };
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit.config_in(producer_dir.path(), 2))?;
    producer.ready(PATIENCE).await?;
    let first = submit(&producer, 1, "unique:rabbit").await;
    assert!(!first.duplicate);
    eventually_status(
        &producer,
        first.id,
        TaskStatus::Forwarded,
        "the task to be forwarded",
    )
    .await;
    // FORWARDED: handed to RabbitMQ, its outcome still to come. The key is held.
    let again = submit(&producer, 2, "unique:rabbit").await;
    assert_eq!((again.id, again.duplicate), (first.id, true));

    let worker_engine = rabbit.open(2)?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&rabbit.queue],
        2,
    );
    eventually_status(
        &producer,
        first.id,
        TaskStatus::Completed,
        "the outcome to reach the producer",
    )
    .await;
    // The outcome came back: the key is free, and the next task takes it.
    let next = submit(&producer, 3, "unique:rabbit").await;
    assert!(!next.duplicate);
    eventually_status(&producer, next.id, TaskStatus::Completed, "the next task").await;
    worker.stop().await;
    // One run per queued task: the duplicate was never published.
    let ran: Vec<TaskId> = runs.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert!(ran.contains(&first.id) && ran.contains(&next.id), "{ran:?}");
    assert!(
        !ran.iter().any(|id| *id != first.id && *id != next.id),
        "{ran:?}"
    );
    // The consuming store records the run without the key: keys are the producer's.
    let run_there = worker_engine.task(first.id).await?.unwrap();
    assert_eq!(run_there.unique_key, None);
    assert_eq!(
        producer
            .task(first.id)
            .await?
            .unwrap()
            .unique_key
            .as_deref(),
        Some("unique:rabbit")
    );
    assert!(producer.check_integrity().await?.problems.is_empty());
    Ok(())
}
