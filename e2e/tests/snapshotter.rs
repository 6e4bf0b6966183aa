//! `sochi snapshotter` behind a real containerd (Debian's 1.6, proxy
//! plugin `sochi`) and runc, with real FUSE: `sochi pull` mounts the layers
//! of a SOCI-enabled image lazily (no silent fallback: the pull report, the
//! snapshotter's metrics and the snapshot labels all say so), `ctr run`
//! runs the image, the root filesystem equals the overlayfs pull and the
//! oracle, an image without an index is handed back to containerd and
//! still runs, and a snapshotter killed with SIGKILL comes back with its
//! caches: a new container fetches nothing twice.
//!
//! Each test owns one registry, one containerd and one snapshotter, declared
//! in that order, so that they are dropped the other way round: views
//! first, then the snapshotter (SIGINT; its FUSE mounts undone), then
//! containerd.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sochi_e2e::lazy::{assert_python_ready, oracle_rootfs, push_layout_exact};
use sochi_e2e::oracle::compare_trees;
use sochi_e2e::snapshotter::{keeper_pid, mounts_under};
use sochi_e2e::{
    pid_alive, run_ok, workspace_root, Containerd, FaultProxy, Registry, SnapshotView, Snapshotter,
    SnapshotterOptions, Sochi, TestImages,
};

use sochi_e2e::lazy::PYTHON_READY as READY;

/// Labels sochi writes on the layers it provides.
const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
const LABEL_MODE: &str = "containerd.io/snapshot/remote/sochi.mode";

/// A container ID unique on this machine: runc keeps its state under
/// `/run/containerd/runc/<namespace>/<id>` whatever containerd's root, so
/// IDs must not collide between the containerds of parallel tests.
fn container_id(name: &str) -> String {
    format!("sochi-e2e-snap-{name}-{}", std::process::id())
}

/// `sochi convert --min-layer-size 0 oci:<layout>:latest <reg>/<repo>`:
/// every layer gets a zTOC. Returns the SOCI-enabled reference.
fn convert(sochi: &Sochi, registry: &Registry, name: &str, repo_and_tag: &str) -> String {
    let target = registry.reference(repo_and_tag);
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &TestImages::get().oci_ref(name),
        &target,
    ]);
    target
}

/// The `sochi pull --json` report of `image` into `snapshotter`.
#[track_caller]
fn pull(
    sochi: &Sochi,
    containerd: &Containerd,
    snapshotter: &str,
    image: &str,
) -> serde_json::Value {
    containerd.sochi_pull(sochi, snapshotter, image)
}

/// The reported layers are `layers` and each has `outcome`.
#[track_caller]
fn assert_all(report: &serde_json::Value, outcome: &str, layers: &[String]) {
    let reported: Vec<&str> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["digest"].as_str().unwrap())
        .collect();
    assert_eq!(reported, layers, "layers of {report:#}");
    for layer in report["layers"].as_array().unwrap() {
        assert_eq!(layer["outcome"], outcome, "{report:#}");
    }
    assert_eq!(report[outcome], layers.len(), "{report:#}");
}

/// The chain IDs of the report's layers, bottom first.
fn chain_ids(report: &serde_json::Value) -> Vec<String> {
    report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["chain_id"].as_str().unwrap().to_string())
        .collect()
}

/// `ctr snapshots --snapshotter SNAPSHOTTER info KEY`, parsed.
#[track_caller]
fn snapshot_info(containerd: &Containerd, snapshotter: &str, key: &str) -> serde_json::Value {
    let out = containerd.ctr(["snapshots", "--snapshotter", snapshotter, "info", key]);
    match serde_json::from_str(&out) {
        Ok(info) => info,
        Err(err) => panic!("ctr snapshots info {key} printed no JSON ({err}):\n{out}"),
    }
}

