//! The client against an in-process fake registry ([`fake_registry`]) on
//! 127.0.0.1: auth flows, retries, resumed and ranged reads, uploads,
//! referrers. Each test starts its own fake on its own port.

mod discovery;
mod mirrors;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use sochi_format::{media_types, Descriptor, ImageIndex, ImageManifest, Platform};
use tokio::io::AsyncReadExt as _;

use crate::digest::sha256_of;
use crate::{Client, ClientConfig, Error, PushBlob, ReferrerPush};
use sochi_testkit::{Auth, Config, FakeRegistry, FaultAction};

/// A reference to a repository of the fake registry.
pub(super) trait FakeReference {
    fn reference(&self, repository: &str) -> crate::Reference;
}

impl FakeReference for FakeRegistry {
    fn reference(&self, repository: &str) -> crate::Reference {
        crate::Reference::parse(&self.repository(repository)).unwrap()
    }
}

/// A client for tests: no Docker config, fast retries.
pub(super) fn client_with(
    dir: &tempfile::TempDir,
    change: impl FnOnce(&mut ClientConfig),
) -> Client {
    let mut config = ClientConfig {
        docker_config: Some(dir.path().join("no-config.json")),
        min_retry_wait: Duration::from_millis(1),
        max_retry_wait: Duration::from_millis(20),
        stall_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    change(&mut config);
    Client::new(config).unwrap()
}

fn client(dir: &tempfile::TempDir) -> Client {
    client_with(dir, |_| {})
}

/// Deterministic content of `len` bytes.
pub(super) fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn oci_manifest(
    layers: &[Descriptor],
    subject: Option<&Descriptor>,
    artifact_type: Option<&str>,
) -> Vec<u8> {
    ImageManifest {
        schema_version: 2,
        media_type: media_types::OCI_MANIFEST.into(),
        artifact_type: artifact_type.map(str::to_string),
        config: Descriptor::of(artifact_type.unwrap_or(media_types::OCI_CONFIG), b"{}"),
        layers: Some(layers.to_vec()),
        subject: subject.cloned(),
        annotations: BTreeMap::new(),
    }
    .to_go_json()
}

/// Reads a whole blob stream, with the error as ours.
async fn read_all(
    client: &Client,
    fake: &FakeRegistry,
    repo: &str,
    digest: &str,
) -> std::io::Result<Vec<u8>> {
    let mut stream = client
        .get_blob(&fake.reference(repo), digest)
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(out)
}

// --- authentication ---

#[tokio::test]
async fn bearer_flow_reuses_tokens_and_renews_on_401() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer {
            credentials: Some(("alice".into(), "pw".into())),
        },
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.user = Some(("alice".into(), "pw".into())));
    let digest = fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let r = fake.reference("app:v1");

    let (d, _) = client.get_manifest(&r).await.unwrap();
    assert_eq!(d.digest, digest);
    // The clone shares the token: no new token for the same scope.
    client.clone().get_manifest(&r).await.unwrap();
    client.head_manifest(&r).await.unwrap().unwrap();
    assert_eq!(fake.state.lock().tokens_issued, 1);
    let token_requests = fake.requests("GET", "/token");
    assert_eq!(token_requests.len(), 1);
    assert!(
        token_requests[0]
            .query
            .contains("scope=repository%3Aapp%3Apull"),
        "{:?}",
        token_requests[0]
    );
    assert!(token_requests[0].query.contains("service=fake"));

    // The token "expires": one 401, one new token, then success.
    fake.fault("GET", "/manifests/", FaultAction::RevokeTokens);
    client.get_manifest(&r).await.unwrap();
    assert_eq!(fake.state.lock().tokens_issued, 2);

    // Pushing needs another scope, hence another token.
    let blob = Descriptor::of("application/octet-stream", b"layer");
    client
        .push_blob(&r, &blob, Bytes::from_static(b"layer"), None)
        .await
        .unwrap();
    let last = fake.requests("GET", "/token").pop().unwrap();
    assert!(last.query.contains("pull%2Cpush"), "{last:?}");
}

#[tokio::test]
async fn refused_tokens_are_an_error_naming_registry_and_repository() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer { credentials: None },
        refuse_tokens: true,
        access_token_field: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let e = client
        .get_manifest(&fake.reference("team/app:v1"))
        .await
        .unwrap_err();
    // Refused although anonymous: what is missing is credentials.
    assert!(matches!(e, Error::NoCredentials { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&fake.addr.to_string())
            && text.contains("team/app")
            && text.contains("refused again"),
        "{text}"
    );
    // Exactly one renewal: two manifest requests, one token.
    assert_eq!(fake.requests("GET", "/manifests/").len(), 2);
    assert_eq!(fake.state.lock().tokens_issued, 1);
}

#[tokio::test]
async fn bad_token_credentials_are_an_auth_error() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer {
            credentials: Some(("alice".into(), "pw".into())),
        },
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.user = Some(("alice".into(), "wrong".into())));
    let e = client
        .get_manifest(&fake.reference("app:v1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token service") && e.contains("401") && e.contains("bad credentials"),
        "{e}"
    );
}

