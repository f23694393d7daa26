//! Paused queues: the in-memory set claims consult (loaded from the store at open, changed
//! only after the writer's commit of a pause or resume), the `Pause` writer command's
//! application, and the holding back of claimed-for tasks whose queue is paused. A paused
//! queue's tasks stay in the ready heap and the waiting index, untouched: nothing polls them,
//! and a resume wakes the waiting claims.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::writer::{Batch, Publish, Writer};
use super::{Command, LocalBroker};
use crate::Result;
use crate::queue::ReadyTask;
use crate::store::{StoreError, WriteTables};
use crate::sync::{AtomicBool, Mutex};

/// The queues paused now. `any` lets claims skip the lock while nothing is paused, so an
/// engine that never pauses pays one atomic load per claim.
#[derive(Debug, Default)]
pub(crate) struct PausedQueues {
    any: AtomicBool,
    queues: Mutex<HashSet<String>>,
}

impl PausedQueues {
    pub(crate) fn new(paused: Vec<String>) -> Self {
        Self {
            any: AtomicBool::new(!paused.is_empty()),
            queues: Mutex::new(paused.into_iter().collect()),
        }
    }

    /// Called after the commit of a pause or resume.
    pub(crate) fn set(&self, queue: &str, paused: bool) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if paused {
            queues.insert(queue.to_owned());
        } else {
            queues.remove(queue);
        }
        self.any.store(!queues.is_empty(), Ordering::SeqCst);
    }

    pub(crate) fn contains(&self, queue: &str) -> bool {
        self.any.load(Ordering::SeqCst)
            && self
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(queue)
    }

    /// `queues` without the paused ones (borrowed as they are when none is paused).
    pub(crate) fn active<'a>(&self, queues: &'a [Arc<str>]) -> Cow<'a, [Arc<str>]> {
        if !self.any.load(Ordering::SeqCst) {
            return Cow::Borrowed(queues);
        }
        let paused = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        Cow::Owned(
            queues
                .iter()
                .filter(|queue| !paused.contains(&***queue))
                .cloned()
                .collect(),
        )
    }

    /// The paused queues, sorted.
    pub(crate) fn list(&self) -> Vec<String> {
        let mut list: Vec<String> = self
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        list.sort();
        list
    }
}

impl LocalBroker {
    /// Pauses or resumes `queue` durably; true when that changed it.
    pub(super) async fn set_queue_paused(&self, queue: String, paused: bool) -> Result<bool> {
        self.request(|reply| Command::Pause {
            queue,
            paused,
            reply,
        })
        .await
    }
}

impl Writer {
    /// Writes the pause row; the in-memory set follows after the commit (and a resume wakes
    /// the waiting claims).
    pub(super) fn pause(
        &mut self,
        tables: &mut WriteTables<'_>,
        queue: String,
        paused: bool,
        batch: &mut Batch,
    ) -> Result<bool, StoreError> {
        let changed = tables.set_paused(&queue, paused)?;
        batch.effects.push(Publish::Paused { queue, paused });
        Ok(changed)
    }

    /// The tasks of a claim whose queue is not paused; the others go back on the ready heap
    /// after the commit. A claim popped before a pause committed and reaching the writer after
    /// it starts nothing from the paused queue.
    pub(super) fn hold_paused(&self, tasks: Vec<ReadyTask>, batch: &mut Batch) -> Vec<ReadyTask> {
        let paused = &self.shared.paused;
        let (held, free): (Vec<_>, Vec<_>) = tasks
            .into_iter()
            .partition(|task| paused.contains(&task.queue));
        for task in held {
            batch.effects.push(Publish::Wait {
                queue: task.queue.to_string(),
                order: task.order,
                id: task.id,
            });
        }
        free
    }
}
