//! A redb storage backend handed in from outside (tests that simulate power loss and failing
//! disks, and `fq::testing`'s stores in memory), shared so that store options stay cloneable
//! and a test keeps its own handle.

use std::ops::Bound;
use std::sync::Arc;

use redb::{BackendError, StorageBackend};

/// Storage for a store kept somewhere other than its file: any redb `StorageBackend`
/// converts into it (`EngineBuilder::storage_backend`). Shared between the caller and the
/// store, so store options stay cloneable and a test keeps its own handle. For fq's own
/// power-loss and I/O-error tests; not a stable API.
#[derive(Clone)]
pub struct CustomBackend(Arc<dyn StorageBackend>);

impl<B: StorageBackend> From<B> for CustomBackend {
    fn from(backend: B) -> Self {
        Self(Arc::new(backend))
    }
}

impl CustomBackend {
    /// Storage in memory (redb's `InMemoryBackend`): no file, and a commit's fsync costs
    /// nothing. For `fq::testing`.
    pub(crate) fn in_memory() -> Self {
        Self::from(redb::backends::InMemoryBackend::new())
    }

    /// True while a store (or another handle) still holds this storage: false once every
    /// store opened on it has closed, its engine threads joined.
    pub(crate) fn is_held_elsewhere(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// The handle redb opens: another reference to the same storage.
    pub(super) fn handle(&self) -> SharedBackend {
        SharedBackend(Arc::clone(&self.0))
    }
}

/// What redb is given of a [`CustomBackend`] (which cannot itself be a `StorageBackend`: that
/// would make every backend's conversion into it ambiguous).
#[derive(Debug)]
pub(super) struct SharedBackend(Arc<dyn StorageBackend>);

impl std::fmt::Debug for CustomBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A write-ahead log kept in a custom backend (`wal.rs`).
impl crate::store::log::LogFile for SharedBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn sync_handle(&self) -> Option<Arc<dyn crate::store::log::LogFile + Send + Sync>> {
        Some(Arc::new(Self(Arc::clone(&self.0))))
    }
}

impl StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// The switch of a [`Fenced`] backend, shared with the store that may throw it.
pub(super) type Fence = Arc<std::sync::atomic::AtomicBool>;

/// The B-tree's storage, file or custom, behind a fence. Thrown after a failed log sync, the
/// fence fails every later write, so that closing the database cannot make durable the commits
/// made visible ahead of that sync (redb's close makes pending non-durable commits durable):
/// the file stays as its last durable commit left it, and the reopen applies the log's synced
/// records to that.
#[derive(Debug)]
pub(super) struct Fenced {
    inner: Box<dyn StorageBackend>,
    fence: Fence,
}

impl Fenced {
    pub(super) fn new(inner: impl StorageBackend, fence: &Fence) -> Self {
        Self {
            inner: Box::new(inner),
            fence: Arc::clone(fence),
        }
    }

    fn open(&self) -> Result<(), std::io::Error> {
        if self.fence.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "the store is fenced off: its redo log failed to sync",
            ));
        }
        Ok(())
    }
}

impl StorageBackend for Fenced {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.open()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.open()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.open()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
