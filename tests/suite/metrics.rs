//! Prometheus metrics (`Engine::metrics`, `fq::metrics::render`, README "Metrics"): the
//! rendered exposition is parsed line by line and its samples are checked against what the
//! tests made happen: counters per queue and task name, histogram counts, depth gauges against
//! `Engine::stats`, engines kept apart, the control-socket op, and metrics turned off.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fq::testing::TestEngine;
use fq::{Config, Engine, Error, MetricsError, Registry, TaskContext, TaskError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Samples by metric name and sorted `label="value"` pairs.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses the text exposition: every sample line `name{k="v",...} value`; comment lines
/// (`# TYPE`, `# HELP`, `# EOF`) are skipped, but each sample's metric must have been
/// declared by a `# TYPE` line before it.
fn parse(text: &str) -> Samples {
    assert!(text.ends_with("# EOF\n"), "the exposition ends with # EOF");
    let mut declared = Vec::<String>::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().expect("a metric name").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().expect("a numeric value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels: Vec<(String, String)> = body
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                labels.sort();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), Vec::new()),
        };
        assert!(
            declared
                .iter()
                .any(|family| name.starts_with(family.as_str())),
            "{name} has no # TYPE line"
        );
        assert!(
            samples.insert((name.clone(), labels), value).is_none(),
            "{line} appears twice"
        );
    }
    samples
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<_> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

/// The value of `name{pairs}`, 0 when the series is absent (as Prometheus reads a counter
/// that was never incremented).
fn value(samples: &Samples, name: &str, pairs: &[(&str, &str)]) -> f64 {
    samples
        .get(&(name.to_owned(), labels(pairs)))
        .copied()
        .unwrap_or(0.0)
}

