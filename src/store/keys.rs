//! Key encodings: fixed-width big-endian fields so that comparing bytes compares values.

use crate::clock::Millis;
use crate::task::{ReadyOrder, TaskId, TaskStatus};

/// An `i64` as 8 bytes that sort like the number (sign bit flipped).
pub(crate) fn encode_i64(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`encode_i64`].
pub(crate) fn decode_i64(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// A priority as 4 bytes that sort highest priority first.
#[cfg(test)]
pub(crate) fn encode_priority(priority: i32) -> [u8; 4] {
    ReadyOrder::invert_priority(priority).to_be_bytes()
}

/// The inverse of [`encode_priority`].
#[cfg(test)]
pub(crate) fn decode_priority(bytes: [u8; 4]) -> i32 {
    ((!u32::from_be_bytes(bytes)) ^ (1 << 31)) as i32
}

/// Length of the fixed part of a waiting key after the queue name and its 0 terminator.
const WAITING_TAIL: usize = 4 + 8 + 8;

/// The WAITING key of a task: queue name, 0, inverted priority, due time, sequence. Queue names
/// never contain a 0 byte, so the terminator keeps queues apart.
pub(crate) fn waiting_key(queue: &str, order: ReadyOrder) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 1 + WAITING_TAIL);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key.extend_from_slice(&order.inverted_priority.to_be_bytes());
    key.extend_from_slice(&encode_i64(order.due_at));
    key.extend_from_slice(&order.seq.to_be_bytes());
    key
}

/// Splits a WAITING key; `None` when it is not one this crate wrote.
pub(crate) fn parse_waiting_key(key: &[u8]) -> Option<(&str, ReadyOrder)> {
    let split = key.len().checked_sub(WAITING_TAIL + 1)?;
    if key[split] != 0 {
        return None;
    }
    let queue = std::str::from_utf8(&key[..split]).ok()?;
    let tail = &key[split + 1..];
    let inverted_priority = u32::from_be_bytes(tail[0..4].try_into().ok()?);
    let due_at = decode_i64(tail[4..12].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[12..20].try_into().ok()?);
    Some((
        queue,
        ReadyOrder {
            inverted_priority,
            due_at,
            seq,
        },
    ))
}

/// The length of a FINISHED key.
pub(crate) const FINISHED_KEY_BYTES: usize = 25;

/// The FINISHED key of a task: status code, finished time, id.
pub(crate) fn finished_key(
    status: TaskStatus,
    finished_at: Millis,
    id: TaskId,
) -> [u8; FINISHED_KEY_BYTES] {
    let mut key = [0u8; FINISHED_KEY_BYTES];
    key[0] = status.code();
    key[1..9].copy_from_slice(&encode_i64(finished_at));
    key[9..25].copy_from_slice(&id.as_u128().to_be_bytes());
    key
}

/// Splits a FINISHED key; `None` when it is not one this crate wrote.
pub(crate) fn parse_finished_key(key: &[u8]) -> Option<(TaskStatus, Millis, TaskId)> {
    if key.len() != 25 {
        return None;
    }
    let status = TaskStatus::from_code(key[0])?;
    let finished_at = decode_i64(key[1..9].try_into().ok()?);
    let id = TaskId::from_u128(u128::from_be_bytes(key[9..25].try_into().ok()?));
    Some((status, finished_at, id))
}

/// Who holds a unique key (a UNIQUE value), and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UniqueHolder {
    pub(crate) id: TaskId,
    /// `None` while the task is not finished; once finished with a `unique_for` period, the
    /// time the period ends.
    pub(crate) finished_until: Option<Millis>,
}

impl UniqueHolder {
    /// True when the key is held at `now`.
    pub(crate) fn holds_at(&self, now: Millis) -> bool {
        self.finished_until.is_none_or(|until| now < until)
    }
}

/// A UNIQUE value: task id (u128 BE), 0 (not finished) or 1 (finished), period end (i64 BE).
pub(crate) fn unique_value(holder: UniqueHolder) -> [u8; 25] {
    let mut value = [0u8; 25];
    value[0..16].copy_from_slice(&holder.id.as_u128().to_be_bytes());
    if let Some(until) = holder.finished_until {
        value[16] = 1;
        value[17..25].copy_from_slice(&encode_i64(until));
    }
    value
}

