//! In-flight attempts and their lease deadlines. Leases live in memory only: after a restart
//! every RUNNING task is an orphan anyway, and a heartbeat must not cost a disk write.

use std::collections::HashMap;
use std::sync::PoisonError;

use crate::clock::Millis;
use crate::sync::Mutex;
use crate::task::TaskId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    attempt: u32,
    deadline: Millis,
}

/// The running attempts of this engine's store.
///
/// One lock over the whole table: a renewal and the sweep that expires the same lease must
/// not interleave (a renewal that read the lease, lost it to the sweep, then wrote it back
/// would report success for an expired attempt and could overwrite the lease of the task's
/// next attempt). Each operation holds the lock for a map update, or one pass of the sweep.
#[derive(Default)]
pub(crate) struct LeaseTable {
    leases: Mutex<HashMap<TaskId, Lease>>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("leases", &self.len())
            .finish()
    }
}

impl LeaseTable {
    fn table(&self) -> crate::sync::MutexGuard<'_, HashMap<TaskId, Lease>> {
        // Nothing panics while the lock is held (map updates only), so a poisoned lock still
        // guards a consistent table.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a claimed attempt.
    pub(crate) fn grant(&self, id: TaskId, attempt: u32, deadline: Millis) {
        self.table().insert(id, Lease { attempt, deadline });
    }

    /// Extends a lease; false when `attempt` does not hold it.
    pub(crate) fn renew(&self, id: TaskId, attempt: u32, deadline: Millis) -> bool {
        match self.table().get_mut(&id) {
            Some(lease) if lease.attempt == attempt => {
                lease.deadline = deadline;
                true
            }
            _ => false,
        }
    }

    /// The deadline of attempt `attempt`'s lease, if it holds one.
    pub(crate) fn deadline_of(&self, id: TaskId, attempt: u32) -> Option<Millis> {
        self.table()
            .get(&id)
            .filter(|lease| lease.attempt == attempt)
            .map(|lease| lease.deadline)
    }

    /// Forgets a lease (the attempt was settled).
    pub(crate) fn release(&self, id: TaskId) {
        self.table().remove(&id);
    }

    /// Removes and returns the leases whose deadline has passed, in task id order (creation
    /// order: ids are time-ordered), the order their tasks are queued again in.
    pub(crate) fn take_expired(&self, now: Millis) -> Vec<(TaskId, u32)> {
        let mut expired = Vec::new();
        self.table().retain(|id, lease| {
            let late = lease.deadline <= now;
            if late {
                expired.push((*id, lease.attempt));
            }
            !late
        });
        expired.sort_unstable();
        expired
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.table().values().map(|lease| lease.deadline).min()
    }

    /// How many attempts are running.
    pub(crate) fn len(&self) -> usize {
        self.table().len()
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

    /// Found by the `engine_model` fuzz target: after the table became a hash map, leases that
    /// expired together came back in hash order, so their tasks were queued again (and claimed)
    /// in an order that changed from run to run.
    #[test]
    fn regression_leases_expiring_together_came_back_in_hash_order() {
        let table = LeaseTable::default();
        let ids: Vec<TaskId> = (1..=64u128).map(TaskId::from_u128).collect();
        for (n, id) in ids.iter().enumerate().rev() {
            table.grant(*id, u32::try_from(n).unwrap_or(0), 10);
        }
        let expired: Vec<TaskId> = table
            .take_expired(10)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(expired, ids);
    }

    /// The sweep took the lease between a renewal's read and its write: the renewal put the
    /// expired attempt's lease back (reporting success), over the lease of the task's next
    /// attempt when that was claimed in between.
    #[test]
    fn regression_a_renewal_racing_the_sweep_revived_an_expired_lease() {
        use std::sync::{Arc, Barrier};
        let rounds = 20_000;
        let table = Arc::new(LeaseTable::default());
        let start = Arc::new(Barrier::new(2));
        let mut both = 0;
        let mut ghosts = 0;
        for _ in 0..rounds {
            let id = TaskId::new();
            table.grant(id, 1, 10);
            let renewer = {
                let table = Arc::clone(&table);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    table.renew(id, 1, 1_000_000)
                })
            };
            start.wait();
            // The sweep at t=10 and, when it expired attempt 1, the writer's next claim.
            let expired = table.take_expired(10).contains(&(id, 1));
            if expired {
                table.grant(id, 2, 2_000_000);
            }
            let renewed = renewer.join().unwrap_or(false);
            if renewed && expired {
                both += 1;
            }
            if expired && !table.renew(id, 2, 2_000_000) {
                ghosts += 1;
            }
            table.release(id);
        }
        assert_eq!(
            (both, ghosts),
            (0, 0),
            "{rounds} rounds: a renewal succeeded for an expired attempt {both} times; \
             the next attempt lost its lease {ghosts} times"
        );
    }
}

#[cfg(all(test, fq_loom))]
mod loom_tests {
    use super::*;

    /// A renewal and the sweep of the same lease, in every interleaving: exactly one of them
    /// wins, and an attempt claimed after the sweep keeps its lease.
    #[test]
    fn loom_a_renewal_and_the_sweep_never_both_win() {
        loom::model(|| {
            let table = loom::sync::Arc::new(LeaseTable::default());
            let id = TaskId::from_u128(7);
            table.grant(id, 1, 10);
            let renewer = {
                let table = loom::sync::Arc::clone(&table);
                loom::thread::spawn(move || table.renew(id, 1, 1_000))
            };
            let expired = table.take_expired(10).contains(&(id, 1));
            if expired {
                table.grant(id, 2, 2_000);
            }
            let renewed = renewer.join().unwrap_or(false);
            assert!(renewed != expired, "renewed {renewed}, expired {expired}");
            if expired {
                assert!(table.renew(id, 2, 2_000), "attempt 2 lost its lease");
            }
        });
    }
}