#[tokio::test]
async fn basic_auth_with_and_without_credentials() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Basic {
            user: "bob".into(),
            password: "secret".into(),
        },
        ..Config::default()
    })
    .await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let r = fake.reference("app:v1");
    let dir = tempfile::tempdir().unwrap();

    let anonymous = client(&dir);
    let e = anonymous.get_manifest(&r).await.unwrap_err();
    assert!(matches!(e, Error::NoCredentials { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("no credentials are configured"), "{e}");

    let wrong = client_with(&dir, |c| c.user = Some(("bob".into(), "nope".into())));
    let e = wrong.get_manifest(&r).await.unwrap_err().to_string();
    assert!(e.contains("refused again"), "{e}");

    let good = client_with(&dir, |c| c.user = Some(("bob".into(), "secret".into())));
    good.get_manifest(&r).await.unwrap();
    // Once the scheme is known, credentials go with the first request.
    let before = fake.log().len();
    good.get_manifest(&r).await.unwrap();
    assert_eq!(fake.log().len(), before + 1);
}

#[tokio::test]
async fn credentials_come_from_the_docker_config() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Basic {
            user: "carol".into(),
            password: "pw".into(),
        },
        ..Config::default()
    })
    .await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"username":"carol","password":"pw"}}}}}}"#,
            fake.addr
        ),
    )
    .unwrap();
    let client = client_with(&dir, |c| c.docker_config = Some(config));
    client
        .get_manifest(&fake.reference("app:v1"))
        .await
        .unwrap();
}

/// Basic auth whose password the test changes while the client runs.
async fn rotating_registry(password: &str) -> (FakeRegistry, crate::Reference) {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Basic {
            user: "dave".into(),
            password: password.into(),
        },
        ..Config::default()
    })
    .await;
    fake.add_manifest(
        "team/app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let r = fake.reference("team/app:v1");
    (fake, r)
}

fn rotate(fake: &FakeRegistry, password: &str) {
    fake.state.lock().config.auth = Auth::Basic {
        user: "dave".into(),
        password: password.into(),
    };
}

#[tokio::test]
async fn a_password_rotated_in_the_docker_config_is_read_again_after_a_401() {
    let (fake, r) = rotating_registry("first").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let write = |password: &str| {
        let json = format!(
            r#"{{"auths":{{"{}":{{"username":"dave","password":"{password}"}}}}}}"#,
            fake.addr
        );
        std::fs::write(&config, json).unwrap();
    };
    write("first");
    let client = client_with(&dir, |c| c.docker_config = Some(config.clone()));
    client.get_manifest(&r).await.unwrap();

    rotate(&fake, "second");
    write("second");
    client.get_manifest(&r).await.unwrap();
    let basic = |password: &str| {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("dave:{password}"));
        format!("Basic {encoded}")
    };
    let sent: Vec<Option<String>> = fake
        .log()
        .iter()
        .rev()
        .take(2)
        .map(|l| l.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        sent,
        [Some(basic("second")), Some(basic("first"))],
        "the old password once, then the new one"
    );
}

/// A keychain the test fills, as the snapshotter's CRI keychain is filled
/// by image pulls.
#[derive(Debug, Default)]
struct TestKeychain(parking_lot::Mutex<BTreeMap<(String, String), crate::Credentials>>);

impl crate::Keychain for TestKeychain {
    fn credentials(&self, registry: &str, repository: &str) -> Option<crate::Credentials> {
        self.0
            .lock()
            .get(&(registry.to_string(), repository.to_string()))
            .cloned()
    }
}

#[tokio::test]
async fn the_keychain_is_asked_per_repository_and_its_newest_entry_wins() {
    let (fake, r) = rotating_registry("first").await;
    let dir = tempfile::tempdir().unwrap();
    let keychain = std::sync::Arc::new(TestKeychain::default());
    let put = |repository: &str, password: &str| {
        keychain.0.lock().insert(
            (r.registry.clone(), repository.to_string()),
            crate::Credentials::Basic {
                username: "dave".into(),
                password: crate::Secret::new(password),
            },
        );
    };
    let client = client_with(&dir, |c| c.keychain = Some(keychain.clone()));
    // Another repository's credentials are not this one's.
    put("team/other", "first");
    let e = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(e, Error::NoCredentials { .. }), "{e:?}");

    put("team/app", "first");
    client.get_manifest(&r).await.unwrap();
    rotate(&fake, "second");
    put("team/app", "second");
    client.get_manifest(&r).await.unwrap();
    // The secret shows nowhere the client prints.
    assert!(!format!("{client:?}").contains("second"));
}

#[tokio::test]
async fn a_registry_token_from_the_keychain_is_sent_as_it_is() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer { credentials: None },
        ..Config::default()
    })
    .await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let r = fake.reference("app:v1");
    let dir = tempfile::tempdir().unwrap();
    let keychain = std::sync::Arc::new(TestKeychain::default());
    keychain.0.lock().insert(
        (r.registry.clone(), r.repository.clone()),
        crate::Credentials::RegistryToken {
            token: crate::Secret::new("not-issued-here"),
        },
    );
    let client = client_with(&dir, |c| c.keychain = Some(keychain.clone()));
    let e = client.get_manifest(&r).await.unwrap_err();
    // The fake issued no such token: refused, and no token was asked for.
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert_eq!(fake.state.lock().tokens_issued, 0);
    let sent = fake.requests("GET", "/manifests/");
    assert_eq!(
        sent.last().unwrap().header("authorization"),
        Some("Bearer not-issued-here")
    );
}

// --- retries ---

#[tokio::test]
async fn retries_429_with_retry_after_and_5xx() {
    let fake = FakeRegistry::start(Config::default()).await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app:v1");

    fake.fault(
        "GET",
        "/manifests/",
        FaultAction::Status(429, vec![("retry-after", "0".into())]),
    );
    client.get_manifest(&r).await.unwrap();
    assert_eq!(fake.requests("GET", "/manifests/").len(), 2);

    for status in [500, 502, 503] {
        fake.fault("GET", "/manifests/", FaultAction::Status(status, vec![]));
    }
    client.get_manifest(&r).await.unwrap();
    assert_eq!(fake.requests("GET", "/manifests/").len(), 6);
}

