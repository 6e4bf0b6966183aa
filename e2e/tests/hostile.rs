//! Images written by an attacker (issue 14), through every path sochi turns
//! an image into files: `sochi mount` (lazy and unpacked, one layer and
//! several) and the snapshotter behind a real containerd.
//!
//! - no privilege: a setuid-root copy of `id` run by `nobody` from a mount
//!   stays `nobody`; a device node in an image cannot be opened; nobody
//!   reaches sochi's own directories; inside a container a setuid binary
//!   works as with containerd's overlayfs snapshotter;
//! - one xattr policy: `trusted.overlay.*` and a malformed
//!   `security.capability` refuse the layer alike in the lazy mount, the
//!   unpack and the snapshotter, naming entry, key and offset, and the
//!   snapshotter's hand-back to containerd says why;
//! - integrity: a wrong `diff_id` is refused naming both digests; a killed
//!   unpack leaves nothing after the next start; a failed `convert` leaves
//!   no destination; a renamed daemon is still found by `sochi unmount`;
//! - a PAX global header (what `git archive` writes first) is skipped by
//!   `create`, the lazy tree and the unpack.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sochi_e2e::layouts::{Entry, ImageLayout};
use sochi_e2e::lazy::{is_mounted, push_layout_exact, LazyMount};
use sochi_e2e::{
    pid_alive, sochi_bin, Containerd, FaultProxy, Registry, Snapshotter, Sochi, TestImages,
};

/// `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;
/// EACCES.
const EACCES: i32 = 13;

/// `program args…` run as `nobody` with no supplementary groups.
///
/// Through a shell: setpriv drops the uid but keeps its capabilities until
/// its own `execve` (so that it can still set groups), so the path of the
/// program it runs is resolved with root's rights; the shell's `exec` is
/// nobody's.
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "/bin/sh",
            "-c",
            "exec \"$0\" \"$@\"",
        ])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) => output,
        Err(err) => panic!("setpriv {}: {err}", program.display()),
    }
}

/// The mount options of the mount at `path` in this process's mount table
/// (`ro,nosuid,nodev,…`).
fn mount_options(path: &Path) -> String {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_string_lossy();
    table
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(wanted.as_ref()))
        .filter_map(|line| line.split(' ').nth(5).map(str::to_string))
        .next_back()
        .unwrap_or_else(|| panic!("{} is not mounted", path.display()))
}

/// The host's `id`, which runs from any mountpoint (its loader and
/// libraries are the host's).
fn host_id_binary() -> Vec<u8> {
    fs::read("/usr/bin/id").unwrap()
}

/// An image whose first layer holds a setuid-root copy of `id` and a
/// character device 1:3 (what `/dev/null` is), and whose second layer
/// holds a plain file: pushed as `suid:plain` (no index: unpacked) and
/// converted to `suid:soci` (every layer lazy). Returns both references
/// and the first layer's digest.
fn push_setuid_image(registry: &Registry, sochi: &Sochi, work: &Path) -> (String, String, String) {
    let mut layout = ImageLayout::new(&work.join("suid"));
    let first = layout.layer(
        &[
            Entry::dir("bin"),
            Entry::file("bin/suid-id", &host_id_binary()).mode(0o4755),
            Entry::dir("dev"),
            Entry::char_device("dev/null-from-image", 1, 3),
        ],
        true,
    );
    layout.layer(
        &[Entry::dir("etc"), Entry::file("etc/hostname", b"hostile\n")],
        true,
    );
    layout.finish();
    let plain = push_layout_exact(registry, &work.join("suid"), "suid", "plain");
    let soci = registry.reference("suid:soci");
    sochi.run(["convert", "--min-layer-size", "0", &plain, &soci]);
    (plain, soci, first)
}

