//! Every (status, move) pair of the state machine: the allowed ones give the documented next
//! status and effects, every other pair the documented error. No store, no runtime.

use serde_json::json;

use super::*;
use crate::task::Route;

const ID: TaskId = TaskId::from_u128(42);
const NOW: Millis = 1_000_000;
const SEQ: u64 = 7;

/// A task in `status`, as the store would hold it: waiting under (5, NOW - 10, SEQ), RUNNING
/// under attempt 1, finished at NOW - 5.
fn task_in(status: TaskStatus) -> StoredTask {
    let finished = status.is_terminal();
    StoredTask {
        priority: 5,
        status,
        attempts: u32::from(status != TaskStatus::Pending),
        created_at: NOW - 100,
        scheduled_at: NOW - 10,
        due_at: NOW - 10,
        started_at: (status == TaskStatus::Running).then_some(NOW - 20),
        finished_at: finished.then_some(NOW - 5),
        ..StoredTask::pending_example("t", "q", r#"{"args":[],"kwargs":{}}"#, SEQ)
    }
}

fn failed(kind: FailureKind) -> Outcome {
    Outcome::Failed {
        failure: TaskFailure {
            message: "boom".into(),
            kind,
        },
        retry_after: Some(Duration::from_secs(2)),
    }
}

/// The moves of the table, each applied to a task in a given status.
#[derive(Clone, Copy, Debug)]
enum Move {
    Claim,
    Complete,
    Fail,
    FailPermanently,
    Release,
    Orphan,
    Cancel,
    CancelWhileForwarding,
    Retry,
    Forward,
    /// Run 2 started (reported over RabbitMQ).
    ReportStart,
    /// Run 1 completed (reported).
    ReportCompleted,
    /// Run 2 failed with a retry left (reported).
    ReportRetrying,
    /// Run 1 failed for good (reported).
    ReportFailed,
}

fn reported_end(attempt: u32, status: TaskStatus) -> Report {
    Report::Ended(RunEnd {
        attempt,
        status,
        started_at: Some(NOW - 3),
        at: NOW,
        result: (status == TaskStatus::Completed).then(|| "\"ok\"".to_owned()),
        error: (status != TaskStatus::Completed).then(|| StoredFailure {
            message: "boom".into(),
            kind: FailureKind::Error,
        }),
        retry_at: (status == TaskStatus::Retrying).then_some(NOW + 500),
    })
}

const MOVES: [Move; 14] = [
    Move::Claim,
    Move::Complete,
    Move::Fail,
    Move::FailPermanently,
    Move::Release,
    Move::Orphan,
    Move::Cancel,
    Move::CancelWhileForwarding,
    Move::Retry,
    Move::Forward,
    Move::ReportStart,
    Move::ReportCompleted,
    Move::ReportRetrying,
    Move::ReportFailed,
];

fn apply(task: StoredTask, mv: Move, next_seq: &mut u64) -> Result<Step, Error> {
    let taken = order_of(&task);
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq,
    };
    match mv {
        Move::Claim => claim(task, ID, taken, NOW),
        Move::Complete => settle(
            task,
            ID,
            1,
            &Outcome::Completed { result: json!(1) },
            &mut ctx,
        ),
        Move::Fail => settle(task, ID, 1, &failed(FailureKind::Error), &mut ctx),
        Move::FailPermanently => settle(task, ID, 1, &failed(FailureKind::Permanent), &mut ctx),
        Move::Release => settle(task, ID, 1, &Outcome::Released, &mut ctx),
        Move::Orphan => orphan(task, ID, 1, Orphaned::LeaseExpired, &mut ctx),
        Move::Cancel => cancel(task, ID, false, NOW, "ops".into()),
        Move::CancelWhileForwarding => cancel(task, ID, true, NOW, "ops".into()),
        Move::Retry => retry(task, ID, &mut ctx),
        Move::Forward => forward(task, ID, taken, NOW),
        Move::ReportStart => report(
            task,
            ID,
            &Report::Started {
                attempt: 2,
                at: NOW,
            },
        ),
        Move::ReportCompleted => report(task, ID, &reported_end(1, TaskStatus::Completed)),
        Move::ReportRetrying => report(task, ID, &reported_end(2, TaskStatus::Retrying)),
        Move::ReportFailed => report(task, ID, &reported_end(1, TaskStatus::Failed)),
    }
}