#[tokio::test]
async fn retry_budget_runs_out_and_4xx_are_not_retried() {
    let fake = FakeRegistry::start(Config::default()).await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.max_retries = 2);
    let r = fake.reference("app:v1");
    for _ in 0..3 {
        fake.fault("GET", "/manifests/", FaultAction::Status(503, vec![]));
    }
    let e = client.get_manifest(&r).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("GET http://127.0.0.1:") && text.contains("/v2/app/manifests/v1"),
        "{text}"
    );
    assert!(text.contains("FAULT: injected"), "{text}");
    assert_eq!(fake.requests("GET", "/manifests/").len(), 3);

    let e = client
        .get_manifest(&fake.reference("app:none"))
        .await
        .unwrap_err();
    assert!(e.is_not_found());
    assert!(
        e.to_string().contains("MANIFEST_UNKNOWN: manifest unknown"),
        "{e}"
    );
    assert_eq!(fake.requests("GET", "/manifests/none").len(), 1);
}

#[tokio::test]
async fn connection_refused_names_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.max_retries = 1);
    let r = crate::Reference::parse(&format!("{addr}/app:v1")).unwrap();
    let e = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(e, Error::Connection { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("http://{addr}/v2/app/manifests/v1")),
        "{e}"
    );
}

// --- manifests ---

#[tokio::test]
async fn manifests_are_verified_by_digest_and_docker_content_digest() {
    let fake = FakeRegistry::start(Config::default()).await;
    let bytes = oci_manifest(&[], None, None);
    let digest = fake.add_manifest("app", Some("v1"), media_types::OCI_MANIFEST, &bytes);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app:v1");

    let (d, got) = client.get_manifest(&r.with_digest(&digest)).await.unwrap();
    assert_eq!(
        (d.media_type.as_str(), d.size, got),
        (media_types::OCI_MANIFEST, bytes.len() as i64, bytes.clone())
    );

    // Other bytes stored under the digest: refused.
    let wrong = sha256_of(b"something else");
    fake.add_manifest_as("app", &wrong, media_types::OCI_MANIFEST, &bytes);
    let e = client
        .get_manifest(&r.with_digest(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::DigestMismatch { expected, actual, .. } if *expected == wrong && *actual == digest),
        "{e:?}"
    );

    // By tag, the announced digest must match.
    fake.fault(
        "GET",
        "/manifests/v1",
        FaultAction::WrongDigestHeader(wrong.clone()),
    );
    let e = client.get_manifest(&r).await.unwrap_err().to_string();
    assert!(e.contains("digest mismatch") && e.contains(&wrong), "{e}");

    // The Content-Type is generic: the document's mediaType is used.
    let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"a","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    fake.add_manifest("app", Some("docker"), "application/json", docker);
    let (d, _) = client
        .get_manifest(&fake.reference("app:docker"))
        .await
        .unwrap();
    assert_eq!(d.media_type, media_types::DOCKER_MANIFEST);

    let accept = &fake.requests("GET", "/manifests/").pop().unwrap();
    let accept = accept.header("accept").unwrap();
    for t in [
        media_types::OCI_MANIFEST,
        media_types::OCI_INDEX,
        media_types::DOCKER_MANIFEST,
        media_types::DOCKER_MANIFEST_LIST,
    ] {
        assert!(accept.contains(t), "{accept}");
    }
}

#[tokio::test]
async fn head_put_delete_manifests() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app:v2");
    assert_eq!(client.head_manifest(&r).await.unwrap(), None);

    let bytes = oci_manifest(&[], None, None);
    let put = client
        .put_manifest(&r, media_types::OCI_MANIFEST, &bytes)
        .await
        .unwrap();
    assert_eq!(put.digest, sha256_of(&bytes));
    assert!(!put.subject_indexed);
    assert_eq!(fake.tagged("app", "v2").unwrap().1, bytes);
    assert_eq!(
        fake.requests("PUT", "/manifests/v2")[0].header("content-type"),
        Some(media_types::OCI_MANIFEST)
    );

    let head = client.head_manifest(&r).await.unwrap().unwrap();
    assert_eq!(
        (head.digest.as_str(), head.size),
        (put.digest.as_str(), bytes.len() as i64)
    );
    assert_eq!(head.media_type, media_types::OCI_MANIFEST);

    // By digest: the bytes must be those of the digest.
    let e = client
        .put_manifest(
            &r.with_digest(&sha256_of(b"x")),
            media_types::OCI_MANIFEST,
            &bytes,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");

    client
        .delete_manifest(&r.with_digest(&put.digest))
        .await
        .unwrap();
    assert!(!fake.has_manifest("app", &put.digest));
    assert!(client.delete_manifest(&r).await.is_err());
}

