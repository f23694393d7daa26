//! Quick start: Framefox's first page, in Rust.
//!
//! Defines `send_email` (an async task on queue "emails") and `process_payment` (a plain
//! synchronous function on queue "high_priority", priority 10), queues a few of each, runs a
//! [`WorkerManager`] on both queues, prints every lifecycle event as it happens, then prints
//! each task's final record and stops the worker.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! The store lives in a temporary directory, so every run starts empty; the program ends by
//! itself in well under a second once every task is done.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fq::{
    Engine, Event, EventKind, Registry, Task, TaskContext, TaskError, TaskId, TaskSettings,
    WorkerManager,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `@AsyncTask(queue="emails", max_retries=3) async def send_email(to, subject, body)`: the
/// struct's fields are the task's keyword arguments, the constants are the decorator's options.
#[derive(Debug, Serialize, Deserialize)]
struct SendEmail {
    to: String,
    subject: String,
    body: String,
}

impl Task for SendEmail {
    const NAME: &'static str = "myapp.tasks.send_email";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("emails").max_retries(3);
    type Output = Value;

    async fn run(self, _ctx: TaskContext) -> Result<Value, TaskError> {
        println!("           sending email to {}: {}", self.to, self.subject);
        // Stands in for `await email_service.send(to, subject, body)`.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(json!({"status": "sent", "recipient": self.to, "bytes": self.body.len()}))
    }
}

/// `@AsyncTask(queue="high_priority", priority=10) def process_payment(order_id, amount)`: a
/// synchronous function, registered with `register_fn`; workers run it on tokio's blocking
/// pool, so it may block.
const PROCESS_PAYMENT: &str = "myapp.tasks.process_payment";

#[derive(Debug, Deserialize)]
struct ProcessPayment {
    order_id: String,
    amount: f64,
}

#[allow(clippy::needless_pass_by_value)] // handlers take their arguments by value
fn process_payment(args: ProcessPayment) -> Result<Value, TaskError> {
    println!(
        "           processing payment for order {}: ${:.2}",
        args.order_id, args.amount
    );
    std::thread::sleep(Duration::from_millis(50)); // blocking payment-gateway call
    Ok(json!({"status": "completed", "order_id": args.order_id}))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;
    let started = Utc::now();

    // Print every event as it happens, from a task of its own; it ends after the last task
    // finishes (a success, or a failure with no retries left).
    let mut events = engine.events().subscribe();
    let n_tasks = 4;
    let monitor = tokio::spawn(async move {
        let mut finished = 0;
        while finished < n_tasks {
            let Some(event) = events.recv().await else {
                break;
            };
            print_event(started, &event);
            if matches!(event.kind, EventKind::AfterExecution | EventKind::Failed) {
                finished += 1;
            }
        }
        finished
    });

    // Queue with `.delay()`, Framefox's shortcut: the task's own defaults (queue "emails").
    let mut ids: Vec<TaskId> = Vec::new();
    let id = SendEmail {
        to: "user@example.com".into(),
        subject: "Welcome!".into(),
        body: "Thanks for signing up!".into(),
    }
    .delay(&engine)
    .await?;
    println!("Task queued: {id}");
    ids.push(id);

    // Or through the engine, Framefox's `TaskManager.queue_task`, overriding options.
    let id = engine
        .queue_task(SendEmail {
            to: "ops@example.com".into(),
            subject: "Daily digest".into(),
            body: "3 new sign-ups".into(),
        })
        .priority(5)
        .send()
        .await?;
    println!("Task queued: {id}");
    ids.push(id);

    // A task this program runs through a plain function is queued by name, with its
    // keyword arguments as JSON.
    for (order_id, amount) in [("A-1001", 49.90), ("A-1002", 120.00)] {
        let id = engine
            .queue_task_named(
                PROCESS_PAYMENT,
                &json!({"kwargs": {"order_id": order_id, "amount": amount}}),
            )
            .queue("high_priority")
            .priority(10)
            .send()
            .await?;
        println!("Task queued: {id}");
        ids.push(id);
    }

    // The worker: both queues, two tasks at a time. Payments (priority 10) go first.
    let mut registry = Registry::new();
    registry
        .register::<SendEmail>()
        .register_fn(PROCESS_PAYMENT, process_payment);
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker
        .set_queues(["high_priority", "emails"])
        .set_concurrent_tasks(2);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    let finished = tokio::time::timeout(Duration::from_secs(10), monitor).await??;
    stop.shutdown();
    let report = running.await??;
    println!(
        "\nworker stopped: {} completed, {} retried, {} failed ({finished} of {n_tasks} tasks seen finishing)",
        report.completed, report.retried, report.failed
    );

    println!("\nFinal records:");
    for id in ids {
        let Some(record) = engine.task(id).await? else {
            return Err(format!("task {id} is missing from the store").into());
        };
        let outcome = match (&record.result, &record.error) {
            (Some(result), _) => result.to_string(),
            (None, Some(error)) => error.to_string(),
            (None, None) => "-".to_owned(),
        };
        println!(
            "  {id}  {:<28} {:<13} priority {:>2}  {:<9} after {} attempt(s)  {outcome}",
            record.name,
            record.queue,
            record.priority,
            record.status.as_str(), // `Display` ignores widths; `as_str` pads
            record.attempts
        );
    }
    Ok(())
}

/// One line per event: time since start, event name, task, and what the event adds.
fn print_event(started: DateTime<Utc>, event: &Event) {
    let task = &event.task;
    let detail = match event.kind {
        EventKind::Queued => format!("queue {} priority {}", task.queue, task.priority),
        EventKind::BeforeExecution => format!("attempt {}", task.attempts),
        EventKind::AfterExecution => format!(
            "result {}",
            event.result.as_ref().map_or(Value::Null, Clone::clone)
        ),
        EventKind::Retrying => format!("retry at {:?}", event.retry_at),
        _ => event
            .error
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
    };
    println!(
        "[+{:>4} ms] {:<29} {} {:<28} {detail}",
        (event.at - started).num_milliseconds(),
        event.name(),
        short(task.id),
        task.name,
    );
}

/// The id's last 8 hex digits: the random part of a UUID v7, distinct enough for a demo.
fn short(id: TaskId) -> String {
    let text = id.to_string();
    text[text.len() - 8..].to_owned()
}
