//! The live workers of an engine: what each announced (id, host, pid, queues, handlers,
//! concurrency, version, start time), when it last heartbeated, which attempts it runs, and
//! the workers gone in the last hour with why. Kept in memory by the engine that owns the
//! store (no store writes: a heartbeat must cost no disk write); the writer reads it only to
//! name the worker of an attempt it settles. Must not touch the store or the runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::clock::{Millis, duration_millis, millis_to_datetime};
use crate::sync::Mutex;
use crate::task::{TaskId, WorkerId};

/// How often a worker heartbeats.
pub const WORKER_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A worker silent for this long is lost (six missed heartbeats: a busy machine may delay a
/// few, and a lost worker's tasks are recovered by their leases anyway).
pub const WORKER_LOST_AFTER: Duration = Duration::from_secs(30);
/// How long a gone worker stays listed.
pub const WORKERS_GONE_KEPT: Duration = Duration::from_secs(3_600);
/// At most this many gone workers are kept (a crash-looping worker must not grow the list).
const MAX_GONE: usize = 1_000;
/// At most this many live workers are listed (announcements come over the control socket).
const MAX_LIVE: usize = 10_000;

/// What a worker announces about itself when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The worker's id.
    pub id: WorkerId,
    /// The machine it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// The task names it has handlers for.
    pub handlers: Vec<String>,
    /// How many tasks it runs at once.
    pub concurrency: usize,
    /// The fq version it runs.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

impl WorkerInfo {
    /// The announcement of a worker of this process starting now.
    pub fn of_this_process(
        queues: Vec<String>,
        handlers: Vec<String>,
        concurrency: usize,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id: WorkerId::new(),
            host: host_name(),
            pid: std::process::id(),
            queues,
            handlers,
            concurrency,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
        }
    }
}

/// This machine's host name, or `"unknown"` when it cannot be read.
pub(crate) fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// One attempt a worker is running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunningAttempt {
    /// The task.
    pub id: TaskId,
    /// Its attempt number.
    pub attempt: u32,
    /// When the worker claimed it.
    pub since: DateTime<Utc>,
}

/// A worker that heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LiveWorker {
    /// What it announced.
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// Its last heartbeat (or announcement).
    pub last_seen: DateTime<Utc>,
    /// The attempts it runs now.
    pub running: Vec<RunningAttempt>,
    /// Attempts it ended as COMPLETED.
    pub completed: u64,
    /// Attempts it ended otherwise (error, timeout, panic, released).
    pub failed: u64,
}

/// Why a worker left the list of live ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GoneReason {
    /// It said it stopped.
    Stopped,
    /// It missed its heartbeats (crashed, killed, or cut off).
    Lost,
}

impl GoneReason {
    /// The snake_case name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            GoneReason::Stopped => "stopped",
            GoneReason::Lost => "lost",
        }
    }
}

/// A worker gone in the last hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GoneWorker {
    /// What it announced.
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// When it stopped, or when it was last seen (lost).
    pub gone_at: DateTime<Utc>,
    /// Why it is gone.
    pub why: GoneReason,
    /// Attempts it ended as COMPLETED.
    pub completed: u64,
    /// Attempts it ended otherwise.
    pub failed: u64,
}

/// The workers of an engine, as `Engine::workers` and `fq workers` report them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkersReport {
    /// Workers heartbeating now, oldest first.
    pub live: Vec<LiveWorker>,
    /// Workers gone in the last hour, most recent first.
    pub gone: Vec<GoneWorker>,
}

impl WorkersReport {
    /// The live workers serving `queue`.
    pub fn serving<'a>(&'a self, queue: &'a str) -> impl Iterator<Item = &'a LiveWorker> + 'a {
        self.live
            .iter()
            .filter(move |w| w.info.queues.iter().any(|q| q == queue))
    }

    /// The live worker running `id`, with that attempt.
    pub fn running(&self, id: TaskId) -> Option<(&LiveWorker, &RunningAttempt)> {
        self.live
            .iter()
            .find_map(|w| w.running.iter().find(|r| r.id == id).map(|r| (w, r)))
    }
}

