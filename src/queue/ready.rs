//! The ready heap: for each named queue, a lock-free ordered map (crossbeam-skiplist) of the
//! tasks that may run now, highest priority first, then in the order they became due.

use std::sync::Arc;

use crossbeam_skiplist::SkipMap;

use crate::task::ReadyOrder;
use crate::task::TaskId;

type QueueHeap = SkipMap<ReadyOrder, TaskId>;

/// A task taken from the heap; the claim that follows is checked against the store, so a
/// stale entry (cancelled meanwhile) is simply dropped there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReadyTask {
    pub(crate) queue: Arc<str>,
    pub(crate) order: ReadyOrder,
    pub(crate) id: TaskId,
}

/// The heaps of the queues one worker serves.
#[derive(Clone)]
pub(crate) struct QueueSelection {
    heaps: Vec<(Arc<str>, Arc<QueueHeap>)>,
}

impl std::fmt::Debug for QueueSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.heaps.iter().map(|(name, _)| name))
            .finish()
    }
}

impl QueueSelection {
    /// Takes the best task among the selected queues: highest priority, then earliest due,
    /// then FIFO. Lock-free; two workers never take the same entry.
    pub(crate) fn pop(&self) -> Option<ReadyTask> {
        loop {
            let mut best: Option<(
                &Arc<str>,
                crossbeam_skiplist::map::Entry<'_, ReadyOrder, TaskId>,
            )> = None;
            for (name, heap) in &self.heaps {
                if let Some(front) = heap.front()
                    && best.as_ref().is_none_or(|(_, b)| front.key() < b.key())
                {
                    best = Some((name, front));
                }
            }
            let (queue, entry) = best?;
            if entry.remove() {
                return Some(ReadyTask {
                    queue: Arc::clone(queue),
                    order: *entry.key(),
                    id: *entry.value(),
                });
            }
            // Another worker took it between our look and our removal: look again.
        }
    }
}

/// Ready tasks of every queue.
#[derive(Default)]
pub(crate) struct ReadyHeap {
    queues: SkipMap<Arc<str>, Arc<QueueHeap>>,
}

impl std::fmt::Debug for ReadyHeap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyHeap")
            .field("queues", &self.queues.len())
            .field("tasks", &self.len())
            .finish()
    }
}

impl ReadyHeap {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Arc<QueueHeap> {
        if let Some(entry) = self.queues.get(name) {
            return Arc::clone(entry.value());
        }
        let entry = self
            .queues
            .get_or_insert_with(Arc::from(name), || Arc::new(SkipMap::new()));
        Arc::clone(entry.value())
    }

    /// The shared name of `queue` (creating its heap if needed): one allocation per queue.
    pub(crate) fn intern(&self, queue: &str) -> Arc<str> {
        if let Some(entry) = self.queues.get(queue) {
            return Arc::clone(entry.key());
        }
        let entry = self
            .queues
            .get_or_insert_with(Arc::from(queue), || Arc::new(SkipMap::new()));
        Arc::clone(entry.key())
    }

    /// Makes a task available to workers.
    pub(crate) fn push(&self, queue: &str, order: ReadyOrder, id: TaskId) {
        self.queue(queue).insert(order, id);
    }

    /// Removes a task (cancelled); true when it was there.
    pub(crate) fn remove(&self, queue: &str, order: ReadyOrder) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|heap| heap.value().remove(&order).is_some())
    }

    /// The names of every queue that has had a heap, shared.
    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        self.queues
            .iter()
            .map(|entry| Arc::clone(entry.key()))
            .collect()
    }

    /// Resolves queue names once, so that a worker's pops do no map look-ups.
    pub(crate) fn select(&self, queues: &[Arc<str>]) -> QueueSelection {
        QueueSelection {
            heaps: queues
                .iter()
                .map(|name| (Arc::clone(name), self.queue(name)))
                .collect(),
        }
    }

    /// Ready tasks in one queue, and the earliest due time among them.
    pub(crate) fn queue_summary(&self, queue: &str) -> (u64, Option<crate::clock::Millis>) {
        self.queues.get(queue).map_or((0, None), |heap| {
            let heap = heap.value();
            let oldest = heap.iter().map(|e| e.key().due_at).min();
            (heap.len() as u64, oldest)
        })
    }

    /// Ready tasks in one queue.
    #[cfg(test)]
    pub(crate) fn queue_len(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |heap| heap.value().len())
    }

    /// Ready tasks in all queues.
    pub(crate) fn len(&self) -> usize {
        self.queues.iter().map(|heap| heap.value().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn pops_by_priority_then_due_then_sequence_across_queues() {
        let heap = ReadyHeap::new();
        let ids: Vec<TaskId> = (0..6).map(|_| TaskId::new()).collect();
        heap.push("a", ReadyOrder::new(0, 10, 1), ids[0]);
        heap.push("a", ReadyOrder::new(5, 10, 2), ids[1]);
        heap.push("b", ReadyOrder::new(10, 50, 3), ids[2]);
        heap.push("a", ReadyOrder::new(5, 10, 4), ids[3]);
        heap.push("b", ReadyOrder::new(0, 5, 5), ids[4]);
        heap.push("c", ReadyOrder::new(99, 0, 6), ids[5]);
        let served = heap.select(&names(&["a", "b"]));
        let order: Vec<TaskId> = std::iter::from_fn(|| served.pop().map(|t| t.id)).collect();
        assert_eq!(order, vec![ids[2], ids[1], ids[3], ids[4], ids[0]]);
        assert_eq!(heap.queue_len("c"), 1);
        assert_eq!(heap.len(), 1);
        assert!(heap.select(&names(&["missing"])).pop().is_none());
    }

    #[test]
    fn remove_takes_a_task_out() {
        let heap = ReadyHeap::new();
        let id = TaskId::new();
        let order = ReadyOrder::new(1, 1, 1);
        heap.push("q", order, id);
        assert!(heap.remove("q", order));
        assert!(!heap.remove("q", order));
        assert!(heap.select(&names(&["q"])).pop().is_none());
    }

    #[test]
    fn concurrent_pops_never_duplicate_or_lose() {
        let heap = Arc::new(ReadyHeap::new());
        let total = 20_000u64;
        for seq in 0..total {
            heap.push(
                if seq % 2 == 0 { "x" } else { "y" },
                ReadyOrder::new((seq % 7) as i32, 0, seq),
                TaskId::from_u128(u128::from(seq)),
            );
        }
        let served = heap.select(&names(&["x", "y"]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let served = served.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(task) = served.pop() {
                        got.push(task.id.as_u128());
                    }
                    got
                })
            })
            .collect();
        let mut all: Vec<u128> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        let expected: Vec<u128> = (0..u128::from(total)).collect();
        assert_eq!(all, expected);
    }
}

