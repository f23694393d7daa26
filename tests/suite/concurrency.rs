//! Concurrency stress of the ready heap (reliability item 7): many producer and consumer
//! threads push and pop unique entries through the lock-free heap, across several queues and
//! priorities, with consumers serving overlapping selections of queues. Checked afterwards:
//! nothing lost, nothing duplicated, every entry popped by a consumer that serves its queue,
//! and no pop returned an entry while a better one (higher priority, then earlier due, then
//! earlier sequence) sat in one of its queues for the whole duration of that pop.
//!
//! The order check needs a common notion of "before": every push and pop takes numbers from
//! one SeqCst counter (after the push returns; before and after the pop), so "pushed before
//! the pop began and still not taken when it ended" is decided from those numbers alone.
//!
//! Smoke size under `cargo test`; `FQ_FULL=1` runs a million entries; `FQ_STRESS_ENTRIES=<n>`
//! sets another size; `FQ_SEED=<n>` replays the entry plan (the interleaving is the OS's).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use fq::internals::Heap;

use crate::common::run;
use run::{full, seed};

const QUEUES: [&str; 4] = ["q0", "q1", "q2", "q3"];
const PRODUCERS: usize = 8;
const CONSUMERS: usize = 8;

fn entries() -> usize {
    std::env::var("FQ_STRESS_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full() { 1_000_000 } else { 200_000 })
}

/// One planned entry: its queue and its place in the heap's order.
#[derive(Clone, Copy, Debug)]
struct Planned {
    queue: usize,
    priority: i32,
    due_at: i64,
}

impl Planned {
    /// The heap's order (highest priority, then earliest due, then sequence) as a tuple that
    /// sorts ascending; the sequence is the entry's index.
    fn key(&self, index: usize) -> (i64, i64, usize) {
        (-i64::from(self.priority), self.due_at, index)
    }
}

/// The queues consumer `c` serves: four serve one queue each, the others two or all four,
/// so selections overlap and every queue is served.
fn served(c: usize) -> Vec<usize> {
    match c {
        0..=3 => vec![c],
        4..=6 => vec![c % 4, (c + 1) % 4],
        _ => (0..QUEUES.len()).collect(),
    }
}

/// A pop that returned an entry: which, by whom, and its ticks.
#[derive(Clone, Copy)]
struct Pop {
    entry: usize,
    consumer: usize,
    start: u64,
    end: u64,
}

/// A prefix-minimum Fenwick tree over positions `0..n` (values only ever lowered).
struct PrefixMin {
    tree: Vec<u32>,
}

impl PrefixMin {
    fn new(n: usize) -> Self {
        Self {
            tree: vec![u32::MAX; n + 1],
        }
    }

    fn lower(&mut self, position: usize, value: u32) {
        let mut i = position + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].min(value);
            i += i & i.wrapping_neg();
        }
    }

    /// The minimum over positions `0..end`.
    fn min_before(&self, end: usize) -> u32 {
        let mut i = end;
        let mut best = u32::MAX;
        while i > 0 {
            best = best.min(self.tree[i]);
            i -= i & i.wrapping_neg();
        }
        best
    }
}