struct Live {
    info: WorkerInfo,
    last_seen: Millis,
    completed: u64,
    failed: u64,
}

#[derive(Default)]
struct Inner {
    live: HashMap<WorkerId, Live>,
    gone: VecDeque<GoneWorker>,
    /// task → (attempt, worker, claimed at): who runs what, for the history and `why`.
    running: HashMap<TaskId, (u32, WorkerId, Millis)>,
}

impl Inner {
    fn leave(&mut self, id: WorkerId, why: GoneReason, at: Millis) {
        let Some(live) = self.live.remove(&id) else {
            return;
        };
        self.running.retain(|_, (_, worker, _)| *worker != id);
        self.gone.push_front(GoneWorker {
            info: live.info,
            gone_at: millis_to_datetime(at),
            why,
            completed: live.completed,
            failed: live.failed,
        });
        self.gone.truncate(MAX_GONE);
    }

    /// Moves workers silent since before `now - WORKER_LOST_AFTER` to the gone list, and
    /// forgets gone ones older than an hour.
    fn sweep(&mut self, now: Millis) {
        let lost_before = now.saturating_sub(duration_millis(WORKER_LOST_AFTER));
        let lost: Vec<(WorkerId, Millis)> = self
            .live
            .iter()
            .filter(|(_, live)| live.last_seen < lost_before)
            .map(|(id, live)| (*id, live.last_seen))
            .collect();
        for (id, last_seen) in lost {
            self.leave(id, GoneReason::Lost, last_seen);
        }
        let keep_after = millis_to_datetime(now.saturating_sub(duration_millis(WORKERS_GONE_KEPT)));
        self.gone.retain(|gone| gone.gone_at >= keep_after);
    }
}

/// The live workers of the engine that owns a store (see the module docs).
#[derive(Default)]
pub(crate) struct WorkerRegistry {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for WorkerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRegistry")
            .field("live", &self.lock().live.len())
            .finish()
    }
}

impl WorkerRegistry {
    fn lock(&self) -> crate::sync::MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held (map updates only).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A worker starts (or announces itself again after its owner restarted).
    pub(crate) fn announce(&self, info: WorkerInfo, now: Millis) {
        let mut inner = self.lock();
        inner.sweep(now);
        let id = info.id;
        if inner.live.len() >= MAX_LIVE && !inner.live.contains_key(&id) {
            tracing::warn!(worker = %id, "{MAX_LIVE} live workers listed already; this one is not");
            return;
        }
        let (completed, failed) = inner
            .live
            .get(&id)
            .map_or((0, 0), |live| (live.completed, live.failed));
        inner.live.insert(
            id,
            Live {
                info,
                last_seen: now,
                completed,
                failed,
            },
        );
    }

