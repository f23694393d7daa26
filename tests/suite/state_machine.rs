//! The engine against a sequential model (reliability item 7): proptest draws sequences of
//! enqueue (queue, priority, delay, max_retries), claim (a set of queues), complete, fail
//! (retryable or permanent, with or without the handler's own retry delay), release, cancel,
//! retry, stale settlements, manual-clock advances and reopens; after every step each task's
//! status, attempts and due time, the claimed task (the claim order), every error and the
//! per-queue stats must equal the model's. Time is a manual clock; the lease is a day, so no
//! lease expires (tests/suite/fencing.rs and tests/suite/poison.rs cover expiry).
//!
//! Smoke size under `cargo test`: 64 sequences of up to 60 steps. `FQ_FULL=1` runs 1,000;
//! `PROPTEST_CASES=<n>` runs n; `FQ_SEED=<n>` replays a run, shrinking included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fq::{
    Broker, Engine, Error, FailureKind, ListQuery, ManualClock, Outcome, QueueStats, Settlement,
    TaskFailure, TaskId, TaskStatus,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::run;
use run::{full, seed};

const QUEUES: [&str; 3] = ["alpha", "beta", "gamma"];
const LEASE: Duration = Duration::from_secs(86_400);
/// The engine's default retry backoff: 5 s doubling, ±20%.
const RETRY_BASE_MS: i64 = 5_000;
const PATIENCE: Duration = Duration::from_secs(20);

fn cases() -> u32 {
    let full = full();
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 1_000 } else { 64 })
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: usize,
        priority: i32,
        delay_ms: Option<u64>,
        max_retries: u32,
    },
    /// Claims one task from the queues whose bit is set.
    Claim {
        queues: u8,
    },
    /// Settles the `pick`-th running task (any task when none runs) as completed; `stale`
    /// reports it under a wrong attempt number.
    Complete {
        pick: usize,
        stale: bool,
    },
    Fail {
        pick: usize,
        permanent: bool,
        retry_after_ms: Option<u64>,
    },
    /// Gives the `pick`-th running task back uncounted (a worker's shutdown).
    Release {
        pick: usize,
    },
    Cancel {
        pick: usize,
    },
    /// Puts the `pick`-th task back to PENDING with a fresh budget (allowed when FAILED or
    /// CANCELLED).
    Retry {
        pick: usize,
    },
    Advance {
        ms: u64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..QUEUES.len(), -2i32..=2, prop::option::weighted(0.3, 0u64..4_000), 0u32..=2)
            .prop_map(|(queue, priority, delay_ms, max_retries)| Op::Enqueue {
                queue,
                priority,
                delay_ms,
                max_retries,
            }),
        5 => (1u8..8).prop_map(|queues| Op::Claim { queues }),
        3 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, stale)| Op::Complete { pick, stale }),
        3 => (any::<usize>(), prop::bool::weighted(0.2), prop::option::weighted(0.7, 0u64..3_000))
            .prop_map(|(pick, permanent, retry_after_ms)| Op::Fail { pick, permanent, retry_after_ms }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        3 => prop_oneof![0u64..1_000, 1_000u64..30_000].prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Debug)]
struct ModelTask {
    id: TaskId,
    queue: usize,
    priority: i32,
    due_at: i64,
    seq: u64,
    status: TaskStatus,
    attempts: u32,
    max_retries: u32,
}

impl ModelTask {
    fn waiting(&self) -> bool {
        matches!(self.status, TaskStatus::Pending | TaskStatus::Retrying)
    }

    fn order(&self) -> (i64, i64, u64) {
        (-i64::from(self.priority), self.due_at, self.seq)
    }
}

#[derive(Debug, Default)]
struct Model {
    now: i64,
    tasks: Vec<ModelTask>,
    /// The engine's next sequence number (FIFO among equal priority and due time).
    next_seq: u64,
    /// Completion times since the last open (the engine keeps its rate in memory).
    completions: Vec<(usize, i64)>,
    /// A deliberately wrong model for the negative control: claims the worst ready task.
    reversed_claim_order: bool,
}

