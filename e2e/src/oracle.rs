//! The correctness oracle for lazily mounted images: the image's root file
//! system unpacked by real tools the way docker/containerd apply layers,
//! and a comparison of two trees that reports every difference.
//!
//! - [`unpack_image`] / [`unpack_layers`] / [`unpack_layer`]: for each layer
//!   in order, python3's `tarfile` lists it; whiteouts (`<dir>/.wh.<name>`)
//!   are `rm -rf`ed, an opaque marker (`<dir>/.wh..wh..opq`) empties
//!   `<dir>` of what earlier layers put there, and an existing path whose
//!   kind conflicts with the entry (a directory replaced by a file, a file
//!   or symlink replaced by a directory) is removed, as containerd does.
//!   Then GNU tar extracts the layer (`--numeric-owner -p --xattrs
//!   --xattrs-include='*' --exclude='.wh.*' --delay-directory-restore`).
//!   Whiteout paths are resolved inside the root (symlinks in parent
//!   directories included, like containerd's `fs.RootPath`), so a whiteout
//!   below an absolute symlink never touches the host; an entry that GNU
//!   tar would write through a symlink leading out of the root panics.
//!   Needs root.
//! - [`compare_trees`] / [`compare_trees_with`]: `diff -r -q
//!   --no-dereference` of both trees plus a metadata walk (kind, full
//!   `st_mode`, uid, gid, size, mtime, symlink target, xattrs, rdev, nlink
//!   and which paths share an inode), as human-readable lines.
//!
//! Everything panics with context on failure: this is test code.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::layouts::{blob_path, read_json};
use crate::process::{describe_output, display_command, run_ok};

/// The whiteout prefix of the OCI image spec.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The opaque-directory marker of the OCI image spec.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The layers of the image manifest `manifest_digest` (`sha256:…`) in the
/// OCI layout `layout`, in order: each blob's path and whether it is
/// gzip-compressed (else a plain tar). Panics on zstd and unknown layer
/// media types.
#[track_caller]
pub fn image_layers(layout: &Path, manifest_digest: &str) -> Vec<(PathBuf, bool)> {
    let manifest_path = blob_path(layout, manifest_digest);
    let manifest = read_json(&manifest_path);
    if let Some(media_type) = manifest["mediaType"].as_str() {
        if media_type.contains("index") || media_type.contains("manifest.list") {
            panic!(
                "{} ({manifest_digest}) is an index ({media_type}), not an image manifest",
                manifest_path.display()
            );
        }
    }
    let Some(layers) = manifest["layers"].as_array() else {
        panic!("{} has no layers array", manifest_path.display());
    };
    layers
        .iter()
        .map(|layer| {
            let digest = layer["digest"]
                .as_str()
                .unwrap_or_else(|| panic!("layer without digest in {}", manifest_path.display()));
            let media_type = layer["mediaType"].as_str().unwrap_or_default();
            let gzip = match media_type {
                "application/vnd.oci.image.layer.v1.tar+gzip"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
                | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => true,
                "application/vnd.oci.image.layer.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.docker.image.rootfs.diff.tar" => false,
                other => panic!(
                    "layer {digest} of {}: unsupported media type {other:?}",
                    manifest_path.display()
                ),
            };
            (blob_path(layout, digest), gzip)
        })
        .collect()
}

/// Unpacks the image `manifest_digest` of the OCI layout `layout` into
/// `dest` (created if missing): [`image_layers`] then [`unpack_layers`].
#[track_caller]
pub fn unpack_image(layout: &Path, manifest_digest: &str, dest: &Path) {
    unpack_layers(&image_layers(layout, manifest_digest), dest);
}

