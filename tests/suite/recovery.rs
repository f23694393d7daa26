//! A process running tasks is killed with SIGKILL mid-task. After reopening, every
//! acknowledged enqueue is there exactly once, the orphaned task runs again with its attempt
//! counted, and no task that had COMPLETED runs again.
//!
//! The test re-runs its own binary as the child (`FQ_RECOVERY_CHILD` set), filtered to
//! `child_process`.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fq::{Engine, FailureKind, Registry, TaskContext, TaskError, TaskId, TaskStatus};
use serde::Deserialize;
use serde_json::json;

const TASKS: u32 = 40;
const SLOW: u32 = 10;

#[derive(Deserialize)]
struct Work {
    n: u32,
}

fn append(path: &Path, line: &str) {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    writeln!(file, "{line}").expect("append log");
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Handlers log "start <id> <attempt> <pid>" when they begin; task SLOW hangs when `hang`.
fn registry(effects: PathBuf, hang: bool) -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.work", move |work: Work, ctx: TaskContext| {
        let effects = effects.clone();
        async move {
            append(
                &effects,
                &format!(
                    "start {} {} {}",
                    ctx.id(),
                    ctx.attempt(),
                    std::process::id()
                ),
            );
            if hang && work.n == SLOW {
                std::future::pending::<()>().await;
            }
            Ok::<_, TaskError>(json!(work.n))
        }
    });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() -> fq::Result<()> {
    let Ok(dir) = std::env::var("FQ_RECOVERY_CHILD") else {
        return Ok(()); // only meaningful as the child of `a_killed_process_loses_nothing`
    };
    let dir = PathBuf::from(dir);
    let engine = Engine::open(dir.join("fq.redb"))?;
    // Logged by a listener, which runs after the completion was committed.
    let done_log = dir.join("done.log");
    engine
        .events()
        .add_listener("worker.task.after_execution", move |event| {
            append(&done_log, &event.task.id.to_string());
        })?;
    let mut worker = engine.worker(registry(dir.join("effects.log"), true));
    worker.set_concurrent_tasks(4).set_handle_signals(false);
    tokio::spawn(async move { worker.start().await });
    for n in 0..TASKS {
        let id = engine
            .queue_task_named("test.work", &json!({"kwargs": {"n": n}}))
            .send()
            .await?;
        // Logged only after the enqueue was acknowledged, i.e. durably committed.
        append(&dir.join("acked.log"), &format!("{id} {n}"));
    }
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_process_loses_nothing_and_reruns_only_its_orphan() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::common::child::rerun("recovery::child_process")
        .env("FQ_RECOVERY_CHILD", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let effects = dir.path().join("effects.log");
    let acked_log = dir.path().join("acked.log");
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let slow_started = |acked: &HashMap<String, u32>| {
        read_lines(&effects).iter().any(|line| {
            let id = line.split(' ').nth(1).unwrap_or_default();
            acked.get(id) == Some(&SLOW)
        })
    };
    loop {
        let acked: HashMap<String, u32> = read_lines(&acked_log)
            .iter()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(id, n)| (id.to_owned(), n.parse().unwrap()))
            })
            .collect();
        let done = read_lines(&dir.path().join("done.log")).len() as u32;
        if acked.len() as u32 == TASKS && slow_started(&acked) && done == TASKS - 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every other task has completed; the slow one is mid-run.
    child.kill().unwrap();
    child.wait().unwrap();

    let acked: Vec<(TaskId, u32)> = read_lines(&acked_log)
        .iter()
        .map(|l| {
            let (id, n) = l.split_once(' ').unwrap();
            (id.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    let effects_before_kill = read_lines(&effects).len();

    // Looking first changes nothing: a read-only open (what `fq stats`, `list` and `show` use
    // on a store nobody serves) sees the orphan still RUNNING and refuses every change.
    {
        let looking = Engine::builder(dir.path().join("fq.redb"))
            .read_only(true)
            .open()?;
        let stats = looking.stats().await?;
        assert_eq!(stats.queues["default"].running, 1, "{stats:?}");
        assert_eq!(stats.total(), u64::from(TASKS), "{stats:?}");
        let refused = looking
            .queue_task_named("test.work", &json!({"kwargs": {"n": 0}}))
            .send()
            .await;
        assert!(
            matches!(
                refused,
                Err(fq::Error::Store(fq::StoreError::ReadOnly { .. }))
            ),
            "{refused:?}"
        );
    }

    let engine = Engine::open(dir.path().join("fq.redb"))?;
    let recovery = engine.recovery();
    assert_eq!(recovery.orphans_retrying, 1, "{recovery:?}");

    let mut completed_before = HashSet::new();
    let mut orphan = None;
    for (id, n) in &acked {
        let record = engine
            .task(*id)
            .await?
            .unwrap_or_else(|| panic!("acknowledged task {n} lost"));
        match record.status {
            TaskStatus::Completed => {
                completed_before.insert(*id);
            }
            TaskStatus::Retrying => {
                assert_eq!(*n, SLOW);
                assert_eq!(record.attempts, 1);
                assert_eq!(record.error.as_ref().unwrap().kind, FailureKind::WorkerLost);
                orphan = Some(*id);
            }
            other => panic!("task {n} is {other} after recovery"),
        }
    }
    let orphan = orphan.expect("the killed task is RETRYING");
    let stats = engine.stats().await?;
    let total = stats.total();
    let default = &stats.queues["default"];
    assert_eq!(
        (default.completed, default.retrying, default.running),
        (u64::from(TASKS) - 1, 1, 0)
    );
    assert_eq!(
        total,
        u64::from(TASKS),
        "tasks duplicated or invented: {stats:?}"
    );

    let mut events = engine.events().subscribe();
    let worker = common::start_worker(&engine, registry(effects.clone(), false), &["default"], 4);
    common::task_event(&mut events, "worker.task.after_execution", orphan).await;
    worker.stop().await;

    let record = engine.task(orphan).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.attempts, 2);
    let rerun: Vec<String> = read_lines(&effects)[effects_before_kill..].to_vec();
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert!(
        rerun[0].starts_with(&format!("start {orphan} 2 ")),
        "{rerun:?}"
    );
    for id in completed_before {
        assert!(
            !rerun.iter().any(|l| l.contains(&id.to_string())),
            "completed task {id} ran again"
        );
    }
    Ok(())
}

/// Creating a store is atomic (issue 15 §3): `fq enqueue` on a new path, killed with SIGKILL
/// at a random moment of its run (mostly while it creates the store), leaves either no store
/// or one that opens; before, a kill during the creation left a file every later open refused
/// ("not an fq store") until someone deleted it.
#[cfg(feature = "cli")]
#[test]
fn a_store_killed_while_being_created_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(crate::common::run::seed());
    // Kill moments spread over one whole uninterrupted run.
    let started = std::time::Instant::now();
    let status = crate::common::child::fq()
        .arg("--db")
        .arg(dir.path().join("timing/fq.redb"))
        .args(["enqueue", "fq.demo.echo"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let run_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (mut absent, mut whole) = (0, 0);
    for n in 0..120 {
        let path = dir.path().join(format!("s{n}/fq.redb"));
        let mut child = crate::common::child::fq()
            .arg("--db")
            .arg(&path)
            .args(["enqueue", "fq.demo.echo"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.u64(0..run_us)));
        let _ = child.kill();
        child.wait().unwrap();
        if !path.exists() {
            absent += 1;
            continue;
        }
        match Engine::builder(&path).control(false).open() {
            Ok(_) => whole += 1,
            Err(error) => panic!("kill {n} left a store that does not open: {error}"),
        }
    }
    println!(
        "creation kills over a {run_us} µs run: {absent} left no store, {whole} a store that opens"
    );
    assert!(
        whole > 0 && absent > 0,
        "the kills missed the creation: {absent} absent, {whole} whole"
    );
}
