//! Finding the SOCI index of an image manifest in a registry, as the
//! reference snapshotter does at pull time (docs/format.md §5.2, §5.3).
//!
//! In order, stopping at the first that applies:
//!
//! 1. **Explicit digest** ([`DiscoveryOptions::explicit_index`]): that index
//!    manifest, fetched by digest, whatever the pull modes say.
//! 2. Neither v1 nor v2 enabled → an error (no lazy loading).
//! 3. **v2**: the image manifest, fetched by digest from the registry; its
//!    annotation `com.amazon.soci.index-digest` names the index. No such
//!    annotation (or an empty one) → step 4. The image manifest cannot be
//!    fetched or decoded → *no index* (`Ok(None)`, as the reference ends
//!    discovery there and pulls normally; logged at `warn`).
//! 4. **v1**: the referrers of the image manifest of artifact type
//!    `application/vnd.amazon.soci.index.v1+json` (referrers API, or the
//!    `sha256-<hex>` fallback tag; see [`Client::referrers`]); the **first**
//!    one is the index.
//! 5. Nothing → `Ok(None)`.
//!
//! The index manifest is fetched by digest from the image's repository (so
//! its bytes are checked against the digest) and parsed as a
//! [`SociIndex`], which refuses config media types other than the v1 and
//! v2 index types. Beyond the reference, which trusts what it is pointed
//! at, an index reached from the image must be bound to it: found by
//! referrers, it must be a v1 index whose `subject` is the image manifest;
//! named by the v2 annotation, it must not have a `subject` naming another
//! manifest. An explicit index is taken as given (a v1 index of another
//! manifest with the same layers is usable; that is only logged).
//!
//! An `Err` means an index was named but is broken, or the registry could
//! not be asked; a caller that wants the reference's behaviour pulls the
//! image normally then too. An index that was named but is not in the
//! repository at all is [`Error::SociIndexNotFound`], apart from the
//! broken ones: copies of an image keep its annotation without the index
//! (issue 16), and `sochi-lazy` plans such an image as having none.
//!
//! zTOCs are then read with [`Client::read_blob`], which checks their size
//! and digest against the index's descriptors.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sochi_format::{annotations, media_types, Descriptor, IndexVersion, SociIndex};

use crate::client::{redact_url, Client};
use crate::error::{Error, Result};
use crate::reference::{check_digest, Reference};

/// Where [`Client::discover_soci_index`] looks for an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Look for the v2 annotation on the image manifest (default `true`).
    pub v2: bool,
    /// Look for a v1 index among the image manifest's referrers, after v2
    /// (default `true`; the reference snapshotter defaults to `false`).
    pub v1: bool,
    /// Use this index manifest digest and look nowhere else.
    pub explicit_index: Option<String>,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            v2: true,
            v1: true,
            explicit_index: None,
        }
    }
}

/// How a [`DiscoveredIndex`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundBy {
    /// The digest given in [`DiscoveryOptions::explicit_index`].
    Explicit,
    /// The image manifest's `com.amazon.soci.index-digest` annotation (v2).
    V2Annotation,
    /// The first v1 index among the image manifest's referrers (referrers
    /// API or fallback tag).
    Referrers,
}

impl fmt::Display for FoundBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FoundBy::Explicit => "explicit index digest",
            FoundBy::V2Annotation => "v2 annotation",
            FoundBy::Referrers => "referrers",
        })
    }
}

impl FoundBy {
    /// Where the index came from, for errors.
    fn origin(self, image: &str) -> String {
        match self {
            FoundBy::Explicit => format!("given explicitly for image manifest {image}"),
            FoundBy::V2Annotation => format!(
                "named by the {} annotation of image manifest {image}",
                annotations::INDEX_DIGEST
            ),
            FoundBy::Referrers => format!("listed as a SOCI v1 referrer of image manifest {image}"),
        }
    }
}

/// A SOCI index found for an image manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredIndex {
    /// The index manifest: its media type (as the registry served it),
    /// digest and size, and its version's artifact type.
    pub descriptor: Descriptor,
    /// v1 or v2 (from the index's config media type).
    pub version: IndexVersion,
    /// The parsed index.
    pub index: SociIndex,
    /// The index manifest exactly as served (they hash to the digest).
    pub bytes: Vec<u8>,
    /// How it was found.
    pub found_by: FoundBy,
}