/// The labels of a `ctr snapshots info` document.
fn labels(info: &serde_json::Value) -> BTreeMap<String, String> {
    info["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Every layer snapshot is committed in sochi and marked as a lazily
/// mounted remote snapshot.
#[track_caller]
fn assert_remote_snapshots(containerd: &Containerd, chains: &[String]) {
    for chain in chains {
        let info = snapshot_info(containerd, "sochi", chain);
        assert_eq!(info["Kind"], "Committed", "{info:#}");
        let labels = labels(&info);
        assert_eq!(
            labels.get(LABEL_REMOTE).map(String::as_str),
            Some("remote snapshot"),
            "{chain}: {info:#}"
        );
        assert_eq!(
            labels.get(LABEL_MODE).map(String::as_str),
            Some("lazy"),
            "{chain}: {info:#}"
        );
    }
}

/// The snapshotter says it mounted `lazy` layers lazily and handed none
/// back to containerd.
#[track_caller]
fn assert_lazy_metrics(snapshotter: &Snapshotter, lazy: u64) {
    let metrics = snapshotter.metrics();
    let outcome = |name: &str| {
        metrics
            .value("sochi_snapshotter_layers_total", &[("outcome", name)])
            .unwrap_or_else(|| panic!("no layers_total{{outcome={name}}}:\n{}", metrics.summary()))
            as u64
    };
    assert_eq!(outcome("lazy"), lazy, "{}", metrics.summary());
    for other in ["unpacked", "containerd_no_index", "containerd_error"] {
        assert_eq!(outcome(other), 0, "{other}: {}", metrics.summary());
    }
}

/// `ctr run --rm --snapshotter SNAPSHOTTER IMAGE ID ARGS…`; its stdout.
#[track_caller]
fn ctr_run(
    containerd: &Containerd,
    snapshotter: &str,
    image: &str,
    id: &str,
    args: &[&str],
) -> String {
    containerd.run_container(snapshotter, image, id, args)
}

/// `python3 /app/main.py` in a new container: the ready line, whose
/// `data=sha256:` must be that of the oracle's `/app/data.bin`.
#[track_caller]
fn run_python(containerd: &Containerd, image: &str, id: &str) {
    let args = ["/usr/bin/python3", "/app/main.py"];
    assert_python_ready(&ctr_run(containerd, "sochi", image, id, &args));
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// Waits until containerd reaches the snapshotter again after a restart
/// (its gRPC client backs off for about a second): `ctr snapshots info`
/// of a committed snapshot asks the snapshotter.
#[track_caller]
fn wait_usable(containerd: &Containerd, snapshotter: &Snapshotter, chain: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = containerd.ctr_output(["snapshots", "--snapshotter", "sochi", "info", chain]);
        if output.status.success() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "containerd does not reach the restarted snapshotter: {}\nsnapshotter log:\n{}",
                String::from_utf8_lossy(&output.stderr),
                snapshotter.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `compare_trees` of `expected` and `actual`, panicking with the lines.
#[track_caller]
fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    let differences = compare_trees(expected, actual, &[]);
    assert!(
        differences.is_empty(),
        "{what}: {} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        differences.join("\n  ")
    );
}

/// A snapshotter with no background fetch: only what containers read is
/// fetched.
#[track_caller]
fn snapshotter_fetching_on_demand(containerd: &Containerd) -> Snapshotter {
    Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            ..SnapshotterOptions::default()
        },
    )
}

/// debian-python converted in `registry`, then pulled lazily through
/// `proxy` (everything after the conversion goes through it), every layer
/// lazy: the image reference, its layer digests and the pull report.
#[track_caller]
fn pull_python_via(
    proxy: &FaultProxy,
    registry: &Registry,
    containerd: &Containerd,
) -> (String, Vec<String>, serde_json::Value) {
    let sochi = Sochi::for_registry(registry);
    convert(&sochi, registry, "debian-python", "py:soci");
    let image = proxy.reference("py:soci");
    let layers = TestImages::get().layer_digests("debian-python");
    let report = pull(&sochi, containerd, "sochi", &image);
    assert_all(&report, "lazy", &layers);
    (image, layers, report)
}

/// Files of debian-python a start does not read, absolute, those the
/// oracle has (at least three).
#[track_caller]
fn files_to_hash(oracle: &Path) -> Vec<String> {
    let files: Vec<String> = [
        "usr/bin/python3",
        "etc/os-release",
        "usr/lib/python3.11/os.py",
        "app/data.bin",
    ]
    .into_iter()
    .filter(|file| fs::metadata(oracle.join(file)).is_ok())
    .map(|file| format!("/{file}"))
    .collect();
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// `sha256sum`'s output `out` gives each of `files` the oracle's digest.
#[track_caller]
fn assert_sums(out: &str, files: &[String], oracle: &Path) {
    for file in files {
        let expected = sha256_file(&oracle.join(file.trim_start_matches('/')));
        assert!(
            out.lines()
                .any(|line| line.starts_with(&expected) && line.ends_with(file.as_str())),
            "{file} should have sha256 {expected}; sha256sum printed:\n{out}"
        );
    }
}

/// No mount under the snapshotter's root and no sochi process left.
#[track_caller]
fn assert_gone(root: &Path, pid: Option<u32>) {
    let left = mounts_under(root);
    assert!(
        left.is_empty(),
        "mounts left under {}: {left:?}",
        root.display()
    );
    if let Some(pid) = pid {
        assert!(!pid_alive(pid), "snapshotter {pid} still runs");
    }
}

// --- 1. debian-python runs lazily ---------------------------------------------------------

#[test]
fn python_runs_lazily() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    // No background fetch: what is fetched is what the container read.
    let snapshotter = Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            ..SnapshotterOptions::default()
        },
    );
    let sochi = Sochi::for_registry(&registry);
    let image = convert(&sochi, &registry, "debian-python", "py:soci");
    let layers = TestImages::get().layer_digests("debian-python");
    assert_eq!(layers.len(), 3);

    let report = pull(&sochi, &containerd, "sochi", &image);
    assert_all(&report, "lazy", &layers);
    assert_eq!(report["snapshotter"], "sochi");
    // No silent fallback: the snapshotter counts three lazy layers and
    // nothing else, and containerd's snapshots carry the remote labels.
    assert_lazy_metrics(&snapshotter, 3);
    let chains = chain_ids(&report);
    assert_remote_snapshots(&containerd, &chains);
    // Nothing of the image went through containerd's content store.
    let content = containerd.ctr(["content", "ls", "-q"]);
    for layer in &layers {
        assert!(
            !content.contains(layer.as_str()),
            "{layer} was downloaded into containerd:\n{content}"
        );
    }
    // Each layer is a FUSE mount under the snapshotter's root.
    let fuse: Vec<_> = snapshotter.mounts();
    assert_eq!(fuse.len(), 3, "{fuse:?}");

    run_python(&containerd, &image, &container_id("py-lazy"));

    // The container's reads came through the lazy layers, and fetched
    // only part of the image.
    let metrics = snapshotter.metrics();
    let (mut requests, mut bytes) = (0, 0);
    for layer in &layers {
        let (r, b) = (metrics.demand_requests(layer), metrics.demand_bytes(layer));
        eprintln!("{layer}: {r} demand fetches, {b} bytes");
        requests += r;
        bytes += b;
    }
    let size: u64 = TestImages::get().manifest("debian-python")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["size"].as_u64().unwrap())
        .sum();
    eprintln!("fetched {bytes} of {size} bytes in {requests} requests");
    assert!(requests > 0, "{}", metrics.summary());
    assert!(bytes < size, "{}", metrics.summary());

    // Pulled again: every snapshot is there.
    let again = pull(&sochi, &containerd, "sochi", &image);
    assert_all(&again, "present", &layers);
    assert_lazy_metrics(&snapshotter, 3);
}

