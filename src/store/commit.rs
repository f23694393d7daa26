//! Write transactions and how each is made durable: by redb's own commit (an fsync of the
//! B-tree's pages), or, with the write-ahead log (`wal.rs`), by appending the transaction's
//! changes to the log and syncing that before the B-tree commits without a sync.
//!
//! The log is written first: a transaction the log did not take is dropped, so nothing of it
//! is visible or kept, exactly as when redb's own commit fails. A record the log took whose
//! B-tree commit then fails is taken back before the error is returned, except after a
//! [`Commit::SyncedHere`]: its record is durable, its callers may have been answered, and the
//! reopen that follows the failure applies the record again from the log. The same goes for the
//! batches a held transaction carried before the one whose commit failed (`held.rs`): only the
//! failing batch's record is taken back.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use redb::Durability;

use super::changes::{ChangeList, TableTag};
use super::tables::{COUNTS, FINISHED, LEASES, META, TASKS, WAITING};
use super::wal::{LogSync, META_WAL_APPLIED};
use super::write_tables::logged_table;
use super::{Store, StoreError, WriteTables};

/// How a write transaction is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Durable before the write returns.
    Durable,
    /// With the log, durable once a later sync of the log returns (`Store::write_as`).
    Deferred,
    /// As `Deferred`, and the B-tree's transaction may stay open for the next writes instead
    /// of committing (`held.rs`, `StoreOptions::hold_batches`); reads on other threads wait
    /// until it commits. For a writer with more batches coming: an idle one would rather have
    /// the commit overlap the log's sync.
    Held,
    /// Visible at once, durable with the next durable commit; may be lost in a crash.
    Lazy,
    /// With the log: the record is synced on this thread, and the B-tree's commit is left to
    /// the caller ([`PendingCommit`]), which may answer before it, since the change is durable
    /// once the record is. Without the log, as `Durable`.
    SyncedHere,
}

/// The B-tree's commit of a transaction whose record the log has synced
/// ([`Commit::SyncedHere`]). Until it commits, a read on another thread waits before it takes
/// its snapshot (`visible.rs`), so a caller answered before the commit reads its own write.
#[must_use = "the transaction is durable in the log but not in the B-tree until committed"]
pub(crate) struct PendingCommit<'s> {
    store: &'s Store,
    txn: Option<redb::WriteTransaction>,
}

/// What a write transaction returned, and what is left of its commit.
struct Written<'s, R> {
    result: R,
    /// The commit's number, when it became visible before its sync (`Commit::Deferred`).
    number: Option<u64>,
    /// The B-tree's commit, left to the caller (`Commit::SyncedHere`).
    pending: Option<PendingCommit<'s>>,
}

impl<R> Written<'_, R> {
    /// A transaction committed whole, durable or lazy, without a number.
    fn done(result: R) -> Self {
        Self {
            result,
            number: None,
            pending: None,
        }
    }
}

impl PendingCommit<'_> {
    /// Commits the B-tree, and checkpoints the log when it is due.
    ///
    /// # Errors
    /// The B-tree's commit failed: the change stays durable in the log. Reads keep waiting until
    /// the caller reopens the store ([`Store::reopen`]), which applies the log again, so none of
    /// them sees the B-tree without a change already acknowledged.
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        let store = self.store;
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        if let Err(error) = store.commit_after_log(txn) {
            return Err(store.storage("committing")(error.into()));
        }
        let mut wal = store.wal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(wal) = wal.as_mut() {
            store.checkpoint_if_due(wal);
        }
        Ok(())
    }
}

impl Drop for PendingCommit<'_> {
    fn drop(&mut self) {
        // Only an unwinding writer drops one uncommitted: reads must not wait for it forever.
        // The B-tree then lacks the change until the next open applies the log.
        if self.txn.take().is_some() {
            tracing::error!("a synced transaction was dropped before the B-tree committed it");
            self.store.visible.commit_done();
        }
    }
}

