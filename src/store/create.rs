//! Creating a store file atomically: the new store is built and made durable under a temporary
//! name beside the final one, then linked into place and the folder synced, so that a crash at
//! any point leaves either no store or a complete empty one, never a half-written file that
//! later opens refuse.

use std::io;
use std::path::{Path, PathBuf};

use super::handle::{Handle, open_database};
use super::{Store, StoreError, StoreOptions};

impl Store {
    /// Creates a complete, empty store at `path` (which must not exist yet). Another process
    /// creating the same store at the same moment is fine: the first link wins and the other
    /// opens it.
    pub(super) fn create_atomically(path: &Path, options: &StoreOptions) -> Result<(), StoreError> {
        let io_error = |detail: &str, source: io::Error| StoreError::Io {
            path: path.to_path_buf(),
            detail: detail.to_owned(),
            source,
        };
        let temp = temporary_name(path);
        let built = (|| {
            let db = open_database(&temp, options, false, &super::backend::Fence::default())?;
            // Not registered as open in this process: nothing else ever names this file.
            let store = Self::assemble(temp.clone(), options, Handle::Writable(db), false, true)?;
            store.initialize()?;
            drop(store);
            std::fs::File::open(&temp)
                .and_then(|file| file.sync_all())
                .map_err(|e| io_error("cannot sync the new store", e))
        })();
        let linked = built.and_then(|()| match std::fs::hard_link(&temp, path) {
            Ok(()) => Ok(()),
            // Created meanwhile by another process: theirs is as good as ours.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links: a rename is atomic too, only not exclusive.
            Err(_) => std::fs::rename(&temp, path)
                .map_err(|e| io_error("cannot move the new store into place", e)),
        });
        let _ = std::fs::remove_file(&temp);
        linked?;
        sync_folder(path).map_err(|e| io_error("cannot sync the store's folder", e))
    }
}

/// `.<name>.creating-<pid>-<nanos>` beside `path`: hidden, and unique to this attempt.
pub(super) fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_file_name(format!(".{name}.creating-{}-{nanos}", std::process::id()))
}

/// Makes the folder's new entry durable (on Unix a folder is synced through a handle on it).
pub(super) fn sync_folder(path: &Path) -> io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::File::open(folder)?.sync_all()
}
