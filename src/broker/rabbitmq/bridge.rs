//! [`Bridge`]: the state the link, the forwarder, the consumers and the broker handle
//! ([`RabbitBroker`](super::broker::RabbitBroker)) of an engine with `broker: rabbitmq` share.
//! The local store is the durable outbox and the record of this process's runs; RabbitMQ
//! carries the tasks between processes. Also owns the topology conflicts and the tasks they
//! hold back, and what each new connection needs. The long-lived background tasks are
//! `broker`'s: it starts them, and stops them when dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::RabbitError;
use super::broker::Closed;
use super::consumer::{self, Consumers};
use super::link::{Link, Session, Target};
use super::message::DecodeDefaults;
use super::stats::{count_within, empty_stats};
use crate::Result;
use crate::broker::RabbitStats;
use crate::broker::local::LocalBroker;
use crate::clock::Millis;
use crate::config::Config;
use crate::queue::ReadyTask;

/// The outbox bound when `limits.max_pending` is not set: enough for a long outage, small
/// enough that a broken setup fails loudly instead of filling the disk.
pub(crate) const DEFAULT_OUTBOX_LIMIT: u64 = 1_000_000;

/// The bridge's settings, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct RabbitSettings {
    pub(crate) target: Target,
    /// Unacknowledged deliveries per worker: `rabbitmq.prefetch`, else
    /// [`PREFETCH_PER_SLOT`] times `worker.concurrency`.
    pub(crate) prefetch: u16,
    /// How long a delivery may go without a heartbeat before it counts as a failed attempt.
    pub(crate) lease: Duration,
    pub(crate) decode: DecodeDefaults,
    pub(crate) outbox_limit: u64,
}

/// Deliveries a worker holds per slot by default (`rabbitmq.prefetch` unset), as Celery's
/// `worker_prefetch_multiplier`: a slot whose run waits for its durable commit and ack still
/// finds its next delivery here, instead of waiting for RabbitMQ to send one after the ack
/// (with prefetch = concurrency the drain with outcomes measured 80% of a raw consumer's,
/// with 4x 98%; README "Consuming").
pub(crate) const PREFETCH_PER_SLOT: usize = 4;

impl RabbitSettings {
    /// The settings a configuration asks for.
    pub(crate) fn from_config(config: &Config, lease: Duration) -> Result<Self, RabbitError> {
        let target = Target::parse(&config.rabbitmq.amqp_url())?;
        let prefetch = config.rabbitmq.prefetch.unwrap_or_else(|| {
            u16::try_from(config.worker.concurrency.saturating_mul(PREFETCH_PER_SLOT))
                .unwrap_or(u16::MAX)
        });
        Ok(Self {
            target,
            prefetch: prefetch.max(1),
            lease,
            decode: DecodeDefaults {
                max_retries: config.defaults.max_retries,
                timeout: config.defaults.timeout,
                max_payload_bytes: config.limits.max_payload_bytes,
            },
            outbox_limit: config.limits.max_pending.unwrap_or(DEFAULT_OUTBOX_LIMIT),
        })
    }
}

/// A topology conflict, kept to refuse work for its queue with the same clear error.
#[derive(Debug, Clone)]
enum Conflict {
    Topology {
        object: String,
        expected: String,
        detail: String,
    },
    Name {
        queue: String,
        reason: String,
    },
}

impl Conflict {
    fn error(&self) -> RabbitError {
        match self.clone() {
            Conflict::Topology {
                object,
                expected,
                detail,
            } => RabbitError::TopologyConflict {
                object,
                expected,
                detail,
            },
            Conflict::Name { queue, reason } => RabbitError::QueueName { queue, reason },
        }
    }
}

/// How often tasks held back by a topology conflict are tried again.
const UNPARK_EVERY: Duration = Duration::from_secs(30);

/// The tasks topology conflicts hold back, and when they were last tried.
#[derive(Debug)]
struct Parked {
    tasks: Vec<ReadyTask>,
    since: Instant,
}

