//! The properties the fuzz targets check, one function per target. Shared, through
//! `#[path = ...] mod checks;`, by the targets here and by `tests/fuzz_corpus.rs`, which replays
//! the committed corpus under `cargo test`. Each function takes the raw input bytes, returns
//! normally when the property holds, and panics (with the reason) when it does not.

use std::path::Path;

use fq::internals::ModelEngine;
use fq::internals::{
    FRAME_HEADER_BYTES, FrameDecoder, FrameStep, decode_record, encode_frame, encode_sample_record,
    encode_sample_unique_record, frame_limits,
};
use fq::{
    Clock, Config, Error, FailureKind, ListQuery, Outcome, Payload, QueueStats, RetryPolicy,
    Settlement, TaskFailure, TaskId, TaskRecord, TaskStatus,
};

/// Longest text input the parsing checks look at; longer inputs are skipped, so that a run's
/// time goes into many inputs rather than a few huge ones.
pub(crate) const MAX_TEXT_INPUT: usize = 64 * 1024;

/// `decode_record` target: arbitrary bytes never panic the decoder, anything it accepts
/// re-encodes to bytes that decode and re-encode to themselves; the same for the input framed
/// as a record body (current version byte, valid checksum), which is what lets the fuzzer past
/// the checksum into the body decoder; and a record built from the input's leading bytes
/// decodes to exactly its own bytes, with any single flipped bit refused.
pub(crate) fn decode_record_check(data: &[u8]) {
    arbitrary_bytes_round_trip(data);
    arbitrary_bytes_round_trip(&frame_body(data));
    sample_record_round_trips(data);
}

/// `body` framed as a record: the current format version byte (read off a freshly encoded
/// record), `body`, then the CRC-32 of both, little-endian.
fn frame_body(body: &[u8]) -> Vec<u8> {
    let version = encode_sample_record("", "", 0, 0)[0];
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(version);
    framed.extend_from_slice(body);
    let crc = crc32(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed
}

/// CRC-32 (IEEE 802.3, reflected), bit by bit: an oracle independent of the codec's crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn arbitrary_bytes_round_trip(data: &[u8]) {
    let Ok(encoded) = decode_record(data) else {
        return;
    };
    let again = decode_record(&encoded)
        .unwrap_or_else(|err| panic!("a re-encoded record does not decode: {err}"));
    assert_eq!(again, encoded, "re-encoding a decoded record is not stable");
}

/// The structured variant: priority (4 bytes LE), attempts (4 bytes LE), a split byte, then the
/// rest cut in two at a point chosen by the split byte: name, then payload (lossy UTF-8). Short
/// inputs are padded with zeros, so every input exercises this.
fn sample_record_round_trips(data: &[u8]) {
    let byte = |index: usize| data.get(index).copied().unwrap_or(0);
    let priority = i32::from_le_bytes([byte(0), byte(1), byte(2), byte(3)]);
    let attempts = u32::from_le_bytes([byte(4), byte(5), byte(6), byte(7)]);
    let rest = data.get(9..).unwrap_or_default();
    let cut = rest.len() * usize::from(byte(8)) / 255;
    let (name, payload) = rest.split_at(cut);
    let name = String::from_utf8_lossy(name);
    let payload = String::from_utf8_lossy(payload);

    let bytes = encode_sample_record(&name, &payload, priority, attempts);
    assert_eq!(
        decode_record(&bytes),
        Ok(bytes.clone()),
        "a freshly encoded record does not decode to its own bytes"
    );
    assert_eq!(
        frame_body(&bytes[1..bytes.len() - 4]),
        bytes,
        "the checks' framing no longer matches the codec's (version byte, body, CRC-32 LE)"
    );
    // CRC-32 catches every single-bit error; which bit is flipped comes from the input.
    let bit = usize::from(byte(8))
        .wrapping_mul(31)
        .wrapping_add(data.len())
        % (bytes.len() * 8);
    let mut flipped = bytes;
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(
        decode_record(&flipped).is_err(),
        "a record with bit {bit} flipped still decodes"
    );
    // The same task queued with a unique key (record format 3, the payload as its key).
    let keyed = encode_sample_unique_record(&name, &payload, priority, attempts, &payload);
    assert_eq!(
        decode_record(&keyed),
        Ok(keyed.clone()),
        "a freshly encoded record with a unique key does not decode to its own bytes"
    );
}

/// `payload_parse` target: arbitrary UTF-8 never panics `Payload::from_json_str`; an accepted
/// payload's normalized text is accepted again unchanged (normalization is idempotent), and so
/// is its JSON value.
pub(crate) fn payload_parse_check(data: &[u8]) {
    let Some(text) = bounded_text(data) else {
        return;
    };
    let payload = match Payload::from_json_str(text) {
        Ok(payload) => payload,
        Err(err) => {
            // Error messages are built from the input; building one must not panic either.
            std::hint::black_box(err.to_string());
            return;
        }
    };
    let again = Payload::from_json_str(payload.as_str()).unwrap_or_else(|err| {
        panic!(
            "the normalized payload {:?} is refused: {err}",
            payload.as_str()
        )
    });
    assert_eq!(again, payload, "normalizing a payload twice changes it");
    let from_value = Payload::from_value(&payload.to_value())
        .unwrap_or_else(|err| panic!("the payload's own value is refused: {err}"));
    assert_eq!(
        from_value, payload,
        "the payload's value normalizes differently"
    );
}

/// `config_parse` target: arbitrary UTF-8 never panics (nor hangs) the TOML and YAML config
/// parsers; an accepted configuration passes validation again, and errors can be displayed.
pub(crate) fn config_parse_check(data: &[u8]) {
    let Some(text) = bounded_text(data) else {
        return;
    };
    let origins = [Path::new("fuzz/fq.toml"), Path::new("fuzz/services.yaml")];
    let results = [
        Config::from_toml_str(text, origins[0]),
        Config::from_yaml_str(text, origins[1]),
    ];
    for result in results {
        match result {
            Ok(config) => {
                if let Err(err) = config.validate() {
                    panic!("an accepted configuration fails validation: {err}");
                }
            }
            Err(err) => {
                std::hint::black_box(err.to_string());
            }
        }
    }
}

/// `data` as text, when it is UTF-8 and at most [`MAX_TEXT_INPUT`] bytes.
fn bounded_text(data: &[u8]) -> Option<&str> {
    if data.len() > MAX_TEXT_INPUT {
        return None;
    }
    std::str::from_utf8(data).ok()
}

// --- frame_decode -----------------------------------------------------------------------------

