//! The durable store: one redb file holding every task, the waiting index (priority and due
//! time), the running set and the finished index. Only this module imports redb.

mod attempts;
mod backend;
mod changes;
mod codec;
mod commit;
mod copy_on_write;
mod create;
mod error;
#[cfg(test)]
pub(crate) mod flaky_disk;
mod handle;
mod held;
pub use handle::quiet_caught_storage_panics;
pub(crate) use handle::under_damage_guard;
mod integrity;
mod keys;
pub(crate) mod log;
mod open_here;
mod paused;
mod probe;
mod reports;
mod schedules;
mod store_id;
mod tables;
mod transactions;
mod visible;
mod wal;
mod write_tables;

pub(crate) use commit::Commit;
pub(crate) use reports::PendingReport;
pub(crate) use schedules::{ScheduledTask, StoredSchedule};
pub(crate) use visible::exempt_this_thread;
pub(crate) use wal::{LogSync, wal_path};
pub(crate) use write_tables::WriteTables;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use redb::{ReadableTable, TableHandle};

pub use backend::CustomBackend;
#[cfg(all(test, feature = "rabbitmq"))]
pub(crate) use codec::sample_task as codec_sample_task;
#[cfg(feature = "internals")]
pub(crate) use codec::{decode as codec_decode, encode as codec_encode};
pub use error::StoreError;
use handle::Handle;
pub use integrity::IntegrityReport;
pub use probe::store_commit_rate;
use tables::{
    COUNTS, LEASES, MAGIC, META, META_MAGIC, META_SCHEMA, SCHEMA_VERSION, TASKS, WAITING,
};

use crate::clock::Millis;
use crate::task::{ReadyOrder, StoredTask, TaskId, TaskStatus};

/// How to open a store.
#[derive(Clone, Debug)]
pub(crate) struct StoreOptions {
    /// redb's page cache, in bytes.
    pub(crate) cache_bytes: usize,
    /// Verify every page's checksum when opening, so a damaged file is refused at open
    /// instead of failing (or panicking inside redb) at some later read.
    pub(crate) verify_on_open: bool,
    /// Where the bytes live instead of the file at the store's path (tests simulating power
    /// loss and failing disks); the path then only names the store in errors.
    pub(crate) backend: Option<CustomBackend>,
    /// How many attempts each task's history keeps (`limits.attempt_history`; 0: none).
    pub(crate) attempt_history: usize,
    /// Make commits durable through the write-ahead log (`wal.rs`) instead of redb's own
    /// sync (config `write_ahead_log`).
    pub(crate) write_ahead_log: bool,
    /// Where the log lives for a store in a custom backend (without one, such a store keeps
    /// no log).
    pub(crate) log_backend: Option<CustomBackend>,
    /// A checkpoint is taken once the log holds this many bytes (tests make it small, so
    /// their crash points meet checkpoints).
    pub(crate) wal_checkpoint_bytes: u64,
    /// Open a store whose log went missing after a crash, without the changes that log held
    /// (`fq forget-log`); without it such a store is refused.
    pub(crate) forget_missing_log: bool,
    /// The engine's writer syncs the log of a lone batch on its own thread and answers it
    /// before the B-tree commits (`Commit::SyncedHere`); off, every batch takes the pipeline
    /// (tests of the pipeline turn it off).
    pub(crate) sync_lone_batches_here: bool,
    /// How many logged batches one B-tree transaction of the writer carries at most
    /// (`Commit::Held`, `held.rs`); 1: each commits its own.
    pub(crate) hold_batches: u32,
    /// The writer holds the B-tree transaction of every batch on the pipeline, the first of a
    /// burst too, which otherwise commits while its sync runs (tests, which cannot time a
    /// batch to arrive while a sync runs, and crash images of held transactions).
    pub(crate) hold_every_batch: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
            backend: None,
            attempt_history: crate::task::DEFAULT_ATTEMPT_HISTORY,
            write_ahead_log: true,
            log_backend: None,
            wal_checkpoint_bytes: wal::CHECKPOINT_BYTES,
            forget_missing_log: false,
            sync_lone_batches_here: true,
            hold_batches: held::HOLD_BATCHES,
            hold_every_batch: false,
        }
    }
}

