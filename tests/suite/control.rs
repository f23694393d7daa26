//! The control socket end to end: the socket file's mode and life, one live server per store,
//! remote producers and workers through `Engine::connect` (fenced like local ones), pipelining,
//! malformed input refused without harming other clients, TCP with tokens, the connection
//! limit, reconnection, and the acceptance run: a server process and two remote worker
//! processes draining 10,000 tasks exactly once, and again with one worker killed mid-run.
//!
//! The processes are this test binary run again (`FQ_CONTROL_CHILD` = `server` or `worker`),
//! filtered to `control::child_process` (`common::child::rerun`), as `recovery` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;
use crate::common::child::{self, ChildGuard};

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fq::{
    Config, ConnectOptions, ControlError, Engine, Error, Outcome, Registry, Settlement,
    TaskContext, TaskError, TaskId, TaskStatus,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use common::PATIENCE;

// --- helpers ----------------------------------------------------------------------------------

fn store(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("fq.redb")
}

fn socket_of(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("fq.redb.sock")
}

fn unix_addr(path: &Path) -> String {
    format!("unix:{}", path.display())
}

async fn connect(path: &Path) -> Engine {
    Engine::connect(&unix_addr(path)).await.expect("connect")
}

fn echo_registry() -> Registry {
    let mut registry = Registry::new();
    registry.register_async("test.echo", |args: Value, ctx: TaskContext| async move {
        Ok::<_, TaskError>(json!({"echo": args, "attempt": ctx.attempt()}))
    });
    registry
}

/// Waits until `task` is COMPLETED, through whichever engine is given.
async fn wait_completed(engine: &Engine, id: TaskId) -> fq::TaskRecord {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let record = engine.task(id).await.unwrap().expect("task exists");
        if record.status == TaskStatus::Completed {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} still {} after {PATIENCE:?}",
            record.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw protocol connection, for what the Rust client never sends.
struct Raw {
    stream: UnixStream,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        Raw {
            stream: UnixStream::connect(path).await.expect("raw connect"),
        }
    }

    /// Connects and completes the handshake; returns the server's hello.
    async fn ready(path: &Path) -> (Raw, Value) {
        let mut raw = Raw::connect(path).await;
        raw.send(&json!({"hello": {"protocol": 1, "client": "raw test"}}))
            .await;
        let hello = raw.recv().await.expect("hello answer");
        assert!(hello.get("hello").is_some(), "{hello}");
        (raw, hello)
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    async fn send(&mut self, value: &Value) {
        let body = serde_json::to_vec(value).unwrap();
        let mut frame = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.send_bytes(&frame).await;
    }

    /// The next frame as JSON; `None` once the server has closed the connection.
    async fn recv(&mut self) -> Option<Value> {
        tokio::time::timeout(PATIENCE, async {
            let mut header = [0u8; 4];
            if self.stream.read_exact(&mut header).await.is_err() {
                return None;
            }
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(serde_json::from_slice(&body).expect("server frames are JSON"))
        })
        .await
        .expect("the server answers in time")
    }

    /// Expects an error frame of `kind`, then the end of the connection.
    async fn expect_refusal(&mut self, kind: &str) -> Value {
        let frame = self.recv().await.expect("an error frame before closing");
        assert_eq!(frame["error"]["kind"], kind, "{frame}");
        assert!(
            frame["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{frame}"
        );
        assert_eq!(self.recv().await, None, "the connection stays open");
        frame
    }
}

// --- the socket file --------------------------------------------------------------------------

#[tokio::test]
async fn the_socket_is_private_and_removed_with_its_engine() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(store(&dir))?;
    let socket = socket_of(&dir);
    assert_eq!(engine.control_socket(), Some(socket.as_path()));
    // The documented path is a link to the socket in its private directory
    // (tests/suite/security.rs).
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Nothing else was left next to it (the temporary directory used to bind it).
    let names: HashSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("fq.redb")), "{names:?}");
    drop(engine);
    assert!(!socket.exists(), "the socket outlived its engine");

    let quiet = Engine::builder(store(&dir)).control(false).open()?;
    assert_eq!(quiet.control_socket(), None);
    assert!(!socket.exists());
    Ok(())
}

#[test]
fn an_engine_opened_outside_any_runtime_serves_its_socket() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(store(&dir))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let total = runtime.block_on(async {
        let remote = connect(&socket_of(&dir)).await;
        remote
            .queue_task_named("test.echo", &json!({}))
            .send()
            .await?;
        remote.stats().await.map(|stats| stats.total())
    })?;
    assert_eq!(total, 1);
    drop(engine);
    Ok(())
}

