//! How a task is defined: the [`Task`] trait (Framefox's `@AsyncTask` decorator as a
//! [`TaskSettings`] constant, and the task's body), [`TaskQueue`], what a task can be queued on,
//! and the one precedence of task settings: the call's builder, then what the task type
//! declares, then the configuration's `[defaults]`, then fq's built-in values.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TaskContext;
use crate::broker::{Broker, EnqueueDefaults, NewTask, QueueTask};
use crate::task::{Payload, TaskError, TaskId};
use crate::{Error, Result};

/// What a task type declares about how it is queued and run: Framefox's decorator options.
/// Each value left undeclared comes from the configuration's `[defaults]` (queue `default`,
/// priority 0, 3 retries, no time limit when the configuration does not set them either); the
/// call's builder (`engine.queue_task(task).queue("q")`) overrides both.
///
/// ```
/// use std::time::Duration;
/// use fq::TaskSettings;
///
/// const SETTINGS: TaskSettings = TaskSettings::new()
///     .queue("emails")
///     .max_retries(5)
///     .timeout(Duration::from_secs(30));
/// assert_eq!(SETTINGS.declared_queue(), Some("emails"));
/// assert_eq!(SETTINGS.declared_priority(), None); // from `[defaults]`
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSettings {
    queue: Option<&'static str>,
    priority: Option<i32>,
    max_retries: Option<u32>,
    /// `Some(None)`: declared to have no time limit, whatever `[defaults]` says.
    timeout: Option<Option<Duration>>,
}

impl TaskSettings {
    /// Nothing declared: every value comes from `[defaults]`.
    pub const fn new() -> Self {
        Self {
            queue: None,
            priority: None,
            max_retries: None,
            timeout: None,
        }
    }

    /// The queue the task goes to.
    #[must_use]
    pub const fn queue(mut self, queue: &'static str) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Its priority; higher runs first.
    #[must_use]
    pub const fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Retries after the first failed run.
    #[must_use]
    pub const fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// A time limit for each attempt.
    #[must_use]
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(Some(timeout));
        self
    }

    /// No time limit, even when `[defaults]` sets one.
    #[must_use]
    pub const fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }

    /// The declared queue, if any.
    pub const fn declared_queue(&self) -> Option<&'static str> {
        self.queue
    }

    /// The declared priority, if any.
    pub const fn declared_priority(&self) -> Option<i32> {
        self.priority
    }

    /// The declared retry budget, if any.
    pub const fn declared_max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    /// The declared time limit: `None` when undeclared, `Some(None)` for "no limit".
    pub const fn declared_timeout(&self) -> Option<Option<Duration>> {
        self.timeout
    }

    /// The time limit a worker applies to a task that was queued without one.
    pub(crate) fn run_timeout(&self) -> Option<Duration> {
        self.timeout.flatten()
    }
}

/// A background task: its arguments are the struct's fields (Framefox's kwargs), its
/// [`TaskSettings`] are the decorator's options, and `run` is its body.
///
/// ```
/// use fq::{Task, TaskContext, TaskError, TaskSettings};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String, subject: String }
///
/// impl Task for SendEmail {
///     const NAME: &'static str = "myapp.tasks.send_email";
///     const SETTINGS: TaskSettings = TaskSettings::new().queue("emails");
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
    /// Queue, priority, retries and time limit, each where the task type wants its own; the
    /// rest come from the configuration's `[defaults]` (see [`TaskSettings`]).
    const SETTINGS: TaskSettings = TaskSettings::new();

    /// What a successful run returns; stored with the COMPLETED task as JSON.
    type Output: Serialize + Send + 'static;

    /// The task's body. An `Err` (or a panic, or a timeout) is a failed attempt.
    fn run(self, ctx: TaskContext) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;

    /// Queues the task now with its settings, as Framefox's `task.delay(...)`, on an engine
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
    /// Starts queuing `task` with its settings (its type's, then `[defaults]`); `send` commits
    /// it.
    fn queue_task<T: Task>(&self, task: T) -> QueueTask;
}

/// A typed task with what its type declares, and `defaults` for the rest. Takes the task by
/// value, as the callers' `queue_task(task)` does, so a queued task cannot be mutated afterwards.
#[allow(clippy::needless_pass_by_value)]
pub(crate) fn queue_typed<T: Task>(
    broker: Arc<dyn Broker>,
    defaults: &EnqueueDefaults,
    task: T,
) -> QueueTask {
    let declared = T::SETTINGS;
    let draft = Payload::from_kwargs(&task)
        .map_err(|e| Error::invalid("payload", e.to_string()))
        .map(|payload| NewTask {
            id: TaskId::new(),
            name: T::NAME.to_owned(),
            queue: declared
                .queue
                .map_or_else(|| defaults.queue.clone(), str::to_owned),
            priority: declared.priority.unwrap_or(defaults.priority),
            payload,
            max_retries: declared.max_retries.unwrap_or(defaults.max_retries),
            timeout: declared.timeout.unwrap_or(defaults.timeout),
            retry_delay: None,
            run_at: None,
            unique: None,
            fresh_id: true.into(),
        });
    QueueTask::drafted(broker, draft)
}
