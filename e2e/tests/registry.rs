//! `sochi create`, `push` and `convert` against Debian's real registry
//! (distribution 2.8), plain and TLS + basic auth, with faults injected by a
//! proxy in front of it.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use sochi_e2e::{run_ok, FaultProxy, Registry, Sochi, TestImages};

const V1: &str = "application/vnd.amazon.soci.index.v1+json";
const SMALL_SPANS: [&str; 4] = ["--span-size", "262144", "--min-layer-size", "0"];

fn json_get(client: &reqwest::blocking::Client, url: &str, accept: &str) -> (u16, Vec<u8>) {
    let response = client.get(url).header("Accept", accept).send().unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().unwrap().to_vec())
}

fn plain_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
}

fn manifest_url(base: &str, repo: &str, reference: &str) -> String {
    format!("{base}/v2/{repo}/manifests/{reference}")
}

/// Every blob and manifest a manifest or index names is in the registry:
/// nothing published points at something missing.
fn assert_complete(client: &reqwest::blocking::Client, base: &str, repo: &str, reference: &str) {
    let accept =
        "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json";
    let (status, bytes) = json_get(client, &manifest_url(base, repo, reference), accept);
    assert_eq!(status, 200, "{repo}@{reference} is missing");
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for child in doc["manifests"].as_array().into_iter().flatten() {
        assert_complete(client, base, repo, child["digest"].as_str().unwrap());
    }
    let blobs = doc["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(doc.get("config"));
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap();
        let status = client
            .head(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(
            status, 200,
            "blob {digest} named by {repo}@{reference} is missing"
        );
    }
}

#[test]
fn convert_in_a_registry_equals_convert_of_the_layout_and_skopeo_reads_it() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    for name in ["busybox", "debian-python", "edgecase"] {
        let source = images.push_to(&registry, name);
        let target = registry.reference(&format!("{name}:soci"));
        let remote = sochi
            .run([
                "convert",
                "--json",
                SMALL_SPANS[0],
                SMALL_SPANS[1],
                SMALL_SPANS[2],
                SMALL_SPANS[3],
                &source,
                &target,
            ])
            .json();

        let dir = tempfile::tempdir().unwrap();
        let layout = format!("oci:{}:soci", dir.path().join(name).display());
        let local = sochi
            .run([
                "convert",
                "--json",
                SMALL_SPANS[0],
                SMALL_SPANS[1],
                SMALL_SPANS[2],
                SMALL_SPANS[3],
                &images.oci_ref(name),
                &layout,
            ])
            .json();
        assert_eq!(
            remote["image"], local["image"],
            "{name}: registry and layout conversions differ"
        );
        assert_eq!(remote["indexes"], local["indexes"], "{name}");

        // The SOCI index and its zTOCs in the registry are the layout's bytes.
        let client = plain_client();
        let base = format!("http://{}", registry.addr());
        let index = remote["indexes"][0]["index"].as_str().unwrap();
        let (status, bytes) = json_get(
            &client,
            &manifest_url(&base, name, index),
            "application/vnd.oci.image.manifest.v1+json",
        );
        assert_eq!(status, 200);
        let blob_path = |d: &str| {
            dir.path()
                .join(name)
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        assert_eq!(
            bytes,
            std::fs::read(blob_path(index)).unwrap(),
            "{name}: index bytes"
        );
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for ztoc in manifest["layers"].as_array().unwrap() {
            let digest = ztoc["digest"].as_str().unwrap();
            let remote = client
                .get(format!("{base}/v2/{name}/blobs/{digest}"))
                .send()
                .unwrap()
                .bytes()
                .unwrap();
            assert_eq!(
                remote.to_vec(),
                std::fs::read(blob_path(digest)).unwrap(),
                "{name}: zTOC {digest}"
            );
        }
        assert_complete(&client, &base, name, "soci");

        // A real client reads the result.
        let raw = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--raw"])
                .args(registry.skopeo_args(""))
                .arg(format!("docker://{target}")),
        );
        let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        let types: BTreeSet<_> = raw["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["artifactType"].as_str())
            .collect();
        assert!(
            types.contains("application/vnd.amazon.soci.index.v2+json"),
            "{raw}"
        );
        let copy = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--all", "--quiet"])
                .args(registry.skopeo_args("src-"))
                .arg(format!("docker://{target}"))
                .arg(format!("oci:{}:x", copy.path().display())),
        );
    }
}

