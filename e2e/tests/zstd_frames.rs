//! Multi-frame zstd layers (issue 16, `--zstd-frames`): busybox's layer
//! recompressed here as 256 KiB zstd frames (as `pzstd` cuts them) with a
//! skippable frame at the end, pushed, converted with `--zstd-frames` and
//! mounted lazily with the gzip image's files; without the flag the layer
//! gets no zTOC (the reference's behaviour) and the image mounts unpacked.
//!
//! Mounts are `LazyMount` guards and services are harness guards: each is
//! stopped on drop, also when a test fails.

use std::io::Read as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};
use sochi_e2e::layouts::{blob_path, read_json};
use sochi_e2e::lazy::{oracle_rootfs, push_layout_exact, LazyMount};
use sochi_e2e::oracle::assert_trees_equal;
use sochi_e2e::{Registry, Sochi, TestImages};

/// The frame size `pzstd` and zstd:chunked writers use is of this order.
const FRAME: usize = 256 << 10;

/// Writes `bytes` as a blob of `layout`; returns its digest.
fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    std::fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// `tar` as zstd frames of `FRAME` bytes each, then a skippable frame.
fn frames(tar: &[u8]) -> Vec<u8> {
    let mut blob = Vec::new();
    for piece in tar.chunks(FRAME) {
        blob.extend(zstd::bulk::compress(piece, 3).unwrap());
    }
    let note = b"sochi e2e: a trailing skippable frame";
    blob.extend(0x184D_2A50u32.to_le_bytes());
    blob.extend((note.len() as u32).to_le_bytes());
    blob.extend(note);
    blob
}

/// An OCI layout in `dir` of busybox with its layer as multi-frame zstd
/// (the same tar, so the config and its `diff_ids` are kept); returns the
/// layer digest.
fn busybox_in_frames(dir: &Path) -> String {
    let source = TestImages::get().layout("busybox");
    let index = read_json(&source.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let mut manifest = read_json(&blob_path(&source, manifest_digest));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest:#}");
    let gzip_digest = layers[0]["digest"].as_str().unwrap().to_string();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();

    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config = std::fs::read(blob_path(&source, &config_digest)).unwrap();
    write_blob(dir, &config);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(blob_path(&source, &gzip_digest)).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    assert!(tar.len() > 4 * FRAME, "busybox is {} bytes", tar.len());
    let blob = frames(&tar);
    let layer = write_blob(dir, &blob);
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    manifest["layers"][0]["digest"] = layer.clone().into();
    manifest["layers"][0]["size"] = blob.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = write_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    layer
}

/// With `--zstd-frames` the layer is indexed at its frames and mounts
/// lazily, its files those of the gzip image; without it `convert` skips
/// the layer as the reference does (leaving no zTOC at all, so nothing to
/// convert) and the image mounts unpacked, saying why.
#[test]
fn multi_frame_zstd_layer_mounts_lazily_only_with_the_flag() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let layer = busybox_in_frames(&layout);
    let image = push_layout_exact(&registry, &layout, "bb-frames", "latest");

    let refused = sochi.run_fail([
        "convert",
        "--min-layer-size",
        "0",
        &image,
        &registry.reference("bb-frames:plain"),
    ]);
    assert!(
        refused.stderr.contains("no ztocs created"),
        "{}",
        refused.stderr
    );
    let unpacked = LazyMount::mount(&sochi, &image, &[]);
    let state = unpacked.state().clone();
    assert_eq!(state.layers.len(), 1, "{:#}", state.json);
    assert_eq!(state.layers[0].mode, "unpacked", "{:#}", state.json);
    assert!(
        state.layers[0]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("zstd"),
        "{:#}",
        state.json
    );
    unpacked.unmount();

    let converted = registry.reference("bb-frames:soci");
    let output = sochi.run([
        "convert",
        "--zstd-frames",
        "--min-layer-size",
        "0",
        "--span-size",
        "1048576",
        &image,
        &converted,
    ]);
    assert!(output.stdout.contains(", 1 ztocs"), "{}", output.stdout);
    let mount = LazyMount::mount(&sochi, &converted, &[]);
    let state = mount.state().clone();
    assert!(state.index.is_some(), "{:#}", state.json);
    assert_eq!(state.layers.len(), 1, "{:#}", state.json);
    assert_eq!(state.layers[0].digest, layer, "{:#}", state.json);
    assert_eq!(state.layers[0].mode, "lazy", "{:#}", state.json);
    assert_trees_equal(&oracle_rootfs("busybox"), mount.mountpoint(), &[]);
    mount.unmount();
}
