//! The redo log (the file format of the store's write-ahead log) and the log's place beside a
//! store, for the log's benches and fuzz target.

use std::path::{Path, PathBuf};

/// The write-ahead log's file beside the store at `store` (`<store>-wal`).
#[must_use]
pub fn log_path(store: &Path) -> PathBuf {
    crate::store::wal_path(store)
}

/// The length of a redo log's header: records start there.
pub const LOG_HEADER_BYTES: usize = crate::store::log::HEADER_BYTES as usize;

/// Records start at offsets that are multiples of this.
pub const LOG_RECORD_ALIGN: usize = crate::store::log::ALIGN;

/// A log record read back: its number and payload.
pub type LogEntry = (u64, Vec<u8>);

/// The redo log (`store::log`, the file format of the store's write-ahead log) in a
/// file, for its bench.
#[derive(Debug)]
pub struct RedoLogFile(crate::store::log::RedoLog<std::fs::File>);

impl RedoLogFile {
    /// Starts a log in a new file at `path` (refused if one is there); the first record is
    /// numbered 1.
    ///
    /// # Errors
    /// The file cannot be created or its header written.
    pub fn create(path: &Path) -> std::result::Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let salt = crate::store::log::fresh_salt();
        crate::store::log::RedoLog::create(file, salt, 0)
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Opens the log at `path` as recovery does: the records numbered after `checkpoint`.
    ///
    /// # Errors
    /// The file cannot be read, or the log is refused (foreign, damaged).
    pub fn open(
        path: &Path,
        checkpoint: u64,
    ) -> std::result::Result<(Self, Vec<LogEntry>), String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (log, live) =
            crate::store::log::RedoLog::open(file, checkpoint).map_err(|e| e.to_string())?;
        Ok((Self(log), log_entries(live)))
    }

    /// Appends one record (not yet durable) and returns its number.
    ///
    /// # Errors
    /// The write fails.
    pub fn append(&mut self, payload: &[u8]) -> std::result::Result<u64, String> {
        self.0.append(payload).map_err(|e| e.to_string())
    }

    /// Makes every appended record durable.
    ///
    /// # Errors
    /// The sync fails.
    pub fn sync(&self) -> std::result::Result<(), String> {
        self.0.sync().map_err(|e| e.to_string())
    }

    /// Starts over after the header (after a checkpoint).
    pub fn rewind(&mut self) {
        self.0.rewind();
    }

    /// (where the next record goes, the number it takes).
    #[must_use]
    pub fn position(&self) -> (u64, u64) {
        (self.0.end(), self.0.next_number())
    }
}

/// The bytes of a log file with `salt` holding `payloads` numbered from `checkpoint + 1`, as
/// appends would leave them, and where each record's payload ends.
///
/// # Errors
/// A payload longer than a record may be.
pub fn log_image(
    salt: u64,
    checkpoint: u64,
    payloads: &[&[u8]],
) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
    crate::store::log::image(salt, checkpoint, payloads).map_err(|e| e.to_string())
}

/// The number of the record intact at `offset` of log-file bytes whose salt is `salt`, if one
/// is there: for the fuzz target to tell a record its input forged inside a payload (it knows
/// the salt, which a task's arguments never do) from one the log wrote.
#[must_use]
pub fn log_record_at(bytes: &[u8], offset: usize, salt: u64) -> Option<u64> {
    crate::store::log::record_at(bytes, offset, salt).map(|(number, _)| number)
}

/// Reads log-file bytes as recovery does after `checkpoint`: the live records, or the refusal.
///
/// # Errors
/// The log is refused (foreign, other version, damaged before its last record).
pub fn scan_log(bytes: &[u8], checkpoint: u64) -> std::result::Result<Vec<LogEntry>, String> {
    let scanned = crate::store::log::scan(bytes, checkpoint).map_err(|e| e.to_string())?;
    Ok(log_entries(scanned.live))
}

fn log_entries(records: Vec<crate::store::log::LogRecord>) -> Vec<LogEntry> {
    records.into_iter().map(|r| (r.number, r.payload)).collect()
}
