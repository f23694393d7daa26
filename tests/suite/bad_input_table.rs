//! The bad input table (issue 6, item 5): well over 60 bad inputs across payloads, names and
//! queues, times, configuration files, command-line arguments and control-socket frames, each
//! beyond what `tests/suite/bad_input.rs`, `tests/suite/cli.rs` and `tests/suite/control.rs`
//! already pin.
//!
//! Pass, for every row: the input is refused with an error naming the field and the limit (or
//! the rule broken); nothing panics (on any thread, engine and control threads included; the
//! binary never exits 101 or by a signal); the stored tasks are unchanged afterwards; and the
//! control socket answers a valid request right after every bad one. An oversized length
//! prefix is refused before any body byte is sent, so nothing is read or allocated for it.
//!
//! `FQ_SEED` is printed for the record (the table is fixed; the seed only picks the bytes of
//! the random-garbage rows). `cargo test --test suite -- bad_input_table:: --nocapture` shows the
//! figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fq::{Config, Engine, Error, QueueTask, Registry, Task, TaskContext, TaskError, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common::{panics, run};
use run::seed;

/// How long anything in this file may take before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(30);
/// The default limits (Config::default()).
const MAX_PAYLOAD: usize = 1 << 20;
const MAX_FRAME: usize = 2 << 20;

// --- panics on engine threads -------------------------------------------------------------------

/// Panics on the engine's own threads (writer, timer, control server, blocking pool) since this
/// file's first watch, other areas' panics left out (`common::panics`); a panic on a test's
/// thread fails that test by itself.
fn engine_panics() -> Vec<String> {
    panics::since(watch_start())
        .into_iter()
        .filter(|seen| seen.on_engine_thread() && !seen.elsewhere(file!()))
        .map(|seen| seen.text)
        .collect()
}

/// Where the record stood when this file first watched.
fn watch_start() -> usize {
    static START: OnceLock<usize> = OnceLock::new();
    *START.get_or_init(panics::mark)
}

fn watch_panics() {
    watch_start();
}

fn assert_no_engine_panics() {
    let panics = engine_panics();
    assert!(panics.is_empty(), "panics on engine threads: {panics:?}");
}

/// Rows checked, per table, for the summary line.
static ROWS: AtomicUsize = AtomicUsize::new(0);

fn report(table: &str, rows: usize, started: Instant) {
    let total = ROWS.fetch_add(rows, Ordering::SeqCst) + rows;
    println!(
        "bad input: {table}: {rows} rows refused as expected in {:.1?} ({total} rows so far in this run)",
        started.elapsed()
    );
}

// --- the engine under test ----------------------------------------------------------------------

/// An engine serving its control socket, holding a few tasks of every kind.
async fn seeded_engine(dir: &Path, config: Config) -> Engine {
    let engine = Engine::builder(dir.join("fq.redb"))
        .config(config)
        .open()
        .unwrap();
    for n in 0..5 {
        engine
            .queue_task_named("seed.task", &json!({"kwargs": {"n": n}}))
            .send()
            .await
            .unwrap();
    }
    engine
        .queue_task_named("seed.later", &json!({}))
        .queue("later")
        .delay(3_600u64)
        .send()
        .await
        .unwrap();
    engine
}

/// Everything stored, as JSON: compared before and after each bad input.
async fn stored(engine: &Engine) -> Value {
    let tasks = engine
        .list(fq::ListQuery {
            limit: 10_000,
            ..fq::ListQuery::default()
        })
        .await
        .unwrap();
    let mut stats = serde_json::to_value(engine.stats().await.unwrap()).unwrap();
    // Throughput and ages move by themselves; the counts must not.
    for queue in stats["queues"].as_object_mut().unwrap().values_mut() {
        queue.as_object_mut().unwrap().remove("oldest_ready_ms");
        queue
            .as_object_mut()
            .unwrap()
            .remove("completed_last_minute");
    }
    json!({"tasks": tasks, "stats": stats})
}