#[tokio::test]
async fn a_second_engine_on_the_same_store_names_the_serving_pid() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _first = Engine::open(store(&dir))?;
    let err = Engine::open(store(&dir)).unwrap_err();
    let pid = std::process::id();
    assert!(
        matches!(&err, Error::Control(ControlError::AlreadyServed { pid: p, .. }) if *p == pid),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("already served by pid {pid}")),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_other_files_are_not() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_of(&dir);
    // A socket file nobody listens on, as a killed engine leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let engine = Engine::open(store(&dir))?;
    let remote = connect(&socket).await;
    assert_eq!(remote.stats().await?.total(), 0);
    drop(remote);
    drop(engine);

    std::fs::write(&socket, "not a socket").unwrap();
    let err = Engine::open(store(&dir)).unwrap_err();
    assert!(
        matches!(err, Error::Control(ControlError::NotASocket { .. })),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
    Ok(())
}

#[tokio::test]
async fn a_socket_path_too_long_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.control.socket = Some(dir.path().join("s".repeat(120)));
    let err = Engine::builder(store(&dir))
        .config(config)
        .open()
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("control.socket"), "{message}");
    assert!(message.contains("107"), "{message}");
}

// --- remote producers and workers -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_producer_feeds_an_embedded_worker_with_the_servers_defaults() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.defaults.queue = "jobs".into();
    config.defaults.max_retries = 5;
    let server = Engine::builder(store(&dir)).config(config).open()?;
    let worker = common::start_worker(&server, echo_registry(), &["jobs"], 4);

    let remote = connect(&socket_of(&dir)).await;
    assert!(!remote.is_embedded());
    assert_eq!(remote.path(), server.path());
    let id = remote
        .queue_task_named("test.echo", &json!({"kwargs": {"n": 1}}))
        .priority(3)
        .send()
        .await?;
    let record = wait_completed(&remote, id).await;
    assert_eq!(record.queue, "jobs", "the server's default queue");
    assert_eq!(record.max_retries, 5, "the server's default max_retries");
    assert_eq!(record.priority, 3);
    assert_eq!(record.result.unwrap()["echo"]["n"], 1);
    // The same record, read locally.
    assert_eq!(
        server.task(id).await?.unwrap().status,
        TaskStatus::Completed
    );

    let ids = remote
        .queue_batch(
            (0..50).map(|n| remote.queue_task_named("test.echo", &json!({"kwargs": {"n": n}}))),
        )
        .await?;
    for id in &ids {
        wait_completed(&remote, *id).await;
    }
    let stats = remote.stats().await?;
    assert_eq!(stats.queues["jobs"].completed, 51);
    worker.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_worker_runs_embedded_tasks_and_gets_its_events_locally() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let server = Engine::open(store(&dir))?;
    let ids = server
        .queue_batch(
            (0..20).map(|n| server.queue_task_named("test.echo", &json!({"kwargs": {"n": n}}))),
        )
        .await?;

    let remote = connect(&socket_of(&dir)).await;
    let mut events = remote.events().subscribe();
    let worker = common::start_worker(&remote, echo_registry(), &["default"], 4);
    let done = common::collect_events(&mut events, "worker.task.after_execution", 20).await;
    let seen: HashSet<TaskId> = done.iter().map(|event| event.task.id).collect();
    assert_eq!(seen, ids.iter().copied().collect::<HashSet<_>>());
    // With a listener, the events carry the record after the settlement.
    assert!(
        done.iter()
            .all(|event| event.task.status == TaskStatus::Completed),
        "{:?}",
        done.iter().map(|e| e.task.status).collect::<Vec<_>>()
    );
    let report = worker.stop().await;
    assert_eq!(report.completed, 20);
    for id in ids {
        let record = server.task(id).await?.unwrap();
        assert_eq!((record.status, record.attempts), (TaskStatus::Completed, 1));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_heartbeats_keep_a_long_task_alive_past_a_short_lease() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _server = Engine::builder(store(&dir))
        .lease_duration(Duration::from_millis(600))
        .open()?;
    let remote = connect(&socket_of(&dir)).await;
    let mut registry = Registry::new();
    registry.register_async("test.slow", |_: Value, _ctx: TaskContext| async move {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        Ok::<_, TaskError>(json!("slow but alive"))
    });
    // No heartbeat interval set: the worker takes a third of the server's lease.
    let worker = common::start_worker(&remote, registry, &["default"], 1);
    let id = remote
        .queue_task_named("test.slow", &json!({}))
        .send()
        .await?;
    let record = wait_completed(&remote, id).await;
    assert_eq!(record.attempts, 1, "the lease expired under a live worker");
    assert_eq!(record.result, Some(json!("slow but alive")));
    worker.stop().await;
    Ok(())
}

