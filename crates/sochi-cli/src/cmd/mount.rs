//! `sochi mount`: an image in a registry, mounted read-only without pulling
//! it (the overlay of its layers, or one layer), served by a daemon that
//! stays behind until `sochi unmount`; or one local layer blob with its
//! zTOC (`--layer-file`, in the foreground).
//!
//! The daemon is this same binary re-run with `--foreground`; the first
//! process waits until the daemon has written its state file (mounted) or
//! exited (failed, its log tells why). State lives in
//! `<root>/mounts/<id>/`, `<id>` derived from the mountpoint, so
//! `sochi unmount MOUNTPOINT` finds it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sochi_format::{Platform, Ztoc};
use sochi_fs::{BackgroundOptions, FileBlob, LayerTree, SpanManager};
use sochi_lazy::{ImageMount, LayerState, MountOptions, MountTarget};
use sochi_registry::{DiscoveryOptions, Reference};

use super::Global;

/// Flags of `sochi mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `IMAGE MOUNTPOINT`, or only `MOUNTPOINT` with `--layer-file`.
    #[arg(num_args = 1..=2, required = true, value_name = "IMAGE MOUNTPOINT")]
    pub targets: Vec<String>,
    /// Mount only this layer of the image (by digest) at the mountpoint.
    #[arg(long)]
    pub layer: Option<String>,
    /// The platform to mount (default: the host's).
    #[arg(long)]
    pub platform: Option<String>,
    /// Use this SOCI index (by digest) instead of looking for one.
    #[arg(long)]
    pub soci_index_digest: Option<String>,
    /// Fetch only what is read; no background fetch of the rest.
    #[arg(long)]
    pub no_background_fetch: bool,
    /// Wait this long after the last on-demand fetch before fetching in the background.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub background_idle_ms: u64,
    /// Start the background fetch this long after mounting.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub background_delay_ms: u64,
    /// Layers fetched in the background at the same time.
    #[arg(long, default_value_t = 2)]
    pub background_jobs: usize,
    /// Skip checking each file's tar header against the zTOC on first read.
    #[arg(long)]
    pub disable_verification: bool,
    /// Give up on one range read from the registry after this many seconds (then EIO).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub fetch_timeout: f64,
    /// Bound each layer's on-disk span cache to this many bytes (LRU).
    #[arg(long)]
    pub span_cache_bytes: Option<u64>,
    /// Serve Prometheus metrics at this address (HOST:PORT).
    #[arg(long)]
    pub metrics_address: Option<String>,
    /// FUSE threads per layer.
    #[arg(long, default_value_t = sochi_fs::DEFAULT_FUSE_THREADS)]
    pub fuse_threads: usize,
    /// Keep the layers' span caches and unpacked layers on unmount.
    #[arg(long)]
    pub keep_cache: bool,
    /// Stay in the foreground (serve until unmounted or signalled).
    #[arg(long)]
    pub foreground: bool,
    /// Print the mount's state as JSON once mounted.
    #[arg(long)]
    pub json: bool,
    /// A local layer blob (compressed as stored, or a plain tar) to mount
    /// with `--ztoc`, in the foreground.
    #[arg(long, requires = "ztoc")]
    pub layer_file: Option<PathBuf>,
    /// The zTOC of `--layer-file`.
    #[arg(long, requires = "layer_file")]
    pub ztoc: Option<PathBuf>,
}

/// What a mount daemon writes once mounted; `sochi unmount` reads it.
///
/// Whether the daemon lives is told by its lock ([`daemon_lock`]), never
/// by the process name: a renamed binary, a reused pid or a zombie cannot
/// fool it. The pid and its start time say whom to signal.
#[derive(Debug, Serialize, Deserialize)]
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
    pub manifest: String,
    /// The SOCI index digest, if one was found.
    pub index: Option<String>,
    /// How the index was found.
    pub index_found_by: Option<String>,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Where metrics are served.
    pub metrics_address: Option<String>,
}

/// One layer of a [`MountState`].
#[derive(Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Layer digest.
    pub digest: String,
    /// Compressed size.
    pub size: i64,
    /// `lazy` or `unpacked`.
    pub mode: String,
    /// The FUSE mountpoint or unpacked directory.
    pub path: PathBuf,
    /// Why the layer is not lazy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether `mountpoint` is in this process's mount table.
pub fn is_mounted(mountpoint: &Path) -> Result<bool> {
    let fstype = sochi_fs::mount_type(mountpoint).context("reading /proc/self/mountinfo")?;
    Ok(fstype.is_some())
}

