//! Leases and poison tasks (issue 6, item 8), with remote workers in child processes (this
//! test binary run again with `FQ_POISON_CHILD` set, filtered to `poison::child_process`):
//!
//! - the orphans of a SIGKILLed remote worker are ready again without waiting out a retry delay
//!   (how soon, against lease + sweep interval + 1 s, is printed), and the dead worker's late
//!   completion and heartbeat are rejected (fenced);
//! - a long task that heartbeats is never rescued, locally or remotely, even with other
//!   workers idle on its queue;
//! - a task that panics, one that aborts its worker process (`std::process::abort()`) and one
//!   that SIGKILLs its own process each end FAILED after exactly max_retries + 1 attempts,
//!   while every healthy task completes and none fails. How much of its throughput the healthy
//!   queue keeps is printed, not asserted (machine load moves it): it is measured as an A/B
//!   comparison, two identical lanes (a server process and four supervised worker processes
//!   each) side by side, lane A gets the poisons, lane B is the control, so that the machine's
//!   other load weighs on both alike (both rates are printed). The recovery gap after each
//!   poison window (lease + sweep) is in no window, so it counts for neither lane.
//!
//! Worker children run with `RUST_BACKTRACE=0` whatever the test's environment says
//! (`FQ_POISON_CHILD_BACKTRACE` overrides): the first symbolized backtrace of a debug test
//! binary costs its process about 100 ms of CPU, a cost of the harness, not of fq.
//!
//! The tests of this file run one at a time (they print time and throughput figures). `FQ_SEED` is
//! printed for the record; `FQ_FULL=1` runs ten poison rounds with 5 s windows instead of
//! three with 4 s; `FQ_POISON_ROUNDS` and `FQ_POISON_WORKERS` set other sizes.
//! `cargo test --test suite -- poison:: --nocapture` shows the figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fq::{
    Engine, Error, FailureKind, Outcome, Registry, Settlement, TaskContext, TaskError, TaskId,
    TaskStatus,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::child::{self, ChildGuard};
use crate::common::effects;
use crate::common::run;
use effects::runs;
use run::{full, seed};

const CHILD: &str = "FQ_POISON_CHILD";
const CHILD_DIR: &str = "FQ_POISON_DIR";
/// How long a test waits for something that should happen before it fails.
const PATIENCE: Duration = Duration::from_secs(60);
/// The timer thread's longest sleep: how late, at worst, it notices an expired lease.
const SWEEP: Duration = Duration::from_secs(1);

/// The tests here measure time and throughput: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

// --- effect logs ----------------------------------------------------------------------------

/// Appends "run <id> <attempt> <pid>" lines, one `write` each, to `effects-<pid>.log`.
fn effect_logger(dir: &Path) -> impl Fn(&TaskContext) + Send + Sync + Clone + 'static {
    let log = effects::logger(dir);
    move |ctx: &TaskContext| {
        log(&format!(
            "run {} {} {}",
            ctx.id(),
            ctx.attempt(),
            std::process::id()
        ));
    }
}

// --- child processes ------------------------------------------------------------------------

