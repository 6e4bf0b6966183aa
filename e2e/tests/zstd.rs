//! zstd images never fail, and zstd:chunked ones are lazy (issue 16):
//! zstd:chunked images made by skopeo mount lazily from their layers'
//! tables of contents, through `sochi mount` and the snapshotter, with the
//! gzip image's files; bad chunks are EIO, a bad table unpacks; plain zstd
//! images mount unpacked (each layer saying why) and run through the
//! snapshotter; a SOCI-enabled image copied with recompression keeps an
//! annotation naming an index its repository does not have (or one made
//! for the gzip layers) and is mounted without it, the reason shown in
//! `sochi mount --json`, `sochi snapshotter layers` and the metrics.
//!
//! Mounts are `LazyMount` guards and services are harness guards: each is
//! stopped on drop, also when a test fails.

use std::path::Path;
use std::process::Command;

use sochi_e2e::layouts::blob_path;
use sochi_e2e::lazy::{
    assert_python_ready, oracle_rootfs, push_layout_exact, LazyMount, MountState,
};
use sochi_e2e::oracle::assert_trees_equal;
use sochi_e2e::zstd::{
    chunked_toc, copy_recompressed, layout_manifest, set_diff_ids, set_layer_annotation,
    zstd_layout, ZstdFormat,
};
use sochi_e2e::{run_ok, Containerd, FaultProxy, Registry, Snapshotter, SnapshotterOptions, Sochi};

use crate::cri::layer_records;

/// The reason of a zstd layer (`sochi-lazy`'s `ZSTD_REASON`).
const ZSTD_REASON: &str = "zstd layer: no zTOC (the reference cannot index zstd)";

/// A container ID unique on this machine (runc's state is machine-wide).
fn container_id(name: &str) -> String {
    format!("sochi-e2e-zstd-{name}-{}", std::process::id())
}

/// Every layer of the mount is unpacked, with a reason containing each
/// of `words`.
#[track_caller]
fn assert_unpacked_saying(state: &MountState, words: &[&str]) {
    assert!(!state.layers.is_empty(), "{:#}", state.json);
    for layer in &state.layers {
        assert_eq!(layer.mode, "unpacked", "{:#}", state.json);
        let reason = layer.reason.as_deref().unwrap_or_default();
        for word in words {
            assert!(reason.contains(word), "{word:?} not in {:#}", state.json);
        }
    }
}

/// `sochi_layers_not_lazy_total{why}` of a mount's daemon.
fn not_lazy(mount: &LazyMount<'_>, why: &str) -> u64 {
    mount
        .metrics()
        .value("sochi_layers_not_lazy_total", &[("why", why)])
        .unwrap_or(0.0) as u64
}

/// The media types of the layers of the image manifest `reference`.
fn layer_media_types(registry: &Registry, reference: &str) -> Vec<String> {
    let manifest = inspect_raw(registry, reference);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// `skopeo inspect --raw` of `reference` (in `registry`).
fn inspect_raw(registry: &Registry, reference: &str) -> serde_json::Value {
    let output = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .args(registry.skopeo_args(""))
            .arg(format!("docker://{}", registry.reference(reference))),
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

// --- (a) plain zstd ------------------------------------------------------------------

/// The python image recompressed as zstd: no zTOC can describe it, so
/// `sochi mount` unpacks every layer (checking digests and diff_ids) and
/// says why; its files equal the gzip image's.
#[test]
fn zstd_image_mounts_unpacked_with_the_gzip_images_files() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let layout = zstd_layout("debian-python", ZstdFormat::Zstd);
    let image = push_layout_exact(&registry, &layout, "py-zstd", "latest");
    assert!(
        layer_media_types(&registry, "py-zstd:latest")
            .iter()
            .all(|media_type| media_type.ends_with("tar+zstd")),
        "{image} is not zstd"
    );
    let mount = LazyMount::mount(&sochi, &image, &["--metrics-address", "127.0.0.1:0"]);
    let state = mount.state().clone();
    assert_eq!(state.index, None, "{:#}", state.json);
    assert_eq!(state.layers.len(), 3);
    assert_unpacked_saying(&state, &[ZSTD_REASON, "no SOCI index"]);
    assert_eq!(not_lazy(&mount, "zstd"), 3, "{}", mount.metrics().summary());
    assert_trees_equal(&oracle_rootfs("debian-python"), mount.mountpoint(), &[]);
    mount.unmount();
}

/// The same image through the snapshotter: it has no index, so containerd
/// unpacks it (zstd is containerd's too), and python runs from it.
#[test]
fn zstd_image_runs_through_the_snapshotter() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let layout = zstd_layout("debian-python", ZstdFormat::Zstd);
    let image = push_layout_exact(&registry, &layout, "py-zstd", "latest");

    let report = pull(&sochi, &containerd, &image);
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["outcome"], "pulled", "{report:#}");
    }
    assert_eq!(snapshotter.layers_total("containerd_no_index"), 3);
    assert_eq!(snapshotter.layers_total("containerd_error"), 0);
    let args = ["/usr/bin/python3", "/app/main.py"];
    let out = containerd.run_container("sochi", &image, &container_id("py"), &args);
    assert_python_ready(&out);
}