#[test]
fn create_and_push_over_tls_with_basic_auth_then_found_through_the_fallback_tag() {
    let images = TestImages::get();
    let registry = Registry::secure();
    let reference = images.push_to(&registry, "busybox");
    let sochi = Sochi::for_registry(&registry);
    let created = sochi
        .run([
            "create",
            "--json",
            SMALL_SPANS[0],
            SMALL_SPANS[1],
            SMALL_SPANS[2],
            SMALL_SPANS[3],
            &reference,
        ])
        .json();
    let index = created["index"].as_str().unwrap().to_string();
    let manifest = created["manifest"].as_str().unwrap().to_string();

    // The same index as from the layout.
    let local = Sochi::new()
        .run([
            "create",
            "--json",
            SMALL_SPANS[0],
            SMALL_SPANS[1],
            SMALL_SPANS[2],
            SMALL_SPANS[3],
            &images.oci_ref("busybox"),
        ])
        .json();
    assert_eq!(local["index"], created["index"]);

    let pushed = sochi.run(["push", "--json", &reference]).json();
    assert_eq!(pushed["via"], "fallback-tag", "{pushed}");
    let tag = manifest.replace(':', "-");
    let creds = registry.credentials().unwrap();
    let response = registry
        .client()
        .get(registry.url(&format!("/v2/busybox/manifests/{tag}")))
        .header("Accept", "application/vnd.oci.image.index.v1+json")
        .basic_auth(&creds.user, Some(&creds.password))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "no fallback tag {tag}");
    let referrers: serde_json::Value = serde_json::from_slice(&response.bytes().unwrap()).unwrap();
    let entry = &referrers["manifests"][0];
    assert_eq!(entry["digest"], index.as_str());
    assert_eq!(entry["artifactType"], V1);

    // Pushing again: skip says so and does nothing.
    let skipped = sochi
        .run(["push", "--json", "--existing-index", "skip", &reference])
        .json();
    assert_eq!(skipped["via"], "skipped");

    // Credentials from the docker config instead of --user.
    let by_config =
        Sochi::new().global_args(["--ca-file", registry.ca_file().unwrap().to_str().unwrap()]);
    by_config.login(&registry);
    by_config.run([
        "create",
        SMALL_SPANS[0],
        SMALL_SPANS[1],
        SMALL_SPANS[2],
        SMALL_SPANS[3],
        &reference,
    ]);

    // A bad password is a clear error.
    let bad = Sochi::new().global_args([
        "--ca-file",
        registry.ca_file().unwrap().to_str().unwrap(),
        "--user",
        "sochi:wrong",
    ]);
    let out = bad.run_fail(["create", &reference]);
    assert!(
        out.stderr.contains("401") || out.stderr.to_lowercase().contains("unauthorized"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&registry.addr()), "{}", out.stderr);
}

#[test]
fn push_uses_the_referrers_api_where_the_registry_has_one() {
    let images = TestImages::get();
    let registry = Registry::plain();
    images.push_to(&registry, "busybox");
    let proxy = FaultProxy::start(&registry);
    proxy.enable_referrers_api();
    let reference = proxy.reference("busybox:latest");
    let sochi = Sochi::new().global_args(["--plain-http"]);
    let created = sochi
        .run([
            "create",
            "--json",
            SMALL_SPANS[0],
            SMALL_SPANS[1],
            SMALL_SPANS[2],
            SMALL_SPANS[3],
            &reference,
        ])
        .json();
    let pushed = sochi.run(["push", "--json", &reference]).json();
    assert_eq!(pushed["via"], "referrers-api", "{pushed}");
    // No fallback tag was written, and the API lists the index.
    let manifest = created["manifest"].as_str().unwrap();
    assert_eq!(proxy.count_method("PUT", &manifest.replace(':', "-")), 0);
    let (status, body) = json_get(
        &plain_client(),
        &proxy.url(&format!("/v2/busybox/referrers/{manifest}")),
        "*/*",
    );
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(listed["manifests"][0]["digest"], created["index"]);
    let skipped = sochi
        .run(["push", "--json", "--existing-index", "skip", &reference])
        .json();
    assert_eq!(skipped["via"], "skipped");
}

