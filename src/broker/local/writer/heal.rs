//! Healing after a failed commit: redb refuses every write once a commit has failed, so the
//! engine is poisoned; the writer then reopens the store by itself, with backoff, and makes an
//! empty durable commit to prove the disk works again. Once that succeeds the poison is lifted
//! and writes are accepted, without the application reopening anything.
//!
//! Safe because the in-memory structures only ever change after a commit that backs them: the
//! failed batch left nothing behind, so the store reopened from disk and the memory agree. The
//! one exception is a lazy (non-durable) commit still waiting for its flush when the failure
//! came: it may be gone from the disk while the memory has it, so then the engine stays
//! poisoned until it is reopened, as do writer panics.

use std::time::{Duration, Instant};

use super::Writer;

/// The first retry waits this long; each next one twice as long, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between two attempts.
const LONGEST_PAUSE: Duration = Duration::from_secs(10);
/// Attempts before the writer gives up and leaves the engine poisoned (about 15 minutes).
const MOST_ATTEMPTS: u32 = 100;

/// A healing in progress.
#[derive(Debug)]
pub(crate) struct Healing {
    attempts: u32,
    next_at: Instant,
    reason: String,
}

impl Healing {
    fn pause(attempts: u32) -> Duration {
        FIRST_PAUSE
            .saturating_mul(1 << attempts.min(16))
            .min(LONGEST_PAUSE)
    }
}

impl Writer {
    /// After a failed commit (the engine is about to be poisoned with `reason`): plans the
    /// first attempt to heal, unless healing is off or a lazy commit may have been lost with
    /// the failure. True when it planned one.
    pub(super) fn start_healing(&mut self, reason: &str) -> bool {
        if !self.settings.self_heal || self.unflushed_since.is_some() {
            return false;
        }
        self.healing = Some(Healing {
            attempts: 0,
            next_at: Instant::now() + Healing::pause(0),
            reason: reason.to_owned(),
        });
        true
    }

    /// When the next attempt to heal is due, if one is planned.
    pub(super) fn heal_due_at(&self) -> Option<Instant> {
        self.healing.as_ref().map(|healing| healing.next_at)
    }

    /// Makes the planned attempt if it is due: reopen, prove the disk with an empty durable
    /// commit, lift the poison. A failed attempt plans the next, or gives up.
    pub(super) fn heal_if_due(&mut self) {
        let Some(healing) = self.healing.as_mut() else {
            return;
        };
        if Instant::now() < healing.next_at {
            return;
        }
        healing.attempts += 1;
        let attempts = healing.attempts;
        let proved = self
            .store
            .reopen()
            .and_then(|()| self.store.write(|_| Ok(())));
        match proved {
            Ok(()) => {
                tracing::info!(
                    attempts,
                    after = %self.healing.as_ref().map_or("", |h| h.reason.as_str()),
                    "the store works again; writes are accepted"
                );
                self.healing = None;
                self.shared.unpoison();
            }
            Err(error) if attempts >= MOST_ATTEMPTS => {
                tracing::error!(%error, attempts, "the store still fails; giving up healing, reopen the engine");
                self.healing = None;
                self.shared.stop_healing();
                self.reopen_for_reads();
            }
            Err(error) => {
                let pause = Healing::pause(attempts);
                tracing::warn!(%error, attempts, next_in = ?pause, "the store still fails; trying again");
                if let Some(healing) = self.healing.as_mut() {
                    healing.next_at = Instant::now() + pause;
                }
                self.reopen_for_reads();
            }
        }
    }
}
