//! The stored form of a task record, and of the side tables' rows (attempt history, outcome
//! reports, schedules): a format-version byte, the postcard body, and a CRC-32 of both, so that a
//! flipped byte is caught instead of decoded into a wrong value.

use super::StoreError;
#[cfg(test)]
use crate::task::StoredFailure;
#[cfg(test)]
use crate::task::{FailureKind, TaskStatus};
use crate::task::{Route, StoredAttempt, StoredTask, TaskId, UniqueSpec};

/// The record format this build writes for a task without a RabbitMQ route.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// The record format of a task with a RabbitMQ route (`StoredTask::route`): version 1's body
/// followed by the postcard route. Only such records use it, so a store that never carried
/// outcomes keeps what older builds read.
pub(crate) const FORMAT_VERSION_ROUTED: u8 = 2;
/// The record format of a task with a unique key (`StoredTask::unique`): version 1's body,
/// the postcard `Option<Route>`, then the postcard unique spec. Only such records use it, so
/// stores (and benchmarks) without unique tasks keep versions 1 and 2.
pub(crate) const FORMAT_VERSION_UNIQUE: u8 = 3;
/// The record format of a task that ended a run or was cancelled by someone who said who
/// (`StoredTask::last_attempt`, `StoredTask::cancelled_by`): version 1's body, then the
/// postcard [`Tail`]. Only such records use it.
pub(crate) const FORMAT_VERSION_TAIL: u8 = 4;
/// The newest record format this build reads.
const NEWEST_FORMAT: u8 = FORMAT_VERSION_TAIL;

/// What a format-4 record holds after version 1's body.
#[derive(serde::Serialize, serde::Deserialize)]
struct Tail {
    route: Option<Route>,
    unique: Option<UniqueSpec>,
    last_attempt: Option<StoredAttempt>,
    cancelled_by: Option<String>,
}

/// Why stored bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record is {0} bytes, too short")]
    TooShort(usize),
    #[error("record format version {found} is not one this build reads (newest: {newest})")]
    UnknownVersion { found: u8, newest: u8 },
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record body does not decode: {0}")]
    Body(String),
}

/// Encodes a record: version byte, postcard body, CRC-32 (little-endian) of the two.
pub(crate) fn encode(task: &StoredTask) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + task.payload.len());
    let tail = task.last_attempt.is_some() || task.cancelled_by.is_some();
    let version = match (&task.route, &task.unique) {
        _ if tail => FORMAT_VERSION_TAIL,
        (_, Some(_)) => FORMAT_VERSION_UNIQUE,
        (Some(_), None) => FORMAT_VERSION_ROUTED,
        (None, None) => FORMAT_VERSION,
    };
    bytes.push(version);
    // Serializing plain owned data into a Vec cannot fail; if postcard ever did, the record
    // would be caught on read by its checksum instead of being silently wrong.
    let body = postcard::to_extend(task, bytes).and_then(|bytes| {
        if tail {
            let tail = Tail {
                route: task.route.clone(),
                unique: task.unique.clone(),
                last_attempt: task.last_attempt.clone(),
                cancelled_by: task.cancelled_by.clone(),
            };
            return postcard::to_extend(&tail, bytes);
        }
        match (&task.route, &task.unique) {
            (route, Some(unique)) => postcard::to_extend(route, bytes)
                .and_then(|bytes| postcard::to_extend(unique, bytes)),
            (Some(route), None) => postcard::to_extend(route, bytes),
            (None, None) => Ok(bytes),
        }
    });
    seal(body.unwrap_or_else(|_| vec![version]))
}

/// Appends the CRC-32 (little-endian) of everything before it.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The version byte and the body of sealed bytes, once their length and checksum hold.
fn unseal(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if bytes.len() < 1 + 4 {
        return Err(DecodeError::TooShort(bytes.len()));
    }
    let (framed, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc_bytes);
    let stored = u32::from_le_bytes(stored);
    let computed = crc32fast::hash(framed);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok((framed[0], &framed[1..]))
}