/// Bytes the frame decoder may set aside for a body before any of it arrives (its first
/// buffer); past that it may only grow with the bytes received.
const FRAME_FIRST_BUFFER: usize = 64 * 1024;

/// `frame_decode` target. Input: a limit selector byte, a count byte `k`, `k` chunk sizes (0 is
/// a pause: the reader answers `Pending` once), then the byte stream. The control protocol's
/// frame decoder, reading the stream in those chunks, must give exactly the frames and the
/// error a straightforward reading of the format gives (so the same whatever the chunking,
/// one chunk included), never stall, never take a byte of the body of a frame it refuses nor
/// grow its buffer for it, and (when `allocated` counts this thread's allocated bytes, as the
/// fuzz target's allocator does) allocate nothing for a zero or oversized length prefix and at
/// most its first buffer plus twice what arrived for any other frame. "Taken" is what the
/// decoder consumed: read from the stream and not left in its read buffer. Then frames the protocol's encoder writes for
/// values taken from the input decode back to those values, in any chunking.
pub(crate) fn frame_decode_check(data: &[u8], allocated: Option<fn() -> u64>) {
    let byte = |index: usize| data.get(index).copied().unwrap_or(0);
    let limits = frame_limits();
    let max = match byte(0) {
        0 => limits[0],
        1 => limits[1],
        other => usize::from(other) * 4,
    };
    let count = usize::from(byte(1) % 17);
    let chunks: Vec<usize> = (0..count).map(|i| usize::from(byte(2 + i))).collect();
    let stream = data.get(2 + count..).unwrap_or_default();

    let expected = reference_frames(stream, max);
    let whole = decode_all(stream, Vec::new(), max, allocated);
    assert_eq!(
        whole, expected,
        "decoding the stream in one chunk differs from the format (limit {max})"
    );
    let chunked = decode_all(stream, chunks.clone(), max, allocated);
    assert_eq!(
        chunked, expected,
        "decoding the stream in chunks {chunks:?} differs from one chunk (limit {max})"
    );
    frames_round_trip(stream, chunks);
}

/// The frames of `stream` read straight off the format (4-byte big-endian length, then the
/// body), up to and including the first end or error: the server closes a connection there.
fn reference_frames(stream: &[u8], max: usize) -> Vec<FrameStep> {
    let mut steps = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            steps.push(FrameStep::End);
            return steps;
        }
        let Some((header, body)) = rest.split_first_chunk::<4>() else {
            steps.push(FrameStep::Truncated {
                got: rest.len(),
                expected: FRAME_HEADER_BYTES,
            });
            return steps;
        };
        let len = u32::from_be_bytes(*header);
        let step = match usize::try_from(len) {
            Ok(0) => FrameStep::Empty,
            Ok(len) if len <= max => match body.get(..len) {
                Some(frame) => {
                    steps.push(FrameStep::Frame(frame.to_vec()));
                    rest = &body[len..];
                    continue;
                }
                None => FrameStep::Truncated {
                    got: body.len(),
                    expected: len,
                },
            },
            _ => FrameStep::TooLarge {
                len: u64::from(len),
                max,
            },
        };
        steps.push(step);
        return steps;
    }
}

/// Every step of the decoder over `stream` in `chunks`, up to the first that is not a frame,
/// checking what each step took from the stream and (when it can be counted) allocated.
fn decode_all(
    stream: &[u8],
    chunks: Vec<usize>,
    max: usize,
    allocated: Option<fn() -> u64>,
) -> Vec<FrameStep> {
    let mut decoder = FrameDecoder::new(stream.to_vec(), chunks, max);
    let mut steps = Vec::new();
    loop {
        let start = decoder.consumed();
        decoder.reset_probe();
        let before = allocated.map(|count| count());
        let decoded = decoder.decode_next();
        let spent = allocated
            .zip(before)
            .map(|(count, before)| count() - before);
        // Copied out after the measurement: the copy is the check's, not the decoder's.
        let step = decoded.into_step();
        let taken = decoder.consumed() - start;
        let (set_aside, _) = decoder.probe();
        match &step {
            FrameStep::Empty | FrameStep::TooLarge { .. } => {
                assert_eq!(
                    taken, FRAME_HEADER_BYTES,
                    "{step:?}: the decoder took more than the refused length prefix"
                );
                assert_eq!(
                    set_aside, 0,
                    "{step:?}: the decoder's buffer grew by {set_aside} bytes for a refused frame"
                );
                if let Some(spent) = spent {
                    assert_eq!(
                        spent, 0,
                        "{step:?}: {spent} bytes allocated for a refused frame"
                    );
                }
            }
            FrameStep::Frame(body) => {
                assert_eq!(taken, FRAME_HEADER_BYTES + body.len(), "frame length");
                check_body_allocation(&step, body.len(), body.len(), spent);
            }
            FrameStep::Truncated { got, expected } => {
                // A truncated header takes fewer than 4 bytes and has no body to allocate.
                if taken >= FRAME_HEADER_BYTES {
                    assert_eq!(taken, FRAME_HEADER_BYTES + got, "truncated frame length");
                    check_body_allocation(&step, *got, *expected, spent);
                } else {
                    assert_eq!(taken, *got, "truncated header length");
                }
            }
            FrameStep::End => assert_eq!(taken, 0, "a clean end took bytes"),
            FrameStep::Io(_) | FrameStep::Stalled => {}
        }
        let done = !matches!(step, FrameStep::Frame(_));
        steps.push(step);
        if done {
            return steps;
        }
    }
}

fn check_body_allocation(step: &FrameStep, got: usize, expected: usize, spent: Option<u64>) {
    let Some(spent) = spent else {
        return;
    };
    let bound = 2 * expected.min(FRAME_FIRST_BUFFER) + 2 * got + 1024;
    assert!(
        spent <= bound as u64,
        "{:?}: {spent} bytes allocated for a body of {got} of {expected} bytes (bound {bound})",
        step_summary(step)
    );
}

/// A step without its body, for messages.
fn step_summary(step: &FrameStep) -> String {
    match step {
        FrameStep::Frame(body) => format!("Frame({} bytes)", body.len()),
        other => format!("{other:?}"),
    }
}

