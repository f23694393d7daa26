//! The RabbitMQ bridge against a real server on 127.0.0.1:5672 (guest/guest; `FQ_RABBITMQ_URL`
//! points elsewhere). When no broker answers, each test prints a notice and passes, unless
//! `FQ_REQUIRE_RABBITMQ=1` (as `.ci/run` sets), which makes it fail. The unreachable-broker
//! and full-outbox tests need no server and always run.
//!
//! Every test uses its own uniquely named queues and deletes them (and their `.dead`
//! siblings) at the end, even when it fails. Tests that stop RabbitMQ (`rabbitmqctl
//! stop_app`) hold a guard that starts it again whatever happens, and a lock so that they never
//! overlap each other.
//!
//! The outage tests run the full sizes (10,000 tasks queued during an outage, 20,000
//! with two restarts); in a debug build the whole file takes well under a minute.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::common::rabbit::{Rabbit, open, plain_connection, rabbit_config, url};

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fq::{
    Config, Engine, Error, RabbitError, Registry, TaskContext, TaskError, TaskId, TaskStatus,
};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::Deserialize;
use serde_json::{Value, json};

mod outcomes;
mod schedules;
mod unique;

/// How long a test waits for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits for `check` to hold, polling.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::eventually(what, PATIENCE, Duration::from_millis(50), check).await;
}

/// Waits until `engine`'s store shows task `id` in `status`.
async fn eventually_status(engine: &Engine, id: TaskId, status: TaskStatus, what: &str) {
    eventually(what, || async {
        engine
            .task(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|t| t.status == status)
    })
    .await;
}

/// RabbitMQ's ready-message count of `queue` (via the engine's stats).
async fn depth(engine: &Engine, queue: &str) -> Option<u64> {
    let stats = engine.stats().await.ok()?;
    stats.rabbitmq?.queues.get(queue)?.messages
}

/// Takes one message off `queue` with a plain client.
async fn get_one(queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let conn = plain_connection().await.ok()?;
    let mut channel = conn.create_channel().await.ok()?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
        {
            Ok(Some(message)) => {
                let _ = message.delivery.acker.ack(BasicAckOptions::default()).await;
                return Some(message);
            }
            Ok(None) => {}
            // A missing queue closes the channel: open another one.
            Err(_) => channel = conn.create_channel().await.ok()?,
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(key)
}

fn header_text(properties: &BasicProperties, key: &str) -> String {
    match header(properties, key) {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    }
}

fn header_int(properties: &BasicProperties, key: &str) -> Option<i64> {
    match header(properties, key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Publishes `body` to the `tasks` exchange under `queue`, as another language's client would.
async fn publish_plain(queue: &str, body: &[u8], properties: BasicProperties) {
    let conn = plain_connection().await.expect("plain connection");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            "tasks".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let _ = conn.close(200, "bye".into()).await;
}

#[derive(Deserialize)]
struct Work {
    n: u64,
}

/// A registry whose `test.work` handler logs each run's task id into `runs`.
fn counting_registry(runs: Arc<Mutex<Vec<(TaskId, u32)>>>) -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.work", move |work: Work, ctx: TaskContext| {
        let runs = Arc::clone(&runs);
        async move {
            runs.lock().unwrap().push((ctx.id(), ctx.attempt()));
            Ok::<_, TaskError>(json!(work.n))
        }
    });
    registry
}

// ---------------------------------------------------------------------------------------------

/// No broker at the address: opening and queuing still work (the outbox), and waiting for the
/// connection fails with a typed error that names the endpoint and never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_typed_error() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = rabbit_config(dir.path(), "fqtest.unreachable", 2);
    config.rabbitmq.url = Some("amqp://guest:not-the-password@127.0.0.1:1/%2f".to_owned());
    let engine = open(config)?;
    let id = engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": 1}}))
        .send()
        .await?;
    assert_eq!(engine.task(id).await?.unwrap().status, TaskStatus::Pending);
    let err = engine.ready(Duration::from_secs(3)).await.unwrap_err();
    let text = err.to_string();
    match &err {
        Error::Rabbit(rabbit @ RabbitError::Unreachable { endpoint, .. }) => {
            assert!(rabbit.is_connection_refused(), "{text}");
            assert_eq!(endpoint, "amqp://guest@127.0.0.1:1/%2f");
        }
        other => panic!("expected Error::Rabbit(Unreachable), got {other:?}"),
    }
    assert!(err.is_retryable());
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!format!("{err:?}").contains("not-the-password"));
    let stats = engine.stats().await?;
    let rabbit = stats.rabbitmq.expect("rabbitmq section");
    assert!(!rabbit.connected);
    assert!(rabbit.error.unwrap().contains("unreachable"));
    Ok(())
}

