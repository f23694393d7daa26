//! The message format fq publishes and consumes (README "RabbitMQ"): a JSON body
//! `{"task_id", "name", "payload": {"args", "kwargs"}}`, persistent, `application/json`,
//! `message_id` = task id, fq's priority mapped into AMQP's `0..=MAX_PRIORITY`, and fq's
//! metadata in headers. Pure encoding and decoding: no I/O, testable without a server.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::Millis;
use crate::config::check_name;
use crate::task::StoredTask;
use crate::task::{Payload, TaskId};

/// The queues' `x-max-priority`, and the highest AMQP priority fq publishes.
pub(crate) const MAX_PRIORITY: u8 = 10;

/// Header: which run this message is for, 1 for the first (absent or 0 also mean the first).
pub(crate) const H_ATTEMPT: &str = "attempt";
/// Header: retries allowed after the first run.
pub(crate) const H_MAX_RETRIES: &str = "max_retries";
/// Header: fq's own priority (any `i32`); the AMQP priority is this clamped to `0..=10`.
pub(crate) const H_PRIORITY: &str = "priority";
/// Header: the fq queue (informational; a consumer uses the queue it consumes from).
pub(crate) const H_QUEUE: &str = "queue";
/// Header: the per-run time limit in milliseconds.
pub(crate) const H_TIMEOUT_MS: &str = "timeout_ms";
/// Header: the base of the retry backoff in milliseconds.
pub(crate) const H_RETRY_DELAY_MS: &str = "retry_delay_ms";
/// Header: when the task was queued, milliseconds since the epoch.
pub(crate) const H_CREATED_AT: &str = "created_at";
/// Header: when the task was first allowed to run, milliseconds since the epoch.
pub(crate) const H_SCHEDULED_AT: &str = "scheduled_at";
/// Dead-letter header: why fq gave the message up.
pub(crate) const H_DEAD_REASON: &str = "dead_reason";
/// Dead-letter header: the failure kind (`error`, `timeout`, `unknown_task`, `undecodable`, ...).
pub(crate) const H_ERROR_KIND: &str = "error_kind";
/// Dead-letter header: when fq gave it up, milliseconds since the epoch.
pub(crate) const H_DEAD_AT: &str = "dead_at";

/// fq's priority in AMQP's range: `clamp(priority, 0, 10)`. RabbitMQ delivers higher first.
pub(crate) fn amqp_priority(priority: i32) -> u8 {
    u8::try_from(priority.clamp(0, i32::from(MAX_PRIORITY))).unwrap_or(0)
}

#[derive(Serialize)]
struct BodyOut<'a> {
    task_id: TaskId,
    name: &'a str,
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct BodyIn {
    #[serde(default)]
    task_id: Option<String>,
    name: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
}

/// A message ready to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

fn int(value: i64) -> AMQPValue {
    AMQPValue::LongLongInt(value)
}

/// The message for the next run of a task waiting in the outbox. Its `reply_to` names where
/// the run's start and outcome are reported: the queue the task's own message named (a retry
/// forwarded by the store that ran it), else `reply_to` (this store's reply queue).
pub(crate) fn encode(id: TaskId, task: &StoredTask, reply_to: &str) -> Result<Outgoing, String> {
    let payload: &RawValue = serde_json::from_str(&task.payload)
        .map_err(|e| format!("the stored payload is not JSON: {e}"))?;
    let body = serde_json::to_vec(&BodyOut {
        task_id: id,
        name: &task.name,
        payload,
    })
    .map_err(|e| format!("cannot encode the message body: {e}"))?;
    let mut headers = FieldTable::default();
    headers.insert(H_ATTEMPT.into(), int(i64::from(task.attempts) + 1));
    headers.insert(H_MAX_RETRIES.into(), int(i64::from(task.max_retries)));
    headers.insert(H_PRIORITY.into(), int(i64::from(task.priority)));
    headers.insert(
        H_QUEUE.into(),
        AMQPValue::LongString(LongString::from(task.queue.as_str())),
    );
    headers.insert(H_CREATED_AT.into(), int(task.created_at));
    headers.insert(H_SCHEDULED_AT.into(), int(task.scheduled_at));
    if let Some(timeout) = task.timeout_ms {
        headers.insert(
            H_TIMEOUT_MS.into(),
            int(i64::try_from(timeout).unwrap_or(i64::MAX)),
        );
    }
    if let Some(delay) = task.retry_delay_ms {
        headers.insert(
            H_RETRY_DELAY_MS.into(),
            int(i64::try_from(delay).unwrap_or(i64::MAX)),
        );
    }
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_priority(amqp_priority(task.priority))
        .with_message_id(ShortString::from(id.to_string()))
        .with_timestamp(u64::try_from(task.created_at.div_euclid(1000)).unwrap_or(0))
        .with_app_id("fq".into())
        .with_reply_to(ShortString::from(task.reply_to().unwrap_or(reply_to)))
        .with_headers(headers);
    Ok(Outgoing { body, properties })
}

/// What a consumer fills in for headers a message does not carry.
#[derive(Clone, Debug)]
pub(crate) struct DecodeDefaults {
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_payload_bytes: usize,
}

