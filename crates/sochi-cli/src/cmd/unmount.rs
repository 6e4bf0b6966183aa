//! `sochi unmount`: asks the daemon of a `sochi mount` to unmount and
//! release its layers, and cleans up after a daemon that died.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::mount::{is_mounted, state_dir, MountState};
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
    let pid = Pid::from_raw(i32::try_from(mount.pid).context("pid out of range")?);
    if kill(pid, None).is_ok() && is_sochi(mount.pid) {
        kill(pid, Signal::SIGTERM).context("signalling the mount daemon")?;
        let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
        while kill(pid, None).is_ok() && is_sochi(mount.pid) {
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

/// Whether `pid` is a live sochi process: not a reused pid, and not a
/// zombie (a daemon that died but is not reaped yet is gone for us).
fn is_sochi(pid: u32) -> bool {
    let named_sochi = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "sochi");
    // /proc/PID/stat: "pid (comm) state ..."; comm may hold spaces.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    });
    named_sochi && !zombie
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
