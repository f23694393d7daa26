//! [`RemoteBroker`]: the [`Broker`] a connected engine runs on, each call one request over the
//! control connection (`transport`), with the worker-side events fired in this process.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::transport::{ClientShared, Link, decode};
use super::{ConnectOptions, Endpoint, RemoteInfo};
use crate::broker::{
    BoxFuture, Broker, Chained, Chaining, ClaimRequest, Claiming, CleanupReport, ListQuery,
    NewTask, Outcome, Queued, RetentionPolicy, SettleReport, Settlement, Stats,
};
use crate::clock::{Millis, duration_ms, millis_to_datetime};
use crate::control::protocol::{
    AttemptArgs, CancelArgs, ChangedOk, ClaimArgs, CleanupArgs, CleanupOk, CountOk, Empty,
    EnqueueArgs, EnqueueOk, IdArgs, LimitArgs, ListArgs, MAX_WAIT_MS, Op, PurgeArgs, QueueArgs,
    RetryFailedArgs, ScheduleActionArgs, ScheduleArgs, ScheduleOk, SchedulesOk, SettleAndClaimArgs,
    SettleAndClaimOk, SettleArgs, SettleOk, Settled, TaskOk, TasksOk, WaitArgs, WireTaskOut,
    error_from_wire,
};
use crate::control::protocol::{
    AttemptsOk, KnownOk, RunningArgs, WorkerAnnounceArgs, WorkerArgs, WorkerHeartbeatArgs,
};
use crate::events::{Event, EventBus, EventKind};
use crate::task::{AttemptRecord, TaskId, TaskRecord, TaskStatus, WorkerId};
use crate::{Error, Result};

/// A [`Broker`] over an engine's control socket. Worker-side events (before/after execution,
/// execution error, retrying, failed, from this process's workers) and `task.cancelled` (for
/// cancels made here) fire on its own event bus; the serving engine's events
/// (`task.queued`, lease expiries) stay in that process.
pub(crate) struct RemoteBroker {
    shared: Arc<ClientShared>,
    events: EventBus,
    /// The worker of each attempt this process's workers hold, sent with its settlement (so
    /// the owner's attempt history names it without a request of its own).
    claimed_by: std::sync::Mutex<std::collections::HashMap<TaskId, (u32, WorkerId)>>,
    /// True once the server accepted a `worker_announce`: it knows the `worker` field of
    /// `settle` (an older server refuses unknown fields).
    knows_workers: std::sync::atomic::AtomicBool,
    /// Stops the connection's tasks and the reconnection loop when the broker goes.
    _stop: DropGuard,
}

impl std::fmt::Debug for RemoteBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = matches!(&*self.shared.link.borrow(), Link::Up(conn) if !conn.is_dead());
        f.debug_struct("RemoteBroker")
            .field("addr", &self.shared.addr)
            .field("connected", &connected)
            .finish_non_exhaustive()
    }
}

impl RemoteBroker {
    /// Connects to the engine at `addr` (see [`Endpoint::parse`]) and handshakes.
    pub(crate) async fn connect(addr: &str, options: ConnectOptions) -> Result<(Self, RemoteInfo)> {
        let endpoint = Endpoint::parse(addr)?;
        let stop = CancellationToken::new();
        let (link, _) = watch::channel(Link::Down(Arc::from("connecting")));
        let shared = Arc::new(ClientShared {
            endpoint,
            addr: Arc::from(addr),
            options,
            next_id: AtomicU64::new(1),
            link,
            clock_offset_ms: AtomicI64::new(0),
            max_payload_bytes: AtomicUsize::new(0),
            max_frame_bytes: AtomicUsize::new(0),
            stop: stop.clone(),
        });
        let (conn, hello) = shared.connect_once().await?;
        shared.link.send_replace(Link::Up(conn));
        tracing::debug!(%addr, server = %hello.server, pid = hello.pid, "connected to an fq engine");
        let info = RemoteInfo::from(&hello);
        Ok((
            Self {
                shared,
                events: EventBus::new(),
                claimed_by: std::sync::Mutex::default(),
                knows_workers: std::sync::atomic::AtomicBool::new(false),
                _stop: stop.drop_guard(),
            },
            info,
        ))
    }
}

