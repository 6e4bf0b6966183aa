//! `sochi pull` into a real containerd (Debian's 1.6) with its built-in
//! `overlayfs` snapshotter, which never mounts a layer remotely: every
//! `Prepare` answers mounts, so sochi must fetch and unpack every layer,
//! and `ctr run` must then run the image. A second pull finds every
//! snapshot present.

use sochi_e2e::{pid_alive, Containerd, Registry, Sochi, TestImages};

/// A container ID unique on this machine: runc keeps its state under
/// `/run/containerd/runc/<namespace>/<id>` whatever containerd's root, so
/// IDs must not collide between the containerds of parallel tests.
fn container_id(name: &str) -> String {
    format!("sochi-e2e-{name}-{}", std::process::id())
}

/// The `sochi pull --json` report of `image` into `snapshotter`.
#[track_caller]
fn pull(
    sochi: &Sochi,
    containerd: &Containerd,
    snapshotter: &str,
    image: &str,
) -> serde_json::Value {
    let address = containerd.address();
    let out = sochi.run([
        "pull",
        "--address",
        address.to_str().unwrap(),
        "--snapshotter",
        snapshotter,
        "--json",
        image,
    ]);
    out.json()
}

/// Every layer of `report` has `outcome`, and the totals say so.
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

/// No lease of the pull is left behind.
#[track_caller]
fn assert_no_leases(containerd: &Containerd) {
    let leases = containerd.ctr(["leases", "ls", "-q"]);
    assert!(leases.trim().is_empty(), "leases left: {leases}");
}

#[test]
fn pull_of_a_soci_enabled_image_with_overlayfs_unpacks_every_layer_and_ctr_runs_it() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let sochi = Sochi::for_registry(&registry);
    // A SOCI-enabled image: an index with the image manifest and the SOCI
    // index manifest for the same platform. The pull must take the image.
    let image = registry.reference("py:soci");
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &images.oci_ref("debian-python"),
        &image,
    ]);
    let layers = images.layer_digests("debian-python");
    assert_eq!(layers.len(), 3);

    let report = pull(&sochi, &containerd, "overlayfs", &image);
    assert_all(&report, "pulled", &layers);
    assert_eq!(report["image"], image.as_str());
    assert_eq!(report["snapshotter"], "overlayfs");
    assert_eq!(report["image_created"], true);
    assert_eq!(
        report["media_type"], "application/vnd.oci.image.manifest.v1+json",
        "{report:#}"
    );
    assert_no_leases(&containerd);

    // The image record points at the image manifest, and the snapshots of
    // its three layers are committed, the top one named by its chain ID.
    let listed = containerd.ctr(["images", "ls"]);
    let manifest = report["manifest"].as_str().unwrap();
    assert!(
        listed
            .lines()
            .any(|line| line.starts_with(&image) && line.contains(manifest)),
        "{image} -> {manifest} is not in\n{listed}"
    );
    let snapshots = containerd.ctr(["snapshots", "--snapshotter", "overlayfs", "ls"]);
    let committed = snapshots
        .lines()
        .filter(|line| line.trim_end().ends_with("Committed"))
        .count();
    assert_eq!(committed, 3, "{snapshots}");
    let top = report["chain_id"].as_str().unwrap();
    assert!(
        snapshots.lines().any(|line| line.starts_with(top)),
        "{snapshots}"
    );

    // The layer blobs are in containerd's store now (unpacked through its
    // diff service), each labelled with its diff ID.
    let content = containerd.ctr(["content", "ls"]);
    for (layer, reported) in layers.iter().zip(report["layers"].as_array().unwrap()) {
        let diff_id = reported["diff_id"].as_str().unwrap();
        assert!(
            content.lines().any(|line| line.starts_with(layer.as_str())
                && line.contains(&format!("containerd.io/uncompressed={diff_id}"))),
            "{layer} with its diff ID is not in\n{content}"
        );
    }

    let id = container_id("py");
    let out = containerd.ctr([
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        &image,
        &id,
        "/usr/bin/python3",
        "/app/main.py",
    ]);
    assert!(
        out.contains("sochi debian-python ready python=3"),
        "ctr run printed:\n{out}"
    );

    // Again: nothing to do.
    let again = pull(&sochi, &containerd, "overlayfs", &image);
    assert_all(&again, "present", &layers);
    assert_eq!(again["image_created"], false);
    assert_eq!(again["manifest"], report["manifest"]);
    assert_no_leases(&containerd);
}

#[test]
fn pull_of_busybox_with_overlayfs_then_ctr_run_and_errors_name_the_layer() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let sochi = Sochi::for_registry(&registry);
    // A plain image (one manifest, no index), pushed by skopeo.
    let image = images.push_to(&registry, "busybox");
    let layers = images.layer_digests("busybox");
    let address = containerd.address();
    let address = address.to_str().unwrap();

    // A snapshotter containerd does not have: an error naming the layer,
    // exit code 1, and no image record.
    let failed = sochi.run_code(
        [
            "pull",
            "--address",
            address,
            "--snapshotter",
            "nosuch",
            &image,
        ],
        1,
    );
    assert!(
        failed.stderr.contains(&format!("layer 0 ({})", layers[0]))
            && failed.stderr.contains("nosuch"),
        "{}",
        failed.stderr
    );
    assert!(!containerd.ctr(["images", "ls", "-q"]).contains(&image));
    assert_no_leases(&containerd);

    let report = pull(&sochi, &containerd, "overlayfs", &image);
    assert_all(&report, "pulled", &layers);
    assert_eq!(report["manifest"], images.manifest_digest("busybox"));

    // The text output: one line per layer, then the totals.
    let text = sochi.run([
        "pull",
        "--address",
        address,
        "--snapshotter",
        "overlayfs",
        &image,
    ]);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", text.stdout);
    assert!(
        lines[0].starts_with(&format!("layer 0 {}", layers[0])) && lines[0].ends_with("present"),
        "{}",
        text.stdout
    );
    assert!(
        lines[1].contains("1 layers: 0 lazy, 0 pulled, 1 present"),
        "{}",
        text.stdout
    );

    let id = container_id("busybox");
    let out = containerd.ctr([
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        &image,
        &id,
        "/bin/busybox",
        "echo",
        "hello from sochi pull",
    ]);
    assert_eq!(out.trim(), "hello from sochi pull");

    // The guard stops containerd and leaves nothing mounted under its dir.
    let pid = containerd.pid();
    let dir = containerd.dir().to_path_buf();
    drop(containerd);
    assert!(!pid_alive(pid), "containerd {pid} still runs");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(dir.to_str().unwrap()),
        "mounts left under {}",
        dir.display()
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
