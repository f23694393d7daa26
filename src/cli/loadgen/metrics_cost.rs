//! `fq bench --metrics-cost`: the concurrent-enqueue and drain phases run with the engine's
//! metrics on and off, alternating, to tell what the metrics cost.

use serde::Serialize;

use super::{BenchParams, Progress, TempDir, drain, enqueue_concurrently};
use crate::{Engine, Result};

/// How many times `fq bench --metrics-cost` runs each side.
const METRICS_ROUNDS: usize = 3;

/// What the engine's metrics cost (`fq bench --metrics-cost`): the concurrent-enqueue and
/// drain phases, the writer's busiest paths, run [`METRICS_ROUNDS`] times with metrics on and
/// as often off, alternating (on/off, then off/on, ...) so that the disk's drift falls on both
/// sides alike. Figures in tasks/s.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct MetricsCost {
    /// What was measured (its keys sit at the top level of the JSON).
    #[serde(flatten)]
    pub(crate) params: BenchParams,
    /// Concurrent enqueue, each round, metrics on.
    pub(crate) enqueue_on: Vec<f64>,
    /// Concurrent enqueue, each round, metrics off.
    pub(crate) enqueue_off: Vec<f64>,
    /// Drain, each round, metrics on.
    pub(crate) drain_on: Vec<f64>,
    /// Drain, each round, metrics off.
    pub(crate) drain_off: Vec<f64>,
    /// Medians of the rounds.
    pub(crate) enqueue_on_median: f64,
    /// Medians of the rounds.
    pub(crate) enqueue_off_median: f64,
    /// Medians of the rounds.
    pub(crate) drain_on_median: f64,
    /// Medians of the rounds.
    pub(crate) drain_off_median: f64,
    /// `(off - on) / off` of the medians, percent: what metrics cost (negative: noise).
    pub(crate) enqueue_cost_percent: f64,
    /// The same for the drain.
    pub(crate) drain_cost_percent: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

/// Runs `fq bench --metrics-cost` (see [`MetricsCost`]).
///
/// # Errors
/// A store that cannot be created or written, or a task that does not complete.
pub(crate) async fn metrics_cost(
    params: &BenchParams,
    progress: Progress<'_>,
) -> Result<MetricsCost> {
    let temp;
    let dir = match &params.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = TempDir::new()?;
            temp.path.clone()
        }
    };
    // The concurrent phase queues `tasks` rounded down to a multiple of `producers`: the
    // drain waits for exactly those.
    let producers = params.producers.max(1) as u64;
    let params = &BenchParams {
        tasks: (params.tasks / producers).max(1) * producers,
        ..params.clone()
    };
    let mut cost = MetricsCost {
        params: params.clone(),
        ..MetricsCost::default()
    };
    for round in 0..METRICS_ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enabled in order {
            let path = dir.join(format!(
                "metrics-{}-{round}.redb",
                if enabled { "on" } else { "off" }
            ));
            let mut config = params.config.clone();
            config.metrics.enabled = enabled;
            let engine = Engine::builder(&path)
                .config(config)
                .verify_on_open(false)
                .open()?;
            let enqueue = enqueue_concurrently(&engine, params, progress).await?;
            let drain = drain(&engine, params, progress).await?;
            drop(engine);
            let _ = std::fs::remove_file(&path);
            if enabled {
                cost.enqueue_on.push(enqueue);
                cost.drain_on.push(drain);
            } else {
                cost.enqueue_off.push(enqueue);
                cost.drain_off.push(drain);
            }
        }
    }
    cost.enqueue_on_median = median(&cost.enqueue_on);
    cost.enqueue_off_median = median(&cost.enqueue_off);
    cost.drain_on_median = median(&cost.drain_on);
    cost.drain_off_median = median(&cost.drain_off);
    let percent = |on: f64, off: f64| (off - on) / off.max(1e-9) * 100.0;
    cost.enqueue_cost_percent = percent(cost.enqueue_on_median, cost.enqueue_off_median);
    cost.drain_cost_percent = percent(cost.drain_on_median, cost.drain_off_median);
    Ok(cost)
}
