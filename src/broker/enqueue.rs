//! The queuing builder behind `Engine::queue_task`, `Task::delay` and `TaskContext::queue_task`:
//! Framefox's `queue_task(task, queue=, priority=, max_retries=, delay=, schedule_at=)`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Broker, NewTask, Queued};
use crate::config::{MAX_RETRIES as MAX_RETRIES_LIMIT, check_name};
use crate::task::{Payload, TaskId, TaskRecord, UniqueSpec, unique};
use crate::{Error, Result};

/// The latest time a task may be scheduled for: 9999-12-31T23:59:59Z.
const LATEST_SCHEDULE_MS: i64 = 253_402_300_799_000;

/// The configuration's `[defaults]`: for tasks queued by name, and for what a task type leaves
/// undeclared.
#[derive(Clone, Debug)]
pub(crate) struct EnqueueDefaults {
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
}

impl EnqueueDefaults {
    /// The `defaults` section of a configuration.
    pub(crate) fn from_config(config: &crate::Config) -> Self {
        Self {
            queue: config.defaults.queue.clone(),
            priority: config.defaults.priority,
            max_retries: config.defaults.max_retries,
            timeout: config.defaults.timeout,
        }
    }
}

impl Default for EnqueueDefaults {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            priority: 0,
            max_retries: 3,
            timeout: None,
        }
    }
}

/// A delay before a task's first run: a [`Duration`], whole seconds (`u64`, as Framefox's
/// `delay=3600`), or a [`chrono::TimeDelta`] (Framefox's `timedelta`).
pub trait IntoDelay {
    /// The delay, or why it is not one.
    ///
    /// # Errors
    /// For a negative delay.
    fn into_delay(self) -> std::result::Result<Duration, String>;
}

impl IntoDelay for Duration {
    fn into_delay(self) -> std::result::Result<Duration, String> {
        Ok(self)
    }
}

impl IntoDelay for u64 {
    fn into_delay(self) -> std::result::Result<Duration, String> {
        Ok(Duration::from_secs(self))
    }
}

impl IntoDelay for chrono::TimeDelta {
    fn into_delay(self) -> std::result::Result<Duration, String> {
        self.to_std()
            .map_err(|_| format!("must not be negative, got {self}"))
    }
}

/// A task being queued; finish with [`QueueTask::send`].
#[must_use = "a task is queued only by .send().await"]
#[derive(Debug)]
pub struct QueueTask {
    target: Target,
    draft: Result<NewTask>,
    delay: Option<std::result::Result<Duration, String>>,
    schedule_at: Option<DateTime<Utc>>,
    unique: Option<UniqueKey>,
    unique_for: Option<Duration>,
}

/// Where a task's unique key comes from.
#[derive(Debug)]
enum UniqueKey {
    Given(String),
    /// Derived from the name and arguments when the task is built (`unique::derived_key`).
    FromArguments,
}

/// A task by name with `defaults`, or why its payload is refused.
fn draft_named(defaults: &EnqueueDefaults, name: &str, payload: &Value) -> Result<NewTask> {
    Payload::from_value(payload)
        .map_err(|e| Error::invalid("payload", e.to_string()))
        .map(|payload| NewTask {
            id: TaskId::new(),
            name: name.to_owned(),
            queue: defaults.queue.clone(),
            priority: defaults.priority,
            payload,
            max_retries: defaults.max_retries,
            timeout: defaults.timeout,
            retry_delay: None,
            run_at: None,
            unique: None,
            fresh_id: true.into(),
        })
}

/// Where a task goes: an engine's broker, or nowhere yet (an offline draft, checked against a
/// configuration's limits).
#[derive(Debug)]
enum Target {
    Broker(Arc<dyn Broker>),
    Offline { max_payload_bytes: usize },
}

impl QueueTask {
    /// A task already drafted (or the reason it could not be), sent to `broker`.
    pub(crate) fn drafted(broker: Arc<dyn Broker>, draft: Result<NewTask>) -> Self {
        Self {
            target: Target::Broker(broker),
            draft,
            delay: None,
            schedule_at: None,
            unique: None,
            unique_for: None,
        }
    }

    /// A task by name, for tasks this program does not define, with the configured defaults.
    pub(crate) fn named(
        broker: Arc<dyn Broker>,
        defaults: &EnqueueDefaults,
        name: &str,
        payload: &Value,
    ) -> Self {
        Self::drafted(broker, draft_named(defaults, name, payload))
    }

