//! The in-memory ready heap (one crossbeam skip list per queue), without the store: push/pop
//! on one thread, push/pop contended by four threads, and popping the best task across three
//! queues with mixed priorities.
//!
//! `cargo bench --bench ready_heap`; throughput is heap operations (a push or a pop) per second.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fq::internals::Heap;

/// Tasks pushed then popped per iteration of the single-threaded scenarios.
const TASKS: u64 = 10_000;
/// Threads in the contended scenario (more than the two cores CI has, on purpose).
const THREADS: u64 = 4;
/// Push/pop rounds per thread in the contended scenario.
const ROUNDS_PER_THREAD: u64 = 10_000;
/// Tasks already in each queue when the contended threads start, so pops rarely miss.
const PREFILL_PER_QUEUE: u64 = 1_000;

/// A spread of priorities, -3..=3, that does not follow push order.
fn priority(n: u64) -> i32 {
    i32::try_from(n.wrapping_mul(7919) % 7).expect("below 7") - 3
}

fn push_then_pop_single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_heap");
    group.throughput(Throughput::Elements(2 * TASKS));
    group.bench_function("push_10k_then_pop_10k_one_queue_single_thread", |b| {
        b.iter(|| {
            let heap = Heap::new();
            let popper = heap.popper(&["default"]);
            for n in 0..TASKS {
                heap.push("default", priority(n), 0, n, u128::from(n) + 1);
            }
            let mut popped = 0u64;
            while let Some(id) = popper.pop() {
                popped += 1;
                black_box(id);
            }
            assert_eq!(popped, TASKS, "every pushed task pops once");
        });
    });
    group.finish();
}

/// Four threads on two queues: each pushes into its own queue (threads alternate between the
/// two) and pops the best task across both, `ROUNDS_PER_THREAD` times. Only the rounds are
/// timed: not the prefill, nor spawning the threads.
fn contended_push_pop_4_threads_2_queues(c: &mut Criterion) {
    let mut group = c.benchmark_group("ready_heap");
    group.throughput(Throughput::Elements(THREADS * ROUNDS_PER_THREAD * 2));
    group.bench_function("contended_push_pop_4_threads_2_queues", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                total += contended_round();
            }
            total
        });
    });
    group.finish();
}

fn contended_round() -> Duration {
    const QUEUES: [&str; 2] = ["q0", "q1"];
    let heap = Heap::new();
    let mut seq = 0u64;
    for queue in QUEUES {
        for _ in 0..PREFILL_PER_QUEUE {
            heap.push(queue, priority(seq), 0, seq, u128::from(seq) + 1);
            seq += 1;
        }
    }
    let start_line = Barrier::new(usize::try_from(THREADS).expect("few threads") + 1);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let heap = &heap;
                let start_line = &start_line;
                scope.spawn(move || {
                    let queue = QUEUES[usize::from(thread % 2 == 1)];
                    let popper = heap.popper(&QUEUES);
                    // Sequence numbers must be unique: equal keys would overwrite each other.
                    let first = seq + thread * ROUNDS_PER_THREAD;
                    let mut missed = 0u64;
                    start_line.wait();
                    for n in first..first + ROUNDS_PER_THREAD {
                        heap.push(queue, priority(n), 0, n, u128::from(n) + 1);
                        if black_box(popper.pop()).is_none() {
                            missed += 1;
                        }
                    }
                    missed
                })
            })
            .collect();
        start_line.wait();
        let start = Instant::now();
        let missed: u64 = workers
            .into_iter()
            .map(|worker| worker.join().expect("bench thread panicked"))
            .sum();
        let elapsed = start.elapsed();
        assert_eq!(missed, 0, "the prefill keeps every pop fed");
        elapsed
    })
}

/// Pops everything from three queues holding tasks of mixed priorities, so every pop compares
/// the three fronts. Only the pops are timed.
fn pop_across_3_queues_mixed_priorities(c: &mut Criterion) {
    const QUEUES: [&str; 3] = ["emails", "reports", "default"];
    let mut group = c.benchmark_group("ready_heap");
    group.throughput(Throughput::Elements(TASKS));
    group.bench_function("pop_10k_across_3_queues_mixed_priorities", |b| {
        b.iter_batched(
            || {
                let heap = Heap::new();
                for n in 0..TASKS {
                    let queue = QUEUES[usize::try_from(n % 3).expect("below 3")];
                    heap.push(queue, priority(n), 0, n, u128::from(n) + 1);
                }
                let popper = heap.popper(&QUEUES);
                (heap, popper)
            },
            |(heap, popper)| {
                let mut popped = 0u64;
                while let Some(id) = popper.pop() {
                    popped += 1;
                    black_box(id);
                }
                assert_eq!(popped, TASKS, "every pushed task pops once");
                heap
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(
    benches,
    push_then_pop_single_thread,
    contended_push_pop_4_threads_2_queues,
    pop_across_3_queues_mixed_priorities
);
criterion_main!(benches);
