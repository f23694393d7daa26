//! The outbox of outcome reports (RabbitMQ mode, the worker's side): a run of a forwarded task
//! that names a `reply_to` leaves a row in the REPORTS table in the same commit as its record;
//! the bridge publishes it to the producer and deletes the row at RabbitMQ's confirm, and sends
//! every row again after a reconnect or a reopen. Rows are a version byte, the postcard body
//! and a CRC-32 of both, like task records. Reads and writes those rows only.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::codec;
use super::tables::{REPORTS, read_lazy_table};
use super::{Store, StoreError, WriteTables};
use crate::task::TaskId;
use crate::task::lifecycle::Report;

/// The row format this build writes.
const ROW_VERSION: u8 = 1;

/// A run's outcome waiting to be sent to its producer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingReport {
    /// The task the report is about.
    pub(crate) id: TaskId,
    /// The producer's reply queue.
    pub(crate) reply_to: String,
    pub(crate) report: Report,
}

#[derive(Serialize, Deserialize)]
struct Row {
    reply_to: String,
    report: Report,
}

fn encode_row(reply_to: &str, report: &Report) -> Vec<u8> {
    let row = Row {
        reply_to: reply_to.to_owned(),
        report: report.clone(),
    };
    codec::encode_row(ROW_VERSION, &row)
}

fn decode_row(id: TaskId, bytes: &[u8]) -> Result<PendingReport, StoreError> {
    let row: Row =
        codec::decode_row(ROW_VERSION, bytes).map_err(|e| StoreError::CorruptRecord {
            id,
            detail: format!("outcome report row: {e}"),
        })?;
    Ok(PendingReport {
        id,
        reply_to: row.reply_to,
        report: row.report,
    })
}

impl WriteTables<'_> {
    /// Keeps `report` of task `id` to send to `reply_to`, in this transaction.
    pub(crate) fn put_report(
        &mut self,
        id: TaskId,
        reply_to: &str,
        report: &Report,
    ) -> Result<(), StoreError> {
        super::write_tables::lazy_table(
            &mut self.reports,
            (self.txn, self.changes),
            (REPORTS, super::changes::TableTag::Reports),
            self.path,
            "opening the report outbox",
        )?
        .insert(
            (id.as_u128(), report.attempt()),
            encode_row(reply_to, report).as_slice(),
        )
        .map_err(super::write_tables::storage(
            self.path,
            "writing an outcome report",
        ))?;
        Ok(())
    }

    /// Forgets the reports RabbitMQ confirmed (task, run); rows already gone are fine.
    pub(crate) fn remove_reports(&mut self, sent: &[(TaskId, u32)]) -> Result<(), StoreError> {
        let table = super::write_tables::lazy_table(
            &mut self.reports,
            (self.txn, self.changes),
            (REPORTS, super::changes::TableTag::Reports),
            self.path,
            "opening the report outbox",
        )?;
        for (id, attempt) in sent {
            table
                .remove((id.as_u128(), *attempt))
                .map_err(super::write_tables::storage(
                    self.path,
                    "deleting a sent outcome report",
                ))?;
        }
        Ok(())
    }
}

impl Store {
    /// Up to `limit` reports waiting to be sent, oldest task first. A damaged row is logged
    /// and skipped (its task's producer keeps the record as it was).
    pub(crate) fn pending_reports(&self, limit: usize) -> Result<Vec<PendingReport>, StoreError> {
        let err = self.storage("reading the report outbox");
        let txn = self.begin_read("reading the report outbox")?;
        // None: no run has been recorded with a report yet.
        let Some(table) = read_lazy_table(&txn, REPORTS).map_err(|e| err(e.into()))? else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for item in table.iter().map_err(|e| err(e.into()))? {
            if found.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|e| err(e.into()))?;
            let id = TaskId::from_u128(key.value().0);
            match decode_row(id, value.value()) {
                Ok(report) => found.push(report),
                Err(error) => {
                    tracing::error!(task.id = %id, %error, "skipping a damaged outcome report")
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::lifecycle::RunEnd;
    use crate::task::{FailureKind, StoredFailure, TaskStatus};

    #[test]
    fn rows_round_trip_and_damage_is_caught() {
        let id = TaskId::new();
        let report = Report::Ended(RunEnd {
            attempt: 2,
            status: TaskStatus::Failed,
            started_at: Some(5),
            at: 9,
            result: None,
            error: Some(StoredFailure {
                message: "smtp down".into(),
                kind: FailureKind::Error,
            }),
            retry_at: None,
        });
        let bytes = encode_row("fq.replies.x", &report);
        let decoded = decode_row(id, &bytes).unwrap();
        assert_eq!(decoded.report, report);
        assert_eq!(decoded.reply_to, "fq.replies.x");
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(decode_row(id, &flipped).is_err(), "flip at {at} not caught");
        }
        assert!(decode_row(id, &bytes[..3]).is_err());
    }
}
