//! redb storage backends for the power-loss, I/O-error and disk-full tests: a recording
//! backend that keeps every write and sync so crash images can be built afterwards, and an
//! in-memory backend that fails the Nth operation (or runs out of space) on demand.
#![allow(dead_code, unreachable_pub)]

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redb::StorageBackend;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_from(bytes: &[u8], offset: u64, out: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(io::Error::other)?;
    let end = start
        .checked_add(out.len())
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the end ({})",
                    out.len(),
                    bytes.len()
                ),
            )
        })?;
    out.copy_from_slice(&bytes[start..end]);
    Ok(())
}

fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    if bytes.len() < start + data.len() {
        bytes.resize(start + data.len(), 0);
    }
    bytes[start..start + data.len()].copy_from_slice(data);
}

/// One storage operation as the disk saw it.
#[derive(Clone, Debug)]
pub enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Sync,
}

impl Op {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => write_into(bytes, *offset, data),
            Op::SetLen(len) => bytes.resize(*len as usize, 0),
            Op::Sync => {}
        }
    }
}

#[derive(Debug, Default)]
struct Recording {
    /// What reads see: every write so far, synced or not (the page cache).
    current: Vec<u8>,
    /// Every write, length change and sync, in order.
    log: Vec<Op>,
    /// With a shared clock: the time of each operation of `log`.
    times: Vec<usize>,
    clock: Option<SharedClock>,
}

impl Recording {
    fn push(&mut self, op: Op) {
        self.log.push(op);
        if let Some(clock) = &self.clock {
            self.times
                .push(clock.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
        }
    }
}

/// One count of operations shared by several recording backends (a store and its log), so a
/// crash point means the same moment for each.
#[derive(Clone, Debug, Default)]
pub struct SharedClock(Arc<std::sync::atomic::AtomicUsize>);

impl SharedClock {
    /// How many operations the backends on this clock have made so far.
    pub fn now(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Records every operation; [`RecordingBackend::crash_state`] rebuilds what the disk held for
/// sure at any point of the log (the state at the last sync) and what was still in flight.
#[derive(Clone, Debug, Default)]
pub struct RecordingBackend {
    inner: Arc<Mutex<Recording>>,
}

impl RecordingBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend whose operations are counted on `clock`, with the others on it.
    pub fn on_clock(clock: &SharedClock) -> Self {
        let backend = Self::default();
        lock(&backend.inner).clock = Some(clock.clone());
        backend
    }

    /// How many of this backend's operations came before `time` on its shared clock: the
    /// point in this backend's log of a crash at `time`.
    pub fn ops_before(&self, time: usize) -> usize {
        lock(&self.inner).times.partition_point(|at| *at < time)
    }

    /// How many operations the log holds: a point in time for [`Self::crash_state`].
    pub fn position(&self) -> usize {
        lock(&self.inner).log.len()
    }

    /// A copy of the whole log.
    pub fn log(&self) -> Vec<Op> {
        lock(&self.inner).log.clone()
    }
}

impl StorageBackend for RecordingBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.inner).current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_from(&lock(&self.inner).current, offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        inner.current.resize(len as usize, 0);
        inner.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        lock(&self.inner).push(Op::Sync);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        write_into(&mut inner.current, offset, data);
        inner.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}

/// Walks a recorded log forward, keeping the durable image (everything up to the last sync)
/// so that crash states at increasing points cost one replay in all.
#[derive(Debug)]
pub struct CrashWalker<'a> {
    log: &'a [Op],
    /// The log position the durable image reflects (just past the last sync applied).
    synced_to: usize,
    durable: Vec<u8>,
}

impl<'a> CrashWalker<'a> {
    pub fn new(log: &'a [Op]) -> Self {
        Self {
            log,
            synced_to: 0,
            durable: Vec::new(),
        }
    }

