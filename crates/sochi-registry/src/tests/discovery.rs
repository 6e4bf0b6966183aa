//! SOCI index discovery (`Client::discover_soci_index`) against the fake
//! registry, mostly with the reference's own fixtures: the v2 image made by
//! `soci convert` (`converted/`) and the v1 index of the original image
//! (`index-v1/`).

use sochi_format::{annotations, media_types, Descriptor, ImageIndex, IndexVersion, SociIndex};

use sochi_testkit::{Config, FakeRegistry};

use super::FakeReference as _;
use super::{client, oci_manifest};
use crate::digest::sha256_of;
use crate::{Client, DiscoveredIndex, DiscoveryOptions, Error, FoundBy, Reference};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");

/// The original image manifest (no annotation), subject of the v1 index.
const IMAGE: &str = "sha256:0e8cf36cb6f86f1bbe8d51c7628bdf1f5abf76a01c003560cb483ba9544c9f78";
/// The v1 index of [`IMAGE`].
const INDEX_V1: &str = "sha256:6c22e9634b5ceb406732df877ab1a998d3aa06892f6d400124dcd603638b6a3e";
/// The image manifest rewritten by `soci convert` (with the annotation).
const IMAGE_V2: &str = "sha256:dfddd9c4ef9f61776dd5676a88e89a4153d399146ed602c7901d716657444c7b";
/// The v2 index the annotation of [`IMAGE_V2`] names.
const INDEX_V2: &str = "sha256:c12a861305b38ccc8459d17aee5d276cc082b40b2ab55190a523b4435112c29f";

/// A blob of a fixture OCI layout (`image`, `converted`, `index-v1`).
fn fixture_blob(layout: &str, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(format!("{FIXTURES}/{layout}/blobs/sha256/{hex}")).unwrap()
}

fn serve_manifest(fake: &FakeRegistry, layout: &str, digest: &str) -> Vec<u8> {
    let bytes = fixture_blob(layout, digest);
    assert_eq!(
        fake.add_manifest("app", None, media_types::OCI_MANIFEST, &bytes),
        digest
    );
    bytes
}

/// The zTOCs of an index, into the fake's `app`.
fn serve_ztocs(fake: &FakeRegistry, layout: &str, index: &SociIndex) {
    for ztoc in &index.blobs {
        fake.add_blob("app", &fixture_blob(layout, &ztoc.digest));
    }
}

/// The converted (v2) image: image manifest, index, zTOCs.
fn serve_v2(fake: &FakeRegistry) -> Vec<u8> {
    serve_manifest(fake, "converted", IMAGE_V2);
    let index = serve_manifest(fake, "converted", INDEX_V2);
    serve_ztocs(fake, "converted", &SociIndex::from_bytes(&index).unwrap());
    index
}

/// The original image manifest and its v1 index (pushed by digest: the
/// fake's referrers API lists it; no fallback tag is written).
fn serve_v1(fake: &FakeRegistry) -> Vec<u8> {
    serve_manifest(fake, "image", IMAGE);
    let index = serve_manifest(fake, "index-v1", INDEX_V1);
    serve_ztocs(fake, "index-v1", &SociIndex::from_bytes(&index).unwrap());
    index
}

fn fallback_tag(subject: &str) -> String {
    format!("sha256-{}", &subject["sha256:".len()..])
}

/// Puts `entries` under the fallback tag of `subject`, as a client without
/// the referrers API would.
fn set_fallback_tag(fake: &FakeRegistry, subject: &str, entries: Vec<Descriptor>) {
    let index = ImageIndex {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.into(),
        manifests: Some(entries),
        ..ImageIndex::default()
    };
    fake.add_manifest(
        "app",
        Some(&fallback_tag(subject)),
        media_types::OCI_INDEX,
        &index.to_go_json(),
    );
}

fn v1_entry(bytes: &[u8]) -> Descriptor {
    Descriptor {
        artifact_type: Some(media_types::SOCI_INDEX_V1.into()),
        ..Descriptor::of(media_types::OCI_MANIFEST, bytes)
    }
}