/// With RabbitMQ down the outbox fills up to `limits.max_pending`, then refuses with a clear
/// error naming the limit and the connection's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_with_a_clear_error() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = rabbit_config(dir.path(), "fqtest.full", 2);
    config.rabbitmq.url = Some("amqp://guest:guest@127.0.0.1:1/%2f".to_owned());
    config.limits.max_pending = Some(5);
    let engine = open(config)?;
    for n in 0..5 {
        engine
            .queue_task_named("test.work", &json!({"kwargs": {"n": n}}))
            .send()
            .await?;
    }
    let err = engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": 5}}))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Rabbit(RabbitError::OutboxFull { limit: 5, .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("limits.max_pending") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    Ok(())
}

/// A task queued by fq can be read and decoded by a plain AMQP client, in the documented
/// format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fq_task_is_readable_by_a_plain_client() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("readable").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    let id = engine
        .queue_task_named(
            "app.send_email",
            &json!({"args": [1], "kwargs": {"to": "ada@example.com"}}),
        )
        .priority(7)
        .max_retries(4)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let message = get_one(&queue).await.expect("a message in the queue");
    let body: Value = serde_json::from_slice(&message.delivery.data).expect("JSON body");
    assert_eq!(body["task_id"], id.to_string());
    assert_eq!(body["name"], "app.send_email");
    assert_eq!(
        body["payload"],
        json!({"args": [1], "kwargs": {"to": "ada@example.com"}})
    );
    let props = &message.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(props.priority(), &Some(7));
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        Some(id.to_string())
    );
    assert_eq!(header_int(props, "attempt"), Some(1));
    assert_eq!(header_int(props, "max_retries"), Some(4));
    assert_eq!(header_int(props, "priority"), Some(7));
    assert_eq!(header_int(props, "timeout_ms"), Some(30_000));
    assert_eq!(header_text(props, "queue"), queue);
    // It names the producer's reply queue, where outcomes come back.
    let reply_to = props.reply_to().as_ref().map(|q| q.to_string());
    assert!(
        reply_to
            .as_deref()
            .is_some_and(|q| q.starts_with("fq.replies.")),
        "{reply_to:?}"
    );
    // The producer's store shows it as forwarded, with the time of the confirm.
    eventually_status(
        &engine,
        id,
        TaskStatus::Forwarded,
        "the task to be marked forwarded",
    )
    .await;
    assert!(engine.task(id).await?.unwrap().finished_at.is_some());
    Ok(())
}

/// A task published by a plain AMQP client in the documented format (no fq headers at all)
/// runs on an fq worker, which records the run in its own store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_task_runs_on_an_fq_worker() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("plain").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    engine.ready(PATIENCE).await?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(&engine, counting_registry(Arc::clone(&runs)), &[&queue], 2);
    let id = TaskId::new();
    let body = json!({"task_id": id.to_string(), "name": "test.work", "payload": {"args": [], "kwargs": {"n": 42}}});
    eventually("the queue to exist", || async {
        depth(&engine, &queue).await.is_some()
    })
    .await;
    publish_plain(
        &queue,
        body.to_string().as_bytes(),
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    eventually("the task to run", || async {
        runs.lock().unwrap().iter().any(|(r, _)| *r == id)
    })
    .await;
    eventually("the run to be recorded", || async {
        engine
            .task(id)
            .await
            .ok()
            .flatten()
            .is_some_and(|t| t.status == TaskStatus::Completed)
    })
    .await;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.result, Some(json!(42)));
    assert_eq!(record.attempts, 1);
    assert_eq!(record.queue, queue);
    worker.stop().await;
    Ok(())
}

/// Stops the RabbitMQ application (`rabbitmqctl stop_app`) and always starts it again when
/// dropped, even when the test fails, waiting until it accepts connections.
struct Stopped;

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {command} failed");
}

impl Stopped {
    fn stop() -> Self {
        rabbitmqctl("stop_app");
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
        let addr: SocketAddr = ([127, 0, 0, 1], 5672).into();
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Restarts the RabbitMQ application (the guard makes sure it comes back).
async fn restart_rabbitmq() {
    tokio::task::spawn_blocking(|| {
        let stopped = Stopped::stop();
        std::thread::sleep(Duration::from_millis(500));
        drop(stopped);
    })
    .await
    .expect("restart");
}

/// Issue 12 §3: queue limits hold back local claims, and nothing claims locally in RabbitMQ
/// mode, so setting one there is refused with the reason (removing limits is fine); the
/// config refuses them too (unit test `queue_limits_are_refused_in_rabbitmq_mode_only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_are_refused_in_rabbitmq_mode() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("limits").await else {
        return Ok(());
    };
    let engine = rabbit.open(2)?;
    for limits in [
        fq::QueueLimits {
            concurrency: Some(2),
            rate: None,
        },
        fq::QueueLimits {
            concurrency: None,
            rate: Some(fq::Rate::new(5, Duration::from_secs(1)).expect("a rate")),
        },
    ] {
        let error = engine
            .set_queue_limits(&rabbit.queue, limits)
            .await
            .expect_err("a limit in RabbitMQ mode");
        let text = error.to_string();
        assert!(
            text.contains("apply with the database broker only") && text.contains(&rabbit.queue),
            "{text}"
        );
    }
    engine
        .set_queue_limits(&rabbit.queue, fq::QueueLimits::default())
        .await?;
    Ok(())
}

