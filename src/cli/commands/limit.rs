//! `fq limit Q [--concurrency N] [--rate R]`: set a queue's limits on the serving engine.

use crate::QueueLimits;
use crate::cli::args::LimitArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// Sets the queue's limits (those left out are removed) and prints them (`--json`:
/// `{"queue", "concurrency", "rate"}`, a removed limit `null`). Limits live in the engine
/// that serves the store, so a store nobody serves is refused (opened read-only).
pub(crate) async fn run(ctx: &Context, args: &LimitArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let limits = QueueLimits {
        concurrency: args.concurrency,
        rate: args.rate,
    };
    engine.set_queue_limits(&args.queue, limits).await?;
    let out = ctx.out();
    if out.is_json() {
        return out.document(&serde_json::json!({
            "queue": args.queue,
            "concurrency": limits.concurrency,
            "rate": limits.rate.map(|rate| rate.to_string()),
        }));
    }
    out.text(&format!("queue {}: {}", args.queue, describe(&limits)))
}

/// `concurrency 2, rate 20/1s`, or `no limits`.
pub(crate) fn describe(limits: &QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(concurrency) = limits.concurrency {
        parts.push(format!("concurrency {concurrency}"));
    }
    if let Some(rate) = limits.rate {
        parts.push(format!("rate {rate}"));
    }
    if parts.is_empty() {
        "no limits".to_owned()
    } else {
        parts.join(", ")
    }
}
