//! Schedules, unique keys and a paused queue together (README "Recurring schedules", "Unique
//! tasks", "Pausing a queue"):
//!
//! 1. a schedule queues `demo.heartbeat` every second;
//! 2. the `emails` queue is paused, and a welcome e-mail is queued three times with one unique
//!    key: one task, two duplicates that name it;
//! 3. a worker serves both queues: heartbeats run, the e-mail waits in its paused queue;
//! 4. the queue is resumed: the e-mail runs, `wait` returns its record, and its key is free
//!    again, so queuing it once more makes a new task.
//!
//! Run it with `cargo run --example queue_controls`; it ends by itself after about three
//! seconds, on a store in a temporary directory.

use std::time::Duration;

use fq::{Engine, Registry, Schedule, TaskContext, TaskError, TaskStatus, WorkerManager};
use serde_json::{Value, json};

const HEARTBEAT: &str = "demo.heartbeat";
const WELCOME: &str = "demo.welcome_email";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;

    let heartbeat = engine.queue_task_named(HEARTBEAT, &json!({}));
    let declared = engine
        .schedule(
            Schedule::every("heartbeat", Duration::from_secs(1)),
            heartbeat,
        )
        .await?;
    println!(
        "schedule {:?} ({}): next fire {:?}",
        declared.name, declared.spec, declared.next_fire
    );

    engine.pause_queue("emails").await?;
    let welcome = || {
        engine
            .queue_task_named(WELCOME, &json!({"kwargs": {"to": "ada@example.com"}}))
            .queue("emails")
            .unique("welcome:ada@example.com")
    };
    let first = welcome().submit().await?;
    println!("queued the welcome e-mail: {}", first.id);
    for _ in 0..2 {
        let again = welcome().submit().await?;
        println!(
            "queued it again: duplicate = {}, the task holding the key is {}",
            again.duplicate, again.id
        );
    }

    let mut registry = Registry::new();
    registry
        .register_async(HEARTBEAT, |_: Value, ctx: TaskContext| async move {
            println!("  heartbeat {} ran", ctx.id());
            Ok::<_, TaskError>(Value::Null)
        })
        .register_async(WELCOME, |args: Value, _ctx: TaskContext| async move {
            println!("  sending the welcome e-mail to {}", args["to"]);
            Ok::<_, TaskError>(json!({"sent": true}))
        });
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker
        .set_queues(["default", "emails"])
        .set_polling_interval(Duration::from_millis(100));
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let stats = engine.stats().await?;
    if let Some(emails) = stats.queues.get("emails") {
        println!(
            "after 2.2 s: emails paused = {}, pending = {} (held, not failed)",
            emails.paused, emails.pending
        );
    }

    engine.resume_queue("emails").await?;
    let record = engine.wait(first.id, Duration::from_secs(10)).await?;
    println!(
        "after resuming: the e-mail is {} with {:?}",
        record.status,
        record.result.as_ref().map(Value::to_string)
    );
    let after = welcome().submit().await?;
    println!(
        "queued once more after it finished: duplicate = {} (a new task, {})",
        after.duplicate, after.id
    );
    engine.wait(after.id, Duration::from_secs(10)).await?;

    stop.shutdown();
    let report = running.await??;
    let heartbeats = engine
        .schedules()
        .await?
        .into_iter()
        .find(|schedule| schedule.name == "heartbeat");
    println!(
        "worker stopped: {} completed; last heartbeat fire {:?}",
        report.completed,
        heartbeats.and_then(|schedule| schedule.last_fire)
    );
    if record.status != TaskStatus::Completed {
        return Err(format!("the welcome e-mail ended {}", record.status).into());
    }
    Ok(())
}
