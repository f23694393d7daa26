//! fq's configuration: the [`Config`] type and its parts, with their defaults. It only produces
//! values; it never opens stores or connects to brokers.
//!
//! Loading is a short pipeline, one file per step: `file` finds, reads and parses `fq.toml` or
//! Framefox's `config/services.yaml` into a format-neutral tree; `decode` expands `${VAR}` over it
//! and deserialises fq's section into the types below; `env` applies the `FQ_*` overrides; `load`
//! runs the steps and holds the range rules of [`Config::validate`].

mod decode;
mod duration;
mod env;
mod error;
mod file;
mod load;
mod names;
mod queue_limits;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use duration::{DurationError, parse_duration};
pub use error::ConfigError;
pub use queue_limits::{MAX_QUEUE_LIMIT, MAX_RATE_PERIOD, QueueLimits, Rate};

pub use duration::{DurationStyle, format_duration};
pub use names::check_name;
pub(crate) use names::check_queue;

// The unit tests name `Format` through `use super::*`.
#[cfg(test)]
use file::Format;
#[cfg(feature = "rabbitmq")]
pub(crate) use load::RABBITMQ_LIMITS;
use load::{REDACTED, check_amqp_url, redact_url};

/// Most tasks a worker may run at once.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;
/// Most retries a task may ask for (`max_retries`).
pub(crate) const MAX_RETRIES: u32 = 1_000;
/// Longest `worker.polling_interval`, `worker.shutdown_timeout` and `worker.lock_wait`.
pub const MAX_WORKER_WAIT: Duration = Duration::from_secs(86_400);
/// Longest `defaults.retry_max_delay` and `defaults.timeout` (365 days). Keeps every deadline
/// computed from them far from `Instant`/`DateTime` overflow.
pub(crate) const MAX_TASK_DELAY: Duration = Duration::from_secs(365 * 86_400);
/// Longest retention, `cleanup.retain_days` and `cleanup.completed_retention` (100 years).
pub(crate) const MAX_RETAIN_DAYS: u64 = 36_500;
/// Longest `cleanup.interval_hours` (one year).
pub(crate) const MAX_CLEANUP_INTERVAL_HOURS: u64 = 8_760;
/// Most connections `control.max_connections` may allow.
pub(crate) const MAX_CONTROL_CONNECTIONS: usize = 65_536;

/// Declares a config section: every key optional (missing ones keep the default), unknown keys
/// refused, `Default` built from the `= value` after each field, so a default is written once,
/// next to the field it belongs to, and `Debug` showing each field, or what the function after
/// `=>` makes of it (to keep secrets out of logs).
macro_rules! section {
    ($(#[$attr:meta])* pub struct $name:ident {
        $($(#[$field_attr:meta])* pub $field:ident: $ty:ty = $default:expr $(=> $shown:expr)?,)*
    }) => {
        $(#[$attr])*
        #[derive(Clone, PartialEq, Eq, Deserialize)]
        #[serde(default, deny_unknown_fields, expecting = "a table of settings")]
        pub struct $name {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default,)* }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    $(.field(stringify!($field), &section!(@shown self.$field $(, $shown)?)))*
                    .finish()
            }
        }
    };
    (@shown $value:expr) => { $value };
    (@shown $value:expr, $shown:expr) => { ($shown)(&$value) };
}

mod schedules;
pub use schedules::{JsonArguments, ScheduleConfig};

/// What a secret shows as in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

