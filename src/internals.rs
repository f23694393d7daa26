//! Thin handles on internal building blocks, for fq's own benchmarks and fuzz targets only.
//! Not part of the public API: hidden from the docs, no stability promise.

use std::path::Path;
use std::sync::Arc;

use crate::Result;
use crate::queue::ReadyHeap;
use crate::store::{Store, StoreOptions};
use crate::task::TaskId;
use crate::task::{ReadyOrder, StoredTask};

mod log;
pub use log::{
    LOG_HEADER_BYTES, LOG_RECORD_ALIGN, LogEntry, RedoLogFile, log_image, log_path, log_record_at,
    scan_log,
};

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
    let mut task = pending_task(name, payload, 0);
    task.priority = priority;
    task.attempts = attempts;
    crate::store::codec_encode(&task)
}

/// As [`encode_sample_record`], for a task queued with unique key `key` (record format 3).
pub fn encode_sample_unique_record(
    name: &str,
    payload: &str,
    priority: i32,
    attempts: u32,
    key: &str,
) -> Vec<u8> {
    let mut task = pending_task(name, payload, 0);
    task.priority = priority;
    task.attempts = attempts;
    task.unique = Some(crate::task::UniqueSpec {
        key: key.to_owned(),
        for_ms: Some(u64::from(attempts)),
    });
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
        Self::open_with_log(path, true)
    }

    /// Opens or creates a store file, with the write-ahead log (the default) or without it
    /// (each commit syncs the B-tree).
    ///
    /// # Errors
    /// As the engine's open.
    pub fn open_with_log(path: &Path, write_ahead_log: bool) -> Result<Self> {
        let options = StoreOptions {
            verify_on_open: false,
            write_ahead_log,
            ..StoreOptions::default()
        };
        Ok(Self {
            store: Store::open(path, &options)?,
            next: 0,
        })
    }

    /// Opens a store without the write-ahead log, going on when its log went missing after a
    /// crash (`EngineBuilder::forget_missing_log`): what the B-tree alone holds.
    ///
    /// # Errors
    /// As the engine's open.
    pub fn open_forgetting_log(path: &Path) -> Result<Self> {
        let options = StoreOptions {
            verify_on_open: false,
            write_ahead_log: false,
            forget_missing_log: true,
            ..StoreOptions::default()
        };
        Ok(Self {
            store: Store::open(path, &options)?,
            next: 0,
        })
    }

    /// How many tasks the store counts, whatever their status.
    ///
    /// # Errors
    /// A storage failure.
    pub fn tasks(&self) -> Result<u64> {
        Ok(self.store.counts()?.values().sum())
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
                let task = pending_task("bench.noop", payload, seq);
                let id = TaskId::from_u128(u128::from(seq) + 1);
                tables.put_task(id, &task, None)?;
                tables.insert_waiting(&task.queue, ReadyOrder::new(0, 0, seq), id)?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

// --- control-socket frames --------------------------------------------------------------------

/// What one read of the control-socket frame decoder gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameStep {
    /// A frame's body.
    Frame(Vec<u8>),
    /// The stream ended cleanly between frames.
    End,
    /// A zero length prefix.
    Empty,
    /// A length prefix over the limit.
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// The reader failed (never, for the in-memory reader).
    Io(String),
    /// The decoder kept asking for more without the reader having anything new to give: a hang.
    Stalled,
}

/// An in-memory byte stream delivered in chunks of chosen sizes, cycling through them, with a
/// `Pending` before a chunk wherever a size of 0 stands, as a socket does between packets.
#[derive(Debug)]
struct ChunkedReader {
    stream: Vec<u8>,
    chunks: Vec<usize>,
    /// Bytes delivered so far.
    at: usize,
    /// Index of the current chunk size, and what is left of that chunk.
    chunk: usize,
    left_in_chunk: usize,
    /// Reads the decoder made, ever.
    reads: usize,
}

impl ChunkedReader {
    /// Moves to the next chunk; `true` when a pause (one or more sizes of 0) comes before it.
    /// Only pauses, or no sizes at all, mean one chunk of everything.
    fn next_chunk(&mut self) -> bool {
        let mut pause = false;
        for _ in 0..self.chunks.len() {
            let size = self.chunks[self.chunk % self.chunks.len()];
            self.chunk = self.chunk.wrapping_add(1);
            if size == 0 {
                pause = true;
            } else {
                self.left_in_chunk = size;
                return pause;
            }
        }
        self.left_in_chunk = usize::MAX;
        pause
    }
}

