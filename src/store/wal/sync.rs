//! A sync of the redo log handed to the writer's sync thread, and what it covers: the commit
//! that asked for it, and every commit whose record is in the log by the time it starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::log::LogFile;

/// A sync of the log for the writer's sync thread: it covers every commit numbered up to `seq`,
/// and every one whose record is in the log by the time it starts.
pub(crate) struct LogSync {
    log: Arc<dyn LogFile + Send + Sync>,
    pub(crate) seq: u64,
    /// The store's count of commits made visible ahead of their sync (`visible.rs`): each
    /// commit's record is in the log before it takes its number.
    committed: Arc<AtomicU64>,
}

impl LogSync {
    /// A sync of `log` asked for by the commit numbered `seq`, covering also every commit up to
    /// `committed` at the time it starts.
    pub(crate) fn new(
        log: Arc<dyn LogFile + Send + Sync>,
        seq: u64,
        committed: Arc<AtomicU64>,
    ) -> Self {
        Self {
            log,
            seq,
            committed,
        }
    }

    /// The commit number a sync starting now covers.
    pub(crate) fn covers(&self) -> u64 {
        self.seq.max(self.committed.load(Ordering::Acquire))
    }

    /// Runs the sync (fdatasync of the log file).
    ///
    /// # Errors
    /// The sync failed: nothing it covers may be acknowledged (see `Store::log_sync_failed`).
    pub(crate) fn run(&self) -> std::io::Result<()> {
        self.log.sync_data()
    }
}