/// Every series of `name`, with its labels.
fn series<'a>(
    samples: &'a Samples,
    name: &'a str,
) -> impl Iterator<Item = (&'a Vec<(String, String)>, f64)> + 'a {
    samples
        .iter()
        .filter(move |((n, _), _)| n == name)
        .map(|((_, labels), value)| (labels, *value))
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_fn("m.ok", |_: serde_json::Value| -> Result<(), TaskError> {
        Ok(())
    });
    registry.register_async(
        "m.flaky",
        |_: serde_json::Value, ctx: TaskContext| async move {
            if ctx.attempt() < 2 {
                return Err(TaskError::new("first attempt fails"));
            }
            Ok(json!({}))
        },
    );
    registry.register_fn(
        "m.broken",
        |_: serde_json::Value| -> Result<(), TaskError> {
            Err(TaskError::permanent("never works"))
        },
    );
    registry
}

/// A mix of outcomes on the test engine's manual clock: two `m.ok` tasks complete in queue
/// `default` (queued 2 s before they start), a third is cancelled; `m.flaky` fails once
/// (retried) and then completes in queue `emails`; `m.broken` fails for good.
#[tokio::test]
async fn counters_and_histograms_count_each_outcome_by_queue_and_name() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    for _ in 0..2 {
        test.queue_task_named("m.ok", &json!({})).send().await?;
    }
    let cancelled = test
        .queue_task_named("m.ok", &json!({}))
        .delay(Duration::from_secs(3600))
        .send()
        .await?;
    test.cancel(cancelled).await?;
    test.queue_task_named("m.flaky", &json!({}))
        .queue("emails")
        .max_retries(3)
        .send()
        .await?;
    test.queue_task_named("m.broken", &json!({})).send().await?;
    test.clock().advance(Duration::from_secs(2));
    let first = test.drain().await?;
    assert_eq!((first.completed, first.retried, first.failed), (2, 1, 1));
    // The retry is due within 6 s (5 s ± 20%).
    test.clock().advance(Duration::from_secs(7));
    assert_eq!(test.drain().await?.completed, 1);

    let text = fq::metrics::render(&test).await?;
    let samples = parse(&text);
    let ok = [("queue", "default"), ("name", "m.ok")];
    let flaky = [("queue", "emails"), ("name", "m.flaky")];
    let broken = [("queue", "default"), ("name", "m.broken")];
    assert_eq!(value(&samples, "fq_tasks_queued_total", &ok), 3.0);
    assert_eq!(value(&samples, "fq_tasks_started_total", &ok), 2.0);
    assert_eq!(value(&samples, "fq_tasks_completed_total", &ok), 2.0);
    assert_eq!(value(&samples, "fq_tasks_cancelled_total", &ok), 1.0);
    assert_eq!(value(&samples, "fq_tasks_queued_total", &flaky), 1.0);
    assert_eq!(value(&samples, "fq_tasks_started_total", &flaky), 2.0);
    assert_eq!(value(&samples, "fq_tasks_retried_total", &flaky), 1.0);
    assert_eq!(value(&samples, "fq_tasks_completed_total", &flaky), 1.0);
    assert_eq!(value(&samples, "fq_tasks_failed_total", &flaky), 0.0);
    assert_eq!(value(&samples, "fq_tasks_started_total", &broken), 1.0);
    assert_eq!(value(&samples, "fq_tasks_failed_total", &broken), 1.0);
    assert_eq!(value(&samples, "fq_tasks_retried_total", &broken), 0.0);
    // Every (queue, name) seen has each counter, from 0 (so `rate()` sees the first
    // increase); the non-zero ones are exactly these label sets.
    let nonzero = |name: &'static str| -> Vec<_> {
        series(&samples, name)
            .filter(|(_, value)| *value != 0.0)
            .collect()
    };
    assert_eq!(
        nonzero("fq_tasks_failed_total"),
        vec![(&labels(&broken), 1.0)]
    );
    assert_eq!(
        nonzero("fq_tasks_cancelled_total"),
        vec![(&labels(&ok), 1.0)]
    );
    assert_eq!(series(&samples, "fq_tasks_failed_total").count(), 3);

    // Run time by name: one observation per attempt that ran.
    let run = "fq_task_run_seconds_count";
    assert_eq!(value(&samples, run, &[("name", "m.ok")]), 2.0);
    assert_eq!(value(&samples, run, &[("name", "m.flaky")]), 2.0);
    assert_eq!(value(&samples, run, &[("name", "m.broken")]), 1.0);
    assert_eq!(
        value(
            &samples,
            "fq_task_run_seconds_bucket",
            &[("name", "m.ok"), ("le", "+Inf")]
        ),
        2.0
    );
    // Enqueue-to-start by queue: the three starts in `default` each waited the 2 s the clock
    // moved; the flaky task's second start waited from its retry time.
    let latency = "fq_task_start_latency_seconds";
    assert_eq!(
        value(
            &samples,
            &format!("{latency}_count"),
            &[("queue", "default")]
        ),
        3.0
    );
    assert_eq!(
        value(&samples, &format!("{latency}_sum"), &[("queue", "default")]),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            &format!("{latency}_count"),
            &[("queue", "emails")]
        ),
        2.0
    );
    // 2 s within 1..=2 s's bucket but not 1 s's.
    let bucket = format!("{latency}_bucket");
    let le = |bound: &str| value(&samples, &bucket, &[("queue", "default"), ("le", bound)]);
    assert_eq!(le("1.024"), 0.0);
    assert_eq!(le("2.048"), 3.0);

    // The writer: every commit is observed (enqueues, a cancel, claims, settlements).
    let batches = value(&samples, "fq_writer_batch_size_count", &[]);
    assert!(batches >= 7.0, "{batches} commits observed");
    let commands = value(&samples, "fq_writer_batch_size_sum", &[]);
    assert!(
        commands >= batches,
        "{commands} commands in {batches} batches"
    );
    assert!(value(&samples, "fq_writer_commit_seconds_count", &[]) >= 1.0);
    assert_eq!(value(&samples, "fq_leases_expired_total", &[]), 0.0);
    assert_eq!(value(&samples, "fq_events_dropped_total", &[]), 0.0);
    Ok(())
}

