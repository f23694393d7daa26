//! In-memory structures that feed the workers: the lock-free ready heap per queue and the
//! due-time index of scheduled and retrying tasks. Both are caches of the store's waiting
//! index, filled only after a commit and rebuilt on open.

mod delay;
mod ready;

pub(crate) use delay::DelayIndex;
#[cfg(feature = "internals")]
pub(crate) use ready::QueueSelection;
pub(crate) use ready::{ReadyHeap, ReadyTask};
