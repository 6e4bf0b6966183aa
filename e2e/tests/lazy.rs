//! `sochi mount IMAGE MOUNTPOINT` against a real registry: the mounted
//! overlay equals the oracle's rootfs, a read fetches only its spans,
//! concurrent readers get the right bytes, registry faults end in EIO or a
//! retry (never wrong bytes), unmount releases everything, and the layers'
//! status files report the background fetch.
//!
//! Every mount is a `LazyMount` guard: its drop unmounts and stops the
//! daemon also when the test fails; `LazyMount::unmount` checks that
//! nothing is left mounted or running. The last tests check that guard,
//! and what `sochi unmount` does after the daemon is gone.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sochi_e2e::lazy::{
    is_mounted, layer_files, mounts_under, oracle_rootfs, push_layout_exact, regular_files,
    LayerFile, LazyMount, MountState, TokenProxy,
};
use sochi_e2e::oracle::{assert_trees_equal, compare_trees};
use sochi_e2e::{
    pid_alive, run_ok, workspace_root, Fault, FaultProxy, Registry, Sochi, TestImages,
};

/// Small spans, so that "only its spans" means something.
const SPAN: u64 = 262_144;
const SPAN_ARG: &str = "262144";
/// EIO.
const EIO: i32 = 5;
/// ETIMEDOUT.
const ETIMEDOUT: i32 = 110;

/// Pushes test image `name` to `registry` and converts it there with small
/// spans and every layer indexed; returns the SOCI-enabled reference
/// (`ADDR/name:soci`).
fn push_and_convert(registry: &Registry, sochi: &Sochi, name: &str) -> String {
    let source = TestImages::get().push_to(registry, name);
    let target = registry.reference(&format!("{name}:soci"));
    sochi.run([
        "convert",
        "--span-size",
        SPAN_ARG,
        "--min-layer-size",
        "0",
        &source,
        &target,
    ]);
    target
}

/// The digest of the largest layer of `name`.
fn largest_layer(name: &str) -> String {
    let manifest = TestImages::get().manifest(name);
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|layer| layer["size"].as_u64())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The file table of layer `digest` of test image `name` at [`SPAN`].
fn table(sochi: &Sochi, name: &str, digest: &str) -> Vec<LayerFile> {
    layer_files(sochi, &TestImages::get().blob_path(name, digest), SPAN)
}

/// Regular files of the largest layer of `name` that no other layer names
/// and that the oracle has with the same size, with `size` in `sizes`.
fn own_files_of_largest_layer(
    sochi: &Sochi,
    name: &str,
    sizes: std::ops::RangeInclusive<u64>,
) -> (String, Vec<LayerFile>) {
    let largest = largest_layer(name);
    let others: BTreeSet<String> = TestImages::get()
        .layer_digests(name)
        .iter()
        .filter(|digest| **digest != largest)
        .flat_map(|digest| table(sochi, name, digest))
        .map(|file| file.name.trim_end_matches('/').to_string())
        .collect();
    let oracle = oracle_rootfs(name);
    let files = table(sochi, name, &largest)
        .into_iter()
        .filter(|file| file.kind == "reg" && sizes.contains(&file.size))
        .filter(|file| !others.contains(&file.name))
        .filter(|file| {
            fs::symlink_metadata(oracle.join(&file.name))
                .is_ok_and(|meta| meta.is_file() && meta.len() == file.size)
        })
        .collect();
    (largest, files)
}

/// `count` of `files` whose spans (and the span before, where the
/// tar header may start) do not touch each other's: reading one fetches
/// nothing another needs.
fn apart(files: &[LayerFile], count: usize) -> Vec<LayerFile> {
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut picked = Vec::new();
    for file in files {
        let spans: Vec<u64> = (file.start_span.saturating_sub(1)..=file.end_span + 1).collect();
        if spans.iter().any(|span| used.contains(span)) {
            continue;
        }
        used.extend(spans);
        picked.push(file.clone());
        if picked.len() == count {
            break;
        }
    }
    assert_eq!(
        picked.len(),
        count,
        "not {count} files with separate spans in {} candidates",
        files.len()
    );
    picked
}

/// Reads `path`, returning the error with how long it took.
fn timed_read(path: &Path) -> (io::Result<Vec<u8>>, Duration) {
    let started = Instant::now();
    let result = fs::read(path);
    (result, started.elapsed())
}

/// `result` is `expected` or EIO, never other bytes; returns whether it
/// was the bytes.
fn correct_or_eio(result: &io::Result<Vec<u8>>, expected: &[u8], what: &str) -> bool {
    match result {
        Ok(bytes) => {
            assert!(
                bytes.as_slice() == expected,
                "{what}: WRONG BYTES ({} read, {} expected)",
                bytes.len(),
                expected.len()
            );
            true
        }
        Err(err) => {
            assert_eq!(
                err.raw_os_error(),
                Some(EIO),
                "{what}: expected EIO, got {err}"
            );
            false
        }
    }
}