/// A delivered task, decoded.
#[derive(Clone, Debug)]
pub(crate) struct Incoming {
    pub(crate) id: TaskId,
    pub(crate) name: String,
    pub(crate) payload: Payload,
    pub(crate) priority: i32,
    /// The run this delivery is for, 1-based.
    pub(crate) attempt: u32,
    pub(crate) max_retries: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry_delay: Option<Duration>,
    pub(crate) created_at: Millis,
    pub(crate) scheduled_at: Millis,
    /// Where to report the run's start and outcome (the `reply_to` property), if anywhere.
    pub(crate) reply_to: Option<String>,
}

/// An integer header value of any AMQP integer type, an integral float, or digits in a string
/// (clients in other languages pick different types for the same number).
fn header_int(headers: Option<&FieldTable>, key: &str) -> Result<Option<i64>, String> {
    let Some(value) = headers.and_then(|h| h.inner().get(key)) else {
        return Ok(None);
    };
    let number = match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        #[allow(clippy::cast_possible_truncation)]
        AMQPValue::Double(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Some(*v as i64),
        #[allow(clippy::cast_possible_truncation)]
        AMQPValue::Float(v) if v.fract() == 0.0 && v.abs() < 1.0e7 => Some(*v as i64),
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes())
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        AMQPValue::ShortString(text) => text.as_str().trim().parse().ok(),
        AMQPValue::Void => return Ok(None),
        _ => None,
    };
    number
        .map(Some)
        .ok_or_else(|| format!("header {key:?} must be an integer, got {value:?}"))
}

fn header_u32(headers: Option<&FieldTable>, key: &str) -> Result<Option<u32>, String> {
    header_int(headers, key)?
        .map(|v| {
            u32::try_from(v).map_err(|_| format!("header {key:?} must be 0 to 4294967295, got {v}"))
        })
        .transpose()
}

fn header_ms(headers: Option<&FieldTable>, key: &str) -> Result<Option<Duration>, String> {
    header_int(headers, key)?
        .map(|v| match u64::try_from(v) {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "header {key:?} must be a positive number of milliseconds, got {v}"
            )),
        })
        .transpose()
}

/// Decodes a delivery; the error is the reason it is dead-lettered.
pub(crate) fn decode(
    data: &[u8],
    properties: &BasicProperties,
    defaults: &DecodeDefaults,
    now: Millis,
) -> Result<Incoming, String> {
    let body: BodyIn = serde_json::from_slice(data).map_err(|e| {
        format!("the body is not an fq task ({{\"task_id\", \"name\", \"payload\"}} as JSON): {e}")
    })?;
    let id_text = body
        .task_id
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
        })
        .ok_or("the message has no task_id (in the body) or message_id")?;
    let id: TaskId = id_text.parse().map_err(|e| format!("task_id: {e}"))?;
    check_name(&body.name).map_err(|problem| format!("task name {:?} {problem}", body.name))?;
    let payload = match &body.payload {
        Some(value) => Payload::from_value(value).map_err(|e| format!("payload: {e}"))?,
        None => Payload::empty(),
    };
    if payload.len() > defaults.max_payload_bytes {
        return Err(format!(
            "the payload is {} bytes, the limit is {} bytes (limits.max_payload_bytes)",
            payload.len(),
            defaults.max_payload_bytes
        ));
    }
    let headers = properties.headers().as_ref();
    let attempt = header_u32(headers, H_ATTEMPT)?.unwrap_or(1).max(1);
    let max_retries = header_u32(headers, H_MAX_RETRIES)?.unwrap_or(defaults.max_retries);
    if max_retries > crate::config::MAX_RETRIES {
        return Err(format!(
            "header \"max_retries\" is {max_retries}, the limit is {}",
            crate::config::MAX_RETRIES
        ));
    }
    let priority = match header_int(headers, H_PRIORITY)? {
        Some(p) => {
            i32::try_from(p).map_err(|_| format!("header \"priority\" {p} is out of range"))?
        }
        None => properties.priority().map_or(0, i32::from),
    };
    let created_at = header_int(headers, H_CREATED_AT)?
        .or_else(|| {
            properties
                .timestamp()
                .and_then(|secs| i64::try_from(secs).ok())
                .map(|secs| secs.saturating_mul(1000))
        })
        .unwrap_or(now);
    let scheduled_at = header_int(headers, H_SCHEDULED_AT)?.unwrap_or(created_at);
    Ok(Incoming {
        id,
        name: body.name,
        payload,
        priority,
        attempt,
        max_retries,
        timeout: header_ms(headers, H_TIMEOUT_MS)?.or(defaults.timeout),
        retry_delay: header_ms(headers, H_RETRY_DELAY_MS)?,
        created_at,
        scheduled_at,
        reply_to: properties
            .reply_to()
            .as_ref()
            .map(|queue| queue.as_str().to_owned())
            .filter(|queue| !queue.is_empty()),
    })
}