impl Model {
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn best_ready(&self, queues: u8) -> Option<usize> {
        let ready = (0..self.tasks.len()).filter(|&i| {
            let t = &self.tasks[i];
            t.waiting() && t.due_at <= self.now && queues & (1 << t.queue) != 0
        });
        if self.reversed_claim_order {
            ready.max_by_key(|&i| self.tasks[i].order())
        } else {
            ready.min_by_key(|&i| self.tasks[i].order())
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status == TaskStatus::Running)
            .collect()
    }

    /// What the engine does at open: every RUNNING task is an orphan (in lease-table order,
    /// by id), RETRYING at once while retries remain, else FAILED; sequence numbers restart
    /// after the largest one still waiting.
    fn reopen(&mut self) {
        self.next_seq = self
            .tasks
            .iter()
            .filter(|t| t.waiting())
            .map(|t| t.seq + 1)
            .max()
            .unwrap_or(0);
        let mut orphans = self.running();
        orphans.sort_by_key(|&i| self.tasks[i].id);
        for i in orphans {
            if self.tasks[i].attempts <= self.tasks[i].max_retries {
                let seq = self.take_seq();
                let now = self.now;
                let task = &mut self.tasks[i];
                task.status = TaskStatus::Retrying;
                task.due_at = now;
                task.seq = seq;
            } else {
                self.tasks[i].status = TaskStatus::Failed;
            }
        }
        self.completions.clear();
    }

    fn stats(&self) -> BTreeMap<String, QueueStats> {
        let mut stats: BTreeMap<String, QueueStats> = BTreeMap::new();
        for t in &self.tasks {
            let s = stats.entry(QUEUES[t.queue].to_owned()).or_default();
            match t.status {
                TaskStatus::Pending => s.pending += 1,
                TaskStatus::Running => s.running += 1,
                TaskStatus::Retrying => s.retrying += 1,
                TaskStatus::Completed => s.completed += 1,
                TaskStatus::Failed => s.failed += 1,
                TaskStatus::Cancelled => s.cancelled += 1,
                TaskStatus::Forwarded => s.forwarded += 1,
                other => panic!("the model never produces {other:?}"),
            }
            if t.waiting() {
                if t.due_at <= self.now {
                    s.ready += 1;
                    let waited = u64::try_from(self.now - t.due_at).unwrap_or(0);
                    s.oldest_ready_ms = Some(s.oldest_ready_ms.map_or(waited, |w| w.max(waited)));
                } else {
                    s.scheduled += 1;
                }
            }
        }
        let second = self.now.div_euclid(1000);
        for &(queue, at) in &self.completions {
            if at.div_euclid(1000) > second - 60 {
                stats
                    .get_mut(QUEUES[queue])
                    .expect("a completed task's queue")
                    .completed_last_minute += 1;
            }
        }
        stats
    }
}

/// The engine under test, with what it takes to reopen it.
struct Subject {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    engine: Option<Engine>,
}

impl Subject {
    fn open(&mut self) -> fq::Result<()> {
        self.engine = None;
        self.engine = Some(
            Engine::builder(self.dir.path().join("fq.redb"))
                .clock(self.clock.clone())
                .lease_duration(LEASE)
                .control(false)
                .open()?,
        );
        Ok(())
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("the engine is open")
    }

    fn broker(&self) -> Arc<dyn Broker> {
        self.engine().broker()
    }
}

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

fn queue_names(mask: u8) -> Vec<Arc<str>> {
    (0..QUEUES.len())
        .filter(|q| mask & (1 << q) != 0)
        .map(|q| Arc::from(QUEUES[q]))
        .collect()
}