/// How the index was found, in one spelling whether sochi writes the
/// variant (`V2Annotation`) or its description (`v2 annotation`).
fn found_by(state: &MountState) -> String {
    state
        .index_found_by
        .as_deref()
        .unwrap_or("none")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// No line of /proc/self/mountinfo names a path under `root`.
fn assert_nothing_mounted_under(root: &Path) {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.to_string_lossy();
    let left: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(root.as_ref()))
        .collect();
    assert!(left.is_empty(), "mounts left under {root}: {left:#?}");
}

// --- 1. the mount equals the oracle ------------------------------------------------

/// Converts `name`, mounts it and compares the overlay with the oracle.
fn mount_matches_oracle(name: &str) {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, name);
    let oracle = oracle_rootfs(name);
    let mount = LazyMount::mount(&sochi, &image, &[]);
    let state = mount.state().clone();
    assert_eq!(found_by(&state), "v2annotation", "{:#}", state.json);
    assert_eq!(
        state.layers.len(),
        TestImages::get().layer_digests(name).len()
    );
    for layer in &state.layers {
        assert_eq!(layer.mode, "lazy", "{name}: {:#}", state.json);
    }
    assert_trees_equal(&oracle, mount.mountpoint(), &[]);
    mount.unmount();
    assert_nothing_mounted_under(sochi.root());
}

#[test]
fn oracle_busybox() {
    mount_matches_oracle("busybox");
}

#[test]
fn oracle_debian_python() {
    mount_matches_oracle("debian-python");
}

#[test]
fn oracle_edgecase() {
    mount_matches_oracle("edgecase");
}

/// The image the reference `soci convert` made (`fixtures/converted`),
/// pushed as it is: its v2 index is found and its zTOCs read, but two of
/// its three layers carry a `security.capability` the kernel refuses
/// (fixtures README), so the image is refused naming the layer, the entry
/// and the key, as containerd's unpack refuses it (issue 14). Its third
/// layer, mounted lazily alone from the reference's zTOC, equals `tar -x`
/// of it.
#[test]
fn reference_converted_image_is_refused_and_its_clean_layer_mounts() {
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
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let top: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let image_index = read(top["manifests"][0]["digest"].as_str().unwrap());
    let manifests = image_index["manifests"].as_array().unwrap();
    let image_manifest = manifests
        .iter()
        .find(|m| m.get("artifactType").is_none())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let soci_index = manifests
        .iter()
        .find(|m| m.get("artifactType").is_some())
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let sha256 = |path: &Path| {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(fs::read(path).unwrap()))
        )
    };
    let tainted = sha256(&fixtures.join("pax-mixed.tar.gz"));
    let clean = sha256(&fixtures.join("gnu-mixed.tar.gz"));

    let registry = Registry::plain();
    let reference = push_layout_exact(&registry, &layout, "converted", "latest");
    let sochi = Sochi::for_registry(&registry);
    let mountpoint = work.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let refused = sochi.run_fail(["mount", &reference, mountpoint.to_str().unwrap()]);
    for needle in [tainted.as_str(), "data/xattr-file", "security.capability"] {
        assert!(
            refused.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            refused.stderr
        );
    }
    assert!(!is_mounted(&mountpoint));

    let mount = LazyMount::mount(&sochi, &reference, &["--layer", &clean]);
    let state = mount.state().clone();
    assert_eq!(state.manifest, image_manifest);
    assert_eq!(state.index.as_deref(), Some(soci_index.as_str()));
    assert_eq!(found_by(&state), "v2annotation");
    assert_eq!(state.layers.len(), 1);
    assert!(state.layers[0].is_lazy(), "{:#}", state.json);
    let extracted = work.path().join("tar");
    fs::create_dir(&extracted).unwrap();
    let tar_ok = Command::new("tar")
        .arg("-xf")
        .arg(fixtures.join("gnu-mixed.tar.gz"))
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap()
        .success();
    let checked = crate::mount::compare(&extracted, mount.mountpoint(), tar_ok);
    assert!(checked > 0);
    mount.unmount();
}

