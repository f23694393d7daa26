//! `fq::testing`: a test engine in memory on a manual clock, `drain` running what is due
//! inline (retries and delays following the clock, follow-ups included, a bound against
//! endless requeueing), `perform` running one handler, `enqueued` / `assert_enqueued`, and
//! nothing left running once the test engine is closed. Handlers that panic here are async:
//! on a current-thread runtime they panic on this area's test thread, so the suite's panic
//! counting (`common::panics`) sees them as this area's.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use fq::testing::{Enqueued, TestEngine, TestingError};
use fq::{FailureKind, Registry, Task, TaskContext, TaskError, TaskSettings, TaskStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct SignUp {
    email: String,
}

impl Task for SignUp {
    const NAME: &'static str = "test.sign_up";
    type Output = String;

    /// Queues the welcome e-mail as a follow-up, and a reminder for tomorrow.
    async fn run(self, ctx: TaskContext) -> Result<String, TaskError> {
        Welcome {
            to: self.email.clone(),
        }
        .delay(&ctx)
        .await
        .map_err(TaskError::new)?;
        ctx.queue_task(Reminder { to: self.email })
            .delay(Duration::from_secs(86_400))
            .send()
            .await
            .map_err(TaskError::new)?;
        Ok("signed up".into())
    }
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    to: String,
}

impl Task for Welcome {
    const NAME: &'static str = "test.welcome";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("emails");
    type Output = serde_json::Value;

    /// Fails its first attempt (retried after the backoff), then sends.
    async fn run(self, ctx: TaskContext) -> Result<Self::Output, TaskError> {
        if ctx.attempt() == 1 {
            return Err(TaskError::new("smtp timeout"));
        }
        Ok(json!({"sent_to": self.to, "attempt": ctx.attempt()}))
    }
}

#[derive(Serialize, Deserialize)]
struct Reminder {
    to: String,
}

impl Task for Reminder {
    const NAME: &'static str = "test.reminder";
    const SETTINGS: TaskSettings = TaskSettings::new().queue("emails");
    type Output = ();

    async fn run(self, _ctx: TaskContext) -> Result<(), TaskError> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Forever {
    round: u64,
}

impl Task for Forever {
    const NAME: &'static str = "test.forever";
    type Output = ();

    /// Queues itself again, due at once: a drain would never end.
    async fn run(self, ctx: TaskContext) -> Result<(), TaskError> {
        Forever {
            round: self.round + 1,
        }
        .delay(&ctx)
        .await
        .map_err(TaskError::new)?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Fragile {
    mode: String,
}

impl Task for Fragile {
    const NAME: &'static str = "test.fragile";
    const SETTINGS: TaskSettings = TaskSettings::new().timeout(Duration::from_millis(50));
    type Output = u32;

    async fn run(self, _ctx: TaskContext) -> Result<u32, TaskError> {
        match self.mode.as_str() {
            "ok" => Ok(42),
            "error" => Err(TaskError::permanent("no such account")),
            "panic" => panic!("fragile handler exploded"),
            _ => std::future::pending().await,
        }
    }
}

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register::<SignUp>()
        .register::<Welcome>()
        .register::<Reminder>()
        .register::<Forever>()
        .register::<Fragile>();
    registry
}

#[tokio::test]
async fn drain_runs_what_is_due_with_its_follow_ups_and_retries_follow_the_clock() -> fq::Result<()>
{
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let test = TestEngine::builder()
        .registry(registry())
        .start_at(start)
        .open()?;
    assert_eq!(test.clock().now(), start);
    let sign_up = SignUp {
        email: "ada@example.com".into(),
    }
    .delay(&test)
    .await?;

    // The sign-up runs, its welcome follow-up runs in the same drain and fails once; the
    // reminder waits for tomorrow.
    let report = test.drain().await?;
    assert_eq!((report.completed, report.retried, report.failed), (1, 1, 0));
    let record = test.task(sign_up).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Completed);
    assert_eq!(record.result, Some(json!("signed up")));
    let welcome = test
        .assert_enqueued(Enqueued::task::<Welcome>().queue("emails"))
        .await;
    assert_eq!(welcome.status, TaskStatus::Retrying);
    assert_eq!(welcome.error.as_ref().unwrap().message, "smtp timeout");
    let reminder = test
        .assert_enqueued(
            Enqueued::of(&Reminder {
                to: "ada@example.com".into(),
            })
            .scheduled_at(start + TimeDelta::days(1)),
        )
        .await;
    assert_eq!(test.enqueued().await?.len(), 2);

    // Nothing is due until the clock reaches the retry's time (5 s ± 20%), to the millisecond.
    let wait = u64::try_from((welcome.due_at - start).num_milliseconds()).unwrap();
    assert!((4_000..=6_000).contains(&wait), "{wait} ms");
    test.clock().advance(Duration::from_millis(wait - 1));
    assert_eq!(test.drain().await?, fq::WorkerReport::default());
    test.clock().advance(Duration::from_millis(1));
    assert_eq!(test.drain().await?.completed, 1);
    let welcome = test.task(welcome.id).await?.unwrap();
    assert_eq!(welcome.status, TaskStatus::Completed);
    assert_eq!(
        welcome.result,
        Some(json!({"sent_to": "ada@example.com", "attempt": 2}))
    );

    // Only the reminder is left, and a day later it runs.
    assert_eq!(
        test.enqueued()
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [reminder.id]
    );
    test.clock().advance(Duration::from_secs(86_400));
    assert_eq!(test.drain().await?.completed, 1);
    assert!(test.enqueued().await?.is_empty());
    test.close().await
}

#[tokio::test]
async fn drain_queue_leaves_other_queues_alone() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let here = test
        .queue_task(Fragile { mode: "ok".into() })
        .queue("here")
        .send()
        .await?;
    let there = test
        .queue_task(Fragile { mode: "ok".into() })
        .queue("there")
        .send()
        .await?;
    assert_eq!(test.drain_queue("here").await?.completed, 1);
    assert_eq!(
        test.task(here).await?.unwrap().status,
        TaskStatus::Completed
    );
    assert_eq!(test.task(there).await?.unwrap().status, TaskStatus::Pending);
    let err = test.drain_queue("bad queue!").await.unwrap_err();
    assert!(
        matches!(err, fq::Error::InvalidInput { field: "queue", .. }),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_task_that_requeues_itself_at_once_stops_the_drain_at_its_limit() -> fq::Result<()> {
    let test = TestEngine::builder()
        .registry(registry())
        .drain_limit(25)
        .open()?;
    Forever { round: 0 }.delay(&test).await?;
    let err = test.drain().await.unwrap_err();
    match &err {
        fq::Error::Testing(TestingError::DrainLimit { attempts, next }) => {
            assert_eq!(*attempts, 25);
            assert_eq!(next, "test.forever");
        }
        other => panic!("expected DrainLimit, got {other}"),
    }
    assert!(err.to_string().contains("drain_limit"), "{err}");
    // The task due next was released, not left RUNNING: it waits, its attempt uncounted.
    let left = test.enqueued().await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, TaskStatus::Pending);
    assert_eq!(left[0].attempts, 0);
    assert_eq!(left[0].payload.to_value()["kwargs"]["round"], 25);
    let stats = test.stats().await?;
    assert_eq!(stats.queues["default"].completed, 25);
    assert_eq!(stats.queues["default"].running, 0);
    Ok(())
}

/// A drain given up on mid-attempt (here by a timeout shorter than the handler's) releases the
/// task it was running to PENDING, its attempt uncounted, instead of leaving it RUNNING.
#[tokio::test]
async fn a_drain_dropped_mid_attempt_releases_its_task() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    let id = test
        .queue_task(Fragile {
            mode: "hang".into(),
        })
        .send()
        .await?;
    let gave_up = tokio::time::timeout(Duration::from_millis(10), test.drain()).await;
    assert!(gave_up.is_err(), "the drain ended: {gave_up:?}");
    crate::common::eventually(
        "the task released",
        crate::common::PATIENCE,
        Duration::from_millis(5),
        || async { test.task(id).await.unwrap().unwrap().status == TaskStatus::Pending },
    )
    .await;
    let record = test.task(id).await?.unwrap();
    assert_eq!(record.attempts, 0);
    // It runs again on the next drain (and times out, for good: Fragile's default retries
    // leave it RETRYING).
    assert_eq!(test.drain().await?.retried, 1);
    Ok(())
}

#[tokio::test]
async fn perform_runs_one_handler_and_returns_its_result_or_its_failure() -> fq::Result<()> {
    let test = TestEngine::with_registry(registry())?;
    assert_eq!(
        test.perform(Fragile { mode: "ok".into() }).await,
        Ok(json!(42))
    );
    let failure = test
        .perform(Fragile {
            mode: "error".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Permanent);
    assert_eq!(failure.message, "no such account");
    let failure = test
        .perform(Fragile {
            mode: "panic".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Panic);
    assert!(failure.message.contains("fragile handler exploded"));
    let failure = test
        .perform(Fragile {
            mode: "hang".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::Timeout);

    // By name, through the registry: unknown names and bad arguments fail as a worker would.
    assert_eq!(
        test.perform_named("test.fragile", &json!({"kwargs": {"mode": "ok"}}))
            .await,
        Ok(json!(42))
    );
    let failure = test
        .perform_named("test.nobody", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::UnknownTask);
    let failure = test
        .perform_named("test.fragile", &json!({"kwargs": {"mode": 7}}))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::BadArguments);
    let failure = test
        .perform_named("test.fragile", &json!({"kwargz": {}}))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::BadArguments);
    assert!(failure.message.contains("payload"), "{}", failure.message);

    // Nothing performed is stored; the follow-ups a performed handler queues are.
    assert!(test.enqueued().await?.is_empty());
    assert_eq!(
        test.perform(SignUp {
            email: "b@example.com".into()
        })
        .await,
        Ok(json!("signed up"))
    );
    let names: Vec<String> = test.enqueued().await?.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["test.welcome", "test.reminder"]);
    assert_eq!(test.stats().await?.total(), 2);
    Ok(())
}

#[tokio::test]
async fn enqueued_matchers_select_by_name_queue_arguments_and_priority() -> fq::Result<()> {
    let test = TestEngine::new()?;
    let report = test
        .queue_task_named(
            "test.report",
            &json!({"args": ["monthly"], "kwargs": {"format": {"kind": "pdf", "pages": 3}}}),
        )
        .queue("reports")
        .priority(5)
        .send()
        .await?;
    Welcome {
        to: "ada@example.com".into(),
    }
    .delay(&test)
    .await?;

    let found = test
        .assert_enqueued(
            Enqueued::named("test.report")
                .queue("reports")
                .priority(5)
                .args(json!(["monthly"]))
                .kwargs(json!({"format": {"kind": "pdf"}})),
        )
        .await;
    assert_eq!(found.id, report);
    for wrong in [
        Enqueued::named("test.report").queue("default"),
        Enqueued::named("test.report").priority(4),
        Enqueued::named("test.report").args(json!([])),
        Enqueued::named("test.report").kwargs(json!({"format": {"kind": "csv"}})),
        Enqueued::task::<Welcome>().kwargs(json!({"to": "bob@example.com"})),
        Enqueued::task::<Reminder>(),
    ] {
        assert!(
            test.enqueued_matching(&wrong).await?.is_empty(),
            "{wrong} matched"
        );
        test.assert_not_enqueued(wrong).await;
    }
    assert_eq!(test.enqueued_matching(&Enqueued::any()).await?.len(), 2);
    assert_eq!(
        test.enqueued_matching(&Enqueued::task::<Welcome>().queue("emails"))
            .await?
            .len(),
        1
    );
    Ok(())
}

/// The panic message of `assertion`, run in a task of its own (on this current-thread
/// runtime, still on the test's thread); fails the test if it does not panic.
async fn panic_of(assertion: impl std::future::Future<Output = ()> + Send + 'static) -> String {
    let panicked = tokio::spawn(assertion)
        .await
        .expect_err("the assertion passed");
    *panicked
        .into_panic()
        .downcast::<String>()
        .expect("a formatted panic message")
}

#[tokio::test]
async fn a_failed_assertion_says_what_was_expected_and_lists_what_waits() -> fq::Result<()> {
    let test = Arc::new(TestEngine::new()?);
    Welcome {
        to: "ada@example.com".into(),
    }
    .delay(&*test)
    .await?;
    let asserting = Arc::clone(&test);
    let message = panic_of(async move {
        asserting
            .assert_enqueued(Enqueued::task::<Welcome>().kwargs(json!({"to": "bob@example.com"})))
            .await;
    })
    .await;
    assert!(
        message.contains(
            r#"no waiting task matches name "test.welcome", kwargs containing {"to":"bob@example.com"}"#
        ),
        "{message}"
    );
    assert!(message.contains("waiting tasks (1):"), "{message}");
    assert!(
        message.contains("test.welcome queue=emails priority=0 status=PENDING"),
        "{message}"
    );
    assert!(message.contains(r#""to":"ada@example.com""#), "{message}");

    let asserting = Arc::clone(&test);
    let message = panic_of(async move {
        asserting
            .assert_not_enqueued(Enqueued::task::<Welcome>())
            .await;
    })
    .await;
    assert!(
        message.contains(r#"expected no waiting task matching name "test.welcome", found 1"#),
        "{message}"
    );
    Ok(())
}

/// After `close`, nothing of the test engine runs: its store is closed (only possible once its
/// writer and timer threads are joined) and the runtime has no task of it left. A clone of its
/// engine kept alive elsewhere is reported instead of left running silently.
#[tokio::test]
async fn closing_leaves_no_thread_or_task_behind_and_reports_a_leaked_handle() -> fq::Result<()> {
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let test = TestEngine::with_registry(registry())?;
    for mode in ["ok", "error", "panic", "hang"] {
        test.queue_task(Fragile { mode: mode.into() })
            .max_retries(0)
            .send()
            .await?;
    }
    SignUp {
        email: "ada@example.com".into(),
    }
    .delay(&test)
    .await?;
    let report = test.drain().await?;
    assert_eq!((report.completed, report.retried, report.failed), (2, 1, 3));
    test.perform(Fragile {
        mode: "hang".into(),
    })
    .await
    .unwrap_err();
    let mut events = test.events().subscribe();
    test.close().await?;
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        tasks_before,
        "tokio tasks left running"
    );
    // The bus's senders are gone with the engine: the stream ends instead of waiting.
    let ended = tokio::time::timeout(crate::common::PATIENCE, events.recv()).await;
    assert!(matches!(ended, Ok(None)), "the event stream did not end");

    let test = TestEngine::new()?;
    let leaked = test.engine().clone();
    let err = test.close().await.unwrap_err();
    assert!(
        matches!(err, fq::Error::Testing(TestingError::StillOpen)),
        "{err}"
    );
    drop(leaked);
    Ok(())
}
