//! Unit tests for `config/mod.rs`: defaults, whole files in both formats, `load`'s search
//! order and overrides, every validation rule, and the RabbitMQ URL and redaction.

use super::*;
use std::fs;
use std::io;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fake environment holding exactly `pairs`, for tests across the config module.
pub(super) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|&(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// Every key set, none to its default.
const FULL_TOML: &str = r#"
# ${NOT_SET} in a comment must not matter
broker = "rabbitmq"
database = "/srv/fq/${STORE_NAME}.redb"
write_ahead_log = false

[defaults]
queue = "emails"
priority = 5
max_retries = 7
retry_delay = "10s"
retry_max_delay = 7200
timeout = "1h30m"

[worker]
queues = ["default", "urgent", "emails"]
concurrency = 20
polling_interval = 2
shutdown_timeout = "1m"
lock_wait = "45s"

[cleanup]
interval_hours = 6
retain_days = 14
completed_retention = "12h"

[rabbitmq]
host = "mq.internal"
port = 5673
username = "fq"
password = "${RABBIT_PASSWORD}"
vhost = "/prod"
url = "amqp://fq:${RABBIT_PASSWORD}@mq.internal:5673/%2fprod"
prefetch = 50

[limits]
max_payload_bytes = 65536
max_frame_bytes = 131072
max_pending = 100000
min_free_bytes = 1048576
attempt_history = 50

[control]
socket = "/run/fq/${STORE_NAME}.sock"
listen = "0.0.0.0:7878"
token = "${CONTROL_TOKEN}"
max_connections = 32

[http]
listen = "0.0.0.0:8080"
token = "${HTTP_TOKEN}"
"#;

/// The same settings as [`FULL_TOML`], in a Framefox services.yaml among other sections.
const FULL_YAML: &str = r#"
# ${NOT_SET} in a comment must not matter
parameters:
  locale: fr
  secret: ${APP_SECRET_NOT_SET}
services:
  app.mailer:
    class: App\Mailer
    arguments: ['@mailer']
task:
  broker: rabbitmq
  database: /srv/fq/${STORE_NAME}.redb
  write_ahead_log: false
  defaults:
    queue: emails
    priority: 5
    max_retries: 7
    retry_delay: 10s
    retry_max_delay: 7200
    timeout: 1h30m
  worker:
    queues: [default, urgent, emails]
    concurrency: 20
    polling_interval: 2
    shutdown_timeout: 1m
    lock_wait: 45s
  cleanup:
    interval_hours: 6
    retain_days: 14
    completed_retention: 12h
  rabbitmq:
    host: mq.internal
    port: 5673
    username: fq
    password: ${RABBIT_PASSWORD}
    vhost: /prod
    url: amqp://fq:${RABBIT_PASSWORD}@mq.internal:5673/%2fprod
    prefetch: 50
  limits:
    max_payload_bytes: 65536
    max_frame_bytes: 131072
    max_pending: 100000
    min_free_bytes: 1048576
    attempt_history: 50
  control:
    socket: /run/fq/${STORE_NAME}.sock
    listen: 0.0.0.0:7878
    token: ${CONTROL_TOKEN}
    max_connections: 32
  http:
    listen: 0.0.0.0:8080
    token: ${HTTP_TOKEN}
database:
  url: sqlite:///app.db
"#;

fn full_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[
        ("STORE_NAME", "tasks"),
        ("RABBIT_PASSWORD", "s3cret"),
        ("CONTROL_TOKEN", "t0ken"),
        ("HTTP_TOKEN", "w3b"),
    ])
}

fn full_config() -> Config {
    Config {
        broker: BrokerKind::Rabbitmq,
        database: PathBuf::from("/srv/fq/tasks.redb"),
        write_ahead_log: false,
        defaults: TaskDefaults {
            queue: "emails".into(),
            priority: 5,
            max_retries: 7,
            retry_delay: Duration::from_secs(10),
            retry_max_delay: Duration::from_secs(7_200),
            timeout: Some(Duration::from_secs(5_400)),
        },
        worker: WorkerConfig {
            queues: vec!["default".into(), "urgent".into(), "emails".into()],
            concurrency: 20,
            polling_interval: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(60),
            lock_wait: Duration::from_secs(45),
        },
        cleanup: CleanupConfig {
            interval_hours: 6,
            retain_days: 14,
            completed_retention: Duration::from_secs(43_200),
        },
        metrics: super::MetricsConfig::default(),
        rabbitmq: RabbitConfig {
            host: "mq.internal".into(),
            port: 5673,
            username: "fq".into(),
            password: "s3cret".into(),
            vhost: "/prod".into(),
            url: Some("amqp://fq:s3cret@mq.internal:5673/%2fprod".into()),
            prefetch: Some(50),
        },
        limits: Limits {
            max_payload_bytes: 65_536,
            max_frame_bytes: 131_072,
            max_pending: Some(100_000),
            min_free_bytes: 1 << 20,
            attempt_history: 50,
        },
        control: ControlConfig {
            socket: Some(PathBuf::from("/run/fq/tasks.sock")),
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 7878))),
            token: Some("t0ken".into()),
            max_connections: 32,
        },
        http: HttpConfig {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            token: Some("w3b".into()),
        },
        schedules: Vec::new(),
        queues: std::collections::BTreeMap::new(),
        source: None,
    }
}

fn without_source(config: Config) -> Config {
    Config {
        source: None,
        ..config
    }
}

// --- defaults -------------------------------------------------------------------------

#[test]
fn defaults_are_the_documented_ones() {
    let config = Config::default();
    assert_eq!(config.broker, BrokerKind::Database);
    assert_eq!(config.database, PathBuf::from("var/fq.redb"));
    assert_eq!(config.source, None);

    let defaults = &config.defaults;
    assert_eq!(defaults.queue, "default");
    assert_eq!(defaults.priority, 0);
    assert_eq!(defaults.max_retries, 3);
    assert_eq!(defaults.retry_delay, Duration::from_secs(5));
    assert_eq!(defaults.retry_max_delay, Duration::from_secs(3_600));
    assert_eq!(defaults.timeout, None);

    let worker = &config.worker;
    assert_eq!(worker.queues, ["default"]);
    assert_eq!(worker.concurrency, 10);
    assert_eq!(worker.polling_interval, Duration::from_secs(5));
    assert_eq!(worker.shutdown_timeout, Duration::from_secs(30));

    let cleanup = &config.cleanup;
    assert_eq!(cleanup.interval_hours, 1);
    assert_eq!(cleanup.retain_days, 7);
    assert_eq!(cleanup.completed_retention, Duration::from_secs(86_400));

    let rabbitmq = &config.rabbitmq;
    assert_eq!(rabbitmq.host, "localhost");
    assert_eq!(rabbitmq.port, 5672);
    assert_eq!(rabbitmq.username, "guest");
    assert_eq!(rabbitmq.password, "guest");
    assert_eq!(rabbitmq.vhost, "/");
    assert_eq!(rabbitmq.url, None);
    assert_eq!(rabbitmq.prefetch, None);

    let limits = &config.limits;
    assert_eq!(limits.max_payload_bytes, 1_048_576);
    assert_eq!(limits.max_frame_bytes, 2_097_152);
    assert_eq!(limits.max_pending, None);

    let control = &config.control;
    assert_eq!(control.socket, None);
    assert_eq!(control.listen, None);
    assert_eq!(control.token, None);
    assert_eq!(control.max_connections, 256);
    assert_eq!(
        control.socket_path(Path::new("var/fq.redb")),
        PathBuf::from("var/fq.redb.sock")
    );
}