/// Layers without a zTOC are fetched whole and unpacked: an image without
/// any index, and an index that leaves its small layer out (default
/// `--min-layer-size`); both equal the oracle, and unmount deletes the
/// unpacked layers.
#[test]
fn oracle_unindexed_layers_are_unpacked() {
    let images = TestImages::get();
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);

    // No index at all.
    let busybox = images.push_to(&registry, "busybox");
    let mount = LazyMount::mount(&sochi, &busybox, &[]);
    let state = mount.state().clone();
    assert_eq!(state.index, None, "{:#}", state.json);
    assert_eq!(state.layers.len(), 1);
    let layer = &state.layers[0];
    assert_eq!(layer.mode, "unpacked", "{:#}", state.json);
    assert!(
        layer
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no SOCI index")),
        "{:#}",
        state.json
    );
    assert_trees_equal(&oracle_rootfs("busybox"), mount.mountpoint(), &[]);
    let unpacked = sochi.root().join("layers").join(layer.hex());
    assert!(unpacked.is_dir(), "{} missing", unpacked.display());
    mount.unmount();
    assert!(
        !unpacked.exists(),
        "{} left after unmount",
        unpacked.display()
    );

    // An index without a zTOC for the smallest layer: lazy and unpacked
    // layers in one overlay.
    let source = images.push_to(&registry, "debian-python");
    let target = registry.reference("debian-python:default-min");
    sochi.run([
        "convert",
        "--span-size",
        SPAN_ARG,
        "--min-layer-size",
        "10000000",
        &source,
        &target,
    ]);
    let mount = LazyMount::mount(&sochi, &target, &[]);
    let state = mount.state().clone();
    assert_eq!(found_by(&state), "v2annotation");
    let modes: Vec<&str> = state.layers.iter().map(|l| l.mode.as_str()).collect();
    assert_eq!(modes, ["lazy", "lazy", "unpacked"], "{:#}", state.json);
    assert!(
        state.layers[2]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("no zTOC")),
        "{:#}",
        state.json
    );
    assert_trees_equal(&oracle_rootfs("debian-python"), mount.mountpoint(), &[]);
    mount.unmount();
    assert!(!sochi
        .root()
        .join("layers")
        .join(state.layers[2].hex())
        .exists());
    assert_nothing_mounted_under(sochi.root());
}

/// A v1 index (`sochi create` + `sochi push`) is found through the
/// referrers (fallback tag) of the image as it is, and mounts it.
#[test]
fn oracle_v1_index_is_found_through_referrers() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let reference = TestImages::get().push_to(&registry, "edgecase");
    let created = sochi
        .run([
            "create",
            "--json",
            "--span-size",
            SPAN_ARG,
            "--min-layer-size",
            "0",
            &reference,
        ])
        .json();
    sochi.run(["push", &reference]);
    let mount = LazyMount::mount(&sochi, &reference, &[]);
    let state = mount.state().clone();
    assert_eq!(found_by(&state), "referrers", "{:#}", state.json);
    assert_eq!(state.index.as_deref(), created["index"].as_str());
    assert_eq!(
        state.manifest,
        TestImages::get().manifest_digest("edgecase")
    );
    assert!(state.layers.iter().all(|layer| layer.is_lazy()));
    assert_trees_equal(&oracle_rootfs("edgecase"), mount.mountpoint(), &[]);
    mount.unmount();
}

// --- 2. a read fetches only its spans --------------------------------------------------

#[test]
fn one_small_file_fetches_only_its_spans() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "debian-python");
    let (largest, candidates) = own_files_of_largest_layer(&sochi, "debian-python", 8192..=16384);
    // One from the middle of the layer, not its first span.
    let file = candidates
        .iter()
        .find(|file| file.start_span > 2)
        .unwrap_or_else(|| panic!("no 8-16 KB file in {largest}"))
        .clone();
    let expected = fs::read(oracle_rootfs("debian-python").join(&file.name)).unwrap();

    let mount = LazyMount::mount(
        &sochi,
        &image,
        &["--no-background-fetch", "--metrics-address", "127.0.0.1:0"],
    );
    let digests: Vec<String> = mount
        .state()
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    let before = mount.metrics();
    for digest in &digests {
        assert_eq!(before.demand_requests(digest), 0, "{}", before.summary());
    }

    let bytes = fs::read(mount.path(&file.name)).unwrap();
    assert!(bytes == expected, "{}: wrong bytes", file.name);

    let after = mount.metrics();
    let requests = after.demand_requests(&largest);
    let spans = after.demand_spans(&largest);
    let fetched = after.demand_bytes(&largest);
    // The spans of the data, and the one before when the tar header starts
    // there.
    let allowed_spans = file.end_span - file.start_span + 2;
    eprintln!(
        "one_small_file_fetches_only_its_spans: {} ({} bytes, spans {}..={}): \
         {requests} requests, {spans} spans, {fetched} compressed bytes",
        file.name, file.size, file.start_span, file.end_span
    );
    let context = format!("{file:?}\n{}", after.summary());
    assert!(
        (1..=2).contains(&requests),
        "{requests} requests: {context}"
    );
    assert!(
        (1..=allowed_spans).contains(&spans),
        "{spans} spans fetched, at most {allowed_spans} cover the file: {context}"
    );
    assert!(
        fetched <= 3 * SPAN + 65_536,
        "{fetched} compressed bytes fetched for {} bytes: {context}",
        file.size
    );
    for digest in digests.iter().filter(|d| **d != largest) {
        assert_eq!(after.demand_requests(digest), 0, "{context}");
        assert_eq!(
            after.layer(
                "sochi_layer_fetch_requests_total",
                digest,
                &[("kind", "background")]
            ),
            0,
            "{context}"
        );
    }
    assert_eq!(
        after.layer(
            "sochi_layer_fetch_requests_total",
            &largest,
            &[("kind", "background")]
        ),
        0,
        "--no-background-fetch: {context}"
    );
    mount.unmount();
}

