//! Bad input gets a typed error naming the problem, never a panic, and changes nothing stored.

use crate::common;

use std::io::Write;

use fq::{Config, Engine, Error, FailureKind, Registry, StoreError, TaskError, TaskStatus};
use serde::Deserialize;
use serde_json::json;

async fn total_tasks(engine: &Engine) -> fq::Result<u64> {
    Ok(engine.stats().await?.total())
}

#[tokio::test]
async fn invalid_names_payloads_and_options_are_refused_without_a_trace() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let cases: Vec<(fq::QueueTask, &str)> = vec![
        (engine.queue_task_named("bad name", &json!({})), "task name"),
        (engine.queue_task_named("", &json!({})), "task name"),
        (
            engine.queue_task_named(&"x".repeat(256), &json!({})),
            "task name",
        ),
        (engine.queue_task_named("ok\u{7}", &json!({})), "task name"),
        (engine.queue_task_named("ok", &json!({})).queue(""), "queue"),
        (
            engine.queue_task_named("ok", &json!({})).queue("a/b"),
            "queue",
        ),
        (
            engine.queue_task_named("ok", &json!({"kwargs": [1, 2]})),
            "payload",
        ),
        (
            engine.queue_task_named("ok", &json!({"args": "x"})),
            "payload",
        ),
        (engine.queue_task_named("ok", &json!({"kw": {}})), "payload"),
        (engine.queue_task_named("ok", &json!([1])), "payload"),
        (
            engine.queue_task_named("ok", &json!({"kwargs": {"blob": "x".repeat(1 << 20)}})),
            "payload",
        ),
        (
            engine
                .queue_task_named("ok", &json!({}))
                .max_retries(1_000_001),
            "max_retries",
        ),
        (
            engine
                .queue_task_named("ok", &json!({}))
                .timeout(std::time::Duration::ZERO),
            "timeout",
        ),
        (
            engine.queue_task_named("ok", &json!({})).delay(u64::MAX),
            "delay",
        ),
        (
            engine
                .queue_task_named("ok", &json!({}))
                .schedule_at(chrono::DateTime::<chrono::Utc>::MAX_UTC),
            "schedule_at",
        ),
    ];
    for (attempt, expected_field) in cases {
        let err = attempt.send().await.unwrap_err();
        match &err {
            Error::InvalidInput { field, message } => {
                assert_eq!(*field, expected_field, "{err}");
                assert!(!message.is_empty());
            }
            other => panic!("expected InvalidInput for {expected_field}, got {other}"),
        }
    }
    let err = engine
        .queue_task_named("ok", &json!({"kwargs": {"blob": "x".repeat(1 << 20)}}))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit is 1048576 bytes"), "{err}");
    assert_eq!(total_tasks(&engine).await?, 0);
    Ok(())
}

#[derive(Deserialize)]
struct Typed {
    count: u32,
}

#[tokio::test]
async fn unknown_tasks_and_undecodable_arguments_fail_at_run_time_with_a_clear_error()
-> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut registry = Registry::new();
    registry.register_fn("test.typed", |t: Typed| -> Result<u32, TaskError> {
        Ok(t.count)
    });
    let mut events = engine.events().subscribe();
    let unknown = engine
        .queue_task_named("test.nobody_knows", &json!({}))
        .send()
        .await?;
    let wrong_type = engine
        .queue_task_named("test.typed", &json!({"kwargs": {"count": "three"}}))
        .send()
        .await?;
    let missing = engine
        .queue_task_named("test.typed", &json!({"kwargs": {}}))
        .send()
        .await?;
    let worker = common::start_worker(&engine, registry, &["default"], 2);
    common::collect_events(&mut events, "task.failed", 3).await;
    worker.stop().await;

    let record = engine.task(unknown).await?.unwrap();
    assert_eq!(record.status, TaskStatus::Failed);
    assert_eq!(record.attempts, 1, "an unknown task must not be retried");
    let error = record.error.unwrap();
    assert_eq!(error.kind, FailureKind::UnknownTask);
    assert!(
        error.message.contains("test.nobody_knows"),
        "{}",
        error.message
    );
    for (id, needle) in [(wrong_type, "invalid type"), (missing, "count")] {
        let record = engine.task(id).await?.unwrap();
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(record.attempts, 1);
        let error = record.error.unwrap();
        assert_eq!(error.kind, FailureKind::BadArguments);
        assert!(error.message.contains(needle), "{}", error.message);
    }
    Ok(())
}

