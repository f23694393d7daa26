//! The sync thread alone: a sync queued behind a running one, with a log whose first sync
//! waits for the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::SyncThread;
use crate::store::LogSync;
use crate::store::log::LogFile;

/// A log whose first sync waits until the test releases it, then returns what the test chose;
/// it counts the syncs that ran.
#[derive(Default)]
struct HeldLog {
    state: Mutex<Held>,
    changed: Condvar,
    syncs: AtomicU64,
}

#[derive(Default)]
struct Held {
    holding: bool,
    released: Option<bool>,
}

impl HeldLog {
    fn wait_until_holding(&self) {
        let mut state = self.state.lock().unwrap();
        while !state.holding {
            let (next, timeout) = self
                .changed
                .wait_timeout(state, Duration::from_secs(10))
                .unwrap();
            assert!(!timeout.timed_out(), "the first sync never started");
            state = next;
        }
    }

    fn release(&self, succeed: bool) {
        self.state.lock().unwrap().released = Some(succeed);
        self.changed.notify_all();
    }
}

impl LogFile for HeldLog {
    fn len(&self) -> std::io::Result<u64> {
        Ok(0)
    }

    fn read_at(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn write_at(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let first = self.syncs.fetch_add(1, Ordering::SeqCst) == 0;
        if !first {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap();
        state.holding = true;
        self.changed.notify_all();
        loop {
            match state.released {
                Some(true) => return Ok(()),
                Some(false) => return Err(std::io::Error::other("injected sync failure")),
                None => state = self.changed.wait(state).unwrap(),
            }
        }
    }
}

/// The thread, a held log, the records' counter, and a sync of the first record under way.
fn first_sync_held() -> (SyncThread, Arc<HeldLog>, Arc<AtomicU64>) {
    let thread = SyncThread::spawn().unwrap();
    let log = Arc::new(HeldLog::default());
    let appended = Arc::new(AtomicU64::new(1));
    thread
        .jobs
        .send(LogSync::new(log.clone(), 1, Arc::clone(&appended)))
        .unwrap();
    log.wait_until_holding();
    (thread, log, appended)
}

/// Hands the thread a sync asked for by the commit numbered `seq`.
fn queue_sync(thread: &SyncThread, log: &Arc<HeldLog>, appended: &Arc<AtomicU64>, seq: u64) {
    thread
        .jobs
        .send(LogSync::new(log.clone(), seq, Arc::clone(appended)))
        .unwrap();
}

#[test]
fn a_sync_queued_behind_a_running_one_covers_every_record_appended_before_it_starts() {
    let (thread, log, appended) = first_sync_held();
    // The writer queues a sync for record 2, then appends record 3 (no third sync is queued:
    // two are outstanding).
    queue_sync(&thread, &log, &appended, 2);
    appended.store(3, Ordering::Release);
    log.release(true);

    let (seq, result) = thread.receive(1);
    assert_eq!((seq, result.is_ok()), (1, true));
    let (seq, result) = thread.receive(2);
    assert_eq!(
        (seq, result.is_ok()),
        (3, true),
        "the queued sync must cover record 3, appended before it started"
    );
    assert_eq!(log.syncs.load(Ordering::SeqCst), 2);

    // A sync asked for record 3 after that finds it covered and does not run.
    queue_sync(&thread, &log, &appended, 3);
    let (seq, result) = thread.receive(3);
    assert_eq!((seq, result.is_ok()), (3, true));
    assert_eq!(
        log.syncs.load(Ordering::SeqCst),
        2,
        "a covered sync ran again"
    );
    drop(thread.jobs);
    thread.handle.join().unwrap();
}

#[test]
fn after_a_failed_sync_the_one_queued_behind_it_never_runs() {
    let (thread, log, appended) = first_sync_held();
    queue_sync(&thread, &log, &appended, 2);
    appended.store(2, Ordering::Release);
    log.release(false);

    let (seq, result) = thread.receive(1);
    assert_eq!((seq, result.is_ok()), (1, false));
    // The thread ended without running the queued sync: the writer reads that as its failure.
    let (seq, result) = thread.receive(2);
    assert_eq!(seq, 2);
    let error = result.expect_err("a sync after a failed one was taken as durable");
    assert!(error.to_string().contains("sync thread ended"), "{error}");
    assert_eq!(
        log.syncs.load(Ordering::SeqCst),
        1,
        "the sync queued behind a failed one ran"
    );
    thread.handle.join().unwrap();
}
