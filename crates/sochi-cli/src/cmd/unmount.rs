//! `sochi unmount`: asks the daemon of a `sochi mount` to unmount and
//! release its layers, and cleans up after a daemon that died.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Global;

/// Flags of `sochi unmount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the image is mounted.
    pub mountpoint: PathBuf,
    /// How long to wait for the daemon to finish.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// Runs `sochi unmount`.
pub fn run(global: &Global, args: Args) -> Result<ExitCode> {
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    sochi_lazy::unmount_image(
        &global.root,
        &mountpoint,
        Duration::from_secs(args.timeout_secs),
    )?;
    println!("unmounted {}", mountpoint.display());
    Ok(ExitCode::SUCCESS)
}
