//! fq's configuration: the [`Config`] type and its parts, their defaults, loading from `fq.toml`
//! or Framefox's `config/services.yaml` (with `${VAR}` expansion and `FQ_*` overrides), and
//! validation. It only produces values; it never opens stores or connects to brokers.
//!
//! Loading is a short pipeline, one file per step: `file` finds, reads and parses a file into a
//! format-neutral tree; `decode` expands `${VAR}` over it and deserialises fq's section into the
//! `#[derive(Deserialize)]` types below, checking keys and types; `env` applies the overrides;
//! [`Config::validate`] checks ranges.

mod decode;
mod duration;
mod env;
mod error;
mod file;
mod names;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use duration::{DurationError, parse_duration};
pub use error::ConfigError;

pub(crate) use duration::{DurationStyle, format_duration};
pub(crate) use names::{check_name, check_queue};

use DurationStyle::Exact;
use env::Lookup;
use file::Format;

/// Most tasks a worker may run at once.
pub(crate) const MAX_CONCURRENCY: usize = 10_000;
/// Most retries a task may ask for (`max_retries`).
pub(crate) const MAX_RETRIES: u32 = 1_000;
/// Longest `worker.polling_interval` and `worker.shutdown_timeout`.
pub(crate) const MAX_WORKER_WAIT: Duration = Duration::from_secs(86_400);
/// Longest `defaults.retry_max_delay` and `defaults.timeout` (365 days). Keeps every deadline
/// computed from them far from `Instant`/`DateTime` overflow.
pub(crate) const MAX_TASK_DELAY: Duration = Duration::from_secs(365 * 86_400);
/// Longest retention, `cleanup.retain_days` and `cleanup.completed_retention` (100 years).
pub(crate) const MAX_RETAIN_DAYS: u64 = 36_500;
/// Longest `cleanup.interval_hours` (one year).
pub(crate) const MAX_CLEANUP_INTERVAL_HOURS: u64 = 8_760;
/// Most connections `control.max_connections` may allow.
pub(crate) const MAX_CONTROL_CONNECTIONS: usize = 65_536;

/// fq's validated settings: which broker, where the store lives, task defaults, worker, cleanup,
/// RabbitMQ and limits.
///
/// Build one with [`Config::load`] (file plus environment), [`Config::from_toml_str`] /
/// [`Config::from_yaml_str`], or [`Config::default`] and field updates followed by
/// [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct Config {
    /// Which transport carries tasks: the local store (default) or RabbitMQ.
    pub broker: BrokerKind,
    /// The redb store file, default `var/fq.redb`. A relative path is relative to the process's
    /// working directory (the project root), not to the config file, as in Framefox.
    pub database: PathBuf,
    /// Defaults for tasks that do not set their own queue, priority, retries or timeout.
    pub defaults: TaskDefaults,
    /// How `fq worker start` runs: queues, concurrency, idle recheck, shutdown grace.
    pub worker: WorkerConfig,
    /// How long finished tasks are kept, and how often they are swept.
    pub cleanup: CleanupConfig,
    /// Where RabbitMQ is, used when `broker` is `rabbitmq`.
    pub rabbitmq: RabbitConfig,
    /// Size and count limits enforced on producers and the control socket.
    pub limits: Limits,
    /// Where the engine listens for other processes (CLI, remote producers and workers).
    pub control: ControlConfig,
    /// The file this configuration came from, for messages; `None` for [`Config::default`] or
    /// when no file was found.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker: BrokerKind::default(),
            database: PathBuf::from("var/fq.redb"),
            defaults: TaskDefaults::default(),
            worker: WorkerConfig::default(),
            cleanup: CleanupConfig::default(),
            rabbitmq: RabbitConfig::default(),
            limits: Limits::default(),
            control: ControlConfig::default(),
            source: None,
        }
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
        match text {
            "database" => Ok(BrokerKind::Database),
            "rabbitmq" => Ok(BrokerKind::Rabbitmq),
            other => Err(format!(
                "expected \"database\" or \"rabbitmq\", got {other:?}"
            )),
        }
    }
}

