//! Planning an image against the in-process fake registry
//! (`sochi-testkit`), with the reference's converted image from the
//! fixtures: the v2 index found through the annotation, every zTOC
//! fetched and checked against its layer, the config's `diff_id`s, the
//! artifact cache, and what is refused.

use std::time::Duration;

use sochi_format::{
    annotations, media_types, ImageManifest, Sha256Digest, SociIndex,
    ZSTD_CHUNKED_MANIFEST_CHECKSUM, ZSTD_CHUNKED_MANIFEST_POSITION,
};
use sochi_registry::{Client, ClientConfig, DiscoveryOptions, Reference};
use sochi_testkit::{Config, FakeRegistry};

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
/// The original image manifest of the fixtures (no index).
const IMAGE: &str = "sha256:0e8cf36cb6f86f1bbe8d51c7628bdf1f5abf76a01c003560cb483ba9544c9f78";
/// The manifest `soci convert` rewrote (with the index annotation).
const IMAGE_V2: &str = "sha256:dfddd9c4ef9f61776dd5676a88e89a4153d399146ed602c7901d716657444c7b";
/// The v2 index it names.
const INDEX_V2: &str = "sha256:c12a861305b38ccc8459d17aee5d276cc082b40b2ab55190a523b4435112c29f";

fn blob(layout: &str, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(format!("{FIXTURES}/{layout}/blobs/sha256/{hex}")).unwrap()
}

/// The image manifest `digest` of fixture `layout` with its config and
/// layers, into the fake's `app`; the manifest's bytes.
fn serve_image(fake: &FakeRegistry, layout: &str, digest: &str) -> Vec<u8> {
    let bytes = blob(layout, digest);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let manifest = ImageManifest::from_json(&bytes).unwrap();
    fake.add_blob("app", &blob(layout, &manifest.config.digest));
    for layer in manifest.layers() {
        fake.add_blob("app", &blob(layout, &layer.digest));
    }
    bytes
}

/// The v2 index and its zTOCs.
fn serve_index(fake: &FakeRegistry) -> SociIndex {
    let bytes = blob("converted", INDEX_V2);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let index = SociIndex::from_bytes(&bytes).unwrap();
    for ztoc in &index.blobs {
        fake.add_blob("app", &blob("converted", &ztoc.digest));
    }
    index
}

fn client(dir: &tempfile::TempDir) -> Client {
    Client::new(ClientConfig {
        docker_config: Some(dir.path().join("no-config.json")),
        min_retry_wait: Duration::from_millis(1),
        max_retry_wait: Duration::from_millis(20),
        ..ClientConfig::default()
    })
    .unwrap()
}

fn repository(fake: &FakeRegistry) -> Reference {
    Reference::parse(&fake.repository("app")).unwrap()
}

/// The `diff_ids` of the config of manifest `digest` in fixture `layout`.
fn diff_ids(layout: &str, digest: &str) -> Vec<String> {
    let manifest = ImageManifest::from_json(&blob(layout, digest)).unwrap();
    sochi_format::image_diff_ids(&blob(layout, &manifest.config.digest))
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_converted_image_is_planned_lazy_throughout() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    let index = serve_index(&fake);
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_image_manifest(
        &client(&dir),
        &repository(&fake),
        IMAGE_V2,
        &DiscoveryOptions::default(),
        None,
    )
    .await
    .unwrap();
    let source = plan.index.as_ref().unwrap();
    assert_eq!(source.digest, INDEX_V2);
    assert_eq!(source.found_by, "v2 annotation");
    assert_eq!(plan.lazy_layers(), 3);
    assert_eq!(plan.layers.len(), index.ztocs().count());
    let ids: Vec<&str> = plan.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(ids, diff_ids("converted", IMAGE_V2));
    for layer in &plan.layers {
        let ztoc = layer.ztoc.as_ref().unwrap();
        assert_eq!(ztoc.compressed_archive_size, layer.descriptor.size);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_without_an_index_is_planned_unpacked_with_the_reason() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "image", IMAGE);
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_image_manifest(
        &client(&dir),
        &repository(&fake),
        IMAGE,
        &DiscoveryOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert!(plan.index.is_none());
    assert_eq!(plan.layers.len(), 3);
    for layer in &plan.layers {
        assert!(layer.ztoc.is_none());
        assert_eq!(
            layer.no_ztoc_reason.as_deref(),
            Some("the image has no SOCI index")
        );
    }
    let ids: Vec<&str> = plan.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(ids, diff_ids("image", IMAGE));
}

/// A manifest naming the converted image's layers and index, edited.
fn edited_v2(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&blob("converted", IMAGE_V2)).unwrap();
    edit(&mut manifest);
    assert_eq!(
        manifest["annotations"][annotations::INDEX_DIGEST],
        INDEX_V2,
        "the edit keeps the index"
    );
    serde_json::to_vec(&manifest).unwrap()
}

