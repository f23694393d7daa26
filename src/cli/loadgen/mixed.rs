//! The mixed phase of `fq bench`: producers at a fixed rate while workers drain, measuring
//! enqueue→start latency in a steady state. Its tasks stay plain (no unique keys), whatever
//! `--unique` says.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{BenchParams, NOOP, Progress, open, payload, rate};
use crate::{Error, Registry, Result, TaskContext, TaskError};

/// How long the mixed phase offers load.
const MIXED_DURATION: Duration = Duration::from_secs(3);

/// Latency of the mixed steady state.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct MixedReport {
    /// Tasks queued and started.
    #[serde(skip)]
    pub(crate) tasks: u64,
    /// Enqueue rate offered (half the measured drain rate), tasks/s.
    pub(crate) offered_per_sec: f64,
    /// Tasks completed per second while the load was offered.
    pub(crate) achieved_per_sec: f64,
    /// Enqueue→start latency percentiles, milliseconds.
    pub(crate) latency_p50_ms: f64,
    /// 99th percentile.
    pub(crate) latency_p99_ms: f64,
    /// Worst.
    pub(crate) latency_max_ms: f64,
}

pub(super) async fn mixed(
    path: &Path,
    params: &BenchParams,
    offered: f64,
    progress: Progress<'_>,
) -> Result<MixedReport> {
    let engine = open(path, params)?;
    let epoch = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let sink = Arc::clone(&latencies);
    let mut registry = Registry::new();
    registry.register_async(NOOP, move |args: serde_json::Value, _ctx: TaskContext| {
        if let Some(queued_us) = args.get("t").and_then(serde_json::Value::as_u64) {
            let now_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(now_us.saturating_sub(queued_us));
        }
        async { Ok::<(), TaskError>(()) }
    });
    let mut worker = engine.worker(registry);
    worker
        .set_concurrent_tasks(params.concurrency)
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    // Producers send on a fixed schedule (not as fast as they can), each its share of the rate;
    // as many as the concurrent phase used, since each waits for its own commit.
    let producers = params.producers.max(1) as u64;
    let total = (offered * MIXED_DURATION.as_secs_f64()).max(1.0) as u64;
    let interval = Duration::from_secs_f64(producers as f64 / offered.max(1.0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..producers {
        let engine = engine.clone();
        let size = params.payload_bytes;
        handles.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..total / producers {
                ticker.tick().await;
                let queued_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                engine
                    .queue_task_named(NOOP, &payload(size, &json!(queued_us)))
                    .send()
                    .await?;
            }
            Ok::<(), Error>(())
        }));
    }
    let expected = (total / producers) * producers;
    loop {
        let seen = latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        progress("mixed steady state", seen, expected);
        if seen >= expected || started.elapsed() > MIXED_DURATION * 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let seen = latencies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len() as u64;
    if seen < expected {
        stop.shutdown();
        return Err(Error::Internal(format!(
            "the mixed phase did not finish: {seen} of {expected} tasks started within {:?}; \
             its percentiles would leave the slowest out",
            MIXED_DURATION * 10
        )));
    }
    for handle in handles {
        handle
            .await
            .map_err(|e| Error::Internal(format!("a producer failed: {e}")))??;
    }
    stop.shutdown();
    running
        .await
        .map_err(|e| Error::Internal(format!("the worker failed: {e}")))??;
    let mut latencies =
        std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(MixedReport {
        tasks: expected,
        offered_per_sec: offered,
        achieved_per_sec: rate(latencies.len() as u64, elapsed),
        latency_p50_ms: percentile(0.50),
        latency_p99_ms: percentile(0.99),
        latency_max_ms: latencies.last().map_or(0.0, |us| *us as f64 / 1000.0),
    })
}
