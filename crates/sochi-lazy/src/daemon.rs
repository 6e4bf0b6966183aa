//! The `sochi mount` daemon: an image mounted lazily at a mountpoint and
//! served until it is unmounted, its state in `<root>/mounts/<id>/` for
//! `sochi unmount`; and the one-layer foreground mount of a local blob.
//!
//! The daemon holds `daemon.lock` in its state directory while it lives
//! (the kernel drops the lock however it exits), so whether a mount's
//! daemon lives is told by that lock, never by a process name; the pid and
//! its start time in `state.json` say which process to signal.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{invalid, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sochi_format::{Digest, Platform, Ztoc};
use sochi_fs::{Layer, LayerConfig};
use sochi_registry::{Client, DiscoveryOptions, Reference};
use sochi_spans::{BackgroundOptions, FileBlob};
use tokio::runtime::Handle;

use crate::local_state::{private_dir, root_dir, sweep_layer_state, FileLock};
use crate::mount::{ImageMount, LayerState, MountOptions, MountTarget};
use crate::plan::ImagePlan;

/// What a `sochi mount` is called among the users of a layer's local state.
const USER_PREFIX: &str = "mount-";

/// What a mount daemon writes once mounted (`state.json`, and `sochi mount
/// --json`); `sochi unmount` reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountState {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat` field
    /// 22): with the pid, it names the process.
    #[serde(default)]
    pub start_time: u64,
    /// The image reference.
    pub image: String,
    /// Where the image (or layer) is mounted.
    pub mountpoint: PathBuf,
    /// The image manifest digest.
    pub manifest: Digest,
    /// The SOCI index digest, if one was found.
    pub index: Option<Digest>,
    /// How the index was found.
    pub index_found_by: Option<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Where metrics are served.
    pub metrics_address: Option<String>,
}

/// One layer of a [`MountState`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Layer digest.
    pub digest: Digest,
    /// Compressed size.
    pub size: i64,
    /// `lazy` or `unpacked`.
    pub mode: String,
    /// The FUSE mountpoint or unpacked directory.
    pub path: PathBuf,
    /// Why the layer is not lazy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The prefetch artifact whose spans are fetched right after the
    /// mount (absent: none, refused, or prefetch off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch_artifact: Option<Digest>,
}

/// What an image mount daemon is asked to do.
#[derive(Clone, Debug)]
pub struct ImageMountRequest {
    /// sochi's root.
    pub root: PathBuf,
    /// The image as given.
    pub image: String,
    /// Where to mount it (canonical).
    pub mountpoint: PathBuf,
    /// Only this layer (by digest), mounted directly at the mountpoint.
    pub layer: Option<String>,
    /// The platform (default: the host's).
    pub platform: Option<Platform>,
    /// A SOCI index to use instead of looking for one.
    pub index_digest: Option<String>,
    /// Check each file's tar header against the zTOC on first read.
    pub verify: bool,
    /// Background fetch of the rest of each layer, `None` for none.
    pub background: Option<BackgroundOptions>,
    /// Layers fetched in the background at the same time.
    pub background_jobs: usize,
    /// Prefetch of the layers' prefetch artifacts, `None` for none.
    pub prefetch: Option<sochi_spans::PrefetchOptions>,
    /// Bound of one range read from the registry.
    pub fetch_timeout: Duration,
    /// Bound of each layer's on-disk span cache, in bytes.
    pub span_cache_limit: Option<u64>,
    /// FUSE threads per layer.
    pub fuse_threads: usize,
    /// Serve Prometheus metrics at this address.
    pub metrics_address: Option<String>,
    /// Keep the layers' local state on unmount.
    pub keep_cache: bool,
    /// Record the image's load order into this file (written when the
    /// recording ends by `RecordOptions`, and at unmount).
    pub record_load_order: Option<(PathBuf, sochi_spans::RecordOptions)>,
}

/// The state directory of the mount at `mountpoint` (canonical):
/// `<root>/mounts/<first 8 bytes of its SHA-256, hex>`.
pub fn state_dir(root: &Path, mountpoint: &Path) -> PathBuf {
    let hash = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let id: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    root.join("mounts").join(id)
}

/// The lock a mount daemon holds while it lives.
pub fn daemon_lock(state: &Path) -> PathBuf {
    state.join("daemon.lock")
}

/// Whether the daemon of the mount whose state is in `state` lives.
pub fn daemon_alive(state: &Path) -> bool {
    FileLock::is_held(&daemon_lock(state))
}