/// Values built from the input, encoded by the protocol's encoder back to back, decode (in
/// `chunks`) to the same values, and each frame is the length prefix plus the value's JSON.
fn frames_round_trip(input: &[u8], chunks: Vec<usize>) {
    let text = String::from_utf8_lossy(input).into_owned();
    let mut values = vec![
        serde_json::Value::String(text.clone()),
        serde_json::json!({
            "id": u64::from_le_bytes(input.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8])),
            "op": "claim",
            "args": {"queues": [text], "max": input.len()},
        }),
    ];
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) {
        values.push(value);
    }
    let mut stream = Vec::new();
    for value in &values {
        let frame = encode_frame(value)
            .unwrap_or_else(|err| panic!("the encoder refused a small value: {err}"));
        let json = serde_json::to_vec(value).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            frame.get(..FRAME_HEADER_BYTES),
            Some(&(json.len() as u32).to_be_bytes()[..]),
            "the length prefix is not the body's length"
        );
        assert_eq!(
            &frame[FRAME_HEADER_BYTES..],
            &json[..],
            "the body is not the value's JSON"
        );
        stream.extend_from_slice(&frame);
    }
    let steps = decode_all(&stream, chunks, frame_limits()[0], None);
    assert_eq!(
        steps.len(),
        values.len() + 1,
        "encoded frames decode to {:?}",
        steps.iter().map(step_summary).collect::<Vec<_>>()
    );
    for (step, value) in steps.iter().zip(&values) {
        let FrameStep::Frame(body) = step else {
            panic!("an encoded frame decodes to {}", step_summary(step));
        };
        let back: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|err| panic!("an encoded frame's body is not JSON: {err}"));
        assert_eq!(&back, value, "a value does not survive its frame");
    }
    assert_eq!(
        steps.last(),
        Some(&FrameStep::End),
        "the stream does not end cleanly"
    );
}

// --- engine_model -----------------------------------------------------------------------------

/// Queues the model's tasks go to.
const MODEL_QUEUES: [&str; 3] = ["q0", "q1", "q2"];
/// Most operations one input runs, so that an execution stays short.
pub(crate) const MODEL_MAX_OPS: usize = 64;
/// The engine's lease in the model runs.
const MODEL_LEASE_MS: i64 = 30_000;
/// How long a comparison waits for the engine's timer and writer to catch up with a clock
/// advance before the difference counts as a failure.
const MODEL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// One operation of a model run, decoded from the input.
#[derive(Clone, Copy, Debug)]
enum ModelOp {
    Enqueue {
        queue: usize,
        priority: i32,
        delay_ms: u64,
        max_retries: u32,
    },
    /// Claim up to `max` tasks from the queues whose bits are set in `queues`.
    Claim {
        queues: u8,
        max: usize,
    },
    Complete {
        pick: u8,
    },
    Fail {
        pick: u8,
        kind: FailureKind,
        retry_after_ms: Option<u64>,
    },
    Release {
        pick: u8,
    },
    Heartbeat {
        pick: u8,
    },
    /// A settlement or heartbeat under an attempt number that is not the task's current one.
    Stale {
        pick: u8,
        heartbeat: bool,
        ahead: bool,
    },
    Advance {
        ms: u64,
    },
    Cancel {
        pick: u8,
    },
    Retry {
        pick: u8,
    },
    CrashAndReopen,
    Stats,
    /// A worker's settle-and-claim: settle a running task (0 complete, 1 fail due at once,
    /// 2 release) and claim in the same commit.
    SettleAndClaim {
        pick: u8,
        outcome: u8,
        queues: u8,
        max: usize,
    },
    /// Retention cleanup keeping completed tasks `completed_ms`, the others `failed_ms`.
    Cleanup {
        completed_ms: u64,
        failed_ms: u64,
    },
    Purge {
        queue: usize,
        status: Option<TaskStatus>,
    },
    RetryFailed {
        queue: Option<usize>,
    },
}

/// Reads operations off the input: an op byte, then its argument bytes (zeros past the end).
fn model_ops(data: &[u8]) -> Vec<ModelOp> {
    let at = std::cell::Cell::new(0);
    let next = || {
        let byte = data.get(at.get()).copied().unwrap_or(0);
        at.set(at.get() + 1);
        byte
    };
    let mut ops = Vec::new();
    while ops.len() < MODEL_MAX_OPS && at.get() < data.len() {
        let op = match next() % 18 {
            0 | 1 => {
                let (queue, priority, delay, retries) = (next(), next(), next(), next());
                ModelOp::Enqueue {
                    queue: usize::from(queue) % MODEL_QUEUES.len(),
                    // Few distinct priorities, so that ties (and FIFO) matter; and the extremes.
                    priority: match priority % 8 {
                        5 => i32::MAX,
                        6 => i32::MIN,
                        7 => 0,
                        p => i32::from(p) - 2,
                    },
                    delay_ms: match delay % 8 {
                        0..=2 => 0,
                        3 => 1,
                        4 => 1_000,
                        5 => 5_000,
                        6 => 30_000,
                        _ => u64::from(delay) * 250,
                    },
                    max_retries: u32::from(retries % 4),
                }
            }
            2 | 3 => {
                let byte = next();
                ModelOp::Claim {
                    queues: byte % 7 + 1,
                    max: 1 + usize::from(byte >> 3) % 3,
                }
            }
            4 => ModelOp::Complete { pick: next() },
            5 => {
                let (pick, kind, after) = (next(), next(), next());
                ModelOp::Fail {
                    pick,
                    kind: [
                        FailureKind::Error,
                        FailureKind::Permanent,
                        FailureKind::Panic,
                        FailureKind::Timeout,
                    ][usize::from(kind % 4)],
                    retry_after_ms: match after % 3 {
                        0 => None,
                        1 => Some(0),
                        _ => Some(u64::from(after) * 100),
                    },
                }
            }
            6 => ModelOp::Release { pick: next() },
            7 => ModelOp::Heartbeat { pick: next() },
            8 => {
                let (pick, how) = (next(), next());
                ModelOp::Stale {
                    pick,
                    heartbeat: how & 1 == 1,
                    ahead: how & 2 == 2,
                }
            }
            9 => ModelOp::Advance {
                ms: match next() % 8 {
                    0 => 1,
                    1 => 999,
                    2 => 1_000,
                    3 => 5_000,
                    4 => 29_999,
                    5 => 30_000,
                    6 => 61_000,
                    _ => 3_600_000,
                },
            },
            10 => ModelOp::Cancel { pick: next() },
            11 => ModelOp::Retry { pick: next() },
            12 => ModelOp::CrashAndReopen,
            13 => ModelOp::Stats,
            14 => {
                let (pick, outcome, byte) = (next(), next(), next());
                ModelOp::SettleAndClaim {
                    pick,
                    outcome: outcome % 3,
                    queues: byte % 7 + 1,
                    max: 1 + usize::from(byte >> 3) % 3,
                }
            }
            15 => {
                let retention = |byte: u8| [0, 1_000, 60_000, 86_400_000][usize::from(byte % 4)];
                ModelOp::Cleanup {
                    completed_ms: retention(next()),
                    failed_ms: retention(next()),
                }
            }
            16 => {
                let (queue, status) = (next(), next());
                ModelOp::Purge {
                    queue: usize::from(queue) % MODEL_QUEUES.len(),
                    status: [
                        None,
                        Some(TaskStatus::Pending),
                        Some(TaskStatus::Retrying),
                        Some(TaskStatus::Running),
                        Some(TaskStatus::Completed),
                        Some(TaskStatus::Failed),
                        Some(TaskStatus::Cancelled),
                    ][usize::from(status % 7)],
                }
            }
            _ => {
                let queue = next();
                ModelOp::RetryFailed {
                    queue: (queue % 4 != 3).then(|| usize::from(queue % 4)),
                }
            }
        };
        ops.push(op);
    }
    ops
}

