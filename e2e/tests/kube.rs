//! A Kubernetes node's registry side, end to end: the kubelet's pull
//! credentials reaching the lazy reads of a private image through the
//! snapshotter's CRI image service (also after the password changes and
//! after the snapshotter is killed), an image pulled past that service
//! falling back for want of credentials, and a pull-through mirror serving
//! lazy reads with the origin taking over when it dies (and the mirror's
//! cache serving when the origin does).
//!
//! containerd runs with its CRI plugin; the tests are the kubelet: image
//! calls go to the snapshotter's socket (`--image-service-endpoint`),
//! runtime calls to containerd's. Each test owns its registries, its
//! containerd and its snapshotter, declared in that order, and its pod last.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sochi_cri::{AuthConfig, Secret};
use sochi_e2e::cri::{push_pause_image, ContainerSpec, Cri, Pod, RegistryHosts};
use sochi_e2e::lazy::oracle_rootfs;
use sochi_e2e::oracle::compare_trees;
use sochi_e2e::{
    Containerd, ContainerdOptions, CriOptions, Registry, Snapshotter, SnapshotterOptions, Sochi,
    TestImages,
};
use tempfile::TempDir;

use super::cri::{
    data_digest, layer_digests, layer_modes, layer_records, wait_running, READY, READY_TIMEOUT,
    UNREAD_DIR,
};

/// `sochi convert` of the test image `name` into `registry` as `target`
/// (every layer indexed).
fn convert(registry: &Registry, name: &str, target: &str) -> String {
    let target = registry.reference(target);
    Sochi::for_registry(registry).run([
        "convert",
        "--min-layer-size",
        "0",
        &TestImages::get().oci_ref(name),
        &target,
    ]);
    target
}

/// A containerd with CRI pulling through the hosts in `config_path` and
/// its sandbox image from `pause`, and a sochi snapshotter that reads the
/// same hosts, fetches only what is read (no background fetch) and serves
/// the CRI image service when `keychain` is on.
fn start_node(pause: String, config_path: &Path, keychain: bool) -> (Containerd, Snapshotter) {
    let containerd = Containerd::start_with(ContainerdOptions::cri(CriOptions {
        sandbox_image: Some(pause),
        registry_config_path: Some(config_path.to_path_buf()),
    }));
    let mut extra_config = format!(
        "[registry]\nconfig_path = \"{}\"\n\n",
        config_path.display()
    );
    if keychain {
        extra_config.push_str(&format!(
            "[cri_keychain]\nenable_keychain = true\nimage_service_path = \"{}\"\n",
            containerd.address().display()
        ));
    }
    let snapshotter = Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            extra_config,
            ..SnapshotterOptions::default()
        },
    );
    // containerd dialled the snapshotter's socket while it booted (its
    // snapshot syncer) and got no answer; gRPC then fails calls fast until
    // its reconnect backoff ends. Wait until containerd reaches it, as a
    // kubelet's first pull would after node start-up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !containerd
        .ctr_output(["snapshots", "--snapshotter", "sochi", "ls"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd does not reach the sochi snapshotter"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    (containerd, snapshotter)
}

/// Demand fetches of debian-python's layers so far.
fn demand(snapshotter: &Snapshotter) -> u64 {
    let metrics = snapshotter.metrics();
    layer_digests()
        .iter()
        .map(|layer| metrics.demand_requests(layer))
        .sum()
}

/// Directories of debian-python that a python start reads nothing of, big
/// enough to sit in spans of their own: reading one fetches. One per step
/// of a test, so that each step fetches.
const UNREAD_EARLY: &str = "usr/share/zoneinfo";
const UNREAD_LATE: [&str; 2] = ["usr/share/man", UNREAD_DIR];

/// `dir` (of debian-python) in the container whose process is `pid`,
/// read through `/proc/PID/root`, equals the image's.
#[track_caller]
fn assert_tree_served(pid: u32, dir: &str, when: &str) {
    let oracle = oracle_rootfs("debian-python");
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let differences = compare_trees(&oracle.join(dir), &root.join(dir), &[]);
    assert!(
        differences.is_empty(),
        "/{dir} in the container {when}:\n  {}",
        differences.join("\n  ")
    );
}

/// Starts `python3 /app/main.py`, then sleeps, in `pod`; returns the
/// container's process once it printed its ready line.
#[track_caller]
fn start_python(cri: &Cri, pod: &mut Pod, image_id: &str) -> u32 {
    let id = pod.start(&ContainerSpec::new("app", image_id).command(&[
        "/bin/sh",
        "-c",
        "python3 /app/main.py && exec sleep 2147483647",
    ]));
    let line = pod.wait_for_log("app", READY, READY_TIMEOUT);
    assert!(line.contains(&data_digest()), "{line}");
    wait_running(cri, &id);
    cri.container_pid(&id)
}

/// The regular files of at most 16 MiB under `dir` that contain
/// `needle`; mounts under `dir` (layers, container roots, other tests'
/// FUSE mounts) are not entered.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(device) = fs::metadata(dir).map(|meta| meta.dev()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.len() <= 16 << 20 {
                if let Ok(bytes) = fs::read(&path) {
                    if bytes
                        .windows(needle.len())
                        .any(|window| window == needle.as_bytes())
                    {
                        found.push(path);
                    }
                }
            }
        }
    }
    found
}

