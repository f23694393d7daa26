//! `fq cancel ID`: cancels a PENDING or RETRYING task.

use crate::cli::args::IdArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// Cancels the task and prints it (its record with `--json`).
pub(crate) async fn run(ctx: &Context, args: &IdArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let record = engine.cancel(args.id).await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&record)
    } else {
        out.text(&format!(
            "cancelled {} ({} on queue {})",
            record.id, record.name, record.queue
        ))
    }
}
