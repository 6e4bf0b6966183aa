//! The SOCI indexes in the local store, for `index list`.

use serde::Serialize;
use sochi_format::{media_types, Digest, Platform};
use sochi_store::{ArtifactKind, Store};

use crate::error::{Context as _, Result};

/// Which indexes to list.
#[derive(Debug, Clone, Default)]
pub struct IndexFilter {
    /// Only those of this image reference.
    pub image_ref: Option<String>,
    /// Only those of this platform.
    pub platform: Option<Platform>,
}

/// One index in the store. Serialized as `sochi index list --json` prints
/// it.
#[derive(Debug, Clone, Serialize)]
pub struct IndexRow {
    /// The index manifest digest.
    pub digest: Digest,
    /// Its size.
    pub size: i64,
    /// The image reference it was built for.
    pub image_ref: String,
    /// The platform.
    pub platform: String,
    /// The manifest's media type.
    pub media_type: String,
    /// `v1` or `v2`.
    pub manifest_version: &'static str,
    /// When it was built (seconds since the epoch).
    pub created_at: u64,
}

/// The indexes in `store` that `filter` lets through, newest first.
pub fn list_indexes(store: &Store, filter: &IndexFilter) -> Result<Vec<IndexRow>> {
    let mut rows: Vec<IndexRow> = store
        .artifacts()
        .list()
        .context("reading the artifacts")?
        .into_iter()
        .filter(|e| e.kind == ArtifactKind::SociIndex)
        .filter(|e| filter.image_ref.as_ref().is_none_or(|r| &e.image_ref == r))
        .filter(|e| {
            filter
                .platform
                .as_ref()
                .is_none_or(|p| Platform::parse(&e.platform).is_ok_and(|q| p.matches(&q)))
        })
        .map(|e| IndexRow {
            manifest_version: if e.artifact_type == media_types::SOCI_INDEX_V2 {
                "v2"
            } else {
                "v1"
            },
            digest: e.digest,
            size: e.size,
            image_ref: e.image_ref,
            platform: e.platform,
            media_type: e.media_type,
            created_at: e.created_at,
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    Ok(rows)
}
