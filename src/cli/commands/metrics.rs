//! `fq metrics`: the engine's Prometheus exposition, as `/metrics` serves it. Through the
//! control socket of the running engine (its counters since it opened), else read from the
//! store directly (queue depths only: no process is counting).

use crate::cli::error::CliError;
use crate::cli::{Context, Store};

/// Prints the exposition, or with `--json` an object with its content type and text.
pub(crate) async fn run(ctx: &Context) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let text = crate::metrics::render(&engine).await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&serde_json::json!({
            "content_type": crate::metrics::CONTENT_TYPE,
            "text": text,
        }))
    } else {
        out.text(text.trim_end())
    }
}
