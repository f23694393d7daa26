//! The durable store: one redb file holding every task, the waiting index (priority and due
//! time), the running set and the finished index. Only this module imports redb.

mod backend;
mod codec;
mod error;
mod integrity;
mod keys;
mod tables;

use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle};

pub(crate) use backend::SharedBackend;
#[cfg(all(test, feature = "rabbitmq"))]
pub(crate) use codec::sample_task as codec_sample_task;
pub(crate) use codec::{decode as codec_decode, encode as codec_encode};
pub use error::StoreError;
pub use integrity::IntegrityReport;
use tables::{
    COUNTS, FINISHED, LEASES, MAGIC, META, META_MAGIC, META_SCHEMA, SCHEMA_VERSION, TASKS, WAITING,
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
    pub(crate) backend: Option<SharedBackend>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 * 1024 * 1024,
            verify_on_open: true,
            backend: None,
        }
    }
}

/// An open store file.
pub(crate) struct Store {
    /// The open database; replaced by [`Store::reopen`] after a failed commit (redb then fails
    /// every later access, reads included), `None` only if that reopen failed.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    options: StoreOptions,
    /// True when the bytes live in a custom backend: the path's file system says nothing about
    /// their free space.
    custom_backend: bool,
    /// Makes every commit fail, so tests can see what a failed fsync does to the engine.
    #[cfg(test)]
    pub(crate) fail_commits: std::sync::atomic::AtomicBool,
    /// Makes the next write panic, as a bug in the engine would.
    #[cfg(test)]
    pub(crate) panic_on_write: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
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
        if !exists && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error("cannot create the store's folder", e))?;
        }
        Self::finish_open(path_buf, options, exists, false)
    }

    /// Opens a store kept in `backend`, creating it when the backend is empty; `path` only
    /// names it in errors.
    fn open_backend(
        path: &Path,
        options: &StoreOptions,
        backend: &SharedBackend,
    ) -> Result<Self, StoreError> {
        let path_buf = path.to_path_buf();
        let exists = redb::StorageBackend::len(backend).map_err(|source| StoreError::Io {
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
        let db = open_database(&path, options, exists)?;
        let store = Self {
            db: RwLock::new(Some(db)),
            path,
            options: options.clone(),
            custom_backend,
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            panic_on_write: std::sync::atomic::AtomicBool::new(false),
        };
        store.check_identity(!exists)?;
        Ok(store)
    }

    /// The store file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Closes and reopens the database. After a failed commit redb refuses every later
    /// access, reads included, until the database is reopened; the engine refuses writes
    /// then (it is poisoned) but keeps answering reads from what the file holds.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closed first: redb locks the file, and the new handle needs that lock.
        drop(slot.take());
        *slot = Some(open_database(&self.path, &self.options, true)?);
        Ok(())
    }

    fn closed(&self) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            detail: "the store could not be reopened after a failed commit; reopen the engine"
                .into(),
            source: std::io::Error::other("store closed"),
        }
    }

    fn begin_read(&self, action: &'static str) -> Result<redb::ReadTransaction, StoreError> {
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = slot.as_ref().ok_or_else(|| self.closed())?;
        db.begin_read()
            .map_err(|e| map_storage_error(&self.path, action, e.into()))
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = slot.as_ref().ok_or_else(|| self.closed())?;
        db.begin_write()
            .map_err(|e| map_storage_error(&self.path, "writing", e.into()))
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
            if created || table_names.is_empty() {
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

    /// Runs `apply` in one write transaction and commits it durably (fsync) before returning.
    /// An `Err` from `apply` aborts the transaction: nothing of it is written.
    pub(crate) fn write<R>(
        &self,
        apply: impl FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_with(true, apply)
    }

    /// As [`Store::write`]; with `durable` false the commit is visible to every later read at
    /// once but reaches the disk only with the next durable commit (no fsync of its own): for
    /// changes that may be lost in a crash (the record of a run RabbitMQ already has the ack
    /// for). The writer makes a durable commit soon after any such commit.
    pub(crate) fn write_with<R>(
        &self,
        durable: bool,
        apply: impl FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let err = self.storage("writing");
        let mut txn = self.begin_write()?;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        let result = {
            let mut tables = WriteTables {
                path: &self.path,
                counts: txn.open_table(COUNTS).map_err(|e| err(e.into()))?,
                count_deltas: std::collections::HashMap::new(),
                tasks: txn.open_table(TASKS).map_err(|e| err(e.into()))?,
                waiting: txn.open_table(WAITING).map_err(|e| err(e.into()))?,
                leases: txn.open_table(LEASES).map_err(|e| err(e.into()))?,
                finished: txn.open_table(FINISHED).map_err(|e| err(e.into()))?,
                meta: txn.open_table(META).map_err(|e| err(e.into()))?,
            };
            let result = apply(&mut tables)?;
            tables.flush_counts()?;
            result
        };
        #[cfg(test)]
        assert!(
            !self
                .panic_on_write
                .swap(false, std::sync::atomic::Ordering::SeqCst),
            "injected writer panic"
        );
        #[cfg(test)]
        if self.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
            drop(txn);
            return Err(StoreError::Io {
                path: self.path.clone(),
                detail: "i/o error while committing".into(),
                source: std::io::Error::other("injected commit failure"),
            });
        }
        txn.commit()
            .map_err(|e| self.storage("committing")(e.into()))?;
        Ok(result)
    }

    /// Reads one task.
    pub(crate) fn read_task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let err = self.storage("reading a task");
        let txn = self.begin_read("reading a task")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let bytes = tasks.get(id.as_u128()).map_err(|e| err(e.into()))?;
        bytes
            .map(|guard| {
                codec::decode(guard.value()).map_err(|e| StoreError::CorruptRecord {
                    id,
                    detail: e.to_string(),
                })
            })
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
            let task = codec::decode(value.value()).map_err(|e| StoreError::CorruptRecord {
                id,
                detail: e.to_string(),
            })?;
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

/// The open tables of one write transaction.
pub(crate) struct WriteTables<'txn> {
    path: &'txn Path,
    counts: redb::Table<'txn, &'static [u8], u64>,
    /// Count changes of this transaction, written once per (queue, status) at its end.
    count_deltas: std::collections::HashMap<(String, TaskStatus), i64>,
    tasks: redb::Table<'txn, u128, &'static [u8]>,
    waiting: redb::Table<'txn, &'static [u8], u128>,
    leases: redb::Table<'txn, u128, u32>,
    finished: redb::Table<'txn, &'static [u8], ()>,
    meta: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl WriteTables<'_> {
    fn err(&self, action: &'static str) -> impl Fn(redb::StorageError) -> StoreError + '_ {
        move |e| map_storage_error(self.path, action, e.into())
    }

    fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let path = self.path;
        self.meta
            .insert(key, value)
            .map_err(|e| map_storage_error(path, "writing meta", e.into()))?;
        Ok(())
    }

    /// Reads one task inside the transaction.
    pub(crate) fn get_task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let bytes = self
            .tasks
            .get(id.as_u128())
            .map_err(self.err("reading a task"))?;
        bytes
            .map(|guard| {
                codec::decode(guard.value()).map_err(|e| StoreError::CorruptRecord {
                    id,
                    detail: e.to_string(),
                })
            })
            .transpose()
    }

    fn count(&mut self, queue: &str, status: TaskStatus, delta: i64) {
        if let Some(entry) = self.count_deltas.get_mut(&(queue.to_owned(), status)) {
            *entry += delta;
        } else {
            self.count_deltas.insert((queue.to_owned(), status), delta);
        }
    }

    fn flush_counts(&mut self) -> Result<(), StoreError> {
        let path = self.path;
        let deltas = std::mem::take(&mut self.count_deltas);
        for ((queue, status), delta) in deltas {
            if delta == 0 {
                continue;
            }
            let key = keys::count_key(&queue, status);
            let current = self
                .counts
                .get(key.as_slice())
                .map_err(|e| map_storage_error(path, "reading a count", e.into()))?
                .map_or(0, |v| v.value());
            let updated = current.saturating_add_signed(delta);
            if updated == 0 {
                self.counts
                    .remove(key.as_slice())
                    .map_err(|e| map_storage_error(path, "writing a count", e.into()))?;
            } else {
                self.counts
                    .insert(key.as_slice(), updated)
                    .map_err(|e| map_storage_error(path, "writing a count", e.into()))?;
            }
        }
        Ok(())
    }

    /// True when a task with this id exists.
    pub(crate) fn contains_task(&self, id: TaskId) -> Result<bool, StoreError> {
        Ok(self
            .tasks
            .get(id.as_u128())
            .map_err(self.err("reading a task"))?
            .is_some())
    }

    /// Writes (inserts or replaces) one task record; `previous` is the status it had before
    /// (`None` for a new task), so the per-queue counts follow.
    pub(crate) fn put_task(
        &mut self,
        id: TaskId,
        task: &StoredTask,
        previous: Option<TaskStatus>,
    ) -> Result<(), StoreError> {
        if previous != Some(task.status) {
            if let Some(previous) = previous {
                self.count(&task.queue, previous, -1);
            }
            self.count(&task.queue, task.status, 1);
        }
        let bytes = codec::encode(task);
        let path = self.path;
        self.tasks
            .insert(id.as_u128(), bytes.as_slice())
            .map_err(|e| map_storage_error(path, "writing a task", e.into()))?;
        Ok(())
    }

    /// Deletes one task record.
    pub(crate) fn delete_task(&mut self, id: TaskId, task: &StoredTask) -> Result<(), StoreError> {
        self.count(&task.queue, task.status, -1);
        let path = self.path;
        self.tasks
            .remove(id.as_u128())
            .map_err(|e| map_storage_error(path, "deleting a task", e.into()))?;
        Ok(())
    }

    /// Adds a task to the waiting index.
    pub(crate) fn insert_waiting(
        &mut self,
        queue: &str,
        order: ReadyOrder,
        id: TaskId,
    ) -> Result<(), StoreError> {
        let key = keys::waiting_key(queue, order);
        let path = self.path;
        self.waiting
            .insert(key.as_slice(), id.as_u128())
            .map_err(|e| map_storage_error(path, "indexing a waiting task", e.into()))?;
        Ok(())
    }

    /// Removes a task from the waiting index.
    pub(crate) fn remove_waiting(
        &mut self,
        queue: &str,
        order: ReadyOrder,
    ) -> Result<(), StoreError> {
        let key = keys::waiting_key(queue, order);
        let path = self.path;
        self.waiting
            .remove(key.as_slice())
            .map_err(|e| map_storage_error(path, "unindexing a waiting task", e.into()))?;
        Ok(())
    }

    /// Marks a task RUNNING at `attempt` in the running set.
    pub(crate) fn insert_lease(&mut self, id: TaskId, attempt: u32) -> Result<(), StoreError> {
        let path = self.path;
        self.leases
            .insert(id.as_u128(), attempt)
            .map_err(|e| map_storage_error(path, "recording a lease", e.into()))?;
        Ok(())
    }

    /// Removes a task from the running set.
    pub(crate) fn remove_lease(&mut self, id: TaskId) -> Result<(), StoreError> {
        let path = self.path;
        self.leases
            .remove(id.as_u128())
            .map_err(|e| map_storage_error(path, "releasing a lease", e.into()))?;
        Ok(())
    }

    /// Adds a finished task to the retention index.
    pub(crate) fn insert_finished(
        &mut self,
        status: TaskStatus,
        finished_at: Millis,
        id: TaskId,
    ) -> Result<(), StoreError> {
        let key = keys::finished_key(status, finished_at, id);
        let path = self.path;
        self.finished
            .insert(key.as_slice(), ())
            .map_err(|e| map_storage_error(path, "indexing a finished task", e.into()))?;
        Ok(())
    }

    /// Removes a finished task from the retention index.
    pub(crate) fn remove_finished(
        &mut self,
        status: TaskStatus,
        finished_at: Millis,
        id: TaskId,
    ) -> Result<(), StoreError> {
        let key = keys::finished_key(status, finished_at, id);
        let path = self.path;
        self.finished
            .remove(key.as_slice())
            .map_err(|e| map_storage_error(path, "unindexing a finished task", e.into()))?;
        Ok(())
    }

    /// Up to `limit` WAITING entries of `queue` after the key `after`: (key, task id).
    pub(crate) fn waiting_page(
        &self,
        queue: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, TaskId)>, StoreError> {
        let mut start = queue.as_bytes().to_vec();
        start.push(0);
        let mut end = queue.as_bytes().to_vec();
        end.push(1);
        self.page(&self.waiting, &start, &end, after, limit, |key, value| {
            let _ = key;
            Some(TaskId::from_u128(value))
        })
    }

    /// Up to `limit` FINISHED entries of `status` after the key `after`: (key, task id).
    pub(crate) fn finished_page(
        &self,
        status: TaskStatus,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, TaskId)>, StoreError> {
        let start = keys::finished_range_start(status).to_vec();
        let mut end = start.clone();
        end[0] += 1;
        self.page(&self.finished, &start, &end, after, limit, |key, ()| {
            keys::parse_finished_key(key).map(|(_, _, id)| id)
        })
    }

    fn page<V: redb::Value + 'static>(
        &self,
        table: &redb::Table<'_, &'static [u8], V>,
        start: &[u8],
        end: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        id_of: impl Fn(&[u8], V::SelfType<'_>) -> Option<TaskId>,
    ) -> Result<Vec<(Vec<u8>, TaskId)>, StoreError> {
        use std::ops::Bound;
        let lower = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(start),
        };
        let range = table
            .range::<&[u8]>((lower, Bound::Excluded(end)))
            .map_err(self.err("scanning an index"))?;
        let mut page = Vec::new();
        for item in range.take(limit) {
            let (key, value) = item.map_err(self.err("scanning an index"))?;
            let id = id_of(key.value(), value.value()).ok_or_else(|| StoreError::Corrupt {
                path: self.path.to_path_buf(),
                detail: "malformed index key".into(),
            })?;
            page.push((key.value().to_vec(), id));
        }
        Ok(page)
    }

    /// Deletes a task whatever its state, with its index entries.
    pub(crate) fn purge_task(&mut self, id: TaskId, task: &StoredTask) -> Result<(), StoreError> {
        if task.status.is_waiting() {
            self.remove_waiting(
                &task.queue,
                ReadyOrder::new(task.priority, task.due_at, task.seq),
            )?;
        }
        if task.status.is_terminal()
            && let Some(finished_at) = task.finished_at
        {
            self.remove_finished(task.status, finished_at, id)?;
        }
        if task.status == TaskStatus::Running {
            self.remove_lease(id)?;
        }
        self.delete_task(id, task)
    }

    /// Deletes up to `limit` tasks of `status` that finished before `cutoff`, oldest first;
    /// returns their ids.
    pub(crate) fn delete_finished_before(
        &mut self,
        status: TaskStatus,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<TaskId>, StoreError> {
        let start = keys::finished_range_start(status);
        let end = keys::finished_key(status, cutoff, TaskId::from_u128(0));
        let mut doomed = Vec::new();
        {
            let range = self
                .finished
                .range(start.as_slice()..end.as_slice())
                .map_err(self.err("scanning finished tasks"))?;
            for item in range.take(limit) {
                let (key, _) = item.map_err(self.err("scanning finished tasks"))?;
                let parsed =
                    keys::parse_finished_key(key.value()).ok_or_else(|| StoreError::Corrupt {
                        path: self.path.to_path_buf(),
                        detail: "malformed finished-index key".into(),
                    })?;
                doomed.push(parsed);
            }
        }
        for (status, finished_at, id) in &doomed {
            self.remove_finished(*status, *finished_at, *id)?;
            match self.get_task(*id) {
                Ok(Some(task)) => self.delete_task(*id, &task)?,
                Ok(None) => {}
                // A record that no longer decodes is past its retention all the same; its
                // count cannot be corrected without it, which `verify` would report.
                Err(StoreError::CorruptRecord { .. }) => {
                    let path = self.path;
                    self.tasks
                        .remove(id.as_u128())
                        .map_err(|e| map_storage_error(path, "deleting a task", e.into()))?;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(doomed.into_iter().map(|(_, _, id)| id).collect())
    }
}

fn map_open_error(path: &Path, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::UpgradeRequired(version) => StoreError::NotFqStore {
            path: path.to_path_buf(),
            detail: format!("it uses redb file format {version}, which this build does not read"),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData) =>
        {
            StoreError::NotFqStore {
                path: path.to_path_buf(),
                detail: format!("it is not a redb database ({io})"),
            }
        }
        redb::DatabaseError::Storage(storage) => {
            let mapped = map_storage_error(path, "opening", storage.into());
            match mapped {
                StoreError::Storage { source, .. } => StoreError::NotFqStore {
                    path: path.to_path_buf(),
                    detail: format!("it is not a readable redb database ({source})"),
                },
                other => other,
            }
        }
        other => StoreError::Storage {
            path: path.to_path_buf(),
            action: "opening",
            source: Box::new(other),
        },
    }
}

/// Opens (or, for a new store, creates) the redb database of a store.
fn open_database(
    path: &Path,
    options: &StoreOptions,
    exists: bool,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(options.cache_bytes)
        .set_check_integrity_on_open(options.verify_on_open);
    // redb's consistency checks can panic on a damaged file in debug builds; a damaged file
    // is bad input, and must come back as an error naming it.
    let opened = catch_unwind(AssertUnwindSafe(|| match &options.backend {
        Some(backend) => builder.create_with_backend(backend.clone()),
        None if exists => builder.open(path),
        None => create_private(path)
            .map_err(redb::DatabaseError::from)
            .and_then(redb::backends::FileBackend::new)
            .and_then(|backend| builder.create_with_backend(backend)),
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(map_open_error(path, e)),
        Err(panic) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("the storage engine failed on it: {}", panic_text(&*panic)),
        }),
    }
}

/// Creates a new store file readable and writable by its owner only: it holds every task's
/// arguments, which other local users have no business reading.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Free bytes for unprivileged users on the file system holding `path` (the file, or its
/// folder when the file does not exist yet).
#[cfg(unix)]
pub(crate) fn free_bytes_at(path: &Path) -> Option<u64> {
    let probe = if path.exists() {
        path
    } else {
        path.parent().filter(|p| !p.as_os_str().is_empty())?
    };
    let stats = rustix::fs::statvfs(probe).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Free space is not probed on this platform: the watermark never refuses.
#[cfg(not(unix))]
pub(crate) fn free_bytes_at(_path: &Path) -> Option<u64> {
    None
}

fn map_storage_error(path: &Path, action: &'static str, error: redb::Error) -> StoreError {
    match error {
        redb::Error::Corrupted(detail) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
        redb::Error::Io(io)
            if io.raw_os_error() == Some(28) || io.kind() == ErrorKind::StorageFull =>
        {
            StoreError::Full {
                path: path.to_path_buf(),
                free_bytes: free_bytes_at(path),
                needed_bytes: None,
            }
        }
        redb::Error::Io(io) => StoreError::Io {
            path: path.to_path_buf(),
            detail: format!("i/o error while {action}"),
            source: io,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
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