// --- 2. the root filesystem equals an overlayfs pull and the oracle -----------------------

#[test]
fn rootfs_equals_overlayfs_pull() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let lazy_image = convert(&sochi, &registry, "debian-python", "py:soci");
    let plain_image = images.push_to(&registry, "debian-python");
    let layers = TestImages::get().layer_digests("debian-python");

    let lazy = pull(&sochi, &containerd, "sochi", &lazy_image);
    assert_all(&lazy, "lazy", &layers);
    let full = pull(&sochi, &containerd, "overlayfs", &plain_image);
    assert_all(&full, "pulled", &layers);
    assert_eq!(lazy["chain_id"], full["chain_id"]);
    let top = lazy["chain_id"].as_str().unwrap();
    assert_lazy_metrics(&snapshotter, 3);

    // A container of the lazy image first, so that the views see layers a
    // container has used.
    run_python(&containerd, &lazy_image, &container_id("py-rootfs"));

    let oracle = oracle_rootfs("debian-python");
    let sochi_view = SnapshotView::new(&containerd, "sochi", top);
    let overlay_view = SnapshotView::new(&containerd, "overlayfs", top);
    eprintln!(
        "sochi view: {}\noverlayfs view: {}",
        sochi_view.mounts(),
        overlay_view.mounts()
    );
    assert_same_tree(
        overlay_view.path(),
        sochi_view.path(),
        "sochi view vs overlayfs view",
    );
    assert_same_tree(&oracle, sochi_view.path(), "sochi view vs oracle");
    assert_lazy_metrics(&snapshotter, 3);
}

