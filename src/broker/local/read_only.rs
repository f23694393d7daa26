//! A store opened only to look at it (`Engine::builder(path).read_only()`, and the CLI's `stats`,
//! `list` and `show` on a store nobody serves): queries read the file as it is, with no crash
//! recovery, no writer thread and no timer, and every change is refused with
//! [`StoreError::ReadOnly`]. A RUNNING task a crashed owner left stays RUNNING here; the next
//! engine that owns the store recovers it.

use std::path::{Path, PathBuf};

use super::api::{list_records, mark_paused, read_record, stats_of_counts, waited_ms};
use super::*;

/// Reads another system's numbers for `stats` (RabbitMQ's queue depths, in RabbitMQ mode),
/// given the queues the store knows.
pub(crate) type StatsProbe = Arc<
    dyn Fn(std::collections::BTreeSet<String>) -> BoxFuture<'static, crate::RabbitStats>
        + Send
        + Sync,
>;

/// The read-only view of a store.
pub(crate) struct ReadOnlyBroker {
    store: Arc<Store>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    events: EventBus,
    max_payload_bytes: usize,
    probe: Option<StatsProbe>,
}

impl std::fmt::Debug for ReadOnlyBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyBroker")
            .field("path", &self.path)
            .field("probe", &self.probe.is_some())
            .finish_non_exhaustive()
    }
}

impl ReadOnlyBroker {
    /// Opens the existing store at `path` read-only.
    pub(crate) fn open(
        path: &Path,
        options: &StoreOptions,
        clock: Arc<dyn Clock>,
        max_payload_bytes: usize,
    ) -> Result<Self> {
        let store = Store::open_read_only(path, options)?;
        Ok(Self {
            store: Arc::new(store),
            path: path.to_path_buf(),
            clock,
            events: EventBus::new(),
            max_payload_bytes,
            probe: None,
        })
    }

    /// Adds `probe`'s numbers to `stats` (RabbitMQ's depths of the store's queues).
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    pub(crate) fn with_stats_probe(mut self, probe: StatsProbe) -> Self {
        self.probe = Some(probe);
        self
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl Fn(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        read_off_the_runtime(&self.store, read).await
    }

    fn refused<T: Send + 'static>(&self) -> BoxFuture<'_, Result<T>> {
        let error = StoreError::ReadOnly {
            path: self.path.clone(),
        };
        Box::pin(std::future::ready(Err(error.into())))
    }
}

impl Broker for ReadOnlyBroker {
    fn enqueue(&self, _tasks: Vec<NewTask>) -> BoxFuture<'_, Result<Vec<Queued>>> {
        self.refused()
    }

    fn claim<'a>(&'a self, _request: ClaimRequest<'a>) -> Claiming<'a> {
        self.refused()
    }