#[tokio::test]
async fn resolve_platform_follows_the_index() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let amd = oci_manifest(
        &[Descriptor::of(media_types::OCI_LAYER_GZIP, b"amd")],
        None,
        None,
    );
    let arm = oci_manifest(
        &[Descriptor::of(media_types::OCI_LAYER_GZIP, b"arm")],
        None,
        None,
    );
    let amd_digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &amd);
    let arm_digest = fake.add_manifest("app", None, media_types::OCI_MANIFEST, &arm);
    let entry = |bytes: &[u8], p: &str| Descriptor {
        platform: Some(Platform::parse(p).unwrap()),
        ..Descriptor::of(media_types::OCI_MANIFEST, bytes)
    };
    let index = ImageIndex {
        schema_version: 2,
        media_type: media_types::OCI_INDEX.into(),
        manifests: Some(vec![entry(&amd, "linux/amd64"), entry(&arm, "linux/arm64")]),
        ..ImageIndex::default()
    };
    fake.add_manifest(
        "app",
        Some("multi"),
        media_types::OCI_INDEX,
        &index.to_go_json(),
    );
    let r = fake.reference("app:multi");
    let (d, bytes) = client
        .resolve_platform(&r, &Platform::parse("linux/arm64/v8").unwrap())
        .await
        .unwrap();
    assert_eq!((d.digest.as_str(), bytes), (arm_digest.as_str(), arm));
    assert_eq!(d.platform.unwrap().architecture, "arm64");
    let (d, _) = client
        .resolve_platform(&r, &Platform::parse("linux/amd64").unwrap())
        .await
        .unwrap();
    assert_eq!(d.digest, amd_digest);
    let e = client
        .resolve_platform(&r, &Platform::parse("linux/s390x").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("linux/amd64, linux/arm64"), "{e}");
}

// --- blobs: streams, resume, ranges ---

#[tokio::test]
async fn blob_stream_resumes_after_a_cut_body() {
    let fake = FakeRegistry::start(Config::default()).await;
    let data = content(100_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);

    assert_eq!(
        client
            .blob_size(&fake.reference("app"), &blob.digest)
            .await
            .unwrap(),
        Some(100_000)
    );
    assert_eq!(
        client
            .blob_size(&fake.reference("app"), &sha256_of(b"none"))
            .await
            .unwrap(),
        None
    );

    fake.fault("GET", "/blobs/", FaultAction::Cut(30_000));
    let got = read_all(&client, &fake, "app", &blob.digest).await.unwrap();
    assert!(got == data, "resumed content differs");
    let gets = fake.requests("GET", "/blobs/");
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].header("range"), None);
    let resumed_at: u64 = gets[1]
        .header("range")
        .unwrap()
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at > 0 && resumed_at <= 30_000, "{resumed_at}");
}

#[tokio::test]
async fn blob_stream_handles_a_200_answer_to_a_resume() {
    let fake = FakeRegistry::start(Config::default()).await;
    let data = content(50_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    fake.fault("GET", "/blobs/", FaultAction::Cut(20_000));
    fake.fault("GET", "/blobs/", FaultAction::IgnoreRange);
    let got = read_all(&client, &fake, "app", &blob.digest).await.unwrap();
    assert!(got == data, "content after a 200 resume differs");
    assert!(fake.requests("GET", "/blobs/")[1].header("range").is_some());
}

#[tokio::test]
async fn blob_stream_resumes_a_stalled_body() {
    let fake = FakeRegistry::start(Config::default()).await;
    let data = content(40_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.stall_timeout = Duration::from_millis(300));
    fake.fault("GET", "/blobs/", FaultAction::Stall(10_000));
    let got = read_all(&client, &fake, "app", &blob.digest).await.unwrap();
    assert!(got == data, "content after a stall differs");
    assert_eq!(fake.requests("GET", "/blobs/").len(), 2);
}

#[tokio::test]
async fn blob_stream_gives_up_after_the_retry_budget() {
    let fake = FakeRegistry::start(Config::default()).await;
    let blob = fake.add_blob("app", &content(10_000));
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.max_retries = 2);
    for _ in 0..3 {
        fake.fault("GET", "/blobs/", FaultAction::Cut(10));
    }
    let e = read_all(&client, &fake, "app", &blob.digest)
        .await
        .unwrap_err();
    let inner = e.get_ref().unwrap().downcast_ref::<Error>().unwrap();
    assert!(
        matches!(inner, Error::Connection { .. } | Error::Malformed { .. }),
        "{inner:?}"
    );
    assert_eq!(fake.requests("GET", "/blobs/").len(), 3);
}