    /// The state of a power cut after the first `point` operations: the durable image, and
    /// the writes and length changes issued since the last sync (any subset of which, in any
    /// prefix, may have reached the disk). `point` must not go backwards between calls.
    pub fn crash_state(&mut self, point: usize) -> (Vec<u8>, Vec<Op>) {
        let point = point.min(self.log.len());
        assert!(
            point >= self.synced_to,
            "crash points must not go backwards"
        );
        let last_sync = self.log[self.synced_to..point]
            .iter()
            .rposition(|op| matches!(op, Op::Sync))
            .map(|at| self.synced_to + at + 1);
        if let Some(last_sync) = last_sync {
            for op in &self.log[self.synced_to..last_sync] {
                op.apply(&mut self.durable);
            }
            self.synced_to = last_sync;
        }
        let pending = self.log[self.synced_to..point]
            .iter()
            .filter(|op| !matches!(op, Op::Sync))
            .cloned()
            .collect();
        (self.durable.clone(), pending)
    }
}

/// What a crash image keeps of the unsynced operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// Only what was synced.
    Durable,
    /// Plus a random subset of the unsynced operations (in their order).
    Subset,
    /// Plus a random subset, one write of which reached the disk only in part.
    Torn,
}

/// Builds a crash image from a crash state. Returns the bytes and how many pending operations
/// it applied (a torn write counts as applied).
pub fn crash_image(
    durable: &[u8],
    pending: &[Op],
    kind: ImageKind,
    rng: &mut fastrand::Rng,
) -> (Vec<u8>, usize) {
    let mut image = durable.to_vec();
    if kind == ImageKind::Durable {
        return (image, 0);
    }
    let writes: Vec<usize> = pending
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(op, Op::Write { .. }))
        .map(|(at, _)| at)
        .collect();
    let torn = if kind == ImageKind::Torn && !writes.is_empty() {
        Some(writes[rng.usize(..writes.len())])
    } else {
        None
    };
    let mut applied = 0;
    for (at, op) in pending.iter().enumerate() {
        if Some(at) == torn {
            if let Op::Write { offset, data } = op {
                // A prefix cut at a 512-byte sector or anywhere: both happen on real disks.
                let cut = if rng.bool() {
                    rng.usize(0..data.len().max(1))
                } else {
                    (rng.usize(0..data.len().max(1)) / 512) * 512
                };
                write_into(&mut image, *offset, &data[..cut]);
                applied += 1;
            }
        } else if rng.bool() {
            op.apply(&mut image);
            applied += 1;
        }
    }
    (image, applied)
}

/// Which operations a [`FailingBackend`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Never (a plain in-memory disk).
    Never,
    /// The Nth operation (of any kind, counted from 1) and every one after it.
    Persistent(u64),
    /// Only the Nth operation.
    Transient(u64),
    /// The Nth `sync_data` (counted among syncs only) and every sync after it.
    SyncOnly(u64),
    /// A lying disk, for negative controls: from the Nth `sync_data` on, syncs report success
    /// without making anything durable, and no failure is counted.
    SyncLies(u64),
    /// Operations `from` (counted from 1) up to, not including, `until`.
    Window { from: u64, until: u64 },
}

#[derive(Debug)]
struct Failing {
    /// What reads see: every write so far, synced or not (the page cache).
    bytes: Vec<u8>,
    /// What the disk holds for sure: the bytes as of the last successful sync.
    durable: Vec<u8>,
    /// Writes and length changes since the last successful sync, in order.
    unsynced: Vec<Op>,
    mode: FailMode,
    ops: u64,
    syncs: u64,
    /// The operation number (among all) of the first injected failure.
    first_failure: Option<u64>,
    failures: u64,
    /// Injected failures of writes, length changes and syncs (not reads).
    write_failures: u64,
    /// Writes and length changes that would grow the storage past this fail with
    /// `StorageFull` (ENOSPC).
    capacity: Option<u64>,
    full_refusals: u64,
}

/// An in-memory disk that fails on command. Cloning shares the disk.
#[derive(Clone, Debug)]
pub struct FailingBackend {
    inner: Arc<Mutex<Failing>>,
}

