//! Sync and async handlers, typed tasks, return values, panics, and the lifecycle events with
//! their payloads in order.

use crate::common;

use std::sync::{Arc, Mutex};

use fq::{FailureKind, Registry, Task, TaskContext, TaskError, TaskSettings, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct SendEmail {
    to: String,
    subject: String,
}

impl Task for SendEmail {
    const NAME: &'static str = "myapp.tasks.send_email";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("emails").max_retries(0);
    type Output = serde_json::Value;

    async fn run(self, ctx: TaskContext) -> Result<Self::Output, TaskError> {
        if self.to.is_empty() {
            panic!("no recipient");
        }
        Ok(
            json!({"status": "sent", "recipient": self.to, "subject": self.subject, "attempt": ctx.attempt()}),
        )
    }
}

#[derive(Deserialize)]
struct Payment {
    order_id: String,
    amount: f64,
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register::<SendEmail>();
    registry.register_fn(
        "myapp.tasks.process_payment",
        |p: Payment| -> Result<_, TaskError> {
            // A blocking call is fine here: sync handlers run on the blocking pool.
            std::thread::sleep(std::time::Duration::from_millis(5));
            Ok(json!({"status": "completed", "order_id": p.order_id, "charged": p.amount}))
        },
    );
    registry.register_fn(
        "myapp.tasks.sync_panic",
        |_: serde_json::Value| -> Result<(), TaskError> { panic!("sync handler exploded") },
    );
    registry
}

#[tokio::test]
async fn typed_async_and_sync_tasks_store_their_results() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut events = engine.events().subscribe();
    let email = SendEmail {
        to: "ada@example.com".into(),
        subject: "Welcome!".into(),
    }
    .delay(&engine)
    .await?;
    let payment = engine
        .queue_task_named(
            "myapp.tasks.process_payment",
            &json!({"kwargs": {"order_id": "A-1", "amount": 12.5}}),
        )
        .queue("high_priority")
        .priority(10)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["emails", "high_priority"], 4);
    common::collect_events(&mut events, "worker.task.after_execution", 2).await;
    worker.stop().await;

    let email = engine.task(email).await?.unwrap();
    assert_eq!(email.status, TaskStatus::Completed);
    assert_eq!(email.queue, "emails");
    assert_eq!(
        email.result,
        Some(
            json!({"status": "sent", "recipient": "ada@example.com", "subject": "Welcome!", "attempt": 1})
        )
    );
    let payment = engine.task(payment).await?.unwrap();
    assert_eq!(payment.status, TaskStatus::Completed);
    assert_eq!(
        payment.result,
        Some(json!({"status": "completed", "order_id": "A-1", "charged": 12.5}))
    );
    assert!(payment.started_at.unwrap() <= payment.finished_at.unwrap());
    Ok(())
}

#[tokio::test]
async fn panicking_tasks_fail_and_the_worker_survives() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut events = engine.events().subscribe();
    let async_panic = SendEmail {
        to: String::new(),
        subject: "x".into(),
    }
    .delay(&engine)
    .await?;
    let sync_panic = engine
        .queue_task_named("myapp.tasks.sync_panic", &json!({}))
        .queue("emails")
        .max_retries(0)
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry(), &["emails"], 1);
    common::collect_events(&mut events, "task.failed", 2).await;
    let healthy = SendEmail {
        to: "b@example.com".into(),
        subject: "after".into(),
    }
    .delay(&engine)
    .await?;
    common::task_event(&mut events, "worker.task.after_execution", healthy).await;
    let report = worker.stop().await;
    assert_eq!(report.failed, 2);
    assert_eq!(report.completed, 1);

    for (id, message) in [
        (async_panic, "no recipient"),
        (sync_panic, "sync handler exploded"),
    ] {
        let record = engine.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Failed);
        let error = record.error.unwrap();
        assert_eq!(error.kind, FailureKind::Panic);
        assert_eq!(error.message, message);
    }
    Ok(())
}