/// What the table expects of a pair.
#[derive(Debug, PartialEq)]
enum Expect {
    Next(TaskStatus),
    WrongState,
    Stale,
}

fn expected(status: TaskStatus, mv: Move) -> Expect {
    use Expect::{Next, Stale, WrongState};
    use TaskStatus as S;
    let waiting = status.is_waiting();
    let running = status == S::Running;
    match mv {
        Move::Claim if waiting => Next(S::Running),
        Move::Complete if running => Next(S::Completed),
        Move::Fail | Move::Orphan if running => Next(S::Retrying),
        Move::FailPermanently if running => Next(S::Failed),
        Move::Release if running => Next(S::Pending),
        Move::Complete | Move::Fail | Move::FailPermanently | Move::Release | Move::Orphan => Stale,
        Move::Cancel if waiting => Next(S::Cancelled),
        Move::Retry if matches!(status, S::Failed | S::Cancelled) => Next(S::Pending),
        Move::Forward if waiting => Next(S::Forwarded),
        // Newer than anything a record in the table shows (run 1 at most).
        Move::ReportStart => Next(S::Running),
        Move::ReportRetrying => Next(S::Retrying),
        // Run 1's end is news only to a record that has not seen it end: before its first
        // run (PENDING) or while it shows run 1 started.
        Move::ReportCompleted if status == S::Pending || running => Next(S::Completed),
        Move::ReportFailed if status == S::Pending || running => Next(S::Failed),
        Move::ReportCompleted | Move::ReportFailed => Stale,
        _ => WrongState,
    }
}