impl tokio::io::AsyncRead for ChunkedReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.reads += 1;
        if this.at >= this.stream.len() || buf.remaining() == 0 {
            return std::task::Poll::Ready(Ok(()));
        }
        if this.left_in_chunk == 0 && this.next_chunk() {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = this
            .left_in_chunk
            .min(buf.remaining())
            .min(this.stream.len() - this.at);
        buf.put_slice(&this.stream[this.at..this.at + n]);
        this.at += n;
        this.left_in_chunk -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// The read buffer the decoder starts with here: small, so that an allocation check sees the
/// decoder's own growth with the bytes that arrive rather than a whole connection buffer
/// (`READ_BUFFER_BYTES`) being replaced, and under 1 KiB, so that a replacement is sized by
/// what is needed, not by the first capacity. The decoding is the same at any size.
const FUZZ_READ_BUFFER: usize = 256;

/// The control socket's frame reader over a chunked in-memory stream, driven without a
/// runtime (a no-op waker; the reader is never pending for long).
#[derive(Debug)]
pub struct FrameDecoder {
    reader: crate::control::protocol::FrameReader<ChunkedReader>,
    /// The read buffer's capacity and the reads made at the last [`FrameDecoder::reset_probe`].
    capacity_at_reset: usize,
    reads_at_reset: usize,
}

impl FrameDecoder {
    /// Decodes `stream` delivered in chunks of `chunks` bytes in turn (cycling; a 0 is a
    /// `Pending` pause; no chunks means one chunk), refusing frames over `max` bytes.
    pub fn new(stream: Vec<u8>, chunks: Vec<usize>, max: usize) -> Self {
        let reader = crate::control::protocol::FrameReader::with_capacity(
            ChunkedReader {
                stream,
                chunks,
                at: 0,
                chunk: 0,
                left_in_chunk: 0,
                reads: 0,
            },
            max,
            FUZZ_READ_BUFFER,
        );
        let capacity_at_reset = reader.capacity();
        Self {
            reader,
            capacity_at_reset,
            reads_at_reset: 0,
        }
    }

    /// Reads the next frame.
    pub fn next_frame(&mut self) -> FrameStep {
        self.decode_next().into_step()
    }

    /// Reads the next frame, leaving it where the decoder put it: what a measurement of the
    /// decoder's allocations should wrap, [`DecodedFrame::into_step`] excluded.
    pub fn decode_next(&mut self) -> DecodedFrame {
        use std::task::{Context, Poll, Waker};

        // Every poll delivers a byte or passes a pause, so more polls than that is a hang.
        let source = self.reader.get_ref();
        let budget = (source.stream.len() - source.at)
            .saturating_mul(2)
            .saturating_add(source.chunks.len().saturating_mul(2))
            .saturating_add(16);
        let mut context = Context::from_waker(Waker::noop());
        let mut read = std::pin::pin!(self.reader.read_frame());
        for _ in 0..budget {
            if let Poll::Ready(result) = read.as_mut().poll(&mut context) {
                return DecodedFrame(Some(result));
            }
        }
        DecodedFrame(None)
    }

    /// Bytes of the stream the decoder has taken so far: read, and not left in its buffer.
    pub fn consumed(&self) -> usize {
        self.reader.get_ref().at - self.reader.buffered()
    }

    /// How many bytes the decoder's read buffer grew by since the last
    /// [`FrameDecoder::reset_probe`], and how many reads it made: what a lying length prefix
    /// made it set aside.
    pub fn probe(&self) -> (usize, usize) {
        (
            self.reader
                .capacity()
                .saturating_sub(self.capacity_at_reset),
            self.reader.get_ref().reads - self.reads_at_reset,
        )
    }

    /// Starts a new measurement for [`FrameDecoder::probe`].
    pub fn reset_probe(&mut self) {
        self.capacity_at_reset = self.reader.capacity();
        self.reads_at_reset = self.reader.get_ref().reads;
    }
}

/// One step of [`FrameDecoder::decode_next`], its frame still in the decoder's buffer.
#[derive(Debug)]
pub struct DecodedFrame(
    Option<
        std::result::Result<
            Option<tokio_util::bytes::BytesMut>,
            crate::control::protocol::FrameError,
        >,
    >,
);

impl DecodedFrame {
    /// The step, its frame copied out (which lets the decoder reuse its buffer).
    pub fn into_step(self) -> FrameStep {
        use crate::control::protocol::FrameError;
        match self.0 {
            None => FrameStep::Stalled,
            Some(Ok(Some(body))) => FrameStep::Frame(body.to_vec()),
            Some(Ok(None)) => FrameStep::End,
            Some(Err(FrameError::Empty)) => FrameStep::Empty,
            Some(Err(FrameError::TooLarge { len, max })) => FrameStep::TooLarge { len, max },
            Some(Err(FrameError::Truncated { got, expected })) => {
                FrameStep::Truncated { got, expected }
            }
            Some(Err(FrameError::Io(error))) => FrameStep::Io(error.to_string()),
        }
    }
}

/// The frame (length prefix included) the control protocol writes for `value`.
///
/// # Errors
/// As the protocol's encoder: a value over 4 GiB.
pub fn encode_frame(value: &serde_json::Value) -> Result<Vec<u8>> {
    crate::control::protocol::encode_frame(value)
}

/// The bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = crate::control::protocol::HEADER_BYTES;

/// The frame limits in use: the server's default request limit, and the client's response
/// limit.
pub fn frame_limits() -> [usize; 2] {
    [
        crate::Config::default().limits.max_frame_bytes,
        crate::control::protocol::MAX_RESPONSE_BYTES,
    ]
}

// --- an engine for model-based tests ----------------------------------------------------------

/// A real engine on a fresh store in a private temp directory (in `/dev/shm` when there is one,
/// so a step costs no disk sync), on a manual clock, driven synchronously; the directory is
/// removed on drop. For the model-based fuzz target and its corpus replay.
#[derive(Debug)]
pub struct ModelEngine {
    engine: Option<crate::Engine>,
    runtime: tokio::runtime::Runtime,
    clock: Arc<crate::ManualClock>,
    dir: std::path::PathBuf,
    lease: std::time::Duration,
}

impl ModelEngine {
    /// Opens a fresh store with the control socket off, the given lease, and the clock at
    /// 2026-01-01T00:00:00Z.
    ///
    /// # Errors
    /// The temp directory or the store cannot be created.
    pub fn create(lease: std::time::Duration) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "fq-model-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)
            .map_err(|e| crate::Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Internal(format!("cannot start a runtime: {e}")))?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(1_767_225_600_000)
            .unwrap_or_default();
        let mut model = Self {
            engine: None,
            runtime,
            clock: crate::ManualClock::new(start),
            dir,
            lease,
        };
        model.engine = Some(model.open()?);
        Ok(model)
    }

    fn open(&self) -> Result<crate::Engine> {
        let _guard = self.runtime.enter();
        crate::Engine::builder(self.dir.join("fq.redb"))
            .clock(Arc::clone(&self.clock) as Arc<dyn crate::Clock>)
            .lease_duration(self.lease)
            .control(false)
            .open()
    }

    /// The engine.
    ///
    /// # Panics
    /// Never: the engine is only absent inside [`ModelEngine::crash_and_reopen`].
    pub fn engine(&self) -> &crate::Engine {
        self.engine.as_ref().expect("the engine is open")
    }

    /// The manual clock.
    pub fn clock(&self) -> &crate::ManualClock {
        &self.clock
    }

    /// Runs a future of the engine's API to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Claims up to `max` tasks of `queues` without waiting.
    ///
    /// # Errors
    /// As [`crate::Broker::claim`].
    pub fn claim(&self, queues: &[&str], max: usize) -> Result<Vec<crate::TaskRecord>> {
        let names: Vec<Arc<str>> = queues.iter().map(|q| Arc::from(*q)).collect();
        let broker = self.engine().broker();
        self.block_on(broker.claim(crate::ClaimRequest::now(&names, max)))
    }

    /// Drops the engine without any shutdown (what was running is left RUNNING in the store)
    /// and opens the same store again, as a restarted process would.
    ///
    /// # Errors
    /// As [`crate::EngineBuilder::open`].
    pub fn crash_and_reopen(&mut self) -> Result<crate::RecoveryReport> {
        drop(self.engine.take());
        let engine = self.open()?;
        let report = engine.recovery();
        self.engine = Some(engine);
        Ok(report)
    }
}

impl Drop for ModelEngine {
    fn drop(&mut self) {
        drop(self.engine.take());
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot remove a model engine's store");
        }
    }
}

/// A PENDING task of queue `default` at priority 0, due at 0, with 3 retries.
fn pending_task(name: &str, payload: &str, seq: u64) -> StoredTask {
    StoredTask::pending_example(name, "default", payload, seq)
}
