//! Hand-off of new tasks to claimers waiting for work. A claim that finds nothing registers
//! here while it waits; a task due now that a batch makes ready (an enqueue, a task handed
//! back) while a claim of its queue waits is claimed for it by the writer in that same commit
//! (`writer::batch` `hand_off`), not after the enqueue is answered and a claim has come back:
//! on an idle worker a task's start waits for one commit instead of two. The claimer gets its
//! tasks once that commit is durable; a failed commit takes a task and its claim back together.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::futures::Notified;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::LocalBroker;
use crate::queue::ReadyTask;
use crate::task::TaskRecord;

/// Where the writer sends a task it claimed for a waiting claimer (after the commit's sync).
pub(crate) type HandOffSender = UnboundedSender<TaskRecord>;

struct Registration {
    id: u64,
    queues: Vec<Arc<str>>,
    room: usize,
    deliver: HandOffSender,
}

/// The claimers waiting for work, with the queues each serves and how many tasks it takes.
#[derive(Default)]
pub(crate) struct HandOffs {
    waiting: Mutex<(u64, Vec<Registration>)>,
    /// Registrations, read without the lock by every enqueue.
    count: AtomicUsize,
}

impl HandOffs {
    fn register(&self, queues: &[Arc<str>], room: usize, deliver: HandOffSender) -> Registered<'_> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.0 += 1;
        let id = waiting.0;
        waiting.1.push(Registration {
            id,
            queues: queues.to_vec(),
            room,
            deliver,
        });
        self.count.store(waiting.1.len(), Ordering::Release);
        Registered { handoffs: self, id }
    }

    fn deregister(&self, id: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.1.retain(|registration| registration.id != id);
        self.count.store(waiting.1.len(), Ordering::Release);
    }

    /// Whether any claimer waits (cheap: read before every batch's commit).
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Gives each waiting claimer with room left the tasks `take` finds for its queues.
    pub(crate) fn assign(
        &self,
        mut take: impl FnMut(&[Arc<str>], usize) -> Vec<ReadyTask>,
    ) -> Vec<(HandOffSender, Vec<ReadyTask>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut assigned = Vec::new();
        for registration in waiting.1.iter_mut().filter(|r| r.room > 0) {
            let tasks = take(&registration.queues, registration.room);
            if !tasks.is_empty() {
                registration.room -= tasks.len();
                assigned.push((registration.deliver.clone(), tasks));
            }
        }
        assigned
    }
}

/// A claimer's registration, withdrawn when dropped (also when its claim is dropped midway).
struct Registered<'a> {
    handoffs: &'a HandOffs,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.handoffs.deregister(self.id);
    }
}

impl LocalBroker {
    /// A claim that found nothing waits for its next look, registered for hand-offs meanwhile.
    /// Returns whether `woken` fired or a hand-off came (false: the claim's time ran out or it
    /// was cancelled), and the tasks handed to it: every one the writer claimed for it, since
    /// once claimed they must reach a worker (or they would sit RUNNING, run by nobody).
    pub(super) async fn wait_for_work(
        &self,
        woken: std::pin::Pin<&mut Notified<'_>>,
        queues: &[Arc<str>],
        room: usize,
        until: tokio::time::Instant,
        cancel: &CancellationToken,
    ) -> (bool, Vec<TaskRecord>) {
        if cancel.is_cancelled() || until <= tokio::time::Instant::now() {
            return (false, Vec::new());
        }
        let (deliver, mut delivered) = tokio::sync::mpsc::unbounded_channel();
        let registered = self.shared.handoffs.register(queues, room, deliver);
        let mut handed = Vec::new();
        let woke = tokio::select! {
            () = woken => true,
            record = delivered.recv() => {
                handed.extend(record);
                true
            }
            () = tokio::time::sleep_until(until) => false,
            () = cancel.cancelled() => false,
        };
        drop(registered);
        // The writer holds a sender for each task it claimed for this registration until the
        // commit is durable (or failed): the channel ends once every one has arrived.
        while let Some(record) = delivered.recv().await {
            handed.push(record);
        }
        (woke, handed)
    }
}