/// An open store file.
pub(crate) struct Store {
    /// The open database; replaced by [`Store::reopen`] after a failed commit (redb then fails
    /// every later access, reads included), `None` only if that reopen failed.
    db: RwLock<Option<Handle>>,
    /// Opened only to look: every write is refused, whatever the handle allows.
    read_only: bool,
    path: PathBuf,
    options: StoreOptions,
    /// True when the bytes live in a custom backend: the path's file system says nothing about
    /// their free space.
    custom_backend: bool,
    /// This store's place among the files open in this process (file-backed stores only).
    open_here: Option<open_here::Entry>,
    /// The write-ahead log, when the store keeps one; locked by each write.
    wal: Mutex<Option<wal::Wal>>,
    /// A logged commit failed and its record could not be taken back: the log holds a change
    /// the engine was told failed, so this store takes no more writes (see `commit.rs`).
    wal_diverged: std::sync::atomic::AtomicBool,
    /// The open went on without a missing log (`StoreOptions::forget_missing_log`).
    forgot_log: std::sync::atomic::AtomicBool,
    /// Which commits reads may see: those made visible ahead of their log sync only once it
    /// returned (`visible.rs`).
    visible: visible::Visibility,
    /// Thrown after a failed log sync: the B-tree's storage then takes no more writes, so the
    /// close before the reopen leaves it as its last durable commit did (`backend::Fenced`).
    fence: backend::Fence,
    /// The writer's transaction carrying logged batches not yet committed to the B-tree
    /// (`held.rs`); every write takes it, so whatever commits next commits them too.
    held: Mutex<Option<held::Held>>,
    /// Makes every commit fail, so tests can see what a failed fsync does to the engine.
    #[cfg(test)]
    pub(crate) fail_commits: std::sync::atomic::AtomicBool,
    /// Test hook: the B-tree's commit fails after the log took the record (`commit.rs`).
    #[cfg(test)]
    pub(crate) fail_commit_after_log: std::sync::atomic::AtomicBool,
    /// Makes the next write panic, as a bug in the engine would.
    #[cfg(test)]
    pub(crate) panic_on_write: std::sync::atomic::AtomicBool,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close_wal();
        // The file closes first, then leaves the registry: an open that races this one sees
        // either "open in this process" or a free file, never "another process".
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        drop(slot.take());
        drop(slot);
        drop(self.open_here.take());
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it (and its folder) when the file does not exist.
    ///
    /// A file that exists is never initialized over: an empty file, another program's file or a
    /// redb database without fq's tables is refused with [`StoreError::NotFqStore`].
    pub(crate) fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        if let Some(backend) = &options.backend {
            return Self::open_backend(path, options, backend);
        }
        let path_buf = path.to_path_buf();
        let io_error = |detail: &str, source: std::io::Error| StoreError::Io {
            path: path_buf.clone(),
            detail: detail.to_owned(),
            source,
        };
        let exists = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                return Err(StoreError::NotFqStore {
                    path: path_buf,
                    detail: "it is a directory".into(),
                });
            }
            Ok(meta) if meta.len() == 0 => {
                return Err(StoreError::NotFqStore {
                    path: path_buf,
                    detail: "the file is empty (fq creates its store itself; remove the empty file or name a new path)".into(),
                });
            }
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(io_error("cannot inspect the store file", e)),
        };
        if !exists {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error("cannot create the store's folder", e))?;
            }
            Self::create_atomically(path, options)?;
        }
        Self::finish_open(path_buf, options, true, false)
    }

    /// Opens the existing store at `path` to read it as it is: every write is refused, and
    /// nothing of the store changes (see [`handle::open_read_only`] for a file its last owner
    /// did not close cleanly).
    pub(crate) fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        match std::fs::metadata(&path) {
            Err(source) => {
                return Err(StoreError::Io {
                    detail: "cannot open the store to read it (a read-only open never creates one)"
                        .into(),
                    path,
                    source,
                });
            }
            Ok(meta) if meta.is_dir() => {
                return Err(StoreError::NotFqStore {
                    path,
                    detail: "it is a directory".into(),
                });
            }
            Ok(_) => {}
        }
        let db = match handle::open_read_only(&path, options) {
            Err(StoreError::Locked { path }) if open_here::contains(&path) => {
                return Err(StoreError::OpenInThisProcess { path });
            }
            opened => opened?,
        };
        let store = Self::assemble(path.clone(), options, db, true, false)?;
        // Nothing has checked this file's pages (only an open that owns the store verifies
        // them), so a read of a damaged page may panic inside redb.
        let unapplied = handle::catching_damage(&path, || {
            store.check_identity(false)?;
            store.wal_has_unapplied_records()
        })?;
        if !unapplied {
            return Ok(store);
        }
        // The last engine crashed with changes only its log holds: an open that owns the store
        // applies them (as the repair above does for redb's bookkeeping), then it is read.
        drop(store);
        tracing::info!(store = %path.display(), "applying the redo log a crashed engine left before reading the store");
        drop(Self::open(&path, options)?);
        Self::open_read_only(&path, options)
    }

    /// Opens a store kept in `backend`, creating it when the backend is empty; `path` only
    /// names it in errors.
    fn open_backend(
        path: &Path,
        options: &StoreOptions,
        backend: &CustomBackend,
    ) -> Result<Self, StoreError> {
        let path_buf = path.to_path_buf();
        let exists =
            redb::StorageBackend::len(&backend.handle()).map_err(|source| StoreError::Io {
                path: path_buf.clone(),
                detail: "cannot read the store's length".into(),
                source,
            })? > 0;
        Self::finish_open(path_buf, options, exists, true)
    }

    /// Opens (or, when `exists` is false, creates) the database and checks it is fq's.
    fn finish_open(
        path: PathBuf,
        options: &StoreOptions,
        exists: bool,
        custom_backend: bool,
    ) -> Result<Self, StoreError> {
        let fence = backend::Fence::default();
        let db = match handle::open_database(&path, options, exists, &fence) {
            Err(StoreError::Locked { path }) if open_here::contains(&path) => {
                return Err(StoreError::OpenInThisProcess { path });
            }
            opened => opened?,
        };
        let mut store = Self::assemble(path, options, Handle::Writable(db), false, custom_backend)?;
        store.fence = fence;
        // With `verify_on_open` off, the identity read is the first to meet a damaged page.
        handle::catching_damage(&store.path, || store.check_identity(!exists))?;
        store.attach_wal(options.write_ahead_log)?;
        Ok(store)
    }

    fn assemble(
        path: PathBuf,
        options: &StoreOptions,
        db: Handle,
        read_only: bool,
        custom_backend: bool,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            db: RwLock::new(Some(db)),
            read_only,
            open_here: (!custom_backend).then(|| open_here::Entry::add(&path)),
            path,
            options: options.clone(),
            custom_backend,
            wal: Mutex::new(None),
            wal_diverged: std::sync::atomic::AtomicBool::new(false),
            forgot_log: std::sync::atomic::AtomicBool::new(false),
            visible: visible::Visibility::default(),
            fence: backend::Fence::default(),
            held: Mutex::new(None),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_commit_after_log: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            panic_on_write: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The store file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The generation reads are in: it moves on each time the store is reopened.
    pub(crate) fn read_generation(&self) -> u64 {
        self.visible.generation()
    }

    /// Waits, at most `limit`, until the store has reopened since `generation`; whether it has.
    pub(crate) fn wait_reopened_since(&self, generation: u64, limit: Duration) -> bool {
        self.visible.wait_reopened_since(generation, limit)
    }

    /// Free bytes (for unprivileged users) on the file system holding the store, or `None`
    /// when that cannot be known (a custom backend, a platform without `statvfs`, an error).
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        if self.custom_backend {
            return None;
        }
        free_bytes_at(&self.path)
    }

    fn storage(&self, action: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| map_storage_error(&self.path, action, e)
    }

    /// Checks the META table; initializes it for a store created by this open.
    fn check_identity(&self, created: bool) -> Result<(), StoreError> {
        let read_err = self.storage("reading the store's identity");
        let txn = self.begin_read("reading the store's identity")?;
        let table_names: Vec<String> = txn
            .list_tables()
            .map_err(|e| read_err(e.into()))?
            .map(|t| t.name().to_owned())
            .collect();
        if !table_names.iter().any(|n| n == META.name()) {
            if created || (table_names.is_empty() && !self.read_only) {
                drop(txn);
                return self.initialize();
            }
            return Err(StoreError::NotFqStore {
                path: self.path.clone(),
                detail: format!(
                    "it is a redb database with other tables ({})",
                    table_names.join(", ")
                ),
            });
        }
        let meta = txn.open_table(META).map_err(|e| read_err(e.into()))?;
        let magic = meta.get(META_MAGIC).map_err(|e| read_err(e.into()))?;
        if magic.as_ref().map(|m| m.value()) != Some(MAGIC) {
            return Err(StoreError::NotFqStore {
                path: self.path.clone(),
                detail: "its meta table does not carry fq's mark".into(),
            });
        }
        let schema = meta.get(META_SCHEMA).map_err(|e| read_err(e.into()))?;
        let found = schema
            .as_ref()
            .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: "the schema version is missing or malformed".into(),
            })?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    fn initialize(&self) -> Result<(), StoreError> {
        self.write(|tables| {
            tables.set_meta(META_MAGIC, MAGIC)?;
            tables.set_meta(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())
        })
    }

    /// Reads one task.
    pub(crate) fn read_task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let err = self.storage("reading a task");
        let txn = self.begin_read("reading a task")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let bytes = tasks.get(id.as_u128()).map_err(|e| err(e.into()))?;
        bytes
            .map(|guard| codec::decode_task(id, guard.value()))
            .transpose()
    }

    /// Tasks created after `after`, in id (creation) order, for which `keep` holds, up to
    /// `limit`.
    pub(crate) fn scan_tasks(
        &self,
        after: Option<TaskId>,
        limit: usize,
        mut keep: impl FnMut(&StoredTask) -> bool,
    ) -> Result<Vec<(TaskId, StoredTask)>, StoreError> {
        let err = self.storage("listing tasks");
        let txn = self.begin_read("listing tasks")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let mut found = Vec::new();
        let lower = after.map_or(std::ops::Bound::Unbounded, |id| {
            std::ops::Bound::Excluded(id.as_u128())
        });
        let range = tasks
            .range::<u128>((lower, std::ops::Bound::Unbounded))
            .map_err(|e| err(e.into()))?;
        for item in range {
            if found.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|e| err(e.into()))?;
            let id = TaskId::from_u128(key.value());
            let task = codec::decode_task(id, value.value())?;
            if keep(&task) {
                found.push((id, task));
            }
        }
        Ok(found)
    }

    /// The ids of RUNNING tasks left by the previous process, with their attempt numbers.
    pub(crate) fn running(&self) -> Result<Vec<(TaskId, u32)>, StoreError> {
        let err = self.storage("scanning running tasks");
        let txn = self.begin_read("scanning running tasks")?;
        let leases = txn.open_table(LEASES).map_err(|e| err(e.into()))?;
        let mut running = Vec::new();
        for item in leases.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            running.push((TaskId::from_u128(key.value()), value.value()));
        }
        Ok(running)
    }

    /// Calls `visit` with every waiting task (queue, order, id), from the WAITING index alone:
    /// no record is read and nothing is collected, so a million waiting tasks cost only what
    /// `visit` keeps.
    pub(crate) fn for_each_waiting(
        &self,
        mut visit: impl FnMut(&str, ReadyOrder, TaskId),
    ) -> Result<u64, StoreError> {
        let err = self.storage("scanning the waiting index");
        let txn = self.begin_read("scanning the waiting index")?;
        let waiting = txn.open_table(WAITING).map_err(|e| err(e.into()))?;
        let mut visited = 0;
        for item in waiting.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            let id = TaskId::from_u128(value.value());
            let (queue, order) =
                keys::parse_waiting_key(key.value()).ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("malformed waiting-index key for task {id}"),
                })?;
            visit(queue, order, id);
            visited += 1;
        }
        Ok(visited)
    }

    /// Tasks per (queue, status), from the counts table (no record is read).
    pub(crate) fn counts(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, TaskStatus), u64>, StoreError> {
        let err = self.storage("reading counts");
        let txn = self.begin_read("reading counts")?;
        let table = txn.open_table(COUNTS).map_err(|e| err(e.into()))?;
        let mut counts = std::collections::BTreeMap::new();
        for item in table.iter().map_err(|e| err(e.into()))? {
            let (key, value) = item.map_err(|e| err(e.into()))?;
            let (queue, status) =
                keys::parse_count_key(key.value()).ok_or_else(|| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: "malformed counts key".into(),
                })?;
            counts.insert((queue.to_owned(), status), value.value());
        }
        Ok(counts)
    }
}