impl Store {
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
        let mode = if durable {
            Commit::Durable
        } else {
            Commit::Lazy
        };
        self.write_as(mode, None, apply).map(|(result, _)| result)
    }

    /// Runs `apply` in one write transaction committed as `mode` says. With
    /// [`Commit::Deferred`] and the log on, the result comes with the commit's number, and the
    /// commit is durable only once a sync of the log started after it ([`Store::log_sync`])
    /// has returned: it is visible to this thread at once, to other readers only then
    /// (`visible.rs`). Without a number the commit is as `Commit::Durable`'s.
    ///
    /// `start_sync`, when given, is offered that sync as soon as the record is in the log,
    /// before the B-tree commits, so that the disk works while the B-tree commits; if it drops
    /// the job instead, the caller's next sync covers the commit.
    pub(crate) fn write_as<R>(
        &self,
        mode: Commit,
        start_sync: Option<&dyn Fn(LogSync)>,
        apply: impl FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError>,
    ) -> Result<(R, Option<u64>), StoreError> {
        let written = self.write_in(mode, start_sync, apply)?;
        if let Some(pending) = written.pending {
            pending.commit()?;
        }
        Ok((written.result, written.number))
    }

    /// Runs `apply` in one write transaction committed as [`Commit::SyncedHere`]: once this
    /// returns, the change is durable; with a [`PendingCommit`] the B-tree has yet to commit it,
    /// which the caller does once it has answered.
    pub(crate) fn write_synced_here<R>(
        &self,
        apply: impl FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError>,
    ) -> Result<(R, Option<PendingCommit<'_>>), StoreError> {
        let written = self.write_in(Commit::SyncedHere, None, apply)?;
        Ok((written.result, written.pending))
    }

    /// Whether the writer may sync a lone batch itself (`StoreOptions::sync_lone_batches_here`).
    pub(crate) fn syncs_lone_batches_here(&self) -> bool {
        self.options.sync_lone_batches_here
    }

    fn write_in<R>(
        &self,
        mode: Commit,
        start_sync: Option<&dyn Fn(LogSync)>,
        apply: impl FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError>,
    ) -> Result<Written<'_, R>, StoreError> {
        let durable = mode != Commit::Lazy;
        let err = self.storage("writing");
        let mut wal = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        if self.wal_diverged.load(Ordering::SeqCst) {
            return Err(StoreError::Io {
                path: super::wal_path(&self.path),
                detail: "a logged commit failed and could not be taken back from the redo log; \
                         reopen the engine"
                    .into(),
                source: std::io::Error::other("redo log diverged"),
            });
        }
        let (mut txn, held_batches) = match self.take_held() {
            Some(held) => (held.txn, held.batches),
            None => (self.begin_write()?, 0),
        };
        // With the log, the B-tree's commit never syncs: the log's record is what lasts.
        let durability = if durable && wal.is_none() {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        // A large transaction skips the log: its pages would be written twice (the log, then
        // the checkpoint), so the B-tree commit syncs itself and counts as a checkpoint.
        let (record_number, direct_from) = match wal.as_ref().filter(|_| durable) {
            Some(wal) => (
                Some(wal.log.next_number()),
                wal.direct_commit_bytes().saturating_sub(wal.unlogged.len()),
            ),
            None => (None, usize::MAX),
        };
        let changes = ChangeList::default();
        let (result, direct) = {
            let on = (&txn, &changes);
            let path = self.path.as_path();
            let mut tables = WriteTables {
                path,
                counts: logged_table(on, (COUNTS, TableTag::Counts), path, "writing")?,
                count_deltas: std::collections::HashMap::new(),
                lease_removals: std::collections::BTreeSet::new(),
                tasks: logged_table(on, (TASKS, TableTag::Tasks), path, "writing")?,
                waiting: logged_table(on, (WAITING, TableTag::Waiting), path, "writing")?,
                leases: logged_table(on, (LEASES, TableTag::Leases), path, "writing")?,
                finished: logged_table(on, (FINISHED, TableTag::Finished), path, "writing")?,
                meta: logged_table(on, (META, TableTag::Meta), path, "writing")?,
                txn: &txn,
                changes: &changes,
                unique: None,
                reports: None,
                schedules: None,
                attempts: None,
                attempt_history: self.options.attempt_history,
            };
            let result = apply(&mut tables)?;
            tables.flush_lease_removals()?;
            tables.flush_counts()?;
            // Decided once, before the mark: the mark's own bytes must not tip a transaction
            // that carries it over the line, or it would skip the log with its number taken.
            let direct = changes.len() >= direct_from;
            if let Some(number) = record_number.filter(|_| !direct) {
                tables.set_meta(META_WAL_APPLIED, &number.to_le_bytes())?;
            }
            (result, direct)
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
        let commit_error = |e: redb::CommitError| self.storage("committing")(e.into());
        let Some(wal) = wal.as_mut() else {
            self.commit_visible(txn).map_err(commit_error)?;
            if durable {
                self.visible.all_durable();
            }
            return Ok(Written::done(result));
        };
        if !durable {
            self.commit_visible(txn).map_err(commit_error)?;
            wal.unlogged.extend_from_slice(&changes.take());
            return Ok(Written::done(result));
        }
        if direct {
            txn.set_durability(Durability::Immediate)
                .map_err(|e| err(e.into()))?;
            self.commit_visible(txn).map_err(commit_error)?;
            wal.checkpointed();
            self.visible.all_durable();
            return Ok(Written::done(result));
        }
        let deferred = matches!(mode, Commit::Deferred | Commit::Held) && wal.syncer.is_some();
        let hold = deferred && mode == Commit::Held && self.may_hold(held_batches + 1);
        let mut payload = std::mem::take(&mut wal.unlogged);
        let unlogged_len = payload.len();
        payload.extend_from_slice(&changes.take());
        // A record whose sync or commit failed must not come back at the next open (healing
        // reopens the store, and the engine's memory never saw it): it is taken back, or, if
        // even that fails, the store takes no more writes until the engine is reopened.
        let take_back = |wal: &mut super::wal::Wal| {
            if let Err(retract) = wal.log.retract_last() {
                tracing::error!(error = %retract, "a failed commit's record could not be taken back from the redo log");
                self.wal_diverged.store(true, Ordering::SeqCst);
            }
        };
        let mut number = None;
        let mut pending = None;
        let failed = match wal.log.append(&payload) {
            Err(error) => Some(wal.error(error)),
            // Numbered before it becomes visible: a read that sees it waits for its sync.
            Ok(_) if deferred => {
                let seq = self.visible.number_next();
                let job = wal.sync_for(seq, self.visible.committed_counter());
                if let (Some(start), Some(job)) = (start_sync, job) {
                    start(job);
                }
                let committed = if hold {
                    self.hold(txn, held_batches + 1);
                    Ok(())
                } else {
                    self.commit_after_log(txn)
                };
                match committed {
                    // The batches a held transaction carried before this one stay in the
                    // log: the caller answers them and reopens the store, which applies them.
                    Err(error) => {
                        take_back(wal);
                        Some(commit_error(error))
                    }
                    Ok(()) => {
                        wal.unsynced(seq);
                        number = Some(seq);
                        None
                    }
                }
            }
            Ok(_) => match wal.log.sync() {
                Err(error) => {
                    take_back(wal);
                    Some(wal.error(error))
                }
                Ok(()) if mode == Commit::SyncedHere => {
                    // Closed before anyone is answered: a read that starts after an answer
                    // must see the B-tree with the change.
                    self.visible.hold_for_commit();
                    pending = Some(PendingCommit {
                        store: self,
                        txn: Some(txn),
                    });
                    None
                }
                Ok(()) => match self.commit_after_log(txn) {
                    Ok(()) => None,
                    Err(error) => {
                        take_back(wal);
                        Some(commit_error(error))
                    }
                },
            },
        };
        if let Some(error) = failed {
            payload.truncate(unlogged_len);
            wal.unlogged = payload;
            return Err(error);
        }
        if number.is_none() {
            // Synced here: the writer never starts an inline sync while one of its own runs
            // elsewhere, so this sync covers every record before it.
            wal.synced_all();
            self.visible.all_durable();
            // A commit whose sync runs elsewhere leaves its checkpoint to the writer, once
            // that sync has returned (`Store::checkpoint_when`); a pending one, to its commit.
            if pending.is_none() {
                self.checkpoint_if_due(wal);
            }
        }
        Ok(Written {
            result,
            number,
            pending,
        })
    }

    /// Checkpoints the log when it has grown to the checkpoint size, after a commit that is
    /// durable in it: a failure is left to the next write, which meets the same trouble.
    fn checkpoint_if_due(&self, wal: &mut super::wal::Wal) {
        if wal.checkpoint_due()
            && let Err(error) = self.checkpoint(wal)
        {
            tracing::warn!(%error, "checkpoint failed");
        }
    }

    /// Commits the B-tree after the log took the transaction's record. In unit tests it fails
    /// instead while `fail_commit_after_log` is set: the one failure that leaves a record in
    /// the log to take back.
    pub(super) fn commit_after_log(
        &self,
        txn: redb::WriteTransaction,
    ) -> Result<(), redb::CommitError> {
        #[cfg(test)]
        if self.fail_commit_after_log.load(Ordering::SeqCst) {
            drop(txn);
            return Err(redb::CommitError::Storage(redb::StorageError::Io(
                std::io::Error::other("injected B-tree commit failure"),
            )));
        }
        self.commit_visible(txn)
    }

    /// Every commit of the store goes through here: whatever it commits may carry batches
    /// already answered (a held transaction, `Store::begin_write`), so the reads waiting at
    /// the gate for them go on once it has committed, and only then.
    pub(super) fn commit_visible(
        &self,
        txn: redb::WriteTransaction,
    ) -> Result<(), redb::CommitError> {
        txn.commit()?;
        self.visible.commit_done_if_pending();
        Ok(())
    }
}