#[tokio::test]
async fn remote_settlements_are_fenced_and_errors_keep_their_kind() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let server = Engine::open(store(&dir))?;
    let remote = connect(&socket_of(&dir)).await;
    let broker = remote.broker();
    let id = remote
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await?;

    let queues: Vec<Arc<str>> = vec![Arc::from("default")];
    let never = CancellationToken::new();
    let first = broker
        .claim(fq::ClaimRequest::new(&queues, 1, PATIENCE, &never))
        .await?;
    assert_eq!((first.len(), first[0].id, first[0].attempts), (1, id, 1));
    broker.heartbeat(id, 1).await?;
    let failure = fq::TaskFailure {
        message: "try again".into(),
        kind: fq::FailureKind::Error,
    };
    let report = broker
        .settle(Settlement {
            id,
            attempt: 1,
            outcome: Outcome::Failed {
                failure,
                retry_after: Some(Duration::ZERO),
            },
        })
        .await?;
    assert_eq!(report.status, TaskStatus::Retrying);
    let second = broker
        .claim(fq::ClaimRequest::new(&queues, 1, PATIENCE, &never))
        .await?;
    assert_eq!(second[0].attempts, 2);

    // The first attempt is a zombie now: its reports are refused, typed.
    let stale = broker
        .settle(Settlement {
            id,
            attempt: 1,
            outcome: Outcome::Completed { result: json!(1) },
        })
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::StaleAttempt { id: i, attempt: 1, current: 2, status: TaskStatus::Running } if i == id),
        "{stale:?}"
    );
    let stale = broker.heartbeat(id, 1).await.unwrap_err();
    assert!(matches!(stale, Error::StaleAttempt { .. }), "{stale:?}");
    // settle_and_claim reports a stale settlement without failing the claim.
    let chained = broker
        .settle_and_claim(
            Settlement {
                id,
                attempt: 1,
                outcome: Outcome::Completed { result: json!(1) },
            },
            fq::ClaimRequest::now(&queues, 1),
        )
        .await?;
    assert!(matches!(chained.settled, Err(Error::StaleAttempt { .. })));
    assert!(chained.claimed.is_empty());
    broker
        .settle(Settlement {
            id,
            attempt: 2,
            outcome: Outcome::Completed {
                result: json!("done"),
            },
        })
        .await?;
    assert_eq!(server.task(id).await?.unwrap().result, Some(json!("done")));

    let unknown = TaskId::new();
    assert!(matches!(remote.cancel(unknown).await, Err(Error::NotFound(i)) if i == unknown));
    let wrong = remote.cancel(id).await.unwrap_err();
    assert!(
        matches!(
            wrong,
            Error::WrongState {
                operation: "cancel",
                status: TaskStatus::Completed,
                ..
            }
        ),
        "{wrong:?}"
    );
    let bad = remote
        .queue_task_named("test.echo", &json!({}))
        .queue("no spaces allowed")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(bad, Error::InvalidInput { field: "queue", .. }),
        "{bad:?}"
    );
    // Checked by the server too, for clients that do not check first.
    let purge = remote
        .broker()
        .purge("bad queue".into(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(purge, Error::InvalidInput { field: "queue", .. }),
        "{purge:?}"
    );
    Ok(())
}

#[tokio::test]
async fn admin_calls_work_through_the_socket() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let server = Engine::open(store(&dir))?;
    let remote = connect(&socket_of(&dir)).await;
    let ids = remote
        .queue_batch((0..5).map(|n| {
            remote
                .queue_task_named("test.echo", &json!({"kwargs": {"n": n}}))
                .queue("admin")
        }))
        .await?;
    let cancelled = remote.cancel(ids[0]).await?;
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(remote.retry(ids[0]).await?.status, TaskStatus::Pending);
    let listed = remote
        .list(fq::ListQuery {
            queue: Some("admin".into()),
            limit: 3,
            ..fq::ListQuery::default()
        })
        .await?;
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(remote.retry_failed(Some("admin")).await?, 0);
    assert_eq!(remote.purge("admin", Some(TaskStatus::Pending)).await?, 5);
    assert_eq!(remote.cleanup().await?, fq::CleanupReport::default());
    assert_eq!(server.stats().await?.total(), 0);
    Ok(())
}