async fn discover(
    client: &Client,
    fake: &FakeRegistry,
    image: &str,
    options: &DiscoveryOptions,
) -> crate::Result<Option<DiscoveredIndex>> {
    client
        .discover_soci_index(&fake.reference("app"), image, options)
        .await
}

/// A synthetic image manifest with these annotations.
fn annotated_image(annotations: &[(&str, &str)]) -> Vec<u8> {
    let mut manifest = sochi_format::ImageManifest::from_json(&oci_manifest(
        &[Descriptor::of(media_types::OCI_LAYER_GZIP, b"layer")],
        None,
        None,
    ))
    .unwrap();
    manifest.annotations = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    manifest.to_go_json()
}

/// A v1 index of `subject` (synthetic, one zTOC).
fn v1_index_of(subject: &Descriptor, ztoc: &[u8]) -> Vec<u8> {
    SociIndex::new(
        IndexVersion::V1,
        vec![Descriptor::of(media_types::ZTOC, ztoc)],
        Some(subject.clone()),
    )
    .to_bytes()
}

fn malformed_detail(e: &Error) -> String {
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
    e.to_string()
}

// --- found ---

#[tokio::test]
async fn v2_annotation_finds_the_converted_index() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let index_bytes = serve_v2(&fake);

    let found = discover(&client, &fake, IMAGE_V2, &DiscoveryOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.found_by, FoundBy::V2Annotation);
    assert_eq!(found.version, IndexVersion::V2);
    assert_eq!(found.bytes, index_bytes);
    assert_eq!(found.descriptor.digest, INDEX_V2);
    assert_eq!(found.descriptor.size, 1477);
    assert_eq!(found.descriptor.media_type, media_types::OCI_MANIFEST);
    assert_eq!(
        found.descriptor.artifact_type.as_deref(),
        Some(media_types::SOCI_INDEX_V2)
    );
    assert_eq!(found.index, SociIndex::from_bytes(&index_bytes).unwrap());
    assert_eq!(found.index.subject, None);
    assert_eq!(found.index.ztocs().count(), 3);
    // Our writer agrees with the reference's bytes.
    assert_eq!(found.index.to_bytes(), index_bytes);

    // Image manifest, then index, both by digest; no referrers asked.
    let gets: Vec<_> = fake
        .requests("GET", "/manifests/")
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert_eq!(
        gets,
        [
            format!("/v2/app/manifests/{IMAGE_V2}"),
            format!("/v2/app/manifests/{INDEX_V2}")
        ]
    );
    assert!(fake.requests("GET", "/referrers/").is_empty());

    // The zTOCs read back verified (read_blob checks size and digest).
    let r = fake.reference("app");
    for ztoc in found.index.ztocs() {
        let bytes = client.read_blob(&r, ztoc).await.unwrap();
        assert_eq!(sha256_of(&bytes), ztoc.digest);
    }
}

#[tokio::test]
async fn v1_through_the_referrers_api() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let index_bytes = serve_v1(&fake);

    let found = discover(&client, &fake, IMAGE, &DiscoveryOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.found_by, FoundBy::Referrers);
    assert_eq!(found.version, IndexVersion::V1);
    assert_eq!(found.bytes, index_bytes);
    assert_eq!(
        (found.descriptor.digest.as_str(), found.descriptor.size),
        (INDEX_V1, 1640)
    );
    assert_eq!(found.index.subject.as_ref().unwrap().digest, IMAGE);
    assert_eq!(found.index.to_bytes(), index_bytes);

    // v2 first (the image manifest has no annotation), then referrers.
    let referrers = fake.requests("GET", "/referrers/");
    assert_eq!(referrers.len(), 1);
    assert_eq!(referrers[0].path, format!("/v2/app/referrers/{IMAGE}"));
    assert!(referrers[0]
        .query
        .contains("artifactType=application%2Fvnd.amazon.soci.index.v1%2Bjson"));
    assert_eq!(
        fake.requests("GET", &format!("/manifests/{IMAGE}")).len(),
        1
    );
    let r = fake.reference("app");
    for ztoc in found.index.ztocs() {
        client.read_blob(&r, ztoc).await.unwrap();
    }
}