/// Queue depths are the store's counts at scrape time, one series per queue and status.
#[tokio::test]
async fn queue_depth_gauges_match_engine_stats() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    for queue in ["default", "default", "emails"] {
        test.queue_task_named("m.ok", &json!({}))
            .queue(queue)
            .send()
            .await?;
    }
    test.queue_task_named("m.broken", &json!({})).send().await?;
    test.drain_queue("emails").await?;
    let later = test
        .queue_task_named("m.ok", &json!({}))
        .delay(Duration::from_secs(60))
        .send()
        .await?;
    test.cancel(later).await?;

    let samples = parse(&fq::metrics::render(&test).await?);
    let stats = test.stats().await?;
    assert_eq!(stats.queues.len(), 2);
    let mut seen = 0;
    for (queue, counts) in &stats.queues {
        for (status, expected) in [
            ("pending", counts.pending),
            ("running", counts.running),
            ("retrying", counts.retrying),
            ("completed", counts.completed),
            ("failed", counts.failed),
            ("cancelled", counts.cancelled),
        ] {
            let got = value(
                &samples,
                "fq_queue_tasks",
                &[("queue", queue), ("status", status)],
            );
            assert_eq!(got, expected as f64, "{queue} {status}");
            seen += 1;
        }
    }
    assert_eq!(series(&samples, "fq_queue_tasks").count(), seen);
    let pending = [("queue", "default"), ("status", "pending")];
    assert_eq!(value(&samples, "fq_queue_tasks", &pending), 3.0);
    let cancelled = [("queue", "default"), ("status", "cancelled")];
    assert_eq!(value(&samples, "fq_queue_tasks", &cancelled), 1.0);
    let completed = [("queue", "emails"), ("status", "completed")];
    assert_eq!(value(&samples, "fq_queue_tasks", &completed), 1.0);
    Ok(())
}

/// Each engine counts into a registry of its own: two engines in one process never see each
/// other's tasks (a process-wide recorder would mix them).
#[tokio::test]
async fn two_engines_in_one_process_keep_their_metrics_apart() -> fq::Result<()> {
    let (_dir_a, a) = common::engine();
    let (_dir_b, b) = common::engine();
    for _ in 0..3 {
        a.queue_task_named("m.ok", &json!({})).send().await?;
    }
    b.queue_task_named("m.ok", &json!({})).send().await?;
    b.queue_task_named("m.other", &json!({})).send().await?;

    let in_a = parse(&a.metrics().await?);
    let in_b = parse(&b.metrics().await?);
    let ok = [("queue", "default"), ("name", "m.ok")];
    let other = [("queue", "default"), ("name", "m.other")];
    assert_eq!(value(&in_a, "fq_tasks_queued_total", &ok), 3.0);
    assert_eq!(value(&in_b, "fq_tasks_queued_total", &ok), 1.0);
    assert_eq!(series(&in_a, "fq_tasks_queued_total").count(), 1);
    assert_eq!(value(&in_b, "fq_tasks_queued_total", &other), 1.0);
    Ok(())
}

/// The control socket's `metrics` op: a connected engine (as `fq metrics` against `fq serve`)
/// sees the serving engine's counters, not counters of its own.
#[tokio::test]
async fn a_connected_engine_reads_the_serving_engines_metrics() -> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    remote.queue_task_named("m.ok", &json!({})).send().await?;
    engine.queue_task_named("m.ok", &json!({})).send().await?;
    let samples = parse(&remote.metrics().await?);
    let ok = [("queue", "default"), ("name", "m.ok")];
    assert_eq!(value(&samples, "fq_tasks_queued_total", &ok), 2.0);
    let pending = [("queue", "default"), ("status", "pending")];
    assert_eq!(value(&samples, "fq_queue_tasks", &pending), 2.0);
    Ok(())
}

