//! The [`Broker`] API of the embedded broker: each call becomes a writer command (changes)
//! or a read of the store (queries).

use super::*;
use crate::config::QueueLimits;

impl Broker for LocalBroker {
    fn enqueue(&self, tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Queued>>> {
        Box::pin(async move {
            if tasks.is_empty() {
                return Ok(Vec::new());
            }
            self.request(|reply| Command::Enqueue { tasks, reply })
                .await
        })
    }

    fn claim<'a>(&'a self, request: ClaimRequest<'a>) -> Claiming<'a> {
        let (queues, max, wait, cancel) =
            (request.queues, request.max, request.wait, request.cancel);
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = self.shared.work.notified();
                tokio::pin!(notified);
                // Registered before looking, so a push between the look and the wait wakes us.
                notified.as_mut().enable();
                // Chosen again at each look: a pause or resume, a run's end in a full queue
                // (which wake us) or a rate's next start changes it.
                let (claimable, next_free) = self.claimable(queues);
                let selection = self.shared.ready.select(&claimable);
                let mut picked = Vec::new();
                while picked.len() < max.max(1) {
                    match selection.pop() {
                        Some(task) => picked.push(task),
                        None => break,
                    }
                }
                if !picked.is_empty() {
                    let lease_until = self.lease_deadline();
                    // Not raced against `cancel`: once the claim is sent, its answer must reach a
                    // worker, or the tasks would sit RUNNING with nobody running them.
                    let claimed = self
                        .claiming(picked, |tasks, reply| Command::Claim {
                            tasks,
                            lease_until,
                            reply,
                        })
                        .await?;
                    if !claimed.is_empty() {
                        return Ok(claimed);
                    }
                    continue;
                }
                let until = self.sleep_until(deadline, next_free);
                let (woken, handed) = self
                    .wait_for_work(notified, &claimable, max.max(1), until, cancel)
                    .await;
                if !handed.is_empty() {
                    return Ok(handed);
                }
                if !woken && (until >= deadline || cancel.is_cancelled()) {
                    return Ok(Vec::new());
                }
            }
        })
    }

    fn settle(&self, settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        Box::pin(async move {
            let lease_until = self.lease_deadline();
            let chained = self
                .request(|reply| Command::Settle {
                    settlement,
                    next: Vec::new(),
                    lease_until,
                    reply,
                })
                .await?;
            chained.settled
        })
    }

    fn settle_and_claim<'a>(&'a self, ended: Settlement, next: ClaimRequest<'a>) -> Chaining<'a> {
        Box::pin(async move {
            let selection = self.shared.ready.select(&self.claimable(next.queues).0);
            let picked: Vec<_> = std::iter::from_fn(|| selection.pop())
                .take(next.max)
                .collect();
            let lease_until = self.lease_deadline();
            self.claiming(picked, |next, reply| Command::Settle {
                settlement: ended,
                next,
                lease_until,
                reply,
            })
            .await
        })
    }

    fn heartbeat(&self, id: TaskId, attempt: u32) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.shared.leases.renew(id, attempt, self.lease_deadline()) {
                return Ok(());
            }
            let record = self.read(move |store| Ok(store.read_task(id)?)).await?;
            let task = record.ok_or(Error::NotFound(id))?;
            Err(Error::StaleAttempt {
                id,
                attempt,
                current: task.attempts,
                status: task.status,
            })
        })
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        Box::pin(self.read(move |store| read_record(store, id)))
    }

    fn wait(&self, id: TaskId, timeout: Duration) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(self.wait_for_outcome(id, timeout))
    }

    fn set_paused(&self, queue: String, paused: bool) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.set_queue_paused(queue, paused))
    }

    fn upsert_schedule(
        &self,
        schedule: crate::Schedule,
        task: NewTask,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(self.put_schedule(schedule, task))
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<crate::ScheduleInfo>>> {
        Box::pin(self.schedule_list())
    }

    fn act_on_schedule(
        &self,
        name: String,
        action: crate::ScheduleAction,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        Box::pin(self.schedule_action(name, action))
    }

    fn set_limits(&self, queue: String, limits: QueueLimits) -> BoxFuture<'_, Result<()>> {
        self.set_queue_limits(&queue, limits);
        Box::pin(std::future::ready(Ok(())))
    }

    fn cancel(&self, id: TaskId, by: String) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            self.request(|reply| Command::Cancel { id, by, reply })
                .await
        })
    }

    fn cleanup(&self, policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>> {
        Box::pin(async move {
            let now = self.now_ms();
            let before = |keep: Duration| now.saturating_sub(crate::clock::duration_millis(keep));
            let (completed_before, failed_before) =
                (before(policy.completed), before(policy.failed));
            let mut total = CleanupReport::default();
            loop {
                let report = self
                    .request(|reply| Command::Cleanup {
                        completed_before,
                        failed_before,
                        limit: CLEANUP_CHUNK,
                        reply,
                    })
                    .await?;
                total.completed += report.completed;
                total.failed += report.failed;
                total.cancelled += report.cancelled;
                if report.completed + report.failed + report.cancelled < CLEANUP_CHUNK as u64 {
                    break;
                }
            }
            if total != CleanupReport::default() {
                tracing::info!(
                    completed = total.completed,
                    failed = total.failed,
                    cancelled = total.cancelled,
                    "retention cleanup deleted finished tasks"
                );
            }
            Ok(total)
        })
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>> {
        Box::pin(self.read(move |store| list_records(store, &query)))
    }

    fn retry(&self, id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(self.request(move |reply| Command::Retry { id, reply }))
    }

    fn retry_failed(&self, queue: Option<String>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(
            self.page_through(move |cursor, reply| Command::RetryFailed {
                queue: queue.clone(),
                after: cursor.map(|(_, key)| key),
                limit: CLEANUP_CHUNK,
                reply,
            }),
        )
    }

    fn purge(&self, queue: String, status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if status == Some(TaskStatus::Running) {
                return Err(Error::invalid(
                    "status",
                    "RUNNING tasks cannot be purged; stop their workers or wait for them",
                ));
            }
            self.page_through(move |cursor, reply| {
                let (phase, after) = cursor.map_or((0, None), |(phase, key)| {
                    (phase, (!key.is_empty()).then_some(key))
                });
                Command::Purge {
                    queue: queue.clone(),
                    status,
                    phase,
                    after,
                    limit: CLEANUP_CHUNK,
                    reply,
                }
            })
            .await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        Box::pin(async move {
            let counts = self.read(|store| Ok(store.counts()?)).await?;
            let now = self.now_ms();
            let mut stats = stats_of_counts(counts);
            mark_paused(&mut stats, self.shared.paused.list());
            for (queue, limits) in self.shared.limits.list() {
                stats.queues.entry(queue).or_default().limits = limits;
            }
            for (queue, entry) in &mut stats.queues {
                let (ready, oldest_due) = self.shared.ready.queue_summary(queue);
                entry.ready = ready;
                entry.scheduled = (entry.pending + entry.retrying).saturating_sub(ready);
                entry.oldest_ready_ms = oldest_due.map(|due| waited_ms(now, due));
                entry.completed_last_minute = self.shared.completions.last_minute(queue, now);
            }
            stats.writes_refused = self.shared.poisoned();
            Ok(stats)
        })
    }

    fn emits_events(&self) -> bool {
        true
    }

    fn events(&self) -> &EventBus {
        &self.shared.events
    }

    fn now_ms(&self) -> Millis {
        self.shared.clock.now_ms()
    }

    fn max_payload_bytes(&self) -> usize {
        self.settings.max_payload_bytes
    }

    fn attempts(&self, id: TaskId) -> BoxFuture<'_, Result<Vec<crate::AttemptRecord>>> {
        Box::pin(self.attempt_history(id))
    }

    fn explain(&self, id: TaskId) -> BoxFuture<'_, Result<crate::Explanation>> {
        Box::pin(self.explanation(id))
    }

    fn announce_worker(&self, info: crate::WorkerInfo) -> BoxFuture<'_, Result<()>> {
        self.shared.workers.announce(info, self.now_ms());
        Box::pin(std::future::ready(Ok(())))
    }

    fn worker_heartbeat(
        &self,
        worker: crate::WorkerId,
        running: Vec<(TaskId, u32)>,
    ) -> BoxFuture<'_, Result<bool>> {
        let now = self.now_ms();
        let known = self.shared.workers.heartbeat(worker, now);
        if known {
            self.shared.workers.still_running(worker, &running, now);
        }
        Box::pin(std::future::ready(Ok(known)))
    }

    fn worker_stopped(&self, worker: crate::WorkerId) -> BoxFuture<'_, Result<()>> {
        self.shared.workers.stopped(worker, self.now_ms());
        Box::pin(std::future::ready(Ok(())))
    }

    fn worker_claimed(&self, worker: crate::WorkerId, attempts: &[(TaskId, u32)]) {
        self.shared.workers.claimed(worker, attempts, self.now_ms());
    }

    fn workers(&self) -> BoxFuture<'_, Result<crate::WorkersReport>> {
        Box::pin(std::future::ready(Ok(self
            .shared
            .workers
            .report(self.now_ms()))))
    }
}

