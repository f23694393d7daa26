//! Turns fq's section of a parsed file (a format-neutral [`Node`] tree) into a [`Config`]: known
//! keys, value types, durations and `${VAR}` expansion, every error naming its key path. Range
//! checks are `Config::validate`'s job; reading and parsing files is `file`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration::parse_duration;
use super::env::{ExpandError, Lookup, expand};
use super::{
    BrokerKind, CleanupConfig, Config, ConfigError, ControlConfig, Limits, RabbitConfig,
    TaskDefaults, WorkerConfig, parse_listen,
};

/// A parsed value, whichever format it came from. Tables keep the parser's key order (file order
/// for YAML, sorted for TOML), which decides which of several problems is reported first.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// YAML `~`, `null` or an empty value; TOML has none.
    Null,
    Bool(bool),
    /// Wide enough for every TOML (`i64`) and YAML (`i64` or `u64`) integer.
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Table(Vec<(String, Node)>),
    /// A value fq never accepts (a TOML datetime, a YAML tagged value), by its description.
    Other(&'static str),
}

impl Node {
    /// The value's kind with an article, for "expected X, got Y" messages.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing (null)",
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Str(_) => "a string",
            Node::List(_) => "a list",
            Node::Table(_) => "a table",
            Node::Other(kind) => kind,
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "broker", "database", "defaults", "worker", "cleanup", "rabbitmq", "limits", "control",
];
const DEFAULTS_KEYS: &[&str] = &[
    "queue",
    "priority",
    "max_retries",
    "retry_delay",
    "retry_max_delay",
    "timeout",
];
const WORKER_KEYS: &[&str] = &[
    "queues",
    "concurrency",
    "polling_interval",
    "shutdown_timeout",
];
const CLEANUP_KEYS: &[&str] = &["interval_hours", "retain_days", "completed_retention"];
const RABBITMQ_KEYS: &[&str] = &[
    "host", "port", "username", "password", "vhost", "url", "prefetch",
];
const LIMITS_KEYS: &[&str] = &[
    "max_payload_bytes",
    "max_frame_bytes",
    "max_pending",
    "min_free_bytes",
];
const CONTROL_KEYS: &[&str] = &["socket", "listen", "token", "max_connections"];

/// Builds a `Config` from the entries of fq's section, starting from the defaults.
///
/// The result has `source` set to `origin` and is not yet validated.
///
/// # Errors
///
/// `UnknownKey`, `InvalidValue` (wrong type, out of the type's range, bad duration, malformed
/// `${...}`) or `UnsetVariable`, each naming the key path and `origin`.
pub(super) fn decode(
    entries: Vec<(String, Node)>,
    origin: &Path,
    env: &Lookup<'_>,
) -> Result<Config, ConfigError> {
    let cx = Decoder { origin, env };
    let mut config = Config::default();
    for (key, node) in entries {
        match key.as_str() {
            "broker" => config.broker = cx.broker("broker", node)?,
            "database" => config.database = PathBuf::from(cx.string("database", node)?),
            "defaults" => cx.defaults(node, &mut config.defaults)?,
            "worker" => cx.worker(node, &mut config.worker)?,
            "cleanup" => cx.cleanup(node, &mut config.cleanup)?,
            "rabbitmq" => cx.rabbitmq(node, &mut config.rabbitmq)?,
            "limits" => cx.limits(node, &mut config.limits)?,
            "control" => cx.control(node, &mut config.control)?,
            _ => return Err(cx.unknown("", &key, TOP_KEYS)),
        }
    }
    config.source = Some(origin.to_path_buf());
    Ok(config)
}

/// Integer types a key can have, with their bounds for range messages.
trait Integer: TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! integer {
    ($($ty:ty),*) => {$(
        impl Integer for $ty {
            const MIN: i128 = <$ty>::MIN as i128;
            const MAX: i128 = <$ty>::MAX as i128;
        }
    )*};
}
integer!(i32, u16, u32, u64, usize);

