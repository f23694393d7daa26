//! A store file seen through a layer that keeps every write in memory: reads come from the
//! file, patched by what was written since. A read-only open verifies the file's pages
//! through it, since redb verifies pages only in an open that may write (its integrity check
//! rebuilds and commits allocator state), and the file itself must not change.

use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, PoisonError};

use redb::StorageBackend;

/// The file, read-only, under the writes made to it.
#[derive(Debug)]
pub(super) struct CopyOnWrite {
    file: File,
    layer: Mutex<Layer>,
}

#[derive(Debug)]
struct Layer {
    /// The length the database sees.
    len: u64,
    /// The file's bytes from here on read as zeros: it was shorter here once, or past its end.
    file_ends: u64,
    /// Every write, oldest first (a later one wins where they overlap); few (headers, the
    /// allocator state), so a read applies each that overlaps it.
    writes: Vec<(u64, Vec<u8>)>,
}

impl CopyOnWrite {
    pub(super) fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            layer: Mutex::new(Layer {
                len,
                file_ends: len,
                writes: Vec::new(),
            }),
        })
    }

    fn layer(&self) -> std::sync::MutexGuard<'_, Layer> {
        self.layer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for CopyOnWrite {
    fn len(&self) -> Result<u64, Error> {
        Ok(self.layer().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        let layer = self.layer();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| *end <= layer.len)
            .ok_or_else(|| Error::new(ErrorKind::UnexpectedEof, "read past the end"))?;
        let from_file = layer.file_ends.clamp(offset, end) - offset;
        let (file_part, zeros) = out.split_at_mut(usize::try_from(from_file).unwrap_or(0));
        self.file.read_exact_at(file_part, offset)?;
        zeros.fill(0);
        for (at, data) in &layer.writes {
            let start = (*at).max(offset);
            let stop = (at + data.len() as u64).min(end);
            if start < stop {
                let (dst, src) = ((start - offset) as usize, (start - at) as usize);
                let n = (stop - start) as usize;
                out[dst..dst + n].copy_from_slice(&data[src..src + n]);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), Error> {
        let mut layer = self.layer();
        if len < layer.len {
            layer.file_ends = layer.file_ends.min(len);
            layer.writes.retain_mut(|(at, data)| {
                data.truncate(usize::try_from(len.saturating_sub(*at)).unwrap_or(usize::MAX));
                !data.is_empty()
            });
        }
        layer.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut layer = self.layer();
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "write past u64"))?;
        layer.len = layer.len.max(end);
        layer.writes.push((offset, data.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_file_under_the_writes_and_the_file_never_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abcdefgh").unwrap();
        let layer = CopyOnWrite::new(File::open(&path).unwrap()).unwrap();
        let read = |offset: u64, n: usize| {
            let mut out = vec![0xAA; n];
            layer.read(offset, &mut out).map(|()| out)
        };
        assert_eq!(read(0, 8).unwrap(), b"abcdefgh");
        layer.write(2, b"XY").unwrap();
        layer.write(3, b"Z").unwrap();
        assert_eq!(read(0, 8).unwrap(), b"abXZefgh");
        assert_eq!(read(3, 2).unwrap(), b"Ze");
        // Growing reads zeros past the file, then what was written there.
        layer.set_len(10).unwrap();
        layer.write(9, b"!").unwrap();
        assert_eq!(read(6, 4).unwrap(), b"gh\0!");
        // Shrinking forgets the bytes past the new end, file and writes alike.
        layer.set_len(3).unwrap();
        layer.set_len(6).unwrap();
        assert_eq!(read(0, 6).unwrap(), b"abX\0\0\0");
        assert!(read(4, 3).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdefgh");
    }
}