/// The order check. For each pop p of consumer c and each queue q that c serves: the best
/// entry of q pushed before p began (push tick < p.start) and taken by a pop that began after
/// p ended (its start > p.end) sat in q for all of p; p's entry must be better. Returns the
/// (pop, queue) pairs that had such a rival, how many popped a worse entry, and up to five
/// examples (popped, rival, queue). O(n log n): pops by decreasing end, entries entering a
/// prefix-minimum tree per queue (indexed by push order) as their taker's start passes.
fn order_check(
    plan: &[Planned],
    push_tick: &[u64],
    pops: &[Pop],
    taken: &[Option<usize>],
) -> (u64, u64, Vec<(usize, usize, usize)>) {
    let n = plan.len();
    let mut rank_order: Vec<usize> = (0..n).collect();
    rank_order.sort_unstable_by_key(|&i| plan[i].key(i));
    let mut rank = vec![0u32; n];
    for (r, &i) in rank_order.iter().enumerate() {
        rank[i] = u32::try_from(r).expect("fewer than 4 billion entries");
    }
    // Entries by push tick, so "pushed before tick t" is a prefix.
    let mut by_push: Vec<usize> = (0..n).collect();
    by_push.sort_unstable_by_key(|&i| push_tick[i]);
    let push_ticks_sorted: Vec<u64> = by_push.iter().map(|&i| push_tick[i]).collect();
    let mut push_position = vec![0usize; n];
    for (position, &i) in by_push.iter().enumerate() {
        push_position[i] = position;
    }
    // Entries by the start of the pop that took them, latest first.
    let mut by_taken: Vec<usize> = (0..n).collect();
    by_taken.sort_unstable_by_key(|&i| std::cmp::Reverse(pops[taken[i].expect("taken")].start));
    let mut pops_by_end: Vec<usize> = (0..pops.len()).collect();
    pops_by_end.sort_unstable_by_key(|&p| std::cmp::Reverse(pops[p].end));

    let mut trees: Vec<PrefixMin> = (0..QUEUES.len()).map(|_| PrefixMin::new(n)).collect();
    let mut next = 0;
    let mut checked = 0u64;
    let mut violations = Vec::new();
    let mut violation_count = 0u64;
    for &p in &pops_by_end {
        let pop = pops[p];
        while next < n && pops[taken[by_taken[next]].expect("taken")].start > pop.end {
            let i = by_taken[next];
            trees[plan[i].queue].lower(push_position[i], rank[i]);
            next += 1;
        }
        let pushed_before = push_ticks_sorted.partition_point(|&t| t < pop.start);
        for q in served(pop.consumer) {
            let rival = trees[q].min_before(pushed_before);
            if rival == u32::MAX {
                continue;
            }
            checked += 1;
            if rival < rank[pop.entry] {
                violation_count += 1;
                if violations.len() < 5 {
                    violations.push((pop.entry, rank_order[rival as usize], q));
                }
            }
        }
    }
    (checked, violation_count, violations)
}

