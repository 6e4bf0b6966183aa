//! The read-only overlay that stacks an image's layers, and unmounting.

use std::path::Path;

use crate::error::{invalid, Context as _, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The flags of every image mount sochi makes for a user: read-only, and
/// nothing of the image honoured that would give privilege. An image is
/// what a stranger wrote: a setuid-root file in it must not make whoever
/// runs it from the mountpoint root, nor a device node in it open the
/// host's devices. (Containers get their root filesystem from the
/// snapshotter's mounts, which containerd makes, as with its overlayfs
/// snapshotter.)
const IMAGE_MOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV);

/// Mounts a read-only overlay of `lowers` (top layer first) at `target`,
/// `nosuid,nodev`. One layer is bind-mounted instead (an overlay needs two
/// lower layers when it has no upper one on older kernels).
pub fn mount_overlay(lowers: &[&Path], target: &Path) -> Result<()> {
    match lowers {
        [] => invalid!("an image without layers has nothing to mount"),
        [only] => {
            mount(
                Some(*only),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {} at {}", only.display(), target.display()))?;
            // A bind mount takes its flags only on a remount.
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | IMAGE_MOUNT_FLAGS,
                None::<&str>,
            )
            .with_context(|| format!("making {} read-only, nosuid and nodev", target.display()))
        }
        _ => {
            let mut data = String::from("lowerdir=");
            for (i, lower) in lowers.iter().enumerate() {
                let text = lower
                    .to_str()
                    .with_context(|| format!("layer directory {} is not UTF-8", lower.display()))?;
                if text.contains([',', ':']) {
                    invalid!("layer directory {text} holds a ',' or ':', which overlay options cannot carry");
                }
                if i > 0 {
                    data.push(':');
                }
                data.push_str(text);
            }
            if data.len() >= 4096 {
                invalid!(
                    "{} layers make overlay options of {} bytes, over the kernel's page",
                    lowers.len(),
                    data.len()
                );
            }
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                IMAGE_MOUNT_FLAGS,
                Some(data.as_str()),
            )
            .with_context(|| format!("mounting the overlay at {} ({data})", target.display()))
        }
    }
}

/// Unmounts `target`; a busy mount is detached lazily (it goes away when
/// its last user does) rather than left behind.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(target = %target.display(), "mount busy, detaching it");
            umount2(target, MntFlags::MNT_DETACH)
                .with_context(|| format!("detaching {}", target.display()))
        }
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("unmounting {}", target.display())),
    }
}
