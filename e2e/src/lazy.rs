//! Lazy image mounts (`sochi mount IMAGE MOUNTPOINT`) for the end-to-end
//! tests: a guard per mount, the daemon's metrics, the oracle's rootfs of a
//! test image (cached), the file table of a layer, and a bearer-token front
//! for a registry.
//!
//! - [`LazyMount`]: runs `sochi mount --json` on a fresh mountpoint and owns
//!   what it mounted. [`LazyMount::unmount`] runs `sochi unmount` and checks
//!   the end state; on drop (also when a test fails) it runs `sochi
//!   unmount`, then `umount -l` on whatever is still mounted (the overlay
//!   and each layer from `state.json`), then kills the daemon.
//! - [`Metrics`]: the Prometheus text at `state.metrics_address`, parsed.
//! - [`oracle_rootfs`]: the rootfs of a test image unpacked by
//!   [`crate::oracle::unpack_image`], once per image and oracle version.
//! - [`layer_files`]: `sochi ztoc build` + `sochi ztoc info` of a local layer
//!   blob: each entry's data offset, size and spans.
//! - [`push_layout_exact`]: an OCI layout pushed to a registry byte for
//!   byte (skopeo compresses uncompressed layers on the way).
//! - [`TokenProxy`]: a registry front that wants a bearer token from its own
//!   token service and can revoke every token it issued, so that the next
//!   request gets a `401` with a challenge (what a registry does when a
//!   token expires).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::images::TestImages;
use crate::layouts::read_json;
use crate::process::pid_alive;
use crate::registry::Registry;
use crate::sochi::Sochi;

/// How long `sochi unmount` may take in a guard's drop before the guard
/// takes the mounts down itself.
const UNMOUNT_TIMEOUT_SECS: &str = "30";

/// One layer of a [`MountState`] (`state.json`'s `layers[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedLayer {
    /// `sha256:…`
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// `lazy` or `unpacked`.
    pub mode: String,
    /// The layer's FUSE mountpoint or unpacked directory.
    pub path: PathBuf,
    /// Why the layer is not lazy.
    pub reason: Option<String>,
}

impl MountedLayer {
    pub fn is_lazy(&self) -> bool {
        self.mode == "lazy"
    }

    /// The hex of the digest (the name of its cache directory).
    pub fn hex(&self) -> &str {
        self.digest.split_once(':').map_or("", |(_, hex)| hex)
    }
}

/// What the mount daemon wrote to `<root>/mounts/<id>/state.json` (and
/// `sochi mount --json` printed).
#[derive(Debug, Clone)]
pub struct MountState {
    pub pid: u32,
    pub image: String,
    pub mountpoint: PathBuf,
    /// The image manifest digest.
    pub manifest: String,
    /// The SOCI index digest, if one was found.
    pub index: Option<String>,
    /// How it was found: `V2Annotation`, `Referrers`, `Explicit`.
    pub index_found_by: Option<String>,
    /// Bottom first.
    pub layers: Vec<MountedLayer>,
    /// The bound metrics address, if metrics were asked for.
    pub metrics_address: Option<String>,
    /// The whole document.
    pub json: serde_json::Value,
}