// --- pipelining -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_while_a_long_poll_claim_waits() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _server = Engine::open(store(&dir))?;
    let remote = connect(&socket_of(&dir)).await;

    let broker = remote.broker();
    let claim = tokio::spawn(async move {
        let queues: Vec<Arc<str>> = vec![Arc::from("later")];
        broker
            .claim(fq::ClaimRequest::new(
                &queues,
                1,
                Duration::from_secs(60),
                &CancellationToken::new(),
            ))
            .await
    });
    // Many requests on the same connection, all in flight together.
    let requests = (0..100).map(|n| {
        let remote = remote.clone();
        async move {
            let id = remote
                .queue_task_named("test.echo", &json!({"kwargs": {"n": n}}))
                .queue("now")
                .send()
                .await?;
            remote.task(id).await
        }
    });
    let answered = tokio::time::timeout(PATIENCE, futures_join_all(requests))
        .await
        .expect("answers while the claim waits");
    assert_eq!(answered.len(), 100);
    for record in answered {
        assert!(record?.is_some());
    }
    assert!(!claim.is_finished(), "the claim should still be waiting");
    let wanted = remote
        .queue_task_named("test.echo", &json!({}))
        .queue("later")
        .send()
        .await?;
    let claimed = tokio::time::timeout(PATIENCE, claim)
        .await
        .expect("the claim is woken by the new task")
        .unwrap()?;
    assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [wanted]);

    // On the wire: a later request's answer overtakes a waiting claim's.
    let (mut raw, _) = Raw::ready(&socket_of(&dir)).await;
    raw.send(&json!({"id": 1, "op": "claim", "args": {"queues": ["empty"], "wait_ms": 60000}}))
        .await;
    raw.send(&json!({"id": 2, "op": "stats"})).await;
    let first = raw.recv().await.unwrap();
    assert_eq!(first["id"], 2, "{first}");
    assert!(first["ok"]["queues"].is_object(), "{first}");
    // Aborting the claim makes it answer at once.
    raw.send(&json!({"id": 3, "op": "abort", "args": {"request": 1}}))
        .await;
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let frame = raw.recv().await.unwrap();
        seen.insert(frame["id"].as_u64().unwrap(), frame);
    }
    assert_eq!(seen[&1]["ok"]["tasks"], json!([]));
    assert_eq!(seen[&3]["ok"], json!({}));
    Ok(())
}

/// `join_all` without a futures dependency: spawn each on the runtime.
async fn futures_join_all<F, T>(futures: impl IntoIterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("joined"));
    }
    out
}

#[tokio::test]
async fn a_cancelled_remote_claim_returns_promptly() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _server = Engine::open(store(&dir))?;
    let remote = connect(&socket_of(&dir)).await;
    let broker = remote.broker();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
    });
    let queues: Vec<Arc<str>> = vec![Arc::from("default")];
    let started = std::time::Instant::now();
    let claimed = tokio::time::timeout(
        Duration::from_secs(10),
        broker.claim(fq::ClaimRequest::new(
            &queues,
            4,
            Duration::from_secs(3600),
            &cancel,
        )),
    )
    .await
    .expect("a cancelled claim returns")?;
    assert!(claimed.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

// --- malformed input --------------------------------------------------------------------------

/// A client that did nothing wrong still gets answers.
async fn still_serving(socket: &Path) {
    let remote = connect(socket).await;
    remote.stats().await.expect("a valid request is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_the_engine_keeps_serving() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _server = Engine::open(store(&dir))?;
    let socket = socket_of(&dir);

    // Garbage: "GET " read as a length is over a gigabyte; refused on the prefix.
    let mut raw = Raw::connect(&socket).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.expect_refusal("frame_too_large").await;
    still_serving(&socket).await;

    // A zero length prefix.
    let mut raw = Raw::connect(&socket).await;
    raw.send_bytes(&[0, 0, 0, 0]).await;
    raw.expect_refusal("bad_frame").await;
    still_serving(&socket).await;

    // 4 GiB announced, after a good handshake: refused before allocating anything.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff]).await;
    let refusal = raw.expect_refusal("frame_too_large").await;
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4294967295"),
        "{refusal}"
    );
    still_serving(&socket).await;

    // A truncated frame: 100 bytes announced, 10 sent, then the client stops writing.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send_bytes(&[0, 0, 0, 100]).await;
    raw.send_bytes(b"{\"id\": 1, ").await;
    raw.stream.shutdown().await.unwrap();
    raw.expect_refusal("bad_frame").await;
    still_serving(&socket).await;

    // Not JSON.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send_bytes(&[0, 0, 0, 5]).await;
    raw.send_bytes(b"{nope").await;
    raw.expect_refusal("bad_frame").await;
    still_serving(&socket).await;

    // JSON, but not a request.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send(&json!({"id": "one", "op": "stats"})).await;
    raw.expect_refusal("bad_request").await;
    still_serving(&socket).await;

    // An unknown op: the error is addressed to the request.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send(&json!({"id": 9, "op": "launch_missiles"})).await;
    let refusal = raw.expect_refusal("unknown_op").await;
    assert_eq!(refusal["id"], 9);
    still_serving(&socket).await;

    // A protocol version this engine does not speak.
    let mut raw = Raw::connect(&socket).await;
    raw.send(&json!({"hello": {"protocol": 99, "client": "future"}}))
        .await;
    let refusal = raw.expect_refusal("unsupported_protocol").await;
    assert!(
        refusal["error"]["message"].as_str().unwrap().contains("99"),
        "{refusal}"
    );
    still_serving(&socket).await;

    // A request before any hello.
    let mut raw = Raw::connect(&socket).await;
    raw.send(&json!({"id": 1, "op": "stats"})).await;
    raw.expect_refusal("hello_required").await;
    still_serving(&socket).await;

    // Bad arguments to a known op: an error answer, and the connection stays usable.
    let (mut raw, _) = Raw::ready(&socket).await;
    raw.send(&json!({"id": 1, "op": "claim", "args": {"queues": "default"}}))
        .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["kind"], "invalid_input", "{answer}");
    assert_eq!(answer["error"]["field"], "queues", "{answer}");
    raw.send(&json!({"id": 2, "op": "enqueue", "args": {"tasks": [{"name": "ok.task"}, {"name": "bad name"}]}}))
        .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["error"]["field"], "task name", "{answer}");
    raw.send(&json!({"id": 3, "op": "stats"})).await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["id"], 3);
    assert_eq!(
        answer["ok"]["queues"],
        json!({}),
        "nothing was queued: {answer}"
    );
    Ok(())
}