/// Issue 11 #10: an engine that queues nothing and runs no worker (as `fq serve` in RabbitMQ
/// mode) declares no queue, not even its configured default queue or its workers' queues;
/// the first task queued declares its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_queues_a_task_uses_are_declared() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("undeclared").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    engine.ready(PATIENCE).await?;
    // `stats` reads RabbitMQ's depths of every queue the engine knows.
    let stats = engine.stats().await?;
    let conn = plain_connection().await.expect("plain connection");
    let exists = |name: String| {
        let conn = &conn;
        async move {
            let channel = conn.create_channel().await.expect("channel");
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let found = channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok();
            if found {
                let _ = channel.close(200, "checked".into()).await;
            }
            found
        }
    };
    assert!(
        !exists(queue.clone()).await,
        "the configured queue was declared with no task on it (stats: {:?})",
        stats.rabbitmq
    );
    assert!(!exists(format!("{queue}.dead")).await);
    queue_one_until_declared(&engine, &queue).await?;
    assert!(exists(queue.clone()).await);
    assert!(exists(format!("{queue}.dead")).await);
    Ok(())
}

/// Queues one task to `queue` and waits until RabbitMQ has the queue (a queue is declared
/// once a task uses it).
async fn queue_one_until_declared(engine: &Engine, queue: &str) -> fq::Result<()> {
    engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": 1}}))
        .send()
        .await?;
    eventually("the queue to be declared", || async {
        depth(engine, queue).await.is_some()
    })
    .await;
    Ok(())
}