/// Field 22 of `/proc/PID/stat`, the process's start time, if it exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..."; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid`, started at `start_time` (0: any start), is
/// still running (a zombie is not).
fn process_running(pid: u32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let zombie = matches!(fields.next(), Some("Z" | "X"));
    let started = fields.nth(18).and_then(|t| t.parse::<u64>().ok());
    !zombie && (start_time == 0 || started == Some(start_time))
}

/// Whether `mountpoint` is in this process's mount table.
pub fn is_mounted(mountpoint: &Path) -> Result<bool> {
    let fstype = sochi_fs::mount_type(mountpoint).context("reading /proc/self/mountinfo")?;
    Ok(fstype.is_some())
}

/// Mounts the image of `request`, writes the state file, serves until
/// SIGTERM, SIGINT or an unmount from outside, then unmounts and (unless
/// asked to keep them) releases the layers. `on_mounted` runs once the
/// state file is written. Call from a thread that is not a runtime worker.
pub fn serve_image_mount(
    request: &ImageMountRequest,
    client: &Client,
    runtime: &Handle,
    on_mounted: impl FnOnce(&MountState),
) -> Result<()> {
    let state = state_dir(&request.root, &request.mountpoint);
    root_dir(&request.root)?;
    private_dir(&state)?;
    let lock_path = daemon_lock(&state);
    let _alive = FileLock::try_acquire(&lock_path)?.with_context(|| {
        format!(
            "another daemon serves {} (it holds {})",
            request.mountpoint.display(),
            lock_path.display()
        )
    })?;
    // Layers a crashed mount left registered or half unpacked.
    let mounts = request.root.join("mounts");
    sweep_layer_state(&request.root, USER_PREFIX, &|id| {
        daemon_alive(&mounts.join(id))
    })?;
    serve(request, client, runtime, &state, on_mounted)?;
    // A failed daemon leaves its state directory: its log tells why, and
    // whoever started it reads that and removes it.
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn serve(
    request: &ImageMountRequest,
    client: &Client,
    runtime: &Handle,
    state: &Path,
    on_mounted: impl FnOnce(&MountState),
) -> Result<()> {
    let plan = plan_request(request, client, runtime)?;
    let options = MountOptions {
        root: request.root.clone(),
        state_dir: state.to_path_buf(),
        mount_id: format!("{USER_PREFIX}{}", file_name(state)),
        verify: request.verify,
        background: request.background.clone(),
        background_jobs: request.background_jobs,
        prefetch: request.prefetch.clone(),
        prefetch_queue: None,
        fetch_timeout: request.fetch_timeout,
        fuse_threads: request.fuse_threads,
        span_cache_limit: request.span_cache_limit,
        span_memory: sochi_spans::SpanMemory::new(sochi_spans::DEFAULT_MEMORY_LIMIT),
        span_disk_budget: None,
        keeper: None,
        load_order: None,
    };
    let recorder = request.record_load_order.as_ref().map(|(_, options)| {
        sochi_spans::LoadRecorder::new(
            &request.image,
            Some(plan.manifest.digest.as_str()),
            options.clone(),
        )
    });
    let options = MountOptions {
        load_order: recorder.clone(),
        ..options
    };
    let target = if request.layer.is_some() {
        MountTarget::Layer(&request.mountpoint)
    } else {
        MountTarget::Overlay(&request.mountpoint)
    };
    let mount = ImageMount::mount(&plan, client, runtime, options, target)?;
    let layers = layer_infos(&mount);
    let mount = Arc::new(parking_lot::Mutex::new(Some(mount)));
    let stop = Arc::new(AtomicBool::new(false));
    let metrics_address = match &request.metrics_address {
        Some(address) => {
            let mount = Arc::clone(&mount);
            let render = Arc::new(move || {
                let mut out = String::new();
                sochi_spans::LayerMetrics::render_help(&mut out);
                if let Some(mount) = &*mount.lock() {
                    mount.render_metrics(&mut out);
                }
                crate::render_plan_metrics(&mut out);
                out
            });
            Some(crate::serve_metrics(address, render, Arc::clone(&stop))?.to_string())
        }
        None => None,
    };
    let pid = std::process::id();
    let info = MountState {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
        image: request.image.clone(),
        mountpoint: request.mountpoint.clone(),
        manifest: plan.manifest.digest.clone(),
        index: plan.index.as_ref().map(|i| i.digest.clone()),
        index_found_by: plan.index.as_ref().map(|i| i.found_by.clone()),
        layers,
        metrics_address,
    };
    write_state(state, &info)?;
    tracing::info!(mountpoint = %request.mountpoint.display(), "mounted");
    on_mounted(&info);

    let recording = match (&recorder, &request.record_load_order) {
        (Some(recorder), Some((path, _))) => Some(write_load_order_when_ended(
            Arc::clone(recorder),
            path.clone(),
            Arc::clone(&stop),
        )),
        _ => None,
    };
    let why = runtime.block_on(wait_for_end(request.mountpoint.clone()));
    tracing::info!(reason = why, "unmounting");
    stop.store(true, Ordering::Relaxed);
    if let (Some(recorder), Some((path, _))) = (&recorder, &request.record_load_order) {
        if let Some(thread) = recording {
            let _ = thread.join();
        }
        // Unmounted while still recording: the run it recorded is over.
        recorder.end(sochi_spans::RecordEnd::Exited);
        crate::write_load_order(path, &recorder.load_order(), true)?;
        tracing::info!(path = %path.display(), "load order written");
    }
    let taken = mount.lock().take();
    match taken {
        Some(mount) => mount.unmount(!request.keep_cache),
        None => Ok(()),
    }
}

/// A thread that writes the load order to `path` once `recorder` ends by
/// its bounds, and returns then or when `stop` is set.
fn write_load_order_when_ended(
    recorder: Arc<sochi_spans::LoadRecorder>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            if recorder.poll().is_some() {
                match crate::write_load_order(&path, &recorder.load_order(), true) {
                    Ok(()) => tracing::info!(path = %path.display(), "load order written"),
                    Err(error) => {
                        tracing::warn!(error = %sochi_format::error_chain(&error), "cannot write the load order")
                    }
                }
                return;
            }
        }
    })
}

