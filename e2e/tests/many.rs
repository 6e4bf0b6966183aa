//! A node with many images: six small images (busybox and three layers of
//! 8 MiB of random data each: 18 lazy layers, 144 MiB of data) pulled with
//! `sochi pull` and read whole by one container each, all at once, under a
//! snapshotter whose span memory budget is 32 MiB for the node. Every
//! container reads the right bytes, and the snapshotter's and its FUSE
//! keeper's resident memory stays under the budget plus a fixed overhead.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sochi_e2e::layouts::{noise, sha256, Entry, ImageLayout};
use sochi_e2e::snapshotter::keeper_pid;
use sochi_e2e::{rss, rss_anon, Containerd, Registry, Snapshotter, SnapshotterOptions, Sochi};

/// The node's span memory budget (`[directory_cache] memory_bytes`).
const BUDGET: u64 = 32 << 20;

/// The node's span disk budget (`[directory_cache] max_bytes`): less than
/// the 144 MiB the containers read.
const DISK_BUDGET: u64 = 64 << 20;

/// What sochi may use besides the budget: FUSE threads, the layer trees,
/// the registry client, the allocator's slack.
const OVERHEAD: u64 = 128 << 20;

const IMAGES: usize = 6;
const DATA_LAYERS: usize = 3;
const LAYER_BYTES: usize = 8 << 20;