/// Fails the current row (returns its problem) unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// The rows that failed, reported together at the end of a table.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, row: &str, outcome: Result<(), String>) {
        if let Err(problem) = outcome {
            self.0.push(format!("{row}: {problem}"));
        }
    }

    fn assert_none(&self, table: &str, seed: u64) {
        assert!(
            self.0.is_empty(),
            "{} rows of the {table} table failed (seed {seed}):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// An error with its chain of causes, as `fq` prints it.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks an engine error: `InvalidInput` for `field`, whose text holds every needle.
fn expect_invalid(
    result: fq::Result<impl std::fmt::Debug>,
    field: &str,
    needles: &[&str],
) -> Result<(), String> {
    match result {
        Err(Error::InvalidInput {
            field: got,
            message,
        }) => {
            ensure!(got == field, "wrong field {got:?} ({message})");
            let text = format!("invalid {got}: {message}");
            for needle in needles {
                ensure!(text.contains(needle), "{text:?} should mention {needle:?}");
            }
            Ok(())
        }
        other => Err(format!("expected invalid {field}, got {other:?}")),
    }
}

/// Checks any error's text (with its causes) for every needle.
fn expect_error_text(
    result: fq::Result<impl std::fmt::Debug>,
    needles: &[&str],
) -> Result<(), String> {
    match result {
        Err(error) => {
            let text = chain(&error);
            for needle in needles {
                ensure!(text.contains(needle), "{text:?} should mention {needle:?}");
            }
            Ok(())
        }
        Ok(value) => Err(format!("accepted ({value:?})")),
    }
}

// --- payloads, names, queues, times through the API ---------------------------------------------

/// A typed task whose arguments are not a JSON object.
#[derive(Serialize, Deserialize)]
struct NotAnObject(u32);

impl Task for NotAnObject {
    const NAME: &'static str = "test.not_an_object";
    type Output = ();
    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

type Build = Box<dyn Fn(&Engine) -> QueueTask>;

/// (row, a change to a worker's settings, field, needle).
type WorkerRow = (
    &'static str,
    Box<dyn Fn(&mut fq::WorkerManager)>,
    &'static str,
    &'static str,
);

fn named(payload: Value) -> impl Fn(&Engine) -> QueueTask {
    move |engine: &Engine| engine.queue_task_named("ok.task", &payload)
}

/// (row, build the task, field, needles).
fn api_rows() -> Vec<(&'static str, Build, &'static str, Vec<&'static str>)> {
    let blob = |len: usize| {
        // {"args":[],"kwargs":{"b":"..."}} is 29 bytes around the string.
        json!({"kwargs": {"b": "x".repeat(len - 29)}})
    };
    vec![
        (
            "payload one byte over 1 MiB",
            Box::new(named(blob(MAX_PAYLOAD + 1))),
            "payload",
            vec![
                "1048577 bytes",
                "limit is 1048576",
                "limits.max_payload_bytes",
            ],
        ),
        (
            "payload a JSON string",
            Box::new(named(json!("just text"))),
            "payload",
            vec!["got a string"],
        ),
        (
            "payload null",
            Box::new(named(Value::Null)),
            "payload",
            vec!["got null"],
        ),
        (
            "payload a number",
            Box::new(named(json!(42))),
            "payload",
            vec!["got a number"],
        ),
        (
            "payload kwargs a string",
            Box::new(named(json!({"kwargs": "to=ada"}))),
            "payload",
            vec!["\"kwargs\" must be an object", "got a string"],
        ),
        (
            "payload args an object",
            Box::new(named(json!({"args": {"a": 1}}))),
            "payload",
            vec!["\"args\" must be an array", "got an object"],
        ),
        (
            "payload kwargs a boolean",
            Box::new(named(json!({"args": [], "kwargs": true}))),
            "payload",
            vec!["\"kwargs\" must be an object"],
        ),
        (
            "typed task whose arguments are not an object",
            Box::new(|engine: &Engine| engine.queue_task(NotAnObject(7))),
            "payload",
            vec!["JSON object"],
        ),
        (
            "name with a NUL byte",
            Box::new(|e: &Engine| e.queue_task_named("ok\0task", &json!({}))),
            "task name",
            vec!["'\\0'", "only A-Z"],
        ),
        (
            "name with a newline",
            Box::new(|e: &Engine| e.queue_task_named("ok\ntask", &json!({}))),
            "task name",
            vec!["'\\n'", "only A-Z"],
        ),
        (
            "name with a non-ASCII letter",
            Box::new(|e: &Engine| e.queue_task_named("tâche", &json!({}))),
            "task name",
            vec!["'â'", "only A-Z"],
        ),
        (
            "name with a trailing space",
            Box::new(|e: &Engine| e.queue_task_named("ok.task ", &json!({}))),
            "task name",
            vec!["' '"],
        ),
        (
            "name of 128 two-byte characters (256 bytes)",
            Box::new(|e: &Engine| e.queue_task_named(&"é".repeat(128), &json!({}))),
            "task name",
            vec!["at most 255 bytes", "256 bytes"],
        ),
        (
            "queue of 256 bytes",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .queue("q".repeat(256))
            }),
            "queue",
            vec!["at most 255 bytes"],
        ),
        (
            "queue with an escape character",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .queue("q\u{1b}[31m")
            }),
            "queue",
            vec!["'\\u{1b}'"],
        ),
        (
            "queue with a tab",
            Box::new(|e: &Engine| e.queue_task_named("ok.task", &json!({})).queue("a\tb")),
            "queue",
            vec!["'\\t'"],
        ),
        (
            "queue of only a space",
            Box::new(|e: &Engine| e.queue_task_named("ok.task", &json!({})).queue(" ")),
            "queue",
            vec!["' '"],
        ),
        (
            "schedule_at in the year 10000",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .schedule_at("+10000-01-01T00:00:00Z".parse().unwrap())
            }),
            "schedule_at",
            vec!["9999-12-31T23:59:59Z"],
        ),
        (
            "schedule_at one millisecond past the latest time",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .schedule_at("9999-12-31T23:59:59.001Z".parse().unwrap())
            }),
            "schedule_at",
            vec!["latest supported time"],
        ),
        (
            "negative delay",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .delay(chrono::TimeDelta::seconds(-5))
            }),
            "delay",
            vec!["must not be negative"],
        ),
        (
            "delay of Duration::MAX",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .delay(Duration::MAX)
            }),
            "delay",
            vec!["9999-12-31T23:59:59Z"],
        ),
        (
            "delay reaching past the year 9999",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .delay(8_000 * 365 * 86_400u64)
            }),
            "delay",
            vec!["latest supported time"],
        ),
        (
            "zero retry delay",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .retry_delay(Duration::ZERO)
            }),
            "retry_delay",
            vec!["greater than zero"],
        ),
        (
            "max_retries one over the limit",
            Box::new(|e: &Engine| e.queue_task_named("ok.task", &json!({})).max_retries(1_001)),
            "max_retries",
            vec!["1001", "limit is 1000"],
        ),
        (
            "max_retries u32::MAX",
            Box::new(|e: &Engine| {
                e.queue_task_named("ok.task", &json!({}))
                    .max_retries(u32::MAX)
            }),
            "max_retries",
            vec!["4294967295", "limit is 1000"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_names_queues_and_times_are_refused_naming_field_and_limit() {
    watch_panics();
    let started = Instant::now();
    println!("bad input: seed {} (FQ_SEED)", seed());
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded_engine(dir.path(), Config::default()).await;
    let socket = engine.control_socket().unwrap().to_path_buf();
    let before = stored(&engine).await;
    let mut failures = Failures::default();
    let mut rows = 0;
    for (row, build, field, needles) in api_rows() {
        let outcome = expect_invalid(build(&engine).send().await, field, &needles);
        failures.note(row, outcome);
        if stored(&engine).await != before {
            failures.note(row, Err("stored data changed".into()));
        }
        rows += 1;
    }

    // A batch with one bad task in the middle queues nothing.
    let batch = vec![
        engine.queue_task_named("ok.first", &json!({})),
        engine
            .queue_task_named("ok.second", &json!({}))
            .queue("bad queue"),
        engine.queue_task_named("ok.third", &json!({})),
    ];
    failures.note(
        "batch with one bad task",
        expect_invalid(engine.queue_batch(batch).await, "queue", &["' '"]),
    );
    rows += 1;

    // A lower configured payload limit is the one enforced and named.
    let small_dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.limits.max_payload_bytes = 100;
    config.limits.max_frame_bytes = 1_000;
    let small = Engine::builder(small_dir.path().join("fq.redb"))
        .config(config)
        .control(false)
        .open()
        .unwrap();
    failures.note(
        "payload over a configured limit of 100 bytes",
        expect_invalid(
            small
                .queue_task_named("ok.task", &json!({"kwargs": {"b": "x".repeat(80)}}))
                .send()
                .await,
            "payload",
            &["limit is 100 bytes", "limits.max_payload_bytes"],
        ),
    );
    rows += 1;

    // Admin calls and worker settings.
    failures.note(
        "purge an empty queue name",
        expect_invalid(engine.purge("", None).await, "queue", &["empty"]),
    );
    failures.note(
        "purge RUNNING tasks",
        expect_invalid(
            engine.purge("default", Some(TaskStatus::Running)).await,
            "status",
            &["RUNNING"],
        ),
    );
    failures.note(
        "list a malformed queue",
        expect_invalid(
            engine
                .list(fq::ListQuery {
                    queue: Some("a b".into()),
                    ..fq::ListQuery::default()
                })
                .await,
            "queue",
            &["' '"],
        ),
    );
    failures.note(
        "retry the failed tasks of a malformed queue",
        expect_invalid(engine.retry_failed(Some("a b")).await, "queue", &["' '"]),
    );
    rows += 4;
    let worker_rows: Vec<WorkerRow> = vec![
        (
            "worker concurrency 10001",
            Box::new(|w| {
                w.set_concurrent_tasks(10_001);
            }),
            "concurrency",
            "10000",
        ),
        (
            "worker with no queues",
            Box::new(|w| {
                w.set_queues(Vec::<String>::new());
            }),
            "queues",
            "at least one queue",
        ),
        (
            "worker polling interval zero",
            Box::new(|w| {
                w.set_polling_interval(Duration::ZERO);
            }),
            "polling_interval",
            "greater than zero",
        ),
        (
            "worker heartbeat interval zero",
            Box::new(|w| {
                w.set_heartbeat_interval(Duration::ZERO);
            }),
            "heartbeat_interval",
            "greater than zero",
        ),
        (
            "worker queue name of 256 bytes",
            Box::new(|w| {
                w.set_queues(["q".repeat(256)]);
            }),
            "queues",
            "255 bytes",
        ),
    ];
    for (row, setup, field, needle) in worker_rows {
        let mut worker = engine.worker(Registry::new());
        worker.set_handle_signals(false);
        setup(&mut worker);
        let result = tokio::time::timeout(PATIENCE, worker.start())
            .await
            .expect(row);
        failures.note(row, expect_invalid(result, field, &[needle]));
        rows += 1;
    }
    for (row, addr, needles) in [
        (
            "connect to a malformed address",
            "bogus:addr",
            vec!["bogus:addr"],
        ),
        ("connect over TCP without a port", "tcp:", vec!["tcp:"]),
        (
            "connect to a socket that is not there",
            "unix:/nonexistent/fq.sock",
            vec!["/nonexistent/fq.sock"],
        ),
    ] {
        let result = tokio::time::timeout(PATIENCE, Engine::connect(addr))
            .await
            .expect(row);
        failures.note(row, expect_error_text(result.map(|_| ()), &needles));
        rows += 1;
    }
    failures.assert_none("API", seed());
    assert_eq!(stored(&engine).await, before, "stored data changed");
    still_serving(&socket).await;
    assert_no_engine_panics();
    report(
        "API (payloads, names, queues, times, admin, worker)",
        rows,
        started,
    );
}

// --- configuration files ------------------------------------------------------------------------

/// (row, file name, content, needles); every row must also name the file.
fn config_rows() -> Vec<(&'static str, &'static str, Vec<u8>, Vec<String>)> {
    let t = |text: &str| text.as_bytes().to_vec();
    let s = |needles: &[&str]| needles.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    vec![
        (
            "TOML syntax error",
            "fq.toml",
            t("[worker\nconcurrency = 4\n"),
            s(&["fq.toml:1:", "syntax error"]),
        ),
        (
            "TOML unknown top-level key",
            "fq.toml",
            t("brokr = \"database\"\n"),
            s(&["unknown key brokr", "did you mean broker"]),
        ),
        (
            "TOML string for a number",
            "fq.toml",
            t("[worker]\nconcurrency = \"ten\"\n"),
            s(&["worker.concurrency"]),
        ),
        (
            "TOML float for a number",
            "fq.toml",
            t("[worker]\nconcurrency = 2.5\n"),
            s(&["worker.concurrency"]),
        ),
        (
            "TOML table for a string",
            "fq.toml",
            t("database = { path = \"x\" }\n"),
            s(&["database"]),
        ),
        (
            "zero payload limit",
            "fq.toml",
            t("[limits]\nmax_payload_bytes = 0\n"),
            s(&["limits.max_payload_bytes", "at least 1", "got 0"]),
        ),
        (
            "negative frame limit",
            "fq.toml",
            t("[limits]\nmax_frame_bytes = -1\n"),
            s(&["limits.max_frame_bytes", "-1"]),
        ),
        (
            "frame limit not above the payload limit",
            "fq.toml",
            t("[limits]\nmax_payload_bytes = 1000\nmax_frame_bytes = 1000\n"),
            s(&[
                "limits.max_frame_bytes",
                "greater than limits.max_payload_bytes (1000)",
            ]),
        ),
        (
            "zero pending limit",
            "fq.toml",
            t("[limits]\nmax_pending = 0\n"),
            s(&["limits.max_pending", "at least 1"]),
        ),
        (
            "payload limit past u64",
            "fq.toml",
            t("[limits]\nmax_payload_bytes = 99999999999999999999\n"),
            s(&["fq.toml:2:21", "99999999999999999999"]),
        ),
        (
            "concurrency 10001",
            "fq.toml",
            t("[worker]\nconcurrency = 10001\n"),
            s(&["worker.concurrency", "at most 10000"]),
        ),
        (
            "zero polling interval",
            "fq.toml",
            t("[worker]\npolling_interval = \"0s\"\n"),
            s(&["worker.polling_interval", "greater than 0"]),
        ),
        (
            "negative shutdown timeout",
            "fq.toml",
            t("[worker]\nshutdown_timeout = \"-5s\"\n"),
            s(&["worker.shutdown_timeout"]),
        ),
        (
            "shutdown timeout over a day",
            "fq.toml",
            t("[worker]\nshutdown_timeout = \"2d\"\n"),
            s(&["worker.shutdown_timeout", "at most"]),
        ),
        (
            "duration with an unknown unit",
            "fq.toml",
            t("[defaults]\nretry_delay = \"5 parsecs\"\n"),
            s(&["defaults.retry_delay"]),
        ),
        (
            "retry delay above its cap",
            "fq.toml",
            t("[defaults]\nretry_delay = \"2h\"\nretry_max_delay = \"1h\"\n"),
            s(&["defaults.retry_max_delay", "at least defaults.retry_delay"]),
        ),
        (
            "max_retries 1001",
            "fq.toml",
            t("[defaults]\nmax_retries = 1001\n"),
            s(&["defaults.max_retries", "at most 1000"]),
        ),
        (
            "priority past i32",
            "fq.toml",
            t("[defaults]\npriority = 2147483648\n"),
            s(&["defaults.priority"]),
        ),
        (
            "zero retain days",
            "fq.toml",
            t("[cleanup]\nretain_days = 0\n"),
            s(&["cleanup.retain_days", "at least 1"]),
        ),
        (
            "cleanup interval over a year",
            "fq.toml",
            t("[cleanup]\ninterval_hours = 8761\n"),
            s(&["cleanup.interval_hours", "at most 8760"]),
        ),
        (
            "zero control connections",
            "fq.toml",
            t("[control]\nmax_connections = 0\n"),
            s(&["control.max_connections", "at least 1"]),
        ),
        (
            "listen on all interfaces without a token",
            "fq.toml",
            t("[control]\nlisten = \"0.0.0.0:7878\"\n"),
            s(&["control.listen", "loopback", "control.token"]),
        ),
        (
            "empty control token",
            "fq.toml",
            t("[control]\nlisten = \"127.0.0.1:7878\"\ntoken = \"\"\n"),
            s(&["control.token", "empty"]),
        ),
        (
            "unknown broker",
            "fq.toml",
            t("broker = \"kafka\"\n"),
            s(&["broker", "kafka"]),
        ),
        (
            "queue listed twice",
            "fq.toml",
            t("[worker]\nqueues = [\"a\", \"b\", \"a\"]\n"),
            s(&["worker.queues[2]", "more than once"]),
        ),
        (
            "bad default queue name",
            "fq.toml",
            t("[defaults]\nqueue = \"my queue\"\n"),
            s(&["defaults.queue", "' '"]),
        ),
        (
            "unset variable",
            "fq.toml",
            t("database = \"${FQ_TEST_SURELY_UNSET_VARIABLE}/fq.redb\"\n"),
            s(&["database", "FQ_TEST_SURELY_UNSET_VARIABLE", "not set"]),
        ),
        (
            "TOML nested 10,000 deep",
            "fq.toml",
            format!("x = {}{}\n", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
            s(&["syntax error", "recursion"]),
        ),
        (
            "YAML without a task section",
            "services.yaml",
            t("framework:\n  debug: true\n"),
            s(&["no `task:` section"]),
        ),
        (
            "YAML syntax error",
            "services.yaml",
            t("task:\n  worker: [unclosed\n"),
            s(&["services.yaml:", "syntax error"]),
        ),
        (
            "YAML task section is a list",
            "services.yaml",
            t("task:\n  - worker\n"),
            s(&["task", "expected a mapping"]),
        ),
        (
            "YAML wrong type",
            "services.yaml",
            t("task:\n  worker:\n    concurrency: [1, 2]\n"),
            s(&["worker.concurrency"]),
        ),
        (
            "YAML alias bomb",
            "services.yaml",
            yaml_alias_bomb(),
            s(&["syntax error", "repetition limit"]),
        ),
        (
            "YAML nested 300 deep",
            "services.yaml",
            format!(
                "task:\n  worker:\n    queues: {}{}\n",
                "[".repeat(300),
                "]".repeat(300)
            )
            .into_bytes(),
            s(&["syntax error", "recursion limit"]),
        ),
        (
            "not UTF-8",
            "fq.toml",
            b"database = \"\xff\xfe\"\n".to_vec(),
            s(&["not valid UTF-8"]),
        ),
        (
            "a config file over 1 MiB",
            "fq.toml",
            format!("# {}\n", "x".repeat(1 << 20)).into_bytes(),
            s(&["cannot read the config file"]),
        ),
        (
            "unknown extension",
            "fq.ini",
            t("[worker]\n"),
            s(&["unknown config format"]),
        ),
    ]
}

/// Twelve levels of nine aliases each: 9^12 strings once expanded.
fn yaml_alias_bomb() -> Vec<u8> {
    let mut text =
        String::from("a0: &a0 [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for level in 1..12 {
        let previous = format!("*a{}", level - 1);
        let items = vec![previous; 9].join(",");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    text.push_str("task:\n  worker:\n    queues: *a11\n");
    text.into_bytes()
}

#[test]
fn bad_configuration_files_are_refused_naming_file_key_and_limit() {
    watch_panics();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Failures::default();
    let mut rows = 0;
    for (row, name, content, needles) in config_rows() {
        let path = dir.path().join(format!("{rows}-{name}"));
        std::fs::write(&path, &content).unwrap();
        let took = Instant::now();
        let result = Engine::from_config_file(Some(&path));
        let outcome = (|| {
            ensure!(took.elapsed() < PATIENCE, "took {:?}", took.elapsed());
            let error = match result {
                Err(error @ Error::Config(_)) => chain(&error),
                Err(other) => return Err(format!("expected a config error, got {other}")),
                Ok(_) => return Err("accepted".into()),
            };
            ensure!(
                error.contains(&path.display().to_string()),
                "{error:?} should name the file"
            );
            for needle in &needles {
                ensure!(
                    error.contains(needle.as_str()),
                    "{error:?} should mention {needle:?}"
                );
            }
            Ok(())
        })();
        failures.note(row, outcome);
        rows += 1;
    }
    // A directory where the file should be, and a file that is not there.
    let conf_dir = dir.path().join("conf.toml");
    std::fs::create_dir(&conf_dir).unwrap();
    for (row, path, needle) in [
        ("a directory as the config file", conf_dir, "is a directory"),
        (
            "a config file that does not exist",
            dir.path().join("absent.toml"),
            "cannot read the config file",
        ),
    ] {
        let outcome = expect_error_text(
            Engine::from_config_file(Some(&path)).map(|_| ()),
            &[needle, &path.display().to_string()],
        );
        failures.note(row, outcome);
        rows += 1;
    }
    failures.assert_none("configuration", seed());
    // Nothing was created by any of them: no store where a bad config pointed.
    let stray: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "redb"))
        .collect();
    assert!(
        stray.is_empty(),
        "stores created from bad configs: {stray:?}"
    );
    assert_no_engine_panics();
    report("configuration files", rows, started);
}

// --- the command line ---------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `fq` binary in `dir` with `args` and a time limit.
fn fq(dir: &Path, args: &[&str]) -> Run {
    let mut child = crate::common::child::fq()
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("FQ_DATABASE")
        .env_remove("FQ_BROKER")
        .env_remove("FQ_RABBITMQ_URL")
        .env_remove("FQ_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            drop(child.kill());
            let out = child.wait_with_output().unwrap();
            panic!(
                "fq {args:?} hung for {PATIENCE:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// (row, arguments after `--db`, exit code, needles in stderr).
type CliRow = (&'static str, Vec<String>, i32, Vec<&'static str>);

fn cli_rows() -> Vec<CliRow> {
    // (An argument of 1 MiB is over the kernel's limit for one argument; small.toml sets a
    // payload limit of 1,000 bytes instead.)
    let huge_kwargs = json!({"blob": "x".repeat(2_000)}).to_string();
    let deep_kwargs = format!("{{\"a\": {}{}}}", "[".repeat(5_000), "]".repeat(5_000));
    let long_name = "n".repeat(256);
    let s = |text: &str| text.to_owned();
    let rows: Vec<(&'static str, Vec<&str>, i32, Vec<&'static str>)> = vec![
        (
            "config file missing",
            vec!["--config", "absent.toml", "stats"],
            2,
            vec!["absent.toml", "cannot read"],
        ),
        (
            "config file of an unknown format",
            vec!["--config", "fq.ini", "stats"],
            2,
            vec!["fq.ini", "unknown config format"],
        ),
        (
            "list limit one over 100000",
            vec!["list", "--limit", "100001"],
            2,
            vec!["--limit", "100000"],
        ),
        (
            "list after a malformed id",
            vec!["list", "--after", "not-a-uuid"],
            2,
            vec!["--after"],
        ),
        (
            "list a malformed queue",
            vec!["list", "--queue", "a b"],
            2,
            vec!["queue", "' '"],
        ),
        (
            "priority past i32",
            vec!["enqueue", "t", "--priority", "2147483648"],
            2,
            vec!["--priority"],
        ),
        (
            "negative max retries",
            vec!["enqueue", "t", "--max-retries", "-1"],
            2,
            vec!["'-1'"],
        ),
        (
            "max retries one over the limit",
            vec!["enqueue", "t", "--max-retries", "1001"],
            2,
            vec!["max_retries", "limit is 1000"],
        ),
        (
            "kwargs over the payload limit",
            vec![
                "--config",
                "small.toml",
                "enqueue",
                "t",
                "--kwargs",
                &huge_kwargs,
            ],
            2,
            vec!["payload", "limit is 1000 bytes"],
        ),
        (
            "kwargs nested 5,000 deep",
            vec!["enqueue", "t", "--kwargs", &deep_kwargs],
            2,
            vec!["--kwargs", "recursion limit"],
        ),
        (
            "args not closed",
            vec!["enqueue", "t", "--args", "[1, 2"],
            2,
            vec!["--args", "not valid JSON"],
        ),
        (
            "empty task name",
            vec!["enqueue", ""],
            2,
            vec!["task name", "empty"],
        ),
        (
            "task name of 256 bytes",
            vec!["enqueue", &long_name],
            2,
            vec!["task name", "255 bytes"],
        ),
        (
            "a time past the latest supported",
            vec!["enqueue", "t", "--at", "9999-12-31T23:59:59.500Z"],
            2,
            vec!["schedule_at", "9999-12-31T23:59:59Z"],
        ),
        (
            "a time in the year 10000",
            vec!["enqueue", "t", "--at", "10000-01-01T00:00:00Z"],
            2,
            vec!["--at", "RFC 3339"],
        ),
        (
            "a delay that overflows",
            vec!["enqueue", "t", "--delay", "99999999999999999999d"],
            2,
            vec!["--delay"],
        ),
        (
            "a delay past the year 9999",
            vec!["enqueue", "t", "--delay", "3000000d"],
            2,
            vec!["delay", "9999-12-31T23:59:59Z"],
        ),
        (
            "worker concurrency 10001",
            vec!["worker", "start", "--concurrent", "10001"],
            2,
            vec!["--concurrent", "10000"],
        ),
        (
            "worker with an empty queue name",
            vec!["worker", "start", "--queues", ""],
            2,
            vec!["--queues", "must not be empty"],
        ),
        (
            "worker with a malformed queue",
            vec!["worker", "start", "--queues", "a,b c"],
            2,
            vec!["--queues", "' '"],
        ),
        (
            "worker shutdown timeout over a day",
            vec!["worker", "start", "--shutdown-timeout", "2d"],
            2,
            vec!["--shutdown-timeout", "at most 1d"],
        ),
        (
            "worker interval over a day",
            vec!["worker", "start", "--interval", "25h"],
            2,
            vec!["--interval", "at most 1d"],
        ),
        (
            "worker interval zero",
            vec!["worker", "start", "--interval", "0"],
            2,
            vec!["--interval", "greater than zero"],
        ),
        (
            "serve on all interfaces without a token",
            vec!["serve", "--listen", "0.0.0.0:0"],
            2,
            vec!["0.0.0.0", "token"],
        ),
        (
            "serve on a malformed address",
            vec!["serve", "--listen", "here"],
            2,
            vec!["--listen"],
        ),
        (
            "connect to a malformed address",
            vec!["--connect", "bogus:addr", "stats"],
            1,
            vec!["bogus:addr", "no control socket"],
        ),
        (
            "connect over TCP without a port",
            vec!["--connect", "tcp:", "stats"],
            1,
            vec!["invalid connect", "tcp:HOST:PORT"],
        ),
        (
            "purge an empty queue name",
            vec!["purge", "--queue", "", "--yes"],
            2,
            vec!["queue", "empty"],
        ),
        (
            "retry failed of a malformed queue",
            vec!["retry", "--failed", "--queue", "a b"],
            2,
            vec!["queue", "' '"],
        ),
        (
            "bench with zero tasks",
            vec!["bench", "--tasks", "0"],
            2,
            vec!["--tasks"],
        ),
    ];
    rows.into_iter()
        .map(|(row, args, code, needles)| (row, args.into_iter().map(s).collect(), code, needles))
        .collect()
}

#[test]
fn bad_command_line_arguments_are_refused_naming_flag_and_limit() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let db = home.join("var").join("fq.redb");
    let db = db.to_str().unwrap();
    // A store with one task in it, to check that nothing changes.
    let first = fq(home, &["--db", db, "enqueue", "seed.task", "--json"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    let snapshot = || {
        let run = fq(home, &["--db", db, "list", "--json", "--limit", "1000"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        run.stdout
    };
    let before = snapshot();
    std::fs::write(home.join("words.txt"), "not a store\n".repeat(100)).unwrap();
    std::fs::create_dir(home.join("a-directory")).unwrap();
    std::fs::write(home.join("fq.ini"), "[worker]\n").unwrap();
    std::fs::write(
        home.join("small.toml"),
        "[limits]\nmax_payload_bytes = 1000\nmax_frame_bytes = 4000\n",
    )
    .unwrap();
    let words = home.join("words.txt");
    let words = words.to_str().unwrap();
    let directory = home.join("a-directory");
    let directory = directory.to_str().unwrap();

    let mut failures = Failures::default();
    let mut count = 0;
    for (row, args, code, needles) in cli_rows() {
        // Every row names the store, except those that name an engine to connect to.
        let mut all = if args[0] == "--connect" {
            vec![]
        } else {
            vec!["--db", db]
        };
        all.extend(args.iter().map(String::as_str));
        let run = fq(home, &all);
        let outcome = (|| {
            ensure!(
                run.code == Some(code),
                "exit {:?}, expected {code}: {run:#?}",
                run.code
            );
            ensure!(run.stdout.is_empty(), "printed on stdout: {run:#?}");
            ensure!(!run.stderr.contains("panicked"), "panicked: {run:#?}");
            for needle in &needles {
                ensure!(
                    run.stderr.contains(needle),
                    "stderr should mention {needle:?}: {run:#?}"
                );
            }
            Ok(())
        })();
        failures.note(row, outcome);
        count += 1;
    }
    // Stores that are not stores: refused as runtime failures naming the file, never created
    // over or changed.
    for (row, path, needles) in [
        (
            "a text file as the store",
            words,
            vec!["words.txt", "not an fq store"],
        ),
        (
            "a directory as the store",
            directory,
            vec!["a-directory", "directory"],
        ),
    ] {
        let before = std::fs::read(path).ok();
        let run = fq(home, &["--db", path, "stats"]);
        let outcome = (|| {
            ensure!(run.code == Some(1), "exit {:?}: {run:#?}", run.code);
            for needle in &needles {
                ensure!(
                    run.stderr.contains(needle),
                    "stderr should mention {needle:?}: {run:#?}"
                );
            }
            ensure!(std::fs::read(path).ok() == before, "the file changed");
            Ok(())
        })();
        failures.note(row, outcome);
        count += 1;
    }
    failures.assert_none("command line", seed());
    assert_eq!(snapshot(), before, "the store changed");
    report("command-line arguments", count, started);
}

// --- control-socket frames ----------------------------------------------------------------------

/// A raw control connection.
struct Raw {
    stream: UnixStream,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        Raw {
            stream: UnixStream::connect(path).await.expect("connect"),
        }
    }

    async fn ready(path: &Path) -> Raw {
        let mut raw = Raw::connect(path).await;
        raw.send(&json!({"hello": {"protocol": 1, "client": "bad input table"}}))
            .await;
        let hello = raw.recv().await.expect("a hello");
        assert!(hello.get("hello").is_some(), "{hello}");
        raw
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        // The server may close as soon as it has seen enough: a failed write is fine.
        drop(self.stream.write_all(bytes).await);
    }

    async fn send_frame(&mut self, body: &[u8]) {
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.send_bytes(&frame).await;
    }

    async fn send(&mut self, value: &Value) {
        self.send_frame(&serde_json::to_vec(value).unwrap()).await;
    }

    /// The next frame as JSON; `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Value> {
        tokio::time::timeout(PATIENCE, async {
            let mut header = [0u8; 4];
            self.stream.read_exact(&mut header).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(serde_json::from_slice(&body).expect("server frames are JSON"))
        })
        .await
        .expect("the server answers in time")
    }
}

/// A fresh connection gets a valid request answered.
async fn still_serving(socket: &Path) {
    let mut raw = Raw::ready(socket).await;
    raw.send(&json!({"id": 1, "op": "stats"})).await;
    let answer = raw.recv().await.expect("stats answered");
    assert!(answer["ok"]["queues"].is_object(), "{answer}");
}

/// What a row sends, and how the server must answer.
enum Send {
    /// Raw bytes on a fresh connection, before any hello.
    BeforeHello(Vec<u8>),
    /// Raw bytes after a good handshake.
    AfterHello(Vec<u8>),
    /// A request after a good handshake, whose arguments are bad: answered with an error,
    /// the connection stays open.
    Request(Value),
}

/// The connection-level error kind, or `invalid_input` with its field.
enum Expect {
    Refusal(&'static str),
    Invalid(&'static str),
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn hello_frame() -> Vec<u8> {
    frame(br#"{"hello": {"protocol": 1, "client": "t"}}"#)
}

fn enqueue(task: &Value) -> Value {
    json!({"id": 7, "op": "enqueue", "args": {"tasks": [task]}})
}

/// (row, what to send, expected answer, needles in the message).
fn socket_rows(rng: &mut fastrand::Rng) -> Vec<(&'static str, Send, Expect, Vec<String>)> {
    use Expect::{Invalid, Refusal};
    use Send::{AfterHello, BeforeHello, Request};
    let s = |needles: &[&str]| needles.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    // Garbage that cannot start a JSON value: a first byte such as `6` or `"` would begin one
    // and make the frame a type error (`bad_request`, its own rows below), not `bad_frame`;
    // that happened for about one seed in twenty.
    let garbage: Vec<u8> = std::iter::once(rng.u8(0x80..))
        .chain((1..64).map(|_| rng.u8(..)))
        .collect();
    let deep = format!(
        r#"{{"id": 1, "op": "enqueue", "args": {{"tasks": [{{"name": "t", "payload": {{"kwargs": {{"x": {}{}}}}}}}]}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_envelope = format!(
        r#"{{"id": 1, "op": "stats", "junk": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let taken = uuid_v7_like();
    vec![
        (
            "zero length after the hello",
            AfterHello(vec![0, 0, 0, 0]),
            Refusal("bad_frame"),
            s(&["zero"]),
        ),
        (
            "a length one over the frame limit",
            AfterHello((MAX_FRAME as u32 + 1).to_be_bytes().to_vec()),
            Refusal("frame_too_large"),
            s(&["2097153", "2097152", "limits.max_frame_bytes"]),
        ),
        (
            "a header cut after two bytes",
            AfterHello(vec![0, 0]),
            Refusal("bad_frame"),
            s(&["truncated", "2 of 4"]),
        ),
        (
            "a body that is not UTF-8",
            AfterHello(frame(&[0xff, 0xfe, 0xfd])),
            Refusal("bad_frame"),
            s(&["not valid JSON"]),
        ),
        (
            "random garbage after the hello",
            AfterHello(frame(&garbage)),
            Refusal("bad_frame"),
            s(&["not valid JSON"]),
        ),
        (
            "a JSON string as the request",
            AfterHello(frame(br#""stats""#)),
            Refusal("bad_request"),
            s(&["not a request"]),
        ),
        (
            "an unknown envelope key",
            AfterHello(frame(br#"{"id": 1, "op": "stats", "verb": "GET"}"#)),
            Refusal("bad_request"),
            s(&["verb"]),
        ),
        (
            "a negative request id",
            AfterHello(frame(br#"{"id": -1, "op": "stats"}"#)),
            Refusal("bad_request"),
            s(&["not a request"]),
        ),
        (
            "a fractional request id",
            AfterHello(frame(br#"{"id": 1.5, "op": "stats"}"#)),
            Refusal("bad_request"),
            s(&["not a request"]),
        ),
        (
            "a second hello",
            AfterHello(hello_frame()),
            Refusal("bad_request"),
            s(&["hello"]),
        ),
        (
            "an envelope nested 100,000 deep",
            AfterHello(frame(deep_envelope.as_bytes())),
            Refusal("bad_request"),
            s(&["junk"]),
        ),
        (
            "protocol as a string",
            BeforeHello(frame(br#"{"hello": {"protocol": "1"}}"#)),
            Refusal("hello_required"),
            s(&["protocol"]),
        ),
        (
            "protocol 0",
            BeforeHello(frame(br#"{"hello": {"protocol": 0}}"#)),
            Refusal("unsupported_protocol"),
            s(&["protocol 0", "speaks control protocol 1"]),
        ),
        (
            "protocol past u32",
            BeforeHello(frame(br#"{"hello": {"protocol": 4294967296}}"#)),
            Refusal("hello_required"),
            s(&["4294967296"]),
        ),
        (
            "a hello without a protocol",
            BeforeHello(frame(br#"{"hello": {"client": "x"}}"#)),
            Refusal("hello_required"),
            s(&["protocol"]),
        ),
        (
            "a zero length before the hello",
            BeforeHello(vec![0, 0, 0, 0]),
            Refusal("bad_frame"),
            s(&["zero"]),
        ),
        (
            "a first frame over the limit",
            BeforeHello((MAX_FRAME as u32 + 1).to_be_bytes().to_vec()),
            Refusal("frame_too_large"),
            s(&["2097152"]),
        ),
        (
            "args nested 100,000 deep",
            AfterHello(frame(deep.as_bytes())),
            Expect::Invalid("tasks"),
            s(&["recursion limit"]),
        ),
        (
            "args as an array",
            Request(json!({"id": 1, "op": "stats", "args": [1]})),
            Invalid("args"),
            s(&["stats arguments"]),
        ),
        (
            "an unknown argument",
            Request(json!({"id": 1, "op": "claim", "args": {"queues": ["q"], "priority": 1}})),
            Invalid("priority"),
            s(&["unknown field `priority`"]),
        ),
        (
            "an unknown argument to stats",
            Request(json!({"id": 1, "op": "stats", "args": {"verbose": true}})),
            Invalid("verbose"),
            s(&["unknown field `verbose`"]),
        ),
        (
            "priority past i32",
            Request(enqueue(&json!({"name": "t", "priority": 2_147_483_648u64}))),
            Invalid("tasks"),
            s(&["priority", "2147483648"]),
        ),
        (
            "max_retries 1001",
            Request(enqueue(&json!({"name": "t", "max_retries": 1001}))),
            Invalid("max_retries"),
            s(&["limit is 1000"]),
        ),
        (
            "timeout_ms 0",
            Request(enqueue(&json!({"name": "t", "timeout_ms": 0}))),
            Invalid("timeout"),
            s(&["greater than zero"]),
        ),
        (
            "timeout_ms over 365 days",
            Request(enqueue(
                &json!({"name": "t", "timeout_ms": 31_622_400_000u64}),
            )),
            Invalid("timeout_ms"),
            s(&["365 days"]),
        ),
        (
            "retry_delay_ms 0",
            Request(enqueue(&json!({"name": "t", "retry_delay_ms": 0}))),
            Invalid("retry_delay"),
            s(&["greater than zero"]),
        ),
        (
            "delay_ms u64::MAX",
            Request(enqueue(&json!({"name": "t", "delay_ms": u64::MAX}))),
            Invalid("delay"),
            s(&["9999-12-31T23:59:59Z"]),
        ),
        (
            "run_at_ms past the year 9999",
            Request(enqueue(&json!({"name": "t", "run_at_ms": i64::MAX}))),
            Invalid("schedule_at"),
            s(&["9999-12-31T23:59:59Z"]),
        ),
        (
            "run_at_ms not an integer",
            Request(enqueue(&json!({"name": "t", "run_at_ms": "tomorrow"}))),
            Invalid("tasks"),
            s(&["run_at_ms", "invalid type"]),
        ),
        (
            "a malformed task id",
            Request(enqueue(&json!({"name": "t", "id": "not-a-uuid"}))),
            Invalid("tasks"),
            s(&["id"]),
        ),
        (
            "a task id already in use",
            Request(enqueue(&json!({"name": "t", "id": taken}))),
            Invalid("id"),
            s(&["already in use"]),
        ),
        (
            "one request repeating a task id of its own",
            Request(json!({"id": 7, "op": "enqueue", "args": {"tasks": [
                {"name": "t", "id": "0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a70"},
                {"name": "t", "id": "0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a70"},
            ]}})),
            Invalid("id"),
            s(&["already in use"]),
        ),
        (
            "a payload over 1 MiB",
            Request(enqueue(
                &json!({"name": "t", "payload": {"kwargs": {"b": "x".repeat(MAX_PAYLOAD)}}}),
            )),
            Invalid("payload"),
            s(&["limit is 1048576"]),
        ),
        (
            "a payload that is a string",
            Request(enqueue(&json!({"name": "t", "payload": "x"}))),
            Invalid("payload"),
            s(&["got a string"]),
        ),
        (
            "a name with a control character",
            Request(enqueue(&json!({"name": "t\u{7}"}))),
            Invalid("task name"),
            s(&["'\\u{7}'"]),
        ),
        (
            "a queue of 256 bytes",
            Request(enqueue(&json!({"name": "t", "queue": "q".repeat(256)}))),
            Invalid("queue"),
            s(&["255 bytes"]),
        ),
        (
            "claim from no queue",
            Request(json!({"id": 1, "op": "claim", "args": {"queues": []}})),
            Invalid("queues"),
            s(&["at least one queue"]),
        ),
        (
            "claim from a queue of 256 bytes",
            Request(json!({"id": 1, "op": "claim", "args": {"queues": ["q".repeat(256)]}})),
            Invalid("queues"),
            s(&["255 bytes"]),
        ),
        (
            "claim a negative number",
            Request(json!({"id": 1, "op": "claim", "args": {"queues": ["q"], "max": -1}})),
            Invalid("max"),
            s(&["invalid value"]),
        ),
        (
            "settle with an unknown outcome",
            Request(
                json!({"id": 1, "op": "settle", "args": {"id": taken, "attempt": 1, "outcome": "done"}}),
            ),
            Invalid("outcome"),
            s(&["\"done\""]),
        ),
        (
            "settle failed without an error",
            Request(
                json!({"id": 1, "op": "settle", "args": {"id": taken, "attempt": 1, "outcome": "failed"}}),
            ),
            Invalid("error"),
            s(&["needs an error"]),
        ),
        (
            "settle with an unknown failure kind",
            Request(
                json!({"id": 1, "op": "settle", "args": {"id": taken, "attempt": 1, "outcome": "failed", "error": {"message": "m", "kind": "meltdown"}}}),
            ),
            Invalid("error"),
            s(&["meltdown"]),
        ),
        (
            "settle retry_after_ms over 365 days",
            Request(
                json!({"id": 1, "op": "settle", "args": {"id": taken, "attempt": 1, "outcome": "failed", "error": {"message": "m", "kind": "error"}, "retry_after_ms": u64::MAX}}),
            ),
            Invalid("retry_after_ms"),
            s(&["365 days"]),
        ),
        (
            "heartbeat a negative attempt",
            Request(json!({"id": 1, "op": "heartbeat", "args": {"id": taken, "attempt": -1}})),
            Invalid("attempt"),
            s(&["invalid value"]),
        ),
        (
            "task with a malformed id",
            Request(json!({"id": 1, "op": "task", "args": {"id": 12}})),
            Invalid("id"),
            s(&["invalid type"]),
        ),
        (
            "list an unknown status",
            Request(json!({"id": 1, "op": "list", "args": {"status": "DONE"}})),
            Invalid("status"),
            s(&["DONE"]),
        ),
        (
            "list a malformed queue",
            Request(json!({"id": 1, "op": "list", "args": {"queue": "a b"}})),
            Invalid("queue"),
            s(&["' '"]),
        ),
        (
            "purge RUNNING tasks",
            Request(
                json!({"id": 1, "op": "purge", "args": {"queue": "default", "status": "RUNNING"}}),
            ),
            Invalid("status"),
            s(&["RUNNING"]),
        ),
        (
            "cleanup with a negative retention",
            Request(json!({"id": 1, "op": "cleanup", "args": {"completed_retention_ms": -1}})),
            Invalid("completed_retention_ms"),
            s(&["invalid value"]),
        ),
        (
            "abort without a request",
            Request(json!({"id": 1, "op": "abort", "args": {}})),
            Invalid("args"),
            s(&["request"]),
        ),
    ]
}

/// A fixed id used by the seeded task with an explicit id.
fn uuid_v7_like() -> String {
    "0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a69".to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_socket_frames_are_refused_and_the_server_answers_the_next_request() {
    watch_panics();
    let started = Instant::now();
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded_engine(dir.path(), Config::default()).await;
    let socket = engine.control_socket().unwrap().to_path_buf();
    // A task whose id the rows below reuse.
    let mut raw = Raw::ready(&socket).await;
    raw.send(&enqueue(
        &json!({"name": "seed.with_id", "id": uuid_v7_like()}),
    ))
    .await;
    let answer = raw.recv().await.unwrap();
    assert!(answer["ok"]["ids"].is_array(), "{answer}");
    let before = stored(&engine).await;

    // A client that says nothing is dropped after the handshake timeout; it runs alongside.
    let silent_socket = socket.clone();
    let silent = tokio::spawn(async move {
        let mut raw = Raw::connect(&silent_socket).await;
        let started = Instant::now();
        let frame = raw.recv().await;
        (frame, started.elapsed())
    });

    let mut failures = Failures::default();
    let mut rows = 0;
    let mut prefix_refusals = Vec::new();
    for (row, send, expect, needles) in socket_rows(&mut rng) {
        let took = Instant::now();
        let mut raw = match &send {
            Send::BeforeHello(bytes) => {
                let mut raw = Raw::connect(&socket).await;
                raw.send_bytes(bytes).await;
                raw
            }
            Send::AfterHello(bytes) => {
                let mut raw = Raw::ready(&socket).await;
                raw.send_bytes(bytes).await;
                if bytes.len() < 4 {
                    // A cut header: the client stops writing.
                    raw.stream.shutdown().await.unwrap();
                }
                raw
            }
            Send::Request(request) => {
                let mut raw = Raw::ready(&socket).await;
                raw.send(request).await;
                raw
            }
        };
        let outcome = async {
            let Some(answer) = raw.recv().await else {
                return Err("no answer".to_owned());
            };
            let error = &answer["error"];
            let message = error["message"].as_str().unwrap_or_default();
            match expect {
                Expect::Refusal(kind) => {
                    ensure!(error["kind"] == kind, "expected {kind}: {answer}");
                    ensure!(raw.recv().await.is_none(), "the connection stays open");
                }
                Expect::Invalid(field) => {
                    ensure!(
                        error["kind"] == "invalid_input",
                        "expected invalid_input: {answer}"
                    );
                    ensure!(error["field"] == field, "expected field {field}: {answer}");
                    // The connection stays usable.
                    raw.send(&json!({"id": 99, "op": "stats"})).await;
                    let next = raw.recv().await;
                    ensure!(
                        next.as_ref()
                            .is_some_and(|n| n["id"] == 99 && n["ok"].is_object()),
                        "not answered on the same connection afterwards: {next:?}"
                    );
                }
            }
            for needle in &needles {
                ensure!(
                    message.contains(needle.as_str()),
                    "{message:?} should mention {needle:?}"
                );
            }
            // Refused on the prefix alone: the refusal came back with no body sent (the
            // answer above; a server waiting for the body would have sent none). How soon is
            // a figure, printed below, not asserted (machine load moves it).
            if row.contains("over the limit") || row.contains("over the frame limit") {
                prefix_refusals.push(took.elapsed());
            }
            Ok(())
        }
        .await;
        failures.note(row, outcome);
        still_serving(&socket).await;
        if stored(&engine).await != before {
            failures.note(row, Err("stored data changed".into()));
        }
        rows += 1;
    }
    failures.assert_none("control socket", seed);
    println!(
        "bad input: {} oversized length prefixes refused with no body sent, slowest answer \
         {:?} (printed, not asserted)",
        prefix_refusals.len(),
        prefix_refusals.iter().max().copied().unwrap_or_default()
    );

    // A slow client trickling a valid hello and request a byte at a time is answered, and a
    // client arriving meanwhile is not held up by it: the trickle stops halfway through its
    // hello until the other client has been answered.
    let trickle_socket = socket.clone();
    let (served, resume) = tokio::sync::oneshot::channel::<()>();
    let trickle = tokio::spawn(async move {
        let mut raw = Raw::connect(&trickle_socket).await;
        let mut bytes = hello_frame();
        let halfway = bytes.len() / 2;
        bytes.extend(frame(br#"{"id": 5, "op": "stats"}"#));
        let mut resume = Some(resume);
        for (index, byte) in bytes.into_iter().enumerate() {
            if index == halfway {
                resume
                    .take()
                    .unwrap()
                    .await
                    .expect("the other client was answered");
            }
            raw.send_bytes(&[byte]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hello = raw.recv().await.expect("hello");
        let answer = raw.recv().await.expect("answer");
        (hello, answer)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let meanwhile = Instant::now();
    // Answered while the slow client is stopped halfway through its hello (or never).
    still_serving(&socket).await;
    let quick = meanwhile.elapsed();
    served.send(()).unwrap();
    let (hello, answer) = trickle.await.unwrap();
    assert!(hello["hello"].is_object(), "{hello}");
    assert_eq!(answer["id"], 5, "{answer}");
    println!(
        "bad input: a client arriving while another trickled half a hello was answered in \
         {quick:?} (printed, not asserted)"
    );
    rows += 1;

    let (frame, waited) = silent.await.unwrap();
    let frame = frame.expect("a refusal");
    assert_eq!(frame["error"]["kind"], "handshake_timeout", "{frame}");
    assert!(
        frame["error"]["message"].as_str().unwrap().contains("10 s"),
        "{frame}"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    rows += 1;

    still_serving(&socket).await;
    assert_eq!(stored(&engine).await, before, "stored data changed");
    assert_no_engine_panics();
    report("control-socket frames and arguments", rows, started);
}

/// The table is at least the issue's 60 rows (counted without running them).
#[test]
fn the_table_has_at_least_60_rows() {
    let mut rng = fastrand::Rng::with_seed(1);
    let api = api_rows().len() + 1 + 1 + 4 + 5 + 3;
    let config = config_rows().len() + 2;
    let cli = cli_rows().len() + 2;
    let socket = socket_rows(&mut rng).len() + 2;
    let total = api + config + cli + socket;
    println!(
        "bad input: table of {total} rows: {api} API, {config} config, {cli} CLI, {socket} socket"
    );
    assert!(total >= 60, "{total}");
    let _ = std::io::stdout().flush();
}

// --- regressions: bad input these tables found accepted -----------------------------------------

/// `Engine::list` and `Engine::retry_failed` took a malformed queue name for a queue with no
/// tasks (an empty page, zero retried), where the control socket refuses it and `purge`
/// refuses it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_list_and_retry_failed_took_a_malformed_queue_for_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded_engine(dir.path(), Config::default()).await;
    let query = fq::ListQuery {
        queue: Some("no/such-queue".into()),
        ..fq::ListQuery::default()
    };
    let outcome = expect_invalid(engine.list(query).await, "queue", &["'/'"]);
    assert_eq!(outcome, Ok(()));
    let outcome = expect_invalid(engine.retry_failed(Some("")).await, "queue", &["empty"]);
    assert_eq!(outcome, Ok(()));
    // Well-formed names still work, known or not.
    let query = fq::ListQuery {
        queue: Some("unknown-but-fine".into()),
        ..fq::ListQuery::default()
    };
    assert!(engine.list(query).await.unwrap().is_empty());
    assert_eq!(engine.retry_failed(Some("default")).await.unwrap(), 0);
}

/// `stats` over the socket ignored unknown argument keys, where docs/protocol.md says unknown
/// argument keys are errors (and every other op refuses them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_socket_stats_ignored_unknown_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let engine = seeded_engine(dir.path(), Config::default()).await;
    let socket = engine.control_socket().unwrap().to_path_buf();
    let mut raw = Raw::ready(&socket).await;
    raw.send(&json!({"id": 1, "op": "stats", "args": {"queue": "default"}}))
        .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["error"]["kind"], "invalid_input", "{answer}");
    assert_eq!(answer["error"]["field"], "queue", "{answer}");
    // With no arguments, or empty ones, it answers as before.
    raw.send(&json!({"id": 2, "op": "stats", "args": {}})).await;
    assert!(raw.recv().await.unwrap()["ok"]["queues"].is_object());
    raw.send(&json!({"id": 3, "op": "stats"})).await;
    assert!(raw.recv().await.unwrap()["ok"]["queues"].is_object());
    // The Rust client's stats still work.
    let remote = Engine::connect(&format!("unix:{}", socket.display()))
        .await
        .unwrap();
    assert_eq!(remote.stats().await.unwrap().total(), 6);
}

/// `fq worker start --shutdown-timeout 2d` (and `--interval 2d`) started a worker, where the
/// same values in the configuration are refused (`worker.shutdown_timeout` and
/// `worker.polling_interval` are at most one day).
#[test]
fn regression_worker_start_accepted_waits_over_a_day() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--shutdown-timeout", "--interval"] {
        let run = fq(
            dir.path(),
            &["--db", "fq.redb", "worker", "start", flag, "2d"],
        );
        assert_eq!(run.code, Some(2), "{flag}: {run:#?}");
        assert!(
            run.stderr.contains(flag) && run.stderr.contains("at most 1d"),
            "{run:#?}"
        );
        assert!(
            !dir.path().join("fq.redb").exists(),
            "{flag}: a store was created"
        );
    }
    // One day is fine: parsed, the worker would start (checked without starting it here).
    let run = fq(
        dir.path(),
        &["worker", "start", "--shutdown-timeout", "1d", "--help"],
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
}

/// `fq worker start --queues "a b"` opened (and created) the store, served its socket and
/// printed "worker started" before refusing the queue name; it is now a usage error before
/// anything is opened.
#[test]
fn regression_worker_start_announced_itself_then_refused_a_malformed_queue() {
    let dir = tempfile::tempdir().unwrap();
    let run = fq(
        dir.path(),
        &["--db", "fq.redb", "worker", "start", "--queues", "ok,a b"],
    );
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stdout.is_empty(), "it announced itself: {run:#?}");
    assert!(
        run.stderr.contains("--queues") && run.stderr.contains("' '"),
        "{run:#?}"
    );
    assert!(!dir.path().join("fq.redb").exists(), "a store was created");
}

/// A YAML configuration of deeply nested brackets was refused ("recursion limit exceeded"),
/// but only after a parse whose time grows with the square of the depth: 40,000 levels took
/// 9 s in a debug build, and a 1 MiB file (the largest config file read) minutes.
#[test]
fn regression_a_deeply_nested_yaml_config_took_minutes_to_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.yaml");
    let depth = 500_000;
    let text = format!(
        "task:\n  worker:\n    queues: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(text.len() <= 1 << 20);
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    let error = Engine::from_config_file(Some(&path))
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(error.contains("services.yaml:3:"), "{error}");
    assert!(error.contains("recursion limit exceeded"), "{error}");
    // The bug took minutes; a linear parse takes a fraction of a second. The bound is the
    // file's patience, so that a busy machine cannot fail it; the time is printed.
    println!("bad input: {depth} nested brackets refused in {took:?}");
    assert!(took < PATIENCE, "took {took:?}");
    // Braces too; brackets inside quotes and comments are not nesting.
    let text = format!(
        "task:\n  worker:\n    queues: {}a{}\n",
        "{a: ".repeat(200),
        "}".repeat(200)
    );
    let error = fq::Config::from_yaml_str(&text, Path::new("x.yaml")).unwrap_err();
    assert!(
        error.to_string().contains("recursion limit exceeded"),
        "{error}"
    );
    let quoted = format!(
        "# {}\ntask:\n  database: \"var/{}.redb\"\n  worker:\n    queues: ['a{}']\n",
        "[".repeat(300),
        "[".repeat(300),
        "{".repeat(300)
    );
    let error = fq::Config::from_yaml_str(&quoted, Path::new("x.yaml")).unwrap_err();
    assert!(
        error.to_string().contains("worker.queues[0]"),
        "only the queue name is wrong: {error}"
    );
}
