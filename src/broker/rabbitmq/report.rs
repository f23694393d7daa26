//! Outcomes back to the producer (README "RabbitMQ", "Outcomes"): the reply queue of a
//! producing store (`fq.replies.<store id>`, durable), the report message a worker publishes
//! there for each run's start and end (small JSON, persistent, through the default exchange
//! routed by the forwarded message's `reply_to`), its decoding on the producer's side, and the
//! worker's confirmed publish. Encoding and decoding are pure; publishing is the only I/O.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::RabbitError;
use super::link::{Session, bounded, operation};
use crate::clock::Millis;
use crate::task::lifecycle::{Report, RunEnd};
use crate::task::{FailureKind, StoredFailure, TaskId, TaskStatus};

/// The prefix of every reply queue; the rest is the producing store's id.
pub(crate) const REPLY_PREFIX: &str = "fq.replies.";
/// How long RabbitMQ keeps a reply queue nobody consumes or declares (`x-expires`): a
/// producer away for longer loses the outcomes waiting there (its records stay FORWARDED).
pub(crate) const REPLY_EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a report's publisher confirm may take.
pub(crate) const REPORT_CONFIRM: Duration = Duration::from_secs(10);
/// The `type` property of a start's report (one report per message: fq before batched
/// reports, or a plain client; the producer still reads them).
#[cfg(test)]
pub(crate) const TYPE_STARTED: &str = "fq.started";
/// The `type` property of an outcome's report (one report per message, as above).
#[cfg(test)]
pub(crate) const TYPE_ENDED: &str = "fq.ended";
/// The `type` property of a batch of reports (starts and outcomes, a JSON array).
pub(crate) const TYPE_BATCH: &str = "fq.reports";

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

/// The JSON body reporting `report` about task `id`.
fn encode_body(id: TaskId, report: &Report) -> Result<Vec<u8>, String> {
    let body = match report {
        Report::Started { attempt, at } => serde_json::to_vec(&BodyOut {
            task_id: id,
            attempt: *attempt,
            status: TaskStatus::Running,
            started_at: Some(*at),
            finished_at: None,
            retry_at: None,
            result: None,
            error: None,
        }),
        Report::Ended(end) => {
            let result: Option<&RawValue> = match &end.result {
                Some(text) => Some(
                    serde_json::from_str(text)
                        .map_err(|e| format!("the result is not JSON: {e}"))?,
                ),
                None => None,
            };
            serde_json::to_vec(&BodyOut {
                task_id: id,
                attempt: end.attempt,
                status: end.status,
                started_at: end.started_at,
                finished_at: Some(end.at),
                retry_at: end.retry_at,
                result,
                error: end.error.as_ref().map(|e| ErrorOut {
                    message: &e.message,
                    kind: e.kind,
                }),
            })
        }
    };
    body.map_err(|e| format!("cannot encode the report: {e}"))
}

/// The properties every report message shares.
fn report_properties(kind: &'static str, message_id: String) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
        .with_type(kind.into())
        .with_app_id("fq".into())
}

/// The message reporting `report` about task `id` (one report; what workers before batched
/// reports sent, and what a plain client may send: the tests check the producer reads it).
#[cfg(test)]
pub(crate) fn encode_report(id: TaskId, report: &Report) -> Result<ReportMessage, String> {
    let body = encode_body(id, report)?;
    let (kind, status) = match report {
        Report::Started { .. } => (TYPE_STARTED, TaskStatus::Running),
        Report::Ended(end) => (TYPE_ENDED, end.status),
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "attempt".into(),
        AMQPValue::LongLongInt(i64::from(report.attempt())),
    );
    headers.insert(
        "status".into(),
        AMQPValue::LongString(lapin::types::LongString::from(status.as_str())),
    );
    let properties = report_properties(kind, id.to_string())
        .with_correlation_id(ShortString::from(id.to_string()))
        .with_headers(headers);
    Ok(ReportMessage { body, properties })
}

/// Reports encoded into one batch message (a JSON array of report bodies), and those that
/// could not be encoded, with why.
#[derive(Debug)]
pub(crate) struct EncodedBatch {
    /// How many reports the message holds.
    pub(crate) count: usize,
    /// The batch message; `None` when no report could be encoded.
    pub(crate) message: Option<ReportMessage>,
    /// Indexes (into the input) of the reports left out, with the reason.
    pub(crate) refused: Vec<(usize, String)>,
}

/// Encodes `reports` as one batch message of type [`TYPE_BATCH`]: one publish and one confirm
/// for all of them, instead of one each.
pub(crate) fn encode_batch<'a>(
    reports: impl IntoIterator<Item = (TaskId, &'a Report)>,
) -> EncodedBatch {
    let mut body = Vec::with_capacity(256);
    body.push(b'[');
    let mut count = 0;
    let mut refused = Vec::new();
    for (index, (id, report)) in reports.into_iter().enumerate() {
        match encode_body(id, report) {
            Ok(one) => {
                if count > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&one);
                count += 1;
            }
            Err(reason) => refused.push((index, reason)),
        }
    }
    body.push(b']');
    let message = (count > 0).then(|| {
        let mut headers = FieldTable::default();
        headers.insert(
            "count".into(),
            AMQPValue::LongLongInt(i64::try_from(count).unwrap_or(i64::MAX)),
        );
        ReportMessage {
            body,
            properties: report_properties(TYPE_BATCH, TaskId::new().to_string())
                .with_headers(headers),
        }
    });
    EncodedBatch {
        count,
        message,
        refused,
    }
}

