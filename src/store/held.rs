//! The B-tree transaction the writer keeps open across logged batches ([`Commit::Held`]).
//!
//! With the log, a batch is durable once its record is synced; the B-tree's commit only makes
//! it readable. Each redb commit copies every page the transaction touched (the task table's
//! and the indexes' paths from leaf to root, the counts, the log's applied mark), so a batch
//! whose B-tree transaction stays open for the next ones rewrites the pages they share once,
//! not once per batch. Until that transaction commits, reads on other threads wait at the gate
//! before their snapshot (`visible.rs`), as after a change synced on the writer's thread, and
//! a read waiting there asks the writer to commit (`Store::commit_wanted`).
//!
//! A held transaction is not durable: a crash loses it whole, and the open applies the log's
//! records again, exactly as for a commit made without a sync. A write that fails while it
//! holds answered batches drops them from the B-tree; the writer then reopens the store, which
//! applies the log again, answered batches included, before any read goes on.
//!
//! [`Commit::Held`]: super::Commit::Held

use std::sync::PoisonError;

use super::{Store, StoreError};

/// An open write transaction carrying batches whose records are in the log.
pub(super) struct Held {
    pub(super) txn: redb::WriteTransaction,
    /// How many logged batches it carries.
    pub(super) batches: u32,
}

/// How many logged batches one B-tree transaction carries at most by default. Past a few the
/// pages a batch shares with the others are already copied; the bound keeps the dirty pages,
/// and the replay a crash costs, small.
pub(super) const HOLD_BATCHES: u32 = 16;

impl Store {
    /// Takes the held transaction, if any, to go on writing in it or to commit it.
    pub(super) fn take_held(&self) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Keeps `txn`, carrying `batches` logged batches, open for the next write. Reads on other
    /// threads wait before their snapshot until it commits.
    pub(super) fn hold(&self, txn: redb::WriteTransaction, batches: u32) {
        self.visible.hold_for_commit();
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(Held { txn, batches });
    }

    /// Whether a deferred write's transaction that would carry `batches` logged batches may
    /// stay open.
    pub(super) fn may_hold(&self, batches: u32) -> bool {
        batches < self.options.hold_batches && !self.visible.commit_wanted()
    }

    /// Drops the held transaction uncommitted (before a reopen, which applies the log again).
    pub(super) fn drop_held(&self) {
        drop(self.take_held());
    }

    /// Whether the writer holds the first batch of a burst too
    /// (`StoreOptions::hold_every_batch`).
    pub(crate) fn holds_every_batch(&self) -> bool {
        self.options.hold_every_batch
    }

    /// Whether a transaction carrying logged batches is open.
    pub(crate) fn holds(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Whether a read waits for the held transaction to commit.
    pub(crate) fn commit_wanted(&self) -> bool {
        self.visible.commit_wanted()
    }

    /// Commits the held transaction, if any, without a sync: its batches are in the log.
    ///
    /// # Errors
    /// The B-tree's commit failed. Its batches stay in the log and reads keep waiting; the
    /// caller answers what the log's syncs cover and reopens the store ([`Store::reopen`]),
    /// which applies the log again.
    pub(crate) fn commit_held(&self) -> Result<(), StoreError> {
        // As every write: under the log's lock, so no write interleaves with this commit.
        let _wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(held) = self.take_held() else {
            return Ok(());
        };
        self.commit_after_log(held.txn)
            .map_err(|error| self.storage("committing")(error.into()))
    }
}