#[test]
fn unique_pushes_and_pops_across_threads_lose_nothing_duplicate_nothing_and_respect_priority() {
    let seed = seed();
    let n = entries();
    println!(
        "ready heap stress: seed {seed} (FQ_SEED={seed} replays the plan), {n} entries, \
         {PRODUCERS} producers, {CONSUMERS} consumers, {} queues",
        QUEUES.len()
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan: Vec<Planned> = (0..n)
        .map(|_| Planned {
            queue: rng.usize(0..QUEUES.len()),
            priority: rng.i32(-2..=2),
            // A few due times, so both priority and due time decide the order.
            due_at: rng.i64(0..4),
        })
        .collect();
    let plan = Arc::new(plan);

    let heap = Arc::new(Heap::new());
    let ticks = Arc::new(AtomicU64::new(0));
    let producers_done = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(PRODUCERS + CONSUMERS));
    let began = Instant::now();

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (heap, ticks, done, start, plan) = (
                Arc::clone(&heap),
                Arc::clone(&ticks),
                Arc::clone(&producers_done),
                Arc::clone(&start),
                Arc::clone(&plan),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut pushed = Vec::with_capacity(plan.len() / PRODUCERS + 1);
                for index in (p..plan.len()).step_by(PRODUCERS) {
                    let entry = plan[index];
                    heap.push(
                        QUEUES[entry.queue],
                        entry.priority,
                        entry.due_at,
                        index as u64,
                        index as u128,
                    );
                    pushed.push((index, ticks.fetch_add(1, Ordering::SeqCst)));
                }
                done.fetch_add(1, Ordering::SeqCst);
                pushed
            })
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let (heap, ticks, done, start) = (
                Arc::clone(&heap),
                Arc::clone(&ticks),
                Arc::clone(&producers_done),
                Arc::clone(&start),
            );
            std::thread::spawn(move || {
                let names: Vec<&str> = served(c).into_iter().map(|q| QUEUES[q]).collect();
                let popper = heap.popper(&names);
                start.wait();
                let mut pops = Vec::new();
                let mut empty = 0u64;
                loop {
                    // Read before the pop: once every producer is done, an empty pop means
                    // these queues stay empty.
                    let finished = done.load(Ordering::SeqCst) == PRODUCERS;
                    let begin = ticks.fetch_add(1, Ordering::SeqCst);
                    let popped = popper.pop();
                    let end = ticks.fetch_add(1, Ordering::SeqCst);
                    match popped {
                        Some(id) => pops.push(Pop {
                            entry: usize::try_from(id).expect("ids are indexes"),
                            consumer: c,
                            start: begin,
                            end,
                        }),
                        None if finished => break,
                        None => {
                            empty += 1;
                            std::thread::yield_now();
                        }
                    }
                }
                (pops, empty)
            })
        })
        .collect();

    let mut push_tick = vec![u64::MAX; n];
    for producer in producers {
        for (index, tick) in producer.join().expect("producer thread") {
            push_tick[index] = tick;
        }
    }
    let mut pops: Vec<Pop> = Vec::with_capacity(n);
    let mut empty_pops = 0;
    let mut per_consumer = Vec::new();
    for consumer in consumers {
        let (mine, empty) = consumer.join().expect("consumer thread");
        per_consumer.push(mine.len());
        empty_pops += empty;
        pops.extend(mine);
    }
    let elapsed = began.elapsed();
    println!(
        "  {n} pushes and {} pops in {:.2} s ({:.0} ops/s), {empty_pops} empty pops while \
         producers ran; pops per consumer {per_consumer:?}",
        pops.len(),
        elapsed.as_secs_f64(),
        (n + pops.len()) as f64 / elapsed.as_secs_f64()
    );

    // Nothing lost, nothing duplicated, each taken by a consumer that serves its queue.
    let mut taken: Vec<Option<usize>> = vec![None; n];
    let mut duplicates = 0;
    let mut strangers = 0;
    for (i, pop) in pops.iter().enumerate() {
        if taken[pop.entry].replace(i).is_some() {
            duplicates += 1;
        }
        if !served(pop.consumer).contains(&plan[pop.entry].queue) {
            strangers += 1;
        }
    }
    let lost = taken.iter().filter(|t| t.is_none()).count();
    assert_eq!(push_tick.iter().filter(|t| **t == u64::MAX).count(), 0);
    println!("  lost {lost}, duplicated {duplicates}, popped from an unserved queue {strangers}");
    assert_eq!(lost, 0, "entries pushed but never popped");
    assert_eq!(duplicates, 0, "entries popped twice");
    assert_eq!(
        strangers, 0,
        "entries popped by a consumer not serving their queue"
    );

    let (checked, violation_count, violations) = order_check(&plan, &push_tick, &pops, &taken);
    println!(
        "  order: {checked} (pop, queue) pairs had a rival entry present for the whole pop; \
         {violation_count} popped a worse entry than such a rival"
    );
    for (popped, rival, q) in &violations {
        println!(
            "    popped {popped} {:?} while {rival} {:?} sat in {} throughout",
            plan[*popped].key(*popped),
            plan[*rival].key(*rival),
            QUEUES[*q]
        );
    }
    assert_eq!(
        violation_count, 0,
        "a pop passed over a better entry present for its whole duration"
    );
    assert!(checked > 0, "the order check compared nothing");
}

/// The order check catches a pop that passed over a better entry, and passes the same
/// history served in the right order.
#[test]
fn the_order_check_catches_a_pop_that_passes_over_a_better_entry() {
    let plan = vec![
        Planned {
            queue: 0,
            priority: 2,
            due_at: 0,
        },
        Planned {
            queue: 0,
            priority: 0,
            due_at: 0,
        },
    ];
    let push_tick = vec![0, 1];
    let pop = |entry, start| Pop {
        entry,
        consumer: 0,
        start,
        end: start + 1,
    };
    // Entry 1 taken first while the better entry 0 sat in q0 throughout.
    let wrong = vec![pop(1, 2), pop(0, 4)];
    let (checked, violations, examples) =
        order_check(&plan, &push_tick, &wrong, &[Some(1), Some(0)]);
    assert_eq!((checked, violations), (1, 1));
    assert_eq!(examples, vec![(1, 0, 0)]);
    let right = vec![pop(0, 2), pop(1, 4)];
    let (checked, violations, _) = order_check(&plan, &push_tick, &right, &[Some(0), Some(1)]);
    assert_eq!((checked, violations), (1, 0));
}