    /// A task by name drafted without an engine, with the defaults and limits of `config`:
    /// [`QueueTask::build`] checks it exactly as an engine opened with `config` would, so a
    /// tool can refuse bad arguments before it opens (and so creates) a store. It cannot be
    /// sent: [`QueueTask::send`] refuses it.
    pub fn offline(config: &crate::Config, name: &str, payload: &Value) -> Self {
        Self {
            target: Target::Offline {
                max_payload_bytes: config.limits.max_payload_bytes,
            },
            draft: draft_named(&EnqueueDefaults::from_config(config), name, payload),
            delay: None,
            schedule_at: None,
            unique: None,
            unique_for: None,
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut NewTask)) -> Self {
        if let Ok(task) = self.draft.as_mut() {
            change(task);
        }
        self
    }

    /// The queue to put it in.
    pub fn queue(self, queue: impl Into<String>) -> Self {
        let queue = queue.into();
        self.edit(|t| t.queue = queue)
    }

    /// Its priority; higher runs first.
    pub fn priority(self, priority: i32) -> Self {
        self.edit(|t| t.priority = priority)
    }

    /// Retries after the first failed run (at most 1,000).
    pub fn max_retries(self, max_retries: u32) -> Self {
        self.edit(|t| t.max_retries = max_retries)
    }

    /// Runs it no sooner than `delay` from now. [`QueueTask::schedule_at`] wins over this.
    pub fn delay(mut self, delay: impl IntoDelay) -> Self {
        self.delay = Some(delay.into_delay());
        self
    }

    /// Runs it no sooner than `when`; a time in the past means now. Wins over a delay.
    pub fn schedule_at(mut self, when: DateTime<Utc>) -> Self {
        self.schedule_at = Some(when);
        self
    }

