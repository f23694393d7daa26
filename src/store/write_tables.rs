//! The tables of one write transaction, as typed operations that keep the indexes and the
//! per-queue counts in step with the task records.

use super::changes::{ChangeList, LoggedTable, TableTag};
use super::keys::UniqueHolder;
use super::tables::UNIQUE;
use super::*;
use crate::task::unique::holds_key;

/// Up to this many running tasks, the leases a transaction released are removed in one pass
/// over the leases table (about five leaves of 20-byte entries); a larger table has leaves
/// redb removes from in place, and a pass over it would cost more than it saves.
const LEASES_SCANNED_AT_MOST: u64 = 1024;

/// The open tables of one write transaction.
pub(crate) struct WriteTables<'txn> {
    pub(super) path: &'txn Path,
    pub(super) counts: LoggedTable<'txn, &'static [u8], u64>,
    /// Count changes of this transaction, written once per (queue, status) at its end.
    pub(super) count_deltas: std::collections::HashMap<(String, TaskStatus), i64>,
    pub(super) tasks: LoggedTable<'txn, u128, &'static [u8]>,
    pub(super) waiting: LoggedTable<'txn, &'static [u8], u128>,
    pub(super) leases: LoggedTable<'txn, u128, u32>,
    /// Leases released in this transaction, removed together at its end
    /// ([`WriteTables::flush_lease_removals`]): the leases table (one entry per running task) is
    /// usually one leaf too small for redb to remove from in place, so each removal alone would
    /// rebuild it. A set, so that a claim (which must keep a lease released earlier in the
    /// transaction) finds its id without a pass over every release.
    pub(super) lease_removals: std::collections::BTreeSet<u128>,
    pub(super) finished: LoggedTable<'txn, &'static [u8], ()>,
    pub(super) meta: LoggedTable<'txn, &'static str, &'static [u8]>,
    /// The transaction, for the tables opened only when used ([`lazy_table`]): a batch of
    /// plain tasks never opens UNIQUE, REPORTS or SCHEDULES, so it pays nothing for them.
    pub(super) txn: &'txn redb::WriteTransaction,
    /// Every change made through the tables above, for the redo log.
    pub(super) changes: &'txn ChangeList,
    pub(super) unique: Option<LoggedTable<'txn, &'static [u8], &'static [u8]>>,
    pub(super) reports: Option<LoggedTable<'txn, (u128, u32), &'static [u8]>>,
    pub(super) schedules: Option<LoggedTable<'txn, &'static str, &'static [u8]>>,
    /// Opened at the first settlement of the transaction (`attempts.rs`).
    pub(super) attempts: Option<LoggedTable<'txn, u128, &'static [u8]>>,
    /// How many attempts each task's history keeps.
    pub(super) attempt_history: usize,
}

/// The table `definition` of `txn`, opened the first time it is asked for and kept in `slot`
/// for the rest of the transaction.
pub(super) fn lazy_table<'s, 'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<LoggedTable<'txn, K, V>>,
    (txn, changes): (&'txn redb::WriteTransaction, &'txn ChangeList),
    (definition, tag): (redb::TableDefinition<'_, K, V>, TableTag),
    path: &Path,
    what: &'static str,
) -> Result<&'s mut LoggedTable<'txn, K, V>, StoreError> {
    let table = match slot.take() {
        Some(table) => table,
        None => logged_table((txn, changes), (definition, tag), path, what)?,
    };
    Ok(slot.insert(table))
}

/// The table `definition` of `txn`, its changes recorded in `changes` as `tag`.
pub(super) fn logged_table<'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    (txn, changes): (&'txn redb::WriteTransaction, &'txn ChangeList),
    (definition, tag): (redb::TableDefinition<'_, K, V>, TableTag),
    path: &Path,
    what: &'static str,
) -> Result<LoggedTable<'txn, K, V>, StoreError> {
    let table = txn
        .open_table(definition)
        .map_err(|e| map_storage_error(path, what, e.into()))?;
    Ok(LoggedTable::new(table, tag, changes))
}

impl<'txn> WriteTables<'txn> {
    fn err(&self, action: &'static str) -> impl Fn(redb::StorageError) -> StoreError + '_ {
        move |e| map_storage_error(self.path, action, e.into())
    }

    pub(super) fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta
            .insert(key, value)
            .map_err(storage(self.path, "writing meta"))?;
        Ok(())
    }