// --- 3. concurrent readers ---------------------------------------------------------

/// xorshift64*: reproducible randomness from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Reads `path` the way `mode` says and returns what it read, with the
/// offset it started at.
fn read_some(path: &Path, size: u64, mode: u64, rng: &mut Rng) -> io::Result<(u64, Vec<u8>)> {
    // Odd chunk sizes: not multiples of pages, spans or FUSE requests.
    const CHUNKS: [usize; 6] = [1, 7, 511, 4_093, 65_537, 262_147];
    match mode {
        // The whole file.
        0 => fs::read(path).map(|bytes| (0, bytes)),
        // A range at a random offset with read_exact_at in odd chunks.
        1 => {
            let file = File::open(path)?;
            let start = rng.below(size);
            let len = rng.below((size - start).min(1 << 20) + 1);
            let chunk = CHUNKS[rng.below(CHUNKS.len() as u64) as usize];
            let mut out = vec![0; len as usize];
            let mut done = 0;
            while done < out.len() {
                let end = (done + chunk).min(out.len());
                file.read_exact_at(&mut out[done..end], start + done as u64)?;
                done = end;
            }
            Ok((start, out))
        }
        // Sequentially with an odd buffer.
        _ => {
            let mut file = File::open(path)?;
            let chunk = CHUNKS[rng.below(CHUNKS.len() as u64) as usize];
            let mut buf = vec![0; chunk];
            let mut out = Vec::with_capacity(size as usize);
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            Ok((0, out))
        }
    }
}

#[test]
fn thirty_two_concurrent_readers() {
    const THREADS: u64 = 32;
    const FILES_PER_THREAD: usize = 24;
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "debian-python");
    let oracle = oracle_rootfs("debian-python");
    let files: Vec<(PathBuf, u64)> = regular_files(&oracle)
        .into_iter()
        .filter(|(_, size)| *size <= 8 << 20)
        .collect();
    assert!(files.len() > 1000, "{} files in the oracle", files.len());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("thirty_two_concurrent_readers: seed {seed}");

    let mount = LazyMount::mount(&sochi, &image, &["--metrics-address", "127.0.0.1:0"]);
    let failures = Mutex::new(Vec::new());
    let mut checked = 0u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (files, oracle, mount, failures) = (&files, &oracle, &mount, &failures);
                scope.spawn(move || {
                    let mut rng = Rng(seed.wrapping_add(thread.wrapping_mul(0x9e37_79b9)));
                    let mut bytes_checked = 0u64;
                    for _ in 0..FILES_PER_THREAD {
                        let (rel, size) = &files[rng.below(files.len() as u64) as usize];
                        let mode = rng.below(3);
                        let got = read_some(&mount.path(rel), *size, mode, &mut rng);
                        let expected = fs::read(oracle.join(rel)).unwrap();
                        let problem = match got {
                            Err(err) => Some(format!("{}: mode {mode}: {err}", rel.display())),
                            Ok((start, bytes)) => {
                                let start = start as usize;
                                let want = expected.get(start..start + bytes.len());
                                let whole = mode != 1;
                                if want != Some(bytes.as_slice())
                                    || (whole && bytes.len() != expected.len())
                                {
                                    Some(format!(
                                        "{}: mode {mode}: WRONG BYTES at {start} ({} read, file {} bytes)",
                                        rel.display(),
                                        bytes.len(),
                                        expected.len()
                                    ))
                                } else {
                                    bytes_checked += bytes.len() as u64;
                                    None
                                }
                            }
                        };
                        if let Some(problem) = problem {
                            failures.lock().unwrap().push(problem);
                        }
                    }
                    bytes_checked
                })
            })
            .collect();
        for handle in handles {
            checked += handle.join().unwrap();
        }
    });
    let failures = failures.into_inner().unwrap();
    let metrics = mount.metrics();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failed reads:\n{}\nmetrics:\n{}",
        failures.len(),
        failures.join("\n"),
        metrics.summary()
    );
    for layer in &mount.state().layers {
        assert_eq!(
            metrics.layer("sochi_read_failures_total", &layer.digest, &[]),
            0
        );
        assert_eq!(
            metrics.layer("sochi_span_digest_mismatches_total", &layer.digest, &[]),
            0
        );
    }
    eprintln!(
        "thirty_two_concurrent_readers: {} reads, {checked} bytes checked",
        THREADS as usize * FILES_PER_THREAD
    );
    mount.unmount();
}

// --- 4. registry faults --------------------------------------------------------------

/// A converted debian-python behind a fault proxy, and files of its
/// largest layer with separate spans and their oracle bytes.
struct Faulty {
    proxy: FaultProxy,
    sochi: Sochi,
    image: String,
    files: Vec<(LayerFile, Vec<u8>)>,
    // Last: outlives the proxy in front of it.
    _registry: Registry,
}

