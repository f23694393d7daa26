//! End-to-end throughput of the embedded engine, durable (every acknowledged change is
//! fsync'ed): concurrent enqueue, batch enqueue, and draining no-op tasks.
//!
//! `cargo bench --bench end_to_end`; each scenario reports tasks/s as criterion throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fq::{Engine, Registry, TaskError};
use serde_json::json;

const TASKS: u64 = 20_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn fresh_engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::builder(dir.path().join("bench.redb"))
        .verify_on_open(false)
        .open()
        .expect("open engine");
    (dir, engine)
}

async fn enqueue_concurrently(engine: &Engine, producers: u64, tasks: u64) {
    let per_producer = tasks / producers;
    let mut handles = Vec::new();
    for producer in 0..producers {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            for n in 0..per_producer {
                engine
                    .queue_task_named("bench.noop", &json!({"kwargs": {"p": producer, "n": n}}))
                    .send()
                    .await
                    .expect("enqueue");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("producer");
    }
}

async fn drain(engine: &Engine, concurrency: usize, tasks: u64) {
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
        .set_concurrent_tasks(concurrency)
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });
    all_ran.notified().await;
    // Shutdown waits for every running attempt's settlement to commit.
    stop.shutdown();
    let report = running.await.expect("worker").expect("worker run");
    assert_eq!(report.completed, tasks, "not every task completed");
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("enqueue");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TASKS));
    for producers in [1u64, 64] {
        let tasks = if producers == 1 { TASKS / 10 } else { TASKS };
        group.throughput(Throughput::Elements(tasks));
        group.bench_function(format!("durable_{producers}_producers"), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let (_dir, engine) = fresh_engine();
                    let start = Instant::now();
                    rt.block_on(enqueue_concurrently(&engine, producers, tasks));
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("durable_batch_api", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (_dir, engine) = fresh_engine();
                let start = Instant::now();
                rt.block_on(async {
                    for chunk in 0..(TASKS / 1000) {
                        let batch = (0..1000).map(|n| {
                            engine.queue_task_named(
                                "bench.noop",
                                &json!({"kwargs": {"c": chunk, "n": n}}),
                            )
                        });
                        engine.queue_batch(batch).await.expect("batch");
                    }
                });
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

fn drain_noop(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("drain");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("noop_concurrency_32", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (_dir, engine) = fresh_engine();
                rt.block_on(async {
                    let batch = (0..TASKS).map(|n| {
                        engine.queue_task_named("bench.noop", &json!({"kwargs": {"n": n}}))
                    });
                    engine.queue_batch(batch).await.expect("prefill");
                });
                let engine = Arc::new(engine);
                let start = Instant::now();
                rt.block_on(drain(&engine, 32, TASKS));
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, enqueue, drain_noop);
criterion_main!(benches);
