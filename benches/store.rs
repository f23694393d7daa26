//! Durable commit throughput of the store by batch size, both ways of making a commit durable:
//! `store_durable_commit` with the write-ahead log (the default: one log append and fdatasync
//! per commit, the B-tree synced by checkpoints; a commit of more than 256 KiB of changes syncs
//! the B-tree itself), `store_durable_commit_btree_sync` without it (redb syncs its pages at
//! every commit). Each commit inserts `batch` task records with a 100-byte payload plus their
//! waiting-index entries.
//!
//! `cargo bench --bench store`; throughput is tasks enqueued per second. One store per batch
//! size and mode, in a temp dir, reused across iterations (it grows as the bench runs).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fq::internals::RawStore;

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

criterion_group!(benches, durable_commit_by_batch_size);
criterion_main!(benches);
