//! Task definitions and the handlers that run them: the [`Task`] trait, the [`Registry`] from
//! task name to handler, and the [`TaskContext`] a running handler receives. Above the broker
//! (a context queues follow-up tasks through it), below the worker that runs handlers.

mod context;
mod definition;
mod registry;

pub use context::TaskContext;
pub(crate) use definition::queue_typed;
pub use definition::{Task, TaskQueue, TaskSettings};
pub use registry::Registry;
pub(crate) use registry::{HandlerFn, RunError};
