//! Recurring schedules in RabbitMQ mode (issue 12 §1, README "Recurring schedules"): a schedule
//! lives in the producer's store, which is the outbox; each fire time's task is committed there
//! with the schedule's advance and forwarded like any other task, runs on a worker of another
//! store, and its outcome comes back to the producer.
#![allow(clippy::unwrap_used)]

use super::*;

use fq::Schedule;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_s_tasks_are_forwarded_run_and_reported() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("schedule").await else {
        return Ok(());
    };
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit.config_in(producer_dir.path(), 2))?;
    producer.ready(PATIENCE).await?;
    let worker_engine = rabbit.open(2)?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&rabbit.queue],
        2,
    );
    let template = producer.queue_task_named("test.work", &json!({"kwargs": {"n": 7}}));
    producer
        .schedule(
            Schedule::every("every-300ms", Duration::from_millis(300)),
            template,
        )
        .await?;
    eventually("three fire times to run on the worker", || async {
        runs.lock().unwrap().len() >= 3
    })
    .await;
    producer.pause_schedule("every-300ms").await?;
    let info = producer
        .schedules()
        .await?
        .into_iter()
        .find(|schedule| schedule.name == "every-300ms")
        .unwrap();
    let last = info.last_task.unwrap();
    eventually_status(
        &producer,
        last,
        TaskStatus::Completed,
        "the last fire time's outcome to reach the producer",
    )
    .await;
    worker.stop().await;
    // Each fire time's task ran once, on the worker of the other store.
    let counts = run_counts(&runs.lock().unwrap());
    assert!(counts.values().all(|runs| *runs == 1), "{counts:?}");
    let record = producer.task(last).await?.unwrap();
    assert_eq!(record.result, Some(json!(7)));
    assert!(
        record.scheduled_at <= record.started_at.unwrap(),
        "{record:?}"
    );
    Ok(())
}