/// What the link, the forwarder, the consumers and the broker handle share.
pub(crate) struct Bridge {
    pub(crate) settings: RabbitSettings,
    pub(crate) local: Arc<LocalBroker>,
    pub(crate) link: Arc<Link>,
    pub(crate) consumers: Consumers,
    /// Fires when the broker handle is dropped: every background task stops.
    pub(crate) shutdown: CancellationToken,
    /// Fires when the forwarder has stopped (its last confirms marked).
    pub(crate) forwarder_done: CancellationToken,
    /// Set when the connection is closed for good.
    pub(super) closed: Arc<Closed>,
    /// Every queue this engine has used: declared on each new connection, shown by stats.
    known: Mutex<BTreeSet<String>>,
    conflicts: Mutex<HashMap<String, Conflict>>,
    /// Due tasks of conflicting queues, held off the heap so they are not retried in a loop.
    parked: Mutex<Parked>,
    /// This store's reply queue (`fq.replies.<store id>`): every forwarded message names it
    /// as `reply_to`, and the producer consumes it (`replies`).
    pub(crate) reply_queue: String,
    /// The reply queues this process's workers have declared on the current connection.
    pub(crate) reply_queues: super::report::Declared,
    /// Held by the reply consumer while it runs: a stopping link waits for it (the consumer
    /// closes its channel first), so that no channel is left closing under the connection's
    /// own close (lapin then logs errors, and a one-shot command prints them).
    pub(crate) replies_running: tokio::sync::Mutex<()>,
    /// Outcome reports of this process's workers waiting for RabbitMQ's confirm.
    pub(crate) reports: consumer::ReportsInFlight,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("endpoint", &self.settings.target.endpoint)
            .field("connected", &self.link.current().is_some())
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// The shared state of a bridge over an open local store, before any task runs.
    pub(super) fn new(
        local: Arc<LocalBroker>,
        settings: RabbitSettings,
        reports: consumer::ReportsInFlight,
    ) -> Result<Self> {
        let reply_queue = super::report::reply_queue(&local.store_id()?);
        let now = local.clock().now_ms();
        let link = Arc::new(Link::new(settings.target.clone(), now));
        Ok(Self {
            settings,
            local,
            link,
            consumers: Consumers::default(),
            shutdown: CancellationToken::new(),
            forwarder_done: CancellationToken::new(),
            closed: Arc::new(Closed::default()),
            // Only queues a task of this engine uses are declared (issue 11 #10): those it
            // queues to and those its workers claim from, as they first do.
            known: Mutex::new(BTreeSet::new()),
            conflicts: Mutex::new(HashMap::new()),
            parked: Mutex::new(Parked {
                tasks: Vec::new(),
                since: Instant::now(),
            }),
            reply_queue,
            reply_queues: super::report::Declared::default(),
            replies_running: tokio::sync::Mutex::new(()),
            reports,
        })
    }

    pub(crate) fn lease_ms(&self) -> Millis {
        crate::clock::duration_millis(self.settings.lease)
    }

    /// Every queue this engine has used so far.
    pub(super) fn known_queues(&self) -> BTreeSet<String> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn remember_queues(&self, queues: impl IntoIterator<Item = String>) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        for queue in queues {
            if !known.contains(&queue) {
                known.insert(queue);
            }
        }
    }

    /// Remembers a conflict found for `queue` (other errors are not conflicts).
    pub(crate) fn note_conflict_for(&self, queue: &str, error: &RabbitError) {
        let conflict = match error {
            RabbitError::TopologyConflict {
                object,
                expected,
                detail,
            } => Conflict::Topology {
                object: object.clone(),
                expected: expected.clone(),
                detail: detail.clone(),
            },
            RabbitError::QueueName { queue, reason } => Conflict::Name {
                queue: queue.clone(),
                reason: reason.clone(),
            },
            _ => return,
        };
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned(), conflict);
    }

    /// The conflict known for `queue`, as an error.
    pub(crate) fn check_queue(&self, queue: &str) -> Result<(), RabbitError> {
        match self
            .conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
        {
            Some(conflict) => Err(conflict.error()),
            None => Ok(()),
        }
    }

    pub(crate) fn is_parked_queue(&self, queue: &str) -> bool {
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(queue)
    }

    pub(crate) fn park(&self, task: ReadyTask) {
        self.local.hold_back(vec![task.clone()]);
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tasks
            .push(task);
    }

    fn unpark(&self) {
        self.conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let tasks = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            parked.since = Instant::now();
            std::mem::take(&mut parked.tasks)
        };
        if !tasks.is_empty() {
            self.local.put_back(tasks);
        }
    }

    /// Every [`UNPARK_EVERY`], forgets conflicts and retries the tasks held back by them.
    pub(crate) fn unpark_if_due(&self) {
        let due = {
            let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            parked.since.elapsed() >= UNPARK_EVERY
        };
        let any = !self
            .conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if due && any {
            self.unpark();
        }
    }

    /// A new connection: retry what conflicts held back, declare every known queue, start
    /// every worker's consumers.
    pub(super) async fn on_session(self: &Arc<Self>, session: Arc<Session>) {
        tokio::spawn(super::replies::run(Arc::clone(self), Arc::clone(&session)));
        self.unpark();
        for queue in self.known_queues() {
            if let Err(error) = session.ensure_queue(&queue).await {
                tracing::error!(%error, "cannot declare a queue in RabbitMQ");
                self.note_conflict_for(&queue, &error);
            }
        }
        for set in self.consumers.all_sets() {
            if let Err(error) = consumer::start_set(self, &session, &set).await {
                tracing::error!(%error, "cannot start consuming from RabbitMQ");
            }
        }
        // Reports a crash or the lost connection left unconfirmed.
        consumer::resend(self).await;
    }

    pub(super) async fn rabbit_stats(&self, queues: BTreeSet<String>) -> RabbitStats {
        let mut stats = empty_stats(&self.settings.target, &queues);
        let Some(session) = self.link.current() else {
            stats.error = Some(self.link.describe());
            return stats;
        };
        stats.connected = true;
        count_within(&session, &queues, &mut stats, |queue, error| {
            self.note_conflict_for(queue, error);
        })
        .await;
        stats
    }
}
