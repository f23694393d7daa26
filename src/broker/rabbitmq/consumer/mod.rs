//! The consuming side: one consumer channel per set of queues a worker serves (prefetch 4x
//! concurrency unless configured, manual acks), deliveries buffered until a worker claims them, and the rules
//! that settle a delivery. The outcome is committed to the local store *before* RabbitMQ is
//! told: success is recorded then acked; a retry is committed (it waits in the local delay
//! index and is forwarded again when due) then acked; a final failure, an undecodable message
//! or an unknown task goes to `<queue>.dead` with the reason in its headers.

mod report;
mod settle;
mod upkeep;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Confirmation, Consumer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::link::{Session, bounded, operation};
use super::message::{Incoming, dead_letter_properties, decode};
use super::topology::{DEAD_EXCHANGE, dead_queue, short};
use super::{Bridge, RabbitError};
use crate::broker::local::RunRecord;
use crate::broker::{Broker, Outcome, SettleReport, Settlement};
use crate::clock::{Millis, millis_to_datetime};
use crate::events::{Event, EventKind};
use crate::task::{TaskId, TaskRecord, TaskStatus};
use crate::{Error, Result};
pub(crate) use report::{RESEND_EVERY, ReportsInFlight, resend, run_sender};
pub(crate) use settle::{dead_letter, heartbeat, settle};
pub(crate) use upkeep::{stop_idle_sets, sweep};