/// One task's record, as a query answers it.
pub(super) fn read_record(store: &Store, id: TaskId) -> Result<Option<TaskRecord>> {
    Ok(store.read_task(id)?.map(|task| task.to_record(id)))
}

/// The records a [`ListQuery`] selects, oldest first.
pub(super) fn list_records(store: &Store, query: &ListQuery) -> Result<Vec<TaskRecord>> {
    let limit = if query.limit == 0 { 100 } else { query.limit };
    let found = store.scan_tasks(query.after, limit, |task| {
        query.queue.as_deref().is_none_or(|q| q == task.queue)
            && query.status.is_none_or(|s| s == task.status)
            && query
                .unique_key
                .as_deref()
                .is_none_or(|key| task.unique.as_ref().is_some_and(|spec| spec.key == key))
    })?;
    Ok(found
        .into_iter()
        .map(|(id, task)| task.to_record(id))
        .collect())
}

/// Per-queue counts by status from the store's counts table; the figures that need the ready
/// tasks (ready, scheduled, oldest) are left for the caller.
pub(super) fn stats_of_counts(
    counts: std::collections::BTreeMap<(String, TaskStatus), u64>,
) -> Stats {
    let mut stats = Stats::default();
    for ((queue, status), n) in counts {
        let entry = stats.queues.entry(queue).or_default();
        match status {
            TaskStatus::Pending => entry.pending = n,
            TaskStatus::Running => entry.running = n,
            TaskStatus::Retrying => entry.retrying = n,
            TaskStatus::Completed => entry.completed = n,
            TaskStatus::Failed => entry.failed = n,
            TaskStatus::Cancelled => entry.cancelled = n,
            TaskStatus::Forwarded => entry.forwarded = n,
        }
    }
    stats
}

/// Marks the paused queues, adding those that hold no task yet (paused ahead).
pub(super) fn mark_paused(stats: &mut Stats, paused: Vec<String>) {
    for queue in paused {
        stats.queues.entry(queue).or_default().paused = true;
    }
}

/// How long a task due at `due` has waited by `now`, in milliseconds.
pub(super) fn waited_ms(now: Millis, due: Millis) -> u64 {
    u64::try_from(now.saturating_sub(due)).unwrap_or(0)
}