fn faulty(count: usize) -> Faulty {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    push_and_convert(&registry, &sochi, "debian-python");
    let proxy = FaultProxy::start(&registry);
    let image = proxy.reference("debian-python:soci");
    let (_, candidates) = own_files_of_largest_layer(&sochi, "debian-python", 4096..=65536);
    let oracle = oracle_rootfs("debian-python");
    let files = apart(&candidates, count)
        .into_iter()
        .map(|file| {
            let bytes = fs::read(oracle.join(&file.name)).unwrap();
            (file, bytes)
        })
        .collect();
    Faulty {
        proxy,
        sochi,
        image,
        files,
        _registry: registry,
    }
}

const FAULT_MOUNT_ARGS: [&str; 5] = [
    "--no-background-fetch",
    "--fetch-timeout",
    "3",
    "--metrics-address",
    "127.0.0.1:0",
];

/// Sum of a per-layer counter over the mount's lazy layers.
fn total(mount: &LazyMount<'_>, name: &str) -> u64 {
    let metrics = mount.metrics();
    mount
        .state()
        .lazy_layers()
        .map(|layer| metrics.layer(name, &layer.digest, &[]))
        .sum()
}

#[test]
fn fault_registry_down_mid_use_times_out_then_recovers() {
    let faulty = faulty(3);
    let mount = LazyMount::mount(&faulty.sochi, &faulty.image, &FAULT_MOUNT_ARGS);
    let [(first, first_bytes), (second, second_bytes), (third, third_bytes)] = &faulty.files[..]
    else {
        unreachable!()
    };
    // In use: one file read while the registry is there.
    assert!(fs::read(mount.path(&first.name)).unwrap() == *first_bytes);

    faulty.proxy.down();
    let (result, took) = timed_read(&mount.path(&second.name));
    let err = result.expect_err("a read with the registry down succeeded");
    // The read gave up at its deadline: a timeout is ETIMEDOUT (the blob
    // port's error kinds map to errnos in one place, sochi_fs::errno_of).
    assert_eq!(
        err.raw_os_error(),
        Some(ETIMEDOUT),
        "{}: {err}",
        second.name
    );
    assert!(
        took < Duration::from_secs(20),
        "ETIMEDOUT took {took:?} with --fetch-timeout 3"
    );
    eprintln!("registry down: ETIMEDOUT after {took:?}");
    // What was read before is still served from the cache.
    assert!(fs::read(mount.path(&first.name)).unwrap() == *first_bytes);
    assert!(total(&mount, "sochi_span_fetch_failures_total") >= 1);

    faulty.proxy.up();
    let bytes = fs::read(mount.path(&second.name)).unwrap();
    assert!(
        bytes == *second_bytes,
        "{}: wrong bytes after up",
        second.name
    );
    let bytes = fs::read(mount.path(&third.name)).unwrap();
    assert!(
        bytes == *third_bytes,
        "{}: wrong bytes after up",
        third.name
    );
    mount.unmount();
}

#[test]
fn fault_corrupt_spans_are_eio_never_wrong_bytes() {
    let faulty = faulty(2);
    let mount = LazyMount::mount(&faulty.sochi, &faulty.image, &FAULT_MOUNT_ARGS);
    let [(first, first_bytes), (second, second_bytes)] = &faulty.files[..] else {
        unreachable!()
    };

    // Every answer corrupted: the first try and the retry mismatch.
    for _ in 0..16 {
        faulty.proxy.corrupt_body("blobs/");
    }
    let (result, took) = timed_read(&mount.path(&first.name));
    let err = result.expect_err("a read of corrupted spans succeeded");
    assert_eq!(err.raw_os_error(), Some(EIO), "{}: {err}", first.name);
    assert!(took < Duration::from_secs(20), "EIO took {took:?}");
    let mismatches = total(&mount, "sochi_span_digest_mismatches_total");
    assert!(mismatches >= 2, "{mismatches} digest mismatches");
    eprintln!("corrupt spans: EIO after {took:?}, {mismatches} digest mismatches");
    faulty.proxy.clear_faults();
    let bytes = fs::read(mount.path(&first.name)).unwrap();
    assert!(bytes == *first_bytes, "{}: wrong bytes", first.name);

    // One corrupted answer: the retry gets the right bytes.
    faulty.proxy.corrupt_body("blobs/");
    let before = total(&mount, "sochi_span_digest_mismatches_total");
    let bytes = fs::read(mount.path(&second.name)).unwrap();
    assert!(bytes == *second_bytes, "{}: wrong bytes", second.name);
    assert_eq!(
        total(&mount, "sochi_span_digest_mismatches_total"),
        before + 1
    );
    mount.unmount();
}

