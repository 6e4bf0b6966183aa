//! zstd test images, made from the cached test images with Debian's skopeo
//! (1.9.3), as users make them (issue 16, docs/zstd.md):
//!
//! - [`zstd_layout`]: an OCI layout of a test image recompressed as plain
//!   zstd or as zstd:chunked, built once and cached next to the test
//!   images (`<images>/zstd/<name>-<format>-<key>`, the key hashing the
//!   source manifest digest and this file, as the oracle's cache does);
//! - [`copy_recompressed`]: `skopeo copy` of an image in a registry with
//!   zstd recompression, which keeps the image manifest's annotations (so
//!   the SOCI index annotation of a converted image) and copies no index;
//! - [`fix_diff_ids`]: skopeo 1.9's zstd:chunked writer drops a layer's
//!   trailing tar padding but keeps the config's `diff_ids`, so such an
//!   image fails every `diff_id` check (containerd's too); this recomputes
//!   them from the layers and re-points manifest and `index.json`
//!   (environment.md, "Interop notes found later"). The layers of the
//!   current test images happen to come out whole, so it changes nothing
//!   for them, but an image whose tar has padding past its end-of-archive
//!   blocks needs it; [`set_diff_ids`] writes any `diff_ids`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::images::TestImages;
use crate::layouts::{blob_path, read_json};
use crate::lazy::push_layout_exact;
use crate::process::run_ok;
use crate::registry::Registry;

/// How a layout's layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZstdFormat {
    /// `--dest-compress-format zstd`: one zstd frame per layer.
    Zstd,
    /// `--dest-compress-format zstd:chunked`, `diff_ids` fixed.
    Chunked,
}

impl ZstdFormat {
    /// skopeo's `--dest-compress-format`.
    pub fn skopeo_format(self) -> &'static str {
        match self {
            ZstdFormat::Zstd => "zstd",
            ZstdFormat::Chunked => "zstd:chunked",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ZstdFormat::Zstd => "zstd",
            ZstdFormat::Chunked => "chunked",
        }
    }
}

/// The OCI layout (tag `latest`) of test image `name` recompressed as
/// `format`, built on first use and cached; treat it as read-only.
#[track_caller]
pub fn zstd_layout(name: &str, format: ZstdFormat) -> PathBuf {
    let images = TestImages::get();
    let source = images.oci_ref(name);
    let mut hasher = Sha256::new();
    hasher.update(images.manifest_digest(name).as_bytes());
    hasher.update(include_str!("zstd.rs").as_bytes());
    let key = hex::encode(&hasher.finalize()[..8]);
    let cache = images.dir().join("zstd");
    let dest = cache.join(format!("{name}-{}-{key}", format.label()));
    if !dest.join("index.json").is_file() {
        remove_older_builds(&cache, &format!("{name}-{}-", format.label()), &dest);
    }
    let what = format!("{name} as {}", format.skopeo_format());
    crate::built::build_once(&dest, "index.json", &what, |temp| {
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-compress"])
                .args(["--dest-compress-format", format.skopeo_format()])
                .arg(&source)
                .arg(format!("oci:{}:latest", temp.display())),
        );
        if format == ZstdFormat::Chunked {
            fix_diff_ids(temp);
        }
    })
}