#[tokio::test]
async fn the_wire_carries_what_docs_protocol_md_shows() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let _server = Engine::open(store(&dir))?;
    let (mut raw, hello) = Raw::ready(&socket_of(&dir)).await;
    let hello = &hello["hello"];
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["pid"], std::process::id());
    assert_eq!(hello["defaults"]["queue"], "default");
    assert_eq!(hello["max_frame_bytes"], 2 << 20);

    raw.send(&json!({"id": 1, "op": "enqueue", "args": {"tasks": [
        {"name": "myapp.tasks.send_email", "queue": "emails", "priority": 5,
         "payload": {"kwargs": {"to": "ada@example.com"}}}
    ]}}))
    .await;
    let answer = raw.recv().await.unwrap();
    let id = answer["ok"]["ids"][0].as_str().unwrap().to_owned();
    raw.send(&json!({"id": 2, "op": "claim", "args": {"queues": ["emails"], "max": 10, "wait_ms": 1000}}))
        .await;
    let answer = raw.recv().await.unwrap();
    let task = &answer["ok"]["tasks"][0];
    assert_eq!(task["id"], id.as_str());
    assert_eq!(task["status"], "RUNNING");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["payload"]["kwargs"]["to"], "ada@example.com");
    raw.send(&json!({"id": 3, "op": "heartbeat", "args": {"id": id, "attempt": 1}}))
        .await;
    assert_eq!(raw.recv().await.unwrap()["ok"], json!({}));
    raw.send(&json!({"id": 4, "op": "settle", "args": {"id": id, "attempt": 1, "outcome": "completed", "result": {"sent": true}, "record": true}}))
        .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["ok"]["status"], "COMPLETED", "{answer}");
    assert_eq!(answer["ok"]["record"]["result"]["sent"], true, "{answer}");
    raw.send(
        &json!({"id": 5, "op": "settle", "args": {"id": id, "attempt": 1, "outcome": "completed"}}),
    )
    .await;
    let answer = raw.recv().await.unwrap();
    assert_eq!(answer["error"]["kind"], "stale_attempt", "{answer}");
    assert_eq!(answer["error"]["current"], 1, "{answer}");
    assert_eq!(answer["error"]["status"], "COMPLETED", "{answer}");
    raw.send(&json!({"id": 6, "op": "task", "args": {"id": TaskId::new()}}))
        .await;
    assert_eq!(raw.recv().await.unwrap()["ok"], json!({"task": null}));
    Ok(())
}

// --- TCP, tokens, limits ----------------------------------------------------------------------

