//! The table from task name to handler that a worker runs: typed [`Task`]s and plain closures.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Task, TaskContext};
use crate::config::check_name;
use crate::task::{Payload, TaskError};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a handler produced no value, before the retry policy looks at it.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The handler itself failed.
    Task(TaskError),
    /// The arguments do not deserialize into the handler's type.
    BadArguments(String),
}

type AsyncFn = dyn Fn(Payload, TaskContext) -> BoxFuture<Result<Value, RunError>> + Send + Sync;
type BlockingFn = dyn Fn(Payload, TaskContext) -> Result<Value, RunError> + Send + Sync;

/// A type-erased handler: async ones run on the tokio runtime, blocking ones on its blocking pool.
#[derive(Clone)]
pub(crate) enum HandlerFn {
    Async(Arc<AsyncFn>),
    Blocking(Arc<BlockingFn>),
}

/// One registered handler and the defaults its definition carries.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) run: HandlerFn,
    pub(crate) timeout: Option<Duration>,
}

/// The tasks a worker can run, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Handler>,
    /// Registrations refused for a bad name; reported when a worker starts, so that
    /// registering stays chainable without a `Result` per call.
    rejected: Vec<String>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Registry")
            .field("tasks", &names)
            .field("rejected", &self.rejected)
            .finish()
    }
}

fn to_output<O: Serialize>(output: &O) -> Result<Value, RunError> {
    serde_json::to_value(output).map_err(|e| {
        RunError::Task(TaskError::permanent(format!(
            "the task's result cannot be stored as JSON: {e}"
        )))
    })
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed task under `T::NAME`.
    pub fn register<T: Task>(&mut self) -> &mut Self {
        let run: Arc<AsyncFn> = Arc::new(|payload: Payload, ctx: TaskContext| {
            Box::pin(async move {
                let task: T = payload
                    .decode()
                    .map_err(|e| RunError::BadArguments(e.to_string()))?;
                let output = task.run(ctx).await.map_err(RunError::Task)?;
                to_output(&output)
            })
        });
        self.insert(
            T::NAME,
            Handler {
                run: HandlerFn::Async(run),
                timeout: T::SETTINGS.run_timeout(),
            },
        )
    }

    /// Registers an async closure taking the decoded arguments and the run's context.
    pub fn register_async<A, O, F, Fut>(&mut self, name: &str, handler: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(A, TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, TaskError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let run: Arc<AsyncFn> = Arc::new(move |payload: Payload, ctx: TaskContext| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let args: A = payload
                    .decode()
                    .map_err(|e| RunError::BadArguments(e.to_string()))?;
                let output = handler(args, ctx).await.map_err(RunError::Task)?;
                to_output(&output)
            })
        });
        self.insert(
            name,
            Handler {
                run: HandlerFn::Async(run),
                timeout: None,
            },
        )
    }

    /// Registers a synchronous closure; it runs on the blocking thread pool so it may block.
    pub fn register_fn<A, O, F>(&mut self, name: &str, handler: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(A) -> Result<O, TaskError> + Send + Sync + 'static,
    {
        self.register_blocking(name, move |args: A, _ctx: TaskContext| handler(args))
    }

    /// Registers a synchronous closure that also receives the run's context.
    pub fn register_blocking<A, O, F>(&mut self, name: &str, handler: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(A, TaskContext) -> Result<O, TaskError> + Send + Sync + 'static,
    {
        let run: Arc<BlockingFn> = Arc::new(move |payload: Payload, ctx: TaskContext| {
            let args: A = payload
                .decode()
                .map_err(|e| RunError::BadArguments(e.to_string()))?;
            let output = handler(args, ctx).map_err(RunError::Task)?;
            to_output(&output)
        });
        self.insert(
            name,
            Handler {
                run: HandlerFn::Blocking(run),
                timeout: None,
            },
        )
    }

    fn insert(&mut self, name: &str, handler: Handler) -> &mut Self {
        match check_name(name) {
            Ok(()) => {
                self.handlers.insert(name.to_owned(), handler);
            }
            Err(problem) => self.rejected.push(format!("task name {name:?} {problem}")),
        }
        self
    }

    /// The handler registered under `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Handler> {
        self.handlers.get(name)
    }

    /// True when a handler is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// The registered task names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The registrations refused for a bad name.
    pub(crate) fn rejected(&self) -> &[String] {
        &self.rejected
    }
}
