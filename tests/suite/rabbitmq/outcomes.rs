//! Issue 11 §3: in RabbitMQ mode the producer's store learns each forwarded task's start and
//! outcome over RabbitMQ (its reply queue), so `engine.task`, `fq show` and `fq list` answer
//! as with `broker: database`. Through RabbitMQ restarts and SIGKILLs of the broker process
//! (`FQ_FULL=1`: 100,000 tasks, ten restarts, five kills; otherwise 10,000 tasks, one of
//! each), for failing tasks, in both broker modes side by side, and the negative control: a
//! message without `reply_to` leaves the producer's record FORWARDED.
#![allow(clippy::unwrap_used)]

use super::*;

use fq::BrokerKind;

/// True for the full-size run (`FQ_FULL=1`).
fn full() -> bool {
    std::env::var("FQ_FULL").as_deref() == Ok("1")
}

/// SIGKILLs the RabbitMQ server process (its pid as `rabbitmqctl eval 'os:getpid().'` gives
/// it), starts the server again (`rabbitmq-server -detached`) and waits until it accepts
/// connections.
async fn kill_rabbitmq() {
    tokio::task::spawn_blocking(|| {
        let output = Command::new("rabbitmqctl")
            .args(["eval", "os:getpid()."])
            .output()
            .expect("rabbitmqctl runs");
        let pid = String::from_utf8_lossy(&output.stdout)
            .trim()
            .trim_matches('"')
            .to_owned();
        assert!(
            !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()),
            "no broker pid from rabbitmqctl: {pid:?}"
        );
        let killed = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -KILL {pid} failed");
        let addr: SocketAddr = ([127, 0, 0, 1], 5672).into();
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server runs");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("kill and restart");
}

/// The producer's records of `ids`, waiting until none is left FORWARDED, RUNNING or
/// RETRYING (every outcome has arrived) or [`PATIENCE`] passes without progress.
async fn settled_records(producer: &Engine, ids: &[TaskId]) -> Vec<fq::TaskRecord> {
    let open = |status: TaskStatus| {
        matches!(
            status,
            TaskStatus::Forwarded
                | TaskStatus::Running
                | TaskStatus::Retrying
                | TaskStatus::Pending
        )
    };
    let mut last_open = usize::MAX;
    let mut since = Instant::now();
    loop {
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            records.push(
                producer
                    .task(*id)
                    .await
                    .unwrap()
                    .expect("the producer keeps it"),
            );
        }
        let still = records.iter().filter(|r| open(r.status)).count();
        if still == 0 {
            return records;
        }
        if still < last_open {
            last_open = still;
            since = Instant::now();
        }
        if since.elapsed() > PATIENCE {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every task ends COMPLETED with its result in the producer's store, through RabbitMQ
/// restarts and SIGKILLs of the broker process in the middle of the run. Duplicate runs
/// (at-least-once) are counted and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_the_producer_through_restarts_and_kills() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::exclusive("outcomes").await else {
        return Ok(());
    };
    let (n, restarts, kills) = if full() {
        (100_000, 10, 5)
    } else {
        (10_000, 1, 1)
    };
    through_outages(&rabbit, n, restarts, kills).await
}

/// `n` tasks from a producer to a worker (separate stores, 32 slots) through `restarts`
/// RabbitMQ restarts and `kills` SIGKILLs of the broker process, spread over the run: none is
/// lost, and each ends COMPLETED with its result in the producer's store.
pub(super) async fn through_outages(
    rabbit: &Rabbit,
    n: u64,
    restarts: u64,
    kills: u64,
) -> fq::Result<()> {
    let started = Instant::now();
    let queue = rabbit.queue.clone();
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit_config(producer_dir.path(), &queue, 32))?;
    let worker_dir = tempfile::tempdir().unwrap();
    let worker_engine = open(rabbit_config(worker_dir.path(), &queue, 32))?;
    producer.ready(PATIENCE).await?;
    worker_engine.ready(PATIENCE).await?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&queue],
        32,
    );
    let ids = queue_many(&producer, n).await?;
    let outages = restarts + kills;
    let (mut restarted, mut killed) = (0, 0);
    for outage in 1..=outages {
        let at = n * outage / (outages + 1);
        eventually("the run to progress", || async {
            runs.lock().unwrap().len() as u64 >= at
        })
        .await;
        // Kills spread among the restarts: every other outage while kills remain.
        let kill = killed < kills && (outage % 2 == 0 || restarted == restarts);
        if kill {
            kill_rabbitmq().await;
            killed += 1;
        } else {
            restart_rabbitmq().await;
            restarted += 1;
        }
        println!(
            "{} RabbitMQ after {} runs",
            if kill {
                "SIGKILLed and restarted"
            } else {
                "restarted"
            },
            runs.lock().unwrap().len()
        );
    }
    assert_eq!((restarted, killed), (restarts, kills));
    let records = settled_records(&producer, &ids).await;
    worker.stop().await;
    let runs = runs.lock().unwrap().clone();
    let counts = run_counts(&runs);
    let duplicates: usize = counts.values().map(|c| c.saturating_sub(1)).sum();
    let never_ran = ids.iter().filter(|id| !counts.contains_key(id)).count();
    let mut wrong = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let expected = json!(i);
        if record.status != TaskStatus::Completed || record.result.as_ref() != Some(&expected) {
            wrong.push((record.id, record.status, record.result.clone()));
        }
    }
    println!(
        "{n} tasks, {restarts} RabbitMQ restarts and {kills} SIGKILLs: {} runs, {duplicates} duplicate runs, {never_ran} never ran, {} COMPLETED with their result in the producer's store, {} not, in {:.1} s",
        runs.len(),
        records.len() - wrong.len(),
        wrong.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(never_ran, 0, "tasks lost");
    assert!(
        wrong.is_empty(),
        "{} tasks without their outcome in the producer's store, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let stats = producer.stats().await?;
    assert_eq!(stats.queues[&queue].completed, n);
    assert_eq!(stats.queues[&queue].forwarded, 0);
    assert!(producer.check_integrity().await?.problems.is_empty());
    Ok(())
}

/// A registry with `test.ok` (returns its `n`), `test.flaky` (fails its first run) and
/// `test.fail` (always fails).
fn outcome_registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.ok", |work: Work, _ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({"n": work.n}))
    });
    registry.register_async("test.flaky", |work: Work, ctx: TaskContext| async move {
        if ctx.attempt() == 1 {
            return Err(TaskError::new("first run fails"));
        }
        Ok(json!({"n": work.n, "attempt": ctx.attempt()}))
    });
    registry.register_async("test.fail", |work: Work, _ctx: TaskContext| async move {
        Err::<Value, _>(TaskError::new(format!("task {} always fails", work.n)))
    });
    registry
}