/// The image `request` names, planned for its platform, cut down to the
/// one layer asked for if it asks for one.
fn plan_request(
    request: &ImageMountRequest,
    client: &Client,
    runtime: &Handle,
) -> Result<ImagePlan> {
    let reference = Reference::parse(&request.image)
        .with_context(|| format!("image reference {}", request.image))?;
    let platform = request.platform.clone().unwrap_or_else(Platform::host);
    let discovery = DiscoveryOptions {
        explicit_index: request.index_digest.clone(),
        ..DiscoveryOptions::default()
    };
    let mut plan = runtime.block_on(crate::plan_image(
        client,
        &reference,
        &platform,
        &discovery,
        Some(&request.root.join("artifact-cache")),
    ))?;
    if let Some(digest) = &request.layer {
        plan.layers
            .retain(|layer| &layer.descriptor.digest == digest);
        if plan.layers.is_empty() {
            invalid!("image {} has no layer {digest}", request.image);
        }
    }
    Ok(plan)
}

/// How each layer of `mount` is served, as `state.json` tells it.
fn layer_infos(mount: &ImageMount) -> Vec<LayerInfo> {
    mount
        .layers
        .iter()
        .map(|layer| {
            let (mode, reason) = match &layer.state {
                LayerState::Lazy { .. } => ("lazy", None),
                LayerState::Unpacked { reason, .. } => ("unpacked", Some(reason.clone())),
            };
            LayerInfo {
                digest: layer.descriptor.digest.clone(),
                size: layer.descriptor.size,
                mode: mode.into(),
                path: layer.lower_dir().to_path_buf(),
                reason,
                prefetch_artifact: options_prefetch(mount, layer),
            }
        })
        .collect()
}

/// The prefetch artifact of `layer` if `mount` prefetches it.
fn options_prefetch(mount: &ImageMount, layer: &crate::MountedLayer) -> Option<Digest> {
    mount
        .prefetches()
        .then(|| layer.prefetch_artifact().cloned())
        .flatten()
}

/// Writes `state.json` whole (through a rename), so a reader never sees
/// half of it.
fn write_state(state: &Path, info: &MountState) -> Result<()> {
    let state_file = state.join("state.json");
    let temp = state.join("state.json.tmp");
    let json = serde_json::to_vec_pretty(info).context("writing the mount state")?;
    std::fs::write(&temp, json)
        .and_then(|()| std::fs::rename(&temp, &state_file))
        .with_context(|| format!("writing {}", state_file.display()))?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Waits for SIGTERM, SIGINT, or the mount going away from outside.
async fn wait_for_end(mountpoint: PathBuf) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return "cannot listen for signals";
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = term.recv() => return "SIGTERM",
            _ = int.recv() => return "SIGINT",
            _ = tick.tick() => {
                if !is_mounted(&mountpoint).unwrap_or(true) {
                    return "unmounted from outside";
                }
            }
        }
    }
}

