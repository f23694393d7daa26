//! The redo log's file format, for the store's write-ahead log (`wal.rs`). It owns appending numbered, checksummed records after a fixed
//! header, and the one reading of a log file that recovery needs: the records a crash left,
//! a torn last append (never acknowledged, since its sync had not returned) told apart from
//! damage to the records before it (acknowledged ones), which is refused rather than skipped.
//!
//! Layout: a 24-byte header (magic `fq-log`, format version, a reserved zero byte, a random
//! salt, the CRC-32 of those 16 bytes, 4 zero bytes), then records at 8-byte aligned offsets:
//! CRC-32 of (salt, length, number, payload), payload length (u32), record number (u64), the
//! payload, zero padding to the next multiple of 8. All integers little-endian.
//!
//! Record numbers grow by one per append, across the log's whole life. Which records still
//! matter is decided by the caller's checkpoint number (the last record whose changes the
//! B-tree holds durably): after a checkpoint the log is rewound and overwritten from the
//! start, so older records may follow the newest ones; their lower numbers end the chain. The
//! salt, chosen when the file is created, keeps bytes inside a payload (a task's arguments)
//! from ever passing for a record.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The first bytes of every redo log.
const MAGIC: [u8; 6] = *b"fq-log";
/// The format of what follows the magic; a log of another version is refused.
pub(crate) const LOG_FORMAT_VERSION: u8 = 1;
/// Magic, version, reserved byte, salt, CRC-32, padding.
pub(crate) const HEADER_BYTES: u64 = 24;
/// CRC-32, payload length, record number.
const RECORD_HEADER_BYTES: usize = 16;
/// Records start at multiples of this: a reader looking past a damaged record for later ones
/// looks at these offsets only.
pub(crate) const ALIGN: usize = 8;
/// The log file grows by this much at a time, zero-filled ahead of the records. An append
/// that extends a file makes its fdatasync commit the new length to the file system's journal
/// too, which costs about a third more than a sync of data alone (`PERFORMANCE.md`); with
/// the room written ahead, only one append in a chunk pays that.
pub(crate) const GROWTH_BYTES: u64 = 256 * 1024;
/// Largest log file read at open. A log is rewound at every checkpoint, so a larger file is
/// not one fq wrote.
pub(crate) const MAX_LOG_BYTES: u64 = 1 << 32;

/// A redo log that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    /// The operating system refused a read, write or sync.
    #[error("redo log: {action} failed: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file does not start with fq's magic: some other file sits at the log's path.
    #[error("redo log: not an fq redo log (it does not start with \"fq-log\")")]
    Foreign,
    /// Written by a build with another log format.
    #[error("redo log: format version {found}, this build reads version {LOG_FORMAT_VERSION}")]
    Version { found: u8 },
    /// Damage that would lose acknowledged changes if the log were read past it.
    #[error("redo log: damaged at byte {offset}: {detail}")]
    Corrupt { offset: u64, detail: String },
    /// Larger than any log fq writes.
    #[error("redo log: {bytes} bytes, more than the {MAX_LOG_BYTES} a log may hold")]
    TooLarge { bytes: u64 },
    /// A log of another store: its salt is not the one the store names.
    #[error("redo log: not the store's own (its salt is not the one the store names)")]
    NotOwn,
    /// A payload longer than a record's length field holds.
    #[error("redo log: a record of {bytes} bytes is longer than a record may be (4 GiB)")]
    RecordTooLarge { bytes: usize },
}

/// Zeros written ahead of the records and over records taken back.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn io_error(action: &'static str) -> impl FnOnce(io::Error) -> LogError {
    move |source| LogError::Io { action, source }
}

/// The file operations a log needs: a real file, or a simulated disk in tests.
pub(crate) trait LogFile {
    fn len(&self) -> io::Result<u64>;
    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;

    /// Another handle on the same bytes, for syncing from another thread while this one
    /// appends; `None` where the storage has no such handle (the log is then synced inline).
    fn sync_handle(&self) -> Option<Arc<dyn LogFile + Send + Sync>> {
        None
    }
}