impl MountState {
    /// Parses `state.json`; panics naming what is missing.
    #[track_caller]
    pub fn parse(json: serde_json::Value) -> MountState {
        let text = |key: &str| json[key].as_str().map(str::to_string);
        let required = |key: &str| {
            text(key).unwrap_or_else(|| panic!("mount state without {key:?}: {json:#}"))
        };
        let layers = json["layers"]
            .as_array()
            .unwrap_or_else(|| panic!("mount state without layers: {json:#}"))
            .iter()
            .map(|layer| MountedLayer {
                digest: layer["digest"].as_str().unwrap_or_default().to_string(),
                size: layer["size"].as_u64().unwrap_or_default(),
                mode: layer["mode"].as_str().unwrap_or_default().to_string(),
                path: PathBuf::from(layer["path"].as_str().unwrap_or_default()),
                reason: layer["reason"].as_str().map(str::to_string),
            })
            .collect();
        let pid = json["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("mount state without pid: {json:#}"));
        MountState {
            pid,
            image: required("image"),
            mountpoint: PathBuf::from(required("mountpoint")),
            manifest: required("manifest"),
            index: text("index"),
            index_found_by: text("index_found_by"),
            layers,
            metrics_address: text("metrics_address"),
            json,
        }
    }

    /// The layer with `digest`.
    #[track_caller]
    pub fn layer(&self, digest: &str) -> &MountedLayer {
        match self.layers.iter().find(|layer| layer.digest == digest) {
            Some(layer) => layer,
            None => panic!("the mount has no layer {digest}: {:#}", self.json),
        }
    }

    /// The layers served over FUSE.
    pub fn lazy_layers(&self) -> impl Iterator<Item = &MountedLayer> {
        self.layers.iter().filter(|layer| layer.is_lazy())
    }
}

/// An image mounted by `sochi mount`, owned by one test.
///
/// Declare it after the [`Sochi`] (it borrows it) and after the registry
/// and proxy it reads from, so that it is dropped, and unmounted, first.
#[derive(Debug)]
pub struct LazyMount<'a> {
    sochi: &'a Sochi,
    state: MountState,
    mountpoint: PathBuf,
    released: bool,
    // Last: removed once everything in it is unmounted.
    _dir: TempDir,
}

impl<'a> LazyMount<'a> {
    /// `sochi mount --json IMAGE MOUNTPOINT ARGS…` on a new empty
    /// mountpoint; panics with sochi's output if it fails.
    #[track_caller]
    pub fn mount(sochi: &'a Sochi, image: &str, args: &[&str]) -> LazyMount<'a> {
        let dir = match tempfile::Builder::new().prefix("sochi-e2e-mnt-").tempdir() {
            Ok(dir) => dir,
            Err(err) => panic!("creating a mountpoint dir: {err}"),
        };
        let mountpoint = dir.path().join("rootfs");
        if let Err(err) = std::fs::create_dir(&mountpoint) {
            panic!("creating {}: {err}", mountpoint.display());
        }
        let mountpoint = match mountpoint.canonicalize() {
            Ok(path) => path,
            Err(err) => panic!("canonicalizing {}: {err}", mountpoint.display()),
        };
        let mut cmd_args: Vec<&str> = vec!["mount", "--json", image];
        let mountpoint_text = mountpoint.to_string_lossy().into_owned();
        cmd_args.push(&mountpoint_text);
        cmd_args.extend_from_slice(args);
        let output = sochi.output(&cmd_args);
        if !output.status.success() {
            // It may have mounted something before failing.
            let leftovers = mounts_under(&mountpoint);
            panic!(
                "{} exited with {}\nstdout:\n{}\nstderr:\n{}\nstill mounted: {leftovers:?}",
                output.command, output.status, output.stdout, output.stderr
            );
        }
        let state = MountState::parse(output.json());
        if state.mountpoint != mountpoint {
            panic!(
                "sochi mount says it mounted {}, not {}",
                state.mountpoint.display(),
                mountpoint.display()
            );
        }
        LazyMount {
            sochi,
            state,
            mountpoint,
            released: false,
            _dir: dir,
        }
    }

    /// Where the image is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `mountpoint/rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// The state the daemon wrote.
    pub fn state(&self) -> &MountState {
        &self.state
    }

    /// `<root>/mounts/<id>`, as `sochi` derives it from the mountpoint.
    pub fn state_dir(&self) -> PathBuf {
        state_dir(self.sochi.root(), &self.mountpoint)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("log")).unwrap_or_default()
    }

    /// The metrics the daemon serves now (the mount must have been made
    /// with `--metrics-address`).
    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        let Some(address) = &self.state.metrics_address else {
            panic!("mounted without --metrics-address: {:#}", self.state.json);
        };
        let url = format!("http://{address}/metrics");
        let client = match reqwest::blocking::Client::builder().no_proxy().build() {
            Ok(client) => client,
            Err(err) => panic!("building an HTTP client: {err}"),
        };
        let response = match client.get(&url).timeout(Duration::from_secs(10)).send() {
            Ok(response) => response,
            Err(err) => panic!("GET {url}: {err:#}\ndaemon log:\n{}", self.log()),
        };
        let status = response.status();
        let text = match response.text() {
            Ok(text) => text,
            Err(err) => panic!("reading {url}: {err:#}"),
        };
        if !status.is_success() {
            panic!("GET {url}: {status}\n{text}");
        }
        Metrics::parse(&text)
    }