#[test]
fn every_status_and_move_gives_the_documented_result() {
    let mut checked = 0;
    for status in TaskStatus::ALL {
        for mv in MOVES {
            let mut next_seq = 100;
            let got = match apply(task_in(status), mv, &mut next_seq) {
                Ok(step) => {
                    assert_eq!(step.previous, Some(status), "{status:?} x {mv:?}");
                    Expect::Next(step.task.status)
                }
                Err(Error::WrongState { status: s, id, .. }) => {
                    assert_eq!((s, id), (status, ID), "{mv:?}");
                    Expect::WrongState
                }
                Err(Error::StaleAttempt { status: s, .. }) => {
                    assert_eq!(s, status, "{mv:?}");
                    Expect::Stale
                }
                Err(other) => panic!("{status:?} x {mv:?}: unexpected {other}"),
            };
            assert_eq!(got, expected(status, mv), "{status:?} x {mv:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * MOVES.len());
}

#[test]
fn each_allowed_move_has_its_effects() {
    let mut next_seq = 100;
    let waiting = order_of(&task_in(TaskStatus::Pending));
    let effects = |status, mv, next_seq: &mut u64| {
        let step = apply(task_in(status), mv, next_seq).expect("allowed");
        (step.effects.iter().collect::<Vec<_>>(), step)
    };

    let (claim, step) = effects(TaskStatus::Pending, Move::Claim, &mut next_seq);
    assert_eq!(claim, [Effect::Dequeue(waiting), Effect::Lease(1)]);
    assert_eq!((step.task.attempts, step.task.started_at), (1, Some(NOW)));

    let (complete, step) = effects(TaskStatus::Running, Move::Complete, &mut next_seq);
    assert_eq!(
        complete,
        [Effect::Unlease, Effect::Finish(TaskStatus::Completed, NOW)]
    );
    assert_eq!(step.task.result.as_deref(), Some("1"));

    let (retry, step) = effects(TaskStatus::Running, Move::Fail, &mut next_seq);
    let retry_order = ReadyOrder::new(5, NOW + 2_000, 100);
    assert_eq!(retry, [Effect::Unlease, Effect::Wait(retry_order)]);
    assert_eq!(step.retry_at, Some(NOW + 2_000));
    assert_eq!(next_seq, 101, "a retry takes one sequence number");

    let (fail, step) = effects(TaskStatus::Running, Move::FailPermanently, &mut next_seq);
    assert_eq!(
        fail,
        [Effect::Unlease, Effect::Finish(TaskStatus::Failed, NOW)]
    );
    assert_eq!(
        step.task.error.map(|e| e.kind),
        Some(FailureKind::Permanent)
    );

    let (release, step) = effects(TaskStatus::Running, Move::Release, &mut next_seq);
    assert_eq!(
        release,
        [Effect::Unlease, Effect::Wait(ReadyOrder::new(5, NOW, 101))]
    );
    assert_eq!(step.task.attempts, 0, "a released attempt is not counted");

    let (orphan, step) = effects(TaskStatus::Running, Move::Orphan, &mut next_seq);
    assert_eq!(
        orphan,
        [Effect::Unlease, Effect::Wait(ReadyOrder::new(5, NOW, 102))]
    );
    assert_eq!(
        step.task.error.map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );

    let (cancel, _) = effects(TaskStatus::Retrying, Move::Cancel, &mut next_seq);
    assert_eq!(
        cancel,
        [
            Effect::Withdraw(waiting),
            Effect::Finish(TaskStatus::Cancelled, NOW)
        ]
    );

    let (retry, step) = effects(TaskStatus::Failed, Move::Retry, &mut next_seq);
    assert_eq!(
        retry,
        [
            Effect::Unfinish(TaskStatus::Failed, NOW - 5),
            Effect::Wait(ReadyOrder::new(5, NOW, 103))
        ]
    );
    assert_eq!((step.task.attempts, step.task.finished_at), (0, None));

    let (forward, _) = effects(TaskStatus::Pending, Move::Forward, &mut next_seq);
    assert_eq!(
        forward,
        [
            Effect::Withdraw(waiting),
            Effect::Finish(TaskStatus::Forwarded, NOW)
        ]
    );
}

#[test]
fn settlements_are_fenced_by_the_attempt() {
    let mut next_seq = 0;
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq: &mut next_seq,
    };
    let running = task_in(TaskStatus::Running);
    let done = Outcome::Completed {
        result: json!(null),
    };
    for attempt in [0, 2, 9] {
        match settle(running.clone(), ID, attempt, &done, &mut ctx) {
            Err(Error::StaleAttempt {
                attempt: reported,
                current: 1,
                status: TaskStatus::Running,
                ..
            }) => assert_eq!(reported, attempt),
            other => panic!("attempt {attempt}: {other:?}"),
        }
        assert!(matches!(
            orphan(
                running.clone(),
                ID,
                attempt,
                Orphaned::ProcessEnded,
                &mut ctx
            ),
            Err(Error::StaleAttempt { .. })
        ));
    }
    assert!(settle(running, ID, 1, &done, &mut ctx).is_ok());
}

#[test]
fn a_stale_heap_entry_cannot_be_claimed_or_forwarded() {
    let task = task_in(TaskStatus::Pending);
    let requeued_since = ReadyOrder::new(5, NOW - 10, SEQ - 1);
    assert!(matches!(
        claim(task.clone(), ID, requeued_since, NOW),
        Err(Error::WrongState { .. })
    ));
    assert!(matches!(
        forward(task, ID, requeued_since, NOW),
        Err(Error::WrongState { .. })
    ));
}

#[test]
fn retries_run_out_into_failed() {
    let mut next_seq = 0;
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq: &mut next_seq,
    };
    let mut task = task_in(TaskStatus::Running);
    task.attempts = 4; // max_retries 3: this was the last allowed attempt
    let step = orphan(task, ID, 4, Orphaned::ProcessEnded, &mut ctx).expect("fenced right");
    assert_eq!(step.task.status, TaskStatus::Failed);
    let message = step.task.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("crash or kill"), "{message}");
}

#[test]
fn a_released_run_is_never_recorded_as_finished() {
    let mut next_seq = 0;
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq: &mut next_seq,
    };
    let task = task_in(TaskStatus::Running);
    assert!(matches!(
        finish_run(task, ID, &Outcome::Released, &mut ctx),
        Err(Error::WrongState { .. })
    ));
}

#[test]
fn discarding_removes_exactly_the_rows_a_status_has() {
    for status in TaskStatus::ALL {
        let task = task_in(status);
        let got: Vec<_> = discard(&task).iter().collect();
        let want = match status {
            TaskStatus::Pending | TaskStatus::Retrying => vec![Effect::Withdraw(order_of(&task))],
            TaskStatus::Running => vec![Effect::Unlease],
            _ => vec![Effect::Unfinish(status, NOW - 5)],
        };
        assert_eq!(got, want, "{status:?}");
    }
}

