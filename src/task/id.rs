//! Task identifiers: UUID v7, so ids sort by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the UUID v7 ids ([`TaskId`], `WorkerId`) share: a fresh id (`new`, and `Default`),
/// and their stored form as one number and back. `$fresh` documents `new`.
macro_rules! uuid_v7_id {
    ($id:ident, $fresh:literal) => {
        impl $id {
            #[doc = $fresh]
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            /// The id as one number: its stored form (big-endian in a store key, so keys sort
            /// as ids do).
            pub fn as_u128(self) -> u128 {
                self.0.as_u128()
            }

            #[doc = concat!("The id stored as `value` by [`", stringify!($id), "::as_u128`].")]
            pub const fn from_u128(value: u128) -> Self {
                Self(uuid::Uuid::from_u128(value))
            }
        }

        impl Default for $id {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}
pub(crate) use uuid_v7_id;

/// The identifier of one task, a UUID v7.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(Uuid);

uuid_v7_id!(TaskId, "A fresh id for a task created now.");

impl TaskId {
    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0.hyphenated())
    }
}

/// The text given as a task id is not a UUID.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid task id {text:?}: expected a UUID such as 0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a69")]
pub struct ParseTaskIdError {
    text: String,
}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text.trim())
            .map(Self)
            .map_err(|_| ParseTaskIdError {
                text: text.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_round_trip() {
        let first = TaskId::new();
        let second = TaskId::new();
        assert!(first < second);
        assert!(first.as_u128() < second.as_u128());
        assert_eq!(TaskId::from_u128(first.as_u128()), first);
        let parsed: TaskId = first.to_string().parse().unwrap();
        assert_eq!(parsed, first);
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }
}