/// Encodes a side table's row in format `version`, framed like a task record.
pub(super) fn encode_row<T: serde::Serialize + ?Sized>(version: u8, row: &T) -> Vec<u8> {
    // Plain owned data into a Vec does not fail to serialize; were it to, the row would be
    // refused by its checksum on read instead of being read wrong.
    seal(postcard::to_extend(row, vec![version]).unwrap_or_else(|_| vec![version]))
}

/// Decodes a row written by [`encode_row`] in format `version`, the only one this build reads.
pub(super) fn decode_row<T: serde::de::DeserializeOwned>(
    version: u8,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    let (found, body) = unseal(bytes)?;
    if found != version {
        return Err(DecodeError::UnknownVersion {
            found,
            newest: version,
        });
    }
    postcard::from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))
}

/// Decodes bytes written by [`encode`], checking version and checksum first.
pub(crate) fn decode(bytes: &[u8]) -> Result<StoredTask, DecodeError> {
    let (version, body_bytes) = unseal(bytes)?;
    if !(FORMAT_VERSION..=NEWEST_FORMAT).contains(&version) {
        return Err(DecodeError::UnknownVersion {
            found: version,
            newest: NEWEST_FORMAT,
        });
    }
    let body = |e: postcard::Error| DecodeError::Body(e.to_string());
    let (mut task, mut rest) = postcard::take_from_bytes::<StoredTask>(body_bytes).map_err(body)?;
    if version == FORMAT_VERSION_ROUTED {
        let (route, after) = postcard::take_from_bytes::<Route>(rest).map_err(body)?;
        task.route = Some(route);
        rest = after;
    } else if version == FORMAT_VERSION_UNIQUE {
        let (route, after) = postcard::take_from_bytes::<Option<Route>>(rest).map_err(body)?;
        let (unique, after) = postcard::take_from_bytes::<UniqueSpec>(after).map_err(body)?;
        task.route = route;
        task.unique = Some(unique);
        rest = after;
    } else if version == FORMAT_VERSION_TAIL {
        let (tail, after) = postcard::take_from_bytes::<Tail>(rest).map_err(body)?;
        task.route = tail.route;
        task.unique = tail.unique;
        task.last_attempt = tail.last_attempt;
        task.cancelled_by = tail.cancelled_by;
        rest = after;
    }
    if !rest.is_empty() {
        return Err(DecodeError::Body(format!(
            "{} unexpected bytes after the record",
            rest.len()
        )));
    }
    Ok(task)
}

/// Decodes the record of task `id`; a record that does not decode is that task's
/// [`StoreError::CorruptRecord`].
pub(crate) fn decode_task(id: TaskId, bytes: &[u8]) -> Result<StoredTask, StoreError> {
    decode(bytes).map_err(|e| StoreError::CorruptRecord {
        id,
        detail: e.to_string(),
    })
}

