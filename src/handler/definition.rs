//! How a task is defined: the [`Task`] trait (Framefox's `@AsyncTask` decorator as associated
//! constants, and the task's body), and [`TaskQueue`], what a task can be queued on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskContext;
use crate::broker::{Broker, NewTask, QueueTask};
use crate::task::{Payload, TaskError, TaskId};
use crate::{Error, Result};

/// A background task: its arguments are the struct's fields (Framefox's kwargs), its defaults
/// are the decorator's options, and `run` is its body.
///
/// ```
/// use fq::{Task, TaskContext, TaskError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String, subject: String }
///
/// impl Task for SendEmail {
///     const NAME: &'static str = "myapp.tasks.send_email";
///     const QUEUE: &'static str = "emails";
///     type Output = serde_json::Value;
///
///     async fn run(self, _ctx: TaskContext) -> Result<Self::Output, TaskError> {
///         Ok(serde_json::json!({"status": "sent", "recipient": self.to}))
///     }
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + 'static {
    /// The name the task is queued and registered under, e.g. `myapp.tasks.send_email`.
    const NAME: &'static str;
    /// The queue it goes to unless the caller says otherwise (default `default`).
    const QUEUE: &'static str = "default";
    /// Its priority unless the caller says otherwise; higher runs first (default 0).
    const PRIORITY: i32 = 0;
    /// Retries after the first failed run (default 3: up to 4 runs).
    const MAX_RETRIES: u32 = 3;
    /// Time limit per attempt (default none).
    const TIMEOUT: Option<Duration> = None;

    /// What a successful run returns; stored with the COMPLETED task as JSON.
    type Output: Serialize + Send + 'static;

    /// The task's body. An `Err` (or a panic, or a timeout) is a failed attempt.
    fn run(self, ctx: TaskContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;

    /// Queues the task now with its defaults, as Framefox's `task.delay(...)`, on an engine
    /// (`task.delay(&engine)`) or, from a running handler, on its context. (Framefox's
    /// `delay=3600` keyword, a postponement, is [`QueueTask::delay`]:
    /// `engine.queue_task(task).delay(3600).send()`.)
    ///
    /// # Errors
    /// As [`QueueTask::send`].
    fn delay(self, queue: &impl TaskQueue) -> impl Future<Output = Result<TaskId>> + Send
    where
        Self: Sized,
    {
        queue.queue_task(self).send()
    }
}

/// What a task can be queued on: the engine (`Engine::queue_task`), or a running handler's
/// [`TaskContext`] for follow-up tasks. [`Task::delay`] takes either.
pub trait TaskQueue {
    /// Starts queuing `task` with the defaults of its definition; `send` commits it.
    fn queue_task<T: Task>(&self, task: T) -> QueueTask;
}

/// A typed task with the defaults of its definition. Takes the task by value, as the callers'
/// `queue_task(task)` does, so a queued task cannot be mutated afterwards.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn queue_typed<T: Task>(broker: Arc<dyn Broker>, task: T) -> QueueTask {
    let draft = Payload::from_kwargs(&task)
        .map_err(|e| Error::invalid("payload", e.to_string()))
        .map(|payload| NewTask {
            id: TaskId::new(),
            name: T::NAME.to_owned(),
            queue: T::QUEUE.to_owned(),
            priority: T::PRIORITY,
            payload,
            max_retries: T::MAX_RETRIES,
            timeout: T::TIMEOUT,
            retry_delay: None,
            run_at: None,
        });
    QueueTask::drafted(broker, draft)
}
