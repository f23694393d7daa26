//! The store's write-ahead log (config `write_ahead_log`): a redo log file beside the store
//! (`<store>-wal`) that makes a commit durable with one appended record and one fdatasync,
//! while the B-tree commits without a sync of its own and is made durable by checkpoints.
//! Owns attaching the log at open (reading back what a crash left and applying it), the
//! checkpoint, and the state the commit path (`commit.rs`) keeps between commits.
//!
//! Every logged transaction also writes its own record number under [`META_WAL_APPLIED`], so
//! the B-tree says which records it holds whatever state a crash or a close left it in: a
//! checkpoint's, or a later one that redb made durable when its handle closed.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use redb::Durability;

use super::log::{LogError, LogFile, LogRecord, RedoLog};
use super::tables::META;
use super::{Store, StoreError, changes, create, handle};

mod sync;
pub(crate) use sync::LogSync;

/// META key holding the number of the last log record the B-tree holds (u64 LE).
pub(super) const META_WAL_APPLIED: &str = "wal_applied";
/// META key holding the salt of the store's log (u64 LE): a log with another salt is some
/// other store's, and is never applied to this one.
const META_WAL_SALT: &str = "wal_salt";
/// META key present while the store's log exists and may hold acknowledged changes the B-tree
/// lacks: set durably once the log is created, removed by the checkpoint of a clean close
/// (which then deletes the log) or when the log is switched off. A store with this mark and
/// no log lost its log after a crash, and is refused rather than read without it.
const META_WAL_LIVE: &str = "wal_live";
/// A checkpoint is taken once the log holds this many bytes, or this long after the last one,
/// whichever comes first. The writer waits for a checkpoint (a synced redb commit of every page
/// changed since the last), so its size bounds that wait: about 3 ms for 1 MiB of log and 10 ms
/// for 4 MiB on this project's machine (`PERFORMANCE.md`).
pub(super) const CHECKPOINT_BYTES: u64 = 2 << 20;
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Where a log's bytes are: its file, or a test's simulated disk.
pub(super) type LogStorage = Box<dyn LogFile + Send>;

/// The open log and what the commit path keeps between commits.
pub(super) struct Wal {
    pub(super) log: RedoLog<LogStorage>,
    pub(super) path: PathBuf,
    /// Changes of commits made without durability since the last logged one: they go into the
    /// next record, ahead of its own changes.
    pub(super) unlogged: Vec<u8>,
    last_checkpoint: Instant,
    checkpoint_bytes: u64,
    /// A handle to sync the log from the writer's sync thread (`None`: synced inline).
    pub(super) syncer: Option<Arc<dyn LogFile + Send + Sync>>,
    /// The records of commits made visible ahead of their sync, oldest first: their number for
    /// the reads (`visible.rs`), where each starts and its record number.
    unsynced: VecDeque<Unsynced>,
}

/// A record appended by a commit made visible before the log's sync.
#[derive(Clone, Copy, Debug)]
struct Unsynced {
    seq: u64,
    start: u64,
    number: u64,
}

impl Wal {
    fn new(log: RedoLog<LogStorage>, path: PathBuf, checkpoint_bytes: u64) -> Self {
        Self {
            checkpoint_bytes,
            syncer: log.sync_handle(),
            log,
            path,
            unlogged: Vec::new(),
            last_checkpoint: Instant::now(),
            unsynced: VecDeque::new(),
        }
    }

    /// The record just appended belongs to the commit numbered `seq`, visible before its sync.
    pub(super) fn unsynced(&mut self, seq: u64) {
        if let Some((start, number)) = self.log.last_record() {
            self.unsynced.push_back(Unsynced { seq, start, number });
        }
    }

    /// A sync of the log covering the commits numbered up to `seq`, and those numbered up to
    /// `committed` when it starts (the store's count of commits made visible ahead of their
    /// sync), for the writer's sync thread; `None` when the log's storage has no handle to
    /// sync it from another thread.
    pub(super) fn sync_for(&self, seq: u64, committed: Arc<AtomicU64>) -> Option<LogSync> {
        Some(LogSync::new(
            Arc::clone(self.syncer.as_ref()?),
            seq,
            committed,
        ))
    }