#[test]
fn fault_truncated_response_is_resumed() {
    let faulty = faulty(2);
    let mount = LazyMount::mount(&faulty.sochi, &faulty.image, &FAULT_MOUNT_ARGS);
    for (cut, (file, expected)) in [100u64, 2000].into_iter().zip(&faulty.files) {
        faulty.proxy.clear_requests();
        faulty.proxy.reset_mid_body("blobs/", cut);
        let result = fs::read(mount.path(&file.name));
        let correct = correct_or_eio(&result, expected, &file.name);
        let blob_requests: Vec<_> = faulty
            .proxy
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/blobs/"))
            .collect();
        assert!(
            correct,
            "{}: EIO after a cut after {cut} bytes; requests: {blob_requests:#?}\nlog:\n{}",
            file.name,
            mount.log()
        );
        // The rest came with a Range that starts where the cut was.
        let first = blob_requests[0].range.clone().unwrap();
        let from: u64 = first
            .trim_start_matches("bytes=")
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let resumed = format!("bytes={}-", from + cut);
        assert!(
            blob_requests
                .iter()
                .any(|r| r.range.as_deref().is_some_and(|x| x.starts_with(&resumed))),
            "no request resuming at {resumed}: {blob_requests:#?}"
        );
    }
    mount.unmount();
}

#[test]
fn fault_unauthorized_blob_read_reauthenticates() {
    // A registry whose tokens expire: the next range read gets a 401 with
    // a bearer challenge, the client gets a new token and the read
    // succeeds.
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    push_and_convert(&registry, &sochi, "debian-python");
    let (_, candidates) = own_files_of_largest_layer(&sochi, "debian-python", 4096..=65536);
    let oracle = oracle_rootfs("debian-python");
    let files = apart(&candidates, 4);
    let expected = |file: &LayerFile| fs::read(oracle.join(&file.name)).unwrap();
    {
        let tokens = TokenProxy::start(&registry);
        let mount = LazyMount::mount(
            &sochi,
            &tokens.reference("debian-python:soci"),
            &FAULT_MOUNT_ARGS,
        );
        assert!(tokens.tokens_issued() >= 1, "mounted without a token");
        assert!(fs::read(mount.path(&files[0].name)).unwrap() == expected(&files[0]));
        let (issued, refused) = (tokens.tokens_issued(), tokens.refused());
        tokens.revoke_tokens();
        let bytes = fs::read(mount.path(&files[1].name)).unwrap();
        assert!(
            bytes == expected(&files[1]),
            "{}: wrong bytes",
            files[1].name
        );
        assert!(
            tokens.refused() > refused,
            "the revoked token was not refused"
        );
        assert!(
            tokens
                .refused_paths()
                .iter()
                .skip(refused)
                .any(|path| path.contains("/blobs/")),
            "{:?}",
            tokens.refused_paths()
        );
        assert!(tokens.tokens_issued() > issued, "no new token fetched");
        mount.unmount();
    }

    // A 401 without a challenge (what the fault proxy sends) cannot be
    // answered by authenticating again: EIO or, if the kernel retries the
    // read, the right bytes; then reads work again.
    let proxy = FaultProxy::start(&registry);
    let mount = LazyMount::mount(
        &sochi,
        &proxy.reference("debian-python:soci"),
        &FAULT_MOUNT_ARGS,
    );
    proxy.fail_next(1, 401, "blobs/", None);
    let result = fs::read(mount.path(&files[2].name));
    let correct = correct_or_eio(&result, &expected(&files[2]), &files[2].name);
    eprintln!(
        "401 without a challenge: {}",
        if correct {
            "right bytes after a retry"
        } else {
            "EIO"
        }
    );
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.path.contains("/blobs/") && r.fault == Some(Fault::Status(401))),
        "the 401 was not served to a blob read: {:#?}",
        proxy.requests()
    );
    proxy.clear_faults();
    assert!(fs::read(mount.path(&files[2].name)).unwrap() == expected(&files[2]));
    assert!(fs::read(mount.path(&files[3].name)).unwrap() == expected(&files[3]));
    mount.unmount();
}

// --- 5. unmount ------------------------------------------------------------------------

