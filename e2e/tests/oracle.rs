//! The oracle itself: the edgecase image unpacked by real tools has its
//! whiteouts and opaque dir applied, two unpacks compare equal, and each
//! kind of change to one of them is reported.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sochi_e2e::oracle::{
    compare_trees, compare_trees_with, image_layers, unpack_image, unpack_layers, CompareOptions,
};
use sochi_e2e::{run_ok, TestImages};

/// Unpacks the edgecase image into `dest`.
fn unpack_edgecase(dest: &Path) {
    let images = TestImages::get();
    let layout = images.layout("edgecase");
    unpack_image(&layout, &images.manifest_digest("edgecase"), dest);
}

/// Every relative path below `root`.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

fn assert_reported(differences: &[String], needles: &[&str]) {
    assert!(
        differences
            .iter()
            .any(|line| needles.iter().all(|needle| line.contains(needle))),
        "no difference line with {needles:?} in:\n  {}",
        differences.join("\n  ")
    );
}

#[test]
fn edgecase_unpack_applies_whiteouts_and_opaque_dirs() {
    let images = TestImages::get();
    let layers = image_layers(
        &images.layout("edgecase"),
        &images.manifest_digest("edgecase"),
    );
    assert_eq!(layers.len(), 2, "{layers:?}");
    assert!(layers.iter().all(|(_, gzip)| *gzip), "{layers:?}");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    unpack_edgecase(&root);

    // L2's `data/.wh.remove-me.txt` and `.wh.gone` (a directory).
    assert!(!exists(&root.join("data/remove-me.txt")));
    assert!(!exists(&root.join("gone")));
    // L2's `opaque/.wh..wh..opq` hides L1's opaque/a.txt and opaque/sub.
    let mut opaque: Vec<_> = fs::read_dir(root.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opaque.sort();
    assert_eq!(opaque, ["new.txt"]);
    assert_eq!(
        fs::read(root.join("opaque/new.txt")).unwrap(),
        b"only file left in opaque/\n"
    );
    // L2 replaces a file, L1's other files stay.
    assert_eq!(
        fs::read(root.join("data/replace-me.txt")).unwrap(),
        b"L2 version\n"
    );
    assert!(root.join("long").join("g".repeat(120) + ".txt").is_file());
    assert!(root
        .join("long")
        .join("d".repeat(60))
        .join("f".repeat(60) + ".txt")
        .is_file());
    // No whiteout file is extracted, at any depth.
    let paths = all_paths(&root);
    let whiteouts: Vec<_> = paths
        .iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".wh."))
        .collect();
    assert!(whiteouts.is_empty(), "{whiteouts:?}");

    // Metadata made it through tar.
    let meta = |rel: &str| fs::symlink_metadata(root.join(rel)).unwrap();
    assert_eq!(meta(".").mode() & 0o7777, 0o755);
    assert_eq!(meta("bin/suid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("bin/sgid").mode() & 0o7777, 0o2755);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(
        (
            meta("data/owned-by-1000").uid(),
            meta("data/owned-by-1000").gid()
        ),
        (1000, 1000)
    );
    assert_eq!(meta("data/file.txt").mtime(), 1_700_000_000);
    assert_eq!(meta("data/file.txt").ino(), meta("data/hardlink.txt").ino());
    assert_eq!(meta("data/file.txt").nlink(), 2);
    assert!(meta("data/fifo").file_type().is_fifo());
    assert_eq!(
        fs::read_link(root.join("data/abs-link")).unwrap(),
        Path::new("/data/file.txt")
    );
    assert_eq!(
        xattr::get(root.join("data/xattr.txt"), "user.comment").unwrap(),
        Some(b"hello xattr".to_vec())
    );
    assert_eq!(
        xattr::get(root.join("data/xattr.txt"), "user.sochi.test").unwrap(),
        Some("caf\u{e9}".as_bytes().to_vec())
    );
    assert_eq!(meta("data/big-random.bin").len(), 5 * 1024 * 1024 + 123);
}