/// The `sochi pull --json` report of `image` into the `sochi` snapshotter.
#[track_caller]
fn pull(sochi: &Sochi, containerd: &Containerd, image: &str) -> serde_json::Value {
    containerd.sochi_pull(sochi, "sochi", image)
}

// --- (b) a SOCI-enabled image copied with recompression ------------------------------

/// busybox pushed and converted (`bb:soci`, v2: the image manifest carries
/// the index annotation), then copied by skopeo with zstd recompression to
/// `bb:zstd` (same repository: the index is there, made for the gzip
/// layer) and to `copy:zstd` (another repository: no index there).
/// Returns (`bb:zstd`, `copy:zstd`) as references.
fn soci_image_recompressed(registry: &Registry, sochi: &Sochi) -> (String, String) {
    let source = sochi_e2e::TestImages::get().push_to(registry, "busybox");
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &source,
        &registry.reference("bb:soci"),
    ]);
    // The image manifest of the converted index (not the SOCI index
    // manifest listed beside it for the same platform).
    let index = inspect_raw(registry, "bb:soci");
    let image_manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry.get("artifactType").is_none())
        .and_then(|entry| entry["digest"].as_str())
        .unwrap_or_else(|| panic!("no image manifest in {index:#}"))
        .to_string();
    let converted = format!("bb@{image_manifest}");
    copy_recompressed(registry, &converted, "bb:zstd", ZstdFormat::Zstd);
    copy_recompressed(registry, &converted, "copy:zstd", ZstdFormat::Zstd);
    for copy in ["bb:zstd", "copy:zstd"] {
        let manifest = inspect_raw(registry, copy);
        assert!(
            manifest["annotations"]["com.amazon.soci.index-digest"].is_string(),
            "skopeo dropped the annotation: {manifest:#}"
        );
        assert!(
            layer_media_types(registry, copy)[0].ends_with("tar+zstd"),
            "{manifest:#}"
        );
    }
    (
        registry.reference("bb:zstd"),
        registry.reference("copy:zstd"),
    )
}

/// Both copies mount with their layer unpacked and the reason shown: the
/// index the annotation names is missing (404) in `copy`, and names none
/// of the image's layers in `bb`.
#[test]
fn soci_image_copied_with_recompression_mounts_unindexed() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let (stale, missing) = soci_image_recompressed(&registry, &sochi);

    let mount = LazyMount::mount(&sochi, &missing, &["--metrics-address", "127.0.0.1:0"]);
    let state = mount.state().clone();
    assert_eq!(state.index, None, "{:#}", state.json);
    assert_unpacked_saying(
        &state,
        &[ZSTD_REASON, "SOCI index is missing", "404", "/copy"],
    );
    assert!(not_lazy(&mount, "index_missing") >= 1);
    assert_trees_equal(&oracle_rootfs("busybox"), mount.mountpoint(), &[]);
    assert!(
        mount.log().contains("SOCI index missing"),
        "no warning in the log:\n{}",
        mount.log()
    );
    mount.unmount();

    let mount = LazyMount::mount(&sochi, &stale, &["--metrics-address", "127.0.0.1:0"]);
    let state = mount.state().clone();
    assert!(state.index.is_some(), "{:#}", state.json);
    assert_unpacked_saying(&state, &[ZSTD_REASON, "names none of the image's layers"]);
    assert!(not_lazy(&mount, "index_stale") >= 1);
    assert_trees_equal(&oracle_rootfs("busybox"), mount.mountpoint(), &[]);
    mount.unmount();
}