#[test]
fn unmount_releases_layers() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let oracle = oracle_rootfs("busybox");
    // The biggest file: the busybox binary, many spans.
    let (file, _) = regular_files(&oracle)
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let expected = fs::read(oracle.join(&file)).unwrap();
    let cache_dirs = |mount: &LazyMount<'_>| -> Vec<PathBuf> {
        mount
            .state()
            .lazy_layers()
            .map(|layer| sochi.root().join("cache").join(layer.hex()))
            .collect()
    };
    let span_files = |dir: &Path| fs::read_dir(dir.join("spans")).map_or(0, |d| d.count());
    let args = ["--no-background-fetch", "--metrics-address", "127.0.0.1:0"];

    // Released: state dir, mounts and span caches go.
    let mount = LazyMount::mount(&sochi, &image, &args);
    assert!(fs::read(mount.path(&file)).unwrap() == expected);
    let caches = cache_dirs(&mount);
    assert!(!caches.is_empty());
    for cache in &caches {
        assert!(span_files(cache) > 0, "no spans in {}", cache.display());
    }
    let state_dir = mount.state_dir();
    assert!(state_dir.join("state.json").is_file());
    let mountpoint = mount.mountpoint().to_path_buf();
    mount.unmount();
    assert!(!state_dir.exists(), "{} left", state_dir.display());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for needle in [mountpoint.to_string_lossy(), state_dir.to_string_lossy()] {
        assert!(
            !mountinfo.contains(needle.as_ref()),
            "{needle} in mountinfo:\n{mountinfo}"
        );
    }
    for cache in &caches {
        assert!(!cache.exists(), "{} left after unmount", cache.display());
    }

    // --keep-cache: the spans stay, and the next mount reads from them.
    let mount = LazyMount::mount(&sochi, &image, &[&args[..], &["--keep-cache"]].concat());
    assert!(fs::read(mount.path(&file)).unwrap() == expected);
    let caches = cache_dirs(&mount);
    mount.unmount();
    for cache in &caches {
        assert!(span_files(cache) > 0, "{} not kept", cache.display());
    }
    let mount = LazyMount::mount(&sochi, &image, &args);
    assert!(fs::read(mount.path(&file)).unwrap() == expected);
    let metrics = mount.metrics();
    for layer in mount.state().lazy_layers() {
        assert_eq!(
            metrics.demand_requests(&layer.digest),
            0,
            "the kept span cache was not used:\n{}",
            metrics.summary()
        );
        assert!(
            metrics.layer(
                "sochi_span_cache_lookups_total",
                &layer.digest,
                &[("result", "disk")]
            ) > 0,
            "{}",
            metrics.summary()
        );
    }
    mount.unmount();
    assert_nothing_mounted_under(sochi.root());
}

/// A mount that ended with `--keep-cache` no longer uses its layers: the
/// next mount to release them deletes their span caches.
#[test]
fn keep_cache_does_not_pin_the_cache_after_its_mount_ends() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let args = ["--no-background-fetch"];
    let mount = LazyMount::mount(&sochi, &image, &[&args[..], &["--keep-cache"]].concat());
    let caches: Vec<PathBuf> = mount
        .state()
        .lazy_layers()
        .map(|layer| sochi.root().join("cache").join(layer.hex()))
        .collect();
    mount.unmount();
    // Another mountpoint, so another mount id.
    let mount = LazyMount::mount(&sochi, &image, &args);
    mount.unmount();
    for cache in &caches {
        let users: Vec<_> = fs::read_dir(cache.join("users"))
            .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !cache.exists(),
            "{} left after the last mount released it; users: {users:?}",
            cache.display()
        );
    }
}

/// What a finished mount must not leave: the daemon (waited for, 10 s at
/// most), mounts at or below its mountpoint, state dir or layer paths, the
/// state dir.
fn assert_gone(state: &MountState, state_dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(state.pid) {
        assert!(
            Instant::now() < deadline,
            "daemon {} still running",
            state.pid
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut left = mounts_under(&state.mountpoint);
    left.extend(mounts_under(state_dir));
    left.extend(
        state
            .lazy_layers()
            .filter(|layer| is_mounted(&layer.path) && !layer.path.starts_with(state_dir))
            .map(|layer| layer.path.clone()),
    );
    assert!(left.is_empty(), "still mounted: {left:#?}");
    assert!(!state_dir.exists(), "{} left", state_dir.display());
}

/// SIGKILL to the daemon of `mount`; returns once its pid is gone from
/// /proc when `reaped`, else at once (it may be a zombie still).
fn kill_daemon(mount: &LazyMount<'_>, reaped: bool) {
    let pid = mount.state().pid;
    run_ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while reaped && Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "daemon {pid} not reaped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guard takes a mount down when the test using it panics.
#[test]
fn guard_cleans_up_when_a_test_fails() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mount = LazyMount::mount(&sochi, &image, &[]);
        *seen.lock().unwrap() = Some((mount.state().clone(), mount.state_dir()));
        panic!("deliberate: a test fails while its image is mounted");
    }));
    assert!(result.is_err());
    let (state, state_dir) = seen.into_inner().unwrap().unwrap();
    assert_gone(&state, &state_dir);
}

/// `umount` of the overlay from outside: the daemon notices, takes its
/// layers down, releases them and exits.
#[test]
fn external_umount_stops_the_daemon() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let mount = LazyMount::mount(&sochi, &image, &[]);
    let (state, state_dir) = (mount.state().clone(), mount.state_dir());
    run_ok(Command::new("umount").arg(mount.mountpoint()));
    assert_gone(&state, &state_dir);
    for layer in state.lazy_layers() {
        let cache = sochi.root().join("cache").join(layer.hex());
        assert!(!cache.exists(), "{} not released", cache.display());
    }
    drop(mount);
}

