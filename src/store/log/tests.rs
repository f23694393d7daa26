use std::sync::Mutex;

use proptest::prelude::*;

use super::*;

/// A log file in memory: what a disk would hold after the writes so far.
#[derive(Default)]
struct MemoryFile(Mutex<Vec<u8>>);

impl MemoryFile {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().map(|bytes| bytes.clone()).unwrap_or_default()
    }
}

impl LogFile for &MemoryFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes().len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let bytes = self.bytes();
        let start = offset as usize;
        let slice = bytes
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(slice);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut bytes = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let end = offset as usize + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

const SALT: u64 = 0x5eed_1234_abcd_0042;

fn payloads(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| format!("batch {n}: {}", "x".repeat(n * 7 % 50)).into_bytes())
        .collect()
}

/// A log file holding `payloads` appended after `checkpoint`, and where each record's
/// payload ends (its padding after that is not needed to read it).
fn written(payloads: &[Vec<u8>], checkpoint: u64) -> (Vec<u8>, Vec<usize>) {
    let file = MemoryFile::default();
    let mut log = RedoLog::create(&file, SALT, checkpoint).unwrap();
    let mut ends = Vec::new();
    for payload in payloads {
        let start = log.end() as usize;
        log.append(payload).unwrap();
        ends.push(start + RECORD_HEADER_BYTES + payload.len());
    }
    log.sync().unwrap();
    (file.bytes(), ends)
}

fn records(payloads: &[Vec<u8>], first: u64) -> Vec<LogRecord> {
    payloads
        .iter()
        .zip(first..)
        .map(|(payload, number)| LogRecord {
            number,
            payload: payload.clone(),
        })
        .collect()
}

#[test]
fn a_log_reads_back_the_records_after_the_checkpoint_it_is_given() {
    let payloads = payloads(10);
    let file = MemoryFile::default();
    let mut log = RedoLog::create(&file, SALT, 0).unwrap();
    for (payload, number) in payloads.iter().zip(1..) {
        assert_eq!(log.append(payload).unwrap(), number);
    }
    log.sync().unwrap();
    for checkpoint in [0, 4, 10] {
        let (reopened, live) = RedoLog::open(&file, checkpoint).unwrap();
        assert_eq!(
            live,
            records(&payloads[checkpoint as usize..], checkpoint + 1)
        );
        assert_eq!(reopened.next_number(), 11);
    }
    // Appending after a reopen continues the chain.
    let (mut reopened, _) = RedoLog::open(&file, 0).unwrap();
    assert_eq!(reopened.append(b"eleventh").unwrap(), 11);
    let (_, live) = RedoLog::open(&file, 10).unwrap();
    assert_eq!(live, records(&[b"eleventh".to_vec()], 11));
}

#[test]
fn a_log_cut_at_any_byte_gives_back_exactly_the_records_written_whole() {
    let payloads = payloads(6);
    let (bytes, ends) = written(&payloads, 0);
    // Every byte up to a little into the zero-filled room the appends wrote ahead, and the
    // whole file.
    let records_end = ends.last().copied().unwrap_or(0) + 64;
    let cuts = (HEADER_BYTES as usize..=records_end.min(bytes.len())).chain([bytes.len()]);
    for cut in cuts {
        let scanned = scan(&bytes[..cut], 0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        assert_eq!(scanned.live, records(&payloads[..whole], 1), "cut at {cut}");
        assert_eq!(scanned.next_number, whole as u64 + 1);
    }
}

#[test]
fn a_torn_last_append_is_dropped_whatever_bytes_it_left() {
    let payloads = payloads(5);
    let (mut bytes, ends) = written(&payloads, 0);
    // The last record's tail holds garbage, as a write cut short by a crash may leave.
    let start = ends[3].div_ceil(8) * 8;
    for (offset, byte) in bytes[start + 3..].iter_mut().enumerate() {
        *byte = (offset as u8).wrapping_mul(37) ^ 0xa5;
    }
    let scanned = scan(&bytes, 0).unwrap();
    assert_eq!(scanned.live, records(&payloads[..4], 1));
    assert_eq!(scanned.end, start as u64);
    // Zeros after the log (a preallocated file) end it the same way.
    let (mut bytes, _) = written(&payloads, 0);
    bytes.resize(bytes.len() + 4096, 0);
    assert_eq!(scan(&bytes, 0).unwrap().live, records(&payloads, 1));
}

#[test]
fn damage_before_the_last_record_is_refused_not_skipped() {
    let payloads = payloads(5);
    let (clean, ends) = written(&payloads, 0);
    // One byte changed inside each record but the last: intact records follow it, so
    // reading on would drop acknowledged changes.
    let mut starts = vec![HEADER_BYTES as usize];
    starts.extend(ends[..ends.len() - 1].iter().map(|end| end.div_ceil(8) * 8));
    for (index, &start) in starts[..4].iter().enumerate() {
        let mut bytes = clean.clone();
        bytes[start + 20] ^= 0x01;
        match scan(&bytes, 0) {
            Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, start as u64),
            other => panic!("record {} damaged: {other:?}", index + 1),
        }
    }
    // The last record damaged looks like a torn append: it is dropped (a damaged last
    // record cannot be told from one whose sync never returned).
    let mut bytes = clean.clone();
    bytes[starts[4] + 20] ^= 0x01;
    assert_eq!(scan(&bytes, 0).unwrap().live, records(&payloads[..4], 1));
}

