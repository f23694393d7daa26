//! Running one request against the broker: decoding and checking the op's arguments, calling
//! the broker, and encoding the answer (a `list` page cut short to fit), plus giving back
//! claimed tasks whose answer cannot be delivered. The connection's framing and ordering are
//! `connection`'s.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ServerCtx;
use crate::broker::{
    Broker, ClaimRequest, NewTask, Outcome, QueueTask, RetentionPolicy, SettleReport, Settlement,
};
use crate::clock::millis_to_datetime;
use crate::config::{MAX_TASK_DELAY, QueueLimits, check_name};
use crate::control::protocol::{
    AttemptArgs, ChangedOk, ClaimArgs, CleanupArgs, CleanupOk, CountOk, Empty, EnqueueArgs,
    EnqueueOk, ErrorOut, HEADER_BYTES, IdArgs, LimitArgs, ListArgs, MAX_CLAIM, MAX_LIST_BYTES,
    MAX_WAIT_MS, NoArgs, OkOut, Op, ParsedRequest, PurgeArgs, QueueArgs, RetryFailedArgs,
    ScheduleActionArgs, ScheduleArgs, ScheduleOk, SchedulesOk, SettleAndClaimArgs,
    SettleAndClaimOk, SettleArgs, SettleOk, Settled, TaskOk, TasksOk, WaitArgs, WireTask,
    decode_args, encode_body, error_to_wire,
};
use crate::control::protocol::{
    AttemptsOk, CancelArgs, KnownOk, WorkerAnnounceArgs, WorkerArgs, WorkerHeartbeatArgs,
};
use crate::task::TaskId;
use crate::{Error, Result};

pub(super) fn ok_body<T: Serialize>(id: u64, value: &T) -> Result<Vec<u8>> {
    encode_body(&OkOut { id, ok: value })
}

pub(super) fn error_body(id: Option<u64>, error: &Error) -> Vec<u8> {
    encode_body(&ErrorOut {
        id,
        error: &error_to_wire(error),
    })
    .unwrap_or_else(|_| fallback_error_body())
}

/// An error frame's JSON that cannot fail to encode.
pub(super) fn fallback_error_body() -> Vec<u8> {
    br#"{"id":null,"error":{"kind":"internal","message":"cannot encode the answer"}}"#.to_vec()
}

/// Gives back tasks claimed for a connection that is gone, so they run again at once instead
/// of after their lease.
pub(super) fn release(broker: &Arc<dyn Broker>, claimed: Vec<(TaskId, u32)>) {
    if claimed.is_empty() {
        return;
    }
    let broker = Arc::clone(broker);
    tokio::spawn(async move {
        for (id, attempt) in claimed {
            let settlement = Settlement {
                id,
                attempt,
                outcome: Outcome::Released,
            };
            match broker.settle(settlement).await {
                Ok(_) => {
                    tracing::debug!(task.id = %id, "released a claim its client did not receive")
                }
                Err(e) => {
                    tracing::debug!(task.id = %id, error = %e, "could not release an undelivered claim; its lease will expire")
                }
            }
        }
    });
}

/// Runs one request; its answer's JSON and the tasks it hands over.
pub(super) async fn handle(
    ctx: &ServerCtx,
    request: &ParsedRequest,
    frame: &[u8],
    claim_cancel: Option<&CancellationToken>,
) -> (Vec<u8>, Vec<(TaskId, u32)>) {
    let args = request.args.clone().map_or(&b""[..], |range| &frame[range]);
    let mut claimed = Vec::new();
    let answer = dispatch(ctx, request, args, claim_cancel, &mut claimed).await;
    match answer {
        Ok(frame) => (frame, claimed),
        Err(error) => {
            tracing::trace!(op = request.op.name(), %error, "control request failed");
            // Claimed, then failed to answer (encoding): nobody will run those tasks.
            release(&ctx.broker, claimed);
            (error_body(Some(request.id), &error), Vec::new())
        }
    }
}