/// The daemon died (SIGKILL) and was reaped: `sochi unmount` takes down
/// the overlay and the FUSE layers it left.
#[test]
fn unmount_after_the_daemon_died_takes_down_its_mounts() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let mount = LazyMount::mount(&sochi, &image, &[]);
    kill_daemon(&mount, true);
    // Dead layers answer ENOTCONN, never stale bytes.
    let err = fs::read(mount.path("bin/busybox")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(107), "{err}");
    mount.unmount();
}

/// As above, with `sochi unmount` run at once, while the dead daemon may
/// still be a zombie (its parent is init, which reaps when it gets to it).
#[test]
fn unmount_right_after_the_daemon_died_takes_down_its_mounts() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "busybox");
    let mount = LazyMount::mount(&sochi, &image, &[]);
    kill_daemon(&mount, false);
    mount.unmount();
}

// --- 6. the status file ------------------------------------------------------------------

#[test]
fn status_file() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let image = push_and_convert(&registry, &sochi, "debian-python");
    let mount = LazyMount::mount(&sochi, &image, &["--metrics-address", "127.0.0.1:0"]);
    let layers: Vec<_> = mount.state().lazy_layers().cloned().collect();
    assert_eq!(layers.len(), 3);
    for layer in &layers {
        // Hidden from readdir, in the layer and in the overlay.
        let listed: Vec<String> = fs::read_dir(&layer.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !listed.iter().any(|name| name == ".soci-snapshotter"),
            "{listed:?}"
        );
        let status = mount.status_file(layer);
        assert_eq!(status["digest"], layer.digest.as_str(), "{status}");
        assert_eq!(status["size"].as_u64(), Some(layer.size), "{status}");
        let fetched = status["fetchedSize"].as_u64().unwrap();
        assert!(fetched <= layer.size, "{status}");
        let percent = status["fetchedPercent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&percent), "{status}");
    }
    let root_listing: Vec<String> = fs::read_dir(mount.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root_listing.iter().any(|name| name == ".soci-snapshotter"));

    mount.wait_background_complete(Duration::from_secs(300));
    for layer in &layers {
        let status = mount.status_file(layer);
        assert_eq!(status["fetchedSize"].as_u64(), Some(layer.size), "{status}");
        assert_eq!(status["fetchedPercent"].as_f64(), Some(100.0), "{status}");
    }
    // Everything is local now: the tree still equals the oracle.
    let differences = compare_trees(&oracle_rootfs("debian-python"), mount.mountpoint(), &[]);
    assert!(differences.is_empty(), "{differences:#?}");
    mount.unmount();
}

// --- prefetch artifacts (issue 13) --------------------------------------------------

/// An image converted with `--prefetch-file` for one file of its largest
/// layer: right after the mount the file's spans are prefetched (the mount
/// does not wait), and reading the file afterwards fetches nothing more.
#[test]
fn prefetch_fetches_the_listed_file_and_reads_find_it_cached() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let source = TestImages::get().push_to(&registry, "debian-python");
    let (largest, candidates) = own_files_of_largest_layer(&sochi, "debian-python", 8192..=65536);
    let file = candidates
        .iter()
        .find(|file| file.start_span > 2)
        .unwrap_or_else(|| panic!("no 8-64 KB file in {largest}"))
        .clone();
    let target = registry.reference("debian-python:prefetch");
    sochi.run([
        "convert",
        "--span-size",
        SPAN_ARG,
        "--min-layer-size",
        "0",
        "--prefetch-file",
        &file.name,
        &source,
        &target,
    ]);
    let expected = fs::read(oracle_rootfs("debian-python").join(&file.name)).unwrap();
    let mount = LazyMount::mount(
        &sochi,
        &target,
        &["--no-background-fetch", "--metrics-address", "127.0.0.1:0"],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = mount.metrics();
        if metrics.layer("sochi_prefetch_state", &largest, &[]) != 1 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "prefetch still running: {}",
            metrics.summary()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let summary = metrics.summary();
    assert_eq!(
        metrics.layer("sochi_prefetch_state", &largest, &[]),
        2,
        "{summary}"
    );
    let requests = metrics.layer(
        "sochi_layer_fetch_requests_total",
        &largest,
        &[("kind", "prefetch")],
    );
    let spans = metrics.layer(
        "sochi_layer_fetched_spans_total",
        &largest,
        &[("kind", "prefetch")],
    );
    assert!(requests >= 1, "{summary}");
    assert!(
        spans > file.end_span - file.start_span,
        "{file:?}: {summary}"
    );
    let bytes = fs::read(mount.path(&file.name)).unwrap();
    assert!(bytes == expected, "{}: wrong bytes", file.name);
    let after = mount.metrics();
    assert_eq!(
        after.demand_requests(&largest),
        0,
        "{file:?}: {}",
        after.summary()
    );
    mount.unmount();
}
