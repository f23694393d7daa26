//! `fq serve`: owns a store (and so its control socket) until SIGINT or SIGTERM, so that
//! workers, producers and the CLI in other processes share it; then closes it cleanly. With
//! `--http` (or `http.listen`) it serves the web dashboard too; `Dashboard` here is shared with
//! `fq worker start --http`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::cli::args::ServeArgs;
use crate::cli::error::CliError;
use crate::cli::{Context, open_store, wait_for_lock};
use crate::web::{Server, WebError};
use crate::{Engine, Signals};

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
    if let Some(http) = args.http {
        config.http.listen = Some(http);
        // The same rule for the dashboard (`http.token`), also before binding anything.
        config.validate()?;
    }
    let wait = args.lock_wait.unwrap_or(config.worker.lock_wait);
    let path = config.database.clone();
    let engine = wait_for_lock(&path, wait, || {
        let config = config.clone();
        async move { open_store(config, true).map_err(CliError::from) }
    })
    .await?;
    let dashboard = Dashboard::start(&engine, None).await?;
    let http = dashboard.as_ref().map(Dashboard::addr);
    let path = engine.path().to_path_buf();
    let socket = engine.control_socket().map(Path::to_path_buf);
    let tcp = engine.control_addr();
    let recovery = engine.recovery();
    tracing::info!(
        store = %path.display(),
        socket = ?socket,
        tcp = ?tcp,
        http = ?http,
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
            "http": http.map(|addr| format!("http://{addr}/")),
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
        if let Some(http) = http {
            text.push_str(&format!("\ndashboard: http://{http}/"));
        }
        text.push_str("\nstop with Ctrl-C or SIGTERM");
        out.text(&text)?;
    }
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping");
    if let Some(dashboard) = dashboard {
        dashboard.stop().await;
    }
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

/// The web dashboard served beside a command, from `--http` or `http.listen`.
pub(crate) struct Dashboard {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), WebError>>,
}

impl Dashboard {
    /// Binds and starts serving when `flag` or the engine's `http.listen` names an address.
    pub(crate) async fn start(
        engine: &Engine,
        flag: Option<SocketAddr>,
    ) -> Result<Option<Dashboard>, CliError> {
        let Some(listen) = flag.or(engine.config().http.listen) else {
            return Ok(None);
        };
        let server = match Server::bind(engine.clone(), listen).await {
            Ok(server) => server,
            // A setting to change, as for `control.listen`.
            Err(error @ WebError::InsecureListen { .. }) => {
                return Err(CliError::usage(error.to_string()));
            }
            Err(error) => return Err(CliError::from_error(error)),
        };
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Some(Dashboard {
            addr,
            stop,
            serving,
        }))
    }

    /// The address served.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: open requests get a few seconds, then the server is dropped, so its
    /// engine handles are released before the store closes.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut serving = self.serving;
        match tokio::time::timeout(Duration::from_secs(5), &mut serving).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "dashboard"),
            Ok(_) => {}
            Err(_) => serving.abort(),
        }
    }
}