fn check_queues(queues: &[std::borrow::Cow<'_, str>]) -> Result<Vec<Arc<str>>> {
    if queues.is_empty() {
        return Err(Error::invalid("queues", "name at least one queue"));
    }
    queues
        .iter()
        .map(|queue| {
            check_name(queue)
                .map(|()| Arc::from(queue.as_ref()))
                .map_err(|problem| Error::invalid("queues", format!("queue {queue:?} {problem}")))
        })
        .collect()
}

fn settlement(args: SettleArgs) -> Result<Settlement> {
    let outcome = match args.outcome.as_str() {
        "completed" => {
            if args.error.is_some() || args.retry_after_ms.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"completed\" takes a result, not error or retry_after_ms",
                ));
            }
            Outcome::Completed {
                result: args.result.unwrap_or(serde_json::Value::Null),
            }
        }
        "failed" => {
            let Some(failure) = args.error else {
                return Err(Error::invalid(
                    "error",
                    "outcome \"failed\" needs an error {\"message\": \"...\", \"kind\": \"error\"}",
                ));
            };
            if args.result.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"failed\" takes an error, not a result",
                ));
            }
            let retry_after = args.retry_after_ms.map(Duration::from_millis);
            if retry_after.is_some_and(|after| after > MAX_TASK_DELAY) {
                return Err(Error::invalid("retry_after_ms", "must be at most 365 days"));
            }
            Outcome::Failed {
                failure,
                retry_after,
            }
        }
        "released" => {
            if args.result.is_some() || args.error.is_some() || args.retry_after_ms.is_some() {
                return Err(Error::invalid(
                    "outcome",
                    "\"released\" takes no result, error or retry_after_ms",
                ));
            }
            Outcome::Released
        }
        other => {
            return Err(Error::invalid(
                "outcome",
                format!("expected \"completed\", \"failed\" or \"released\", got {other:?}"),
            ));
        }
    };
    Ok(Settlement {
        id: args.id,
        attempt: args.attempt,
        outcome,
    })
}

/// The answer to a settlement; with the record when asked (read if the engine did not keep
/// one for its own listeners).
async fn settle_ok(ctx: &ServerCtx, id: TaskId, report: SettleReport, record: bool) -> SettleOk {
    let mut ok = SettleOk {
        status: report.status,
        retry_at_ms: report.retry_at,
        record: None,
    };
    if record {
        ok.record = match report.record {
            Some(record) => Some(Arc::unwrap_or_clone(record)),
            None => ctx.broker.task(id).await.ok().flatten(),
        };
    }
    ok
}

fn build_task(ctx: &ServerCtx, wire: WireTask) -> Result<NewTask> {
    let payload = wire.payload.unwrap_or_else(|| json!({}));
    let mut draft = QueueTask::named(
        Arc::clone(&ctx.broker),
        &ctx.settings.defaults,
        &wire.name,
        &payload,
    );
    if let Some(queue) = wire.queue {
        draft = draft.queue(queue);
    }
    if let Some(priority) = wire.priority {
        draft = draft.priority(priority);
    }
    if let Some(max_retries) = wire.max_retries {
        draft = draft.max_retries(max_retries);
    }
    let bounded = |field: &'static str, ms: u64| {
        let duration = Duration::from_millis(ms);
        if duration > MAX_TASK_DELAY {
            return Err(Error::invalid(field, "must be at most 365 days"));
        }
        Ok(duration)
    };
    if let Some(ms) = wire.timeout_ms {
        draft = draft.timeout(bounded("timeout_ms", ms)?);
    }
    if let Some(ms) = wire.retry_delay_ms {
        draft = draft.retry_delay(bounded("retry_delay_ms", ms)?);
    }
    if let Some(key) = wire.unique_key {
        draft = draft.unique(key);
    }
    if let Some(ms) = wire.unique_for_ms {
        draft = draft.unique_for(Duration::from_millis(ms));
    }
    if let Some(at) = wire.run_at_ms {
        draft = draft.schedule_at(millis_to_datetime(at));
    } else if let Some(ms) = wire.delay_ms {
        draft = draft.delay(Duration::from_millis(ms));
    }
    let mut task = draft.build()?;
    if let Some(id) = wire.id {
        task.id = id;
        task.fresh_id = false.into();
    }
    Ok(task)
}