/// The properties of a dead letter: the original ones plus why and when fq gave it up.
pub(crate) fn dead_letter_properties(
    original: &BasicProperties,
    reason: &str,
    kind: &str,
    attempt: Option<u32>,
    now: Millis,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        H_DEAD_REASON.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        H_ERROR_KIND.into(),
        AMQPValue::LongString(LongString::from(kind)),
    );
    headers.insert(H_DEAD_AT.into(), int(now));
    if let Some(attempt) = attempt {
        headers.insert(H_ATTEMPT.into(), int(i64::from(attempt)));
    }
    original.clone().with_headers(headers).with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec_sample_task;

    fn defaults() -> DecodeDefaults {
        DecodeDefaults {
            max_retries: 3,
            timeout: None,
            max_payload_bytes: 1 << 20,
        }
    }

    #[test]
    fn priorities_map_into_the_queue_range() {
        assert_eq!(amqp_priority(-5), 0);
        assert_eq!(amqp_priority(0), 0);
        assert_eq!(amqp_priority(9), 9);
        assert_eq!(amqp_priority(10), 10);
        assert_eq!(amqp_priority(i32::MAX), 10);
    }

    #[test]
    fn encoded_messages_decode_to_the_next_run() {
        let task = codec_sample_task();
        let id = TaskId::new();
        let out = encode(id, &task, "fq.replies.me").unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(body["task_id"], id.to_string());
        assert_eq!(body["name"], task.name);
        assert_eq!(body["payload"]["kwargs"]["to"], "a@example.com");
        assert_eq!(out.properties.delivery_mode(), &Some(2));
        assert_eq!(out.properties.priority(), &Some(5));
        let incoming = decode(&out.body, &out.properties, &defaults(), 0).unwrap();
        assert_eq!(incoming.id, id);
        assert_eq!(incoming.attempt, task.attempts + 1);
        assert_eq!(incoming.max_retries, task.max_retries);
        assert_eq!(incoming.priority, task.priority);
        assert_eq!(incoming.timeout, Some(Duration::from_secs(30)));
        assert_eq!(incoming.created_at, task.created_at);
        assert_eq!(incoming.payload.as_str(), task.payload);
        assert_eq!(incoming.reply_to.as_deref(), Some("fq.replies.me"));
        // A retry forwarded by the store that ran it names the producer's queue again.
        let mut ran_here = task.clone();
        ran_here.route = Some(crate::task::Route::ReplyTo("fq.replies.producer".into()));
        let again = encode(id, &ran_here, "fq.replies.me").unwrap();
        let incoming = decode(&again.body, &again.properties, &defaults(), 0).unwrap();
        assert_eq!(incoming.reply_to.as_deref(), Some("fq.replies.producer"));
    }

    #[test]
    fn a_plain_message_gets_defaults_and_any_integer_type() {
        let id = TaskId::new();
        let body = format!(
            r#"{{"task_id":"{id}","name":"app.work","payload":{{"args":[1]}},"extra":true}}"#
        );
        let mut headers = FieldTable::default();
        headers.insert("attempt".into(), AMQPValue::ShortShortUInt(2));
        headers.insert(
            "max_retries".into(),
            AMQPValue::LongString(LongString::from("5")),
        );
        let props = BasicProperties::default()
            .with_priority(7)
            .with_headers(headers);
        let incoming = decode(body.as_bytes(), &props, &defaults(), 42).unwrap();
        assert_eq!(incoming.attempt, 2);
        assert_eq!(incoming.max_retries, 5);
        assert_eq!(incoming.priority, 7);
        assert_eq!(incoming.created_at, 42);
        assert_eq!(incoming.payload.to_value()["args"][0], 1);

        let bare = decode(
            br#"{"name":"app.work"}"#,
            &BasicProperties::default().with_message_id(id.to_string().into()),
            &defaults(),
            7,
        )
        .unwrap();
        assert_eq!((bare.id, bare.attempt, bare.max_retries), (id, 1, 3));
        assert_eq!(bare.reply_to, None, "a plain client asks for no reports");
    }

    #[test]
    fn malformed_messages_are_reasons() {
        let props = BasicProperties::default();
        for (body, expected) in [
            (&b"not json"[..], "not an fq task"),
            (br#"{"name":"x"}"#, "no task_id"),
            (br#"{"task_id":"nope","name":"x"}"#, "task_id"),
            (
                br#"{"task_id":"0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a69","name":"bad name!"}"#,
                "task name",
            ),
            (
                br#"{"task_id":"0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a69","name":"x","payload":[1]}"#,
                "payload",
            ),
        ] {
            let reason = decode(body, &props, &defaults(), 0).unwrap_err();
            assert!(reason.contains(expected), "{reason}");
        }
        let mut headers = FieldTable::default();
        headers.insert("attempt".into(), AMQPValue::Boolean(true));
        let reason = decode(
            br#"{"task_id":"0190c3a2-7d4e-7b1a-9c2f-1e2d3c4b5a69","name":"x"}"#,
            &BasicProperties::default().with_headers(headers),
            &defaults(),
            0,
        )
        .unwrap_err();
        assert!(
            reason.contains("\"attempt\" must be an integer"),
            "{reason}"
        );
    }
}