#[tokio::test]
async fn tcp_needs_a_token_off_loopback_and_checks_it() -> fq::Result<()> {
    // It opens a TCP listener in the suite's process.
    let _tcp = common::tcp_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut open_to_all = Config::default();
    open_to_all.control.listen = Some("0.0.0.0:0".parse().unwrap());
    let err = Engine::builder(store(&dir))
        .config(open_to_all)
        .open()
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("control.listen"), "{message}");
    assert!(message.contains("control.token"), "{message}");
    assert!(!socket_of(&dir).exists(), "nothing was started");

    let mut config = Config::default();
    config.control.listen = Some("127.0.0.1:0".parse().unwrap());
    config.control.token = Some("s3cret".into());
    let server = Engine::builder(store(&dir)).config(config).open()?;
    let addr = server.control_addr().expect("a TCP listener");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let tcp = format!("tcp:{addr}");

    let remote = Engine::connect_with(&tcp, ConnectOptions::new().token("s3cret")).await?;
    assert_eq!(remote.stats().await?.total(), 0);
    for options in [ConnectOptions::new(), ConnectOptions::new().token("s3cre7")] {
        let refused = Engine::connect_with(&tcp, options).await.unwrap_err();
        assert!(
            matches!(&refused, Error::Remote { kind, .. } if kind == "unauthorized"),
            "{refused:?}"
        );
    }
    // The Unix socket is authenticated by its mode: no token needed.
    let local = connect(&socket_of(&dir)).await;
    assert_eq!(local.stats().await?.total(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.control.max_connections = 2;
    let _server = Engine::builder(store(&dir)).config(config).open()?;
    let socket = socket_of(&dir);
    let (first, _) = Raw::ready(&socket).await;
    let (_second, _) = Raw::ready(&socket).await;
    let mut third = Raw::connect(&socket).await;
    third.expect_refusal("too_many_connections").await;
    let refused = Engine::connect(&unix_addr(&socket)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Remote { kind, .. } if kind == "too_many_connections"),
        "{refused:?}"
    );
    drop(first);
    // The freed slot is usable again (once the server has seen the close).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match Engine::connect(&unix_addr(&socket)).await {
            Ok(remote) => {
                remote.stats().await?;
                break;
            }
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn connecting_to_nothing_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Engine::connect(&unix_addr(&socket_of(&dir)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("no control socket"), "{err}");
    assert!(err.is_retryable());
    let err = Engine::connect("tcp:nowhere").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "connect",
                ..
            }
        ),
        "{err:?}"
    );
}

// --- reconnection -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_the_engine_restarts() -> fq::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let server = Engine::open(store(&dir))?;
    let remote = connect(&socket_of(&dir)).await;
    let impatient = Engine::connect_with(
        &unix_addr(&socket_of(&dir)),
        ConnectOptions::new().reconnect_wait(Duration::from_millis(300)),
    )
    .await?;
    let before = remote
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await?;
    drop(server);

    // While the engine is away, a request waits for it (up to reconnect_wait), then fails.
    let err = impatient.stats().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("reconnecting"), "{err}");

    let reopened = tokio::spawn({
        let path = store(&dir);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Engine::open(path)
        }
    });
    // Made during the outage, answered once the engine is back.
    let record = remote
        .task(before)
        .await?
        .expect("the task survived the restart");
    assert_eq!(record.status, TaskStatus::Pending);
    let server = reopened.await.unwrap()?;
    let after = remote
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await?;
    assert!(server.task(after).await?.is_some());

    // A remote worker rides through another restart.
    let worker = common::start_worker(&remote, echo_registry(), &["default"], 2);
    wait_completed(&remote, before).await;
    drop(server);
    let server = Engine::open(store(&dir))?;
    let late = server
        .queue_task_named("test.echo", &json!({}))
        .send()
        .await?;
    wait_completed(&server, late).await;
    worker.stop().await;
    Ok(())
}

// --- processes: the acceptance run -----------------------------------------------------------

const CHILD: &str = "FQ_CONTROL_CHILD";
const CHILD_DIR: &str = "FQ_CONTROL_DIR";
const TASKS: usize = 10_000;

/// Appends a line to this process's effect log: "run <id> <attempt> <pid>" per execution.
fn effect_logger(dir: &Path) -> impl Fn(&str) + Send + Sync + Clone + 'static {
    common::effects::logger(dir)
}