/// Defaults for tasks that do not set their own (config section `defaults`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct TaskDefaults {
    /// Queue for tasks that name none, default `default`.
    pub queue: String,
    /// Priority for tasks that give none, default 0; higher runs first.
    pub priority: i32,
    /// Retries after the first failed run, default 3 (so up to 4 runs).
    pub max_retries: u32,
    /// Delay before the first retry, default 5 s; doubles each retry.
    #[serde(deserialize_with = "decode::duration")]
    pub retry_delay: Duration,
    /// Cap on the doubling retry delay, default 1 h.
    #[serde(deserialize_with = "decode::duration")]
    pub retry_max_delay: Duration,
    /// How long one run may take before it counts as failed; default `None` (no limit).
    #[serde(deserialize_with = "decode::optional_duration")]
    pub timeout: Option<Duration>,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        Self {
            queue: "default".to_owned(),
            priority: 0,
            max_retries: 3,
            retry_delay: Duration::from_secs(5),
            retry_max_delay: Duration::from_secs(3_600),
            timeout: None,
        }
    }
}

/// How a worker runs (config section `worker`, Framefox's `WorkerManager` setters).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct WorkerConfig {
    /// Queues served, default `["default"]`; by priority across all of them.
    pub queues: Vec<String>,
    /// Tasks run at once, default 10.
    pub concurrency: usize,
    /// Longest idle wait before rechecking for work, default 5 s. Workers are woken by new
    /// work; this only bounds how stale an idle worker's view can get.
    #[serde(deserialize_with = "decode::duration")]
    pub polling_interval: Duration,
    /// How long shutdown waits for running tasks before releasing them, default 30 s. Zero
    /// releases them at once.
    #[serde(deserialize_with = "decode::duration")]
    pub shutdown_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queues: vec!["default".to_owned()],
            concurrency: 10,
            polling_interval: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// Retention of finished tasks (config section `cleanup`, Framefox's `set_cleanup_config`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct CleanupConfig {
    /// Hours between cleanup runs, default 1.
    pub interval_hours: u64,
    /// Days FAILED and CANCELLED tasks are kept, default 7.
    pub retain_days: u64,
    /// How long COMPLETED tasks (and their results) are kept, default 1 day. Zero means they
    /// are deleted by the next cleanup run.
    #[serde(deserialize_with = "decode::duration")]
    pub completed_retention: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            interval_hours: 1,
            retain_days: 7,
            completed_retention: Duration::from_secs(86_400),
        }
    }
}

/// Where RabbitMQ is (config section `rabbitmq`). `Debug` redacts the password, also inside `url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct RabbitConfig {
    /// Default `localhost`.
    pub host: String,
    /// Default 5672.
    pub port: u16,
    /// Default `guest`.
    pub username: String,
    /// Default `guest`. Usually `${RABBIT_PASSWORD}` in files.
    pub password: String,
    /// Virtual host, default `/`.
    pub vhost: String,
    /// A full `amqp://` or `amqps://` URL; when set it wins over host, port, username,
    /// password and vhost. `FQ_RABBITMQ_URL` sets it.
    pub url: Option<String>,
    /// Unacknowledged deliveries per consumer; `None` (default) uses `worker.concurrency`.
    pub prefetch: Option<u16>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 5672,
            username: "guest".to_owned(),
            password: "guest".to_owned(),
            vhost: "/".to_owned(),
            url: None,
            prefetch: None,
        }
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
        format!(
            "amqp://{}:{}@{host}:{}/{}",
            percent_encode(&self.username),
            percent_encode(&self.password),
            self.port,
            percent_encode(&self.vhost)
        )
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &format_args!("{REDACTED}"))
            .field("vhost", &self.vhost)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// The default `limits.min_free_bytes`: room for many settlements' copy-on-write pages, small
/// beside any disk meant to hold a task store.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// Size and count limits (config section `limits`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct Limits {
    /// Largest task argument payload accepted, default 1 MiB.
    pub max_payload_bytes: usize,
    /// Largest control-socket frame, default 2 MiB; must exceed `max_payload_bytes` so a
    /// frame can carry a full payload plus its envelope.
    pub max_frame_bytes: usize,
    /// Most PENDING/RETRYING tasks a store may hold; `None` (default) means no limit.
    pub max_pending: Option<u64>,
    /// Free space, in bytes, that the store's file system must keep: below it enqueues are
    /// refused with a storage-full error (reads, claims and settlements go on, so running
    /// tasks can finish), and they are accepted again once space is freed. Default 64 MiB;
    /// 0 turns the check off.
    pub min_free_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_frame_bytes: 2 << 20,
            max_pending: None,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// The control socket (config section `control`): how other processes reach the engine that
