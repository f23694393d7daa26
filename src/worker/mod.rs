//! Running tasks: the [`WorkerManager`] (queues, concurrency, polling bound, cleanup,
//! shutdown), the per-attempt runner (timeout, panic capture, heartbeats, settlement) and the
//! [`TaskContext`] a handler receives.

mod context;
mod manager;
mod runner;
pub(crate) mod signals;

pub use context::TaskContext;
pub use manager::{ShutdownHandle, WorkerManager, WorkerReport};
