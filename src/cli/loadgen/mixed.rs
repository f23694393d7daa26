//! The mixed phase of `fq bench`: producers at a fixed rate while workers drain, measuring
//! enqueue→start latency in a steady state. Its tasks stay plain (no unique keys), whatever
//! `--unique` says.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{
    BenchParams, NOOP, Progress, StartLatency, micros_since, open, payload, rate,
    start_latency_registry, start_worker,
};
use crate::{Error, Result};

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
    /// Enqueue→start latency.
    #[serde(flatten)]
    pub(crate) latency: StartLatency,
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
    let registry = start_latency_registry(epoch, move |latency| {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(latency);
    });
    let (stop, running) = start_worker(&engine, registry, params);

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
                let queued_us = micros_since(epoch);
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
    Ok(MixedReport {
        tasks: expected,
        offered_per_sec: offered,
        achieved_per_sec: rate(latencies.len() as u64, elapsed),
        latency: StartLatency::of(&latencies),
    })
}
