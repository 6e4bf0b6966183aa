//! The harness itself: each guard starts a real service, does what it
//! says, and leaves nothing running after its drop.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sochi_e2e::{pid_alive, Fault, FaultProxy, Registry, Sochi, TestImages};

/// Deterministic pseudo-random bytes (xorshift64*).
fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn plain_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("building an HTTP client")
}

/// Uploads `data` as a blob of `repo` through `base` (`http://HOST:PORT`)
/// with a monolithic upload (POST, then PUT to the `Location`), and returns
/// the upload `Location` and the digest.
fn upload_blob(
    client: &reqwest::blocking::Client,
    base: &str,
    repo: &str,
    data: &[u8],
) -> (String, String) {
    let digest = sha256_digest(data);
    let started = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .expect("POST blob upload");
    assert_eq!(started.status(), 202, "POST {repo} upload");
    let location = started
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .expect("upload Location")
        .to_string();
    let put_url = if location.starts_with("http") {
        location.clone()
    } else {
        format!("{base}{location}")
    };
    let separator = if put_url.contains('?') { '&' } else { '?' };
    let finished = client
        .put(format!("{put_url}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .expect("PUT blob");
    assert_eq!(finished.status(), 201, "PUT {repo} blob");
    (location, digest)
}

fn assert_gone(pid: u32) {
    assert!(!pid_alive(pid), "registry pid {pid} is still running");
}

/// A plain registry with a proxy in front and a 1 MiB blob in `test/blob`.
struct Proxied {
    registry: Registry,
    proxy: FaultProxy,
    client: reqwest::blocking::Client,
    data: Vec<u8>,
    blob_url: String,
    digest: String,
}

impl Proxied {
    fn new() -> Proxied {
        let registry = Registry::plain();
        let proxy = FaultProxy::start(&registry);
        let client = plain_client();
        let data = test_bytes(1 << 20, 7);
        let (_, digest) = upload_blob(&client, &registry.url(""), "test/blob", &data);
        let blob_url = proxy.url(&format!("/v2/test/blob/blobs/{digest}"));
        Proxied {
            registry,
            proxy,
            client,
            data,
            blob_url,
            digest,
        }
    }

    fn get_blob(&self) -> reqwest::blocking::Response {
        self.client.get(&self.blob_url).send().expect("GET blob")
    }

    fn finish(self) {
        let pid = self.registry.pid();
        let proxy_addr = self.proxy.socket_addr();
        drop(self.proxy);
        drop(self.registry);
        assert_gone(pid);
        assert!(
            TcpStream::connect_timeout(&proxy_addr, Duration::from_secs(1)).is_err(),
            "the proxy still accepts connections after its drop"
        );
    }
}

#[test]
fn plain_registry_answers_v2_and_is_gone_after_drop() {
    let registry = Registry::plain();
    let pid = registry.pid();
    assert!(registry.is_running());
    assert!(
        registry.addr().starts_with("127.0.0.1:"),
        "{}",
        registry.addr()
    );
    assert!(!registry.is_tls());
    assert_eq!(registry.ca_file(), None);
    assert_eq!(registry.sochi_args(), ["--plain-http"]);
    assert_eq!(registry.skopeo_args("dest-"), ["--dest-tls-verify=false"]);

    let response = registry.get("/v2/");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );

    // A second registry gets its own port and storage.
    let other = Registry::plain();
    assert_ne!(other.addr(), registry.addr());
    assert_ne!(other.data_dir(), registry.data_dir());
    let other_pid = other.pid();
    drop(other);
    assert_gone(other_pid);

    drop(registry);
    assert_gone(pid);
}

#[test]
fn tls_registry_with_auth_wants_credentials() {
    let registry = Registry::secure();
    let pid = registry.pid();
    let creds = registry.credentials().expect("credentials").clone();
    let ca = registry.ca_file().expect("a CA file").to_path_buf();
    assert!(ca.is_file());
    assert!(registry
        .cert_dir()
        .expect("a cert dir")
        .join("ca.crt")
        .is_file());
    assert_eq!(
        registry.sochi_args(),
        [
            "--ca-file".to_string(),
            ca.display().to_string(),
            "--user".to_string(),
            creds.user_pass()
        ]
    );
    // 127.0.0.2: sochi talks plain HTTP to 127.0.0.1 whatever its flags.
    let url = registry.url("/v2/");
    assert!(url.starts_with("https://127.0.0.2:"), "{url}");

    let client = registry.client();
    let anonymous = client.get(&url).send().expect("GET /v2/");
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let wrong = client
        .get(&url)
        .basic_auth(&creds.user, Some("wrong"))
        .send()
        .expect("GET /v2/");
    assert_eq!(wrong.status(), 401);
    assert_eq!(registry.get("/v2/").status(), 200);

    // Without the CA the certificate is not trusted.
    let untrusting = plain_client().get(&url).send();
    assert!(untrusting.is_err(), "{untrusting:?}");
    // Plain HTTP to the TLS port is refused by the registry.
    let plain = plain_client()
        .get(url.replace("https://", "http://"))
        .send()
        .expect("plain GET to the TLS port");
    assert_eq!(plain.status(), 400);

    drop(registry);
    assert_gone(pid);
}

#[test]
fn tls_registry_on_127_0_0_1_answers_as_localhost_too() {
    let registry = Registry::builder().tls(true).start();
    let url = registry.url("/v2/");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(registry.get("/v2/").status(), 200);
    let by_name = registry
        .client()
        .get(url.replace("127.0.0.1", "localhost"))
        .send()
        .expect("GET via localhost");
    assert_eq!(by_name.status(), 200);
}

#[test]
fn plain_registry_with_auth_wants_credentials() {
    let registry = Registry::builder().htpasswd("alice", "s3cret").start();
    assert!(!registry.is_tls());
    let anonymous = plain_client()
        .get(registry.url("/v2/"))
        .send()
        .expect("GET");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(registry.get("/v2/").status(), 200);
    assert_eq!(
        registry.sochi_args(),
        ["--plain-http", "--user", "alice:s3cret"]
    );
}

#[test]
fn registry_is_killed_when_its_test_panics() {
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let registry = Registry::plain();
        pid = registry.pid();
        panic!("test failure while the registry runs");
    }));
    assert!(result.is_err());
    assert_ne!(pid, 0);
    assert_gone(pid);
}

