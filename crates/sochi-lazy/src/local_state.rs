//! sochi's local state under its root, shared by every mount and the
//! snapshotter: private directories, each layer's state directory and the
//! mounts using it, locks, and the sweep that removes what a crash left.
//!
//! - `cache/<layer hex>/` the span cache of a lazy layer, `layers/<layer
//!   hex>/` an unpacked layer (`fs/`, then the `complete` marker once the
//!   tree is whole).
//! - `users/<user>` inside both: one empty file per mount using the layer,
//!   named `mount-<id>` for a `sochi mount` and `snapshot-<id>` for a
//!   snapshot of the snapshotter; the last user to let go deletes the
//!   directory (a layer is released).
//! - `lock` inside both: an exclusive `flock` while a layer is unpacked
//!   (concurrent mounts of one layer unpack it once) or swept.
//!
//! A unpack killed half-way leaves `fs.tmp-<pid>` and its user's entry;
//! [`sweep_layer_state`] at the next start removes both, and the directory
//! when nobody uses it and it was never completed.
//!
//! Directories are created `0700`: layer trees and FUSE layer mounts below
//! the root hold what strangers wrote (setuid files, device nodes), and no
//! host user may reach them. The image mounts a user asked for are where
//! the user put them, mounted `nosuid,nodev` ([`crate::mount_overlay`]).

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Context as _, Result};
use rustix::fs::FlockOperation;

/// Mode of every directory sochi creates for itself.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `path` (and missing parents) with mode `0700`; an existing
/// directory is made `0700` too (state of older versions was `0755`).
/// For directories sochi owns, never for a root the user named.
pub fn private_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(())
}

/// Creates sochi's root: `0700` when it is new. An existing root is left
/// as it is (it may be a directory the operator chose), with a warning
/// when others may enter it; the directories below it that hold layers
/// are private either way.
pub fn root_dir(root: &Path) -> Result<()> {
    if !root.exists() {
        return private_dir(root);
    }
    let mode = fs::metadata(root)
        .with_context(|| format!("reading {}", root.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(root = %root.display(), mode = format!("{:o}", mode & 0o7777), "sochi's root is open to other users; its layer directories are private all the same");
    }
    Ok(())
}

/// An exclusive `flock` on a file, released when dropped (or when the
/// process dies: the kernel drops it with the last descriptor).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for the lock on `path` (created if missing).
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = open_lock_file(path)?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(FileLock { _file: file })
    }

    /// The lock on `path` if nobody holds it; `None` if somebody does.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(error) => Err(error).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Whether somebody holds the lock on `path` (a missing file: nobody).
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
            // Got it: nobody holds it exclusively. Closing `file` drops it.
            Ok(()) => false,
            Err(_) => true,
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))
}

/// One layer's state directory.
#[derive(Debug, Clone)]
pub(crate) struct LayerDir {
    path: PathBuf,
}

impl LayerDir {
    pub(crate) fn new(path: PathBuf) -> LayerDir {
        LayerDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the layer as used by `user`.
    pub(crate) fn register(&self, user: &str) -> Result<()> {
        let users = self.path.join("users");
        private_dir(&users)?;
        fs::write(users.join(user), b"")
            .with_context(|| format!("registering {user} in {}", users.display()))
    }

    /// `user` no longer uses the layer; with `release`, the directory goes
    /// when nobody else does either.
    pub(crate) fn unregister(&self, user: &str, release: bool) {
        let users = self.path.join("users");
        let _ = fs::remove_file(users.join(user));
        if release && !self.in_use() {
            if let Err(error) = fs::remove_dir_all(&self.path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(dir = %self.path.display(), %error, "cannot release the layer's local state");
                }
            }
        }
    }

