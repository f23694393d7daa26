//! Tasks run highest priority first, FIFO among equals, across the queues a worker serves
//! (the order itself on `fq::testing`'s test engine, which claims as one worker slot does).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::{Arc, Mutex};

use fq::testing::TestEngine;
use fq::{Registry, TaskError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct Label {
    label: String,
}

fn recording_registry(order: &Arc<Mutex<Vec<String>>>) -> Registry {
    let mut registry = Registry::new();
    let order = Arc::clone(order);
    registry.register_fn("test.record", move |args: Label| -> Result<(), TaskError> {
        order.lock().unwrap().push(args.label);
        Ok(())
    });
    registry
}

#[tokio::test]
async fn six_tasks_run_in_priority_then_fifo_order() -> fq::Result<()> {
    let order = Arc::new(Mutex::new(Vec::new()));
    let test = TestEngine::with_registry(recording_registry(&order))?;
    for (label, priority) in [
        ("5a", 5),
        ("5b", 5),
        ("1", 1),
        ("0a", 0),
        ("0b", 0),
        ("-1", -1),
    ] {
        test.queue_task_named("test.record", &json!({"kwargs": {"label": label}}))
            .priority(priority)
            .send()
            .await?;
    }
    assert_eq!(test.drain().await?.completed, 6);
    assert_eq!(*order.lock().unwrap(), ["5a", "5b", "1", "0a", "0b", "-1"]);
    Ok(())
}

#[tokio::test]
async fn a_high_priority_task_in_the_second_queue_runs_before_the_first_queues_tasks()
-> fq::Result<()> {
    let order = Arc::new(Mutex::new(Vec::new()));
    let test = TestEngine::with_registry(recording_registry(&order))?;
    for label in ["first-1", "first-2", "first-3"] {
        test.queue_task_named("test.record", &json!({"kwargs": {"label": label}}))
            .queue("first")
            .send()
            .await?;
    }
    test.queue_task_named(
        "test.record",
        &json!({"kwargs": {"label": "second-urgent"}}),
    )
    .queue("second")
    .priority(10)
    .send()
    .await?;
    assert_eq!(test.drain().await?.completed, 4);
    assert_eq!(
        *order.lock().unwrap(),
        ["second-urgent", "first-1", "first-2", "first-3"]
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_ignores_queues_it_does_not_serve() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let other = engine
        .queue_task_named("test.record", &json!({"kwargs": {"label": "other"}}))
        .queue("other")
        .priority(100)
        .send()
        .await?;
    engine
        .queue_task_named("test.record", &json!({"kwargs": {"label": "mine"}}))
        .send()
        .await?;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut events = engine.events().subscribe();
    let worker = common::start_worker(&engine, recording_registry(&order), &["default"], 2);
    common::collect_events(&mut events, "worker.task.after_execution", 1).await;
    worker.stop().await;
    assert_eq!(*order.lock().unwrap(), ["mine"]);
    assert_eq!(
        engine.task(other).await?.unwrap().status,
        fq::TaskStatus::Pending
    );
    Ok(())
}
