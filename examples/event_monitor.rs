//! Event integration: Framefox's `TaskMonitor`, listening to `worker.task.before_execution`,
//! `worker.task.after_execution` (with the result) and `worker.task.execution_error` (with the
//! error) through `engine.events().add_listener(name, fn)`.
//!
//! Listeners are plain closures; they run one at a time, in event order, on a thread of the
//! engine's own, so a slow listener never holds up a worker. The monitor also keeps the
//! success and failure counts the seed's best practices ask for. Four tasks run: two resize
//! images, one meets a corrupt image (a permanent failure) and one is queued by name with
//! arguments the task cannot read.
//!
//! Run it with `cargo run --example event_monitor`; it ends by itself in well under a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fq::{Engine, Event, EventBus, Registry, Task, TaskContext, TaskError, UnknownEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// `class TaskMonitor` from the seed, with counters.
struct TaskMonitor {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Tells `main` that a run ended, so it knows when to stop.
    ended: mpsc::UnboundedSender<()>,
}

impl TaskMonitor {
    fn on_task_start(&self, event: &Event) {
        self.started.fetch_add(1, Ordering::Relaxed);
        let task = &event.task;
        println!("Task {} started: {}", task.id, task.name);
    }

    fn on_task_complete(&self, event: &Event) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let result = event.result.as_ref().map_or(Value::Null, Clone::clone);
        println!("Task {} completed: {result}", event.task.id);
        // An error only means `main` stopped waiting.
        let _ = self.ended.send(());
    }

    fn on_task_error(&self, event: &Event) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let error = event
            .error
            .as_ref()
            .map_or_else(String::new, ToString::to_string);
        println!("Task {} failed: {error}", event.task.id);
        let _ = self.ended.send(());
    }

    fn register_listeners(self: &Arc<Self>, events: &EventBus) -> Result<(), UnknownEvent> {
        let monitor = Arc::clone(self);
        events.add_listener("worker.task.before_execution", move |event| {
            monitor.on_task_start(event);
        })?;
        let monitor = Arc::clone(self);
        events.add_listener("worker.task.after_execution", move |event| {
            monitor.on_task_complete(event);
        })?;
        let monitor = Arc::clone(self);
        events.add_listener("worker.task.execution_error", move |event| {
            monitor.on_task_error(event);
        })?;
        Ok(())
    }
}

/// Resizes an image; a "corrupt" one is a failure no retry can fix.
#[derive(Serialize, Deserialize)]
struct ResizeImage {
    path: String,
    width: u32,
}

impl Task for ResizeImage {
    const NAME: &'static str = "myapp.tasks.resize_image";
    type Output = Value;

    async fn run(self, _ctx: TaskContext) -> Result<Value, TaskError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.path.contains("corrupt") {
            return Err(TaskError::permanent(format!(
                "{} is not an image",
                self.path
            )));
        }
        Ok(json!({"path": self.path, "width": self.width}))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::open(dir.path().join("var/fq.redb"))?;

    // Register the monitor.
    let (ended, mut runs_ended) = mpsc::unbounded_channel();
    let monitor = Arc::new(TaskMonitor {
        started: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ended,
    });
    monitor.register_listeners(engine.events())?;
    // A name fq does not emit is refused, rather than silently never called.
    match engine.events().add_listener("task.finished", |_| {}) {
        Err(error) => println!("(as expected: {error})\n"),
        Ok(()) => return Err("a listener for an unknown event was accepted".into()),
    }

    for (path, width) in [
        ("img/cat.png", 640),
        ("img/dog.png", 320),
        ("img/corrupt.png", 640),
    ] {
        ResizeImage {
            path: path.into(),
            width,
        }
        .delay(&engine)
        .await?;
    }
    // Queued by name with a payload that does not fit the task: a bad-arguments failure,
    // which is never retried.
    engine
        .queue_task_named(ResizeImage::NAME, &json!({"kwargs": {"path": 42}}))
        .send()
        .await?;
    let n_tasks = 4;

    let mut registry = Registry::new();
    registry.register::<ResizeImage>();
    let mut worker = engine.worker(registry);
    worker.set_concurrent_tasks(1);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    // Each task here runs once: it either completes or fails without retrying.
    for _ in 0..n_tasks {
        let ended = tokio::time::timeout(Duration::from_secs(10), runs_ended.recv()).await?;
        if ended.is_none() {
            return Err("the monitor went away".into());
        }
    }
    stop.shutdown();
    running.await??;

    let started = monitor.started.load(Ordering::Relaxed);
    let completed = monitor.completed.load(Ordering::Relaxed);
    let failed = monitor.failed.load(Ordering::Relaxed);
    println!("\n{started} started, {completed} completed, {failed} failed");
    if (started, completed, failed) != (4, 2, 2) {
        return Err(
            "the monitor saw something other than 4 starts, 2 successes, 2 failures".into(),
        );
    }
    Ok(())
}