/// The workload both modes run: (name, n, max_retries).
const WORKLOAD: [(&str, u64, u32); 4] = [
    ("test.ok", 1, 3),
    ("test.ok", 2, 3),
    ("test.flaky", 3, 3),
    ("test.fail", 4, 1),
];

async fn queue_workload(engine: &Engine) -> fq::Result<Vec<TaskId>> {
    let mut ids = Vec::new();
    for (name, n, max_retries) in WORKLOAD {
        ids.push(
            engine
                .queue_task_named(name, &json!({"kwargs": {"n": n}}))
                .max_retries(max_retries)
                .send()
                .await?,
        );
    }
    Ok(ids)
}

/// A record as both modes must agree on it: everything but ids and times.
fn comparable(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        for key in [
            "id",
            "created_at",
            "scheduled_at",
            "due_at",
            "started_at",
            "finished_at",
        ] {
            object.remove(key);
        }
        // Each run's number, outcome and error must match; its times and worker cannot (a
        // worker over RabbitMQ is not named to the producer).
        if let Some(Value::Array(history)) = object.get_mut("history") {
            for attempt in history.iter_mut().filter_map(Value::as_object_mut) {
                for key in ["started_at", "finished_at", "duration_ms", "worker"] {
                    attempt.remove(key);
                }
            }
        }
    }
    value
}

