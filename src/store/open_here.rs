//! Store files open in this process, so that opening one of them again (its `Engine`, a worker
//! or a task still holds it) is reported as this process's doing, not another's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Canonical path -> how many stores hold it (a store being reopened briefly counts twice).
static OPEN: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

fn key(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// True when a store of this process holds `path`.
pub(super) fn contains(path: &Path) -> bool {
    let open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    open.contains_key(&key(path))
}

/// One store's registration; removed when dropped.
#[derive(Debug)]
pub(super) struct Entry(PathBuf);

impl Entry {
    pub(super) fn add(path: &Path) -> Self {
        let key = key(path);
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        *open.entry(key.clone()).or_insert(0) += 1;
        Self(key)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.0);
            }
        }
    }
}
