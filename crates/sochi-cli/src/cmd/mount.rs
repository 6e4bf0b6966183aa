//! `sochi mount`: mounts one local layer lazily (read-only FUSE) and stays
//! in the foreground until the mount goes away.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sochi_format::Ztoc;
use sochi_fs::{FileBlob, LayerTree, SpanManager};

use super::Global;

/// Flags of `sochi mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The layer blob (compressed as stored, or a plain tar).
    #[arg(long)]
    pub layer_file: PathBuf,
    /// The layer's zTOC.
    #[arg(long)]
    pub ztoc: PathBuf,
    /// Where to mount the layer.
    pub mountpoint: PathBuf,
}

/// Whether `mountpoint` is in this process's mount table.
pub fn is_mounted(mountpoint: &Path) -> Result<bool> {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let wanted = mountpoint.to_string_lossy();
    Ok(table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref())))
}

/// Runs `sochi mount`.
pub fn run(_global: &Global, args: Args) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.ztoc)
        .with_context(|| format!("reading zTOC {}", args.ztoc.display()))?;
    let ztoc = Arc::new(
        Ztoc::from_bytes(&bytes)
            .with_context(|| format!("decoding zTOC {}", args.ztoc.display()))?,
    );
    let tree = Arc::new(LayerTree::build(&ztoc).context("building the layer tree")?);
    let blob = FileBlob::open(&args.layer_file)
        .with_context(|| format!("opening layer {}", args.layer_file.display()))?;
    let spans = Arc::new(SpanManager::new(&ztoc, Arc::new(blob), None)?);
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    let handle = sochi_fs::mount_layer(
        tree,
        spans,
        ztoc,
        &sochi_fs::LayerOptions::new(),
        &mountpoint,
    )?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    println!("mounted {}", mountpoint.display());
    while is_mounted(&mountpoint)? {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(handle);
    Ok(ExitCode::SUCCESS)
}