/// What a model run did, for the replay's figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ModelTally {
    pub(crate) ops: u64,
    pub(crate) tasks: u64,
    pub(crate) claimed: u64,
    pub(crate) completed: u64,
    /// Attempts that failed into RETRYING, and into FAILED.
    pub(crate) retrying: u64,
    pub(crate) failed: u64,
    /// Attempts ended by an expired lease or a crash (`worker_lost`).
    pub(crate) lost: u64,
    pub(crate) reopens: u64,
}

/// The reference model's view of one task.
#[derive(Clone, Debug)]
struct ModelTask {
    id: TaskId,
    queue: usize,
    priority: i32,
    max_retries: u32,
    status: TaskStatus,
    attempts: u32,
    created_at: i64,
    scheduled_at: i64,
    due_at: i64,
    /// Order of becoming waiting: FIFO among equal priority and due time.
    seq: u64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    error: Option<FailureKind>,
    result: Option<serde_json::Value>,
    /// While RUNNING: when its lease runs out.
    lease_until: Option<i64>,
}

impl ModelTask {
    fn is_waiting(&self) -> bool {
        matches!(self.status, TaskStatus::Pending | TaskStatus::Retrying)
    }
}

/// A small sequential model of the engine's contract (DESIGN §2).
#[derive(Debug)]
struct Model {
    tasks: Vec<ModelTask>,
    now: i64,
    next_seq: u64,
    /// Completions (queue, second) since the engine was last opened: `completed_last_minute`.
    completions: Vec<(usize, i64)>,
    tally: ModelTally,
}

impl Model {
    fn index(&self, id: TaskId) -> usize {
        self.tasks
            .iter()
            .position(|task| task.id == id)
            .unwrap_or_else(|| panic!("the model has no task {id}"))
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Puts task `i` back to waiting with `status`, due at `due_at`.
    fn requeue(&mut self, i: usize, status: TaskStatus, due_at: i64) {
        let seq = self.take_seq();
        let task = &mut self.tasks[i];
        task.status = status;
        task.due_at = due_at;
        task.seq = seq;
        task.lease_until = None;
    }

    /// Ends the attempt of running task `i` as failed with `kind`: RETRYING at `retry_at` when
    /// retries remain and the kind allows it, FAILED otherwise.
    fn fail(&mut self, i: usize, kind: FailureKind, retry_at: i64) {
        let now = self.now;
        let task = &mut self.tasks[i];
        task.error = Some(kind);
        task.lease_until = None;
        self.tally.lost += u64::from(kind == FailureKind::WorkerLost);
        let retryable = !matches!(kind, FailureKind::Permanent);
        if retryable && task.attempts <= task.max_retries {
            self.tally.retrying += 1;
            self.requeue(i, TaskStatus::Retrying, retry_at);
        } else {
            self.tally.failed += 1;
            task.status = TaskStatus::Failed;
            task.finished_at = Some(now);
        }
    }

    /// Task `i` claimed now: RUNNING under a fresh lease, the attempt counted.
    fn claim(&mut self, i: usize) {
        self.tally.claimed += 1;
        let now = self.now;
        let task = &mut self.tasks[i];
        task.status = TaskStatus::Running;
        task.attempts += 1;
        task.started_at = Some(now);
        task.lease_until = Some(now + MODEL_LEASE_MS);
    }

    /// Running task `i` completed now with `result`.
    fn complete(&mut self, i: usize, result: serde_json::Value) {
        self.tally.completed += 1;
        let now = self.now;
        let task = &mut self.tasks[i];
        task.status = TaskStatus::Completed;
        task.result = Some(result);
        task.error = None;
        task.finished_at = Some(now);
        task.lease_until = None;
        let queue = task.queue;
        self.completions.push((queue, now.div_euclid(1000)));
    }

    /// Running task `i` handed back without running: PENDING now, the attempt not counted.
    fn release(&mut self, i: usize) {
        let task = &mut self.tasks[i];
        task.attempts -= 1;
        task.started_at = None;
        self.requeue(i, TaskStatus::Pending, self.now);
    }

    /// FAILED or CANCELLED task `i` queued again now with a fresh retry budget.
    fn retry(&mut self, i: usize) {
        let task = &mut self.tasks[i];
        task.attempts = 0;
        task.error = None;
        task.result = None;
        task.started_at = None;
        task.finished_at = None;
        self.requeue(i, TaskStatus::Pending, self.now);
    }

    /// What is due, among `queues` (by index), best first: highest priority, then earliest
    /// due, then FIFO.
    fn ready(&self, queues: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut ready: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                let task = &self.tasks[i];
                task.is_waiting() && task.due_at <= self.now && queues(task.queue)
            })
            .collect();
        ready.sort_by_key(|&i| {
            let task = &self.tasks[i];
            (std::cmp::Reverse(task.priority), task.due_at, task.seq)
        });
        ready
    }

    /// Running tasks, in id order: the order the engine sweeps them in (lease table, recovery).
    fn running_by_id(&self) -> Vec<usize> {
        let mut running: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].status == TaskStatus::Running)
            .collect();
        running.sort_by_key(|&i| self.tasks[i].id);
        running
    }

    fn expected_stats(&self) -> std::collections::BTreeMap<String, QueueStats> {
        let mut stats = std::collections::BTreeMap::new();
        let second = self.now.div_euclid(1000);
        for task in &self.tasks {
            let entry: &mut QueueStats = stats
                .entry(MODEL_QUEUES[task.queue].to_owned())
                .or_default();
            match task.status {
                TaskStatus::Pending => entry.pending += 1,
                TaskStatus::Running => entry.running += 1,
                TaskStatus::Retrying => entry.retrying += 1,
                TaskStatus::Completed => entry.completed += 1,
                TaskStatus::Failed => entry.failed += 1,
                TaskStatus::Cancelled => entry.cancelled += 1,
                other => panic!("the model never makes a task {other}"),
            }
            if task.is_waiting() {
                if task.due_at <= self.now {
                    entry.ready += 1;
                    let waited = u64::try_from(self.now - task.due_at).unwrap_or(0);
                    entry.oldest_ready_ms =
                        Some(entry.oldest_ready_ms.map_or(waited, |w| w.max(waited)));
                } else {
                    entry.scheduled += 1;
                }
            }
        }
        for &(queue, at) in &self.completions {
            if at > second - 60
                && let Some(entry) = stats.get_mut(MODEL_QUEUES[queue])
            {
                entry.completed_last_minute += 1;
            }
        }
        stats
    }
}