/// Applies `layers` (blob path, gzip?) in order onto `dest`, which is
/// created if missing. A root directory that no layer describes is `0755`,
/// like a fresh snapshot.
#[track_caller]
pub fn unpack_layers(layers: &[(PathBuf, bool)], dest: &Path) {
    if let Err(err) = fs::create_dir_all(dest) {
        panic!("creating {}: {err}", dest.display());
    }
    if let Err(err) = fs::set_permissions(dest, fs::Permissions::from_mode(0o755)) {
        panic!("chmod 0755 {}: {err}", dest.display());
    }
    for (layer, gzip) in layers {
        unpack_layer(layer, *gzip, dest);
    }
}

/// Applies one layer onto `dest`: whiteouts, opaque directories and kind
/// conflicts first, then `tar -x` without the whiteout entries.
#[track_caller]
pub fn unpack_layer(layer: &Path, gzip: bool, dest: &Path) {
    // In archive order, like containerd's apply: a whiteout below a path
    // this layer turns into a directory resolves to that new directory.
    for entry in list_layer(layer) {
        let Some(name) = entry.path.file_name() else {
            continue; // the root itself
        };
        let rel_parent = entry.path.parent().unwrap_or(Path::new(""));
        let parent = resolve_in_root(dest, rel_parent);
        if name == OsStr::new(OPAQUE_MARKER) {
            // Everything earlier layers put in the directory goes; this
            // layer's entries are extracted afterwards.
            if is_real_dir(&parent) {
                let children: Vec<PathBuf> = read_dir_sorted(&parent)
                    .into_iter()
                    .map(|child| parent.join(child))
                    .collect();
                remove_all(&children);
            }
        } else if name.as_bytes().starts_with(b".wh..wh.") {
            // Other aufs metadata (`.wh..wh.plnk`, …): skipped, as by
            // containerd; tar excludes it too.
        } else if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                panic!("{}: bad whiteout {}", layer.display(), entry.path.display());
            }
            let target = parent.join(OsStr::from_bytes(hidden));
            if fs::symlink_metadata(&target).is_ok() {
                remove_all(&[target]);
            }
        } else {
            // containerd removes an existing path unless both are
            // directories. GNU tar replaces files itself but keeps a
            // directory where the layer has a file, and a symlink to a
            // directory where the layer has a directory: those go here.
            let lexical = dest.join(rel_parent);
            // GNU tar follows symlinks in parent directories on the host:
            // fine while they stay inside the root, where containerd
            // resolves them too.
            if parent != lexical && host_resolve(&parent) != host_resolve(&lexical) {
                panic!(
                    "{}: entry {} goes through a symlink that GNU tar would follow \
                     out of {} (to {}); the oracle cannot unpack this layer",
                    layer.display(),
                    entry.path.display(),
                    dest.display(),
                    host_resolve(&lexical).display()
                );
            }
            let target = parent.join(name);
            if let Ok(existing) = fs::symlink_metadata(&target) {
                let is_dir = entry.kind == EntryKind::Dir;
                if existing.file_type().is_dir() != is_dir {
                    remove_all(std::slice::from_ref(&target));
                    if is_dir {
                        // tar sets its metadata; later entries of this
                        // layer resolve into it.
                        fs::create_dir(&target)
                            .unwrap_or_else(|err| panic!("mkdir {}: {err}", target.display()));
                    }
                }
            }
        }
    }

    let mut cmd = Command::new("tar");
    cmd.arg("-x");
    if gzip {
        cmd.arg("-z");
    }
    cmd.args([
        "--numeric-owner",
        "-p",
        "--xattrs",
        "--xattrs-include=*",
        // Directory metadata at the end, like containerd: without it a
        // directory's mtime is lost when its entries do not follow it
        // (`Carp/`, `Carp.pm`, `Carp/Heavy.pm` in umoci's layers).
        "--delay-directory-restore",
        // Unanchored (the default for --exclude): matches a `.wh.*` name
        // at any depth, the opaque marker included.
        "--exclude=.wh.*",
    ])
    .arg("-C")
    .arg(dest)
    .arg("-f")
    .arg(layer);
    run_ok(&mut cmd);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    Other,
}

#[derive(Debug)]
struct LayerEntry {
    /// Relative, normalised (no `./`, no leading or trailing `/`).
    path: PathBuf,
    kind: EntryKind,
}