/// `metrics.enabled = false`: nothing is recorded and rendering is refused with an error that
/// names the setting, embedded and over the control socket alike; the engine works as usual.
#[tokio::test]
async fn metrics_off_refuses_to_render_and_says_why() -> fq::Result<()> {
    let config: Config = Config::from_toml_str(
        "[metrics]\nenabled = false\n",
        std::path::Path::new("fq.toml"),
    )?;
    assert!(!config.metrics.enabled);
    assert!(
        Config::default().metrics.enabled,
        "metrics are on by default"
    );

    let test = TestEngine::builder()
        .registry(registry())
        .config(config.clone())
        .open()?;
    test.queue_task_named("m.ok", &json!({})).send().await?;
    assert_eq!(test.drain().await?.completed, 1);
    let error = fq::metrics::render(&test).await.unwrap_err();
    assert!(
        matches!(error, Error::Metrics(MetricsError::Disabled)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("metrics.enabled = false"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fq.redb");
    let engine = Engine::builder(&path).config(config).open()?;
    let remote = Engine::connect(&format!("unix:{}.sock", path.display())).await?;
    let error = remote.metrics().await.unwrap_err();
    assert!(
        error.to_string().contains("metrics.enabled = false"),
        "{error}"
    );
    drop(remote);
    drop(engine);
    Ok(())
}

/// An unknown key in the section is refused like any other (the section is checked).
#[test]
fn a_misspelt_metrics_key_is_refused() {
    let error = Config::from_toml_str(
        "[metrics]\nenable = false\n",
        std::path::Path::new("fq.toml"),
    )
    .unwrap_err();
    assert!(error.to_string().contains("enable"), "{error}");
}

/// A task still RUNNING whose lease runs out counts as an expired lease (and as a retry).
#[tokio::test]
async fn an_expired_lease_is_counted() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let clock = fq::ManualClock::new(chrono::Utc::now());
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .clock(clock.clone())
        .lease_duration(Duration::from_secs(30))
        .open()?;
    let mut events = engine.events().subscribe();
    let id = engine.queue_task_named("m.ok", &json!({})).send().await?;
    let queues: Vec<Arc<str>> = vec![Arc::from("default")];
    let never = CancellationToken::new();
    let claimed = engine
        .broker()
        .claim(fq::ClaimRequest::new(
            &queues,
            1,
            Duration::from_secs(5),
            &never,
        ))
        .await?;
    assert_eq!(claimed.len(), 1);
    let before = parse(&engine.metrics().await?);
    assert_eq!(value(&before, "fq_leases_expired_total", &[]), 0.0);

    clock.advance(Duration::from_secs(31));
    common::task_event(&mut events, "task.retrying", id).await;
    let samples = parse(&engine.metrics().await?);
    assert_eq!(value(&samples, "fq_leases_expired_total", &[]), 1.0);
    let ok = [("queue", "default"), ("name", "m.ok")];
    assert_eq!(value(&samples, "fq_tasks_retried_total", &ok), 1.0);
    Ok(())
}

/// `fq metrics` on a store nobody serves (depths only: no process counts), then against the
/// running `fq serve` through its control socket (that engine's counters), then refused when
/// the configuration turns metrics off.
#[cfg(feature = "cli")]
#[test]
fn fq_metrics_prints_the_exposition_from_the_store_or_the_serving_engine() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("fq.redb");
    let fq = |args: &[&str]| -> std::process::Output {
        let mut command: Command = common::child::fq();
        command
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("FQ_DATABASE")
            .env_remove("FQ_BROKER")
            .arg("--db")
            .arg(&db)
            .args(args);
        command.output().expect("run fq")
    };
    let text = |output: &std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout.clone()).expect("utf-8")
    };
    let pending = [("queue", "default"), ("status", "pending")];
    let queued = [("queue", "default"), ("name", "fq.demo.echo")];

    text(&fq(&["enqueue", "fq.demo.echo"]));
    let direct = parse(&text(&fq(&["metrics"])));
    assert_eq!(value(&direct, "fq_queue_tasks", &pending), 1.0);
    // Read directly, the queue was counted by a process that is gone.
    assert_eq!(value(&direct, "fq_tasks_queued_total", &queued), 0.0);

    let mut serve = common::child::fq();
    serve
        .current_dir(dir.path())
        .arg("--db")
        .arg(&db)
        .arg("serve");
    let _server = common::child::spawn_logged(serve, dir.path(), "serve");
    let socket = dir.path().join("fq.redb.sock");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "fq serve never served"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    text(&fq(&["enqueue", "fq.demo.echo"]));
    let served = parse(&text(&fq(&["metrics"])));
    assert_eq!(value(&served, "fq_queue_tasks", &pending), 2.0);
    assert_eq!(value(&served, "fq_tasks_queued_total", &queued), 1.0);
    let json: serde_json::Value =
        serde_json::from_slice(&fq(&["metrics", "--json"]).stdout).expect("JSON");
    assert_eq!(json["content_type"], fq::metrics::CONTENT_TYPE);
    assert!(
        json["text"]
            .as_str()
            .is_some_and(|t| t.ends_with("# EOF\n"))
    );
    drop(_server);

    std::fs::write(dir.path().join("fq.toml"), "[metrics]\nenabled = false\n").expect("write");
    let refused = fq(&["metrics"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("metrics.enabled = false"), "{stderr}");
}

