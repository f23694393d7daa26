//! Unit tests for `config/mod.rs`: defaults, whole files in both formats, `load`'s search
//! order and overrides, every validation rule, and the RabbitMQ URL and redaction.

use super::env::env_of;
use super::*;
use std::fs;
use std::io;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every key set, none to its default.
const FULL_TOML: &str = r#"
# ${NOT_SET} in a comment must not matter
broker = "rabbitmq"
database = "/srv/fq/${STORE_NAME}.redb"

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

[control]
socket = "/run/fq/${STORE_NAME}.sock"
listen = "0.0.0.0:7878"
token = "${CONTROL_TOKEN}"
max_connections = 32
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
  control:
    socket: /run/fq/${STORE_NAME}.sock
    listen: 0.0.0.0:7878
    token: ${CONTROL_TOKEN}
    max_connections: 32
database:
  url: sqlite:///app.db
"#;

fn full_env() -> impl Fn(&str) -> Option<String> {
    env_of(&[
        ("STORE_NAME", "tasks"),
        ("RABBIT_PASSWORD", "s3cret"),
        ("CONTROL_TOKEN", "t0ken"),
    ])
}

fn full_config() -> Config {
    Config {
        broker: BrokerKind::Rabbitmq,
        database: PathBuf::from("/srv/fq/tasks.redb"),
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
        },
        cleanup: CleanupConfig {
            interval_hours: 6,
            retain_days: 14,
            completed_retention: Duration::from_secs(43_200),
        },
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
        },
        control: ControlConfig {
            socket: Some(PathBuf::from("/run/fq/tasks.sock")),
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 7878))),
            token: Some("t0ken".into()),
            max_connections: 32,
        },
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
