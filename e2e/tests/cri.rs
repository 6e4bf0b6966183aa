//! containerd's CRI plugin, driven as a kubelet drives it
//! (`sochi_cri::CriClient`: `PullImage`, `RunPodSandbox`, `CreateContainer`,
//! `StartContainer`, …), with the sochi snapshotter as its snapshotter:
//! a CRI pull of a SOCI-enabled image mounts every indexed layer lazily (no
//! silent fallback), the pod's container prints the right output from a
//! root filesystem equal to the image unpacked by GNU tar, and a running
//! pod survives a restart of the snapshotter (SIGKILL) and of containerd,
//! still reading files it had not read before.
//!
//! Each test owns one registry, one containerd (CRI on, sandbox image made
//! from busybox, a hosts.toml for the plain-HTTP registry) and one
//! snapshotter, declared in that order, and its pod last, so that the pod
//! is torn down first, also when the test fails.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sochi_cri::api;
use sochi_e2e::cri::{push_pause_image, ContainerSpec, Cri, Pod, RegistryHosts, CRI_NAMESPACE};
use sochi_e2e::lazy::{is_mounted, oracle_rootfs};
use sochi_e2e::oracle::compare_trees;
use sochi_e2e::{
    pid_alive, run_ok, sochi_bin, Containerd, ContainerdOptions, CriOptions, Registry, Snapshotter,
    SnapshotterOptions, Sochi, TestImages,
};

/// What debian-python's `/app/main.py` prints.
pub(crate) const READY: &str = "sochi debian-python ready python=3";

/// How long a container may take to print its ready line (a cold lazy
/// start on a busy machine).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Labels sochi writes on the layers it provides.
const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
const LABEL_MODE: &str = "containerd.io/snapshot/remote/sochi.mode";

/// The pieces of one CRI node, in drop order reversed: declare them in
/// this order (registry first) and the pod after them.
struct Node {
    snapshotter: Snapshotter,
    containerd: Containerd,
    _hosts: RegistryHosts,
    registry: Registry,
}

impl Node {
    /// A plain-HTTP registry holding the sandbox image, a containerd with
    /// CRI pulling from it through the sochi snapshotter, which fetches
    /// only what containers read (no background fetch).
    fn start() -> Node {
        let registry = Registry::plain();
        let hosts = RegistryHosts::new(&[&registry]);
        let pause = push_pause_image(&registry);
        let containerd = Containerd::start_with(ContainerdOptions::cri(CriOptions {
            sandbox_image: Some(pause),
            registry_config_path: Some(hosts.path().to_path_buf()),
        }));
        let snapshotter = Snapshotter::start(
            &containerd.snapshotter_address(),
            SnapshotterOptions {
                background_fetch: false,
                ..SnapshotterOptions::default()
            },
        );
        Node {
            snapshotter,
            containerd,
            _hosts: hosts,
            registry,
        }
    }

    /// debian-python converted by `sochi convert` (every layer gets a
    /// zTOC) into the registry as `py:soci`; the reference.
    fn push_python(&self) -> String {
        let sochi = Sochi::for_registry(&self.registry);
        let target = self.registry.reference("py:soci");
        sochi.run([
            "convert",
            "--min-layer-size",
            "0",
            &TestImages::get().oci_ref("debian-python"),
            &target,
        ]);
        target
    }
}

/// The layer digests of debian-python, bottom first.
pub(crate) fn layer_digests() -> Vec<String> {
    TestImages::get().layer_digests("debian-python")
}

/// The chain IDs of debian-python's layers, bottom first (OCI image spec:
/// `ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n))`): the names of
/// their committed snapshots.
fn chain_ids() -> Vec<String> {
    let images = TestImages::get();
    let config_digest = images.manifest("debian-python")["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(images.blob_path("debian-python", &config_digest)).unwrap(),
    )
    .unwrap();
    let mut chains: Vec<String> = Vec::new();
    for diff_id in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let diff_id = diff_id.as_str().unwrap();
        let chain = match chains.last() {
            None => diff_id.to_string(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}")))
            ),
        };
        chains.push(chain);
    }
    chains
}