    pub(super) fn get_meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let value = self
            .meta
            .get(key)
            .map_err(storage(self.path, "reading meta"))?;
        Ok(value.and_then(|v| std::str::from_utf8(v.value()).ok().map(str::to_owned)))
    }

    /// Reads one task inside the transaction.
    pub(crate) fn get_task(&self, id: TaskId) -> Result<Option<StoredTask>, StoreError> {
        let bytes = self
            .tasks
            .get(id.as_u128())
            .map_err(self.err("reading a task"))?;
        bytes
            .map(|guard| codec::decode_task(id, guard.value()))
            .transpose()
    }

    fn count(&mut self, queue: &str, status: TaskStatus, delta: i64) {
        if let Some(entry) = self.count_deltas.get_mut(&(queue.to_owned(), status)) {
            *entry += delta;
        } else {
            self.count_deltas.insert((queue.to_owned(), status), delta);
        }
    }

    /// The number of `queue`'s tasks in `status` at this point of the transaction (the counts
    /// table plus this transaction's changes so far).
    pub(crate) fn count_now(&self, queue: &str, status: TaskStatus) -> Result<u64, StoreError> {
        let key = keys::count_key(queue, status);
        let stored = self
            .counts
            .get(key.as_slice())
            .map_err(self.err("reading a count"))?
            .map_or(0, |v| v.value());
        let delta = self
            .count_deltas
            .get(&(queue.to_owned(), status))
            .copied()
            .unwrap_or(0);
        Ok(stored.saturating_add_signed(delta))
    }

    pub(super) fn flush_counts(&mut self) -> Result<(), StoreError> {
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
    ///
    /// # Errors
    /// [`StoreError::IdClash`] when a new task's id is already stored: the transaction holds
    /// the overwrite and must not commit.
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
        if task.unique.is_some() {
            self.follow_unique(id, task)?;
        }
        let bytes = codec::encode(task);
        let replaced = self
            .tasks
            .insert(id.as_u128(), bytes.as_slice())
            .map_err(storage(self.path, "writing a task"))?;
        if replaced && previous.is_none() {
            return Err(StoreError::IdClash { id });
        }
        Ok(())
    }

    /// Removes a record that does not decode, so a new one may take its id.
    pub(crate) fn remove_corrupt_record(&mut self, id: TaskId) -> Done {
        self.tasks
            .remove(id.as_u128())
            .map(drop)
            .map_err(storage(self.path, "removing a corrupt task record"))
    }

    fn unique_table(
        &mut self,
    ) -> Result<&mut LoggedTable<'txn, &'static [u8], &'static [u8]>, StoreError> {
        lazy_table(
            &mut self.unique,
            (self.txn, self.changes),
            (UNIQUE, TableTag::Unique),
            self.path,
            "opening the unique keys",
        )
    }

    fn unique_entry(&mut self, key: &str) -> Result<Option<UniqueHolder>, StoreError> {
        let path = self.path;
        let table = self.unique_table()?;
        let value = table
            .get(key.as_bytes())
            .map_err(|e| map_storage_error(path, "reading a unique key", e.into()))?;
        let Some(value) = value else {
            return Ok(None);
        };
        keys::parse_unique_value(value.value())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("malformed unique-key entry for {key:?}"),
            })
    }

    fn set_unique_entry(&mut self, key: &str, holder: UniqueHolder) -> Done {
        let path = self.path;
        let value = keys::unique_value(holder);
        self.unique_table()?
            .insert(key.as_bytes(), value.as_slice())
            .map(drop)
            .map_err(|e| map_storage_error(path, "writing a unique key", e.into()))
    }

    fn release_unique(&mut self, key: &str, id: TaskId) -> Done {
        if self
            .unique_entry(key)?
            .is_some_and(|holder| holder.id == id)
        {
            let path = self.path;
            self.unique_table()?
                .remove(key.as_bytes())
                .map(drop)
                .map_err(|e| map_storage_error(path, "freeing a unique key", e.into()))?;
        }
        Ok(())
    }

    /// The task holding unique key `key` at `now`, if one does: the check before queuing a
    /// task with that key, in the transaction that queues it.
    pub(crate) fn unique_holder(
        &mut self,
        key: &str,
        now: Millis,
    ) -> Result<Option<TaskId>, StoreError> {
        let Some(holder) = self.unique_entry(key)?.filter(|h| h.holds_at(now)) else {
            return Ok(None);
        };
        // A holder whose record is gone (deleted while it did not decode, so its key could
        // not be read and freed) holds nothing: the key goes to the task being queued.
        if !self.contains_task(holder.id)? {
            return Ok(None);
        }
        Ok(Some(holder.id))
    }

    /// Keeps the UNIQUE entry of a task with a key in step with its status: an unfinished
    /// task holds its key (taking it unless another unfinished task has it: an operator's
    /// retry of a finished task never takes a key from a live one); a finished one keeps it
    /// until the end of its `unique_for` period, if any, and frees it otherwise.
    fn follow_unique(&mut self, id: TaskId, task: &StoredTask) -> Done {
        let Some(spec) = &task.unique else {
            return Ok(());
        };
        let entry = self.unique_entry(&spec.key)?;
        if holds_key(task.status) {
            let held_by_other =
                entry.is_some_and(|holder| holder.id != id && holder.finished_until.is_none());
            let wanted = UniqueHolder {
                id,
                finished_until: None,
            };
            if !held_by_other && entry != Some(wanted) {
                self.set_unique_entry(&spec.key, wanted)?;
            }
            return Ok(());
        }
        if entry.is_none_or(|holder| holder.id != id) {
            return Ok(());
        }
        let finished_at = task.finished_at.unwrap_or(task.created_at);
        match spec.holds_until(task.created_at) {
            Some(until) if until > finished_at => {
                let wanted = UniqueHolder {
                    id,
                    finished_until: Some(until),
                };
                if entry != Some(wanted) {
                    self.set_unique_entry(&spec.key, wanted)?;
                }
                Ok(())
            }
            _ => self.release_unique(&spec.key, id),
        }
    }

    /// Deletes one task record (and frees the unique key it holds).
    pub(crate) fn delete_task(&mut self, id: TaskId, task: &StoredTask) -> Result<(), StoreError> {
        self.count(&task.queue, task.status, -1);
        if let Some(spec) = &task.unique {
            self.release_unique(&spec.key, id)?;
        }
        self.delete_attempts(id)?;
        self.tasks
            .remove(id.as_u128())
            .map_err(storage(self.path, "deleting a task"))?;
        Ok(())
    }

    /// Adds a task to the waiting index.
    pub(crate) fn insert_waiting(&mut self, queue: &str, order: ReadyOrder, id: TaskId) -> Done {
        let key = keys::waiting_key(queue, order);
        let insert = self.waiting.insert(key.as_slice(), id.as_u128());
        insert
            .map(drop)
            .map_err(storage(self.path, "indexing a waiting task"))
    }

    /// Removes a task from the waiting index.
    pub(crate) fn remove_waiting(&mut self, queue: &str, order: ReadyOrder) -> Done {
        let key = keys::waiting_key(queue, order);
        let remove = self.waiting.remove(key.as_slice());
        remove
            .map(drop)
            .map_err(storage(self.path, "unindexing a waiting task"))
    }

    /// Marks a task RUNNING at `attempt` in the running set.
    pub(crate) fn insert_lease(&mut self, id: TaskId, attempt: u32) -> Result<(), StoreError> {
        // Claimed again after its release in this transaction: the new lease stays.
        self.lease_removals.remove(&id.as_u128());
        self.leases
            .insert(id.as_u128(), attempt)
            .map_err(storage(self.path, "recording a lease"))?;
        Ok(())
    }

    /// Removes a task from the running set, at the transaction's end: nothing reads the
    /// leases table inside a write transaction.
    pub(crate) fn remove_lease(&mut self, id: TaskId) -> Result<(), StoreError> {
        self.lease_removals.insert(id.as_u128());
        Ok(())
    }

    /// Removes the leases released in this transaction: in one pass over the table while it
    /// is small, one at a time once it spans enough leaves for redb to remove in place.
    pub(super) fn flush_lease_removals(&mut self) -> Result<(), StoreError> {
        let released = std::mem::take(&mut self.lease_removals);
        let err = storage(self.path, "releasing leases");
        if let (Some(&first), Some(&last)) = (released.first(), released.last())
            && first != last
            && redb::ReadableTableMetadata::len(&*self.leases).map_err(&err)?
                <= LEASES_SCANNED_AT_MOST
        {
            return self
                .leases
                .remove_where(first..=last, |id| released.contains(id))
                .map_err(err);
        }
        for id in released {
            self.leases.remove(id).map_err(&err)?;
        }
        Ok(())
    }

    /// Adds a finished task to the retention index.
    pub(crate) fn insert_finished(&mut self, status: TaskStatus, at: Millis, id: TaskId) -> Done {
        let key = keys::finished_key(status, at, id);
        let insert = self.finished.insert(key.as_slice(), ());
        insert
            .map(drop)
            .map_err(storage(self.path, "indexing a finished task"))
    }

    /// Removes a finished task from the retention index.
    pub(crate) fn remove_finished(&mut self, status: TaskStatus, at: Millis, id: TaskId) -> Done {
        let key = keys::finished_key(status, at, id);
        let remove = self.finished.remove(key.as_slice());
        remove
            .map(drop)
            .map_err(storage(self.path, "unindexing a finished task"))
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
                    self.delete_attempts(*id)?;
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

/// A table operation's result: done, or the store's error.
type Done = Result<(), StoreError>;

/// Maps a failed table operation to the store's error, naming the file and the action.
pub(super) fn storage<'p>(
    path: &'p Path,
    action: &'static str,
) -> impl Fn(redb::StorageError) -> StoreError + 'p {
    move |e| map_storage_error(path, action, e.into())
}
