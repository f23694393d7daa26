//! Running tasks: the [`WorkerManager`] (queues, concurrency, polling bound, cleanup,
//! shutdown), the per-attempt runner (timeout, panic capture, heartbeats, settlement), and the
//! same attempts run inline by their caller (`fq::testing`).

mod inline;
mod manager;
mod runner;
mod signals;
mod slot;
pub use signals::{SignalError, Signals};

pub use manager::{ShutdownHandle, WorkerManager, WorkerReport};
