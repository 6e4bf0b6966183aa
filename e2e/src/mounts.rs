//! Unmounting from the guards without waiting on a FUSE daemon: the
//! `umount2` syscall, not `umount(8)`, which first does a `statfs` of the
//! target. A sochi layer whose connection the FUSE keeper holds while no
//! snapshotter runs never answers that `statfs`, and neither does an
//! overlay on top of it.

use std::path::Path;

use nix::mount::{umount2, MntFlags};

/// Unmounts `path`, lazily when it is busy; whether either worked.
pub fn unmount(path: &Path) -> bool {
    umount2(path, MntFlags::empty()).is_ok() || umount2(path, MntFlags::MNT_DETACH).is_ok()
}
