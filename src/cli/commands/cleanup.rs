//! `fq cleanup`: applies the retention policy now (`cleanup.completed_retention` for COMPLETED,
//! `cleanup.retain_days` for FAILED and CANCELLED) and reports what it deleted.

use crate::cli::error::CliError;
use crate::cli::{Context, Store};
use crate::config::{DurationStyle, format_duration};

/// Deletes the finished tasks past retention and prints the counts.
pub(crate) async fn run(ctx: &Context) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let report = engine.cleanup().await?;
    let out = ctx.out();
    if out.is_json() {
        return out.document(&report);
    }
    let cleanup = &engine.config().cleanup;
    let total = report.completed + report.failed + report.cancelled;
    out.text(&format!(
        "deleted {total} task(s): {} completed (kept {}), {} failed and {} cancelled (kept {} day(s))",
        report.completed,
        format_duration(cleanup.completed_retention, DurationStyle::Short),
        report.failed,
        report.cancelled,
        cleanup.retain_days,
    ))
}