    fn settle(&self, _settlement: Settlement) -> BoxFuture<'_, Result<SettleReport>> {
        self.refused()
    }

    fn heartbeat(&self, _id: TaskId, _attempt: u32) -> BoxFuture<'_, Result<()>> {
        self.refused()
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<TaskRecord>>> {
        Box::pin(self.read(move |store| read_record(store, id)))
    }

    /// Nothing changes a store nobody serves: a task with its outcome is answered, any other
    /// is refused as read-only rather than waited for in vain.
    fn wait(&self, id: TaskId, _timeout: Duration) -> BoxFuture<'_, Result<TaskRecord>> {
        Box::pin(async move {
            let record = self.task(id).await?.ok_or(crate::Error::NotFound(id))?;
            if super::waiters::is_outcome(record.status) {
                return Ok(record);
            }
            self.refused().await
        })
    }

    fn set_paused(&self, _queue: String, _paused: bool) -> BoxFuture<'_, Result<bool>> {
        self.refused()
    }

    fn upsert_schedule(
        &self,
        _schedule: crate::Schedule,
        _task: NewTask,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        self.refused()
    }

    fn schedules(&self) -> BoxFuture<'_, Result<Vec<crate::ScheduleInfo>>> {
        Box::pin(self.read(super::schedules::list_schedules))
    }

    fn act_on_schedule(
        &self,
        _name: String,
        _action: crate::ScheduleAction,
    ) -> BoxFuture<'_, Result<crate::ScheduleInfo>> {
        self.refused()
    }

    fn set_limits(
        &self,
        _queue: String,
        _limits: crate::config::QueueLimits,
    ) -> BoxFuture<'_, Result<()>> {
        self.refused()
    }

    fn cancel(&self, _id: TaskId, _by: String) -> BoxFuture<'_, Result<TaskRecord>> {
        self.refused()
    }

    fn cleanup(&self, _policy: RetentionPolicy) -> BoxFuture<'_, Result<CleanupReport>> {
        self.refused()
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<TaskRecord>>> {
        Box::pin(self.read(move |store| list_records(store, &query)))
    }

    fn retry(&self, _id: TaskId) -> BoxFuture<'_, Result<TaskRecord>> {
        self.refused()
    }

    fn retry_failed(&self, _queue: Option<String>) -> BoxFuture<'_, Result<u64>> {
        self.refused()
    }

    fn purge(&self, _queue: String, _status: Option<TaskStatus>) -> BoxFuture<'_, Result<u64>> {
        self.refused()
    }

    /// As the owning engine's, with the ready figures read from the waiting index (there is no
    /// ready heap here) and no completions in the last minute (no engine runs anything).
    fn stats(&self) -> BoxFuture<'_, Result<Stats>> {
        let now = self.now_ms();
        let counted = self.read(move |store| {
            let mut stats = stats_of_counts(store.counts()?);
            mark_paused(&mut stats, store.paused_queues()?);
            let mut due: std::collections::HashMap<String, (u64, Millis)> = Default::default();
            store.for_each_waiting(|queue, order, _id| {
                if order.due_at <= now {
                    let entry = due.entry(queue.to_owned()).or_insert((0, order.due_at));
                    entry.0 += 1;
                    entry.1 = entry.1.min(order.due_at);
                }
            })?;
            for (queue, entry) in &mut stats.queues {
                let (ready, oldest_due) = due
                    .get(queue)
                    .map_or((0, None), |&(ready, oldest)| (ready, Some(oldest)));
                entry.ready = ready;
                entry.scheduled = (entry.pending + entry.retrying).saturating_sub(ready);
                entry.oldest_ready_ms = oldest_due.map(|due| waited_ms(now, due));
            }
            Ok(stats)
        });
        Box::pin(async move {
            let mut stats = counted.await?;
            if let Some(probe) = &self.probe {
                stats.rabbitmq = Some(probe(stats.queues.keys().cloned().collect()).await);
            }
            Ok(stats)
        })
    }

    fn events(&self) -> &EventBus {
        &self.events
    }

    fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    fn attempts(&self, id: TaskId) -> BoxFuture<'_, Result<Vec<crate::AttemptRecord>>> {
        Box::pin(self.read(move |store| {
            read_record(store, id)?.ok_or(Error::NotFound(id))?;
            super::observe::read_attempts(store, id)
        }))
    }

    /// With no engine serving the store, no worker is live: the explanation says so.
    fn explain(&self, id: TaskId) -> BoxFuture<'_, Result<crate::Explanation>> {
        Box::pin(async move {
            let now = self.now_ms();
            let (stored, paused) = self
                .read(move |store| {
                    let stored = super::observe::store_facts(store, id, now)?;
                    Ok((stored, store.paused_queues()?))
                })
                .await?;
            let live = super::observe::LiveFacts {
                paused: paused.contains(stored.queue()),
                limits: crate::config::QueueLimits::default(),
                workers: crate::WorkersReport::default(),
                lease_expires_at: None,
            };
            Ok(super::observe::explain_with(stored, live, now))
        })
    }
}