/// `fq bench --metrics-cost`: three rounds each side, every figure a rate, and the cost the
/// difference of the medians.
#[cfg(feature = "cli")]
#[test]
fn bench_metrics_cost_reports_three_rounds_on_and_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = common::child::fq()
        .current_dir(dir.path())
        .args([
            "bench",
            "--metrics-cost",
            "--tasks",
            "200",
            "--producers",
            "4",
            "--concurrency",
            "4",
            "--json",
        ])
        .output()
        .expect("run fq bench");
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for side in ["enqueue_on", "enqueue_off", "drain_on", "drain_off"] {
        let rounds = report[side].as_array().expect(side);
        assert_eq!(rounds.len(), 3, "{report:#}");
        assert!(
            rounds.iter().all(|r| r.as_f64().is_some_and(|v| v > 0.0)),
            "{report:#}"
        );
    }
    let number = |key: &str| report[key].as_f64().expect(key);
    let expected = (number("drain_off_median") - number("drain_on_median"))
        / number("drain_off_median")
        * 100.0;
    assert!(
        (number("drain_cost_percent") - expected).abs() < 1e-6,
        "{report:#}"
    );
}

/// RabbitMQ mode (skipped with a notice when no RabbitMQ answers, unless
/// `FQ_REQUIRE_RABBITMQ=1`): the producer counts each confirmed forward, says it is connected,
/// and its outbox is empty once the task is forwarded; a producer that never connects (nothing
/// listens on its port) shows the task waiting in its outbox and `connected` 0.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_mode_reports_the_outbox_forwards_and_the_connection() -> fq::Result<()> {
    let Some(rabbit) = common::rabbit::Rabbit::shared("metrics").await else {
        return Ok(());
    };
    let engine = rabbit.open(1)?;
    engine.ready(common::PATIENCE).await?;
    let id = engine.queue_task_named("m.ok", &json!({})).send().await?;
    common::eventually(
        "the task to be forwarded",
        common::PATIENCE,
        Duration::from_millis(50),
        || async {
            engine.task(id).await.ok().flatten().map(|t| t.status)
                == Some(fq::TaskStatus::Forwarded)
        },
    )
    .await;
    let samples = parse(&engine.metrics().await?);
    assert_eq!(value(&samples, "fq_rabbitmq_forwarded_total", &[]), 1.0);
    assert_eq!(value(&samples, "fq_rabbitmq_connected", &[]), 1.0);
    assert_eq!(value(&samples, "fq_rabbitmq_outbox_tasks", &[]), 0.0);
    let forwarded = [("queue", rabbit.queue.as_str()), ("status", "forwarded")];
    assert_eq!(value(&samples, "fq_queue_tasks", &forwarded), 1.0);

    // Nothing listens on port 1: the task waits in the outbox, and the engine says so.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = rabbit.config_in(dir.path(), 1);
    config.rabbitmq.url = Some("amqp://guest:guest@127.0.0.1:1/%2f".to_owned());
    let offline = common::rabbit::open(config)?;
    offline.queue_task_named("m.ok", &json!({})).send().await?;
    let samples = parse(&offline.metrics().await?);
    assert_eq!(value(&samples, "fq_rabbitmq_connected", &[]), 0.0);
    assert_eq!(value(&samples, "fq_rabbitmq_outbox_tasks", &[]), 1.0);
    assert_eq!(value(&samples, "fq_rabbitmq_forwarded_total", &[]), 0.0);
    Ok(())
}
