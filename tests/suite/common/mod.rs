//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod backend;
pub mod child;
pub mod effects;
pub mod panics;
#[cfg(feature = "rabbitmq")]
pub mod rabbit;
pub mod run;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fq::{Engine, EventStream, ManualClock, Registry, ShutdownHandle, WorkerReport};
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen at once before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Tests that open TCP listeners in this process hold this, so that
/// `security::an_embedded_engine_listens_on_no_tcp_port_by_default` sees only its own.
pub async fn tcp_lock() -> tokio::sync::MutexGuard<'static, ()> {
    TCP_LOCK.lock().await
}

/// [`tcp_lock`] outside async code.
pub fn tcp_lock_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    TCP_LOCK.blocking_lock()
}

static TCP_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh engine in a temp dir, on the system clock.
pub fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path().join("fq.redb")).expect("open engine");
    (dir, engine)
}

/// An engine from `common::engine()` and a second handle on it through its control socket
/// (`Engine::connect`), as another process would have.
pub async fn engine_and_remote() -> (tempfile::TempDir, Engine, Engine) {
    let (dir, engine) = engine();
    let socket = dir.path().join("fq.redb.sock");
    let remote = Engine::connect(&format!("unix:{}", socket.display()))
        .await
        .expect("connect");
    (dir, engine, remote)
}

/// A fresh engine in a temp dir on a manual clock standing at 2026-01-01T09:00:00Z.
pub fn manual_engine() -> (tempfile::TempDir, Engine, Arc<ManualClock>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap());
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .clock(clock.clone())
        .open()
        .expect("open engine");
    (dir, engine, clock)
}

/// A running worker and the means to stop it.
pub struct RunningWorker {
    pub stop: ShutdownHandle,
    pub handle: JoinHandle<fq::Result<WorkerReport>>,
}

impl RunningWorker {
    pub async fn stop(self) -> WorkerReport {
        self.stop.shutdown();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("worker stops in time")
            .expect("worker task joins")
            .expect("worker ends without error")
    }
}

/// Registers `name` as a handler that runs until a permit of `gate` is added (one permit per
/// run), then returns `"done"`.
pub fn register_gated(registry: &mut Registry, name: &str, gate: &Arc<tokio::sync::Semaphore>) {
    let gate = Arc::clone(gate);
    registry.register_async(name, move |_: serde_json::Value, _ctx: fq::TaskContext| {
        let gate = Arc::clone(&gate);
        async move {
            let permit = gate
                .acquire()
                .await
                .map_err(|_| fq::TaskError::new("gate closed"))?;
            permit.forget();
            Ok(serde_json::json!("done"))
        }
    });
}

/// Starts a worker on `queues` with `concurrency` slots, signals off.
pub fn start_worker(
    engine: &Engine,
    registry: Registry,
    queues: &[&str],
    concurrency: usize,
) -> RunningWorker {
    let mut worker = engine.worker(registry);
    worker
        .set_queues(queues.iter().copied())
        .set_concurrent_tasks(concurrency)
        .set_handle_signals(false)
        .set_polling_interval(Duration::from_millis(500));
    let stop = worker.shutdown_handle();
    let handle = tokio::spawn(async move { worker.start().await });
    RunningWorker { stop, handle }
}

/// Waits for the next event named `name` matching `keep`, failing the test after [`PATIENCE`].
pub async fn next_event(
    events: &mut EventStream,
    name: &str,
    keep: impl Fn(&fq::Event) -> bool,
) -> Arc<fq::Event> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = events
            .recv_timeout(left)
            .await
            .unwrap_or_else(|| panic!("no {name} event within {PATIENCE:?}"));
        if event.name() == name && keep(&event) {
            return event;
        }
    }
}

/// Polls `check` every `poll` until it holds, failing the test after `patience`.
pub async fn eventually<F, Fut>(what: &str, patience: Duration, poll: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + patience;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// Waits until task `id` has `status`, failing the test after [`PATIENCE`].
pub async fn until_status(engine: &Engine, id: fq::TaskId, status: fq::TaskStatus) {
    eventually(
        &format!("task {id} to be {status}"),
        PATIENCE,
        Duration::from_millis(20),
        || {
            let engine = engine.clone();
            async move {
                engine
                    .task(id)
                    .await
                    .is_ok_and(|t| t.is_some_and(|t| t.status == status))
            }
        },
    )
    .await;
}

/// Waits for the next event named `name` about task `id`, failing the test after [`PATIENCE`].
pub async fn task_event(events: &mut EventStream, name: &str, id: fq::TaskId) -> Arc<fq::Event> {
    next_event(events, name, |event| event.task.id == id).await
}

/// The next event, whatever it is, failing the test after [`PATIENCE`] without one.
pub async fn any_event(events: &mut EventStream) -> Arc<fq::Event> {
    events
        .recv_timeout(PATIENCE)
        .await
        .unwrap_or_else(|| panic!("no event within {PATIENCE:?}"))
}

/// Waits for `count` events named `name`, returning them in order.
pub async fn collect_events(
    events: &mut EventStream,
    name: &str,
    count: usize,
) -> Vec<Arc<fq::Event>> {
    let mut found = Vec::with_capacity(count);
    while found.len() < count {
        found.push(next_event(events, name, |_| true).await);
    }
    found
}