/// The topology is what the README documents, checked with passive declarations, an
/// equivalent redeclaration (accepted) and a different one (refused), and mandatory
/// publishes through both exchanges (routed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_declared_topology_matches() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("topology").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    engine.ready(PATIENCE).await?;
    // A queue is declared once a task uses it.
    queue_one_until_declared(&engine, &queue).await?;

    let conn = plain_connection().await.expect("plain connection");
    let channel = conn.create_channel().await.expect("channel");
    let passive_exchange = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for exchange in ["tasks", "tasks.dead"] {
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Direct,
                passive_exchange,
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange {exchange} exists: {e}"));
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for name in [queue.clone(), format!("{queue}.dead")] {
        channel
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {name} exists: {e}"));
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut documented = FieldTable::default();
    documented.insert("x-max-priority".into(), AMQPValue::LongInt(10));
    documented.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("tasks.dead")),
    );
    documented.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(format!("{queue}.dead").as_str())),
    );
    channel
        .queue_declare(queue.as_str().into(), durable, documented.clone())
        .await
        .expect("the documented arguments are the queue's arguments");
    let mut other = documented;
    other.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    assert!(
        channel
            .queue_declare(queue.as_str().into(), durable, other)
            .await
            .is_err(),
        "a different x-max-priority was accepted"
    );

    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for (exchange, routing) in [
        ("tasks", queue.clone()),
        ("tasks.dead", format!("{queue}.dead")),
    ] {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"{}",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert_eq!(
            confirm,
            lapin::Confirmation::Ack(None),
            "{exchange} routes {routing}"
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// A queue that exists with other arguments is never changed: queuing to it fails with an
/// error saying what conflicts and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_queue_is_a_clear_error() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("conflict").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    {
        let conn = plain_connection().await.expect("plain connection");
        let channel = conn.create_channel().await.expect("channel");
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("declare a queue of another application");
        let _ = conn.close(200, "bye".into()).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = open(rabbit_config(dir.path(), &queue, 2))?;
    engine.ready(PATIENCE).await?;
    let deadline = Instant::now() + PATIENCE;
    let error = loop {
        match engine
            .queue_task_named("test.work", &json!({"kwargs": {"n": 1}}))
            .send()
            .await
        {
            Err(error) => break error,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "queuing to a conflicting queue kept working"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        matches!(error, Error::Rabbit(RabbitError::TopologyConflict { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    for needle in [
        queue.as_str(),
        "x-max-priority",
        "Delete it",
        "another queue name",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    Ok(())
}

/// With no consumer running, 100 priority-0 tasks then one priority-9 task: the priority-9
/// task is consumed first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_nine_is_consumed_before_a_hundred_zeros() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("priority").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(1)?;
    let mut batch = Vec::new();
    for n in 0..100 {
        batch.push(
            engine
                .queue_task_named("test.work", &json!({"kwargs": {"n": n}}))
                .priority(0),
        );
    }
    engine.queue_batch(batch).await?;
    let urgent = engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": 999}}))
        .priority(9)
        .send()
        .await?;
    eventually("all 101 to wait in RabbitMQ", || async {
        depth(&engine, &queue).await == Some(101)
    })
    .await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(&engine, counting_registry(Arc::clone(&runs)), &[&queue], 1);
    eventually("all to run", || async { runs.lock().unwrap().len() >= 101 }).await;
    worker.stop().await;
    let order = runs.lock().unwrap().clone();
    assert_eq!(order[0].0, urgent, "the priority-9 task ran first");
    Ok(())
}

/// A task that fails its first run succeeds on the second, after the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_task_succeeds_on_its_second_run_after_the_backoff() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("flaky").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = Arc::clone(&starts);
    registry.register_async("test.flaky", move |_: Value, ctx: TaskContext| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock()
                .unwrap()
                .push((ctx.attempt(), chrono::Utc::now()));
            if ctx.attempt() == 1 {
                return Err(TaskError::new("first run fails"));
            }
            Ok(json!("second run works"))
        }
    });
    let mut events = engine.events().subscribe();
    let worker = common::start_worker(&engine, registry, &[&queue], 2);
    let id = engine
        .queue_task_named("test.flaky", &json!({}))
        .send()
        .await?;
    let retrying = common::task_event(&mut events, "task.retrying", id).await;
    let retry_at = retrying.retry_at.expect("a retry time");
    common::task_event(&mut events, "worker.task.after_execution", id).await;
    worker.stop().await;
    let record = engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.result, Some(json!("second run works")));
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 2);
    assert!(
        starts[1].1 >= retry_at,
        "the second run started before its retry time"
    );
    assert!(retry_at > starts[0].1, "no backoff");
    Ok(())
}

/// A task that always fails runs max_retries + 1 times, then lands in `<queue>.dead` with the
/// reason in its headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_task_ends_in_the_dead_queue() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("failing").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    let runs = Arc::new(Mutex::new(0u32));
    let mut registry = Registry::new();
    let counted = Arc::clone(&runs);
    registry.register_async("test.broken", move |_: Value, _ctx: TaskContext| {
        let counted = Arc::clone(&counted);
        async move {
            *counted.lock().unwrap() += 1;
            Err::<Value, _>(TaskError::new("the disk is on fire"))
        }
    });
    let mut events = engine.events().subscribe();
    let worker = common::start_worker(&engine, registry, &[&queue], 2);
    let id = engine
        .queue_task_named("test.broken", &json!({}))
        .max_retries(2)
        .send()
        .await?;
    common::task_event(&mut events, "task.failed", id).await;
    let dead = get_one(&format!("{queue}.dead"))
        .await
        .expect("a dead letter");
    worker.stop().await;
    assert_eq!(*runs.lock().unwrap(), 3, "max_retries + 1 runs");
    let body: Value = serde_json::from_slice(&dead.delivery.data).unwrap();
    assert_eq!(body["task_id"], id.to_string());
    let props = &dead.delivery.properties;
    let reason = header_text(props, "dead_reason");
    assert!(
        reason.contains("the disk is on fire") && reason.contains("retries exhausted"),
        "{reason}"
    );
    assert_eq!(header_text(props, "error_kind"), "error");
    assert_eq!(header_int(props, "attempt"), Some(3));
    let record = engine.task(id).await?.unwrap();
    assert_eq!((record.status, record.attempts), (TaskStatus::Failed, 3));
    Ok(())
}

