//! `fq why ID`: where a task stands and what it waits for, in sentences (`--json`: the
//! same facts as a struct).

use crate::cli::args::IdArgs;
use crate::cli::error::CliError;
use crate::cli::observe::why_text;
use crate::cli::{Context, Store};

/// Prints the task's explanation; an unknown id is a failure ("no task with id ...").
pub(crate) async fn run(ctx: &Context, args: &IdArgs) -> Result<(), CliError> {
    let engine = ctx.engine(Store::ReadOnly).await?;
    let explanation = engine.explain(args.id).await?;
    let out = ctx.out();
    if out.is_json() {
        out.document(&explanation)
    } else {
        out.text(&why_text(&explanation))
    }
}
