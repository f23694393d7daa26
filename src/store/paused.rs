//! The set of paused queues, kept in the META table (one `paused:<queue>` row per paused
//! queue, empty value) so a pause survives a reopen and needs no schema change: a build that
//! does not know these rows ignores them. Reads and writes those rows only.

use super::tables::META;
use super::{Store, StoreError, WriteTables};

/// The META key prefix of a paused queue's row.
const PAUSED_PREFIX: &str = "paused:";

impl WriteTables<'_> {
    /// Pauses (`paused`) or resumes `queue` in this transaction; true when that changed it.
    pub(crate) fn set_paused(&mut self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        let key = format!("{PAUSED_PREFIX}{queue}");
        let was = if paused {
            self.meta.insert(key.as_str(), &[][..])
        } else {
            self.meta.remove(key.as_str())
        }
        .map_err(super::write_tables::storage(
            self.path,
            "writing a queue's pause",
        ))?;
        Ok(was != paused)
    }
}

impl Store {
    /// The queues paused in the store, sorted.
    pub(crate) fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        let err = self.storage("reading paused queues");
        let txn = self.begin_read("reading paused queues")?;
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let mut paused = Vec::new();
        for item in meta.range(PAUSED_PREFIX..).map_err(|e| err(e.into()))? {
            let (key, _) = item.map_err(|e| err(e.into()))?;
            let Some(queue) = key.value().strip_prefix(PAUSED_PREFIX) else {
                break;
            };
            paused.push(queue.to_owned());
        }
        Ok(paused)
    }
}