    fn in_use(&self) -> bool {
        fs::read_dir(self.path.join("users")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Holds the layer's lock (unpack, sweep).
    pub(crate) fn lock(&self) -> Result<FileLock> {
        FileLock::acquire(&self.path.join("lock"))
    }

    /// Removes unpack leftovers (`fs.tmp-*`). Call with the lock held.
    pub(crate) fn remove_partial_unpacks(&self) -> Result<usize> {
        let mut removed = 0;
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Ok(0);
        };
        for entry in entries.flatten() {
            if entry.file_name().as_encoded_bytes().starts_with(b"fs.tmp-") {
                let path = entry.path();
                fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// What [`sweep_layer_state`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// `users/` entries of mounts that are gone.
    pub dead_users: usize,
    /// Partial unpacks (`fs.tmp-*`).
    pub partial_unpacks: usize,
    /// Layer directories nobody uses that never held a whole layer.
    pub incomplete_layers: usize,
}

/// Removes what crashed mounts left under `root`: `users/` entries named
/// `<prefix><id>` whose owner `is_live(id)` says is gone, partial unpacks
/// nobody is writing, and unpacked-layer directories that nobody uses and
/// that were never completed. Entries of other prefixes (another kind of
/// user) are left to their owner's sweep. Layers being unpacked right now
/// (their lock is held) are skipped.
pub fn sweep_layer_state(
    root: &Path,
    prefix: &str,
    is_live: &dyn Fn(&str) -> bool,
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    for kind in ["layers", "cache"] {
        let Ok(entries) = fs::read_dir(root.join(kind)) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = LayerDir::new(entry.path());
            let Some(_lock) = FileLock::try_acquire(&dir.path.join("lock"))? else {
                continue;
            };
            if let Ok(users) = fs::read_dir(dir.path.join("users")) {
                for user in users.flatten() {
                    let name = user.file_name();
                    let Some(id) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
                        continue;
                    };
                    if !is_live(id) {
                        let _ = fs::remove_file(user.path());
                        report.dead_users += 1;
                    }
                }
            }
            if kind == "layers" {
                report.partial_unpacks += dir.remove_partial_unpacks()?;
                if !dir.in_use() && !dir.path.join("complete").exists() {
                    fs::remove_dir_all(&dir.path)
                        .with_context(|| format!("removing {}", dir.path.display()))?;
                    report.incomplete_layers += 1;
                }
            }
        }
    }
    if report != SweepReport::default() {
        tracing::info!(root = %root.display(), ?report, "removed what earlier mounts left behind");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700_new_or_old() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("a/b");
        private_dir(&dir).unwrap();
        for path in [temp.path().join("a"), dir.clone()] {
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn a_lock_is_held_until_dropped() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("lock");
        assert!(!FileLock::is_held(&path));
        let lock = FileLock::acquire(&path).unwrap();
        assert!(FileLock::is_held(&path));
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        drop(lock);
        assert!(!FileLock::is_held(&path));
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn sweep_removes_what_dead_users_left() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let layer = |kind: &str, name: &str| LayerDir::new(root.join(kind).join(name));
        // An unpack killed half-way: its temp tree and its user.
        let killed = layer("layers", "aa");
        killed.register("mount-dead").unwrap();
        fs::create_dir_all(killed.path().join("fs.tmp-123/etc")).unwrap();
        // A whole layer a live mount uses, with a dead one's leftovers.
        let shared = layer("layers", "bb");
        shared.register("mount-live").unwrap();
        shared.register("mount-dead").unwrap();
        shared.register("snapshot-7").unwrap();
        fs::create_dir_all(shared.path().join("fs")).unwrap();
        fs::write(shared.path().join("complete"), "sha256:bb").unwrap();
        fs::create_dir_all(shared.path().join("fs.tmp-9")).unwrap();
        // A span cache of a dead mount: its data stays for the next mount.
        let cache = layer("cache", "cc");
        cache.register("mount-dead").unwrap();
        // A layer being unpacked right now is left alone.
        let busy = layer("layers", "dd");
        busy.register("mount-dead").unwrap();
        fs::create_dir_all(busy.path().join("fs.tmp-1")).unwrap();
        let held = busy.lock().unwrap();

        let report = sweep_layer_state(root, "mount-", &|id| id == "live").unwrap();
        assert_eq!(
            report,
            SweepReport {
                dead_users: 3,
                partial_unpacks: 2,
                incomplete_layers: 1
            }
        );
        assert!(!killed.path().exists());
        let users: Vec<_> = fs::read_dir(shared.path().join("users"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(users.len(), 2, "{users:?}");
        assert!(shared.path().join("fs").is_dir());
        assert!(!shared.path().join("fs.tmp-9").exists());
        assert!(cache.path().is_dir());
        assert_eq!(fs::read_dir(cache.path().join("users")).unwrap().count(), 0);
        assert!(busy.path().join("fs.tmp-1").exists());
        drop(held);
    }
}
