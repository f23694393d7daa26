//! The RabbitMQ bridge (config `broker: rabbitmq`, cargo feature `rabbitmq`; DESIGN §5): the
//! local store is a durable outbox that a forwarder drains into RabbitMQ with publisher
//! confirms, and workers consume with manual acks, committing each outcome locally before
//! telling RabbitMQ. Only this module imports lapin; its error type is compiled in every build.
//!
//! Parts: `link` (connection, reconnection with backoff), `topology` (exchanges and queues),
//! `message` (the documented wire format), `forwarder` (outbox → RabbitMQ), `consumer`
//! (RabbitMQ → workers, settlement, dead letters), `report` (outcomes back to the producer:
//! reply queues and the report message), `replies` (the producer applying them), `bridge`
//! (the state they share), `broker` (the `Broker` they make up).

mod error;

pub use error::RabbitError;

#[cfg(feature = "rabbitmq")]
mod bridge;
#[cfg(feature = "rabbitmq")]
mod broker;
#[cfg(feature = "rabbitmq")]
mod consumer;
#[cfg(feature = "rabbitmq")]
mod forwarder;
#[cfg(feature = "rabbitmq")]
mod link;
#[cfg(feature = "rabbitmq")]
mod message;
#[cfg(feature = "rabbitmq")]
mod replies;
#[cfg(feature = "rabbitmq")]
mod report;
#[cfg(feature = "rabbitmq")]
mod stats;
#[cfg(feature = "rabbitmq")]
mod target;
#[cfg(feature = "rabbitmq")]
mod topology;

#[cfg(feature = "rabbitmq")]
pub(crate) use bridge::{Bridge, RabbitSettings};
#[cfg(feature = "rabbitmq")]
pub(crate) use broker::RabbitBroker;
#[cfg(feature = "rabbitmq")]
pub(crate) use stats::read_only_stats;