/// A malformed message and one naming a task nobody registered, published by a plain
/// client, end in `<queue>.dead` with their reasons; the worker keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_messages_are_dead_lettered_and_the_worker_goes_on() -> fq::Result<()>
{
    let Some(rabbit) = Rabbit::shared("malformed").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    engine.ready(PATIENCE).await?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(&engine, counting_registry(Arc::clone(&runs)), &[&queue], 2);
    eventually("the queue to exist", || async {
        depth(&engine, &queue).await.is_some()
    })
    .await;
    publish_plain(&queue, b"this is not json", BasicProperties::default()).await;
    let unknown = TaskId::new();
    publish_plain(
        &queue,
        json!({"task_id": unknown.to_string(), "name": "nobody.knows.this", "payload": {}})
            .to_string()
            .as_bytes(),
        BasicProperties::default(),
    )
    .await;
    let good = TaskId::new();
    publish_plain(
        &queue,
        json!({"task_id": good.to_string(), "name": "test.work", "payload": {"kwargs": {"n": 7}}})
            .to_string()
            .as_bytes(),
        BasicProperties::default(),
    )
    .await;
    eventually("the good task to run", || async {
        runs.lock().unwrap().iter().any(|(id, _)| *id == good)
    })
    .await;
    let mut kinds = HashMap::new();
    for _ in 0..2 {
        let dead = get_one(&format!("{queue}.dead"))
            .await
            .expect("a dead letter");
        let props = &dead.delivery.properties;
        kinds.insert(
            header_text(props, "error_kind"),
            (header_text(props, "dead_reason"), dead.delivery.data),
        );
    }
    worker.stop().await;
    let (reason, body) = &kinds["undecodable"];
    assert!(reason.contains("not an fq task"), "{reason}");
    assert_eq!(body, b"this is not json");
    let (reason, _) = &kinds["unknown_task"];
    assert!(reason.contains("nobody.knows.this"), "{reason}");
    Ok(())
}

/// How many times each task ran, from a run log.
fn run_counts(runs: &[(TaskId, u32)]) -> HashMap<TaskId, usize> {
    let mut counts = HashMap::new();
    for (id, _) in runs {
        *counts.entry(*id).or_insert(0) += 1;
    }
    counts
}

/// Waits until each of the `n` tasks ran at least once and the producer's outbox forwarded
/// them all.
async fn wait_all_ran_and_forwarded(
    producer: &Engine,
    queue: &str,
    runs: &Mutex<Vec<(TaskId, u32)>>,
    n: u64,
) {
    eventually("every task to run", || async {
        run_counts(&runs.lock().unwrap()).len() as u64 >= n
    })
    .await;
    // Forwarded, and then (outcomes coming back) RUNNING or COMPLETED in the producer's store.
    eventually("the outbox to be empty", || async {
        producer.stats().await.is_ok_and(|s| {
            let q = &s.queues[queue];
            q.pending == 0 && q.forwarded + q.running + q.completed == n
        })
    })
    .await;
}

/// Queues `n` tasks in batches of 500; returns their ids.
async fn queue_many(engine: &Engine, n: u64) -> fq::Result<Vec<TaskId>> {
    let mut ids = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut next = 0;
    while next < n {
        let end = (next + 500).min(n);
        let batch = (next..end)
            .map(|i| engine.queue_task_named("test.work", &json!({"kwargs": {"n": i}})))
            .collect::<Vec<_>>();
        ids.extend(engine.queue_batch(batch).await?);
        next = end;
    }
    Ok(ids)
}

/// Tasks queued while RabbitMQ is stopped wait in the outbox; once it is started again they
/// are forwarded and each runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queued_while_rabbitmq_is_stopped_all_run_exactly_once() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::exclusive("outage").await else {
        return Ok(());
    };
    let n: u64 = 10_000;
    let queue = rabbit.queue.clone();
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit_config(producer_dir.path(), &queue, 32))?;
    producer.ready(PATIENCE).await?;

    let stopped = tokio::task::spawn_blocking(Stopped::stop)
        .await
        .expect("stop_app");
    let ids = queue_many(&producer, n).await?;
    let outbox = producer.stats().await?;
    assert_eq!(
        outbox.queues[&queue].pending, n,
        "all {n} wait in the outbox"
    );
    assert!(!outbox.rabbitmq.unwrap().connected);
    tokio::task::spawn_blocking(move || drop(stopped))
        .await
        .expect("start_app");

    let worker_dir = tempfile::tempdir().unwrap();
    let worker_engine = open(rabbit_config(worker_dir.path(), &queue, 32))?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&queue],
        32,
    );
    wait_all_ran_and_forwarded(&producer, &queue, &runs, n).await;
    // Room for a duplicate to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    let counts = run_counts(&runs.lock().unwrap());
    for id in &ids {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "task {id} ran {:?} times",
            counts.get(id)
        );
    }
    assert_eq!(counts.len(), ids.len());
    Ok(())
}

/// RabbitMQ restarted twice in the middle of a run: no task is lost. Deliveries in flight at
/// a restart may run twice (at-least-once); the test counts and prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarts_mid_run_lose_nothing() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::exclusive("restarts").await else {
        return Ok(());
    };
    outcomes::through_outages(&rabbit, 20_000, 2, 0).await
}

