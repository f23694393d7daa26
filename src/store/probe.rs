//! A measure of the disk under a store: how many durable commits per second the storage engine
//! alone makes, each holding what one enqueue writes, with nothing of fq around it. `fq bench`
//! prints fq's one-producer rate against it.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Durability, TableDefinition};

use super::{StoreError, map_storage_error};

/// Durable commits per second of the storage engine alone, measured for `duration` in a scratch
/// database at `path` (deleted afterwards), each commit holding what one enqueue writes: a
/// record in a task table, a key in an index, a counter. `progress` is told the time spent
/// after each commit.
///
/// # Errors
/// The scratch database cannot be created or written (the error names `path`).
pub fn store_commit_rate(
    path: &Path,
    duration: Duration,
    mut progress: impl FnMut(Duration),
) -> Result<f64, StoreError> {
    const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
    const INDEX: TableDefinition<&[u8], u128> = TableDefinition::new("index");
    const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
    let fail = |action| move |e: redb::Error| map_storage_error(path, action, e);
    let db = redb::Database::create(path).map_err(|e| fail("creating the probe")(e.into()))?;
    let record = [0x5au8; 240];
    let started = Instant::now();
    let mut commits: u64 = 0;
    while started.elapsed() < duration {
        let id = u128::from(commits);
        let write = || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                txn.open_table(RECORDS)?.insert(id, &record[..])?;
                txn.open_table(INDEX)?.insert(&id.to_be_bytes()[..], id)?;
                txn.open_table(COUNTERS)?.insert("default", commits)?;
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(fail("committing to the probe"))?;
        commits += 1;
        progress(started.elapsed());
    }
    drop(db);
    let _ = std::fs::remove_file(path);
    Ok(commits as f64 / started.elapsed().as_secs_f64().max(1e-9))
}
