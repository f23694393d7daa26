//! Task lifecycle events with Framefox's names, fanned out to synchronous listeners (on a
//! thread of their own) and async subscribers. Emitting never blocks: with nobody listening
//! nothing is built, and a slow listener makes events drop (counted), not workers wait.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::task::{Outcome, TaskFailure, TaskRecord, TaskStatus};

/// How many events may wait for the listener thread before new ones are dropped.
const LISTENER_BACKLOG: usize = 65_536;
/// How many events an async subscriber may fall behind before it skips ahead.
const SUBSCRIBER_BACKLOG: usize = 16_384;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A task was committed to its queue: `task.queued`.
    Queued,
    /// A worker is about to run a task: `worker.task.before_execution`.
    BeforeExecution,
    /// A run succeeded; the event carries the result: `worker.task.after_execution`.
    AfterExecution,
    /// A run failed; the event carries the error: `worker.task.execution_error`.
    ExecutionError,
    /// A failed task will run again; the event carries the retry time: `task.retrying`.
    Retrying,
    /// A task failed for good: `task.failed`.
    Failed,
    /// A waiting task was cancelled: `task.cancelled`.
    Cancelled,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        EventKind::Queued,
        EventKind::BeforeExecution,
        EventKind::AfterExecution,
        EventKind::ExecutionError,
        EventKind::Retrying,
        EventKind::Failed,
        EventKind::Cancelled,
    ];

    /// The event's name, as listeners register for it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Queued => "task.queued",
            EventKind::BeforeExecution => "worker.task.before_execution",
            EventKind::AfterExecution => "worker.task.after_execution",
            EventKind::ExecutionError => "worker.task.execution_error",
            EventKind::Retrying => "task.retrying",
            EventKind::Failed => "task.failed",
            EventKind::Cancelled => "task.cancelled",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One lifecycle event: the task as it was at that moment, and what the moment adds.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The task's record at that moment.
    pub task: Arc<TaskRecord>,
    /// The handler's result (`worker.task.after_execution`).
    pub result: Option<Value>,
    /// The error (`worker.task.execution_error`, `task.retrying`, `task.failed`).
    pub error: Option<TaskFailure>,
    /// When the next attempt may start (`task.retrying`).
    pub retry_at: Option<DateTime<Utc>>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl Event {
    /// An event of `kind` about `task`, happening `at`.
    pub(crate) fn new(kind: EventKind, task: Arc<TaskRecord>, at: DateTime<Utc>) -> Self {
        Self {
            kind,
            task,
            result: None,
            error: None,
            retry_at: None,
            at,
        }
    }

    /// The event a settled attempt's new status makes: `task.retrying` (with the retry time)
    /// or `task.failed`, carrying the attempt's error; none for any other status.
    pub(crate) fn settled(
        status: TaskStatus,
        task: Arc<TaskRecord>,
        error: Option<TaskFailure>,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Option<Self> {
        let kind = match status {
            TaskStatus::Retrying => EventKind::Retrying,
            TaskStatus::Failed => EventKind::Failed,
            _ => return None,
        };
        let mut event = Self::new(kind, task, at);
        event.error = error;
        event.retry_at = retry_at.filter(|_| kind == EventKind::Retrying);
        Some(event)
    }

    /// The events an attempt's end makes, in order: `worker.task.after_execution` with the
    /// result; or `worker.task.execution_error` with the error, then `task.retrying` or
    /// `task.failed` by the task's new `status`. A released attempt makes none.
    pub(crate) fn of_attempt_end(
        outcome: &Outcome,
        status: TaskStatus,
        task: &Arc<TaskRecord>,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> impl Iterator<Item = Self> + use<> {
        let events = match outcome {
            Outcome::Completed { result } => {
                let mut event = Self::new(EventKind::AfterExecution, Arc::clone(task), at);
                event.result = Some(result.clone());
                [Some(event), None]
            }
            Outcome::Failed { failure, .. } => {
                let mut event = Self::new(EventKind::ExecutionError, Arc::clone(task), at);
                event.error = Some(failure.clone());
                let settled = Self::settled(
                    status,
                    Arc::clone(task),
                    Some(failure.clone()),
                    retry_at,
                    at,
                );
                [Some(event), settled]
            }
            Outcome::Released => [None, None],
        };
        events.into_iter().flatten()
    }

    /// The event's name (`worker.task.after_execution`, ...).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// The event name given to `add_listener` is not one fq emits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown event {name:?}; fq emits: {}", EventKind::ALL.map(EventKind::name).join(", "))]
pub struct UnknownEvent {
    name: String,
}

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

struct BusInner {
    /// Listeners by event kind; "*" listeners are stored under every kind.
    listeners: RwLock<HashMap<EventKind, Vec<Listener>>>,
    listener_count: AtomicUsize,
    broadcast: broadcast::Sender<Arc<Event>>,
    /// The queue to the listener thread, started with the first listener.
    dispatch: Mutex<Option<crossbeam_channel::Sender<Arc<Event>>>>,
    dropped: AtomicU64,
}

/// The fan-out point for lifecycle events. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field(
                "listeners",
                &self.inner.listener_count.load(Ordering::Relaxed),
            )
            .field("subscribers", &self.inner.broadcast.receiver_count())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus with no listeners.
    pub fn new() -> Self {
        let (broadcast, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        Self {
            inner: Arc::new(BusInner {
                listeners: RwLock::new(HashMap::new()),
                listener_count: AtomicUsize::new(0),
                broadcast,
                dispatch: Mutex::new(None),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Calls `listener` for every event named `name` (or every event, for `"*"`). Listeners run
    /// one at a time on a thread of their own, in event order; a panic in one is logged and
    /// the others go on.
    ///
    /// # Errors
    /// When `name` is neither `"*"` nor an event fq emits.
    pub fn add_listener(
        &self,
        name: &str,
        listener: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<(), UnknownEvent> {
        let kinds: Vec<EventKind> = if name == "*" {
            EventKind::ALL.to_vec()
        } else {
            vec![EventKind::from_name(name).ok_or_else(|| UnknownEvent {
                name: name.to_owned(),
            })?]
        };
        self.start_dispatcher();
        let listener: Listener = Arc::new(listener);
        let mut listeners = self
            .inner
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for kind in kinds {
            listeners
                .entry(kind)
                .or_default()
                .push(Arc::clone(&listener));
        }
        self.inner.listener_count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// A stream of every event from now on.
    pub fn subscribe(&self) -> EventStream {
        EventStream {
            receiver: self.inner.broadcast.subscribe(),
            skipped: 0,
        }
    }

    /// Events dropped because the listener thread fell too far behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// True when someone would see an event: lets emitters skip building one.
    pub(crate) fn has_audience(&self) -> bool {
        self.inner.listener_count.load(Ordering::Relaxed) > 0
            || self.inner.broadcast.receiver_count() > 0
    }

    /// Delivers an event built by `make`, which runs only when someone listens.
    pub(crate) fn emit(&self, make: impl FnOnce() -> Event) {
        self.emit_some(|| Some(make()));
    }

    /// [`EventBus::emit`] for a change that may make no event.
    pub(crate) fn emit_some(&self, make: impl FnOnce() -> Option<Event>) {
        if !self.has_audience() {
            return;
        }
        let Some(event) = make() else { return };
        let event = Arc::new(event);
        if self.inner.broadcast.receiver_count() > 0 {
            // An error only means every subscriber went away meanwhile.
            let _ = self.inner.broadcast.send(Arc::clone(&event));
        }
        if self.inner.listener_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let dispatch = self
            .inner
            .dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = dispatch.as_ref()
            && sender.try_send(event).is_err()
        {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "event listeners are too slow; events dropped");
            }
        }
    }

    fn start_dispatcher(&self) {
        let mut dispatch = self
            .inner
            .dispatch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if dispatch.is_some() {
            return;
        }
        let (sender, receiver) = crossbeam_channel::bounded::<Arc<Event>>(LISTENER_BACKLOG);
        // The thread holds only a weak handle, so it ends when the last bus handle drops and
        // the channel disconnects.
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("fq-events".into())
            .spawn(move || {
                while let Ok(event) = receiver.recv() {
                    let Some(inner) = weak.upgrade() else { break };
                    let listeners: Vec<Listener> = inner
                        .listeners
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&event.kind)
                        .cloned()
                        .unwrap_or_default();
                    drop(inner);
                    for listener in listeners {
                        if catch_unwind(AssertUnwindSafe(|| listener(&event))).is_err() {
                            tracing::error!(event = event.name(), task.id = %event.task.id, "an event listener panicked; it stays registered");
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => *dispatch = Some(sender),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the event listener thread; listeners will not be called")
            }
        }
    }
}

/// An async subscription to every event (see [`EventBus::subscribe`]).
#[derive(Debug)]
pub struct EventStream {
    receiver: broadcast::Receiver<Arc<Event>>,
    skipped: u64,
}

impl EventStream {
    /// The next event; `None` once the engine is gone. A subscriber that falls more than
    /// 16,384 events behind skips ahead (see [`EventStream::skipped`]) rather than slowing
    /// the workers.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.skipped += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event, or `None` if none arrives within `wait`.
    pub async fn recv_timeout(&mut self, wait: Duration) -> Option<Arc<Event>> {
        tokio::time::timeout(wait, self.recv()).await.ok().flatten()
    }

    /// Events this subscriber missed by falling behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}
