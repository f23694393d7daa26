//! Per-queue concurrency and rate limits (issue 12 §3): a concurrency limit holds across local
//! and remote workers, a rate limit spaces starts exactly (manual clock), held tasks stay
//! PENDING and waiting claims are woken by a settlement or sleep until the next free start,
//! and bad limits are refused naming the field and the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fq::{
    Config, Engine, Outcome, QueueLimits, Rate, Registry, Settlement, TaskContext, TaskError,
    TaskStatus,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{self, PATIENCE};

/// Tasks of `test.tracked` running now, and the most seen at once.
#[derive(Default)]
struct Tracker {
    now: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
}

fn tracked(tracker: &Arc<Tracker>) -> Registry {
    let tracker = Arc::clone(tracker);
    let mut registry = Registry::new();
    registry.register_async("test.tracked", move |_args: Value, _ctx: TaskContext| {
        let tracker = Arc::clone(&tracker);
        async move {
            let running = tracker.now.fetch_add(1, Ordering::SeqCst) + 1;
            tracker.most.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_micros(500)).await;
            tracker.now.fetch_sub(1, Ordering::SeqCst);
            tracker.done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(json!(null))
        }
    });
    registry
}

fn origin() -> &'static std::path::Path {
    std::path::Path::new("fq.toml")
}

async fn queue_n(engine: &Engine, queue: &str, n: usize) {
    let tasks = (0..n).map(|_| {
        engine
            .queue_task_named("test.tracked", &json!({}))
            .queue(queue)
    });
    engine.queue_batch(tasks).await.unwrap();
}

fn concurrency(limit: u32) -> QueueLimits {
    QueueLimits {
        concurrency: Some(limit),
        rate: None,
    }
}

fn rate(text: &str) -> QueueLimits {
    QueueLimits {
        concurrency: None,
        rate: Some(text.parse().unwrap()),
    }
}

async fn claim(engine: &Engine, queue: &str, max: usize, wait: Duration) -> Vec<fq::TaskRecord> {
    let queues = [Arc::<str>::from(queue)];
    engine
        .broker()
        .claim(fq::ClaimRequest::new(
            &queues,
            max,
            wait,
            &CancellationToken::new(),
        ))
        .await
        .unwrap()
}

/// A concurrency limit of 2 over three workers of 4 slots each (two local, one remote through
/// the control socket) is never exceeded across 1,000 tasks, and is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_local_and_remote_workers() {
    const TASKS: usize = 1_000;
    let (_dir, engine, remote) = common::engine_and_remote().await;
    remote
        .set_queue_limits("emails", concurrency(2))
        .await
        .unwrap();
    assert_eq!(
        engine.stats().await.unwrap().queues["emails"].limits,
        concurrency(2)
    );
    queue_n(&engine, "emails", TASKS).await;
    let tracker = Arc::new(Tracker::default());
    let workers = [
        common::start_worker(&engine, tracked(&tracker), &["emails"], 4),
        common::start_worker(&engine, tracked(&tracker), &["emails"], 4),
        common::start_worker(&remote, tracked(&tracker), &["emails"], 4),
    ];
    common::eventually(
        "every task to run",
        Duration::from_secs(120),
        Duration::from_millis(20),
        || {
            let tracker = Arc::clone(&tracker);
            async move { tracker.done.load(Ordering::SeqCst) == TASKS }
        },
    )
    .await;
    for worker in workers {
        worker.stop().await;
    }
    let most = tracker.most.load(Ordering::SeqCst);
    assert_eq!(most, 2, "at most 2 tasks of the queue may run at once");
    let stats = engine.stats().await.unwrap();
    assert_eq!(stats.queues["emails"].completed, TASKS as u64);
}