    /// A worker's heartbeat; false when the worker is not known (never announced, or lost):
    /// it should announce itself again.
    pub(crate) fn heartbeat(&self, id: WorkerId, now: Millis) -> bool {
        let mut inner = self.lock();
        inner.sweep(now);
        match inner.live.get_mut(&id) {
            Some(live) => {
                live.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// A worker says it stopped.
    pub(crate) fn stopped(&self, id: WorkerId, now: Millis) {
        let mut inner = self.lock();
        inner.leave(id, GoneReason::Stopped, now);
        inner.sweep(now);
    }

    /// Worker `worker` claimed these attempts.
    pub(crate) fn claimed(&self, worker: WorkerId, attempts: &[(TaskId, u32)], now: Millis) {
        let mut inner = self.lock();
        if let Some(live) = inner.live.get_mut(&worker) {
            live.last_seen = now;
        }
        for (id, attempt) in attempts {
            inner.running.insert(*id, (*attempt, worker, now));
        }
    }

    /// A heartbeat's list of the attempts `worker` runs: records those not yet known (a
    /// remote worker's claims reach the owner this way, or with their settlement).
    pub(crate) fn still_running(&self, worker: WorkerId, attempts: &[(TaskId, u32)], now: Millis) {
        let mut inner = self.lock();
        for (id, attempt) in attempts {
            let known = inner
                .running
                .get(id)
                .is_some_and(|(running, _, _)| running == attempt);
            if !known {
                inner.running.insert(*id, (*attempt, worker, now));
            }
        }
    }

    /// Attempt `attempt` of `id` ended (`completed` or not): the worker that ran it, which
    /// forgets it.
    pub(crate) fn ended(&self, id: TaskId, attempt: u32, completed: bool) -> Option<WorkerId> {
        let mut inner = self.lock();
        let (running, worker, _) = *inner.running.get(&id)?;
        if running != attempt {
            return None;
        }
        inner.running.remove(&id);
        if let Some(live) = inner.live.get_mut(&worker) {
            if completed {
                live.completed += 1;
            } else {
                live.failed += 1;
            }
        }
        Some(worker)
    }

    /// The workers now, after moving silent ones to the gone list.
    pub(crate) fn report(&self, now: Millis) -> WorkersReport {
        let mut inner = self.lock();
        inner.sweep(now);
        let mut running: HashMap<WorkerId, Vec<RunningAttempt>> = HashMap::new();
        for (id, (attempt, worker, since)) in &inner.running {
            running.entry(*worker).or_default().push(RunningAttempt {
                id: *id,
                attempt: *attempt,
                since: millis_to_datetime(*since),
            });
        }
        let mut live: Vec<LiveWorker> = inner
            .live
            .values()
            .map(|live| {
                let mut tasks = running.remove(&live.info.id).unwrap_or_default();
                tasks.sort_by_key(|r| (r.since, r.id));
                LiveWorker {
                    info: live.info.clone(),
                    last_seen: millis_to_datetime(live.last_seen),
                    running: tasks,
                    completed: live.completed,
                    failed: live.failed,
                }
            })
            .collect();
        live.sort_by_key(|w| (w.info.started_at, w.info.id));
        WorkersReport {
            live,
            gone: inner.gone.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(queues: &[&str]) -> WorkerInfo {
        WorkerInfo::of_this_process(
            queues.iter().map(|q| (*q).to_owned()).collect(),
            vec!["t".into()],
            4,
            millis_to_datetime(0),
        )
    }

    #[test]
    fn silent_workers_are_lost_and_stopped_ones_say_so() {
        let registry = WorkerRegistry::default();
        let quiet = info(&["a"]);
        let polite = info(&["b"]);
        registry.announce(quiet.clone(), 0);
        registry.announce(polite.clone(), 0);
        assert_eq!(registry.report(1_000).live.len(), 2);
        registry.stopped(polite.id, 2_000);
        assert!(registry.heartbeat(quiet.id, 2_000));
        let report = registry.report(2_000 + duration_millis(WORKER_LOST_AFTER) + 1);
        assert!(report.live.is_empty());
        let whys: Vec<_> = report.gone.iter().map(|g| (g.info.id, g.why)).collect();
        assert!(whys.contains(&(polite.id, GoneReason::Stopped)));
        assert!(whys.contains(&(quiet.id, GoneReason::Lost)));
        assert!(
            !registry.heartbeat(quiet.id, 40_000),
            "a lost worker must re-announce"
        );
        let report = registry.report(2_000 + duration_millis(WORKERS_GONE_KEPT) + 60_000);
        assert!(report.gone.is_empty(), "gone workers are kept an hour");
    }

    #[test]
    fn attempts_name_their_worker_once() {
        let registry = WorkerRegistry::default();
        let worker = info(&["a"]);
        registry.announce(worker.clone(), 0);
        let task = TaskId::new();
        registry.claimed(worker.id, &[(task, 1)], 10);
        let report = registry.report(20);
        assert_eq!(
            report.running(task).map(|(w, r)| (w.info.id, r.attempt)),
            Some((worker.id, 1))
        );
        assert_eq!(registry.ended(task, 2, true), None, "another attempt's end");
        assert_eq!(registry.ended(task, 1, true), Some(worker.id));
        assert_eq!(registry.ended(task, 1, true), None);
        let report = registry.report(30);
        assert_eq!(report.live[0].completed, 1);
        assert!(report.live[0].running.is_empty());
    }
}
