//! `push`: publish the v1 SOCI index of each selected platform of an image
//! (config `{}`, zTOCs, index manifest) into the image's repository, found
//! through the referrers API or its fallback tag (docs/format.md §5.1).
//!
//! Blobs go first and the index manifest last, so a registry never holds an
//! index that points at missing blobs.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use sochi_build::{select_manifests, PlatformSelection};
use sochi_format::{media_types, Descriptor, Digest, Sha256Digest, SociIndex, EMPTY_CONFIG};
use sochi_registry::{PushBlob, Reference, ReferrerPush};
use sochi_store::{ArtifactEntry, ArtifactKind, Store};

use crate::error::{Context as _, Error, Result};
use crate::open::OpenedImage;
use crate::registry::Registry;

/// What to do when the registry already has a SOCI index for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingIndex {
    /// Say so and push anyway.
    Warn,
    /// Don't push.
    Skip,
    /// Push without a word.
    Allow,
}

/// What `push` does.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// The image in its registry.
    pub reference: Reference,
    /// Which platforms.
    pub selection: PlatformSelection,
    /// When the registry has an index already.
    pub existing: ExistingIndex,
    /// Blobs uploaded at once.
    pub max_concurrent_uploads: usize,
}

/// One index `push` handled. Serialized as `sochi push --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The SOCI index manifest digest.
    pub index: Digest,
    /// The image manifest it indexes.
    pub manifest: Digest,
    /// The platform.
    pub platform: String,
    /// Whether it was pushed.
    pub pushed: bool,
    /// `referrers-api`, `fallback-tag`, or `skipped`.
    pub via: &'static str,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs the registry had already.
    pub blobs_present: usize,
    /// The digests of the indexes the registry had for the manifest
    /// before (with [`ExistingIndex::Warn`], the caller says so). Not in
    /// the JSON.
    #[serde(skip)]
    pub existing: Vec<Digest>,
}

/// Pushes the newest v1 index in `store` of each selected platform of
/// `opened` (a registry image).
pub fn push_indexes(
    store: &Store,
    opened: &OpenedImage,
    request: &PushRequest,
) -> Result<Vec<PushReport>> {
    let reference = &request.reference;
    let Some(registry) = opened.registry.clone() else {
        return Err(Error::Invalid(
            "push takes a registry reference, not an OCI layout".into(),
        ));
    };
    let manifests = select_manifests(opened.source.as_ref(), &opened.image, &request.selection)
        .with_context(|| format!("selecting the platforms of {reference}"))?;
    let entries = store.artifacts().list().context("reading the artifacts")?;
    let mut reports = Vec::new();
    for manifest in &manifests {
        let platform = manifest.platform.to_spec_string();
        let Some(entry) = newest_v1_index(&entries, &manifest.descriptor.digest) else {
            return Err(Error::NoLocalIndex {
                image: reference.to_string(),
                platform,
                manifest: manifest.descriptor.digest.to_string(),
            });
        };
        let index_digest = Sha256Digest::parse(&entry.digest)
            .with_context(|| format!("the artifacts' index digest {:?}", entry.digest))?;
        let index_bytes = store
            .content()
            .read_blob(&index_digest)
            .with_context(|| format!("reading index {} from the local store", entry.digest))?;
        let index = SociIndex::from_bytes(&index_bytes)
            .with_context(|| format!("decoding index {}", entry.digest))?;
        let subject = manifest.descriptor.clone();

        let existing = registry
            .block_on(registry.client.referrers(
                reference,
                &subject.digest,
                Some(media_types::SOCI_INDEX_V1),
            ))
            .with_context(|| format!("listing the SOCI indexes of {}", subject.digest))?;
        if !existing.is_empty() && request.existing == ExistingIndex::Skip {
            reports.push(PushReport {
                index: entry.digest.clone(),
                manifest: subject.digest.clone(),
                platform,
                pushed: false,
                via: "skipped",
                blobs_uploaded: 0,
                blobs_present: 0,
                existing: existing.iter().map(|d| d.digest.clone()).collect(),
            });
            continue;
        }

        // Blobs first: the config, then every zTOC (and prefetch artifact).
        let outcomes = push_index_blobs(
            &registry,
            store,
            &index,
            &entry.digest,
            reference,
            request.max_concurrent_uploads,
        )?;
        let uploaded = outcomes
            .iter()
            .filter(|o| !matches!(o, PushBlob::Exists))
            .count();

        // Then the index manifest, and the referrer link.
        let via = registry
            .block_on(registry.client.push_referrer(
                reference,
                &index_bytes,
                media_types::OCI_MANIFEST,
                &subject,
                media_types::SOCI_INDEX_V1,
                &index.annotations,
            ))
            .with_context(|| format!("pushing SOCI index {}", entry.digest))?;
        reports.push(PushReport {
            index: entry.digest.clone(),
            manifest: subject.digest.clone(),
            platform,
            pushed: true,
            via: match via {
                ReferrerPush::Api => "referrers-api",
                ReferrerPush::FallbackTag => "fallback-tag",
            },
            blobs_uploaded: uploaded,
            blobs_present: outcomes.len() - uploaded,
            existing: existing.iter().map(|d| d.digest.clone()).collect(),
        });
    }
    Ok(reports)
}

/// The newest v1 index the store has built for the image manifest
/// `manifest`.
fn newest_v1_index<'a>(
    entries: &'a [ArtifactEntry],
    manifest: &Digest,
) -> Option<&'a ArtifactEntry> {
    entries
        .iter()
        .filter(|e| {
            e.kind == ArtifactKind::SociIndex
                && e.original_digest == *manifest
                && e.artifact_type == media_types::SOCI_INDEX_V1
        })
        .max_by_key(|e| e.created_at)
}

/// Uploads the blobs an index points at: its config, then every zTOC (and
/// prefetch artifact), read from the local store. One outcome per blob.
fn push_index_blobs(
    registry: &Registry,
    store: &Store,
    index: &SociIndex,
    index_digest: &Digest,
    reference: &Reference,
    max_concurrent_uploads: usize,
) -> Result<Vec<PushBlob>> {
    let mut blobs: Vec<(Descriptor, Vec<u8>)> =
        vec![(index.config_descriptor(), EMPTY_CONFIG.to_vec())];
    for d in &index.blobs {
        let digest = d
            .sha256()
            .with_context(|| format!("blob {} of index {}", d.digest, index_digest))?;
        let bytes = store.content().read_blob(&digest).with_context(|| {
            format!(
                "reading {} of index {} from the local store",
                d.digest, index_digest
            )
        })?;
        blobs.push((d.clone(), bytes));
    }
    registry.block_on(
        stream::iter(blobs.into_iter().map(|(d, bytes)| {
            let client = registry.client.clone();
            let reference = reference.clone();
            async move {
                client
                    .push_blob(&reference, &d, bytes.into(), None)
                    .await
                    .with_context(|| format!("pushing blob {}", d.digest))
            }
        }))
        .buffer_unordered(max_concurrent_uploads.max(1))
        .try_collect(),
    )
}