#[tokio::test]
async fn blob_digest_mismatch_is_detected() {
    let fake = FakeRegistry::start(Config::default()).await;
    let claimed = Descriptor::of("application/octet-stream", b"the real content");
    fake.add_blob_as("app", &claimed.digest, b"the fake content");
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let e = client
        .read_blob(&fake.reference("app"), &claimed)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::DigestMismatch { expected, actual, .. } if *expected == claimed.digest && *actual == sha256_of(b"the fake content")),
        "{e:?}"
    );
    // Read once more before giving up (the damage may have been on the way).
    assert_eq!(fake.requests("GET", "/blobs/").len(), 2);
    let e = read_all(&client, &fake, "app", &claimed.digest)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);

    // And a size that is not the descriptor's.
    let real = fake.add_blob("app", b"12345");
    let e = client
        .read_blob(
            &fake.reference("app"),
            &Descriptor {
                size: 4,
                ..real.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                expected: 4,
                actual: 5,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        client
            .read_blob(&fake.reference("app"), &real)
            .await
            .unwrap(),
        b"12345"
    );
    let huge = Descriptor {
        size: 1 << 40,
        ..real
    };
    assert!(matches!(
        client.read_blob(&fake.reference("app"), &huge).await,
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn range_requests_to_one_registry_wait_for_a_turn_and_background_ones_apart() {
    let fake = FakeRegistry::start(Config::default()).await;
    let data = content(10_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |config| {
        config.max_range_requests_per_host = 2;
        config.max_background_requests_per_host = 1;
    });
    let r = fake.reference("app");
    // The first two readers' requests are never answered.
    fake.fault("GET", "/blobs/", FaultAction::Hang);
    fake.fault("GET", "/blobs/", FaultAction::Hang);
    let readers: Vec<_> = (0..3u64)
        .map(|n| {
            let (client, r, digest) = (client.clone(), r.clone(), blob.digest.clone());
            tokio::spawn(async move {
                client
                    .get_blob_range(&r, &digest, n * 100..n * 100 + 10)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Two in flight, the third waits for a turn, not on the wire.
    assert_eq!(fake.requests("GET", "/blobs/").len(), 2);
    // A background read has turns of its own.
    let background = client
        .get_blob_range_in_background(&r, &blob.digest, 5000..5010)
        .await
        .unwrap();
    assert_eq!(&background[..], &data[5000..5010]);
    assert_eq!(fake.requests("GET", "/blobs/").len(), 3);
    // Hung readers give up (their turns with them); the waiting one goes.
    let mut readers = readers.into_iter();
    for hung in readers.by_ref().take(2) {
        hung.abort();
        let _ = hung.await;
    }
    let third = readers.next().unwrap().await.unwrap().unwrap();
    assert_eq!(&third[..], &data[200..210]);
}

#[tokio::test]
async fn range_reads_from_206_and_200_answers() {
    let fake = FakeRegistry::start(Config::default()).await;
    let data = content(70_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app");

    let got = client
        .get_blob_range(&r, &blob.digest, 1000..1100)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[1000..1100]);
    assert_eq!(
        fake.requests("GET", "/blobs/")[0].header("range"),
        Some("bytes=1000-1099")
    );

    fake.fault("GET", "/blobs/", FaultAction::IgnoreRange);
    let got = client
        .get_blob_range(&r, &blob.digest, 60_000..65_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[60_000..65_000]);

    // A cut range body is asked again for the rest.
    fake.fault("GET", "/blobs/", FaultAction::Cut(2000));
    let got = client
        .get_blob_range(&r, &blob.digest, 10_000..20_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[10_000..20_000]);
    assert_eq!(
        fake.requests("GET", "/blobs/")
            .pop()
            .unwrap()
            .header("range"),
        Some("bytes=12000-19999")
    );

    assert!(client
        .get_blob_range(&r, &blob.digest, 5..5)
        .await
        .unwrap()
        .is_empty());
    let e = client
        .get_blob_range(&r, &blob.digest, 69_990..70_010)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Content-Range"), "{e}");
    let e = client
        .get_blob_range(&r, &blob.digest, 80_000..80_010)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(416), "{e}");
}

#[tokio::test]
async fn blob_redirects_are_followed_without_authorization() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer { credentials: None },
        redirect_blobs: true,
        ..Config::default()
    })
    .await;
    let data = content(5000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app");
    assert_eq!(client.read_blob(&r, &blob).await.unwrap(), data);
    assert_eq!(
        &client
            .get_blob_range(&r, &blob.digest, 10..20)
            .await
            .unwrap()[..],
        &data[10..20]
    );
    let storage = fake.requests("GET", "/_storage/");
    assert_eq!(storage.len(), 2);
    for s in &storage {
        assert!(s.host.starts_with("localhost:"), "{s:?}");
        assert_eq!(s.header("authorization"), None, "{s:?}");
    }
    assert_eq!(storage[1].header("range"), Some("bytes=10-19"));
    // Errors from the redirect target do not show its signature.
    fake.fault("GET", "/_storage/", FaultAction::Error(403, "AccessDenied"));
    let e = client.read_blob(&r, &blob).await.unwrap_err().to_string();
    assert!(
        e.contains("X-Amz-Signature=redacted") && !e.contains("secret"),
        "{e}"
    );
    // The registry itself got the token.
    assert!(fake
        .requests("GET", "/v2/app/blobs/")
        .iter()
        .any(|l| l.header("authorization").is_some()));
}

// --- pushing blobs ---

#[tokio::test]
async fn monolithic_uploads_with_relative_and_absolute_locations() {
    for absolute in [false, true] {
        let fake = FakeRegistry::start(Config {
            absolute_locations: absolute,
            ..Config::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let client = client(&dir);
        let r = fake.reference("app");
        let data = content(3000);
        let blob = Descriptor::of("application/octet-stream", &data);
        let pushed = client
            .push_blob(&r, &blob, Bytes::from(data.clone()), None)
            .await
            .unwrap();
        assert_eq!(pushed, PushBlob::Uploaded);
        assert_eq!(fake.blob("app", &blob.digest).unwrap(), data);
        let put = &fake.requests("PUT", "/blobs/uploads/")[0];
        // The session's own query is kept and the digest appended.
        assert!(
            put.query.starts_with("_state=s1-0&digest=sha256%3A"),
            "{put:?}"
        );
        assert!(fake.requests("PATCH", "/").is_empty());

        // Pushed again: HEAD says it exists, nothing is sent.
        let pushed = client
            .push_blob(&r, &blob, Bytes::from(data.clone()), None)
            .await
            .unwrap();
        assert_eq!(pushed, PushBlob::Exists);
        assert_eq!(fake.requests("POST", "/blobs/uploads/").len(), 1);

        // The stream variant, small enough for one PUT.
        let other = content(2000);
        let other_blob = Descriptor::of("application/octet-stream", &other);
        let pushed = client
            .push_blob_stream(&r, &other_blob, std::io::Cursor::new(other.clone()), None)
            .await
            .unwrap();
        assert_eq!(pushed, PushBlob::Uploaded);
        assert_eq!(fake.blob("app", &other_blob.digest).unwrap(), other);
    }
}

#[tokio::test]
async fn chunked_uploads_from_a_stream_and_from_bytes() {
    let fake = FakeRegistry::start(Config {
        absolute_locations: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.chunk_size = 1000);
    let r = fake.reference("app");
    let data = content(3500);
    let blob = Descriptor::of("application/octet-stream", &data);
    let pushed = client
        .push_blob_stream(&r, &blob, std::io::Cursor::new(data.clone()), None)
        .await
        .unwrap();
    assert_eq!(pushed, PushBlob::Uploaded);
    assert_eq!(fake.blob("app", &blob.digest).unwrap(), data);
    let ranges: Vec<_> = fake
        .requests("PATCH", "/blobs/uploads/")
        .iter()
        .map(|l| l.header("content-range").unwrap().to_string())
        .collect();
    assert_eq!(ranges, ["0-999", "1000-1999", "2000-2999", "3000-3499"]);
    let put = fake.requests("PUT", "/blobs/uploads/").pop().unwrap();
    assert_eq!(put.header("content-length"), Some("0"));

    // Exactly a multiple of the chunk size, from bytes.
    let data = content(2000).into_iter().rev().collect::<Vec<_>>();
    let blob = Descriptor::of("application/octet-stream", &data);
    client
        .push_blob(
            &fake.reference("other"),
            &blob,
            Bytes::from(data.clone()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(fake.blob("other", &blob.digest).unwrap(), data);
    assert_eq!(fake.requests("PATCH", "/v2/other/").len(), 2);
}

#[tokio::test]
async fn stream_content_must_match_the_descriptor() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.chunk_size = 1000);
    let r = fake.reference("app");
    let data = content(2500);
    let blob = Descriptor::of("application/octet-stream", &data);
    let mut wrong = data.clone();
    wrong[2000] ^= 1;
    let e = client
        .push_blob_stream(&r, &blob, std::io::Cursor::new(wrong), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
    let short = data[..2400].to_vec();
    let e = client
        .push_blob_stream(&r, &blob, std::io::Cursor::new(short), None)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("ended after 2400 of the 2500 bytes"),
        "{e}"
    );
    let mut long = data.clone();
    long.push(0);
    let e = client
        .push_blob_stream(&r, &blob, std::io::Cursor::new(long), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("more than the 2500 bytes"), "{e}");
    assert!(fake.blob("app", &blob.digest).is_none());
    // Each refused upload was cancelled.
    assert_eq!(fake.requests("DELETE", "/blobs/uploads/").len(), 3);

    let e = client
        .push_blob(&r, &blob, Bytes::from_static(b"other"), None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}

#[tokio::test]
async fn digest_invalid_from_the_registry_is_a_clear_error() {
    let fake = FakeRegistry::start(Config {
        corrupt_uploads: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let blob = Descriptor::of("application/octet-stream", b"content");
    let e = client
        .push_blob(
            &fake.reference("app"),
            &blob,
            Bytes::from_static(b"content"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestRejected { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(blob.digest.as_str())
            && text.contains("app")
            && text.contains("do not match"),
        "{text}"
    );
}

#[tokio::test]
async fn cross_repository_mounts() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let data = content(1234);
    let blob = fake.add_blob("base", &data);
    let pushed = client
        .push_blob(
            &fake.reference("app"),
            &blob,
            Bytes::from(data.clone()),
            Some("base"),
        )
        .await
        .unwrap();
    assert_eq!(pushed, PushBlob::Mounted);
    let post = &fake.requests("POST", "/v2/app/blobs/uploads/")[0];
    assert!(
        post.query.contains("mount=sha256%3A") && post.query.contains("from=base"),
        "{post:?}"
    );
    assert!(fake.requests("PUT", "/").is_empty());

    // Not mounted (202): the session it opened takes the upload.
    fake.state.lock().config.refuse_mounts = true;
    let pushed = client
        .push_blob(
            &fake.reference("app2"),
            &blob,
            Bytes::from(data.clone()),
            Some("base"),
        )
        .await
        .unwrap();
    assert_eq!(pushed, PushBlob::Uploaded);
    assert_eq!(fake.requests("POST", "/v2/app2/blobs/uploads/").len(), 1);
    assert_eq!(fake.blob("app2", &blob.digest).unwrap(), data);
}

#[tokio::test]
async fn mount_scope_asks_for_pull_on_the_source() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer { credentials: None },
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let blob = fake.add_blob("base", b"shared");
    client
        .push_blob(
            &fake.reference("app"),
            &blob,
            Bytes::from_static(b"shared"),
            Some("base"),
        )
        .await
        .unwrap();
    let tokens = fake.requests("GET", "/token");
    assert!(
        tokens
            .iter()
            .any(|t| t.query.contains("scope=repository%3Abase%3Apull")),
        "{tokens:?}"
    );
}

// --- referrers ---

const SOCI_V1: &str = media_types::SOCI_INDEX_V1;

fn referrer(subject: &Descriptor, tag: &[u8]) -> Vec<u8> {
    oci_manifest(
        &[Descriptor::of(media_types::ZTOC, tag)],
        Some(subject),
        Some(SOCI_V1),
    )
}

#[tokio::test]
async fn referrers_api_present() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        page_size: 1,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app:v1");
    let image = oci_manifest(&[], None, None);
    fake.add_manifest("app", Some("v1"), media_types::OCI_MANIFEST, &image);
    let subject = Descriptor::of(media_types::OCI_MANIFEST, &image);

    let mut annotations = BTreeMap::new();
    annotations.insert("k".to_string(), "v".to_string());
    for tag in [b"a".as_slice(), b"b"] {
        let pushed = client
            .push_referrer(
                &r,
                &referrer(&subject, tag),
                media_types::OCI_MANIFEST,
                &subject,
                SOCI_V1,
                &annotations,
            )
            .await
            .unwrap();
        assert_eq!(pushed, ReferrerPush::Api);
    }
    let other = oci_manifest(&[], Some(&subject), Some("application/other"));
    fake.add_manifest("app", None, media_types::OCI_MANIFEST, &other);

    // Three pages of one; the client filters (no OCI-Filters-Applied).
    let found = client
        .referrers(&r, &subject.digest, Some(SOCI_V1))
        .await
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found
        .iter()
        .all(|d| d.artifact_type.as_deref() == Some(SOCI_V1)));
    assert_eq!(fake.requests("GET", "/referrers/").len(), 3);
    assert_eq!(
        client
            .referrers(&r, &subject.digest, None)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(fake
        .tagged("app", &format!("sha256-{}", &subject.digest[7..]))
        .is_none());
    let first = &fake.requests("GET", "/referrers/")[0];
    assert!(
        first
            .query
            .contains("artifactType=application%2Fvnd.amazon.soci.index.v1%2Bjson"),
        "{first:?}"
    );
}

#[tokio::test]
async fn referrers_filters_applied_by_the_registry() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        filters_applied: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let image = oci_manifest(&[], None, None);
    let subject = Descriptor::of(media_types::OCI_MANIFEST, &image);
    fake.add_manifest(
        "app",
        None,
        media_types::OCI_MANIFEST,
        &referrer(&subject, b"x"),
    );
    fake.add_manifest(
        "app",
        None,
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], Some(&subject), Some("t/other")),
    );
    let found = client
        .referrers(&fake.reference("app"), &subject.digest, Some(SOCI_V1))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn referrers_fall_back_to_the_tag_schema() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let r = fake.reference("app:v1");
    let image = oci_manifest(&[], None, None);
    fake.add_manifest("app", Some("v1"), media_types::OCI_MANIFEST, &image);
    let subject = Descriptor::of(media_types::OCI_MANIFEST, &image);
    let tag = format!("sha256-{}", &subject.digest["sha256:".len()..]);

    assert!(client
        .referrers(&r, &subject.digest, None)
        .await
        .unwrap()
        .is_empty());

    let mut annotations = BTreeMap::new();
    annotations.insert("com.amazon.soci.index-digest".to_string(), "x".to_string());
    let first = referrer(&subject, b"one");
    let pushed = client
        .push_referrer(
            &r,
            &first,
            media_types::OCI_MANIFEST,
            &subject,
            SOCI_V1,
            &annotations,
        )
        .await
        .unwrap();
    assert_eq!(pushed, ReferrerPush::FallbackTag);
    assert!(fake.has_manifest("app", &sha256_of(&first)));
    let (first_index_digest, index_bytes) = fake.tagged("app", &tag).unwrap();
    let expected = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"com.amazon.soci.index-digest":"x"}},"artifactType":"{SOCI_V1}"}}]}}"#,
        sha256_of(&first),
        first.len()
    );
    assert_eq!(String::from_utf8(index_bytes.to_vec()).unwrap(), expected);
    assert_eq!(
        fake.requests("PUT", &format!("/manifests/{tag}"))[0].header("content-type"),
        Some(media_types::OCI_INDEX)
    );

    let second = referrer(&subject, b"two");
    client
        .push_referrer(
            &r,
            &second,
            media_types::OCI_MANIFEST,
            &subject,
            SOCI_V1,
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    // The same referrer again: not listed twice.
    client
        .push_referrer(
            &r,
            &second,
            media_types::OCI_MANIFEST,
            &subject,
            SOCI_V1,
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let (_, index_bytes) = fake.tagged("app", &tag).unwrap();
    let index = ImageIndex::from_json(&index_bytes).unwrap();
    assert_eq!(index.manifests().len(), 2);
    // The previous tag index was deleted.
    assert!(!fake.has_manifest("app", &first_index_digest));

    let other = oci_manifest(&[], Some(&subject), Some("t/other"));
    client
        .push_referrer(
            &r,
            &other,
            media_types::OCI_MANIFEST,
            &subject,
            "t/other",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let found = client
        .referrers(&r, &subject.digest, Some(SOCI_V1))
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|d| d.digest.clone()).collect::<Vec<_>>(),
        [sha256_of(&first), sha256_of(&second)]
    );
    assert_eq!(
        client
            .referrers(&r, &subject.digest, None)
            .await
            .unwrap()
            .len(),
        3
    );
    // What the repository supports was learned once.
    assert_eq!(fake.requests("GET", "/referrers/").len(), 1);
}

