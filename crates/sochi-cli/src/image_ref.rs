//! Image references as the CLI takes them. This stage knows OCI image
//! layout directories, in skopeo's notation `oci:PATH[:TAG]`.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// An image named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory and an optional tag.
    Layout {
        /// The directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: Option<String>,
    },
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]`.
    pub fn parse(text: &str) -> Result<ImageRef> {
        let Some(rest) = text.strip_prefix("oci:") else {
            bail!(
                "{text:?}: only OCI image layouts are supported here, written oci:PATH[:TAG] \
                 (registry references come with the registry client)"
            );
        };
        if rest.is_empty() {
            bail!("{text:?}: missing the layout path after oci:");
        }
        // A tag has no '/', so the last ':' separates it only if what follows
        // is not part of a path.
        let (path, tag) = match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') && !path.is_empty() => {
                (path, (!tag.is_empty()).then(|| tag.to_string()))
            }
            _ => (rest, None),
        };
        Ok(ImageRef::Layout {
            path: PathBuf::from(path),
            tag,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Layout {
                path,
                tag: Some(tag),
            } => write!(f, "oci:{}:{tag}", path.display()),
            ImageRef::Layout { path, tag: None } => write!(f, "oci:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_refs_parse() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/img:v1").ok(),
            Some(ImageRef::Layout {
                path: "/tmp/img".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:img").ok(),
            Some(ImageRef::Layout {
                path: "img".into(),
                tag: None
            })
        );
        assert!(ImageRef::parse("docker.io/library/busybox").is_err());
        assert!(ImageRef::parse("oci:").is_err());
    }
}
