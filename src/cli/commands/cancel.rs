//! `fq cancel ID`: cancels a PENDING or RETRYING task.

use crate::cli::args::IdArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// This command as the record names it: `fq cancel (pid N, user U)`.
fn who() -> String {
    let pid = std::process::id();
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.is_empty() => format!("fq cancel (pid {pid}, user {user})"),
        _ => format!("fq cancel (pid {pid})"),
    }
}

/// Cancels the task and prints it (its record with `--json`).
pub(crate) async fn run(ctx: &Context, args: &IdArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let record = engine.cancel_by(args.id, &who()).await?;
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
