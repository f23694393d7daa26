//! The open redb database behind a store, writable (the engine that owns the store) or
//! read-only (commands that only look at a store nobody serves), and how either is opened.

use std::io::ErrorKind;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, TransactionError};

use super::backend::{Fence, Fenced};
use super::copy_on_write::CopyOnWrite;
use super::{StoreError, StoreOptions, map_storage_error};

/// An open database.
pub(super) enum Handle {
    /// Opened for writing: the owning engine's.
    Writable(Database),
    /// Opened without any right to write: the file is read as it is.
    ReadOnly(ReadOnlyDatabase),
}

impl Handle {
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        match self {
            Self::Writable(db) => db.begin_read(),
            Self::ReadOnly(db) => db.begin_read(),
        }
    }

    /// The database to write through, if it was opened for writing.
    pub(super) fn writable(&self) -> Option<&Database> {
        match self {
            Self::Writable(db) => Some(db),
            Self::ReadOnly(_) => None,
        }
    }
}

/// Opens an existing store's database to read it as it is. A file its last owner did not close
/// cleanly needs redb's repair of its page allocator before anything can read it; that repair
/// (redb's bookkeeping, not a task) is made, and nothing else: fq's own crash recovery, which
/// moves the tasks a crashed owner left running, waits for an engine that owns the store.
pub(super) fn open_read_only(path: &Path, options: &StoreOptions) -> Result<Handle, StoreError> {
    let mut builder = Database::builder();
    builder.set_cache_size(options.cache_bytes);
    match catching_damage(path, || Ok(builder.open_read_only(path)))? {
        Ok(db) => {
            // Held open meanwhile: its locks keep an owner from writing to the file while its
            // pages are verified.
            if options.verify_on_open {
                verify_pages(path)?;
            }
            Ok(Handle::ReadOnly(db))
        }
        Err(redb::DatabaseError::RepairAborted) => {
            tracing::info!(store = %path.display(), "the store was not closed cleanly; repairing redb's allocator state before reading it");
            open_database(path, options, true, &Fence::default()).map(Handle::Writable)
        }
        Err(e) => Err(map_open_error(path, e)),
    }
}

thread_local! {
    static DAMAGE_GUARD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` marked as reading a store whose panics inside redb are caught and returned as
/// the file's corruption ([`catching_damage`], and the engine's reads), so that a panic hook
/// can tell such a panic from a bug ([`inside_damage_guard`]).
pub(crate) fn under_damage_guard<T>(work: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DAMAGE_GUARD.with(|guard| guard.set(self.0));
        }
    }
    let _restore = Restore(DAMAGE_GUARD.with(|guard| guard.replace(true)));
    work()
}

/// Whether this thread runs under [`under_damage_guard`]: a panic here is caught and comes
/// back as an error naming the store.
fn inside_damage_guard() -> bool {
    DAMAGE_GUARD.with(std::cell::Cell::get)
}

/// Makes the panics fq catches inside redb on a damaged store file quiet: they come back as
/// an error naming the file ([`crate::StoreError::Corrupt`]), but the default panic hook
/// prints them first (with a backtrace under `RUST_BACKTRACE`), which reads as a crash.
/// Installs, once per process, a hook that logs such a panic at debug level (where in redb it
/// happened) and passes every other panic to the hook that was there before (the default, or
/// an application's). The `fq` CLI calls it; an application that embeds fq may too.
pub fn quiet_caught_storage_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if inside_damage_guard() {
                tracing::debug!(
                    message = %crate::error::panic_message(info.payload()),
                    at = %info.location().map_or_else(String::new, ToString::to_string),
                    "the storage engine failed on a damaged store file; the error follows"
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// Verifies every page of the store file at `path` as an owner's open does (redb's integrity
/// check on open), without changing the file: redb opens it for writing through a
/// [`CopyOnWrite`] layer that keeps what the check writes in memory, and the layer is dropped.
fn verify_pages(path: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        detail: "cannot read the store to verify it".into(),
        source,
    };
    let layer = std::fs::File::open(path)
        .and_then(CopyOnWrite::new)
        .map_err(io)?;
    let mut builder = Database::builder();
    // Every page is read once: a cache would only hold what is never read again.
    builder
        .set_cache_size(VERIFY_CACHE_BYTES)
        .set_check_integrity_on_open(true);
    catching_damage(path, || {
        builder
            .create_with_backend(layer)
            .map(drop)
            .map_err(|e| map_open_error(path, e))
    })
}

/// The page cache of [`verify_pages`]' open.
const VERIFY_CACHE_BYTES: usize = 4 << 20;

/// Runs `step` of an open on a file not yet known to be sound. redb's page checks panic on
/// some damage no checksum catches (a page of zeros read as a tree node, say): a damaged file
/// is bad input, so such a panic comes back as the file's corruption, naming it.
pub(super) fn catching_damage<T>(
    path: &Path,
    step: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(|| under_damage_guard(step))).unwrap_or_else(|panic| {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "the storage engine failed on it: {}",
                crate::error::panic_message(&*panic)
            ),
        })
    })
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
pub(super) fn open_database(
    path: &Path,
    options: &StoreOptions,
    exists: bool,
    fence: &Fence,
) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(options.cache_bytes)
        .set_check_integrity_on_open(options.verify_on_open);
    catching_damage(path, || {
        match &options.backend {
            Some(backend) => builder.create_with_backend(Fenced::new(backend.handle(), fence)),
            None if exists => open_existing(path)
                .and_then(redb::backends::FileBackend::new)
                .and_then(|backend| builder.create_with_backend(Fenced::new(backend, fence))),
            None => create_private(path)
                .map_err(redb::DatabaseError::from)
                .and_then(redb::backends::FileBackend::new)
                .and_then(|backend| builder.create_with_backend(Fenced::new(backend, fence))),
        }
        .map_err(|e| map_open_error(path, e))
    })
}

/// Opens an existing store file for reading and writing. An empty one is refused as redb's own
/// open refuses it (opened through a backend, redb would make a new database of it).
fn open_existing(path: &Path) -> Result<std::fs::File, redb::DatabaseError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    if file.metadata()?.len() == 0 {
        return Err(redb::StorageError::Io(std::io::Error::new(
            ErrorKind::InvalidData,
            "the file is empty",
        ))
        .into());
    }
    Ok(file)
}

/// Creates a new store file readable and writable by its owner only: it holds every task's
/// arguments, which other local users have no business reading.
pub(super) fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