#[test]
fn defaults_are_valid() -> TestResult {
    Config::default().validate()?;
    full_config().validate()?;
    Ok(())
}

#[test]
fn broker_kind_round_trips_through_its_name() -> TestResult {
    for kind in [BrokerKind::Database, BrokerKind::Rabbitmq] {
        assert_eq!(kind.to_string().parse::<BrokerKind>()?, kind);
    }
    assert_eq!(
        "RabbitMQ".parse::<BrokerKind>(),
        Err("expected \"database\" or \"rabbitmq\", got \"RabbitMQ\"".to_owned())
    );
    Ok(())
}

// --- parsing ------------------------------------------------------------------------

#[test]
fn full_toml_and_full_yaml_give_the_same_config() -> TestResult {
    let env = full_env();
    let from_toml = Config::from_str_in(FULL_TOML, Format::Toml, Path::new("fq.toml"), &env)?;
    let from_yaml = Config::from_str_in(
        FULL_YAML,
        Format::Yaml,
        Path::new("config/services.yaml"),
        &env,
    )?;
    assert_eq!(from_toml.source.as_deref(), Some(Path::new("fq.toml")));
    assert_eq!(
        from_yaml.source.as_deref(),
        Some(Path::new("config/services.yaml"))
    );
    assert_eq!(without_source(from_toml), full_config());
    assert_eq!(without_source(from_yaml), full_config());
    Ok(())
}

#[test]
fn the_seed_examples_parse() -> TestResult {
    let env = env_of(&[]);
    let database = Config::from_str_in(
        "task:\n  broker: database\n  defaults:\n    queue: default\n    priority: 0\n    \
         max_retries: 3\n",
        Format::Yaml,
        Path::new("config/services.yaml"),
        &env,
    )?;
    assert_eq!(without_source(database), Config::default());
    let rabbitmq = Config::from_str_in(
        "task:\n  broker: rabbitmq\n  rabbitmq:\n    host: localhost\n    port: 5672\n    \
         username: guest\n    password: guest\n    vhost: /\n",
        Format::Yaml,
        Path::new("config/services.yaml"),
        &env,
    )?;
    assert_eq!(rabbitmq.broker, BrokerKind::Rabbitmq);
    assert_eq!(rabbitmq.rabbitmq, RabbitConfig::default());
    Ok(())
}

#[test]
fn empty_toml_is_all_defaults() -> TestResult {
    let config = Config::from_toml_str("", Path::new("fq.toml"))?;
    assert_eq!(config.source.as_deref(), Some(Path::new("fq.toml")));
    assert_eq!(without_source(config), Config::default());
    Ok(())
}

#[test]
fn yaml_without_task_is_an_error_that_says_so() {
    let err = Config::from_yaml_str("services: {}\n", Path::new("config/services.yaml"))
        .expect_err("no task section");
    assert!(
        matches!(&err, ConfigError::MissingSection { section, .. } if section == "task"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`task:`"), "{err}");
}

#[test]
fn parsing_validates() {
    let err = Config::from_toml_str("[worker]\nconcurrency = 0\n", Path::new("fq.toml"))
        .expect_err("concurrency 0");
    assert_eq!(
        err.to_string(),
        "fq.toml: worker.concurrency: must be at least 1, got 0"
    );
}

#[test]
fn queue_limits_are_refused_in_rabbitmq_mode_only() {
    for limit in ["concurrency = 2", "rate = \"5/s\""] {
        let toml = format!("broker = \"rabbitmq\"\n[queues.emails]\n{limit}\n");
        let err = Config::from_toml_str(&toml, Path::new("fq.toml")).expect_err(limit);
        let text = err.to_string();
        assert!(
            text.starts_with("fq.toml: queues.emails: concurrency and rate limits apply with the database broker only"),
            "{text}"
        );
        assert!(text.contains("rabbitmq.prefetch"), "{text}");
        // The same limit with the database broker is fine.
        let database = toml.replace("rabbitmq", "database");
        assert!(Config::from_toml_str(&database, Path::new("fq.toml")).is_ok());
    }
    // A queue section without limits is fine in RabbitMQ mode.
    assert!(
        Config::from_toml_str(
            "broker = \"rabbitmq\"\n[queues.emails]\n",
            Path::new("fq.toml")
        )
        .is_ok()
    );
}

#[test]
fn from_str_does_not_apply_overrides() -> TestResult {
    // FQ_* overrides belong to `load`; parsing a string only reads the string.
    let env = env_of(&[("FQ_BROKER", "rabbitmq")]);
    let config = Config::from_str_in("", Format::Toml, Path::new("fq.toml"), &env)?;
    assert_eq!(config.broker, BrokerKind::Database);
    Ok(())
}

// --- load -----------------------------------------------------------------------------

#[test]
fn load_without_files_uses_defaults_and_overrides() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = Config::load_in(None, dir.path(), &env_of(&[]))?;
    assert_eq!(config, Config::default());

    let env = env_of(&[("FQ_DATABASE", "/tmp/other.redb")]);
    let config = Config::load_in(None, dir.path(), &env)?;
    assert_eq!(config.database, PathBuf::from("/tmp/other.redb"));
    assert_eq!(config.source, None);
    Ok(())
}

#[test]
fn load_searches_fq_toml_then_services_yaml() -> TestResult {
    let dir = tempfile::tempdir()?;
    let env = env_of(&[]);
    fs::create_dir(dir.path().join("config"))?;
    let yaml = dir.path().join("config").join("services.yaml");
    fs::write(&yaml, "task:\n  worker:\n    concurrency: 3\n")?;
    let config = Config::load_in(None, dir.path(), &env)?;
    assert_eq!(config.worker.concurrency, 3);
    assert_eq!(config.source.as_deref(), Some(yaml.as_path()));

    let toml = dir.path().join("fq.toml");
    fs::write(&toml, "[worker]\nconcurrency = 4\n")?;
    let config = Config::load_in(None, dir.path(), &env)?;
    assert_eq!(config.worker.concurrency, 4);
    assert_eq!(config.source.as_deref(), Some(toml.as_path()));
    Ok(())
}

#[test]
fn load_applies_overrides_over_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    fs::write(
        dir.path().join("fq.toml"),
        "broker = \"database\"\ndatabase = \"file.redb\"\n[rabbitmq]\nurl = \"amqp://file\"\n",
    )?;
    let env = env_of(&[
        ("FQ_BROKER", "rabbitmq"),
        ("FQ_DATABASE", "env.redb"),
        ("FQ_RABBITMQ_URL", "amqp://env"),
    ]);
    let config = Config::load_in(None, dir.path(), &env)?;
    assert_eq!(config.broker, BrokerKind::Rabbitmq);
    assert_eq!(config.database, PathBuf::from("env.redb"));
    assert_eq!(config.rabbitmq.url.as_deref(), Some("amqp://env"));
    Ok(())
}

