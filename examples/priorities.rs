//! Queues and priorities: Framefox's "urgent", "default" and "maintenance" queues with
//! priorities 10, 5 and 1.
//!
//! Every task is queued first, in a deliberately mixed order, and only then does a worker with
//! one slot start on all three queues. It takes the highest priority first across the queues
//! it serves; equal priorities run first-in, first-out. A per-call `.priority()` overrides the
//! task's default. The program prints the order the tasks ran in and checks it.
//!
//! Run it with `cargo run --example priorities`; it ends by itself in about a second.

use std::time::Duration;

use fq::{
    Engine, EventKind, Registry, Task, TaskContext, TaskError, TaskId, TaskSettings, WorkerManager,
};
use serde::{Deserialize, Serialize};

/// `@AsyncTask(queue="urgent", priority=10) async def process_critical_alert(alert_id)`
#[derive(Serialize, Deserialize)]
struct ProcessCriticalAlert {
    alert_id: String,
}

impl Task for ProcessCriticalAlert {
    const NAME: &'static str = "myapp.tasks.process_critical_alert";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("urgent").priority(10);
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        println!("  handling critical alert {}", self.alert_id);
        work().await;
        Ok(())
    }
}

/// `@AsyncTask(queue="default", priority=5) async def process_order(order_id)`
#[derive(Serialize, Deserialize)]
struct ProcessOrder {
    order_id: String,
}

impl Task for ProcessOrder {
    const NAME: &'static str = "myapp.tasks.process_order";
    const SETTINGS: TaskSettings = TaskSettings::new().priority(5);
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        println!("  processing order {}", self.order_id);
        work().await;
        Ok(())
    }
}

/// `@AsyncTask(queue="maintenance", priority=1) async def cleanup_old_data(days)`
#[derive(Serialize, Deserialize)]
struct CleanupOldData {
    days: u32,
}

impl Task for CleanupOldData {
    const NAME: &'static str = "myapp.tasks.cleanup_old_data";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("maintenance").priority(1);
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        println!("  cleaning up data older than {} days", self.days);
        work().await;
        Ok(())
    }
}

/// A short pause standing in for the task's real work.
async fn work() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;

    println!("Queuing, in this order:");
    let mut ids: Vec<TaskId> = Vec::new();
    ids.push(CleanupOldData { days: 30 }.delay(&engine).await?);
    ids.push(
        ProcessOrder {
            order_id: "A-1".into(),
        }
        .delay(&engine)
        .await?,
    );
    ids.push(
        ProcessCriticalAlert {
            alert_id: "disk-full".into(),
        }
        .delay(&engine)
        .await?,
    );
    ids.push(
        ProcessOrder {
            order_id: "A-2".into(),
        }
        .delay(&engine)
        .await?,
    );
    ids.push(CleanupOldData { days: 90 }.delay(&engine).await?);
    // The same task with a priority of its own for this one call: a VIP order jumps ahead of
    // the other orders, still behind the alerts.
    ids.push(
        engine
            .queue_task(ProcessOrder {
                order_id: "VIP-7".into(),
            })
            .priority(8)
            .send()
            .await?,
    );
    ids.push(
        ProcessCriticalAlert {
            alert_id: "cpu-hot".into(),
        }
        .delay(&engine)
        .await?,
    );
    let mut queued = Vec::new();
    for id in &ids {
        let Some(record) = engine.task(*id).await? else {
            return Err(format!("task {id} is missing from the store").into());
        };
        println!(
            "  {:<12} priority {:>2}  {:<34} {}",
            record.queue, record.priority, record.name, record.payload
        );
        queued.push(record);
    }

    let mut registry = Registry::new();
    registry
        .register::<ProcessCriticalAlert>()
        .register::<ProcessOrder>()
        .register::<CleanupOldData>();
    let mut worker = WorkerManager::new(engine.clone(), registry);
    worker
        .set_queues(["urgent", "default", "maintenance"])
        .set_concurrent_tasks(1);
    let stop = worker.shutdown_handle();

    // The order the worker starts tasks in, from the `worker.task.before_execution` events.
    let mut events = engine.events().subscribe();
    println!("\nStarting a worker with one slot:");
    let running = tokio::spawn(async move { worker.start().await });
    let mut run_order = Vec::new();
    let mut finished = 0;
    while finished < ids.len() {
        let Some(event) = events.recv_timeout(Duration::from_secs(10)).await else {
            return Err("timed out waiting for the tasks to run".into());
        };
        match event.kind {
            EventKind::BeforeExecution => run_order.push(event.task.clone()),
            EventKind::AfterExecution | EventKind::Failed => finished += 1,
            _ => {}
        }
    }
    stop.shutdown();
    running.await??;

    println!("\nThey ran in this order:");
    for (position, task) in run_order.iter().enumerate() {
        println!(
            "  {}. priority {:>2}  {:<12} {}",
            position + 1,
            task.priority,
            task.queue,
            task.payload
        );
    }
    // Expected: highest priority first; a stable sort keeps ties in the order they were queued.
    queued.sort_by_key(|record| std::cmp::Reverse(record.priority));
    let expected: Vec<TaskId> = queued.iter().map(|record| record.id).collect();
    let actual: Vec<TaskId> = run_order.iter().map(|record| record.id).collect();
    if actual != expected {
        return Err("tasks did not run highest priority first, ties first-in first-out".into());
    }
    println!("\nHighest priority first, across queues; ties in the order they were queued.");
    Ok(())
}