/// What the attacker tried: `nobody` runs the setuid-root `id`
/// from the mount and stays `nobody`; the image's device node does not
/// open; the mount carries `nosuid,nodev`.
#[track_caller]
fn assert_no_privilege(mount: &LazyMount<'_>, what: &str) {
    // nobody must reach the mountpoint: the guard's temp dir is 0700.
    let parent = mount.mountpoint().parent().unwrap();
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    let suid = mount.path("bin/suid-id");
    let meta = fs::metadata(&suid).unwrap();
    // The image's setuid bit is there: only the mount flag stops it.
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o4755, 0), "{what}");
    let output = as_nobody(&suid, &["-u"]);
    assert!(output.status.success(), "{what}: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        NOBODY.to_string(),
        "{what}: a setuid-root file in the image gave root"
    );
    let device = mount.path("dev/null-from-image");
    assert!(
        fs::symlink_metadata(&device)
            .unwrap()
            .file_type()
            .is_char_device(),
        "{what}"
    );
    let opened = fs::File::open(&device);
    assert_eq!(
        opened.as_ref().err().and_then(|e| e.raw_os_error()),
        Some(EACCES),
        "{what}: the image's device node opened: {opened:?}"
    );
    let options = mount_options(mount.mountpoint());
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(options.split(',').any(|o| o == flag), "{what}: {options}");
    }
    for layer in mount.state().lazy_layers() {
        let options = mount_options(&layer.path);
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{what}: layer {}: {options}",
            layer.digest
        );
    }
}

#[test]
fn setuid_files_and_devices_in_an_image_give_no_privilege_through_sochi_mount() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let (plain, soci, first) = push_setuid_image(&registry, &sochi, work.path());
    for (image, args, lazy, what) in [
        (&soci, vec![], true, "lazy, two layers"),
        (&plain, vec![], false, "unpacked, two layers"),
        (
            &soci,
            vec!["--layer", first.as_str()],
            true,
            "lazy, one layer",
        ),
        (
            &plain,
            vec!["--layer", first.as_str()],
            false,
            "unpacked, one layer",
        ),
    ] {
        let mount = LazyMount::mount(&sochi, image, &args);
        assert!(
            mount.state().layers.iter().all(|l| l.is_lazy() == lazy),
            "{what}: {:#}",
            mount.state().json
        );
        assert_no_privilege(&mount, what);
        mount.unmount();
    }
    // sochi's own directories below its root are private, so that nobody
    // reaches layer trees and layer mounts even where the root is open.
    fs::set_permissions(sochi.root(), fs::Permissions::from_mode(0o755)).unwrap();
    for dir in ["mounts", "layers", "cache", "artifact-cache"] {
        let path = sochi.root().join(dir);
        if path.exists() {
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", path.display());
        }
    }
    let mount = LazyMount::mount(&sochi, &plain, &["--keep-cache"]);
    let unpacked = &mount.state().layers[0].path;
    let output = as_nobody(Path::new("/usr/bin/stat"), &[unpacked.to_str().unwrap()]);
    assert!(
        !output.status.success(),
        "nobody reached {}",
        unpacked.display()
    );
    mount.unmount();
}

/// debian-python with one more layer: `/usr/local/bin/suid-id`, a
/// setuid-root copy of `id`.
fn setuid_python_layout(work: &Path) -> PathBuf {
    let images = TestImages::get();
    let base = images.layout("debian-python");
    let dir = work.join("suid-python");
    let mut layout = ImageLayout::on_top_of(&dir, &base, &images.manifest_digest("debian-python"));
    layout.layer(
        &[
            Entry::dir("usr/local/bin"),
            Entry::file("usr/local/bin/suid-id", &host_id_binary()).mode(0o4755),
        ],
        true,
    );
    layout.finish();
    dir
}