/// One local layer blob, mounted through its zTOC at `mountpoint` and
/// served in this thread until it is unmounted from outside.
pub fn serve_local_layer(
    layer_file: &Path,
    ztoc_path: &Path,
    mountpoint: &Path,
    config: LayerConfig,
    on_mounted: impl FnOnce(),
) -> Result<()> {
    let bytes = std::fs::read(ztoc_path)
        .with_context(|| format!("reading zTOC {}", ztoc_path.display()))?;
    let ztoc = Arc::new(
        Ztoc::from_bytes(&bytes)
            .with_context(|| format!("decoding zTOC {}", ztoc_path.display()))?,
    );
    let blob = FileBlob::open(layer_file)
        .with_context(|| format!("opening layer {}", layer_file.display()))?;
    let layer = Layer::open(ztoc, Arc::new(blob), config).context("opening the layer")?;
    let handle = layer
        .mount(mountpoint)
        .with_context(|| format!("mounting the layer at {}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    on_mounted();
    while is_mounted(mountpoint)? {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(handle);
    Ok(())
}

/// What [`unmount_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// The daemon was asked to unmount and did.
    ByDaemon,
    /// The daemon was gone; what it left was taken down here.
    AfterDeadDaemon,
}

/// Asks the daemon of the mount at `mountpoint` (canonical) to unmount and
/// release its layers, waiting up to `timeout`; cleans up after a daemon
/// that died.
pub fn unmount_image(root: &Path, mountpoint: &Path, timeout: Duration) -> Result<Unmounted> {
    let state = state_dir(root, mountpoint);
    let state_file = state.join("state.json");
    let text = match std::fs::read_to_string(&state_file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            invalid!(
                "{} is not mounted by sochi (no {})",
                mountpoint.display(),
                state_file.display()
            )
        }
        Err(error) => return Err(error).context(format!("reading {}", state_file.display())),
    };
    let mount: MountState =
        serde_json::from_str(&text).with_context(|| format!("reading {}", state_file.display()))?;
    let deadline = Instant::now() + timeout;
    if !daemon_alive(&state) {
        // The daemon is gone (killed, crashed), or on its way out (the
        // kernel drops its lock as it starts to exit): let it finish, then
        // take down what it left.
        while process_running(mount.pid, mount.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            pid = mount.pid,
            "mount daemon not running; cleaning up its mounts"
        );
        clean_up_after(&mount, mountpoint)?;
        let _ = std::fs::remove_dir_all(&state);
        return Ok(Unmounted::AfterDeadDaemon);
    }
    // The lock says the daemon lives; the pid and its start time say which
    // process it is (a daemon of an older sochi recorded no start time).
    let same_process =
        mount.start_time == 0 || process_start_time(mount.pid) == Some(mount.start_time);
    if !same_process {
        invalid!(
            "the mount daemon holds {} but is not pid {} any more; see {}",
            daemon_lock(&state).display(),
            mount.pid,
            state.join("log").display()
        );
    }
    let pid = Pid::from_raw(
        i32::try_from(mount.pid)
            .ok()
            .with_context(|| format!("pid {} out of range", mount.pid))?,
    );
    kill(pid, Signal::SIGTERM).context("signalling the mount daemon")?;
    // The daemon lets go of its lock when it removes its state, a moment
    // before it exits: wait for both, so that a caller that goes on sees
    // it gone.
    while daemon_alive(&state) || process_running(mount.pid, mount.start_time) {
        if Instant::now() > deadline {
            invalid!(
                "the mount daemon (pid {}) did not finish within {} s; see {}",
                mount.pid,
                timeout.as_secs(),
                state.join("log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A daemon that was dying already (killed a moment ago, its lock not
    // yet dropped) exits without unmounting: its state is still there.
    if state_file.exists() {
        tracing::warn!(
            pid = mount.pid,
            "mount daemon exited without unmounting; cleaning up its mounts"
        );
        clean_up_after(&mount, mountpoint)?;
        let _ = std::fs::remove_dir_all(&state);
        return Ok(Unmounted::AfterDeadDaemon);
    }
    Ok(Unmounted::ByDaemon)
}

fn clean_up_after(mount: &MountState, mountpoint: &Path) -> Result<()> {
    if is_mounted(mountpoint)? {
        crate::unmount(mountpoint)?;
    }
    for layer in &mount.layers {
        if layer.mode == "lazy" && is_mounted(&layer.path)? {
            crate::unmount(&layer.path)?;
        }
    }
    Ok(())
}