/// A registry behind a fault proxy, busybox and debian-python pushed.
fn faulty() -> (Registry, FaultProxy, Sochi) {
    let images = TestImages::get();
    let registry = Registry::plain();
    images.push_to(&registry, "busybox");
    images.push_to(&registry, "debian-python");
    let proxy = FaultProxy::start(&registry);
    (registry, proxy, Sochi::new().global_args(["--plain-http"]))
}

fn biggest_layer(name: &str) -> String {
    let manifest = TestImages::get().manifest(name);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn registry_faults_end_in_a_retry_or_a_clear_error() {
    let (_registry, proxy, sochi) = faulty();
    let busybox = proxy.reference("busybox:latest");
    let python = proxy.reference("debian-python:latest");

    // Registry down: a clear error, in bounded time.
    proxy.down();
    let started = Instant::now();
    let out = sochi.run_fail(["create", &busybox]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains(&proxy.addr()), "{}", out.stderr);
    proxy.up();

    // 500s, then 429 with Retry-After: retried, and the build succeeds.
    proxy.fail_next(2, 500, "/manifests/", None);
    proxy.fail_next(1, 429, "/blobs/", Some(1));
    let started = Instant::now();
    sochi.run([
        "create",
        SMALL_SPANS[0],
        SMALL_SPANS[1],
        SMALL_SPANS[2],
        SMALL_SPANS[3],
        &busybox,
    ]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let faults = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faults, 3);

    // A connection reset in the middle of a layer: resumed with a Range.
    let layer = biggest_layer("debian-python");
    proxy.clear_requests();
    proxy.reset_mid_body(&layer, 5 << 20);
    let created = sochi
        .run(["create", "--json", "--min-layer-size", "0", &python])
        .json();
    let reference_index = Sochi::new()
        .run([
            "create",
            "--json",
            "--min-layer-size",
            "0",
            &TestImages::get().oci_ref("debian-python"),
        ])
        .json();
    assert_eq!(
        created["index"], reference_index["index"],
        "a resumed download indexes the same bytes"
    );
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.path.contains(&layer) && r.range.is_some()),
        "no Range request after the reset"
    );

    // A wrong digest served: an error naming the blob, and nothing stored.
    let fresh = Sochi::new().global_args(["--plain-http"]);
    proxy.corrupt_body(&layer);
    let out = fresh.run_fail(["create", "--min-layer-size", "0", &python]);
    assert!(out.stderr.contains("digest"), "{}", out.stderr);
    assert!(out.stderr.contains(&layer[..19]), "{}", out.stderr);
    assert!(
        fresh.run(["index", "list", "-q"]).stdout.trim().is_empty(),
        "a failed create stored an index"
    );
}

