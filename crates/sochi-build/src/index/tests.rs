//! Index builds with prefetch paths, checked byte for byte against the
//! reference's v1 index of the fixture image (span size 65536, min layer
//! size 0) with the prefetch descriptors the rules of docs/format.md §3.8
//! give.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use sochi_format::{ImageIndex, ImageManifest, Platform, Sha256Digest};

use super::*;
use crate::source::{select_manifests, PlatformSelection};
use crate::SourceError;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
/// The top layer of the fixture image (gnu-mixed.tar.gz).
const TOP_LAYER: &str = "sha256:e1f2a4768c5a1c9dcddc823c8ecf8e582a2dddf5ad29882dc626d6c849bc71cf";

/// Blobs by digest, in memory (also for the zstd indexer's tests).
pub(crate) struct MemorySource(pub(crate) HashMap<String, Vec<u8>>);

impl MemorySource {
    /// Every blob of the fixture image layout.
    fn fixture_image() -> MemorySource {
        let dir = Path::new(FIXTURES).join("image/blobs/sha256");
        let mut blobs = HashMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            blobs.insert(
                format!("sha256:{name}"),
                std::fs::read(entry.path()).unwrap(),
            );
        }
        MemorySource(blobs)
    }

    pub(crate) fn add(&mut self, media_type: &str, bytes: Vec<u8>) -> Descriptor {
        let descriptor = Descriptor::of(media_type, &bytes);
        self.0.insert(descriptor.digest.to_string(), bytes);
        descriptor
    }
}

impl ImageSource for MemorySource {
    fn read_blob(&self, descriptor: &Descriptor) -> std::result::Result<Vec<u8>, SourceError> {
        self.0
            .get(descriptor.digest.as_str())
            .cloned()
            .ok_or_else(|| format!("no blob {}", descriptor.digest).into())
    }

    fn open_blob(
        &self,
        descriptor: &Descriptor,
    ) -> std::result::Result<Box<dyn Read + Send + '_>, SourceError> {
        let bytes = self
            .0
            .get(descriptor.digest.as_str())
            .ok_or_else(|| format!("no blob {}", descriptor.digest))?;
        Ok(Box::new(bytes.as_slice()))
    }

    fn has_blob(&self, descriptor: &Descriptor) -> bool {
        self.0.contains_key(descriptor.digest.as_str())
    }
}

fn fixture_manifest(source: &MemorySource) -> PlatformManifest {
    let index = ImageIndex::from_json(
        &std::fs::read(Path::new(FIXTURES).join("image/index.json")).unwrap(),
    )
    .unwrap();
    let image = index.manifests()[0].clone();
    select_manifests(source, &image, &PlatformSelection::Host)
        .unwrap()
        .remove(0)
}

/// A linux/amd64 image manifest of `config` and `layers`.
pub(crate) fn linux_image(config: Descriptor, layers: Vec<Descriptor>) -> PlatformManifest {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.to_string(),
        config,
        layers: Some(layers),
        ..ImageManifest::default()
    };
    let bytes = manifest.to_go_json();
    PlatformManifest {
        descriptor: Descriptor::of(media_types::OCI_MANIFEST, &bytes),
        manifest,
        platform: Platform::parse("linux/amd64").unwrap(),
    }
}

fn options(paths: &[&str]) -> BuildOptions {
    BuildOptions {
        span_size: 65536,
        min_layer_size: 0,
        jobs: 2,
        prefetch_paths: paths.iter().map(|p| p.to_string()).collect(),
        ..BuildOptions::default()
    }
}

/// The reference's v1 index with `descriptors` (JSON) appended to its
/// `layers`.
fn reference_index_with(descriptors: &[String]) -> Vec<u8> {
    let reference =
        std::fs::read_to_string(Path::new(FIXTURES).join("index-v1/index.json")).unwrap();
    let end_of_layers = reference.find("],\"subject\"").unwrap();
    let mut expected = reference[..end_of_layers].to_string();
    for d in descriptors {
        expected.push(',');
        expected.push_str(d);
    }
    expected.push_str(&reference[end_of_layers..]);
    expected.into_bytes()
}

/// A prefetch descriptor as Go encodes it.
fn prefetch_json(artifact: &str, layer: &str) -> String {
    format!(
        r#"{{"mediaType":"application/vnd.amazon.soci.prefetch.v1+json","digest":"{}","size":{},"annotations":{{"com.amazon.soci.image-layer-digest":"{layer}"}}}}"#,
        Sha256Digest::of(artifact.as_bytes()),
        artifact.len()
    )
}

const PATHS: [&str; 8] = [
    "etc/passwd",            // 0..=0
    "/data/random-300k.bin", // 2..=6
    "many/f038",             // 8..=9
    "./data/text-700k.txt",  // 0..=2
    "data/hard",             // 6..=6
    "nope",                  // in no layer
    "dot-prefixed",          // stored as ./dot-prefixed
    "etc/",                  // stored as etc/, asked as etc
];

/// What the top layer (gnu-mixed.tar.gz, which wins every path) gets.
const TOP_ARTIFACT: &str = r#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":6},{"start_span":8,"end_span":9}]}"#;

