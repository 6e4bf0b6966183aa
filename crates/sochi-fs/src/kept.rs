//! Layer mounts whose FUSE connection outlives the daemon: the connection
//! is handed to the [`Keeper`] right after the mount, and a later daemon
//! takes it back and serves it again, so the mount (and any container on
//! it) never goes away.
//!
//! fuser runs the INIT handshake when a session is created, but a
//! connection taken over is already initialised: the kernel will not send
//! INIT again. So the session handshakes over one end of a socket pair
//! that replays the connection's own INIT request, and only then is the
//! real `/dev/fuse` descriptor put in place of that end (`dup2`). On a
//! fresh mount the session's INIT reply goes on to the kernel; on a
//! takeover it is dropped (the kernel keeps what it negotiated the first
//! time, and the same INIT gives the same answer) and the kernel is asked
//! to resend the requests the previous daemon had read but not answered
//! (`FUSE_NOTIFY_RESEND`, Linux 6.9).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, Session, SessionACL};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

use crate::fuse::LayerFs;
use crate::keeper::{FuseConnection, Keeper};
use crate::mountinfo::mount_type;
use crate::{Error, Result};

/// What a kept mount ([`crate::Layer::mount_kept`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptMount {
    /// A new mount; its connection is now kept.
    Mounted,
    /// The kept connection of a live mount was taken over.
    TakenOver,
}

/// The kept part of a [`MountHandle`]: how to end the mount for good.
#[derive(Debug)]
pub(crate) struct KeptState {
    pub(crate) mountpoint: PathBuf,
    pub(crate) keeper: Arc<Keeper>,
    pub(crate) key: String,
    /// The connection's number in fusectl: the mount's device minor.
    pub(crate) connection: Option<u32>,
}

impl KeptState {
    /// Unmounts, ends the connection (a container may still hold the
    /// superblock; its reads fail from now on, as after any unmount of a
    /// layer in use) and tells the keeper to let go.
    pub(crate) fn end(&self) {
        if let Err(error) = unmount(&self.mountpoint, UnmountFlags::DETACH) {
            tracing::debug!(mountpoint = %self.mountpoint.display(), %error, "unmounting a kept layer");
        }
        // The session threads block reading the device until the
        // connection is aborted.
        if let Some(connection) = self.connection {
            let connections = Path::new("/sys/fs/fuse/connections");
            let abort = connections.join(connection.to_string()).join("abort");
            if !abort.exists() {
                // fusectl is not always mounted (systemd mounts it).
                let _ = mount("fusectl", connections, "fusectl", MountFlags::empty(), None);
            }
            if let Err(error) = std::fs::write(&abort, b"1") {
                tracing::debug!(path = %abort.display(), %error, "aborting a kept connection");
            }
        }
        if let Err(error) = self.keeper.forget(&self.key) {
            tracing::warn!(key = %self.key, %error, "telling the FUSE keeper to let go");
        }
    }
}

/// Whether `path` is the mountpoint of a live sochi FUSE mount.
fn is_fuse_mount(path: &Path) -> bool {
    // Only the parent is resolved: a stat of the mountpoint itself would
    // wait on the very daemon that is about to take it over.
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let Ok(parent) = parent.canonicalize() else {
        return false;
    };
    matches!(mount_type(&parent.join(name)), Ok(Some(fstype)) if fstype == "fuse.sochi")
}

/// Mounts an empty FUSE filesystem at `mountpoint` (read-only, for
/// everyone, as root) and reads the INIT request the kernel sends.
fn mount_fuse(mountpoint: &Path) -> std::io::Result<FuseConnection> {
    let mut device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let data = std::ffi::CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        device.as_raw_fd()
    ))
    .map_err(std::io::Error::other)?;
    mount(
        "sochi",
        mountpoint,
        "fuse.sochi",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )?;
    // The kernel queued INIT during the mount. A read needs a buffer of
    // at least FUSE_MIN_READ_BUFFER (8 KiB).
    let mut init = vec![0; 64 * 1024];
    let n = device.read(&mut init)?;
    init.truncate(n);
    Ok(FuseConnection {
        device: device.into(),
        init,
    })
}