/// owns the store. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table of settings")]
pub struct ControlConfig {
    /// The Unix socket; `None` (default) means the store path plus `.sock`
    /// (`var/fq.redb.sock`). A link to the socket (mode 0600) in a directory of its own,
    /// `<socket>.d/` (mode 0700), so only the engine's owner can connect.
    pub socket: Option<PathBuf>,
    /// A TCP address to listen on as well, e.g. `127.0.0.1:7878`; `None` (default) means no
    /// TCP. `localhost:PORT` means `127.0.0.1:PORT`. Any address other than a loopback one
    /// requires `token`.
    #[serde(deserialize_with = "decode::listen")]
    pub listen: Option<SocketAddr>,
    /// The secret a TCP client must present (`FQ_TOKEN` on the client side); `None` (default)
    /// means none, allowed only for a loopback `listen`. Usually `${FQ_CONTROL_TOKEN}` in files.
    /// Unix-socket clients are authenticated by the socket's file mode instead.
    pub token: Option<String>,
    /// Most connections served at once (Unix and TCP together), default 256; a client beyond
    /// it gets an error and is disconnected.
    pub max_connections: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: None,
            listen: None,
            token: None,
            max_connections: 256,
        }
    }
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

impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("socket", &self.socket)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Parses a `control.listen` value: `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
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

impl Config {
    /// Loads the configuration for this process.
    ///
    /// With a path, loads that file, TOML for `.toml`, YAML (fq's keys under `task:`) for
    /// `.yaml`/`.yml`. Without one, tries `fq.toml`, then `config/services.yaml`, in the current
    /// directory, and uses the defaults when neither exists. In every case `${VAR}` references
    /// in string values expand from the environment, then `FQ_BROKER`, `FQ_DATABASE` and
    /// `FQ_RABBITMQ_URL` override the file, and the result is validated.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file (and key, or variable) at fault: the file cannot be
    /// read or has an unknown extension, bad syntax, an unknown key, a value of the wrong type
    /// or out of range, an unset `${VAR}`, a YAML file without `task:`, or a bad override.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_in(path, Path::new(""), &env::process_env)
    }

    /// [`Config::load`] with the directory to search (and to resolve a relative `path`
    /// against) and the environment passed in, so tests need neither `chdir` nor `setenv`.
    fn load_in(path: Option<&Path>, dir: &Path, env: &Lookup<'_>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(path) => Some(dir.join(path)),
            None => file::find(dir)?,
        };
        let mut config = match path {
            Some(path) => {
                let format = Format::of(&path)?;
                let text = file::read(&path)?;
                // Not validated yet: the overrides may still change it.
                decode::decode(file::parse(&text, format, &path)?, &path, env)?
            }
            None => Config::default(),
        };
        env::apply_overrides(&mut config, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a TOML document (fq's keys at the top level); an empty document
    /// gives the defaults. `${VAR}` references expand from the process environment; the `FQ_*`
    /// overrides are not applied (that is [`Config::load`]'s job). `origin` only names the
    /// document in errors and in `source`.
    ///
    /// # Errors
    ///
    /// As [`Config::load`], minus reading and overrides.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Self::from_str_in(text, Format::Toml, origin, &env::process_env)
    }

    /// Parses and validates a YAML document such as Framefox's `config/services.yaml`: fq's
    /// keys are under the top-level `task:` key and every other top-level key is ignored.
    /// `${VAR}` expands as in [`Config::from_toml_str`]; overrides are not applied.
    ///
    /// # Errors
    ///
    /// As [`Config::load`], minus reading and overrides; a document without `task:` (an empty
    /// one included) is [`ConfigError::MissingSection`].
    pub fn from_yaml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Self::from_str_in(text, Format::Yaml, origin, &env::process_env)
    }

    /// Parses, decodes and validates a document of `format`.
    fn from_str_in(
        text: &str,
        format: Format,
        origin: &Path,
        env: &Lookup<'_>,
    ) -> Result<Config, ConfigError> {
        let config = decode::decode(file::parse(text, format, origin)?, origin, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value against its allowed range and the rules between them.
    ///
    /// Rules: `database` non-empty; queue names (`defaults.queue`, each of `worker.queues`) 1 to
    /// 255 bytes of `[A-Za-z0-9._:-]`; `worker.queues` non-empty without duplicates;
    /// `defaults.max_retries` ≤ 1000; `defaults.retry_delay` > 0 and ≤ `retry_max_delay` ≤ 365 days;
    /// `defaults.timeout`, when set, > 0 and ≤ 365 days; `worker.concurrency` 1 to 10 000;
    /// `worker.polling_interval` > 0 and ≤ 1 day; `worker.shutdown_timeout` ≤ 1 day;
    /// `cleanup.interval_hours` 1 to 8760; `cleanup.retain_days` 1 to 36 500;
    /// `cleanup.completed_retention` ≤ 36 500 days (0 allowed); `rabbitmq.host` non-empty;
    /// `rabbitmq.port` ≥ 1; `rabbitmq.url`, when set, `amqp://` or `amqps://`;
    /// `rabbitmq.prefetch`, when set, ≥ 1; `limits.max_payload_bytes` ≥ 1,
    /// `limits.max_frame_bytes` > `max_payload_bytes`; `limits.max_pending`, when set, ≥ 1;
    /// `control.socket`, when set, non-empty; `control.token`, when set, non-empty;
    /// `control.listen` other than a loopback address only with `control.token`;
    /// `control.max_connections` 1 to 65 536.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidValue`] for the first rule broken, naming the key and `source`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check()
            .map_err(|(key, message)| ConfigError::invalid(self.source.as_deref(), key, message))
    }

    /// The rules of [`Config::validate`], in the order they are reported.
    fn check(&self) -> Check {
        let (d, w, c) = (&self.defaults, &self.worker, &self.cleanup);
        let (r, l, k) = (&self.rabbitmq, &self.limits, &self.control);
        let name = |key: &str, value: &str| check_name(value).or_else(|reason| fail(key, reason));
        let empty = "must not be empty";
        let (greater, no_limit) = ("must be greater than 0", " (leave it out for no limit)");

        when(self.database.as_os_str().is_empty(), "database", empty)?;
        name("defaults.queue", &d.queue)?;
        range("defaults.max_retries", d.max_retries, 0, MAX_RETRIES)?;
        when(d.retry_delay.is_zero(), "defaults.retry_delay", greater)?;
        if d.retry_max_delay < d.retry_delay {
            let (min, got) = (
                format_duration(d.retry_delay, Exact),
                format_duration(d.retry_max_delay, Exact),
            );
            let message = format!("must be at least defaults.retry_delay ({min}), got {got}");
            return fail("defaults.retry_max_delay", message);
        }
        at_most(
            "defaults.retry_max_delay",
            d.retry_max_delay,
            MAX_TASK_DELAY,
        )?;
        if let Some(timeout) = d.timeout {
            let message = format!("{greater} (leave it out for no timeout)");
            when(timeout.is_zero(), "defaults.timeout", message)?;
            at_most("defaults.timeout", timeout, MAX_TASK_DELAY)?;
        }

        when(
            w.queues.is_empty(),
            "worker.queues",
            "must name at least one queue",
        )?;
        for (index, queue) in w.queues.iter().enumerate() {
            let key = format!("worker.queues[{index}]");
            name(&key, queue)?;
            let twice = w.queues[..index].contains(queue);
            when(twice, &key, format!("{queue:?} is listed more than once"))?;
        }
        range("worker.concurrency", w.concurrency, 1, MAX_CONCURRENCY)?;
        when(
            w.polling_interval.is_zero(),
            "worker.polling_interval",
            greater,
        )?;
        at_most(
            "worker.polling_interval",
            w.polling_interval,
            MAX_WORKER_WAIT,
        )?;
        at_most(
            "worker.shutdown_timeout",
            w.shutdown_timeout,
            MAX_WORKER_WAIT,
        )?;

        let max_interval = MAX_CLEANUP_INTERVAL_HOURS;
        range("cleanup.interval_hours", c.interval_hours, 1, max_interval)?;
        range("cleanup.retain_days", c.retain_days, 1, MAX_RETAIN_DAYS)?;
        let max_retention = Duration::from_secs(MAX_RETAIN_DAYS * 86_400);
        at_most(
            "cleanup.completed_retention",
            c.completed_retention,
            max_retention,
        )?;

        when(r.host.is_empty(), "rabbitmq.host", empty)?;
        range("rabbitmq.port", r.port, 1, u16::MAX)?;
        if let Some(url) = &r.url {
            check_amqp_url(url).or_else(|reason| fail("rabbitmq.url", reason))?;
        }
        let message = "must be at least 1, got 0 (leave it out to use worker.concurrency)";
        when(r.prefetch == Some(0), "rabbitmq.prefetch", message)?;

        range(
            "limits.max_payload_bytes",
            l.max_payload_bytes,
            1,
            usize::MAX,
        )?;
        if l.max_frame_bytes <= l.max_payload_bytes {
            let (payload, frame) = (l.max_payload_bytes, l.max_frame_bytes);
            let message =
                format!("must be greater than limits.max_payload_bytes ({payload}), got {frame}");
            return fail("limits.max_frame_bytes", message);
        }
        let message = format!("must be at least 1, got 0{no_limit}");
        when(l.max_pending == Some(0), "limits.max_pending", message)?;

        let empty_socket = k.socket.as_ref().is_some_and(|s| s.as_os_str().is_empty());
        let message = "must not be empty (leave it out for the store path plus .sock)";
        when(empty_socket, "control.socket", message)?;
        let message = "must not be empty (leave it out for no token)";
        when(
            k.token.as_ref().is_some_and(String::is_empty),
            "control.token",
            message,
        )?;
        if let Some(listen) = k.listen
            && !listen.ip().is_loopback()
            && k.token.is_none()
        {
            let message = format!(
                "{listen} is not a loopback address: set control.token so that only clients \
                 holding it can connect, or listen on 127.0.0.1"
            );
            return fail("control.listen", message);
        }
        range(
            "control.max_connections",
            k.max_connections,
            1,
            MAX_CONTROL_CONNECTIONS,
        )
    }
}