#[test]
fn prefetch_descriptors_follow_the_reference_ztocs_byte_for_byte() {
    let source = MemorySource::fixture_image();
    let image = fixture_manifest(&source);
    let built = build_index(
        &source,
        &image,
        IndexVersion::V1,
        &options(&PATHS),
        None,
        &|_| {},
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(built.bytes.clone()).unwrap(),
        String::from_utf8(reference_index_with(&[prefetch_json(
            TOP_ARTIFACT,
            TOP_LAYER
        )]))
        .unwrap()
    );
    assert_eq!(built.prefetch.blobs.len(), 1);
    assert_eq!(built.prefetch.blobs[0].bytes, TOP_ARTIFACT.as_bytes());
    assert_eq!(built.index.prefetches().count(), 1);
    let not_found: Vec<&str> = built
        .prefetch
        .paths
        .iter()
        .filter(|p| p.found.is_none())
        .map(|p| p.path.as_str())
        .collect();
    assert_eq!(not_found, ["nope", "dot-prefixed", "etc/"]);
}

#[test]
fn reused_ztocs_give_the_same_prefetch_artifacts() {
    let source = MemorySource::fixture_image();
    let image = fixture_manifest(&source);
    // The reference's zTOCs, as a store would hand them back.
    let reference_ztocs: HashMap<String, Vec<u8>> = [
        (
            "pax-mixed.tar.gz",
            "sha256:dc323829a89243a5e5b8f9570ae038b356c8a927a8f585ccd3224173b9a4f6fb",
        ),
        (
            "plain.tar",
            "sha256:6ad41caee760fa6b41a0598ceec72e47841b319ec6390442148ab6642ce949f7",
        ),
        ("gnu-mixed.tar.gz", TOP_LAYER),
    ]
    .into_iter()
    .map(|(file, layer)| {
        let bytes = std::fs::read(Path::new(FIXTURES).join(format!("{file}.65536.ztoc"))).unwrap();
        (layer.to_string(), bytes)
    })
    .collect();
    let lookup = |layer: &Descriptor, span_size: u64| {
        let bytes = reference_ztocs.get(layer.digest.as_str())?.clone();
        let descriptor = stored_ztoc_descriptor(layer, &bytes, span_size, false).ok()?;
        Some(ReusedZtoc { descriptor, bytes })
    };
    let built = build_index(
        &source,
        &image,
        IndexVersion::V1,
        &options(&PATHS),
        Some(&lookup),
        &|_| {},
    )
    .unwrap();
    assert!(built
        .layers
        .iter()
        .all(|(_, o)| matches!(o, LayerOutcome::Reused { .. })));
    assert_eq!(
        built.bytes,
        reference_index_with(&[prefetch_json(TOP_ARTIFACT, TOP_LAYER)])
    );

    // A stored zTOC that does not decode fails the build when it is needed.
    let broken = |layer: &Descriptor, span_size: u64| {
        let descriptor = lookup(layer, span_size)?.descriptor;
        Some(ReusedZtoc {
            descriptor,
            bytes: b"not a ztoc".to_vec(),
        })
    };
    let err = build_index(
        &source,
        &image,
        IndexVersion::V1,
        &options(&PATHS),
        Some(&broken),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("the stored zTOC sha256:"),
        "{err}"
    );
}

#[test]
fn without_prefetch_paths_the_index_is_the_reference_one() {
    let source = MemorySource::fixture_image();
    let image = fixture_manifest(&source);
    let built = build_index(
        &source,
        &image,
        IndexVersion::V1,
        &options(&[]),
        None,
        &|_| {},
    )
    .unwrap();
    assert_eq!(built.bytes, reference_index_with(&[]));
    assert!(built.prefetch.blobs.is_empty() && built.prefetch.paths.is_empty());
}

/// A tar of regular files `(name, size)`.
fn tar(files: &[(&str, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, size) in files {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"14540000000");
        h[156] = b'0';
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend(std::iter::repeat_n(b'y', *size));
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn every_layer_with_ranges_gets_an_artifact_after_all_ztocs_in_layer_order() {
    let mut source = MemorySource(HashMap::new());
    let config = source.add(media_types::OCI_CONFIG, b"{}".to_vec());
    let bottom = source.add(
        media_types::OCI_LAYER_TAR,
        tar(&[("a", 600), ("shared", 10)]),
    );
    let small = source.add(media_types::OCI_LAYER_TAR, tar(&[("tiny", 1)]));
    let top = source.add(
        media_types::OCI_LAYER_TAR,
        tar(&[("b", 10), ("shared", 10)]),
    );
    let image = linux_image(config, vec![bottom.clone(), small.clone(), top.clone()]);
    let mut opts = options(&["shared", "tiny", "a", "b"]);
    opts.span_size = 512;
    // The middle layer is below the minimum size: no zTOC, no artifact.
    opts.min_layer_size = 2049;
    let built = build_index(&source, &image, IndexVersion::V2, &opts, None, &|_| {}).unwrap();
    let listed: Vec<(&str, &str)> = built
        .index
        .blobs
        .iter()
        .map(|d| {
            (
                d.media_type.as_str(),
                d.annotations[annotations::LAYER_DIGEST].as_str(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (media_types::ZTOC, bottom.digest.as_str()),
            (media_types::ZTOC, top.digest.as_str()),
            (media_types::SOCI_PREFETCH, bottom.digest.as_str()),
            (media_types::SOCI_PREFETCH, top.digest.as_str()),
        ]
    );
    // bottom: "a" at 512..1112 is spans 1..=2; "shared" is the top's.
    // top: "b" at 512 is span 1, "shared" at 1536 span 3.
    let spans: Vec<Vec<(i32, i32)>> = built
        .prefetch
        .blobs
        .iter()
        .map(|b| {
            b.artifact
                .prefetch_spans
                .iter()
                .map(|s| (s.start_span, s.end_span))
                .collect()
        })
        .collect();
    assert_eq!(spans, vec![vec![(1, 2)], vec![(1, 1), (3, 3)]]);
    assert!(built.prefetch.paths[1].found.is_none()); // "tiny": no zTOC
}