/// Through the snapshotter, the stale index leaves the zstd layer to
/// sochi's own unpack (a zstd unpack in the snapshotter); the container
/// runs and `sochi snapshotter layers` says why.
#[test]
fn stale_index_of_a_recompressed_copy_runs_through_the_snapshotter() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let (stale, _) = soci_image_recompressed(&registry, &sochi);

    pull(&sochi, &containerd, &stale);
    assert_eq!(snapshotter.layers_total("unpacked"), 1);
    assert_eq!(snapshotter.layers_total("containerd_error"), 0);
    let records = layer_records(&snapshotter, &stale);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["mode"], "unpacked", "{records:#?}");
    let reason = records[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(ZSTD_REASON) && reason.contains("names none of the image's layers"),
        "{records:#?}"
    );
    assert_counted(&snapshotter, "index_stale");
    run_echo(&containerd, &stale, "stale");
}

/// Through the snapshotter, an image whose index is missing is handed to
/// containerd (as an image without an index is), with the reason in
/// `sochi snapshotter layers`, and runs. (Its own containerd: the stale
/// copy's layer has the same chain ID, so containerd would not ask.)
#[test]
fn missing_index_of_a_recompressed_copy_runs_through_the_snapshotter() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let (_, missing) = soci_image_recompressed(&registry, &sochi);

    let report = pull(&sochi, &containerd, &missing);
    assert_eq!(report["layers"][0]["outcome"], "pulled", "{report:#}");
    assert_eq!(snapshotter.layers_total("containerd_no_index"), 1);
    assert_eq!(snapshotter.layers_total("containerd_error"), 0);
    let records = layer_records(&snapshotter, &missing);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["mode"], "containerd", "{records:#?}");
    let reason = records[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("no usable SOCI index") && reason.contains("404"),
        "{records:#?}"
    );
    assert_counted(&snapshotter, "index_missing");
    run_echo(&containerd, &missing, "missing");
}

/// `sochi_layers_not_lazy_total{why}` of the snapshotter is at least 1.
#[track_caller]
fn assert_counted(snapshotter: &Snapshotter, why: &str) {
    let metrics = snapshotter.metrics();
    let counted = metrics
        .value("sochi_layers_not_lazy_total", &[("why", why)])
        .unwrap_or(0.0);
    assert!(counted >= 1.0, "{why}: {}", metrics.summary());
}

/// `busybox echo` in a container of `image`.
#[track_caller]
fn run_echo(containerd: &Containerd, image: &str, name: &str) {
    let args = ["/bin/busybox", "echo", "hi"];
    let out = containerd.run_container("sochi", image, &container_id(name), &args);
    assert_eq!(out.trim(), "hi");
}

// --- (c) zstd:chunked -------------------------------------------------------------------

/// The metrics summed over the mount's layers: (demand requests, demand
/// bytes).
fn demand(mount: &LazyMount<'_>) -> (u64, u64) {
    let metrics = mount.metrics();
    mount
        .state()
        .layers
        .iter()
        .fold((0, 0), |(requests, bytes), layer| {
            (
                requests + metrics.demand_requests(&layer.digest),
                bytes + metrics.demand_bytes(&layer.digest),
            )
        })
}

