//! The attempt history of each task: the newest ended run in the task's record, the older
//! ones in one ATTEMPTS row per task that has run more than once (`limits.attempt_history`
//! bounds both together). Written in the transaction that settles the run and deleted with
//! the task, so it costs no fsync of its own; the claim path never touches it, and a task
//! that runs once writes no row. Rows are a version byte, the postcard list and a CRC-32 of both, like task
//! records. Reads and writes those rows only, plus one read-only count over the waiting index
//! for `explain` (how many tasks wait ahead of one).

use redb::ReadableTable;

use super::codec::{self, decode_task};
use super::tables::{ATTEMPTS, TASKS, read_lazy_table};
use super::write_tables::{lazy_table, storage};
use super::{Store, StoreError, WriteTables};
use crate::task::attempt::push_bounded;
use crate::task::{StoredAttempt, StoredTask, TaskId};

/// The row format this build writes and reads.
const ROW_VERSION: u8 = 1;

fn encode_row(history: &[StoredAttempt]) -> Vec<u8> {
    codec::encode_row(ROW_VERSION, history)
}

fn decode_row(id: TaskId, bytes: &[u8]) -> Result<Vec<StoredAttempt>, StoreError> {
    codec::decode_row(ROW_VERSION, bytes).map_err(|e| StoreError::CorruptRecord {
        id,
        detail: format!("attempt history: {e}"),
    })
}

impl WriteTables<'_> {
    /// Records the run `ended` of task `id`, whose record after the move is `task`, in this
    /// transaction: the newest ended run lives in the record itself (`last_attempt`), and the
    /// one it replaces joins the ATTEMPTS row, which keeps the older runs (at most the
    /// configured bound minus the one in the record; 0 keeps none). So a task's first run
    /// writes no row: only a task that runs again pays for its history. A damaged row is
    /// replaced.
    pub(crate) fn record_attempt(
        &mut self,
        id: TaskId,
        task: &mut StoredTask,
        ended: StoredAttempt,
    ) -> Result<(), StoreError> {
        let keep = self.attempt_history;
        if keep == 0 {
            task.last_attempt = None;
            return Ok(());
        }
        let Some(older) = task.last_attempt.replace(ended) else {
            return Ok(());
        };
        if keep == 1 {
            return Ok(());
        }
        let path = self.path;
        let table = lazy_table(
            &mut self.attempts,
            (self.txn, self.changes),
            (ATTEMPTS, super::changes::TableTag::Attempts),
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
        push_bounded(&mut history, older, keep - 1);
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
            (self.txn, self.changes),
            (ATTEMPTS, super::changes::TableTag::Attempts),
            path,
            "opening the attempt history",
        )?
        .remove(id.as_u128())
        .map_err(storage(path, "deleting an attempt history"))?;
        Ok(())
    }
}

impl Store {
    /// Task `id`'s attempt history, oldest first: its ATTEMPTS row, then the newest run its
    /// record holds (see [`WriteTables::record_attempt`]); empty for a task that never ended a
    /// run (or a store made before histories were kept), or one that does not exist.
    ///
    /// # Errors
    /// A storage error, or `CorruptRecord` for a damaged row or record.
    pub(crate) fn read_attempts(&self, id: TaskId) -> Result<Vec<StoredAttempt>, StoreError> {
        let err = self.storage("reading an attempt history");
        let txn = self.begin_read("reading an attempt history")?;
        let tasks = txn.open_table(TASKS).map_err(|e| err(e.into()))?;
        let newest = match tasks.get(id.as_u128()).map_err(|e| err(e.into()))? {
            Some(bytes) => decode_task(id, bytes.value())?.last_attempt,
            None => None,
        };
        // None: no run has ended in this store since histories were kept.
        let mut history = match read_lazy_table(&txn, ATTEMPTS).map_err(|e| err(e.into()))? {
            Some(table) => match table.get(id.as_u128()).map_err(|e| err(e.into()))? {
                Some(row) => decode_row(id, row.value())?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        history.extend(newest);
        Ok(history)
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
    use crate::store::StoreOptions;
    use crate::task::{AttemptOutcome, FailureKind, StoredFailure};

    fn ended(n: u32) -> StoredAttempt {
        StoredAttempt {
            attempt: n,
            started_at: i64::from(n) * 10,
            finished_at: i64::from(n) * 10 + 5,
            worker: Some(u128::from(n)),
            outcome: AttemptOutcome::Error,
            error: None,
        }
    }

    /// Ends `runs` runs of one task in a store keeping `keep` attempts, one commit each, and
    /// returns the attempts its history reads back and the rows of its ATTEMPTS entry.
    fn run_task(keep: usize, runs: u32) -> (Vec<u32>, Option<Vec<u32>>) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            attempt_history: keep,
            ..StoreOptions::default()
        };
        let store = Store::open(&dir.path().join("fq.redb"), &options).unwrap();
        let id = TaskId::new();
        let mut task = crate::store::codec::sample_task();
        store
            .write(|tables| tables.put_task(id, &task, None))
            .unwrap();
        for n in 1..=runs {
            let previous = task.status;
            store
                .write(|tables| {
                    tables.record_attempt(id, &mut task, ended(n))?;
                    tables.put_task(id, &task, Some(previous))
                })
                .unwrap();
        }
        let read: Vec<u32> = store
            .read_attempts(id)
            .unwrap()
            .iter()
            .map(|a| a.attempt)
            .collect();
        let txn = store.begin_read("test").unwrap();
        let row = read_lazy_table(&txn, ATTEMPTS)
            .unwrap()
            .and_then(|table| table.get(id.as_u128()).unwrap())
            .map(|row| {
                decode_row(id, row.value())
                    .unwrap()
                    .iter()
                    .map(|a| a.attempt)
                    .collect()
            });
        (read, row)
    }

    #[test]
    fn a_single_run_lives_in_the_record_and_writes_no_history_row() {
        assert_eq!(run_task(25, 1), (vec![1], None));
    }

    #[test]
    fn older_runs_move_to_the_row_and_the_bound_counts_the_record_too() {
        assert_eq!(run_task(25, 3), (vec![1, 2, 3], Some(vec![1, 2])));
        assert_eq!(run_task(3, 6), (vec![4, 5, 6], Some(vec![4, 5])));
        assert_eq!(run_task(1, 4), (vec![4], None));
        assert_eq!(run_task(0, 4), (vec![], None));
    }

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
