//! What one write transaction changed, as the redo log carries it: every insert and remove on
//! fq's tables, in order, with the key and value bytes redb stores. Owns the table wrapper that
//! records them (so no change can bypass the log: a wrapped table offers no other way to write)
//! and the replay that applies recorded changes to a later transaction.
//!
//! A change list is a run of entries: table tag (1 byte), key length (u32 LE), key, value
//! length (u32 LE, `u32::MAX` for a remove), value. Lists of consecutive transactions
//! concatenate into one list that means the same as applying them in turn, and replaying a list
//! over a state that already holds some prefix of it ends in the same state: every entry sets or
//! clears one key whole.

use std::borrow::Borrow;
use std::cell::RefCell;

use redb::{Key, StorageError, TableDefinition, Value};

use super::schedules::SCHEDULES;
use super::tables::{ATTEMPTS, COUNTS, FINISHED, LEASES, META, REPORTS, TASKS, UNIQUE, WAITING};

/// How many tables the log knows: the tags run from 1 to this.
const TABLES: usize = 10;
// The replay indexes its per-table lists by tag: the last tag must be the count.
const _: () = assert!(TableTag::Attempts as usize == TABLES);

/// Which table a change is to. The numbers are part of the log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum TableTag {
    Counts = 1,
    Tasks = 2,
    Waiting = 3,
    Leases = 4,
    Finished = 5,
    Meta = 6,
    Unique = 7,
    Reports = 8,
    Schedules = 9,
    Attempts = 10,
}

impl TableTag {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Counts,
            2 => Self::Tasks,
            3 => Self::Waiting,
            4 => Self::Leases,
            5 => Self::Finished,
            6 => Self::Meta,
            7 => Self::Unique,
            8 => Self::Reports,
            9 => Self::Schedules,
            10 => Self::Attempts,
            _ => return None,
        })
    }
}

/// Value length marking a remove.
const REMOVED: u32 = u32::MAX;

/// The changes of one transaction, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct ChangeList(RefCell<Vec<u8>>);

impl ChangeList {
    fn record(&self, tag: TableTag, key: &[u8], value: Option<&[u8]>) {
        let mut bytes = self.0.borrow_mut();
        bytes.push(tag as u8);
        push_chunk(&mut bytes, Some(key));
        push_chunk(&mut bytes, value);
    }

    /// How many bytes the recorded changes take.
    pub(super) fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// The recorded bytes, leaving the list empty.
    pub(super) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

fn push_chunk(bytes: &mut Vec<u8>, chunk: Option<&[u8]>) {
    match chunk {
        // A key or value of 4 GiB cannot reach here: redb refuses it first.
        Some(chunk) => {
            let length = u32::try_from(chunk.len()).unwrap_or(REMOVED - 1);
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(chunk);
        }
        None => bytes.extend_from_slice(&REMOVED.to_le_bytes()),
    }
}

/// A table of a write transaction whose every change is recorded in a [`ChangeList`]. Reads go
/// through `Deref`; the only writes are [`LoggedTable::insert`] and [`LoggedTable::remove`].
pub(crate) struct LoggedTable<'txn, K: Key + 'static, V: Value + 'static> {
    table: redb::Table<'txn, K, V>,
    tag: TableTag,
    changes: &'txn ChangeList,
}

impl<'txn, K: Key + 'static, V: Value + 'static> LoggedTable<'txn, K, V> {
    pub(super) fn new(
        table: redb::Table<'txn, K, V>,
        tag: TableTag,
        changes: &'txn ChangeList,
    ) -> Self {
        Self {
            table,
            tag,
            changes,
        }
    }

    /// Sets `key` to `value`; true when the key held a value before.
    pub(crate) fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<bool, StorageError> {
        let (key, value) = (key.borrow(), value.borrow());
        let replaced = self.table.insert(key, value)?.is_some();
        self.changes.record(
            self.tag,
            K::as_bytes(key).as_ref(),
            Some(V::as_bytes(value).as_ref()),
        );
        Ok(replaced)
    }

    /// Clears `key`; true when it held a value.
    pub(crate) fn remove<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<bool, StorageError> {
        let key = key.borrow();
        let removed = self.table.remove(key)?.is_some();
        if removed {
            self.changes
                .record(self.tag, K::as_bytes(key).as_ref(), None);
        }
        Ok(removed)
    }

    /// Clears every key of `range` that `doomed` picks, in one pass: redb rebuilds each leaf
    /// it changes once, where a removal at a time may rebuild a small table's one leaf for
    /// every key. Records each key it cleared.
    pub(crate) fn remove_where<'a, KR>(
        &mut self,
        range: impl std::ops::RangeBounds<KR> + 'a,
        mut doomed: impl for<'f> FnMut(&K::SelfType<'f>) -> bool,
    ) -> Result<(), StorageError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        let (tag, changes) = (self.tag, self.changes);
        self.table.retain_in(range, |key, _| {
            let remove = doomed(&key);
            if remove {
                changes.record(tag, K::as_bytes(&key).as_ref(), None);
            }
            !remove
        })
    }
}

