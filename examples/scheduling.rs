//! Scheduled and delayed tasks: Framefox's `delay=` (seconds or a `timedelta`) and
//! `schedule_at=`.
//!
//! Queues one reminder right away and five for later: a delay in whole seconds (`u64`, as
//! `delay=1`), a `std::time::Duration`, a `chrono::TimeDelta` (Python's `timedelta`), a time
//! given with `schedule_at(Utc::now() + ...)`, and a `schedule_at` in the past, which means
//! "now". A worker is already running; it picks each task up when it comes due (a timer wakes
//! it: there is no polling). The program prints each run as it starts, then when each task
//! was scheduled for and when it ran.
//!
//! Run it with `cargo run --example scheduling`; it ends by itself after about two seconds.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use fq::{Engine, EventKind, Registry, Task, TaskContext, TaskError, TaskId, WorkerManager};
use serde::{Deserialize, Serialize};

/// `@AsyncTask() async def send_reminder(user_id, note)`
#[derive(Serialize, Deserialize)]
struct SendReminder {
    user_id: u32,
    note: String,
}

impl Task for SendReminder {
    const NAME: &'static str = "myapp.tasks.send_reminder";
    type Output = String;

    async fn run(self, _ctx: TaskContext) -> Result<String, TaskError> {
        Ok(format!("reminded user {} ({})", self.user_id, self.note))
    }
}

fn reminder(user_id: u32, note: &str) -> SendReminder {
    SendReminder {
        user_id,
        note: note.to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;
    let mut events = engine.events().subscribe();

    let mut registry = Registry::new();
    registry.register::<SendReminder>();
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker.set_concurrent_tasks(4);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    let start = Utc::now();
    let mut labels: HashMap<TaskId, &str> = HashMap::new();
    // Note the two meanings of "delay": `Task::delay(&engine)` is Framefox's `.delay()`, which
    // queues now; `QueueTask::delay(...)` postpones the first run.
    let id = reminder(1, "now").delay(&engine).await?;
    labels.insert(id, "right away");
    let id = engine
        .queue_task(reminder(2, "in 1 s"))
        .delay(1u64) // delay=1: whole seconds
        .send()
        .await?;
    labels.insert(id, "delay(1u64)");
    let id = engine
        .queue_task(reminder(3, "in 1.5 s"))
        .delay(Duration::from_millis(1_500))
        .send()
        .await?;
    labels.insert(id, "delay(Duration::from_millis(1500))");
    let id = engine
        .queue_task(reminder(4, "in 1.75 s"))
        // timedelta(seconds=1, milliseconds=750)
        .delay(TimeDelta::seconds(1) + TimeDelta::milliseconds(750))
        .send()
        .await?;
    labels.insert(id, "delay(TimeDelta 1 s + 750 ms)");
    let id = engine
        .queue_task(reminder(5, "at +0.5 s"))
        .schedule_at(Utc::now() + TimeDelta::milliseconds(500))
        .send()
        .await?;
    labels.insert(id, "schedule_at(now + 500 ms)");
    let id = engine
        .queue_task(reminder(6, "an hour ago"))
        .schedule_at(Utc::now() - TimeDelta::hours(1))
        .send()
        .await?;
    labels.insert(id, "schedule_at(now - 1 h)");
    println!("queued {} reminders at {start}\n", labels.len());

    let mut finished = 0;
    while finished < labels.len() {
        let Some(event) = events.recv_timeout(Duration::from_secs(10)).await else {
            return Err("timed out waiting for the reminders".into());
        };
        match event.kind {
            EventKind::BeforeExecution => println!(
                "[+{:>5} ms] running {}",
                millis_since(start, event.at),
                labels.get(&event.task.id).unwrap_or(&"?")
            ),
            EventKind::AfterExecution | EventKind::Failed => finished += 1,
            _ => {}
        }
    }
    stop.shutdown();
    running.await??;

    println!(
        "\n{:<36} {:>14} {:>10} {:>9}",
        "queued with", "scheduled for", "ran at", "late by"
    );
    let mut records = Vec::new();
    for id in labels.keys() {
        match engine.task(*id).await? {
            Some(record) => records.push(record),
            None => return Err(format!("task {id} is missing from the store").into()),
        }
    }
    records.sort_by_key(|record| record.started_at);
    for record in records {
        let Some(ran_at) = record.started_at else {
            return Err(format!("task {} never started", record.id).into());
        };
        if ran_at < record.scheduled_at {
            return Err(format!("task {} ran before its scheduled time", record.id).into());
        }
        // A time in the past means "as soon as it is queued".
        let runnable_from = record.scheduled_at.max(record.created_at);
        println!(
            "{:<36} {:>11} ms {:>7} ms {:>6} ms   {}",
            labels.get(&record.id).unwrap_or(&"?"),
            millis_since(start, record.scheduled_at),
            millis_since(start, ran_at),
            (ran_at - runnable_from).num_milliseconds(),
            record.result.unwrap_or_default(),
        );
    }
    Ok(())
}

fn millis_since(start: DateTime<Utc>, at: DateTime<Utc>) -> i64 {
    (at - start).num_milliseconds()
}
