//! Recurring schedules at rest: the SCHEDULES table (schedule name → record) and its record
//! format (a format-version byte, the postcard body, a CRC-32 of both, as task records). It
//! stores and reads records only; what they mean is `crate::schedule`'s, and firing them is
//! the broker's.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::codec;
use super::tables::read_lazy_table;
use super::{Store, StoreError, WriteTables};
use crate::clock::Millis;

/// schedule name → schedule record (`StoredSchedule`, encoded by `encode_schedule`).
pub(crate) const SCHEDULES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("schedules");

/// The schedule record format this build writes and reads.
const SCHEDULE_FORMAT_VERSION: u8 = 1;

/// One schedule: its definition, the task it queues, and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSchedule {
    /// The spec in text form (`crate::schedule::ScheduleSpec`'s).
    pub(crate) spec: String,
    pub(crate) zone: String,
    /// Where an interval counts from: when the spec was set.
    pub(crate) anchor: Millis,
    /// `crate::schedule::CatchUp`'s code.
    pub(crate) catch_up: u8,
    pub(crate) paused: bool,
    pub(crate) from_config: bool,
    pub(crate) orphaned: bool,
    /// The next fire time not yet queued; `None` when the spec never fires again.
    pub(crate) next_fire: Option<Millis>,
    pub(crate) last_fire: Option<Millis>,
    pub(crate) last_task: Option<u128>,
    pub(crate) task: ScheduledTask,
}

/// The task a schedule queues at each fire time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScheduledTask {
    pub(crate) name: String,
    pub(crate) payload: String,
    pub(crate) queue: String,
    pub(crate) priority: i32,
    pub(crate) max_retries: u32,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) retry_delay_ms: Option<u64>,
}

impl StoredSchedule {
    /// True when its next fire time is for the timer to wait for.
    pub(crate) fn armed(&self) -> bool {
        !self.paused && !self.orphaned
    }
}

fn encode_schedule(schedule: &StoredSchedule) -> Vec<u8> {
    codec::encode_row(SCHEDULE_FORMAT_VERSION, schedule)
}

fn decode_schedule(
    path: &std::path::Path,
    name: &str,
    bytes: &[u8],
) -> Result<StoredSchedule, StoreError> {
    codec::decode_row(SCHEDULE_FORMAT_VERSION, bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("schedule {name:?}: {e}"),
    })
}

impl<'txn> WriteTables<'txn> {
    fn schedule_table(
        &mut self,
    ) -> Result<&mut super::changes::LoggedTable<'txn, &'static str, &'static [u8]>, StoreError>
    {
        super::write_tables::lazy_table(
            &mut self.schedules,
            (self.txn, self.changes),
            (SCHEDULES, super::changes::TableTag::Schedules),
            self.path,
            "opening the schedules",
        )
    }

    /// One schedule, inside the transaction.
    pub(crate) fn get_schedule(
        &mut self,
        name: &str,
    ) -> Result<Option<StoredSchedule>, StoreError> {
        let path = self.path;
        let bytes = self
            .schedule_table()?
            .get(name)
            .map_err(super::write_tables::storage(path, "reading a schedule"))?;
        bytes
            .map(|guard| decode_schedule(path, name, guard.value()))
            .transpose()
    }

    /// Writes (inserts or replaces) a schedule.
    pub(crate) fn put_schedule(
        &mut self,
        name: &str,
        schedule: &StoredSchedule,
    ) -> Result<(), StoreError> {
        let bytes = encode_schedule(schedule);
        let path = self.path;
        self.schedule_table()?
            .insert(name, bytes.as_slice())
            .map_err(super::write_tables::storage(path, "writing a schedule"))?;
        Ok(())
    }

    /// Deletes a schedule; true when there was one.
    pub(crate) fn remove_schedule(&mut self, name: &str) -> Result<bool, StoreError> {
        let path = self.path;
        self.schedule_table()?
            .remove(name)
            .map_err(super::write_tables::storage(path, "deleting a schedule"))
    }

    /// Every schedule, by name.
    pub(crate) fn all_schedules(&mut self) -> Result<Vec<(String, StoredSchedule)>, StoreError> {
        let path = self.path;
        let err = super::write_tables::storage(path, "reading schedules");
        let mut out = Vec::new();
        for item in self.schedule_table()?.iter().map_err(&err)? {
            let (name, bytes) = item.map_err(&err)?;
            let name = name.value().to_owned();
            let schedule = decode_schedule(path, &name, bytes.value())?;
            out.push((name, schedule));
        }
        Ok(out)
    }
}

impl Store {
    /// Every schedule, by name (none in a store that never had one).
    pub(crate) fn schedules(&self) -> Result<Vec<(String, StoredSchedule)>, StoreError> {
        let err = self.storage("reading schedules");
        let txn = self.begin_read("reading schedules")?;
        // None: no schedule was ever written to this store.
        let Some(table) = read_lazy_table(&txn, SCHEDULES).map_err(|e| err(e.into()))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| err(e.into()))? {
            let (name, bytes) = item.map_err(|e| err(e.into()))?;
            let name = name.value().to_owned();
            let schedule = decode_schedule(&self.path, &name, bytes.value())?;
            out.push((name, schedule));
        }
        Ok(out)
    }

    /// The earliest next fire time of the armed schedules.
    pub(crate) fn next_schedule_fire(&self) -> Result<Option<Millis>, StoreError> {
        Ok(self
            .schedules()?
            .iter()
            .filter(|(_, schedule)| schedule.armed())
            .filter_map(|(_, schedule)| schedule.next_fire)
            .min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredSchedule {
        StoredSchedule {
            spec: "*/5 * * * * *".into(),
            zone: "Europe/Paris".into(),
            anchor: 1_700_000_000_000,
            catch_up: 1,
            paused: false,
            from_config: true,
            orphaned: false,
            next_fire: Some(1_700_000_005_000),
            last_fire: None,
            last_task: Some(7),
            task: ScheduledTask {
                name: "app.tick".into(),
                payload: r#"{"args":[],"kwargs":{}}"#.into(),
                queue: "default".into(),
                priority: 2,
                max_retries: 3,
                timeout_ms: Some(1_000),
                retry_delay_ms: None,
            },
        }
    }

    #[test]
    fn schedule_records_round_trip_and_every_flipped_bit_is_caught() {
        let path = std::path::Path::new("x.redb");
        let bytes = encode_schedule(&sample());
        assert_eq!(bytes[0], SCHEDULE_FORMAT_VERSION);
        assert_eq!(decode_schedule(path, "s", &bytes).unwrap(), sample());
        for index in 0..bytes.len() {
            let mut mutant = bytes.clone();
            mutant[index] ^= 0x10;
            assert!(decode_schedule(path, "s", &mutant).is_err(), "byte {index}");
        }
        for len in 0..bytes.len() {
            assert!(decode_schedule(path, "s", &bytes[..len]).is_err());
        }
    }
}
