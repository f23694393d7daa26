//! fq's RabbitMQ topology, with Framefox's names: a durable direct exchange `tasks`; per fq
//! queue a durable queue `<queue>` bound to it by its name, with `x-max-priority` and
//! dead-lettering to the durable direct exchange `tasks.dead` under `<queue>.dead`, where the
//! durable queue `<queue>.dead` collects the dead letters. Declaring never changes what exists:
//! a difference is reported as a [`RabbitError::TopologyConflict`].

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::RabbitError;
use super::message::MAX_PRIORITY;

/// The exchange tasks are published to, routed by queue name.
pub(crate) const EXCHANGE: &str = "tasks";
/// The exchange dead letters go to, routed by `<queue>.dead`.
pub(crate) const DEAD_EXCHANGE: &str = "tasks.dead";

/// The name of a queue's dead-letter queue.
pub(crate) fn dead_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// `name` as an AMQP short string (at most 255 bytes).
pub(crate) fn short(queue: &str, name: &str) -> Result<ShortString, RabbitError> {
    ShortString::try_new(name).map_err(|_| RabbitError::QueueName {
        queue: queue.to_owned(),
        reason: format!(
            "{name:?} is {} bytes, and RabbitMQ names are at most 255 (fq also needs room for \
             the `.dead` suffix)",
            name.len()
        ),
    })
}

/// The arguments of a task queue.
pub(crate) fn queue_arguments(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-priority".into(),
        AMQPValue::LongInt(i32::from(MAX_PRIORITY)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(DEAD_EXCHANGE)),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dead_queue(queue).as_str())),
    );
    arguments
}

fn expected_queue(queue: &str) -> String {
    format!(
        "durable, x-max-priority={MAX_PRIORITY}, x-dead-letter-exchange={DEAD_EXCHANGE}, \
         x-dead-letter-routing-key={}",
        dead_queue(queue)
    )
}

/// The error RabbitMQ sent, if it was a channel-level one of `kind`.
pub(crate) fn soft_error(error: &lapin::Error, kind: AMQPSoftError) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(kind) => {
            Some(amqp.get_message().as_str().to_owned())
        }
        _ => None,
    }
}

/// Maps a failed declaration: PRECONDITION_FAILED is a conflict with what exists.
fn declare_error(error: lapin::Error, object: String, expected: String) -> RabbitError {
    match soft_error(&error, AMQPSoftError::PRECONDITIONFAILED) {
        Some(detail) => RabbitError::TopologyConflict {
            object,
            expected,
            detail,
        },
        None => RabbitError::Operation {
            action: "declare",
            reason: format!("declaring {object} failed: {error}"),
            source: Some(Box::new(error)),
        },
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares both exchanges. A failure closes `channel` (AMQP's rule).
pub(crate) async fn declare_exchanges(channel: &Channel) -> Result<(), RabbitError> {
    for name in [EXCHANGE, DEAD_EXCHANGE] {
        channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                declare_error(
                    e,
                    format!("exchange {name:?}"),
                    "durable, type direct".to_owned(),
                )
            })?;
    }
    Ok(())
}

/// Declares `queue` and `<queue>.dead` with their bindings (the exchanges must exist). A
/// failure closes `channel` (AMQP's rule).
pub(crate) async fn declare_queue(channel: &Channel, queue: &str) -> Result<(), RabbitError> {
    let name = short(queue, queue)?;
    let dead = short(queue, &dead_queue(queue))?;
    channel
        .queue_declare(name.clone(), durable_queue(), queue_arguments(queue))
        .await
        .map_err(|e| declare_error(e, format!("queue {queue:?}"), expected_queue(queue)))?;
    channel
        .queue_bind(
            name.clone(),
            EXCHANGE.into(),
            name,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(e, format!("binding of queue {queue:?}"), String::new()))?;
    channel
        .queue_declare(dead.clone(), durable_queue(), FieldTable::default())
        .await
        .map_err(|e| {
            declare_error(
                e,
                format!("queue {:?}", dead.as_str()),
                "durable, no arguments".to_owned(),
            )
        })?;
    channel
        .queue_bind(
            dead.clone(),
            DEAD_EXCHANGE.into(),
            dead,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            declare_error(
                e,
                format!("binding of queue {:?}", dead_queue(queue)),
                String::new(),
            )
        })?;
    Ok(())
}

/// A queue's message and consumer counts by a passive declaration; `None` when it does not
/// exist (which closes `channel`).
pub(crate) async fn queue_counts(
    channel: &Channel,
    queue: &str,
) -> Result<Option<(u64, u64)>, RabbitError> {
    let name = short(queue, queue)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(name, passive, FieldTable::default())
        .await
    {
        Ok(found) => Ok(Some((
            u64::from(found.message_count()),
            u64::from(found.consumer_count()),
        ))),
        Err(error) if soft_error(&error, AMQPSoftError::NOTFOUND).is_some() => Ok(None),
        Err(error) => Err(RabbitError::Operation {
            action: "queue statistics",
            reason: error.to_string(),
            source: Some(Box::new(error)),
        }),
    }
}
