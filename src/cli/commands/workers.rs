//! `fq workers`: the live workers of the engine serving the store, and those gone in the
//! last hour.

use chrono::Utc;

use crate::cli::error::CliError;
use crate::cli::observe::workers_text;
use crate::cli::{Context, Store};

/// Prints the workers (`--json`: `{"live": [...], "gone": [...]}`). With no engine serving
/// the store, nobody keeps the list: it is empty.
pub(crate) async fn run(ctx: &Context) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let report = engine.workers().await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&report)
    } else {
        out.text(&workers_text(&report, Utc::now()))
    }
}