#[tokio::test]
async fn referrers_404_name_unknown_is_an_error_other_404s_mean_no_api() {
    let fake = FakeRegistry::start(Config {
        referrers_api: true,
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let digest = sha256_of(b"x");
    let r = fake.reference("app");
    fake.fault(
        "GET",
        "/referrers/",
        FaultAction::Error(404, "NAME_UNKNOWN"),
    );
    let e = client.referrers(&r, &digest, None).await.unwrap_err();
    assert!(
        e.is_not_found() && e.to_string().contains("NAME_UNKNOWN"),
        "{e}"
    );

    // Another 404: no referrers API; the fallback tag does not exist.
    fake.fault("GET", "/referrers/", FaultAction::Error(404, "NOT_FOUND"));
    assert!(client
        .referrers(&r, &digest, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        fake.requests("GET", &format!("/manifests/sha256-{}", &digest[7..]))
            .len(),
        1
    );
    // Remembered: the API is not asked again.
    assert!(client
        .referrers(&r, &digest, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(fake.requests("GET", "/referrers/").len(), 2);
}

// --- more failure modes ---

#[tokio::test]
async fn identity_tokens_use_the_refresh_token_grant() {
    let fake = FakeRegistry::start(Config {
        auth: Auth::Bearer { credentials: None },
        refresh_token: Some("refresh-me".into()),
        ..Config::default()
    })
    .await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"refresh-me"}}}}}}"#,
            fake.addr
        ),
    )
    .unwrap();
    let client = client_with(&dir, |c| c.docker_config = Some(config));
    client
        .get_manifest(&fake.reference("app:v1"))
        .await
        .unwrap();
    let posts = fake.requests("POST", "/token");
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn silent_servers_are_stalls_retried_then_reported() {
    let fake = FakeRegistry::start(Config::default()).await;
    fake.add_manifest(
        "app",
        Some("v1"),
        media_types::OCI_MANIFEST,
        &oci_manifest(&[], None, None),
    );
    let data = content(30_000);
    let blob = fake.add_blob("app", &data);
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| {
        c.stall_timeout = Duration::from_millis(200);
        c.max_retries = 1;
    });
    let r = fake.reference("app:v1");

    // Headers that never come: retried once.
    fake.fault("GET", "/manifests/", FaultAction::Hang);
    client.get_manifest(&r).await.unwrap();
    fake.fault("GET", "/manifests/", FaultAction::Hang);
    fake.fault("GET", "/manifests/", FaultAction::Hang);
    let e = client.get_manifest(&r).await.unwrap_err();
    assert!(matches!(e, Error::Stalled { .. }), "{e:?}");
    assert!(
        e.to_string().contains("/v2/app/manifests/v1")
            && e.to_string().contains("no data for 0.2 s"),
        "{e}"
    );

    // A range body that stops: the rest is asked for.
    fake.fault("GET", "/blobs/", FaultAction::Stall(1000));
    let got = client
        .get_blob_range(&r, &blob.digest, 0..20_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..20_000]);
    assert_eq!(
        fake.requests("GET", "/blobs/")
            .pop()
            .unwrap()
            .header("range"),
        Some("bytes=1000-19999")
    );
}

