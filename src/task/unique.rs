//! Unique keys (README "Unique tasks"): the key and period a task is queued with, the rule
//! for which statuses hold a key, and the checks a key must pass. Plain values: the index
//! that enforces them is the store's (`store::write_tables`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Payload, TaskStatus};
use crate::clock::Millis;

/// The longest unique key, in bytes (a key derived from a task's arguments included).
pub const MAX_UNIQUE_KEY_BYTES: usize = 1024;

/// The longest `unique_for` period: 365 days, as the longest delay.
pub const MAX_UNIQUE_FOR: Duration = Duration::from_secs(365 * 86_400);

/// The unique key of a stored task and how long it holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UniqueSpec {
    pub(crate) key: String,
    /// `unique_for`: the key is also held after the task finishes, until this long after it
    /// was created. `None`: held only until it finishes.
    pub(crate) for_ms: Option<u64>,
}

impl UniqueSpec {
    /// Until when a finished task still holds its key: `created_at` plus the period, if any.
    pub(crate) fn holds_until(&self, created_at: Millis) -> Option<Millis> {
        let period = i64::try_from(self.for_ms?).ok()?;
        Some(created_at.saturating_add(period))
    }
}

/// True while a task in `status` holds its unique key whatever its period: until it is
/// finished. FORWARDED counts as not finished: its outcome is still to come back from
/// RabbitMQ, so the producer's key stays held until then (or until retention deletes it).
pub(crate) fn holds_key(status: TaskStatus) -> bool {
    !matches!(
        status,
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
    )
}

/// Checks a unique key: not empty, at most [`MAX_UNIQUE_KEY_BYTES`], no control characters
/// (keys are printed by `fq show` and matched by `fq list --unique-key`).
///
/// # Errors
/// A lowercase reason, for the caller to pair with the field.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if key.len() > MAX_UNIQUE_KEY_BYTES {
        return Err(format!(
            "must be at most {MAX_UNIQUE_KEY_BYTES} bytes, got {} bytes",
            key.len()
        ));
    }
    if let Some((at, c)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!("contains the control character {c:?} at byte {at}"));
    }
    Ok(())
}

/// Checks a `unique_for` period: more than zero, at most [`MAX_UNIQUE_FOR`].
///
/// # Errors
/// A lowercase reason, for the caller to pair with the field.
pub(crate) fn check_period(period: Duration) -> Result<(), String> {
    if period.is_zero() {
        return Err("must be greater than zero".into());
    }
    if period > MAX_UNIQUE_FOR {
        return Err(format!(
            "must be at most 365 days, got {}s",
            period.as_secs()
        ));
    }
    Ok(())
}

/// The key derived from a task's name and arguments: `<name>:<arguments>`, the arguments as
/// JSON with every object's keys sorted, so the same arguments give the same key whatever
/// order they were written in. The arguments are kept whole rather than hashed (no collision
/// can make two different tasks duplicates), which is why a key derived from long arguments
/// can exceed [`MAX_UNIQUE_KEY_BYTES`] and be refused.
pub(crate) fn derived_key(name: &str, payload: &Payload) -> String {
    let canonical = sorted(payload.to_value());
    format!("{name}:{canonical}")
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (key, value) in entries {
                out.insert(key, sorted(value));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_ignore_key_order_and_differ_by_value() {
        let a =
            Payload::from_json_str(r#"{"args":[1],"kwargs":{"b":2,"a":{"y":1,"x":2}}}"#).unwrap();
        let b =
            Payload::from_json_str(r#"{"kwargs":{"a":{"x":2,"y":1},"b":2},"args":[1]}"#).unwrap();
        let c =
            Payload::from_json_str(r#"{"args":[1],"kwargs":{"b":3,"a":{"y":1,"x":2}}}"#).unwrap();
        assert_eq!(derived_key("t", &a), derived_key("t", &b));
        assert_ne!(derived_key("t", &a), derived_key("t", &c));
        assert_ne!(derived_key("t", &a), derived_key("u", &a));
        assert_eq!(
            derived_key("t", &a),
            r#"t:{"args":[1],"kwargs":{"a":{"x":2,"y":1},"b":2}}"#
        );
    }

    #[test]
    fn bad_keys_and_periods_are_refused_with_a_reason() {
        assert!(check_key("report:2026-12").is_ok());
        assert_eq!(check_key(""), Err("must not be empty".into()));
        assert!(check_key(&"k".repeat(MAX_UNIQUE_KEY_BYTES)).is_ok());
        assert!(
            check_key(&"k".repeat(MAX_UNIQUE_KEY_BYTES + 1))
                .unwrap_err()
                .contains("at most 1024 bytes")
        );
        assert!(check_key("a\nb").unwrap_err().contains("control character"));
        assert!(check_period(Duration::ZERO).is_err());
        assert!(check_period(MAX_UNIQUE_FOR).is_ok());
        assert!(check_period(MAX_UNIQUE_FOR + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn finished_statuses_release_and_the_rest_hold() {
        for status in [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Retrying,
            TaskStatus::Forwarded,
        ] {
            assert!(holds_key(status), "{status:?}");
        }
        for status in [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ] {
            assert!(!holds_key(status), "{status:?}");
        }
        let spec = UniqueSpec {
            key: "k".into(),
            for_ms: Some(1000),
        };
        assert_eq!(spec.holds_until(5), Some(1005));
        let spec = UniqueSpec {
            key: "k".into(),
            for_ms: None,
        };
        assert_eq!(spec.holds_until(5), None);
    }
}
