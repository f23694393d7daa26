//! The redb tables of an fq store. Keys are big-endian (see `keys.rs`) so byte order is sort order.

use redb::{ReadOnlyTable, ReadTransaction, TableDefinition, TableError};

/// Opens for reading a table that write transactions create only when they first need it
/// (unique keys, the report outbox, schedules, attempt histories); `None` when none has yet.
pub(super) fn read_lazy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    definition: TableDefinition<'_, K, V>,
) -> Result<Option<ReadOnlyTable<K, V>>, TableError> {
    match txn.open_table(definition) {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(other) => Err(other),
    }
}

/// task id (UUID v7 as a number) → task record (`codec.rs`).
pub(crate) const TASKS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("tasks");

/// ready key (queue, inverted priority, due time, sequence) → task id, for every PENDING or
/// RETRYING task: the persisted priority/ready-time index that rebuilds the ready heap and the
/// delay index on open.
pub(crate) const WAITING: TableDefinition<'_, &[u8], u128> = TableDefinition::new("waiting");

/// task id → attempt number, for every RUNNING task: the orphans to recover on open.
pub(crate) const LEASES: TableDefinition<'_, u128, u32> = TableDefinition::new("leases");

/// finished key (status code, finished time, task id) → (), for every COMPLETED, FAILED or
/// CANCELLED task: what retention cleanup deletes, oldest first.
pub(crate) const FINISHED: TableDefinition<'_, &[u8], ()> = TableDefinition::new("finished");

/// (queue name, 0, status code) → number of tasks of that queue in that status: kept in the
/// same transactions as the records, so counts are exact and `stats` reads no records.
pub(crate) const COUNTS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("counts");

/// unique key (UTF-8 bytes) → holder (`keys::unique_value`: task id, finished, period end):
/// the task that holds each key, for tasks queued with one. Written in the same transactions
/// as the records (`WriteTables::put_task`, `delete_task`), so a check and an insert in one
/// transaction cannot race. Stores made before unique keys lack it until their first one.
pub(crate) const UNIQUE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("unique");

/// task id → the task's newest attempts (`attempts.rs`: version byte, postcard list, CRC-32),
/// for every task that has ended a run: written in the settlement's transaction, deleted with
/// the task. Stores made before attempt histories lack it until their first settlement.
pub(crate) const ATTEMPTS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("attempts");

/// setting name → bytes: the store's identity and schema version.
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// META key whose value marks a file as an fq store.
pub(crate) const META_MAGIC: &str = "magic";
/// The value under [`META_MAGIC`].
pub(crate) const MAGIC: &[u8] = b"fq task store";
/// META key holding the store's own id (a UUID as text; see `Store::store_id`).
pub(crate) const META_STORE_ID: &str = "store_id";
/// META key holding the schema version as a big-endian u32.
pub(crate) const META_SCHEMA: &str = "schema_version";
/// The schema this build reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// (task id, run) → a run's outcome not yet confirmed by RabbitMQ to its producer, with the
/// reply queue to send it to (`reports.rs`): written in the commit that records the run, so
/// the delivery can be acknowledged at once and the report survives a crash until it is sent.
pub(crate) const REPORTS: TableDefinition<'_, (u128, u32), &[u8]> = TableDefinition::new("reports");
