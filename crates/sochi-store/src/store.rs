//! The local store of one sochi root.

use std::fs;
use std::path::{Path, PathBuf};

use crate::artifacts::ArtifactsDb;
use crate::error::{io_err, Result};
use crate::layout::OciLayout;

/// `<root>/content` (an OCI layout) plus `<root>/artifacts.json`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    content: OciLayout,
    artifacts: ArtifactsDb,
}

impl Store {
    /// Opens the store under `root`, creating it (mode 0700) if needed.
    pub fn open(root: &Path) -> Result<Store> {
        if !root.exists() {
            fs::create_dir_all(root).map_err(io_err("creating", root))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("setting permissions of", root))?;
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            content: OciLayout::create(root.join("content"))?,
            artifacts: ArtifactsDb::new(root),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content store.
    pub fn content(&self) -> &OciLayout {
        &self.content
    }

    /// The artifacts database.
    pub fn artifacts(&self) -> &ArtifactsDb {
        &self.artifacts
    }
}