/// The python image as zstd:chunked through `sochi mount`: no SOCI index,
/// every layer lazy from its own table of contents; reading one small file
/// fetches its one chunk (a few hundred bytes, one request); python runs
/// from the mount; the tree equals the gzip image's.
#[test]
fn zstd_chunked_image_mounts_lazily_from_its_tables_of_contents() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let layout = zstd_layout("debian-python", ZstdFormat::Chunked);
    let image = push_layout_exact(&registry, &layout, "py-chunked", "latest");
    let args = ["--metrics-address", "127.0.0.1:0", "--no-background-fetch"];
    let mount = LazyMount::mount(&sochi, &image, &args);
    let state = mount.state().clone();
    assert_eq!(state.index, None, "{:#}", state.json);
    assert_eq!(state.layers.len(), 3);
    assert!(state.layers.iter().all(|l| l.is_lazy()), "{:#}", state.json);

    let before = demand(&mount);
    let small = "etc/debian_version";
    let expected = std::fs::read(oracle_rootfs("debian-python").join(small)).unwrap();
    assert_eq!(std::fs::read(mount.path(small)).unwrap(), expected);
    let after = demand(&mount);
    let (requests, bytes) = (after.0 - before.0, after.1 - before.1);
    eprintln!("{small}: {requests} request(s), {bytes} bytes");
    assert_eq!(requests, 1, "{}", mount.metrics().summary());
    assert!(
        bytes < 4096,
        "{bytes} bytes for a {}-byte file",
        expected.len()
    );

    let out = run_ok(
        Command::new("chroot")
            .arg(mount.mountpoint())
            .args(["/usr/bin/python3", "/app/main.py"]),
    );
    assert_python_ready(&String::from_utf8_lossy(&out.stdout));
    assert_trees_equal(&oracle_rootfs("debian-python"), mount.mountpoint(), &[]);
    mount.unmount();
}

/// An OCI layout of debian-python whose top layer is the zstd:chunked
/// copy's (the same tar): gzip, gzip, zstd:chunked.
fn mixed_layout(dir: &Path) -> std::path::PathBuf {
    use sha2::Digest as _;
    let images = sochi_e2e::TestImages::get();
    let gzip = images.layout("debian-python");
    let chunked = zstd_layout("debian-python", ZstdFormat::Chunked);
    let (_, chunked_manifest) = layout_manifest(&chunked);
    let mut manifest = images.manifest("debian-python");
    manifest["layers"][2] = chunked_manifest["layers"][2].clone();
    let layout = dir.join("mixed");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let copy = |from: &Path, digest: &serde_json::Value| {
        let digest = digest.as_str().unwrap();
        std::fs::copy(blob_path(from, digest), blob_path(&layout, digest)).unwrap();
    };
    copy(&gzip, &manifest["config"]["digest"]);
    copy(&gzip, &manifest["layers"][0]["digest"]);
    copy(&gzip, &manifest["layers"][1]["digest"]);
    copy(&chunked, &manifest["layers"][2]["digest"]);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    std::fs::write(blob_path(&layout, &digest), &bytes).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

/// An image mixing gzip layers and a zstd:chunked one, converted by
/// `sochi convert` (which indexes the gzip layers and skips the zstd one,
/// as the reference does): every layer lazy, the gzip ones through the
/// SOCI index and the zstd:chunked one through its table.
#[test]
fn image_mixing_soci_and_zstd_chunked_layers_is_lazy_throughout() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let layout = mixed_layout(work.path());
    let source = push_layout_exact(&registry, &layout, "mixed", "latest");
    let converted = registry.reference("mixed:soci");
    sochi.run(["convert", "--min-layer-size", "0", &source, &converted]);
    let mount = LazyMount::mount(&sochi, &converted, &[]);
    let state = mount.state().clone();
    assert!(state.index.is_some(), "{:#}", state.json);
    assert_eq!(state.layers.len(), 3);
    assert!(state.layers.iter().all(|l| l.is_lazy()), "{:#}", state.json);
    assert_trees_equal(&oracle_rootfs("debian-python"), mount.mountpoint(), &[]);
    mount.unmount();
}

/// The same image through the snapshotter (`sochi pull`, then `ctr run`):
/// lazy without an index, python runs, and the root filesystem of a
/// running container equals the image unpacked by tar.
#[test]
fn zstd_chunked_image_runs_lazily_through_the_snapshotter() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let layout = zstd_layout("debian-python", ZstdFormat::Chunked);
    let image = push_layout_exact(&registry, &layout, "py-chunked", "latest");

    let report = pull(&sochi, &containerd, &image);
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["outcome"], "lazy", "{report:#}");
    }
    assert_eq!(snapshotter.layers_total("lazy"), 3);
    assert_eq!(snapshotter.layers_total("containerd_no_index"), 0);
    let args = ["/usr/bin/python3", "/app/main.py"];
    let out = containerd.run_container("sochi", &image, &container_id("chunked"), &args);
    assert_python_ready(&out);

    let id = container_id("chunked-rootfs");
    containerd.run_detached("sochi", &image, &id);
    let rootfs = containerd.task_rootfs("default", &id);
    assert_trees_equal(&oracle_rootfs("debian-python"), &rootfs, &[]);
    containerd.ctr(["tasks", "kill", "--signal", "SIGKILL", &id]);
}