/// Runs as a child: `server` owns the store and serves it; `worker` connects and runs tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() -> fq::Result<()> {
    let Ok(role) = std::env::var(CHILD) else {
        return Ok(()); // only meaningful as a child of the tests below
    };
    let dir = PathBuf::from(std::env::var(CHILD_DIR).expect("FQ_CONTROL_DIR"));
    let lease_ms: u64 = std::env::var("FQ_CONTROL_LEASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    match role.as_str() {
        "server" => {
            let mut config = Config::default();
            config.defaults.retry_delay = Duration::from_millis(50);
            config.defaults.retry_max_delay = Duration::from_millis(200);
            let _engine = Engine::builder(dir.join("fq.redb"))
                .config(config)
                .lease_duration(Duration::from_millis(lease_ms))
                .open()?;
            std::future::pending::<()>().await;
        }
        "worker" => {
            // Tasks whose n is a multiple of this never finish here (0: none do), so a worker
            // killed later is sure to die holding some.
            let hang_every: u64 = std::env::var("FQ_CONTROL_HANG_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let engine = Engine::connect(&unix_addr(&dir.join("fq.redb.sock"))).await?;
            let log = effect_logger(&dir);
            let mut registry = Registry::new();
            registry.register_async("test.work", move |work: Value, ctx: TaskContext| {
                let log = log.clone();
                async move {
                    let pid = std::process::id();
                    log(&format!("run {} {} {pid}", ctx.id(), ctx.attempt()));
                    let n = work["n"].as_u64().unwrap_or(1);
                    if hang_every > 0 && n.is_multiple_of(hang_every) {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, TaskError>(json!({"pid": pid, "attempt": ctx.attempt()}))
                }
            });
            let mut worker = engine.worker(registry);
            worker
                .set_concurrent_tasks(32)
                .set_handle_signals(false)
                .set_polling_interval(Duration::from_millis(500));
            // Heartbeats default to a third of the server's lease, learnt at the handshake.
            worker.start().await?;
        }
        other => panic!("unknown child role {other}"),
    }
    Ok(())
}

fn spawn_child(dir: &Path, role: &str, env: &[(&str, String)]) -> ChildGuard {
    let mut command = child::rerun("control::child_process");
    command
        .env(CHILD, role)
        .env(CHILD_DIR, dir)
        .env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    child::spawn_logged(command, dir, role)
}

/// The server role played by the real `fq serve` (the plain engine child without the CLI).
fn spawn_fq_serve(dir: &Path) -> ChildGuard {
    #[cfg(feature = "cli")]
    {
        let mut command = child::fq();
        command
            .arg("serve")
            .arg("--db")
            .arg(dir.join("fq.redb"))
            .env("RUST_LOG", "warn");
        child::spawn_logged(command, dir, "fq-serve")
    }
    #[cfg(not(feature = "cli"))]
    spawn_child(dir, "server", &[])
}

/// Connects once the server child listens.
async fn connect_when_up(socket: &Path) -> Engine {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match Engine::connect(&unix_addr(socket)).await {
            Ok(engine) => return engine,
            Err(err) => assert!(
                tokio::time::Instant::now() < deadline,
                "the server child never listened: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn enqueue_work(producer: &Engine) -> Vec<TaskId> {
    let mut ids = Vec::with_capacity(TASKS);
    for chunk in 0..TASKS / 1000 {
        let batch = (0..1000).map(|n| {
            producer.queue_task_named("test.work", &json!({"kwargs": {"n": chunk * 1000 + n}}))
        });
        ids.extend(producer.queue_batch(batch).await.expect("enqueue a batch"));
    }
    ids
}

/// Waits until every task is COMPLETED (failing on any FAILED), within `patience`.
async fn wait_all_completed(producer: &Engine, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let stats = producer.stats().await.expect("stats");
        let queue = stats.queues.get("default").copied().unwrap_or_default();
        assert_eq!(queue.failed, 0, "{queue:?}");
        if queue.completed == TASKS as u64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained in {patience:?}: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every task's record, read through the socket page by page.
async fn all_records(producer: &Engine) -> HashMap<TaskId, fq::TaskRecord> {
    let mut records = HashMap::new();
    let mut after = None;
    loop {
        let page = producer
            .list(fq::ListQuery {
                limit: 2000,
                after,
                ..fq::ListQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        records.extend(page.into_iter().map(|r| (r.id, r)));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_two_remote_workers_drain_10000_tasks_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_fq_serve(dir.path());
    let producer = connect_when_up(&socket_of(&dir)).await;
    let ids = enqueue_work(&producer).await;
    let mut workers = [
        spawn_child(dir.path(), "worker", &[]),
        spawn_child(dir.path(), "worker", &[]),
    ];
    wait_all_completed(&producer, Duration::from_secs(120)).await;
    let records = all_records(&producer).await;
    for worker in &mut workers {
        worker.kill();
    }
    server.kill();

    assert_eq!(records.len(), TASKS);
    let runs = common::effects::runs(dir.path());
    assert_eq!(runs.len(), TASKS, "every task ran exactly once");
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for (id, attempt, pid) in &runs {
        assert!(seen.insert(*id), "task {id} ran twice");
        assert_eq!(*attempt, 1);
        *by_pid.entry(*pid).or_default() += 1;
        let record = &records[id];
        assert_eq!((record.status, record.attempts), (TaskStatus::Completed, 1));
        assert_eq!(record.result.as_ref().unwrap()["pid"], *pid);
    }
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(by_pid.len(), 2, "both workers took part: {by_pid:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_remote_worker_loses_nothing_and_its_stale_reports_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let lease = [("FQ_CONTROL_LEASE_MS", "1500".to_owned())];
    let mut server = spawn_child(dir.path(), "server", &lease);
    let producer = connect_when_up(&socket_of(&dir)).await;
    let ids = enqueue_work(&producer).await;
    // Task n sits at ids[n]; every 100th hangs in the doomed worker, which thus dies holding
    // some (heartbeats keep their leases alive until then).
    let hanging: HashSet<TaskId> = ids.iter().step_by(100).copied().collect();
    let mut doomed = spawn_child(
        dir.path(),
        "worker",
        &[("FQ_CONTROL_HANG_EVERY", "100".to_owned())],
    );
    let doomed_pid = doomed.0.id();
    let mut survivor = spawn_child(dir.path(), "worker", &[]);

    // Kill the doomed worker mid-run, with tasks in its hands.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let by_doomed: Vec<TaskId> = common::effects::runs(dir.path())
            .into_iter()
            .filter(|(_, _, pid)| *pid == doomed_pid)
            .map(|(id, _, _)| id)
            .collect();
        if by_doomed.len() >= 1000 && by_doomed.iter().any(|id| hanging.contains(id)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the doomed worker never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `Child::kill` is SIGKILL: no cleanup, no goodbye to the server.
    doomed.kill();

    wait_all_completed(&producer, Duration::from_secs(120)).await;
    let records = all_records(&producer).await;
    assert_eq!(records.len(), TASKS, "tasks lost or invented");
    let runs = common::effects::runs(dir.path());
    // Fencing: no attempt ever ran twice, even across the kill.
    let mut attempts_run = HashSet::new();
    for (id, attempt, pid) in &runs {
        assert!(
            attempts_run.insert((*id, *attempt)),
            "attempt {attempt} of task {id} ran twice (again in {pid})"
        );
    }
    let mut latest: HashMap<TaskId, (u32, u32)> = HashMap::new();
    for (id, attempt, pid) in &runs {
        let entry = latest.entry(*id).or_insert((*attempt, *pid));
        if *attempt > entry.0 {
            *entry = (*attempt, *pid);
        }
    }
    assert_eq!(latest.len(), TASKS, "every task ran");
    // The zombie's attempts: started by the killed worker, finished by someone else.
    let mut stale = Vec::new();
    for (id, record) in &records {
        assert_eq!(record.status, TaskStatus::Completed);
        // The accepted completion is the task's latest run, whoever ran it.
        let (attempt, pid) = latest[id];
        assert_eq!(record.attempts, attempt, "task {id}");
        let result = record.result.as_ref().unwrap();
        assert_eq!(
            (&result["pid"], &result["attempt"]),
            (&json!(pid), &json!(attempt)),
            "task {id}"
        );
    }
    for (id, attempt, pid) in &runs {
        if *pid == doomed_pid && *attempt < records[id].attempts {
            stale.push((*id, *attempt));
        }
    }
    let retried = records.values().filter(|r| r.attempts > 1).count();
    let doomed_runs = runs.iter().filter(|(_, _, pid)| *pid == doomed_pid).count();
    assert!(
        !stale.is_empty(),
        "the killed worker held no task when it died ({doomed_runs} runs by it, {retried} tasks retried)"
    );
    // What the killed worker would have reported, had it lived, is refused.
    let broker = producer.broker();
    for (id, attempt) in &stale {
        let late = broker
            .settle(Settlement {
                id: *id,
                attempt: *attempt,
                outcome: Outcome::Completed {
                    result: json!("zombie"),
                },
            })
            .await
            .unwrap_err();
        assert!(matches!(late, Error::StaleAttempt { .. }), "{late:?}");
        assert!(matches!(
            broker.heartbeat(*id, *attempt).await,
            Err(Error::StaleAttempt { .. })
        ));
        assert_ne!(
            producer.task(*id).await.unwrap().unwrap().result,
            Some(json!("zombie"))
        );
    }
    survivor.kill();
    server.kill();
}