/// Applies one step to both sides and checks the engine's immediate answer.
async fn step(model: &mut Model, subject: &mut Subject, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Enqueue {
            queue,
            priority,
            delay_ms,
            max_retries,
        } => {
            let mut task = subject
                .engine()
                .queue_task_named(
                    "sm.task",
                    &json!({ "args": [model.tasks.len()], "kwargs": {} }),
                )
                .queue(QUEUES[queue])
                .priority(priority)
                .max_retries(max_retries);
            if let Some(ms) = delay_ms {
                task = task.delay(Duration::from_millis(ms));
            }
            let id = task
                .send()
                .await
                .map_err(|e| fail(format!("enqueue: {e}")))?;
            let seq = model.take_seq();
            model.tasks.push(ModelTask {
                id,
                queue,
                priority,
                due_at: model.now + delay_ms.map_or(0, |ms| ms as i64),
                seq,
                status: TaskStatus::Pending,
                attempts: 0,
                max_retries,
            });
        }
        Op::Claim { queues } => {
            let expected = model.best_ready(queues);
            let wait = if expected.is_some() {
                PATIENCE
            } else {
                Duration::ZERO
            };
            let never = CancellationToken::new();
            let claimed = subject
                .broker()
                .claim(fq::ClaimRequest::new(&queue_names(queues), 1, wait, &never))
                .await
                .map_err(|e| fail(format!("claim: {e}")))?;
            let got: Vec<TaskId> = claimed.iter().map(|r| r.id).collect();
            let want: Vec<TaskId> = expected.iter().map(|&i| model.tasks[i].id).collect();
            prop_assert_eq!(
                &got,
                &want,
                "claim order on queues {:?}",
                queue_names(queues)
            );
            if let Some(i) = expected {
                let task = &mut model.tasks[i];
                task.status = TaskStatus::Running;
                task.attempts += 1;
                prop_assert_eq!(claimed[0].attempts, task.attempts);
                prop_assert_eq!(claimed[0].status, TaskStatus::Running);
            }
        }
        Op::Complete { pick, stale } => {
            settle(
                model,
                subject,
                pick,
                stale,
                Outcome::Completed {
                    result: json!("ok"),
                },
            )
            .await?;
        }
        Op::Fail {
            pick,
            permanent,
            retry_after_ms,
        } => {
            let outcome = Outcome::Failed {
                failure: TaskFailure {
                    message: "failed on purpose".into(),
                    kind: if permanent {
                        FailureKind::Permanent
                    } else {
                        FailureKind::Error
                    },
                },
                retry_after: retry_after_ms.map(Duration::from_millis),
            };
            settle(model, subject, pick, false, outcome).await?;
        }
        Op::Release { pick } => {
            settle(model, subject, pick, false, Outcome::Released).await?;
        }
        Op::Retry { pick } => {
            if model.tasks.is_empty() {
                return Ok(());
            }
            let i = pick % model.tasks.len();
            let answer = subject.engine().retry(model.tasks[i].id).await;
            if matches!(
                model.tasks[i].status,
                TaskStatus::Failed | TaskStatus::Cancelled
            ) {
                let record = answer.map_err(|e| fail(format!("retry: {e}")))?;
                prop_assert_eq!(record.status, TaskStatus::Pending);
                let (now, seq) = (model.now, model.take_seq());
                let task = &mut model.tasks[i];
                task.status = TaskStatus::Pending;
                task.attempts = 0;
                task.due_at = now;
                task.seq = seq;
            } else {
                match answer {
                    Err(Error::WrongState { status, .. }) => {
                        prop_assert_eq!(status, model.tasks[i].status);
                    }
                    other => {
                        return Err(fail(format!(
                            "retry of a {:?} task answered {other:?}",
                            model.tasks[i].status
                        )));
                    }
                }
            }
        }
        Op::Cancel { pick } => {
            if model.tasks.is_empty() {
                return Ok(());
            }
            let i = pick % model.tasks.len();
            let id = model.tasks[i].id;
            let answer = subject.engine().cancel(id).await;
            if model.tasks[i].waiting() {
                let record = answer.map_err(|e| fail(format!("cancel of a waiting task: {e}")))?;
                prop_assert_eq!(record.status, TaskStatus::Cancelled);
                model.tasks[i].status = TaskStatus::Cancelled;
            } else {
                match answer {
                    Err(Error::WrongState { status, .. }) => {
                        prop_assert_eq!(status, model.tasks[i].status);
                    }
                    other => {
                        return Err(fail(format!(
                            "cancel of a {:?} task answered {other:?}",
                            model.tasks[i].status
                        )));
                    }
                }
            }
        }
        Op::Advance { ms } => {
            subject.clock.advance(Duration::from_millis(ms));
            model.now += ms as i64;
            // The timer thread moves what became due into the ready heap on its own time:
            // wait (bounded) until the engine's ready counts reach the model's.
            let want = model.stats();
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let stats = subject
                    .engine()
                    .stats()
                    .await
                    .map_err(|e| fail(format!("stats: {e}")))?;
                let ready = |s: &BTreeMap<String, QueueStats>| -> Vec<(String, u64)> {
                    s.iter().map(|(q, s)| (q.clone(), s.ready)).collect()
                };
                if ready(&stats.queues) == ready(&want) || std::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Op::Reopen => {
            subject.open().map_err(|e| fail(format!("reopen: {e}")))?;
            model.reopen();
        }
    }
    Ok(())
}

