//! The driver of `bench/load.sh`: twenty images pulled lazily through the
//! snapshotter and one container of each started at once, against twenty
//! full pulls started at once, with the registry behind a fault-injecting
//! proxy and the snapshotter killed (`kill -9`) and restarted once in the
//! middle of the lazy run. It measures; it asserts nothing (a benchmark
//! records figures and ratios, not timed assertions).
//!
//! Run it through `bench/load.sh`, which builds it, starts the registry
//! (tmpfs), sets `TMPDIR` (containerd's and the snapshotter's dirs, on
//! disk) and `SOCHI_BIN`, and cleans up after a crash or Ctrl-C.
//!
//! Images: a shared busybox layer, then `--data-layers` layers (default 4)
//! of random (incompressible) data, each `app/<i>/small-<k>.txt` (24 files,
//! 1-64 KiB), `app/<i>/hot.bin` (1 MiB) and `app/<i>/cold.bin` (7 MiB):
//! about 36 MB compressed per image. Every container runs `busybox
//! sha256sum` over the small files and `hot.bin` of each layer, and every
//! fourth image (0, 4, 8, ...) over its `cold.bin` files too; the driver
//! checks every printed sum.
//!
//! Phases, each with a fresh containerd and a fresh fault proxy:
//! - `lazy`: the snapshotter (defaults but `[directory_cache] max_bytes`,
//!   the node's disk budget; 256 MiB, less than the images' data),
//!   then for each image at once: `sochi pull` (retried on failure), then
//!   `ctr run --snapshotter sochi` (retried on failure). When
//!   `--kill-after-ready` containers are ready, the snapshotter is killed
//!   with SIGKILL and, `--down-ms` later, started again on the same root
//!   and config. After the last container, the node stays up until every
//!   layer's background fetch is complete (at most `--settle-s`), still
//!   under faults, so the disk cache reaches its bound.
//! - `full`: for each image at once, `ctr images pull` (everything,
//!   unpacked into overlayfs; retried on failure), then `ctr run`.
//!
//! Faults (both phases): every `--fail-every`th request answered 500
//! without forwarding, every `--reset-every`th blob response cut after a
//! few KiB, every `--corrupt-every`th blob response with one byte flipped
//! (0: off), and one outage of `--outage-ms` (connections reset) at
//! `--outage-at-ms` after the start.
//!
//! Output (prefix `--out`): `-jobs.csv` (per container: attempts, times,
//! output right), `-rss.csv` (snapshotter + keeper RSS, span memory, disk
//! cache over time), `-events.csv`, `-faults.csv` (every request the
//! proxy faulted), `-metrics-<phase>-<n>.txt` (the
//! snapshotter's metrics before the kill and at the end), `-warnings.log`
//! (WARN/ERROR lines of the snapshotter's log) and `.md` (the summary).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sochi_e2e::layouts::{noise, sha256, Entry, ImageLayout};
use sochi_e2e::snapshotter::keeper_pid;
use sochi_e2e::{rss, Containerd, Fault, FaultProxy, Snapshotter, SnapshotterOptions, Sochi};

/// Pull and run attempts per container before it counts as failed.
const MAX_ATTEMPTS: usize = 10;

/// Wait between attempts (a kubelet backs off longer; this keeps the
/// comparison about the pull, not the back-off).
const RETRY_WAIT: Duration = Duration::from_millis(500);

const SMALL_FILES: usize = 24;
const HOT_BYTES: usize = 1 << 20;
const COLD_BYTES: usize = 7 << 20;

// --- options -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Opts {
    registry: SocketAddr,
    work: PathBuf,
    out: PathBuf,
    images: usize,
    data_layers: usize,
    /// `[directory_cache] memory_bytes`; None: the snapshotter's default.
    memory_bytes: Option<u64>,
    /// `[directory_cache] max_bytes`: the node's span disk budget, all
    /// layers together; below the images' data, so that spans are evicted.
    max_bytes: u64,
    /// The fixed overhead the report compares peak RSS with (budget + this).
    overhead: u64,
    fail_every: usize,
    reset_every: usize,
    corrupt_every: usize,
    outage_ms: u64,
    outage_at_ms: u64,
    kill_after_ready: usize,
    down_ms: u64,
    settle_s: u64,
    sample_ms: u64,
    phases: Vec<String>,
    drop_caches: bool,
    /// Container IDs start with this: unique to the run, so that what a
    /// run killed before its end left in runc's state dir
    /// (`/run/containerd/runc/<namespace>`, shared by every containerd
    /// here) neither collides with a later run nor is mistaken for
    /// another's.
    id_prefix: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: load --registry HOST:PORT --work DIR --out PREFIX [--images N] [--data-layers N]\n\
         \x20           [--memory-bytes B] [--max-bytes B] [--overhead B] [--fail-every N]\n\
         \x20           [--reset-every N] [--corrupt-every N] [--outage-ms MS] [--outage-at-ms MS]\n\
         \x20           [--kill-after-ready N] [--down-ms MS] [--settle-s S] [--sample-ms MS]\n\
         \x20           [--phases lazy,full] [--no-drop-caches] [--id-prefix P]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let mut registry = None;
    let mut work = None;
    let mut out = None;
    let mut o = Opts {
        registry: SocketAddr::from(([127, 0, 0, 1], 0)),
        work: PathBuf::new(),
        out: PathBuf::new(),
        images: 20,
        data_layers: 4,
        memory_bytes: None,
        max_bytes: 256 << 20,
        overhead: 128 << 20,
        fail_every: 25,
        reset_every: 25,
        corrupt_every: 50,
        outage_ms: 1000,
        outage_at_ms: 3000,
        kill_after_ready: 0,
        down_ms: 1000,
        settle_s: 150,
        sample_ms: 150,
        phases: vec!["lazy".into(), "full".into()],
        drop_caches: true,
        id_prefix: format!("load-{}", std::process::id()),
    };
    while let Some(flag) = args.next() {
        if flag == "--no-drop-caches" {
            o.drop_caches = false;
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage());
        let num = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--registry" => registry = Some(value.parse().unwrap_or_else(|_| usage())),
            "--work" => work = Some(PathBuf::from(&value)),
            "--out" => out = Some(PathBuf::from(&value)),
            "--images" => o.images = num() as usize,
            "--data-layers" => o.data_layers = num() as usize,
            "--memory-bytes" => o.memory_bytes = Some(num()),
            "--max-bytes" => o.max_bytes = num(),
            "--overhead" => o.overhead = num(),
            "--fail-every" => o.fail_every = num() as usize,
            "--reset-every" => o.reset_every = num() as usize,
            "--corrupt-every" => o.corrupt_every = num() as usize,
            "--outage-ms" => o.outage_ms = num(),
            "--outage-at-ms" => o.outage_at_ms = num(),
            "--kill-after-ready" => o.kill_after_ready = num() as usize,
            "--down-ms" => o.down_ms = num(),
            "--settle-s" => o.settle_s = num(),
            "--sample-ms" => o.sample_ms = num(),
            "--phases" => o.phases = value.split(',').map(str::to_string).collect(),
            "--id-prefix" => o.id_prefix = value,
            _ => usage(),
        }
    }
    o.registry = registry.unwrap_or_else(|| usage());
    o.work = work.unwrap_or_else(|| usage());
    o.out = out.unwrap_or_else(|| usage());
    if o.kill_after_ready == 0 {
        o.kill_after_ready = (o.images / 4).max(1);
    }
    o
}