/// A `list` page, serialized from a borrowed slice so it can be cut short and re-encoded.
#[derive(Serialize)]
struct Page<'a> {
    tasks: &'a [crate::task::TaskRecord],
}

/// Says which task of a batch an error is about.
fn in_batch(error: Error, index: usize, len: usize) -> Error {
    match error {
        Error::InvalidInput { field, message } if len > 1 => Error::InvalidInput {
            field,
            message: format!("{message} (task {index} of the batch; nothing was queued)"),
        },
        other => other,
    }
}

async fn dispatch(
    ctx: &ServerCtx,
    request: &ParsedRequest,
    args: &[u8],
    claim_cancel: Option<&CancellationToken>,
    claimed: &mut Vec<(TaskId, u32)>,
) -> Result<Vec<u8>> {
    let (id, op) = (request.id, request.op);
    let broker = &ctx.broker;
    match op {
        Op::Enqueue => {
            let args: EnqueueArgs<WireTask> = decode_args(op, args)?;
            let len = args.tasks.len();
            let tasks = args
                .tasks
                .into_iter()
                .enumerate()
                .map(|(index, wire)| build_task(ctx, wire).map_err(|e| in_batch(e, index, len)))
                .collect::<Result<Vec<_>>>()?;
            let queued = broker.enqueue(tasks).await?;
            ok_body(id, &EnqueueOk::of(&queued))
        }
        Op::Claim => {
            let args: ClaimArgs<'_> = decode_args(op, args)?;
            let queues = check_queues(&args.queues)?;
            let max = args.max.clamp(1, MAX_CLAIM);
            let wait = Duration::from_millis(args.wait_ms.min(MAX_WAIT_MS));
            let never = CancellationToken::new();
            let cancel = claim_cancel.unwrap_or(&never);
            let tasks = broker
                .claim(ClaimRequest::new(&queues, max, wait, cancel))
                .await?;
            claimed.extend(tasks.iter().map(|task| (task.id, task.attempts)));
            ok_body(id, &TasksOk { tasks })
        }
        Op::Heartbeat => {
            let args: AttemptArgs = decode_args(op, args)?;
            broker.heartbeat(args.id, args.attempt).await?;
            ok_body(id, &Empty {})
        }
        Op::Settle => {
            let args: SettleArgs = decode_args(op, args)?;
            name_worker(broker, &args);
            let (task, record) = (args.id, args.record);
            let report = broker.settle(settlement(args)?).await?;
            ok_body(id, &settle_ok(ctx, task, report, record).await)
        }
        Op::SettleAndClaim => {
            let args: SettleAndClaimArgs<'_> = decode_args(op, args)?;
            let max = args.max.min(MAX_CLAIM);
            let queues = if max == 0 && args.queues.is_empty() {
                Vec::new()
            } else {
                check_queues(&args.queues)?
            };
            name_worker(broker, &args.settle);
            let (task, record) = (args.settle.id, args.settle.record);
            let chained = broker
                .settle_and_claim(settlement(args.settle)?, ClaimRequest::now(&queues, max))
                .await?;
            claimed.extend(chained.claimed.iter().map(|t| (t.id, t.attempts)));
            let settled = match chained.settled {
                Ok(report) => Settled::Ok(settle_ok(ctx, task, report, record).await),
                Err(error) => Settled::Error(error_to_wire(&error)),
            };
            ok_body(
                id,
                &SettleAndClaimOk {
                    settled,
                    tasks: chained.claimed,
                },
            )
        }
        Op::Task => {
            let args: IdArgs = decode_args(op, args)?;
            let task = broker.task(args.id).await?;
            ok_body(id, &TaskOk { task })
        }
        Op::Cancel => {
            let args: CancelArgs = decode_args(op, args)?;
            let by = crate::task::cancelled_by(args.by.as_deref(), "a control-socket client")?;
            let task = broker
                .cancel(args.id, format!("{by}, over the control socket"))
                .await?;
            ok_body(id, &TaskOk { task: Some(task) })
        }
        Op::Retry => {
            let args: IdArgs = decode_args(op, args)?;
            let task = broker.retry(args.id).await?;
            ok_body(id, &TaskOk { task: Some(task) })
        }
        Op::List => {
            let mut args: ListArgs = decode_args(op, args)?;
            if let Some(queue) = &args.queue {
                crate::config::check_queue(queue)?;
            }
            args.limit = args.limit.min(MAX_CLAIM);
            let mut tasks = broker.list(args.into()).await?;
            let mut body = ok_body(id, &Page { tasks: &tasks })?;
            // A page of large records is cut short rather than sent as one huge frame; the
            // client asks for the next page with `after` as usual.
            while HEADER_BYTES + body.len() > MAX_LIST_BYTES && tasks.len() > 1 {
                tasks.truncate(tasks.len() / 2);
                body = ok_body(id, &Page { tasks: &tasks })?;
            }
            Ok(body)
        }
        Op::RetryFailed => {
            let args: RetryFailedArgs = decode_args(op, args)?;
            if let Some(queue) = &args.queue {
                crate::config::check_queue(queue)?;
            }
            let count = broker.retry_failed(args.queue).await?;
            ok_body(id, &CountOk { count })
        }
        Op::Purge => {
            let args: PurgeArgs = decode_args(op, args)?;
            crate::config::check_queue(&args.queue)?;
            let count = broker.purge(args.queue, args.status).await?;
            ok_body(id, &CountOk { count })
        }
        Op::Stats => {
            let _: NoArgs = decode_args(op, args)?;
            let stats = broker.stats().await?;
            ok_body(id, &stats)
        }
        Op::Metrics => {
            let _: NoArgs = decode_args(op, args)?;
            let Some(metrics) = &ctx.settings.metrics else {
                return Err(crate::metrics::MetricsError::Disabled.into());
            };
            let stats = broker.stats().await?;
            let text = metrics.render(&stats, broker.events().dropped())?;
            ok_body(id, &crate::control::protocol::MetricsOk { text })
        }
        Op::Cleanup => {
            let args: CleanupArgs = decode_args(op, args)?;
            let defaults = ctx.settings.retention;
            let policy = RetentionPolicy {
                completed: args
                    .completed_retention_ms
                    .map_or(defaults.completed, Duration::from_millis),
                failed: args
                    .failed_retention_ms
                    .map_or(defaults.failed, Duration::from_millis),
            };
            let report = broker.cleanup(policy).await?;
            ok_body(id, &CleanupOk::from(report))
        }
        Op::Wait => {
            let args: WaitArgs = decode_args(op, args)?;
            let timeout = Duration::from_millis(args.timeout_ms.min(MAX_WAIT_MS));
            // A long request like a claim: it ends early when its connection closes or the
            // client aborts it (the answer is then dropped, or says the wait was cut short).
            let never = CancellationToken::new();
            let cancel = claim_cancel.unwrap_or(&never);
            let task = tokio::select! {
                task = broker.wait(args.id, timeout) => task?,
                () = cancel.cancelled() => return Err(Error::WaitTimeout { id: args.id, timeout: Duration::ZERO }),
            };
            ok_body(id, &TaskOk { task: Some(task) })
        }
        Op::Pause | Op::Resume => {
            let args: QueueArgs = decode_args(op, args)?;
            crate::config::check_queue(&args.queue)?;
            let changed = broker.set_paused(args.queue, op == Op::Pause).await?;
            ok_body(id, &ChangedOk { changed })
        }
        Op::Schedule => {
            let args: ScheduleArgs<WireTask> = decode_args(op, args)?;
            let schedule = args.schedule()?;
            let task = build_task(ctx, args.task)?;
            let schedule = broker.upsert_schedule(schedule, task).await?;
            ok_body(id, &ScheduleOk { schedule })
        }
        Op::Schedules => {
            let _: NoArgs = decode_args(op, args)?;
            let schedules = broker.schedules().await?;
            ok_body(id, &SchedulesOk { schedules })
        }
        Op::ScheduleAction => {
            let args: ScheduleActionArgs = decode_args(op, args)?;
            let action = args.action()?;
            crate::schedule::check_schedule_name(&args.name)?;
            let schedule = broker.act_on_schedule(args.name, action).await?;
            ok_body(id, &ScheduleOk { schedule })
        }
        Op::Limit => {
            let args: LimitArgs = decode_args(op, args)?;
            crate::config::check_queue(&args.queue)?;
            let limits = QueueLimits {
                concurrency: args.concurrency,
                rate: args.rate,
            };
            limits
                .check()
                .map_err(|(field, reason)| Error::invalid(field, reason))?;
            broker.set_limits(args.queue, limits).await?;
            ok_body(id, &Empty {})
        }
        Op::Attempts => {
            let args: IdArgs = decode_args(op, args)?;
            let attempts = broker.attempts(args.id).await?;
            ok_body(id, &AttemptsOk { attempts })
        }
        Op::Explain => {
            let args: IdArgs = decode_args(op, args)?;
            let explanation = broker.explain(args.id).await?;
            ok_body(id, &explanation)
        }
        Op::Workers => {
            let _: NoArgs = decode_args(op, args)?;
            let workers = broker.workers().await?;
            ok_body(id, &workers)
        }
        Op::WorkerAnnounce => {
            let args: WorkerAnnounceArgs = decode_args(op, args)?;
            check_worker(&args.worker)?;
            broker.announce_worker(args.worker).await?;
            ok_body(id, &Empty {})
        }
        Op::WorkerHeartbeat => {
            let args: WorkerHeartbeatArgs = decode_args(op, args)?;
            let running = args.running.iter().map(|r| (r.id, r.attempt)).collect();
            let known = broker.worker_heartbeat(args.worker, running).await?;
            ok_body(id, &KnownOk { known })
        }
        Op::WorkerStopped => {
            let args: WorkerArgs = decode_args(op, args)?;
            broker.worker_stopped(args.worker).await?;
            ok_body(id, &Empty {})
        }
        // Answered by the connection's reader; kept here so every op has one home.
        Op::Abort => ok_body(id, &Empty {}),
    }
}