// --- 3. whiteouts and opaque directories ----------------------------------------------------

#[test]
fn edgecase_whiteouts_and_opaque_dirs() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let image = convert(&sochi, &registry, "edgecase", "edgecase:soci");
    let layers = TestImages::get().layer_digests("edgecase");
    assert_eq!(layers.len(), 2);

    let report = pull(&sochi, &containerd, "sochi", &image);
    assert_all(&report, "lazy", &layers);
    assert_lazy_metrics(&snapshotter, 2);
    assert_remote_snapshots(&containerd, &chain_ids(&report));

    // edgecase has no binary to run: its root filesystem as a container
    // would see it is the view of its top snapshot (the overlay of both
    // FUSE layers).
    let top = report["chain_id"].as_str().unwrap();
    let view = SnapshotView::new(&containerd, "sochi", top);
    let root = view.path();
    // L2 whites out a file and a directory of L1 ...
    for gone in ["data/remove-me.txt", "gone", "gone/inside.txt"] {
        assert!(
            fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} is still there"
        );
    }
    // ... replaces a file ...
    assert_eq!(
        fs::read(root.join("data/replace-me.txt")).unwrap(),
        b"L2 version\n"
    );
    assert_eq!(
        fs::read(root.join("data/file.txt")).unwrap(),
        b"hello from edgecase L1\n"
    );
    // ... and makes opaque/ hold only its own entry.
    let mut opaque: Vec<String> = fs::read_dir(root.join("opaque"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    opaque.sort();
    assert_eq!(opaque, ["new.txt"]);
    assert_eq!(
        fs::read(root.join("opaque/new.txt")).unwrap(),
        b"only file left in opaque/\n"
    );
    // No whiteout or overlay marker shows through.
    let data: Vec<String> = fs::read_dir(root.join("data"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !data.iter().any(|name| name.starts_with(".wh.")),
        "{data:?}"
    );
    assert_same_tree(&oracle_rootfs("edgecase"), root, "edgecase view vs oracle");
}

// --- 4. an image without an index is handed back to containerd -----------------------------

#[test]
fn image_without_index_still_runs() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    // Pushed by skopeo, no SOCI index anywhere.
    let image = images.push_to(&registry, "busybox");
    let layers = TestImages::get().layer_digests("busybox");

    let report = pull(&sochi, &containerd, "sochi", &image);
    assert_all(&report, "pulled", &layers);
    let metrics = snapshotter.metrics();
    let outcome = |name: &str| {
        metrics
            .value("sochi_snapshotter_layers_total", &[("outcome", name)])
            .unwrap_or(0.0) as u64
    };
    assert!(outcome("containerd_no_index") > 0, "{}", metrics.summary());
    assert_eq!(outcome("lazy"), 0, "{}", metrics.summary());
    assert_eq!(outcome("containerd_error"), 0, "{}", metrics.summary());
    // containerd unpacked it into a plain snapshot of sochi's, not a
    // remote one.
    let info = snapshot_info(&containerd, "sochi", report["chain_id"].as_str().unwrap());
    assert!(!labels(&info).contains_key(LABEL_REMOTE), "{info:#}");
    assert!(
        snapshotter.mounts().is_empty(),
        "{:?}",
        snapshotter.mounts()
    );

    let out = ctr_run(
        &containerd,
        "sochi",
        &image,
        &container_id("busybox"),
        &["/bin/busybox", "echo", "hi"],
    );
    assert_eq!(out.trim(), "hi");
}

// --- 5. the image the reference converted -------------------------------------------------

/// The image the reference converted (`fixtures/converted`): its first
/// layer carries a `security.capability` the kernel refuses (fixtures
/// README), so sochi refuses to provide it, as the lazy mount and the
/// unpack do (issue 14); the layer goes back to containerd with the reason
/// logged and counted, and containerd's own unpack refuses it too.
#[test]
fn reference_converted_image_is_refused_with_the_reason_recorded() {
    let fixtures = workspace_root().join("fixtures");
    // A private copy, so nothing here can touch the shared fixtures.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("converted");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(fixtures.join("converted"))
            .arg(&layout),
    );
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let reference = push_layout_exact(&registry, &layout, "converted", "latest");

    let address = containerd.address();
    let pulled = sochi.output([
        "pull",
        "--address",
        address.to_str().unwrap(),
        "--snapshotter",
        "sochi",
        &reference,
    ]);
    assert!(
        !pulled.status.success(),
        "containerd applied it: {}",
        pulled.stdout
    );
    assert_eq!(snapshotter.layers_total("lazy"), 0);
    assert_eq!(
        snapshotter.layers_total("containerd_error"),
        1,
        "{}",
        snapshotter.log_tail(20)
    );
    let log = snapshotter.log();
    assert!(
        log.lines()
            .any(|line| line.contains("cannot provide the layer")
                && line.contains("security.capability")
                && line.contains("data/xattr-file")),
        "{log}"
    );
}

