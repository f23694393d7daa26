//! `fq purge --queue Q [--status S] --yes`: deletes a queue's tasks (all but RUNNING ones, or
//! those with one status) for good; refuses without `--yes`.

use serde_json::json;

use crate::TaskStatus;
use crate::cli::args::PurgeArgs;
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::{Context, Store};

/// Checks the confirmation and the status before opening anything, then purges.
pub(crate) async fn run(ctx: &Context, args: PurgeArgs) -> Result<(), CliError> {
    let what = match args.status {
        Some(status) => format!("the {status} tasks of queue {}", args.queue),
        None => format!("every task of queue {} except running ones", args.queue),
    };
    if !args.yes {
        return Err(CliError::usage(format!(
            "purge deletes {what} for good; add --yes to confirm"
        )));
    }
    if args.status == Some(TaskStatus::Running) {
        return Err(CliError::usage(
            "RUNNING tasks cannot be purged: stop their workers first",
        ));
    }
    let engine = ctx.engine(Store::MustExist).await?;
    let out = ctx.out();
    let spinner = out.spinner(format!("deleting {what}"));
    let purged = engine.purge(&args.queue, args.status).await;
    spinner.finish_and_clear();
    let purged = purged.map_err(usage_if_invalid)?;
    if out.is_json() {
        out.document(&json!({
            "purged": purged,
            "queue": args.queue,
            "status": args.status,
        }))
    } else {
        out.text(&format!("purged {purged} task(s): {what}"))
    }
}
