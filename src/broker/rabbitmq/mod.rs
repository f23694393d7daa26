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

cfg_if::cfg_if! {
    if #[cfg(feature = "rabbitmq")] {
        mod bridge;
        mod broker;
        mod consumer;
        mod forwarder;
        mod link;
        mod message;
        mod replies;
        mod report;
        mod stats;
        mod target;
        mod topology;

        pub(crate) use bridge::{Bridge, RabbitSettings};
        pub(crate) use broker::RabbitBroker;
        pub(crate) use stats::read_only_stats;
    }
}
