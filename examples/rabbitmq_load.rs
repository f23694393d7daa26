//! RabbitMQ load generator: raw lapin and the fq bridge side by side, in one run, on the same
//! server and the same kind of queue (durable, `x-max-priority`, dead-lettering), with
//! persistent messages of the same size.
//!
//! 1. raw publish: lapin publishes N messages with publisher confirms, pipelined (a window
//!    of unconfirmed messages);
//! 2. raw consume: lapin consumes them with manual acks (prefetch P);
//! 3. bridge forwarding: N tasks already committed to an fq outbox are forwarded (published,
//!    confirmed and marked FORWARDED in the store);
//! 4. bridge drain: an fq worker (concurrency P) runs them: decode, a no-op handler, the run
//!    recorded in its store with its outcome report in the store's report outbox, then the
//!    ack; the reports go to the producer's reply queue (confirmed) in the background, and
//!    the producer, still open, applies them. "drain" ends when the worker has recorded every
//!    run, "outcomes" (a rate over the same start) when the producer's store shows them all.
//!
//! ```text
//! cargo run --release --features rabbitmq --example rabbitmq_load -- [N] [P] [ROUNDS]
//! ```
//! N defaults to 20,000, P to 64 and ROUNDS to 3: each round runs the four phases on fresh
//! queues, and the last line gives the medians (the shared disk and CPU make single runs
//! noisy). `FQ_RABBITMQ_URL` overrides the server
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`). Queues are deleted afterwards.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fq::{BrokerKind, Config, Engine, Registry, TaskContext, TaskError, TaskId};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Unconfirmed messages the raw publisher allows, as the bridge's forwarder does.
const WINDOW: usize = 1024;

fn url() -> String {
    std::env::var("FQ_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn queue_arguments(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-priority".into(), AMQPValue::LongInt(10));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("tasks.dead")),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(format!("{queue}.dead").as_str())),
    );
    arguments
}

/// A message like the bridge's: the documented JSON body, persistent, with fq's headers.
fn raw_message(n: u64) -> BoxResult<(Vec<u8>, BasicProperties)> {
    let id = TaskId::new();
    let body = serde_json::to_vec(&json!({
        "task_id": id.to_string(),
        "name": "load.noop",
        "payload": {"args": [], "kwargs": {"n": n}},
    }))?;
    let mut headers = FieldTable::default();
    for (key, value) in [("attempt", 1), ("max_retries", 3), ("priority", 0)] {
        headers.insert(key.into(), AMQPValue::LongLongInt(value));
    }
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_message_id(id.to_string().into())
        .with_headers(headers);
    Ok((body, properties))
}

async fn next_delivery(
    consumer: &mut lapin::Consumer,
) -> Option<lapin::Result<lapin::message::Delivery>> {
    std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut *consumer), cx)
    })
    .await
}

/// Raw lapin: publish `n` with pipelined confirms, then consume them with acks.
async fn raw(queue: &str, n: u64, prefetch: u16) -> BoxResult<(Duration, Duration)> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            "tasks".into(),
            ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), durable, queue_arguments(queue))
        .await?;
    channel
        .queue_bind(
            queue.into(),
            "tasks".into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let started = Instant::now();
    let mut unconfirmed = VecDeque::with_capacity(WINDOW);
    for i in 0..n {
        let (body, properties) = raw_message(i)?;
        let confirm = channel
            .basic_publish(
                "tasks".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await?;
        unconfirmed.push_back(confirm);
        if unconfirmed.len() >= WINDOW
            && let Some(oldest) = unconfirmed.pop_front()
        {
            assert!(oldest.await?.is_ack(), "nacked");
        }
    }
    for confirm in unconfirmed {
        assert!(confirm.await?.is_ack(), "nacked");
    }
    let publish = started.elapsed();

    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut consumed = 0;
    while consumed < n {
        let Some(delivery) = next_delivery(&mut consumer).await else {
            return Err("the consumer stopped".into());
        };
        delivery?.ack(BasicAckOptions::default()).await?;
        consumed += 1;
    }
    let consume = started.elapsed();
    let _ = conn.close(200, "done".into()).await;
    Ok((publish, consume))
}

fn config(dir: &Path, queue: &str, url: String, prefetch: u16) -> Config {
    let mut config = Config {
        broker: BrokerKind::Rabbitmq,
        database: dir.join("fq.redb"),
        ..Config::default()
    };
    config.rabbitmq.url = Some(url);
    config.defaults.queue = queue.to_owned();
    config.worker.queues = vec![queue.to_owned()];
    config.worker.concurrency = usize::from(prefetch);
    config
}

fn open(config: Config) -> fq::Result<Engine> {
    Engine::builder(config.database.clone())
        .config(config)
        .control(false)
        .open()
}

/// Opens, retrying while the previous engine on the store is still closing.
async fn reopen(config: Config) -> fq::Result<Engine> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(config.clone()) {
            Err(fq::Error::Store(
                fq::StoreError::Locked { .. } | fq::StoreError::OpenInThisProcess { .. },
            )) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// The bridge: forward `n` tasks from a filled outbox, then drain them with an fq worker.
async fn bridge(queue: &str, n: u64, prefetch: u16) -> BoxResult<(Duration, Duration, Duration)> {
    let producer_dir = tempfile::tempdir()?;
    // Fill the outbox with RabbitMQ out of reach, so forwarding starts from a full outbox.
    let offline = open(config(
        producer_dir.path(),
        queue,
        "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
        prefetch,
    ))?;
    let mut next = 0;
    while next < n {
        let end = (next + 1000).min(n);
        let batch: Vec<_> = (next..end)
            .map(|i| offline.queue_task_named("load.noop", &json!({"kwargs": {"n": i}})))
            .collect();
        offline.queue_batch(batch).await?;
        next = end;
    }
    drop(offline);

    // Watched through one plain channel: RabbitMQ's own count of the queue, cheap to ask.
    let watcher = Connection::connect(&url(), ConnectionProperties::default()).await?;
    let mut watch = watcher.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let producer = reopen(config(producer_dir.path(), queue, url(), prefetch)).await?;
    let started = Instant::now();
    loop {
        let depth = match watch
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(found) => u64::from(found.message_count()),
            Err(_) => {
                // Not declared yet: the failed passive declaration closed the channel.
                watch = watcher.create_channel().await?;
                0
            }
        };
        if depth >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let forward = started.elapsed();
    let _ = watcher.close(200, "done".into()).await;
    // Every confirmed task is marked FORWARDED in the outbox right after its confirm.
    loop {
        let stats = producer.stats().await?;
        if stats.queues.get(queue).map_or(0, |q| q.forwarded) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let worker_dir = tempfile::tempdir()?;
    let worker_engine = open(config(worker_dir.path(), queue, url(), prefetch))?;
    // Connected before the clock starts, as the raw consumer's connection is.
    worker_engine.ready(Duration::from_secs(10)).await?;
    let ran = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::new();
    let counter = Arc::clone(&ran);
    registry.register_async("load.noop", move |_: Value, _ctx: TaskContext| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            Ok::<_, TaskError>(Value::Null)
        }
    });
    let mut worker = worker_engine.worker(registry);
    worker
        .set_concurrent_tasks(usize::from(prefetch))
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let started = Instant::now();
    let running = tokio::spawn(async move { worker.start().await });
    while ran.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Until the last runs are recorded (and so acked): the same end point as raw consuming.
    completed(&worker_engine, queue, n).await?;
    let drain = started.elapsed();
    // Until every outcome has reached the producer's store (reports leave the worker's
    // report outbox in the background, after the acks).
    completed(&producer, queue, n).await?;
    let reported = started.elapsed();
    stop.shutdown();
    running.await??;
    Ok((forward, drain, reported))
}

/// Waits until `engine`'s store shows `n` tasks of `queue` COMPLETED.
async fn completed(engine: &Engine, queue: &str, n: u64) -> BoxResult<()> {
    loop {
        let stats = engine.stats().await?;
        if stats.queues.get(queue).map_or(0, |q| q.completed) >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn delete_queues(queues: &[&str]) -> BoxResult<()> {
    let conn = Connection::connect(&url(), ConnectionProperties::default()).await?;
    for queue in queues {
        for name in [(*queue).to_owned(), format!("{queue}.dead")] {
            let channel = conn.create_channel().await?;
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> BoxResult<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let prefetch: u16 = args.next().map_or(Ok(64), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    println!(
        "{n} persistent messages per phase, publish window {WINDOW}, prefetch/concurrency \
         {prefetch}, {rounds} rounds (raw, then bridge, in each)"
    );
    println!(
        "{:>5} {:>12} {:>12} {:>6} {:>12} {:>12} {:>6} {:>12}",
        "round", "raw publish", "forwarding", "ratio", "raw consume", "drain", "ratio", "outcomes"
    );
    let mut results = Vec::new();
    for round in 1..=rounds {
        let tag = &TaskId::new().to_string()[24..];
        let raw_queue = format!("fqload.raw.{tag}");
        let bridge_queue = format!("fqload.bridge.{tag}");
        let outcome = async {
            let (publish, consume) = raw(&raw_queue, n, prefetch)
                .await
                .map_err(|e| format!("raw lapin: {e}"))?;
            let (forward, drain, reported) = bridge(&bridge_queue, n, prefetch)
                .await
                .map_err(|e| format!("bridge: {e}"))?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                publish, consume, forward, drain, reported,
            ))
        }
        .await;
        delete_queues(&[&raw_queue, &bridge_queue]).await?;
        let (publish, consume, forward, drain, reported) = outcome?;
        let rates = [
            rate(n, publish),
            rate(n, forward),
            rate(n, consume),
            rate(n, drain),
            rate(n, reported),
        ];
        println!(
            "{round:>5} {:>10.0}/s {:>10.0}/s {:>5.0}% {:>10.0}/s {:>10.0}/s {:>5.0}% {:>10.0}/s",
            rates[0],
            rates[1],
            100.0 * rates[1] / rates[0],
            rates[2],
            rates[3],
            100.0 * rates[3] / rates[2],
            rates[4]
        );
        results.push(rates);
    }
    let column = |i: usize| median(results.iter().map(|r| r[i]).collect());
    let (publish, forward, consume, drain, reported) =
        (column(0), column(1), column(2), column(3), column(4));
    println!(
        "{:>5} {publish:>10.0}/s {forward:>10.0}/s {:>5.0}% {consume:>10.0}/s {drain:>10.0}/s \
         {:>5.0}% {reported:>10.0}/s",
        "median",
        100.0 * forward / publish,
        100.0 * drain / consume
    );
    Ok(())
}