#[test]
fn load_reports_a_bad_override_by_variable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let env = env_of(&[("FQ_BROKER", "redis")]);
    let err = Config::load_in(None, dir.path(), &env).expect_err("bad FQ_BROKER");
    assert!(
        matches!(&err, ConfigError::BadOverride { variable, .. } if variable == "FQ_BROKER"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn load_explicit_path_is_relative_to_the_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("custom.yml"), "task:\n  broker: rabbitmq\n")?;
    // fq.toml exists too, but an explicit path is not searched for.
    fs::write(dir.path().join("fq.toml"), "broker = \"database\"\n")?;
    let config = Config::load_in(Some(Path::new("custom.yml")), dir.path(), &env_of(&[]))?;
    assert_eq!(config.broker, BrokerKind::Rabbitmq);
    assert_eq!(
        config.source.as_deref(),
        Some(dir.path().join("custom.yml").as_path())
    );
    Ok(())
}

#[test]
fn load_missing_explicit_file_is_io_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nope.toml");
    let err = Config::load_in(Some(&path), dir.path(), &env_of(&[])).expect_err("missing");
    assert!(
        matches!(&err, ConfigError::Io { path: p, source } if p == &path && source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope.toml"), "{err}");
    Ok(())
}

#[test]
fn load_a_directory_is_io() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("conf.toml");
    fs::create_dir(&path)?;
    let err = Config::load_in(Some(&path), dir.path(), &env_of(&[])).expect_err("directory");
    assert!(
        matches!(&err, ConfigError::Io { path: p, source } if p == &path && source.kind() == io::ErrorKind::IsADirectory),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn load_unknown_extension_is_refused_before_reading() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fq.json");
    let err = Config::load_in(Some(&path), dir.path(), &env_of(&[])).expect_err("json");
    assert!(
        matches!(&err, ConfigError::UnknownFormat { path: p } if p == &path),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn load_reports_syntax_errors_with_the_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fq.toml");
    fs::write(&path, "broker = \"database\"\n\n[worker\nconcurrency = 2\n")?;
    let err = Config::load_in(None, dir.path(), &env_of(&[])).expect_err("syntax");
    assert!(
        matches!(&err, ConfigError::Syntax { path: p, line: Some(3), .. } if p == &path),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn load_empty_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let env = env_of(&[]);
    fs::write(dir.path().join("fq.toml"), "")?;
    let config = Config::load_in(None, dir.path(), &env)?;
    assert_eq!(without_source(config), Config::default());

    let yaml = dir.path().join("empty.yaml");
    fs::write(&yaml, "")?;
    let err = Config::load_in(Some(&yaml), dir.path(), &env).expect_err("empty YAML");
    assert!(matches!(err, ConfigError::MissingSection { .. }), "{err:?}");
    Ok(())
}

#[test]
fn load_validates_with_the_file_name() -> TestResult {
    let dir = tempfile::tempdir()?;
    fs::write(dir.path().join("fq.toml"), "[worker]\nconcurrency = 0\n")?;
    let err = Config::load_in(None, dir.path(), &env_of(&[])).expect_err("invalid");
    let want = format!(
        "{}: worker.concurrency: must be at least 1, got 0",
        dir.path().join("fq.toml").display()
    );
    assert_eq!(err.to_string(), want);
    Ok(())
}

// --- validation -----------------------------------------------------------------------

/// A rule: how to break a valid config, the key it must name and a part of its message.
type Rule = (fn(&mut Config), &'static str, &'static str);

#[test]
fn each_validation_rule_names_its_key() -> TestResult {
    let rules: &[Rule] = &[
        (
            |c| c.database = PathBuf::new(),
            "database",
            "must not be empty",
        ),
        (
            |c| c.defaults.queue = String::new(),
            "defaults.queue",
            "must not be empty",
        ),
        (
            |c| c.defaults.queue = "a b".into(),
            "defaults.queue",
            "contains ' '",
        ),
        (
            |c| c.defaults.queue = "q".repeat(256),
            "defaults.queue",
            "at most 255 bytes",
        ),
        (
            |c| c.defaults.max_retries = 1_001,
            "defaults.max_retries",
            "must be at most 1000, got 1001",
        ),
        (
            |c| c.defaults.retry_delay = Duration::ZERO,
            "defaults.retry_delay",
            "must be greater than 0",
        ),
        (
            |c| c.defaults.retry_max_delay = Duration::from_secs(1),
            "defaults.retry_max_delay",
            "must be at least defaults.retry_delay (5s), got 1s",
        ),
        (
            |c| c.defaults.retry_max_delay = MAX_TASK_DELAY + Duration::from_secs(1),
            "defaults.retry_max_delay",
            "must be at most 365d",
        ),
        (
            |c| c.defaults.timeout = Some(Duration::ZERO),
            "defaults.timeout",
            "must be greater than 0",
        ),
        (
            |c| c.defaults.timeout = Some(Duration::from_secs(400 * 86_400)),
            "defaults.timeout",
            "must be at most 365d, got 400d",
        ),
        (
            |c| c.worker.queues.clear(),
            "worker.queues",
            "must name at least one queue",
        ),
        (
            |c| c.worker.queues.push(String::new()),
            "worker.queues[1]",
            "must not be empty",
        ),
        (
            |c| c.worker.queues.push("bad/name".into()),
            "worker.queues[1]",
            "contains '/'",
        ),
        (
            |c| c.worker.queues = vec!["a".into(), "b".into(), "a".into()],
            "worker.queues[2]",
            "\"a\" is listed more than once",
        ),
        (
            |c| c.worker.concurrency = 0,
            "worker.concurrency",
            "must be at least 1, got 0",
        ),
        (
            |c| c.worker.concurrency = 10_001,
            "worker.concurrency",
            "must be at most 10000, got 10001",
        ),
        (
            |c| c.worker.polling_interval = Duration::ZERO,
            "worker.polling_interval",
            "must be greater than 0",
        ),
        (
            |c| c.worker.polling_interval = Duration::from_secs(86_401),
            "worker.polling_interval",
            "must be at most 1d, got 1d1s",
        ),
        (
            |c| c.worker.shutdown_timeout = Duration::from_secs(2 * 86_400),
            "worker.shutdown_timeout",
            "must be at most 1d, got 2d",
        ),
        (
            |c| c.worker.lock_wait = Duration::from_secs(2 * 86_400),
            "worker.lock_wait",
            "must be at most 1d, got 2d",
        ),
        (
            |c| c.cleanup.interval_hours = 0,
            "cleanup.interval_hours",
            "must be at least 1, got 0",
        ),
        (
            |c| c.cleanup.interval_hours = 8_761,
            "cleanup.interval_hours",
            "must be at most 8760",
        ),
        (
            |c| c.cleanup.retain_days = 0,
            "cleanup.retain_days",
            "must be at least 1, got 0",
        ),
        (
            |c| c.cleanup.retain_days = 36_501,
            "cleanup.retain_days",
            "must be at most 36500",
        ),
        (
            |c| c.cleanup.completed_retention = Duration::from_secs(36_501 * 86_400),
            "cleanup.completed_retention",
            "must be at most 36500d",
        ),
        (
            |c| c.rabbitmq.host = String::new(),
            "rabbitmq.host",
            "must not be empty",
        ),
        (
            |c| c.rabbitmq.port = 0,
            "rabbitmq.port",
            "must be at least 1, got 0",
        ),
        (
            |c| c.rabbitmq.url = Some(String::new()),
            "rabbitmq.url",
            "must not be empty",
        ),
        (
            |c| c.rabbitmq.url = Some("http://u:hunter2@host/".into()),
            "rabbitmq.url",
            "must start with amqp:// or amqps://, got \"http://u:<redacted>@host/\"",
        ),
        (
            |c| c.rabbitmq.prefetch = Some(0),
            "rabbitmq.prefetch",
            "must be at least 1, got 0",
        ),
        (
            |c| c.limits.max_payload_bytes = 0,
            "limits.max_payload_bytes",
            "must be at least 1, got 0",
        ),
        (
            |c| c.limits.max_frame_bytes = c.limits.max_payload_bytes,
            "limits.max_frame_bytes",
            "must be greater than limits.max_payload_bytes (1048576), got 1048576",
        ),
        (
            |c| c.limits.max_pending = Some(0),
            "limits.max_pending",
            "must be at least 1, got 0",
        ),
        (
            |c| c.control.socket = Some(PathBuf::new()),
            "control.socket",
            "must not be empty",
        ),
        (
            |c| c.control.token = Some(String::new()),
            "control.token",
            "must not be empty",
        ),
        (
            |c| c.control.listen = Some(SocketAddr::from(([0, 0, 0, 0], 7878))),
            "control.listen",
            "0.0.0.0:7878 is not a loopback address: set control.token",
        ),
        (
            |c| c.control.listen = Some(SocketAddr::from(([192, 168, 1, 4], 0))),
            "control.listen",
            "is not a loopback address",
        ),
        (
            |c| c.http.token = Some(String::new()),
            "http.token",
            "must not be empty",
        ),
        (
            |c| c.http.listen = Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            "http.listen",
            "0.0.0.0:8080 is not a loopback address: set http.token",
        ),
        (
            |c| c.http.listen = Some(SocketAddr::from(([192, 168, 1, 4], 0))),
            "http.listen",
            "is not a loopback address",
        ),
        (
            |c| c.control.max_connections = 0,
            "control.max_connections",
            "must be at least 1, got 0",
        ),
        (
            |c| c.control.max_connections = MAX_CONTROL_CONNECTIONS + 1,
            "control.max_connections",
            "must be at most 65536, got 65537",
        ),
    ];
    for (index, (breaks, want_key, want_message)) in rules.iter().enumerate() {
        let mut config = Config::default();
        breaks(&mut config);
        let err = config.validate().expect_err(want_key);
        let ConfigError::InvalidValue { path, key, message } = &err else {
            return Err(format!("rule {index}: expected InvalidValue, got {err:?}").into());
        };
        assert_eq!(path, &None, "rule {index}");
        assert_eq!(key, want_key, "rule {index}");
        assert!(message.contains(want_message), "rule {index}: {message}");
    }
    Ok(())
}

#[test]
fn validation_boundaries_are_inclusive() -> TestResult {
    let mut config = Config::default();
    config.defaults.max_retries = MAX_RETRIES;
    config.defaults.retry_max_delay = config.defaults.retry_delay;
    config.defaults.timeout = Some(MAX_TASK_DELAY);
    config.defaults.queue = "q".repeat(255);
    config.worker.concurrency = MAX_CONCURRENCY;
    config.worker.polling_interval = MAX_WORKER_WAIT;
    config.worker.shutdown_timeout = Duration::ZERO;
    config.cleanup.interval_hours = MAX_CLEANUP_INTERVAL_HOURS;
    config.cleanup.retain_days = MAX_RETAIN_DAYS;
    config.cleanup.completed_retention = Duration::ZERO;
    config.rabbitmq.port = 1;
    config.rabbitmq.url = Some("AMQPS://host".into());
    config.rabbitmq.prefetch = Some(1);
    config.limits.max_payload_bytes = 1;
    config.limits.max_frame_bytes = 2;
    config.limits.max_pending = Some(1);
    config.control.max_connections = MAX_CONTROL_CONNECTIONS;
    config.control.listen = Some("[::1]:0".parse()?);
    config.validate()?;
    config.control.max_connections = 1;
    config.control.listen = Some("0.0.0.0:7878".parse()?);
    config.control.token = Some("t".into());
    config.validate()?;
    Ok(())
}

// --- control --------------------------------------------------------------------------

#[test]
fn control_listen_accepts_ip_and_localhost_addresses() -> TestResult {
    assert_eq!(
        parse_listen("127.0.0.1:7878")?,
        SocketAddr::from(([127, 0, 0, 1], 7878))
    );
    assert_eq!(
        parse_listen("localhost:0")?,
        SocketAddr::from(([127, 0, 0, 1], 0))
    );
    assert_eq!(parse_listen("[::1]:9")?.port(), 9);
    for bad in ["7878", "example.com:80", "127.0.0.1", "localhost:99999", ""] {
        let err = parse_listen(bad).expect_err(bad);
        assert!(
            err.contains("expected") || err.contains("port"),
            "{bad}: {err}"
        );
    }
    let config = Config::from_toml_str(
        "[control]\nlisten = \"localhost:7000\"",
        Path::new("fq.toml"),
    )?;
    assert_eq!(
        config.control.listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 7000)))
    );
    Ok(())
}

