//! What a running handler knows about its attempt, and what it may do: heartbeat, queue
//! follow-up tasks.

use std::sync::Arc;

use serde_json::Value;

use super::{Task, TaskQueue, definition::queue_typed};
use crate::Result;
use crate::broker::{Broker, EnqueueDefaults, QueueTask};
use crate::task::TaskId;

/// The context of one attempt, handed to the handler.
#[derive(Clone, Debug)]
pub struct TaskContext {
    id: TaskId,
    name: Arc<str>,
    queue: Arc<str>,
    attempt: u32,
    max_retries: u32,
    broker: Arc<dyn Broker>,
    defaults: Arc<EnqueueDefaults>,
}

impl TaskContext {
    pub(crate) fn new(
        record: &crate::TaskRecord,
        broker: Arc<dyn Broker>,
        defaults: Arc<EnqueueDefaults>,
    ) -> Self {
        Self {
            id: record.id,
            name: Arc::from(record.name.as_str()),
            queue: Arc::from(record.queue.as_str()),
            attempt: record.attempts,
            max_retries: record.max_retries,
            broker,
            defaults,
        }
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Which run this is: 1 for the first, 2 for the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Retries allowed after the first run.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// True when this is the last run the retry budget allows.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt > self.max_retries
    }

    /// Tells the engine this attempt is alive, extending its lease. The worker already does this
    /// periodically while the handler runs; call it from long loops that want to know early
    /// whether they still own the task.
    ///
    /// # Errors
    /// [`crate::Error::StaleAttempt`] when the attempt lost its lease (another attempt owns the
    /// task now): the handler should stop.
    pub async fn heartbeat(&self) -> Result<()> {
        self.broker.heartbeat(self.id, self.attempt).await
    }

    /// Queues a follow-up typed task (e.g. a recurring task rescheduling itself).
    pub fn queue_task<T: Task>(&self, task: T) -> QueueTask {
        queue_typed(Arc::clone(&self.broker), &self.defaults, task)
    }

    /// Queues a follow-up task by name with `{"args": [...], "kwargs": {...}}` arguments.
    pub fn queue_task_named(&self, name: &str, payload: &Value) -> QueueTask {
        QueueTask::named(Arc::clone(&self.broker), &self.defaults, name, payload)
    }
}

impl TaskQueue for TaskContext {
    fn queue_task<T: Task>(&self, task: T) -> QueueTask {
        TaskContext::queue_task(self, task)
    }
}
