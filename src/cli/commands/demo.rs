//! `fq demo`: a newcomer's first run. On a scratch store (a temporary folder, or `--dir`) it
//! queues a realistic mix of the built-in demo tasks (priorities, two queues, a delayed task,
//! a flaky one that succeeds on retry, one that fails for good, one cancelled), runs a worker,
//! prints the lifecycle events as they happen, and ends with the stats table. A few seconds.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::Signals;
use crate::cli::args::DemoArgs;
use crate::cli::error::CliError;
use crate::cli::output::{Output, event_json, event_line, stats_table};
use crate::cli::tasks::{
    ECHO, FAIL, FLAKY, GENERATE_REPORT, RESIZE_IMAGE, SEND_EMAIL, demo_registry,
};
use crate::cli::{Context, open_store};
use crate::{Config, Event, EventKind, EventStream, TaskId};

/// Retry backoff in the demo: short, so the flaky task's retries show within a second or two.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// How long the delayed task waits.
const REPORT_DELAY: Duration = Duration::from_millis(1500);
/// The demo gives up (with an error) if its tasks have not finished by then.
const DEADLINE: Duration = Duration::from_secs(60);

/// A folder under the system's temporary folder, removed when dropped.
#[derive(Debug)]
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create() -> Result<Self, CliError> {
        let nanos = Utc::now().timestamp_subsec_nanos();
        let path = std::env::temp_dir().join(format!("fq-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|error| {
            CliError::from(error).context(format!("cannot create {}", path.display()))
        })?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One task of the demo's mix.
struct Planned {
    name: &'static str,
    queue: &'static str,
    priority: i32,
    kwargs: Value,
    max_retries: u32,
    delay: Option<Duration>,
}

fn mix() -> Vec<Planned> {
    let task = |name, queue, priority, kwargs| Planned {
        name,
        queue,
        priority,
        kwargs,
        max_retries: 3,
        delay: None,
    };
    vec![
        task(
            SEND_EMAIL,
            "emails",
            0,
            json!({"to": "ada@example.com", "subject": "Welcome!"}),
        ),
        task(
            SEND_EMAIL,
            "emails",
            10,
            json!({"to": "grace@example.com", "subject": "Reset your password"}),
        ),
        task(
            RESIZE_IMAGE,
            "default",
            5,
            json!({"path": "uploads/cat.png", "width": 320}),
        ),
        Planned {
            delay: Some(REPORT_DELAY),
            ..task(GENERATE_REPORT, "default", 0, json!({"kind": "daily"}))
        },
        task(FLAKY, "default", 0, json!({"fail_times": 2})),
        Planned {
            max_retries: 1,
            ..task(
                FAIL,
                "default",
                0,
                json!({"reason": "card declined by the payment gateway"}),
            )
        },
        task(
            ECHO,
            "default",
            -5,
            json!({"note": "low priority: runs last among the due tasks"}),
        ),
    ]
}

/// Runs the demo.
pub(crate) async fn run(ctx: &Context, args: DemoArgs) -> Result<(), CliError> {
    if ctx.global.connect.is_some() || ctx.global.db.is_some() {
        return Err(CliError::usage(
            "demo runs on a scratch store of its own; use --dir PATH to keep it (not --db or --connect)",
        ));
    }
    let mut signals = Signals::listen()?;
    let scratch = match &args.dir {
        Some(_) => None,
        None => Some(ScratchDir::create()?),
    };
    let dir = match (&args.dir, &scratch) {
        (Some(dir), _) => dir.clone(),
        (None, Some(scratch)) => scratch.path.clone(),
        (None, None) => return Err(CliError::runtime("no folder for the demo store")),
    };
    let path = dir.join("fq.redb");
    // Not the user's configuration: the demo is the same everywhere, with short retries.
    let mut config = Config::default();
    config.database.clone_from(&path);
    config.defaults.retry_delay = RETRY_DELAY;
    config.defaults.retry_max_delay = Duration::from_secs(2);
    config.worker.shutdown_timeout = Duration::from_secs(5);
    // Nobody else needs to reach a scratch store: no control socket.
    let engine = open_store(config, false)?;
    let out = ctx.out();
    let started = Utc::now();
    let mut events = engine.events().subscribe();

    let plan = mix();
    if !out.is_json() {
        out.text(&format!(
            "fq demo: {} tasks on a fresh store at {}\none worker on queues default and emails, 2 tasks at a time; retries after {}ms, doubling\n",
            plan.len() + 1,
            path.display(),
            RETRY_DELAY.as_millis()
        ))?;
    }
    let bar = out.bar(u64::try_from(plan.len()).unwrap_or(0), "tasks finished");
    let mut waiting: HashSet<TaskId> = HashSet::new();
    for planned in &plan {
        let mut task = engine
            .queue_task_named(planned.name, &json!({"kwargs": planned.kwargs}))
            .queue(planned.queue)
            .priority(planned.priority)
            .max_retries(planned.max_retries);
        if let Some(delay) = planned.delay {
            task = task.delay(delay);
        }
        waiting.insert(task.send().await?);
    }
    // A newsletter scheduled for later, then called off: it ends CANCELLED without running.
    let newsletter = engine
        .queue_task_named(
            SEND_EMAIL,
            &json!({"kwargs": {"to": "everyone@example.com", "subject": "Newsletter"}}),
        )
        .queue("emails")
        .delay(Duration::from_secs(3600))
        .send()
        .await?;
    engine.cancel(newsletter).await?;

    let mut worker = engine.worker(demo_registry());
    worker
        .set_queues(["default", "emails"])
        .set_concurrent_tasks(2)
        .set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });

    let deadline = tokio::time::sleep(DEADLINE);
    tokio::pin!(deadline);
    let mut interrupted = None;
    while !waiting.is_empty() {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                show(out, &bar, started, &event)?;
                if matches!(event.kind, EventKind::AfterExecution | EventKind::Failed)
                    && waiting.remove(&event.task.id)
                {
                    bar.inc(1);
                }
            }
            signal = signals.recv() => {
                interrupted = Some(signal);
                break;
            }
            () = &mut deadline => break,
        }
    }
    bar.finish_and_clear();
    stop.shutdown();
    let report = running.await.map_err(|error| {
        CliError::from_error(error).context("the demo's worker stopped abnormally")
    })??;
    drain(out, started, &mut events).await?;

    let stats = engine.stats().await?;
    if out.is_json() {
        out.json_line(&json!({"stats": stats, "report": report, "store": path}))?;
    } else {
        out.text(&format!(
            "\nworker stopped: {} completed, {} retried, {} failed\n\n{}",
            report.completed,
            report.retried,
            report.failed,
            stats_table(&stats)
        ))?;
        out.text(&next_steps(args.dir.is_some(), &path))?;
    }
    drop(engine);
    drop(scratch);
    if let Some(signal) = interrupted {
        return Err(CliError::runtime(format!("demo interrupted by {signal}")));
    }
    if !waiting.is_empty() {
        return Err(CliError::runtime(format!(
            "{} demo task(s) did not finish within {}s",
            waiting.len(),
            DEADLINE.as_secs()
        )));
    }
    Ok(())
}