    /// A sync of the log returned: every record appended before it is durable.
    pub(super) fn synced_all(&mut self) {
        self.unsynced.clear();
    }

    /// A durable transaction whose changes (with the unlogged ones before it) take this many
    /// bytes commits straight to the B-tree with a sync of its own (`commit.rs`).
    pub(super) fn direct_commit_bytes(&self) -> usize {
        usize::try_from(self.checkpoint_bytes / 8).unwrap_or(usize::MAX)
    }

    /// After a synced B-tree commit: the log holds nothing the B-tree lacks.
    pub(super) fn checkpointed(&mut self) {
        self.unsynced.clear();
        self.log.rewind();
        self.unlogged.clear();
        self.last_checkpoint = Instant::now();
    }

    pub(super) fn checkpoint_due(&self) -> bool {
        self.log.end() >= self.checkpoint_bytes
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
    }

    /// The store error for a log error, naming the log file.
    pub(super) fn error(&self, error: LogError) -> StoreError {
        log_error(&self.path, error)
    }
}

/// The log file of the store at `store`: its name with `-wal` appended.
pub(crate) fn wal_path(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push("-wal");
    store.with_file_name(name)
}

pub(super) fn log_error(path: &Path, error: LogError) -> StoreError {
    match error {
        LogError::Io { source, .. } if super::is_storage_full(&source) => StoreError::full(path),
        LogError::Io { action, source } => StoreError::Io {
            path: path.to_path_buf(),
            detail: format!("redo log: {action} failed"),
            source,
        },
        LogError::NotOwn => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "this redo log is not the store's own (the store does not name it): the \
                     store file was replaced or restored while an older log stayed beside it. \
                     fq never applies one store's log to another; move the log away once you \
                     know its store is gone"
                .into(),
        },
        other => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// The error for a store whose log is live but missing (`META_WAL_LIVE`).
fn missing_log(path: &Path) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: "this redo log is missing, but its store was using it when it last stopped \
                 (a crash, not a clean close): changes acknowledged since the last checkpoint \
                 may be in it alone. Put the log back beside the store (from where it was moved \
                 or copied); if it is lost for good, `fq forget-log` opens the store without it, \
                 losing those changes"
            .into(),
    }
}