/// What step 3 (v2) found.
enum V2Lookup {
    /// The annotation names this index digest.
    Named(String),
    /// No annotation (or an empty one): on to v1.
    NoAnnotation,
    /// The image manifest could not be fetched or decoded: discovery ends.
    Unreadable,
}

/// The only part of the image manifest step 3 reads. Lenient like Go's
/// decoding into `ocispec.Manifest`: other fields are ignored.
#[derive(Deserialize)]
struct Annotated {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl Client {
    /// The SOCI index of the image manifest `image_manifest_digest` in
    /// `repo`'s repository, or `None` when it has none (see the module doc
    /// for the order and the checks).
    pub async fn discover_soci_index(
        &self,
        repo: &Reference,
        image_manifest_digest: &str,
        options: &DiscoveryOptions,
    ) -> Result<Option<DiscoveredIndex>> {
        let image = image_manifest_digest;
        check_digest(image).map_err(|reason| Error::InvalidArgument {
            what: "image manifest digest",
            detail: reason,
        })?;

        if let Some(explicit) = &options.explicit_index {
            check_digest(explicit).map_err(|reason| Error::InvalidArgument {
                what: "SOCI index digest",
                detail: reason,
            })?;
            tracing::debug!(repository = %repo.name(), index = %explicit, "using the explicit SOCI index");
            let found = self
                .fetch_soci_index(repo, explicit, None, FoundBy::Explicit, image)
                .await?;
            if let Some(subject) = found.index.subject.as_ref().filter(|s| s.digest != image) {
                tracing::warn!(
                    repository = %repo.name(),
                    index = %explicit,
                    subject = %subject.digest,
                    image,
                    "the explicit SOCI index was built for another image manifest"
                );
            }
            return Ok(Some(found));
        }

        if !options.v1 && !options.v2 {
            return Err(Error::InvalidArgument {
                what: "discovery options",
                detail: "SOCI v1 and v2 discovery are both disabled and no index digest was given"
                    .into(),
            });
        }

        if options.v2 {
            match self.v2_lookup(repo, image).await? {
                V2Lookup::Named(digest) => {
                    let found = self
                        .fetch_soci_index(repo, &digest, None, FoundBy::V2Annotation, image)
                        .await?;
                    if let Some(subject) = &found.index.subject {
                        if subject.digest != image {
                            return Err(self.index_error(
                                repo,
                                &digest,
                                format!(
                                    "{}, but its subject is {}",
                                    FoundBy::V2Annotation.origin(image),
                                    subject.digest
                                ),
                            ));
                        }
                    }
                    return Ok(Some(found));
                }
                V2Lookup::NoAnnotation => {}
                V2Lookup::Unreadable => return Ok(None),
            }
        }

        if options.v1 {
            return self.v1_lookup(repo, image).await;
        }

        Ok(None)
    }

