//! The one capability a lazy layer needs from outside: reading a byte range
//! of its layer blob. The span store defines it (STYLE.md: the crate that
//! uses a capability defines the trait); a registry client or a local file
//! implements it, and tests use [`MemoryBlob`].
//!
//! A failed read says what kind of failure it was ([`BlobErrorKind`]), so
//! that a filesystem answers from one mapping: a timeout as `ETIMEDOUT`,
//! refused credentials as `EACCES`, everything else as `EIO`.

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Reads byte ranges of one layer blob (the compressed layer as stored).
pub trait BlobReader: Send + Sync {
    /// Returns exactly the bytes `range` of the blob (`start..end`,
    /// exclusive), or an error. The span store treats an answer of the
    /// wrong length as an error too.
    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError>;

    /// [`BlobReader::read_range`] for the background fetch: a source that
    /// bounds its requests in flight counts these apart, so that they do
    /// not hold up readers. The same read by default.
    fn read_range_in_background(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        self.read_range(range)
    }
}

/// What kind of failure a blob read was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobErrorKind {
    /// The blob (or the repository) does not exist where it was read.
    NotFound,
    /// The read did not finish within its deadline.
    Timeout,
    /// The source refused the credentials it was given.
    Denied,
    /// The source ended the read early: fewer bytes than asked for.
    ShortRead,
    /// Anything else between us and the bytes (connection, server error,
    /// local I/O).
    Transport,
}

impl fmt::Display for BlobErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlobErrorKind::NotFound => "not found",
            BlobErrorKind::Timeout => "timed out",
            BlobErrorKind::Denied => "access denied",
            BlobErrorKind::ShortRead => "short read",
            BlobErrorKind::Transport => "transport error",
        })
    }
}

/// A failed blob read: its kind, and the source's own error as the cause.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct BlobError {
    kind: BlobErrorKind,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BlobError {
    /// A failure of `kind` caused by `source`.
    pub fn new(
        kind: BlobErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> BlobError {
        BlobError {
            kind,
            source: Some(source.into()),
        }
    }

    /// A failure of `kind` with nothing more to say.
    pub fn of_kind(kind: BlobErrorKind) -> BlobError {
        BlobError { kind, source: None }
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> BlobErrorKind {
        self.kind
    }
}

impl From<io::Error> for BlobError {
    /// Local I/O: a short file is a short read, a missing one not found.
    fn from(error: io::Error) -> BlobError {
        let kind = match error.kind() {
            io::ErrorKind::UnexpectedEof => BlobErrorKind::ShortRead,
            io::ErrorKind::NotFound => BlobErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => BlobErrorKind::Denied,
            io::ErrorKind::TimedOut => BlobErrorKind::Timeout,
            _ => BlobErrorKind::Transport,
        };
        BlobError::new(kind, error)
    }
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
    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let out_of_range = || {
            BlobError::new(
                BlobErrorKind::ShortRead,
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
    fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        use std::os::unix::fs::FileExt;
        let len = usize::try_from(range.end.saturating_sub(range.start)).map_err(|_| {
            BlobError::new(BlobErrorKind::Transport, "range too large for this machine")
        })?;
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, range.start)?;
        Ok(buf)
    }
}
