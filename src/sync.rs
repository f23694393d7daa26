//! The synchronisation primitives of the engine's own hand-offs that loom checks: the timer's
//! wake flag and stop flag, the poison flag, the delay index's transfer lock, and the lease table's lock. A normal
//! build re-exports std; `RUSTFLAGS="--cfg fq_loom" cargo test --release --lib loom` swaps in
//! loom's types (as tokio's internal `loom` module does), so the `loom_*` models run the real
//! code. The cfg is our own: `--cfg loom` would also put tokio into its loom mode, which has
//! no `net`. Only what a model exercises goes through here: crossbeam's skiplists and
//! channels and tokio's `Notify` and `oneshot` are out of loom's reach.

#[cfg(not(all(test, fq_loom)))]
pub(crate) use std::sync::atomic::AtomicBool;
#[cfg(not(all(test, fq_loom)))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

#[cfg(all(test, fq_loom))]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(all(test, fq_loom))]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(all(test, fq_loom))]
pub(crate) use loom_condvar::Condvar;

/// loom's condition variable lacks `wait_timeout_while`; this one has it. Under loom a
/// timeout never fires, so a model whose sleeper is woken only by its timeout deadlocks and
/// fails: every wake-up the engine relies on must come from a notification.
#[cfg(all(test, fq_loom))]
mod loom_condvar {
    use std::sync::LockResult;
    use std::time::Duration;

    use loom::sync::MutexGuard;

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        /// One wait, as std's `wait_timeout` (the timer's deliberately broken signal only).
        pub(crate) fn wait_timeout<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            _timeout: Duration,
        ) -> LockResult<(MutexGuard<'a, T>, bool)> {
            let guard = self
                .0
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok((guard, false))
        }

        /// As std's: waits while `condition` holds; the second value is "timed out" (never).
        pub(crate) fn wait_timeout_while<'a, T, F: FnMut(&mut T) -> bool>(
            &self,
            mut guard: MutexGuard<'a, T>,
            _timeout: Duration,
            mut condition: F,
        ) -> LockResult<(MutexGuard<'a, T>, bool)> {
            while condition(&mut *guard) {
                // loom never poisons a lock: nothing panics inside one in a model.
                guard = self
                    .0
                    .wait(guard)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            Ok((guard, false))
        }
    }
}

/// A loom thread with room for crossbeam's skiplists: they draw random tower heights, so a
/// model's stack depth varies from run to run, and loom's default coroutine stack overflowed
/// in one or two runs of eight in a debug build (2026-12-04). Models spawn every thread that
/// touches a skiplist through this.
#[cfg(all(test, fq_loom))]
pub(crate) fn loom_spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .unwrap_or_else(|e| panic!("a loom thread: {e}"))
}

/// A model body run on a [`loom_spawn`] thread (the model's own thread keeps loom's small
/// default stack, and crossbeam's epoch collector may run its deferred frees on any thread
/// that touches a skiplist, dropping included).
#[cfg(all(test, fq_loom))]
pub(crate) fn loom_body(
    body: impl Fn() + Send + Sync + 'static,
) -> impl Fn() + Send + Sync + 'static {
    let body = std::sync::Arc::new(body);
    move || {
        let body = std::sync::Arc::clone(&body);
        loom_spawn(move || body())
            .join()
            .unwrap_or_else(|_| panic!("the model's body panicked"));
    }
}
