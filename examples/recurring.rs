//! Recurring tasks, done by hand as Framefox suggests: `daily_report` does its work, then
//! queues its own next run with `ctx.queue_task(...).schedule_at(...)` from inside the handler.
//!
//! In production the next run would be tomorrow at 09:00 (see `next_daily_run`, whose answer
//! each report prints); to keep the demo short it reschedules one second ahead and stops after
//! its third run. Each run's record shows when it was scheduled for and when it ran.
//!
//! Run it with `cargo run --example recurring`; it ends by itself after about two seconds.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use fq::{Engine, EventKind, Registry, Task, TaskContext, TaskError, TaskId, WorkerManager};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How many runs the demo makes before the report stops rescheduling itself.
const RUNS: u32 = 3;
/// The demo's stand-in for "one day".
const DEMO_PERIOD: TimeDelta = TimeDelta::seconds(1);

/// `@AsyncTask() async def daily_report()`; `run` counts the reports, so the chain can stop.
#[derive(Serialize, Deserialize)]
struct DailyReport {
    run: u32,
}

impl Task for DailyReport {
    const NAME: &'static str = "myapp.tasks.daily_report";
    type Output = Value;

    async fn run(self, ctx: TaskContext) -> Result<Value, TaskError> {
        // await generate_report()
        let now = Utc::now();
        println!(
            "  generating report #{} at {}",
            self.run,
            now.format("%T%.3f")
        );

        // Reschedule: in production `next_daily_run(now)`; here a second from now. A failure
        // to queue the next run fails this attempt, so the retry queues it again.
        let mut next = None;
        if self.run < RUNS {
            let when = now + DEMO_PERIOD;
            let id = ctx
                .queue_task(DailyReport { run: self.run + 1 })
                .schedule_at(when)
                .send()
                .await?;
            next = Some(id);
        }
        Ok(json!({
            "report": self.run,
            "next_task": next,
            "in_production_next_run": next_daily_run(now),
        }))
    }
}

/// Tomorrow at 09:00 UTC: `(datetime.now() + timedelta(days=1)).replace(hour=9, minute=0, second=0)`.
fn next_daily_run(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = (now + TimeDelta::days(1)).date_naive();
    tomorrow.and_time(NaiveTime::MIN).and_utc() + TimeDelta::hours(9)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;
    let mut events = engine.events().subscribe();

    let mut registry = Registry::new();
    registry.register::<DailyReport>();
    let mut worker = WorkerManager::new(engine.clone(), registry);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    // The first run; every later one is queued by the run before it.
    DailyReport { run: 1 }.delay(&engine).await?;

    let mut runs: Vec<TaskId> = Vec::new();
    while runs.len() < RUNS as usize {
        let Some(event) = events.recv_timeout(Duration::from_secs(10)).await else {
            return Err("timed out waiting for the next report".into());
        };
        match event.kind {
            EventKind::AfterExecution => runs.push(event.task.id),
            EventKind::Failed => return Err(format!("a report failed: {:?}", event.error).into()),
            _ => {}
        }
    }
    stop.shutdown();
    running.await??;

    println!("\nThe chain of runs:");
    for id in runs {
        let Some(record) = engine.task(id).await? else {
            return Err(format!("task {id} is missing from the store").into());
        };
        let ran = record
            .started_at
            .map_or_else(|| "-".to_owned(), |at| at.format("%T%.3f").to_string());
        println!(
            "  {id}  scheduled {}  ran {ran}  {}",
            record.scheduled_at.format("%T%.3f"),
            record.result.unwrap_or_default()
        );
    }
    let pending = engine
        .stats()
        .await?
        .queues
        .values()
        .map(|queue| queue.pending + queue.retrying)
        .sum::<u64>();
    println!("\nAfter report #{RUNS} nothing else is scheduled ({pending} tasks waiting).");
    if pending != 0 {
        return Err("the chain should have stopped".into());
    }
    Ok(())
}