/// Prints one event, above the progress bar.
fn show(
    out: Output,
    bar: &ProgressBar,
    started: DateTime<Utc>,
    event: &Event,
) -> Result<(), CliError> {
    if out.is_json() {
        return out.json_line(&event_json(event));
    }
    let elapsed = (event.at - started).num_milliseconds().max(0);
    bar.suspend(|| out.text(&format!("+{elapsed:>5}ms  {}", event_line(event))))
}

/// Prints the events still waiting for us after the worker stopped.
async fn drain(
    out: Output,
    started: DateTime<Utc>,
    events: &mut EventStream,
) -> Result<(), CliError> {
    let hidden = ProgressBar::hidden();
    while let Some(event) = events.recv_timeout(Duration::ZERO).await {
        show(out, &hidden, started, &event)?;
    }
    Ok(())
}

fn next_steps(kept: bool, path: &Path) -> String {
    let mut text = String::from("\nnext: queue a task of your own and run a worker on it:\n");
    text.push_str(
        "  fq enqueue fq.demo.send_email --kwargs '{\"to\": \"you@example.com\"}' --priority 5\n",
    );
    text.push_str("  fq worker start --queues default\n");
    text.push_str("  fq stats; fq list --status completed; fq show ID");
    if kept {
        text.push_str(&format!(
            "\nthis demo's store is kept: fq --db {} list",
            path.display()
        ));
    } else {
        text.push_str("\n(the demo's scratch store was removed; keep it with --dir PATH)");
    }
    text
}