    /// Polls the metrics until `sochi_background_fetch_complete` is 1 for
    /// every lazy layer; panics after `timeout` with the metrics and log.
    #[track_caller]
    pub fn wait_background_complete(&self, timeout: Duration) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics = self.metrics();
            let pending: Vec<&str> = self
                .state
                .lazy_layers()
                .filter(|layer| {
                    metrics.layer("sochi_background_fetch_complete", &layer.digest, &[]) != 1
                })
                .map(|layer| layer.digest.as_str())
                .collect();
            if pending.is_empty() {
                return metrics;
            }
            if Instant::now() > deadline {
                panic!(
                    "background fetch not complete after {timeout:?} for {pending:?}\nmetrics:\n{}\ndaemon log:\n{}",
                    metrics.summary(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The hidden status file of lazy layer `layer`
    /// (`<layer path>/.soci-snapshotter/<digest>.json`), parsed.
    #[track_caller]
    pub fn status_file(&self, layer: &MountedLayer) -> serde_json::Value {
        let path = status_file_path(layer);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => panic!("reading {}: {err}", path.display()),
        };
        match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(err) => panic!(
                "{} is not JSON: {err}\n{}",
                path.display(),
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    /// Runs `sochi unmount` and checks the end state: exit 0, the state
    /// directory gone, nothing of the mount left in `/proc/self/mountinfo`,
    /// the daemon gone.
    #[track_caller]
    pub fn unmount(mut self) {
        self.released = true;
        let mountpoint = self.mountpoint.to_string_lossy().into_owned();
        let output = self.sochi.output(["unmount", mountpoint.as_str()]);
        if !output.status.success() {
            let log = self.log();
            self.take_down();
            panic!(
                "{} exited with {}\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{log}",
                output.command, output.status, output.stdout, output.stderr
            );
        }
        let leftovers = self.leftover_mounts();
        let state_dir = self.state_dir();
        let daemon_alive = pid_alive(self.state.pid);
        if !leftovers.is_empty() || state_dir.exists() || daemon_alive {
            let log = self.log();
            self.take_down();
            panic!(
                "after sochi unmount: still mounted {leftovers:?}, state dir {} exists: {}, daemon {} alive: {daemon_alive}\ndaemon log:\n{log}",
                state_dir.display(),
                state_dir.exists(),
                self.state.pid
            );
        }
    }

    /// The overlay and lazy layer mountpoints still in the mount table.
    pub fn leftover_mounts(&self) -> Vec<PathBuf> {
        let mut mounted = mounts_under(&self.mountpoint);
        mounted.extend(mounts_under(&self.state_dir()));
        for layer in self.state.lazy_layers() {
            if is_mounted(&layer.path) && !mounted.contains(&layer.path) {
                mounted.push(layer.path.clone());
            }
        }
        mounted
    }

    /// Best effort, for failures: lazy unmounts of everything left, then
    /// SIGKILL to the daemon if it is still a sochi process.
    fn take_down(&self) {
        for path in self.leftover_mounts() {
            crate::mounts::unmount(&path);
        }
        let pid = self.state.pid;
        if pid_alive(pid) && is_sochi(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for LazyMount<'_> {
    fn drop(&mut self) {
        let gone = !self.state_dir().join("state.json").exists()
            && self.leftover_mounts().is_empty()
            && !pid_alive(self.state.pid);
        if self.released || gone {
            return;
        }
        if std::thread::panicking() {
            eprintln!(
                "LazyMount of {} at {}: daemon log:\n{}",
                self.state.image,
                self.mountpoint.display(),
                self.log()
            );
        }
        let mountpoint = self.mountpoint.to_string_lossy().into_owned();
        let output = self.sochi.output([
            "unmount",
            "--timeout-secs",
            UNMOUNT_TIMEOUT_SECS,
            mountpoint.as_str(),
        ]);
        if !output.status.success() {
            eprintln!(
                "LazyMount drop: {} exited with {}: {}",
                output.command,
                output.status,
                output.stderr.trim()
            );
        }
        self.take_down();
    }
}

/// `<root>/mounts/<first 8 bytes of sha256(mountpoint) in hex>`, the state
/// directory `sochi mount` uses.
pub fn state_dir(root: &Path, mountpoint: &Path) -> PathBuf {
    let hash = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    root.join("mounts").join(hex::encode(&hash[..8]))
}

/// `<layer path>/.soci-snapshotter/<digest>.json`.
pub fn status_file_path(layer: &MountedLayer) -> PathBuf {
    layer
        .path
        .join(".soci-snapshotter")
        .join(format!("{}.json", layer.digest))
}

/// Mount points in `/proc/self/mountinfo` at or below `path`.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|mounted| mounted.starts_with(path))
        .collect()
}

/// Whether `path` is a mount point in `/proc/self/mountinfo`.
pub fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|mounted| mounted == path)
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `pid` runs the sochi binary (not a reused pid).
fn is_sochi(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "sochi")
}

// --- metrics -------------------------------------------------------------------

/// One Prometheus text exposition, parsed.
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Metrics {
    /// Parses `name{k="v",…} value` lines; comments and blank lines are
    /// skipped, and so are lines that do not parse.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// The value of the sample `name` whose labels are exactly `labels`
    /// (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && sample.labels.len() == labels.len()
                    && labels.iter().all(|(key, value)| {
                        sample.labels.iter().any(|(k, v)| k == key && v == value)
                    })
            })
            .map(|sample| sample.value)
    }