/// How long an ack, nack or reject may take: one on a connection that died without closing
/// must not hold a worker slot (RabbitMQ redelivers the message once it notices).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends an ack, nack or reject; false when it did not reach RabbitMQ.
async fn acknowledge(
    what: &'static str,
    request: impl std::future::Future<Output = lapin::Result<bool>>,
) -> bool {
    match tokio::time::timeout(ACK_TIMEOUT, request).await {
        Ok(Ok(sent)) => sent,
        Ok(Err(error)) => {
            tracing::debug!(%error, what, "acknowledgement failed");
            false
        }
        Err(_) => {
            tracing::warn!(
                what,
                "RabbitMQ did not take an acknowledgement within {ACK_TIMEOUT:?}"
            );
            false
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

/// How long a dead letter's publisher confirm may take before fq falls back to a plain reject.
const DEAD_LETTER_CONFIRM: Duration = Duration::from_secs(10);
/// How long after a failed consumer start a claim tries again.
const START_RETRY: Duration = Duration::from_secs(5);
/// How long a consumer set may go without a claim (and without a delivery held by a worker)
/// before it is stopped and its prefetched messages go back to RabbitMQ: its worker stopped.
const IDLE_SET: Duration = Duration::from_secs(30);

/// A delivery waiting in the buffer for a worker.
struct Received {
    generation: u64,
    queue: Arc<str>,
    delivery: Delivery,
}

/// When the set's consumers last started, so each session starts them once.
#[derive(Default)]
struct StartState {
    generation: u64,
    retry_after: Option<tokio::time::Instant>,
}

/// The consumers of one set of queues (one worker's `queues`), on one channel.
pub(crate) struct ConsumerSet {
    queues: Vec<Arc<str>>,
    buffer: Mutex<VecDeque<Received>>,
    signal: Notify,
    started: tokio::sync::Mutex<StartState>,
    /// The running consumers' channel and the token that stops their readers.
    running: Mutex<Option<(lapin::Channel, CancellationToken)>>,
    /// Claims waiting on this set right now.
    claiming: std::sync::atomic::AtomicUsize,
    /// Deliveries of this set held by workers (not yet settled).
    held: std::sync::atomic::AtomicUsize,
    /// When the last claim on this set ended.
    last_claim: Mutex<tokio::time::Instant>,
}

/// Counts a claim in progress on a set, and when it ended.
struct Claiming<'a>(&'a ConsumerSet);

impl<'a> Claiming<'a> {
    fn new(set: &'a ConsumerSet) -> Self {
        set.claiming
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(set)
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        *self
            .0
            .last_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokio::time::Instant::now();
        self.0
            .claiming
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A delivery handed to a worker and not yet settled.
struct InFlight {
    /// The set it came from; dropping the entry releases its count there.
    set: Arc<ConsumerSet>,
    generation: u64,
    attempt: u32,
    deadline: Millis,
    queue: Arc<str>,
    delivery: Delivery,
    incoming: Incoming,
    started_at: Millis,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .held
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every consumer set and every delivery a worker holds.
#[derive(Default)]
pub(crate) struct Consumers {
    sets: Mutex<HashMap<Vec<Arc<str>>, Arc<ConsumerSet>>>,
    inflight: Mutex<HashMap<TaskId, InFlight>>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field(
                "sets",
                &self
                    .sets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .field(
                "inflight",
                &self
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len(),
            )
            .finish()
    }
}

impl Consumers {
    fn set(&self, queues: &[Arc<str>]) -> Arc<ConsumerSet> {
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(sets.entry(queues.to_vec()).or_insert_with(|| {
            Arc::new(ConsumerSet {
                queues: queues.to_vec(),
                buffer: Mutex::new(VecDeque::new()),
                signal: Notify::new(),
                started: tokio::sync::Mutex::new(StartState::default()),
                running: Mutex::new(None),
                claiming: std::sync::atomic::AtomicUsize::new(0),
                held: std::sync::atomic::AtomicUsize::new(0),
                last_claim: Mutex::new(tokio::time::Instant::now()),
            })
        }))
    }

    pub(crate) fn all_sets(&self) -> Vec<Arc<ConsumerSet>> {
        self.sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn take(&self, id: TaskId) -> Option<InFlight> {
        self.inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }
}

/// Starts a consumer of `queue` on `channel` (manual acks).
pub(crate) async fn basic_consume(
    channel: &lapin::Channel,
    queue: lapin::types::ShortString,
) -> std::result::Result<Consumer, RabbitError> {
    bounded("basic.consume", async {
        channel
            .basic_consume(
                queue,
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| operation("basic.consume", e))
    })
    .await
}

/// The next item of a lapin consumer stream.
pub(crate) async fn next_delivery(consumer: &mut Consumer) -> Option<lapin::Result<Delivery>> {
    std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut *consumer), cx)
    })
    .await
}

/// Starts `set`'s consumers on `session`, once per session.
pub(crate) async fn start_set(
    bridge: &Arc<Bridge>,
    session: &Arc<Session>,
    set: &Arc<ConsumerSet>,
) -> std::result::Result<(), RabbitError> {
    let mut state = set.started.lock().await;
    if state.generation == session.generation {
        return Ok(());
    }
    if state
        .retry_after
        .is_some_and(|at| tokio::time::Instant::now() < at)
    {
        return Ok(());
    }
    let started = async {
        for queue in &set.queues {
            if let Err(error) = session.ensure_queue(queue).await {
                bridge.note_conflict_for(queue, &error);
                return Err(error);
            }
        }
        let channel = session.open_channel("open a consumer channel").await?;
        let stop = CancellationToken::new();
        // RabbitMQ reads `global` as "shared by the channel's consumers": one limit for the
        // worker however many queues it serves.
        let global = set.queues.len() > 1;
        bounded("basic.qos", async {
            channel
                .basic_qos(bridge.settings.prefetch, BasicQosOptions { global })
                .await
                .map_err(|e| operation("basic.qos", e))
        })
        .await?;
        for queue in &set.queues {
            let consumer = basic_consume(&channel, short(queue, queue)?).await?;
            tokio::spawn(read_deliveries(
                consumer,
                channel.clone(),
                Arc::clone(set),
                Arc::clone(queue),
                Arc::clone(session),
                stop.clone(),
            ));
        }
        *set.running.lock().unwrap_or_else(PoisonError::into_inner) = Some((channel, stop));
        Ok::<(), RabbitError>(())
    }
    .await;
    match started {
        Ok(()) => {
            state.generation = session.generation;
            state.retry_after = None;
            tracing::debug!(queues = ?set.queues, prefetch = bridge.settings.prefetch, "consuming from RabbitMQ");
            Ok(())
        }
        Err(error) => {
            state.retry_after = Some(tokio::time::Instant::now() + START_RETRY);
            Err(error)
        }
    }
}

async fn read_deliveries(
    mut consumer: Consumer,
    channel: lapin::Channel,
    set: Arc<ConsumerSet>,
    queue: Arc<str>,
    session: Arc<Session>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = next_delivery(&mut consumer) => next,
            () = session.lost.cancelled() => break,
            // The set was stopped on purpose (see `stop_idle_sets`): not a failure.
            () = stop.cancelled() => return,
        };
        match next {
            Some(Ok(delivery)) => {
                set.buffer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_back(Received {
                        generation: session.generation,
                        queue: Arc::clone(&queue),
                        delivery,
                    });
                set.signal.notify_waiters();
            }
            Some(Err(error)) => {
                tracing::warn!(%error, queue = %queue, "the RabbitMQ consumer failed; reconnecting");
                session.lost.cancel();
                break;
            }
            None => {
                tracing::warn!(queue = %queue, "RabbitMQ cancelled the consumer (queue deleted?); reconnecting");
                session.lost.cancel();
                break;
            }
        }
    }
    // Deliveries of a lost session cannot be acknowledged any more: RabbitMQ redelivers them.
    set.buffer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|received| received.generation != session.generation);
    drop(channel);
}

fn record_of(incoming: &Incoming, queue: &str, started_at: Millis) -> TaskRecord {
    TaskRecord {
        id: incoming.id,
        name: incoming.name.clone(),
        queue: queue.to_owned(),
        priority: incoming.priority,
        payload: incoming.payload.clone(),
        status: TaskStatus::Running,
        attempts: incoming.attempt,
        max_retries: incoming.max_retries,
        timeout: incoming.timeout,
        created_at: millis_to_datetime(incoming.created_at),
        scheduled_at: millis_to_datetime(incoming.scheduled_at),
        due_at: millis_to_datetime(incoming.scheduled_at),
        started_at: Some(millis_to_datetime(started_at)),
        finished_at: None,
        result: None,
        error: None,
        unique_key: None,
        unique_for: None,
        cancelled_by: None,
    }
}