section! {
    /// fq's validated settings, one field per part of the config file.
    ///
    /// Build one with [`Config::load`] (file plus environment), [`Config::from_toml_str`] /
    /// [`Config::from_yaml_str`], or [`Config::default`] and field updates followed by
    /// [`Config::validate`].
    pub struct Config {
        /// Which transport carries tasks: the local store (default) or RabbitMQ.
        pub broker: BrokerKind = BrokerKind::Database,
        /// The redb store file, default `var/fq.redb`. A relative path is relative to the
        /// process's working directory (the project root), not to the config file, as in Framefox.
        pub database: PathBuf = PathBuf::from("var/fq.redb"),
        /// Make each commit durable by appending it to a redo log beside the store
        /// (`<database>-wal`) and syncing that, instead of syncing the store's B-tree pages;
        /// the store is then synced by checkpoints. Same promise either way: an acknowledged
        /// change survives a crash or power loss. On by default; `false` syncs the B-tree at
        /// every commit (slower; `PERFORMANCE.md`).
        pub write_ahead_log: bool = true,
        /// Defaults for tasks that do not set their own queue, priority, retries or timeout.
        pub defaults: TaskDefaults = TaskDefaults::default(),
        /// How `fq worker start` runs: queues, concurrency, idle recheck, shutdown grace.
        pub worker: WorkerConfig = WorkerConfig::default(),
        /// How long finished tasks are kept, and how often they are swept.
        pub cleanup: CleanupConfig = CleanupConfig::default(),
        /// Where RabbitMQ is, used when `broker` is `rabbitmq`.
        pub rabbitmq: RabbitConfig = RabbitConfig::default(),
        /// Size and count limits enforced on producers and the control socket.
        pub limits: Limits = Limits::default(),
        /// Where the engine listens for other processes (CLI, remote producers and workers).
        pub control: ControlConfig = ControlConfig::default(),
        /// The web dashboard (`fq serve --http`, `fq::web::router`): where it listens, and the
        /// token that unlocks its actions.
        pub http: HttpConfig = HttpConfig::default(),
        /// Prometheus metrics (`fq metrics`, the dashboard's `/metrics`).
        pub metrics: MetricsConfig = MetricsConfig::default(),
        /// Recurring schedules the owning engine declares at open (`[[schedules]]`).
        pub schedules: Vec<ScheduleConfig> = Vec::new(),
        /// Per-queue settings by queue name (`[queues.emails]`): concurrency and rate limits.
        pub queues: std::collections::BTreeMap<String, QueueConfig> =
            std::collections::BTreeMap::new(),
        /// The file this configuration came from, for messages; `None` for [`Config::default`]
        /// or when no file was found.
        #[serde(skip)]
        pub source: Option<PathBuf> = None,
    }
}

/// The transport between producers and workers (config key `broker`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// `database`: the local redb store, no external service (Framefox's name for its default).
    #[default]
    Database,
    /// `rabbitmq`: the RabbitMQ bridge, with the local store as a durable outbox.
    Rabbitmq,
}

impl BrokerKind {
    /// The name used in config files: `database` or `rabbitmq`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Database => "database",
            BrokerKind::Rabbitmq => "rabbitmq",
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrokerKind {
    type Err = String;

    /// Parses `database` or `rabbitmq`, exactly (lowercase, as in Framefox).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [BrokerKind::Database, BrokerKind::Rabbitmq]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("expected \"database\" or \"rabbitmq\", got {text:?}"))
    }
}

section! {
    /// Defaults for tasks that do not set their own (config section `defaults`).
    pub struct TaskDefaults {
        /// Queue for tasks that name none, default `default`.
        pub queue: String = "default".to_owned(),
        /// Priority for tasks that give none, default 0; higher runs first.
        pub priority: i32 = 0,
        /// Retries after the first failed run, default 3 (so up to 4 runs).
        pub max_retries: u32 = 3,
        /// Delay before the first retry, default 5 s; doubles each retry.
        pub retry_delay: Duration = Duration::from_secs(5),
        /// Cap on the doubling retry delay, default 1 h.
        pub retry_max_delay: Duration = Duration::from_secs(3_600),
        /// How long one run may take before it counts as failed; default `None` (no limit).
        pub timeout: Option<Duration> = None,
    }
}

section! {
    /// How a worker runs (config section `worker`, Framefox's `WorkerManager` setters).
    pub struct WorkerConfig {
        /// Queues served, default `["default"]`; by priority across all of them.
        pub queues: Vec<String> = vec!["default".to_owned()],
        /// Tasks run at once, default 10.
        pub concurrency: usize = 10,
        /// Longest idle wait before rechecking for work, default 5 s. Workers are woken by new
        /// work; this only bounds how stale an idle worker's view can get.
        pub polling_interval: Duration = Duration::from_secs(5),
        /// How long shutdown waits for running tasks before releasing them, default 30 s. Zero
        /// releases them at once.
        pub shutdown_timeout: Duration = Duration::from_secs(30),
        /// How long `fq serve` and `fq worker start` wait for a store that another process (a
        /// one-shot command, an owner still shutting down) holds before giving up, default 10 s.
        /// Zero gives up at once.
        pub lock_wait: Duration = Duration::from_secs(10),
    }
}

