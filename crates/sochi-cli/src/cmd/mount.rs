//! `sochi mount`: an image in a registry, mounted read-only without pulling
//! it (the overlay of its layers, or one layer), served by a daemon that
//! stays behind until `sochi unmount`; or one local layer blob with its
//! zTOC (`--layer-file`, in the foreground).
//!
//! The daemon is this same binary re-run with `--foreground`, serving
//! through `sochi_lazy::serve_image_mount`; the first process waits until
//! the daemon has written its state file (mounted) or exited (failed, its
//! log tells why). State lives in `<root>/mounts/<id>/`, `<id>` derived
//! from the mountpoint, so `sochi unmount MOUNTPOINT` finds it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sochi_format::Platform;
use sochi_fs::LayerConfig;
use sochi_lazy::{is_mounted, state_dir, ImageMountRequest, MountState};
use sochi_spans::BackgroundOptions;

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
    /// Ignore the layers' prefetch artifacts (fetched by default right after the mount, which does not wait for them).
    #[arg(long)]
    pub no_prefetch: bool,
    /// Range requests in flight per layer while prefetching (0: 4).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub prefetch_concurrency: usize,
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
    /// Record which spans the readers touch, in the order of first use,
    /// into this file: a load order for `sochi convert --load-order`.
    /// Written when the readers have been quiet for
    /// --record-quiet-sec, and again at unmount.
    #[arg(long, value_name = "FILE")]
    pub record_load_order: Option<PathBuf>,
    /// The quiet time that ends a --record-load-order recording.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub record_quiet_sec: u64,
    /// A local layer blob (compressed as stored, or a plain tar) to mount
    /// with `--ztoc`, in the foreground.
    #[arg(long, requires = "ztoc")]
    pub layer_file: Option<PathBuf>,
    /// The zTOC of `--layer-file`.
    #[arg(long, requires = "layer_file")]
    pub ztoc: Option<PathBuf>,
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
        serve(global, &args, image, &mountpoint)
    } else {
        spawn_daemon(global, &args, &mountpoint, &state)
    }
}

/// Starts the daemon and waits until it has mounted or failed.
fn spawn_daemon(global: &Global, args: &Args, mountpoint: &Path, state: &Path) -> Result<ExitCode> {
    if state.join("state.json").exists() {
        bail!(
            "{} has a mount state already; run `sochi unmount {}` first",
            state.display(),
            mountpoint.display()
        );
    }
    sochi_lazy::root_dir(&global.root)?;
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

/// The daemon: serves until unmounted or signalled.
fn serve(global: &Global, args: &Args, image: &str, mountpoint: &Path) -> Result<ExitCode> {
    let fetch_timeout = Duration::try_from_secs_f64(args.fetch_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--fetch-timeout must be a positive number of seconds")?;
    let request = ImageMountRequest {
        root: global.root.clone(),
        image: image.to_string(),
        mountpoint: mountpoint.to_path_buf(),
        layer: args.layer.clone(),
        platform: args.platform.as_deref().map(Platform::parse).transpose()?,
        index_digest: args.soci_index_digest.clone(),
        verify: !args.disable_verification,
        background: (!args.no_background_fetch).then(|| BackgroundOptions {
            idle: Duration::from_millis(args.background_idle_ms),
            start_delay: Duration::from_millis(args.background_delay_ms),
            ..BackgroundOptions::default()
        }),
        background_jobs: args.background_jobs,
        prefetch: (!args.no_prefetch).then(|| sochi_spans::PrefetchOptions {
            concurrency: match args.prefetch_concurrency {
                0 => sochi_spans::PrefetchOptions::default().concurrency,
                n => n,
            },
            ..sochi_spans::PrefetchOptions::default()
        }),
        fetch_timeout,
        span_cache_limit: args.span_cache_bytes,
        fuse_threads: args.fuse_threads,
        metrics_address: args.metrics_address.clone(),
        keep_cache: args.keep_cache,
        record_load_order: match &args.record_load_order {
            Some(path) => Some((
                std::path::absolute(path)
                    .with_context(|| format!("--record-load-order {}", path.display()))?,
                sochi_spans::RecordOptions {
                    quiet: Duration::from_secs(args.record_quiet_sec.max(1)),
                    ..sochi_spans::RecordOptions::default()
                },
            )),
            None => None,
        },
    };
    let registry = global.registry()?;
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    sochi_lazy::serve_image_mount(
        &request,
        &registry.client,
        registry.runtime.handle(),
        |_| {
            if on_terminal {
                println!("mounted {image} at {}", mountpoint.display());
            }
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `--layer-file`: one local layer in the foreground until unmounted.
fn run_local_layer(args: &Args) -> Result<ExitCode> {
    let ([mountpoint], Some(layer_file), Some(ztoc_path)) =
        (args.targets.as_slice(), &args.layer_file, &args.ztoc)
    else {
        bail!("--layer-file takes one MOUNTPOINT and --ztoc");
    };
    let mountpoint = PathBuf::from(mountpoint)
        .canonicalize()
        .with_context(|| format!("mountpoint {mountpoint}"))?;
    let config = LayerConfig {
        verify: !args.disable_verification,
        threads: args.fuse_threads,
        ..LayerConfig::default()
    };
    sochi_lazy::serve_local_layer(layer_file, ztoc_path, &mountpoint, config, || {
        println!("mounted {}", mountpoint.display());
    })?;
    Ok(ExitCode::SUCCESS)
}
