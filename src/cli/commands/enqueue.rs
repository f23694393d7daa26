//! `fq enqueue NAME`: queues a task by name with JSON arguments and the options Framefox's
//! `queue_task` takes; prints the new task (its record with `--json`).

use chrono::{SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::QueueTask;
use crate::cli::args::EnqueueArgs;
use crate::cli::error::{CliError, usage_if_invalid};
use crate::cli::output::{format_millis, relative};
use crate::cli::{Context, Store};

/// How far in the past an `--at` time may be without `--allow-past`: scripts that pass "now"
/// truncated to the second, or from a slightly different clock, are not refused.
const PAST_TOLERANCE: TimeDelta = TimeDelta::seconds(60);

/// Checks the task against the engine's limits (a refusal is a usage error), queues it, and
/// prints it.
pub(crate) async fn run(ctx: &Context, mut args: EnqueueArgs) -> Result<(), CliError> {
    let now = Utc::now();
    if let Some(at) = args.at
        && at < now - PAST_TOLERANCE
    {
        if !args.allow_past {
            return Err(CliError::usage(format!(
                "--at {} is {} in the past; pass --allow-past to queue it due now",
                at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                format_millis(u64::try_from((now - at).num_milliseconds()).unwrap_or(0))
            )));
        }
        // Due now, not at a time long gone: the oldest-waiting figures stay true.
        args.at = Some(now);
    }
    let payload = json!({
        "args": args.args.clone().map(|args| args.0).unwrap_or_default(),
        "kwargs": Value::Object(args.kwargs.clone().unwrap_or_default()),
    });
    // Opening a store that does not exist yet creates it: arguments the engine would refuse
    // are refused first, against the same configuration, so a refused enqueue leaves nothing.
    let config = ctx.config()?;
    if ctx.global.connect.is_none() && !config.database.exists() {
        let draft = QueueTask::offline(&config, &args.name, &payload);
        with_options(draft, &args)
            .build()
            .map_err(usage_if_invalid)?;
    }
    let engine = ctx.engine(Store::CreateIfMissing).await?;
    let task = engine.queue_task_named(&args.name, &payload);
    // Build first, so that what the engine refuses about the flags is a usage error and
    // only the commit itself can fail at run time.
    let task = with_options(task, &args)
        .build()
        .map_err(usage_if_invalid)?;
    let queued = engine.broker().enqueue(vec![task]).await?;
    let queued = queued
        .first()
        .copied()
        .ok_or_else(|| crate::Error::Internal("enqueue returned no id".into()))?;
    let id = queued.id;
    let record = engine.task(id).await?.ok_or(crate::Error::NotFound(id))?;
    let out = ctx.out();
    if out.is_json() {
        if queued.duplicate {
            // The holder's record, marked: a script can tell nothing was queued.
            return out.document(&Duplicate {
                record: &record,
                duplicate: true,
            });
        }
        return out.document(&record);
    }
    if queued.duplicate {
        return out.text(&format!(
            "duplicate: {} holds unique key {:?} ({}); nothing queued",
            record.id,
            record.unique_key.as_deref().unwrap_or_default(),
            record.status
        ));
    }
    let now = Utc::now();
    let due = if record.due_at > now {
        format!("runs {}", relative(record.due_at, now))
    } else {
        "due now".to_owned()
    };
    out.text(&format!(
        "queued {} as {} (queue {}, priority {}, {due})",
        record.name, record.id, record.queue, record.priority
    ))
}

/// `--json` output for a duplicate: the record of the task holding the key, marked.
#[derive(serde::Serialize)]
struct Duplicate<'a> {
    #[serde(flatten)]
    record: &'a crate::TaskRecord,
    duplicate: bool,
}

/// The task with the flags' options set.
fn with_options(mut task: QueueTask, args: &EnqueueArgs) -> QueueTask {
    if let Some(queue) = &args.queue {
        task = task.queue(queue.clone());
    }
    if let Some(priority) = args.priority {
        task = task.priority(priority);
    }
    if let Some(max_retries) = args.max_retries {
        task = task.max_retries(max_retries);
    }
    if let Some(delay) = args.delay {
        task = task.delay(delay);
    }
    if let Some(at) = args.at {
        task = task.schedule_at(at);
    }
    if let Some(timeout) = args.timeout {
        task = task.timeout(timeout);
    }
    if let Some(key) = &args.unique_key {
        task = task.unique(key.clone());
    }
    if let Some(period) = args.unique_for {
        task = task.unique_for(period);
    }
    task
}
