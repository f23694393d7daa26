//! SIGINT and SIGTERM (ctrl-c off Unix): the one place fq listens for them, used by the worker
//! manager's own shutdown and by the CLI's long-running commands. It only reports signals;
//! what a signal stops is the caller's business. Public (`fq::Signals`) for applications that
//! serve an engine from their own binary, as the `fq` CLI does.

/// A signal handler the operating system refused to install.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {name}")]
pub struct SignalError {
    /// The signal, e.g. `SIGTERM`.
    pub name: &'static str,
    /// Why the operating system refused.
    #[source]
    pub source: std::io::Error,
}

/// Installed handlers for SIGINT and SIGTERM.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call it inside the runtime. Once it returns, a signal can no
    /// longer kill the process uncleanly, so callers install them before saying they are ready.
    ///
    /// # Errors
    /// When the operating system refuses them.
    pub fn listen() -> Result<Self, SignalError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, name: &'static str| {
                signal(kind).map_err(|source| SignalError { name, source })
            };
            Ok(Self {
                interrupt: install(SignalKind::interrupt(), "SIGINT")?,
                terminate: install(SignalKind::terminate(), "SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "ctrl-c",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
