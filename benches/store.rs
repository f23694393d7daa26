//! Durable commit throughput of the store by batch size, both ways of making a commit durable:
//! `store_durable_commit` with the write-ahead log (the default: one log append and fdatasync
//! per commit, the B-tree synced by checkpoints; a commit of more than 256 KiB of changes syncs
//! the B-tree itself), `store_durable_commit_btree_sync` without it (redb syncs its pages at
//! every commit). Each commit inserts `batch` task records with a 100-byte payload plus their
//! waiting-index entries.
//!
//! `cargo bench --bench store`; throughput is tasks enqueued per second. One store per batch
//! size and mode, in a temp dir, reused across iterations (it grows as the bench runs).
//!
//! `store_open_after_a_crash`: opening a store whose last 2,000 commits are in its log alone
//! (a copy of both files taken while it was open), so the open reads the log back and applies
//! it; throughput is those commits per second.

use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fq::internals::{RawStore, log_path};

/// A payload of exactly 100 bytes in the shape the engine stores.
fn payload_100_bytes() -> String {
    let prefix = r#"{"args":[],"kwargs":{"body":""#;
    let suffix = r#""}}"#;
    let filler = "x".repeat(100 - prefix.len() - suffix.len());
    let payload = format!("{prefix}{filler}{suffix}");
    assert_eq!(payload.len(), 100);
    payload
}

fn durable_commit_by_batch_size(c: &mut Criterion) {
    let payload = payload_100_bytes();
    for (group_name, write_ahead_log) in [
        ("store_durable_commit", true),
        ("store_durable_commit_btree_sync", false),
    ] {
        let mut group = c.benchmark_group(group_name);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5));
        for batch in [1usize, 64, 256, 1000] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("bench.redb");
            let mut store = RawStore::open_with_log(&path, write_ahead_log).expect("open store");
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("enqueue_batch_{batch}_per_commit"), |b| {
                b.iter(|| store.commit_enqueues(batch, &payload).expect("commit"));
            });
        }
        group.finish();
    }
}

/// Opening a store a crash left with 2,000 commits in its write-ahead log only: reading the
/// log back and applying its records (the open's other work, for a store of 2,000 tasks,
/// included).
fn open_after_a_crash(c: &mut Criterion) {
    const COMMITS: u64 = 2_000;
    let payload = payload_100_bytes();
    let dir = tempfile::tempdir().expect("temp dir");
    let live = dir.path().join("live.redb");
    let image = dir.path().join("image.redb");
    let mut store = RawStore::open(&live).expect("open store");
    for _ in 0..COMMITS {
        store.commit_enqueues(1, &payload).expect("commit");
    }
    // What a crash leaves: both files as the operating system holds them, the store still open.
    std::fs::copy(&live, &image).expect("copy the store");
    std::fs::copy(log_path(&live), log_path(&image)).expect("copy the log");
    drop(store);
    let copy_image = |to: &Path, log: bool| {
        std::fs::copy(&image, to).expect("copy the image");
        if log {
            std::fs::copy(log_path(&image), log_path(to)).expect("copy the image's log");
        }
    };
    // The B-tree alone lacks what the log holds: the open below does replay it.
    let bare = dir.path().join("bare.redb");
    copy_image(&bare, false);
    let in_b_tree = RawStore::open_forgetting_log(&bare)
        .and_then(|store| store.tasks())
        .expect("open without the log");
    assert!(in_b_tree < COMMITS, "the B-tree alone has every task");
    println!(
        "open_after_a_crash: {} of {COMMITS} commits in the log alone",
        COMMITS - in_b_tree
    );

    let mut group = c.benchmark_group("store_open_after_a_crash");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(COMMITS - in_b_tree));
    let mut run = 0u64;
    group.bench_function("open_replaying_2000_logged_commits", |b| {
        b.iter_batched(
            || {
                run += 1;
                let path = dir.path().join(format!("run-{run}.redb"));
                copy_image(&path, true);
                path
            },
            |path| {
                let store = RawStore::open(&path).expect("open the crashed store");
                assert_eq!(store.tasks().expect("count"), COMMITS);
                store
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, durable_commit_by_batch_size, open_after_a_crash);
criterion_main!(benches);