/// Tasks held by a full queue stay PENDING, and a claim waiting on the queue is woken by the
/// settlement that frees a slot (not by its own timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_claim_is_woken_when_a_run_of_the_queue_ends() {
    let (_dir, engine) = common::engine();
    engine
        .set_queue_limits("emails", concurrency(1))
        .await
        .unwrap();
    queue_n(&engine, "emails", 3).await;
    let first = claim(&engine, "emails", 10, Duration::ZERO).await;
    assert_eq!(first.len(), 1, "one slot");
    assert!(
        claim(&engine, "emails", 10, Duration::from_millis(200))
            .await
            .is_empty()
    );
    let stats = engine.stats().await.unwrap();
    assert_eq!(
        (
            stats.queues["emails"].pending,
            stats.queues["emails"].running
        ),
        (2, 1)
    );

    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move { claim(&engine, "emails", 10, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine
        .broker()
        .settle(Settlement {
            id: first[0].id,
            attempt: first[0].attempts,
            outcome: Outcome::Completed {
                result: json!(null),
            },
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the settlement wakes the waiting claim")
        .unwrap();
    assert_eq!(next.len(), 1, "still one slot");
    assert_eq!(next[0].status, TaskStatus::Running);

    // Removing the limit frees the last one.
    engine
        .set_queue_limits("emails", QueueLimits::default())
        .await
        .unwrap();
    assert_eq!(claim(&engine, "emails", 10, Duration::ZERO).await.len(), 1);
}

/// A 20/s rate limit on a manual clock: over 60 s, exactly 20 starts in each second and 1,200
/// in all, spaced 50 ms apart, whatever the claims ask for.
#[tokio::test]
async fn a_rate_limit_gives_the_exact_count_per_window_on_a_manual_clock() {
    let (_dir, engine, clock) = common::manual_engine();
    engine.set_queue_limits("api", rate("20/s")).await.unwrap();
    queue_n(&engine, "api", 1_500).await;
    let mut per_second = vec![0usize; 60];
    let mut starts = Vec::new();
    for step in 0..6_000u32 {
        let claimed = claim(&engine, "api", 100, Duration::ZERO).await;
        for _ in &claimed {
            starts.push(step * 10);
        }
        per_second[(step / 100) as usize] += claimed.len();
        clock.advance(Duration::from_millis(10));
    }
    assert_eq!(starts.len(), 1_200);
    assert!(per_second.iter().all(|&n| n == 20), "{per_second:?}");
    assert!(
        starts.windows(2).all(|pair| pair[1] - pair[0] == 50),
        "starts are evenly spaced"
    );
    let stats = engine.stats().await.unwrap();
    assert_eq!(stats.queues["api"].pending, 300, "held tasks stay PENDING");
}

/// A claim that finds only rate-held tasks sleeps until the next free start (by the system
/// clock here), instead of returning empty or spinning.
#[tokio::test]
async fn a_rate_held_claim_sleeps_until_the_next_free_start() {
    let (_dir, engine) = common::engine();
    engine.set_queue_limits("api", rate("4/s")).await.unwrap();
    queue_n(&engine, "api", 3).await;
    assert_eq!(claim(&engine, "api", 10, Duration::ZERO).await.len(), 1);
    let asked = std::time::Instant::now();
    let second = claim(&engine, "api", 10, Duration::from_secs(10)).await;
    let waited = asked.elapsed();
    assert_eq!(second.len(), 1);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "waited {waited:?} for a start free 250 ms after the first"
    );
}

/// Bad limits are refused naming the field and the reason: in fq.toml, in services.yaml, and
/// through the API (local and remote).
#[tokio::test]
async fn bad_limits_are_refused_with_the_field_and_the_reason() {
    for (section, key, reason) in [
        (
            "concurrency = 0",
            "queues.emails.concurrency",
            "must be 1 to",
        ),
        ("rate = \"0/s\"", "queues.emails.rate", "must be 1 to"),
        (
            "rate = \"x\"",
            "queues.emails.rate",
            "expected STARTS/PERIOD",
        ),
        (
            "rate = \"5/0s\"",
            "queues.emails.rate",
            "the period must be",
        ),
    ] {
        let text = format!("[queues.emails]\n{section}\n");
        let error = Config::from_toml_str(&text, origin())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(key) && error.contains(reason),
            "{section}: {error}"
        );
    }
    let error = Config::from_toml_str("[queues.emails]\nconcurency = 2\n", origin())
        .unwrap_err()
        .to_string();
    assert!(error.contains("concurrency"), "a suggestion: {error}");
    let error = Config::from_toml_str("[queues.\"bad queue\"]\nconcurrency = 2\n", origin())
        .unwrap_err()
        .to_string();
    assert!(error.contains("queues.bad queue"), "{error}");

    let yaml = "task:\n  queues:\n    emails:\n      concurrency: 2\n      rate: 100/1m\n";
    let config = Config::from_yaml_str(yaml, origin()).unwrap();
    let limits = config.queues["emails"].limits().unwrap();
    assert_eq!(limits.concurrency, Some(2));
    let rate: Rate = "100/1m".parse().unwrap();
    assert_eq!(limits.rate, Some(rate));
    let error = Config::from_yaml_str("task:\n  queues:\n    emails:\n      rate: x\n", origin())
        .unwrap_err()
        .to_string();
    assert!(error.contains("queues.emails.rate"), "{error}");

    let (_dir, engine, remote) = common::engine_and_remote().await;
    for handle in [&engine, &remote] {
        let error = handle
            .set_queue_limits("emails", concurrency(0))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, fq::Error::InvalidInput { field: "concurrency", message }
                if message.contains("must be 1 to")),
            "{error}"
        );
        let error = handle
            .set_queue_limits("bad queue!", concurrency(1))
            .await
            .unwrap_err();
        assert!(
            matches!(error, fq::Error::InvalidInput { field: "queue", .. }),
            "{error}"
        );
    }
}