    /// The counter `name{layer="DIGEST",EXTRA…}`; panics if it is missing.
    #[track_caller]
    pub fn layer(&self, name: &str, layer: &str, extra: &[(&str, &str)]) -> u64 {
        let mut labels = vec![("layer", layer)];
        labels.extend_from_slice(extra);
        match self.value(name, &labels) {
            Some(value) => value as u64,
            None => panic!(
                "no sample {name}{labels:?} in the metrics:\n{}",
                self.summary()
            ),
        }
    }

    /// `sochi_layer_fetch_requests_total{kind="demand"}` of `layer`.
    #[track_caller]
    pub fn demand_requests(&self, layer: &str) -> u64 {
        self.layer(
            "sochi_layer_fetch_requests_total",
            layer,
            &[("kind", "demand")],
        )
    }

    /// `sochi_layer_fetched_bytes_total{kind="demand"}` of `layer`.
    #[track_caller]
    pub fn demand_bytes(&self, layer: &str) -> u64 {
        self.layer(
            "sochi_layer_fetched_bytes_total",
            layer,
            &[("kind", "demand")],
        )
    }

    /// `sochi_layer_fetched_spans_total{kind="demand"}` of `layer`.
    #[track_caller]
    pub fn demand_spans(&self, layer: &str) -> u64 {
        self.layer(
            "sochi_layer_fetched_spans_total",
            layer,
            &[("kind", "demand")],
        )
    }

    /// The exposition without `# HELP`/`# TYPE` lines and histogram
    /// buckets, for failure messages.
    pub fn summary(&self) -> String {
        self.text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.contains("_bucket{"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The whole exposition.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (head, value) = line.trim().rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), Vec::new()),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            let mut rest = inner;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"")?;
                let end = after.find('"')?;
                labels.push((
                    key.trim_start_matches(',').to_string(),
                    after[..end].to_string(),
                ));
                rest = after[end + 1..].trim_start_matches(',');
            }
            (name.to_string(), labels)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

// --- the oracle's rootfs, cached -------------------------------------------------

/// The rootfs of test image `name` (`latest`) as [`crate::oracle::unpack_image`]
/// builds it, unpacked at most once: under the image dir in
/// `oracle/<name>-<key>`, where the key hashes the manifest digest and the
/// oracle's source, so a rebuilt image or a changed oracle unpacks again.
/// Treat it as read-only.
#[track_caller]
pub fn oracle_rootfs(name: &str) -> PathBuf {
    let images = TestImages::get();
    let layout = images.layout(name);
    let manifest = images.manifest_digest(name);
    cached_rootfs(&layout, &manifest, &images.dir().join("oracle"), name)
}

/// What debian-python's `/app/main.py` prints first.
pub const PYTHON_READY: &str = "sochi debian-python ready python=3";

/// Panics unless `out` (what `python3 /app/main.py` printed) has the ready
/// line with the sha256 of the oracle's `/app/data.bin`.
#[track_caller]
pub fn assert_python_ready(out: &str) {
    assert!(out.contains(PYTHON_READY), "the container printed:\n{out}");
    let data = match std::fs::read(oracle_rootfs("debian-python").join("app/data.bin")) {
        Ok(data) => data,
        Err(err) => panic!("reading the oracle's /app/data.bin: {err}"),
    };
    let data = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
    assert!(
        out.contains(&format!("data=sha256:{data}")),
        "the container printed:\n{out}\nbut /app/data.bin has sha256 {data}"
    );
}