/// The snapshotter killed (SIGKILL) and started again: the zstd:chunked
/// layers are mounted again from the same root without fetching anything
/// (tables from the artifact cache, chunks from the span cache), and a
/// new container runs python.
#[test]
fn zstd_chunked_layers_mount_again_after_a_snapshotter_restart() {
    let registry = Registry::plain();
    let proxy = FaultProxy::start(&registry);
    let containerd = Containerd::start();
    let mut snapshotter = Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            ..SnapshotterOptions::default()
        },
    );
    let sochi = Sochi::for_registry(&registry);
    let layout = zstd_layout("debian-python", ZstdFormat::Chunked);
    push_layout_exact(&registry, &layout, "py-chunked", "latest");
    let image = proxy.reference("py-chunked:latest");
    let report = pull(&sochi, &containerd, &image);
    let top = report["layers"]
        .as_array()
        .and_then(|layers| layers.last())
        .and_then(|layer| layer["chain_id"].as_str())
        .unwrap()
        .to_string();
    let args = ["/usr/bin/python3", "/app/main.py"];
    let out = containerd.run_container("sochi", &image, &container_id("before"), &args);
    assert_python_ready(&out);

    snapshotter.kill9();
    proxy.clear_requests();
    snapshotter.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !containerd
        .ctr_output(["snapshots", "--snapshotter", "sochi", "info", &top])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd does not reach the restarted snapshotter:\n{}",
            snapshotter.log_tail(40)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        sochi_e2e::lazy::mounts_under(&snapshotter.root()).len(),
        3,
        "{}",
        snapshotter.log_tail(40)
    );
    let out = containerd.run_container("sochi", &image, &container_id("after"), &args);
    assert_python_ready(&out);
    let blob_gets: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.path)
        .collect();
    assert!(
        blob_gets.is_empty(),
        "fetched again after the restart: {blob_gets:?}"
    );
}