/// Lists a layer (gzip or plain) with python3's tarfile: kind and name of
/// every entry, NUL-separated, so any name survives.
#[track_caller]
fn list_layer(layer: &Path) -> Vec<LayerEntry> {
    const SCRIPT: &str = r#"
import os, sys, tarfile
out = sys.stdout.buffer
with tarfile.open(sys.argv[1], "r|*") as tar:
    for member in tar:
        out.write(b"d" if member.isdir() else b"o")
        out.write(b"\0" + os.fsencode(member.name) + b"\0")
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).arg(layer);
    let output = run_ok(&mut cmd);
    let mut fields = output.stdout.split(|&b| b == 0);
    let mut entries = Vec::new();
    while let Some(kind) = fields.next() {
        if kind.is_empty() {
            break; // the trailing NUL
        }
        let Some(name) = fields.next() else {
            panic!("truncated listing{}", describe_output(&cmd, &output));
        };
        let kind = match kind {
            b"d" => EntryKind::Dir,
            b"o" => EntryKind::Other,
            other => panic!(
                "bad kind {:?} in listing{}",
                String::from_utf8_lossy(other),
                describe_output(&cmd, &output)
            ),
        };
        entries.push(LayerEntry {
            path: normalize_entry_name(layer, name),
            kind,
        });
    }
    entries
}

/// `./a//b/` → `a/b`; `/a` → `a`; `..` panics.
#[track_caller]
fn normalize_entry_name(layer: &Path, name: &[u8]) -> PathBuf {
    let mut path = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(name)).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => panic!(
                "{}: entry {:?} leaves the root",
                layer.display(),
                String::from_utf8_lossy(name)
            ),
        }
    }
    path
}

/// `root/rel` with symlinks in `rel`'s components resolved inside `root`
/// (absolute targets are relative to `root`, `..` stops at `root`), like
/// containerd's `fs.RootPath`. Missing components are taken as they are.
#[track_caller]
fn resolve_in_root(root: &Path, rel: &Path) -> PathBuf {
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, rel, false);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    panic!(
                        "too many symlinks resolving {} in {}",
                        rel.display(),
                        root.display()
                    );
                }
                let target = fs::read_link(&candidate)
                    .unwrap_or_else(|err| panic!("readlink {}: {err}", candidate.display()));
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target, true);
            }
            _ => resolved.push(part),
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    path
}

/// `path` with its longest existing ancestor canonicalized (symlinks
/// followed on the host) and the missing rest appended.
fn host_resolve(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut existing = path;
    loop {
        if let Ok(canonical) = fs::canonicalize(existing) {
            let mut resolved = canonical;
            resolved.extend(rest.iter().rev());
            return resolved;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Puts `path`'s components (`..` kept, `.` and `/` dropped) at the front
/// of `queue`, or at the back when `front` is false.
fn push_components(queue: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    if front {
        for part in parts.into_iter().rev() {
            queue.push_front(part);
        }
    } else {
        queue.extend(parts);
    }
}

/// `rm -rf -- PATHS…`, in chunks.
#[track_caller]
fn remove_all(paths: &[PathBuf]) {
    for chunk in paths.chunks(500) {
        run_ok(Command::new("rm").arg("-rf").arg("--").args(chunk));
    }
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

#[track_caller]
fn read_dir_sorted(dir: &Path) -> Vec<OsString> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()));
    let mut names: Vec<OsString> = entries
        .map(|entry| {
            entry
                .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
                .file_name()
        })
        .collect();
    names.sort();
    names
}

// --- comparison --------------------------------------------------------------

/// What [`compare_trees_with`] compares.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Report directory mtime differences. Off by default: a layer that
    /// removes (whiteout) or replaces a file in a directory it has no entry
    /// for leaves that directory with the unpack time, in containerd too
    /// (debian-python's L2 replaces `var/lib/dpkg/triggers/Lock`), and so
    /// does the root when no layer has a `./` entry.
    pub compare_dir_mtime: bool,
    /// Run `diff -r -q --no-dereference` for file contents (on by default).
    pub content: bool,
    /// At most this many lines, then `... N more` (default 200).
    pub max_differences: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            compare_dir_mtime: false,
            content: true,
            max_differences: 200,
        }
    }
}

