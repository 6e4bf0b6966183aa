//! containerd's label names and the values a pull gives them: the
//! remote-snapshot labels a snapshotter reads on `Prepare` (defined once,
//! in `sochi_format::snapshot_labels`, docs/format.md §6.2), the
//! garbage-collection references between image content and snapshots, and
//! chain IDs.

use std::collections::HashMap;

use sochi_format::{Descriptor, Sha256Digest};

use sochi_format::snapshot_labels as labels;

/// When containerd's garbage collector may drop a lease (RFC 3339).
pub(crate) const GC_EXPIRE: &str = "containerd.io/gc.expire";
/// On a manifest: its config blob.
pub(crate) const GC_REF_CONTENT_CONFIG: &str = "containerd.io/gc.ref.content.config";
/// On a manifest, + `<index>`: a layer blob.
pub(crate) const GC_REF_CONTENT_LAYER_PREFIX: &str = "containerd.io/gc.ref.content.l.";
/// On a config, + `<snapshotter>`: the image's top snapshot (chain ID).
pub(crate) const GC_REF_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";
/// On a layer blob: its uncompressed digest (diff ID), as containerd's
/// unpacker sets it.
pub(crate) const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// The chain IDs of layers with these diff IDs, bottom first (OCI image
/// spec, "Layer ChainID"): `chain[0] = diff[0]`, `chain[i] =
/// sha256(chain[i-1] + " " + diff[i])`. They name the committed snapshots.
///
/// ```
/// let diff_ids = ["sha256:aa".to_string(), "sha256:bb".to_string()];
/// let chain = sochi_containerd::chain_ids(&diff_ids);
/// assert_eq!(chain[0], "sha256:aa");
/// assert_eq!(chain[1], sochi_format::Sha256Digest::of(b"sha256:aa sha256:bb").to_string());
/// ```
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Sha256Digest::of(format!("{parent} {diff_id}").as_bytes()).to_string(),
        };
        chain.push(next);
    }
    chain
}

/// The value of [`labels::IMAGE_LAYERS`] for the first of `layers` (pass
/// the layer and those above it): their digests, comma-separated, as many
/// as fit in [`labels::MAX_LABEL_SIZE`] with the key, as containerd's `getLayers`
/// cuts it.
pub fn image_layers_label(layers: &[Descriptor]) -> String {
    let mut value = String::new();
    for layer in layers {
        let extra = usize::from(!value.is_empty()) + layer.digest.len();
        if labels::IMAGE_LAYERS.len() + value.len() + extra > labels::MAX_LABEL_SIZE {
            break;
        }
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str(&layer.digest);
    }
    value
}

/// The labels of `Prepare` for layer `index` of an image.
pub(crate) fn snapshot_labels(
    image_ref: &str,
    manifest_digest: &str,
    layers: &[Descriptor],
    index: usize,
    chain_id: &str,
) -> HashMap<String, String> {
    let layer = &layers[index];
    HashMap::from([
        (labels::TARGET.to_string(), chain_id.to_string()),
        (labels::IMAGE_REF.to_string(), image_ref.to_string()),
        (
            labels::MANIFEST_DIGEST.to_string(),
            manifest_digest.to_string(),
        ),
        (labels::LAYER_DIGEST.to_string(), layer.digest.to_string()),
        (
            labels::IMAGE_LAYERS.to_string(),
            image_layers_label(&layers[index..]),
        ),
        (labels::SOCI_LAYER_SIZE.to_string(), layer.size.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: usize) -> Descriptor {
        Descriptor::of(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            n.to_string().as_bytes(),
        )
    }

    #[test]
    fn chain_of_one_layer_is_its_diff_id() {
        assert_eq!(chain_ids(&["sha256:11".into()]), vec!["sha256:11"]);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn chain_ids_match_sha256sum() {
        // printf 'sha256:aaa… sha256:bbb…' | sha256sum
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let chain = chain_ids(&[a.clone(), b]);
        assert_eq!(chain[0], a);
        assert_eq!(
            chain[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }

    #[test]
    fn image_layers_label_lists_this_layer_and_those_above() {
        let layers: Vec<Descriptor> = (0..3).map(layer).collect();
        let labels = snapshot_labels("r/x:1", "sha256:m", &layers, 1, "sha256:c");
        assert_eq!(
            labels[labels::IMAGE_LAYERS],
            format!("{},{}", layers[1].digest, layers[2].digest)
        );
        assert_eq!(labels[labels::LAYER_DIGEST], layers[1].digest);
        assert_eq!(labels[labels::TARGET], "sha256:c");
        assert_eq!(labels[labels::SOCI_LAYER_SIZE], layers[1].size.to_string());
    }

    #[test]
    fn image_layers_label_is_cut_to_the_label_size_limit() {
        let layers: Vec<Descriptor> = (0..100).map(layer).collect();
        let value = image_layers_label(&layers);
        assert!(labels::IMAGE_LAYERS.len() + value.len() <= labels::MAX_LABEL_SIZE);
        // 71 bytes per digest with its comma: (4096 - 39 + 1) / 72 = 56.
        let listed = value.split(',').count();
        assert_eq!(
            listed,
            (labels::MAX_LABEL_SIZE - labels::IMAGE_LAYERS.len() + 1) / 72
        );
        assert!(value.split(',').zip(&layers).all(|(d, l)| d == l.digest));
    }
}