/// Runs as a child: a remote worker connected to the test's engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() -> fq::Result<()> {
    let Ok(role) = std::env::var(CHILD) else {
        return Ok(()); // only meaningful as a child of the tests below
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    if role == "server" {
        // Owns a lane's store and serves it, as `fq serve` would.
        let lease =
            env_number("FQ_POISON_LEASE_MS").map_or(Duration::from_secs(1), Duration::from_millis);
        let _engine = Engine::builder(dir.join("fq.redb"))
            .lease_duration(lease)
            .open()?;
        std::future::pending::<()>().await;
    }
    let engine = Engine::connect(&format!("unix:{}", dir.join("fq.redb.sock").display())).await?;
    let log = effect_logger(&dir);
    let mut registry = Registry::new();
    let queues: Vec<&str> = match role.as_str() {
        // Runs whatever it claims forever (heartbeating), until it is killed.
        "hang" => {
            let log = log.clone();
            registry.register_async("poison.hang", move |_: Value, ctx: TaskContext| {
                log(&ctx);
                async { std::future::pending::<Result<(), TaskError>>().await }
            });
            vec!["orphans"]
        }
        // Tasks five leases long, on a queue of their own.
        "long" => {
            let log = log.clone();
            registry.register_async("lease.long", move |args: Value, ctx: TaskContext| {
                log(&ctx);
                let ms = args["ms"].as_u64().unwrap_or(0);
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, TaskError>(json!({"pid": std::process::id()}))
                }
            });
            vec!["long-remote"]
        }
        // Healthy tasks, and the three poisons.
        "mixed" => {
            registry.register_async("healthy.work", |_: Value, _ctx: TaskContext| async {
                Ok::<_, TaskError>(Value::Null)
            });
            let panics = log.clone();
            registry.register_async("poison.panic", move |_: Value, ctx: TaskContext| {
                panics(&ctx);
                async {
                    if std::process::id() > 0 {
                        panic!("poison: this task always panics");
                    }
                    Ok::<_, TaskError>(())
                }
            });
            let aborts = log.clone();
            registry.register_async("poison.abort", move |_: Value, ctx: TaskContext| {
                aborts(&ctx);
                async {
                    if std::process::id() > 0 {
                        std::process::abort();
                    }
                    Ok::<_, TaskError>(())
                }
            });
            let kills = log.clone();
            registry.register_async("poison.kill", move |_: Value, ctx: TaskContext| {
                kills(&ctx);
                // SIGKILL to this very process: no unwinding, no goodbye to the engine.
                let _ = Command::new("kill")
                    .args(["-KILL", &std::process::id().to_string()])
                    .status();
                async {
                    std::future::pending::<()>().await;
                    Ok::<_, TaskError>(())
                }
            });
            vec!["poison", "healthy"]
        }
        other => panic!("unknown child role {other}"),
    };
    let mut worker = engine.worker(registry);
    worker
        .set_queues(queues)
        .set_concurrent_tasks(8)
        .set_handle_signals(false)
        .set_polling_interval(Duration::from_millis(200));
    // Heartbeats: a third of the server's lease, learnt at the handshake.
    worker.start().await?;
    Ok(())
}

fn spawn_child(dir: &Path, role: &str) -> ChildGuard {
    let mut command = child::rerun("poison::child_process");
    command
        .env(CHILD, role)
        .env(CHILD_DIR, dir)
        .env("RUST_LOG", "error")
        .env(
            "RUST_BACKTRACE",
            std::env::var("FQ_POISON_CHILD_BACKTRACE").unwrap_or_else(|_| "0".into()),
        );
    child::spawn_logged(command, dir, role)
}

async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    crate::common::eventually(what, PATIENCE, Duration::from_millis(10), check).await;
}

fn queues(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|q| Arc::from(*q)).collect()
}

