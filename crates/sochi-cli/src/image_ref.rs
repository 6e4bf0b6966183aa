//! Image references as the CLI takes them: an OCI image layout directory in
//! skopeo's notation `oci:PATH[:TAG]`, or a registry reference
//! (`registry/repo:tag`, `repo@sha256:…`, `docker.io` defaults).

use std::path::PathBuf;

use anyhow::{bail, Result};
use sochi_registry::Reference;

/// An image named on the command line.
#[derive(Debug, Clone)]
pub enum ImageRef {
    /// An OCI image layout directory and an optional tag.
    Layout {
        /// The directory.
        path: PathBuf,
        /// The tag (`org.opencontainers.image.ref.name`).
        tag: Option<String>,
    },
    /// An image in a registry.
    Registry(Reference),
}

impl ImageRef {
    /// Parses `oci:PATH[:TAG]` or a registry reference.
    pub fn parse(text: &str) -> Result<ImageRef> {
        let Some(rest) = text.strip_prefix("oci:") else {
            return Ok(ImageRef::Registry(Reference::parse(text)?));
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
            ImageRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_refs_parse() {
        let ImageRef::Layout { path, tag } = ImageRef::parse("oci:/tmp/img:v1").unwrap() else {
            panic!("not a layout")
        };
        assert_eq!((path, tag), ("/tmp/img".into(), Some("v1".into())));
        let ImageRef::Layout { path, tag } = ImageRef::parse("oci:img").unwrap() else {
            panic!("not a layout")
        };
        assert_eq!((path, tag), ("img".into(), None));
        assert!(ImageRef::parse("oci:").is_err());
    }

    #[test]
    fn registry_refs_parse() {
        let ImageRef::Registry(r) = ImageRef::parse("127.0.0.1:5000/busybox:latest").unwrap()
        else {
            panic!("not a registry ref")
        };
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "busybox");
    }
}