/// Names the worker of a settled attempt, when the client says which (`worker` in `settle`).
fn name_worker(broker: &Arc<dyn Broker>, args: &SettleArgs) {
    if let Some(worker) = args.worker {
        broker.worker_claimed(worker, &[(args.id, args.attempt)]);
    }
}

/// The most queues or handler names a worker may announce, and the longest host or version.
const MAX_ANNOUNCED_NAMES: usize = 10_000;
const MAX_ANNOUNCED_TEXT: usize = 255;

/// Checks what a worker announces: names a queue can have, bounded lists and texts (the
/// owner keeps them in memory for an hour after the worker goes).
fn check_worker(info: &crate::broker::WorkerInfo) -> Result<()> {
    if info.queues.len() > MAX_ANNOUNCED_NAMES || info.handlers.len() > MAX_ANNOUNCED_NAMES {
        return Err(Error::invalid(
            "worker",
            format!("a worker announces at most {MAX_ANNOUNCED_NAMES} queues and handlers"),
        ));
    }
    for queue in &info.queues {
        crate::config::check_queue(queue)?;
    }
    for name in &info.handlers {
        check_name(name).map_err(|problem| Error::invalid("worker", problem))?;
    }
    if info.host.len() > MAX_ANNOUNCED_TEXT || info.version.len() > MAX_ANNOUNCED_TEXT {
        return Err(Error::invalid(
            "worker",
            format!("host and version are at most {MAX_ANNOUNCED_TEXT} bytes"),
        ));
    }
    Ok(())
}
