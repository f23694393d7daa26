//! `fq wait ID`: waits for a task's outcome; the exit code says which (0 COMPLETED, 1 FAILED or
//! CANCELLED, 3 timed out).

use crate::TaskStatus;
use crate::cli::args::WaitArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// Prints the result of a COMPLETED task (the record with `--json`, whatever the outcome);
/// FAILED and CANCELLED are failures naming the error. With no engine serving the store,
/// nothing would run the task, so only a task already finished is answered.
pub(crate) async fn run(ctx: &Context, args: &WaitArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let record = engine.wait(args.id, args.timeout).await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&record)?;
    } else if record.status == TaskStatus::Completed {
        let result = record.result.clone().unwrap_or(serde_json::Value::Null);
        out.text(&serde_json::to_string_pretty(&result)?)?;
    }
    match record.status {
        TaskStatus::Completed => Ok(()),
        status => {
            let why = record
                .error
                .as_ref()
                .map(|error| format!(": {}", error.message))
                .unwrap_or_default();
            Err(CliError::runtime(format!(
                "task {} is {status}{why}",
                record.id
            )))
        }
    }
}
