//! What readers may see of the writer's commits. With the write-ahead log the writer commits a
//! batch to the B-tree before the log's sync that makes it durable has returned, so that it can
//! apply the next batch while the disk works (`Store::write_deferred`). Such a commit is
//! visible to a read transaction at once; this gate holds the read back until everything its
//! snapshot holds is durable, so no caller ever sees a change a crash could take back.
//!
//! Every commit that is not durable when it becomes visible takes a number from `committed`
//! before it commits; `durable` is the highest number known durable. A read takes its snapshot,
//! then reads `committed`: the snapshot holds nothing numbered above that, so the read may go
//! on once `durable` reaches it. A reopen (after a failed sync the B-tree is rolled back to its
//! last durable state) moves to a new generation: a read whose snapshot came from the database
//! before it takes a new one.
//!
//! The other way round, a lone request's commit is durable before it is visible: its record is
//! synced, its callers answered, and only then does the B-tree commit (`Commit::SyncedHere`).
//! From before the first answer until that commit, reads wait before they take a snapshot. The
//! same holds while the writer keeps a B-tree transaction open across logged batches
//! (`held.rs`); a read waiting then asks the writer to commit it (`Visibility::commit_wanted`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

thread_local! {
    /// True on the writer's thread: it never waits for its own syncs (it is what ends them).
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as the store's writer: its reads never wait at the gate.
pub(crate) fn exempt_this_thread() {
    EXEMPT.with(|exempt| exempt.set(true));
}

#[derive(Default)]
pub(super) struct Visibility {
    /// Shared with the log's syncs (`LogSync::covers`): a commit's record is in the log
    /// before the commit takes its number.
    committed: Arc<AtomicU64>,
    state: Mutex<Durable>,
    changed: Condvar,
    /// A durable change is answered and not yet in the B-tree: reads wait before their
    /// snapshot. Set and cleared under `state`'s lock; read without it on the fast path.
    commit_pending: AtomicBool,
    /// A read waits at the gate: the writer commits its held transaction rather than carry
    /// on (`held.rs`). Cleared with `commit_pending`.
    commit_wanted: AtomicBool,
}

#[derive(Default)]
struct Durable {
    /// Every commit numbered up to this one is durable.
    seq: u64,
    /// Moves on at each reopen: snapshots taken before it are of a closed database.
    generation: u64,
    /// The thread reopening the store, while it does: no other read goes on until the log is
    /// applied again.
    held_by: Option<std::thread::ThreadId>,
}

impl Visibility {
    /// The number of a commit about to become visible before it is durable.
    pub(super) fn number_next(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The number of the last commit made visible.
    pub(super) fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// The counter of [`Visibility::committed`], for a sync to read when it starts.
    pub(super) fn committed_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.committed)
    }

    /// The highest commit number known durable.
    pub(super) fn durable(&self) -> u64 {
        self.lock().seq
    }

    /// Commits up to `seq` are durable.
    pub(super) fn mark_durable(&self, seq: u64) {
        let mut state = self.lock();
        if seq > state.seq {
            state.seq = seq;
            self.changed.notify_all();
        }
    }

    /// Every commit made so far is durable (a synced commit or checkpoint covers them).
    pub(super) fn all_durable(&self) {
        self.mark_durable(self.committed());
    }

    /// A synced change is about to be answered before the B-tree commits it: reads on other
    /// threads wait before their snapshot until [`Visibility::commit_done`].
    pub(super) fn hold_for_commit(&self) {
        if self.commit_pending.load(Ordering::SeqCst) {
            return;
        }
        let _state = self.lock();
        self.commit_pending.store(true, Ordering::SeqCst);
    }

    /// The B-tree committed what [`Visibility::hold_for_commit`] waited for.
    pub(super) fn commit_done(&self) {
        let _state = self.lock();
        self.commit_pending.store(false, Ordering::SeqCst);
        self.commit_wanted.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// As [`Visibility::commit_done`], after a commit that may carry held batches: the lock
    /// is taken only when reads wait for one.
    pub(super) fn commit_done_if_pending(&self) {
        if self.commit_pending.load(Ordering::SeqCst) {
            self.commit_done();
        }
    }

    /// Whether a read waits at the gate for the B-tree's commit.
    pub(super) fn commit_wanted(&self) -> bool {
        self.commit_wanted.load(Ordering::SeqCst)
    }

    /// Waits, before a read takes its snapshot, until no answered change waits for the B-tree.
    pub(super) fn wait_for_commit(&self) {
        if !self.commit_pending.load(Ordering::SeqCst) || EXEMPT.with(Cell::get) {
            return;
        }
        let mut state = self.lock();
        while self.commit_pending.load(Ordering::SeqCst) {
            self.commit_wanted.store(true, Ordering::SeqCst);
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The store is about to reopen: reads on other threads wait until
    /// [`Visibility::reopened`]; this thread's (the reopen's own) go on.
    pub(super) fn hold(&self) {
        let mut state = self.lock();
        state.held_by = Some(std::thread::current().id());
        // A read waiting for a failed B-tree commit goes on to its snapshot and waits there for
        // the reopen, which applies the log again, and then takes a new one.
        self.commit_pending.store(false, Ordering::SeqCst);
        self.commit_wanted.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// The store reopened: what it holds now is durable, and reads whose snapshot came from
    /// before take a new one.
    pub(super) fn reopened(&self) {
        let mut state = self.lock();
        state.seq = state.seq.max(self.committed());
        state.generation += 1;
        state.held_by = None;
        self.changed.notify_all();
    }

    /// The generation a read starts in (before it takes its snapshot).
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Waits until the store has reopened since `generation`, at most `limit`; whether it has.
    pub(super) fn wait_reopened_since(&self, generation: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while state.generation == generation {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits until everything a snapshot taken in `generation` can hold is durable. False when
    /// the store reopened meanwhile: the snapshot is of a closed database and must be taken
    /// again.
    pub(super) fn wait_visible(&self, generation: u64) -> bool {
        if EXEMPT.with(Cell::get) {
            return true;
        }
        let needed = self.committed();
        let mut state = self.lock();
        let this_thread = std::thread::current().id();
        if state.held_by == Some(this_thread) {
            return true;
        }
        loop {
            if state.generation != generation {
                return false;
            }
            if state.held_by.is_none() && state.seq >= needed {
                return true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