#[test]
fn after_a_rewind_older_records_behind_the_newest_end_the_chain() {
    let payloads = payloads(8);
    let file = MemoryFile::default();
    let mut log = RedoLog::create(&file, SALT, 0).unwrap();
    for payload in &payloads {
        log.append(payload).unwrap();
    }
    log.sync().unwrap();
    // A checkpoint covers records 1 to 8; the log is rewound.
    log.rewind();
    // Before any new append: nothing to apply again.
    let (_, live) = RedoLog::open(&file, 8).unwrap();
    assert!(live.is_empty());
    // Two new records overwrite the start; older ones still follow them on the disk.
    assert_eq!(log.append(b"ninth").unwrap(), 9);
    assert_eq!(log.append(b"tenth").unwrap(), 10);
    log.sync().unwrap();
    let (reopened, live) = RedoLog::open(&file, 8).unwrap();
    assert_eq!(live, records(&[b"ninth".to_vec(), b"tenth".to_vec()], 9));
    assert_eq!(reopened.next_number(), 11);
    // Damage to record 9 with record 10 intact behind it is refused, as anywhere else.
    let mut bytes = file.bytes();
    bytes[HEADER_BYTES as usize + 4] ^= 0xff;
    assert!(matches!(scan(&bytes, 8), Err(LogError::Corrupt { .. })));

    // A checkpoint covers 9 and 10; one new record is torn over the old ones: nothing lost
    // (it was never acknowledged), nothing refused, and its number is taken again.
    log.rewind();
    assert_eq!(log.append(b"eleventh").unwrap(), 11);
    let mut bytes = file.bytes();
    bytes[HEADER_BYTES as usize + 4] ^= 0xff;
    let scanned = scan(&bytes, 10).unwrap();
    assert!(scanned.live.is_empty());
    assert_eq!(scanned.next_number, 11);
    assert_eq!(scanned.end, HEADER_BYTES);
}