// --- 1. kubelet credentials ----------------------------------------------------------------

#[test]
fn kubelet_credentials_serve_lazy_reads_across_rotation_and_restart() {
    // The sandbox image on a public registry (containerd pulls it without
    // credentials); the application on a private one (TLS, htpasswd), which
    // neither containerd nor sochi has credentials for but those the
    // kubelet sends.
    let public = Registry::plain();
    let mut private = Registry::secure();
    let hosts = RegistryHosts::new(&[&public, &private]);
    let pause = push_pause_image(&public);
    let image = convert(&private, "debian-python", "team/py:soci");
    let tools = convert(&private, "busybox", "team/tools:soci");
    // Another image of the application's repository, pulled after the
    // password changes.
    let sibling = convert(&private, "busybox", "team/py:busybox");
    let user = private.credentials().unwrap().user.clone();
    let old_password = private.credentials().unwrap().password.clone();
    // As a kubelet writes it (a Docker config key); containerd refuses a
    // bare host:port.
    let server = private.url("");
    let auth = |password: &str| {
        AuthConfig::basic(user.clone(), Secret::new(password)).with_server_address(server.clone())
    };
    let (containerd, mut snapshotter) = start_node(pause, hosts.path(), true);
    let runtime = containerd.cri();
    let images = Cri::connect_image_service(snapshotter.address(), None);

    // Pulled past the snapshotter (straight to containerd): containerd has
    // the credentials, sochi does not; its layer is handed back with that
    // reason, and containerd unpacks it.
    runtime.pull_image(&tools, Some(&auth(&old_password)));
    let records = layer_records(&snapshotter, &tools);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["mode"], "containerd", "{records:?}");
    let reason = records[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("no credentials"), "{reason}");
    assert_eq!(snapshotter.layers_total("containerd_no_credentials"), 1);

    // Pulled as the kubelet pulls (through the snapshotter's image
    // service): every layer lazy.
    let image_id = images.pull_image(&image, Some(&auth(&old_password)));
    let mut modes = layer_modes(&snapshotter, &image);
    modes.sort();
    let mut lazy: Vec<(String, String)> = layer_digests()
        .into_iter()
        .map(|layer| (layer, "lazy".to_string()))
        .collect();
    lazy.sort();
    assert_eq!(modes, lazy, "{}", snapshotter.log_tail(30));
    // Both image services list what either pulled.
    assert!(images.image_status(&tools).is_some());
    assert_eq!(
        runtime.image_status(&image).map(|i| i.id),
        Some(image_id.clone())
    );

    let mut pod = Pod::run(&runtime, "private");
    let pid = start_python(&runtime, &mut pod, &image_id);

    // The password changes. The kubelet's next pull from the repository
    // (another image) carries the new one; lazy reads of the running
    // container use it.
    let new_password = format!(
        "rotated-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    private.restart(Some(&new_password));
    images.pull_image(&sibling, Some(&auth(&new_password)));
    let before = demand(&snapshotter);
    assert_tree_served(pid, UNREAD_EARLY, "after the password changed");
    assert!(demand(&snapshotter) > before, "nothing was fetched");

    // The snapshotter dies and comes back: the credentials come back from
    // the FUSE keeper's memory, not from any disk.
    snapshotter.kill9();
    snapshotter.restart();
    let before = demand(&snapshotter);
    for dir in UNREAD_LATE {
        assert_tree_served(pid, dir, "after the snapshotter restarted");
    }
    assert!(
        demand(&snapshotter) > before,
        "the restarted snapshotter fetched nothing\n{}",
        snapshotter.log_tail(30)
    );

    // No password on any disk sochi or containerd wrote (their dirs are
    // under /tmp), in sochi's log, metrics or `--json` output.
    let layers_json = format!("{:?}", layer_records(&snapshotter, &image));
    for password in [&old_password, &new_password] {
        for dir in [Path::new("/tmp"), &snapshotter.root(), containerd.dir()] {
            let found = files_containing(dir, password);
            assert!(found.is_empty(), "a password in {found:?}");
        }
        assert!(!snapshotter.log().contains(password.as_str()));
        assert!(!snapshotter.metrics().text().contains(password.as_str()));
        assert!(!layers_json.contains(password.as_str()));
    }
    pod.stop();
}

