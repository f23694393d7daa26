//! Outcomes back to the producer (README "RabbitMQ", "Outcomes"): the reply queue of a
//! producing store (`fq.replies.<store id>`, durable), the report message a worker publishes
//! there for each run's start and end (small JSON, persistent, through the default exchange
//! routed by the forwarded message's `reply_to`), its decoding on the producer's side, and the
//! worker's confirmed publish. Encoding and decoding are pure; publishing is the only I/O.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::RabbitError;
use super::link::{Session, bounded, operation};
use crate::clock::Millis;
use crate::task::lifecycle::Report;
use crate::task::{FailureKind, StoredFailure, TaskId, TaskStatus};

/// The prefix of every reply queue; the rest is the producing store's id.
pub(crate) const REPLY_PREFIX: &str = "fq.replies.";
/// How long RabbitMQ keeps a reply queue nobody consumes or declares (`x-expires`): a
/// producer away for longer loses the outcomes waiting there (its records stay FORWARDED).
pub(crate) const REPLY_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a report's publisher confirm may take.
pub(crate) const REPORT_CONFIRM: Duration = Duration::from_secs(10);
/// The `type` property of a start's report.
pub(crate) const TYPE_STARTED: &str = "fq.started";
/// The `type` property of an outcome's report.
pub(crate) const TYPE_ENDED: &str = "fq.ended";

/// The reply queue of the store with id `store_id`.
pub(crate) fn reply_queue(store_id: &str) -> String {
    format!("{REPLY_PREFIX}{store_id}")
}

/// The reply queue's arguments (fixed: every declaration, by producer or worker, matches).
fn reply_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongInt(i32::try_from(REPLY_EXPIRES.as_millis()).unwrap_or(i32::MAX)),
    );
    arguments
}

/// Declares the reply queue `name` (durable, `x-expires`) on a channel of its own.
pub(crate) async fn declare_reply_queue(session: &Session, name: &str) -> Result<(), RabbitError> {
    let queue = ShortString::try_new(name).map_err(|_| RabbitError::QueueName {
        queue: name.to_owned(),
        reason: "a reply queue name is at most 255 bytes".to_owned(),
    })?;
    let channel = session.open_channel("open a channel").await?;
    let declared = bounded("declare the reply queue", async {
        channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                reply_arguments(),
            )
            .await
            .map_err(|e| operation("declare the reply queue", e))
    })
    .await;
    let _ = channel.close(200, "declared".into()).await;
    declared.map(|_| ())
}

/// The reply queues a worker has declared on the current connection, so each is declared once
/// per connection before its first report (a report never bounces for want of its queue).
#[derive(Debug, Default)]
pub(crate) struct Declared(Mutex<(u64, HashSet<String>)>);

impl Declared {
    /// Declares `name` unless it was on `session` already.
    pub(crate) async fn ensure(&self, session: &Session, name: &str) -> Result<(), RabbitError> {
        let known = {
            let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            slot.0 == session.generation && slot.1.contains(name)
        };
        if known {
            return Ok(());
        }
        declare_reply_queue(session, name).await?;
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != session.generation {
            *slot = (session.generation, HashSet::new());
        }
        slot.1.insert(name.to_owned());
        Ok(())
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    message: &'a str,
    kind: FailureKind,
}

#[derive(Serialize)]
struct BodyOut<'a> {
    task_id: TaskId,
    attempt: u32,
    status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOut<'a>>,
}

#[derive(Deserialize)]
struct ErrorIn {
    message: String,
    kind: FailureKind,
}

#[derive(Deserialize)]
struct BodyIn {
    task_id: TaskId,
    attempt: u32,
    status: TaskStatus,
    #[serde(default)]
    started_at: Option<Millis>,
    #[serde(default)]
    finished_at: Option<Millis>,
    #[serde(default)]
    retry_at: Option<Millis>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<ErrorIn>,
}

/// A report ready to publish.
#[derive(Debug)]
pub(crate) struct ReportMessage {
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
}

/// The message reporting `report` about task `id`.
pub(crate) fn encode_report(id: TaskId, report: &Report) -> Result<ReportMessage, String> {
    let (kind, body) = match report {
        Report::Started { attempt, at } => (
            TYPE_STARTED,
            serde_json::to_vec(&BodyOut {
                task_id: id,
                attempt: *attempt,
                status: TaskStatus::Running,
                started_at: Some(*at),
                finished_at: None,
                retry_at: None,
                result: None,
                error: None,
            }),
        ),
        Report::Ended {
            attempt,
            status,
            started_at,
            at,
            result,
            error,
            retry_at,
        } => {
            let result: Option<&RawValue> = match result {
                Some(text) => Some(
                    serde_json::from_str(text)
                        .map_err(|e| format!("the result is not JSON: {e}"))?,
                ),
                None => None,
            };
            (
                TYPE_ENDED,
                serde_json::to_vec(&BodyOut {
                    task_id: id,
                    attempt: *attempt,
                    status: *status,
                    started_at: *started_at,
                    finished_at: Some(*at),
                    retry_at: *retry_at,
                    result,
                    error: error.as_ref().map(|e| ErrorOut {
                        message: &e.message,
                        kind: e.kind,
                    }),
                }),
            )
        }
    };
    let body = body.map_err(|e| format!("cannot encode the report: {e}"))?;
    let status = match report {
        Report::Started { .. } => TaskStatus::Running,
        Report::Ended { status, .. } => *status,
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "attempt".into(),
        AMQPValue::LongLongInt(i64::from(report.attempt())),
    );
    headers.insert(
        "status".into(),
        AMQPValue::LongString(LongString::from(status.as_str())),
    );
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(id.to_string()))
        .with_correlation_id(ShortString::from(id.to_string()))
        .with_type(kind.into())
        .with_app_id("fq".into())
        .with_headers(headers);
    Ok(ReportMessage { body, properties })
}