/// `sochi snapshotter layers --image IMAGE --json` on the snapshotter's
/// root: one record per layer (`layer`, `mode`, `reason`, …).
pub(crate) fn layer_records(snapshotter: &Snapshotter, image: &str) -> Vec<serde_json::Value> {
    let output = run_ok(
        Command::new(sochi_bin())
            .arg("--root")
            .arg(snapshotter.root())
            .args(["snapshotter", "layers", "--json", "--image", image]),
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// [`layer_records`]: layer digest → how it was provided.
pub(crate) fn layer_modes(snapshotter: &Snapshotter, image: &str) -> Vec<(String, String)> {
    layer_records(snapshotter, image)
        .iter()
        .map(|record| {
            (
                record["layer"].as_str().unwrap().to_string(),
                record["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every indexed layer of `image` is a remote snapshot mounted lazily: the
/// snapshotter's records and metrics (nothing unpacked or refused; the
/// sandbox image, which has no index, is the only thing handed back to
/// containerd), and the labels containerd keeps on the snapshots in CRI's
/// namespace.
#[track_caller]
fn assert_lazy(node: &Node, image: &str) {
    assert_lazy_snapshots(node, image);
    let layers = layer_digests();
    let metrics = node.snapshotter.metrics();
    let outcome = |name: &str| {
        metrics
            .value("sochi_snapshotter_layers_total", &[("outcome", name)])
            .unwrap_or(0.0) as u64
    };
    assert_eq!(
        outcome("lazy"),
        layers.len() as u64,
        "{}",
        metrics.summary()
    );
    for other in ["unpacked", "containerd_error"] {
        assert_eq!(outcome(other), 0, "{other}: {}", metrics.summary());
    }
}

/// [`assert_lazy`] without the metrics, which a restarted snapshotter
/// counts from zero.
#[track_caller]
fn assert_lazy_snapshots(node: &Node, image: &str) {
    let layers = layer_digests();
    let mut modes = layer_modes(&node.snapshotter, image);
    modes.sort();
    let mut expected: Vec<(String, String)> = layers
        .iter()
        .map(|layer| (layer.clone(), "lazy".to_string()))
        .collect();
    expected.sort();
    assert_eq!(modes, expected, "sochi snapshotter layers --image {image}");

    for chain in chain_ids() {
        let out = node.containerd.ctr([
            "-n",
            CRI_NAMESPACE,
            "snapshots",
            "--snapshotter",
            "sochi",
            "info",
            &chain,
        ]);
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(info["Kind"], "Committed", "{info:#}");
        assert_eq!(info["Labels"][LABEL_REMOTE], "remote snapshot", "{info:#}");
        assert_eq!(info["Labels"][LABEL_MODE], "lazy", "{info:#}");
    }

    // Nothing of the layers went through containerd's content store.
    let content = node
        .containerd
        .ctr(["-n", CRI_NAMESPACE, "content", "ls", "-q"]);
    for layer in &layers {
        assert!(
            !content.contains(layer.as_str()),
            "{layer} was downloaded into containerd:\n{content}"
        );
    }
}

/// The `data=sha256:` the ready line must carry: that of the oracle's
/// `/app/data.bin`.
pub(crate) fn data_digest() -> String {
    sha256_file(&oracle_rootfs("debian-python").join("app/data.bin"))
}

pub(crate) fn sha256_file(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => hex::encode(Sha256::digest(bytes)),
        Err(err) => panic!("reading {}: {err}", path.display()),
    }
}

/// Waits until container `id` runs.
#[track_caller]
pub(crate) fn wait_running(cri: &Cri, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cri.container_status(id);
        if status.state == api::ContainerState::ContainerRunning as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline
                && status.state == api::ContainerState::ContainerCreated as i32,
            "container {id} does not run: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `image` is listed by `ListImages` under its tag.
fn listed(cri: &Cri, image: &str) -> bool {
    cri.list_images()
        .iter()
        .any(|listed| listed.repo_tags.iter().any(|tag| tag == image))
}

// --- 1. a pod of a lazily pulled image ------------------------------------------------------

#[test]
fn python_pod_runs_lazily_through_cri() {
    let node = Node::start();
    let image = node.push_python();
    let cri = node.containerd.cri();
    let version = cri.version();
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");

    let image_id = cri.pull_image(&image, None);
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert_lazy(&node, &image);
    let status = cri.image_status(&image).expect("the pulled image");
    assert_eq!(status.id, image_id);
    assert!(listed(&cri, &image));
    // Each layer is a FUSE mount under the snapshotter's root.
    assert_eq!(
        node.snapshotter.mounts().len(),
        3,
        "{:?}",
        node.snapshotter.mounts()
    );

    let mut pod = Pod::run(&cri, "python");
    // The image's own command (`python3 /app/main.py`), as a pod spec
    // without `command` runs it; the image by the ID the pull answered, as
    // a kubelet names it.
    pod.start(&ContainerSpec::new("app", &image_id));
    let line = pod.wait_for_log("app", READY, READY_TIMEOUT);
    assert!(
        line.contains(&format!("data=sha256:{}", data_digest())),
        "{line}"
    );
    let exited = pod.wait_exited("app", Duration::from_secs(60));
    assert_eq!(exited.exit_code, 0, "{exited:?}");
    assert_eq!(pod.log("app"), std::slice::from_ref(&line), "the whole log");
    // The container's reads came through the lazy layers, and fetched only
    // part of the image.
    let metrics = node.snapshotter.metrics();
    let layers = layer_digests();
    let requests: u64 = layers.iter().map(|l| metrics.demand_requests(l)).sum();
    let bytes: u64 = layers.iter().map(|l| metrics.demand_bytes(l)).sum();
    let size: u64 = TestImages::get().manifest("debian-python")["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer["size"].as_u64().unwrap())
        .sum();
    eprintln!("fetched {bytes} of {size} bytes in {requests} requests");
    assert!(requests > 0, "{}", metrics.summary());
    assert!(bytes < size, "{}", metrics.summary());

    // A container that stays, to look at its root filesystem: what runc
    // pivoted into, mounted by containerd's shim in the host's namespace.
    let id =
        pod.start(&ContainerSpec::new("rootfs", &image_id).command(&["/bin/sleep", "2147483647"]));
    wait_running(&cri, &id);
    let rootfs = node.containerd.task_rootfs(CRI_NAMESPACE, &id);
    assert!(is_mounted(&rootfs), "{} is not mounted", rootfs.display());
    // runc makes the targets of the pod's bind mounts that the image lacks
    // (debian-python has no /etc/hosts) in the container's writable layer,
    // empty, before it mounts the pod's files on them.
    let oracle = oracle_rootfs("debian-python");
    let targets: Vec<&str> = ["etc/hosts", "etc/hostname", "etc/resolv.conf"]
        .into_iter()
        .filter(|target| fs::symlink_metadata(oracle.join(target)).is_err())
        .collect();
    for target in &targets {
        let meta = fs::symlink_metadata(rootfs.join(target)).unwrap();
        assert!(meta.is_file() && meta.len() == 0, "{target}: {meta:?}");
    }
    let differences = compare_trees(&oracle, &rootfs, &targets);
    assert!(
        differences.is_empty(),
        "the container's root filesystem differs from the image unpacked by tar:\n  {}",
        differences.join("\n  ")
    );

    // Still three lazy layers: the sandbox image (no index) was the only
    // one handed back to containerd.
    assert_lazy(&node, &image);
    assert!(
        node.snapshotter.layers_total("containerd_no_index") >= 1,
        "{}",
        node.snapshotter.metrics().summary()
    );

    // Pod gone, image removed, as a kubelet deleting the pod and
    // collecting the image does.
    pod.stop();
    cri.remove_image(&image);
    assert!(cri.image_status(&image).is_none());
    assert!(!listed(&cri, &image));
}

// --- 2. a node restart: snapshotter and containerd ---------------------------------------

/// Files of debian-python that `python3 /app/main.py` does not read.
pub(crate) fn unread_files(oracle: &Path) -> Vec<String> {
    let files: Vec<String> = [
        "etc/os-release",
        "usr/lib/python3.11/json/decoder.py",
        "usr/lib/python3.11/json/encoder.py",
    ]
    .into_iter()
    .filter(|file| fs::metadata(oracle.join(file)).is_ok())
    .map(str::to_string)
    .collect();
    assert!(files.len() >= 2, "{files:?}");
    files
}

/// A directory nothing in the container has read, whose files sit at the
/// end of the two big layers' tars (paths in order: `/var` after `/usr`),
/// in spans a python start does not touch: reading it fetches.
pub(crate) const UNREAD_DIR: &str = "var/lib/dpkg";

#[test]
fn a_running_pod_survives_snapshotter_and_containerd_restarts() {
    let mut node = Node::start();
    let image = node.push_python();
    let cri = node.containerd.cri();
    let image_id = cri.pull_image(&image, None);
    assert_lazy(&node, &image);

    let mut pod = Pod::run(&cri, "survivor");
    let id = pod.start(&ContainerSpec::new("app", &image_id).command(&[
        "/bin/sh",
        "-c",
        "python3 /app/main.py && exec sleep 2147483647",
    ]));
    let line = pod.wait_for_log("app", READY, READY_TIMEOUT);
    assert!(line.contains(&data_digest()), "{line}");
    let pid = cri.container_pid(&id);
    let mounted = node.snapshotter.mounts();
    assert_eq!(mounted.len(), 3, "{mounted:?}");

    // The snapshotter dies with SIGKILL and comes back on the same root: it
    // takes the layers' FUSE connections over from its keeper.
    node.snapshotter.kill9();
    node.snapshotter.restart();
    assert_eq!(
        node.snapshotter.mounts(),
        mounted,
        "taken over, not mounted again"
    );
    // containerd stops (its shims and the pod keep running) and starts
    // again on the same root and state.
    node.containerd.restart();
    cri.wait_ready();

    // The node still knows the image, the pod and the container, and the
    // container's process is the same.
    assert!(listed(&cri, &image), "{:?}", cri.list_images());
    let status = cri.container_status(&id);
    assert_eq!(
        status.state,
        api::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    assert_eq!(cri.container_pid(&id), pid);
    assert!(pid_alive(pid));
    let sandbox = cri
        .block_on(cri.client().pod_sandbox_status(pod.id(), false))
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        sandbox.state,
        api::PodSandboxState::SandboxReady as i32,
        "{sandbox:?}"
    );

    // Files nobody read before the restarts, read through the container's
    // own root (/proc/PID/root): the new snapshotter process fetches them,
    // and they have the image's bytes.
    let oracle = oracle_rootfs("debian-python");
    let layers = layer_digests();
    let demand = |snapshotter: &Snapshotter| -> u64 {
        let metrics = snapshotter.metrics();
        layers.iter().map(|l| metrics.demand_requests(l)).sum()
    };
    let before = demand(&node.snapshotter);
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    for file in unread_files(&oracle) {
        assert_eq!(
            sha256_file(&root.join(&file)),
            sha256_file(&oracle.join(&file)),
            "/{file} read in the container after the restarts"
        );
    }
    let differences = compare_trees(&oracle.join(UNREAD_DIR), &root.join(UNREAD_DIR), &[]);
    assert!(
        differences.is_empty(),
        "/{UNREAD_DIR} in the container after the restarts:\n  {}",
        differences.join("\n  ")
    );
    let after = demand(&node.snapshotter);
    eprintln!(
        "demand fetches of the restarted snapshotter: {before} before the reads, {after} after"
    );
    assert!(
        after > before,
        "the restarted snapshotter fetched nothing ({before} → {after} demand fetches)\n{}",
        node.snapshotter.log_tail(40)
    );
    assert_lazy_snapshots(&node, &image);

    pod.stop();
    assert!(!pid_alive(pid), "the container's process outlived its pod");
}

// --- 3. the guards clean up after a failing test ------------------------------------------

/// What a failing test leaves for the guards to clean up.
struct Leftovers {
    container_pid: u32,
    container_id: String,
    containerd_pid: u32,
    containerd_dir: std::path::PathBuf,
    snapshotter_root: std::path::PathBuf,
    pod_logs: std::path::PathBuf,
}

#[test]
fn guards_tear_down_a_running_pod_when_a_test_fails() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Node::start();
        let image = node.push_python();
        let cri = node.containerd.cri();
        let image_id = cri.pull_image(&image, None);
        let mut pod = Pod::run(&cri, "doomed");
        let id = pod.start(
            &ContainerSpec::new("sleeper", &image_id).command(&["/bin/sleep", "2147483647"]),
        );
        wait_running(&cri, &id);
        *seen.lock().unwrap() = Some(Leftovers {
            container_pid: cri.container_pid(&id),
            container_id: id,
            containerd_pid: node.containerd.pid(),
            containerd_dir: node.containerd.dir().to_path_buf(),
            snapshotter_root: node.snapshotter.root(),
            pod_logs: pod.log_dir().to_path_buf(),
        });
        panic!("deliberate: a test fails while its pod runs on lazy layers");
    }));
    assert!(result.is_err());
    let left = seen.into_inner().unwrap().unwrap();
    for (what, pid) in [
        ("the container", left.container_pid),
        ("containerd", left.containerd_pid),
    ] {
        assert!(!pid_alive(pid), "{what} ({pid}) still runs");
    }
    for dir in [&left.containerd_dir, &left.snapshotter_root] {
        let mounts = sochi_e2e::snapshotter::mounts_under(dir);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }
    for dir in [&left.containerd_dir, &left.snapshotter_root, &left.pod_logs] {
        assert!(!dir.exists(), "{} left", dir.display());
    }
    // runc keeps its state outside containerd's dirs.
    let runc_state = Path::new("/run/containerd/runc")
        .join(CRI_NAMESPACE)
        .join(&left.container_id);
    assert!(!runc_state.exists(), "{} left", runc_state.display());
}