/// Bytes allocated on disk to the span cache files (`layer-*`) under
/// `root`, mounts not entered.
fn span_files_allocated(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let device = fs::metadata(root).unwrap().dev();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.dev() != device {
                continue;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() && entry.file_name().to_string_lossy().starts_with("layer-") {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

/// Image `n`: busybox, then three layers of one `/data/<i>.bin` each.
/// Returns the layout's dir and the SHA-256 of each data file.
fn make_image(work: &Path, n: usize) -> (std::path::PathBuf, Vec<String>) {
    let busybox = fs::read("/bin/busybox").expect("busybox-static (scripts/e2e-deps.sh)");
    let dir = work.join(format!("image-{n}"));
    let mut layout = ImageLayout::new(&dir);
    layout.layer(
        &[
            Entry::dir("bin"),
            Entry::file("bin/busybox", &busybox).mode(0o755),
        ],
        true,
    );
    let mut sums = Vec::new();
    for i in 0..DATA_LAYERS {
        let data = noise((n * DATA_LAYERS + i) as u64 + 1, LAYER_BYTES);
        sums.push(sha256(&data).trim_start_matches("sha256:").to_string());
        layout.layer(
            &[
                Entry::dir("data"),
                Entry::file(&format!("data/{i}.bin"), &data),
            ],
            true,
        );
    }
    layout.finish();
    (dir, sums)
}

#[test]
fn six_images_at_once_stay_within_the_memory_budget() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::start(
        &containerd.snapshotter_address(),
        SnapshotterOptions {
            background_fetch: false,
            extra_config: format!(
                "[directory_cache]\nmemory_bytes = {BUDGET}\nmax_bytes = {DISK_BUDGET}\n"
            ),
            ..SnapshotterOptions::default()
        },
    );
    let started = snapshotter.pid().map_or(0, rss);
    let started_anon = snapshotter.pid().map_or(0, rss_anon);
    let sochi = Sochi::for_registry(&registry);
    let mut images = Vec::new();
    for n in 0..IMAGES {
        let (dir, sums) = make_image(work.path(), n);
        let target = registry.reference(&format!("many/img-{n}:soci"));
        sochi.run([
            "convert",
            "--min-layer-size",
            "0",
            &format!("oci:{}:latest", dir.display()),
            &target,
        ]);
        let address = containerd.address();
        let report = sochi
            .run([
                "pull",
                "--address",
                address.to_str().unwrap(),
                "--snapshotter",
                "sochi",
                "--json",
                &target,
            ])
            .json();
        let layers = report["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1 + DATA_LAYERS, "{report:#}");
        images.push((target, sums));
    }
    // busybox's layer is one snapshot for all six.
    assert_eq!(snapshotter.mounts().len(), 1 + IMAGES * DATA_LAYERS);

    // Resident memory of the snapshotter and its keeper, sampled while the
    // containers read.
    let pids: Vec<u32> = [snapshotter.pid(), keeper_pid(&snapshotter.root())]
        .into_iter()
        .flatten()
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        let pids = pids.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(pids.iter().map(|pid| rss(*pid)).sum());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let idle: u64 = pids.iter().map(|pid| rss(*pid)).sum();
    let idle_anon: u64 = pids.iter().map(|pid| rss_anon(*pid)).sum();
    std::thread::scope(|scope| {
        for (n, (image, sums)) in images.iter().enumerate() {
            let containerd = &containerd;
            scope.spawn(move || {
                let id = format!("sochi-e2e-many-{n}-{}", std::process::id());
                let mut args = vec![
                    "run",
                    "--rm",
                    "--snapshotter",
                    "sochi",
                    image.as_str(),
                    id.as_str(),
                    "/bin/busybox",
                    "sha256sum",
                ];
                let files: Vec<String> =
                    (0..DATA_LAYERS).map(|i| format!("/data/{i}.bin")).collect();
                args.extend(files.iter().map(String::as_str));
                let out = containerd.ctr(args);
                for (file, sum) in files.iter().zip(sums) {
                    assert!(
                        out.contains(&format!("{sum}  {file}")),
                        "image {n}: {file} should have sha256 {sum}; the container printed:\n{out}"
                    );
                }
            });
        }
    });
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let metrics = snapshotter.metrics();
    let layers = (1 + IMAGES * DATA_LAYERS) as u64;
    eprintln!(
        "snapshotter + keeper RSS per idle mounted layer: {} KiB, of which anonymous {} KiB ({} MiB at start, {} MiB with {layers} layers mounted; anonymous {} and {} MiB)",
        (idle.saturating_sub(started) / layers) >> 10,
        (idle_anon.saturating_sub(started_anon) / layers) >> 10,
        started >> 20,
        idle >> 20,
        started_anon >> 20,
        idle_anon >> 20
    );
    eprintln!(
        "snapshotter + keeper RSS: {} MiB idle with {} layers mounted, {} MiB at peak (budget {} MiB + overhead {} MiB)",
        idle >> 20,
        1 + IMAGES * DATA_LAYERS,
        peak >> 20,
        BUDGET >> 20,
        OVERHEAD >> 20
    );
    // The span caches on disk: counted and allocated within the budget
    // (but for the pages evicted spans share with their neighbours).
    let on_disk = metrics.value("sochi_span_disk_bytes", &[]).unwrap();
    assert!(
        on_disk <= DISK_BUDGET as f64,
        "{on_disk} bytes of spans on disk"
    );
    let allocated = span_files_allocated(&snapshotter.root());
    eprintln!(
        "span caches on disk: {} MiB counted, {} MiB allocated (budget {} MiB)",
        on_disk as u64 >> 20,
        allocated >> 20,
        DISK_BUDGET >> 20
    );
    assert!(
        allocated <= DISK_BUDGET + (1 << 20),
        "{allocated} bytes allocated"
    );
    let held = metrics.value("sochi_span_memory_bytes", &[]).unwrap();
    assert!(held <= BUDGET as f64, "{held} bytes of spans held");
    assert_eq!(
        metrics.value("sochi_span_memory_limit_bytes", &[]),
        Some(BUDGET as f64)
    );
    assert!(
        peak <= BUDGET + OVERHEAD,
        "peak RSS {} MiB over the {} MiB budget + {} MiB\n{}",
        peak >> 20,
        BUDGET >> 20,
        OVERHEAD >> 20,
        metrics.summary()
    );
}