impl Store {
    /// Reads back the log beside the store, if there is one, and applies the records a crash
    /// left (the log keeps them until the next checkpoint). Then keeps the log open when
    /// `enabled`, creating it if need be, or removes it when the store no longer uses one.
    pub(super) fn attach_wal(&self, enabled: bool) -> Result<(), StoreError> {
        let path = wal_path(&self.path);
        let mut slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = None;
        let backend = self.options.log_backend.as_ref().map(|b| b.handle());
        if self.custom_backend && backend.is_none() {
            return Ok(());
        }
        let (applied, own_salt, live) = self.wal_marks()?;
        let existing: Option<LogStorage> = match backend {
            Some(backend) => {
                // A simulated disk has no atomic rename: a log cut short of its header was
                // being created when the power went, and holds nothing yet.
                let used = backend.len().map_err(|source| StoreError::Io {
                    path: path.clone(),
                    detail: "cannot read the redo log's length".into(),
                    source,
                })? >= super::log::HEADER_BYTES;
                used.then(|| Box::new(backend) as LogStorage)
            }
            None => match open_log_file(&path) {
                Ok(file) => Some(Box::new(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(StoreError::Io {
                        path,
                        detail: "cannot open the redo log".into(),
                        source,
                    });
                }
            },
        };
        if existing.is_none() && live {
            if !self.options.forget_missing_log {
                return Err(missing_log(&path));
            }
            tracing::warn!(log = %path.display(), "the store's redo log is missing; going on without the changes it held (forget-log)");
            self.forgot_log
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let log = match existing {
            Some(file) => {
                let (mut log, live) =
                    RedoLog::open_own(file, applied, own_salt).map_err(|e| log_error(&path, e))?;
                if live.is_empty() {
                    log.rewind();
                } else {
                    // Kept in the log, the records need no sync here: the next checkpoint
                    // makes them durable in the B-tree, and a crash before it applies them
                    // again. Without the log they must be durable before it is removed.
                    let durability = if enabled {
                        Durability::None
                    } else {
                        Durability::Immediate
                    };
                    self.apply_records(&path, &live, durability)?;
                    tracing::info!(
                        store = %self.path.display(),
                        records = live.len(),
                        "applied the redo log's records a crash left"
                    );
                }
                Some(log)
            }
            None => None,
        };
        if !enabled {
            // Removed before the log: a crash between the two leaves a log the next open reads
            // and removes again, never a mark without its log.
            if live {
                self.put_wal_meta(META_WAL_LIVE, None)?;
            }
            if log.is_some() && !self.custom_backend {
                drop(log);
                std::fs::remove_file(&path)
                    .and_then(|()| create::sync_folder(&path))
                    .map_err(|source| StoreError::Io {
                        path,
                        detail: "cannot remove the redo log the store no longer uses".into(),
                        source,
                    })?;
            }
            return Ok(());
        }
        let log = match log {
            Some(log) => log,
            None => {
                // The store names its log's salt before the log exists: a crash between the
                // two leaves a store whose log is missing (one is made), never a log that its
                // store does not name (which is refused).
                let salt = super::log::fresh_salt();
                self.put_wal_meta(META_WAL_SALT, Some(&salt.to_le_bytes()))?;
                match &self.options.log_backend {
                    Some(backend) => {
                        let storage: LogStorage = Box::new(backend.handle());
                        RedoLog::create(storage, salt, applied).map_err(|e| log_error(&path, e))?
                    }
                    None => create_log(&path, salt, applied)?,
                }
            }
        };
        // Marked once the log is there and synced (`RedoLog::create`), before any commit
        // can be acknowledged through it.
        if !live {
            self.put_wal_meta(META_WAL_LIVE, Some(&[1]))?;
        }
        *slot = Some(Wal::new(log, path, self.options.wal_checkpoint_bytes));
        Ok(())
    }

    /// True when this open went on without the store's missing log
    /// (`StoreOptions::forget_missing_log`).
    pub(crate) fn forgot_missing_log(&self) -> bool {
        self.forgot_log.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// At a clean close: a last checkpoint, after which the log holds nothing the B-tree lacks,
    /// so its file is removed and a stopped store is one file (copied, moved or restored
    /// alone). A failed checkpoint keeps the log for the next open to apply.
    pub(super) fn close_wal(&self) {
        let mut slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut wal) = slot.take() else {
            return;
        };
        if self.wal_diverged.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // A log in a custom backend (a test's simulated disk) is not removed, so stays live.
        if let Err(error) = self.checkpoint_as(&mut wal, !self.custom_backend) {
            tracing::warn!(%error, "the last checkpoint failed; the next open applies the redo log");
            return;
        }
        if self.custom_backend {
            return;
        }
        let path = wal.path.clone();
        drop(wal);
        // A crash between the removal and the folder's sync leaves the log, which then holds
        // nothing past the checkpoint: harmless either way.
        if let Err(error) = std::fs::remove_file(&path).and_then(|()| create::sync_folder(&path)) {
            tracing::warn!(%error, log = %path.display(), "cannot remove the redo log after a clean close");
        }
    }

    /// True when the log beside this (read-only) store holds records the store does not:
    /// reading it as it is would show an older state than the last engine acknowledged.
    pub(super) fn wal_has_unapplied_records(&self) -> Result<bool, StoreError> {
        let path = wal_path(&self.path);
        let file = match File::open(&path) {
            Ok(file) => file,
            // A live mark without its log: the owner's open decides (it refuses the store,
            // unless an engine closing meanwhile removed both).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(self.wal_marks()?.2),
            Err(source) => {
                return Err(StoreError::Io {
                    path,
                    detail: "cannot open the redo log".into(),
                    source,
                });
            }
        };
        let (applied, own_salt, _) = self.wal_marks()?;
        let (_, live) =
            RedoLog::open_own(file, applied, own_salt).map_err(|e| log_error(&path, e))?;
        Ok(!live.is_empty())
    }

    /// The number of the last log record the B-tree holds (0 when none), the salt of the log
    /// the store uses (`None` before its first), and whether the log is live (`META_WAL_LIVE`).
    fn wal_marks(&self) -> Result<(u64, Option<u64>, bool), StoreError> {
        let err = self.storage("reading the redo log's marks");
        let txn = self.begin_read("reading the redo log's marks")?;
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let mut marks = [0u64; 2];
        let mut found = [false; 2];
        for (at, key) in [META_WAL_APPLIED, META_WAL_SALT].into_iter().enumerate() {
            let Some(value) = meta.get(key).map_err(|e| err(e.into()))? else {
                continue;
            };
            marks[at] = <[u8; 8]>::try_from(value.value())
                .map(u64::from_le_bytes)
                .map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("the store's {key} entry is malformed"),
                })?;
            found[at] = true;
        }
        let live = meta
            .get(META_WAL_LIVE)
            .map_err(|e| err(e.into()))?
            .is_some();
        Ok((marks[0], found[1].then_some(marks[1]), live))
    }