/// [`oracle_rootfs`] for any OCI layout and manifest digest, cached under
/// `cache_dir`.
#[track_caller]
pub fn cached_rootfs(layout: &Path, manifest: &str, cache_dir: &Path, label: &str) -> PathBuf {
    let mut hasher = Sha256::new();
    hasher.update(manifest.as_bytes());
    hasher.update(include_str!("oracle.rs").as_bytes());
    let key = hex::encode(&hasher.finalize()[..8]);
    let dest = cache_dir.join(format!("{label}-{key}"));
    let what = format!("oracle rootfs of {label}");
    crate::built::build_once(&dest, ".complete", &what, |temp| {
        crate::oracle::unpack_image(layout, manifest, &temp.join("rootfs"));
        if let Err(err) = std::fs::write(temp.join(".complete"), manifest) {
            panic!("writing {}: {err}", temp.join(".complete").display());
        }
    })
    .join("rootfs")
}

/// Regular files below `root` (relative paths, sorted) with their sizes.
pub fn regular_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(rel) = path.strip_prefix(root) {
                    out.push((rel.to_path_buf(), meta.size()));
                }
            }
        }
    }
    out.sort();
    out
}

// --- a layer's file table ------------------------------------------------------------

/// One entry of `sochi ztoc info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// The name in the layer, without `./` or a leading `/`.
    pub name: String,
    /// Uncompressed offset of the data in the layer tar.
    pub offset: u64,
    pub size: u64,
    /// `reg`, `dir`, `symlink`, `hardlink`, …
    pub kind: String,
    pub start_span: u64,
    pub end_span: u64,
}

/// The file table of the local layer blob `layer` indexed with `span_size`
/// (`sochi ztoc build` then `sochi ztoc info`).
#[track_caller]
pub fn layer_files(sochi: &Sochi, layer: &Path, span_size: u64) -> Vec<LayerFile> {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => panic!("creating a temp dir: {err}"),
    };
    let ztoc = dir.path().join("layer.ztoc");
    let ztoc_text = ztoc.to_string_lossy().into_owned();
    let layer_text = layer.to_string_lossy().into_owned();
    let span = span_size.to_string();
    sochi.run([
        "ztoc",
        "build",
        "--span-size",
        &span,
        "-o",
        &ztoc_text,
        &layer_text,
    ]);
    let info = sochi.run(["ztoc", "info", &ztoc_text]).json();
    let Some(files) = info["files"].as_array() else {
        panic!("sochi ztoc info {ztoc_text} has no files: {info}");
    };
    files
        .iter()
        .map(|file| {
            let number = |key: &str| file[key].as_u64().unwrap_or_default();
            let name = file["filename"].as_str().unwrap_or_default();
            let name = name.trim_start_matches("./").trim_start_matches('/');
            LayerFile {
                name: name.to_string(),
                offset: number("offset"),
                size: number("size"),
                kind: file["type"].as_str().unwrap_or_default().to_string(),
                start_span: number("start_span"),
                end_span: number("end_span"),
            }
        })
        .collect()
}

// --- an OCI layout pushed byte for byte -------------------------------------------

/// Pushes the OCI layout `layout` (its only `index.json` entry) to
/// `registry` as `repo:tag` through the distribution API, every manifest,
/// index and blob byte for byte: unlike `skopeo copy`, which compresses
/// uncompressed layers for a registry (and so refuses
/// `--preserve-digests`), the digests stay those of the layout. Returns
/// the reference.
#[track_caller]
pub fn push_layout_exact(registry: &Registry, layout: &Path, repo: &str, tag: &str) -> String {
    let index = read_json(&layout.join("index.json"));
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let [top] = entries.as_slice() else {
        panic!(
            "{} has {} entries, not one",
            layout.join("index.json").display(),
            entries.len()
        );
    };
    let pusher = LayoutPusher {
        registry,
        client: registry.client(),
        layout,
        repo,
    };
    pusher.push_manifest(top, tag);
    registry.reference(&format!("{repo}:{tag}"))
}