/// A container made from a lazily pulled image runs setuid binaries as
/// one made by containerd's overlayfs snapshotter does (its root is the
/// overlay containerd mounts, whatever flags the layer mounts carry);
/// the snapshotter's layer mounts are `nosuid,nodev` and out of nobody's
/// reach.
#[test]
fn setuid_binary_in_a_lazily_started_container_works_as_with_overlayfs() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let layout = setuid_python_layout(work.path());
    let plain = push_layout_exact(&registry, &layout, "suid-python", "plain");
    let soci = registry.reference("suid-python:soci");
    sochi.run(["convert", "--min-layer-size", "0", &plain, &soci]);

    // In the container: drop to nobody, with new privileges allowed (ctr
    // sets no_new_privs by default; Kubernetes does not), then run it.
    let run = |snapshotter_name: &str, image: &str, id: &str| -> String {
        let mut args = vec!["run", "--rm", "--allow-new-privs"];
        if snapshotter_name != "overlayfs" {
            args.extend(["--snapshotter", snapshotter_name]);
        }
        let id = format!("sochi-e2e-suid-{id}-{}", std::process::id());
        args.extend([
            image,
            id.as_str(),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/local/bin/suid-id",
            "-u",
        ]);
        containerd.ctr(args).trim().to_string()
    };
    containerd.ctr(["images", "pull", "--plain-http", &plain]);
    let with_overlayfs = run("overlayfs", &plain, "overlayfs");
    let address = containerd.address();
    let report = sochi
        .run([
            "pull",
            "--address",
            address.to_str().unwrap(),
            "--snapshotter",
            "sochi",
            "--json",
            &soci,
        ])
        .json();
    assert_eq!(report["lazy"], 4, "{report:#}");
    let with_sochi = run("sochi", &soci, "sochi");
    assert_eq!(with_overlayfs, "0", "setuid inside an overlayfs container");
    assert_eq!(with_sochi, with_overlayfs, "setuid inside a lazy container");

    // Outside: the layer mounts are nosuid,nodev, below private dirs.
    let mounts = snapshotter.mounts();
    assert!(!mounts.is_empty());
    for mount in &mounts {
        let options = mount_options(mount);
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{}: {options}",
            mount.display()
        );
    }
    let snapshots = snapshotter.root().join("snapshotter/snapshots");
    let mode = fs::metadata(&snapshots).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", snapshots.display());
    let suid = mounts
        .iter()
        .map(|m| m.join("usr/local/bin/suid-id"))
        .find(|p| p.exists())
        .expect("a layer mount holds suid-id");
    let output = as_nobody(&suid, &["-u"]);
    assert!(
        !output.status.success(),
        "nobody ran {}: {output:?}",
        suid.display()
    );
}

/// A layer with an overlayfs xattr, one with a capability the kernel
/// refuses: each refused by the lazy mount, by the unpack and by the
/// snapshotter, with entry, key and offset named.
#[test]
fn xattrs_the_policy_refuses_are_refused_by_lazy_mount_unpack_and_snapshotter() {
    let registry = Registry::plain();
    let containerd = Containerd::start();
    let snapshotter = Snapshotter::for_containerd(&containerd);
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let cases = [
        (
            "overlay-xattr",
            "trusted.overlay.opaque",
            "etc/",
            b"y".to_vec(),
        ),
        (
            "bogus-capability",
            "security.capability",
            "bin/ping",
            vec![1, 0, 0, 2],
        ),
    ];
    for (name, key, entry, value) in cases {
        let mut layout = ImageLayout::new(&work.path().join(name));
        layout.layer(&[Entry::file("hello", b"benign first layer")], true);
        let victim = if entry.ends_with('/') {
            Entry::dir(entry).xattr(key, &value)
        } else {
            Entry::file(entry, b"binary").mode(0o755).xattr(key, &value)
        };
        let parent = if entry.ends_with('/') { "" } else { "bin" };
        let mut entries = Vec::new();
        if !parent.is_empty() {
            entries.push(Entry::dir(parent));
        }
        entries.push(victim);
        layout.layer(&entries, true);
        layout.finish();
        let plain = push_layout_exact(&registry, &work.path().join(name), name, "plain");
        let soci = registry.reference(&format!("{name}:soci"));
        sochi.run(["convert", "--min-layer-size", "0", &plain, &soci]);

        let entry_name = entry.trim_end_matches('/');
        for (image, path) in [(&soci, "lazy"), (&plain, "unpack")] {
            let mountpoint = work.path().join(format!("{name}-{path}"));
            fs::create_dir(&mountpoint).unwrap();
            let output = sochi.run_fail(["mount", image, mountpoint.to_str().unwrap()]);
            for needle in [key, entry_name, "uncompressed offset"] {
                assert!(
                    output.stderr.contains(needle),
                    "{name}, {path}: no {needle:?} in:\n{}",
                    output.stderr
                );
            }
            assert!(!is_mounted(&mountpoint), "{name}, {path}");
            // Nothing stays registered or half unpacked.
            assert_no_layer_state(sochi.root(), &format!("{name}, {path}"));
        }

        // The snapshotter refuses it too; containerd's own unpack is what
        // the layer falls back to, and the reason is recorded.
        let failed_before = snapshotter.layers_total("containerd_error");
        let address = containerd.address();
        let _ = sochi.output([
            "pull",
            "--address",
            address.to_str().unwrap(),
            "--snapshotter",
            "sochi",
            &soci,
        ]);
        assert_eq!(
            snapshotter.layers_total("containerd_error"),
            failed_before + 1,
            "{name}: {}",
            snapshotter.log_tail(20)
        );
        let log = snapshotter.log();
        let line = log
            .lines()
            .find(|line| line.contains("cannot provide the layer") && line.contains(key))
            .unwrap_or_else(|| panic!("{name}: no refusal naming {key} in:\n{log}"));
        assert!(line.contains(entry_name), "{line}");
    }
}