// --- leases ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_killed_remote_worker_are_ready_again_without_waiting_out_a_retry_delay() {
    let _serial = SERIAL.lock().await;
    let lease = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    // The default retry delay (5 s): an expired lease must not wait it out.
    let retry_delay = fq::Config::default().defaults.retry_delay;
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .lease_duration(lease)
        .open()
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            engine
                .queue_task_named("poison.hang", &json!({"kwargs": {"n": n}}))
                .queue("orphans")
                .send()
                .await
                .unwrap(),
        );
    }
    let mut doomed = spawn_child(dir.path(), "hang");
    let doomed_pid = doomed.0.id();
    wait_until("the remote worker to run all 8", || async {
        runs(dir.path()).len() == 8
    })
    .await;
    // Alive and heartbeating past a whole lease: nothing is rescued from it.
    tokio::time::sleep(lease + lease / 4).await;
    for id in &ids {
        let record = engine.task(*id).await.unwrap().unwrap();
        assert_eq!(
            (record.status, record.attempts),
            (TaskStatus::Running, 1),
            "{id}"
        );
    }

    doomed.kill(); // SIGKILL
    let killed = Instant::now();
    let broker = engine.broker();
    let never = CancellationToken::new();
    let mut reclaimed: HashMap<TaskId, Duration> = HashMap::new();
    while reclaimed.len() < ids.len() {
        assert!(
            killed.elapsed() < PATIENCE,
            "orphans never came back: {reclaimed:?}"
        );
        let claimed = broker
            .claim(fq::ClaimRequest::new(
                &queues(&["orphans"]),
                8,
                Duration::from_millis(20),
                &never,
            ))
            .await
            .unwrap();
        for record in claimed {
            assert_eq!(record.attempts, 2, "{record:?}");
            reclaimed.insert(record.id, killed.elapsed());
        }
    }
    let latest = reclaimed.values().max().copied().unwrap();
    // A figure, not asserted (machine load moves it): how soon after the kill, against the
    // expected lease + sweep + 1 s.
    let expected = lease + SWEEP + Duration::from_secs(1);
    println!(
        "leases: {} orphans of a SIGKILLed remote worker (pid {doomed_pid}) ready again within \
         {latest:.2?} of the kill (expected within lease {lease:?} + sweep {SWEEP:?} + 1 s = \
         {expected:?}; printed, not asserted); seed {}",
        reclaimed.len(),
        seed()
    );
    // The behaviour: the orphans did not wait out a retry delay after their lease expired
    // (that would put them at lease + sweep + retry delay at the earliest).
    assert!(
        latest < lease + retry_delay,
        "orphans came back after {latest:?}: they waited out the {retry_delay:?} retry delay \
         after the {lease:?} lease"
    );
    for id in &ids {
        let record = engine.task(*id).await.unwrap().unwrap();
        assert_eq!((record.status, record.attempts), (TaskStatus::Running, 2));
    }

    // The dead worker's reports, had it lived, are refused: locally and over the socket.
    let remote = Engine::connect(&format!(
        "unix:{}",
        dir.path().join("fq.redb.sock").display()
    ))
    .await
    .unwrap();
    for (index, id) in ids.iter().enumerate() {
        let through = if index % 2 == 0 {
            engine.broker()
        } else {
            remote.broker()
        };
        let late = through
            .settle(Settlement {
                id: *id,
                attempt: 1,
                outcome: Outcome::Completed {
                    result: json!("zombie"),
                },
            })
            .await;
        assert!(
            matches!(
                late,
                Err(Error::StaleAttempt {
                    attempt: 1,
                    current: 2,
                    ..
                })
            ),
            "{late:?}"
        );
        assert!(matches!(
            through.heartbeat(*id, 1).await,
            Err(Error::StaleAttempt { .. })
        ));
        // The current attempt settles; the zombie's completion is refused after it too.
        through
            .settle(Settlement {
                id: *id,
                attempt: 2,
                outcome: Outcome::Completed {
                    result: json!("fresh"),
                },
            })
            .await
            .unwrap();
        let late = through
            .settle(Settlement {
                id: *id,
                attempt: 1,
                outcome: Outcome::Completed {
                    result: json!("zombie"),
                },
            })
            .await;
        assert!(matches!(late, Err(Error::StaleAttempt { .. })), "{late:?}");
        let record = engine.task(*id).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Completed);
        assert_eq!(record.result, Some(json!("fresh")));
    }
    println!("leases: 8 stale completions and 8 stale heartbeats rejected (4 local, 4 remote)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_that_heartbeats_is_never_rescued() {
    let _serial = SERIAL.lock().await;
    let lease = Duration::from_millis(600);
    let length = lease * 5;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path().join("fq.redb"))
        .lease_duration(lease)
        .open()
        .unwrap();
    let mut events = engine.events().subscribe();
    // Local: this process's worker runs it, beating every third of the lease; a second local
    // worker waits on the same queue, ready to take it if it were ever given up.
    let log = effect_logger(dir.path());
    let registry = || {
        let log = log.clone();
        let mut registry = Registry::new();
        registry.register_async("lease.long", move |args: Value, ctx: TaskContext| {
            log(&ctx);
            let ms = args["ms"].as_u64().unwrap_or(0);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, TaskError>(json!({"pid": std::process::id()}))
            }
        });
        registry
    };
    let ms = u64::try_from(length.as_millis()).unwrap();
    let local = engine
        .queue_task_named("lease.long", &json!({"kwargs": {"ms": ms}}))
        .queue("long")
        .send()
        .await
        .unwrap();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut worker = engine.worker(registry());
        worker
            .set_queues(["long"])
            .set_handle_signals(false)
            .set_polling_interval(Duration::from_millis(100));
        let stop = worker.shutdown_handle();
        workers.push((stop, tokio::spawn(async move { worker.start().await })));
    }
    // Remote: a worker process (eight slots) runs the second one, on a queue of its own so that
    // the local workers do not take it; its seven other slots wait on that queue.
    wait_until("the local run to start", || async {
        runs(dir.path()).len() == 1
    })
    .await;
    let remote_worker = spawn_child(dir.path(), "long");
    let remote = engine
        .queue_task_named("lease.long", &json!({"kwargs": {"ms": ms}}))
        .queue("long-remote")
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    wait_until("both long tasks to complete", || async {
        let a = engine.task(local).await.unwrap().unwrap();
        let b = engine.task(remote).await.unwrap().unwrap();
        a.status == TaskStatus::Completed && b.status == TaskStatus::Completed
    })
    .await;
    let took = started.elapsed();
    drop(remote_worker);
    for (stop, handle) in workers {
        stop.shutdown();
        handle.await.unwrap().unwrap();
    }
    let all_runs = runs(dir.path());
    for id in [local, remote] {
        let record = engine.task(id).await.unwrap().unwrap();
        assert_eq!(record.attempts, 1, "{id} was rescued: {record:?}");
        assert!(record.error.is_none(), "{record:?}");
        let mine: Vec<_> = all_runs.iter().filter(|(run, _, _)| *run == id).collect();
        assert_eq!(mine.len(), 1, "{id} ran {} times: {mine:?}", mine.len());
    }
    let remote_pid = engine.task(remote).await.unwrap().unwrap().result.unwrap()["pid"].clone();
    assert_ne!(
        remote_pid,
        json!(std::process::id()),
        "the remote task ran remotely"
    );
    while let Some(event) = events.recv_timeout(Duration::from_millis(10)).await {
        assert!(
            !matches!(event.name(), "task.retrying" | "task.failed"),
            "a lease expired: {event:?}"
        );
    }
    println!(
        "leases: two tasks of {length:?} ({}x the {lease:?} lease), one local and one remote, \
         each ran once under attempt 1 with idle workers on their queue ({took:.1?})",
        length.as_millis() / lease.as_millis()
    );
}