/// The differences between the trees `expected` and `actual` (empty when
/// equal) with [`CompareOptions::default`]. `ignore` holds relative paths
/// (e.g. `.soci-snapshotter`) skipped with their subtrees on both sides.
#[track_caller]
pub fn compare_trees(expected: &Path, actual: &Path, ignore: &[&str]) -> Vec<String> {
    compare_trees_with(expected, actual, ignore, &CompareOptions::default())
}

/// Panics with every difference when [`compare_trees`] finds any.
#[track_caller]
pub fn assert_trees_equal(expected: &Path, actual: &Path, ignore: &[&str]) {
    let differences = compare_trees(expected, actual, ignore);
    if !differences.is_empty() {
        panic!(
            "{} differs from {} ({} lines):\n  {}",
            actual.display(),
            expected.display(),
            differences.len(),
            differences.join("\n  ")
        );
    }
}

/// [`compare_trees`] with options. Lines from diff start with `diff:`,
/// the others with the relative path (`.` is the root).
#[track_caller]
pub fn compare_trees_with(
    expected: &Path,
    actual: &Path,
    ignore: &[&str],
    options: &CompareOptions,
) -> Vec<String> {
    let ignore: BTreeSet<PathBuf> = ignore
        .iter()
        .map(|path| normalize_entry_name(Path::new("ignore list"), path.as_bytes()))
        .filter(|path| !path.as_os_str().is_empty())
        .collect();
    let mut differences = Vec::new();
    if options.content {
        differences.extend(run_diff(expected, actual, &ignore));
    }
    differences.extend(compare_metadata(expected, actual, &ignore, options));
    if differences.len() > options.max_differences {
        let more = differences.len() - options.max_differences;
        differences.truncate(options.max_differences);
        differences.push(format!("... {more} more"));
    }
    differences
}