// --- 6. a restart reuses the caches ---------------------------------------------------------

/// Blob GETs the proxy saw, as `path (range)` lines.
fn blob_gets(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| format!("{} ({})", r.path, r.range.unwrap_or_default()))
        .collect()
}

#[test]
fn restart_reuses_caches() {
    let registry = Registry::plain();
    let proxy = FaultProxy::start(&registry);
    let containerd = Containerd::start();
    let mut snapshotter = snapshotter_fetching_on_demand(&containerd);
    let (image, layers, report) = pull_python_via(&proxy, &registry, &containerd);
    assert_lazy_metrics(&snapshotter, 3);
    let top = report["chain_id"].as_str().unwrap().to_string();
    run_python(&containerd, &image, &container_id("py-before"));
    let before = blob_gets(&proxy);
    let demand_before: u64 = {
        let metrics = snapshotter.metrics();
        layers.iter().map(|l| metrics.demand_requests(l)).sum()
    };
    eprintln!(
        "before the restart: {} blob GETs through the proxy, {demand_before} demand fetches",
        before.len()
    );
    assert!(demand_before > 0);

    // SIGKILL: its FUSE mounts are left dead; a restart mounts them again
    // from the same root.
    let old_pid = snapshotter.pid();
    snapshotter.kill9();
    assert!(!old_pid.is_some_and(pid_alive));
    proxy.clear_requests();
    snapshotter.restart();
    wait_usable(&containerd, &snapshotter, &top);
    // Each layer mounted once: the dead mounts were taken away, not
    // mounted over.
    let mounted = sochi_e2e::lazy::mounts_under(&snapshotter.root());
    assert_eq!(mounted.len(), 3, "{mounted:?}");

    // A new container of the same image starts and reads the same files:
    // nothing is fetched again (span cache and zTOCs are reused).
    run_python(&containerd, &image, &container_id("py-after"));
    let after = blob_gets(&proxy);
    assert!(
        after.is_empty(),
        "{} blob GETs after the restart:\n  {}\nsnapshotter log:\n{}",
        after.len(),
        after.join("\n  "),
        snapshotter.log_tail(40)
    );
    let metrics = snapshotter.metrics();
    for layer in &layers {
        assert_eq!(metrics.demand_requests(layer), 0, "{}", metrics.summary());
    }
    eprintln!(
        "after the restart, all requests through the proxy: {:?}",
        proxy
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );

    // Containers started after the restart see the right bytes, also of
    // files nobody read before.
    let oracle = oracle_rootfs("debian-python");
    let files = files_to_hash(&oracle);
    let mut args = vec!["/usr/bin/sha256sum"];
    args.extend(files.iter().map(String::as_str));
    let out = ctr_run(
        &containerd,
        "sochi",
        &image,
        &container_id("sums-after"),
        &args,
    );
    assert_sums(&out, &files, &oracle);
}

