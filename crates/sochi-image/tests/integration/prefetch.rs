//! Prefetch artifacts (docs/format.md §3.8) go wherever zTOCs go: `create`
//! keeps them in the store, `push` uploads them with the zTOCs before the
//! index, and `convert` to a registry uploads them before the manifests.

use std::path::Path;
use std::time::Duration;

use sochi_build::{BuildOptions, PlatformSelection};
use sochi_format::{media_types, ImageIndex, ImageManifest, SociIndex};
use sochi_image::{
    convert_image, create_indexes, open_image, push_indexes, ConvertRequest, CreateRequest,
    ExistingIndex, ImageRef, PushRequest,
};
use sochi_registry::ClientConfig;
use sochi_store::Store;
use sochi_testkit::{Config, FakeRegistry};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
/// The fixture image's manifest.
const IMAGE: &str = "sha256:0e8cf36cb6f86f1bbe8d51c7628bdf1f5abf76a01c003560cb483ba9544c9f78";
/// Its top layer (gnu-mixed.tar.gz).
const TOP_LAYER: &str = "sha256:e1f2a4768c5a1c9dcddc823c8ecf8e582a2dddf5ad29882dc626d6c849bc71cf";
/// `etc/passwd` (span 0) and `data/random-300k.bin` (2..=6) of the top layer.
const TOP_ARTIFACT: &[u8] =
    br#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":0},{"start_span":2,"end_span":6}]}"#;

fn blob(digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(Path::new(FIXTURES).join("image/blobs/sha256").join(hex)).unwrap()
}

/// The fixture image in the fake's `app`, tagged `latest`.
fn serve_image(fake: &FakeRegistry) {
    let bytes = blob(IMAGE);
    fake.add_manifest("app", Some("latest"), media_types::OCI_MANIFEST, &bytes);
    let manifest = ImageManifest::from_json(&bytes).unwrap();
    fake.add_blob("app", &blob(&manifest.config.digest));
    for layer in manifest.layers() {
        fake.add_blob("app", &blob(&layer.digest));
    }
}

fn client_config(dir: &Path) -> ClientConfig {
    ClientConfig {
        docker_config: Some(dir.join("no-config.json")),
        min_retry_wait: Duration::from_millis(1),
        max_retry_wait: Duration::from_millis(20),
        ..ClientConfig::default()
    }
}

fn options() -> BuildOptions {
    BuildOptions {
        span_size: 65536,
        min_layer_size: 0,
        jobs: 2,
        prefetch_paths: vec!["/etc/passwd".into(), "data/random-300k.bin".into()],
        ..BuildOptions::default()
    }
}

/// The one prefetch descriptor of `index`, checked.
fn prefetch_of(index: &SociIndex) -> sochi_format::Descriptor {
    let prefetches: Vec<_> = index.prefetches().cloned().collect();
    assert_eq!(prefetches.len(), 1);
    let d = prefetches[0].clone();
    assert_eq!(
        d.annotations
            .get(sochi_format::annotations::LAYER_DIGEST)
            .map(String::as_str),
        Some(TOP_LAYER)
    );
    assert_eq!(
        index.blobs.last(),
        Some(&d),
        "prefetch descriptors come last"
    );
    d
}

#[test]
fn create_push_and_convert_carry_prefetch_artifacts() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    }));
    serve_image(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(dir.path());
    let store = Store::open(&dir.path().join("root")).unwrap();
    let image_ref = ImageRef::parse(&format!("{}:latest", fake.repository("app"))).unwrap();
    let opened = open_image(&config, &image_ref).unwrap();

    // create: the artifact is stored beside the zTOCs.
    let reports = create_indexes(
        &store,
        &opened,
        &CreateRequest {
            image_ref: &image_ref,
            options: options(),
            selection: PlatformSelection::Host,
            force: false,
        },
        &|_| {},
    )
    .unwrap();
    let index_digest = reports[0].index.clone();
    let index_bytes = store
        .content()
        .read_blob(&index_digest.sha256().unwrap())
        .unwrap();
    let index = SociIndex::from_bytes(&index_bytes).unwrap();
    let prefetch = prefetch_of(&index);
    assert_eq!(
        store
            .content()
            .read_blob(&prefetch.digest.sha256().unwrap())
            .unwrap(),
        TOP_ARTIFACT
    );

    // push: uploaded with the zTOCs, then the index, which reads back.
    let ImageRef::Registry(reference) = image_ref.clone() else {
        panic!("{image_ref} is not a registry reference")
    };
    let pushed = push_indexes(
        &store,
        &opened,
        &PushRequest {
            reference,
            selection: PlatformSelection::Host,
            existing: ExistingIndex::Allow,
            max_concurrent_uploads: 3,
        },
    )
    .unwrap();
    assert!(pushed[0].pushed);
    assert_eq!(pushed[0].blobs_uploaded, 5, "config, 3 zTOCs, 1 prefetch");
    assert_eq!(
        fake.blob("app", &prefetch.digest).unwrap().as_ref(),
        TOP_ARTIFACT
    );
    assert!(fake.has_manifest("app", &index_digest));
    let artifact_put = fake
        .log()
        .iter()
        .position(|l| {
            l.method != "HEAD" && l.method != "GET" && l.query.contains(prefetch.digest.encoded())
        })
        .unwrap();
    let index_put = fake
        .log()
        .iter()
        .position(|l| l.method == "PUT" && l.path.ends_with(index_digest.as_str()))
        .unwrap();
    assert!(
        artifact_put < index_put,
        "the artifact goes before the index"
    );

    // convert to another repository: the v2 index lists it and the
    // destination has it.
    let destination = ImageRef::parse(&format!("{}:soci", fake.repository("converted"))).unwrap();
    let report = convert_image(
        &config,
        &opened,
        &ConvertRequest {
            source: &image_ref,
            destination: &destination,
            options: options(),
            selection: PlatformSelection::Host,
            max_concurrent_uploads: 3,
        },
        &|_| {},
    )
    .unwrap();
    assert_eq!(report.indexes[0].prefetch_artifacts, 1);
    let (_, top) = fake.tagged("converted", "soci").unwrap();
    let top = ImageIndex::from_json(&top).unwrap();
    let soci = top
        .manifests()
        .iter()
        .find(|d| d.artifact_type.as_deref() == Some(media_types::SOCI_INDEX_V2))
        .unwrap()
        .clone();
    let state = fake.state.lock();
    let (_, v2) = state
        .manifests
        .get(&("converted".to_string(), soci.digest.to_string()))
        .unwrap()
        .clone();
    drop(state);
    let v2 = SociIndex::from_bytes(&v2).unwrap();
    let prefetch = prefetch_of(&v2);
    assert_eq!(
        fake.blob("converted", &prefetch.digest).unwrap().as_ref(),
        TOP_ARTIFACT
    );
}
