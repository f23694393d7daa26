//! Retries: Framefox's automatic retry on failure, and the two ways a handler can steer it.
//!
//! Four tasks:
//! - `flaky_api_call` fails on its first two attempts (it reads `ctx.attempt()`), then succeeds;
//! - `sync_inventory` always fails (through `?` on an I/O error) and is queued with
//!   `max_retries(2)`: three runs, then FAILED;
//! - `charge_card` returns `TaskError::permanent`: FAILED at once, no retry;
//! - `call_rate_limited_api` answers its first attempt with `TaskError::retry_after(700 ms)`,
//!   which replaces the backoff formula, then succeeds.
//!
//! Backoff doubles from `defaults.retry_delay` (±20% jitter); the engine is opened with a
//! `Config` whose retry delay is 200 ms so the story takes about a second. The program prints
//! the `worker.task.execution_error`, `task.retrying`, `task.failed` and
//! `worker.task.after_execution` events, then each task's final record.
//!
//! Run it with `cargo run --example retries`; it ends by itself in about a second.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fq::{
    Config, Engine, EventKind, Registry, Task, TaskContext, TaskError, TaskId, TaskSettings,
    TaskStatus, WorkerManager,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `@AsyncTask(max_retries=5) async def flaky_api_call(endpoint)`
#[derive(Serialize, Deserialize)]
struct FlakyApiCall {
    endpoint: String,
}

impl Task for FlakyApiCall {
    const NAME: &'static str = "myapp.tasks.flaky_api_call";
    const SETTINGS: TaskSettings = TaskSettings::new().max_retries(5);
    type Output = Value;

    async fn run(self, ctx: TaskContext) -> Result<Value, TaskError> {
        // The first two attempts hit a failing upstream; the third gets through.
        if ctx.attempt() <= 2 {
            return Err(TaskError::new(format!(
                "503 Service Unavailable from {} (attempt {})",
                self.endpoint,
                ctx.attempt()
            )));
        }
        Ok(json!({"endpoint": self.endpoint, "attempts_needed": ctx.attempt()}))
    }
}

/// A task that never succeeds; queued with `max_retries(2)` below.
#[derive(Serialize, Deserialize)]
struct SyncInventory {
    warehouse: String,
}

/// Stands in for a connection to a service that is down.
fn connect_inventory(warehouse: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("inventory service for {warehouse} refused the connection"),
    ))
}

impl Task for SyncInventory {
    const NAME: &'static str = "myapp.tasks.sync_inventory";
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        // Any std error converts into a retryable TaskError, so `?` just works.
        connect_inventory(&self.warehouse)?;
        Ok(())
    }
}

/// A failure that no retry can fix.
#[derive(Serialize, Deserialize)]
struct ChargeCard {
    order_id: String,
}

impl Task for ChargeCard {
    const NAME: &'static str = "myapp.tasks.charge_card";
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Err(TaskError::permanent(format!(
            "card for order {} expired; retrying cannot help",
            self.order_id
        )))
    }
}

/// An upstream that says when to come back (an HTTP 429 with `Retry-After`).
#[derive(Serialize, Deserialize)]
struct CallRateLimitedApi {
    request: String,
}

impl Task for CallRateLimitedApi {
    const NAME: &'static str = "myapp.tasks.call_rate_limited_api";
    type Output = Value;

    async fn run(self, ctx: TaskContext) -> Result<Value, TaskError> {
        if ctx.attempt() == 1 {
            return Err(TaskError::retry_after(
                "429 Too Many Requests, Retry-After: 0.7 s",
                Duration::from_millis(700),
            ));
        }
        Ok(json!({"request": self.request, "status": 200}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // `defaults.retry_delay` is the first retry's delay; each further retry doubles it.
    let mut config = Config::default();
    config.defaults.retry_delay = Duration::from_millis(200);
    let engine = Engine::builder(dir.path().join("var/fq.redb"))
        .config(config)
        .open()?;
    let mut events = engine.events().subscribe();
    let start = Utc::now();

    let ids: Vec<TaskId> = vec![
        FlakyApiCall {
            endpoint: "https://api.example.com/quotes".into(),
        }
        .delay(&engine)
        .await?,
        engine
            .queue_task(SyncInventory {
                warehouse: "north".into(),
            })
            .max_retries(2)
            .send()
            .await?,
        ChargeCard {
            order_id: "A-1001".into(),
        }
        .delay(&engine)
        .await?,
        CallRateLimitedApi {
            request: "GET /v1/rates".into(),
        }
        .delay(&engine)
        .await?,
    ];

    let mut registry = Registry::new();
    registry
        .register::<FlakyApiCall>()
        .register::<SyncInventory>()
        .register::<ChargeCard>()
        .register::<CallRateLimitedApi>();
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker.set_concurrent_tasks(4);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    let mut finished = 0;
    while finished < ids.len() {
        let Some(event) = events.recv_timeout(Duration::from_secs(10)).await else {
            return Err("timed out waiting for the tasks to settle".into());
        };
        let task = &event.task;
        let error = event
            .error
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        let line = match event.kind {
            EventKind::ExecutionError => format!("attempt {} failed: {error}", task.attempts),
            EventKind::Retrying => match event.retry_at {
                Some(at) => format!(
                    "will retry at +{} ms (in {} ms)",
                    millis_since(start, at),
                    (at - event.at).num_milliseconds()
                ),
                None => "will retry".to_owned(),
            },
            EventKind::Failed => {
                finished += 1;
                format!("FAILED for good after {} attempt(s)", task.attempts)
            }
            EventKind::AfterExecution => {
                finished += 1;
                format!(
                    "COMPLETED on attempt {}: {}",
                    task.attempts,
                    event.result.as_ref().map_or(Value::Null, Clone::clone)
                )
            }
            _ => continue,
        };
        println!(
            "[+{:>4} ms] {:<29} {:<35} {line}",
            millis_since(start, event.at),
            event.name(),
            task.name,
        );
    }
    stop.shutdown();
    running.await??;

    println!("\nFinal records:");
    for id in ids {
        let Some(record) = engine.task(id).await? else {
            return Err(format!("task {id} is missing from the store").into());
        };
        let detail = match (&record.status, &record.result, &record.error) {
            (TaskStatus::Completed, Some(result), _) => format!("result {result}"),
            (_, _, Some(error)) => error.to_string(),
            _ => String::new(),
        };
        println!(
            "  {:<35} {:<9} attempts {}/{}  {detail}",
            record.name,
            record.status.as_str(), // `Display` ignores widths; `as_str` pads
            record.attempts,
            record.max_retries + 1,
        );
    }
    Ok(())
}

fn millis_since(start: DateTime<Utc>, at: DateTime<Utc>) -> i64 {
    (at - start).num_milliseconds()
}