#[tokio::test]
async fn events_arrive_in_order_with_their_payloads() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let mut stream = engine.events().subscribe();
    let heard = Arc::new(Mutex::new(Vec::<(String, fq::TaskId)>::new()));
    let sink = Arc::clone(&heard);
    engine.events().add_listener("*", move |event| {
        sink.lock()
            .unwrap()
            .push((event.name().to_owned(), event.task.id));
    })?;
    assert!(
        engine
            .events()
            .add_listener("worker.task.finished", |_| {})
            .is_err()
    );

    let mut registry = registry();
    registry.register_async(
        "test.fail_once",
        |_: serde_json::Value, ctx: TaskContext| async move {
            if ctx.attempt() == 1 {
                return Err(TaskError::new("first try fails"));
            }
            Ok(json!("second try works"))
        },
    );
    let ok = SendEmail {
        to: "c@example.com".into(),
        subject: "s".into(),
    }
    .delay(&engine)
    .await?;
    let worker = common::start_worker(&engine, registry, &["emails", "default"], 1);
    let mut names = Vec::new();
    while names.len() < 4 {
        let event = common::any_event(&mut stream).await;
        names.push(event.name());
        match event.name() {
            "task.queued" => assert_eq!(event.task.status, TaskStatus::Pending),
            "worker.task.before_execution" => assert_eq!(event.task.status, TaskStatus::Running),
            "worker.task.after_execution" => {
                assert_eq!(event.task.status, TaskStatus::Completed);
                assert_eq!(event.result.as_ref().unwrap()["recipient"], "c@example.com");
                assert_eq!(event.task.id, ok);
            }
            _ => {}
        }
        if event.name() == "worker.task.after_execution" {
            break;
        }
    }
    assert_eq!(
        names,
        [
            "task.queued",
            "worker.task.before_execution",
            "worker.task.after_execution"
        ]
    );

    let flaky = engine
        .queue_task_named("test.fail_once", &json!({}))
        .send()
        .await?;
    let mut names = Vec::new();
    loop {
        let event = common::any_event(&mut stream).await;
        assert_eq!(event.task.id, flaky);
        names.push(event.name());
        match event.name() {
            "worker.task.execution_error" => {
                assert_eq!(event.error.as_ref().unwrap().message, "first try fails");
                assert_eq!(event.task.status, TaskStatus::Retrying);
            }
            "task.retrying" => {
                assert!(event.retry_at.unwrap() > event.at);
                clock.advance(std::time::Duration::from_secs(60));
            }
            "worker.task.after_execution" => break,
            _ => {}
        }
    }
    worker.stop().await;
    assert_eq!(
        names,
        [
            "task.queued",
            "worker.task.before_execution",
            "worker.task.execution_error",
            "task.retrying",
            "worker.task.before_execution",
            "worker.task.after_execution"
        ]
    );
    // The listener thread saw the same events, in the same order.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while heard.lock().unwrap().len() < 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener missed events"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let heard: Vec<String> = heard
        .lock()
        .unwrap()
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(
        heard[..3],
        [
            "task.queued",
            "worker.task.before_execution",
            "worker.task.after_execution"
        ]
    );
    assert_eq!(heard[3..].len(), 6);
    Ok(())
}

#[tokio::test]
async fn a_panicking_or_slow_listener_does_not_stall_workers() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    engine
        .events()
        .add_listener("worker.task.before_execution", |_| panic!("listener bug"))?;
    engine
        .events()
        .add_listener("worker.task.after_execution", |_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
        })?;
    let mut stream = engine.events().subscribe();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            SendEmail {
                to: format!("{n}@example.com"),
                subject: "s".into(),
            }
            .delay(&engine)
            .await?,
        );
    }
    let worker = common::start_worker(&engine, registry(), &["emails"], 4);
    common::collect_events(&mut stream, "worker.task.after_execution", 20).await;
    let report = worker.stop().await;
    assert_eq!(report.completed, 20);
    for id in ids {
        assert_eq!(
            engine.task(id).await?.unwrap().status,
            TaskStatus::Completed
        );
    }
    Ok(())
}
