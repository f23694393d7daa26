//! The attempt history of each task: one ATTEMPTS row per task that has ended a run, holding
//! its newest attempts (`limits.attempt_history`). Written in the transaction that settles
//! the run and deleted with the task, so it costs no fsync of its own; the claim path never
//! touches it. Rows are a version byte, the postcard list and a CRC-32 of both, like task
//! records. Reads and writes those rows only, plus one read-only count over the waiting index
//! for `explain` (how many tasks wait ahead of one).

use redb::ReadableTable;

use super::tables::{ATTEMPTS, read_lazy_table};
use super::write_tables::{lazy_table, storage};
use super::{Store, StoreError, WriteTables};
use crate::task::attempt::push_bounded;
use crate::task::{StoredAttempt, TaskId};

/// The row format this build writes and reads.
const ROW_VERSION: u8 = 1;

fn encode_row(history: &[StoredAttempt]) -> Vec<u8> {
    let mut bytes = vec![ROW_VERSION];
    // Plain owned data into a Vec does not fail to serialize; were it to, the row would be
    // refused by its checksum on read, and the next settlement would start it afresh.
    if let Ok(body) = postcard::to_extend(history, bytes) {
        bytes = body;
    } else {
        bytes = vec![ROW_VERSION];
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_row(id: TaskId, bytes: &[u8]) -> Result<Vec<StoredAttempt>, StoreError> {
    let corrupt = |detail: String| StoreError::CorruptRecord {
        id,
        detail: format!("attempt history: {detail}"),
    };
    if bytes.len() < 5 {
        return Err(corrupt(format!("{} bytes, too short", bytes.len())));
    }
    let (framed, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(framed) != stored {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    if framed[0] != ROW_VERSION {
        return Err(corrupt(format!(
            "format version {} is not one this build reads ({ROW_VERSION})",
            framed[0]
        )));
    }
    postcard::from_bytes(&framed[1..]).map_err(|e| corrupt(e.to_string()))
}

impl WriteTables<'_> {
    /// Appends `attempt` to task `id`'s history in this transaction, dropping the oldest
    /// entries beyond the configured bound (0 keeps none). A damaged row is replaced.
    pub(crate) fn push_attempt(
        &mut self,
        id: TaskId,
        attempt: StoredAttempt,
    ) -> Result<(), StoreError> {
        let keep = self.attempt_history;
        if keep == 0 {
            return Ok(());
        }
        let path = self.path;
        let table = lazy_table(
            &mut self.attempts,
            self.txn,
            ATTEMPTS,
            path,
            "opening the attempt history",
        )?;
        let mut history = match table
            .get(id.as_u128())
            .map_err(storage(path, "reading an attempt history"))?
        {
            Some(row) => decode_row(id, row.value()).unwrap_or_default(),
            None => Vec::new(),
        };
        push_bounded(&mut history, attempt, keep);
        table
            .insert(id.as_u128(), encode_row(&history).as_slice())
            .map_err(storage(path, "writing an attempt history"))?;
        Ok(())
    }

    /// Deletes task `id`'s history, if it has one, in this transaction.
    pub(crate) fn delete_attempts(&mut self, id: TaskId) -> Result<(), StoreError> {
        let path = self.path;
        lazy_table(
            &mut self.attempts,
            self.txn,
            ATTEMPTS,
            path,
            "opening the attempt history",
        )?
        .remove(id.as_u128())
        .map_err(storage(path, "deleting an attempt history"))?;
        Ok(())
    }
}

impl Store {
    /// Task `id`'s attempt history, oldest first; empty for a task that never ended a run
    /// (or a store made before histories were kept).
    ///
    /// # Errors
    /// A storage error, or `CorruptRecord` for a damaged row.
    pub(crate) fn read_attempts(&self, id: TaskId) -> Result<Vec<StoredAttempt>, StoreError> {
        let err = self.storage("reading an attempt history");
        let txn = self.begin_read("reading an attempt history")?;
        // None: no run has ended in this store since histories were kept.
        let Some(table) = read_lazy_table(&txn, ATTEMPTS).map_err(|e| err(e.into()))? else {
            return Ok(Vec::new());
        };
        match table.get(id.as_u128()).map_err(|e| err(e.into()))? {
            Some(row) => decode_row(id, row.value()),
            None => Ok(Vec::new()),
        }
    }
}

impl Store {
    /// How many tasks of `queue` wait ahead of a task waiting under `order` and will start
    /// before it: those ahead in the waiting index (higher priority, or equal priority and
    /// due first) that are due by the time it is (`max(now, its due time)`).
    ///
    /// # Errors
    /// A storage error.
    pub(crate) fn count_ahead(
        &self,
        queue: &str,
        order: crate::task::ReadyOrder,
        now: crate::clock::Millis,
    ) -> Result<u64, StoreError> {
        let err = self.storage("reading the waiting index");
        let txn = self.begin_read("reading the waiting index")?;
        let table = txn
            .open_table(super::tables::WAITING)
            .map_err(|e| err(e.into()))?;
        let mut start = queue.as_bytes().to_vec();
        start.push(0);
        let end = super::keys::waiting_key(queue, order);
        let by = order.due_at.max(now);
        let mut ahead = 0;
        for item in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(|e| err(e.into()))?
        {
            let (key, _) = item.map_err(|e| err(e.into()))?;
            if super::keys::parse_waiting_key(key.value())
                .is_some_and(|(_, other)| other.due_at <= by)
            {
                ahead += 1;
            }
        }
        Ok(ahead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{AttemptOutcome, FailureKind, StoredFailure};

    #[test]
    fn rows_round_trip_and_damage_is_caught() {
        let id = TaskId::new();
        let history = vec![StoredAttempt {
            attempt: 1,
            started_at: 5,
            finished_at: 9,
            worker: Some(7),
            outcome: AttemptOutcome::Error,
            error: Some(StoredFailure {
                message: "smtp down".into(),
                kind: FailureKind::Error,
            }),
        }];
        let bytes = encode_row(&history);
        assert_eq!(decode_row(id, &bytes).unwrap(), history);
        let mut flipped = bytes.clone();
        flipped[2] ^= 1;
        assert!(decode_row(id, &flipped).is_err());
        assert!(decode_row(id, &bytes[..3]).is_err());
    }
}