/// Asks the kernel to queue again the requests a dead daemon had read but
/// not answered (`FUSE_NOTIFY_RESEND`: a `fuse_out_header` with unique 0
/// and the notify code 7 in the error field).
fn resend_pending(device: &std::fs::File) {
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&16u32.to_le_bytes());
    header.extend_from_slice(&7i32.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes());
    let mut device = device;
    if let Err(error) = device.write_all(&header) {
        // Older kernels: requests in flight at the restart stay unanswered.
        tracing::warn!(%error, "FUSE_NOTIFY_RESEND refused");
    }
}

/// Serves `fs` on `connection`; `fresh` when the kernel still waits for
/// the INIT reply.
fn serve(
    fs: LayerFs,
    connection: &FuseConnection,
    fresh: bool,
    threads: usize,
) -> std::io::Result<fuser::BackgroundSession> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::write(&ours, &connection.init)?;
    let mut config = Config::default();
    config.acl = SessionACL::All;
    config.n_threads = Some(threads.max(1));
    // Every thread reads the one shared descriptor: requests read by a
    // daemon that dies stay on it, and the next daemon has them resent.
    config.clone_fd = false;
    let session = Session::from_fd(fs, theirs, SessionACL::All, config)?;
    let mut reply = vec![0; 4096];
    let n = rustix::io::read(&ours, &mut reply)?;
    reply.truncate(n);
    let device = std::fs::File::from(connection.device.try_clone()?);
    if fresh {
        (&device).write_all(&reply)?;
    }
    // The session's channel now reads and answers the real connection.
    nix::unistd::dup2(device.as_raw_fd(), session.as_fd().as_raw_fd())
        .map_err(std::io::Error::from)?;
    if !fresh {
        resend_pending(&device);
    }
    session.spawn()
}

/// Serves `fs` at `mountpoint` with its FUSE connection kept by `keeper`
/// under `key`: a new mount whose connection is handed to the keeper, or,
/// when the keeper already keeps a connection under `key` and
/// `mountpoint` is still mounted, that connection taken over. As root.
pub(crate) fn serve_kept(
    fs: LayerFs,
    threads: usize,
    mountpoint: &Path,
    keeper: Arc<Keeper>,
    key: &str,
) -> Result<(fuser::BackgroundSession, KeptState, KeptMount)> {
    let mount_error = |source: std::io::Error| Error::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    let kept = match keeper.get(key) {
        Ok(Some(connection)) if is_fuse_mount(mountpoint) => Some(connection),
        Ok(Some(_)) => {
            // The mount is gone: the kept connection serves nothing.
            let _ = keeper.forget(key);
            None
        }
        Ok(None) => None,
        Err(error) => return Err(mount_error(error)),
    };
    let (connection, how) = match kept {
        Some(connection) => (connection, KeptMount::TakenOver),
        None => {
            // A dead mount of a daemon that had no keeper: take it away.
            if is_fuse_mount(mountpoint) {
                let _ = unmount(mountpoint, UnmountFlags::DETACH);
            }
            let connection = mount_fuse(mountpoint).map_err(mount_error)?;
            (connection, KeptMount::Mounted)
        }
    };
    let fresh = how == KeptMount::Mounted;
    let session = match serve(fs, &connection, fresh, threads) {
        Ok(session) => session,
        Err(error) => {
            if fresh {
                let _ = unmount(mountpoint, UnmountFlags::DETACH);
            }
            return Err(mount_error(error));
        }
    };
    if fresh {
        if let Err(error) = keeper.put(key, &connection) {
            // Served, but not kept: it ends with this daemon.
            tracing::warn!(key, %error, "the FUSE keeper did not take the connection");
        }
    }
    let connection_id = rustix::fs::stat(mountpoint)
        .ok()
        .map(|stat| rustix::fs::minor(stat.st_dev));
    let state = KeptState {
        mountpoint: mountpoint.to_path_buf(),
        keeper,
        key: key.to_string(),
        connection: connection_id,
    };
    Ok((session, state, how))
}
