//! In-flight attempts and their lease deadlines. Leases live in memory only: after a restart
//! every RUNNING task is an orphan anyway, and a heartbeat must not cost a disk write.

use crossbeam_skiplist::SkipMap;

use crate::clock::Millis;
use crate::task::TaskId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    attempt: u32,
    deadline: Millis,
}

/// The running attempts of this engine's store.
#[derive(Default)]
pub(crate) struct LeaseTable {
    leases: SkipMap<TaskId, Lease>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("leases", &self.leases.len())
            .finish()
    }
}

impl LeaseTable {
    /// Records a claimed attempt.
    pub(crate) fn grant(&self, id: TaskId, attempt: u32, deadline: Millis) {
        self.leases.insert(id, Lease { attempt, deadline });
    }

    /// Extends a lease; false when `attempt` does not hold it.
    pub(crate) fn renew(&self, id: TaskId, attempt: u32, deadline: Millis) -> bool {
        match self.leases.get(&id) {
            Some(entry) if entry.value().attempt == attempt => {
                self.leases.insert(id, Lease { attempt, deadline });
                true
            }
            _ => false,
        }
    }

    /// Forgets a lease (the attempt was settled).
    pub(crate) fn release(&self, id: TaskId) {
        self.leases.remove(&id);
    }

    /// Removes and returns the leases whose deadline has passed.
    pub(crate) fn take_expired(&self, now: Millis) -> Vec<(TaskId, u32)> {
        let expired: Vec<(TaskId, u32)> = self
            .leases
            .iter()
            .filter(|e| e.value().deadline <= now)
            .map(|e| (*e.key(), e.value().attempt))
            .collect();
        for (id, _) in &expired {
            self.leases.remove(id);
        }
        expired
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.leases.iter().map(|e| e.value().deadline).min()
    }

    /// How many attempts are running.
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_is_fenced_and_expiry_takes_only_late_leases() {
        let table = LeaseTable::default();
        let a = TaskId::new();
        let b = TaskId::new();
        table.grant(a, 1, 100);
        table.grant(b, 2, 200);
        assert!(!table.renew(a, 2, 500), "a stale attempt renewed a lease");
        assert!(table.renew(a, 1, 300));
        assert_eq!(table.next_deadline(), Some(200));
        assert_eq!(table.take_expired(250), vec![(b, 2)]);
        assert_eq!(table.len(), 1);
        table.release(a);
        assert_eq!(table.next_deadline(), None);
    }
}
