//! The client side of the control socket, behind `Engine::connect`: [`ConnectOptions`], where
//! the engine listens ([`Endpoint`]) and what it said about itself ([`RemoteInfo`]). The
//! connection, its pipelining and its reconnection are in `transport`; `remote` is
//! [`RemoteBroker`], the [`Broker`](crate::Broker) over it. Owns no engine state: the serving
//! engine holds the truth.

mod remote;
mod transport;

use std::path::PathBuf;
use std::time::Duration;

use super::protocol::ServerHello;
use crate::broker::RetentionPolicy;
use crate::{Error, Result};

pub(crate) use remote::RemoteBroker;

/// The environment variable [`ConnectOptions::from_env`] reads the token from.
pub(crate) const TOKEN_VAR: &str = "FQ_TOKEN";

/// Options for [`Engine::connect_with`](crate::Engine::connect_with).
#[derive(Clone)]
#[must_use]
pub struct ConnectOptions {
    token: Option<String>,
    client: String,
    reconnect_wait: Duration,
    connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token: None,
            client: format!("fq-rust/{}", env!("CARGO_PKG_VERSION")),
            reconnect_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("client", &self.client)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ConnectOptions {
    /// No token, the default name and waits.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults, with the token from the `FQ_TOKEN` environment variable when it is set
    /// (what [`Engine::connect`](crate::Engine::connect) uses).
    pub fn from_env() -> Self {
        Self {
            token: std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty()),
            ..Self::default()
        }
    }

    /// The control token (the server's `control.token`), needed over TCP when the server has
    /// one; Unix-socket connections do not need it (default: none).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A name for the server's logs (default `fq-rust/<version>`).
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client = name.into();
        self
    }

    /// How long a request made while the connection is down waits for it to come back before
    /// failing with [`Error::Connect`] (default 10 s). Claims wait at most their own wait.
    pub fn reconnect_wait(mut self, wait: Duration) -> Self {
        self.reconnect_wait = wait;
        self
    }

    /// How long connecting, and the handshake, may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// Where the engine listens.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl Endpoint {
    /// `unix:PATH`, `tcp:HOST:PORT`, or a bare path: a socket, or a store file (`*.redb`),
    /// whose default socket is its path plus `.sock`.
    fn parse(addr: &str) -> Result<Self> {
        if let Some(rest) = addr.strip_prefix("tcp:") {
            let port = rest
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            return match port {
                Some((host, Ok(_))) if !host.is_empty() => Ok(Endpoint::Tcp(rest.to_owned())),
                _ => Err(Error::invalid(
                    "connect",
                    format!("{addr:?} is not tcp:HOST:PORT, e.g. tcp:127.0.0.1:7878"),
                )),
            };
        }
        let path = addr.strip_prefix("unix:").unwrap_or(addr);
        if path.is_empty() {
            return Err(Error::invalid(
                "connect",
                "expected unix:PATH, tcp:HOST:PORT or a socket path, got an empty address",
            ));
        }
        if addr.starts_with("unix:") || !path.ends_with(".redb") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        Ok(Endpoint::Unix(PathBuf::from(format!("{path}.sock"))))
    }
}

/// What the engine said about itself when the connection was made.
#[derive(Clone, Debug)]
pub(crate) struct RemoteInfo {
    pub(crate) store: PathBuf,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retention: RetentionPolicy,
    pub(crate) lease: Duration,
}

impl From<&ServerHello> for RemoteInfo {
    fn from(hello: &ServerHello) -> Self {
        Self {
            store: PathBuf::from(&hello.store),
            queue: hello.defaults.queue.clone(),
            priority: hello.defaults.priority,
            max_retries: hello.defaults.max_retries,
            timeout: hello.defaults.timeout_ms.map(Duration::from_millis),
            retention: RetentionPolicy {
                completed: Duration::from_millis(hello.retention.completed_ms),
                failed: Duration::from_millis(hello.retention.failed_ms),
            },
            lease: Duration::from_millis(hello.lease_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let unix = |path: &str| Endpoint::Unix(path.into());
        let tcp = |address: &str| Endpoint::Tcp(address.into());
        for (text, expected) in [
            ("unix:/run/fq.sock", unix("/run/fq.sock")),
            ("var/fq.redb.sock", unix("var/fq.redb.sock")),
            ("var/fq.redb", unix("var/fq.redb.sock")),
            ("unix:var/fq.redb", unix("var/fq.redb")),
            ("tcp:127.0.0.1:7878", tcp("127.0.0.1:7878")),
            ("tcp:[::1]:7878", tcp("[::1]:7878")),
        ] {
            assert_eq!(Endpoint::parse(text).unwrap(), expected, "{text}");
        }
        for bad in ["", "unix:", "tcp:7878", "tcp:host:port", "tcp::1"] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "connect",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn options_hide_the_token() {
        let options = ConnectOptions::new().token("hunter2");
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