#[tokio::test]
async fn bad_worker_settings_are_refused_before_anything_runs() -> fq::Result<()> {
    let (_dir, engine) = common::engine();
    let mut registry = Registry::new();
    registry.register_fn(
        "bad name!",
        |_: serde_json::Value| -> Result<(), TaskError> { Ok(()) },
    );
    let err = engine.worker(registry).start().await.unwrap_err();
    assert!(matches!(err, Error::InvalidRegistration(_)), "{err}");
    assert!(err.to_string().contains("bad name!"));

    let mut worker = engine.worker(Registry::new());
    worker.set_concurrent_tasks(0);
    assert!(matches!(
        worker.start().await,
        Err(Error::InvalidInput {
            field: "concurrency",
            ..
        })
    ));
    let mut worker = engine.worker(Registry::new());
    worker.set_queues(["good", "not good"]);
    assert!(matches!(
        worker.start().await,
        Err(Error::InvalidInput {
            field: "queues",
            ..
        })
    ));
    Ok(())
}

#[test]
fn bad_config_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.worker.concurrency = 0;
    let err = Engine::builder(dir.path().join("fq.redb"))
        .config(config)
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("worker.concurrency"), "{err}");

    let file = dir.path().join("fq.toml");
    std::fs::write(&file, "[worker]\nconcurency = 4\n").unwrap();
    let err = Engine::from_config_file(Some(&file)).unwrap_err();
    assert!(err.to_string().contains("worker.concurency"), "{err}");
    assert!(err.to_string().contains("fq.toml"), "{err}");
    assert!(
        !dir.path().join("var").exists(),
        "a store was created from a bad config"
    );
}

