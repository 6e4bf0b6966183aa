//! Load orders (issue 13): what a real start of debian-python reads,
//! recorded by the snapshotter behind a real containerd (and by `sochi
//! load-order record` under runc), made into prefetch artifacts by
//! `sochi convert --load-order`, pushed to a real registry and used by
//! the next start; and hostile prefetch artifacts refused, the image still
//! lazy.
//!
//! Each test owns its registry, containerds and snapshotters, declared so
//! that they are dropped in reverse: snapshotter before its containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sochi_e2e::lazy::{assert_python_ready, oracle_rootfs, push_layout_exact, LazyMount};
use sochi_e2e::{Containerd, Registry, Snapshotter, SnapshotterOptions, Sochi, TestImages};

use super::cri::layer_digests;

/// A snapshotter that ends a recording after 1 s of quiet, without
/// background fetch (what is fetched is what was read or prefetched).
fn recording_snapshotter(containerd: &Containerd) -> Snapshotter {
    Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            extra_config: "[load_order]\nrecord = true\nquiet_sec = 1\n".into(),
            ..SnapshotterOptions::default()
        },
    )
}

/// `sochi convert --min-layer-size 0 [EXTRA…] debian-python REPO_AND_TAG`.
fn convert(sochi: &Sochi, registry: &Registry, repo_and_tag: &str, extra: &[&str]) -> String {
    let target = registry.reference(repo_and_tag);
    let source = TestImages::get().oci_ref("debian-python");
    let mut args = vec!["convert", "--min-layer-size", "0"];
    args.extend_from_slice(extra);
    args.extend([source.as_str(), target.as_str()]);
    sochi.run(args);
    target
}

/// `sochi pull` of `image` into `containerd` through snapshotter `sochi`.
fn pull(sochi: &Sochi, containerd: &Containerd, image: &str) {
    containerd.sochi_pull(sochi, "sochi", image);
}

/// `python3 /app/main.py` in a new container; panics unless it printed the
/// ready line with the oracle's `/app/data.bin` digest.
#[track_caller]
fn run_python(containerd: &Containerd, image: &str, id: &str) {
    let id = format!("sochi-e2e-lo-{id}-{}", std::process::id());
    let args = ["/usr/bin/python3", "/app/main.py"];
    assert_python_ready(&containerd.run_container("sochi", image, &id, &args));
}