/// `fq --db <store> ARGS --json`, run where no configuration file is found, parsed.
fn fq_json(store: &Path, args: &[&str]) -> Value {
    let output = common::child::fq()
        .arg("--db")
        .arg(store)
        .args(args)
        .arg("--json")
        .current_dir(store.parent().unwrap())
        .output()
        .expect("fq runs");
    assert!(
        output.status.success(),
        "fq {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("fq --json prints JSON")
}

/// One workload in `broker: database` and in `broker: rabbitmq` (producer and worker on
/// separate stores): `engine.task`, `fq show` and `fq list --status completed` answer the same
/// on the producer's store, FAILED with its error included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_broker_modes_answer_the_same() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("modes").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    // broker: database, one engine that also works.
    let database_dir = tempfile::tempdir().unwrap();
    let mut database_config = rabbit_config(database_dir.path(), &queue, 4);
    database_config.broker = BrokerKind::Database;
    let database = open(database_config)?;
    let worker = common::start_worker(&database, outcome_registry(), &[&queue], 4);
    let database_ids = queue_workload(&database).await?;
    let database_records = settled_records(&database, &database_ids).await;
    worker.stop().await;

    // broker: rabbitmq, a producer and a worker on their own stores.
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit_config(producer_dir.path(), &queue, 4))?;
    let worker_dir = tempfile::tempdir().unwrap();
    let worker_engine = open(rabbit_config(worker_dir.path(), &queue, 4))?;
    producer.ready(PATIENCE).await?;
    let mut failures = producer.events().subscribe();
    let worker = common::start_worker(&worker_engine, outcome_registry(), &[&queue], 4);
    let rabbit_ids = queue_workload(&producer).await?;
    let rabbit_records = settled_records(&producer, &rabbit_ids).await;
    // The producer emits the lifecycle events on its side too.
    let failed =
        common::next_event(&mut failures, "task.failed", |e| e.task.id == rabbit_ids[3]).await;
    assert_eq!(failed.task.status, TaskStatus::Failed);
    worker.stop().await;

    for (database, rabbit) in database_records.iter().zip(&rabbit_records) {
        assert_eq!(
            comparable(&serde_json::to_value(database).unwrap()),
            comparable(&serde_json::to_value(rabbit).unwrap()),
            "engine.task differs between the broker modes"
        );
    }
    let statuses: Vec<_> = rabbit_records.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Completed,
            TaskStatus::Completed,
            TaskStatus::Completed,
            TaskStatus::Failed
        ]
    );
    assert_eq!(rabbit_records[2].attempts, 2, "the flaky task ran twice");
    let error = rabbit_records[3]
        .error
        .clone()
        .expect("FAILED keeps its error");
    assert_eq!(error.message, "task 4 always fails");
    assert_eq!(rabbit_records[3].attempts, 2);
    // The worker's own store names the worker that ran each run it recorded.
    let report = worker_engine.workers().await?;
    let ran_here: Vec<_> = report.gone.iter().map(|gone| gone.info.id).collect();
    assert_eq!(ran_here.len(), 1, "one worker, stopped: {report:?}");
    for id in &rabbit_ids {
        let history = worker_engine.attempts(*id).await?;
        assert!(
            !history.is_empty(),
            "task {id} has no history in the worker's store"
        );
        for run in &history {
            assert_eq!(run.worker, Some(ran_here[0]), "run {} of {id}", run.attempt);
        }
    }

    // The CLI on each store, once its engine is closed.
    let database_store = database_dir.path().join("fq.redb");
    let producer_store = producer_dir.path().join("fq.redb");
    drop((database, producer, worker_engine));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (database_id, rabbit_id) in database_ids.iter().zip(&rabbit_ids) {
        let shown_database = fq_json(&database_store, &["show", &database_id.to_string()]);
        let shown_rabbit = fq_json(&producer_store, &["show", &rabbit_id.to_string()]);
        assert_eq!(
            comparable(&shown_database),
            comparable(&shown_rabbit),
            "fq show differs"
        );
    }
    let listed = |store: &Path| -> Vec<Value> {
        let mut list: Vec<Value> = fq_json(store, &["list", "--status", "completed"])
            .as_array()
            .expect("an array")
            .iter()
            .map(comparable)
            .collect();
        list.sort_by_key(|record| record["payload"].to_string());
        list
    };
    let listed_database = listed(&database_store);
    assert_eq!(listed_database.len(), 3);
    assert_eq!(listed_database, listed(&producer_store), "fq list differs");
    Ok(())
}

