//! Callers waiting for a task's outcome (`Broker::wait`): a map from task id to the waiters'
//! wake-ups. `LocalBroker::wait` registers a waiter before it reads the record, and the writer
//! wakes every waiter of a task after the commit that made it final or deleted it, so a
//! settlement between the read and the wait is never missed. Holds no record and reads no
//! store: a woken waiter reads the task itself, after the commit. Must not be touched inside a
//! write transaction (waking is a post-commit effect).

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use tokio::sync::oneshot;

use super::LocalBroker;
use crate::broker::Broker;
use crate::sync::Mutex;
use crate::task::{TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};

/// The waiters of each task, woken once and removed when it becomes final.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<TaskId, Vec<oneshot::Sender<()>>>>,
}

/// One registered waiter; dropping it (timed out, or the caller stopped waiting) removes its
/// entry, so abandoned waits leave nothing behind.
struct Waiter<'a> {
    waiters: &'a Waiters,
    id: TaskId,
    woken: Option<oneshot::Receiver<()>>,
}

impl Waiter<'_> {
    /// Resolves when the task's outcome was committed (or it was deleted).
    async fn woken(&mut self) {
        if let Some(woken) = self.woken.as_mut() {
            // A dropped sender also means "look again": it only happens when the entry goes.
            let _ = woken.await;
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        drop(self.woken.take());
        let mut waiting = self.waiters.lock();
        if let Some(senders) = waiting.get_mut(&self.id) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiting.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    fn lock(&self) -> crate::sync::MutexGuard<'_, HashMap<TaskId, Vec<oneshot::Sender<()>>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, id: TaskId) -> Waiter<'_> {
        let (sender, woken) = oneshot::channel();
        self.lock().entry(id).or_default().push(sender);
        Waiter {
            waiters: self,
            id,
            woken: Some(woken),
        }
    }

    /// Wakes the waiters of `ids`. Called by the writer after a commit, with the tasks it made
    /// final or deleted; takes the lock once, and only when somebody waits.
    pub(crate) fn wake(&self, ids: &[TaskId]) {
        if ids.is_empty() {
            return;
        }
        let mut waiting = self.lock();
        if waiting.is_empty() {
            return;
        }
        for id in ids {
            for sender in waiting.remove(id).into_iter().flatten() {
                // A closed receiver is a waiter that stopped waiting; nothing to tell it.
                let _ = sender.send(());
            }
        }
    }

    /// How many tasks have waiters (for tests of the clean-up).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// True for the statuses `wait` returns at: the task's outcome in this store. FORWARDED is
/// not one: the outcome of a task handed to RabbitMQ happens in the consuming process.
pub(crate) fn is_outcome(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    )
}

impl LocalBroker {
    /// The task's record once it is COMPLETED, FAILED or CANCELLED, woken by the commit that
    /// makes it so; [`Error::WaitTimeout`] after `timeout`, leaving the task alone.
    pub(super) async fn wait_for_outcome(
        &self,
        id: TaskId,
        timeout: Duration,
    ) -> Result<TaskRecord> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the read: a commit after the read wakes this waiter, one
            // before it is in what the read sees.
            let mut waiter = self.shared.waiters.register(id);
            let record = self.task(id).await?.ok_or(Error::NotFound(id))?;
            if is_outcome(record.status) {
                return Ok(record);
            }
            if tokio::time::timeout_at(deadline, waiter.woken())
                .await
                .is_err()
            {
                return Err(Error::WaitTimeout { id, timeout });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_abandoned_waiter_leaves_no_entry_and_a_wake_reaches_the_others() {
        let waiters = Waiters::default();
        let (a, b) = (TaskId::new(), TaskId::new());
        let mut kept = waiters.register(a);
        {
            let _gone = waiters.register(a);
            let _other = waiters.register(b);
        }
        assert_eq!(waiters.len(), 1, "abandoned waiters stayed registered");
        waiters.wake(&[a]);
        kept.woken().await;
        drop(kept);
        assert_eq!(waiters.len(), 0);
    }
}