/// The file and environment that values are decoded against.
struct Decoder<'a> {
    origin: &'a Path,
    env: &'a Lookup<'a>,
}

impl Decoder<'_> {
    fn defaults(&self, node: Node, out: &mut TaskDefaults) -> Result<(), ConfigError> {
        for (key, node) in self.table("defaults", node)? {
            let path = format!("defaults.{key}");
            match key.as_str() {
                "queue" => out.queue = self.string(&path, node)?,
                "priority" => out.priority = self.integer(&path, node)?,
                "max_retries" => out.max_retries = self.integer(&path, node)?,
                "retry_delay" => out.retry_delay = self.duration(&path, node)?,
                "retry_max_delay" => out.retry_max_delay = self.duration(&path, node)?,
                "timeout" => out.timeout = optional(node, |n| self.duration(&path, n))?,
                _ => return Err(self.unknown("defaults", &key, DEFAULTS_KEYS)),
            }
        }
        Ok(())
    }

    fn worker(&self, node: Node, out: &mut WorkerConfig) -> Result<(), ConfigError> {
        for (key, node) in self.table("worker", node)? {
            let path = format!("worker.{key}");
            match key.as_str() {
                "queues" => out.queues = self.strings(&path, node)?,
                "concurrency" => out.concurrency = self.integer(&path, node)?,
                "polling_interval" => out.polling_interval = self.duration(&path, node)?,
                "shutdown_timeout" => out.shutdown_timeout = self.duration(&path, node)?,
                _ => return Err(self.unknown("worker", &key, WORKER_KEYS)),
            }
        }
        Ok(())
    }

    fn cleanup(&self, node: Node, out: &mut CleanupConfig) -> Result<(), ConfigError> {
        for (key, node) in self.table("cleanup", node)? {
            let path = format!("cleanup.{key}");
            match key.as_str() {
                "interval_hours" => out.interval_hours = self.integer(&path, node)?,
                "retain_days" => out.retain_days = self.integer(&path, node)?,
                "completed_retention" => out.completed_retention = self.duration(&path, node)?,
                _ => return Err(self.unknown("cleanup", &key, CLEANUP_KEYS)),
            }
        }
        Ok(())
    }

    fn rabbitmq(&self, node: Node, out: &mut RabbitConfig) -> Result<(), ConfigError> {
        for (key, node) in self.table("rabbitmq", node)? {
            let path = format!("rabbitmq.{key}");
            match key.as_str() {
                "host" => out.host = self.string(&path, node)?,
                "port" => out.port = self.integer(&path, node)?,
                "username" => out.username = self.string(&path, node)?,
                "password" => out.password = self.string(&path, node)?,
                "vhost" => out.vhost = self.string(&path, node)?,
                "url" => out.url = optional(node, |n| self.string(&path, n))?,
                "prefetch" => out.prefetch = optional(node, |n| self.integer(&path, n))?,
                _ => return Err(self.unknown("rabbitmq", &key, RABBITMQ_KEYS)),
            }
        }
        Ok(())
    }

    fn limits(&self, node: Node, out: &mut Limits) -> Result<(), ConfigError> {
        for (key, node) in self.table("limits", node)? {
            let path = format!("limits.{key}");
            match key.as_str() {
                "max_payload_bytes" => out.max_payload_bytes = self.integer(&path, node)?,
                "max_frame_bytes" => out.max_frame_bytes = self.integer(&path, node)?,
                "max_pending" => out.max_pending = optional(node, |n| self.integer(&path, n))?,
                "min_free_bytes" => out.min_free_bytes = self.integer(&path, node)?,
                _ => return Err(self.unknown("limits", &key, LIMITS_KEYS)),
            }
        }
        Ok(())
    }

    fn control(&self, node: Node, out: &mut ControlConfig) -> Result<(), ConfigError> {
        for (key, node) in self.table("control", node)? {
            let path = format!("control.{key}");
            match key.as_str() {
                "socket" => {
                    out.socket = optional(node, |n| self.string(&path, n))?.map(PathBuf::from);
                }
                "listen" => {
                    out.listen = optional(node, |n| {
                        let text = self.string(&path, n)?;
                        parse_listen(&text).map_err(|message| self.invalid(&path, message))
                    })?;
                }
                "token" => out.token = optional(node, |n| self.string(&path, n))?,
                "max_connections" => out.max_connections = self.integer(&path, node)?,
                _ => return Err(self.unknown("control", &key, CONTROL_KEYS)),
            }
        }
        Ok(())
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(Some(self.origin), key, message)
    }

    /// `UnknownKey` for `key` in `section` ("" for the top level), suggesting a close known key.
    fn unknown(&self, section: &str, key: &str, known: &[&str]) -> ConfigError {
        let join = |name: &str| {
            if section.is_empty() {
                name.to_owned()
            } else {
                format!("{section}.{name}")
            }
        };
        ConfigError::UnknownKey {
            path: self.origin.to_path_buf(),
            key: join(key),
            suggestion: closest(key, known).map(join),
        }
    }

    /// A section's entries. A null section (YAML `worker:` with nothing under it) is empty.
    fn table(&self, key: &str, node: Node) -> Result<Vec<(String, Node)>, ConfigError> {
        match node {
            Node::Table(entries) => Ok(entries),
            Node::Null => Ok(Vec::new()),
            other => Err(self.invalid(
                key,
                format!("expected a table of settings, got {}", other.kind()),
            )),
        }
    }

    /// Expands `${VAR}` references in a string value.
    fn expand(&self, key: &str, text: &str) -> Result<(String, bool), ConfigError> {
        expand(text, self.env).map_err(|err| match err {
            ExpandError::Unset(variable) => ConfigError::UnsetVariable {
                path: self.origin.to_path_buf(),
                key: key.to_owned(),
                variable,
            },
            ExpandError::Malformed(message) => self.invalid(key, message),
        })
    }

    /// A string. Other scalars are refused rather than converted: YAML reads an unquoted
    /// `password: 0123` as the integer 123, and converting it back would silently change it.
    /// Type errors never quote the value, which may be a secret.
    fn string(&self, key: &str, node: Node) -> Result<String, ConfigError> {
        match node {
            Node::Str(text) => Ok(self.expand(key, &text)?.0),
            scalar @ (Node::Int(_) | Node::Float(_) | Node::Bool(_)) => Err(self.invalid(
                key,
                format!(
                    "expected a string, got {} (quote the value to make it a string)",
                    scalar.kind()
                ),
            )),
            other => Err(self.invalid(key, format!("expected a string, got {}", other.kind()))),
        }
    }

    /// A list of strings; an entry's key path is `key[index]`.
    fn strings(&self, key: &str, node: Node) -> Result<Vec<String>, ConfigError> {
        match node {
            Node::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(index, item)| self.string(&format!("{key}[{index}]"), item))
                .collect(),
            other => Err(self.invalid(
                key,
                format!("expected a list of strings, got {}", other.kind()),
            )),
        }
    }

    /// An integer that fits `T`. A string is accepted only when it came from the environment
    /// (`port = "${RABBIT_PORT}"`), since variables are always text.
    fn integer<T: Integer>(&self, key: &str, node: Node) -> Result<T, ConfigError> {
        let number = match node {
            Node::Int(number) => number,
            Node::Str(text) => {
                let (value, used_env) = self.expand(key, &text)?;
                let parsed = value.trim().parse::<i128>();
                match parsed {
                    Ok(number) if used_env => number,
                    Err(_) if used_env => {
                        return Err(self.invalid(
                            key,
                            format!(
                                "expected an integer, got {value:?} (after expanding environment \
                                 variables)"
                            ),
                        ));
                    }
                    Ok(_) => {
                        return Err(self.invalid(
                            key,
                            format!(
                                "expected an integer, got the string {text:?}: remove the quotes"
                            ),
                        ));
                    }
                    Err(_) => {
                        return Err(self.invalid(key, "expected an integer, got a string"));
                    }
                }
            }
            other => {
                return Err(self.invalid(key, format!("expected an integer, got {}", other.kind())));
            }
        };
        if number < T::MIN {
            let message = if T::MIN == 0 {
                format!("must not be negative, got {number}")
            } else {
                format!("must be at least {}, got {number}", T::MIN)
            };
            return Err(self.invalid(key, message));
        }
        if number > T::MAX {
            return Err(self.invalid(key, format!("must be at most {}, got {number}", T::MAX)));
        }
        T::try_from(number).map_err(|_| self.invalid(key, format!("out of range: {number}")))
    }

    /// A duration: a string for [`parse_duration`] (`"5s"`, `"1h30m"`) or a whole number of seconds.
    fn duration(&self, key: &str, node: Node) -> Result<Duration, ConfigError> {
        match node {
            Node::Int(secs) if secs < 0 => {
                Err(self.invalid(key, format!("must not be negative, got {secs}")))
            }
            Node::Int(secs) => u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| self.invalid(key, format!("duration of {secs} seconds is too large"))),
            Node::Str(text) => {
                let (value, _) = self.expand(key, &text)?;
                parse_duration(&value).map_err(|err| self.invalid(key, err.to_string()))
            }
            other => Err(self.invalid(
                key,
                format!(
                    "expected a duration such as \"5s\" or \"1h30m\", or a whole number of \
                     seconds, got {}",
                    other.kind()
                ),
            )),
        }
    }

    fn broker(&self, key: &str, node: Node) -> Result<BrokerKind, ConfigError> {
        let text = self.string(key, node)?;
        text.parse()
            .map_err(|message: String| self.invalid(key, message))
    }
}

