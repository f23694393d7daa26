//! How the store reaches its database: read transactions through the visibility gate
//! (`visible.rs`), write transactions, and the reopen after a failed commit or sync, which
//! moves the gate to a new generation.

use std::sync::PoisonError;

use super::handle::{self, Handle};
use super::{Store, StoreError, StoreOptions, map_storage_error};

/// The page cache of a store reopened after a failed commit: room in its write buffer for the
/// pages a whole log's changes may touch (a change of a few dozen bytes can dirty a 4 KiB page,
/// but changes crowd onto the same pages), and never less than the default cache.
fn reopen_cache_bytes(options: &StoreOptions) -> usize {
    let for_log =
        usize::try_from(options.wal_checkpoint_bytes.saturating_mul(64)).unwrap_or(usize::MAX);
    for_log.max(StoreOptions::default().cache_bytes)
}

impl Store {
    /// Closes and reopens the database. After a failed commit redb refuses every later
    /// access, reads included, until the database is reopened; the engine refuses writes
    /// then (it is poisoned) but keeps answering reads from what the file holds.
    ///
    /// The log's records are applied again at the reopen, in a commit that does not sync: its
    /// pages stay in redb's write buffer (half its cache) unless the buffer overflows. After a
    /// failure the disk may well be full, so the cache is made large enough for a whole log's
    /// changes: reads then see every acknowledged change without writing a page.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        // Reads wait until the log is applied again: the B-tree alone may be older than what
        // was acknowledged.
        self.visible.hold();
        let reopened = self.reopen_held();
        self.visible.reopened();
        reopened
    }

    fn reopen_held(&self) -> Result<(), StoreError> {
        // Its batches are in the log, which the reopen applies again.
        self.drop_held();
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closed first: redb locks the file, and the new handle needs that lock.
        drop(slot.take());
        self.fence.store(false, std::sync::atomic::Ordering::SeqCst);
        *slot = Some(if self.read_only {
            handle::open_read_only(&self.path, &self.options)?
        } else {
            let options = StoreOptions {
                cache_bytes: self
                    .options
                    .cache_bytes
                    .max(reopen_cache_bytes(&self.options)),
                ..self.options.clone()
            };
            Handle::Writable(handle::open_database(
                &self.path,
                &options,
                true,
                &self.fence,
            )?)
        });
        drop(slot);
        if !self.read_only {
            self.attach_wal(self.options.write_ahead_log)?;
        }
        Ok(())
    }

    pub(super) fn closed(&self) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            detail: "the store could not be reopened after a failed commit; reopen the engine"
                .into(),
            source: std::io::Error::other("store closed"),
        }
    }

    /// A read transaction whose snapshot holds only durable changes (`visible.rs`).
    pub(super) fn begin_read(
        &self,
        action: &'static str,
    ) -> Result<redb::ReadTransaction, StoreError> {
        loop {
            self.visible.wait_for_commit();
            let generation = self.visible.generation();
            let txn = {
                let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
                let db = slot.as_ref().ok_or_else(|| self.closed())?;
                db.begin_read()
                    .map_err(|e| map_storage_error(&self.path, action, e.into()))?
            };
            if self.visible.wait_visible(generation) {
                return Ok(txn);
            }
        }
    }

    /// The writer's held transaction if there is one (`held.rs`): whatever commits it commits
    /// the batches it carries, which are in the log already. Else a new transaction.
    pub(super) fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        if let Some(held) = self.take_held() {
            return Ok(held.txn);
        }
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let handle = slot.as_ref().ok_or_else(|| self.closed())?;
        let db = handle
            .writable()
            .filter(|_| !self.read_only)
            .ok_or_else(|| StoreError::ReadOnly {
                path: self.path.clone(),
            })?;
        db.begin_write()
            .map_err(|e| map_storage_error(&self.path, "writing", e.into()))
    }
}