#[test]
fn oracle_compare_trees_reports_each_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    unpack_edgecase(&a);
    unpack_edgecase(&b);
    let same = compare_trees(&a, &b, &[]);
    assert!(
        same.is_empty(),
        "two unpacks differ:\n  {}",
        same.join("\n  ")
    );
    let all_on = CompareOptions {
        compare_dir_mtime: true,
        ..CompareOptions::default()
    };
    // No layer describes the root, and `.wh.gone` removed a child of it:
    // its mtime is the unpack time. Every other directory's is the layer's.
    let same = compare_trees_with(&a, &b, &[], &all_on);
    assert!(
        same.iter().all(|line| line.starts_with(".: mtime ")),
        "two unpacks differ:\n  {}",
        same.join("\n  ")
    );

    // Mode.
    fs::set_permissions(b.join("data/empty"), fs::Permissions::from_mode(0o600)).unwrap();
    // mtime.
    let file = fs::File::options()
        .write(true)
        .open(b.join("data/big-zeros.bin"))
        .unwrap();
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
    drop(file);
    // An xattr value, and a new one.
    xattr::set(b.join("data/xattr.txt"), "user.comment", b"changed").unwrap();
    xattr::set(b.join("data/file.txt"), "user.added", b"new").unwrap();
    // A deleted file.
    fs::remove_file(b.join("unicode/emoji-\u{1f980}.txt")).unwrap();
    // Contents only: same size, mtime put back, so only diff sees it.
    let replaced = b.join("data/replace-me.txt");
    let mtime = fs::metadata(&replaced).unwrap().modified().unwrap();
    fs::write(&replaced, b"L2 VERSION\n").unwrap();
    let file = fs::File::options().write(true).open(&replaced).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    // A symlink target.
    fs::remove_file(b.join("data/dangling")).unwrap();
    std::os::unix::fs::symlink("does-not-exiST", b.join("data/dangling")).unwrap();
    // An ignored root directory that only the mount has.
    fs::create_dir_all(b.join(".soci-snapshotter/state")).unwrap();

    let differences = compare_trees(&a, &b, &[".soci-snapshotter"]);
    eprintln!("differences:\n  {}", differences.join("\n  "));
    assert_reported(&differences, &["data/empty: mode 100644 != 100600"]);
    assert_reported(
        &differences,
        &["data/big-zeros.bin: mtime 1700000000.000000000 != 1600000000.000000000"],
    );
    assert_reported(
        &differences,
        &["data/xattr.txt: xattr user.comment \"hello xattr\" != \"changed\""],
    );
    assert_reported(
        &differences,
        &["data/file.txt: xattr user.added (absent) != \"new\""],
    );
    assert_reported(
        &differences,
        &["unicode/emoji-\u{1f980}.txt: only in expected (file)"],
    );
    assert_reported(&differences, &["diff: Only in", "emoji-\u{1f980}.txt"]);
    assert_reported(
        &differences,
        &["diff: Files", "data/replace-me.txt", "differ"],
    );
    assert!(
        !differences
            .iter()
            .any(|line| line.starts_with("data/replace-me.txt")),
        "{differences:?}"
    );
    assert_reported(
        &differences,
        &["data/dangling: symlink target \"does-not-exist\" != \"does-not-exiST\""],
    );
    assert_reported(&differences, &["diff: Symbolic links", "data/dangling"]);
    assert!(
        !differences
            .iter()
            .any(|line| line.contains(".soci-snapshotter")),
        "{differences:?}"
    );
    // Directory mtimes only on request (the deletion touched unicode/).
    assert!(
        !differences.iter().any(|line| line.starts_with("unicode: ")),
        "{differences:?}"
    );
    let with_dirs = compare_trees_with(&a, &b, &[".soci-snapshotter"], &all_on);
    assert_reported(&with_dirs, &["unicode: mtime"]);
    // Without the ignore list the extra directory shows on both sides.
    let unignored = compare_trees(&a, &b, &[]);
    assert_reported(
        &unignored,
        &[".soci-snapshotter: only in actual (directory)"],
    );
    assert_reported(&unignored, &["diff: Only in", ".soci-snapshotter"]);
    assert!(
        !unignored
            .iter()
            .any(|line| line.contains(".soci-snapshotter/state")),
        "{unignored:?}"
    );

    // Ignoring every changed path leaves nothing.
    let ignored = compare_trees(
        &a,
        &b,
        &[
            ".soci-snapshotter",
            "data/empty",
            "data/big-zeros.bin",
            "data/xattr.txt",
            "data/file.txt",
            "unicode/emoji-\u{1f980}.txt",
            "data/replace-me.txt",
            "data/dangling",
        ],
    );
    // data/hardlink.txt shares data/file.txt's inode and xattrs.
    assert!(
        ignored
            .iter()
            .all(|line| line.starts_with("data/hardlink.txt: xattr user.added")),
        "{ignored:?}"
    );

    // A broken hard link: both names' nlink and the link group.
    let link = b.join("data/hardlink.txt");
    let copy = b.join("data/hardlink.copy");
    fs::copy(&link, &copy).unwrap();
    fs::remove_file(&link).unwrap();
    fs::rename(&copy, &link).unwrap();
    let differences = compare_trees(&a, &b, &[]);
    assert_reported(&differences, &["data/hardlink.txt: nlink 2 != 1"]);
    assert_reported(
        &differences,
        &["data/file.txt: hard links [data/hardlink.txt] != []"],
    );

    // The cap.
    let capped = compare_trees_with(
        &a,
        &b,
        &[],
        &CompareOptions {
            max_differences: 3,
            ..CompareOptions::default()
        },
    );
    assert_eq!(capped.len(), 4, "{capped:?}");
    assert!(capped[3].starts_with("... ") && capped[3].ends_with(" more"));
}