    /// Step 3: the v2 annotation of the image manifest, read from the
    /// registry.
    async fn v2_lookup(&self, repo: &Reference, image: &str) -> Result<V2Lookup> {
        let (_, bytes) = match self.get_manifest(&repo.with_digest(image)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    repository = %repo.name(),
                    image,
                    error = %e,
                    "cannot fetch the image manifest to look for a SOCI v2 index: no SOCI index"
                );
                return Ok(V2Lookup::Unreadable);
            }
        };
        let annotated: Annotated = match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(
                    repository = %repo.name(),
                    image,
                    error = %e,
                    "cannot decode the image manifest to look for a SOCI v2 index: no SOCI index"
                );
                return Ok(V2Lookup::Unreadable);
            }
        };
        let named = annotated
            .annotations
            .and_then(|mut a| a.remove(annotations::INDEX_DIGEST))
            .filter(|d| !d.is_empty());
        let Some(digest) = named else {
            tracing::debug!(repository = %repo.name(), image, "no SOCI v2 index annotation");
            return Ok(V2Lookup::NoAnnotation);
        };
        if let Err(reason) = check_digest(&digest) {
            let url = self.url(repo, &format!("manifests/{image}"))?;
            return Err(Error::Malformed {
                what: "image manifest",
                url: redact_url(&url),
                detail: format!(
                    "annotation {} does not hold a SOCI index digest: {reason}",
                    annotations::INDEX_DIGEST
                ),
            });
        }
        tracing::debug!(repository = %repo.name(), image, index = %digest, "SOCI v2 index annotation");
        Ok(V2Lookup::Named(digest))
    }

    /// Step 4: the first v1 referrer of the image manifest, which must be
    /// a v1 index whose subject is that manifest.
    async fn v1_lookup(&self, repo: &Reference, image: &str) -> Result<Option<DiscoveredIndex>> {
        let referrers = self
            .referrers(repo, image, Some(media_types::SOCI_INDEX_V1))
            .await?;
        tracing::debug!(repository = %repo.name(), image, count = referrers.len(), "SOCI v1 referrers");
        let Some(first) = referrers.into_iter().next() else {
            return Ok(None);
        };
        check_digest(&first.digest).map_err(|reason| {
            self.index_error(
                repo,
                &first.digest,
                format!("{}, but: {reason}", FoundBy::Referrers.origin(image)),
            )
        })?;
        let found = self
            .fetch_soci_index(repo, &first.digest, Some(&first), FoundBy::Referrers, image)
            .await?;
        if found.version != IndexVersion::V1 {
            return Err(self.index_error(
                repo,
                &first.digest,
                format!("{}, but it is a v2 index", FoundBy::Referrers.origin(image)),
            ));
        }
        let subject = found.index.subject.as_ref().map(|s| s.digest.as_str());
        if subject != Some(image) {
            let has = match subject {
                Some(other) => format!("its subject is {other}"),
                None => "it has no subject".to_string(),
            };
            return Err(self.index_error(
                repo,
                &first.digest,
                format!("{}, but {has}", FoundBy::Referrers.origin(image)),
            ));
        }
        Ok(Some(found))
    }

    /// Fetches and parses the index manifest `digest` from `repo`'s
    /// repository; with `expected` (a referrer's descriptor), its size must
    /// match too.
    async fn fetch_soci_index(
        &self,
        repo: &Reference,
        digest: &str,
        expected: Option<&Descriptor>,
        found_by: FoundBy,
        image: &str,
    ) -> Result<DiscoveredIndex> {
        let url = self.url(repo, &format!("manifests/{digest}"))?;
        let (fetched, bytes) = match self.get_manifest(&repo.with_digest(digest)).await {
            Ok(found) => found,
            Err(e) if e.is_not_found() => {
                return Err(Error::SociIndexNotFound {
                    url: redact_url(&url),
                    digest: digest.to_string(),
                    found_by,
                    origin: found_by.origin(image),
                    repository: repo.name(),
                });
            }
            Err(e) => return Err(e),
        };
        if let Some(expected) = expected {
            if i64::try_from(bytes.len()) != Ok(expected.size) {
                return Err(Error::SizeMismatch {
                    what: "SOCI index",
                    url: redact_url(&url),
                    expected: u64::try_from(expected.size).unwrap_or(0),
                    actual: bytes.len() as u64,
                });
            }
        }
        let index = SociIndex::from_bytes(&bytes).map_err(|source| Error::Format {
            url: redact_url(&url),
            source,
        })?;
        let version = index.version;
        tracing::debug!(repository = %repo.name(), index = digest, ?version, %found_by, "fetched the SOCI index");
        Ok(DiscoveredIndex {
            descriptor: Descriptor {
                media_type: fetched.media_type,
                digest: fetched.digest,
                size: fetched.size,
                artifact_type: Some(version.media_type().to_string()),
                ..Descriptor::default()
            },
            version,
            index,
            bytes,
            found_by,
        })
    }

    /// An error about the index manifest `digest` in `repo`.
    fn index_error(&self, repo: &Reference, digest: &str, detail: String) -> Error {
        let url = self
            .url(repo, &format!("manifests/{digest}"))
            .map(|u| redact_url(&u))
            .unwrap_or_else(|_| format!("{}@{digest}", repo.name()));
        Error::Malformed {
            what: "SOCI index",
            url,
            detail,
        }
    }
}