/// The state directory of the mount at `mountpoint` (canonical).
pub fn state_dir(root: &Path, mountpoint: &Path) -> PathBuf {
    let hash = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    let id: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    root.join("mounts").join(id)
}

/// What a `sochi mount` is called among the users of a layer's local state.
const USER_PREFIX: &str = "mount-";

/// The lock a mount daemon holds while it lives (released by the kernel
/// when it exits, however it exits).
pub fn daemon_lock(state: &Path) -> PathBuf {
    state.join("daemon.lock")
}

/// Field 22 of `/proc/PID/stat`, the process's start time, if it exists.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..."; comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Runs `sochi mount`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    if args.layer_file.is_some() {
        return run_local_layer(&args);
    }
    let [image, mountpoint] = args.targets.as_slice() else {
        bail!("sochi mount takes IMAGE MOUNTPOINT (or MOUNTPOINT with --layer-file)");
    };
    let mountpoint = PathBuf::from(mountpoint)
        .canonicalize()
        .with_context(|| format!("mountpoint {mountpoint}"))?;
    if is_mounted(&mountpoint)? {
        bail!("{} is already a mountpoint", mountpoint.display());
    }
    let state = state_dir(&global.root, &mountpoint);
    if args.foreground {
        serve(global, &args, image, &mountpoint, &state)
    } else {
        spawn_daemon(&args, &mountpoint, &state)
    }
}

