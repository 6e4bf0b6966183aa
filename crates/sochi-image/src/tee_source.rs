//! A source that keeps a copy of every blob it reads in an OCI layout, so
//! converting a registry image into a layout downloads each layer once: the
//! stream that feeds the indexer also fills the destination.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};
use sochi_build::{ImageSource, SourceError};
use sochi_format::{Descriptor, Sha256Digest};
use sochi_store::OciLayout;

/// Wraps a source; blobs read whole or streamed to their end land in `dst`.
pub struct TeeToLayout<'a> {
    /// Where blobs come from.
    pub inner: &'a dyn ImageSource,
    /// Where copies go.
    pub dst: OciLayout,
}

impl ImageSource for TeeToLayout<'_> {
    fn read_blob(&self, descriptor: &Descriptor) -> Result<Vec<u8>, SourceError> {
        let bytes = self.inner.read_blob(descriptor)?;
        self.dst.write_blob(&bytes)?;
        Ok(bytes)
    }

    fn open_blob(&self, descriptor: &Descriptor) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let digest = descriptor.sha256()?;
        let reader = self.inner.open_blob(descriptor)?;
        if self.dst.contains(&digest) {
            return Ok(reader);
        }
        let path = self.dst.blob_path(&digest);
        let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let file = tempfile::NamedTempFile::new_in(&dir)?;
        Ok(Box::new(TeeReader {
            inner: reader,
            file: Some(file),
            hasher: Sha256::new(),
            expected: digest,
            path,
        }))
    }

    fn has_blob(&self, descriptor: &Descriptor) -> bool {
        self.inner.has_blob(descriptor)
    }

    fn verifies_digests(&self) -> bool {
        self.inner.verifies_digests()
    }
}

/// Copies what it reads into a temp file, renamed into place at the end of
/// the stream if the bytes hash to the expected digest (else dropped).
struct TeeReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    file: Option<tempfile::NamedTempFile>,
    hasher: Sha256,
    expected: Sha256Digest,
    path: std::path::PathBuf,
}

impl Read for TeeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let Some(file) = self.file.as_mut() else {
            return Ok(n);
        };
        if n > 0 {
            self.hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            return Ok(n);
        }
        let actual = Sha256Digest(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(file) = self.file.take() {
            if actual == self.expected {
                file.persist(&self.path).map_err(|e| e.error)?;
            }
        }
        Ok(0)
    }
}
