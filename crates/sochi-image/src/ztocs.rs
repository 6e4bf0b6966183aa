//! zTOCs on their own: building one from a local layer file, finding a
//! stored zTOC's layer blob, and listing the zTOCs in the local store.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sochi_build::{build_layer_ztoc, LayerCompression, LayerOptions};
use sochi_format::{Digest, Sha256Digest};
use sochi_store::{ArtifactKind, OciLayout, Store};

use crate::error::{Context as _, Error, Result};

/// What `ztoc build` made. Serialized as `sochi ztoc build --json` prints
/// it.
#[derive(Debug, Clone, Serialize)]
pub struct ZtocBuildReport {
    /// The zTOC's digest.
    pub digest: Digest,
    /// Its size.
    pub size: usize,
    /// The layer's size.
    pub layer_size: u64,
    /// Its spans.
    pub spans: usize,
    /// Its TOC entries.
    pub files: usize,
    /// Where it was written.
    pub output: String,
}

/// Builds the zTOC of the local layer blob `layer` (compression guessed
/// from its first bytes unless given) and writes it to `output`.
pub fn build_ztoc_file(
    layer: &Path,
    output: &Path,
    span_size: u64,
    compression: Option<LayerCompression>,
) -> Result<ZtocBuildReport> {
    let open = || File::open(layer).with_context(|| format!("opening {}", layer.display()));
    let compression = match compression {
        Some(compression) => compression,
        None => {
            let mut magic = [0u8; 4];
            let n = open()?
                .read(&mut magic)
                .with_context(|| format!("reading {}", layer.display()))?;
            LayerCompression::sniff(magic.get(..n).unwrap_or_default())
        }
    };
    let options = LayerOptions {
        span_size,
        compression,
        expect: None,
        source_verifies_digest: false,
    };
    let name = layer.display().to_string();
    let built = build_layer_ztoc(open()?, &options, &name, &|_| {})
        .with_context(|| format!("indexing {name}"))?;
    sochi_store::write_atomic(output, &built.bytes)
        .with_context(|| format!("writing {}", output.display()))?;
    Ok(ZtocBuildReport {
        digest: built.digest.into(),
        size: built.bytes.len(),
        layer_size: built.layer_size,
        spans: built.ztoc.compression.span_digests.len(),
        files: built.ztoc.toc.len(),
        output: output.display().to_string(),
    })
}

/// The layer blob of a stored zTOC: in the content store, or in the OCI
/// layout the index was built from.
pub fn stored_layer_of(store: &Store, ztoc_digest: &Sha256Digest) -> Result<PathBuf> {
    let entries = store.artifacts().list().context("reading the artifacts")?;
    let Some(entry) = entries
        .iter()
        .rev()
        .find(|e| e.kind == ArtifactKind::SociLayer && e.digest == ztoc_digest.to_string())
    else {
        return Err(Error::Invalid(format!(
            "zTOC {ztoc_digest} is not in the local store's database: name the layer with --layer"
        )));
    };
    let layer = Sha256Digest::parse(&entry.original_digest)
        .with_context(|| format!("the layer digest of zTOC {ztoc_digest}"))?;
    if store.content().contains(&layer) {
        return Ok(store.content().blob_path(&layer));
    }
    if !entry.layer_source.is_empty() {
        if let Ok(source) = OciLayout::open(&entry.layer_source) {
            if source.contains(&layer) {
                return Ok(source.blob_path(&layer));
            }
        }
    }
    Err(Error::Invalid(format!(
        "layer {layer} of zTOC {ztoc_digest} is not available locally: name it with --layer"
    )))
}

/// Which zTOCs to list.
#[derive(Debug, Clone, Default)]
pub struct ZtocFilter {
    /// Only this zTOC.
    pub ztoc_digest: Option<String>,
    /// Only those built for this image reference.
    pub image_ref: Option<String>,
}

/// One zTOC in the store. Serialized as `sochi ztoc list --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ZtocRow {
    /// The zTOC's digest.
    pub digest: Digest,
    /// Its size.
    pub size: i64,
    /// The layer it describes.
    pub layer_digest: Digest,
    /// Its span size.
    pub span_size: u64,
}

/// The zTOCs in `store` that `filter` lets through, each once, oldest
/// first.
pub fn list_ztocs(store: &Store, filter: &ZtocFilter) -> Result<Vec<ZtocRow>> {
    let mut seen = std::collections::HashSet::new();
    Ok(store
        .artifacts()
        .list()
        .context("reading the artifacts")?
        .into_iter()
        .filter(|e| e.kind == ArtifactKind::SociLayer)
        .filter(|e| filter.ztoc_digest.as_ref().is_none_or(|d| &e.digest == d))
        .filter(|e| filter.image_ref.as_ref().is_none_or(|r| &e.image_ref == r))
        .filter(|e| seen.insert(e.digest.clone()))
        .map(|e| ZtocRow {
            digest: e.digest,
            size: e.size,
            layer_digest: e.original_digest,
            span_size: e.span_size,
        })
        .collect())
}