impl FailingBackend {
    pub fn new(bytes: Vec<u8>, mode: FailMode) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Failing {
                durable: bytes.clone(),
                bytes,
                unsynced: Vec::new(),
                mode,
                ops: 0,
                syncs: 0,
                first_failure: None,
                failures: 0,
                write_failures: 0,
                capacity: None,
                full_refusals: 0,
            })),
        }
    }

    /// A healthy in-memory disk holding `bytes`.
    pub fn healthy(bytes: Vec<u8>) -> Self {
        Self::new(bytes, FailMode::Never)
    }

    /// Stops injecting failures (the disk was replaced, the cable reseated), and loses every
    /// write no successful sync covered, as a disk whose cache is gone: an engine that
    /// acknowledged a change after a failed write or sync finds it missing.
    pub fn heal(&self) {
        let mut inner = lock(&self.inner);
        inner.mode = FailMode::Never;
        inner.bytes = inner.durable.clone();
        inner.unsynced.clear();
    }

    /// Fails the next `count` operations (of any kind), then works again.
    pub fn fail_next(&self, count: u64) {
        let mut inner = lock(&self.inner);
        inner.mode = FailMode::Window {
            from: inner.ops + 1,
            until: inner.ops + 1 + count,
        };
    }

    /// Sets the most bytes the disk holds (`None`: unlimited).
    pub fn set_capacity(&self, capacity: Option<u64>) {
        lock(&self.inner).capacity = capacity;
    }

    /// Operations seen so far (all kinds).
    pub fn ops(&self) -> u64 {
        lock(&self.inner).ops
    }

    /// `sync_data` calls seen so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.inner).syncs
    }

    /// The operation number of the first injected failure, if one fired.
    pub fn first_failure(&self) -> Option<u64> {
        lock(&self.inner).first_failure
    }

    /// Injected failures so far.
    pub fn failures(&self) -> u64 {
        lock(&self.inner).failures
    }

    /// Injected failures of writes, length changes and syncs so far.
    pub fn write_failures(&self) -> u64 {
        lock(&self.inner).write_failures
    }

    /// Writes refused for want of space so far.
    pub fn full_refusals(&self) -> u64 {
        lock(&self.inner).full_refusals
    }

    /// The disk's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.inner).bytes.clone()
    }

    /// Counts one operation and decides whether it fails.
    fn check(&self, kind: OpKind) -> io::Result<MutexGuard<'_, Failing>> {
        let is_sync = kind == OpKind::Sync;
        let mut inner = lock(&self.inner);
        inner.ops += 1;
        if is_sync {
            inner.syncs += 1;
        }
        let fail = match inner.mode {
            FailMode::Never => false,
            FailMode::Persistent(n) => inner.ops >= n,
            FailMode::Transient(n) => inner.ops == n,
            FailMode::SyncOnly(n) => is_sync && inner.syncs >= n,
            FailMode::SyncLies(_) => false,
            FailMode::Window { from, until } => (from..until).contains(&inner.ops),
        };
        if fail {
            let op = inner.ops;
            inner.first_failure.get_or_insert(op);
            inner.failures += 1;
            if kind != OpKind::Read {
                inner.write_failures += 1;
            }
            return Err(io::Error::other(format!(
                "injected i/o error at operation {op}"
            )));
        }
        Ok(inner)
    }

    fn room(inner: &mut Failing, new_len: u64) -> io::Result<()> {
        match inner.capacity {
            Some(capacity) if new_len > capacity && new_len > inner.bytes.len() as u64 => {
                inner.full_refusals += 1;
                Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (simulated)",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What a storage operation does, for counting its failures apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Read,
    Write,
    Sync,
}

impl StorageBackend for FailingBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.check(OpKind::Read)?.bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        read_from(&self.check(OpKind::Read)?.bytes, offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut inner = self.check(OpKind::Write)?;
        Self::room(&mut inner, len)?;
        inner.bytes.resize(len as usize, 0);
        inner.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut inner = self.check(OpKind::Sync)?;
        if let FailMode::SyncLies(n) = inner.mode
            && inner.syncs >= n
        {
            return Ok(());
        }
        let Failing {
            durable, unsynced, ..
        } = &mut *inner;
        for op in unsynced.drain(..) {
            op.apply(durable);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = self.check(OpKind::Write)?;
        Self::room(&mut inner, offset + data.len() as u64)?;
        write_into(&mut inner.bytes, offset, data);
        inner.unsynced.push(Op::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
}