/// The negative control: the same forwarded message, republished by a plain client without
/// `reply_to`, runs on the worker, but the producer hears nothing: its record stays FORWARDED,
/// while a task whose message names the reply queue ends COMPLETED there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reply_to_the_producer_keeps_forwarded() -> fq::Result<()> {
    let Some(rabbit) = Rabbit::shared("noreply").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit_config(producer_dir.path(), &queue, 2))?;
    producer.ready(PATIENCE).await?;
    let silent = producer
        .queue_task_named("test.work", &json!({"kwargs": {"n": 1}}))
        .send()
        .await?;
    // Taken off the queue by a plain client and published again without `reply_to`.
    let message = get_one(&queue).await.expect("the forwarded message");
    let reply_to = message
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|q| q.to_string())
        .expect("fq names where to report");
    assert!(reply_to.starts_with("fq.replies."), "{reply_to}");
    let mut properties = message.delivery.properties.clone();
    properties = properties.with_reply_to("".into());
    publish_plain(&queue, &message.delivery.data, properties).await;

    let worker_dir = tempfile::tempdir().unwrap();
    let worker_engine = open(rabbit_config(worker_dir.path(), &queue, 2))?;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&queue],
        2,
    );
    let reported = producer
        .queue_task_named("test.work", &json!({"kwargs": {"n": 2}}))
        .send()
        .await?;
    eventually_status(
        &producer,
        reported,
        TaskStatus::Completed,
        "the reported task to be COMPLETED in the producer's store",
    )
    .await;
    eventually_status(
        &worker_engine,
        silent,
        TaskStatus::Completed,
        "the silent task to run",
    )
    .await;
    // Room for a report that should not come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.stop().await;
    assert_eq!(
        producer.task(silent).await?.unwrap().status,
        TaskStatus::Forwarded,
        "no reply_to, no report"
    );
    assert_eq!(
        producer.task(reported).await?.unwrap().result,
        Some(json!(2))
    );
    Ok(())
}

/// A RabbitMQ policy that refuses (nacks) every publish to a reply queue while it is set;
/// cleared when dropped, even when the test fails.
struct RefusedReplies;

impl RefusedReplies {
    const NAME: &'static str = "fq-test-refuse-replies";

    fn set() -> Self {
        let status = Command::new("rabbitmqctl")
            .args([
                "set_policy",
                "--apply-to",
                "queues",
                Self::NAME,
                r"^fq\.replies\.",
                r#"{"max-length":0,"overflow":"reject-publish"}"#,
            ])
            .stdout(Stdio::null())
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl set_policy failed");
        Self
    }
}

impl Drop for RefusedReplies {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["clear_policy", Self::NAME])
            .stdout(Stdio::null())
            .status();
    }
}

/// The worker keeps each run's outcome in its store's report outbox and acknowledges the
/// delivery without waiting for the report's confirm: while RabbitMQ refuses every report,
/// each task still runs exactly once; the reports wait in the outbox through the worker's
/// close, and its next open sends them, so the producer ends with every outcome. (Before the
/// outbox, a refused report left the delivery unacknowledged and the task ran again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reports_wait_in_the_outbox_and_are_sent_after_a_reopen() -> fq::Result<()> {
    // Exclusive: the policy refuses the reports of every store while it is set.
    let Some(rabbit) = Rabbit::exclusive("outbox").await else {
        return Ok(());
    };
    let queue = rabbit.queue.clone();
    let producer_dir = tempfile::tempdir().unwrap();
    let producer = open(rabbit_config(producer_dir.path(), &queue, 8))?;
    let worker_dir = tempfile::tempdir().unwrap();
    let worker_config = rabbit_config(worker_dir.path(), &queue, 8);
    let worker_engine = open(worker_config.clone())?;
    producer.ready(PATIENCE).await?;
    worker_engine.ready(PATIENCE).await?;
    let refused = RefusedReplies::set();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = common::start_worker(
        &worker_engine,
        counting_registry(Arc::clone(&runs)),
        &[&queue],
        8,
    );
    let n = 50;
    let ids = queue_many(&producer, n).await?;
    eventually("every task to run", || async {
        runs.lock().unwrap().len() as u64 >= n
    })
    .await;
    // Long enough for redeliveries, had the deliveries gone back unacknowledged.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.stop().await;
    drop(worker_engine);
    for id in &ids {
        let record = producer.task(*id).await?.expect("the producer keeps it");
        assert_ne!(
            record.status,
            TaskStatus::Completed,
            "a report got through the refusing policy"
        );
    }
    drop(refused);
    let reopened = open(worker_config)?;
    let records = settled_records(&producer, &ids).await;
    let counts = run_counts(&runs.lock().unwrap());
    assert_eq!(counts.len(), ids.len(), "every task ran");
    assert!(
        counts.values().all(|runs| *runs == 1),
        "a task ran more than once: {:?}",
        counts.values().filter(|runs| **runs > 1).count()
    );
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.status, TaskStatus::Completed, "{record:?}");
        assert_eq!(record.result, Some(json!(i)));
    }
    drop(reopened);
    Ok(())
}
