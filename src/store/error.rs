//! Errors of the storage layer. redb's own errors stay behind `source()` so that its upgrades
//! are not ours.

use std::path::PathBuf;

use crate::task::TaskId;

type Source = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong opening, reading or writing a store file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file exists but is not an fq store (another program's file, an empty file, a
    /// database without fq's tables). fq never writes over it.
    #[error("{}: not an fq store: {detail}", path.display())]
    NotFqStore {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },
    /// The store was written by a newer fq.
    #[error("{}: store schema version {found} is newer than this fq supports ({supported}); upgrade fq to open it", path.display())]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema version in the file.
        found: u32,
        /// The newest schema this build reads.
        supported: u32,
    },
    /// The file is damaged.
    #[error("{}: store is corrupt: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the check found.
        detail: String,
    },
    /// Another process has the store open.
    #[error("{}: store is already open in another process (only one process may own a store; talk to it through its control socket)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// This process has the store open already: an `Engine` handle, a worker or a running
    /// task still holds it.
    #[error("{}: store is already open in this process (an Engine handle, a worker or a running task still holds it; use that Engine, or drop every handle first)", path.display())]
    OpenInThisProcess {
        /// The file.
        path: PathBuf,
    },
    /// The store was opened read-only (to look at a store nobody serves) and something tried
    /// to change it.
    #[error("{}: store is open read-only here; changing it needs the engine that owns it (`fq serve`, `fq worker start`, or `Engine::open`)", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// The database was closed under this operation: the engine reopened its store (after a
    /// failed commit, or while healing). Reads are retried by the engine; seen by a caller only
    /// if the store kept being reopened.
    #[error("{}: the store was reopened while {action}; try again", path.display())]
    Reopened {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
    },
    /// The file could not be read or written.
    #[error("{}: {detail}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The disk is full, or its free space fell below the watermark (`limits.min_free_bytes`)
    /// that fq keeps so that running tasks can still be settled. Enqueues refused by the
    /// watermark work again as soon as space is freed; a commit that failed for want of space
    /// poisons the engine (see [`crate::Error::Poisoned`]) until it is reopened.
    #[error("{}: storage full: {}", path.display(), full_detail(*free_bytes, *needed_bytes))]
    Full {
        /// The file.
        path: PathBuf,
        /// Free bytes on its file system when this was found, if known.
        free_bytes: Option<u64>,
        /// The free space fq wanted: the `limits.min_free_bytes` watermark, if that refused.
        needed_bytes: Option<u64>,
    },
    /// A read or write inside the store failed.
    #[error("{}: storage error while {action}", path.display())]
    Storage {
        /// The file.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// The storage engine's error.
        #[source]
        source: Source,
    },
    /// A new task's id is already stored: an id drawn twice (a UUID v7's 74 random bits make
    /// that as unlikely as any UUID clash) or a clock set back. The write is refused whole,
    /// so the stored task is kept.
    #[error(
        "task {id}: a new task's id is already stored; the write was refused and the stored task kept"
    )]
    IdClash {
        /// The id.
        id: TaskId,
    },
    /// A stored task record does not decode.
    #[error("task {id}: stored record is corrupt: {detail}")]
    CorruptRecord {
        /// The task.
        id: TaskId,
        /// What the decoder found.
        detail: String,
    },
}

impl StoreError {
    /// redb refused the database because an earlier write to it failed (`PreviousIo`): every
    /// access fails until the database is reopened, which the writer does after any failed
    /// commit (`Writer::commit_failed`).
    pub(crate) fn is_refused_after_failed_write(&self) -> bool {
        matches!(
            self,
            Self::Storage { source, .. }
                if matches!(source.downcast_ref::<redb::Error>(), Some(redb::Error::PreviousIo))
        )
    }
}

fn full_detail(free: Option<u64>, needed: Option<u64>) -> String {
    match (free, needed) {
        (Some(free), Some(needed)) => format!(
            "{free} bytes free, below the {needed} bytes fq keeps free (limits.min_free_bytes); \
             free some space (or lower the limit) and try again"
        ),
        (Some(free), None) => {
            format!("the disk has no room for the write ({free} bytes free)")
        }
        _ => "the disk has no room for the write".to_owned(),
    }
}
