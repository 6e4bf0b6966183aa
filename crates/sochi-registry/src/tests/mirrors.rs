//! Mirrors from a `hosts.toml` directory: reads go to the mirror first and
//! fail over to the next host, then the origin; writes go to the origin;
//! every host is counted.

use std::collections::HashMap;

use bytes::Bytes;
use sochi_format::media_types;
use sochi_testkit::{Config, FakeRegistry, FaultAction};

use super::FakeReference as _;
use super::{client_with, content, oci_manifest};
use crate::{HostsConfig, Mirror};

/// An origin and a mirror holding the same manifest and blob, and a
/// `hosts.toml` for the origin naming `mirrors` (URLs) in order.
struct Pair {
    origin: FakeRegistry,
    mirror: FakeRegistry,
    blob: sochi_format::Descriptor,
    dir: tempfile::TempDir,
}

async fn pair() -> Pair {
    let origin = FakeRegistry::start(Config::default()).await;
    let mirror = FakeRegistry::start(Config::default()).await;
    let manifest = oci_manifest(&[], None, None);
    let mut blob = None;
    for fake in [&origin, &mirror] {
        fake.add_manifest("team/app", Some("v1"), media_types::OCI_MANIFEST, &manifest);
        blob = Some(fake.add_blob("team/app", &content(50_000)));
    }
    Pair {
        origin,
        mirror,
        blob: blob.unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Pair {
    fn hosts_toml(&self, text: &str) -> HostsConfig {
        let dir = self.dir.path().join("certs.d");
        let host_dir = dir.join(self.origin.addr.to_string());
        std::fs::create_dir_all(&host_dir).unwrap();
        std::fs::write(host_dir.join("hosts.toml"), text).unwrap();
        HostsConfig {
            dir: Some(dir),
            mirrors: HashMap::new(),
        }
    }

    fn mirror_first(&self) -> HostsConfig {
        self.hosts_toml(&format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
            self.origin.addr, self.mirror.addr
        ))
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn reads_go_to_the_mirror_with_the_registry_named() {
    let p = pair().await;
    let client = client_with(&p.dir, |c| c.hosts = p.mirror_first());
    let r = p.origin.reference("team/app:v1");
    client.get_manifest(&r).await.unwrap();
    let range = client
        .get_blob_range(&r, &p.blob.digest, 100..200)
        .await
        .unwrap();
    assert_eq!(&range[..], &content(50_000)[100..200]);
    assert!(p.origin.log().is_empty(), "{:?}", p.origin.log());
    let sent = p.mirror.log();
    assert_eq!(sent.len(), 2);
    for request in &sent {
        let ns = p.origin.addr.to_string().replace(':', "%3A");
        assert_eq!(request.query, format!("ns={ns}"), "{request:?}");
    }
    let stats = client.host_stats();
    assert_eq!(stats[&p.mirror.addr.to_string()].requests, 2);
    assert!(!stats.contains_key(&p.origin.addr.to_string()));
}

#[tokio::test]
async fn a_mirror_that_is_down_fails_over_to_the_origin_and_is_passed_over() {
    let p = pair().await;
    let dead = closed_port();
    let hosts = p.hosts_toml(&format!(
        "[host.\"http://127.0.0.1:{dead}\"]\n[host.\"http://{}\"]\n",
        p.mirror.addr
    ));
    // The live mirror answers 503 for blobs: on to the origin.
    p.mirror
        .fault("GET", "/blobs/", FaultAction::Status(503, vec![]));
    let client = client_with(&p.dir, |c| c.hosts = hosts);
    let r = p.origin.reference("team/app:v1");
    let range = client
        .get_blob_range(&r, &p.blob.digest, 0..10)
        .await
        .unwrap();
    assert_eq!(&range[..], &content(50_000)[..10]);
    assert_eq!(p.origin.requests("GET", "/blobs/").len(), 1);
    let stats = client.host_stats();
    let dead_host = format!("127.0.0.1:{dead}");
    assert_eq!(stats[&dead_host].failovers, 1);
    assert_eq!(stats[&p.mirror.addr.to_string()].failovers, 1);

    // The dead mirror is passed over for a while; the live one is asked
    // again and now answers.
    client.get_manifest(&r).await.unwrap();
    assert_eq!(client.host_stats()[&dead_host].requests, 1);
    assert_eq!(p.mirror.requests("GET", "/manifests/").len(), 1);
}

#[tokio::test]
async fn a_mirror_without_the_content_sends_the_read_to_the_origin() {
    let p = pair().await;
    let client = client_with(&p.dir, |c| c.hosts = p.mirror_first());
    let other = p.origin.add_blob("team/app", b"only at the origin");
    let r = p.origin.reference("team/app:v1");
    let bytes = client
        .get_blob_range(&r, &other.digest, 0..4)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"only");
    assert_eq!(p.mirror.requests("GET", "/blobs/").len(), 1);
    assert_eq!(p.origin.requests("GET", "/blobs/").len(), 1);
}

#[tokio::test]
async fn tags_go_only_to_hosts_that_resolve_and_writes_only_to_the_origin() {
    let p = pair().await;
    let hosts = p.hosts_toml(&format!(
        "[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
        p.mirror.addr
    ));
    let client = client_with(&p.dir, |c| c.hosts = hosts);
    let r = p.origin.reference("team/app:v1");
    let (descriptor, _) = client.get_manifest(&r).await.unwrap();
    assert!(
        p.mirror.log().is_empty(),
        "a tag is not resolved by a pull-only mirror"
    );
    let by_digest = p
        .origin
        .reference(&format!("team/app@{}", descriptor.digest));
    client.get_manifest(&by_digest).await.unwrap();
    assert_eq!(p.mirror.requests("GET", "/manifests/").len(), 1);

    client
        .push_blob(
            &r,
            &sochi_format::Descriptor::of("application/octet-stream", b"new"),
            Bytes::from_static(b"new"),
            None,
        )
        .await
        .unwrap();
    assert!(p.mirror.requests("POST", "/blobs/uploads/").is_empty());
    assert!(!p.origin.requests("POST", "/blobs/uploads/").is_empty());
}

#[tokio::test]
async fn mirrors_from_sochi_configuration_come_before_the_origin() {
    let p = pair().await;
    let client = client_with(&p.dir, |c| {
        c.hosts = HostsConfig {
            dir: None,
            mirrors: HashMap::from([(
                p.origin.addr.to_string(),
                vec![Mirror {
                    host: p.mirror.addr.to_string(),
                    insecure: true,
                }],
            )]),
        }
    });
    client
        .get_manifest(&p.origin.reference("team/app:v1"))
        .await
        .unwrap();
    assert_eq!(p.mirror.log().len(), 1);
    assert!(p.origin.log().is_empty());
}