impl RemoteBroker {
    /// The worker that claimed the settled attempt, if the server can be told (and forgets it).
    fn worker_of(&self, settlement: &Settlement) -> Option<WorkerId> {
        let mut claimed = self
            .claimed_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (attempt, worker) = claimed.remove(&settlement.id)?;
        (attempt == settlement.attempt && self.knows_workers.load(Ordering::Relaxed))
            .then_some(worker)
    }
}

fn queue_names(queues: &[Arc<str>]) -> Vec<Cow<'_, str>> {
    queues.iter().map(|queue| Cow::Borrowed(&**queue)).collect()
}

impl Broker for RemoteBroker {
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Queued>>> {
        Box::pin(async move {
            if tasks.is_empty() {
                return Ok(Vec::new());
            }
            let wire: Vec<WireTaskOut<'_>> = tasks.iter().map(wire_task).collect();
            let ok: EnqueueOk = self
                .shared
                .request(Op::Enqueue, &EnqueueArgs { tasks: wire })
                .await?;
            Ok(ok.into_queued())
        })
    }

    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> Claiming<'a> {
        let (queues, max, wait, cancel) =
            (request.queues, request.max, request.wait, request.cancel);
        Box::pin(async move {
            let shared = &self.shared;
            let deadline = Instant::now() + wait;
            loop {
                if cancel.is_cancelled() {
                    return Ok(Vec::new());
                }
                // While the engine is away, a claim waits for it (up to its own wait) and then
                // finds nothing: a worker idles through a restart instead of erroring in a loop.
                let conn = tokio::select! {
                    conn = shared.current(deadline) => match conn {
                        Ok(conn) => conn,
                        Err(_) => return Ok(Vec::new()),
                    },
                    () = cancel.cancelled() => return Ok(Vec::new()),
                };
                let id = shared.next_id();
                let wait_ms = duration_ms(deadline.saturating_duration_since(Instant::now()));
                let args = ClaimArgs {
                    queues: queue_names(queues),
                    max,
                    wait_ms,
                };
                let frame = shared.request_body(id, Op::Claim, &args)?;
                let Ok(mut answer) = conn.send(id, frame, true) else {
                    continue;
                };
                let answer = tokio::select! {
                    answer = &mut answer => answer,
                    () = cancel.cancelled() => {
                        // The engine ends the claim early; tasks it already claimed still
                        // come back, and must reach the worker.
                        shared.abort(&conn, id);
                        answer.await
                    }
                };
                match answer {
                    Ok(Ok(raw)) => return Ok(decode::<TasksOk<TaskRecord>>(Op::Claim, &raw)?.tasks),
                    Ok(Err(Error::Connect { .. })) | Err(_) => {
                        if Instant::now() >= deadline {
                            return Ok(Vec::new());
                        }
                    }
                    Ok(Err(error)) => return Err(error),
                }
            }
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        Box::pin(async move {
            let mut args = settle_args(&settlement, self.events.has_audience());
            args.worker = self.worker_of(&settlement);
            let ok: SettleOk = self.shared.request(Op::Settle, &args).await?;
            Ok(settle_report(ok))
        })
    }

    fn settle_and_claim<'a>(&'a self, ended: Settlement, next: ClaimRequest<'a>) -> Chaining<'a> {
        Box::pin(async move {
            let mut settle = settle_args(&ended, self.events.has_audience());
            settle.worker = self.worker_of(&ended);
            let args = SettleAndClaimArgs {
                settle,
                queues: queue_names(next.queues),
                max: next.max,
            };
            let raw = self.shared.call(Op::SettleAndClaim, &args, true).await?;
            let ok: SettleAndClaimOk<TaskRecord> = decode(Op::SettleAndClaim, &raw)?;
            let settled = match ok.settled {
                Settled::Ok(report) => Ok(settle_report(report)),
                Settled::Error(error) => Err(error_from_wire(error)),
            };
            Ok(Chained {
                settled,
                claimed: ok.tasks,
            })
        })
    }

    fn heartbeat(&self, id: TaskId, attempt: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _: Empty = self
                .shared
                .request(Op::Heartbeat, &AttemptArgs { id, attempt })
                .await?;
            Ok(())
        })
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        Box::pin(async move {
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Task, &IdArgs { id }).await?;
            Ok(ok.task)
        })
    }

    fn upsert_schedule(
        &self,
        schedule: crate::Schedule,
        task: NewTask,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(async move {
            let args = ScheduleArgs::of(&schedule, wire_task(&task));
            let ok: ScheduleOk = self.shared.request(Op::Schedule, &args).await?;
            Ok(ok.schedule)
        })
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<crate::ScheduleInfo>>> {
        Box::pin(async move {
            let ok: SchedulesOk = self.shared.request(Op::Schedules, &Empty {}).await?;
            Ok(ok.schedules)
        })
    }

    fn act_on_schedule(
        &self,
        name: String,
        action: crate::ScheduleAction,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(async move {
            let args = ScheduleActionArgs {
                name,
                action: action.as_str().to_owned(),
            };
            let ok: ScheduleOk = self.shared.request(Op::ScheduleAction, &args).await?;
            Ok(ok.schedule)
        })
    }

    fn set_paused(&self, queue: String, paused: bool) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let op = if paused { Op::Pause } else { Op::Resume };
            let ok: ChangedOk = self.shared.request(op, &QueueArgs { queue }).await?;
            Ok(ok.changed)
        })
    }

    fn set_limits(
        &self,
        queue: String,
        limits: crate::config::QueueLimits,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let args = LimitArgs {
                queue,
                concurrency: limits.concurrency,
                rate: limits.rate,
            };
            let _: Empty = self.shared.request(Op::Limit, &args).await?;
            Ok(())
        })
    }

    /// One `wait` request per `MAX_WAIT_MS` (the server's cap), until the outcome or the
    /// timeout; a lost connection ends the wait with [`Error::Connect`].
    fn wait(&self, id: TaskId, timeout: Duration) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let timeout_ms = duration_ms(left).min(MAX_WAIT_MS);
                let answer = self
                    .shared
                    .request::<_, TaskOk<TaskRecord>>(Op::Wait, &WaitArgs { id, timeout_ms })
                    .await;
                match answer {
                    Ok(ok) => {
                        return ok.task.ok_or_else(|| Error::Remote {
                            kind: "bad_response".into(),
                            message: "the engine's answer to wait holds no task".into(),
                        });
                    }
                    Err(Error::WaitTimeout { .. }) if Instant::now() < deadline => {}
                    Err(Error::WaitTimeout { .. }) => {
                        return Err(Error::WaitTimeout { id, timeout });
                    }
                    Err(other) => return Err(other),
                }
            }
        })
    }

    fn cancel(&self, id: TaskId, by: String) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let args = CancelArgs { id, by: Some(by) };
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Cancel, &args).await?;
            let record = ok.task.ok_or_else(|| Error::Remote {
                kind: "bad_response".into(),
                message: "the engine's answer to cancel holds no task".into(),
            })?;
            let now = millis_to_datetime(self.now_ms());
            let snapshot = Arc::new(record.clone());
            self.events
                .emit(|| Event::new(EventKind::Cancelled, snapshot, now));
            Ok(record)
        })
    }

    fn cleanup(&self, policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>> {
        Box::pin(async move {
            let args = CleanupArgs {
                completed_retention_ms: Some(duration_ms(policy.completed)),
                failed_retention_ms: Some(duration_ms(policy.failed)),
            };
            let ok: CleanupOk = self.shared.request(Op::Cleanup, &args).await?;
            Ok(ok.into())
        })
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>> {
        Box::pin(async move {
            let ok: TasksOk<TaskRecord> = self
                .shared
                .request(Op::List, &ListArgs::from(query))
                .await?;
            Ok(ok.tasks)
        })
    }

    fn retry(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let ok: TaskOk<TaskRecord> = self.shared.request(Op::Retry, &IdArgs { id }).await?;
            ok.task.ok_or_else(|| Error::Remote {
                kind: "bad_response".into(),
                message: "the engine's answer to retry holds no task".into(),
            })
        })
    }

    fn retry_failed(&self, queue: Option<String>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let ok: CountOk = self
                .shared
                .request(Op::RetryFailed, &RetryFailedArgs { queue })
                .await?;
            Ok(ok.count)
        })
    }

    fn purge(&self, queue: String, status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let ok: CountOk = self
                .shared
                .request(Op::Purge, &PurgeArgs { queue, status })
                .await?;
            Ok(ok.count)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        Box::pin(self.shared.request(Op::Stats, &Empty {}))
    }

    fn metrics(&self) -> BoxFuture<'_, Result<String>> {
        Box::pin(async move {
            let ok: crate::control::protocol::MetricsOk =
                self.shared.request(Op::Metrics, &Empty {}).await?;
            Ok(ok.text)
        })
    }

    fn events(&self) -> &EventBus {
        &self.events
    }

    fn now_ms(&self) -> Millis {
        chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(self.shared.clock_offset_ms.load(Ordering::Relaxed))
    }

    fn max_payload_bytes(&self) -> usize {
        self.shared.max_payload_bytes.load(Ordering::Relaxed)
    }

    fn attempts(&self, id: TaskId) -> BoxFuture<'_, Result<Vec<AttemptRecord>>> {
        Box::pin(async move {
            let ok: AttemptsOk = self.shared.request(Op::Attempts, &IdArgs { id }).await?;
            Ok(ok.attempts)
        })
    }

    fn explain(&self, id: TaskId) -> BoxFuture<'_, Result<crate::Explanation>> {
        Box::pin(async move { self.shared.request(Op::Explain, &IdArgs { id }).await })
    }

    fn workers(&self) -> BoxFuture<'_, Result<crate::WorkersReport>> {
        Box::pin(self.shared.request(Op::Workers, &Empty {}))
    }

    fn announce_worker(&self, info: crate::WorkerInfo) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _: Empty = self
                .shared
                .request(Op::WorkerAnnounce, &WorkerAnnounceArgs { worker: info })
                .await?;
            self.knows_workers.store(true, Ordering::Relaxed);
            Ok(())
        })
    }

    fn worker_heartbeat(
        &self,
        worker: WorkerId,
        running: Vec<(TaskId, u32)>,
    ) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let running = running
                .into_iter()
                .map(|(id, attempt)| RunningArgs { id, attempt })
                .collect();
            let ok: KnownOk = self
                .shared
                .request(
                    Op::WorkerHeartbeat,
                    &WorkerHeartbeatArgs { worker, running },
                )
                .await?;
            Ok(ok.known)
        })
    }

    fn worker_stopped(&self, worker: WorkerId) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _: Empty = self
                .shared
                .request(Op::WorkerStopped, &WorkerArgs { worker })
                .await?;
            Ok(())
        })
    }

    fn worker_claimed(&self, worker: WorkerId, attempts: &[(TaskId, u32)]) {
        let mut claimed = self
            .claimed_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, attempt) in attempts {
            claimed.insert(*id, (*attempt, worker));
        }
    }
}