fn log(msg: impl AsRef<str>) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    eprintln!("[load {h:02}:{m:02}:{s:02}] {}", msg.as_ref());
}

// --- images --------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Image {
    n: usize,
    /// Files the container reads and their SHA-256 (hex).
    reads: Vec<(String, String)>,
    /// Compressed bytes of its layers.
    compressed: u64,
    /// Bytes of the files of its own layers (not the shared busybox
    /// layer): about what its spans take uncompressed.
    data: u64,
}

impl Image {
    fn repo(&self) -> String {
        format!("load/img-{:02}", self.n)
    }
}

/// Writes image `n` as an OCI layout under `work`, pushes it to the
/// registry as `load/img-NN:latest` (skopeo, digests kept) and converted
/// as `:soci` (`sochi convert`), and removes the layout.
fn make_image(opts: &Opts, sochi: &Sochi, busybox: &[u8], n: usize) -> Image {
    let dir = opts.work.join(format!("layout-{n:02}"));
    let _ = fs::remove_dir_all(&dir);
    let mut layout = ImageLayout::new(&dir);
    layout.layer(
        &[
            Entry::dir("bin"),
            Entry::file("bin/busybox", busybox).mode(0o755),
        ],
        true,
    );
    let mut reads = Vec::new();
    let reads_cold = n.is_multiple_of(4);
    let mut data_bytes = 0;
    for i in 0..opts.data_layers {
        let seed = ((n as u64) << 16) + ((i as u64) << 8);
        let mut entries = vec![Entry::dir("app"), Entry::dir(&format!("app/{i}"))];
        let mut files = Vec::new();
        for k in 0..SMALL_FILES {
            let size = 1024 + (noise(seed + 100 + k as u64, 8)[0] as usize) * 256;
            files.push((
                format!("app/{i}/small-{k:02}.txt"),
                noise(seed + 1 + k as u64, size),
                true,
            ));
        }
        files.push((
            format!("app/{i}/hot.bin"),
            noise(seed + 200, HOT_BYTES),
            true,
        ));
        files.push((
            format!("app/{i}/cold.bin"),
            noise(seed + 201, COLD_BYTES),
            reads_cold,
        ));
        for (name, data, read) in &files {
            data_bytes += data.len() as u64;
            if *read {
                reads.push((
                    format!("/{name}"),
                    sha256(data).trim_start_matches("sha256:").to_string(),
                ));
            }
            entries.push(Entry::file(name, data));
        }
        layout.layer(&entries, true);
    }
    let manifest = layout.finish();
    let manifest_path = dir
        .join("blobs/sha256")
        .join(manifest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).expect("manifest"))
            .expect("manifest JSON");
    let compressed = manifest["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|d| d["size"].as_u64()).sum())
        .unwrap_or(0);
    let image = Image {
        n,
        reads,
        compressed,
        data: data_bytes,
    };
    let src = format!("oci:{}:latest", dir.display());
    let reg = opts.registry;
    must(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{reg}/{}:latest", image.repo()),
        ]),
        "skopeo copy",
    );
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &src,
        &format!("{reg}/{}:soci", image.repo()),
    ]);
    let _ = fs::remove_dir_all(&dir);
    image
}

fn must(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

// --- measuring -----------------------------------------------------------------

/// Bytes allocated on disk (not apparent sizes: the span caches are sparse
/// files) to the span data files (`layer-*`, what `max_bytes` bounds) under
/// `root/cache/*/spans`, and the number of layers with such a dir. The
/// digest files beside them (32 bytes a span) are left out: `du` of the
/// cache dir counts them.
fn span_cache_bytes(root: &Path) -> (u64, usize) {
    let mut total = 0;
    let mut layers = 0;
    let Ok(entries) = fs::read_dir(root.join("cache")) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let spans = entry.path().join("spans");
        let Ok(files) = fs::read_dir(&spans) else {
            continue;
        };
        layers += 1;
        for file in files.flatten() {
            if !file.file_name().to_string_lossy().starts_with("layer-") {
                continue;
            }
            if let Ok(meta) = file.metadata() {
                total += meta.blocks() * 512;
            }
        }
    }
    (total, layers)
}

/// Allocated bytes of everything under `dir` (not crossing mounts).
fn du(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sx", "--block-size=1"])
        .arg(dir)
        .output();
    out.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn scrape(addr: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .ok()?;
    let response = client.get(format!("http://{addr}/metrics")).send().ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().ok()
}

/// Sum of samples `name` whose labels include `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_rows(text, name)
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `(labels, value)` of every sample `name`.
fn metric_rows<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (labels, v) = r.split_once("} ")?;
            (labels, v)
        } else {
            ("", rest.strip_prefix(' ')?)
        };
        Some((labels, value.trim().parse().ok()?))
    })
}

// --- faults --------------------------------------------------------------------

struct Faults {
    stop: AtomicBool,
    outage_done: AtomicBool,
}

