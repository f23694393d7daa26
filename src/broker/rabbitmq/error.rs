//! The RabbitMQ bridge's errors. Compiled in every build, so that [`crate::Error::Rabbit`] can be
//! matched whether or not the `rabbitmq` feature is on; lapin's errors stay behind `source()`,
//! and no message ever shows the AMQP password.

/// A boxed error kept as the `source()` of a [`RabbitError`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong between fq and RabbitMQ (config `broker: rabbitmq`).
///
/// `endpoint` fields are the AMQP URL without its password (`amqp://guest@127.0.0.1:5672/%2f`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// Nothing answers at the configured address, the answer was not AMQP, or the connection
    /// broke. fq keeps reconnecting in the background; tasks wait in the outbox meanwhile.
    #[error("cannot reach RabbitMQ at {endpoint}: {reason}")]
    Unreachable {
        /// Where fq connects, without the password.
        endpoint: String,
        /// What happened, in a few words (`connection refused`, `timed out after 10s`).
        reason: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// RabbitMQ answered and refused the login or the virtual host.
    #[error(
        "RabbitMQ at {endpoint} refused the connection: {reason} (check rabbitmq.username, \
         rabbitmq.password and rabbitmq.vhost, or the URL)"
    )]
    Refused {
        /// Where fq connects, without the password.
        endpoint: String,
        /// RabbitMQ's reason.
        reason: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// An exchange or queue already exists in RabbitMQ with other properties than fq
    /// declares. fq never changes or deletes existing topology.
    #[error(
        "RabbitMQ {object} already exists with other arguments than fq declares ({expected}); \
         RabbitMQ says: {detail}. Delete it (rabbitmqctl delete_queue / delete_exchange) if it \
         holds nothing you need, or give fq another queue name"
    )]
    TopologyConflict {
        /// What conflicts, e.g. `queue "emails"`.
        object: String,
        /// What fq declares.
        expected: String,
        /// RabbitMQ's own description of the difference.
        detail: String,
    },
    /// The RabbitMQ URL or settings cannot be used.
    #[error("invalid RabbitMQ address {endpoint}: {reason}")]
    InvalidUrl {
        /// The address without its password.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A queue name RabbitMQ cannot take.
    #[error("queue {queue:?} cannot be used with RabbitMQ: {reason}")]
    QueueName {
        /// The fq queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// The outbox (tasks committed locally and not yet forwarded) holds as many tasks as
    /// allowed, usually because RabbitMQ has been unreachable for a while.
    #[error(
        "the RabbitMQ outbox is full: {limit} tasks already wait to be forwarded \
         (limits.max_pending); {state}"
    )]
    OutboxFull {
        /// The configured limit.
        limit: u64,
        /// The state of the connection, e.g. `RabbitMQ unreachable since ...: connection refused`.
        state: String,
    },
    /// An AMQP operation failed.
    #[error("RabbitMQ {action} failed: {reason}")]
    Operation {
        /// What fq was doing (`publish`, `ack`, `queue statistics`).
        action: &'static str,
        /// What happened.
        reason: String,
        /// The client library's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The bridge was asked to start outside a tokio runtime.
    #[error("the RabbitMQ bridge runs on tokio: open the engine from inside a tokio runtime")]
    NoRuntime,
    /// This build of fq has no RabbitMQ support.
    #[error(
        "broker \"rabbitmq\" is not available in this build of fq: build it with the `rabbitmq` \
         cargo feature, or use broker \"database\""
    )]
    NotBuilt,
}

impl RabbitError {
    /// True when the same call may succeed later (RabbitMQ comes back, the outbox drains).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RabbitError::Unreachable { .. }
                | RabbitError::OutboxFull { .. }
                | RabbitError::Operation { .. }
        )
    }

    /// True when the cause is a refused TCP connection (nothing listens at the address).
    pub fn is_connection_refused(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return true;
            }
            cause = error.source();
        }
        matches!(self, RabbitError::Unreachable { reason, .. } if reason.contains("connection refused"))
    }
}