// --- 2. a pull-through mirror --------------------------------------------------------------

/// A `registry.config_path` dir: the origin's hosts.toml names `mirror`
/// first (pull and resolve), the origin after it.
fn mirror_hosts(origin: &Registry, mirror: &Registry) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sochi-e2e-mirror-hosts-")
        .tempdir()
        .unwrap();
    let host_dir = dir.path().join(origin.addr());
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"{}\"\n\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            origin.url(""),
            mirror.url("")
        ),
    )
    .unwrap();
    dir
}

/// GETs of debian-python's layer blobs that `registry` answered.
fn layer_gets(registry: &Registry) -> usize {
    let layers = layer_digests();
    registry
        .accesses()
        .iter()
        .filter(|access| {
            access.method == "GET"
                && access.status < 300
                && layers
                    .iter()
                    .any(|layer| access.path.contains(layer.as_str()))
        })
        .count()
}

/// Waits until the pull-through cache `mirror` holds every layer of
/// debian-python whole (it copies a blob in the background on the first
/// request for it).
#[track_caller]
fn wait_cached(mirror: &Registry) {
    let manifest = TestImages::get().manifest("debian-python");
    let deadline = Instant::now() + Duration::from_secs(120);
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let data = mirror
            .data_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data");
        let size = layer["size"].as_u64().unwrap();
        while fs::metadata(&data).map(|m| m.len()).ok() != Some(size) {
            assert!(
                Instant::now() < deadline,
                "the mirror did not cache {hex} ({})",
                data.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn a_mirror_serves_lazy_reads_and_the_origin_takes_over() {
    let mut origin = Registry::plain();
    let pause = push_pause_image(&origin);
    let image = convert(&origin, "debian-python", "team/py:soci");
    let mut mirror = Registry::builder().proxy(&origin.url("")).start();
    let hosts = mirror_hosts(&origin, &mirror);
    let (containerd, snapshotter) = start_node(pause, hosts.path(), false);
    let cri = containerd.cri();

    let image_id = cri.pull_image(&image, None);
    let mut pod = Pod::run(&cri, "mirrored");
    let pid = start_python(&cri, &mut pod, &image_id);
    // containerd fetched no layer (all lazy), so every layer GET the mirror
    // answered is sochi's, tagged with the origin's namespace.
    let from_mirror = layer_gets(&mirror);
    assert!(from_mirror > 0, "the mirror served no lazy read");
    let ns = format!("ns={}", origin.addr().replace(':', "%3A"));
    assert!(
        mirror.accesses().iter().any(|a| a.path.contains(&ns)),
        "no request named the origin: {:?}",
        mirror.accesses()
    );
    let metrics = snapshotter.metrics();
    let requests = |host: &str| {
        metrics
            .value("sochi_registry_requests_total", &[("host", host)])
            .unwrap_or(0.0)
    };
    assert!(requests(&mirror.addr()) > 0.0, "{}", metrics.text());

    // The origin dies: the mirror's cache serves what was never read.
    wait_cached(&mirror);
    origin.stop();
    let before = layer_gets(&mirror);
    assert_tree_served(pid, UNREAD_EARLY, "with the origin down");
    assert!(layer_gets(&mirror) > before, "the mirror served nothing");

    // The origin comes back and the mirror dies: reads fail over to the
    // origin.
    origin.restart(None);
    mirror.stop();
    let before = layer_gets(&origin);
    for dir in UNREAD_LATE {
        assert_tree_served(pid, dir, "with the mirror down");
    }
    assert!(layer_gets(&origin) > before, "the origin served nothing");
    let failovers = snapshotter
        .metrics()
        .value(
            "sochi_registry_failovers_total",
            &[("host", &mirror.addr())],
        )
        .unwrap_or(0.0);
    assert!(failovers > 0.0, "{}", snapshotter.metrics().text());
    pod.stop();
}