/// `diff -r -q --no-dereference`: exit 1 → its lines, minus the lines on
/// ignored paths and diff's "is a fifo while … is a fifo" notes on special
/// files of the same kind (the metadata walk compares those).
#[track_caller]
fn run_diff(expected: &Path, actual: &Path, ignore: &BTreeSet<PathBuf>) -> Vec<String> {
    let mut cmd = Command::new("diff");
    cmd.args(["-r", "-q", "--no-dereference", "--"])
        .arg(expected)
        .arg(actual);
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", display_command(&cmd)));
    match output.status.code() {
        Some(0) => return Vec::new(),
        Some(1) => {}
        _ => panic!("diff failed{}", describe_output(&cmd, &output)),
    }
    let roots = [expected.to_path_buf(), actual.to_path_buf()];
    let ignored_prefixes: Vec<Vec<u8>> = roots
        .iter()
        .flat_map(|root| {
            ignore
                .iter()
                .map(move |rel| root.join(rel).into_os_string().into_vec())
        })
        .collect();
    let mut lines = Vec::new();
    for line in output.stdout.split(|&b| b == b'\n') {
        if line.is_empty() || diff_line_is_ignored(line, &ignored_prefixes) {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if is_same_kind_special_note(&text) {
            continue;
        }
        lines.push(format!("diff: {text}"));
    }
    lines
}

/// Whether a diff line names an ignored path: `PREFIX` followed by a
/// separator, or `Only in DIR: NAME` with `DIR/NAME` under `PREFIX`.
fn diff_line_is_ignored(line: &[u8], prefixes: &[Vec<u8>]) -> bool {
    let only_in = line.strip_prefix(b"Only in ").and_then(|rest| {
        let at = rest.windows(2).position(|w| w == b": ")?;
        let mut joined = rest[..at].to_vec();
        joined.push(b'/');
        joined.extend_from_slice(&rest[at + 2..]);
        Some(joined)
    });
    prefixes.iter().any(|prefix| {
        let names = |text: &[u8]| {
            text.windows(prefix.len()).enumerate().any(|(at, window)| {
                window == prefix.as_slice()
                    && matches!(text.get(at + prefix.len()), None | Some(b'/' | b' ' | b':'))
            })
        };
        names(line) || only_in.as_deref().is_some_and(names)
    })
}

fn is_same_kind_special_note(line: &str) -> bool {
    [
        "fifo",
        "socket",
        "character special file",
        "block special file",
    ]
    .iter()
    .any(|kind| {
        line.starts_with("File ")
            && line.ends_with(&format!(" is a {kind}"))
            && line.contains(&format!(" is a {kind} while file "))
    })
}

/// What the metadata walk records of one path.
#[derive(Debug)]
struct Node {
    meta: Metadata,
    link_target: Option<PathBuf>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

#[track_caller]
fn compare_metadata(
    expected: &Path,
    actual: &Path,
    ignore: &BTreeSet<PathBuf>,
    options: &CompareOptions,
) -> Vec<String> {
    let left = walk(expected, ignore);
    let right = walk(actual, ignore);
    let mut differences = Vec::new();
    let mut missing_dir: Option<PathBuf> = None;
    let all: BTreeSet<&PathBuf> = left.keys().chain(right.keys()).collect();
    for rel in all {
        let shown = show(rel);
        let (a, b) = match (left.get(rel), right.get(rel)) {
            (Some(a), Some(b)) => (a, b),
            (one, _) => {
                if missing_dir.as_ref().is_some_and(|dir| rel.starts_with(dir)) {
                    continue; // inside a directory already reported
                }
                let (node, side) = match one {
                    Some(node) => (node, "expected"),
                    None => (&right[rel], "actual"),
                };
                differences.push(format!(
                    "{shown}: only in {side} ({})",
                    kind_name(&node.meta)
                ));
                if node.meta.is_dir() {
                    missing_dir = Some(rel.clone());
                }
                continue;
            }
        };
        let (ma, mb) = (&a.meta, &b.meta);
        if kind_name(ma) != kind_name(mb) {
            differences.push(format!(
                "{shown}: kind {} != {}",
                kind_name(ma),
                kind_name(mb)
            ));
            continue;
        }
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                differences.push(format!("{shown}: {name} {x} != {y}"));
            }
        };
        field(
            "mode",
            format!("{:o}", ma.mode()),
            format!("{:o}", mb.mode()),
        );
        field("uid", ma.uid().to_string(), mb.uid().to_string());
        field("gid", ma.gid().to_string(), mb.gid().to_string());
        let file_type = ma.file_type();
        if file_type.is_file() || file_type.is_symlink() {
            field("size", ma.size().to_string(), mb.size().to_string());
        }
        if !ma.is_dir() || options.compare_dir_mtime {
            field(
                "mtime",
                format!("{}.{:09}", ma.mtime(), ma.mtime_nsec()),
                format!("{}.{:09}", mb.mtime(), mb.mtime_nsec()),
            );
        }
        if !ma.is_dir() {
            field("nlink", ma.nlink().to_string(), mb.nlink().to_string());
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            field("rdev", show_rdev(ma.rdev()), show_rdev(mb.rdev()));
        }
        if a.link_target != b.link_target {
            field(
                "symlink target",
                show_target(a.link_target.as_deref()),
                show_target(b.link_target.as_deref()),
            );
        }
        let names: BTreeSet<&OsString> = a.xattrs.keys().chain(b.xattrs.keys()).collect();
        for name in names {
            let (x, y) = (a.xattrs.get(name), b.xattrs.get(name));
            if x != y {
                field(
                    &format!("xattr {}", name.to_string_lossy()),
                    show_xattr(x),
                    show_xattr(y),
                );
            }
        }
    }
    differences.extend(compare_hardlinks(&left, &right));
    differences
}