/// The engine's per-queue counts without queues that hold nothing.
fn engine_stats(engine: &ModelEngine) -> std::collections::BTreeMap<String, QueueStats> {
    let mut stats = engine
        .block_on(engine.engine().stats())
        .unwrap_or_else(|err| panic!("stats failed: {err}"))
        .queues;
    stats.retain(|_, queue| *queue != QueueStats::default());
    stats
}

/// The comparable part of a task record: (status, attempts, priority, queue, max_retries,
/// created, scheduled, due, started, finished, error kind, result).
type TaskView = (
    TaskStatus,
    u32,
    i32,
    String,
    u32,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<FailureKind>,
    Option<serde_json::Value>,
);

fn view_of_record(record: &TaskRecord) -> TaskView {
    (
        record.status,
        record.attempts,
        record.priority,
        record.queue.clone(),
        record.max_retries,
        record.created_at.timestamp_millis(),
        record.scheduled_at.timestamp_millis(),
        record.due_at.timestamp_millis(),
        record.started_at.map(|t| t.timestamp_millis()),
        record.finished_at.map(|t| t.timestamp_millis()),
        record.error.as_ref().map(|e| e.kind),
        record.result.clone(),
    )
}

fn view_of_model(task: &ModelTask) -> TaskView {
    (
        task.status,
        task.attempts,
        task.priority,
        MODEL_QUEUES[task.queue].to_owned(),
        task.max_retries,
        task.created_at,
        task.scheduled_at,
        task.due_at,
        task.started_at,
        task.finished_at,
        task.error,
        task.result.clone(),
    )
}

/// After a step: the engine's counts (waiting for its timer and writer to apply a clock
/// advance) and every task's record agree with the model.
fn compare(engine: &ModelEngine, model: &Model, log: &str) {
    let expected = model.expected_stats();
    let deadline = std::time::Instant::now() + MODEL_PATIENCE;
    let mut stats = engine_stats(engine);
    while stats != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_micros(200));
        stats = engine_stats(engine);
    }
    assert_eq!(stats, expected, "stats differ from the model after:\n{log}");

    let query = ListQuery {
        limit: 10 * MODEL_MAX_OPS,
        ..ListQuery::default()
    };
    let records = engine
        .block_on(engine.engine().list(query))
        .unwrap_or_else(|err| panic!("list failed: {err}\nafter:\n{log}"));
    assert_eq!(
        records.len(),
        model.tasks.len(),
        "the engine holds {} tasks, the model {}, after:\n{log}",
        records.len(),
        model.tasks.len()
    );
    for record in &records {
        let task = model
            .tasks
            .iter()
            .find(|task| task.id == record.id)
            .unwrap_or_else(|| {
                panic!(
                    "the engine has a task {} the model lacks after:\n{log}",
                    record.id
                )
            });
        assert_eq!(
            view_of_record(record),
            view_of_model(task),
            "task {} (engine, model) differs after:\n{log}",
            record.id
        );
    }
}

/// `engine_model` target: the input, read as at most [`MODEL_MAX_OPS`] operations (enqueue
/// with queue, priority, delay and max_retries; claim; complete; fail; release; heartbeat; a
/// stale settlement or heartbeat; clock advance; cancel; retry; crash and reopen; stats;
/// settle-and-claim; cleanup; purge; retry_failed), runs against the real engine on a fresh
/// store with a manual clock and against [`Model`]. Each answer must be the model's (claim order
/// by priority, then due time, then FIFO; stale attempts and wrong states refused; jittered
/// retry times inside their band), and after every step each task's status, attempts, times,
/// error and result, and the per-queue counts (ready, scheduled, oldest ready, completed in the
/// last minute) must agree. Returns what the run did.
pub(crate) fn engine_model_check(data: &[u8]) -> ModelTally {
    let ops = model_ops(data);
    if ops.is_empty() {
        return ModelTally::default();
    }
    let lease = std::time::Duration::from_millis(MODEL_LEASE_MS as u64);
    let mut engine = ModelEngine::create(lease)
        .unwrap_or_else(|err| panic!("cannot open a model engine: {err}"));
    let retry = Config::default().defaults;
    let policy = RetryPolicy {
        base: retry.retry_delay,
        max: retry.retry_max_delay,
        ..RetryPolicy::default()
    };
    let mut model = Model {
        tasks: Vec::new(),
        now: engine.clock().now_ms(),
        next_seq: 0,
        completions: Vec::new(),
        tally: ModelTally::default(),
    };
    let mut log = String::new();
    for (step, op) in ops.into_iter().enumerate() {
        log.push_str(&format!("  {step}: {op:?}\n"));
        model_step(&mut engine, &mut model, &policy, op, &log);
        compare(&engine, &model, &log);
        model.tally.ops += 1;
    }
    model.tally
}

/// The task `pick` designates among `candidates` (model indexes), if any.
fn pick_of(candidates: &[usize], pick: u8) -> Option<usize> {
    (!candidates.is_empty()).then(|| candidates[usize::from(pick) % candidates.len()])
}

