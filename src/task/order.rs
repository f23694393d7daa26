//! The order of waiting tasks within a queue, shared by the store's waiting index and the
//! in-memory ready heap and delay index (which sort by it without knowing its byte encoding).

use crate::clock::Millis;

/// The order of waiting tasks within a queue: highest priority, then earliest due, then the
/// order they were queued in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ReadyOrder {
    /// Inverted priority, so that ascending order puts the highest priority first.
    pub(crate) inverted_priority: u32,
    /// When the task became (or becomes) due.
    pub(crate) due_at: Millis,
    /// Engine-wide sequence number: FIFO among equal priority and due time.
    pub(crate) seq: u64,
}

impl ReadyOrder {
    pub(crate) fn new(priority: i32, due_at: Millis, seq: u64) -> Self {
        Self {
            inverted_priority: Self::invert_priority(priority),
            due_at,
            seq,
        }
    }

    /// A priority as a number that sorts highest priority first.
    pub(crate) fn invert_priority(priority: i32) -> u32 {
        !((priority as u32) ^ (1 << 31))
    }

    #[cfg(test)]
    pub(crate) fn priority(&self) -> i32 {
        ((!self.inverted_priority) ^ (1 << 31)) as i32
    }
}
