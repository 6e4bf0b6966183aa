//! `sochi load-order record IMAGE -- CMD…`: runs a command once in an
//! image mounted lazily, and writes which spans it read, in the order of
//! first use — a load order for `sochi convert --load-order`, recorded at
//! build time (docs/prefetch.md).
//!
//! The image is mounted in this process (as `sochi mount` would, with a
//! recorder on its layers) and the command runs in it under `runc`, with
//! the image's environment and working directory, a read-only root, and
//! private PID, IPC, UTS, mount and network namespaces. When it exits the
//! mount is taken down, which ends the recording.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sochi_build::{select_manifests, PlatformSelection};
use sochi_format::LoadOrder;
use sochi_image::{open_image, ImageRef};
use sochi_lazy::ImageMountRequest;

use super::Global;

/// `sochi load-order ...`
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run CMD once in IMAGE (a registry reference) mounted lazily, and
    /// write the load order it read (as root; needs runc).
    Record(RecordArgs),
}

/// Flags of `sochi load-order record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The image, in a registry.
    pub image: String,
    /// The command (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Where to write the load order.
    #[arg(long, short = 'o', default_value = "load-order.json")]
    pub output: PathBuf,
    /// More environment (`NAME=VALUE`), after the image's. Repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The working directory (default: the image's).
    #[arg(long)]
    pub cwd: Option<String>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// Give the command at most this long, then stop it (the load order
    /// so far is written).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout_secs: u64,
}

/// Runs `sochi load-order`.
pub fn run(global: &Global, command: Command) -> Result<ExitCode> {
    match command {
        Command::Record(args) => record(global, &args),
    }
}

/// What of the image's config the command runs with.
#[derive(Debug, Default)]
struct ProcessConfig {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
}

fn record(global: &Global, args: &RecordArgs) -> Result<ExitCode> {
    let process = process_config(global, args)?;
    let work = tempfile::Builder::new()
        .prefix("sochi-record-")
        .tempdir()
        .context("creating a working directory")?;
    let mountpoint = work.path().join("rootfs");
    let bundle = work.path().join("bundle");
    for dir in [&mountpoint, &bundle] {
        sochi_lazy::private_dir(dir)?;
    }
    let recording = work.path().join("load-order.json");
    let request = ImageMountRequest {
        root: global.root.clone(),
        image: args.image.clone(),
        mountpoint: mountpoint.clone(),
        layer: None,
        platform: None,
        index_digest: None,
        verify: true,
        background: Some(sochi_spans::BackgroundOptions::default()),
        background_jobs: 2,
        prefetch: Some(sochi_spans::PrefetchOptions::default()),
        fetch_timeout: sochi_lazy::DEFAULT_FETCH_TIMEOUT,
        span_cache_limit: None,
        fuse_threads: sochi_fs::DEFAULT_FUSE_THREADS,
        metrics_address: None,
        keep_cache: false,
        // Only the end of the command ends the recording.
        record_load_order: Some((
            recording.clone(),
            sochi_spans::RecordOptions {
                quiet: Duration::from_secs(args.timeout_secs.saturating_add(60)),
                max_duration: Duration::from_secs(args.timeout_secs.saturating_add(60)),
                ..sochi_spans::RecordOptions::default()
            },
        )),
    };
    let registry = global.registry()?;
    let (mounted_tx, mounted_rx) = std::sync::mpsc::channel();
    let served = std::thread::scope(|scope| -> Result<Option<i32>> {
        let server = scope.spawn(|| {
            let client = &registry.client;
            sochi_lazy::serve_image_mount(&request, client, registry.runtime.handle(), |_| {
                let _ = mounted_tx.send(());
            })
        });
        if mounted_rx.recv().is_err() {
            return match server.join() {
                Ok(Err(error)) => Err(error).context("mounting the image"),
                _ => bail!("the mount of {} stopped before it was ready", args.image),
            };
        }
        let status = run_in_bundle(args, &process, &bundle, &mountpoint);
        // Unmounting the root ends the recording and the mount.
        if let Err(error) = sochi_lazy::unmount(&mountpoint) {
            eprintln!(
                "sochi: unmounting the image: {}",
                sochi_format::error_chain(&error)
            );
        }
        match server.join() {
            Ok(result) => result.context("serving the image")?,
            Err(_) => bail!("the mount of {} panicked", args.image),
        }
        status
    })?;
    let bytes = std::fs::read(&recording)
        .with_context(|| format!("reading the recording {}", recording.display()))?;
    let mut order = LoadOrder::from_bytes(&bytes)?;
    if order.layers.is_empty() {
        bail!(
            "{} has no lazy layer (no SOCI index, or no zTOC for any layer): nothing was \
             recorded; record with the SOCI-enabled image (`sochi convert` makes one)",
            args.image
        );
    }
    order.command = process.args.clone();
    std::fs::write(&args.output, order.to_bytes())
        .with_context(|| format!("writing {}", args.output.display()))?;
    let spans: u64 = order
        .runs
        .iter()
        .map(|r| r.end_span - r.start_span + 1)
        .sum();
    let bytes: u64 = order
        .runs
        .iter()
        .map(|r| r.end_offset - r.start_offset)
        .sum();
    println!(
        "load order of {}: {} runs, {spans} spans ({bytes} uncompressed bytes) in {} layers, {} ms; written to {}",
        args.image,
        order.runs.len(),
        order.layers.len(),
        order.duration_ms,
        args.output.display()
    );
    match served {
        Some(0) => Ok(ExitCode::SUCCESS),
        Some(code) => {
            eprintln!(
                "sochi: the command exited with status {code}; its load order was written anyway"
            );
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)))
        }
        None => {
            eprintln!("sochi: the command was stopped (timeout or signal); its load order so far was written");
            Ok(ExitCode::from(1))
        }
    }
}