/// Hand-made layers: a whiteout below an absolute symlink stays inside the
/// root, kinds replace each other like in containerd, an opaque dir keeps
/// what its own layer adds.
#[test]
fn oracle_layers_resolve_inside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let stage = |name: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    };
    let tar = |dir: &Path, out: &Path, members: &[&str]| {
        run_ok(
            Command::new("tar")
                .arg("-cf")
                .arg(out)
                .arg("-C")
                .arg(dir)
                .args(members),
        );
    };
    // A host directory the absolute symlink names; must survive.
    let host = stage("host");
    fs::write(host.join("x"), b"host file\n").unwrap();

    let l1 = stage("l1");
    fs::create_dir_all(l1.join("d")).unwrap();
    fs::write(l1.join("d/x"), b"x\n").unwrap();
    fs::write(l1.join("d/y"), b"y\n").unwrap();
    std::os::unix::fs::symlink(&host, l1.join("hostlink")).unwrap();
    std::os::unix::fs::symlink("/d", l1.join("lnk")).unwrap();
    fs::create_dir_all(l1.join("wasdir/sub")).unwrap();
    fs::write(l1.join("wasdir/sub/f"), b"f\n").unwrap();
    fs::write(l1.join("wasfile"), b"file\n").unwrap();
    fs::create_dir_all(l1.join("o/old")).unwrap();
    let l1_tar = tmp.path().join("l1.tar");
    tar(&l1, &l1_tar, &["."]);

    let l2 = stage("l2");
    fs::create_dir_all(l2.join("lnk")).unwrap();
    fs::write(l2.join("lnk/.wh.x"), b"").unwrap();
    fs::create_dir_all(l2.join("hostlink")).unwrap();
    fs::write(l2.join("hostlink/.wh.x"), b"").unwrap();
    fs::write(l2.join("wasdir"), b"now a file\n").unwrap();
    fs::create_dir_all(l2.join("wasfile")).unwrap();
    fs::write(l2.join("wasfile/inside"), b"inside\n").unwrap();
    fs::create_dir_all(l2.join("o")).unwrap();
    fs::write(l2.join("o/.wh..wh..opq"), b"").unwrap();
    fs::write(l2.join("o/new"), b"new\n").unwrap();
    let l2_tar = tmp.path().join("l2.tar.gz");
    // Only the whiteout members below the symlinks, not their
    // directories (which would replace the symlinks).
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&l2_tar)
            .arg("-C")
            .arg(&l2)
            .args([
                "./lnk/.wh.x",
                "./hostlink/.wh.x",
                "./wasdir",
                "./wasfile",
                "./o",
            ]),
    );

    let root = tmp.path().join("root");
    unpack_layers(&[(l1_tar, false), (l2_tar, true)], &root);
    assert!(!exists(&root.join("d/x")), "lnk/.wh.x resolves to /d/x");
    assert!(root.join("d/y").is_file());
    assert!(fs::symlink_metadata(root.join("lnk")).unwrap().is_symlink());
    assert_eq!(fs::read(host.join("x")).unwrap(), b"host file\n");
    assert_eq!(fs::read(root.join("wasdir")).unwrap(), b"now a file\n");
    assert_eq!(fs::read(root.join("wasfile/inside")).unwrap(), b"inside\n");
    let mut o: Vec<_> = fs::read_dir(root.join("o"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    o.sort();
    assert_eq!(o, ["new"]);
}

/// A real multi-layer image: debian-python's L3 whiteouts a directory
/// (`usr/share/doc/apt`) and a file (`etc/issue.net`) of L1.
#[test]
fn oracle_debian_python_whiteouts() {
    let images = TestImages::get();
    let layout = images.layout("debian-python");
    let digest = images.manifest_digest("debian-python");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    unpack_image(&layout, &digest, &a);
    assert!(!exists(&a.join("usr/share/doc/apt")));
    assert!(!exists(&a.join("etc/issue.net")));
    assert!(exists(&a.join("etc/issue")));
    assert!(a.join("app/main.py").is_file());
    assert_eq!(fs::metadata(a.join("app/data.bin")).unwrap().len(), 8 << 20);
    // The L1-only `base` image still has them.
    let base = images.manifest_digest_of("debian-python", "base");
    unpack_image(&layout, &base, &b);
    assert!(b.join("usr/share/doc/apt").is_dir());
    assert!(b.join("etc/issue.net").is_file());
    let uncapped = CompareOptions {
        max_differences: usize::MAX,
        ..CompareOptions::default()
    };
    let differences = compare_trees_with(&b, &a, &[], &uncapped);
    assert_reported(
        &differences,
        &["usr/share/doc/apt: only in expected (directory)"],
    );
    assert_reported(&differences, &["etc/issue.net: only in expected (file)"]);
    assert_reported(&differences, &["app: only in actual (directory)"]);
}

/// A later layer's entry below an absolute symlink of an earlier one: GNU
/// tar would write on the host, so the oracle refuses before extracting.
#[test]
fn oracle_refuses_entries_through_escaping_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let host = tmp.path().join("host");
    fs::create_dir_all(&host).unwrap();
    let l1 = tmp.path().join("l1");
    fs::create_dir_all(&l1).unwrap();
    std::os::unix::fs::symlink(&host, l1.join("hostlink")).unwrap();
    let l2 = tmp.path().join("l2");
    fs::create_dir_all(l2.join("hostlink")).unwrap();
    fs::write(l2.join("hostlink/escaped"), b"must not land on the host\n").unwrap();
    let (l1_tar, l2_tar) = (tmp.path().join("l1.tar"), tmp.path().join("l2.tar"));
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&l1_tar)
            .arg("-C")
            .arg(&l1)
            .arg("hostlink"),
    );
    run_ok(
        Command::new("tar")
            .arg("-cf")
            .arg(&l2_tar)
            .arg("-C")
            .arg(&l2)
            .arg("hostlink/escaped"),
    );
    let root = tmp.path().join("root");
    let result = std::panic::catch_unwind(|| {
        unpack_layers(&[(l1_tar.clone(), false), (l2_tar.clone(), false)], &root);
    });
    let err = result.unwrap_err();
    let message = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("GNU tar would follow"), "{message}");
    assert!(!exists(&host.join("escaped")));
}