/// The child worker of `a_killed_worker_s_task_runs_on_another_worker`: consumes the queue
/// named by `FQ_RABBITMQ_CHILD_QUEUE` and hangs in every task after logging its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_worker() -> fq::Result<()> {
    let (Ok(dir), Ok(queue)) = (
        std::env::var("FQ_RABBITMQ_CHILD"),
        std::env::var("FQ_RABBITMQ_CHILD_QUEUE"),
    ) else {
        return Ok(()); // only meaningful as the child of the SIGKILL test
    };
    let dir = PathBuf::from(dir);
    let engine = open(rabbit_config(&dir.join("child"), &queue, 4))?;
    let log = dir.join("starts.log");
    let mut registry = Registry::new();
    registry.register_async("test.slow", move |_: Value, ctx: TaskContext| {
        let log = log.clone();
        async move {
            append_line(&log, &format!("{} {}", ctx.id(), std::process::id()));
            std::future::pending::<()>().await;
            Ok::<_, TaskError>(Value::Null)
        }
    });
    let mut worker = engine.worker(registry);
    worker.set_handle_signals(false);
    worker.start().await?;
    Ok(())
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    writeln!(file, "{line}").expect("append");
}

/// A worker process killed with SIGKILL mid-task leaves its delivery unacknowledged;
/// RabbitMQ gives it to another worker, which runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_task_runs_on_another_worker() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("sigkill").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let dir = tempfile::tempdir().unwrap();
    // Queued first: nothing fallible may return between spawning the child and reaping it.
    let producer = open(rabbit_config(&dir.path().join("producer"), &queue, 2))?;
    let id = producer
        .queue_task_named("test.slow", &json!({}))
        .send()
        .await?;
    let mut child = crate::common::child::rerun("rabbitmq::child_worker")
        .env("FQ_RABBITMQ_CHILD", dir.path())
        .env("FQ_RABBITMQ_CHILD_QUEUE", &queue)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = dir.path().join("starts.log");
    let child_pid = child.id().to_string();
    let started_in = |pid: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|line| line == format!("{id} {pid}"))
    };
    // Killed and reaped whatever happens, so no child outlives a failed wait.
    let started = tokio::time::timeout(PATIENCE, async {
        while !started_in(&child_pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    assert!(started.is_ok(), "the child never started the task");

    let worker_engine = open(rabbit_config(&dir.path().join("worker"), &queue, 2))?;
    let log_for_handler = log.clone();
    let mut registry = Registry::new();
    registry.register_async("test.slow", move |_: Value, ctx: TaskContext| {
        let log = log_for_handler.clone();
        async move {
            append_line(&log, &format!("{} {}", ctx.id(), std::process::id()));
            Ok::<_, TaskError>(json!("done"))
        }
    });
    let mut events = worker_engine.events().subscribe();
    let worker = common::start_worker(&worker_engine, registry, &[&queue], 2);
    common::task_event(&mut events, "worker.task.after_execution", id).await;
    worker.stop().await;
    assert!(
        started_in(&std::process::id().to_string()),
        "the task ran again here"
    );
    let record = worker_engine.task(id).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    Ok(())
}

#[derive(Debug, serde::Serialize, Deserialize)]
struct SendEmail {
    to: String,
}

impl fq::Task for SendEmail {
    const NAME: &'static str = "myapp.tasks.send_email";
    type Output = Value;

    async fn run(self, _ctx: TaskContext) -> Result<Value, TaskError> {
        Ok(json!({"status": "sent", "recipient": self.to}))
    }
}

/// The quickstart's logic as an application: open the engine its configuration describes,
/// queue a typed task and one by name, run a worker until both are done, and return their
/// results. Nothing here names a broker.
async fn quickstart_app(config: Config) -> fq::Result<Vec<Value>> {
    let queues = config.worker.queues.clone();
    let engine = Engine::from_config(config)?;
    let mut registry = Registry::new();
    registry.register::<SendEmail>().register_fn(
        "myapp.tasks.process_payment",
        |args: Value| -> Result<Value, TaskError> {
            Ok(json!({"status": "completed", "order_id": args["order_id"]}))
        },
    );
    let mut events = engine.events().subscribe();
    let mut worker = engine.worker(registry);
    worker.set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });
    let email = engine
        .queue_task(SendEmail {
            to: "ada@example.com".into(),
        })
        .queue(queues[0].clone())
        .send()
        .await?;
    let payment = engine
        .queue_task_named(
            "myapp.tasks.process_payment",
            &json!({"kwargs": {"order_id": "A-1001"}}),
        )
        .queue(queues[1].clone())
        .priority(10)
        .send()
        .await?;
    let mut pending = vec![email, payment];
    while !pending.is_empty() {
        let done = common::next_event(&mut events, "worker.task.after_execution", |_| true).await;
        pending.retain(|id| *id != done.task.id);
    }
    stop.shutdown();
    running.await.expect("worker task")?;
    let mut results = Vec::new();
    for id in [email, payment] {
        results.push(
            engine
                .task(id)
                .await?
                .and_then(|t| t.result)
                .unwrap_or(Value::Null),
        );
    }
    Ok(results)
}