/// Runs one operation on the engine and the model, checking the engine's answer.
#[allow(clippy::too_many_lines)]
fn model_step(
    engine: &mut ModelEngine,
    model: &mut Model,
    policy: &RetryPolicy,
    op: ModelOp,
    log: &str,
) {
    let now = model.now;
    let all: Vec<usize> = (0..model.tasks.len()).collect();
    let running: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| model.tasks[i].status == TaskStatus::Running)
        .collect();
    let broker = engine.engine().broker();
    match op {
        ModelOp::Enqueue {
            queue,
            priority,
            delay_ms,
            max_retries,
        } => {
            let id = engine
                .block_on(
                    engine
                        .engine()
                        .queue_task_named("fuzz.model", &serde_json::json!({}))
                        .queue(MODEL_QUEUES[queue])
                        .priority(priority)
                        .max_retries(max_retries)
                        .delay(std::time::Duration::from_millis(delay_ms))
                        .send(),
                )
                .unwrap_or_else(|err| panic!("enqueue failed: {err}\nafter:\n{log}"));
            let due_at = now + delay_ms as i64;
            let seq = model.take_seq();
            model.tasks.push(ModelTask {
                id,
                queue,
                priority,
                max_retries,
                status: TaskStatus::Pending,
                attempts: 0,
                created_at: now,
                scheduled_at: due_at,
                due_at,
                seq,
                started_at: None,
                finished_at: None,
                error: None,
                result: None,
                lease_until: None,
            });
            model.tally.tasks += 1;
        }
        ModelOp::Claim { queues, max } => {
            let names = queue_names(queues);
            let expected: Vec<usize> = model
                .ready(|q| queues & (1 << q) != 0)
                .into_iter()
                .take(max)
                .collect();
            let claimed = engine
                .claim(&names, max)
                .unwrap_or_else(|err| panic!("claim failed: {err}\nafter:\n{log}"));
            let got: Vec<TaskId> = claimed.iter().map(|record| record.id).collect();
            let want: Vec<TaskId> = expected.iter().map(|&i| model.tasks[i].id).collect();
            assert_eq!(got, want, "claim order (engine, model) after:\n{log}");
            for &i in &expected {
                model.claim(i);
            }
            for record in &claimed {
                let task = &model.tasks[model.index(record.id)];
                assert_eq!(
                    view_of_record(record),
                    view_of_model(task),
                    "a claimed record (engine, model) after:\n{log}"
                );
            }
        }
        ModelOp::Complete { pick } | ModelOp::Fail { pick, .. } | ModelOp::Release { pick }
            if running.is_empty() =>
        {
            // Nothing runs: settling anything is stale.
            if let Some(i) = pick_of(&all, pick) {
                stale_settle(engine, model, i, model.tasks[i].attempts, false, log);
            }
        }
        ModelOp::Complete { pick } => {
            let i = pick_of(&running, pick).unwrap_or_default();
            let (id, attempt) = (model.tasks[i].id, model.tasks[i].attempts);
            let result = serde_json::json!({"step": log.lines().count()});
            let report = engine
                .block_on(broker.settle(Settlement {
                    id,
                    attempt,
                    outcome: Outcome::Completed {
                        result: result.clone(),
                    },
                }))
                .unwrap_or_else(|err| panic!("complete failed: {err}\nafter:\n{log}"));
            assert_eq!(report.status, TaskStatus::Completed, "after:\n{log}");
            model.complete(i, result);
        }
        ModelOp::Fail {
            pick,
            kind,
            retry_after_ms,
        } => {
            let i = pick_of(&running, pick).unwrap_or_default();
            let (id, attempt) = (model.tasks[i].id, model.tasks[i].attempts);
            let report = engine
                .block_on(broker.settle(Settlement {
                    id,
                    attempt,
                    outcome: Outcome::Failed {
                        failure: TaskFailure {
                            message: "model failure".into(),
                            kind,
                        },
                        retry_after: retry_after_ms.map(std::time::Duration::from_millis),
                    },
                }))
                .unwrap_or_else(|err| panic!("fail failed: {err}\nafter:\n{log}"));
            // The backoff is jittered: the engine's choice is checked against the band, then
            // the model follows it.
            let retry_at = match (retry_after_ms, report.retry_at) {
                (Some(after), _) => now + after as i64,
                (None, Some(at)) => {
                    let nominal = policy.nominal_delay(attempt).as_millis() as f64;
                    let delay = (at - now) as f64;
                    assert!(
                        delay >= (nominal * (1.0 - policy.jitter)).floor() - 1.0
                            && delay <= (nominal * (1.0 + policy.jitter)).ceil() + 1.0,
                        "retry {attempt} after {delay} ms, nominal {nominal} ms ±{}; after:\n{log}",
                        policy.jitter
                    );
                    at
                }
                (None, None) => now,
            };
            model.fail(i, kind, retry_at);
            assert_eq!(report.status, model.tasks[i].status, "after:\n{log}");
            let expected_at = (report.status == TaskStatus::Retrying).then_some(retry_at);
            assert_eq!(report.retry_at, expected_at, "retry time after:\n{log}");
        }
        ModelOp::Release { pick } => {
            let i = pick_of(&running, pick).unwrap_or_default();
            let (id, attempt) = (model.tasks[i].id, model.tasks[i].attempts);
            let report = engine
                .block_on(broker.settle(Settlement {
                    id,
                    attempt,
                    outcome: Outcome::Released,
                }))
                .unwrap_or_else(|err| panic!("release failed: {err}\nafter:\n{log}"));
            assert_eq!(report.status, TaskStatus::Pending, "after:\n{log}");
            model.release(i);
        }
        ModelOp::Heartbeat { pick } => match pick_of(&running, pick) {
            Some(i) => {
                let (id, attempt) = (model.tasks[i].id, model.tasks[i].attempts);
                engine
                    .block_on(broker.heartbeat(id, attempt))
                    .unwrap_or_else(|err| panic!("heartbeat failed: {err}\nafter:\n{log}"));
                model.tasks[i].lease_until = Some(now + MODEL_LEASE_MS);
            }
            None => {
                if let Some(i) = pick_of(&all, pick) {
                    stale_settle(engine, model, i, model.tasks[i].attempts, true, log);
                }
            }
        },
        ModelOp::Stale {
            pick,
            heartbeat,
            ahead,
        } => {
            if let Some(i) = pick_of(&all, pick) {
                let current = model.tasks[i].attempts;
                let attempt = if ahead || current == 0 {
                    current + 1
                } else {
                    current - 1
                };
                stale_settle(engine, model, i, attempt, heartbeat, log);
            }
        }
        ModelOp::Advance { ms } => {
            engine.clock().advance(std::time::Duration::from_millis(ms));
            model.now += ms as i64;
            let now = model.now;
            // Expired leases are swept as recovery at open does: RETRYING at once.
            for i in model.running_by_id() {
                if model.tasks[i].lease_until.is_some_and(|until| until <= now) {
                    model.fail(i, FailureKind::WorkerLost, now);
                }
            }
        }
        ModelOp::Cancel { pick } => {
            if let Some(i) = pick_of(&all, pick) {
                let id = model.tasks[i].id;
                let answer = engine.block_on(engine.engine().cancel(id));
                let task = &mut model.tasks[i];
                if task.is_waiting() {
                    let record =
                        answer.unwrap_or_else(|err| panic!("cancel failed: {err}\nafter:\n{log}"));
                    assert_eq!(record.status, TaskStatus::Cancelled, "after:\n{log}");
                    task.status = TaskStatus::Cancelled;
                    task.finished_at = Some(now);
                } else {
                    expect_wrong_state(answer.map(|_| ()), task, log);
                }
            }
        }
        ModelOp::Retry { pick } => {
            if let Some(i) = pick_of(&all, pick) {
                let id = model.tasks[i].id;
                let answer = engine.block_on(engine.engine().retry(id));
                let task = &mut model.tasks[i];
                if matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
                    let record =
                        answer.unwrap_or_else(|err| panic!("retry failed: {err}\nafter:\n{log}"));
                    assert_eq!(record.status, TaskStatus::Pending, "after:\n{log}");
                    model.retry(i);
                } else {
                    expect_wrong_state(answer.map(|_| ()), task, log);
                }
            }
        }
        ModelOp::CrashAndReopen => {
            drop(broker);
            let report = engine
                .crash_and_reopen()
                .unwrap_or_else(|err| panic!("reopen failed: {err}\nafter:\n{log}"));
            model.tally.reopens += 1;
            let (mut retrying, mut failed) = (0, 0);
            for i in model.running_by_id() {
                model.fail(i, FailureKind::WorkerLost, now);
                match model.tasks[i].status {
                    TaskStatus::Retrying => retrying += 1,
                    _ => failed += 1,
                }
            }
            model.completions.clear();
            let waiting = model.tasks.iter().filter(|task| task.is_waiting()).count() as u64;
            assert_eq!(
                (
                    report.waiting,
                    report.orphans_retrying,
                    report.orphans_failed
                ),
                (waiting, retrying, failed),
                "recovery report (waiting, retrying, failed) after:\n{log}"
            );
        }
        ModelOp::Stats => {}
        ModelOp::SettleAndClaim {
            pick,
            outcome,
            queues,
            max,
        } => {
            let names = queue_names(queues);
            // The claimed tasks are taken off the ready heap before the settlement is applied:
            // the task being settled is never among them, even when it is due again at once.
            let expected: Vec<usize> = model
                .ready(|q| queues & (1 << q) != 0)
                .into_iter()
                .take(max)
                .collect();
            let settled = pick_of(&running, pick);
            let (id, attempt) = match settled {
                Some(i) => (model.tasks[i].id, model.tasks[i].attempts),
                None => match pick_of(&all, pick) {
                    Some(i) => (model.tasks[i].id, model.tasks[i].attempts),
                    None => (TaskId::new(), 1),
                },
            };
            let result = serde_json::json!({"step": log.lines().count()});
            let outcome = match outcome {
                0 => Outcome::Completed {
                    result: result.clone(),
                },
                1 => Outcome::Failed {
                    failure: TaskFailure {
                        message: "model failure".into(),
                        kind: FailureKind::Error,
                    },
                    retry_after: Some(std::time::Duration::ZERO),
                },
                _ => Outcome::Released,
            };
            let queue_names: Vec<std::sync::Arc<str>> =
                names.iter().map(|q| std::sync::Arc::from(*q)).collect();
            let chained = engine
                .block_on(broker.settle_and_claim(
                    Settlement {
                        id,
                        attempt,
                        outcome: outcome.clone(),
                    },
                    fq::ClaimRequest::now(&queue_names, max),
                ))
                .unwrap_or_else(|err| panic!("settle_and_claim failed: {err}\nafter:\n{log}"));
            match (settled, chained.settled) {
                (Some(i), Ok(report)) => {
                    apply_settlement(model, i, &outcome, result);
                    assert_eq!(report.status, model.tasks[i].status, "after:\n{log}");
                }
                (Some(_), Err(err)) => {
                    panic!("a settlement of a running task failed: {err}\nafter:\n{log}")
                }
                (None, Ok(report)) => panic!(
                    "a settlement of a task that is not running was accepted: {report:?}\nafter:\n{log}"
                ),
                (None, Err(Error::StaleAttempt { .. } | Error::NotFound(_))) => {}
                (None, Err(err)) => panic!("a stale settlement gave {err}\nafter:\n{log}"),
            }
            let got: Vec<TaskId> = chained.claimed.iter().map(|record| record.id).collect();
            let want: Vec<TaskId> = expected.iter().map(|&i| model.tasks[i].id).collect();
            assert_eq!(
                got, want,
                "settle_and_claim's claim (engine, model) after:\n{log}"
            );
            for &i in &expected {
                model.claim(i);
            }
        }
        ModelOp::Cleanup {
            completed_ms,
            failed_ms,
        } => {
            let policy = fq::RetentionPolicy {
                completed: std::time::Duration::from_millis(completed_ms),
                failed: std::time::Duration::from_millis(failed_ms),
            };
            let report = engine
                .block_on(engine.engine().cleanup_with(policy))
                .unwrap_or_else(|err| panic!("cleanup failed: {err}\nafter:\n{log}"));
            let (completed_before, failed_before) =
                (now - completed_ms as i64, now - failed_ms as i64);
            let mut expected = fq::CleanupReport::default();
            model.tasks.retain(|task| {
                let finished = task.finished_at.unwrap_or(i64::MAX);
                let (counter, before) = match task.status {
                    TaskStatus::Completed => (&mut expected.completed, completed_before),
                    TaskStatus::Failed => (&mut expected.failed, failed_before),
                    TaskStatus::Cancelled => (&mut expected.cancelled, failed_before),
                    _ => return true,
                };
                let doomed = finished < before;
                *counter += u64::from(doomed);
                !doomed
            });
            assert_eq!(
                report, expected,
                "cleanup report (engine, model) after:\n{log}"
            );
        }
        ModelOp::Purge { queue, status } => {
            let answer = engine.block_on(engine.engine().purge(MODEL_QUEUES[queue], status));
            if status == Some(TaskStatus::Running) {
                assert!(
                    matches!(
                        answer,
                        Err(Error::InvalidInput {
                            field: "status",
                            ..
                        })
                    ),
                    "purging RUNNING tasks gave {answer:?}, after:\n{log}"
                );
                return;
            }
            let count = answer.unwrap_or_else(|err| panic!("purge failed: {err}\nafter:\n{log}"));
            let before = model.tasks.len();
            model.tasks.retain(|task| {
                task.queue != queue
                    || task.status == TaskStatus::Running
                    || status.is_some_and(|s| s != task.status)
            });
            assert_eq!(
                count,
                (before - model.tasks.len()) as u64,
                "purged (engine, model) after:\n{log}"
            );
        }
        ModelOp::RetryFailed { queue } => {
            let count = engine
                .block_on(engine.engine().retry_failed(queue.map(|q| MODEL_QUEUES[q])))
                .unwrap_or_else(|err| panic!("retry_failed failed: {err}\nafter:\n{log}"));
            // In the order of the finished index: finish time, then id.
            let mut failed: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| {
                    let task = &model.tasks[i];
                    task.status == TaskStatus::Failed && queue.is_none_or(|q| q == task.queue)
                })
                .collect();
            failed.sort_by_key(|&i| (model.tasks[i].finished_at, model.tasks[i].id));
            assert_eq!(
                count,
                failed.len() as u64,
                "retried (engine, model) after:\n{log}"
            );
            for i in failed {
                model.retry(i);
            }
        }
    }
}

