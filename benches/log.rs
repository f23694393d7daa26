//! The redo log (the file format of the store's write-ahead log, `store::log`): a
//! durable append (one record, then fdatasync) by record size, a group of 64 small records
//! under one sync, and reading a log of 10,000 records back as recovery does.
//!
//! `cargo bench --bench log`. The durable figures are this disk's: compare them with
//! `fq bench`'s single 4 KiB write + fdatasync taken next to them.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fq::internals::RedoLogFile;

fn durable_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_durable_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().expect("temp dir");
    for size in [256usize, 4096, 16384] {
        let mut log = RedoLogFile::create(&dir.path().join(format!("append-{size}.log")))
            .expect("create the log");
        let payload = vec![0x5a; size];
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("one_record_{size}_bytes_then_sync"), |b| {
            b.iter(|| {
                // Rewound now and then, as checkpoints would: the file stays small and its
                // pages are overwritten, as in the engine.
                if log.position().0 > 8 << 20 {
                    log.rewind();
                }
                log.append(&payload).expect("append");
                log.sync().expect("sync");
            });
        });
    }
    let mut log = RedoLogFile::create(&dir.path().join("group.log")).expect("create the log");
    let payload = vec![0xa5; 256];
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_records_of_256_bytes_then_one_sync", |b| {
        b.iter(|| {
            if log.position().0 > 8 << 20 {
                log.rewind();
            }
            for _ in 0..64 {
                log.append(&payload).expect("append");
            }
            log.sync().expect("sync");
        });
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("replay.log");
    let mut log = RedoLogFile::create(&path).expect("create the log");
    let payload = vec![0x3c; 256];
    for _ in 0..10_000 {
        log.append(&payload).expect("append");
    }
    log.sync().expect("sync");
    drop(log);
    let mut group = c.benchmark_group("log_replay");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("open_10000_records_of_256_bytes", |b| {
        b.iter(|| {
            let (_, live) = RedoLogFile::open(&path, 0).expect("open");
            assert_eq!(live.len(), 10_000);
        });
    });
    group.finish();
}

criterion_group!(benches, durable_append, replay);
criterion_main!(benches);