impl<T: LogFile + ?Sized> LogFile for Box<T> {
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, out)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, data)
    }

    fn sync_data(&self) -> io::Result<()> {
        (**self).sync_data()
    }

    fn sync_handle(&self) -> Option<Arc<dyn LogFile + Send + Sync>> {
        (**self).sync_handle()
    }
}

impl LogFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, out, offset)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_handle(&self) -> Option<Arc<dyn LogFile + Send + Sync>> {
        let handle: Arc<dyn LogFile + Send + Sync> = Arc::new(self.try_clone().ok()?);
        Some(handle)
    }
}

/// One record read back: its number and what was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LogRecord {
    pub(crate) number: u64,
    pub(crate) payload: Vec<u8>,
}

/// What a log file holds, as recovery reads it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub(crate) salt: u64,
    /// The records numbered after the checkpoint, in order, starting at the checkpoint + 1.
    pub(crate) live: Vec<LogRecord>,
    /// Where the next append goes: after the last live record, or right after the header.
    pub(crate) end: u64,
    /// The number the next append takes.
    pub(crate) next_number: u64,
}

/// The header of a new log with `salt`.
pub(crate) fn header(salt: u64) -> [u8; HEADER_BYTES as usize] {
    let mut bytes = [0u8; HEADER_BYTES as usize];
    bytes[..6].copy_from_slice(&MAGIC);
    bytes[6] = LOG_FORMAT_VERSION;
    bytes[8..16].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// A salt for a new log, unpredictable to whoever writes task arguments: the standard
/// library's hasher keys come from the operating system's randomness.
pub(crate) fn fresh_salt() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Appends the record `number` carrying `payload` to `out`, padded to the alignment.
pub(crate) fn encode_record(
    salt: u64,
    number: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), LogError> {
    let length = u32::try_from(payload.len()).map_err(|_| LogError::RecordTooLarge {
        bytes: payload.len(),
    })?;
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = record_crc(salt, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + padded(RECORD_HEADER_BYTES + payload.len()), 0);
    Ok(())
}

/// The bytes of a log file with `salt` holding `payloads` numbered from `checkpoint + 1`, as
/// appends would leave them (without the zero-filled room they write ahead), and where each
/// record's payload ends (for the fuzz target).
#[cfg(any(test, feature = "internals"))]
pub(crate) fn image(
    salt: u64,
    checkpoint: u64,
    payloads: &[&[u8]],
) -> Result<(Vec<u8>, Vec<usize>), LogError> {
    let mut bytes = header(salt).to_vec();
    let mut ends = Vec::with_capacity(payloads.len());
    for (payload, number) in payloads.iter().zip(checkpoint.saturating_add(1)..) {
        let start = bytes.len();
        encode_record(salt, number, payload, &mut bytes)?;
        ends.push(start + RECORD_HEADER_BYTES + payload.len());
    }
    Ok((bytes, ends))
}

fn padded(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// CRC-32 of the salt, then `body` (length, number, payload).
fn record_crc(salt: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The record at `offset` when one is there intact: its number and payload range.
pub(crate) fn record_at(
    bytes: &[u8],
    offset: usize,
    salt: u64,
) -> Option<(u64, std::ops::Range<usize>)> {
    let head = bytes.get(offset..offset.checked_add(RECORD_HEADER_BYTES)?)?;
    let crc = u32::from_le_bytes(head[0..4].try_into().ok()?);
    let length = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
    let number = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let payload_start = offset + RECORD_HEADER_BYTES;
    let payload_end = payload_start.checked_add(length)?;
    let body = bytes.get(offset + 4..payload_end)?;
    (record_crc(salt, body) == crc).then_some((number, payload_start..payload_end))
}

/// The salt of the log whose file starts with `bytes` (the header at least).
///
/// # Errors
/// `Foreign` or `Version` for a header that is not this format's; `Corrupt` for a damaged or
/// cut header.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<u64, LogError> {
    let header_len = HEADER_BYTES as usize;
    let corrupt = |offset: usize, detail: String| LogError::Corrupt {
        offset: offset as u64,
        detail,
    };
    let head = bytes.get(..header_len).ok_or_else(|| {
        if bytes.starts_with(&MAGIC[..bytes.len().min(MAGIC.len())]) {
            corrupt(
                0,
                format!("the header is cut short at {} bytes", bytes.len()),
            )
        } else {
            LogError::Foreign
        }
    })?;
    if head[..6] != MAGIC {
        return Err(LogError::Foreign);
    }
    if head[6] != LOG_FORMAT_VERSION {
        return Err(LogError::Version { found: head[6] });
    }
    let stored_crc = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if crc32fast::hash(&head[..16]) != stored_crc || head[7] != 0 || head[20..] != [0; 4] {
        let detail = "the header is damaged (its checksum or reserved bytes do not match)";
        return Err(corrupt(0, detail.to_owned()));
    }
    let mut salt_bytes = [0u8; 8];
    salt_bytes.copy_from_slice(&head[8..16]);
    Ok(u64::from_le_bytes(salt_bytes))
}

/// Reads a whole log file as recovery does, given the checkpoint: the number of the last
/// record whose changes the B-tree holds durably (0 before the first).
///
/// The chain of consecutively numbered intact records from the header on is the log; it ends
/// at the first record that is torn, stale (numbered lower, from before a rewind) or absent.
/// Its records numbered after the checkpoint are returned, and must start right after it.
///
/// # Errors
/// `Foreign` or `Version` for a header that is not this format's; `Corrupt` for a damaged
/// header, a gap between the checkpoint and the first live record, or an intact record beyond
/// the chain's end numbered after everything in it (the chain was cut by damage, not by the
/// end of the last append).
pub(crate) fn scan(bytes: &[u8], checkpoint: u64) -> Result<Scanned, LogError> {
    let header_len = HEADER_BYTES as usize;
    let corrupt = |offset: usize, detail: String| LogError::Corrupt {
        offset: offset as u64,
        detail,
    };
    let salt = parse_header(bytes)?;

    let mut offset = header_len;
    let mut last: Option<u64> = None;
    let mut live = Vec::new();
    let mut end = header_len;
    while let Some((number, payload)) = record_at(bytes, offset, salt) {
        if let Some(previous) = last {
            match number.cmp(&previous.saturating_add(1)) {
                std::cmp::Ordering::Equal => {}
                // Written before the last rewind: the chain ends here.
                std::cmp::Ordering::Less => break,
                std::cmp::Ordering::Greater => {
                    let detail = format!(
                        "record {number} follows record {previous}: the records between are missing"
                    );
                    return Err(corrupt(offset, detail));
                }
            }
        }
        if number > checkpoint && live.is_empty() && number != checkpoint.saturating_add(1) {
            let detail = format!(
                "the first record after checkpoint {checkpoint} is numbered {number}: the \
                 records between are missing"
            );
            return Err(corrupt(offset, detail));
        }
        let next = offset + padded(payload.end - offset);
        if number > checkpoint {
            live.push(LogRecord {
                number,
                payload: bytes[payload].to_vec(),
            });
            end = next;
        }
        last = Some(number);
        offset = next;
    }
    let newest = last.unwrap_or(0).max(checkpoint);
    if let Some((found, at)) = intact_record_after(bytes, offset, salt, newest) {
        let detail = format!(
            "record {found} at byte {at} is intact, but the record before it here is not: \
             acknowledged changes would be lost"
        );
        return Err(corrupt(offset, detail));
    }
    Ok(Scanned {
        salt,
        live,
        end: end as u64,
        next_number: newest.saturating_add(1),
    })
}

/// An intact record at an aligned offset from `from` on numbered after `newest` (and no
/// further after it than records could fit in the file), as (number, offset).
fn intact_record_after(bytes: &[u8], from: usize, salt: u64, newest: u64) -> Option<(u64, usize)> {
    let slots = (bytes.len() / RECORD_HEADER_BYTES) as u64;
    let mut offset = from;
    while offset + RECORD_HEADER_BYTES <= bytes.len() {
        let mut field = [0u8; 8];
        field.copy_from_slice(&bytes[offset + 8..offset + 16]);
        let number = u64::from_le_bytes(field);
        if number > newest
            && number - newest <= slots
            && let Some((number, _)) = record_at(bytes, offset, salt)
        {
            return Some((number, offset));
        }
        offset += ALIGN;
    }
    None
}

/// A redo log open for appending.
#[derive(Debug)]
pub(crate) struct RedoLog<F: LogFile> {
    file: F,
    salt: u64,
    end: u64,
    next_number: u64,
    buffer: Vec<u8>,
    /// Where the last append began, until the next rewind.
    last_start: Option<u64>,
    /// The file's length: where the zero-filled room written ahead ends.
    allocated: u64,
}

impl<F: LogFile> RedoLog<F> {
    /// Starts a log in `file`, which must be empty (a fresh file; renaming it into place is
    /// the caller's part): writes and syncs the header. The first append takes number
    /// `checkpoint + 1`.
    ///
    /// # Errors
    /// `Io` when the header cannot be written or synced.
    pub(crate) fn create(file: F, salt: u64, checkpoint: u64) -> Result<Self, LogError> {
        file.write_at(0, &header(salt))
            .map_err(io_error("writing the header"))?;
        file.sync_data().map_err(io_error("syncing the header"))?;
        Ok(Self {
            file,
            salt,
            end: HEADER_BYTES,
            next_number: checkpoint.saturating_add(1),
            buffer: Vec::new(),
            last_start: None,
            allocated: HEADER_BYTES,
        })
    }

    /// Opens the log in `file` after a crash or a clean close: reads it whole, returns the
    /// records numbered after `checkpoint` (to apply again) and the log positioned after them.
    ///
    /// # Errors
    /// What [`scan`] refuses; `TooLarge` for a file larger than [`MAX_LOG_BYTES`]; `Io`.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn open(file: F, checkpoint: u64) -> Result<(Self, Vec<LogRecord>), LogError> {
        Self::open_checked(file, checkpoint, None)
    }

    /// As [`RedoLog::open`], for the log of a store that names `own_salt` (`None`: names
    /// none yet): a log with another salt is refused with `NotOwn` before anything else is
    /// read from it.
    ///
    /// # Errors
    /// As [`RedoLog::open`]; `NotOwn`.
    pub(crate) fn open_own(
        file: F,
        checkpoint: u64,
        own_salt: Option<u64>,
    ) -> Result<(Self, Vec<LogRecord>), LogError> {
        Self::open_checked(file, checkpoint, Some(own_salt))
    }

    fn open_checked(
        file: F,
        checkpoint: u64,
        own_salt: Option<Option<u64>>,
    ) -> Result<(Self, Vec<LogRecord>), LogError> {
        let bytes = file.len().map_err(io_error("reading the length"))?;
        if bytes > MAX_LOG_BYTES {
            return Err(LogError::TooLarge { bytes });
        }
        let mut contents =
            vec![0u8; usize::try_from(bytes).map_err(|_| LogError::TooLarge { bytes })?];
        file.read_at(0, &mut contents)
            .map_err(io_error("reading the log"))?;
        if let Some(own) = own_salt
            && own != Some(parse_header(&contents)?)
        {
            return Err(LogError::NotOwn);
        }
        let scanned = scan(&contents, checkpoint)?;
        let log = Self {
            file,
            salt: scanned.salt,
            end: scanned.end,
            next_number: scanned.next_number,
            buffer: Vec::new(),
            last_start: None,
            allocated: bytes,
        };
        Ok((log, scanned.live))
    }

    /// Writes one record carrying `payload` after the last one and returns its number. It is
    /// durable only once [`RedoLog::sync`] has returned.
    ///
    /// # Errors
    /// `RecordTooLarge`, or `Io` when the write fails (the log's end then stays where it was:
    /// the next append overwrites what was partly written).
    pub(crate) fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        self.buffer.clear();
        let number = self.next_number;
        encode_record(self.salt, number, payload, &mut self.buffer)?;
        self.grow_for(self.end + self.buffer.len() as u64)?;
        self.file
            .write_at(self.end, &self.buffer)
            .map_err(io_error("appending a record"))?;
        self.last_start = Some(self.end);
        self.end += self.buffer.len() as u64;
        self.next_number += 1;
        Ok(number)
    }

    /// Writes zeros ahead of the records up to a whole number of [`GROWTH_BYTES`] past
    /// `needed`, when the file is shorter. Zeros end the chain of records like the end of
    /// the file does, so a crash in the middle of this changes nothing that is read back.
    fn grow_for(&mut self, needed: u64) -> Result<(), LogError> {
        if needed <= self.allocated {
            return Ok(());
        }
        let target = needed.div_ceil(GROWTH_BYTES) * GROWTH_BYTES;
        while self.allocated < target {
            let piece = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file
                .write_at(self.allocated, &ZEROS[..piece])
                .map_err(io_error("growing the log"))?;
            self.allocated += piece as u64;
        }
        Ok(())
    }

    /// Takes back the last record appended (its changes could not be applied after all): its
    /// header is zeroed and synced, so recovery ends the log before it, and the next append
    /// takes its place and number.
    ///
    /// # Errors
    /// `Io` when the zeroing cannot be written or synced: the record may then still be read
    /// back at the next open.
    pub(crate) fn retract_last(&mut self) -> Result<(), LogError> {
        let Some(start) = self.last_start.take() else {
            return Ok(());
        };
        self.file
            .write_at(start, &[0; RECORD_HEADER_BYTES])
            .map_err(io_error("taking back a record"))?;
        self.sync()?;
        self.end = start;
        self.next_number -= 1;
        Ok(())
    }

    /// Where the last record appended starts and its number: what [`RedoLog::retract_to`]
    /// takes back to.
    pub(crate) fn last_record(&self) -> Option<(u64, u64)> {
        self.last_start.map(|start| (start, self.next_number - 1))
    }

    /// Takes back every record from the one at `start` numbered `number` on (their sync
    /// failed): their bytes are zeroed and synced, so recovery ends the log before them (a
    /// zeroed first header with intact records after it would read as damage).
    ///
    /// # Errors
    /// `Io` when the zeroing cannot be written or synced: the records may then still be read
    /// back at the next open.
    pub(crate) fn retract_to(&mut self, start: u64, number: u64) -> Result<(), LogError> {
        let mut at = start;
        while at < self.end {
            let piece = (self.end - at).min(ZEROS.len() as u64) as usize;
            self.file
                .write_at(at, &ZEROS[..piece])
                .map_err(io_error("taking back records"))?;
            at += piece as u64;
        }
        self.sync()?;
        self.end = start;
        self.next_number = number;
        self.last_start = None;
        Ok(())
    }

    /// A handle to sync the log from another thread (see [`LogFile::sync_handle`]).
    pub(crate) fn sync_handle(&self) -> Option<Arc<dyn LogFile + Send + Sync>> {
        self.file.sync_handle()
    }

    /// Makes every appended record durable.
    ///
    /// # Errors
    /// `Io` when the sync fails: what was appended since the last successful sync may or may
    /// not be on the disk, so nothing it carries may be acknowledged.
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.file.sync_data().map_err(io_error("syncing"))
    }

    /// After a checkpoint that covers every appended record: the next append goes right after
    /// the header again, over records no longer needed. Numbers keep growing.
    pub(crate) fn rewind(&mut self) {
        self.end = HEADER_BYTES;
        self.last_start = None;
    }

    /// Where the next record goes, in bytes from the start of the file.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// The number the next append takes.
    pub(crate) fn next_number(&self) -> u64 {
        self.next_number
    }
}

#[cfg(test)]
mod tests;
