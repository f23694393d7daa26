//! `fq pause Q` and `fq resume Q`: stop and restart the starting of a queue's tasks.

use crate::cli::args::QueueArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// Pauses (`pause`) or resumes the queue and says whether that changed it (`--json`:
/// `{"queue", "paused", "changed"}`).
pub(crate) async fn run(ctx: &Context, args: &QueueArgs, pause: bool) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let changed = if pause {
        engine.pause_queue(&args.queue).await?
    } else {
        engine.resume_queue(&args.queue).await?
    };
    let out = ctx.out();
    if out.is_json() {
        return out.document(&serde_json::json!({
            "queue": args.queue,
            "paused": pause,
            "changed": changed,
        }));
    }
    let state = if pause { "paused" } else { "resumed" };
    let already = if pause {
        "already paused"
    } else {
        "not paused"
    };
    out.text(&if changed {
        format!("queue {} {state}", args.queue)
    } else {
        format!("queue {} was {already}", args.queue)
    })
}