#[tokio::test]
async fn lost_answers_to_uploads_are_recovered() {
    let fake = FakeRegistry::start(Config::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_with(&dir, |c| c.chunk_size = 1000);
    let r = fake.reference("app");

    // The first PATCH arrives but its answer is lost (503): the retry gets
    // 416, the upload's status shows the chunk is there, the upload goes on.
    let data = content(2500);
    let blob = Descriptor::of("application/octet-stream", &data);
    fake.fault("PATCH", "/blobs/uploads/", FaultAction::ThenStatus(503));
    let pushed = client
        .push_blob_stream(&r, &blob, std::io::Cursor::new(data.clone()), None)
        .await
        .unwrap();
    assert_eq!(pushed, PushBlob::Uploaded);
    assert_eq!(fake.blob("app", &blob.digest).unwrap(), data);
    assert_eq!(fake.requests("GET", "/blobs/uploads/").len(), 1);
    let ranges: Vec<_> = fake
        .requests("PATCH", "/")
        .iter()
        .map(|l| l.header("content-range").unwrap().to_string())
        .collect();
    assert_eq!(ranges, ["0-999", "0-999", "1000-1999", "2000-2499"]);

    // The final PUT is committed but its answer lost: the retry finds no
    // session, and the blob is there.
    let other = content(500);
    let other_blob = Descriptor::of("application/octet-stream", &other);
    fake.fault("PUT", "/blobs/uploads/", FaultAction::ThenStatus(503));
    let pushed = client
        .push_blob(&r, &other_blob, Bytes::from(other.clone()), None)
        .await
        .unwrap();
    assert_eq!(pushed, PushBlob::Uploaded);
    assert_eq!(fake.requests("PUT", "/blobs/uploads/").len(), 3);
}

#[tokio::test]
async fn head_manifest_needs_no_get() {
    let fake = FakeRegistry::start(Config::default()).await;
    let bytes = oci_manifest(&[], None, None);
    let digest = fake.add_manifest("app", Some("v1"), media_types::OCI_MANIFEST, &bytes);
    let dir = tempfile::tempdir().unwrap();
    let client = client(&dir);
    let d = client
        .head_manifest(&fake.reference("app:v1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.digest.to_string(), d.size), (digest, bytes.len() as i64));
    assert!(fake.requests("GET", "/").is_empty());
}

/// The types and futures the CLI spawns must be `Send` (compile-time check).
#[allow(dead_code)]
fn client_futures_are_send(client: Client, r: crate::Reference, d: Descriptor, p: Platform) {
    fn send<T: Send>(_: T) {}
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn stream<T: tokio::io::AsyncRead + Send + Unpin + 'static>() {}
    send_sync::<Client>();
    stream::<crate::BlobStream>();
    send(client.get_manifest(&r));
    send(client.head_manifest(&r));
    send(client.put_manifest(&r, "", b""));
    send(client.delete_manifest(&r));
    send(client.blob_size(&r, ""));
    send(client.get_blob(&r, ""));
    send(client.get_blob_range(&r, "", 0..1));
    send(client.read_blob(&r, &d));
    send(client.push_blob(&r, &d, Bytes::new(), None));
    send(client.push_blob_stream(&r, &d, std::io::Cursor::new(Vec::new()), None));
    send(client.referrers(&r, "", None));
    send(client.push_referrer(&r, b"", "", &d, "", &BTreeMap::new()));
    send(client.resolve_platform(&r, &p));
}