// --- 6b. a running container survives a snapshotter restart ---------------------------------

#[test]
fn running_container_survives_restart() {
    let registry = Registry::plain();
    let proxy = FaultProxy::start(&registry);
    let containerd = Containerd::start();
    // What the container reads after the restart is fetched on demand by
    // the new process.
    let mut snapshotter = snapshotter_fetching_on_demand(&containerd);
    let (image, layers, report) = pull_python_via(&proxy, &registry, &containerd);
    let top = report["chain_id"].as_str().unwrap().to_string();
    let id = container_id("py-survivor");
    containerd.run_detached("sochi", &image, &id);
    let root = snapshotter.root();
    let keeper = keeper_pid(&root).expect("a FUSE keeper runs beside the snapshotter");
    let mounted = snapshotter.mounts();
    assert_eq!(mounted.len(), 3, "{mounted:?}");
    let oracle = oracle_rootfs("debian-python");

    // A read in flight when the snapshotter dies: the registry is down, so
    // the daemon has taken the READ and is retrying its range request.
    let in_flight = "/usr/lib/python3.11/json/decoder.py".to_string();
    proxy.down();
    let mut reader = containerd
        .ctr_command([
            "task",
            "exec",
            "--exec-id",
            "in-flight",
            &id,
            "/usr/bin/sha256sum",
            &in_flight,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.refused_connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "the read never reached the registry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGKILL: the layers stay mounted, their connections kept.
    snapshotter.kill9();
    assert_eq!(snapshotter.mounts(), mounted);
    proxy.up();
    snapshotter.restart();
    wait_usable(&containerd, &snapshotter, &top);
    assert_eq!(keeper_pid(&root), Some(keeper));
    assert_eq!(
        snapshotter.mounts(),
        mounted,
        "taken over, not mounted again"
    );
    let log = snapshotter.log();
    assert_eq!(
        log.matches("took over the kept FUSE connection").count(),
        3,
        "{}",
        snapshotter.log_tail(40)
    );

    // The read the dead process had taken is sent again to the new one
    // (FUSE_NOTIFY_RESEND) and answered with the right bytes.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = reader.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = reader.kill();
            panic!(
                "the read in flight at the restart never finished; log:\n{}",
                snapshotter.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut reader.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    assert_sums(&out, &[in_flight], &oracle);

    // The container started before the restart reads files nobody read
    // yet: the new process fetches them through the mounts it took over.
    let files = files_to_hash(&oracle);
    let mut args = vec![
        "task",
        "exec",
        "--exec-id",
        "sums",
        &id,
        "/usr/bin/sha256sum",
    ];
    args.extend(files.iter().map(String::as_str));
    let out = containerd.ctr(args);
    assert_sums(&out, &files, &oracle);
    let out = containerd.ctr([
        "task",
        "exec",
        "--exec-id",
        "python",
        &id,
        "/usr/bin/python3",
        "/app/main.py",
    ]);
    assert!(out.contains(READY), "python printed:\n{out}");
    let demand: u64 = {
        let metrics = snapshotter.metrics();
        layers.iter().map(|l| metrics.demand_requests(l)).sum()
    };
    assert!(demand > 0, "the new process served the reads");
    containerd.ctr(["task", "kill", "-s", "KILL", &id]);
}

// --- 7. SIGINT unmounts everything when connections are not kept ----------------------------------------------------------

#[test]
fn unmount_on_sigint() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    // Without the keeper a stop unmounts every layer.
    let mut snapshotter = Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            extra_config: "[fuse]\nkeep_connections = false\n".into(),
            ..SnapshotterOptions::default()
        },
    );
    let sochi = Sochi::for_registry(&registry);
    let image = convert(&sochi, &registry, "busybox", "busybox:soci");
    let report = pull(&sochi, &containerd, "sochi", &image);
    assert_all(&report, "lazy", &TestImages::get().layer_digests("busybox"));
    let out = ctr_run(
        &containerd,
        "sochi",
        &image,
        &container_id("busybox-sigint"),
        &["/bin/busybox", "echo", "lazy hi"],
    );
    assert_eq!(out.trim(), "lazy hi");
    assert_eq!(snapshotter.mounts().len(), 1, "{:?}", snapshotter.mounts());

    let pid = snapshotter.pid();
    let status = snapshotter.interrupt(Duration::from_secs(30));
    let Some(status) = status else {
        panic!(
            "the snapshotter ignored SIGINT for 30 s; log:\n{}",
            snapshotter.log_tail(40)
        );
    };
    assert!(
        status.success(),
        "exit after SIGINT: {status}; log:\n{}",
        snapshotter.log_tail(40)
    );
    assert_gone(&snapshotter.root(), pid);
    assert!(
        !snapshotter.address().exists(),
        "{} left behind",
        snapshotter.address().display()
    );

    // Started again on the same root, it mounts the layer again and the
    // image runs.
    snapshotter.restart();
    wait_usable(
        &containerd,
        &snapshotter,
        report["chain_id"].as_str().unwrap(),
    );
    assert_eq!(snapshotter.mounts().len(), 1, "{:?}", snapshotter.mounts());
    let out = ctr_run(
        &containerd,
        "sochi",
        &image,
        &container_id("busybox-sigint-again"),
        &["/bin/busybox", "echo", "lazy again"],
    );
    assert_eq!(out.trim(), "lazy again");
}