/// Decodes a report; the error says why it cannot be applied.
pub(crate) fn decode_report(data: &[u8]) -> Result<(TaskId, Report), String> {
    let body: BodyIn =
        serde_json::from_slice(data).map_err(|e| format!("not an fq report: {e}"))?;
    report_of(body)
}

fn report_of(body: BodyIn) -> Result<(TaskId, Report), String> {
    if body.attempt == 0 {
        return Err("attempt must be 1 or more".to_owned());
    }
    let report = match body.status {
        TaskStatus::Running => Report::Started {
            attempt: body.attempt,
            at: body.started_at.ok_or("a start's report needs started_at")?,
        },
        TaskStatus::Completed | TaskStatus::Retrying | TaskStatus::Failed => {
            Report::Ended(RunEnd {
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
            })
        }
        other => return Err(format!("status {other} is not a start or an outcome")),
    };
    Ok((body.task_id, report))
}

/// Decodes a report message: one report, or a batch (a JSON array of them). A batch that is
/// not an array of objects is refused whole; an element that does not decode is refused
/// alone, with its index, and the others stand.
pub(crate) fn decode_reports(data: &[u8]) -> Result<DecodedReports, String> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return decode_report(data).map(|one| DecodedReports {
            reports: vec![one],
            refused: Vec::new(),
        });
    }
    let elements: Vec<Box<RawValue>> =
        serde_json::from_slice(data).map_err(|e| format!("not an fq report batch: {e}"))?;
    let mut decoded = DecodedReports {
        reports: Vec::with_capacity(elements.len()),
        refused: Vec::new(),
    };
    for (index, element) in elements.iter().enumerate() {
        match serde_json::from_str::<BodyIn>(element.get())
            .map_err(|e| format!("not an fq report: {e}"))
            .and_then(report_of)
        {
            Ok(report) => decoded.reports.push(report),
            Err(reason) => decoded.refused.push((index, reason)),
        }
    }
    Ok(decoded)
}

/// What a report message held.
#[derive(Debug)]
pub(crate) struct DecodedReports {
    /// The reports that decoded.
    pub(crate) reports: Vec<(TaskId, Report)>,
    /// Elements of a batch that did not, by index, with why.
    pub(crate) refused: Vec<(usize, String)>,
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
            .publish_mandatory("", routing, &message.body, message.properties)
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
            Report::Ended(RunEnd {
                attempt: 2,
                status: TaskStatus::Completed,
                started_at: Some(6),
                at: 9,
                result: Some(r#"{"sent":true}"#.into()),
                error: None,
                retry_at: None,
            }),
            Report::Ended(RunEnd {
                attempt: 3,
                status: TaskStatus::Retrying,
                started_at: Some(6),
                at: 9,
                result: None,
                error: Some(failure.clone()),
                retry_at: Some(700),
            }),
            Report::Ended(RunEnd {
                attempt: 4,
                status: TaskStatus::Failed,
                started_at: None,
                at: 9,
                result: None,
                error: Some(failure.clone()),
                retry_at: None,
            }),
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

    #[test]
    fn a_batch_round_trips_and_leaves_out_only_what_cannot_be_encoded() {
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        let started = Report::Started { attempt: 1, at: 5 };
        let completed = Report::Ended(RunEnd {
            attempt: 1,
            status: TaskStatus::Completed,
            started_at: Some(5),
            at: 9,
            result: Some("[1,2]".into()),
            error: None,
            retry_at: None,
        });
        let unencodable = Report::Ended(RunEnd {
            attempt: 1,
            status: TaskStatus::Completed,
            started_at: Some(5),
            at: 9,
            result: Some("not json".into()),
            error: None,
            retry_at: None,
        });
        let batch = encode_batch([(a, &started), (b, &unencodable), (c, &completed)]);
        assert_eq!(batch.count, 2);
        assert_eq!(batch.refused.len(), 1);
        assert_eq!(batch.refused[0].0, 1);
        assert!(
            batch.refused[0].1.contains("not JSON"),
            "{:?}",
            batch.refused
        );
        let message = batch.message.unwrap();
        assert_eq!(
            message.properties.kind().as_ref().unwrap().as_str(),
            TYPE_BATCH
        );
        let decoded = decode_reports(&message.body).unwrap();
        assert!(decoded.refused.is_empty());
        assert_eq!(decoded.reports, vec![(a, started), (c, completed)]);

        let nothing = encode_batch([(b, &unencodable)]);
        assert!(nothing.message.is_none());
    }

    #[test]
    fn the_producer_reads_single_reports_and_refuses_bad_elements_alone() {
        let id = TaskId::new();
        let single = encode_report(id, &Report::Started { attempt: 2, at: 7 }).unwrap();
        assert_eq!(
            decode_reports(&single.body).unwrap().reports,
            vec![(id, Report::Started { attempt: 2, at: 7 })]
        );
        let mixed = format!(
            r#" [{{"task_id":"{id}","attempt":1,"status":"RUNNING","started_at":1}}, 7, {{"task_id":"{id}","attempt":0,"status":"RUNNING","started_at":1}}]"#
        );
        let decoded = decode_reports(mixed.as_bytes()).unwrap();
        assert_eq!(decoded.reports.len(), 1);
        let refused: Vec<usize> = decoded.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, vec![1, 2]);
        assert!(decode_reports(b"[1,").unwrap_err().contains("batch"));
        assert!(
            decode_reports(b"{}")
                .unwrap_err()
                .contains("not an fq report")
        );
    }
}