/// Free bytes for unprivileged users on the file system holding `path` (the file, or its
/// folder when the file does not exist yet). The writer probes once per batch that enqueues,
/// so the file is asked first: one system call where it exists.
#[cfg(unix)]
pub(crate) fn free_bytes_at(path: &Path) -> Option<u64> {
    let stats = match rustix::fs::statvfs(path) {
        Ok(stats) => stats,
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::statvfs(path.parent().filter(|p| !p.as_os_str().is_empty())?).ok()?
        }
        Err(_) => return None,
    };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Free space is not probed on this platform: the watermark never refuses.
#[cfg(not(unix))]
pub(crate) fn free_bytes_at(_path: &Path) -> Option<u64> {
    None
}

/// Whether the operating system refused a write for want of space (ENOSPC).
pub(super) fn is_storage_full(error: &std::io::Error) -> bool {
    error.raw_os_error() == Some(28) || error.kind() == ErrorKind::StorageFull
}

impl StoreError {
    /// The disk holding `path` had no room for a write.
    pub(crate) fn full(path: &Path) -> Self {
        Self::Full {
            path: path.to_path_buf(),
            free_bytes: free_bytes_at(path),
            needed_bytes: None,
        }
    }
}

fn map_storage_error(path: &Path, action: &'static str, error: redb::Error) -> StoreError {
    match error {
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
        redb::Error::Io(io) if is_storage_full(&io) => StoreError::full(path),
        redb::Error::Io(io) => StoreError::Io {
            path: path.to_path_buf(),
            detail: format!("i/o error while {action}"),
            source: io,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        redb::Error::DatabaseClosed => StoreError::Reopened {
            path: path.to_path_buf(),
            action,
        },
        other => StoreError::Storage {
            path: path.to_path_buf(),
            action,
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::queue_sample;