/// Takes up to `max` buffered deliveries of `set` and hands them to the caller as RUNNING
/// tasks; undecodable ones are dead-lettered on the way.
fn take_ready(bridge: &Arc<Bridge>, set: &Arc<ConsumerSet>, max: usize) -> Vec<TaskRecord> {
    let live = bridge.link.current();
    let generation = live.as_ref().map_or(0, |s| s.generation);
    let mut picked = Vec::new();
    {
        let mut buffer = set.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        while picked.len() < max.max(1) {
            let Some(received) = buffer.pop_front() else {
                break;
            };
            if received.generation == generation {
                picked.push(received);
            }
        }
    }
    let now = bridge.local.clock().now_ms();
    let mut records = Vec::with_capacity(picked.len());
    let mut held_back = Vec::new();
    let mut starts = Vec::new();
    for received in picked {
        let Some(session) = live.clone() else { break };
        match decode(
            &received.delivery.data,
            &received.delivery.properties,
            &bridge.settings.decode,
            now,
        ) {
            Ok(incoming) => {
                let mut inflight = bridge
                    .consumers
                    .inflight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if inflight.contains_key(&incoming.id) {
                    // The same task delivered again while a run of it is in progress (it was
                    // published twice): it waits until that run is settled, then runs again
                    // (at-least-once), instead of two runs sharing one settlement.
                    held_back.push(received);
                    continue;
                }
                records.push(record_of(&incoming, &received.queue, now));
                if let Some(reply_to) = &incoming.reply_to {
                    starts.push((incoming.id, reply_to.clone(), incoming.attempt, now));
                }
                set.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                inflight.insert(
                    incoming.id,
                    InFlight {
                        set: Arc::clone(set),
                        generation: received.generation,
                        attempt: incoming.attempt,
                        deadline: now.saturating_add(bridge.lease_ms()),
                        queue: received.queue,
                        delivery: received.delivery,
                        incoming,
                        started_at: now,
                    },
                );
            }
            Err(reason) => {
                tracing::warn!(queue = %received.queue, %reason, "dead-lettering a message fq cannot decode");
                let bridge = Arc::clone(bridge);
                tokio::spawn(async move {
                    let now = bridge.local.clock().now_ms();
                    dead_letter(
                        &session,
                        &received.queue,
                        &received.delivery,
                        &format!("undecodable message: {reason}"),
                        "undecodable",
                        None,
                        now,
                    )
                    .await;
                });
            }
        }
    }
    if !held_back.is_empty() {
        let mut buffer = set.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        buffer.extend(held_back);
    }
    if !starts.is_empty() {
        report::report_starts(bridge, starts);
    }
    // A delivery handed to a worker is this process's start of the run (RabbitMQ, not the
    // local writer, made it RUNNING), so the start's event is emitted here.
    let events = bridge.local.events();
    if events.has_audience() {
        let at = millis_to_datetime(now);
        for record in &records {
            let task = Arc::new(record.clone());
            events.emit(|| Event::new(EventKind::BeforeExecution, task, at));
        }
    }
    records
}

/// The Broker's `claim` over RabbitMQ.
pub(crate) async fn claim(
    bridge: &Arc<Bridge>,
    queues: &[Arc<str>],
    max: usize,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<TaskRecord>> {
    // A store that refuses writes cannot record runs: running tasks would only be redelivered.
    bridge.local.check_writable()?;
    for queue in queues {
        bridge.check_queue(queue)?;
    }
    let set = bridge.consumers.set(queues);
    let _claiming = Claiming::new(&set);
    bridge.remember_queues(queues.iter().map(|q| q.to_string()));
    if let Some(session) = bridge.link.current() {
        // Raced with shutdown and the connection: a declaration on a connection that died
        // without closing must not keep the worker from stopping.
        tokio::select! {
            started = start_set(bridge, &session, &set) => started?,
            () = cancel.cancelled() => return Ok(Vec::new()),
            () = session.lost.cancelled() => {}
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = set.signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let records = take_ready(bridge, &set, max);
        if !records.is_empty() {
            return Ok(records);
        }
        if !crate::broker::wait_for_work(notified, deadline, cancel).await {
            return Ok(Vec::new());
        }
    }
}

/// The Broker's non-waiting claim after a settlement: whatever is buffered already.
pub(crate) fn claim_buffered(
    bridge: &Arc<Bridge>,
    queues: &[Arc<str>],
    max: usize,
) -> Vec<TaskRecord> {
    if max == 0 {
        return Vec::new();
    }
    let set = bridge.consumers.set(queues);
    take_ready(bridge, &set, max)
}

fn stale(id: TaskId, attempt: u32) -> Error {
    Error::StaleAttempt {
        id,
        attempt,
        current: attempt,
        status: TaskStatus::Running,
    }
}