/// `None` for a null value (YAML `url: ~`), else the decoded value.
fn optional<T>(
    node: Node,
    decode: impl FnOnce(Node) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    match node {
        Node::Null => Ok(None),
        other => decode(other).map(Some),
    }
}

/// The known key closest to `key` when it looks like a typo of it (edit distance at most 2,
/// and less than a third of the key's length for short keys).
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|&candidate| (edit_distance(key, candidate), candidate))
        .filter(|&(distance, _)| distance <= 2 && distance * 3 <= key.chars().count().max(3))
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            let delete = previous[j + 1] + 1;
            let insert = current[j] + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::env::env_of;
    use super::super::file::{Format, parse};
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const ORIGIN: &str = "fq.toml";

    fn decode_toml_with(text: &str, env: &Lookup<'_>) -> Result<Config, ConfigError> {
        let entries = parse(text, Format::Toml, Path::new(ORIGIN))?;
        decode(entries, Path::new(ORIGIN), env)
    }

    fn decode_toml(text: &str) -> Result<Config, ConfigError> {
        decode_toml_with(text, &env_of(&[]))
    }

    /// The (key, message) of an `InvalidValue`, after checking it names the file.
    fn invalid(result: Result<Config, ConfigError>) -> Result<(String, String), String> {
        match result {
            Err(ConfigError::InvalidValue { path, key, message }) => {
                if path.as_deref() != Some(Path::new(ORIGIN)) {
                    return Err(format!("{key}: wrong path {path:?}"));
                }
                Ok((key, message))
            }
            other => Err(format!("expected InvalidValue, got {other:?}")),
        }
    }

    #[test]
    fn empty_document_gives_defaults_from_that_file() -> TestResult {
        let config = decode_toml("")?;
        assert_eq!(config.source.as_deref(), Some(Path::new(ORIGIN)));
        assert_eq!(
            Config {
                source: None,
                ..config
            },
            Config::default()
        );
        Ok(())
    }

    #[test]
    fn unknown_key_in_each_section_names_the_key_path() -> TestResult {
        let cases = [
            ("brokr = \"database\"", "brokr", Some("broker")),
            ("[task]\nbroker = \"database\"", "task", None),
            (
                "[defaults]\nqueu = \"x\"",
                "defaults.queu",
                Some("defaults.queue"),
            ),
            ("[defaults]\nretries = 3", "defaults.retries", None),
            (
                "[worker]\nconcurency = 3",
                "worker.concurency",
                Some("worker.concurrency"),
            ),
            ("[worker.extra]\na = 1", "worker.extra", None),
            (
                "[cleanup]\nretain_day = 3",
                "cleanup.retain_day",
                Some("cleanup.retain_days"),
            ),
            (
                "[rabbitmq]\npasword = \"x\"",
                "rabbitmq.pasword",
                Some("rabbitmq.password"),
            ),
            (
                "[limits]\nmax_pendng = 1",
                "limits.max_pendng",
                Some("limits.max_pending"),
            ),
        ];
        for (text, want_key, want_suggestion) in cases {
            let err = decode_toml(text).expect_err(text);
            let ConfigError::UnknownKey {
                path,
                key,
                suggestion,
            } = &err
            else {
                return Err(format!("{text:?}: expected UnknownKey, got {err:?}").into());
            };
            assert_eq!(path, Path::new(ORIGIN), "{text:?}");
            assert_eq!(key, want_key, "{text:?}");
            assert_eq!(suggestion.as_deref(), want_suggestion, "{text:?}");
            assert!(
                err.to_string()
                    .starts_with(&format!("fq.toml: unknown key {want_key}")),
                "{err}"
            );
        }
        Ok(())
    }

    #[test]
    fn wrong_types_name_the_key() -> TestResult {
        let cases = [
            ("broker = 1", "broker", "expected a string, got an integer"),
            (
                "broker = \"redis\"",
                "broker",
                "expected \"database\" or \"rabbitmq\"",
            ),
            (
                "database = true",
                "database",
                "expected a string, got a boolean",
            ),
            (
                "worker = 5",
                "worker",
                "expected a table of settings, got an integer",
            ),
            (
                "defaults = [1]",
                "defaults",
                "expected a table of settings, got a list",
            ),
            (
                "[worker]\nconcurrency = \"ten\"",
                "worker.concurrency",
                "expected an integer, got a string",
            ),
            (
                "[worker]\nconcurrency = \"10\"",
                "worker.concurrency",
                "remove the quotes",
            ),
            (
                "[worker]\nconcurrency = 1.5",
                "worker.concurrency",
                "expected an integer, got a float",
            ),
            (
                "[worker]\nqueues = \"default\"",
                "worker.queues",
                "expected a list of strings, got a string",
            ),
            (
                "[worker]\nqueues = [\"a\", 1]",
                "worker.queues[1]",
                "expected a string, got an integer (quote the value",
            ),
            (
                "[defaults]\npriority = true",
                "defaults.priority",
                "expected an integer, got a boolean",
            ),
            (
                "[defaults]\nretry_delay = 1.5",
                "defaults.retry_delay",
                "or a whole number of seconds, got a float",
            ),
            (
                "[defaults]\ntimeout = 1979-05-27",
                "defaults.timeout",
                "got a datetime",
            ),
            (
                "[rabbitmq]\nurl = 5",
                "rabbitmq.url",
                "expected a string, got an integer",
            ),
            (
                "[limits]\nmax_pending = []",
                "limits.max_pending",
                "expected an integer, got a list",
            ),
            (
                "[limits]\nmin_free_bytes = \"64MiB\"",
                "limits.min_free_bytes",
                "expected an integer, got a string",
            ),
        ];
        for (text, want_key, want_message) in cases {
            let (key, message) = invalid(decode_toml(text))?;
            assert_eq!(key, want_key, "{text:?}");
            assert!(message.contains(want_message), "{text:?}: {message}");
        }
        Ok(())
    }

    #[test]
    fn integers_outside_their_type_name_the_key() -> TestResult {
        let cases = [
            (
                "[worker]\nconcurrency = -1",
                "worker.concurrency",
                "must not be negative, got -1",
            ),
            (
                "[rabbitmq]\nport = 70000",
                "rabbitmq.port",
                "must be at most 65535, got 70000",
            ),
            (
                "[limits]\nmin_free_bytes = -1",
                "limits.min_free_bytes",
                "must not be negative, got -1",
            ),
            (
                "[rabbitmq]\nprefetch = -5",
                "rabbitmq.prefetch",
                "must not be negative, got -5",
            ),
            (
                "[defaults]\npriority = 3000000000",
                "defaults.priority",
                "must be at most 2147483647, got 3000000000",
            ),
            (
                "[defaults]\npriority = -3000000000",
                "defaults.priority",
                "must be at least -2147483648, got -3000000000",
            ),
            (
                "[defaults]\nmax_retries = 4294967296",
                "defaults.max_retries",
                "must be at most 4294967295, got 4294967296",
            ),
            (
                "[cleanup]\nretain_days = -7",
                "cleanup.retain_days",
                "must not be negative, got -7",
            ),
        ];
        for (text, want_key, want_message) in cases {
            let (key, message) = invalid(decode_toml(text))?;
            assert_eq!(key, want_key, "{text:?}");
            assert_eq!(message, want_message, "{text:?}");
        }
        Ok(())
    }

    #[test]
    fn durations_take_strings_or_whole_seconds() -> TestResult {
        let config = decode_toml(
            "[defaults]\nretry_delay = \"1h30m\"\nretry_max_delay = 7200\ntimeout = \"500ms\"\n\
             [worker]\npolling_interval = \"90\"\nshutdown_timeout = 0\n\
             [cleanup]\ncompleted_retention = \"2d\"\n",
        )?;
        assert_eq!(config.defaults.retry_delay, Duration::from_secs(5_400));
        assert_eq!(config.defaults.retry_max_delay, Duration::from_secs(7_200));
        assert_eq!(config.defaults.timeout, Some(Duration::from_millis(500)));
        assert_eq!(config.worker.polling_interval, Duration::from_secs(90));
        assert_eq!(config.worker.shutdown_timeout, Duration::ZERO);
        assert_eq!(
            config.cleanup.completed_retention,
            Duration::from_secs(172_800)
        );
        Ok(())
    }

    #[test]
    fn bad_durations_name_the_key_and_the_problem() -> TestResult {
        let cases = [
            (
                "[worker]\npolling_interval = -5",
                "worker.polling_interval",
                "must not be negative, got -5",
            ),
            (
                "[worker]\npolling_interval = \"5x\"",
                "worker.polling_interval",
                "unknown unit \"x\" in \"5x\"",
            ),
            (
                "[defaults]\nretry_delay = \"\"",
                "defaults.retry_delay",
                "empty duration",
            ),
            (
                "[defaults]\nretry_delay = \"1.5h\"",
                "defaults.retry_delay",
                "fractions are not supported",
            ),
        ];
        for (text, want_key, want_message) in cases {
            let (key, message) = invalid(decode_toml(text))?;
            assert_eq!(key, want_key, "{text:?}");
            assert!(message.contains(want_message), "{text:?}: {message}");
        }
        Ok(())
    }

    #[test]
    fn type_errors_never_echo_a_secret() -> TestResult {
        for text in [
            "[rabbitmq]\npassword = 12345",
            "[rabbitmq]\npassword = [\"12345\"]",
        ] {
            let (key, message) = invalid(decode_toml(text))?;
            assert_eq!(key, "rabbitmq.password");
            assert!(!message.contains("12345"), "{message}");
        }
        Ok(())
    }

    #[test]
    fn variables_expand_in_every_string() -> TestResult {
        let env = env_of(&[
            ("DB", "/srv/fq.redb"),
            ("Q", "urgent"),
            ("PW", "s3cret"),
            ("DELAY", "10s"),
            ("PORT", "5673"),
        ]);
        let config = decode_toml_with(
            "database = \"${DB}\"\n[defaults]\nretry_delay = \"${DELAY}\"\n\
             [worker]\nqueues = [\"default\", \"${Q}\", \"mail-${Q}\"]\n\
             [rabbitmq]\npassword = \"${PW}\"\nport = \"${PORT}\"\n",
            &env,
        )?;
        assert_eq!(config.database, PathBuf::from("/srv/fq.redb"));
        assert_eq!(config.defaults.retry_delay, Duration::from_secs(10));
        assert_eq!(config.worker.queues, ["default", "urgent", "mail-urgent"]);
        assert_eq!(config.rabbitmq.password, "s3cret");
        assert_eq!(config.rabbitmq.port, 5673);
        Ok(())
    }

    #[test]
    fn a_variable_for_a_number_must_hold_one() -> TestResult {
        let env = env_of(&[("PORT", "fifty"), ("BIG", "99999")]);
        let (key, message) = invalid(decode_toml_with("[rabbitmq]\nport = \"${PORT}\"", &env))?;
        assert_eq!(key, "rabbitmq.port");
        assert_eq!(
            message,
            "expected an integer, got \"fifty\" (after expanding environment variables)"
        );
        let (key, message) = invalid(decode_toml_with("[rabbitmq]\nport = \"${BIG}\"", &env))?;
        assert_eq!(key, "rabbitmq.port");
        assert_eq!(message, "must be at most 65535, got 99999");
        Ok(())
    }

    #[test]
    fn unset_variable_names_variable_key_and_file() {
        let err = decode_toml("[worker]\nqueues = [\"default\", \"${EXTRA_QUEUE}\"]")
            .expect_err("EXTRA_QUEUE is unset");
        assert!(
            matches!(
                &err,
                ConfigError::UnsetVariable { path, key, variable }
                    if path == Path::new(ORIGIN)
                        && key == "worker.queues[1]"
                        && variable == "EXTRA_QUEUE"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "fq.toml: worker.queues[1]: environment variable EXTRA_QUEUE is not set"
        );
    }

    #[test]
    fn malformed_reference_names_the_key() -> TestResult {
        let (key, message) = invalid(decode_toml("[rabbitmq]\nhost = \"${HOST\""))?;
        assert_eq!(key, "rabbitmq.host");
        assert!(message.starts_with("unterminated ${"), "{message}");
        Ok(())
    }

    #[test]
    fn escaped_reference_stays_literal() -> TestResult {
        let config = decode_toml("[rabbitmq]\npassword = \"a$${NOT_A_VAR}b\"")?;
        assert_eq!(config.rabbitmq.password, "a${NOT_A_VAR}b");
        Ok(())
    }

    #[test]
    fn null_means_empty_section_or_absent_option_but_not_a_value() -> TestResult {
        // Only YAML can write null; build its tree directly.
        let env = env_of(&[]);
        let origin = Path::new("config/services.yaml");
        let entries = vec![
            ("worker".to_owned(), Node::Null),
            (
                "rabbitmq".to_owned(),
                Node::Table(vec![
                    ("url".to_owned(), Node::Null),
                    ("prefetch".to_owned(), Node::Null),
                ]),
            ),
            (
                "defaults".to_owned(),
                Node::Table(vec![("timeout".to_owned(), Node::Null)]),
            ),
        ];
        let config = decode(entries, origin, &env)?;
        assert_eq!(config.worker, WorkerConfig::default());
        assert_eq!(config.rabbitmq.url, None);
        assert_eq!(config.rabbitmq.prefetch, None);
        assert_eq!(config.defaults.timeout, None);

        let entries = vec![(
            "rabbitmq".to_owned(),
            Node::Table(vec![("password".to_owned(), Node::Null)]),
        )];
        let err = decode(entries, origin, &env).expect_err("null password");
        assert_eq!(
            err.to_string(),
            "config/services.yaml: rabbitmq.password: expected a string, got nothing (null)"
        );
        Ok(())
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(closest("concurency", WORKER_KEYS), Some("concurrency"));
        assert_eq!(closest("queue", WORKER_KEYS), Some("queues"));
        assert_eq!(closest("Queues", WORKER_KEYS), Some("queues"));
        assert_eq!(closest("threads", WORKER_KEYS), None);
        assert_eq!(closest("a", TOP_KEYS), None);
        assert_eq!(closest("", TOP_KEYS), None);
    }

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("héllo", "hello"), 1);
    }
}