/// Starts the daemon and waits until it has mounted or failed.
fn spawn_daemon(args: &Args, mountpoint: &Path, state: &Path) -> Result<ExitCode> {
    if state.join("state.json").exists() {
        bail!(
            "{} has a mount state already; run `sochi unmount {}` first",
            state.display(),
            mountpoint.display()
        );
    }
    sochi_lazy::root_dir(&global_root(state))?;
    sochi_lazy::private_dir(state)?;
    let log_path = state.join("log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the sochi binary")?;
    let mut child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for this command does not
        // take the mount down with it.
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let state_file = state.join("state.json");
    loop {
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file)?;
            let mount: MountState = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", state_file.display()))?;
            if args.json {
                println!("{text}");
            } else {
                let lazy = mount.layers.iter().filter(|l| l.mode == "lazy").count();
                println!(
                    "mounted {} at {} ({lazy} of {} layers lazy; daemon pid {}, log {})",
                    mount.image,
                    mount.mountpoint.display(),
                    mount.layers.len(),
                    mount.pid,
                    log_path.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(state);
            bail!(
                "the mount daemon exited ({status}) before mounting:\n{}",
                log.trim_end()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon: mounts, writes the state file, serves until unmounted or
/// signalled, then unmounts and releases.
fn serve(
    global: &Global,
    args: &Args,
    image: &str,
    mountpoint: &Path,
    state: &Path,
) -> Result<ExitCode> {
    sochi_lazy::private_dir(state)?;
    let lock_path = daemon_lock(state);
    let _alive = sochi_lazy::FileLock::try_acquire(&lock_path)?.with_context(|| {
        format!(
            "another daemon serves {} (it holds {})",
            mountpoint.display(),
            lock_path.display()
        )
    })?;
    // Layers a crashed mount left registered or half unpacked.
    let mounts = global.root.join("mounts");
    sochi_lazy::sweep_layer_state(&global.root, USER_PREFIX, &|id| {
        sochi_lazy::FileLock::is_held(&daemon_lock(&mounts.join(id)))
    })?;
    let reference = Reference::parse(image).with_context(|| format!("image reference {image}"))?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text)?,
        None => Platform::host(),
    };
    let registry = global.registry()?;
    let discovery = DiscoveryOptions {
        explicit_index: args.soci_index_digest.clone(),
        ..DiscoveryOptions::default()
    };
    let mut plan = registry.block_on(sochi_lazy::plan_image(
        &registry.client,
        &reference,
        &platform,
        &discovery,
        Some(&global.root.join("artifact-cache")),
    ))?;
    if let Some(digest) = &args.layer {
        plan.layers
            .retain(|layer| &layer.descriptor.digest == digest);
        if plan.layers.is_empty() {
            bail!("image {image} has no layer {digest}");
        }
    }
    let fetch_timeout = Duration::try_from_secs_f64(args.fetch_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--fetch-timeout must be a positive number of seconds")?;
    sochi_lazy::private_dir(state)?;
    let options = MountOptions {
        root: global.root.clone(),
        state_dir: state.to_path_buf(),
        mount_id: format!("{USER_PREFIX}{}", mount_name(state)),
        verify: !args.disable_verification,
        background: (!args.no_background_fetch).then(|| BackgroundOptions {
            idle: Duration::from_millis(args.background_idle_ms),
            start_delay: Duration::from_millis(args.background_delay_ms),
            ..BackgroundOptions::default()
        }),
        background_jobs: args.background_jobs,
        fetch_timeout,
        fuse_threads: args.fuse_threads,
        span_cache_limit: args.span_cache_bytes,
        memory_cache_limit: sochi_fs::DEFAULT_MEMORY_LIMIT,
        keeper: None,
    };
    let target = if args.layer.is_some() {
        MountTarget::Layer(mountpoint)
    } else {
        MountTarget::Overlay(mountpoint)
    };
    let mount = ImageMount::mount(
        &plan,
        &registry.client,
        registry.runtime.handle(),
        options,
        target,
    )?;
    let mount = Arc::new(parking_lot::Mutex::new(Some(mount)));
    let stop = Arc::new(AtomicBool::new(false));
    let metrics_address = match &args.metrics_address {
        Some(address) => {
            let mount = Arc::clone(&mount);
            let render = Arc::new(move || {
                let mut out = String::new();
                sochi_fs::LayerMetrics::render_help(&mut out);
                if let Some(mount) = &*mount.lock() {
                    mount.render_metrics(&mut out);
                }
                out
            });
            Some(sochi_lazy::serve_metrics(address, render, Arc::clone(&stop))?.to_string())
        }
        None => None,
    };
    let layers = match &*mount.lock() {
        Some(mount) => mount
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
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let info = MountState {
        pid: std::process::id(),
        start_time: process_start_time(std::process::id()).unwrap_or(0),
        image: image.to_string(),
        mountpoint: mountpoint.to_path_buf(),
        manifest: plan.manifest.digest.clone(),
        index: plan.index.as_ref().map(|i| i.digest.clone()),
        index_found_by: plan.index.as_ref().map(|i| i.found_by.clone()),
        layers,
        metrics_address,
    };
    let state_file = state.join("state.json");
    let temp = state.join("state.json.tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(&info)?)?;
    std::fs::rename(&temp, &state_file)?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    if args.foreground && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("mounted {image} at {}", mountpoint.display());
    }

    let why = registry.block_on(wait_for_end(mountpoint.to_path_buf()));
    tracing::info!(reason = why, "unmounting");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let taken = mount.lock().take();
    let result = match taken {
        Some(mount) => mount.unmount(!args.keep_cache),
        None => Ok(()),
    };
    let _ = std::fs::remove_dir_all(state);
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The name of the mount whose state directory is `state`.
fn mount_name(state: &Path) -> String {
    state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The root a state directory `<root>/mounts/<id>` lives under.
fn global_root(state: &Path) -> PathBuf {
    state
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
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

/// `--layer-file`: one local layer in the foreground until unmounted.
fn run_local_layer(args: &Args) -> Result<ExitCode> {
    let ([mountpoint], Some(layer_file), Some(ztoc_path)) =
        (args.targets.as_slice(), &args.layer_file, &args.ztoc)
    else {
        bail!("--layer-file takes one MOUNTPOINT and --ztoc");
    };
    let bytes = std::fs::read(ztoc_path)
        .with_context(|| format!("reading zTOC {}", ztoc_path.display()))?;
    let ztoc = Arc::new(
        Ztoc::from_bytes(&bytes)
            .with_context(|| format!("decoding zTOC {}", ztoc_path.display()))?,
    );
    let tree = Arc::new(LayerTree::build(&ztoc).context("building the layer tree")?);
    let blob = FileBlob::open(layer_file)
        .with_context(|| format!("opening layer {}", layer_file.display()))?;
    let spans = Arc::new(SpanManager::new(&ztoc, Arc::new(blob), None)?);
    let mountpoint = PathBuf::from(mountpoint)
        .canonicalize()
        .with_context(|| format!("mountpoint {mountpoint}"))?;
    let options = sochi_fs::LayerOptions {
        verify: !args.disable_verification,
        threads: args.fuse_threads,
        ..sochi_fs::LayerOptions::new()
    };
    let handle = sochi_fs::mount_layer(tree, spans, ztoc, &options, &mountpoint)?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    println!("mounted {}", mountpoint.display());
    while is_mounted(&mountpoint)? {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(handle);
    Ok(ExitCode::SUCCESS)
}