#[test]
fn queueing_takes_the_next_sequence_number() {
    let mut next_seq = 5;
    let step = queue(task_in(TaskStatus::Pending), &mut next_seq);
    assert_eq!(next_seq, 6);
    assert_eq!(step.previous, None);
    assert_eq!(
        step.effects.iter().collect::<Vec<_>>(),
        [Effect::Wait(ReadyOrder::new(5, NOW - 10, 5))]
    );
}

#[test]
fn reports_leave_the_rows_of_the_record_and_keep_none_of_their_own() {
    let mut forwarded = task_in(TaskStatus::Forwarded);
    forwarded.attempts = 0; // the producer never ran it
    let pending = task_in(TaskStatus::Pending);
    let started = report(
        forwarded,
        ID,
        &Report::Started {
            attempt: 1,
            at: NOW,
        },
    )
    .unwrap();
    assert_eq!(
        started.effects.iter().collect::<Vec<_>>(),
        [Effect::Unfinish(TaskStatus::Forwarded, NOW - 5)]
    );
    assert_eq!(started.task.route, Some(Route::Reported));
    assert_eq!(
        (started.task.attempts, started.task.started_at),
        (1, Some(NOW))
    );
    // A reported RUNNING record has no lease: the outcome only enters the finished index.
    let done = report(
        started.task.clone(),
        ID,
        &reported_end(1, TaskStatus::Completed),
    )
    .unwrap();
    assert_eq!(
        done.effects.iter().collect::<Vec<_>>(),
        [Effect::Finish(TaskStatus::Completed, NOW)]
    );
    assert_eq!(done.task.result.as_deref(), Some("\"ok\""));
    // Still in the outbox (its confirm not yet marked): it leaves the waiting index.
    let early = report(pending.clone(), ID, &reported_end(1, TaskStatus::Failed)).unwrap();
    assert_eq!(
        early.effects.iter().collect::<Vec<_>>(),
        [
            Effect::Withdraw(order_of(&pending)),
            Effect::Finish(TaskStatus::Failed, NOW)
        ]
    );
    assert_eq!(early.task.error.map(|e| e.message).as_deref(), Some("boom"));
    // A reported retry waits in the worker's store: no row here, nothing to claim, forward
    // or cancel, and discarding it removes nothing.
    let retrying = report(pending, ID, &reported_end(1, TaskStatus::Retrying)).unwrap();
    assert!(
        retrying
            .effects
            .iter()
            .eq([Effect::Withdraw(order_of(&task_in(TaskStatus::Pending)))])
    );
    assert_eq!(retrying.retry_at, Some(NOW + 500));
    let held = retrying.task;
    assert_eq!(discard(&held), Effects::default());
    let order = order_of(&held);
    assert!(matches!(
        claim(held.clone(), ID, order, NOW),
        Err(Error::WrongState { .. })
    ));
    assert!(matches!(
        forward(held.clone(), ID, order, NOW),
        Err(Error::WrongState { .. })
    ));
    assert!(matches!(
        cancel(held.clone(), ID, false, NOW, "ops".into()),
        Err(Error::WrongState { .. })
    ));
    let mut next_seq = 0;
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq: &mut next_seq,
    };
    let done = Outcome::Completed { result: json!(1) };
    let mut running = held.clone();
    running.status = TaskStatus::Running;
    assert!(matches!(
        settle(running, ID, 1, &done, &mut ctx),
        Err(Error::StaleAttempt { .. })
    ));
}