/// busybox as zstd:chunked, pushed twice: as it is, and with a
/// `manifest-checksum` its table does not match. The second mounts with
/// its layer unpacked, saying why. Then a chunk is corrupted in the
/// registry's storage: reading it is EIO (never other bytes) while the
/// file's other chunks read; and the unpack of the image with the bad table fails
/// naming the layer, whose blob digest no longer matches.
#[test]
fn zstd_chunked_bad_chunks_are_eio_and_a_bad_table_unpacks() {
    let registry = Registry::plain();
    let layout = zstd_layout("busybox", ZstdFormat::Chunked);
    let (_, manifest) = layout_manifest(&layout);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let good = push_layout_exact(&registry, &layout, "bb-chunked", "latest");
    let work = tempfile::tempdir().unwrap();
    let bad_layout = work.path().join("layout");
    run_ok(Command::new("cp").arg("-a").arg(&layout).arg(&bad_layout));
    let wrong = format!("sha256:{}", "1".repeat(64));
    set_layer_annotation(
        &bad_layout,
        0,
        "io.containers.zstd-chunked.manifest-checksum",
        &wrong,
    );
    let bad_toc = push_layout_exact(&registry, &bad_layout, "bb-chunked", "bad-toc");

    let sochi = Sochi::for_registry(&registry);
    let mount = LazyMount::mount(&sochi, &bad_toc, &["--metrics-address", "127.0.0.1:0"]);
    assert_unpacked_saying(mount.state(), &["table of contents", &wrong]);
    assert_eq!(
        not_lazy(&mount, "chunked_toc"),
        1,
        "{}",
        mount.metrics().summary()
    );
    assert_trees_equal(&oracle_rootfs("busybox"), mount.mountpoint(), &[]);
    mount.unmount();

    // The biggest file's first chunk, corrupted where the registry keeps it.
    let toc = chunked_toc(&layout, 0);
    let entries = toc["entries"].as_array().unwrap();
    let victim = entries
        .iter()
        .filter(|e| e["type"] == "reg")
        .max_by_key(|e| e["size"].as_u64().unwrap_or(0))
        .unwrap();
    let name = victim["name"].as_str().unwrap();
    let start = victim["offset"].as_u64().unwrap();
    let end = entries
        .iter()
        .find(|e| e["type"] == "chunk" && e["name"] == name)
        .map_or(victim["endOffset"].as_u64().unwrap(), |chunk| {
            chunk["offset"].as_u64().unwrap()
        });
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = usize::try_from((start + end) / 2).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(&blob, &bytes).unwrap();

    let sochi = Sochi::for_registry(&registry);
    let args = ["--metrics-address", "127.0.0.1:0", "--no-background-fetch"];
    let mount = LazyMount::mount(&sochi, &good, &args);
    assert!(
        mount.state().layers[0].is_lazy(),
        "{:#}",
        mount.state().json
    );
    let error = std::fs::read(mount.path(name)).expect_err("a corrupted chunk was served");
    assert_eq!(error.raw_os_error(), Some(5), "{name}: {error}");
    // The file's last chunk is another frame: it reads.
    let last = entries
        .iter()
        .rfind(|e| e["type"] == "chunk" && e["name"] == name)
        .unwrap();
    let (offset, size) = (
        last["chunkOffset"].as_u64().unwrap(),
        last["chunkSize"].as_u64().unwrap() as usize,
    );
    let mut piece = vec![0; size];
    let file = std::fs::File::open(mount.path(name)).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut piece, offset).unwrap();
    let whole = std::fs::read(oracle_rootfs("busybox").join(name)).unwrap();
    assert!(
        piece == whole[offset as usize..][..size],
        "{name} at {offset}: wrong bytes"
    );
    drop(file);
    mount.unmount();

    let sochi = Sochi::for_registry(&registry);
    let mountpoint = work.path().join("rootfs");
    std::fs::create_dir(&mountpoint).unwrap();
    let mountpoint_text = mountpoint.to_str().unwrap();
    let output = sochi.output(["mount", "--json", &bad_toc, mountpoint_text]);
    if output.status.success() {
        sochi.output(["unmount", mountpoint_text]);
        panic!("unpacked a corrupted layer: {}", output.stdout);
    }
    for word in [layer.as_str(), "digest"] {
        assert!(
            output.stderr.contains(word),
            "{word:?} not in {}",
            output.stderr
        );
    }
    assert_nothing_mounted(&mountpoint);
}

/// A zstd layer whose uncompressed digest is not the config's `diff_id`
/// (what skopeo 1.9 writes for a zstd:chunked tar with padding past its
/// end, environment.md) is refused when unpacked, naming the layer and
/// the digests; the mount fails and leaves nothing mounted.
#[test]
fn zstd_image_with_a_wrong_diff_id_is_refused_naming_the_layer() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(zstd_layout("busybox", ZstdFormat::Zstd))
            .arg(&layout),
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    set_diff_ids(&layout, std::slice::from_ref(&wrong));
    let (_, manifest) = layout_manifest(&layout);
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let image = push_layout_exact(&registry, &layout, "bb-zstd", "wrong-diff-id");
    let mountpoint = work.path().join("rootfs");
    std::fs::create_dir(&mountpoint).unwrap();
    let mountpoint_text = mountpoint.to_str().unwrap();
    let output = sochi.output(["mount", "--json", &image, mountpoint_text]);
    if output.status.success() {
        sochi.output(["unmount", mountpoint_text]);
        panic!("mounted an image with a wrong diff_id: {}", output.stdout);
    }
    for word in [layer.as_str(), wrong.as_str(), "diff_id"] {
        assert!(
            output.stderr.contains(word),
            "{word:?} not in {}",
            output.stderr
        );
    }
    assert_nothing_mounted(&mountpoint);
}

#[track_caller]
fn assert_nothing_mounted(path: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_string_lossy();
    assert!(
        !table.lines().any(|line| line.contains(path.as_ref())),
        "{path} is mounted:\n{table}"
    );
}
