//! An OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`): the local content store of sochi and the
//! `oci:PATH[:TAG]` images that `create` and `convert` read and write.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use sochi_format::{media_types, Descriptor, ImageIndex, Sha256Digest};

use crate::error::{io_err, Error, Result};

/// The annotation that names a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// An OCI image layout directory.
#[derive(Clone, Debug)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (it must have an `oci-layout` file).
    pub fn open(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let root = root.into();
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            return Err(Error::NotFound {
                layout: root,
                detail: "not an OCI image layout (no oci-layout file)".to_string(),
            });
        }
        Ok(OciLayout { root })
    }

    /// Opens a layout, creating an empty one if the directory has none.
    pub fn create(root: impl Into<PathBuf>) -> Result<OciLayout> {
        let root = root.into();
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            write_atomic(&marker, OCI_LAYOUT)?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let empty = ImageIndex {
                schema_version: 2,
                media_type: media_types::OCI_INDEX.to_string(),
                manifests: Some(Vec::new()),
                ..ImageIndex::default()
            };
            write_atomic(&index, &empty.to_go_json())?;
        }
        Ok(OciLayout { root })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a blob for streaming (not verified: the reader verifies).
    pub fn open_blob(&self, digest: &Sha256Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::BlobNotFound {
                    layout: self.root.clone(),
                    digest: digest.to_string(),
                }
            } else {
                Error::Io {
                    action: "opening",
                    path,
                    source,
                }
            }
        })
    }

    /// Reads a whole blob and checks its digest.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>> {
        let mut file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("reading", self.blob_path(digest)))?;
        let actual = Sha256Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                layout: self.root.clone(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Reads the blob a descriptor points at, checking digest and size.
    pub fn read_descriptor(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let digest = descriptor.sha256().map_err(|source| Error::Format {
            path: self.root.clone(),
            source,
        })?;
        let bytes = self.read_blob(&digest)?;
        if bytes.len() as i64 != descriptor.size {
            return Err(Error::Corrupt {
                path: self.blob_path(&digest),
                detail: format!(
                    "blob is {} bytes, its descriptor says {}",
                    bytes.len(),
                    descriptor.size
                ),
            });
        }
        Ok(bytes)
    }

    /// Stores bytes as a blob (no-op if present) and returns their digest.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<Sha256Digest> {
        let digest = Sha256Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.is_file() {
            write_atomic(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Copies a blob from a reader, verifying that it hashes to `digest`;
    /// nothing is left behind on mismatch.
    pub fn write_blob_from(&self, digest: &Sha256Digest, reader: &mut dyn Read) -> Result<u64> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return fs::metadata(&path)
                .map(|m| m.len())
                .map_err(io_err("inspecting", &path));
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(io_err("creating a temp file in", &dir))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(io_err("reading the source of", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(io_err("writing", tmp.path().to_path_buf()))?;
            total += n as u64;
        }
        let actual = Sha256Digest(hasher.finalize().into());
        if actual != *digest {
            return Err(Error::DigestMismatch {
                layout: self.root.clone(),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        tmp.persist(&path).map_err(|e| Error::Io {
            action: "renaming into",
            path: path.clone(),
            source: e.error,
        })?;
        Ok(total)
    }

    /// Removes a blob (absent is fine).
    pub fn remove_blob(&self, digest: &Sha256Digest) -> Result<()> {
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io {
                action: "removing",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// The top-level `index.json`.
    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        ImageIndex::from_json(&bytes).map_err(|source| Error::Format { path, source })
    }

    /// Replaces `index.json` (Go-canonical JSON, written atomically).
    pub fn set_index(&self, index: &ImageIndex) -> Result<()> {
        write_atomic(&self.root.join("index.json"), &index.to_go_json())
    }

    /// The descriptor of an image in `index.json`: the one tagged `tag`, or
    /// with no tag the only one (or the one tagged `latest`).
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let manifests = index.manifests();
        let tagged = |t: &str| {
            manifests
                .iter()
                .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(t))
                .cloned()
        };
        let found = match tag {
            Some(t) => tagged(t),
            None if manifests.len() == 1 => manifests.first().cloned(),
            None => tagged("latest"),
        };
        found.ok_or_else(|| Error::NotFound {
            layout: self.root.clone(),
            detail: match tag {
                Some(t) => format!("no image tagged {t:?} in index.json"),
                None => format!(
                    "index.json lists {} images and none is tagged \"latest\": name a tag",
                    manifests.len()
                ),
            },
        })
    }
}

/// Writes a file through a temp file in the same directory and a rename, so
/// readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(&dir).map_err(io_err("creating a temp file in", &dir))?;
    tmp.write_all(bytes).map_err(io_err("writing", path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        action: "renaming into",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// A layout being written as one piece: a new destination is built in a
/// staging directory beside it and renamed into place by
/// [`commit`](Self::commit), so it appears whole or not at all; dropped
/// uncommitted, the staging directory goes. An existing layout is written
/// in place (blobs are content-addressed, and `index.json` is replaced
/// atomically, last).
#[derive(Debug)]
pub struct StagedLayout {
    target: PathBuf,
    staging: Option<PathBuf>,
    committed: bool,
}

impl StagedLayout {
    /// Prepares to write the layout at `target`.
    pub fn new(target: &Path) -> Result<StagedLayout> {
        let is_layout = target.join("oci-layout").is_file();
        let is_empty_dir = fs::read_dir(target).is_ok_and(|mut d| d.next().is_none());
        if is_layout || (target.exists() && !is_empty_dir) {
            if !is_layout {
                return Err(Error::NotFound {
                    layout: target.to_path_buf(),
                    detail: "exists and is neither an OCI image layout nor empty".to_string(),
                });
            }
            return Ok(StagedLayout {
                target: target.to_path_buf(),
                staging: None,
                committed: false,
            });
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "layout".into());
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
        let staging = parent.join(format!(".{name}.sochi-partial-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err("removing", &staging))?;
        }
        Ok(StagedLayout {
            target: target.to_path_buf(),
            staging: Some(staging),
            committed: false,
        })
    }

    /// Where to write now.
    pub fn work_dir(&self) -> &Path {
        self.staging.as_deref().unwrap_or(&self.target)
    }

    /// Puts a staged layout in place (a no-op for one written in place).
    pub fn commit(mut self) -> Result<()> {
        if let Some(staging) = &self.staging {
            fs::rename(staging, &self.target).map_err(io_err("renaming into", &self.target))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedLayout {
    fn drop(&mut self) {
        if let (false, Some(staging)) = (self.committed, &self.staging) {
            let _ = fs::remove_dir_all(staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_layout_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        {
            let staged = StagedLayout::new(&target).unwrap();
            let layout = OciLayout::create(staged.work_dir()).unwrap();
            layout.write_blob(b"half").unwrap();
            // Dropped: a failure.
        }
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let staged = StagedLayout::new(&target).unwrap();
        OciLayout::create(staged.work_dir()).unwrap();
        staged.commit().unwrap();
        assert!(OciLayout::open(&target).is_ok());
        // An existing layout is written in place.
        let again = StagedLayout::new(&target).unwrap();
        assert_eq!(again.work_dir(), target);
        drop(again);
        assert!(target.join("oci-layout").is_file());
        // An empty directory is replaced whole.
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let staged = StagedLayout::new(&empty).unwrap();
        assert_ne!(staged.work_dir(), empty);
        OciLayout::create(staged.work_dir()).unwrap();
        staged.commit().unwrap();
        assert!(empty.join("oci-layout").is_file());
        // Anything else is not touched.
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("file"), b"x").unwrap();
        assert!(StagedLayout::new(&other).is_err());
    }

    #[test]
    fn blobs_round_trip_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).unwrap();
        let d = layout.write_blob(b"hello").unwrap();
        assert_eq!(layout.read_blob(&d).unwrap(), b"hello");
        fs::write(layout.blob_path(&d), b"tampered").unwrap();
        assert!(matches!(
            layout.read_blob(&d),
            Err(Error::DigestMismatch { .. })
        ));
        let wrong = Sha256Digest::of(b"other");
        assert!(layout.write_blob_from(&wrong, &mut &b"hello"[..]).is_err());
        assert!(!layout.contains(&wrong));
    }

    #[test]
    fn resolve_finds_tags() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/image");
        let layout = OciLayout::open(fixture).unwrap();
        let d = layout.resolve(Some("latest")).unwrap();
        assert_eq!(d.size, 714);
        assert!(layout.resolve(Some("nope")).is_err());
        assert_eq!(layout.resolve(None).unwrap(), d);
    }
}