/// The command, environment and working directory: the flags, else the
/// image's config.
fn process_config(global: &Global, args: &RecordArgs) -> Result<ProcessConfig> {
    let image = ImageRef::parse(&args.image)?;
    if !matches!(image, ImageRef::Registry(_)) {
        bail!("load-order record takes a registry reference, not an OCI layout");
    }
    let opened = open_image(&global.client_config()?, &image)?;
    let manifests = select_manifests(&*opened.source, &opened.image, &PlatformSelection::Host)?;
    let manifest = manifests
        .first()
        .with_context(|| format!("{} has no manifest for this platform", args.image))?;
    let config = opened
        .source
        .read_blob(&manifest.manifest.config)
        .map_err(|error| anyhow::anyhow!(error))
        .with_context(|| {
            format!(
                "reading the image config {}",
                manifest.manifest.config.digest
            )
        })?;
    let config: serde_json::Value = serde_json::from_slice(&config).with_context(|| {
        format!(
            "reading the image config {}",
            manifest.manifest.config.digest
        )
    })?;
    let strings = |key: &str| -> Vec<String> {
        config["config"][key]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut process = ProcessConfig {
        args: args.command.clone(),
        env: strings("Env"),
        cwd: args
            .cwd
            .clone()
            .or_else(|| config["config"]["WorkingDir"].as_str().map(str::to_string))
            .filter(|cwd| !cwd.is_empty())
            .unwrap_or_else(|| "/".into()),
    };
    if process.args.is_empty() {
        process.args = strings("Entrypoint");
        process.args.extend(strings("Cmd"));
    }
    if process.args.is_empty() {
        bail!("no command given and {} has none", args.image);
    }
    if !process.env.iter().any(|e| e.starts_with("PATH=")) {
        process
            .env
            .push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    process.env.extend(args.env.iter().cloned());
    Ok(process)
}

/// Runs the command with `runc` in a bundle over `rootfs`; its exit
/// status, `None` if it was stopped.
fn run_in_bundle(
    args: &RecordArgs,
    process: &ProcessConfig,
    bundle: &Path,
    rootfs: &Path,
) -> Result<Option<i32>> {
    let spec = runtime_spec(process, rootfs);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )
    .context("writing the runtime bundle")?;
    let state = bundle.join("runc");
    let id = format!("sochi-record-{}", std::process::id());
    let mut child = std::process::Command::new(&args.runc)
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.runc.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "sochi: the command ran for {} s; stopping it",
                args.timeout_secs
            );
            let _ = std::process::Command::new(&args.runc)
                .arg("--root")
                .arg(&state)
                .args(["kill", &id, "KILL"])
                .status();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal OCI runtime spec: the image's process as root, read-only
/// root, no capabilities beyond runc's defaults for `run`, no network.
fn runtime_spec(process: &ProcessConfig, rootfs: &Path) -> serde_json::Value {
    let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "sochi-record",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmp",
             "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
