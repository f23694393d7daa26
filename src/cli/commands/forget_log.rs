//! `fq forget-log`: lets a store whose write-ahead log went missing after a crash open again,
//! without the changes only that log held. Every other open refuses such a store, naming the
//! log, so that a log moved away by hand is put back rather than silently done without.

use serde_json::json;

use crate::Engine;
use crate::cli::Context;
use crate::cli::error::CliError;

/// Opens the store as its owner, going on without a missing log, and says what it did. A log
/// that is there is applied as by any open: nothing is forgotten then.
pub(crate) fn run(ctx: &Context) -> Result<(), CliError> {
    let config = ctx.config()?;
    let path = config.database.clone();
    if !path.exists() {
        return Err(CliError::usage(format!(
            "no store at {}: nothing to do",
            path.display()
        )));
    }
    let engine = Engine::builder(path.clone())
        .config(config)
        .control(false)
        .forget_missing_log(true)
        .open()
        .map_err(|e| CliError::from_error(e).context(format!("cannot open {}", path.display())))?;
    let forgotten = engine.recovery().missing_log_forgotten;
    drop(engine);
    let out = ctx.out();
    if out.is_json() {
        return out.document(&json!({ "store": path, "forgotten": forgotten }));
    }
    out.text(&if forgotten {
        format!(
            "{}: opened without its missing redo log; the changes only that log held are lost",
            path.display()
        )
    } else {
        format!(
            "{}: no redo log was missing (the store was stopped cleanly, or its log is there and was applied): nothing forgotten",
            path.display()
        )
    })
}