section! {
    /// Prometheus metrics (config section `metrics`; README "Metrics").
    pub struct MetricsConfig {
        /// Count tasks, runs and commits for `fq metrics` and `/metrics`, default `true`: the
        /// cost is a few counter updates per commit (README "Metrics" has the measured cost).
        /// `false` makes the engine record nothing and refuse to render an exposition.
        pub enabled: bool = true,
    }
}

section! {
    /// Retention of finished tasks (config section `cleanup`, Framefox's `set_cleanup_config`).
    pub struct CleanupConfig {
        /// Hours between cleanup runs, default 1.
        pub interval_hours: u64 = 1,
        /// Days FAILED and CANCELLED tasks are kept, default 7.
        pub retain_days: u64 = 7,
        /// How long COMPLETED tasks (and their results) are kept, default 1 day. Zero means
        /// they are deleted by the next cleanup run.
        pub completed_retention: Duration = Duration::from_secs(86_400),
    }
}

section! {
    /// Where RabbitMQ is (config section `rabbitmq`). `Debug` redacts the password, also
    /// inside `url`.
    pub struct RabbitConfig {
        /// Default `localhost`.
        pub host: String = "localhost".to_owned(),
        /// Default 5672.
        pub port: u16 = 5672,
        /// Default `guest`.
        pub username: String = "guest".to_owned(),
        /// Default `guest`. Usually `${RABBIT_PASSWORD}` in files.
        pub password: String = "guest".to_owned() => |_: &String| Redacted,
        /// Virtual host, default `/`.
        pub vhost: String = "/".to_owned(),
        /// A full `amqp://` or `amqps://` URL; when set it wins over host, port, username,
        /// password and vhost. `FQ_RABBITMQ_URL` sets it.
        pub url: Option<String> = None
            => |url: &Option<String>| url.as_deref().map(redact_url),
        /// Unacknowledged deliveries per consumer; `None` (default) uses 4 times
        /// `worker.concurrency`.
        pub prefetch: Option<u16> = None,
    }
}

impl RabbitConfig {
    /// The URL to connect to: `url` when set, else
    /// `amqp://username:password@host:port/vhost` with username, password and vhost
    /// percent-encoded (vhost `/` becomes `%2f`) and an IPv6 host in brackets.
    #[must_use]
    pub fn amqp_url(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let (user, password) = (
            percent_encode(&self.username),
            percent_encode(&self.password),
        );
        let (port, vhost) = (self.port, percent_encode(&self.vhost));
        format!("amqp://{user}:{password}@{host}:{port}/{vhost}")
    }
}

/// The default `limits.min_free_bytes`: room for many settlements' copy-on-write pages, small
/// beside any disk meant to hold a task store.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

section! {
    /// Size and count limits (config section `limits`).
    pub struct Limits {
        /// Largest task argument payload accepted, default 1 MiB.
        pub max_payload_bytes: usize = 1 << 20,
        /// Largest control-socket frame, default 2 MiB; must exceed `max_payload_bytes` so a
        /// frame can carry a full payload plus its envelope.
        pub max_frame_bytes: usize = 2 << 20,
        /// Most PENDING/RETRYING tasks a store may hold; `None` (default) means no limit.
        pub max_pending: Option<u64> = None,
        /// Free space, in bytes, that the store's file system must keep: below it enqueues are
        /// refused with a storage-full error (reads, claims and settlements go on, so running
        /// tasks can finish), and they are accepted again once space is freed. Default 64 MiB;
        /// 0 turns the check off.
        pub min_free_bytes: u64 = DEFAULT_MIN_FREE_BYTES,
        /// Attempts kept in each task's history (README "Attempt history"), newest last;
        /// default 25, 0 keeps none.
        pub attempt_history: usize = crate::task::DEFAULT_ATTEMPT_HISTORY,
    }
}

section! {
    /// One queue's settings (config section `queues.<name>`), applied by the engine that owns
    /// the store to every claim, local and remote.
    pub struct QueueConfig {
        /// Most tasks of the queue running at once, across every worker; `None` (default)
        /// means no limit.
        pub concurrency: Option<u32> = None,
        /// Most starts per period, spread evenly (`"100/1m"`, `"50/s"`); `None` (default)
        /// means no limit.
        pub rate: Option<String> = None,
    }
}