/// Splits a UNIQUE value; `None` when it is not one this crate wrote.
pub(crate) fn parse_unique_value(value: &[u8]) -> Option<UniqueHolder> {
    if value.len() != 25 {
        return None;
    }
    let id = TaskId::from_u128(u128::from_be_bytes(value[0..16].try_into().ok()?));
    let finished_until = match value[16] {
        0 => None,
        1 => Some(decode_i64(value[17..25].try_into().ok()?)),
        _ => return None,
    };
    Some(UniqueHolder { id, finished_until })
}

/// The COUNTS key of (queue, status): queue name, 0, status code.
pub(crate) fn count_key(queue: &str, status: TaskStatus) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 2);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key.push(status.code());
    key
}

/// Splits a COUNTS key; `None` when it is not one this crate wrote.
pub(crate) fn parse_count_key(key: &[u8]) -> Option<(&str, TaskStatus)> {
    let (&code, rest) = key.split_last()?;
    let (&zero, queue) = rest.split_last()?;
    if zero != 0 {
        return None;
    }
    Some((
        std::str::from_utf8(queue).ok()?,
        TaskStatus::from_code(code)?,
    ))
}

/// The first FINISHED key of `status` (inclusive lower bound of its range).
pub(crate) fn finished_range_start(status: TaskStatus) -> [u8; FINISHED_KEY_BYTES] {
    let mut key = [0u8; FINISHED_KEY_BYTES];
    key[0] = status.code();
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_encodings_sort_like_numbers() {
        let values = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in values.windows(2) {
            assert!(encode_i64(pair[0]) < encode_i64(pair[1]));
        }
        for v in values {
            assert_eq!(decode_i64(encode_i64(v)), v);
        }
        let priorities = [i32::MAX, 10, 5, 0, -1, i32::MIN];
        for pair in priorities.windows(2) {
            assert!(
                encode_priority(pair[0]) < encode_priority(pair[1]),
                "{pair:?}"
            );
        }
        for p in priorities {
            assert_eq!(decode_priority(encode_priority(p)), p);
        }
    }

    #[test]
    fn waiting_keys_order_priority_then_due_then_sequence() {
        let a = waiting_key("q", ReadyOrder::new(5, 100, 9));
        let b = waiting_key("q", ReadyOrder::new(5, 100, 10));
        let c = waiting_key("q", ReadyOrder::new(5, 101, 1));
        let d = waiting_key("q", ReadyOrder::new(1, 0, 0));
        assert!(a < b && b < c && c < d);
        let (queue, order) = parse_waiting_key(&c).unwrap();
        assert_eq!(queue, "q");
        assert_eq!(order.priority(), 5);
        assert_eq!(order.due_at, 101);
        assert_eq!(order.seq, 1);
        assert!(parse_waiting_key(b"short").is_none());
        assert!(parse_waiting_key(&[1u8; 30]).is_none());
    }

    #[test]
    fn finished_keys_round_trip() {
        let id = TaskId::new();
        let key = finished_key(TaskStatus::Failed, 42, id);
        assert_eq!(parse_finished_key(&key), Some((TaskStatus::Failed, 42, id)));
        assert!(finished_range_start(TaskStatus::Failed) < key);
        assert!(parse_finished_key(&key[1..]).is_none());
    }

    #[test]
    fn unique_values_round_trip() {
        let id = TaskId::new();
        for finished_until in [None, Some(-5), Some(1_700_000_000_000)] {
            let holder = UniqueHolder { id, finished_until };
            assert_eq!(parse_unique_value(&unique_value(holder)), Some(holder));
        }
        let mut bad = unique_value(UniqueHolder {
            id,
            finished_until: None,
        });
        bad[16] = 2;
        assert_eq!(parse_unique_value(&bad), None);
        assert_eq!(parse_unique_value(&bad[1..]), None);
        let held = UniqueHolder {
            id,
            finished_until: Some(10),
        };
        assert!(held.holds_at(9) && !held.holds_at(10));
    }
}