/// Switching the app from `database` to `rabbitmq` is a configuration change only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_rabbitmq_is_a_config_change_only() -> fq::Result<()> {
    let Some(mut rabbit) = Rabbit::shared("emails").await else {
        return Ok(());
    };
    let emails = rabbit.queue.clone();
    let payments = rabbit.another_queue("payments");
    let file = |dir: &Path, broker: &str| {
        format!(
            "broker = \"{broker}\"\ndatabase = \"{}\"\n[defaults]\nqueue = \"{emails}\"\n[worker]\nqueues = [\"{emails}\", \"{payments}\"]\nconcurrency = 4\n[rabbitmq]\nurl = \"{}\"\n",
            dir.join("fq.redb").display(),
            url()
        )
    };
    let load = |dir: &Path, broker: &str| {
        let path = dir.join("fq.toml");
        std::fs::write(&path, file(dir, broker)).expect("write fq.toml");
        Config::load(Some(&path))
    };
    let database_dir = tempfile::tempdir().unwrap();
    let database = load(database_dir.path(), "database")?;
    let rabbit_dir = tempfile::tempdir().unwrap();
    let rabbitmq = load(rabbit_dir.path(), "rabbitmq")?;
    // The two files differ in the broker line only.
    let differing: Vec<(String, String)> = file(database_dir.path(), "database")
        .replace(&database_dir.path().display().to_string(), "DIR")
        .lines()
        .zip(
            file(rabbit_dir.path(), "rabbitmq")
                .replace(&rabbit_dir.path().display().to_string(), "DIR")
                .lines(),
        )
        .filter(|(a, b)| a != b)
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(
        differing,
        vec![(
            "broker = \"database\"".to_owned(),
            "broker = \"rabbitmq\"".to_owned()
        )]
    );
    let on_database = quickstart_app(database).await?;
    let on_rabbitmq = quickstart_app(rabbitmq).await?;
    assert_eq!(on_database, on_rabbitmq);
    assert_eq!(on_rabbitmq[0]["recipient"], "ada@example.com");
    Ok(())
}

/// A worker that stops hands back what RabbitMQ had prefetched for it, while its engine goes
/// on (producing, say): after a short idle period the messages are ready for other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_hands_back_its_prefetched_messages() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("handback").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(4)?;
    let total = 20;
    queue_many(&engine, total).await?;
    eventually("all to wait in RabbitMQ", || async {
        depth(&engine, &queue).await == Some(total)
    })
    .await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = Arc::clone(&runs);
    registry.register_async("test.work", move |_: Value, ctx: TaskContext| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push((ctx.id(), ctx.attempt()));
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, TaskError>(Value::Null)
        }
    });
    let worker = common::start_worker(&engine, registry, &[&queue], 4);
    eventually("a first run", || async { !runs.lock().unwrap().is_empty() }).await;
    worker.stop().await;
    let ran = runs.lock().unwrap().len() as u64;
    assert!(ran < total, "the worker ran everything before it stopped");
    eventually(
        "the prefetched messages to be back in the queue",
        || async { depth(&engine, &queue).await == Some(total - ran) },
    )
    .await;
    Ok(())
}

/// A delayed task waits in the producer's local delay index, not in RabbitMQ, and is forwarded
/// (and run) when it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_waits_locally_and_is_forwarded_when_due() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("delayed").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let engine = rabbit.open(2)?;
    engine.ready(PATIENCE).await?;
    let id = engine
        .queue_task_named("test.work", &json!({"kwargs": {"n": 1}}))
        .delay(Duration::from_millis(1500))
        .send()
        .await?;
    let due_at = engine.task(id).await?.unwrap().due_at;
    eventually("the queue to be declared", || async {
        depth(&engine, &queue).await.is_some()
    })
    .await;
    let stats = engine.stats().await?;
    // Only meaningful when the answer came before the due time (a slow machine may be later).
    if chrono::Utc::now() < due_at {
        assert_eq!(
            stats.rabbitmq.unwrap().queues[&queue].messages,
            Some(0),
            "published before it was due"
        );
        assert_eq!(stats.queues[&queue].scheduled, 1);
    }
    let message = get_one(&queue).await.expect("the task once it is due");
    let published_after = chrono::Utc::now();
    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body["task_id"], id.to_string());
    assert!(
        published_after >= due_at,
        "taken at {published_after}, due at {due_at}"
    );
    Ok(())
}