/// Neither registered users nor partial trees under `<root>/layers`, and
/// no registered users of span caches.
#[track_caller]
fn assert_no_layer_state(root: &Path, what: &str) {
    let layers: Vec<PathBuf> = fs::read_dir(root.join("layers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(layers.is_empty(), "{what}: left {layers:?}");
    for cache in fs::read_dir(root.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let users: Vec<PathBuf> = fs::read_dir(cache.path().join("users"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(users.is_empty(), "{what}: left {users:?}");
    }
}

/// containerd refuses a layer whose uncompressed digest is not the
/// config's `diff_id` ("wrong diff id calculated on extraction"); so does
/// the unpack, naming both, and nothing of the mount stays.
#[test]
fn wrong_diff_id_is_refused_naming_both_digests() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let mut layout = ImageLayout::new(&work.path().join("image"));
    layout.layer(&[Entry::file("a", b"first")], true);
    layout.layer(&[Entry::file("b", b"second")], true);
    let right = layout.diff_ids()[1].clone();
    let wrong = layout.wrong_diff_id(1);
    layout.finish();
    let image = push_layout_exact(&registry, &work.path().join("image"), "diff-id", "latest");
    let mountpoint = work.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let output = sochi.run_fail(["mount", &image, mountpoint.to_str().unwrap()]);
    assert!(output.stderr.contains("diff_id"), "{}", output.stderr);
    assert!(
        output.stderr.contains(&wrong) && output.stderr.contains(&right),
        "both digests named:\n{}",
        output.stderr
    );
    assert!(!is_mounted(&mountpoint));
    assert_no_layer_state(sochi.root(), "after a wrong diff_id");
}

/// `sochi mount` killed while it unpacks a layer leaves the partial tree
/// and its registration; the next mount on the same root removes both.
#[test]
fn killed_unpack_leaves_nothing_after_the_next_start() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    // debian-python without an index: its 51 MB base layer is unpacked.
    let image = TestImages::get().push_to(&registry, "debian-python");
    let work = tempfile::tempdir().unwrap();
    let mountpoint = work.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mut parent = sochi
        .command(["mount", &image, mountpoint.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let layers = sochi.root().join("layers");
    let deadline = Instant::now() + Duration::from_secs(120);
    let partial = loop {
        let partial = fs::read_dir(&layers)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|layer| fs::read_dir(layer.path()).into_iter().flatten().flatten())
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("fs.tmp-"))
                    && fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
            });
        if let Some(partial) = partial {
            break partial;
        }
        assert!(Instant::now() < deadline, "no unpack seen");
        assert!(
            parent.try_wait().unwrap().is_none(),
            "the mount ended first"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let pid: i32 = partial
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("fs.tmp-")
        .parse()
        .unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let _ = parent.wait();
    let layer_dir = partial.parent().unwrap().to_path_buf();
    assert!(
        partial.exists(),
        "the kill left no partial tree to test with"
    );
    assert!(
        fs::read_dir(layer_dir.join("users")).unwrap().count() > 0,
        "the killed mount's registration"
    );
    assert!(!is_mounted(&mountpoint));

    // The next start, of another image on the same root, sweeps.
    let busybox = TestImages::get().push_to(&registry, "busybox");
    let mount = LazyMount::mount(&sochi, &busybox, &[]);
    assert!(!partial.exists(), "{} left", partial.display());
    assert!(!layer_dir.exists(), "{} left", layer_dir.display());
    mount.unmount();
    assert_no_layer_state(sochi.root(), "after the sweep");
}

/// A convert into a new layout that fails half-way leaves no layout.
#[test]
fn failed_convert_leaves_no_destination() {
    let registry = Registry::plain();
    let proxy = FaultProxy::start(&registry);
    let sochi = Sochi::for_registry(&registry);
    TestImages::get().push_to(&registry, "busybox");
    let manifest = TestImages::get().manifest("busybox");
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    proxy.corrupt_body(&layer);
    let work = tempfile::tempdir().unwrap();
    let destination = work.path().join("out");
    let output = sochi.run_fail([
        "convert",
        "--min-layer-size",
        "0",
        &proxy.reference("busybox:latest"),
        &format!("oci:{}:latest", destination.display()),
    ]);
    assert!(!destination.exists(), "{}", output.stderr);
    let left: Vec<PathBuf> = fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left {left:?}");
    // The same command succeeds once the registry behaves.
    proxy.clear_faults();
    sochi.run([
        "convert",
        "--min-layer-size",
        "0",
        &proxy.reference("busybox:latest"),
        &format!("oci:{}:latest", destination.display()),
    ]);
    assert!(destination.join("index.json").is_file());
}

/// `sochi unmount` knows its daemon by the lock it holds: a copy of the
/// binary under another name is still signalled and waited for, not
/// declared dead and unmounted under.
#[test]
fn unmount_finds_a_renamed_daemon_by_its_lock() {
    let registry = Registry::plain();
    let image = TestImages::get().push_to(&registry, "busybox");
    let bin_dir = tempfile::tempdir().unwrap();
    let renamed = bin_dir.path().join("not-the-usual-name");
    fs::copy(sochi_bin(), &renamed).unwrap();
    let sochi = Sochi::for_registry(&registry).with_bin(&renamed);
    let mount = LazyMount::mount(&sochi, &image, &[]);
    let pid = mount.state().pid;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sochi");
    // The usual binary unmounts it.
    let output = Command::new(sochi_bin())
        .arg("--root")
        .arg(sochi.root())
        .arg("unmount")
        .arg(mount.mountpoint())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("not running"), "declared dead: {stderr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "daemon {pid} still alive");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(mount.leftover_mounts().is_empty());
    assert!(!mount.state_dir().exists());
    drop(mount);
}

/// A layer that starts with a PAX global header, as `git archive` writes
/// it: indexed by `create`, mounted lazily (first-read verification
/// included) and unpacked.
#[test]
fn pax_global_header_layers_index_mount_and_unpack() {
    let registry = Registry::plain();
    let sochi = Sochi::for_registry(&registry);
    let work = tempfile::tempdir().unwrap();
    let mut layout = ImageLayout::new(&work.path().join("git-archive"));
    layout.layer(
        &[
            Entry::global_header(&[("comment", "4b825dc642cb6eb9a060e54bf8d69288fbee4904")]),
            Entry::dir("src"),
            Entry::file("src/main.rs", b"fn main() {}\n"),
        ],
        true,
    );
    layout.finish();
    let plain = push_layout_exact(&registry, &work.path().join("git-archive"), "git", "plain");
    let soci = registry.reference("git:soci");
    sochi.run(["convert", "--min-layer-size", "0", &plain, &soci]);
    for (image, lazy) in [(&soci, true), (&plain, false)] {
        let mount = LazyMount::mount(&sochi, image, &[]);
        assert!(mount.state().layers.iter().all(|l| l.is_lazy() == lazy));
        assert_eq!(
            fs::read(mount.path("src/main.rs")).unwrap(),
            b"fn main() {}\n"
        );
        assert!(!mount.path("pax_global_header").exists());
        mount.unmount();
    }
}