#[test]
fn skopeo_pushes_busybox_through_tls_and_auth() {
    let images = TestImages::get();
    let registry = Registry::secure();
    let pid = registry.pid();
    let reference = images.push_to(&registry, "busybox");
    assert_eq!(reference, format!("{}/busybox:latest", registry.addr()));

    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .args(registry.skopeo_args(""))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo");
    assert!(
        inspect.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert_eq!(
        sha256_digest(&inspect.stdout),
        images.manifest_digest("busybox"),
        "the pushed manifest is the layout's, byte for byte"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("JSON");
    assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));

    // Without credentials the registry says no.
    let anonymous = Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(registry.cert_dir().expect("cert dir"))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo");
    assert!(!anonymous.status.success());

    // The tag is listed through the registry API too.
    let tags: serde_json::Value =
        serde_json::from_slice(&registry.get("/v2/busybox/tags/list").bytes().expect("body"))
            .expect("tags JSON");
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));

    drop(registry);
    assert_gone(pid);
}

#[test]
fn test_images_have_the_promised_layers() {
    let images = TestImages::get();
    let layer_sizes = |name: &str| -> Vec<u64> {
        images.manifest(name)["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|layer| layer["size"].as_u64().expect("size"))
            .collect()
    };

    assert_eq!(layer_sizes("busybox").len(), 1);

    let python = layer_sizes("debian-python");
    assert!(python.len() >= 3, "{python:?}");
    assert!(python.iter().any(|&size| size > 10 << 20), "{python:?}");
    assert!(images
        .oci_ref("debian-python")
        .ends_with("/debian-python:latest"));
    assert_ne!(
        images.manifest_digest_of("debian-python", "base"),
        images.manifest_digest("debian-python")
    );

    let edgecase = images.manifest("edgecase");
    let layers = edgecase["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2);
    let upper = layers[1]["digest"].as_str().expect("digest");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(images.blob_path("edgecase", upper))
        .output()
        .expect("running tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("opaque/.wh..wh..opq"), "{listing}");
    assert!(listing.contains("data/.wh.remove-me.txt"), "{listing}");
}

#[test]
fn proxy_forwards_everything_and_logs_requests() {
    let registry = Registry::plain();
    let proxy = FaultProxy::start(&registry);
    let client = plain_client();

    // An upload through the proxy: the registry's Location points back at
    // the proxy because the Host header passes through.
    let data = test_bytes(300_000, 1);
    let (location, digest) = upload_blob(&client, &proxy.url(""), "test/up", &data);
    assert!(
        location.starts_with(&proxy.url("/v2/test/up/blobs/uploads/")),
        "{location}"
    );

    let blob_url = proxy.url(&format!("/v2/test/up/blobs/{digest}"));
    let body = client
        .get(&blob_url)
        .send()
        .expect("GET")
        .bytes()
        .expect("body");
    assert_eq!(body.as_ref(), data.as_slice());
    let head = client.head(&blob_url).send().expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let range = client
        .get(&blob_url)
        .header("range", "bytes=10-19")
        .send()
        .expect("range GET");
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().expect("body").as_ref(), &data[10..20]);

    // A real client end to end: skopeo pushes busybox through the proxy.
    let images = TestImages::get();
    let reference = proxy.reference("busybox:latest");
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(images.oci_ref("busybox"))
        .arg(format!("docker://{reference}"))
        .output()
        .expect("running skopeo");
    assert!(
        copy.status.success(),
        "skopeo copy through the proxy failed: {}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let manifest = registry
        .client()
        .get(registry.url("/v2/busybox/manifests/latest"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest")
        .bytes()
        .expect("manifest");
    assert_eq!(sha256_digest(&manifest), images.manifest_digest("busybox"));

    let requests = proxy.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v2/test/up/blobs/uploads/");
    assert_eq!(requests[0].status, 202);
    assert_eq!(requests[1].method, "PUT");
    assert_eq!(requests[1].status, 201);
    let ranged: Vec<_> = requests.iter().filter(|r| r.range.is_some()).collect();
    assert_eq!(ranged.len(), 1);
    assert_eq!(ranged[0].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(ranged[0].status, 206);
    assert!(requests.iter().all(|r| r.fault.is_none()));
    assert_eq!(proxy.count_method("HEAD", &digest), 1);
    assert_eq!(proxy.count_method("GET", &digest), 2);
    assert!(proxy.count_method("PUT", "/v2/busybox/manifests/latest") >= 1);

    proxy.clear_requests();
    assert!(proxy.requests().is_empty());
}

#[test]
fn proxy_down_refuses_connections_until_up() {
    let setup = Proxied::new();
    let v2 = setup.proxy.url("/v2/");
    // A pooled keep-alive connection exists before the outage.
    assert_eq!(setup.client.get(&v2).send().expect("GET").status(), 200);

    setup.proxy.down();
    for _ in 0..3 {
        let result = setup.client.get(&v2).send();
        assert!(
            result.is_err(),
            "a request got through while down: {result:?}"
        );
    }
    assert!(setup.proxy.refused_connections() >= 1);
    let fresh = plain_client().get(&v2).send();
    assert!(fresh.is_err(), "{fresh:?}");
    assert_eq!(setup.proxy.count("/v2/"), 1, "{:?}", setup.proxy.requests());

    setup.proxy.up();
    assert_eq!(
        setup.client.get(&v2).send().expect("GET after up").status(),
        200
    );
    assert_eq!(
        setup.get_blob().bytes().expect("body").len(),
        setup.data.len()
    );
    setup.finish();
}

#[test]
fn proxy_fail_next_answers_the_status_then_forwards() {
    let setup = Proxied::new();
    setup.proxy.fail_next(2, 503, "/blobs/sha256:", Some(7));

    // Other paths are not affected.
    let v2 = setup
        .client
        .get(setup.proxy.url("/v2/"))
        .send()
        .expect("GET");
    assert_eq!(v2.status(), 200);

    for _ in 0..2 {
        let failed = setup.get_blob();
        assert_eq!(failed.status(), 503);
        assert_eq!(failed.headers()["retry-after"], "7");
        let body: serde_json::Value =
            serde_json::from_slice(&failed.bytes().expect("body")).expect("JSON error body");
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
    let forwarded = setup.get_blob();
    assert_eq!(forwarded.status(), 200);
    assert_eq!(
        forwarded.bytes().expect("body").as_ref(),
        setup.data.as_slice()
    );

    // No Retry-After unless asked; uploads can fail too, and the request
    // body is read so the client sees the status.
    setup.proxy.fail_next(1, 500, "/blobs/uploads/", None);
    let upload = setup
        .client
        .post(setup.proxy.url("/v2/test/blob/blobs/uploads/"))
        .body(vec![0u8; 100_000])
        .send()
        .expect("POST");
    assert_eq!(upload.status(), 500);
    assert!(upload.headers().get("retry-after").is_none());
    let (_, digest) = upload_blob(&setup.client, &setup.proxy.url(""), "test/blob", b"again");
    assert_eq!(digest, sha256_digest(b"again"));

    let blob_requests: Vec<_> = setup
        .proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&setup.digest))
        .collect();
    assert_eq!(blob_requests.len(), 3);
    assert_eq!(blob_requests[0].fault, Some(Fault::Status(503)));
    assert_eq!(blob_requests[1].status, 503);
    assert_eq!(blob_requests[2].fault, None);
    assert_eq!(blob_requests[2].status, 200);
    setup.finish();
}

#[test]
fn proxy_reset_mid_body_cuts_the_connection_once() {
    let setup = Proxied::new();
    setup.proxy.reset_mid_body(&setup.digest, 1000);

    // A HEAD has no body and leaves the fault for the GET.
    let head = setup.client.head(&setup.blob_url).send().expect("HEAD");
    assert_eq!(head.status(), 200);

    let mut cut = setup.get_blob();
    assert_eq!(cut.status(), 200);
    assert_eq!(
        cut.headers()["content-length"],
        setup.data.len().to_string().as_str(),
        "the headers announce the whole blob"
    );
    let mut received = Vec::new();
    let result = cut.read_to_end(&mut received);
    assert!(result.is_err(), "the body ended cleanly: {result:?}");
    assert_eq!(received.len(), 1000);
    assert_eq!(received.as_slice(), &setup.data[..1000]);

    let whole = setup.get_blob().bytes().expect("body");
    assert_eq!(whole.as_ref(), setup.data.as_slice());

    let faults: Vec<_> = setup
        .proxy
        .requests()
        .into_iter()
        .map(|r| (r.method, r.fault))
        .collect();
    assert_eq!(
        faults,
        [
            ("HEAD".to_string(), None),
            ("GET".to_string(), Some(Fault::ResetMidBody(1000))),
            ("GET".to_string(), None)
        ]
    );
    setup.finish();
}

#[test]
fn proxy_corrupt_body_serves_a_wrong_digest_once() {
    let setup = Proxied::new();
    setup.proxy.corrupt_body(&setup.digest);

    let corrupted = setup.get_blob().bytes().expect("body");
    assert_eq!(corrupted.len(), setup.data.len());
    assert_ne!(sha256_digest(&corrupted), setup.digest);
    let differing = corrupted
        .iter()
        .zip(&setup.data)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 1);

    let clean = setup.get_blob().bytes().expect("body");
    assert_eq!(sha256_digest(&clean), setup.digest);
    assert_eq!(setup.proxy.requests()[0].fault, Some(Fault::CorruptBody));

    // Range responses can be corrupted too.
    setup.proxy.corrupt_body(&setup.digest);
    let range = setup
        .client
        .get(&setup.blob_url)
        .header("range", "bytes=0-99")
        .send()
        .expect("range GET");
    assert_eq!(range.status(), 206);
    assert_ne!(range.bytes().expect("body").as_ref(), &setup.data[..100]);
    setup.finish();
}

#[test]
fn sochi_runner_prints_context_on_failure() {
    let sochi = Sochi::new();
    assert!(sochi.bin().is_file(), "{}", sochi.bin().display());
    let listed = sochi.run(["index", "list", "--json"]);
    assert!(listed.json_lines().is_empty(), "{}", listed.stdout);

    let failed = sochi.run_fail(["ztoc", "info", "/nonexistent/ztoc"]);
    assert_eq!(failed.code(), Some(1));
    assert!(!failed.stderr.is_empty());
    sochi.run_code(["--no-such-flag"], 2);

    let panic = std::panic::catch_unwind(|| sochi.run(["ztoc", "info", "/nonexistent/ztoc"]))
        .expect_err("run() of a failing command panics");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    for part in ["command: ", "--root", "cwd: ", "status: ", "stderr:"] {
        assert!(message.contains(part), "{part:?} missing in:\n{message}");
    }

    // Registry flags and docker config.
    let registry = Registry::builder().htpasswd("bob", "pw").start();
    let with_registry = Sochi::for_registry(&registry);
    let command = format!("{:?}", with_registry.command(["index", "list"]));
    assert!(command.contains("--plain-http"), "{command}");
    with_registry.login(&registry);
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(with_registry.docker_config().join("config.json")).expect("config.json"),
    )
    .expect("JSON");
    assert_eq!(
        config["auths"][registry.addr()]["auth"],
        "Ym9iOnB3" // base64("bob:pw")
    );
}