    /// Limits each attempt to `timeout`; an attempt that runs longer fails (and is retried).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|t| t.timeout = Some(timeout))
    }

    /// The base of this task's retry backoff instead of the engine's `retry_delay`.
    pub fn retry_delay(self, delay: Duration) -> Self {
        self.edit(|t| t.retry_delay = Some(delay))
    }

    /// Makes the task unique under `key`: while a task queued with the same key holds it (by
    /// default until that task is finished: PENDING, scheduled, RUNNING or RETRYING), queuing
    /// another answers the existing task's id as a duplicate ([`QueueTask::submit`] tells
    /// which) and queues nothing. Keys are at most [`crate::MAX_UNIQUE_KEY_BYTES`] bytes, not
    /// empty, without control characters.
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique = Some(UniqueKey::Given(key.into()));
        self
    }

    /// As [`QueueTask::unique`], with the key derived from the task's name and arguments:
    /// `<name>:<arguments as JSON, object keys sorted>`, so the same arguments make the same
    /// key. Arguments too long for a key (see [`crate::MAX_UNIQUE_KEY_BYTES`]) are refused:
    /// give such a task a key of your own.
    pub fn unique_by_arguments(mut self) -> Self {
        self.unique = Some(UniqueKey::FromArguments);
        self
    }

    /// Keeps the unique key held after the task finishes, until `period` after it was
    /// created: a task queued with the key within the period is a duplicate even when the
    /// first one is COMPLETED, FAILED or CANCELLED. Needs a key; more than zero, at most
    /// [`crate::MAX_UNIQUE_FOR`]. Default: the key is freed when the task finishes.
    pub fn unique_for(mut self, period: Duration) -> Self {
        self.unique_for = Some(period);
        self
    }

    /// Checks every field and resolves the schedule, without queuing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field: a bad name or queue, a payload over the size
    /// limit, too many retries, a negative or oversized delay, a zero timeout, a bad unique
    /// key (`unique_key`) or period (`unique_for`).
    pub fn build(self) -> Result<NewTask> {
        let mut task = self.draft?;
        if let Err(problem) = check_name(&task.name) {
            return Err(Error::invalid("task name", problem));
        }
        if let Err(problem) = check_name(&task.queue) {
            return Err(Error::invalid("queue", problem));
        }
        let limit = match &self.target {
            Target::Broker(broker) => broker.max_payload_bytes(),
            Target::Offline { max_payload_bytes } => *max_payload_bytes,
        };
        if task.payload.len() > limit {
            return Err(Error::invalid(
                "payload",
                format!(
                    "is {} bytes, the limit is {limit} bytes (limits.max_payload_bytes)",
                    task.payload.len()
                ),
            ));
        }
        if task.max_retries > MAX_RETRIES_LIMIT {
            return Err(Error::invalid(
                "max_retries",
                format!("is {}, the limit is {MAX_RETRIES_LIMIT}", task.max_retries),
            ));
        }
        if task.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::invalid("timeout", "must be greater than zero"));
        }
        if task.retry_delay.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid("retry_delay", "must be greater than zero"));
        }
        if let Some(when) = self.schedule_at {
            let ms = when.timestamp_millis();
            if ms > LATEST_SCHEDULE_MS {
                return Err(Error::invalid(
                    "schedule_at",
                    format!("{when} is after the latest supported time, 9999-12-31T23:59:59Z"),
                ));
            }
            task.run_at = Some(ms);
        } else if let Some(delay) = self.delay {
            let delay = delay.map_err(|problem| Error::invalid("delay", problem))?;
            let now = match &self.target {
                Target::Broker(broker) => broker.now_ms(),
                Target::Offline { .. } => crate::clock::Clock::now_ms(&crate::clock::SystemClock),
            };
            let run_at = i64::try_from(delay.as_millis())
                .ok()
                .and_then(|ms| now.checked_add(ms))
                .filter(|ms| *ms <= LATEST_SCHEDULE_MS)
                .ok_or_else(|| {
                    Error::invalid(
                        "delay",
                        format!(
                            "{delay:?} reaches past the latest supported time, 9999-12-31T23:59:59Z"
                        ),
                    )
                })?;
            task.run_at = Some(run_at);
        }
        task.unique = unique_spec(&task, self.unique, self.unique_for)?;
        Ok(task)
    }

    /// Queues the task: it is durably committed when this returns.
    ///
    /// # Errors
    /// As [`QueueTask::build`]; and storage failures, [`Error::Poisoned`],
    /// [`Error::QueueFull`].
    pub async fn send(self) -> Result<TaskId> {
        Ok(self.submit().await?.id)
    }

    /// Queues the task as [`QueueTask::send`] does, and says whether it was a duplicate of a
    /// task holding the same unique key ([`Queued::duplicate`]; then `id` is that task's).
    ///
    /// # Errors
    /// As [`QueueTask::send`].
    pub async fn submit(self) -> Result<Queued> {
        let Target::Broker(broker) = &self.target else {
            return Err(Error::invalid(
                "engine",
                "an offline draft cannot be sent: build() it and enqueue the task on an engine",
            ));
        };
        let broker = Arc::clone(broker);
        let task = self.build()?;
        let queued = broker.enqueue(vec![task]).await?;
        queued
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal("enqueue returned no id".into()))
    }

    /// Queues the task, then waits up to `timeout` for its outcome (see `Engine::wait`): the
    /// final record, COMPLETED with its result, FAILED with its error, or CANCELLED.
    ///
    /// # Errors
    /// As [`QueueTask::send`]; [`Error::WaitTimeout`] when `timeout` passes first (the task
    /// stays queued; its id is in the error).
    pub async fn send_and_wait(self, timeout: Duration) -> Result<TaskRecord> {
        let broker = match &self.target {
            Target::Broker(broker) => Some(Arc::clone(broker)),
            Target::Offline { .. } => None,
        };
        // An offline draft is refused by `send`, with its reason.
        let id = self.send().await?;
        let broker =
            broker.ok_or_else(|| Error::Internal("a task was sent without an engine".into()))?;
        broker.wait(id, timeout).await
    }
}

/// The checked unique spec of `task`, from the key source and period the builder was given.
fn unique_spec(
    task: &NewTask,
    source: Option<UniqueKey>,
    period: Option<Duration>,
) -> Result<Option<UniqueSpec>> {
    let Some(source) = source else {
        return match period {
            Some(_) => Err(Error::invalid(
                "unique_for",
                "needs a unique key: set one with unique(key) or unique_by_arguments()",
            )),
            None => Ok(None),
        };
    };
    let key = match source {
        UniqueKey::Given(key) => key,
        UniqueKey::FromArguments => unique::derived_key(&task.name, &task.payload),
    };
    unique::check_key(&key).map_err(|problem| Error::invalid("unique_key", problem))?;
    let for_ms = match period {
        Some(period) => {
            unique::check_period(period)
                .map_err(|problem| Error::invalid("unique_for", problem))?;
            Some(crate::clock::duration_ms(period))
        }
        None => None,
    };
    Ok(Some(UniqueSpec { key, for_ms }))
}