struct LayoutPusher<'a> {
    registry: &'a Registry,
    client: reqwest::blocking::Client,
    layout: &'a Path,
    repo: &'a str,
}

impl LayoutPusher<'_> {
    fn blob(&self, digest: &str) -> Vec<u8> {
        let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        let path = self.layout.join("blobs").join(algorithm).join(hex);
        match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => panic!("reading {}: {err}", path.display()),
        }
    }

    fn with_auth(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        match self.registry.credentials() {
            Some(creds) => request.basic_auth(&creds.user, Some(&creds.password)),
            None => request,
        }
    }

    #[track_caller]
    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
        what: &str,
    ) -> reqwest::blocking::Response {
        match self.with_auth(request).send() {
            Ok(response) => response,
            Err(err) => panic!("{what}: {err:#}"),
        }
    }

    /// Pushes what `descriptor` names (children first), then the manifest
    /// itself under `reference` (a tag, or its digest).
    #[track_caller]
    fn push_manifest(&self, descriptor: &serde_json::Value, reference: &str) {
        let digest = descriptor["digest"].as_str().unwrap_or_default();
        let bytes = self.blob(digest);
        let document: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(value) => value,
            Err(err) => panic!("manifest {digest} is not JSON: {err}"),
        };
        for child in document["manifests"].as_array().into_iter().flatten() {
            let child_digest = child["digest"].as_str().unwrap_or_default();
            self.push_manifest(child, child_digest);
        }
        let blobs = document["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(document.get("config"));
        for blob in blobs {
            self.push_blob(blob["digest"].as_str().unwrap_or_default());
        }
        let media_type = descriptor["mediaType"]
            .as_str()
            .or_else(|| document["mediaType"].as_str())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let url = self
            .registry
            .url(&format!("/v2/{}/manifests/{reference}", self.repo));
        let response = self.send(
            self.client
                .put(&url)
                .header("Content-Type", media_type)
                .body(bytes),
            &format!("PUT {url}"),
        );
        let status = response.status();
        if status.as_u16() != 201 {
            let text = response.text().unwrap_or_default();
            panic!("PUT {url}: {status}: {text}");
        }
    }

    #[track_caller]
    fn push_blob(&self, digest: &str) {
        let url = self
            .registry
            .url(&format!("/v2/{}/blobs/{digest}", self.repo));
        if self
            .send(self.client.head(&url), &format!("HEAD {url}"))
            .status()
            .as_u16()
            == 200
        {
            return;
        }
        let start = self
            .registry
            .url(&format!("/v2/{}/blobs/uploads/", self.repo));
        let response = self.send(self.client.post(&start), &format!("POST {start}"));
        let location = response
            .headers()
            .get("Location")
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let Some(location) = location.filter(|_| response.status().as_u16() == 202) else {
            panic!("POST {start}: {} without a Location", response.status());
        };
        let mut upload = if location.starts_with("http") {
            location
        } else {
            self.registry.url(&location)
        };
        upload.push(if upload.contains('?') { '&' } else { '?' });
        upload.push_str(&format!("digest={digest}"));
        let response = self.send(
            self.client
                .put(&upload)
                .header("Content-Type", "application/octet-stream")
                .body(self.blob(digest)),
            &format!("PUT {upload}"),
        );
        if response.status().as_u16() != 201 {
            let status = response.status();
            let text = response.text().unwrap_or_default();
            panic!("PUT {upload}: {status}: {text}");
        }
    }
}

