//! Thin handles on internal building blocks, for fq's own benchmarks and fuzz targets only.
//! Not part of the public API: hidden from the docs, no stability promise.

use std::path::Path;
use std::sync::Arc;

use crate::Result;
use crate::queue::ReadyHeap;
use crate::store::{ReadyOrder, Store, StoreOptions, StoredTask};
use crate::task::{TaskId, TaskStatus};

/// The lock-free ready heap.
#[derive(Debug, Default)]
pub struct Heap {
    heap: ReadyHeap,
}

impl Heap {
    /// An empty heap.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes task `id` ready in `queue`.
    pub fn push(&self, queue: &str, priority: i32, due_at: i64, seq: u64, id: u128) {
        self.heap.push(
            queue,
            ReadyOrder::new(priority, due_at, seq),
            TaskId::from_u128(id),
        );
    }

    /// A popper over `queues`.
    pub fn popper(&self, queues: &[&str]) -> Popper {
        let names: Vec<Arc<str>> = queues.iter().map(|q| Arc::from(*q)).collect();
        Popper {
            selection: self.heap.select(&names),
        }
    }
}

/// Pops from a fixed set of queues.
#[derive(Debug, Clone)]
pub struct Popper {
    selection: crate::queue::QueueSelection,
}

impl Popper {
    /// The best ready task's id.
    pub fn pop(&self) -> Option<u128> {
        self.selection.pop().map(|task| task.id.as_u128())
    }
}

/// Decodes a stored task record; `Err` names why it does not decode.
///
/// # Errors
/// Any decoding failure (short, bad checksum, unknown version, bad body).
pub fn decode_record(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let task = crate::store::codec_decode(bytes).map_err(|e| e.to_string())?;
    Ok(crate::store::codec_encode(&task))
}

/// Encodes a sample record with the given payload text and numbers, for round-trip checks.
pub fn encode_sample_record(name: &str, payload: &str, priority: i32, attempts: u32) -> Vec<u8> {
    let task = StoredTask {
        name: name.to_owned(),
        queue: "default".to_owned(),
        priority,
        payload: payload.to_owned(),
        status: TaskStatus::Pending,
        attempts,
        max_retries: 3,
        timeout_ms: None,
        retry_delay_ms: None,
        created_at: 0,
        scheduled_at: 0,
        due_at: 0,
        seq: 0,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
    };
    crate::store::codec_encode(&task)
}

/// A raw store, for measuring commit throughput by batch size.
#[derive(Debug)]
pub struct RawStore {
    store: Store,
    next: u64,
}

impl RawStore {
    /// Opens or creates a store file.
    ///
    /// # Errors
    /// As the engine's open.
    pub fn open(path: &Path) -> Result<Self> {
        let options = StoreOptions {
            verify_on_open: false,
            ..StoreOptions::default()
        };
        Ok(Self {
            store: Store::open(path, &options)?,
            next: 0,
        })
    }

    /// Inserts `tasks` new tasks (record + waiting index) in one durable commit.
    ///
    /// # Errors
    /// A storage failure.
    pub fn commit_enqueues(&mut self, tasks: usize, payload: &str) -> Result<()> {
        let first = self.next;
        self.next += tasks as u64;
        self.store.write(|tables| {
            for seq in first..first + tasks as u64 {
                let task = StoredTask {
                    name: "bench.noop".to_owned(),
                    queue: "default".to_owned(),
                    priority: 0,
                    payload: payload.to_owned(),
                    status: TaskStatus::Pending,
                    attempts: 0,
                    max_retries: 3,
                    timeout_ms: None,
                    retry_delay_ms: None,
                    created_at: 0,
                    scheduled_at: 0,
                    due_at: 0,
                    seq,
                    started_at: None,
                    finished_at: None,
                    result: None,
                    error: None,
                };
                let id = TaskId::from_u128(u128::from(seq) + 1);
                tables.put_task(id, &task, None)?;
                tables.insert_waiting(&task.queue, ReadyOrder::new(0, 0, seq), id)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}