#[test]
fn control_section_errors_name_the_key() {
    let cases = [
        (
            "[control]\nlisten = \"nowhere\"",
            "control.listen: expected an address",
        ),
        (
            "[control]\nlisten = 7878",
            "control.listen: expected a string",
        ),
        (
            "[control]\nmax_connections = -1",
            "control.max_connections: must not be negative",
        ),
        ("[control]\nsokcet = \"x\"", "unknown key control.sokcet"),
        ("[http]\ntokn = \"x\"", "unknown key http.tokn"),
        (
            "[http]\nlisten = \"nowhere\"",
            "http.listen: expected an address",
        ),
        (
            "[http]\nlisten = \"0.0.0.0:1\"",
            "http.listen: 0.0.0.0:1 is not a loopback",
        ),
        (
            "[control]\nlisten = \"0.0.0.0:1\"",
            "control.listen: 0.0.0.0:1 is not a loopback",
        ),
    ];
    for (text, want) in cases {
        let err = Config::from_toml_str(text, Path::new("fq.toml"))
            .expect_err(text)
            .to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
}

#[test]
fn control_token_expands_and_debug_hides_it() -> TestResult {
    let env = env_of(&[("TOK", "hunter2")]);
    let config = Config::from_str_in(
        "[control]\ntoken = \"${TOK}\"",
        Format::Toml,
        Path::new("fq.toml"),
        &env,
    )?;
    assert_eq!(config.control.token.as_deref(), Some("hunter2"));
    let shown = format!("{config:?} {config:#?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    Ok(())
}

#[test]
fn validation_error_names_the_source_file() {
    let config = Config {
        source: Some(PathBuf::from("config/services.yaml")),
        worker: WorkerConfig {
            concurrency: 0,
            ..WorkerConfig::default()
        },
        ..Config::default()
    };
    assert_eq!(
        config.validate().map_err(|err| err.to_string()),
        Err("config/services.yaml: worker.concurrency: must be at least 1, got 0".to_owned())
    );
}

// --- RabbitMQ -------------------------------------------------------------------------

#[test]
fn amqp_url_from_parts_encodes_the_vhost() {
    assert_eq!(
        RabbitConfig::default().amqp_url(),
        "amqp://guest:guest@localhost:5672/%2f"
    );
    let rabbit = RabbitConfig {
        host: "mq".into(),
        port: 5673,
        username: "fq".into(),
        password: "pw".into(),
        vhost: "prod".into(),
        ..RabbitConfig::default()
    };
    assert_eq!(rabbit.amqp_url(), "amqp://fq:pw@mq:5673/prod");
}

#[test]
fn amqp_url_encodes_user_info_and_brackets_ipv6() {
    let rabbit = RabbitConfig {
        host: "::1".into(),
        username: "a@b".into(),
        password: "p:w/d%é".into(),
        vhost: "/team a".into(),
        ..RabbitConfig::default()
    };
    assert_eq!(
        rabbit.amqp_url(),
        "amqp://a%40b:p%3aw%2fd%25%c3%a9@[::1]:5672/%2fteam%20a"
    );
    let bracketed = RabbitConfig {
        host: "[::1]".into(),
        ..RabbitConfig::default()
    };
    assert!(bracketed.amqp_url().contains("@[::1]:5672/"));
}

#[test]
fn amqp_url_prefers_the_url() {
    let rabbit = RabbitConfig {
        url: Some("amqps://u:p@example.com/vh".into()),
        ..RabbitConfig::default()
    };
    assert_eq!(rabbit.amqp_url(), "amqps://u:p@example.com/vh");
}

#[test]
fn debug_hides_passwords() {
    let rabbit = RabbitConfig {
        password: "hunter2".into(),
        url: Some("amqp://fq:hunter2@mq:5672/%2f".into()),
        ..RabbitConfig::default()
    };
    let shown = format!("{rabbit:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("password: <redacted>"), "{shown}");
    assert!(
        shown.contains("amqp://fq:<redacted>@mq:5672/%2f"),
        "{shown}"
    );
    assert!(shown.contains("host: \"localhost\""), "{shown}");

    let config = Config {
        rabbitmq: rabbit,
        ..Config::default()
    };
    let shown = format!("{config:?} {config:#?}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn redact_url_hides_only_the_password() {
    let cases = [
        ("amqp://u:p@h:5672/v", "amqp://u:<redacted>@h:5672/v"),
        ("amqps://u:p/x@y@h/v", "amqps://u:<redacted>@h/v"),
        ("amqp://u@h/v", "amqp://u@h/v"),
        ("amqp://h:5672/v", "amqp://h:5672/v"),
        ("u:p@h", "u:<redacted>@h"),
        ("", ""),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want, "{url:?}");
    }
}

#[test]
fn amqp_urls_need_an_amqp_scheme() {
    assert_eq!(check_amqp_url("amqp://localhost"), Ok(()));
    assert_eq!(check_amqp_url("amqps://h:5671/v"), Ok(()));
    assert_eq!(check_amqp_url("AMQP://h"), Ok(()));
    assert!(check_amqp_url("").is_err());
    assert!(check_amqp_url("localhost:5672").is_err());
    assert!(check_amqp_url("http://h").is_err());
    assert!(check_amqp_url("amqp:/h").is_err());
}

// --- file.rs ----------------------------------------------------------------

mod file {
    use super::super::decode::Node;
    use super::super::file::*;
    use super::*;
    use std::fs;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn toml(text: &str) -> Result<Vec<(String, Node)>, ConfigError> {
        parse(text, Format::Toml, Path::new("fq.toml"))
    }

    fn yaml(text: &str) -> Result<Vec<(String, Node)>, ConfigError> {
        parse(text, Format::Yaml, Path::new("config/services.yaml"))
    }

    #[test]
    fn format_follows_the_extension() -> TestResult {
        assert_eq!(Format::of(Path::new("fq.toml"))?, Format::Toml);
        assert_eq!(Format::of(Path::new("dir.d/FQ.TOML"))?, Format::Toml);
        assert_eq!(Format::of(Path::new("config/services.yaml"))?, Format::Yaml);
        assert_eq!(Format::of(Path::new("services.yml"))?, Format::Yaml);
        for name in ["fq", "fq.json", "fq.toml.bak", ".toml", "yaml"] {
            let err = Format::of(Path::new(name)).expect_err(name);
            assert!(
                matches!(&err, ConfigError::UnknownFormat { path } if path == Path::new(name)),
                "{name}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn find_prefers_fq_toml_then_services_yaml() -> TestResult {
        let dir = tempfile::tempdir()?;
        assert_eq!(find(dir.path())?, None);

        fs::create_dir(dir.path().join("config"))?;
        let yaml = dir.path().join("config").join("services.yaml");
        fs::write(&yaml, "task: {}\n")?;
        assert_eq!(find(dir.path())?, Some(yaml));

        let toml = dir.path().join("fq.toml");
        fs::write(&toml, "")?;
        assert_eq!(find(dir.path())?, Some(toml));
        Ok(())
    }

    #[test]
    fn find_treats_a_file_named_config_as_no_yaml() -> TestResult {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("config"), "not a directory")?;
        assert_eq!(find(dir.path())?, None);
        Ok(())
    }

    #[test]
    fn read_missing_file_names_the_path() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("absent.toml");
        let err = read(&path).expect_err("file does not exist");
        let ConfigError::Io {
            path: reported,
            source,
        } = &err
        else {
            return Err(format!("expected Io, got {err:?}").into());
        };
        assert_eq!(reported, &path);
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent.toml"), "{err}");
        Ok(())
    }

    #[test]
    fn read_refuses_a_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::create_dir(&path)?;
        let err = read(&path).expect_err("a directory is not a config file");
        let ConfigError::Io {
            path: reported,
            source,
        } = &err
        else {
            return Err(format!("expected Io, got {err:?}").into());
        };
        assert_eq!(reported, &path);
        assert_eq!(source.kind(), io::ErrorKind::IsADirectory);
        Ok(())
    }

    #[test]
    fn read_refuses_huge_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize + 1])?;
        let err = read(&path).expect_err("over the cap");
        assert!(
            matches!(&err, ConfigError::Io { source, .. } if source.kind() == io::ErrorKind::FileTooLarge),
            "{err:?}"
        );
        // Exactly at the cap is fine.
        fs::write(&path, vec![b'#'; MAX_FILE_BYTES as usize])?;
        assert_eq!(read(&path)?.len(), MAX_FILE_BYTES as usize);
        Ok(())
    }

    #[test]
    fn read_reports_where_utf8_breaks() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("fq.toml");
        fs::write(&path, b"broker = \"database\"\nqueue = \"d\xffx\"\n")?;
        let err = read(&path).expect_err("not UTF-8");
        assert!(
            matches!(
                &err,
                ConfigError::Syntax {
                    line: Some(2),
                    column: Some(11),
                    ..
                }
            ),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn toml_syntax_error_has_line_and_column() -> TestResult {
        let err =
            toml("broker = \"database\"\n[worker]\nconcurrency = = 3\n").expect_err("bad TOML");
        let ConfigError::Syntax {
            path,
            line,
            column,
            message,
        } = &err
        else {
            return Err(format!("expected Syntax, got {err:?}").into());
        };
        assert_eq!(path, Path::new("fq.toml"));
        assert_eq!(*line, Some(3));
        assert!(column.is_some());
        assert!(!message.is_empty());
        assert!(err.to_string().starts_with("fq.toml:3:"), "{err}");
        Ok(())
    }

    #[test]
    fn toml_duplicate_key_is_a_syntax_error() {
        let err = toml("broker = \"database\"\nbroker = \"rabbitmq\"\n").expect_err("duplicate");
        assert!(
            matches!(&err, ConfigError::Syntax { line: Some(2), .. }),
            "{err:?}"
        );
    }

    #[test]
    fn yaml_syntax_error_has_line_and_column() -> TestResult {
        let err = yaml("task:\n  broker: database\n  worker: [unclosed\n").expect_err("bad YAML");
        let ConfigError::Syntax {
            line,
            column,
            message,
            ..
        } = &err
        else {
            return Err(format!("expected Syntax, got {err:?}").into());
        };
        assert!(line.is_some_and(|line| line >= 3), "{err:?}");
        assert!(column.is_some());
        // The position is reported once, in front, not again at the end of the message.
        assert!(!message.ends_with("at line 4 column 1"), "{message}");
        assert!(
            err.to_string()
                .starts_with("config/services.yaml:4:1: syntax error: "),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn toml_values_convert() -> TestResult {
        let entries = toml(
            "database = \"a\"\nbroker = \"database\"\n[worker]\nqueues = [\"x\"]\nconcurrency = 4\n\
             [defaults]\npriority = -2\nretry_delay = 1.5\nwhen = 1979-05-27\nflag = true\n",
        )?;
        // `toml::Table` is sorted by key (fq does not enable toml's `preserve_order`).
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["broker", "database", "defaults", "worker"]);
        assert_eq!(
            entries[2].1,
            Node::Table(vec![
                ("flag".into(), Node::Bool(true)),
                ("priority".into(), Node::Int(-2)),
                ("retry_delay".into(), Node::Float(1.5)),
                ("when".into(), Node::Other("a datetime")),
            ])
        );
        assert_eq!(
            entries[3].1,
            Node::Table(vec![
                ("concurrency".into(), Node::Int(4)),
                ("queues".into(), Node::List(vec![Node::Str("x".into())])),
            ])
        );
        Ok(())
    }

    #[test]
    fn empty_toml_has_no_entries() -> TestResult {
        assert!(toml("")?.is_empty());
        assert!(toml("# only a comment\n\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn yaml_takes_only_the_task_section() -> TestResult {
        // Everything outside `task:` belongs to Framefox, including tags and variables fq
        // would reject.
        let entries = yaml(
            "database:\n  url: ${DATABASE_URL}\nservices:\n  app.mailer: !service {class: Mailer}\n\
             task:\n  broker: database\n  defaults:\n    queue: default\n",
        )?;
        let keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["broker", "defaults"]);
        Ok(())
    }

    #[test]
    fn yaml_without_task_is_missing_section() {
        for text in [
            "services:\n  a: b\n",
            "",
            "# just a comment\n",
            "- a list\n",
            "tasks:\n  broker: database\n",
        ] {
            let err = yaml(text).expect_err("no task section");
            assert!(
                matches!(&err, ConfigError::MissingSection { section, .. } if section == "task"),
                "{text:?}: {err:?}"
            );
        }
    }

    #[test]
    fn yaml_empty_task_section_has_no_entries() -> TestResult {
        assert!(yaml("task:\n")?.is_empty());
        assert!(yaml("task: ~\n")?.is_empty());
        assert!(yaml("task: {}\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn yaml_task_must_be_a_mapping() {
        let err = yaml("task: database\n").expect_err("scalar task");
        assert!(
            matches!(&err, ConfigError::InvalidValue { key, .. } if key == "task"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "config/services.yaml: task: expected a mapping of fq settings, got a string"
        );
    }

    #[test]
    fn yaml_values_and_keys_convert() -> TestResult {
        let entries = yaml(
            "task:\n  big: 18446744073709551615\n  neg: -3\n  ratio: 0.5\n  none: ~\n  \
             tagged: !custom 5\n  1: numeric key\n  list: [a, 2]\n",
        )?;
        assert_eq!(
            entries,
            vec![
                ("big".into(), Node::Int(u64::MAX.into())),
                ("neg".into(), Node::Int(-3)),
                ("ratio".into(), Node::Float(0.5)),
                ("none".into(), Node::Null),
                ("tagged".into(), Node::Other("a tagged value")),
                ("1".into(), Node::Str("numeric key".into())),
                (
                    "list".into(),
                    Node::List(vec![Node::Str("a".into()), Node::Int(2)])
                ),
            ]
        );
        Ok(())
    }

    #[test]
    fn yaml_merge_keys_are_applied_in_the_task_section() -> TestResult {
        let entries = yaml(
            "base: &base\n  concurrency: 4\n  queues: [default]\n\
             task:\n  worker:\n    <<: *base\n    concurrency: 8\n",
        )?;
        let [(key, Node::Table(worker))] = entries.as_slice() else {
            return Err(format!("unexpected entries {entries:?}").into());
        };
        assert_eq!(key, "worker");
        assert!(worker.contains(&("concurrency".into(), Node::Int(8))));
        assert!(worker.contains(&(
            "queues".into(),
            Node::List(vec![Node::Str("default".into())])
        )));
        assert!(!worker.iter().any(|(key, _)| key == "<<"));
        Ok(())
    }

    #[test]
    fn deep_nesting_is_a_syntax_error_not_a_stack_overflow() {
        // Both parsers cap nesting depth, which also bounds the recursion of `toml_node` and
        // `yaml_node` (the `config_parse` fuzz target relies on this).
        let depth = 1_000;
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = toml(&format!("a = {nested}")).expect_err("too deep");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        let err = yaml(&format!("task:\n  a: {nested}")).expect_err("too deep");
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn yaml_duplicate_key_is_a_syntax_error() {
        // serde_norway points at the mapping that holds the duplicate, and names the key.
        let err = yaml("task:\n  broker: database\n  broker: rabbitmq\n").expect_err("duplicate");
        assert!(
            matches!(&err, ConfigError::Syntax { line: Some(2), message, .. } if message.contains("\"broker\"")),
            "{err:?}"
        );
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\ncdé\nf";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 3));
        // Inside the two-byte 'é' clamps back to its start; past the end clamps to the end.
        assert_eq!(line_column(text, 6), (2, 3));
        assert_eq!(line_column(text, 8), (3, 1));
        assert_eq!(line_column(text, 100), (3, 2));
    }
}

// --- duration.rs ------------------------------------------------------------

mod duration {
    use super::super::duration::*;
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_each_unit_and_combinations() -> TestResult {
        let cases = [
            ("90s", secs(90)),
            ("90", secs(90)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("500ms", Duration::from_millis(500)),
            ("5m", secs(300)),
            ("2h", secs(7_200)),
            ("2d", secs(172_800)),
            ("1h30m", secs(5_400)),
            ("1h 30m", secs(5_400)),
            ("1d2h3m4s5ms", secs(93_784) + Duration::from_millis(5)),
            ("  45s  ", secs(45)),
            ("5 s", secs(5)),
            ("1s1500ms", Duration::from_millis(2_500)),
            ("007s", secs(7)),
            // Units that humantime adds to fq's historical ms, s, m, h and d.
            ("3w", secs(1_814_400)),
            ("1sec", secs(1)),
            ("2 hours", secs(7_200)),
            ("10us", Duration::from_micros(10)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text)?, want, "{text:?}");
        }
        Ok(())
    }

    /// The message `text` is refused with.
    fn refusal(text: &str) -> String {
        match parse_duration(text) {
            Ok(duration) => panic!("{text:?} parsed as {duration:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn rejects_empty() {
        let message = "empty duration: expected e.g. \"90s\", \"1h30m\" or a number of seconds";
        assert_eq!(refusal(""), message);
        assert_eq!(refusal("   "), message);
    }

    #[test]
    fn rejects_negative() {
        assert_eq!(
            refusal("-5s"),
            "negative duration \"-5s\": durations cannot be negative"
        );
        assert_eq!(
            refusal("-5"),
            "negative duration \"-5\": durations cannot be negative"
        );
    }

    #[test]
    fn rejects_unknown_units_naming_them() {
        let units = "(use ns, us, ms, s, m, h, d, w, M or y, or a long form such as sec or hours)";
        assert_eq!(
            refusal("5x"),
            format!("unknown unit \"x\" in \"5x\" {units}")
        );
        for (text, unit) in [
            ("1H", "H"),
            ("5 parsecs", "parsecs"),
            ("2lightyears", "lightyears"),
        ] {
            assert_eq!(
                refusal(text),
                format!("unknown unit {unit:?} in {text:?} {units}")
            );
        }
    }

    #[test]
    fn rejects_a_number_without_unit_in_a_sum() {
        let units = "(use ns, us, ms, s, m, h, d, w, M or y, or a long form such as sec or hours)";
        for text in ["1h 30", "1h30"] {
            assert_eq!(
                refusal(text),
                format!("missing unit after 30 in {text:?} {units}")
            );
        }
    }

    #[test]
    fn rejects_fractions() {
        for text in ["1.5h", "0.5", "1,5s"] {
            assert_eq!(
                refusal(text),
                format!(
                    "fractions are not supported in {text:?}: use a smaller unit, e.g. \"90m\" \
                     for \"1.5h\""
                )
            );
        }
    }

    #[test]
    fn rejects_stray_characters() {
        for (text, found) in [
            ("h5", 'h'),
            ("five", 'f'),
            ("+5s", '+'),
            ("5s-1s", '-'),
            ("1h_30m", '_'),
            ("ms", 'm'),
        ] {
            assert_eq!(
                refusal(text),
                format!("unexpected {found:?} in {text:?}: expected a number")
            );
        }
    }

    #[test]
    fn rejects_overflow() {
        let too_many_digits = "99999999999999999999999";
        for text in [
            too_many_digits.to_owned(),
            format!("{too_many_digits}s"),
            format!("{}d", u64::MAX),
            format!("{}s {}s", u64::MAX, u64::MAX),
        ] {
            assert_eq!(refusal(&text), format!("duration {text:?} is too large"));
        }
        // The largest whole number of seconds still fits.
        assert_eq!(
            parse_duration(&u64::MAX.to_string()),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn formats_for_messages_and_round_trips() -> TestResult {
        let cases = [
            (Duration::ZERO, "0s"),
            (secs(5), "5s"),
            (secs(5_400), "1h30m"),
            (secs(86_400), "1d"),
            (Duration::from_millis(1_500), "1s500ms"),
            (Duration::from_millis(20), "20ms"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration, DurationStyle::Exact), text);
            assert_eq!(parse_duration(text)?, duration);
        }
        assert_eq!(
            format_duration(Duration::from_nanos(1_500), DurationStyle::Exact),
            "1.5µs"
        );
        Ok(())
    }
}

// --- env.rs -----------------------------------------------------------------

mod env {
    use super::super::env::*;
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn text_without_references_is_unchanged() -> TestResult {
        let env = env_of(&[]);
        assert_eq!(expand("guest", &env)?, ("guest".to_owned(), false));
        assert_eq!(expand("", &env)?, (String::new(), false));
        assert_eq!(
            expand("pa$$word $5 $X", &env)?,
            ("pa$$word $5 $X".to_owned(), false)
        );
        assert_eq!(
            expand("trailing $", &env)?,
            ("trailing $".to_owned(), false)
        );
        Ok(())
    }

    #[test]
    fn references_expand_in_place() -> TestResult {
        let env = env_of(&[("USER", "fq"), ("HOST", "rabbit.local"), ("EMPTY", "")]);
        assert_eq!(expand("${USER}", &env)?, ("fq".to_owned(), true));
        assert_eq!(
            expand("amqp://${USER}@${HOST}:5672/", &env)?,
            ("amqp://fq@rabbit.local:5672/".to_owned(), true)
        );
        assert_eq!(expand("a${EMPTY}b", &env)?, ("ab".to_owned(), true));
        assert_eq!(expand("é${USER}é", &env)?, ("éfqé".to_owned(), true));
        Ok(())
    }

    #[test]
    fn values_are_not_expanded_twice() -> TestResult {
        let env = env_of(&[("A", "${B}"), ("B", "no")]);
        assert_eq!(expand("${A}", &env)?, ("${B}".to_owned(), true));
        Ok(())
    }

    #[test]
    fn double_dollar_escapes_a_reference() -> TestResult {
        let env = env_of(&[("X", "x")]);
        assert_eq!(expand("$${X}", &env)?, ("${X}".to_owned(), false));
        assert_eq!(expand("$${X}-${X}", &env)?, ("${X}-x".to_owned(), true));
        Ok(())
    }

    #[test]
    fn unset_variable_is_named() {
        let env = env_of(&[]);
        assert_eq!(
            expand("pre-${RABBIT_PASSWORD}", &env),
            Err(ExpandError::Unset("RABBIT_PASSWORD".to_owned()))
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        let env = env_of(&[("X", "x")]);
        for text in ["${X", "${}", "${1X}", "${A-B}", "${ X }", "${X}${"] {
            assert!(
                matches!(expand(text, &env), Err(ExpandError::Malformed(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn no_overrides_leave_the_config_alone() -> TestResult {
        let mut config = Config::default();
        apply_overrides(&mut config, &env_of(&[]))?;
        assert_eq!(config, Config::default());
        Ok(())
    }

    #[test]
    fn overrides_win() -> TestResult {
        let mut config = Config::default();
        let env = env_of(&[
            ("FQ_BROKER", "rabbitmq"),
            ("FQ_DATABASE", "/data/q.redb"),
            ("FQ_RABBITMQ_URL", "amqps://u:p@mq.example:5671/prod"),
        ]);
        apply_overrides(&mut config, &env)?;
        assert_eq!(config.broker, BrokerKind::Rabbitmq);
        assert_eq!(config.database, PathBuf::from("/data/q.redb"));
        assert_eq!(
            config.rabbitmq.url.as_deref(),
            Some("amqps://u:p@mq.example:5671/prod")
        );
        Ok(())
    }

    #[test]
    fn bad_overrides_name_the_variable() {
        let cases = [
            ("FQ_BROKER", "redis"),
            ("FQ_BROKER", "Database"),
            ("FQ_BROKER", ""),
            ("FQ_DATABASE", ""),
            ("FQ_RABBITMQ_URL", "http://u:secret@host/"),
            ("FQ_RABBITMQ_URL", ""),
        ];
        for (variable, value) in cases {
            let mut config = Config::default();
            let err = apply_overrides(&mut config, &env_of(&[(variable, value)]))
                .expect_err("bad override");
            assert!(
                matches!(&err, ConfigError::BadOverride { variable: v, .. } if v == variable),
                "{variable}={value:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("environment variable {variable}: ")),
                "{err}"
            );
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }
}

// --- error.rs ---------------------------------------------------------------

mod error {
    use super::super::error::*;
    use super::*;
    use std::error::Error as _;

    #[test]
    fn invalid_value_names_file_and_key() {
        let err = ConfigError::invalid(
            Some(Path::new("fq.toml")),
            "worker.concurrency",
            "must be at least 1, got 0",
        );
        assert_eq!(
            err.to_string(),
            "fq.toml: worker.concurrency: must be at least 1, got 0"
        );
    }

    #[test]
    fn invalid_value_without_file_names_the_key() {
        let err = ConfigError::invalid(None, "database", "must not be empty");
        assert_eq!(err.to_string(), "database: must not be empty");
    }

    #[test]
    fn syntax_shows_the_position_it_has() {
        let with = |line, column| ConfigError::Syntax {
            path: PathBuf::from("fq.toml"),
            line,
            column,
            message: "invalid key".into(),
        };
        assert_eq!(
            with(Some(3), Some(7)).to_string(),
            "fq.toml:3:7: syntax error: invalid key"
        );
        assert_eq!(
            with(Some(3), None).to_string(),
            "fq.toml:3: syntax error: invalid key"
        );
        assert_eq!(
            with(None, None).to_string(),
            "fq.toml: syntax error: invalid key"
        );
    }

    #[test]
    fn unknown_key_shows_the_suggestion() {
        let err = ConfigError::UnknownKey {
            path: PathBuf::from("fq.toml"),
            key: "worker.concurency".into(),
            suggestion: Some("worker.concurrency".into()),
        };
        assert_eq!(
            err.to_string(),
            "fq.toml: unknown key worker.concurency (did you mean worker.concurrency?)"
        );
    }

    #[test]
    fn io_keeps_the_reason_as_source() {
        let err = ConfigError::Io {
            path: PathBuf::from("missing.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(err.to_string(), "missing.toml: cannot read the config file");
        assert!(err.source().is_some());
    }

    #[test]
    fn other_messages_name_what_they_are_about() {
        let missing = ConfigError::MissingSection {
            path: PathBuf::from("config/services.yaml"),
            section: "task".into(),
        };
        assert!(
            missing
                .to_string()
                .starts_with("config/services.yaml: no `task:` section")
        );
        let unset = ConfigError::UnsetVariable {
            path: PathBuf::from("fq.toml"),
            key: "rabbitmq.password".into(),
            variable: "RABBIT_PASSWORD".into(),
        };
        assert_eq!(
            unset.to_string(),
            "fq.toml: rabbitmq.password: environment variable RABBIT_PASSWORD is not set"
        );
        let bad = ConfigError::BadOverride {
            variable: "FQ_BROKER".into(),
            message: "expected \"database\" or \"rabbitmq\", got \"redis\"".into(),
        };
        assert_eq!(
            bad.to_string(),
            "environment variable FQ_BROKER: expected \"database\" or \"rabbitmq\", got \"redis\""
        );
    }
}

// --- names.rs ---------------------------------------------------------------

mod names {
    use super::super::names::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for name in [
            "default",
            "a",
            "urgent-2",
            "myapp.tasks.send_email",
            "tenant:42",
            "ALL_CAPS",
            "0",
        ] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(check_name(""), Err("must not be empty".to_owned()));
    }

    #[test]
    fn length_limit_is_255_bytes() {
        assert_eq!(check_name(&"q".repeat(255)), Ok(()));
        assert_eq!(
            check_name(&"q".repeat(256)),
            Err("must be at most 255 bytes, got 256 bytes".to_owned())
        );
    }

    #[test]
    fn rejects_other_characters_naming_them() {
        assert_eq!(
            check_name("a b"),
            Err(
                "\"a b\" contains ' ' at byte 1; only A-Z, a-z, 0-9 and . _ : - are allowed"
                    .to_owned()
            )
        );
        for name in ["a/b", "é", "tab\t", "semi;", "star*", "new\nline", "${X}"] {
            assert!(check_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn multibyte_characters_count_as_bytes() {
        // 128 two-byte characters are 256 bytes: the length check fires first.
        let err = check_name(&"é".repeat(128)).expect_err("too long");
        assert!(err.contains("256 bytes"), "{err}");
    }
}

// --- decode.rs --------------------------------------------------------------

mod decode {
    use super::super::decode::*;
    use super::super::env::Lookup;
    use super::super::file::{Format, parse};
    use super::super::{Config, ConfigError, WorkerConfig};
    use super::env_of;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

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

    /// Each `(toml, key, part of the message)` case is refused as an invalid value of `key`
    /// whose message holds the part.
    fn each_names_its_key(cases: &[(&str, &str, &str)]) -> TestResult {
        for &(text, want_key, want_message) in cases {
            let (key, message) = invalid(decode_toml(text))?;
            assert_eq!(key, want_key, "{text:?}");
            assert!(message.contains(want_message), "{text:?}: {message}");
        }
        Ok(())
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
        each_names_its_key(&cases)
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
        each_names_its_key(&cases)
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

    const TOP_KEYS: &[&str] = &[
        "broker", "database", "defaults", "worker", "cleanup", "rabbitmq", "limits", "control",
    ];
    const WORKER_KEYS: &[&str] = &[
        "queues",
        "concurrency",
        "polling_interval",
        "shutdown_timeout",
        "lock_wait",
    ];

    #[test]
    fn serde_words_read_as_fq_words() {
        // Pins the messages that serde's own visitors (Vec, PathBuf) would word differently.
        let origin = Path::new("config/services.yaml");
        let cases = [
            (
                "worker",
                "queues",
                Node::Null,
                "expected a list of strings, got nothing (null)",
            ),
            (
                "worker",
                "queues",
                Node::Table(vec![]),
                "expected a list of strings, got a table",
            ),
            (
                "",
                "database",
                Node::Null,
                "expected a string, got nothing (null)",
            ),
            (
                "",
                "database",
                Node::Int(5),
                "expected a string, got an integer (quote the value to make it a string)",
            ),
            (
                "control",
                "socket",
                Node::Bool(true),
                "expected a string, got a boolean (quote",
            ),
            (
                "worker",
                "concurrency",
                Node::Null,
                "expected an integer, got nothing (null)",
            ),
        ];
        for (section, key, node, want) in cases {
            let entries = if section.is_empty() {
                vec![(key.to_owned(), node)]
            } else {
                vec![(
                    section.to_owned(),
                    Node::Table(vec![(key.to_owned(), node)]),
                )]
            };
            let err = decode(entries, origin, &env_of(&[])).expect_err(key);
            assert!(err.to_string().contains(want), "{key}: {err}");
        }
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
        // `closest` relies on strsim's distance counting characters, not bytes.
        use strsim::levenshtein as edit_distance;
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("héllo", "hello"), 1);
    }
}

/// The dashboard follows the control socket's rule (one function, `exposed_without_token`):
/// loopback without a token is fine, anything else needs one; the token never shows in `Debug`.
#[test]
fn http_listen_needs_a_token_off_loopback() -> TestResult {
    let mut config = Config::default();
    assert_eq!(config.http, HttpConfig::default());
    assert_eq!(
        (config.http.listen, config.http.token.as_deref()),
        (None, None)
    );
    for loopback in ["127.0.0.1:8080", "[::1]:8080", "localhost:8080"] {
        config.http.listen = Some(parse_listen(loopback)?);
        config.validate()?;
    }
    config.http.listen = Some(parse_listen("0.0.0.0:8080")?);
    assert!(config.validate().is_err(), "no token: refused");
    config.http.token = Some("hunter2".into());
    config.validate()?;
    let shown = format!("{:?}", config.http);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains(REDACTED), "{shown}");
    // The shared rule itself, both ways.
    let open = parse_listen("10.0.0.1:1")?;
    assert!(exposed_without_token(open, None));
    assert!(!exposed_without_token(open, Some("t")));
    assert!(!exposed_without_token(parse_listen("127.0.0.1:1")?, None));
    Ok(())
}
