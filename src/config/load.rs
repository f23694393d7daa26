//! Loading and validating a [`Config`]: the `load` / `from_*_str` entry points that run the
//! pipeline (`file`, then `decode`, then `env`), the range rules of [`Config::validate`], and the
//! AMQP URL check and redaction both share. It owns no parsing and no value types.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use super::DurationStyle::Exact;
use super::env::{self, Lookup};
use super::file::{self, Format};
use super::{BrokerKind, Config, ConfigError, check_name, decode};
use super::{MAX_CLEANUP_INTERVAL_HOURS, MAX_CONCURRENCY, MAX_CONTROL_CONNECTIONS};
use super::{MAX_RETAIN_DAYS, MAX_RETRIES, MAX_TASK_DELAY, MAX_WORKER_WAIT};
use super::{exposed_without_token, format_duration};

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
    pub(super) fn load_in(
        path: Option<&Path>,
        dir: &Path,
        env: &Lookup<'_>,
    ) -> Result<Config, ConfigError> {
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
    pub(super) fn from_str_in(
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
    /// `worker.polling_interval` > 0 and ≤ 1 day; `worker.shutdown_timeout` and `worker.lock_wait` ≤ 1 day;
    /// `cleanup.interval_hours` 1 to 8760; `cleanup.retain_days` 1 to 36 500;
    /// `cleanup.completed_retention` ≤ 36 500 days (0 allowed); `rabbitmq.host` non-empty;
    /// `rabbitmq.port` ≥ 1; `rabbitmq.url`, when set, `amqp://` or `amqps://`;
    /// `rabbitmq.prefetch`, when set, ≥ 1; `limits.max_payload_bytes` ≥ 1,
    /// `limits.max_frame_bytes` > `max_payload_bytes`; `limits.max_pending`, when set, ≥ 1;
    /// `control.socket`, when set, non-empty; `control.token`, when set, non-empty;
    /// `control.listen` other than a loopback address only with `control.token`;
    /// `control.max_connections` 1 to 65 536; `http.token`, when set, non-empty; `http.listen`
    /// other than a loopback address only with `http.token`; each `queues.<name>` a queue name, its
    /// `concurrency`, when set, 1 to 1 000 000, its `rate`, when set, `STARTS/PERIOD` with
    /// 1 to 1 000 000 starts per 1 ms to 1 day, and neither with `broker = "rabbitmq"`.
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
        let (empty, greater) = ("must not be empty", "must be greater than 0");
        let (day, year) = (MAX_WORKER_WAIT, MAX_TASK_DELAY);

        when(self.database.as_os_str().is_empty(), "database", empty)?;
        name("defaults.queue", &d.queue)?;
        range("defaults.max_retries", d.max_retries, 0, MAX_RETRIES)?;
        when(d.retry_delay.is_zero(), "defaults.retry_delay", greater)?;
        if d.retry_max_delay < d.retry_delay {
            let (min, got) = (exact(d.retry_delay), exact(d.retry_max_delay));
            let message = format!("must be at least defaults.retry_delay ({min}), got {got}");
            return fail("defaults.retry_max_delay", message);
        }
        at_most("defaults.retry_max_delay", d.retry_max_delay, year)?;
        if let Some(timeout) = d.timeout {
            let message = format!("{greater} (leave it out for no timeout)");
            when(timeout.is_zero(), "defaults.timeout", message)?;
            at_most("defaults.timeout", timeout, year)?;
        }

        let one_queue = "must name at least one queue";
        when(w.queues.is_empty(), "worker.queues", one_queue)?;
        for (index, queue) in w.queues.iter().enumerate() {
            let key = format!("worker.queues[{index}]");
            name(&key, queue)?;
            let twice = w.queues[..index].contains(queue);
            when(twice, &key, format!("{queue:?} is listed more than once"))?;
        }
        range("worker.concurrency", w.concurrency, 1, MAX_CONCURRENCY)?;
        let polling = w.polling_interval;
        when(polling.is_zero(), "worker.polling_interval", greater)?;
        at_most("worker.polling_interval", polling, day)?;
        at_most("worker.shutdown_timeout", w.shutdown_timeout, day)?;
        at_most("worker.lock_wait", w.lock_wait, day)?;

        let max_interval = MAX_CLEANUP_INTERVAL_HOURS;
        range("cleanup.interval_hours", c.interval_hours, 1, max_interval)?;
        range("cleanup.retain_days", c.retain_days, 1, MAX_RETAIN_DAYS)?;
        let (retention, most) = (c.completed_retention, MAX_RETAIN_DAYS * 86_400);
        at_most(
            "cleanup.completed_retention",
            retention,
            Duration::from_secs(most),
        )?;

        when(r.host.is_empty(), "rabbitmq.host", empty)?;
        range("rabbitmq.port", r.port, 1, u16::MAX)?;
        if let Some(url) = &r.url {
            check_amqp_url(url).or_else(|reason| fail("rabbitmq.url", reason))?;
        }
        let message = "must be at least 1, got 0 (leave it out to use worker.concurrency)";
        when(r.prefetch == Some(0), "rabbitmq.prefetch", message)?;

        let (payload, frame) = (l.max_payload_bytes, l.max_frame_bytes);
        range("limits.max_payload_bytes", payload, 1, usize::MAX)?;
        if frame <= payload {
            let message =
                format!("must be greater than limits.max_payload_bytes ({payload}), got {frame}");
            return fail("limits.max_frame_bytes", message);
        }
        let message = "must be at least 1, got 0 (leave it out for no limit)";
        when(l.max_pending == Some(0), "limits.max_pending", message)?;

        let empty_socket = k.socket.as_ref().is_some_and(|s| s.as_os_str().is_empty());
        let message = "must not be empty (leave it out for the store path plus .sock)";
        when(empty_socket, "control.socket", message)?;
        let message = "must not be empty (leave it out for no token)";
        let empty_token = k.token.as_ref().is_some_and(String::is_empty);
        when(empty_token, "control.token", message)?;
        if let Some(listen) = k.listen
            && exposed_without_token(listen, k.token.as_deref())
        {
            let message = format!(
                "{listen} is not a loopback address: set control.token so that only clients \
                 holding it can connect, or listen on 127.0.0.1"
            );
            return fail("control.listen", message);
        }
        let (connections, most) = (k.max_connections, MAX_CONTROL_CONNECTIONS);
        range("control.max_connections", connections, 1, most)?;

        let h = &self.http;
        let empty_token = h.token.as_ref().is_some_and(String::is_empty);
        let message = "must not be empty (leave it out for a read-only dashboard)";
        when(empty_token, "http.token", message)?;
        if let Some(listen) = h.listen
            && exposed_without_token(listen, h.token.as_deref())
        {
            let message = format!(
                "{listen} is not a loopback address: set http.token so that only those holding \
                 it can act, or listen on 127.0.0.1"
            );
            return fail("http.listen", message);
        }

        for (queue, settings) in &self.queues {
            name(&format!("queues.{queue}"), queue)?;
            match settings.limits() {
                Err((field, reason)) => return fail(&format!("queues.{queue}.{field}"), reason),
                // Limits hold back this engine's own claims, and nothing claims locally in
                // RabbitMQ mode: kept there, they would promise what nothing enforces.
                Ok(limits) if self.broker == BrokerKind::Rabbitmq && !limits.is_unlimited() => {
                    return fail(&format!("queues.{queue}"), RABBITMQ_LIMITS);
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

/// Why queue limits are refused in RabbitMQ mode (config and `Engine::set_queue_limits`).
pub(crate) const RABBITMQ_LIMITS: &str = "concurrency and rate limits apply with the \
    database broker only: in RabbitMQ mode workers consume from RabbitMQ, so bound them with \
    worker.concurrency and rabbitmq.prefetch";

/// A broken rule: (key path, message).
type Check = Result<(), (String, String)>;

fn fail(key: &str, message: impl Into<String>) -> Check {
    Err((key.to_owned(), message.into()))
}

fn when(broken: bool, key: &str, message: impl Into<String>) -> Check {
    if broken { fail(key, message) } else { Ok(()) }
}

fn range<T: Copy + PartialOrd + Display>(key: &str, value: T, min: T, max: T) -> Check {
    match value {
        _ if value < min => fail(key, format!("must be at least {min}, got {value}")),
        _ if value > max => fail(key, format!("must be at most {max}, got {value}")),
        _ => Ok(()),
    }
}

fn at_most(key: &str, value: Duration, max: Duration) -> Check {
    let message = format!("must be at most {}, got {}", exact(max), exact(value));
    when(value > max, key, message)
}

fn exact(duration: Duration) -> String {
    format_duration(duration, Exact)
}

/// What a redacted secret prints as.
pub(super) const REDACTED: &str = "<redacted>";

/// Checks that `url` is an AMQP URL; the message never shows the URL's password.
pub(super) fn check_amqp_url(url: &str) -> Result<(), String> {
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
pub(super) fn redact_url(url: &str) -> String {
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