pub(super) fn settle_args(settlement: &Settlement, record: bool) -> SettleArgs {
    let mut args = SettleArgs {
        id: settlement.id,
        attempt: settlement.attempt,
        outcome: String::new(),
        result: None,
        error: None,
        retry_after_ms: None,
        record,
        worker: None,
    };
    match &settlement.outcome {
        Outcome::Completed { result } => {
            args.outcome = "completed".into();
            args.result = Some(result.clone());
        }
        Outcome::Failed {
            failure,
            retry_after,
        } => {
            args.outcome = "failed".into();
            args.error = Some(failure.clone());
            args.retry_after_ms = retry_after.map(duration_ms);
        }
        Outcome::Released => args.outcome = "released".into(),
    }
    args
}

fn settle_report(ok: SettleOk) -> SettleReport {
    SettleReport {
        status: ok.status,
        retry_at: ok.retry_at_ms,
        record: ok.record.map(Arc::new),
    }
}

/// A task as the Rust client sends it.
fn wire_task(task: &NewTask) -> WireTaskOut<'_> {
    WireTaskOut {
        id: task.id,
        name: &task.name,
        queue: &task.queue,
        priority: task.priority,
        payload: &task.payload,
        max_retries: task.max_retries,
        timeout_ms: task.timeout.map(duration_ms),
        retry_delay_ms: task.retry_delay.map(duration_ms),
        run_at_ms: task.run_at,
        unique_key: task.unique_key(),
        unique_for_ms: task.unique.as_ref().and_then(|spec| spec.for_ms),
    }
}
