//! Image names as sochi takes them: an OCI image layout directory in
//! skopeo's notation `oci:PATH[:TAG]`, or a registry reference
//! (`registry/repo:tag`, `repo@sha256:…`, `docker.io` defaults).

use std::path::PathBuf;

use sochi_registry::Reference;

use crate::error::{Error, Result};

/// An image, in a layout or a registry.
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
            return Reference::parse(text)
                .map(ImageRef::Registry)
                .map_err(|error| Error::Reference {
                    text: text.to_string(),
                    reason: error.to_string(),
                });
        };
        if rest.is_empty() {
            return Err(Error::Reference {
                text: text.to_string(),
                reason: "missing the layout path after oci:".into(),
            });
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
#[allow(clippy::unwrap_used)]
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