/// Regression: one-shot commands in RabbitMQ mode (no `fq serve`) printed lapin's errors
/// ("Connection error ... invalid connection state: Closed", in about 40% of `fq stats` runs)
/// or, now and then, a panic of lapin's I/O thread, because a channel or a connection attempt
/// was still open when the process ended. Each run must close cleanly and print nothing of
/// lapin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_close_their_connection_and_print_nothing_of_lapins() {
    let Some(rabbit) = Rabbit::shared("oneshot").await else {
        return;
    };
    std::fs::create_dir_all(rabbit.dir.path().join("config")).unwrap();
    std::fs::write(
        rabbit.dir.path().join("config/services.yaml"),
        format!(
            "task:\n  broker: rabbitmq\n  database: var/fq.redb\n  defaults:\n    queue: {}\n  rabbitmq:\n    url: {}\n",
            rabbit.queue,
            url()
        ),
    )
    .unwrap();
    const RUNS: usize = 30;
    for run in 0..RUNS {
        for args in [&["enqueue", "fq.demo.echo"][..], &["stats"][..]] {
            let out = fq_in(rabbit.dir.path()).args(args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(0),
                "run {run} of {args:?}: {stderr}"
            );
            assert!(
                !stderr.contains("panicked") && !stderr.contains("ERROR"),
                "run {run} of {args:?} printed: {stderr}"
            );
        }
    }
}

/// The `fq` binary run in `dir`, configured by what `dir` holds alone (no `FQ_*` variable,
/// no `RUST_LOG` of the test's environment).
fn fq_in(dir: &Path) -> Command {
    let mut command = common::child::fq();
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("FQ_BROKER")
        .env_remove("FQ_DATABASE")
        .env_remove("FQ_RABBITMQ_URL");
    command
}

/// Waits until the store at `path` is closed: the bridge's background tasks let go of it a
/// moment after its engine is dropped.
async fn store_closed(path: &Path) {
    eventually("the store to be closed", || async {
        Engine::builder(path).read_only(true).open().is_ok()
    })
    .await;
}

/// Issue 11 #8 in RabbitMQ mode: `fq stats`, `list` and `show` on a store nobody serves only
/// read it: the tasks waiting in its outbox stay there (no bridge starts, nothing is
/// forwarded), the file is unchanged, and `stats` still shows RabbitMQ's depth of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_forward_nothing_from_a_store_nobody_serves() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("readonly").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let config = rabbit.config_in(rabbit.dir.path(), 1);
    let forwarded = {
        let engine = open(config.clone())?;
        engine.ready(PATIENCE).await?;
        let id = engine
            .queue_task_named("test.work", &json!({"kwargs": {"n": 0}}))
            .send()
            .await?;
        eventually_status(
            &engine,
            id,
            TaskStatus::Forwarded,
            "the task to be forwarded",
        )
        .await;
        id
    };
    store_closed(&config.database).await;
    // Two more wait in the outbox: queued while RabbitMQ cannot be reached.
    let mut unreachable = config.clone();
    unreachable.rabbitmq.url = Some("amqp://guest:guest@127.0.0.1:1/%2f".to_owned());
    let waiting = {
        let engine = open(unreachable)?;
        let mut ids = Vec::new();
        for n in 1..=2 {
            ids.push(
                engine
                    .queue_task_named("test.work", &json!({"kwargs": {"n": n}}))
                    .send()
                    .await?,
            );
        }
        ids
    };
    store_closed(&config.database).await;
    std::fs::create_dir_all(rabbit.dir.path().join("config")).unwrap();
    std::fs::write(
        rabbit.dir.path().join("config/services.yaml"),
        format!(
            "task:\n  broker: rabbitmq\n  database: {}\n  defaults:\n    queue: {queue}\n  rabbitmq:\n    url: {}\n",
            config.database.display(),
            url()
        ),
    )
    .unwrap();
    let before = std::fs::read(&config.database).unwrap();
    let fq_json = |args: &[&str]| -> Value {
        let out = fq_in(rabbit.dir.path()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("ERROR"), "{args:?} printed: {stderr}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let stats = fq_json(&["stats", "--json"]);
    let local = &stats["queues"][&queue];
    assert_eq!(
        (local["pending"].as_u64(), local["forwarded"].as_u64()),
        (Some(2), Some(1)),
        "{stats}"
    );
    let remote = &stats["rabbitmq"];
    assert_eq!(remote["connected"], true, "{stats}");
    assert_eq!(remote["queues"][&queue]["messages"], 1, "{stats}");
    let listed = fq_json(&["list", "--json", "--status", "pending"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let shown = fq_json(&["show", "--json", &forwarded.to_string()]);
    assert_eq!(shown["status"], "FORWARDED", "{shown}");
    assert!(
        std::fs::read(&config.database).unwrap() == before,
        "a read-only command changed the store file"
    );
    // The owner that opens it next forwards what waited.
    let engine = open(config)?;
    for id in waiting {
        eventually_status(
            &engine,
            id,
            TaskStatus::Forwarded,
            "the outbox to be forwarded",
        )
        .await;
    }
    Ok(())
}