// --- a bearer-token front --------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// A registry front on 127.0.0.1 that wants `Authorization: Bearer TOKEN`
/// on every `/v2/` request, hands tokens out at `/token` (to anyone), and
/// forwards authorized requests to a plain registry. Without a valid token
/// a request gets `401` with `WWW-Authenticate: Bearer realm=…/token`, as
/// from a registry with a token service. [`TokenProxy::revoke_tokens`]
/// invalidates every token issued so far. Stopped on drop.
#[derive(Debug)]
pub struct TokenProxy {
    addr: SocketAddr,
    shared: Arc<TokenShared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct TokenShared {
    upstream: SocketAddr,
    realm: String,
    /// Tokens are `e2e-<generation>-<n>`; only the current generation is
    /// accepted.
    generation: AtomicU64,
    issued: AtomicUsize,
    refused: AtomicUsize,
    /// Paths of the requests answered 401.
    refused_paths: parking_lot::Mutex<Vec<String>>,
}

impl TokenProxy {
    /// A token front for `registry`, which must be plain HTTP without auth.
    #[track_caller]
    pub fn start(registry: &Registry) -> TokenProxy {
        if registry.is_tls() || registry.credentials().is_some() {
            panic!("TokenProxy forwards to a plain registry without auth");
        }
        let listener = match std::net::TcpListener::bind(("127.0.0.1", 0)) {
            Ok(listener) => listener,
            Err(err) => panic!("TokenProxy: binding 127.0.0.1:0: {err}"),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => panic!("TokenProxy: local_addr: {err}"),
        };
        if let Err(err) = listener.set_nonblocking(true) {
            panic!("TokenProxy: set_nonblocking: {err}");
        }
        let shared = Arc::new(TokenShared {
            upstream: registry.socket_addr(),
            realm: format!("http://{addr}/token"),
            generation: AtomicU64::new(1),
            issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            refused_paths: parking_lot::Mutex::new(Vec::new()),
        });
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("token-proxy")
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => panic!("TokenProxy: building the tokio runtime: {err}"),
        };
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let task_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("token-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(err) => {
                            eprintln!("TokenProxy: registering the listener: {err}");
                            return;
                        }
                    };
                    loop {
                        let stream = tokio::select! {
                            _ = &mut shutdown_rx => return,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => stream,
                                Err(_) => continue,
                            },
                        };
                        let shared = Arc::clone(&task_shared);
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                token_handle(request, Arc::clone(&shared))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(true)
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(err) => panic!("TokenProxy: spawning its thread: {err}"),
        };
        TokenProxy {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `ADDR/REPO[:TAG|@DIGEST]` through the front.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// Every token issued so far is refused from now on.
    pub fn revoke_tokens(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Requests answered `401` so far.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// The paths of the requests answered `401`, in order.
    pub fn refused_paths(&self) -> Vec<String> {
        self.shared.refused_paths.lock().clone()
    }
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn token_handle(
    request: Request<Incoming>,
    shared: Arc<TokenShared>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let generation = shared.generation.load(Ordering::SeqCst);
    if request.uri().path() == "/token" {
        let n = shared.issued.fetch_add(1, Ordering::SeqCst);
        let body = format!("{{\"token\":\"e2e-{generation}-{n}\",\"expires_in\":300}}");
        let mut response = Response::new(full(body.into_bytes()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(response);
    }
    let valid_prefix = format!("Bearer e2e-{generation}-");
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(&valid_prefix));
    if !authorized {
        shared.refused.fetch_add(1, Ordering::SeqCst);
        shared.refused_paths.lock().push(path);
        let body = "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\",\"detail\":null}]}\n";
        let mut response = Response::new(full(body.as_bytes().to_vec()));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let challenge = format!("Bearer realm=\"{}\",service=\"sochi-e2e\"", shared.realm);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        return Ok(response);
    }
    let mut request = request;
    request.headers_mut().remove(AUTHORIZATION);
    for name in ["connection", "keep-alive", "te", "upgrade"] {
        request.headers_mut().remove(name);
    }
    match forward(request, shared.upstream).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Ok(Response::from_parts(
                parts,
                body.map_err(BoxError::from).boxed(),
            ))
        }
        Err(err) => {
            let mut response = Response::new(full(
                format!("TokenProxy: upstream {}: {err}\n", shared.upstream).into_bytes(),
            ));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}

async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, BoxError> {
    let stream = TcpStream::connect(upstream).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

fn full(bytes: Vec<u8>) -> ProxyBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_with_and_without_labels() {
        let metrics = Metrics::parse(
            "# HELP x y\n\
             sochi_layer_fetch_requests_total{layer=\"sha256:ab\",kind=\"demand\"} 3\n\
             sochi_image_layers{kind=\"lazy\"} 2\n\
             plain 1.5\n",
        );
        assert_eq!(
            metrics.layer(
                "sochi_layer_fetch_requests_total",
                "sha256:ab",
                &[("kind", "demand")]
            ),
            3
        );
        assert_eq!(
            metrics.value("sochi_image_layers", &[("kind", "lazy")]),
            Some(2.0)
        );
        assert_eq!(metrics.value("plain", &[]), Some(1.5));
        assert_eq!(metrics.value("sochi_image_layers", &[]), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