/// The names of the queues whose bits are set in `mask`.
fn queue_names(mask: u8) -> Vec<&'static str> {
    (0..MODEL_QUEUES.len())
        .filter(|q| mask & (1 << q) != 0)
        .map(|q| MODEL_QUEUES[q])
        .collect()
}

/// Applies an accepted settlement of running task `i` to the model (a failure with a
/// `retry_after`, as settle-and-claim sends).
fn apply_settlement(model: &mut Model, i: usize, outcome: &Outcome, result: serde_json::Value) {
    let now = model.now;
    match outcome {
        Outcome::Completed { .. } => model.complete(i, result),
        Outcome::Failed {
            failure,
            retry_after,
        } => {
            let after = retry_after.map_or(0, |d| d.as_millis() as i64);
            model.fail(i, failure.kind, now + after);
        }
        _ => model.release(i),
    }
}

/// A settlement (or heartbeat) of task `i` under `attempt`, which the model knows is not its
/// running attempt: refused as stale, nothing changes.
fn stale_settle(
    engine: &ModelEngine,
    model: &Model,
    i: usize,
    attempt: u32,
    heartbeat: bool,
    log: &str,
) {
    let task = &model.tasks[i];
    let broker = engine.engine().broker();
    let answer = if heartbeat {
        engine.block_on(broker.heartbeat(task.id, attempt))
    } else {
        engine
            .block_on(broker.settle(Settlement {
                id: task.id,
                attempt,
                outcome: Outcome::Completed {
                    result: serde_json::json!("stale"),
                },
            }))
            .map(|_| ())
    };
    match answer {
        Err(Error::StaleAttempt {
            id,
            attempt: reported,
            current,
            status,
        }) => assert_eq!(
            (id, reported, current, status),
            (task.id, attempt, task.attempts, task.status),
            "stale attempt error (engine, model) after:\n{log}"
        ),
        other => panic!(
            "a {} under attempt {attempt} of a {} task at attempt {} gave {other:?}, not a stale attempt, after:\n{log}",
            if heartbeat { "heartbeat" } else { "settlement" },
            task.status,
            task.attempts
        ),
    }
}