/// `sochi --root ROOT snapshotter load-order --image IMAGE -o OUT`, retried
/// until the recording has been written (it ends after a quiet second).
#[track_caller]
fn export_load_order(
    sochi: &Sochi,
    snapshotter: &Snapshotter,
    image: &str,
    out: &Path,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(sochi.bin())
            .arg("--root")
            .arg(snapshotter.root())
            .args(["snapshotter", "load-order", "--image", image, "-o"])
            .arg(out)
            .output()
            .unwrap();
        if output.status.success() {
            return serde_json::from_slice(&fs::read(out).unwrap()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no load order for {image}: {}\nsnapshotter log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            snapshotter.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Demand requests, prefetch requests and prefetched bytes of all layers.
fn fetch_counts(snapshotter: &Snapshotter) -> (u64, u64, u64) {
    let metrics = snapshotter.metrics();
    let mut counts = (0, 0, 0);
    for layer in layer_digests() {
        counts.0 += metrics.demand_requests(&layer);
        counts.1 += metrics.layer(
            "sochi_layer_fetch_requests_total",
            &layer,
            &[("kind", "prefetch")],
        );
        counts.2 += metrics.layer(
            "sochi_layer_fetched_bytes_total",
            &layer,
            &[("kind", "prefetch")],
        );
    }
    counts
}

/// A start recorded by the snapshotter, exported, converted into prefetch
/// artifacts and pushed: the next start (a fresh node) has the spans it
/// reads fetched by the prefetch, before or while it asks for them, and
/// prints the right output.
#[test]
fn a_load_order_recorded_by_the_snapshotter_makes_the_next_start_prefetch() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let order_file = work.path().join("load-order.json");

    // First start: no prefetch artifacts; the snapshotter records.
    let first_demand = {
        let image = convert(&sochi, &registry, "py:soci", &[]);
        let containerd = Containerd::start();
        let snapshotter = recording_snapshotter(&containerd);
        pull(&sochi, &containerd, &image);
        run_python(&containerd, &image, "record");
        let (demand, prefetch, _) = fetch_counts(&snapshotter);
        assert_eq!(prefetch, 0, "{}", snapshotter.metrics().summary());
        let order = export_load_order(&sochi, &snapshotter, &image, &order_file);
        assert_eq!(order["version"], 1, "{order:#}");
        assert_eq!(order["complete"], true, "{order:#}");
        assert_eq!(order["ended"], "quiet", "{order:#}");
        let runs = order["runs"].as_array().unwrap();
        assert!(!runs.is_empty(), "{order:#}");
        let at: Vec<u64> = runs.iter().map(|r| r["at_ms"].as_u64().unwrap()).collect();
        assert!(
            at.windows(2).all(|w| w[0] <= w[1]),
            "runs in first-use order: {at:?}"
        );
        let layers = layer_digests();
        for run in runs {
            assert!(layers.iter().any(|l| run["layer"] == l.as_str()), "{run}");
        }
        eprintln!(
            "recorded {} runs; first start: {demand} demand requests",
            runs.len()
        );
        demand
    };

    // Converted with the load order: artifacts in first-use order.
    let recorded = sochi
        .run([
            "convert",
            "--min-layer-size",
            "0",
            "--load-order",
            order_file.to_str().unwrap(),
            &TestImages::get().oci_ref("debian-python"),
            &registry.reference("py:recorded"),
        ])
        .stdout;
    assert!(recorded.contains("prefetch artifacts"), "{recorded}");
    let image = registry.reference("py:recorded");

    // Second start, on a fresh node.
    let containerd = Containerd::start();
    let snapshotter = recording_snapshotter(&containerd);
    pull(&sochi, &containerd, &image);
    run_python(&containerd, &image, "prefetched");
    let (demand, prefetch, prefetch_bytes) = fetch_counts(&snapshotter);
    eprintln!(
        "with the load order: {demand} demand requests (first start {first_demand}), \
         {prefetch} prefetch requests, {prefetch_bytes} bytes prefetched"
    );
    assert!(prefetch > 0, "{}", snapshotter.metrics().summary());
    assert!(
        demand < first_demand,
        "{demand} demand requests with the load order, {first_demand} without: {}",
        snapshotter.metrics().summary()
    );
}

/// `sochi load-order record` runs a command in the lazily mounted image
/// under runc and writes its load order; a load order recorded for
/// another command (`ls`) still gives the right output for `python3
/// /app/main.py`, and so does one recorded for it; an image without an
/// index is refused (nothing to record through).
#[test]
fn load_order_record_runs_a_command_and_a_wrong_load_order_still_runs_right() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let image = convert(&sochi, &registry, "py:soci", &[]);

    let record = |image: &str, out: &Path, command: &[&str]| -> String {
        let mut args = vec![
            "load-order",
            "record",
            image,
            "-o",
            out.to_str().unwrap(),
            "--",
        ];
        args.extend_from_slice(command);
        sochi.run(args).stdout
    };
    let wrong: PathBuf = work.path().join("ls.json");
    let out = record(&image, &wrong, &["/bin/ls", "/usr/lib"]);
    assert!(out.contains("python3"), "ls printed:\n{out}");
    let order: serde_json::Value = serde_json::from_slice(&fs::read(&wrong).unwrap()).unwrap();
    assert_eq!(order["complete"], true, "{order:#}");
    assert_eq!(order["ended"], "exited", "{order:#}");
    assert_eq!(order["command"][0], "/bin/ls", "{order:#}");
    assert!(!order["runs"].as_array().unwrap().is_empty(), "{order:#}");

    let right = work.path().join("python.json");
    let out = record(&image, &right, &["/usr/bin/python3", "/app/main.py"]);
    assert_python_ready(&out);
    let python: serde_json::Value = serde_json::from_slice(&fs::read(&right).unwrap()).unwrap();
    assert!(
        python["runs"].as_array().unwrap().len() > order["runs"].as_array().unwrap().len(),
        "python reads more than ls: {python:#}"
    );

    // An image without an index has no lazy layer to record through.
    let plain = TestImages::get().push_to(&registry, "debian-python");
    let empty = work.path().join("none.json");
    let failed = sochi.run_fail([
        "load-order",
        "record",
        &plain,
        "-o",
        empty.to_str().unwrap(),
        "--",
        "/bin/true",
    ]);
    assert!(failed.stderr.contains("no lazy layer"), "{}", failed.stderr);
    assert!(!empty.exists(), "an empty load order was written");

    // The wrong load order: the image still runs right, lazily, with
    // prefetch artifacts of what ls read.
    let converted = convert(
        &sochi,
        &registry,
        "py:wrong",
        &["--load-order", wrong.to_str().unwrap()],
    );
    let out = record(
        &converted,
        &work.path().join("again.json"),
        &["/usr/bin/python3", "/app/main.py"],
    );
    assert_python_ready(&out);
    let converted = convert(
        &sochi,
        &registry,
        "py:right",
        &["--load-order", right.to_str().unwrap()],
    );
    let out = record(
        &converted,
        &work.path().join("again.json"),
        &["/usr/bin/python3", "/app/main.py"],
    );
    assert_python_ready(&out);
}

/// The SOCI index of `image` (converted, v2): its digest and JSON.
fn soci_index(registry: &Registry, repo: &str, tag: &str) -> (String, serde_json::Value) {
    let accept =
        "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";
    let get = |reference: &str| -> serde_json::Value {
        registry
            .client()
            .get(registry.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Accept", accept)
            .send()
            .and_then(|response| response.bytes())
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
            .unwrap()
    };
    let top = get(tag);
    let index = top["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["artifactType"] == "application/vnd.amazon.soci.index.v2+json")
        .unwrap_or_else(|| panic!("no SOCI index in {top:#}"));
    let digest = index["digest"].as_str().unwrap().to_string();
    let json = get(&digest);
    (digest, json)
}

/// A SOCI index whose layers carry hostile prefetch artifacts (spans past
/// the end, a 50 MB one, one that is not JSON) is refused layer by layer
/// with a reason counted, and the image still mounts lazily and reads
/// right.
#[test]
fn hostile_prefetch_artifacts_are_refused_and_the_image_stays_lazy() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    convert(&sochi, &registry, "pyh:soci", &[]);
    let (_, mut index) = soci_index(&registry, "pyh", "soci");
    let layers = layer_digests();
    let hostile: [(&str, Vec<u8>); 3] = [
        (
            "out_of_range",
            br#"{"version":"1.0","prefetch_spans":[{"start_span":0,"end_span":100000}]}"#.to_vec(),
        ),
        ("too_big", {
            let mut body = br#"{"version":"1.0","prefetch_spans":["#.to_vec();
            while body.len() < 50 << 20 {
                body.extend_from_slice(br#"{"start_span":0,"end_span":0},"#);
            }
            body.extend_from_slice(br#"{"start_span":0,"end_span":0}]}"#);
            body
        }),
        (
            "invalid",
            b"{\"version\":\"1.0\",\"prefetch_spans\":[".to_vec(),
        ),
    ];
    let layout = tempfile::tempdir().unwrap();
    let blobs = layout.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    for (layer, (_, body)) in layers.iter().zip(&hostile) {
        let digest = hex::encode(Sha256::digest(body));
        fs::write(blobs.join(&digest), body).unwrap();
        index["layers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({
                "mediaType": "application/vnd.amazon.soci.prefetch.v1+json",
                "digest": format!("sha256:{digest}"),
                "size": body.len(),
                "annotations": {"com.amazon.soci.image-layer-digest": layer}
            }));
    }
    let manifest = serde_json::to_vec(&index).unwrap();
    let manifest_digest = hex::encode(Sha256::digest(&manifest));
    fs::write(blobs.join(&manifest_digest), &manifest).unwrap();
    fs::write(
        layout.path().join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len()
            }]
        }))
        .unwrap(),
    )
    .unwrap();
    fs::write(
        layout.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    push_layout_exact(&registry, layout.path(), "pyh", "hostile-index");

    let image = registry.reference("pyh:soci");
    let index_digest = format!("sha256:{manifest_digest}");
    let mount = LazyMount::mount(
        &sochi,
        &image,
        &[
            "--soci-index-digest",
            &index_digest,
            "--no-background-fetch",
            "--metrics-address",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(
        mount.state().lazy_layers().count(),
        3,
        "{:#?}",
        mount.state()
    );
    let oracle = oracle_rootfs("debian-python");
    for file in ["app/main.py", "usr/bin/python3", "etc/os-release"] {
        let bytes = fs::read(mount.path(file)).unwrap();
        assert!(
            bytes == fs::read(oracle.join(file)).unwrap(),
            "{file}: wrong bytes"
        );
    }
    let metrics = mount.metrics();
    for (layer, (reason, _)) in layers.iter().zip(&hostile) {
        assert_eq!(
            metrics.layer("sochi_prefetch_refused_total", layer, &[("reason", reason)]),
            1,
            "{layer} {reason}: {}",
            metrics.summary()
        );
        let requests = metrics.layer(
            "sochi_layer_fetch_requests_total",
            layer,
            &[("kind", "prefetch")],
        );
        assert_eq!(requests, 0, "{layer}: {}", metrics.summary());
    }
    let log = mount.log();
    for reason in ["past the layer", "bytes, more than", "prefetch artifact"] {
        assert!(
            log.contains(reason),
            "no {reason:?} in the mount log:\n{log}"
        );
    }
    mount.unmount();
}