#[cfg(test)]
pub(crate) fn sample_task() -> StoredTask {
    StoredTask {
        name: "myapp.tasks.send_email".into(),
        queue: "emails".into(),
        priority: 5,
        payload: r#"{"args":[],"kwargs":{"to":"a@example.com"}}"#.into(),
        status: TaskStatus::Retrying,
        attempts: 2,
        max_retries: 3,
        timeout_ms: Some(30_000),
        retry_delay_ms: None,
        created_at: 1_700_000_000_000,
        scheduled_at: 1_700_000_000_000,
        due_at: 1_700_000_010_000,
        seq: 77,
        started_at: Some(1_700_000_000_500),
        finished_at: None,
        result: None,
        error: Some(StoredFailure {
            message: "smtp timeout".into(),
            kind: FailureKind::Error,
        }),
        route: None,
        unique: None,
        last_attempt: None,
        cancelled_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let task = sample_task();
        let bytes = encode(&task);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), task);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(&sample_task());
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut mutant = bytes.clone();
                mutant[index] ^= 1 << bit;
                assert!(
                    decode(&mutant).is_err(),
                    "flip of bit {bit} in byte {index}"
                );
            }
        }
    }

    #[test]
    fn truncation_garbage_and_newer_versions_are_errors() {
        let bytes = encode(&sample_task());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err());
        }
        assert_eq!(decode(&[]), Err(DecodeError::TooShort(0)));
        let mut newer = bytes.clone();
        newer[0] = NEWEST_FORMAT + 1;
        let body_len = newer.len() - 4;
        let crc = crc32fast::hash(&newer[..body_len]);
        newer[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&newer),
            Err(DecodeError::UnknownVersion {
                found: NEWEST_FORMAT + 1,
                newest: NEWEST_FORMAT
            })
        );
    }

    /// Asserts `task` encodes as `version`, round-trips, and that its body starts with the
    /// plain record's body (the extra fields follow it), and that no prefix of it decodes.
    fn assert_extends_plain(task: &StoredTask, version: u8) {
        let plain_bytes = encode(&sample_task());
        let bytes = encode(task);
        assert_eq!(bytes[0], version);
        assert_eq!(decode(&bytes).unwrap(), *task);
        assert_eq!(
            bytes[1..plain_bytes.len() - 4],
            plain_bytes[1..plain_bytes.len() - 4]
        );
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn routed_records_round_trip_and_plain_ones_keep_version_1() {
        assert_eq!(encode(&sample_task())[0], FORMAT_VERSION);
        for route in [Route::Reported, Route::ReplyTo("fq.replies.x".into())] {
            let mut task = sample_task();
            task.route = Some(route);
            assert_extends_plain(&task, FORMAT_VERSION_ROUTED);
        }
    }

    #[test]
    fn records_with_a_last_attempt_or_a_canceller_use_format_4_with_every_other_field() {
        let attempt = StoredAttempt {
            attempt: 2,
            started_at: 1_700_000_000_500,
            finished_at: 1_700_000_000_900,
            worker: Some(42),
            outcome: crate::task::AttemptOutcome::Error,
            error: Some(StoredFailure {
                message: "smtp timeout".into(),
                kind: FailureKind::Error,
            }),
        };
        let unique = UniqueSpec {
            key: "k".into(),
            for_ms: Some(5),
        };
        for (last_attempt, cancelled_by) in [
            (Some(attempt.clone()), None),
            (None, Some("fq cancel (pid 7)".to_owned())),
            (Some(attempt), Some("the API".to_owned())),
        ] {
            for (route, unique) in [
                (None, None),
                (Some(Route::ReplyTo("q".into())), Some(unique.clone())),
            ] {
                let mut task = sample_task();
                task.route = route;
                task.unique = unique;
                task.last_attempt = last_attempt.clone();
                task.cancelled_by = cancelled_by.clone();
                assert_extends_plain(&task, FORMAT_VERSION_TAIL);
            }
        }
    }

    #[test]
    fn unique_records_round_trip_with_and_without_a_route() {
        let routes = [
            None,
            Some(Route::Reported),
            Some(Route::ReplyTo("q".into())),
        ];
        for route in routes {
            for for_ms in [None, Some(3_600_000)] {
                let mut task = sample_task();
                task.route = route.clone();
                task.unique = Some(UniqueSpec {
                    key: "report:2026-12".into(),
                    for_ms,
                });
                assert_extends_plain(&task, FORMAT_VERSION_UNIQUE);
            }
        }
    }

    #[test]
    fn records_written_before_unique_keys_still_decode() {
        // Bytes of format 1 and 2 as builds before unique keys wrote them: the body alone,
        // and the body followed by the bare route.
        let task = sample_task();
        let mut v1 = vec![FORMAT_VERSION];
        v1 = postcard::to_extend(&task, v1).unwrap();
        let mut v2 = v1.clone();
        v2[0] = FORMAT_VERSION_ROUTED;
        v2 = postcard::to_extend(&Route::Reported, v2).unwrap();
        for mut bytes in [v1, v2] {
            let crc = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            let decoded = decode(&bytes).unwrap();
            assert_eq!(decoded.unique, None);
            let routed = bytes[0] == FORMAT_VERSION_ROUTED;
            assert_eq!(decoded.route.is_some(), routed);
            // Re-encoding gives the same bytes: nothing changes for tasks without a key.
            assert_eq!(encode(&decoded), bytes);
        }
    }
}
