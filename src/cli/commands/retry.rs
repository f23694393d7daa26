//! `fq retry ID` and `fq retry --failed [--queue Q]`: puts FAILED (or CANCELLED) tasks back to
//! PENDING with a fresh retry budget.

use serde_json::json;

use crate::cli::args::RetryArgs;
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::{Context, Store};

/// Retries one task, or every failed one.
pub(crate) async fn run(ctx: &Context, args: RetryArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let out = ctx.out();
    // clap lets exactly one of ID and --failed through.
    let Some(id) = args.id else {
        let queue = args.queue.as_deref();
        let what = queue.map_or_else(
            || "failed tasks".to_owned(),
            |queue| format!("failed tasks of queue {queue}"),
        );
        let spinner = out.spinner(format!("retrying {what}"));
        let retried = engine.retry_failed(queue).await;
        spinner.finish_and_clear();
        let retried = retried.map_err(usage_if_invalid)?;
        return if out.is_json() {
            out.document(&json!({"retried": retried, "queue": queue}))
        } else {
            out.text(&format!("{retried} {what} queued again"))
        };
    };
    let record = engine.retry(id).await?;
    if out.is_json() {
        out.document(&record)
    } else {
        out.text(&format!(
            "{} ({}) is {} again, with {} run(s) allowed",
            record.id,
            record.name,
            record.status.as_str(),
            record.max_retries.saturating_add(1)
        ))
    }
}