#[tokio::test]
async fn v1_through_the_fallback_tag() {
    // No referrers API (distribution 2.8): the index pushed as `soci push`
    // does, which maintains the `sha256-<hex>` tag.
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let image = fixture_blob("image", IMAGE);
    fake.add_manifest("app", Some("latest"), media_types::OCI_MANIFEST, &image);
    let index_bytes = fixture_blob("index-v1", INDEX_V1);
    let index = SociIndex::from_bytes(&index_bytes).unwrap();
    client
        .push_referrer(
            &fake.reference("app"),
            &index_bytes,
            media_types::OCI_MANIFEST,
            index.subject.as_ref().unwrap(),
            media_types::SOCI_INDEX_V1,
            &index.annotations,
        )
        .await
        .unwrap();
    assert!(fake.tagged("app", &fallback_tag(IMAGE)).is_some());

    let tag_gets = || {
        fake.requests("GET", &format!("/manifests/{}", fallback_tag(IMAGE)))
            .len()
    };
    let before = tag_gets();

    // A fresh client, which has not learned what the registry supports.
    let client = super::client(&dir);
    let options = DiscoveryOptions {
        v2: false,
        ..DiscoveryOptions::default()
    };
    let found = discover(&client, &fake, IMAGE, &options)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.found_by, FoundBy::Referrers);
    assert_eq!(found.version, IndexVersion::V1);
    assert_eq!(found.bytes, index_bytes);
    assert_eq!(found.descriptor.digest, INDEX_V1);
    // v2 disabled: the image manifest was not fetched.
    assert!(fake
        .requests("GET", &format!("/manifests/{IMAGE}"))
        .is_empty());
    assert_eq!(tag_gets(), before + 1);
}

#[tokio::test]
async fn v1_takes_the_first_referrer() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let image = annotated_image(&[]);
    let subject = Descriptor::of(media_types::OCI_MANIFEST, &image);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &image);
    let first = v1_index_of(&subject, b"first");
    let second = v1_index_of(&subject, b"second");
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &first);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &second);
    // Another artifact type first: filtered out.
    let other = oci_manifest(&[], Some(&subject), Some("application/other"));
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &other);
    let mut other_entry = Descriptor::of(media_types::OCI_MANIFEST, &other);
    other_entry.artifact_type = Some("application/other".into());
    set_fallback_tag(
        &fake,
        &subject.digest,
        vec![other_entry, v1_entry(&second), v1_entry(&first)],
    );

    let found = discover(
        &client,
        &fake,
        &subject.digest,
        &DiscoveryOptions::default(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(found.descriptor.digest, sha256_of(&second));
    assert_eq!(found.bytes, second);
    assert_eq!(fake.requests("GET", &sha256_of(&first)).len(), 0);
}

#[tokio::test]
async fn explicit_digest_wins_and_needs_no_pull_mode() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    serve_v2(&fake);
    let v1_bytes = serve_v1(&fake);

    // The v1 index of the original manifest, for the converted one (same
    // layers): taken as given.
    let options = DiscoveryOptions {
        v1: false,
        v2: false,
        explicit_index: Some(INDEX_V1.into()),
    };
    let found = discover(&client, &fake, IMAGE_V2, &options)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.found_by, FoundBy::Explicit);
    assert_eq!(found.version, IndexVersion::V1);
    assert_eq!(found.bytes, v1_bytes);
    assert_eq!(found.descriptor.size, 1640);
    // Only the index was asked for.
    assert_eq!(fake.log().len(), 1, "{:?}", fake.log());
    assert_eq!(fake.log()[0].path, format!("/v2/app/manifests/{INDEX_V1}"));

    // An explicit digest the repository does not have: an error naming it.
    let missing = sha256_of(b"missing");
    let options = DiscoveryOptions {
        explicit_index: Some(missing.clone()),
        ..DiscoveryOptions::default()
    };
    let e = discover(&client, &fake, IMAGE_V2, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SociIndexNotFound {
                found_by: FoundBy::Explicit,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains(&missing) && text.contains("/app"), "{text}");
    assert!(text.contains("given explicitly"), "{text}");

    let options = DiscoveryOptions {
        explicit_index: Some("sha256:nothex".into()),
        ..DiscoveryOptions::default()
    };
    let e = discover(&client, &fake, IMAGE_V2, &options)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}

