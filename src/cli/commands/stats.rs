//! `fq stats`: task counts per queue, as a table or as the `Stats` JSON.

use crate::cli::error::CliError;
use crate::cli::output::stats_table;
use crate::cli::{Context, Store};

/// Prints the stats of the store.
pub(crate) async fn run(ctx: &Context) -> Result<(), CliError> {
    let engine = ctx.engine(Store::MustExist).await?;
    let stats = engine.stats().await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&stats)
    } else {
        out.text(&stats_table(&stats))
    }
}