#[test]
fn reports_are_idempotent_and_out_of_order_safe() {
    let start = |attempt| Report::Started { attempt, at: NOW };
    let end = |attempt, status| reported_end(attempt, status);
    // Every order of run 1's start and end, run 2's start and end, each delivered twice:
    // the record ends where the newest report puts it.
    let reports = [
        start(1),
        end(1, TaskStatus::Retrying),
        start(2),
        end(2, TaskStatus::Completed),
    ];
    let mut orders = vec![vec![0usize, 1, 2, 3]];
    orders.push(vec![3, 2, 1, 0]);
    orders.push(vec![1, 0, 3, 2]);
    orders.push(vec![2, 0, 3, 1]);
    for order in orders {
        let mut task = task_in(TaskStatus::Forwarded);
        task.attempts = 0;
        let mut applied = 0;
        for index in order.iter().chain(order.iter()) {
            match report(task.clone(), ID, &reports[*index]) {
                Ok(step) => {
                    task = step.task;
                    applied += 1;
                }
                Err(Error::StaleAttempt { .. }) => {}
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(
            (task.status, task.attempts),
            (TaskStatus::Completed, 2),
            "{order:?}"
        );
        assert!(applied <= 4, "{order:?}: {applied}");
        assert_eq!(task.result.as_deref(), Some("\"ok\""));
    }
    // An end whose status is not an outcome is refused.
    let wrong = report(
        task_in(TaskStatus::Forwarded),
        ID,
        &end(2, TaskStatus::Pending),
    );
    assert!(matches!(wrong, Err(Error::WrongState { .. })));
}

#[test]
fn every_ended_run_and_only_those_carry_their_attempt_for_the_history() {
    let mut next_seq = 0;
    let mut ctx = Context {
        now: NOW,
        retry: RetryPolicy::default(),
        next_seq: &mut next_seq,
    };
    let ended_by = |outcome: &Outcome, ctx: &mut Context<'_>| {
        settle(task_in(TaskStatus::Running), ID, 1, outcome, ctx)
            .expect("fenced right")
            .ended
            .expect("a settled run is recorded")
    };
    let completed = ended_by(&Outcome::Completed { result: json!(1) }, &mut ctx);
    assert_eq!(
        (
            completed.attempt,
            completed.started_at,
            completed.finished_at
        ),
        (1, NOW - 20, NOW)
    );
    assert_eq!(completed.outcome, AttemptOutcome::Completed);
    assert_eq!(completed.error, None);
    let timed_out = ended_by(&failed(FailureKind::Timeout), &mut ctx);
    assert_eq!(timed_out.outcome, AttemptOutcome::Timeout);
    assert_eq!(timed_out.error.map(|e| e.message), Some("boom".to_owned()));
    let released = ended_by(&Outcome::Released, &mut ctx);
    assert_eq!(
        (released.attempt, released.outcome),
        (1, AttemptOutcome::Released)
    );
    let lost = orphan(
        task_in(TaskStatus::Running),
        ID,
        1,
        Orphaned::LeaseExpired,
        &mut ctx,
    )
    .expect("fenced right")
    .ended
    .expect("an orphaned run is recorded");
    assert_eq!(lost.outcome, AttemptOutcome::WorkerLost);
    // Moves that end no run record nothing.
    let claimed = claim(
        task_in(TaskStatus::Pending),
        ID,
        ReadyOrder::new(5, NOW - 10, SEQ),
        NOW,
    )
    .expect("waiting under that order");
    assert!(claimed.ended.is_none());
    let cancelled =
        cancel(task_in(TaskStatus::Pending), ID, false, NOW, "ops".into()).expect("waiting");
    assert!(cancelled.ended.is_none());
    assert_eq!(
        cancelled.task.cancelled_by.as_deref(),
        Some("ops"),
        "who cancelled is kept"
    );
    // A run reported over RabbitMQ: its end joins the producer's history (no worker named),
    // its start does not.
    let started = report(
        task_in(TaskStatus::Forwarded),
        ID,
        &Report::Started {
            attempt: 2,
            at: NOW - 5,
        },
    )
    .expect("newer");
    assert!(started.ended.is_none());
    let reported = report(
        task_in(TaskStatus::Forwarded),
        ID,
        &Report::Ended(RunEnd {
            attempt: 2,
            status: TaskStatus::Retrying,
            started_at: Some(NOW - 5),
            at: NOW,
            result: None,
            error: Some(StoredFailure {
                message: "late".into(),
                kind: FailureKind::Timeout,
            }),
            retry_at: Some(NOW + 1_000),
        }),
    )
    .expect("newer")
    .ended
    .expect("a reported end is recorded");
    assert_eq!(
        (reported.attempt, reported.started_at, reported.finished_at),
        (2, NOW - 5, NOW)
    );
    assert_eq!(reported.outcome, AttemptOutcome::Timeout);
    assert_eq!(reported.worker, None);
}