fn expect_wrong_state(answer: fq::Result<()>, task: &ModelTask, log: &str) {
    match answer {
        Err(Error::WrongState { id, status, .. }) => assert_eq!(
            (id, status),
            (task.id, task.status),
            "wrong state error (engine, model) after:\n{log}"
        ),
        other => panic!(
            "an operation on a {} task gave {other:?}, not a wrong state, after:\n{log}",
            task.status
        ),
    }
}

/// `log_replay` target (the file format of the store's write-ahead log): arbitrary
/// bytes read as a log never panic the reader; and a log built from the input (payload sizes
/// and contents from its bytes), cut at a point the input chooses, reads back as exactly the
/// records written whole before the cut, in order and numbered after the checkpoint (unless a
/// payload holds a record forged under the salt, which the input chooses and a real log's
/// writer of arguments never knows).
pub(crate) fn log_replay_check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let checkpoint = u64::from(selector % 8);
    let _ = fq::internals::scan_log(rest, checkpoint);

    let mut payloads: Vec<&[u8]> = Vec::new();
    let mut input = rest;
    while let Some((&size, tail)) = input.split_first() {
        let size = usize::from(size % 64).min(tail.len());
        payloads.push(&tail[..size]);
        input = &tail[size..];
    }
    let salt = u64::from(selector).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let (image, ends) = fq::internals::log_image(salt, checkpoint, &payloads)
        .unwrap_or_else(|e| panic!("building a log of {} records: {e}", payloads.len()));
    // The cut: anywhere from the end of the header to the end of the file, chosen by the
    // input's last two bytes.
    let header = fq::internals::LOG_HEADER_BYTES;
    let chooser = data
        .iter()
        .rev()
        .take(2)
        .fold(0, |n, &b| n * 256 + usize::from(b));
    let cut = header + chooser % (image.len() - header + 1);
    // The salt comes from the input, so the fuzzer can learn it (it sees the checksums
    // compared) and write a payload holding a record that passes under it, which a task's
    // arguments cannot: a real log's salt is random. Such a record after a torn one is
    // refused as damage, rightly were it real, so for such an input only the reading without
    // a panic above is checked.
    let align = fq::internals::LOG_RECORD_ALIGN;
    let starts: Vec<usize> = std::iter::once(header)
        .chain(ends.iter().map(|end| end.next_multiple_of(align)))
        .take(payloads.len())
        .collect();
    let forged = (header..cut).step_by(align).any(|offset| {
        !starts.contains(&offset)
            && fq::internals::log_record_at(&image[..cut], offset, salt).is_some()
    });
    if forged {
        return;
    }
    let live = fq::internals::scan_log(&image[..cut], checkpoint)
        .unwrap_or_else(|e| panic!("a log cut at byte {cut} of {} refused: {e}", image.len()));
    let whole = ends.iter().filter(|&&end| end <= cut).count();
    let expected: Vec<(u64, Vec<u8>)> = payloads[..whole]
        .iter()
        .zip(checkpoint + 1..)
        .map(|(payload, number)| (number, payload.to_vec()))
        .collect();
    assert_eq!(
        live,
        expected,
        "a log of {} records cut at byte {cut}",
        payloads.len()
    );
}
