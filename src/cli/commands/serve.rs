//! `fq serve`: owns a store (and so its control socket) until SIGINT or SIGTERM, so that
//! workers, producers and the CLI in other processes share it; then closes it cleanly.

use std::path::Path;

use serde_json::json;

use crate::Signals;
use crate::cli::args::ServeArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, open_store, wait_for_lock};

/// Opens the store, announces it, waits for a signal, closes the store.
pub(crate) async fn run(ctx: &Context, args: &ServeArgs) -> Result<(), CliError> {
    if ctx.global.connect.is_some() {
        return Err(CliError::usage(
            "serve runs an engine itself; --connect does not apply (use --db or --config)",
        ));
    }
    let mut signals = Signals::listen()?;
    let mut config = ctx.config()?;
    if let Some(listen) = args.listen {
        config.control.listen = Some(listen);
        // A non-loopback address without `control.token` is refused here, before binding.
        config.validate()?;
    }
    let wait = args.lock_wait.unwrap_or(config.worker.lock_wait);
    let path = config.database.clone();
    let engine = wait_for_lock(&path, wait, || {
        let config = config.clone();
        async move { open_store(config, true).map_err(CliError::from) }
    })
    .await?;
    let path = engine.path().to_path_buf();
    let socket = engine.control_socket().map(Path::to_path_buf);
    let tcp = engine.control_addr();
    let recovery = engine.recovery();
    tracing::info!(
        store = %path.display(),
        socket = ?socket,
        tcp = ?tcp,
        waiting = recovery.waiting,
        orphans_retrying = recovery.orphans_retrying,
        orphans_failed = recovery.orphans_failed,
        "serving"
    );
    let out = ctx.out();
    if out.is_json() {
        out.json_line(&json!({
            "serving": path,
            "socket": socket,
            "listen": tcp,
            "pid": std::process::id(),
            "recovery": {
                "waiting": recovery.waiting,
                "orphans_retrying": recovery.orphans_retrying,
                "orphans_failed": recovery.orphans_failed,
            },
        }))?;
    } else {
        let mut text = format!(
            "serving {} (pid {}; {} task(s) waiting)",
            path.display(),
            std::process::id(),
            recovery.waiting
        );
        if let Some(socket) = &socket {
            text.push_str(&format!("\ncontrol socket: {}", socket.display()));
        }
        if let Some(tcp) = tcp {
            text.push_str(&format!("\nlistening on tcp:{tcp}"));
        }
        text.push_str("\nstop with Ctrl-C or SIGTERM");
        out.text(&text)?;
    }
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping");
    // The last handle closes the store: pending commits finish, threads stop, the file
    // (and the socket) are released.
    drop(engine);
    if out.is_json() {
        out.json_line(&json!({"stopped": signal}))?;
    } else {
        out.text(&format!("stopped ({signal})"))?;
    }
    Ok(())
}
