//! Live workers (README "Live workers"): every worker, in the owning process or connected
//! over the control socket, announces itself and heartbeats; the owner lists the live ones
//! with their running attempts and counts, and those gone in the last hour with why.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use fq::{GoneReason, Registry, WorkerInfo};
use serde_json::json;
use tokio::sync::Semaphore;

/// A registry whose `test.block` runs until a permit of `gate` is added.
fn blocking(gate: &Arc<Semaphore>) -> Registry {
    let mut registry = Registry::new();
    common::register_gated(&mut registry, "test.block", gate);
    registry
}

#[tokio::test]
async fn a_local_worker_is_listed_with_its_running_task_then_as_stopped() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let gate = Arc::new(Semaphore::new(0));
    let worker = common::start_worker(&engine, blocking(&gate), &["busy", "other"], 3);
    let id = engine
        .queue_task_named("test.block", &json!({}))
        .queue("busy")
        .send()
        .await?;
    common::eventually(
        "the task running",
        common::PATIENCE,
        Duration::from_millis(20),
        || {
            let engine = engine.clone();
            async move {
                engine
                    .workers()
                    .await
                    .is_ok_and(|report| report.running(id).is_some())
            }
        },
    )
    .await;
    let report = engine.workers().await?;
    assert_eq!(report.live.len(), 1);
    let live = &report.live[0];
    assert_eq!(live.info.queues, ["busy", "other"]);
    assert_eq!(live.info.handlers, ["test.block"]);
    assert_eq!(live.info.concurrency, 3);
    assert_eq!(live.info.pid, std::process::id());
    assert_eq!(live.info.version, env!("CARGO_PKG_VERSION"));
    assert!(!live.info.host.is_empty());
    assert_eq!(live.running.len(), 1);
    assert_eq!((live.running[0].id, live.running[0].attempt), (id, 1));

    gate.add_permits(1);
    engine.wait(id, common::PATIENCE).await?;
    let report = engine.workers().await?;
    assert_eq!(report.live[0].completed, 1);
    assert!(report.live[0].running.is_empty());
    let worker_id = report.live[0].info.id;

    worker.stop().await;
    let report = engine.workers().await?;
    assert!(report.live.is_empty());
    assert_eq!(report.gone.len(), 1);
    assert_eq!(report.gone[0].info.id, worker_id);
    assert_eq!(report.gone[0].why, GoneReason::Stopped);
    assert_eq!(report.gone[0].completed, 1);
    Ok(())
}

#[tokio::test]
async fn a_worker_connected_over_the_socket_is_listed_by_the_owner() -> fq::Result<()> {
    let (_dir, engine, remote) = common::engine_and_remote().await;
    let gate = Arc::new(Semaphore::new(0));
    let worker = common::start_worker(&remote, blocking(&gate), &["far"], 2);
    common::eventually(
        "the remote worker listed",
        common::PATIENCE,
        Duration::from_millis(20),
        || {
            let engine = engine.clone();
            async move { engine.workers().await.is_ok_and(|r| r.live.len() == 1) }
        },
    )
    .await;
    // The connected handle reads the owner's list too.
    assert_eq!(remote.workers().await?.live, engine.workers().await?.live);
    let id = remote
        .queue_task_named("test.block", &json!({}))
        .queue("far")
        .send()
        .await?;
    // A remote worker's running attempts reach the owner with its next heartbeat.
    common::eventually(
        "the remote attempt listed",
        common::PATIENCE,
        Duration::from_millis(100),
        || {
            let engine = engine.clone();
            async move {
                engine
                    .workers()
                    .await
                    .is_ok_and(|r| r.running(id).is_some())
            }
        },
    )
    .await;
    gate.add_permits(1);
    remote.wait(id, common::PATIENCE).await?;
    worker.stop().await;
    let report = engine.workers().await?;
    assert!(report.live.is_empty());
    assert_eq!(report.gone[0].why, GoneReason::Stopped);
    Ok(())
}

#[tokio::test]
async fn a_worker_that_stops_heartbeating_is_lost() -> fq::Result<()> {
    let (_dir, engine, clock) = common::manual_engine();
    let broker = engine.broker();
    let info = WorkerInfo::of_this_process(vec!["q".into()], vec![], 1, clock.now());
    broker.announce_worker(info.clone()).await?;
    clock.advance(fq::WORKER_LOST_AFTER / 2);
    assert!(broker.worker_heartbeat(info.id, Vec::new()).await?);
    clock.advance(fq::WORKER_LOST_AFTER / 2);
    assert_eq!(
        engine.workers().await?.live.len(),
        1,
        "a heartbeat kept it alive"
    );

    clock.advance(fq::WORKER_LOST_AFTER + Duration::from_secs(1));
    let report = engine.workers().await?;
    assert!(report.live.is_empty());
    assert_eq!(report.gone.len(), 1);
    assert_eq!(report.gone[0].why, GoneReason::Lost);
    // Its heartbeat now asks it to announce itself again.
    assert!(!broker.worker_heartbeat(info.id, Vec::new()).await?);

    clock.advance(fq::WORKERS_GONE_KEPT);
    assert!(
        engine.workers().await?.gone.is_empty(),
        "gone workers are kept an hour"
    );
    Ok(())
}
