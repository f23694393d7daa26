//! `fq show ID`: everything about one task.

use chrono::Utc;

use crate::cli::args::IdArgs;
use crate::cli::error::CliError;
use crate::cli::output::task_details;
use crate::cli::{Context, Store};

/// Prints the task's record; an unknown id is a failure ("no task with id ...").
pub(crate) async fn run(ctx: &Context, args: &IdArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let record = engine
        .task(args.id)
        .await?
        .ok_or(crate::Error::NotFound(args.id))?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&record)
    } else {
        out.text(&task_details(&record, Utc::now()))
    }
}
