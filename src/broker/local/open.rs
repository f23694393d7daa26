//! Opening the embedded broker: the store, recovery of what a previous process left RUNNING
//! (the state machine's orphan move, as for an expired lease), the in-memory indexes rebuilt
//! from the waiting index, and the writer and timer threads.

use super::*;

impl LocalBroker {
    /// Opens the store, recovers what the previous process left RUNNING, rebuilds the ready
    /// heap and the delay index from the waiting index, and starts the writer and timer.
    pub(crate) fn open(
        path: &Path,
        settings: LocalSettings,
        clock: Arc<dyn Clock>,
        events: EventBus,
    ) -> Result<Self> {
        let store = Arc::new(Store::open(path, &settings.store)?);
        let now = clock.now_ms();
        let ready = ReadyHeap::new();
        let delayed = DelayIndex::new();
        let place = |queue: &str, order: ReadyOrder, id: TaskId| {
            if order.due_at <= now {
                ready.push(queue, order, id);
            } else {
                delayed.insert(ready.intern(queue), order, id);
            }
        };
        let mut next_seq = 0;
        let mut recovery = RecoveryReport {
            waiting: store.for_each_waiting(|queue, order, id| {
                next_seq = next_seq.max(order.seq + 1);
                place(queue, order, id);
            })?,
            missing_log_forgotten: store.forgot_missing_log(),
            ..RecoveryReport::default()
        };

        let orphans = store.running()?;
        if !orphans.is_empty() {
            let retry = settings.retry;
            let requeued = store.write(|tables| {
                let mut requeued = Vec::new();
                let mut ctx = lifecycle::Context {
                    now,
                    retry,
                    next_seq: &mut next_seq,
                };
                for (id, _) in &orphans {
                    let task = match tables.get_task(*id) {
                        Ok(Some(task)) => task,
                        Ok(None) => {
                            tables.remove_lease(*id)?;
                            continue;
                        }
                        // As a claim does: one damaged record must not keep the whole store
                        // from opening; it stays in place and reads as corrupt.
                        Err(StoreError::CorruptRecord { id, detail }) => {
                            tracing::error!(task.id = %id, %detail, "cannot recover a task left running: its record is corrupt");
                            tables.remove_lease(id)?;
                            continue;
                        }
                        Err(other) => return Err(other),
                    };
                    // The same move as an expired lease, under the attempt the record holds.
                    let attempt = task.attempts;
                    match lifecycle::orphan(task, *id, attempt, Orphaned::ProcessEnded, &mut ctx) {
                        Ok(mut step) => {
                            writer::write_step(tables, *id, &mut step)?;
                            if step.task.status == TaskStatus::Retrying {
                                let order = lifecycle::order_of(&step.task);
                                requeued.push((step.task.queue, order, *id));
                            }
                        }
                        // A lease row left beside a task that is not RUNNING.
                        Err(_) => tables.remove_lease(*id)?,
                    }
                }
                Ok(requeued)
            })?;
            recovery.orphans_retrying = requeued.len() as u64;
            recovery.orphans_failed = orphans.len() as u64 - recovery.orphans_retrying;
            recovery.waiting += recovery.orphans_retrying;
            tracing::warn!(
                retrying = recovery.orphans_retrying,
                failed = recovery.orphans_failed,
                "recovered tasks left running by a previous process"
            );
            for (queue, order, id) in requeued {
                place(&queue, order, id);
            }
        }

        super::schedules::declare_config_schedules(&store, &settings.schedules, now)?;
        let shared = Arc::new(Shared {
            ready,
            delayed,
            leases: LeaseTable::default(),
            workers: crate::broker::workers::WorkerRegistry::default(),
            work: Notify::new(),
            timer: TimerSignal::default(),
            clock,
            events,
            stopping: AtomicBool::new(false),
            completions: CompletionRate::default(),
            poisoned_flag: AtomicBool::new(false),
            poison: Mutex::new(None),
            writer_exit: WriterExit::default(),
            waiters: Default::default(),
            handoffs: Default::default(),
            paused: super::pause::PausedQueues::new(store.paused_queues()?),
            schedule_alarm: super::schedules::ScheduleAlarm::new(store.next_schedule_fire()?, now),
            limits: super::limits::QueueLimiter::default(),
            metrics: settings.metrics.clone(),
        });
        let weak = Arc::downgrade(&shared);
        shared.clock.on_advance(Box::new(move || {
            if let Some(shared) = weak.upgrade() {
                shared.timer.poke();
            }
        }));

        let (sender, receiver) = crossbeam_channel::unbounded();
        let writer = Writer {
            store: Arc::clone(&store),
            shared: Arc::clone(&shared),
            next_seq,
            waiting: recovery.waiting,
            settings: WriterSettings {
                retry: settings.retry,
                max_pending: settings.max_pending,
                min_free_bytes: settings.min_free_bytes,
                self_heal: settings.self_heal,
                lease_ms: crate::clock::duration_millis(settings.lease),
            },
            follow_ups: 0,
            answered_at: None,
            last_commit: Duration::ZERO,
            unflushed_since: None,
            held_commit_at: None,
            healing: None,
            forwarding: std::collections::HashSet::new(),
            instruments: settings
                .metrics
                .clone()
                .map(crate::metrics::InstrumentCache::new),
            pipeline: Default::default(),
        };
        let spawn_error =
            |e: std::io::Error| Error::Internal(format!("cannot start an engine thread: {e}"));
        let writer_thread = std::thread::Builder::new()
            .name("fq-writer".into())
            .spawn(move || writer.run(&receiver))
            .map_err(spawn_error)?;
        let timer_shared = Arc::clone(&shared);
        let timer_sender = sender.clone();
        let timer_thread = std::thread::Builder::new()
            .name("fq-timer".into())
            .spawn(move || timer::run(&timer_shared, &timer_sender))
            .map_err(spawn_error)?;
        tracing::info!(path = %path.display(), waiting = recovery.waiting, "store opened");
        Ok(Self {
            shared,
            store,
            commands: Some(sender),
            threads: Mutex::new(vec![timer_thread, writer_thread]),
            settings,
            recovery,
        })
    }
}