#[test]
fn foreign_corrupt_and_truncated_store_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("readme.redb");
    std::fs::write(&text, "this is a text file, not a task store\n".repeat(100)).unwrap();
    let err = Engine::open(&text).unwrap_err();
    assert!(
        matches!(err, Error::Store(StoreError::NotFqStore { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("readme.redb"), "{err}");

    let empty = dir.path().join("empty.redb");
    std::fs::File::create(&empty).unwrap();
    assert!(matches!(
        Engine::open(&empty),
        Err(Error::Store(StoreError::NotFqStore { .. }))
    ));
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "the empty file was written"
    );

    // A real store with tasks, then damaged four ways.
    let good = dir.path().join("good.redb");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ids = runtime.block_on(async {
        let engine = Engine::open(&good).unwrap();
        let mut ids = Vec::new();
        for n in 0..200 {
            let queued = engine.queue_task_named("t", &json!({"kwargs": {"n": n}}));
            ids.push(queued.send().await.unwrap());
        }
        ids
    });
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.redb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let header_flipped = dir.path().join("header.redb");
    let mut mutant = bytes.clone();
    for byte in &mut mutant[0..64] {
        *byte ^= 0x5a;
    }
    std::fs::write(&header_flipped, &mutant).unwrap();
    let garbage = dir.path().join("garbage.redb");
    let mut mutant = bytes.clone();
    let len = mutant.len();
    for byte in &mut mutant[len / 3..len / 3 + 8192] {
        *byte = 0xff;
    }
    std::fs::write(&garbage, &mutant).unwrap();
    // Everything after redb's first page (its header) overwritten: the pages the header
    // names are certainly damaged.
    let body_overwritten = dir.path().join("body.redb");
    let mut mutant = bytes.clone();
    mutant[4096..].fill(0xff);
    std::fs::write(&body_overwritten, &mutant).unwrap();
    for path in [&truncated, &header_flipped, &body_overwritten, &garbage] {
        let before = std::fs::read(path).unwrap();
        match Engine::open(path) {
            Err(Error::Store(err)) => {
                assert!(
                    err.to_string()
                        .contains(path.file_name().unwrap().to_str().unwrap()),
                    "{err}"
                );
            }
            Err(other) => panic!("{}: unexpected error kind: {other}", path.display()),
            // 8 KiB in the middle of the file may all be pages the store no longer uses
            // (copy-on-write frees a page at each change; where the freed ones lie depends on
            // how the 200 enqueues were grouped into commits): then nothing stored was damaged,
            // and the store must open with every task and a sound integrity check.
            // (An open that succeeds is an owner's open, which may write: the file is not
            // compared then.)
            Ok(engine) if path == &garbage => {
                runtime.block_on(async {
                    for id in &ids {
                        assert!(engine.task(*id).await.unwrap().is_some(), "task {id} lost");
                    }
                    let report = engine.check_integrity().await.unwrap();
                    assert!(report.problems.is_empty(), "{:#?}", report.problems);
                });
                println!("the 8 KiB overwritten in the middle were all unused pages");
                continue;
            }
            Ok(_) => panic!("{}: a damaged store opened", path.display()),
        }
        assert_eq!(
            std::fs::read(path).unwrap(),
            before,
            "{}: refused file was modified",
            path.display()
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&good)
        .unwrap();
    file.write_all(b"trailing garbage").unwrap();
    drop(file);
    // Trailing bytes after a valid store are either ignored or refused, never a panic.
    let _ = Engine::open(&good);
}

/// Regression (issue 11, defect 1): a payload nested 200 levels deep was accepted, and every
/// worker then failed it with "arguments do not match the task: recursion limit exceeded". It is
/// now refused when queued, by name, as a typed task and in a batch, naming the limit, and
/// nothing is stored; the deepest payload a worker reads is still accepted and runs.
#[tokio::test]
async fn payloads_nested_deeper_than_a_worker_reads_are_refused_when_queued() -> fq::Result<()> {
    #[derive(serde::Serialize, Deserialize)]
    struct Deep {
        x: serde_json::Value,
    }
    impl fq::Task for Deep {
        const NAME: &'static str = "test.deep";
        type Output = ();
        async fn run(self, _ctx: fq::TaskContext) -> Result<(), TaskError> {
            Ok(())
        }
    }
    // `{"args": [], "kwargs": {"x": [[...]]}}`, `depth` levels in all.
    let nested = |depth: usize| {
        let mut inner = json!([]);
        for _ in 0..depth - 3 {
            inner = json!([inner]);
        }
        inner
    };
    let (_dir, engine) = common::engine();
    let too_deep = nested(200);
    let refusals = [
        engine
            .queue_task_named("test.deep", &json!({"kwargs": {"x": too_deep.clone()}}))
            .send()
            .await,
        engine
            .queue_task(Deep {
                x: too_deep.clone(),
            })
            .send()
            .await,
        engine
            .queue_batch(vec![engine.queue_task_named(
                "test.deep",
                &json!({"kwargs": {"x": too_deep.clone()}}),
            )])
            .await
            .map(|_| fq::TaskId::new()),
    ];
    for refused in refusals {
        match refused {
            Err(Error::InvalidInput { field, message }) => {
                assert_eq!(field, "payload");
                assert!(
                    message.contains("200 levels") && message.contains("127"),
                    "{message}"
                );
            }
            other => panic!("a 200-deep payload was not refused: {other:?}"),
        }
    }
    assert_eq!(total_tasks(&engine).await?, 0);

    let deepest = nested(fq::MAX_PAYLOAD_DEPTH);
    let id = engine.queue_task(Deep { x: deepest }).send().await?;
    let mut registry = Registry::new();
    registry.register::<Deep>();
    let mut worker = engine.worker(registry);
    worker.set_handle_signals(false);
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(async move { worker.start().await });
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while engine.task(id).await?.map(|t| t.status) != Some(TaskStatus::Completed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deepest payload never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.shutdown();
    running.await.expect("the worker task ends")?;
    Ok(())
}
