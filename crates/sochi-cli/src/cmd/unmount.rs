//! `sochi unmount`: asks the daemon of a `sochi mount` to unmount and
//! release its layers, and cleans up after a daemon that died.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::mount::{daemon_lock, is_mounted, process_start_time, state_dir, MountState};
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
    let state = state_dir(&global.root, &mountpoint);
    let state_file = state.join("state.json");
    let text = match std::fs::read_to_string(&state_file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} is not mounted by sochi (no {})",
                mountpoint.display(),
                state_file.display()
            )
        }
        Err(error) => return Err(error).context(format!("reading {}", state_file.display())),
    };
    let mount: MountState =
        serde_json::from_str(&text).with_context(|| format!("reading {}", state_file.display()))?;
    let lock = daemon_lock(&state);
    if daemon_alive(&lock) {
        // The lock says the daemon lives; the pid and its start time say
        // which process it is (a daemon of an older sochi recorded no
        // start time).
        let same_process =
            mount.start_time == 0 || process_start_time(mount.pid) == Some(mount.start_time);
        if !same_process {
            bail!(
                "the mount daemon holds {} but is not pid {} any more; see {}",
                lock.display(),
                mount.pid,
                state.join("log").display()
            );
        }
        let pid = Pid::from_raw(i32::try_from(mount.pid).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("signalling the mount daemon")?;
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        while daemon_alive(&lock) {
            if Instant::now() > deadline {
                bail!(
                    "the mount daemon (pid {}) did not finish within {} s; see {}",
                    mount.pid,
                    args.timeout_secs,
                    state.join("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        // The daemon is gone (killed, crashed): take down what it left.
        tracing::warn!(
            pid = mount.pid,
            "mount daemon not running; cleaning up its mounts"
        );
        clean_up_after(&mount, &mountpoint)?;
        let _ = std::fs::remove_dir_all(&state);
    }
    println!("unmounted {}", mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// Whether the daemon holding `lock` lives: it holds the lock until it
/// exits, whatever its name or state.
fn daemon_alive(lock: &Path) -> bool {
    sochi_lazy::FileLock::is_held(lock)
}

fn clean_up_after(mount: &MountState, mountpoint: &Path) -> Result<()> {
    if is_mounted(mountpoint)? {
        sochi_lazy::unmount(mountpoint)?;
    }
    for layer in &mount.layers {
        if layer.mode == "lazy" && is_mounted(&layer.path)? {
            sochi_lazy::unmount(&layer.path)?;
        }
    }
    Ok(())
}