async fn settle(
    model: &mut Model,
    subject: &Subject,
    pick: usize,
    stale: bool,
    outcome: Outcome,
) -> Result<(), TestCaseError> {
    let running = model.running();
    let (i, in_order) = match running.len() {
        0 if model.tasks.is_empty() => return Ok(()),
        0 => (pick % model.tasks.len(), false),
        n => (running[pick % n], !stale),
    };
    let attempt = if in_order {
        model.tasks[i].attempts
    } else {
        model.tasks[i].attempts + 1
    };
    let id = model.tasks[i].id;
    let answer = subject
        .broker()
        .settle(Settlement {
            id,
            attempt,
            outcome: outcome.clone(),
        })
        .await;
    if !in_order {
        return match answer {
            Err(Error::StaleAttempt {
                current, status, ..
            }) => {
                prop_assert_eq!(current, model.tasks[i].attempts);
                prop_assert_eq!(status, model.tasks[i].status);
                Ok(())
            }
            other => Err(fail(format!(
                "a settlement under attempt {attempt} of a {:?} task at attempt {} answered {other:?}",
                model.tasks[i].status, model.tasks[i].attempts
            ))),
        };
    }
    let report = answer.map_err(|e| fail(format!("settle: {e}")))?;
    let now = model.now;
    let (queue, attempts, max_retries) = {
        let t = &model.tasks[i];
        (t.queue, t.attempts, t.max_retries)
    };
    match outcome {
        Outcome::Completed { .. } => {
            model.tasks[i].status = TaskStatus::Completed;
            model.completions.push((queue, now));
        }
        Outcome::Failed {
            failure,
            retry_after,
        } => {
            if failure.kind.is_retryable() && attempts <= max_retries {
                let due_at = match retry_after {
                    Some(after) => now + after.as_millis() as i64,
                    None => {
                        // Jittered backoff: check the range, then adopt the engine's choice.
                        let nominal = RETRY_BASE_MS << (attempts - 1);
                        let at = report
                            .retry_at
                            .ok_or_else(|| fail("a retry without retry_at"))?;
                        let (low, high) = (nominal * 8 / 10, nominal * 12 / 10);
                        prop_assert!(
                            (now + low..=now + high).contains(&at),
                            "backoff of attempt {} is {} ms, outside {}..={}",
                            attempts,
                            at - now,
                            low,
                            high
                        );
                        at
                    }
                };
                let seq = model.take_seq();
                let task = &mut model.tasks[i];
                task.status = TaskStatus::Retrying;
                task.due_at = due_at;
                task.seq = seq;
                prop_assert_eq!(report.retry_at, Some(due_at));
            } else {
                model.tasks[i].status = TaskStatus::Failed;
            }
        }
        Outcome::Released => {
            let seq = model.take_seq();
            let task = &mut model.tasks[i];
            task.status = TaskStatus::Pending;
            task.attempts -= 1;
            task.due_at = now;
            task.seq = seq;
        }
        _ => return Err(fail("an outcome the model does not know")),
    }
    prop_assert_eq!(report.status, model.tasks[i].status);
    Ok(())
}

