//! zstd:chunked layers, planned lazily from their own table of contents
//! (docs/zstd.md): no SOCI index needed. The table is located by the
//! layer's `manifest-position` annotation, fetched by one range request,
//! checked against the `manifest-checksum` annotation (the manifest is
//! content-addressed, so the table is too), decoded with a bound, parsed
//! and made into a zTOC whose spans are the chunks.
//!
//! A table that cannot serve the layer never fails the plan: the layer is
//! unpacked, with the reason. A registry that does not answer does.

use std::path::Path;
use std::sync::Arc;

use sochi_format::{
    check_toc_digest, ChunkedToc, Descriptor, TocPosition, Ztoc, ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    ZSTD_CHUNKED_MANIFEST_POSITION,
};
use sochi_registry::{Client, Reference};

use super::not_lazy::is_zstd;
use super::{load_cached, store_cached};
use crate::error::{Context as _, Result};

/// What a layer's zstd:chunked annotations make of it.
#[derive(Clone, Debug)]
pub(crate) enum ChunkedPlan {
    /// Not a zstd:chunked layer (no annotations, or not zstd).
    NotChunked,
    /// Lazy, through the zTOC made from its table of contents.
    Lazy(Arc<Ztoc>),
    /// zstd:chunked, but its table cannot serve it: why.
    Unpacked(String),
}

/// The plan of `layer` if it is zstd:chunked. The compressed table is
/// kept in `cache` under its digest.
pub(crate) async fn plan_chunked(
    client: &Client,
    reference: &Reference,
    layer: &Descriptor,
    cache: Option<&Path>,
) -> Result<ChunkedPlan> {
    let (Some(checksum), Some(position)) = (
        layer.annotations.get(ZSTD_CHUNKED_MANIFEST_CHECKSUM),
        layer.annotations.get(ZSTD_CHUNKED_MANIFEST_POSITION),
    ) else {
        return Ok(ChunkedPlan::NotChunked);
    };
    if !is_zstd(layer) {
        return Ok(ChunkedPlan::NotChunked);
    }
    let unpacked = |detail: String| {
        let why = format!("its zstd:chunked table of contents cannot serve it: {detail}");
        tracing::warn!(layer = %layer.digest, reason = %why, "zstd:chunked layer unpacked");
        Ok(ChunkedPlan::Unpacked(why))
    };
    let blob_size = u64::try_from(layer.size).unwrap_or(0);
    let position = match TocPosition::from_annotation(position, blob_size) {
        Ok(position) => position,
        Err(error) => return unpacked(sochi_format::error_chain(&error)),
    };
    let compressed = match cache.and_then(|dir| load_cached(dir, checksum)) {
        Some(bytes) => bytes,
        None => {
            let range = position.offset..position.offset + position.length;
            let bytes = client
                .get_blob_range(reference, &layer.digest, range.clone())
                .await
                .with_context(|| {
                    format!(
                        "fetching the zstd:chunked table of contents of layer {} (bytes {}..{})",
                        layer.digest, range.start, range.end
                    )
                })?;
            if let Err(error) = check_toc_digest(&bytes, checksum) {
                return unpacked(sochi_format::error_chain(&error));
            }
            if let Some(dir) = cache {
                store_cached(dir, checksum, &bytes);
            }
            bytes.to_vec()
        }
    };
    match chunked_ztoc(&compressed, position, blob_size) {
        Ok(ztoc) => {
            tracing::debug!(layer = %layer.digest, files = ztoc.toc.len(), chunks = ztoc.compression.span_digests.len(), "zstd:chunked table of contents read");
            Ok(ChunkedPlan::Lazy(Arc::new(ztoc)))
        }
        Err(detail) => unpacked(detail),
    }
}

/// The zTOC of a layer from its compressed (and checked) table.
fn chunked_ztoc(
    compressed: &[u8],
    position: TocPosition,
    blob_size: u64,
) -> std::result::Result<Ztoc, String> {
    // Written as a plain zstd frame (skopeo 1.9) or inside a skippable one.
    let frame = match compressed.get(..4) {
        Some(magic) if magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18] => {
            compressed.get(8..).unwrap_or_default()
        }
        _ => compressed,
    };
    let len = usize::try_from(position.uncompressed_length)
        .map_err(|_| "its decoded length does not fit in memory".to_string())?;
    let mut json = vec![0; len];
    let written = zstd::bulk::decompress_to_buffer(frame, &mut json[..])
        .map_err(|error| format!("zstd: {error}"))?;
    if written != len {
        return Err(format!(
            "it decodes to {written} bytes, its position annotation says {len}"
        ));
    }
    let toc = ChunkedToc::from_json(&json, position.offset)
        .map_err(|error| sochi_format::error_chain(&error))?;
    toc.to_ztoc(blob_size)
        .map_err(|error| sochi_format::error_chain(&error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_in_a_plain_or_a_skippable_frame_decode_and_bad_ones_say_why() {
        let digest = sochi_format::Sha256Digest::of(b"abc");
        let json = format!(
            r#"{{"version":1,"entries":[{{"type":"reg","name":"f","size":3,"digest":"{digest}","offset":0,"endOffset":12}}]}}"#
        );
        let plain = zstd::bulk::compress(json.as_bytes(), 3).unwrap();
        let position = TocPosition {
            offset: 12,
            length: plain.len() as u64,
            uncompressed_length: json.len() as u64,
        };
        let blob_size = 12 + plain.len() as u64;
        let ztoc = chunked_ztoc(&plain, position, blob_size).unwrap();
        assert_eq!(ztoc.toc.len(), 1);
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
        skippable.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        skippable.extend_from_slice(&plain);
        chunked_ztoc(&skippable, position, blob_size).unwrap();

        let short = TocPosition {
            uncompressed_length: json.len() as u64 + 1,
            ..position
        };
        let error = chunked_ztoc(&plain, short, blob_size).unwrap_err();
        assert!(error.contains("decodes to"), "{error}");
        let error = chunked_ztoc(b"not zstd", position, blob_size).unwrap_err();
        assert!(error.contains("zstd"), "{error}");
        let bad_json = zstd::bulk::compress(b"{\"version\":2}", 3).unwrap();
        let bad = TocPosition {
            uncompressed_length: 13,
            ..position
        };
        let error = chunked_ztoc(&bad_json, bad, blob_size).unwrap_err();
        assert!(error.contains("version 2"), "{error}");
    }
}