#[test]
fn failed_pushes_publish_nothing_half_done() {
    let (registry, proxy, sochi) = faulty();
    let busybox = proxy.reference("busybox:latest");
    let created = sochi
        .run([
            "create",
            "--json",
            SMALL_SPANS[0],
            SMALL_SPANS[1],
            SMALL_SPANS[2],
            SMALL_SPANS[3],
            &busybox,
        ])
        .json();
    let manifest = created["manifest"].as_str().unwrap();
    let fallback_tag = manifest.replace(':', "-");
    let client = plain_client();
    let base = format!("http://{}", registry.addr());

    // A zTOC upload keeps failing: the index manifest is never sent.
    proxy.fail_next(100, 500, "/blobs/uploads/", None);
    sochi.run_fail(["push", &busybox]);
    assert_eq!(proxy.count_method("PUT", "/manifests/"), 0);
    assert_eq!(
        json_get(
            &client,
            &manifest_url(&base, "busybox", &fallback_tag),
            "*/*"
        )
        .0,
        404
    );
    proxy.clear_faults();

    // The index manifest is refused: no fallback tag points at it.
    proxy.fail_next(100, 500, "/manifests/sha256:", None);
    sochi.run_fail(["push", &busybox]);
    assert_eq!(
        json_get(
            &client,
            &manifest_url(&base, "busybox", &fallback_tag),
            "*/*"
        )
        .0,
        404
    );
    proxy.clear_faults();

    // convert: the final tag is refused; whatever was pushed is complete.
    let target = proxy.reference("debian-python:soci");
    proxy.fail_next(100, 500, "/manifests/soci", None);
    sochi.run_fail([
        "convert",
        "--min-layer-size",
        "0",
        &proxy.reference("debian-python:latest"),
        &target,
    ]);
    assert_eq!(
        json_get(
            &client,
            &manifest_url(&base, "debian-python", "soci"),
            "*/*"
        )
        .0,
        404
    );
    proxy.clear_faults();
    for record in proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/sha256:") && r.status == 201)
    {
        let digest = record.path.rsplit('/').next().unwrap();
        assert_complete(&client, &base, "debian-python", digest);
    }
    // And once the registry behaves, the same command succeeds.
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &proxy.reference("debian-python:latest"),
        &target,
    ]);
    assert_complete(&client, &base, "debian-python", "soci");
}

#[test]
fn convert_downloads_each_layer_once_between_registries_and_within_one() {
    let images = TestImages::get();
    let source = Registry::plain();
    let target = Registry::plain();
    images.push_to(&source, "debian-python");
    let proxy = FaultProxy::start(&source);
    let sochi = Sochi::new().global_args(["--plain-http"]);
    let layers: Vec<String> = images.manifest("debian-python")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let local = Sochi::new()
        .run([
            "convert",
            "--json",
            "--min-layer-size",
            "0",
            &images.oci_ref("debian-python"),
            &format!(
                "oci:{}",
                tempfile::tempdir().unwrap().path().join("x").display()
            ),
        ])
        .json();

    // Another registry: the indexer's stream is the upload.
    let out = sochi
        .run([
            "convert",
            "--json",
            "--min-layer-size",
            "0",
            &proxy.reference("debian-python:latest"),
            &target.reference("python:soci"),
        ])
        .json();
    assert_eq!(out["image"], local["image"]);
    for layer in &layers {
        assert_eq!(
            proxy.count_method("GET", &format!("/blobs/{layer}")),
            1,
            "layer {layer} downloaded more than once"
        );
    }
    assert_complete(
        &plain_client(),
        &format!("http://{}", target.addr()),
        "python",
        "soci",
    );

    // The same registry, another repository: mounted, not downloaded again.
    proxy.clear_requests();
    let out = sochi
        .run([
            "convert",
            "--json",
            "--min-layer-size",
            "0",
            &proxy.reference("debian-python:latest"),
            &proxy.reference("elsewhere/python:soci"),
        ])
        .json();
    assert_eq!(out["image"], local["image"]);
    for layer in &layers {
        assert_eq!(
            proxy.count_method("GET", &format!("/blobs/{layer}")),
            1,
            "layer {layer} downloaded more than once"
        );
        assert!(
            proxy.requests().iter().any(|r| r.method == "POST"
                && r.path.contains("mount=")
                && r.path.contains(layer.trim_start_matches("sha256:"))),
            "layer {layer} was not mounted"
        );
    }
    assert_complete(
        &plain_client(),
        &format!("http://{}", source.addr()),
        "elsewhere/python",
        "soci",
    );
}
