//! The writer's operator commands that page through an index in bounded transactions:
//! retention cleanup, `retry --failed` and purge.

use super::{Batch, Page, Writer};
use crate::broker::CleanupReport;
use crate::clock::Millis;
use crate::store::{StoreError, WriteTables};
use crate::task::TaskStatus;

/// The statuses a purge scans, in order: the waiting index, then each finished status.
const PURGE_PHASES: [Option<TaskStatus>; 5] = [
    None,
    Some(TaskStatus::Completed),
    Some(TaskStatus::Failed),
    Some(TaskStatus::Cancelled),
    Some(TaskStatus::Forwarded),
];

/// Where one chunk of a purge starts and how much it may do.
pub(super) struct PurgeScan {
    pub(super) queue: String,
    /// Only tasks in this status, if given.
    pub(super) status: Option<TaskStatus>,
    /// Index into [`PURGE_PHASES`].
    pub(super) phase: usize,
    /// The last key of the previous chunk in this phase.
    pub(super) after: Option<Vec<u8>>,
    pub(super) limit: usize,
}

/// Deletes finished tasks past their retention, at most `limit` in all.
pub(super) fn cleanup(
    tables: &mut WriteTables<'_>,
    completed_before: Millis,
    failed_before: Millis,
    limit: usize,
) -> Result<CleanupReport, StoreError> {
    let mut room = limit;
    let mut delete = |status, before| -> Result<u64, StoreError> {
        let deleted = tables.delete_finished_before(status, before, room)?.len();
        room = room.saturating_sub(deleted);
        Ok(deleted as u64)
    };
    let mut report = CleanupReport {
        completed: delete(TaskStatus::Completed, completed_before)?,
        ..CleanupReport::default()
    };
    report.failed = delete(TaskStatus::Failed, failed_before)?;
    report.cancelled = delete(TaskStatus::Cancelled, failed_before)?;
    // FORWARDED records (rabbitmq mode) follow the COMPLETED retention and are counted with
    // them: both are tasks whose local life ended well.
    report.completed += delete(TaskStatus::Forwarded, completed_before)?;
    Ok(report)
}

impl Writer {
    pub(super) fn retry_failed(
        &mut self,
        tables: &mut WriteTables<'_>,
        queue: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        batch: &mut Batch,
    ) -> Result<Page, StoreError> {
        let page = tables.finished_page(TaskStatus::Failed, after, limit)?;
        let mut result = Page {
            changed: 0,
            next: (page.len() == limit)
                .then(|| page.last().map(|(key, _)| (0, key.clone())))
                .flatten(),
        };
        for (_, id) in page {
            let in_queue = match tables.get_task(id) {
                Ok(Some(task)) => queue.is_none_or(|q| q == task.queue),
                Ok(None) | Err(StoreError::CorruptRecord { .. }) => false,
                Err(other) => return Err(other),
            };
            if in_queue
                && self
                    .operate(tables, id, super::moves::Operation::Retry, batch)?
                    .is_ok()
            {
                result.changed += 1;
            }
        }
        Ok(result)
    }

    /// Deletes up to `scan.limit` tasks of `scan.queue`; RUNNING tasks are never purged.
    pub(super) fn purge(
        &mut self,
        tables: &mut WriteTables<'_>,
        scan: PurgeScan,
        batch: &mut Batch,
    ) -> Result<Page, StoreError> {
        let PurgeScan {
            queue,
            status,
            mut phase,
            mut after,
            limit,
        } = scan;
        let mut changed = 0;
        let mut budget = limit;
        while phase < PURGE_PHASES.len() && budget > 0 {
            let phase_status = PURGE_PHASES[phase];
            let applies = match (phase_status, status) {
                (None, None) => true,
                (None, Some(wanted)) => wanted.is_waiting(),
                (Some(finished), wanted) => wanted.is_none_or(|w| w == finished),
            };
            if !applies {
                phase += 1;
                after = None;
                continue;
            }
            let page = match phase_status {
                None => tables.waiting_page(&queue, after.as_deref(), budget)?,
                Some(finished) => tables.finished_page(finished, after.as_deref(), budget)?,
            };
            let full = page.len() == budget;
            budget -= page.len();
            after = page.last().map(|(key, _)| key.clone());
            for (_, id) in page {
                let task = match tables.get_task(id) {
                    Ok(Some(task)) => task,
                    Ok(None) | Err(StoreError::CorruptRecord { .. }) => continue,
                    Err(other) => return Err(other),
                };
                if task.queue != queue || status.is_some_and(|s| s != task.status) {
                    continue;
                }
                // Being published to RabbitMQ (see `forwarding`): its message may be there
                // already, so it is left to become FORWARDED rather than reported purged.
                if self.forwarding.contains(&id) {
                    continue;
                }
                self.discard(tables, id, &task, batch)?;
                changed += 1;
            }
            if !full {
                phase += 1;
                after = None;
            }
        }
        let next = (phase < PURGE_PHASES.len()).then(|| (phase, after.unwrap_or_default()));
        Ok(Page { changed, next })
    }
}
