//! `fq list`: tasks matching a queue and status filter, a page at a time.

use chrono::Utc;

use crate::ListQuery;
use crate::cli::args::ListArgs;
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::output::task_table;
use crate::cli::{Context, Store};

/// Prints the matching tasks, oldest first; says how to get the next page when there may be one.
pub(crate) async fn run(ctx: &Context, args: ListArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let records = engine
        .list(ListQuery {
            queue: args.queue,
            status: args.status,
            limit,
            after: args.after,
            unique_key: args.unique_key,
        })
        .await
        .map_err(usage_if_invalid)?;
    let out = ctx.out();
    if out.is_json() {
        return out.document(&records);
    }
    if records.is_empty() {
        return out.text("no tasks");
    }
    out.text(&task_table(&records, Utc::now()))?;
    if records.len() == limit
        && let Some(last) = records.last()
    {
        eprintln!("(showing {limit}; the next page: --after {})", last.id);
    }
    Ok(())
}