/// Paths that share an inode on one side must share it on the other.
fn compare_hardlinks(
    left: &BTreeMap<PathBuf, Node>,
    right: &BTreeMap<PathBuf, Node>,
) -> Vec<String> {
    /// Per path with nlink > 1: the other paths on its inode that exist
    /// on both sides, sorted.
    fn groups(
        tree: &BTreeMap<PathBuf, Node>,
        both: &dyn Fn(&Path) -> bool,
    ) -> HashMap<PathBuf, Vec<PathBuf>> {
        let mut by_inode: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        for (rel, node) in tree {
            if !node.meta.is_dir() && node.meta.nlink() > 1 && both(rel) {
                by_inode
                    .entry((node.meta.dev(), node.meta.ino()))
                    .or_default()
                    .push(rel.clone());
            }
        }
        let mut groups = HashMap::new();
        for members in by_inode.into_values() {
            for rel in &members {
                let mut others: Vec<PathBuf> = members
                    .iter()
                    .filter(|other| *other != rel)
                    .cloned()
                    .collect();
                others.sort();
                groups.insert(rel.clone(), others);
            }
        }
        groups
    }
    let both = |rel: &Path| left.contains_key(rel) && right.contains_key(rel);
    let (gl, gr) = (groups(left, &both), groups(right, &both));
    let mut differences = Vec::new();
    let mut reported: BTreeSet<PathBuf> = BTreeSet::new();
    let none = Vec::new();
    for (rel, node) in left {
        if node.meta.is_dir() || !both(rel) || reported.contains(rel) {
            continue;
        }
        let x = gl.get(rel).unwrap_or(&none);
        let y = gr.get(rel).unwrap_or(&none);
        if x != y {
            reported.extend(x.iter().cloned());
            reported.extend(y.iter().cloned());
            let list = |paths: &[PathBuf]| {
                let shown: Vec<String> = paths.iter().map(|p| show(p)).collect();
                format!("[{}]", shown.join(", "))
            };
            differences.push(format!(
                "{}: hard links {} != {}",
                show(rel),
                list(x),
                list(y)
            ));
        }
    }
    differences
}

/// Every path below `root` (the root itself as ``) that is not ignored.
#[track_caller]
fn walk(root: &Path, ignore: &BTreeSet<PathBuf>) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        if ignore.contains(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let node = read_node(&path);
        if node.meta.is_dir() {
            for name in read_dir_sorted(&path) {
                stack.push(rel.join(name));
            }
        }
        nodes.insert(rel, node);
    }
    nodes
}

#[track_caller]
fn read_node(path: &Path) -> Node {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|err| panic!("lstat {}: {err}", path.display()));
    let link_target = meta.file_type().is_symlink().then(|| {
        fs::read_link(path).unwrap_or_else(|err| panic!("readlink {}: {err}", path.display()))
    });
    // xattr::list and xattr::get do not follow symlinks (llistxattr,
    // lgetxattr).
    let names =
        xattr::list(path).unwrap_or_else(|err| panic!("listxattr {}: {err}", path.display()));
    let mut xattrs = BTreeMap::new();
    for name in names {
        if name == "security.selinux" {
            continue;
        }
        let value = xattr::get(path, &name)
            .unwrap_or_else(|err| panic!("getxattr {} {name:?}: {err}", path.display()))
            .unwrap_or_default();
        xattrs.insert(name, value);
    }
    Node {
        meta,
        link_target,
        xattrs,
    }
}

fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".to_string()
    } else {
        rel.to_string_lossy().into_owned()
    }
}

fn show_target(target: Option<&Path>) -> String {
    match target {
        Some(target) => format!("{:?}", target.to_string_lossy()),
        None => "(none)".to_string(),
    }
}

fn show_rdev(rdev: u64) -> String {
    // glibc's major/minor encoding.
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    format!("{major}:{minor}")
}

fn show_xattr(value: Option<&Vec<u8>>) -> String {
    match value {
        None => "(absent)".to_string(),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}