// --- 8. the guards clean up after a failing test --------------------------------------------

/// What a failing test leaves for the guards to clean up.
struct Leftovers {
    snapshotter_root: std::path::PathBuf,
    snapshotter_pid: Option<u32>,
    containerd_dir: std::path::PathBuf,
    containerd_pid: u32,
    view: std::path::PathBuf,
}

/// A test that panics while a lazy image is pulled and a view of it is
/// mounted; with `kill9`, after its snapshotter died (dead FUSE mounts).
fn fail_with_lazy_layers(kill9: bool) -> Leftovers {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let registry = Registry::plain();
        let containerd = Containerd::start();
        let mut snapshotter = Snapshotter::for_containerd(&containerd);
        let sochi = Sochi::for_registry(&registry);
        let image = convert(&sochi, &registry, "busybox", "busybox:soci");
        let report = pull(&sochi, &containerd, "sochi", &image);
        assert_all(&report, "lazy", &TestImages::get().layer_digests("busybox"));
        let view = SnapshotView::new(&containerd, "sochi", report["chain_id"].as_str().unwrap());
        assert!(view.path().join("bin/busybox").is_file());
        *seen.lock().unwrap() = Some(Leftovers {
            snapshotter_root: snapshotter.root(),
            snapshotter_pid: snapshotter.pid(),
            containerd_dir: containerd.dir().to_path_buf(),
            containerd_pid: containerd.pid(),
            view: view.path().to_path_buf(),
        });
        if kill9 {
            snapshotter.kill9();
        }
        panic!("deliberate: a test fails while its layers are mounted");
    }));
    assert!(result.is_err());
    seen.into_inner().unwrap().unwrap()
}

#[track_caller]
fn assert_cleaned_up(left: &Leftovers) {
    assert_gone(&left.snapshotter_root, left.snapshotter_pid);
    assert!(!pid_alive(left.containerd_pid), "containerd still runs");
    for dir in [&left.view, &left.containerd_dir] {
        let mounts = mounts_under(dir);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }
    for dir in [&left.snapshotter_root, &left.containerd_dir, &left.view] {
        assert!(!dir.exists(), "{} left", dir.display());
    }
}

#[test]
fn guards_clean_up_when_a_test_fails() {
    assert_cleaned_up(&fail_with_lazy_layers(false));
    assert_cleaned_up(&fail_with_lazy_layers(true));
}