async fn plan_of(fake: &FakeRegistry, digest: &str) -> ImagePlan {
    let dir = tempfile::tempdir().unwrap();
    plan_image_manifest(
        &client(&dir),
        &repository(fake),
        digest,
        &DiscoveryOptions::default(),
        None,
    )
    .await
    .unwrap()
}

/// A zTOC that does not describe its layer is not used, and the layer is
/// unpacked with the reason; the other layers stay lazy.
#[tokio::test(flavor = "multi_thread")]
async fn a_ztoc_that_describes_another_layer_leaves_the_layer_unpacked() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    serve_index(&fake);
    // Same layer digest, another size: the zTOC is not for this layer.
    let bytes = edited_v2(|m| {
        let size = m["layers"][0]["size"].as_i64().unwrap();
        m["layers"][0]["size"] = (size + 1).into();
    });
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let plan = plan_of(&fake, &digest).await;
    assert!(plan.index.is_some());
    assert_eq!(plan.lazy_layers(), 2);
    let first = &plan.layers[0];
    assert!(first.ztoc.is_none());
    let reason = first.no_ztoc_reason.as_deref().unwrap();
    assert!(reason.contains("compressed bytes"), "{reason}");
}

/// The layers of `manifest` recompressed with zstd: new digests and media
/// type, as `skopeo copy --dest-compress-format zstd` leaves them (the
/// annotation naming the gzip image's index is kept).
fn recompressed(manifest: &mut serde_json::Value) {
    for layer in manifest["layers"].as_array_mut().unwrap() {
        let old = layer["digest"].as_str().unwrap().to_string();
        let new = Sha256Digest::of(format!("zstd of {old}").as_bytes()).to_string();
        layer["digest"] = new.into();
        layer["mediaType"] = media_types::OCI_LAYER_ZSTD.into();
    }
}

/// The annotation names an index the repository does not have (a copy
/// that left it behind): the image is planned without one, with the
/// reason on the plan and on every layer; issue 16.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_the_repository_does_not_have_leaves_the_image_unindexed() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    let bytes = edited_v2(recompressed);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let plan = plan_of(&fake, &digest).await;
    assert!(plan.index.is_none());
    let problem = plan.index_problem.as_deref().unwrap();
    assert!(
        problem.contains(INDEX_V2) && problem.contains("404"),
        "{problem}"
    );
    assert_eq!(plan.layers.len(), 3);
    for layer in &plan.layers {
        let reason = layer.no_ztoc_reason.as_deref().unwrap();
        assert!(
            reason.starts_with(not_lazy::ZSTD_REASON) && reason.contains(problem),
            "{reason}"
        );
    }
    let mut metrics = String::new();
    render_plan_metrics(&mut metrics);
    assert!(
        !metrics.contains("sochi_layers_not_lazy_total{why=\"index_missing\"} 0\n"),
        "{metrics}"
    );
}

