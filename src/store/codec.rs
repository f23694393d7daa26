//! The stored form of a task record: a format-version byte, the postcard body, and a CRC-32 of
//! both, so that a flipped byte is caught instead of decoded into a wrong task.

use super::StoreError;
#[cfg(test)]
use crate::task::StoredFailure;
#[cfg(test)]
use crate::task::{FailureKind, TaskStatus};
use crate::task::{StoredTask, TaskId};

/// The record format this build writes for a task without a RabbitMQ route.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// The record format of a task with a RabbitMQ route (`StoredTask::route`): version 1's body
/// followed by the postcard route. Only such records use it, so a store that never carried
/// outcomes keeps what older builds read.
pub(crate) const FORMAT_VERSION_ROUTED: u8 = 2;

/// Why stored bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("record is {0} bytes, too short to be a task record")]
    TooShort(usize),
    #[error("record format version {0} is newer than this build reads ({FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("record checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record body does not decode: {0}")]
    Body(String),
}

/// Encodes a record: version byte, postcard body, CRC-32 (little-endian) of the two.
pub(crate) fn encode(task: &StoredTask) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + task.payload.len());
    let version = if task.route.is_some() {
        FORMAT_VERSION_ROUTED
    } else {
        FORMAT_VERSION
    };
    bytes.push(version);
    // Serializing plain owned data into a Vec cannot fail; if postcard ever did, the record
    // would be caught on read by its checksum instead of being silently wrong.
    if let Ok(body) = postcard::to_extend(task, bytes) {
        bytes = body;
    } else {
        bytes = vec![version];
    }
    if let Some(route) = &task.route {
        match postcard::to_extend(route, bytes) {
            Ok(body) => bytes = body,
            Err(_) => bytes = vec![version],
        }
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes bytes written by [`encode`], checking version and checksum first.
pub(crate) fn decode(bytes: &[u8]) -> Result<StoredTask, DecodeError> {
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
    if framed[0] != FORMAT_VERSION && framed[0] != FORMAT_VERSION_ROUTED {
        return Err(DecodeError::UnknownVersion(framed[0]));
    }
    let (mut task, mut rest) = postcard::take_from_bytes::<StoredTask>(&framed[1..])
        .map_err(|e| DecodeError::Body(e.to_string()))?;
    if framed[0] == FORMAT_VERSION_ROUTED {
        let (route, after) = postcard::take_from_bytes::<crate::task::Route>(rest)
            .map_err(|e| DecodeError::Body(e.to_string()))?;
        task.route = Some(route);
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
        newer[0] = FORMAT_VERSION_ROUTED + 1;
        let body_len = newer.len() - 4;
        let crc = crc32fast::hash(&newer[..body_len]);
        newer[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&newer),
            Err(DecodeError::UnknownVersion(FORMAT_VERSION_ROUTED + 1))
        );
    }

    #[test]
    fn routed_records_round_trip_and_plain_ones_keep_version_1() {
        use crate::task::Route;
        let plain = sample_task();
        let plain_bytes = encode(&plain);
        assert_eq!(plain_bytes[0], FORMAT_VERSION);
        for route in [Route::Reported, Route::ReplyTo("fq.replies.x".into())] {
            let mut task = sample_task();
            task.route = Some(route);
            let bytes = encode(&task);
            assert_eq!(bytes[0], FORMAT_VERSION_ROUTED);
            assert_eq!(decode(&bytes).unwrap(), task);
            // The body is version 1's, followed by the route.
            assert_eq!(
                bytes[1..plain_bytes.len() - 4],
                plain_bytes[1..plain_bytes.len() - 4]
            );
            for len in 0..bytes.len() {
                assert!(decode(&bytes[..len]).is_err());
            }
        }
    }
}