// --- poison tasks ---------------------------------------------------------------------------

/// Healthy completions of a lane's `healthy` queue so far.
async fn healthy_completed(engine: &Engine) -> u64 {
    let stats = engine.stats().await.unwrap();
    stats.queues.get("healthy").map_or(0, |q| q.completed)
}

/// One lane: a server process owning its store, and worker processes kept alive by a
/// supervisor (as systemd would), reached from the test through the control socket.
struct Lane {
    name: &'static str,
    dir: PathBuf,
    engine: Engine,
    restarts: Arc<AtomicUsize>,
    stop: CancellationToken,
    /// Stops the stocking of the healthy queue only (a child of `stop`).
    stocking: CancellationToken,
    stock: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _server: ChildGuard,
}

impl Lane {
    async fn start(root: &Path, name: &'static str, workers: usize) -> Lane {
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        let server = spawn_child(&dir, "server");
        let socket = format!("unix:{}", dir.join("fq.redb.sock").display());
        let deadline = Instant::now() + PATIENCE;
        let engine = loop {
            match Engine::connect(&socket).await {
                Ok(engine) => break engine,
                Err(error) => assert!(Instant::now() < deadline, "lane {name}: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stop = CancellationToken::new();
        let stocking = stop.child_token();
        let restarts = Arc::new(AtomicUsize::new(0));
        // Keeps the healthy queue stocked.
        let stock = {
            let (engine, stop) = (engine.clone(), stocking.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let stats = engine.stats().await.unwrap();
                    let ready = stats.queues.get("healthy").map_or(0, |q| q.ready);
                    if ready < 4_000 {
                        let batch = (0..2_000).map(|_| {
                            engine
                                .queue_task_named("healthy.work", &json!({}))
                                .queue("healthy")
                                .max_retries(100)
                        });
                        engine.queue_batch(batch).await.unwrap();
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        };
        let supervisor = {
            let (dir, stop, restarts) = (dir.clone(), stop.clone(), Arc::clone(&restarts));
            tokio::spawn(async move {
                let mut children: Vec<ChildGuard> =
                    (0..workers).map(|_| spawn_child(&dir, "mixed")).collect();
                while !stop.is_cancelled() {
                    for child in &mut children {
                        if child.0.try_wait().unwrap().is_some() {
                            *child = spawn_child(&dir, "mixed");
                            restarts.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        Lane {
            name,
            dir,
            engine,
            restarts,
            stop,
            stocking,
            stock: Some(stock),
            tasks: vec![supervisor],
            _server: server,
        }
    }

    /// Stops stocking the healthy queue and waits until every healthy task it queued is
    /// COMPLETED (the workers keep running); fails if one FAILED.
    async fn drain(&mut self) {
        self.stocking.cancel();
        if let Some(stock) = self.stock.take() {
            stock.await.unwrap();
        }
        // Up to 6,000 tasks left, at a few hundred a second on a busy machine.
        let deadline = Instant::now() + 3 * PATIENCE;
        loop {
            let healthy = self.engine.stats().await.unwrap().queues["healthy"];
            assert_eq!(
                healthy.failed, 0,
                "lane {}: a healthy task failed: {healthy:?}",
                self.name
            );
            if healthy.completed == healthy.total() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lane {}: healthy tasks never all completed: {healthy:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(stock) = self.stock.take() {
            stock.await.unwrap();
        }
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
    }
}

/// Completions of each lane over `during`: (a, b, elapsed).
async fn window<F: std::future::Future<Output = ()>>(
    a: &Lane,
    b: &Lane,
    during: F,
) -> (u64, u64, Duration) {
    let started = Instant::now();
    let (a0, b0) = (
        healthy_completed(&a.engine).await,
        healthy_completed(&b.engine).await,
    );
    during.await;
    let (a1, b1) = (
        healthy_completed(&a.engine).await,
        healthy_completed(&b.engine).await,
    );
    (a1 - a0, b1 - b0, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_tasks_fail_after_max_retries_plus_one_attempts_and_every_healthy_task_completes() {
    let _serial = SERIAL.lock().await;
    let lease = Duration::from_secs(1);
    let (length, rounds) = if full() {
        (Duration::from_secs(5), 10)
    } else {
        (Duration::from_secs(4), 3)
    };
    let rounds = env_number("FQ_POISON_ROUNDS").unwrap_or(rounds);
    let workers = env_number("FQ_POISON_WORKERS").unwrap_or(4);
    let max_retries = 3;
    let root = tempfile::tempdir().unwrap();
    // Two identical lanes run side by side on the same cores, so that the machine's other
    // load weighs on both alike: lane A gets the poisons, lane B is the control. Throughput is
    // lane A's relative to lane B's, with the poisons about and without.
    let mut a = Lane::start(root.path(), "a", workers).await;
    let mut b = Lane::start(root.path(), "b", workers).await;
    wait_until("healthy tasks to flow in both lanes", || async {
        healthy_completed(&a.engine).await > 500 && healthy_completed(&b.engine).await > 500
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Windows alternate: calm, poison, calm, ..., calm. A poison window runs from queuing
    // three poisons in lane A until all are FAILED, and at least `length`; after it the last
    // crash's victims get their leases back (lease + sweep) before the next calm window.
    let (mut calm, mut poisoned) = ((0u64, 0u64, Duration::ZERO), (0u64, 0u64, Duration::ZERO));
    let mut shown = Vec::new();
    let mut poisons = Vec::new();
    let mut poisoned_for = Vec::new();
    let add = |total: &mut (u64, u64, Duration), w: (u64, u64, Duration)| {
        total.0 += w.0;
        total.1 += w.1;
        total.2 += w.2;
        format!(
            "{:.0}/{:.0}",
            w.0 as f64 / w.2.as_secs_f64(),
            w.1 as f64 / w.2.as_secs_f64()
        )
    };
    for round in 0..=rounds {
        let w = window(&a, &b, tokio::time::sleep(length)).await;
        shown.push(add(&mut calm, w));
        if round == rounds {
            break;
        }
        let mut these = Vec::new();
        let w = window(&a, &b, async {
            let started = Instant::now();
            for name in ["poison.panic", "poison.abort", "poison.kill"] {
                let id = a
                    .engine
                    .queue_task_named(name, &json!({"kwargs": {"round": round}}))
                    .queue("poison")
                    // Claimed as soon as due, ahead of the healthy backlog: the harshest case.
                    .priority(10)
                    .max_retries(max_retries)
                    .retry_delay(Duration::from_millis(100))
                    .send()
                    .await
                    .unwrap();
                these.push((name, id));
            }
            wait_until("every poison task to fail", || async {
                let mut done = true;
                for (_, id) in &these {
                    done &= a.engine.task(*id).await.unwrap().unwrap().status == TaskStatus::Failed;
                }
                done
            })
            .await;
            poisoned_for.push(started.elapsed());
            if started.elapsed() < length {
                tokio::time::sleep(length - started.elapsed()).await;
            }
        })
        .await;
        shown.push(format!("[{}]", add(&mut poisoned, w)));
        poisons.extend(these);
        // The recovery gap: in no window, so it counts for neither lane.
        tokio::time::sleep(lease + SWEEP).await;
    }
    // Every healthy task queued in either lane completes, none fails.
    tokio::join!(a.drain(), b.drain());
    a.stop().await;
    b.stop().await;

    let all_runs = runs(&a.dir);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut executions_of: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (name, id) in &poisons {
        let record = a.engine.task(*id).await.unwrap().unwrap();
        let executions = all_runs.iter().filter(|(run, _, _)| run == id).count();
        let error = record.error.clone().unwrap();
        assert_eq!(record.status, TaskStatus::Failed, "{name}: {record:?}");
        assert_eq!(record.attempts, max_retries + 1, "{name}: {record:?}");
        assert!(
            executions <= record.attempts as usize,
            "{name}: ran {executions} times"
        );
        // An attempt can be lost without running when another poison kills the process that
        // claimed it; it still counts, as the crash of its own process would. The panicking
        // one reports its panic, unless another poison killed its process before the report
        // went out (then its lease expires like theirs).
        let last_ran = all_runs
            .iter()
            .any(|(run, attempt, _)| run == id && *attempt == record.attempts);
        let expected: &[FailureKind] = match *name {
            "poison.panic" if last_ran => &[FailureKind::Panic, FailureKind::WorkerLost],
            _ => &[FailureKind::WorkerLost],
        };
        assert!(expected.contains(&error.kind), "{name}: {record:?}");
        *kinds.entry(format!("{name} {}", error.kind)).or_default() += 1;
        executions_of.entry(name).or_default().push(executions);
    }
    if rounds > 0 {
        assert!(
            kinds.contains_key("poison.panic panic"),
            "no panicking task ever reported its panic: {kinds:?}"
        );
    }
    println!(
        "poison: {} poison tasks ({rounds} rounds of 3), each FAILED after exactly {} attempts; \
         executions per task {executions_of:?}; last errors {kinds:?}; each round's three \
         FAILED within {poisoned_for:.1?}; {} worker processes restarted in lane A, {} in B",
        poisons.len(),
        max_retries + 1,
        a.restarts.load(Ordering::SeqCst),
        b.restarts.load(Ordering::SeqCst),
    );
    let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
    let calm_ratio = calm.0 as f64 / calm.1 as f64;
    let poisoned_ratio = poisoned.0 as f64 / poisoned.1 as f64;
    let kept = poisoned_ratio / calm_ratio;
    for lane in [&a, &b] {
        let healthy = lane.engine.stats().await.unwrap().queues["healthy"];
        assert_eq!(
            healthy.failed, 0,
            "lane {}: a healthy task failed: {healthy:?}",
            lane.name
        );
        assert_eq!(
            healthy.completed,
            healthy.total(),
            "lane {}: a healthy task did not complete: {healthy:?}",
            lane.name
        );
    }
    // A figure, not asserted: how much of its throughput lane A keeps depends on how busy the
    // machine is (RELIABILITY.md, "Throughput under poison").
    println!(
        "poison: healthy throughput of lane A (poisoned) / lane B (control), tasks/s: calm \
         {:.0}/{:.0}, with poison {:.0}/{:.0}; lane A keeps {:.0}% of its throughput relative \
         to the control (A/B {calm_ratio:.3} calm, {poisoned_ratio:.3} with poison; printed, \
         not asserted); windows A/B ([with poison]): {}; seed {}",
        rate(calm.0, calm.2),
        rate(calm.1, calm.2),
        rate(poisoned.0, poisoned.2),
        rate(poisoned.1, poisoned.2),
        100.0 * kept,
        shown.join(" "),
        seed()
    );
}
