//! `fq show ID`: everything about one task, with its attempt history.

use chrono::Utc;

use crate::cli::args::IdArgs;
use crate::cli::error::CliError;
use crate::cli::observe::attempt_table;
use crate::cli::output::task_details;
use crate::cli::{Context, Store};

/// Prints the task's record and attempt history (`--json`: the record's fields plus
/// `history`, an array of attempts); an unknown id is a failure ("no task with id ...").
pub(crate) async fn run(ctx: &Context, args: &IdArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let record = engine
        .task(args.id)
        .await?
        .ok_or(crate::Error::NotFound(args.id))?;
    let history = engine.attempts(args.id).await?;
    let out = ctx.out();
    if out.is_json() {
        let mut document = serde_json::to_value(&record)
            .map_err(|e| CliError::runtime(format!("cannot encode the task: {e}")))?;
        if let Some(fields) = document.as_object_mut() {
            let history = serde_json::to_value(&history)
                .map_err(|e| CliError::runtime(format!("cannot encode the history: {e}")))?;
            fields.insert("history".to_owned(), history);
        }
        out.document(&document)
    } else {
        let mut text = task_details(&record, Utc::now());
        if !history.is_empty() {
            text.push_str("\n\nattempts:\n");
            text.push_str(&attempt_table(&history));
        }
        out.text(&text)
    }
}