// --- not found ---

#[tokio::test]
async fn no_index_anywhere_is_none() {
    for referrers_api in [true, false] {
        let fake = FakeRegistry::start(Config {
            referrers_api,
            ..Config::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let client = client(&dir);
        serve_manifest(&fake, "image", IMAGE);
        let found = discover(&client, &fake, IMAGE, &DiscoveryOptions::default())
            .await
            .unwrap();
        assert!(found.is_none(), "{found:?}");
        assert_eq!(fake.requests("GET", "/referrers/").len(), 1);
    }

    // v1 disabled: no referrers asked.
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    serve_v1(&fake);
    let options = DiscoveryOptions {
        v1: false,
        ..DiscoveryOptions::default()
    };
    assert!(discover(&client, &fake, IMAGE, &options)
        .await
        .unwrap()
        .is_none());
    assert!(fake.requests("GET", "/referrers/").is_empty());
}

#[tokio::test]
async fn an_unreadable_image_manifest_ends_discovery() {
    // Spec §5.2 step 3: a fetch or decode failure of the image manifest
    // means "no index", without trying v1.
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    // The v1 index exists, but the image manifest does not.
    serve_manifest(&fake, "index-v1", INDEX_V1);
    assert!(
        discover(&client, &fake, IMAGE, &DiscoveryOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(fake.requests("GET", "/referrers/").is_empty());

    // Not JSON.
    let junk = b"not json".to_vec();
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &junk);
    assert!(
        discover(&client, &fake, &digest, &DiscoveryOptions::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(fake.requests("GET", "/referrers/").is_empty());
}

#[tokio::test]
async fn an_empty_annotation_falls_through_to_v1() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let image = annotated_image(&[(annotations::INDEX_DIGEST, ""), ("other", "x")]);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &image);
    let index = v1_index_of(&Descriptor::of(media_types::OCI_MANIFEST, &image), b"z");
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &index);
    let found = discover(&client, &fake, &digest, &DiscoveryOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.found_by, FoundBy::Referrers);
    assert_eq!(found.bytes, index);
}

// --- broken ---

#[tokio::test]
async fn a_dangling_v2_annotation_is_an_error_naming_it() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    serve_manifest(&fake, "converted", IMAGE_V2);
    let e = discover(&client, &fake, IMAGE_V2, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    // Its own variant, which a caller may take as "no index" (issue 16).
    let Error::SociIndexNotFound {
        digest, found_by, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(
        (digest.as_str(), *found_by),
        (INDEX_V2, FoundBy::V2Annotation)
    );
    assert!(e.is_not_found());
    let text = e.to_string();
    assert!(text.contains(INDEX_V2), "{text}");
    assert!(text.contains(IMAGE_V2), "{text}");
    assert!(text.contains("/app"), "{text}");
    assert!(text.contains(annotations::INDEX_DIGEST), "{text}");
    // Not silently replaced by a v1 lookup.
    assert!(fake.requests("GET", "/referrers/").is_empty());

    // An annotation that is not a digest.
    let image = annotated_image(&[(annotations::INDEX_DIGEST, "sha256:zz")]);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &image);
    let e = discover(&client, &fake, &digest, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    let text = malformed_detail(&e);
    assert!(
        text.contains(&digest) && text.contains("sha256:zz"),
        "{text}"
    );
}

/// A referrer (here under the fallback tag) whose index manifest is gone.
#[tokio::test]
async fn a_referrer_the_repository_does_not_have_is_index_not_found() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    serve_manifest(&fake, "image", IMAGE);
    let index = fixture_blob("index-v1", INDEX_V1);
    set_fallback_tag(&fake, IMAGE, vec![v1_entry(&index)]);
    let e = discover(&client, &fake, IMAGE, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    let Error::SociIndexNotFound {
        digest, found_by, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!((digest.as_str(), *found_by), (INDEX_V1, FoundBy::Referrers));
    assert!(e.to_string().contains("referrer"), "{e}");
}

#[tokio::test]
async fn an_index_bound_to_another_manifest_is_refused() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let v1_bytes = serve_v1(&fake);

    // v1: the fallback tag of another image lists IMAGE's index.
    let other = annotated_image(&[]);
    let other_digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &other);
    set_fallback_tag(&fake, &other_digest, vec![v1_entry(&v1_bytes)]);
    let e = discover(&client, &fake, &other_digest, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    let text = malformed_detail(&e);
    assert!(
        text.contains(INDEX_V1) && text.contains(&other_digest) && text.contains(IMAGE),
        "{text}"
    );

    // v1: a referrer listed as v1 that is a v2 index.
    let v2_bytes = serve_manifest(&fake, "converted", INDEX_V2);
    let lying = annotated_image(&[("n", "1")]);
    let lying_digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &lying);
    set_fallback_tag(&fake, &lying_digest, vec![v1_entry(&v2_bytes)]);
    let e = discover(&client, &fake, &lying_digest, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    let text = malformed_detail(&e);
    assert!(
        text.contains(INDEX_V2) && text.contains("v2 index"),
        "{text}"
    );

    // v2: the annotation names a v1 index of another manifest.
    let image = annotated_image(&[(annotations::INDEX_DIGEST, INDEX_V1)]);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &image);
    let e = discover(&client, &fake, &digest, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    let text = malformed_detail(&e);
    assert!(
        text.contains(INDEX_V1) && text.contains(&digest) && text.contains(IMAGE),
        "{text}"
    );
}

#[tokio::test]
async fn served_bytes_must_match_the_digest_and_size() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    serve_manifest(&fake, "converted", IMAGE_V2);
    // The registry serves other bytes under the index digest.
    let v1_bytes = fixture_blob("index-v1", INDEX_V1);
    fake.add_manifest_as("app", INDEX_V2, media_types::OCI_MANIFEST, &v1_bytes);
    let e = discover(&client, &fake, IMAGE_V2, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    match &e {
        Error::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, INDEX_V2);
            assert_eq!(actual, INDEX_V1);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("/app/manifests/"), "{e}");

    // A referrer entry whose size is wrong.
    serve_manifest(&fake, "image", IMAGE);
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &v1_bytes);
    let mut entry = v1_entry(&v1_bytes);
    entry.size += 1;
    set_fallback_tag(&fake, IMAGE, vec![entry]);
    let e = discover(&client, &fake, IMAGE, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 1641,
                actual: 1640,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_unknown_index_version_is_a_format_error() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let not_soci = oci_manifest(&[], None, None);
    let not_soci_digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &not_soci);
    let image = annotated_image(&[(annotations::INDEX_DIGEST, &not_soci_digest)]);
    let digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &image);
    let e = discover(&client, &fake, &digest, &DiscoveryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    let text = sochi_format::error_chain(&e);
    assert!(
        text.contains(&not_soci_digest) && text.contains("unknown index version"),
        "{text}"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let none = DiscoveryOptions {
        v1: false,
        v2: false,
        explicit_index: None,
    };
    let e = discover(&client, &fake, IMAGE, &none).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = discover(&client, &fake, "latest", &DiscoveryOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert!(fake.log().is_empty());
}

#[test]
fn defaults_try_v2_then_v1() {
    assert_eq!(
        DiscoveryOptions::default(),
        DiscoveryOptions {
            v2: true,
            v1: true,
            explicit_index: None
        }
    );
}

/// The discovery future must be `Send` (compile-time check).
#[allow(dead_code)]
fn discovery_future_is_send(client: Client, r: Reference, o: DiscoveryOptions) {
    fn send<T: Send>(_: T) {}
    send(client.discover_soci_index(&r, "", &o));
}