impl<'txn, K: Key + 'static, V: Value + 'static> std::ops::Deref for LoggedTable<'txn, K, V> {
    type Target = redb::Table<'txn, K, V>;

    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

/// A change list that does not decode: the log record carrying it is damaged in a way its
/// checksum did not catch, or was written by another build.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReplayError {
    #[error("a logged change at byte {offset} is malformed: {detail}")]
    Malformed { offset: usize, detail: &'static str },
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

/// One decoded change.
struct Change<'a> {
    tag: TableTag,
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// Reads the changes of `bytes` in order; the first malformed one ends it with an error.
fn decode(bytes: &[u8]) -> impl Iterator<Item = Result<Change<'_>, ReplayError>> {
    let mut offset = 0usize;
    std::iter::from_fn(move || {
        if offset >= bytes.len() {
            return None;
        }
        let start = offset;
        let malformed = |detail| ReplayError::Malformed {
            offset: start,
            detail,
        };
        let decoded = (|| {
            let tag = TableTag::from_byte(bytes[offset]).ok_or(malformed("unknown table"))?;
            offset += 1;
            let key = read_chunk(bytes, &mut offset)
                .map_err(malformed)?
                .ok_or(malformed("a change without a key"))?;
            let value = read_chunk(bytes, &mut offset).map_err(malformed)?;
            Ok(Change { tag, key, value })
        })();
        if decoded.is_err() {
            offset = bytes.len();
        }
        Some(decoded)
    })
}

fn read_chunk<'a>(bytes: &'a [u8], offset: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let length = bytes
        .get(*offset..*offset + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or("cut short in a length")?;
    *offset += 4;
    if length == REMOVED {
        return Ok(None);
    }
    let end = offset
        .checked_add(length as usize)
        .filter(|end| *end <= bytes.len())
        .ok_or("cut short in a key or value")?;
    let chunk = &bytes[*offset..end];
    *offset = end;
    Ok(Some(chunk))
}

/// Applies the change list `bytes` in `txn`.
#[cfg(test)]
pub(super) fn replay(txn: &redb::WriteTransaction, bytes: &[u8]) -> Result<(), ReplayError> {
    replay_all(txn, [bytes]).map_err(|(_, error)| error)
}

/// Applies the change lists `lists` in `txn`, in order; a malformed one is refused, with its
/// index, before anything is applied.
///
/// Changes to different tables commute (each sets or clears one key of its own table), so
/// each table is opened once and takes its changes in their order.
pub(super) fn replay_all<'a>(
    txn: &redb::WriteTransaction,
    lists: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), (usize, ReplayError)> {
    // Each change with the index of the list it came from, which names it in an error.
    let mut by_table: [Vec<(usize, Change<'a>)>; TABLES] = std::array::from_fn(|_| Vec::new());
    for (index, bytes) in lists.into_iter().enumerate() {
        for change in decode(bytes) {
            let change = change.map_err(|error| (index, error))?;
            // redb decodes a text key by panicking on bad UTF-8; a bad one is refused here.
            let text_key = matches!(change.tag, TableTag::Meta | TableTag::Schedules);
            if text_key && std::str::from_utf8(change.key).is_err() {
                let detail = "a text key that is not UTF-8";
                return Err((index, ReplayError::Malformed { offset: 0, detail }));
            }
            by_table[change.tag as usize - 1].push((index, change));
        }
    }
    for changes in by_table.iter().filter(|changes| !changes.is_empty()) {
        let result = match changes[0].1.tag {
            TableTag::Counts => apply(txn, COUNTS, changes),
            TableTag::Tasks => apply(txn, TASKS, changes),
            TableTag::Waiting => apply(txn, WAITING, changes),
            TableTag::Leases => apply(txn, LEASES, changes),
            TableTag::Finished => apply(txn, FINISHED, changes),
            TableTag::Meta => apply(txn, META, changes),
            TableTag::Unique => apply(txn, UNIQUE, changes),
            TableTag::Reports => apply(txn, REPORTS, changes),
            TableTag::Schedules => apply(txn, SCHEDULES, changes),
            TableTag::Attempts => apply(txn, ATTEMPTS, changes),
        };
        result?;
    }
    Ok(())
}

fn apply<K: Key + 'static, V: Value + 'static>(
    txn: &redb::WriteTransaction,
    definition: TableDefinition<'_, K, V>,
    changes: &[(usize, Change<'_>)],
) -> Result<(), (usize, ReplayError)> {
    let first = changes.first().map_or(0, |(index, _)| *index);
    let mut table = txn
        .open_table(definition)
        .map_err(|e| (first, redb::Error::from(e).into()))?;
    for &(index, ref change) in changes {
        apply_one(&mut table, change).map_err(|error| (index, error))?;
    }
    Ok(())
}

fn apply_one<K: Key + 'static, V: Value + 'static>(
    table: &mut redb::Table<'_, K, V>,
    change: &Change<'_>,
) -> Result<(), ReplayError> {
    if K::fixed_width().is_some_and(|width| width != change.key.len()) {
        return Err(ReplayError::Malformed {
            offset: 0,
            detail: "a key of the wrong width for its table",
        });
    }
    let key = K::from_bytes(change.key);
    match change.value {
        Some(value) => {
            if V::fixed_width().is_some_and(|width| width != value.len()) {
                return Err(ReplayError::Malformed {
                    offset: 0,
                    detail: "a value of the wrong width for its table",
                });
            }
            table
                .insert(key, V::from_bytes(value))
                .map_err(redb::Error::from)?;
        }
        None => {
            table.remove(key).map_err(redb::Error::from)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