impl QueueConfig {
    /// The limits these settings set.
    ///
    /// # Errors
    /// `(field, reason)` for a bad value (as [`Config::validate`] reports it).
    pub fn limits(&self) -> Result<QueueLimits, (&'static str, String)> {
        let rate = match &self.rate {
            Some(text) => Some(text.parse::<Rate>().map_err(|reason| ("rate", reason))?),
            None => None,
        };
        let limits = QueueLimits {
            concurrency: self.concurrency,
            rate,
        };
        limits.check()?;
        Ok(limits)
    }
}

section! {
    /// The control socket (config section `control`): how other processes reach the engine
    /// that owns the store. `Debug` redacts the token.
    pub struct ControlConfig {
        /// The Unix socket; `None` (default) means the store path plus `.sock`
        /// (`var/fq.redb.sock`). A link to the socket (mode 0600) in a directory of its own,
        /// `<socket>.d/` (mode 0700), so only the engine's owner can connect.
        pub socket: Option<PathBuf> = None,
        /// A TCP address to listen on as well, e.g. `127.0.0.1:7878`; `None` (default) means
        /// no TCP. `localhost:PORT` means `127.0.0.1:PORT`. Any address other than a loopback
        /// one requires `token`.
        #[serde(deserialize_with = "decode::listen")]
        pub listen: Option<SocketAddr> = None,
        /// The secret a TCP client must present (`FQ_TOKEN` on the client side); `None`
        /// (default) means none, allowed only for a loopback `listen`. Usually
        /// `${FQ_CONTROL_TOKEN}` in files. Unix-socket clients are authenticated by the
        /// socket's file mode instead.
        pub token: Option<String> = None
            => |token: &Option<String>| token.as_ref().map(|_| REDACTED),
        /// Most connections served at once (Unix and TCP together), default 256; a client
        /// beyond it gets an error and is disconnected.
        pub max_connections: usize = 256,
    }
}

section! {
    /// The web dashboard (config section `http`): where `fq serve --http` and
    /// `fq worker start --http` listen, and the token that unlocks its actions. `Debug` redacts
    /// the token.
    pub struct HttpConfig {
        /// The address to serve the dashboard on, e.g. `127.0.0.1:8080`; `None` (default)
        /// means no dashboard unless `--http` asks for one. `localhost:PORT` means
        /// `127.0.0.1:PORT`. Any address other than a loopback one requires `token`.
        #[serde(deserialize_with = "decode::listen")]
        pub listen: Option<SocketAddr> = None,
        /// The secret that unlocks the dashboard's actions (retry, cancel, purge, pause), typed
        /// into its login form; `None` (default) means a read-only dashboard, allowed only on a
        /// loopback address. Usually `${FQ_HTTP_TOKEN}` in files.
        pub token: Option<String> = None
            => |token: &Option<String>| token.as_ref().map(|_| REDACTED),
    }
}

/// Whether a listener on `listen` would be open to other machines without a token: true for an
/// address other than loopback when `token` is `None`. The one rule behind `control.listen`
/// and `http.listen` (both refused in that case), so the two cannot drift apart.
#[must_use]
pub fn exposed_without_token(listen: SocketAddr, token: Option<&str>) -> bool {
    !listen.ip().is_loopback() && token.is_none()
}

impl ControlConfig {
    /// The socket path for a store at `database`: `socket` when set, else `database` + `.sock`.
    #[must_use]
    pub fn socket_path(&self, database: &Path) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| {
            let mut path = database.as_os_str().to_owned();
            path.push(".sock");
            PathBuf::from(path)
        })
    }
}

/// Parses a `control.listen` value: `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in {text:?}: expected 0 to 65535"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!(
            "expected an address such as \"127.0.0.1:7878\", \"[::1]:7878\" or \"localhost:7878\", got {text:?}"
        )
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, lowercase hex as in
/// RabbitMQ's documentation (`/` becomes `%2f`).
fn percent_encode(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    // The crate writes `%2F`; each escape comes as a piece of its own.
    utf8_percent_encode(text, RESERVED)
        .map(|piece| match piece.starts_with('%') {
            true => piece.to_ascii_lowercase(),
            false => piece.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
