//! The control socket: how other processes reach the engine that owns a store (DESIGN §3).
//! `protocol` is the wire format (docs/protocol.md), `server` serves an engine's broker on its
//! Unix socket and optional TCP listener, `client` is the [`Broker`](crate::Broker) behind
//! `Engine::connect`. Depends on the `Broker` trait and its types only, never on the engine's
//! internals.

mod client;
pub(crate) mod protocol;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use client::ConnectOptions;
pub(crate) use client::RemoteBroker;
pub(crate) use server::{ControlServer, ServerSettings};

/// Names the serving process: "this process" when it is the caller's own (an `Engine` handle,
/// a worker or a running task of its still holds the store), else its pid.
fn served_by(pid: u32) -> String {
    if pid == std::process::id() {
        format!(
            "pid {pid}, this process (an Engine handle, a worker or a running task still holds the store)"
        )
    } else {
        format!("pid {pid}")
    }
}

/// Why an engine's control server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another live engine answers on the socket: the store (or at least the socket path) is
    /// in use.
    #[error(
        "control socket {} is already served by {} (store {store}); stop that engine, or use Engine::connect / --connect to work through it",
        socket.display(),
        served_by(*pid)
    )]
    AlreadyServed {
        /// The socket.
        socket: PathBuf,
        /// The serving process.
        pid: u32,
        /// The store it serves.
        store: String,
    },
    /// Something that is not an fq engine (of this protocol version) answers on the socket.
    #[error(
        "control socket {} is in use by something else: {reason}; set control.socket to another path",
        socket.display()
    )]
    SocketInUse {
        /// The socket.
        socket: PathBuf,
        /// What answered, or how it failed to.
        reason: String,
    },
    /// The socket path exists and is not a socket; fq never deletes such a file.
    #[error(
        "{} exists and is not a socket; remove it or set control.socket to another path",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The socket's private directory (`<socket>.d`) holds something fq did not put there, or
    /// is not a directory; fq never deletes it.
    #[error(
        "{} is in the way of control socket {}: {reason}; remove it or set control.socket to another path",
        path.display(),
        socket.display()
    )]
    ForeignDirectory {
        /// The directory's path.
        path: PathBuf,
        /// The socket it is for.
        socket: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The path does not fit a Unix socket address (107 bytes).
    #[error(
        "control socket path {} is bound as <path>.d/s, {len} bytes, over the 107-byte limit of Unix socket paths; set control.socket to a shorter path",
        path.display()
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// The length in bytes of the socket actually bound, `<socket>.d/s`.
        len: usize,
    },
    /// A TCP listener on an address other than loopback without a token.
    #[error(
        "refusing to listen on {addr} without control.token: it is not a loopback address, so anyone who can reach it could control the engine"
    )]
    InsecureListen {
        /// The address.
        addr: SocketAddr,
    },
    /// The TCP address could not be bound.
    #[error("cannot listen on {addr} (control.listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A file-system or thread operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. `bind the control socket`.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

impl ControlError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
