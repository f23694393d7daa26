//! Throughput over the control socket, beside the embedded engine's, on this machine.
//!
//! ```text
//! cargo run --release --example socket_load [-- TASKS [PIPELINE]]
//! ```
//!
//! This process owns a fresh store (and so serves its Unix socket). Over the socket, one
//! producer process pipelines single enqueues (PIPELINE in flight on one connection, default
//! 256), then one
//! remote worker process (concurrency 32) drains them with no-op handlers. For comparison, the
//! same work runs embedded: 64 concurrent producers, then a worker of concurrency 32, as
//! `cargo bench --bench end_to_end` does. Every enqueue and settlement is durable (fsync'ed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fq::{Engine, Registry, TaskError};
use serde_json::json;

const DEFAULT_TASKS: u64 = 20_000;
/// Enqueues in flight at once on the producer's one connection, by default.
const PIPELINE: u64 = 256;
/// Concurrent producers in the embedded comparison (the bench's figure).
const EMBEDDED_PRODUCERS: u64 = 64;
const CONCURRENCY: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("producer") => {
            let (socket, tasks, pipeline) = (&args[2], args[3].parse()?, args[4].parse()?);
            let rate = runtime.block_on(produce(socket, tasks, pipeline))?;
            println!("{rate:.0}");
        }
        Some("worker") => {
            let (socket, tasks) = (&args[2], args[3].parse()?);
            let rate = runtime.block_on(drain_remote(socket, tasks))?;
            println!("{rate:.0}");
        }
        other => {
            let tasks = match other {
                Some(n) => n.parse()?,
                None => DEFAULT_TASKS,
            };
            let pipeline = match args.get(2) {
                Some(n) => n.parse()?,
                None => PIPELINE,
            };
            let socket = run_child_phases(tasks, pipeline)?;
            let (enqueue, drain) = runtime.block_on(embedded(tasks))?;
            println!("{tasks} no-op tasks, durable, on {} cores", cores());
            println!("                         embedded       over the Unix socket");
            println!(
                "enqueue (tasks/s)     {enqueue:>10.0}   {:>10.0}   (socket: 1 process, {pipeline} pipelined; embedded: {EMBEDDED_PRODUCERS} producers)",
                socket.0
            );
            println!("drain, concurrency 32 {drain:>10.0}   {:>10.0}", socket.1);
            println!(
                "socket / embedded     {:>10.2}   {:>10.2}",
                socket.0 / enqueue,
                socket.1 / drain
            );
        }
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Serves a fresh store here while a producer process, then a worker process, work over its
/// socket; their rates.
fn run_child_phases(tasks: u64, pipeline: u64) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Engine::builder(dir.path().join("load.redb"))
        .verify_on_open(false)
        .open()?;
    let socket = engine
        .control_socket()
        .ok_or("the engine serves no socket")?
        .display()
        .to_string();
    let child = |role: &str| -> Result<f64, Box<dyn std::error::Error>> {
        let output = std::process::Command::new(std::env::current_exe()?)
            .args([role, &socket, &tasks.to_string(), &pipeline.to_string()])
            .stderr(std::process::Stdio::inherit())
            .output()?;
        if !output.status.success() {
            return Err(format!("the {role} process failed").into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().parse()?)
    };
    let enqueue = child("producer")?;
    let drain = child("worker")?;
    drop(engine);
    Ok((enqueue, drain))
}

/// One connection, `pipeline` enqueues in flight; tasks/s.
async fn produce(socket: &str, tasks: u64, pipeline: u64) -> fq::Result<f64> {
    let engine = Engine::connect(&format!("unix:{socket}")).await?;
    let start = Instant::now();
    let per_lane = tasks / pipeline;
    let mut lanes = Vec::new();
    for lane in 0..pipeline {
        let engine = engine.clone();
        lanes.push(tokio::spawn(async move {
            for n in 0..per_lane {
                engine
                    .queue_task_named("bench.noop", &json!({"kwargs": {"lane": lane, "n": n}}))
                    .send()
                    .await?;
            }
            Ok::<(), fq::Error>(())
        }));
    }
    for lane in lanes {
        lane.await
            .map_err(|e| fq::Error::Internal(e.to_string()))??;
    }
    Ok((per_lane * pipeline) as f64 / start.elapsed().as_secs_f64())
}

/// Runs a worker of `CONCURRENCY` until `tasks` have completed and been settled; tasks/s.
async fn drain(engine: &Engine, tasks: u64) -> fq::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let all_ran = Arc::new(tokio::sync::Notify::new());
    let mut registry = Registry::new();
    let (counter, wake) = (Arc::clone(&done), Arc::clone(&all_ran));
    registry.register_fn(
        "bench.noop",
        move |_: serde_json::Value| -> Result<(), TaskError> {
            if counter.fetch_add(1, Ordering::SeqCst) + 1 == tasks {
                wake.notify_one();
            }
            Ok(())
        },
    );
    let mut worker = engine.worker(registry);
    worker
        .set_concurrent_tasks(CONCURRENCY)
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let start = Instant::now();
    let running = tokio::spawn(async move { worker.start().await });
    all_ran.notified().await;
    // Shutdown waits for every running attempt's settlement to commit.
    stop.shutdown();
    let report = running
        .await
        .map_err(|e| fq::Error::Internal(e.to_string()))??;
    assert_eq!(report.completed, tasks, "not every task completed");
    Ok(tasks as f64 / start.elapsed().as_secs_f64())
}

async fn drain_remote(socket: &str, tasks: u64) -> fq::Result<f64> {
    let engine = Engine::connect(&format!("unix:{socket}")).await?;
    // The producer may have queued a few less than asked (whole lanes only).
    let waiting = engine.stats().await?.queues["default"].ready;
    drain(&engine, waiting.min(tasks)).await
}

/// The same work on an embedded engine; (enqueue, drain) tasks/s.
async fn embedded(tasks: u64) -> fq::Result<(f64, f64)> {
    let dir = tempfile::tempdir().map_err(|e| fq::Error::Internal(e.to_string()))?;
    let engine = Engine::builder(dir.path().join("embedded.redb"))
        .verify_on_open(false)
        .control(false)
        .open()?;
    let per_producer = tasks / EMBEDDED_PRODUCERS;
    let start = Instant::now();
    let mut producers = Vec::new();
    for producer in 0..EMBEDDED_PRODUCERS {
        let engine = engine.clone();
        producers.push(tokio::spawn(async move {
            for n in 0..per_producer {
                engine
                    .queue_task_named("bench.noop", &json!({"kwargs": {"p": producer, "n": n}}))
                    .send()
                    .await?;
            }
            Ok::<(), fq::Error>(())
        }));
    }
    for producer in producers {
        producer
            .await
            .map_err(|e| fq::Error::Internal(e.to_string()))??;
    }
    let queued = per_producer * EMBEDDED_PRODUCERS;
    let enqueue = queued as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let drain = drain(&engine, queued).await?;
    Ok((enqueue, drain))
}