/// The index is there but was made for the gzip layers: every layer is
/// unpacked, saying why, and no zTOC is fetched.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_of_other_layers_leaves_every_layer_unpacked() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    serve_index(&fake);
    let bytes = edited_v2(recompressed);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let plan = plan_of(&fake, &digest).await;
    assert_eq!(plan.index.as_ref().unwrap().digest, INDEX_V2);
    assert_eq!(plan.lazy_layers(), 0);
    for layer in &plan.layers {
        let reason = layer.no_ztoc_reason.as_deref().unwrap();
        assert!(
            reason.contains("names none of the image's layers"),
            "{reason}"
        );
    }
    let index = SociIndex::from_bytes(&blob("converted", INDEX_V2)).unwrap();
    for ztoc in index.ztocs() {
        let path = format!("/blobs/{}", ztoc.digest);
        assert!(fake.requests("GET", &path).is_empty(), "{path}");
    }
}

/// A zTOC the index names but the repository does not have: that layer
/// is unpacked.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_ztoc_leaves_its_layer_unpacked() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    let bytes = blob("converted", INDEX_V2);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let index = SociIndex::from_bytes(&bytes).unwrap();
    let ztocs: Vec<_> = index.ztocs().collect();
    for ztoc in ztocs.iter().skip(1) {
        fake.add_blob("app", &blob("converted", &ztoc.digest));
    }
    let plan = plan_of(&fake, IMAGE_V2).await;
    assert_eq!(plan.lazy_layers(), 2);
    let unpacked: Vec<&str> = plan
        .layers
        .iter()
        .filter_map(|l| l.no_ztoc_reason.as_deref())
        .collect();
    assert_eq!(unpacked.len(), 1);
    assert!(
        unpacked[0].contains(ztocs[0].digest.as_str()) && unpacked[0].contains("404"),
        "{unpacked:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_that_does_not_name_every_layer_is_refused() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    serve_index(&fake);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_descriptor = fake.add_blob("app", config);
    let bytes = edited_v2(|m| {
        m["config"]["digest"] = config_descriptor.digest.to_string().into();
        m["config"]["size"] = config_descriptor.size.into();
    });
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes);
    let dir = tempfile::tempdir().unwrap();
    let error = plan_image_manifest(
        &client(&dir),
        &repository(&fake),
        &digest,
        &DiscoveryOptions::default(),
        None,
    )
    .await
    .unwrap_err();
    let message = sochi_format::error_chain(&error);
    assert!(message.contains("names 0 layers"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_plan_fetches_no_artifact_again() {
    let fake = FakeRegistry::start(Config::default()).await;
    serve_image(&fake, "converted", IMAGE_V2);
    let index = serve_index(&fake);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("artifact-cache");
    let explicit = DiscoveryOptions {
        explicit_index: Some(INDEX_V2.into()),
        ..DiscoveryOptions::default()
    };
    let client = client(&dir);
    for _ in 0..2 {
        plan_image_manifest(
            &client,
            &repository(&fake),
            IMAGE_V2,
            &explicit,
            Some(&cache),
        )
        .await
        .unwrap();
    }
    for ztoc in index.ztocs() {
        let path = format!("/v2/app/blobs/{}", ztoc.digest);
        assert_eq!(fake.requests("GET", &path).len(), 1, "{path}");
    }
    let manifest = format!("/v2/app/manifests/{IMAGE_V2}");
    assert_eq!(fake.requests("GET", &manifest).len(), 1);
}

/// Prefetch artifacts that sochi refuses (issue 13): the layer mounts
/// without them, each refusal with its reason.
mod prefetch {
    use super::super::check_prefetch;
    use sochi_format::{Digest, Ztoc, MAX_PREFETCH_ARTIFACT_SIZE};
    use sochi_spans::PrefetchRefusal;

    fn ztoc() -> Ztoc {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/pax-mixed.tar.gz.65536.ztoc"
        );
        Ztoc::from_bytes(&std::fs::read(path).unwrap()).unwrap()
    }

    fn check(bytes: &[u8]) -> Result<sochi_spans::PrefetchRanges, PrefetchRefusal> {
        let artifact = Digest::from(sochi_format::Sha256Digest::of(bytes).to_string());
        check_prefetch(bytes, &artifact, &ztoc()).map_err(|(reason, detail)| {
            assert!(!detail.is_empty());
            reason
        })
    }

    #[test]
    fn a_good_artifact_gives_its_ranges() {
        let last = ztoc().compression.max_span_id;
        let body = format!(
            r#"{{"version":"1.0","prefetch_spans":[{{"start_span":1,"end_span":{last}}},{{"start_span":0,"end_span":0,"priority":-1}}]}}"#
        );
        assert_eq!(
            check(body.as_bytes()),
            Ok(vec![(0..1, -1), (1..last as usize + 1, 0)])
        );
    }

    #[test]
    fn bad_artifacts_are_refused_with_their_reason() {
        let span_count = ztoc().compression.max_span_id as usize + 1;
        let past_end = format!(
            r#"{{"version":"1.0","prefetch_spans":[{{"start_span":0,"end_span":{span_count}}}]}}"#
        );
        let mut too_big =
            br#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":0}]"#.to_vec();
        too_big.resize(MAX_PREFETCH_ARTIFACT_SIZE + 1, b' ');
        too_big.push(b'}');
        let cases: [(&[u8], PrefetchRefusal); 7] = [
            (b"not json", PrefetchRefusal::Invalid),
            (
                b"{\"version\":\"1.0\",\"prefetch_spans\":[",
                PrefetchRefusal::Invalid,
            ),
            (
                br#"{"version":"2.0","prefetch_spans":[{"start_span":0,"end_span":0}]}"#,
                PrefetchRefusal::Invalid,
            ),
            (
                br#"{"version":"1.0","prefetch_spans":[]}"#,
                PrefetchRefusal::Invalid,
            ),
            (past_end.as_bytes(), PrefetchRefusal::OutOfRange),
            (
                br#"{"version":"1.0","prefetch_spans":[{"start_span":-1,"end_span":0}]}"#,
                PrefetchRefusal::OutOfRange,
            ),
            (&too_big, PrefetchRefusal::TooBig),
        ];
        for (body, reason) in cases {
            assert_eq!(
                check(body),
                Err(reason),
                "{}",
                String::from_utf8_lossy(&body[..body.len().min(80)])
            );
        }
    }
}

/// A one-layer zstd:chunked image in the fake's `chunked`: a file frame,
/// then the table of contents (its checksum annotation `checksum`, or
/// the right one). Returns the manifest's digest.
fn serve_chunked_image(fake: &FakeRegistry, checksum: Option<&str>) -> String {
    let content = b"hello from a chunk\n";
    let mut blob = zstd::bulk::compress(b"a tar header", 3).unwrap();
    let offset = blob.len();
    blob.extend(zstd::bulk::compress(content, 3).unwrap());
    let end = blob.len();
    let table = format!(
        r#"{{"version":1,"entries":[{{"type":"reg","name":"etc/motd","mode":420,"size":{},"digest":"{}","offset":{offset},"endOffset":{end}}}]}}"#,
        content.len(),
        Sha256Digest::of(content)
    );
    let compressed = zstd::bulk::compress(table.as_bytes(), 3).unwrap();
    let position = format!("{end}:{}:{}:1", compressed.len(), table.len());
    let right = Sha256Digest::of(&compressed).to_string();
    blob.extend(compressed);
    let layer = fake.add_blob("chunked", &blob);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        Sha256Digest::of(b"not checked by a lazy mount")
    );
    let config = fake.add_blob("chunked", config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
        "layers": [{
            "mediaType": media_types::OCI_LAYER_ZSTD,
            "digest": layer.digest,
            "size": layer.size,
            "annotations": {
                ZSTD_CHUNKED_MANIFEST_CHECKSUM: checksum.unwrap_or(&right),
                ZSTD_CHUNKED_MANIFEST_POSITION: position,
            },
        }],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    fake.add_manifest("chunked", None, media_types::OCI_MANIFEST, &bytes);
    Sha256Digest::of(&bytes).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zstd_chunked_layer_is_planned_lazy_without_an_index_or_unpacked_saying_why() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let repository = Reference::parse(&fake.repository("chunked")).unwrap();
    let cache = dir.path().join("cache");

    let good = serve_chunked_image(&fake, None);
    let plan = plan_image_manifest(
        &client(&dir),
        &repository,
        &good,
        &DiscoveryOptions::default(),
        Some(&cache),
    )
    .await
    .unwrap();
    assert!(plan.index.is_none());
    assert_eq!(plan.lazy_layers(), 1);
    let ztoc = plan.layers[0].ztoc.as_ref().unwrap();
    assert!(!ztoc.has_tar_headers());
    assert_eq!(ztoc.toc.len(), 1);
    assert_eq!(ztoc.compression.span_digests.len(), 1);

    let wrong = format!("sha256:{}", "2".repeat(64));
    let bad = serve_chunked_image(&fake, Some(&wrong));
    let plan = plan_image_manifest(
        &client(&dir),
        &repository,
        &bad,
        &DiscoveryOptions::default(),
        Some(&cache),
    )
    .await
    .unwrap();
    assert_eq!(plan.lazy_layers(), 0);
    let reason = plan.layers[0].no_ztoc_reason.as_deref().unwrap();
    assert!(
        reason.contains("table of contents") && reason.contains(&wrong),
        "{reason}"
    );
}

#[test]
fn a_ztoc_fits_a_layer_of_its_size_and_compression_only() {
    use sochi_format::{CompressionAlgorithm, CompressionInfo, FrameZinfoWriter};
    let ztoc = |algorithm: CompressionAlgorithm, uncompressed_digests: bool| {
        let mut spans = FrameZinfoWriter::new(uncompressed_digests);
        spans.push(0..100, 0).unwrap();
        Ztoc {
            version: "0.9".into(),
            build_tool_identifier: "test".into(),
            compressed_archive_size: 100,
            uncompressed_archive_size: 1000,
            toc: Vec::new(),
            compression: CompressionInfo {
                algorithm,
                max_span_id: 0,
                span_digests: vec![Sha256Digest::of(b"x")],
                checkpoints: match algorithm {
                    CompressionAlgorithm::Zstd => spans.finish(),
                    _ => Vec::new(),
                },
            },
        }
    };
    let layer = |media_type: &str, size: i64| Descriptor {
        media_type: media_type.into(),
        size,
        ..Descriptor::of(media_type, b"layer")
    };
    let zstd = layer(media_types::OCI_LAYER_ZSTD, 100);
    let gzip = layer(media_types::OCI_LAYER_GZIP, 100);
    let frames = ztoc(CompressionAlgorithm::Zstd, false);
    assert_eq!(check_ztoc_fits_layer(&frames, &zstd), Ok(()));
    let refused = |ztoc: &Ztoc, layer: &Descriptor, words: &str| {
        let why = check_ztoc_fits_layer(ztoc, layer).unwrap_err();
        assert!(why.contains(words), "{why}");
    };
    refused(&frames, &gzip, "not zstd");
    refused(
        &frames,
        &layer(media_types::OCI_LAYER_ZSTD, 99),
        "another blob",
    );
    refused(
        &ztoc(CompressionAlgorithm::Gzip, false),
        &zstd,
        "cannot describe zstd",
    );
    refused(
        &ztoc(CompressionAlgorithm::Zstd, true),
        &zstd,
        "no tar headers",
    );
}
