//! `sochi mount` of a local layer, compared file by file with `tar -x` of
//! the same layer. Every mount is owned by a guard that unmounts it and
//! kills the daemon on drop.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sochi_e2e::{run_ok, sochi_bin, workspace_root};

fn is_mounted(mountpoint: &Path) -> bool {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = mountpoint.to_string_lossy();
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
}

/// A running `sochi mount`: on drop, lazily unmounts if still mounted and
/// kills and reaps the daemon.
struct MountGuard {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl MountGuard {
    fn start(layer: &Path, ztoc: &Path, mountpoint: &Path, log: &Path) -> MountGuard {
        let out = File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(sochi_bin())
            .arg("mount")
            .arg("--layer-file")
            .arg(layer)
            .arg("--ztoc")
            .arg(ztoc)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let mut guard = MountGuard {
            child,
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(mountpoint) {
            if let Some(status) = guard.child.try_wait().unwrap() {
                panic!("sochi mount exited {status}: {}", guard.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "not mounted after 10 s: {}",
                guard.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts with `umount` and waits for the daemon to exit 0.
    fn unmount(&mut self) {
        run_ok(Command::new("umount").arg(&self.mountpoint));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sochi mount exited {status}");
                break;
            }
            assert!(Instant::now() < deadline, "sochi mount still running");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(self.log_text().contains("mounted "), "{}", self.log_text());
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Compares what tar extracted under `expected` with the mount under
/// `actual`; `strict` listings when tar created every entry.
pub(crate) fn compare(expected: &Path, actual: &Path, strict: bool) -> usize {
    let mut checked = 0;
    // The layer tree turns whiteouts into overlayfs form (docs/format.md §3.6): the
    // opaque marker becomes an xattr, `.wh.NAME` a 0/0 device `NAME`.
    let want_raw = names(expected);
    let want: BTreeSet<String> = want_raw
        .iter()
        .filter(|n| n.as_str() != ".wh..wh..opq")
        .map(|n| n.strip_prefix(".wh.").unwrap_or(n).to_string())
        .collect();
    let got = names(actual);
    if strict {
        assert_eq!(want, got, "listing of {}", actual.display());
    } else {
        assert!(want.is_subset(&got), "listing of {}", actual.display());
    }
    for name in want_raw.into_iter().filter(|n| !n.starts_with(".wh.")) {
        let (e, a) = (expected.join(&name), actual.join(&name));
        let meta = fs::symlink_metadata(&e).unwrap();
        let kind = meta.file_type();
        if kind.is_dir() {
            assert!(
                fs::symlink_metadata(&a).unwrap().is_dir(),
                "{}",
                a.display()
            );
            checked += compare(&e, &a, strict);
        } else if kind.is_symlink() {
            assert_eq!(fs::read_link(&e).unwrap(), fs::read_link(&a).unwrap());
        } else if kind.is_file() {
            assert!(
                fs::read(&e).unwrap() == fs::read(&a).unwrap(),
                "{}",
                a.display()
            );
        }
        checked += 1;
    }
    checked
}

fn mount_matches_tar(layer: &str) {
    let fixtures = workspace_root().join("fixtures");
    let blob = fixtures.join(layer);
    let ztoc = fixtures.join(format!("{layer}.65536.ztoc"));
    let work = tempfile::TempDir::new().unwrap();
    let extracted = work.path().join("tar");
    fs::create_dir(&extracted).unwrap();
    let tar_ok = Command::new("tar")
        .arg("-xf")
        .arg(&blob)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap()
        .success();
    let mountpoint = work.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mountpoint = mountpoint.canonicalize().unwrap();
    let log = work.path().join("mount.log");
    {
        let mut guard = MountGuard::start(&blob, &ztoc, &mountpoint, &log);
        let checked = compare(&extracted, &mountpoint, tar_ok);
        assert!(checked > 0, "nothing compared for {layer}");
        guard.unmount();
    }
    assert!(
        !is_mounted(&mountpoint),
        "{} still mounted",
        mountpoint.display()
    );
}

#[test]
fn mount_gnu_mixed_matches_tar() {
    mount_matches_tar("gnu-mixed.tar.gz");
}

/// The other fixture layers carry a `security.capability` the kernel
/// refuses (fixtures README, "A trap worth knowing"): the layer is refused
/// as the unpack and containerd refuse it, naming entry, key and offset,
/// and nothing is mounted (issue 14).
#[test]
fn fixture_layers_with_an_invalid_capability_are_refused() {
    let fixtures = workspace_root().join("fixtures");
    for layer in ["pax-mixed.tar.gz", "plain.tar"] {
        let work = tempfile::TempDir::new().unwrap();
        let mountpoint = work.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let output = Command::new(sochi_bin())
            .arg("mount")
            .arg("--layer-file")
            .arg(fixtures.join(layer))
            .arg("--ztoc")
            .arg(fixtures.join(format!("{layer}.65536.ztoc")))
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{layer}: {stderr}");
        for needle in [
            "data/xattr-file",
            "security.capability",
            "uncompressed offset",
        ] {
            assert!(
                stderr.contains(needle),
                "{layer}: no {needle:?} in {stderr}"
            );
        }
        assert!(!is_mounted(&mountpoint), "{layer}");
    }
}