/// Injects faults into `proxy` until `faults.stop`: by request count (so a
/// phase with fewer requests gets fewer faults) and one outage by time.
fn inject(proxy: &FaultProxy, opts: &Opts, faults: &Faults, t0: Instant, events: &Events) {
    let mut next_fail = opts.fail_every;
    let mut next_reset = opts.reset_every;
    let mut next_corrupt = opts.corrupt_every;
    let mut seed = 0x5eed_u64;
    while !faults.stop.load(Ordering::Relaxed) {
        let all = proxy.count("/v2/");
        let blobs = proxy.count("/blobs/");
        if opts.fail_every > 0 && all >= next_fail {
            proxy.fail_next(1, 500, "/v2/", None);
            next_fail = all + opts.fail_every;
        }
        if opts.reset_every > 0 && blobs >= next_reset {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            proxy.reset_mid_body("/blobs/", 512 + seed % 8192);
            next_reset = blobs + opts.reset_every;
        }
        if opts.corrupt_every > 0 && blobs >= next_corrupt {
            proxy.corrupt_body("/blobs/");
            next_corrupt = blobs + opts.corrupt_every;
        }
        if opts.outage_ms > 0
            && !faults.outage_done.load(Ordering::Relaxed)
            && t0.elapsed() >= Duration::from_millis(opts.outage_at_ms)
        {
            events.add(t0, "outage_start", "");
            proxy.down();
            std::thread::sleep(Duration::from_millis(opts.outage_ms));
            proxy.up();
            events.add(
                t0,
                "outage_end",
                &format!("{} connections reset", proxy.refused_connections()),
            );
            faults.outage_done.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.clear_faults();
}

#[derive(Debug, Default)]
struct FaultCounts {
    requests: usize,
    range_requests: usize,
    status_500: usize,
    resets: usize,
    corrupt: usize,
    /// Corrupted responses to span fetches (`Range: bytes=a-b`, a < b;
    /// not resumed downloads, `bytes=a-`, nor the `bytes=0-0` probe):
    /// span bytes a lazy layer had to check.
    corrupt_span: usize,
    /// Of those, the ones sent to the first snapshotter between its last
    /// scrape and its kill: its digest check, if any, was counted nowhere.
    corrupt_span_in_kill_window: usize,
    refused: usize,
}

/// Whether `range` (a `Range` header) asks for a closed range of more than
/// one byte: how a lazy layer fetches spans.
fn is_span_range(range: &str) -> bool {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .is_some_and(|(a, b)| b > a)
}

/// Counts what the proxy did; `kill_window` is the range of request log
/// indices sent between the last scrape of the killed snapshotter and its
/// kill. Writes every faulted request to `faults_csv`.
fn fault_counts(
    proxy: &FaultProxy,
    phase: &str,
    kill_window: std::ops::Range<usize>,
    faults_csv: &str,
) -> FaultCounts {
    let mut c = FaultCounts {
        refused: proxy.refused_connections(),
        ..FaultCounts::default()
    };
    let mut rows = Vec::new();
    for (i, r) in proxy.requests().into_iter().enumerate() {
        if let Some(fault) = &r.fault {
            rows.push(format!(
                "{phase},{i},{},{},{},{},{fault:?}",
                r.method,
                r.path,
                r.range.as_deref().unwrap_or(""),
                r.status
            ));
        }
        c.requests += 1;
        if r.range.is_some() {
            c.range_requests += 1;
        }
        match r.fault {
            Some(Fault::Status(_)) => c.status_500 += 1,
            Some(Fault::ResetMidBody(_)) => c.resets += 1,
            Some(Fault::CorruptBody) => {
                c.corrupt += 1;
                if r.range.as_deref().is_some_and(is_span_range) {
                    c.corrupt_span += 1;
                    if kill_window.contains(&i) {
                        c.corrupt_span_in_kill_window += 1;
                    }
                }
            }
            None => {}
        }
    }
    append_file(faults_csv, &rows.join("\n"));
    c
}

// --- events and jobs -----------------------------------------------------------

#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl Events {
    fn add(&self, t0: Instant, what: &str, detail: &str) {
        let t = t0.elapsed().as_secs_f64();
        let detail = detail.replace(['\n', ','], " ");
        log(format!("  {t:7.2} s  {what} {detail}"));
        if let Ok(mut v) = self.0.lock() {
            v.push(format!("{t:.3},{what},{detail}"));
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Job {
    n: usize,
    pull_attempts: usize,
    pull_s: f64,
    run_attempts: usize,
    ready_s: f64,
    right: bool,
    files: usize,
    /// What failed attempts said (first lines).
    failures: Vec<String>,
    wrong: Vec<String>,
}

/// Checks `stdout` of `busybox sha256sum FILES`: every file's line right.
fn check(image: &Image, stdout: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for (file, sum) in &image.reads {
        let want = format!("{sum}  {file}");
        if !stdout.lines().any(|l| l.trim() == want) {
            let got = stdout
                .lines()
                .find(|l| l.ends_with(&format!("  {file}")))
                .unwrap_or("(no line)");
            wrong.push(format!("{file}: want {sum}, got {got}"));
        }
    }
    wrong
}

/// `text` without terminal escape sequences (`ESC [ … letter`): ctr colours
/// its progress bars, and the report is Markdown.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

fn first_lines(out: &Output) -> String {
    let text = strip_ansi(&format!(
        "{} {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    ));
    let mut s: String = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" | ");
    // On a char boundary: ctr's progress output is not all ASCII.
    if let Some((end, _)) = s.char_indices().nth(400) {
        s.truncate(end);
    }
    format!("[{}] {s}", out.status)
}

/// One container's job: pull (retried), then run and check (retried on a
/// failed run; a run that exits 0 with wrong sums is not retried).
#[allow(clippy::too_many_arguments)]
fn job(
    id_prefix: &str,
    phase: &str,
    image: &Image,
    containerd: &Containerd,
    sochi: &Sochi,
    proxy: &FaultProxy,
    t0: Instant,
    ready: &AtomicUsize,
    events: &Events,
) -> Job {
    let mut job = Job {
        n: image.n,
        files: image.reads.len(),
        ..Job::default()
    };
    let lazy = phase == "lazy";
    let reference = proxy.reference(&format!(
        "{}:{}",
        image.repo(),
        if lazy { "soci" } else { "latest" }
    ));
    let address = containerd.address();
    let mut pulled = false;
    while job.pull_attempts < MAX_ATTEMPTS {
        job.pull_attempts += 1;
        let out = if lazy {
            let mut cmd = sochi.command([
                "pull",
                "--address",
                address.to_str().unwrap_or_default(),
                "--snapshotter",
                "sochi",
                &reference,
            ]);
            cmd.output().expect("running sochi pull")
        } else {
            containerd.ctr_output(["images", "pull", "--plain-http", &reference])
        };
        if out.status.success() {
            pulled = true;
            break;
        }
        let why = first_lines(&out);
        events.add(
            t0,
            "pull_failed",
            &format!("img-{:02} attempt {}: {why}", image.n, job.pull_attempts),
        );
        job.failures
            .push(format!("pull {}: {why}", job.pull_attempts));
        std::thread::sleep(RETRY_WAIT);
    }
    job.pull_s = t0.elapsed().as_secs_f64();
    if !pulled {
        events.add(t0, "gave_up", &format!("img-{:02} pull", image.n));
        return job;
    }
    while job.run_attempts < MAX_ATTEMPTS {
        job.run_attempts += 1;
        let id = format!("{id_prefix}-{phase}-{:02}-{}", image.n, job.run_attempts);
        let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
        if lazy {
            args.extend(["--snapshotter".into(), "sochi".into()]);
        }
        args.extend([
            reference.clone(),
            id.clone(),
            "/bin/busybox".into(),
            "sha256sum".into(),
        ]);
        args.extend(image.reads.iter().map(|(f, _)| f.clone()));
        let out = containerd.ctr_output(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let wrong = check(image, &stdout);
        if out.status.success() {
            job.ready_s = t0.elapsed().as_secs_f64();
            job.right = wrong.is_empty();
            let n = ready.fetch_add(1, Ordering::SeqCst) + 1;
            events.add(
                t0,
                "ready",
                &format!(
                    "img-{:02} ({n} ready{})",
                    image.n,
                    if job.right { "" } else { ", WRONG OUTPUT" }
                ),
            );
            job.wrong = wrong;
            return job;
        }
        let why = first_lines(&out);
        events.add(
            t0,
            "run_failed",
            &format!("img-{:02} attempt {}: {why}", image.n, job.run_attempts),
        );
        job.failures.push(format!(
            "run {}: {why} ({} of {} sums wrong or missing)",
            job.run_attempts,
            wrong.len(),
            image.reads.len()
        ));
        // The container may be left behind by a failed run.
        let _ = containerd.ctr_output(["tasks", "kill", "-s", "KILL", &id]);
        let _ = containerd.ctr_output(["containers", "rm", &id]);
        std::thread::sleep(RETRY_WAIT);
    }
    events.add(t0, "gave_up", &format!("img-{:02} run", image.n));
    job
}

// --- the sampler ---------------------------------------------------------------

struct Sampler {
    stop: AtomicBool,
    snapshotter_pid: AtomicU32,
    rows: Mutex<Vec<String>>,
    peak_total: Mutex<(u64, f64)>,
    peak_snap: Mutex<u64>,
    peak_keeper: Mutex<u64>,
    peak_span_memory: Mutex<f64>,
    /// `sochi_span_disk_bytes`: what the budget counts.
    peak_disk_metric: Mutex<f64>,
    /// Allocated blocks of the span files: what the disk holds.
    peak_disk: Mutex<u64>,
}

impl Sampler {
    fn new(pid: u32) -> Sampler {
        Sampler {
            stop: AtomicBool::new(false),
            snapshotter_pid: AtomicU32::new(pid),
            rows: Mutex::new(Vec::new()),
            peak_total: Mutex::new((0, 0.0)),
            peak_snap: Mutex::new(0),
            peak_keeper: Mutex::new(0),
            peak_span_memory: Mutex::new(0.0),
            peak_disk_metric: Mutex::new(0.0),
            peak_disk: Mutex::new(0),
        }
    }

    /// Samples every `every` until stopped; metrics and the disk cache
    /// every fifth sample.
    fn run(
        &self,
        phase: &str,
        root: &Path,
        metrics: &str,
        every: Duration,
        t0: Instant,
        ready: &AtomicUsize,
    ) {
        let mut i = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let t = t0.elapsed().as_secs_f64();
            let spid = self.snapshotter_pid.load(Ordering::SeqCst);
            let kpid = keeper_pid(root).unwrap_or(0);
            let (s, k) = (rss(spid), rss(kpid));
            let (mut span_mem, mut disk_metric, mut disk) =
                (String::new(), String::new(), String::new());
            if i.is_multiple_of(5) {
                if spid != 0 {
                    if let Some(text) = scrape(metrics) {
                        let v = metric_sum(&text, "sochi_span_memory_bytes", &[]);
                        span_mem = format!("{v}");
                        let mut p = self.peak_span_memory.lock().expect("lock");
                        *p = p.max(v);
                        let v = metric_sum(&text, "sochi_span_disk_bytes", &[]);
                        disk_metric = format!("{v}");
                        let mut p = self.peak_disk_metric.lock().expect("lock");
                        *p = p.max(v);
                    }
                }
                let (d, _) = span_cache_bytes(root);
                disk = d.to_string();
                let mut p = self.peak_disk.lock().expect("lock");
                *p = (*p).max(d);
            }
            {
                let mut p = self.peak_total.lock().expect("lock");
                if s + k > p.0 {
                    *p = (s + k, t);
                }
                let mut ps = self.peak_snap.lock().expect("lock");
                *ps = (*ps).max(s);
                let mut pk = self.peak_keeper.lock().expect("lock");
                *pk = (*pk).max(k);
            }
            self.rows.lock().expect("lock").push(format!(
                "{phase},{t:.3},{spid},{},{kpid},{},{},{span_mem},{disk_metric},{disk},{}",
                s / 1024,
                k / 1024,
                (s + k) / 1024,
                ready.load(Ordering::SeqCst)
            ));
            i += 1;
            std::thread::sleep(every);
        }
    }
}

// --- phases --------------------------------------------------------------------

#[derive(Debug, Default)]
struct PhaseResult {
    phase: String,
    jobs: Vec<Job>,
    all_ready_s: f64,
    faults: FaultCounts,
    // lazy only
    kill_at_s: f64,
    restart_s: f64,
    peak_rss: u64,
    peak_rss_at_s: f64,
    peak_snap: u64,
    peak_keeper: u64,
    idle_rss_end: u64,
    /// Peak RSS while containers were starting (to the last one ready)
    /// and after (the settle: the background fetch of every layer).
    peak_rss_containers: u64,
    peak_rss_settle: u64,
    peak_span_memory: f64,
    span_memory_limit: f64,
    peak_disk: u64,
    disk_end: u64,
    disk_layers: usize,
    /// `sochi_span_disk_bytes`: the most sampled, and at the end.
    peak_disk_metric: f64,
    disk_metric_end: f64,
    /// `sochi_span_disk_limit_bytes`.
    disk_limit: f64,
    /// `du` of `root/cache` at the end: span files, digest files, markers.
    cache_du_end: u64,
    lazy_layers: usize,
    background_complete: usize,
    settle_s: f64,
    counters_before_kill: BTreeMap<String, f64>,
    counters_end: BTreeMap<String, f64>,
    layer_outcomes: String,
    /// The first process's metrics, scraped just before the kill.
    metrics_before_kill: String,
    /// Proxy log indices of the requests between that scrape and the kill.
    kill_window: std::ops::Range<usize>,
    warnings: Vec<String>,
    containerd_disk: u64,
}

/// Labels a metric sample must carry to be counted.
type Labels = &'static [(&'static str, &'static str)];

/// The counters summed over layers that the report shows: (key in the
/// report, metric name, labels).
const COUNTERS: &[(&str, &str, Labels)] = &[
    (
        "demand_bytes",
        "sochi_layer_fetched_bytes_total",
        &[("kind", "demand")],
    ),
    (
        "background_bytes",
        "sochi_layer_fetched_bytes_total",
        &[("kind", "background")],
    ),
    (
        "demand_spans",
        "sochi_layer_fetched_spans_total",
        &[("kind", "demand")],
    ),
    (
        "background_spans",
        "sochi_layer_fetched_spans_total",
        &[("kind", "background")],
    ),
    (
        "demand_requests",
        "sochi_layer_fetch_requests_total",
        &[("kind", "demand")],
    ),
    (
        "background_requests",
        "sochi_layer_fetch_requests_total",
        &[("kind", "background")],
    ),
    (
        "digest_mismatches",
        "sochi_span_digest_mismatches_total",
        &[],
    ),
    ("fetch_failures", "sochi_span_fetch_failures_total", &[]),
    (
        "background_failures",
        "sochi_background_fetch_failures_total",
        &[],
    ),
    (
        "verification_failures",
        "sochi_verification_failures_total",
        &[],
    ),
    ("read_failures", "sochi_read_failures_total", &[]),
    ("reads", "sochi_reads_total", &[]),
    ("disk_evictions", "sochi_span_cache_evictions_total", &[]),
    (
        "disk_hits",
        "sochi_span_cache_lookups_total",
        &[("result", "disk")],
    ),
    (
        "memory_hits",
        "sochi_span_cache_lookups_total",
        &[("result", "memory")],
    ),
    (
        "misses",
        "sochi_span_cache_lookups_total",
        &[("result", "miss")],
    ),
    ("registry_requests", "sochi_registry_requests_total", &[]),
];

fn counters(text: &str) -> BTreeMap<String, f64> {
    COUNTERS
        .iter()
        .map(|(key, name, labels)| ((*key).to_string(), metric_sum(text, name, labels)))
        .collect()
}

fn drop_caches(opts: &Opts) {
    if !opts.drop_caches {
        return;
    }
    let _ = Command::new("sync").status();
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "3\n") {
        log(format!("cannot drop caches: {e}"));
    }
}

fn run_phase(phase: &str, opts: &Opts, images: &[Image]) -> PhaseResult {
    log(format!("phase {phase}: {} images at once", images.len()));
    let lazy = phase == "lazy";
    let mut result = PhaseResult {
        phase: phase.to_string(),
        ..PhaseResult::default()
    };
    drop_caches(opts);
    let containerd = Containerd::start();
    append_pid(&format!(
        "containerd {} {}",
        containerd.pid(),
        containerd.dir().display()
    ));
    let mut extra = format!("[directory_cache]\nmax_bytes = {}\n", opts.max_bytes);
    if let Some(m) = opts.memory_bytes {
        let _ = writeln!(extra, "memory_bytes = {m}");
    }
    let mut snapshotter = lazy.then(|| {
        Snapshotter::start(
            &containerd.snapshotter_address(),
            SnapshotterOptions {
                extra_config: extra.clone(),
                ..SnapshotterOptions::default()
            },
        )
    });
    if let Some(s) = &snapshotter {
        append_pid(&format!(
            "snapshotter {} {}",
            s.pid().unwrap_or(0),
            s.root().display()
        ));
        fs::copy(
            s.config_path(),
            format!("{}-snapshotter.toml", opts.out.display()),
        )
        .ok();
    }
    let sochi = Sochi::new().global_args(["--plain-http"]);
    let proxy = FaultProxy::to(opts.registry);
    let events = Events::default();
    let ready = AtomicUsize::new(0);
    let faults = Faults {
        stop: AtomicBool::new(false),
        outage_done: AtomicBool::new(false),
    };
    let sampler = Sampler::new(snapshotter.as_ref().and_then(Snapshotter::pid).unwrap_or(0));
    let root = snapshotter
        .as_ref()
        .map(Snapshotter::root)
        .unwrap_or_default();
    let metrics_addr = snapshotter
        .as_ref()
        .map(|s| s.metrics_address().to_string())
        .unwrap_or_default();
    let jobs_done = AtomicUsize::new(0);
    let t0 = Instant::now();
    events.add(t0, "start", &format!("{phase}, load average {}", loadavg()));
    std::thread::scope(|scope| {
        scope.spawn(|| inject(&proxy, opts, &faults, t0, &events));
        if lazy {
            scope.spawn(|| {
                sampler.run(
                    phase,
                    &root,
                    &metrics_addr,
                    Duration::from_millis(opts.sample_ms),
                    t0,
                    &ready,
                )
            });
        }
        let handles: Vec<_> = images
            .iter()
            .map(|image| {
                let (containerd, sochi, proxy, ready, events, jobs_done) =
                    (&containerd, &sochi, &proxy, &ready, &events, &jobs_done);
                scope.spawn(move || {
                    let j = job(
                        &opts.id_prefix,
                        phase,
                        image,
                        containerd,
                        sochi,
                        proxy,
                        t0,
                        ready,
                        events,
                    );
                    jobs_done.fetch_add(1, Ordering::SeqCst);
                    j
                })
            })
            .collect();
        if let Some(snap) = snapshotter.as_mut() {
            while ready.load(Ordering::SeqCst) < opts.kill_after_ready
                && jobs_done.load(Ordering::SeqCst) < images.len()
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let log_before_scrape = proxy.requests().len();
            if let Some(text) = scrape(&metrics_addr) {
                result.counters_before_kill = counters(&text);
                result.metrics_before_kill = text.clone();
                fs::write(format!("{}-metrics-lazy-1.txt", opts.out.display()), &text).ok();
            }
            result.kill_at_s = t0.elapsed().as_secs_f64();
            events.add(
                t0,
                "kill9",
                &format!("snapshotter pid {}", snap.pid().unwrap_or(0)),
            );
            sampler.snapshotter_pid.store(0, Ordering::SeqCst);
            snap.kill9();
            result.kill_window = log_before_scrape..proxy.requests().len();
            std::thread::sleep(Duration::from_millis(opts.down_ms));
            let t = Instant::now();
            snap.restart();
            result.restart_s = t.elapsed().as_secs_f64();
            let pid = snap.pid().unwrap_or(0);
            sampler.snapshotter_pid.store(pid, Ordering::SeqCst);
            append_pid(&format!("snapshotter {pid} {}", snap.root().display()));
            events.add(
                t0,
                "restarted",
                &format!("pid {pid}, accepting after {:.2} s", result.restart_s),
            );
        }
        for h in handles {
            result.jobs.push(h.join().expect("job thread"));
        }
        result.all_ready_s = t0.elapsed().as_secs_f64();
        events.add(
            t0,
            "all_done",
            &format!(
                "{} of {} ready, load average {}",
                ready.load(Ordering::SeqCst),
                images.len(),
                loadavg()
            ),
        );
        if lazy {
            // Background fetch to the end (disk cache at its bound), faults on.
            let deadline = Instant::now() + Duration::from_secs(opts.settle_s);
            loop {
                let text = scrape(&metrics_addr).unwrap_or_default();
                let layers = metric_rows(&text, "sochi_layer_spans").count();
                let complete = metric_sum(&text, "sochi_background_fetch_complete", &[]) as usize;
                result.lazy_layers = layers;
                result.background_complete = complete;
                if (layers > 0 && complete >= layers) || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            result.settle_s = t0.elapsed().as_secs_f64() - result.all_ready_s;
            events.add(
                t0,
                "settled",
                &format!(
                    "background fetch complete on {} of {} layers",
                    result.background_complete, result.lazy_layers
                ),
            );
            // A few idle samples.
            std::thread::sleep(Duration::from_secs(2));
        }
        faults.stop.store(true, Ordering::Relaxed);
        sampler.stop.store(true, Ordering::Relaxed);
    });
    result.faults = fault_counts(
        &proxy,
        phase,
        result.kill_window.clone(),
        &format!("{}-faults.csv", opts.out.display()),
    );
    result.jobs.sort_by_key(|j| j.n);
    if let Some(snap) = &snapshotter {
        let text = scrape(&metrics_addr).unwrap_or_default();
        fs::write(format!("{}-metrics-lazy-2.txt", opts.out.display()), &text).ok();
        result.counters_end = counters(&text);
        result.span_memory_limit = metric_sum(&text, "sochi_span_memory_limit_bytes", &[]);
        // Each process counts the layers it provided; the second one only
        // those whose Prepare came after the restart.
        let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
        for t in [result.metrics_before_kill.as_str(), text.as_str()] {
            for (l, v) in metric_rows(t, "sochi_snapshotter_layers_total") {
                *outcomes
                    .entry(l.replace("outcome=", "").replace('"', ""))
                    .or_default() += v;
            }
        }
        result.layer_outcomes = outcomes
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(l, v)| format!("{l} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (d, layers) = span_cache_bytes(&snap.root());
        result.disk_end = d;
        result.disk_layers = layers;
        result.disk_metric_end = metric_sum(&text, "sochi_span_disk_bytes", &[]);
        result.disk_limit = metric_sum(&text, "sochi_span_disk_limit_bytes", &[]);
        result.cache_du_end = du(&snap.root().join("cache"));
        result.idle_rss_end =
            rss(snap.pid().unwrap_or(0)) + rss(keeper_pid(&snap.root()).unwrap_or(0));
        let logtext = snap.log();
        result.warnings = logtext
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panick"))
            .map(str::to_string)
            .collect();
        fs::write(
            format!("{}-snapshotter-{phase}.log.tail", opts.out.display()),
            tail_lines(&logtext, 400),
        )
        .ok();
    }
    let (peak, at) = *sampler.peak_total.lock().expect("lock");
    result.peak_rss = peak;
    for row in sampler.rows.lock().expect("lock").iter() {
        let cols: Vec<&str> = row.split(',').collect();
        let (Some(t), Some(total)) = (
            cols.get(1).and_then(|v| v.parse::<f64>().ok()),
            cols.get(6).and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let slot = if t <= result.all_ready_s {
            &mut result.peak_rss_containers
        } else {
            &mut result.peak_rss_settle
        };
        *slot = (*slot).max(total * 1024);
    }
    result.peak_rss_at_s = at;
    result.peak_snap = *sampler.peak_snap.lock().expect("lock");
    result.peak_keeper = *sampler.peak_keeper.lock().expect("lock");
    result.peak_span_memory = *sampler.peak_span_memory.lock().expect("lock");
    result.peak_disk = (*sampler.peak_disk.lock().expect("lock")).max(result.disk_end);
    result.peak_disk_metric =
        (*sampler.peak_disk_metric.lock().expect("lock")).max(result.disk_metric_end);
    result.containerd_disk = du(&containerd.root());
    append_file(
        &format!("{}-rss.csv", opts.out.display()),
        &sampler.rows.lock().expect("lock").join("\n"),
    );
    append_file(
        &format!("{}-events.csv", opts.out.display()),
        &events
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|e| format!("{phase},{e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    log(format!("phase {phase}: stopping its services"));
    drop(proxy);
    drop(snapshotter);
    drop(containerd);
    result
}

/// The 1, 5 and 15 minute load averages: other jobs share this machine.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}

fn append_file(path: &str, text: &str) {
    use std::io::Write as _;
    if text.is_empty() {
        return;
    }
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{text}");
    }
}

/// Records a service's pid in `$TMPDIR/load-pids` for `bench/load.sh`'s
/// clean-up after a crash or Ctrl-C.
fn append_pid(line: &str) {
    append_file(
        &std::env::temp_dir().join("load-pids").display().to_string(),
        line,
    );
}

// --- report --------------------------------------------------------------------

/// "every 25th WHAT", or "no WHAT" for 0 (off).
fn every(n: usize, what: &str) -> String {
    if n == 0 {
        format!("no {what}")
    } else {
        format!("every {n}th {what}")
    }
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / f64::from(1 << 20))
}

#[allow(clippy::too_many_lines)]
fn report(opts: &Opts, images: &[Image], results: &[PhaseResult], build_s: f64) -> String {
    let mut md = String::new();
    let compressed: u64 = images.iter().map(|i| i.compressed).sum();
    let _ = writeln!(md, "# bench/load.sh\n");
    let _ = writeln!(
        md,
        "{} images ({} data layers each + a shared busybox layer; {:.1}-{:.1} MB compressed each, {:.0} MB in all), \
         built and pushed in {build_s:.0} s; {} cores, load average at the end {}.\n",
        images.len(),
        opts.data_layers,
        images.iter().map(|i| i.compressed).min().unwrap_or(0) as f64 / 1e6,
        images.iter().map(|i| i.compressed).max().unwrap_or(0) as f64 / 1e6,
        compressed as f64 / 1e6,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
    );
    let _ =
        writeln!(
        md,
        "Faults: {}, {}, {}, {}. Snapshotter: kill -9 after {} containers were ready, down {} ms. \
         `[directory_cache] max_bytes = {}` (the node's budget){}.\n",
        every(opts.fail_every, "request answered 500"),
        every(opts.reset_every, "blob response cut after 0.5-8.5 KiB"),
        every(opts.corrupt_every, "blob response corrupted (one byte)"),
        if opts.outage_ms > 0 {
            format!("one outage of {} ms at {} ms", opts.outage_ms, opts.outage_at_ms)
        } else {
            "no outage".to_string()
        },
        opts.kill_after_ready,
        opts.down_ms,
        opts.max_bytes,
        opts.memory_bytes
            .map_or(", `memory_bytes` default".to_string(), |m| format!(", `memory_bytes = {m}`")),
    );
    let _ = writeln!(md, "| phase | all ready | ready (median) | outputs right | pull retries | run retries | requests (range) | 500s | cut | corrupted | reset by outage |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let mut ready: Vec<f64> = r
            .jobs
            .iter()
            .filter(|j| j.ready_s > 0.0)
            .map(|j| j.ready_s)
            .collect();
        ready.sort_by(f64::total_cmp);
        let median = ready.get(ready.len() / 2).copied().unwrap_or(0.0);
        let right = r.jobs.iter().filter(|j| j.right).count();
        let pull_retries: usize = r
            .jobs
            .iter()
            .map(|j| j.pull_attempts.saturating_sub(1))
            .sum();
        let run_retries: usize = r
            .jobs
            .iter()
            .map(|j| j.run_attempts.saturating_sub(1))
            .sum();
        let f = &r.faults;
        let _ = writeln!(
            md,
            "| {} | {:.2} s | {median:.2} s | {right} of {} | {pull_retries} | {run_retries} | {} ({}) | {} | {} | {} | {} |",
            r.phase,
            r.all_ready_s,
            r.jobs.len(),
            f.requests,
            f.range_requests,
            f.status_500,
            f.resets,
            f.corrupt,
            f.refused
        );
    }
    let lazy = results.iter().find(|r| r.phase == "lazy");
    let full = results.iter().find(|r| r.phase == "full");
    if let (Some(l), Some(f)) = (lazy, full) {
        let _ = writeln!(
            md,
            "\nTime to all {} ready: lazy {:.2} s, full {:.2} s: **{:.0}%** of the full pulls.\n",
            images.len(),
            l.all_ready_s,
            f.all_ready_s,
            100.0 * l.all_ready_s / f.all_ready_s
        );
    }
    if let Some(l) = lazy {
        let budget = if l.span_memory_limit > 0.0 {
            l.span_memory_limit
        } else {
            opts.memory_bytes.unwrap_or(64 << 20) as f64
        };
        let _ = writeln!(md, "\nLazy run, the snapshotter:\n");
        let _ = writeln!(
            md,
            "- kill -9 at {:.2} s, accepting again {:.2} s after the restart ({} ms down before it)",
            l.kill_at_s, l.restart_s, opts.down_ms
        );
        let _ = writeln!(
            md,
            "- peak RSS snapshotter + keeper **{}** at {:.1} s (snapshotter alone {}, keeper {}); budget {} \
             (`sochi_span_memory_limit_bytes`), so {} over the budget; budget + the stated overhead {} = {}: {}; \
             under 512 MiB: {}; steady (idle, after the settle) {}",
            mib(l.peak_rss as f64),
            l.peak_rss_at_s,
            mib(l.peak_snap as f64),
            mib(l.peak_keeper as f64),
            mib(budget),
            mib(l.peak_rss as f64 - budget),
            mib(opts.overhead as f64),
            mib(budget + opts.overhead as f64),
            if (l.peak_rss as f64) <= budget + opts.overhead as f64 { "under" } else { "**OVER**" },
            if l.peak_rss <= 512 << 20 { "yes" } else { "**no**" },
            mib(l.idle_rss_end as f64),
        );
        let _ = writeln!(
            md,
            "- peak RSS while the containers started (to the last one ready) {} (budget + {}), after them \
             (idle, then the background fetch of every layer) {} (budget + {})",
            mib(l.peak_rss_containers as f64),
            mib(l.peak_rss_containers as f64 - budget),
            mib(l.peak_rss_settle as f64),
            mib(l.peak_rss_settle as f64 - budget),
        );
        let _ = writeln!(
            md,
            "- span memory (`sochi_span_memory_bytes`) at most {} (sampled about every 0.8 s)",
            mib(l.peak_span_memory)
        );
        // The budget is for the node: all layers' span files together.
        let bound = if l.disk_limit > 0.0 {
            l.disk_limit
        } else {
            opts.max_bytes as f64
        };
        let within = |v: f64| if v <= bound { "within" } else { "**OVER**" };
        let _ = writeln!(
            md,
            "- disk cache against `max_bytes` {} (`sochi_span_disk_limit_bytes`, the node's budget), \
             images' data {}: counted by sochi (`sochi_span_disk_bytes`) {} at most, {} at the end: {}; \
             allocated to the span files of {} layers (`layer-*` under root/cache/*/spans, blocks) \
             {} at most, {} at the end: {}; `du` of root/cache at the end {}",
            mib(bound),
            mib(images.iter().map(|i| i.data).sum::<u64>() as f64),
            mib(l.peak_disk_metric),
            mib(l.disk_metric_end),
            within(l.peak_disk_metric),
            l.disk_layers,
            mib(l.peak_disk as f64),
            mib(l.disk_end as f64),
            within(l.peak_disk as f64),
            mib(l.cache_du_end as f64),
        );
        let sum = |key: &str| {
            l.counters_before_kill.get(key).copied().unwrap_or(0.0)
                + l.counters_end.get(key).copied().unwrap_or(0.0)
        };
        // sochi has no counter of spans served unverified: every span is
        // checked against its zTOC digest before it is inflated, so the
        // figure is the corrupted span responses the proxy sent that no
        // digest check counted.
        let caught = sum("digest_mismatches");
        let corrupted = l.faults.corrupt_span as f64;
        let uncounted = l.faults.corrupt_span_in_kill_window as f64;
        let _ = writeln!(
            md,
            "- spans served unverified: **{}** (corrupted span responses {}, {} of them to the first \
             process between its last scrape and its kill, against digest mismatches counted {} by \
             `sochi_span_digest_mismatches_total`, both processes; spans fetched: {} on demand, {} in \
             the background; verification on: `[fuse] disable_verification` unset)",
            (corrupted - uncounted - caught).max(0.0),
            corrupted,
            uncounted,
            caught,
            sum("demand_spans"),
            sum("background_spans"),
        );
        let _ = writeln!(
            md,
            "- background fetch complete on {} of {} layers, {:.0} s after the last container",
            l.background_complete, l.lazy_layers, l.settle_s
        );
        let _ = writeln!(
            md,
            "- layers provided (`sochi_snapshotter_layers_total`, both processes): {}",
            l.layer_outcomes
        );
        let _ = writeln!(md, "\n| counter (sum over layers) | process 1 (scraped just before the kill) | process 2 (end) | sum |");
        let _ = writeln!(md, "|---|---|---|---|");
        for (key, _, _) in COUNTERS {
            let a = l.counters_before_kill.get(*key).copied().unwrap_or(0.0);
            let b = l.counters_end.get(*key).copied().unwrap_or(0.0);
            let _ = writeln!(md, "| {key} | {a} | {b} | {} |", a + b);
        }
        let _ = writeln!(
            md,
            "\nSnapshotter log: {} WARN/ERROR lines (both processes).",
            l.warnings.len()
        );
    }
    if let Some(f) = full {
        let _ = writeln!(
            md,
            "\nFull run: containerd root {} on disk at the end (content + overlayfs).",
            mib(f.containerd_disk as f64)
        );
    }
    for r in results {
        for j in &r.jobs {
            if !j.failures.is_empty() || !j.wrong.is_empty() || !j.right {
                let _ = writeln!(
                    md,
                    "\n{} img-{:02}: {}{}",
                    r.phase,
                    j.n,
                    j.failures.join("; "),
                    j.wrong.join("; ")
                );
            }
        }
    }
    md
}

fn main() {
    let opts = parse_opts();
    fs::create_dir_all(&opts.work).expect("work dir");
    let busybox = fs::read("/bin/busybox").expect("busybox-static (scripts/e2e-deps.sh)");
    let t = Instant::now();
    log(format!(
        "building and pushing {} images to {}",
        opts.images, opts.registry
    ));
    let next = AtomicUsize::new(0);
    let images = Arc::new(Mutex::new(Vec::new()));
    let builders = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|scope| {
        for _ in 0..builders {
            scope.spawn(|| {
                let sochi = Sochi::new().global_args(["--plain-http"]);
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= opts.images {
                        break;
                    }
                    let image = make_image(&opts, &sochi, &busybox, n);
                    log(format!(
                        "  img-{n:02}: {:.1} MB compressed, reads {} files",
                        image.compressed as f64 / 1e6,
                        image.reads.len()
                    ));
                    images.lock().expect("lock").push(image);
                }
            });
        }
    });
    let mut images = std::mem::take(&mut *images.lock().expect("lock"));
    images.sort_by_key(|i| i.n);
    let build_s = t.elapsed().as_secs_f64();
    let stem = opts.out.display().to_string();
    fs::write(format!("{stem}-rss.csv"), "phase,t_s,snapshotter_pid,snapshotter_rss_kib,keeper_pid,keeper_rss_kib,total_rss_kib,span_memory_bytes,span_disk_bytes,span_files_allocated_bytes,ready\n").ok();
    fs::write(format!("{stem}-events.csv"), "phase,t_s,event,detail\n").ok();
    fs::write(
        format!("{stem}-faults.csv"),
        "phase,request,method,path,range,status,fault\n",
    )
    .ok();
    let mut results = Vec::new();
    for phase in &opts.phases {
        results.push(run_phase(phase, &opts, &images));
    }
    let mut jobs = String::from("phase,image,compressed_bytes,files_read,pull_attempts,pull_done_s,run_attempts,ready_s,output_right\n");
    for r in &results {
        for j in &r.jobs {
            let _ = writeln!(
                jobs,
                "{},img-{:02},{},{},{},{:.3},{},{:.3},{}",
                r.phase,
                j.n,
                images[j.n].compressed,
                j.files,
                j.pull_attempts,
                j.pull_s,
                j.run_attempts,
                j.ready_s,
                j.right
            );
        }
    }
    fs::write(format!("{stem}-jobs.csv"), jobs).ok();
    let warnings: Vec<String> = results.iter().flat_map(|r| r.warnings.clone()).collect();
    fs::write(format!("{stem}-warnings.log"), warnings.join("\n") + "\n").ok();
    let md = report(&opts, &images, &results, build_s);
    fs::write(format!("{stem}.md"), &md).ok();
    println!("{md}");
}
