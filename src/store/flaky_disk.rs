//! For tests: a disk in memory, usable as a store's or a log's storage, whose syncs can be
//! made to fail.

/// A disk in memory whose next `failing_syncs` syncs fail (what was written stays, as in a
/// page cache).
#[derive(Debug, Default)]
pub(crate) struct FlakyDisk {
    bytes: std::sync::Mutex<Vec<u8>>,
    pub(crate) failing_syncs: std::sync::atomic::AtomicU32,
}

/// A [`FlakyDisk`] that a test keeps a handle on while a store uses it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedFlakyDisk(pub(crate) std::sync::Arc<FlakyDisk>);

impl redb::StorageBackend for SharedFlakyDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.bytes.lock().unwrap().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let bytes = self.0.bytes.lock().unwrap();
        let start = offset as usize;
        let end = start + out.len();
        if end > bytes.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end",
            ));
        }
        out.copy_from_slice(&bytes[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.bytes.lock().unwrap().resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let failing = &self.0.failing_syncs;
        let fails = failing
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if fails {
            return Err(std::io::Error::other("injected sync failure"));
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut bytes = self.0.bytes.lock().unwrap();
        let end = offset as usize + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
}