/// A broken rule: (key path, message).
type Check = Result<(), (String, String)>;

fn fail(key: &str, message: impl Into<String>) -> Check {
    Err((key.to_owned(), message.into()))
}

fn when(broken: bool, key: &str, message: impl Into<String>) -> Check {
    if broken { fail(key, message) } else { Ok(()) }
}

fn range<T: Copy + PartialOrd + fmt::Display>(key: &str, value: T, min: T, max: T) -> Check {
    when(
        value < min,
        key,
        format!("must be at least {min}, got {value}"),
    )?;
    when(
        value > max,
        key,
        format!("must be at most {max}, got {value}"),
    )
}

fn at_most(key: &str, value: Duration, max: Duration) -> Check {
    let (max_text, got) = (format_duration(max, Exact), format_duration(value, Exact));
    when(
        value > max,
        key,
        format!("must be at most {max_text}, got {got}"),
    )
}

/// What a redacted secret prints as.
const REDACTED: &str = "<redacted>";

/// Checks that `url` is an AMQP URL; the message never shows the URL's password.
fn check_amqp_url(url: &str) -> Result<(), String> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("amqp" | "amqps") => Ok(()),
        _ if url.is_empty() => Err("must not be empty".to_owned()),
        _ => Err(format!(
            "must start with amqp:// or amqps://, got {:?}",
            redact_url(url)
        )),
    }
}

/// `url` with the password of its user info replaced by `<redacted>`.
///
/// The user info is taken to end at the *last* `@`, so a password holding an unencoded `/` or
/// `@` is still hidden; a stray `@` later in the URL can only hide more than needed.
fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |scheme_end| scheme_end + 3);
    let rest = &url[start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let user_info = &rest[..at];
    match user_info.find(':') {
        Some(colon) => format!(
            "{}{}:{REDACTED}{}",
            &url[..start],
            &user_info[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
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