/// Compares every task and the stats with the model.
async fn compare(model: &Model, subject: &Subject) -> Result<(), TestCaseError> {
    let records = subject
        .engine()
        .list(ListQuery {
            limit: 10_000,
            ..ListQuery::default()
        })
        .await
        .map_err(|e| fail(format!("list: {e}")))?;
    prop_assert_eq!(records.len(), model.tasks.len(), "task count");
    let by_id: BTreeMap<TaskId, &fq::TaskRecord> = records.iter().map(|r| (r.id, r)).collect();
    for (i, task) in model.tasks.iter().enumerate() {
        let record = by_id
            .get(&task.id)
            .ok_or_else(|| fail(format!("task #{i} {} is missing", task.id)))?;
        prop_assert_eq!(
            (record.status, record.attempts),
            (task.status, task.attempts),
            "status and attempts of task #{}",
            i
        );
        prop_assert_eq!(record.queue.as_str(), QUEUES[task.queue]);
        prop_assert_eq!(record.priority, task.priority);
        if task.waiting() {
            prop_assert_eq!(
                record.due_at.timestamp_millis(),
                task.due_at,
                "due time of task #{}",
                i
            );
        }
    }
    let stats = subject
        .engine()
        .stats()
        .await
        .map_err(|e| fail(format!("stats: {e}")))?;
    let mut got = stats.queues;
    got.retain(|_, s| s.total() > 0);
    prop_assert_eq!(got, model.stats(), "stats");
    Ok(())
}

fn run_case(ops: &[Op], reversed_claim_order: bool) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("runtime: {e}")))?;
    runtime.block_on(async {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).unwrap());
        let mut model = Model {
            now: clock.now().timestamp_millis(),
            reversed_claim_order,
            ..Model::default()
        };
        let mut subject = Subject {
            dir: tempfile::tempdir().map_err(|e| fail(format!("temp dir: {e}")))?,
            clock,
            engine: None,
        };
        subject.open().map_err(|e| fail(format!("open: {e}")))?;
        for (n, op) in ops.iter().enumerate() {
            step(&mut model, &mut subject, op)
                .await
                .map_err(|e| fail(format!("step {n} {op:?}: {e}")))?;
            compare(&model, &subject)
                .await
                .map_err(|e| fail(format!("after step {n} {op:?}: {e}")))?;
        }
        Ok(())
    })
}

#[test]
fn the_engine_follows_a_sequential_model() {
    let seed = seed();
    let cases = cases();
    println!(
        "engine state machine: seed {seed} (FQ_SEED={seed} replays), {cases} cases \
         (PROPTEST_CASES sets more), up to 60 steps each"
    );
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&seed.rotate_left(32).to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::XorShift, &bytes));
    let steps = std::sync::atomic::AtomicUsize::new(0);
    let began = std::time::Instant::now();
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        steps.fetch_add(ops.len(), std::sync::atomic::Ordering::Relaxed);
        run_case(&ops, false)
    });
    println!(
        "  {} steps checked in {:.1} s",
        steps.into_inner(),
        began.elapsed().as_secs_f64()
    );
    if let Err(failure) = result {
        panic!("seed {seed}: {failure}");
    }
}

/// Negative control: the same check against a model that claims in reverse order must fail,
/// and proptest must shrink the failure to a short case, so the check is known to bite.
#[test]
fn the_check_fails_and_shrinks_against_a_model_with_the_claim_order_reversed() {
    let seed = seed();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..].copy_from_slice(&seed.rotate_left(32).to_le_bytes());
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::XorShift, &bytes));
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        run_case(&ops, true)
    });
    match result {
        Err(proptest::test_runner::TestError::Fail(reason, ops)) => {
            println!(
                "reversed claim order: caught, shrunk to {} step(s): {reason}",
                ops.len()
            );
            assert!(
                reason.to_string().contains("claim order"),
                "seed {seed}: failed for another reason: {reason}"
            );
            assert!(ops.len() <= 12, "seed {seed}: not shrunk: {ops:?}");
        }
        other => panic!("seed {seed}: the reversed model was not caught: {other:?}"),
    }
}
