//! The delay index: scheduled and retrying tasks ordered by due time. A data structure only;
//! the loop that sleeps until the next due time lives with the engine's timer.

use std::sync::Arc;

use crossbeam_skiplist::SkipMap;

use crate::clock::Millis;
use crate::store::ReadyOrder;
use crate::task::TaskId;

/// A task waiting for its due time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DelayedTask {
    pub(crate) queue: Arc<str>,
    pub(crate) order: ReadyOrder,
    pub(crate) id: TaskId,
}

/// Tasks not yet due, earliest first (ties broken by sequence, as mini-redis breaks deadline
/// ties by key).
#[derive(Default)]
pub(crate) struct DelayIndex {
    entries: SkipMap<(Millis, u64), DelayedTask>,
}

impl std::fmt::Debug for DelayIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayIndex")
            .field("tasks", &self.entries.len())
            .finish()
    }
}

impl DelayIndex {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a task due at `order.due_at`; `queue` is shared with every other entry of the
    /// queue (see `ReadyHeap::intern`), so a million delayed tasks hold one copy of its name.
    pub(crate) fn insert(&self, queue: Arc<str>, order: ReadyOrder, id: TaskId) {
        self.entries
            .insert((order.due_at, order.seq), DelayedTask { queue, order, id });
    }

    /// Removes a task (cancelled); true when it was there.
    pub(crate) fn remove(&self, order: ReadyOrder) -> bool {
        self.entries.remove(&(order.due_at, order.seq)).is_some()
    }

    /// The earliest due time, if any task waits.
    pub(crate) fn next_due(&self) -> Option<Millis> {
        self.entries.front().map(|e| e.key().0)
    }

    /// Takes every task due at or before `now`, earliest first.
    pub(crate) fn pop_due(&self, now: Millis) -> Vec<DelayedTask> {
        let mut due = Vec::new();
        while let Some(front) = self.entries.front() {
            if front.key().0 > now {
                break;
            }
            if front.remove() {
                due.push(front.value().clone());
            }
        }
        due
    }

    /// Tasks waiting in `queue`.
    #[cfg(test)]
    pub(crate) fn queue_len(&self, queue: &str) -> usize {
        self.entries
            .iter()
            .filter(|e| &*e.value().queue == queue)
            .count()
    }

    /// Tasks waiting in all queues.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_only_what_is_due_in_due_order() {
        let index = DelayIndex::new();
        let late = TaskId::new();
        let early = TaskId::new();
        let tie = TaskId::new();
        index.insert(Arc::from("q"), ReadyOrder::new(0, 300, 1), late);
        index.insert(Arc::from("q"), ReadyOrder::new(9, 100, 2), early);
        index.insert(Arc::from("r"), ReadyOrder::new(0, 100, 3), tie);
        assert_eq!(index.next_due(), Some(100));
        assert!(index.pop_due(99).is_empty());
        let due: Vec<TaskId> = index.pop_due(100).into_iter().map(|t| t.id).collect();
        assert_eq!(due, vec![early, tie]);
        assert_eq!(index.next_due(), Some(300));
        assert_eq!(index.queue_len("q"), 1);
        assert!(index.remove(ReadyOrder::new(0, 300, 1)));
        assert_eq!(index.len(), 0);
        assert_eq!(index.next_due(), None);
    }
}
