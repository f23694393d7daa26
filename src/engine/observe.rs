//! What the engine tells about its tasks and workers beyond their records: each task's
//! attempt history, the live and gone workers, and why a task stands where it does.

use super::Engine;
use crate::Result;
use crate::task::TaskId;

impl Engine {
    /// The task's attempt history, oldest first: each ended run's number, start, end,
    /// duration, worker, outcome and error (README "Attempt history"), the newest
    /// `limits.attempt_history` of them. Empty for a task that has not ended a run.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id; a storage failure or a damaged history.
    pub async fn attempts(&self, id: TaskId) -> Result<Vec<crate::AttemptRecord>> {
        self.inner.broker.attempts(id).await
    }

    /// The live workers of the engine that owns the store (in this process or connected
    /// over its control socket), with the attempts they run, and the workers gone in the
    /// last hour with why (README "Live workers"). Kept in memory: empty for a store opened
    /// read-only.
    ///
    /// # Errors
    /// A connected engine's transport failure.
    pub async fn workers(&self) -> Result<crate::WorkersReport> {
        self.inner.broker.workers().await
    }

    /// Where the task stands and what it waits for (`fq why`, README "Why has my task not
    /// run?"): its place in its queue, the queue's pause and limits, the live workers that
    /// serve it, the retry to come, the worker running it, or why it ended and what to do.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id; a storage failure.
    pub async fn explain(&self, id: TaskId) -> Result<crate::Explanation> {
        self.inner.broker.explain(id).await
    }
}