/// Removes builds named `<prefix><key>` of other keys (older sources or an
/// older harness) from `cache`; best effort.
fn remove_older_builds(cache: &Path, prefix: &str, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let is_older = name.to_str().is_some_and(|name| {
            name.strip_prefix(prefix)
                .is_some_and(|key| key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if is_older && path != keep {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Copies `from` to `to` (references in `registry`, `repo:tag` or
/// `repo@digest`) recompressing every layer as `format`, through an OCI
/// layout: skopeo copying within one registry reuses the blobs already
/// there (it mounts them across repositories) and does not recompress.
#[track_caller]
pub fn copy_recompressed(registry: &Registry, from: &str, to: &str, format: ZstdFormat) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => panic!("creating a temp dir: {err}"),
    };
    let layout = dir.path().join("layout");
    run_ok(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-compress"])
            .args(["--dest-compress-format", format.skopeo_format()])
            .args(registry.skopeo_args("src-"))
            .arg(format!("docker://{}", registry.reference(from)))
            .arg(format!("oci:{}:latest", layout.display())),
    );
    if format == ZstdFormat::Chunked {
        fix_diff_ids(&layout);
    }
    let (repo, tag) = to
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{to} is not repo:tag"));
    push_layout_exact(registry, &layout, repo, tag);
}

/// The image manifest of `layout`'s only `index.json` entry: its digest
/// and JSON.
#[track_caller]
pub fn layout_manifest(layout: &Path) -> (String, serde_json::Value) {
    let index = read_json(&layout.join("index.json"));
    let Some(digest) = index["manifests"][0]["digest"].as_str() else {
        panic!("{} lists no manifest: {index}", layout.display());
    };
    (digest.to_string(), read_json(&blob_path(layout, digest)))
}

/// Recomputes the config's `diff_ids` of `layout`'s only image from its
/// zstd layers, and writes config, manifest and `index.json` anew.
#[track_caller]
pub fn fix_diff_ids(layout: &Path) {
    let (_, manifest) = layout_manifest(layout);
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|layer| {
            let digest = layer["digest"].as_str().unwrap_or_default();
            uncompressed_digest(&blob_path(layout, digest))
        })
        .collect();
    set_diff_ids(layout, &diff_ids);
}

/// Gives `layout`'s only image a config with `diff_ids`, and re-points
/// its manifest and `index.json` at it.
#[track_caller]
pub fn set_diff_ids(layout: &Path, diff_ids: &[String]) {
    let (_, mut manifest) = layout_manifest(layout);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut config = read_json(&blob_path(layout, &config_digest));
    config["rootfs"]["diff_ids"] = diff_ids.to_vec().into();
    let config = write_json_blob(layout, &config);
    manifest["config"]["digest"] = config.0.into();
    manifest["config"]["size"] = config.1.into();
    write_manifest(layout, &manifest);
}

/// Writes `manifest` as a blob of `layout` and points `index.json`'s
/// only entry at it.
#[track_caller]
fn write_manifest(layout: &Path, manifest: &serde_json::Value) {
    let (digest, size) = write_json_blob(layout, manifest);
    let index_path = layout.join("index.json");
    let mut index = read_json(&index_path);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    write_file(&index_path, &json_bytes(&index));
}

/// Sets annotation `key` of layer `layer` of `layout`'s only image to
/// `value`, and re-points `index.json` at the new manifest.
#[track_caller]
pub fn set_layer_annotation(layout: &Path, layer: usize, key: &str, value: &str) {
    let (_, mut manifest) = layout_manifest(layout);
    manifest["layers"][layer]["annotations"][key] = value.into();
    write_manifest(layout, &manifest);
}

/// The zstd:chunked table of contents of layer `layer` of `layout`'s only
/// image, decoded: found by its `manifest-position` annotation.
#[track_caller]
pub fn chunked_toc(layout: &Path, layer: usize) -> serde_json::Value {
    let (_, manifest) = layout_manifest(layout);
    let descriptor = &manifest["layers"][layer];
    let position = descriptor["annotations"]["io.containers.zstd-chunked.manifest-position"]
        .as_str()
        .unwrap_or_else(|| panic!("layer {layer} is not zstd:chunked: {manifest:#}"));
    let fields: Vec<usize> = position.split(':').filter_map(|f| f.parse().ok()).collect();
    let [offset, length, ..] = fields[..] else {
        panic!("position {position:?}");
    };
    let blob = blob_path(layout, descriptor["digest"].as_str().unwrap_or_default());
    let bytes = match std::fs::read(&blob) {
        Ok(bytes) => bytes,
        Err(err) => panic!("reading {}: {err}", blob.display()),
    };
    let json = match zstd::stream::decode_all(&bytes[offset..offset + length]) {
        Ok(json) => json,
        Err(err) => panic!("decoding the table of {}: {err}", blob.display()),
    };
    match serde_json::from_slice(&json) {
        Ok(toc) => toc,
        Err(err) => panic!("parsing the table of {}: {err}", blob.display()),
    }
}

/// `sha256:` of the zstd blob at `path`, decompressed.
#[track_caller]
fn uncompressed_digest(path: &Path) -> String {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) => panic!("opening {}: {err}", path.display()),
    };
    let mut decoder = match zstd::stream::read::Decoder::new(file) {
        Ok(decoder) => decoder,
        Err(err) => panic!("decoding {}: {err}", path.display()),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match decoder.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) => panic!("decoding {}: {err}", path.display()),
        };
        hasher.update(&buffer[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

#[track_caller]
fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        Err(err) => panic!("encoding {value}: {err}"),
    }
}

/// Writes `value` as a blob of `layout`; its digest and size.
#[track_caller]
fn write_json_blob(layout: &Path, value: &serde_json::Value) -> (String, u64) {
    let bytes = json_bytes(value);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    write_file(&blob_path(layout, &digest), &bytes);
    (digest, bytes.len() as u64)
}

#[track_caller]
fn write_file(path: &Path, bytes: &[u8]) {
    if let Err(err) = std::fs::write(path, bytes) {
        panic!("writing {}: {err}", path.display());
    }
}
