//! Mounting a layer's filesystem, plain or with its connection kept, and
//! the handle that unmounts it.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::fuse::LayerFs;
use crate::keeper::Keeper;
use crate::kept::{self, KeptMount, KeptState};
use crate::{Error, Result};

/// A mounted layer; unmounts (and joins the session thread) on drop.
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    /// Set for a mount whose connection the keeper holds.
    kept: Option<KeptState>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("kept", &self.kept.is_some())
            .finish_non_exhaustive()
    }
}

impl MountHandle {
    /// Whether the keeper holds this mount's connection (it stays mounted
    /// after [`MountHandle::leave`]).
    pub fn is_kept(&self) -> bool {
        self.kept.is_some()
    }

    /// Waits until the filesystem is unmounted from outside.
    pub fn join(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(session) => session.join(),
            None => Ok(()),
        }
    }

    /// Stops serving without unmounting when the keeper holds the
    /// connection (the next daemon takes it over; meanwhile the kernel
    /// queues requests); otherwise unmounts as a drop does.
    pub fn leave(mut self) {
        if self.kept.take().is_some() {
            // The session threads end with the process.
            drop(self.session.take());
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Some(kept) = self.kept.take() {
            kept.end();
            // Its threads end as the connection is aborted.
            drop(self.session.take());
            return;
        }
        if let Some(session) = self.session.take() {
            // Nothing to report to from a drop; the session is gone either way.
            let _ = session.umount_and_join();
        }
    }
}

/// Readahead of a layer mount, in KiB. Linux gives a FUSE mount 128 KiB,
/// so a sequential read costs a round trip (and a span-cache read) per
/// 128 KiB; 1 MiB is the most one FUSE read carries.
const READAHEAD_KIB: u32 = 1024;

/// Raises the readahead of the FUSE mount at `mountpoint` (its backing
/// device info in sysfs, as root); best effort.
fn raise_readahead(mountpoint: &Path) {
    let Ok(stat) = rustix::fs::stat(mountpoint) else {
        return;
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(stat.st_dev),
        rustix::fs::minor(stat.st_dev)
    );
    if let Err(error) = std::fs::write(&knob, READAHEAD_KIB.to_string()) {
        tracing::debug!(%knob, %error, "cannot raise the layer's readahead");
    }
}

/// Mounts a filesystem made by `make_fs` read-only at `mountpoint` (as
/// root: pure-Rust mount), served by `threads` threads.
pub(crate) fn mount_plain(
    make_fs: impl Fn() -> Result<LayerFs>,
    threads: usize,
    mountpoint: &Path,
) -> Result<MountHandle> {
    // nosuid and nodev: a layer holds what strangers wrote (fuser's
    // default too, said here so it stays). Containers stack layers in
    // their own overlay, whose flags decide there.
    let mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::FSName("sochi".into()),
        MountOption::Subtype("sochi".into()),
        MountOption::DefaultPermissions,
    ];
    let mut last = None;
    for acl in [SessionACL::All, SessionACL::Owner] {
        let mut config = Config::default();
        config.mount_options = mount_options.clone();
        config.acl = acl;
        // Reads block on the registry: enough threads that a few slow
        // fetches do not stall lookups and cached reads.
        config.n_threads = Some(threads.max(1));
        config.clone_fd = true;
        let fs = make_fs()?;
        match fuser::spawn_mount(fs, mountpoint, &config) {
            Ok(session) => {
                raise_readahead(mountpoint);
                return Ok(MountHandle {
                    session: Some(session),
                    kept: None,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(Error::Mount {
        path: mountpoint.to_path_buf(),
        source: last.unwrap_or_else(|| std::io::Error::other("mount failed")),
    })
}

/// Mounts `fs` at `mountpoint` with its connection kept by `keeper` under
/// `key`, or takes over the kept connection of a live mount there.
pub(crate) fn mount_kept(
    fs: LayerFs,
    threads: usize,
    mountpoint: &Path,
    keeper: Arc<Keeper>,
    key: &str,
) -> Result<(MountHandle, KeptMount)> {
    let (session, state, how) = kept::serve_kept(fs, threads, mountpoint, keeper, key)?;
    raise_readahead(mountpoint);
    let handle = MountHandle {
        session: Some(session),
        kept: Some(state),
    };
    Ok((handle, how))
}