#[test]
fn a_gap_between_the_checkpoint_and_the_first_record_is_refused() {
    let (bytes, _) = written(&payloads(3), 5);
    assert_eq!(scan(&bytes, 5).unwrap().live.len(), 3);
    for checkpoint in [0, 3, 4] {
        assert!(
            matches!(scan(&bytes, checkpoint), Err(LogError::Corrupt { .. })),
            "checkpoint {checkpoint}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_log_of_this_format_is_refused_by_name() {
    let (clean, _) = written(&payloads(2), 0);
    let sqlite = b"SQLite format 3\0 and then some pages".to_vec();
    assert!(matches!(scan(&sqlite, 0), Err(LogError::Foreign)));
    assert!(matches!(
        scan(b"", 0),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    assert!(matches!(
        scan(b"fq-l", 0),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    let mut newer = clean.clone();
    newer[6] = LOG_FORMAT_VERSION + 1;
    let error = scan(&newer, 0).unwrap_err();
    assert!(matches!(error, LogError::Version { found } if found == LOG_FORMAT_VERSION + 1));
    assert!(error.to_string().contains("format version 2"), "{error}");
    let mut damaged = clean.clone();
    damaged[10] ^= 0x10;
    assert!(matches!(
        scan(&damaged, 0),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    assert!(
        scan(&clean, 0).is_ok(),
        "the control: the file untouched reads"
    );
}

#[test]
fn a_record_forged_inside_a_payload_is_not_taken_for_one_without_the_salt() {
    // A task's arguments carry bytes laid out as a record numbered after the newest one.
    let mut forged = Vec::new();
    encode_record(0x0bad_5a17, 7, b"forged", &mut forged).unwrap();
    let mut payload = vec![0u8; 40];
    payload.extend_from_slice(&forged);
    let first = b"first".to_vec();
    let (mut bytes, ends) = written(&[first.clone(), payload], 0);
    // The record carrying it is torn before its end: the forged one stays on the disk.
    bytes[ends[0].div_ceil(8) * 8 + 4] ^= 0xff;
    assert_eq!(
        scan(&bytes, 0).unwrap().live,
        records(std::slice::from_ref(&first), 1)
    );
    // The control: forged with the log's own salt, the same bytes are taken for an intact
    // record after damage, and refused.
    let mut forged = Vec::new();
    encode_record(SALT, 7, b"forged", &mut forged).unwrap();
    let mut payload = vec![0u8; 40];
    payload.extend_from_slice(&forged);
    let (mut bytes, ends) = written(&[first, payload], 0);
    bytes[ends[0].div_ceil(8) * 8 + 4] ^= 0xff;
    assert!(matches!(scan(&bytes, 0), Err(LogError::Corrupt { .. })));
}

proptest! {
    // A failing case is printed, shrunk, by the failure itself: no regression files in the
    // source tree.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any log, cut anywhere and padded with anything that is not an intact later record,
    /// reads back as the records written whole before the cut.
    #[test]
    fn any_cut_of_any_log_reads_back_its_whole_records(
        sizes in proptest::collection::vec(0usize..300, 1..12),
        cut_at in any::<prop::sample::Index>(),
        checkpoint in 0u64..4,
    ) {
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| vec![n as u8; size])
            .collect();
        let (bytes, ends) = written(&payloads, checkpoint);
        let cut = HEADER_BYTES as usize + cut_at.index(bytes.len() - HEADER_BYTES as usize + 1);
        let scanned = scan(&bytes[..cut], checkpoint).unwrap();
        let whole = ends.iter().filter(|&&end| end <= cut).count();
        prop_assert_eq!(scanned.live, records(&payloads[..whole], checkpoint + 1));
    }

    /// Whatever the bytes, reading them never panics.
    #[test]
    fn reading_arbitrary_bytes_never_panics(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..600),
        keep_header in any::<bool>(),
        checkpoint in any::<u64>(),
    ) {
        if keep_header && bytes.len() >= HEADER_BYTES as usize {
            bytes[..HEADER_BYTES as usize].copy_from_slice(&header(SALT));
        }
        let _ = scan(&bytes, checkpoint);
    }
}

#[test]
fn an_intact_older_record_right_behind_the_newest_one_ends_the_chain() {
    // Records of one size, so the new ones end exactly where an older one begins.
    let file = MemoryFile::default();
    let mut log = RedoLog::create(&file, SALT, 0).unwrap();
    for n in 1..=6u8 {
        log.append(&[n; 20]).unwrap();
    }
    log.sync().unwrap();
    log.rewind();
    log.append(&[7; 20]).unwrap();
    log.append(&[8; 20]).unwrap();
    log.sync().unwrap();
    // On the disk: 7, 8, then the intact older 3, 4, 5, 6.
    let (reopened, live) = RedoLog::open(&file, 6).unwrap();
    assert_eq!(live, records(&[vec![7; 20], vec![8; 20]], 7));
    assert_eq!(reopened.next_number(), 9);
    assert_eq!(reopened.end(), HEADER_BYTES + 2 * 40);
}

#[test]
fn each_new_log_gets_its_own_salt() {
    let salts: std::collections::HashSet<u64> = (0..64).map(|_| fresh_salt()).collect();
    assert_eq!(salts.len(), 64);
}

#[test]
fn a_log_in_a_real_file_reads_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb.log");
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap()
    };
    let payloads = payloads(4);
    let mut log = RedoLog::create(open(), fresh_salt(), 0).unwrap();
    for payload in &payloads {
        log.append(payload).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let (mut log, live) = RedoLog::open(open(), 1).unwrap();
    assert_eq!(live, records(&payloads[1..], 2));
    assert_eq!(log.append(b"fifth").unwrap(), 5);
    log.sync().unwrap();
    let (_, live) = RedoLog::open(open(), 4).unwrap();
    assert_eq!(live, records(&[b"fifth".to_vec()], 5));
}

#[test]
fn the_image_the_fuzz_target_builds_is_what_appends_write() {
    let payloads = payloads(5);
    let borrowed: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (image_bytes, ends) = image(SALT, 3, &borrowed).unwrap();
    let (bytes, written_ends) = written(&payloads, 3);
    assert_eq!(ends, written_ends);
    // The appends also wrote zero-filled room ahead of the records, to a whole chunk.
    assert_eq!(&bytes[..image_bytes.len()], &image_bytes[..]);
    assert!(bytes[image_bytes.len()..].iter().all(|&b| b == 0));
    assert_eq!(bytes.len() as u64, GROWTH_BYTES);
}

#[test]
fn a_log_with_another_salt_than_its_store_names_is_refused_before_it_is_read() {
    let file = MemoryFile::default();
    let mut log = RedoLog::create(&file, SALT, 0).unwrap();
    log.append(b"one").unwrap();
    log.sync().unwrap();
    for own in [Some(SALT ^ 1), None] {
        let refused = RedoLog::open_own(&file, 0, own).err();
        assert!(matches!(refused, Some(LogError::NotOwn)), "{own:?}");
    }
    // Control: the store that names this salt reads the record.
    let (_, live) = RedoLog::open_own(&file, 0, Some(SALT)).unwrap();
    assert_eq!(live, records(&[b"one".to_vec()], 1));
}