/// The claim hand-off (`LocalBroker::claim` against `Writer::publish`, `timer::run` and
/// `LocalBroker::put_back`): a worker registers for a wake-up, then pops, and sleeps only if
/// the pop found nothing; a producer pushes, then wakes every registered waiter. The heap
/// here is the real one; tokio's `Notify` is outside loom's reach, so `NotifyModel` stands in
/// for the part of its contract the engine relies on: `notify_waiters` wakes every
/// `Notified` created before the call, polled or not, and stores no permit for later ones.
/// The skiplist's atomics are invisible to loom, which then never orders a pop against a push;
/// each heap operation is therefore preceded by a touch of one loom atomic (`Linearized`),
/// so loom explores every order of the heap operations as well.
/// `RUSTFLAGS="--cfg fq_loom" cargo test --release --lib loom`.
#[cfg(all(test, fq_loom))]
mod loom_tests {
    use std::sync::Arc;

    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Condvar, Mutex};

    use super::*;

    /// Makes the heap operation that follows visible to loom (see the module comment).
    #[derive(Default)]
    struct Linearized(AtomicUsize);

    impl Linearized {
        fn then<T>(&self, operation: impl FnOnce() -> T) -> T {
            self.0.fetch_add(1, Ordering::SeqCst);
            operation()
        }
    }

    #[derive(Default)]
    struct NotifyModel {
        calls: Mutex<u64>,
        woken: Condvar,
    }

    impl NotifyModel {
        /// `Notify::notified()`: remembers how many `notify_waiters` calls came before.
        fn notified(&self) -> u64 {
            *self.calls.lock().expect("no panic under the lock")
        }

        /// Awaiting that `Notified`.
        fn wait(&self, registered: u64) {
            let mut calls = self.calls.lock().expect("no panic under the lock");
            while *calls == registered {
                calls = self.woken.wait(calls).expect("no panic under the lock");
            }
        }

        fn notify_waiters(&self) {
            *self.calls.lock().expect("no panic under the lock") += 1;
            self.woken.notify_all();
        }
    }

    /// `workers` workers claim while a producer pushes as many tasks: `register_first` is the
    /// engine's order; otherwise a worker pops, then registers.
    fn claim_model(workers: u64, register_first: bool) {
        // Three preemptions cover every lost wake-up of this protocol (one worker preempted
        // between its look and its registration is enough) in seconds instead of minutes.
        let mut builder = loom::model::Builder::new();
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(crate::sync::loom_body(move || {
            let heap = Arc::new(ReadyHeap::new());
            let notify = Arc::new(NotifyModel::default());
            let linearized = Arc::new(Linearized::default());
            let queues: Vec<Arc<str>> = vec![Arc::from("q")];
            let claimers: Vec<_> = (0..workers)
                .map(|_| {
                    let selection = heap.select(&queues);
                    let notify = Arc::clone(&notify);
                    let linearized = Arc::clone(&linearized);
                    crate::sync::loom_spawn(move || {
                        loop {
                            let mut registered = None;
                            if register_first {
                                registered = Some(notify.notified());
                            }
                            if let Some(task) = linearized.then(|| selection.pop()) {
                                return task.id;
                            }
                            let registered = registered.unwrap_or_else(|| notify.notified());
                            notify.wait(registered);
                        }
                    })
                })
                .collect();
            for seq in 0..workers {
                linearized.then(|| {
                    heap.push(
                        "q",
                        ReadyOrder::new(0, 0, seq),
                        TaskId::from_u128(seq.into()),
                    );
                });
                notify.notify_waiters();
            }
            let mut got: Vec<u128> = claimers
                .into_iter()
                .map(|w| w.join().expect("a worker ends").as_u128())
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..u128::from(workers)).collect::<Vec<_>>());
        }));
    }

    /// The engine's order never leaves a worker asleep beside a ready task.
    #[test]
    fn loom_a_worker_that_registers_before_it_looks_never_misses_a_push() {
        claim_model(2, true);
    }

    /// The model has teeth: registering after the look loses a wake-up in some interleaving,
    /// and loom reports the sleeping worker as a deadlock.
    #[test]
    fn loom_a_worker_that_looks_before_it_registers_can_miss_a_push() {
        let caught = std::panic::catch_unwind(|| claim_model(2, false));
        assert!(
            caught.is_err(),
            "loom found no lost wake-up in the wrong order"
        );
    }
}