/// `[queues.<name>]` in the config sets the limits at open.
#[tokio::test]
async fn limits_from_the_config_apply_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[queues.emails]\nconcurrency = 1\nrate = \"50/s\"\n";
    let config = Config::from_toml_str(text, origin()).unwrap();
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .config(config)
        .open()
        .unwrap();
    let limits = engine.stats().await.unwrap().queues["emails"].limits;
    assert_eq!(limits.concurrency, Some(1));
    assert_eq!(limits.rate, Some("50/s".parse().unwrap()));
    queue_n(&engine, "emails", 3).await;
    assert_eq!(claim(&engine, "emails", 10, Duration::ZERO).await.len(), 1);
    let _ = PATIENCE;
}

/// The README's real-time figure for a 20/s rate limit: two local workers of 4 slots on a
/// queue limited to 20/s, the starts counted over `FQ_RATE_SECS` seconds (2 unless set) from
/// the first one. Printed, not asserted (timing on a shared machine is not a test's business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_in_real_time_prints_its_figure() {
    let seconds: u64 = std::env::var("FQ_RATE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let (_dir, engine) = common::engine();
    engine.set_queue_limits("api", rate("20/s")).await.unwrap();
    queue_n(&engine, "api", 20 * seconds as usize + 100).await;
    let tracker = Arc::new(Tracker::default());
    let workers = [
        common::start_worker(&engine, tracked(&tracker), &["api"], 4),
        common::start_worker(&engine, tracked(&tracker), &["api"], 4),
    ];
    common::eventually(
        "the first start",
        PATIENCE,
        Duration::from_millis(1),
        || {
            let tracker = Arc::clone(&tracker);
            async move { tracker.done.load(Ordering::SeqCst) > 0 }
        },
    )
    .await;
    let first = tracker.done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let started = tracker.done.load(Ordering::SeqCst) - first + 1;
    let per_second = started as f64 / seconds as f64;
    println!(
        "20/s rate limit, real time: {started} starts in {seconds} s = {per_second:.2}/s \
         ({:+.1}% of the limit)",
        (per_second / 20.0 - 1.0) * 100.0
    );
    for worker in workers {
        worker.stop().await;
    }
}
