//! The artifacts database: which SOCI indexes and zTOCs the local store
//! holds, what they were built from, and when (docs/format.md §4.7).
//!
//! The reference keeps this in bbolt; nothing outside its CLI reads it, so
//! sochi keeps a JSON file (`<root>/artifacts.json`) rewritten atomically
//! under an exclusive lock on `<root>/artifacts.lock`.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sochi_format::Digest;

use crate::error::{io_err, Error, Result};
use crate::layout::write_atomic;

/// What kind of artifact an entry describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A SOCI index manifest.
    SociIndex,
    /// A zTOC.
    SociLayer,
    /// A prefetch artifact.
    SociPrefetch,
}

/// One artifact in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    /// The artifact's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: i64,
    /// Index: the image manifest digest; zTOC: the layer digest.
    pub original_digest: Digest,
    /// The image (index or manifest) digest the artifact was built from.
    pub image_digest: Digest,
    /// The image reference as the user wrote it.
    pub image_ref: String,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// Index, zTOC or prefetch.
    pub kind: ArtifactKind,
    /// Media type of the artifact.
    pub media_type: String,
    /// Index only: the config media type (v1/v2).
    #[serde(default)]
    pub artifact_type: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// zTOC only: the span size it was built with.
    #[serde(default)]
    pub span_size: u64,
    /// zTOC only: the layer's media type.
    #[serde(default)]
    pub layer_media_type: String,
    /// zTOC only: where the layer blob can be read (an OCI layout dir), if
    /// it is not in the content store.
    #[serde(default)]
    pub layer_source: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DbFile {
    version: u32,
    artifacts: Vec<ArtifactEntry>,
}

/// The artifacts database of one sochi root.
#[derive(Debug, Clone)]
pub struct ArtifactsDb {
    path: PathBuf,
    lock_path: PathBuf,
}

impl ArtifactsDb {
    /// The database under `root`.
    pub fn new(root: &Path) -> ArtifactsDb {
        ArtifactsDb {
            path: root.join("artifacts.json"),
            lock_path: root.join("artifacts.lock"),
        }
    }

    fn lock(&self) -> Result<File> {
        if let Some(dir) = self.lock_path.parent() {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(io_err("opening", &self.lock_path))?;
        file.lock().map_err(io_err("locking", &self.lock_path))?;
        Ok(file)
    }

    fn load(&self) -> Result<DbFile> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DbFile {
                version: 1,
                artifacts: Vec::new(),
            }),
            Err(e) => Err(Error::Io {
                action: "reading",
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    fn save(&self, db: &DbFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(db).map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes)
    }

    /// All entries, in insertion order.
    pub fn list(&self) -> Result<Vec<ArtifactEntry>> {
        let _lock = self.lock()?;
        Ok(self.load()?.artifacts)
    }

    /// Adds or replaces entries (same digest and kind replace).
    pub fn put(&self, entries: Vec<ArtifactEntry>) -> Result<()> {
        let _lock = self.lock()?;
        let mut db = self.load()?;
        for entry in entries {
            db.artifacts
                .retain(|e| !(e.digest == entry.digest && e.kind == entry.kind));
            db.artifacts.push(entry);
        }
        self.save(&db)
    }

    /// Removes the entries for which `remove` says true; returns them.
    pub fn remove_where(
        &self,
        remove: impl Fn(&ArtifactEntry) -> bool,
    ) -> Result<Vec<ArtifactEntry>> {
        let _lock = self.lock()?;
        let mut db = self.load()?;
        let (gone, kept): (Vec<_>, Vec<_>) = db.artifacts.into_iter().partition(|e| remove(e));
        db.artifacts = kept;
        self.save(&db)?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, kind: ArtifactKind) -> ArtifactEntry {
        ArtifactEntry {
            digest: digest.into(),
            size: 1,
            original_digest: String::new().into(),
            image_digest: String::new().into(),
            image_ref: String::new(),
            platform: "linux/amd64".into(),
            kind,
            media_type: String::new(),
            artifact_type: String::new(),
            created_at: 0,
            span_size: 0,
            layer_media_type: String::new(),
            layer_source: String::new(),
        }
    }

    #[test]
    fn put_replaces_and_remove_removes() {
        let dir = tempfile::tempdir().unwrap();
        let db = ArtifactsDb::new(dir.path());
        db.put(vec![
            entry("a", ArtifactKind::SociIndex),
            entry("b", ArtifactKind::SociLayer),
        ])
        .unwrap();
        db.put(vec![entry("a", ArtifactKind::SociIndex)]).unwrap();
        assert_eq!(db.list().unwrap().len(), 2);
        let gone = db.remove_where(|e| e.digest == "a").unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(db.list().unwrap().len(), 1);
    }
}
