//! Running tasks: the [`WorkerManager`] (queues, concurrency, polling bound, cleanup,
//! shutdown) and the per-attempt runner (timeout, panic capture, heartbeats, settlement).

mod manager;
mod runner;
mod signals;
pub use signals::{SignalError, Signals};

pub use manager::{ShutdownHandle, WorkerManager, WorkerReport};