    /// Sets (`Some`) or removes (`None`) META's `key` in a durable commit of its own: the
    /// log's salt before the log exists, its live mark once it does.
    fn put_wal_meta(&self, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let err = self.storage("marking the redo log");
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            match value {
                Some(value) => meta.insert(key, value).map(drop),
                None => meta.remove(key).map(drop),
            }
            .map_err(|e| err(e.into()))?;
        }
        self.commit_visible(txn).map_err(|e| err(e.into()))?;
        Ok(())
    }

    /// Applies `records` in one commit of `durability`.
    fn apply_records(
        &self,
        log_path: &Path,
        records: &[LogRecord],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let err = self.storage("applying the redo log");
        let mut txn = self.begin_write()?;
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        let payloads = records.iter().map(|record| record.payload.as_slice());
        changes::replay_all(&txn, payloads).map_err(|(index, e)| match e {
            changes::ReplayError::Storage(e) => err(e),
            malformed @ changes::ReplayError::Malformed { .. } => StoreError::Corrupt {
                path: log_path.to_path_buf(),
                detail: format!(
                    "redo log record {}: {malformed}",
                    records.get(index).map_or(0, |record| record.number)
                ),
            },
        })?;
        self.commit_visible(txn).map_err(|e| err(e.into()))
    }

    /// Whether the log holds enough, or has waited long enough, that the writer must
    /// checkpoint before its next batch (`Store::checkpoint_when`).
    pub(crate) fn checkpoint_due(&self) -> bool {
        let slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_some_and(Wal::checkpoint_due)
    }

    /// Checkpoints once it is due, or, with `idle` (the writer has nothing to do), once the
    /// log holds an eighth of what makes it due: the sync then costs no caller a wait, and the
    /// checkpoint a busy writer must take later is smaller. Returns whether it checkpointed.
    ///
    /// The writer calls it between batches with no sync of the log running: a checkpoint
    /// makes every commit durable, and a sync failing behind it could otherwise go unseen
    /// (`Store::log_sync_failed`).
    ///
    /// # Errors
    /// The checkpoint's commit failed: as after any failed commit, the store must be reopened.
    pub(crate) fn checkpoint_when(&self, idle: bool) -> Result<bool, StoreError> {
        let mut slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(wal) = slot.as_mut() else {
            return Ok(false);
        };
        let logged = wal.log.end().saturating_sub(super::log::HEADER_BYTES);
        let wanted = wal.checkpoint_due() || (idle && logged >= wal.checkpoint_bytes / 8);
        if !wanted || self.wal_diverged.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        self.checkpoint(wal)?;
        Ok(true)
    }

    /// Makes everything committed so far durable in the B-tree, so the log can start over.
    pub(super) fn checkpoint(&self, wal: &mut Wal) -> Result<(), StoreError> {
        self.checkpoint_as(wal, false)
    }

    /// As [`Store::checkpoint`]; `closing` also removes the log's live mark in the same
    /// commit, since a clean close then deletes the log.
    fn checkpoint_as(&self, wal: &mut Wal, closing: bool) -> Result<(), StoreError> {
        let err = self.storage("checkpointing");
        let mut txn = self.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err(e.into()))?;
        if closing {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.remove(META_WAL_LIVE).map_err(|e| err(e.into()))?;
        }
        let started = Instant::now();
        self.commit_visible(txn).map_err(|e| err(e.into()))?;
        tracing::debug!(took = ?started.elapsed(), log_bytes = wal.log.end(), "checkpoint");
        wal.checkpointed();
        self.visible.all_durable();
        Ok(())
    }

    /// A sync of the log covering every commit made visible so far, for the writer's sync
    /// thread; `None` when none waits for one (or the log is synced inline).
    pub(crate) fn log_sync(&self) -> Option<LogSync> {
        let slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let wal = slot.as_ref()?;
        wal.unsynced.back()?;
        wal.sync_for(self.visible.committed(), self.visible.committed_counter())
    }

    /// The highest commit number known durable: commits numbered up to it may be answered.
    pub(crate) fn durable_seq(&self) -> u64 {
        self.visible.durable()
    }

    /// The sync started for `seq` returned: the commits numbered up to it are durable, and
    /// reads may see them.
    pub(crate) fn log_synced(&self, seq: u64) {
        let mut slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(wal) = slot.as_mut() {
            while wal.unsynced.front().is_some_and(|u| u.seq <= seq) {
                wal.unsynced.pop_front();
            }
        }
        drop(slot);
        self.visible.mark_durable(seq);
    }

    /// The sync started for `seq` failed. The commits it covered, and every one after, were
    /// made visible but are not durable: the B-tree's storage is fenced (closing it must not
    /// make them durable), their records are taken back from the log, and the store must be
    /// reopened, which rolls the B-tree back to its last durable commit and applies the log's
    /// synced records to it. Returns the error to answer those commits with; `None` when a
    /// checkpoint had made them durable meanwhile.
    pub(crate) fn log_sync_failed(&self, seq: u64, error: std::io::Error) -> Option<StoreError> {
        let mut slot = self.wal.lock().unwrap_or_else(PoisonError::into_inner);
        let wal = slot.as_mut()?;
        // Only while nothing was appended since that checkpoint: a record appended before the
        // failed sync ran may have lost its pages with it, and no later sync brings them back.
        if self.visible.durable() >= seq
            && wal.unsynced.is_empty()
            && wal.log.end() == super::log::HEADER_BYTES
        {
            tracing::warn!(%error, "a sync of the redo log failed after a checkpoint covered it");
            return None;
        }
        self.fence.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(first) = wal.unsynced.front().copied()
            && let Err(retract) = wal.log.retract_to(first.start, first.number)
        {
            tracing::error!(error = %retract, "records whose sync failed could not be taken back from the redo log");
            self.wal_diverged
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        wal.unsynced.clear();
        Some(wal.error(LogError::Io {
            action: "syncing",
            source: error,
        }))
    }
}

/// Opens an existing log for reading and writing.
fn open_log_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Creates the log at `path` atomically (built under a temporary name, then renamed and the
/// folder synced): a crash leaves no log or a complete empty one.
fn create_log(path: &Path, salt: u64, applied: u64) -> Result<RedoLog<LogStorage>, StoreError> {
    let io_error = |detail: &str, source: std::io::Error| StoreError::Io {
        path: path.to_path_buf(),
        detail: detail.to_owned(),
        source,
    };
    let temp = create::temporary_name(path);
    let built = handle::create_private(&temp)
        .map_err(|e| io_error("cannot create the redo log", e))
        .and_then(|file| {
            let storage: LogStorage = Box::new(file);
            RedoLog::create(storage, salt, applied).map_err(|e| log_error(path, e))
        });
    let log = built.and_then(|log| {
        std::fs::rename(&temp, path)
            .and_then(|()| create::sync_folder(path))
            .map_err(|e| io_error("cannot move the new redo log into place", e))?;
        Ok(log)
    });
    if log.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    log
}

#[cfg(test)]
mod tests;
