//! Worker slots: after a short handler a slot claims a task ahead, so that it runs it while
//! the last settlement commits; a task claimed ahead of a handler that then runs long is handed
//! back (PENDING, its attempt uncounted) for another slot or worker.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{AttemptOutcome, Registry, TaskContext, TaskError, TaskStatus};
use serde_json::json;
use tokio::sync::Semaphore;

/// `test.quick` returns at once; `test.slow` runs until a permit of `gate` is added.
fn registry(gate: &Arc<Semaphore>) -> Registry {
    let mut registry = Registry::new();
    registry.register_async(
        "test.quick",
        |_: serde_json::Value, _ctx: TaskContext| async { Ok::<_, TaskError>(json!("quick")) },
    );
    common::register_gated(&mut registry, "test.slow", gate);
    registry
}

/// One worker of one slot runs a quick task, which claims the next two (the slow one and the
/// one after it) with its settlement. The slow one then blocks; the task claimed ahead of it
/// must not wait for it: it goes back to PENDING, and a second worker runs it while the slow
/// one still blocks. Whether the slot claims ahead depends on how long the quick handler took
/// (a slot claims ahead only after a handler under a millisecond, which a loaded machine can
/// miss), so the scenario is repeated until a hand-back shows in the task's history; every
/// round checks that the task after the slow one did not wait for it.
#[tokio::test]
async fn a_task_claimed_ahead_of_a_long_handler_is_handed_back_to_another_worker() -> fq::Result<()>
{
    let (_dir, engine) = common::engine();
    let gate = Arc::new(Semaphore::new(0));
    let queue = |name: &str, priority: i32| {
        engine
            .queue_task_named(name, &json!({}))
            .queue("q")
            .priority(priority)
            .send()
    };
    for _round in 0..10 {
        let quick = queue("test.quick", 3).await?;
        let slow = queue("test.slow", 2).await?;
        let after = queue("test.quick", 1).await?;
        let first = common::start_worker(&engine, registry(&gate), &["q"], 1);
        engine.wait(quick, common::PATIENCE).await?;
        common::until_status(&engine, slow, TaskStatus::Running).await;
        let second = common::start_worker(&engine, registry(&gate), &["q"], 1);
        let finished = engine.wait(after, Duration::from_secs(5)).await;
        let slow_then = engine.task(slow).await?.map(|task| task.status);
        gate.add_permits(1);
        assert_eq!(finished?.status, TaskStatus::Completed);
        assert_eq!(
            slow_then,
            Some(TaskStatus::Running),
            "the task after the slow one ran while the slow one still ran"
        );
        engine.wait(slow, common::PATIENCE).await?;
        first.stop().await;
        second.stop().await;

        let history = engine.attempts(after).await?;
        let outcomes: Vec<(u32, AttemptOutcome)> =
            history.iter().map(|a| (a.attempt, a.outcome)).collect();
        assert_eq!(engine.task(after).await?.map(|task| task.attempts), Some(1));
        if outcomes == [(1, AttemptOutcome::Completed)] {
            continue; // not claimed ahead this round
        }
        assert_eq!(
            outcomes,
            [
                (1, AttemptOutcome::Released),
                (1, AttemptOutcome::Completed)
            ],
            "claimed ahead by the first worker, handed back uncounted, run by the second"
        );
        return Ok(());
    }
    panic!("in 10 rounds the slot never claimed a task ahead after a quick handler");
}
