//! The idle-worker phase of `fq bench`: one task at a time for a worker with nothing else to
//! do, measuring enqueue→start latency on a quiet engine (what a lone task waits for: its
//! enqueue's commit and its claim's, which the hand-off to a waiting claim folds into one).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{
    BenchParams, NOOP, Progress, StartLatency, micros_since, open, payload, start_latency_registry,
    start_worker,
};
use crate::{Error, Result};

/// Tasks the phase runs, one after another.
const IDLE_TASKS: u64 = 200;
/// The pause after each start: the run settles and the worker waits again before the next.
const SETTLE_PAUSE: Duration = Duration::from_millis(5);
/// A task not started by then fails the phase rather than shortening its sample.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Latency of lone tasks on an idle worker.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct IdleReport {
    /// Tasks queued, each after the one before had started.
    pub(crate) tasks: u64,
    /// Enqueue→start latency.
    #[serde(flatten)]
    pub(crate) latency: StartLatency,
}

pub(super) async fn idle(
    path: &Path,
    params: &BenchParams,
    progress: Progress<'_>,
) -> Result<IdleReport> {
    let engine = open(path, params)?;
    let epoch = Instant::now();
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let registry = start_latency_registry(epoch, move |latency| {
        // The phase waits on the other end; it is gone only if the phase failed already.
        let _ = started.send(latency);
    });
    let (stop, running) = start_worker(&engine, registry, params);
    tokio::time::sleep(SETTLE_PAUSE).await;

    let mut latencies = Vec::with_capacity(IDLE_TASKS as usize);
    for n in 0..IDLE_TASKS {
        let queued_us = micros_since(epoch);
        engine
            .queue_task_named(NOOP, &payload(params.payload_bytes, &json!(queued_us)))
            .send()
            .await?;
        match tokio::time::timeout(START_TIMEOUT, starts.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => {
                stop.shutdown();
                return Err(Error::Internal(format!(
                    "the idle-worker phase: task {n} did not start within {START_TIMEOUT:?}"
                )));
            }
        }
        progress("enqueue->start, idle worker", n + 1, IDLE_TASKS);
        tokio::time::sleep(SETTLE_PAUSE).await;
    }
    stop.shutdown();
    running
        .await
        .map_err(|e| Error::Internal(format!("the worker failed: {e}")))??;
    latencies.sort_unstable();
    Ok(IdleReport {
        tasks: IDLE_TASKS,
        latency: StartLatency::of(&latencies),
    })
}
