//! The one capability a lazy layer needs from outside: reading a byte range
//! of its layer blob. `sochi-fs` defines it (STYLE.md: the crate that uses a
//! capability defines the trait); a registry client or an OCI layout
//! implements it, and tests use [`MemoryBlob`].

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads byte ranges of one layer blob (the compressed layer as stored).
pub trait BlobReader: Send + Sync {
    /// Returns exactly the bytes `range` of the blob (`start..end`,
    /// exclusive), or an error. The span manager treats an answer of the
    /// wrong length as an error too.
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>>;
}

/// A blob held in memory that counts the requests it serves and the bytes
/// it returns (for tests and metrics).
#[derive(Debug, Default)]
pub struct MemoryBlob {
    data: Vec<u8>,
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl MemoryBlob {
    /// A blob with these bytes.
    pub fn new(data: Vec<u8>) -> Self {
        MemoryBlob {
            data,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// Number of [`BlobReader::read_range`] calls so far (failed ones too).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes returned so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl BlobReader for MemoryBlob {
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let out_of_range = || {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "range {}..{} is outside the blob ({} bytes)",
                    range.start,
                    range.end,
                    self.data.len()
                ),
            )
        };
        let start = usize::try_from(range.start).map_err(|_| out_of_range())?;
        let end = usize::try_from(range.end).map_err(|_| out_of_range())?;
        let bytes = self.data.get(start..end).ok_or_else(out_of_range)?;
        self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes.to_vec())
    }
}

/// A blob in a local file, read with positioned reads (`pread`).
#[derive(Debug)]
pub struct FileBlob {
    file: std::fs::File,
}

impl FileBlob {
    /// Opens the blob at `path`.
    pub fn open(path: &std::path::Path) -> io::Result<FileBlob> {
        Ok(FileBlob {
            file: std::fs::File::open(path)?,
        })
    }
}

impl BlobReader for FileBlob {
    fn read_range(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))?;
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, range.start)?;
        Ok(buf)
    }
}