/// Decodes a report; the error says why it cannot be applied.
pub(crate) fn decode_report(data: &[u8]) -> Result<(TaskId, Report), String> {
    let body: BodyIn =
        serde_json::from_slice(data).map_err(|e| format!("not an fq report: {e}"))?;
    if body.attempt == 0 {
        return Err("attempt must be 1 or more".to_owned());
    }
    let report = match body.status {
        TaskStatus::Running => Report::Started {
            attempt: body.attempt,
            at: body.started_at.ok_or("a start's report needs started_at")?,
        },
        TaskStatus::Completed | TaskStatus::Retrying | TaskStatus::Failed => Report::Ended {
            attempt: body.attempt,
            status: body.status,
            started_at: body.started_at,
            at: body
                .finished_at
                .ok_or("an outcome's report needs finished_at")?,
            result: body.result.map(|raw| raw.get().to_owned()),
            error: body.error.map(|e| StoredFailure {
                message: e.message,
                kind: e.kind,
            }),
            retry_at: body.retry_at,
        },
        other => return Err(format!("status {other} is not a start or an outcome")),
    };
    Ok((body.task_id, report))
}

/// Publishes `message` to the reply queue `reply_to` (declared first, once per connection)
/// and waits for RabbitMQ's confirm. A report returned unroutable (the queue was deleted in
/// between) is not an error: nobody is there to tell.
pub(crate) async fn publish_report(
    session: &Session,
    declared: &Declared,
    reply_to: &str,
    message: ReportMessage,
) -> Result<(), RabbitError> {
    declared.ensure(session, reply_to).await?;
    let routing = ShortString::try_new(reply_to).map_err(|_| RabbitError::QueueName {
        queue: reply_to.to_owned(),
        reason: "a reply queue name is at most 255 bytes".to_owned(),
    })?;
    let confirm = bounded("report publish", async {
        session
            .publish
            .basic_publish(
                "".into(),
                routing,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                message.properties,
            )
            .await
            .map_err(|e| operation("report publish", e))
    })
    .await?;
    let confirmed = tokio::select! {
        confirmed = tokio::time::timeout(REPORT_CONFIRM, confirm) => confirmed,
        () = session.lost.cancelled() => {
            return Err(RabbitError::Operation {
                action: "report publish",
                reason: "the connection was lost before the confirm".to_owned(),
                source: None,
            });
        }
    };
    match confirmed {
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => {
            tracing::debug!(reply_to, "a report was returned unroutable; nobody to tell");
            Ok(())
        }
        Ok(Ok(Confirmation::Nack(_))) => Err(RabbitError::Operation {
            action: "report publish",
            reason: "RabbitMQ refused it (nack)".to_owned(),
            source: None,
        }),
        Ok(Err(error)) => Err(operation("report publish", error)),
        Err(_) => Err(RabbitError::Operation {
            action: "report publish",
            reason: format!("no confirm within {REPORT_CONFIRM:?}"),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let id = TaskId::new();
        let failure = StoredFailure {
            message: "smtp down".into(),
            kind: FailureKind::Timeout,
        };
        for report in [
            Report::Started { attempt: 1, at: 5 },
            Report::Ended {
                attempt: 2,
                status: TaskStatus::Completed,
                started_at: Some(6),
                at: 9,
                result: Some(r#"{"sent":true}"#.into()),
                error: None,
                retry_at: None,
            },
            Report::Ended {
                attempt: 3,
                status: TaskStatus::Retrying,
                started_at: Some(6),
                at: 9,
                result: None,
                error: Some(failure.clone()),
                retry_at: Some(700),
            },
            Report::Ended {
                attempt: 4,
                status: TaskStatus::Failed,
                started_at: None,
                at: 9,
                result: None,
                error: Some(failure.clone()),
                retry_at: None,
            },
        ] {
            let message = encode_report(id, &report).unwrap();
            assert_eq!(message.properties.delivery_mode(), &Some(2));
            assert_eq!(
                decode_report(&message.body).unwrap(),
                (id, report.clone()),
                "{}",
                String::from_utf8_lossy(&message.body)
            );
        }
        let body: serde_json::Value = serde_json::from_slice(
            &encode_report(id, &Report::Started { attempt: 1, at: 5 })
                .unwrap()
                .body,
        )
        .unwrap();
        assert_eq!(body["status"], "RUNNING");
        assert_eq!(body["task_id"], id.to_string());
    }

    #[test]
    fn malformed_reports_are_reasons() {
        let id = TaskId::new();
        for (body, expected) in [
            ("nope".to_owned(), "not an fq report"),
            (
                format!(r#"{{"task_id":"{id}","attempt":0,"status":"RUNNING","started_at":1}}"#),
                "attempt",
            ),
            (
                format!(r#"{{"task_id":"{id}","attempt":1,"status":"RUNNING"}}"#),
                "started_at",
            ),
            (
                format!(r#"{{"task_id":"{id}","attempt":1,"status":"COMPLETED"}}"#),
                "finished_at",
            ),
            (
                format!(r#"{{"task_id":"{id}","attempt":1,"status":"PENDING","finished_at":1}}"#),
                "not a start or an outcome",
            ),
        ] {
            let reason = decode_report(body.as_bytes()).unwrap_err();
            assert!(reason.contains(expected), "{reason}");
        }
    }
}
