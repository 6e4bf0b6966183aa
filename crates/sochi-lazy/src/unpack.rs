//! Unpacking a whole layer into a directory overlayfs can stack as a lowerdir.
//!
//! A layer without a zTOC cannot be mounted lazily, so it is fetched whole and
//! unpacked the way containerd's overlayfs snapshotter applies a layer to an
//! empty directory: OCI whiteouts become overlay whiteouts (0/0 character
//! devices) and `.wh..wh..opq` becomes the `trusted.overlay.opaque` xattr.
//! See the OCI image spec, layer.md, "Whiteouts".
//!
//! We create every file ourselves instead of calling `tar::Entry::unpack_in`,
//! because `unpack_in` silently skips names with `..` (a hostile layer should
//! fail, not half-apply), resolves parents with `canonicalize` (so it follows
//! symlinks an earlier entry created, as long as they land inside `dest`), and
//! knows nothing of whiteouts or of a file replacing a directory.
//!
//! Invariant: every path we touch is `dest` joined with a name made of plain
//! components, and each parent component was checked with `lstat` to be a real
//! directory. Nothing else writes into `dest` while we unpack, so the check
//! holds until we use the path.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::{Archive, Entry, EntryType};

/// What [`unpack_layer`] wrote, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries applied, whiteouts and opaque markers included.
    pub entries: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
    /// `.wh.<name>` entries, written as 0/0 character devices.
    pub whiteouts: u64,
    /// `.wh..wh..opq` entries, written as the opaque xattr on their directory.
    pub opaque_dirs: u64,
}

/// How the layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// `...tar+gzip`; may hold several gzip members.
    Gzip,
    /// `...tar`.
    Uncompressed,
    /// `...tar+zstd`: not supported yet, gives [`UnpackError::Unsupported`].
    Zstd,
}

/// Why unpacking a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The (decompressed) stream is not a tar: bad gzip, bad header checksum, EOF
    /// inside a header. `offset` is the uncompressed offset reached so far.
    #[error("layer: corrupt stream at uncompressed offset {offset}")]
    Corrupt {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// One entry's header fields or data are malformed or cut short.
    #[error("layer: entry {name:?} at offset {offset} is corrupt")]
    CorruptEntry {
        name: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The entry is well-formed but unsafe or meaningless to apply.
    #[error("layer: entry {name:?} at offset {offset} refused: {reason}")]
    Refused {
        name: PathBuf,
        offset: u64,
        reason: Refusal,
    },
    /// A layer format we do not unpack.
    #[error("layer: {what} is not supported")]
    Unsupported { what: &'static str },
    /// Writing into the destination failed.
    #[error("layer: entry {name:?} at offset {offset}: {op} {path:?}")]
    Io {
        name: PathBuf,
        offset: u64,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why an entry was refused. Paths are relative to the destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("its name escapes the destination via `..`")]
    EscapesDestination,
    #[error("it names the destination itself")]
    NamesRoot,
    #[error("its path goes through symlink {0:?}")]
    ThroughSymlink(PathBuf),
    #[error("its path goes through {0:?}, which is not a directory")]
    NotADirectory(PathBuf),
    #[error("whiteout {0:?} names no file")]
    BadWhiteout(OsString),
    #[error("hardlink target escapes the destination")]
    LinkEscapes,
    #[error("hardlink target {0:?} is not an earlier file of this layer")]
    LinkTargetMissing(PathBuf),
    #[error("link has no target")]
    NoLinkTarget,
    #[error("unsupported entry type {0:#04x}")]
    UnsupportedType(u8),
}

/// Unpacks one layer blob into `dest`, which must exist and be empty.
///
/// The whole stream is read, even past the tar's end-of-archive marker, so the
/// gzip trailer's CRC is checked and a caller hashing `blob` sees every byte.
pub fn unpack_layer(
    blob: impl Read,
    compression: LayerCompression,
    dest: &Path,
) -> Result<UnpackStats, UnpackError> {
    match compression {
        LayerCompression::Gzip => unpack_tar(MultiGzDecoder::new(blob), dest),
        LayerCompression::Uncompressed => unpack_tar(blob, dest),
        LayerCompression::Zstd => Err(UnpackError::Unsupported {
            what: "zstd compression",
        }),
    }
}

fn unpack_tar<R: Read>(tar: R, dest: &Path) -> Result<UnpackStats, UnpackError> {
    let mut archive = Archive::new(tar);
    let mut unpacker = Unpacker {
        dest,
        dirs: BTreeMap::new(),
        stats: UnpackStats::default(),
    };
    let mut offset = 0;
    let corrupt = |offset| move |source| UnpackError::Corrupt { offset, source };
    for entry in archive.entries().map_err(corrupt(0))? {
        let mut entry = entry.map_err(corrupt(offset))?;
        offset = entry
            .raw_file_position()
            .saturating_add(entry.size().next_multiple_of(512));
        unpacker.apply(&mut entry)?;
    }
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt(offset))?;
    unpacker.finish_dirs()?;
    tracing::debug!(dest = %dest.display(), stats = ?unpacker.stats, "unpacked layer");
    Ok(unpacker.stats)
}

/// Where an entry sits in the layer, to name it in errors.
#[derive(Debug, Clone)]
struct At {
    name: PathBuf,
    offset: u64,
}

impl At {
    fn refuse(&self, reason: Refusal) -> UnpackError {
        UnpackError::Refused {
            name: self.name.clone(),
            offset: self.offset,
            reason,
        }
    }
    fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::CorruptEntry {
            name: self.name.clone(),
            offset: self.offset,
            source,
        }
    }
    fn io<'a, E: Into<io::Error>>(
        &'a self,
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(E) -> UnpackError + 'a {
        move |source| UnpackError::Io {
            name: self.name.clone(),
            offset: self.offset,
            op,
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// Header fields every kind of entry carries; ids are numeric, never names.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct Unpacker<'d> {
    dest: &'d Path,
    /// Directory mode and times are applied last: writing a child changes its
    /// parent's mtime, and a read-only mode would block non-root unpacks.
    dirs: BTreeMap<PathBuf, (At, Meta)>,
    stats: UnpackStats,
}

impl Unpacker<'_> {
    fn apply<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(()); // only defaults for tar tools; nothing to write
        }
        let offset = entry.raw_header_position();
        let name = entry.path().map_err(|source| UnpackError::CorruptEntry {
            name: PathBuf::new(),
            offset,
            source,
        })?;
        let at = At {
            name: name.into_owned(),
            offset,
        };
        let rel = clean(&at.name).ok_or_else(|| at.refuse(Refusal::EscapesDestination))?;
        let meta = read_meta(entry, &at)?;
        self.stats.entries += 1;
        let (Some(base), Some(parent_rel)) = (rel.file_name(), rel.parent()) else {
            // Layers often start with "./"; like containerd, leave dest's own metadata alone.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(at.refuse(Refusal::NamesRoot))
            };
        };
        let parent = self.walk(parent_rel, true, &at)?.unwrap_or_default();
        if base == ".wh..wh..opq" {
            xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(at.io("set opaque xattr on", &parent))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if let Some(hidden) = base.as_bytes().strip_prefix(b".wh.") {
            let hidden = OsStr::from_bytes(hidden);
            if matches!(hidden.as_bytes(), b"" | b"." | b"..") {
                return Err(at.refuse(Refusal::BadWhiteout(base.to_os_string())));
            }
            let path = parent.join(hidden);
            self.clear(&path, &parent_rel.join(hidden), false, &at)?;
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(at.io("create whiteout", &path))?;
            lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let path = parent.join(base);
        let is_dir = self.clear(&path, &rel, kind.is_dir(), &at)?;
        match kind {
            EntryType::Directory => {
                if !is_dir {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(at.io("mkdir", &path))?;
                }
                lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
                set_xattrs(&path, &meta, &at)?;
                self.dirs.insert(rel, (at, meta));
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &path, &at)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(|e| at.corrupt(e))?;
                let target = target.ok_or_else(|| at.refuse(Refusal::NoLinkTarget))?;
                symlink(&target, &path).map_err(at.io("create symlink", &path))?;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(|e| at.corrupt(e))?;
                let target = target.ok_or_else(|| at.refuse(Refusal::NoLinkTarget))?;
                let target_rel = clean(&target).ok_or_else(|| at.refuse(Refusal::LinkEscapes))?;
                let missing = || at.refuse(Refusal::LinkTargetMissing(target_rel.clone()));
                let (Some(target_base), Some(target_parent)) =
                    (target_rel.file_name(), target_rel.parent())
                else {
                    return Err(missing());
                };
                let target_dir = self.walk(target_parent, false, &at)?.ok_or_else(missing)?;
                let source = target_dir.join(target_base);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(missing()),
                }
                // The inode already carries the target entry's metadata.
                return fs::hard_link(&source, &path).map_err(at.io("hardlink", &path));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    EntryType::Char => (SFlag::S_IFCHR, device(entry.header(), &at)?),
                    _ => (SFlag::S_IFBLK, device(entry.header(), &at)?),
                };
                mknod(&path, sflag, Mode::empty(), dev).map_err(at.io("mknod", &path))?;
            }
            other => return Err(at.refuse(Refusal::UnsupportedType(other.as_byte()))),
        }
        // chown before chmod: chown clears setuid/setgid. xattrs after both:
        // chown also drops security.capability.
        lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
        if !kind.is_symlink() {
            fs::set_permissions(&path, Permissions::from_mode(meta.mode))
                .map_err(at.io("chmod", &path))?;
        }
        set_xattrs(&path, &meta, &at)?;
        set_times(&path, meta.mtime, &at)
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        path: &Path,
        at: &At,
    ) -> Result<(), UnpackError> {
        // create_new is O_EXCL: it never opens through a symlink at `path`.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(at.io("create", path))?;
        let mut buf = vec![0; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(at.corrupt(e)),
            };
            file.write_all(buf.get(..n).unwrap_or_default())
                .map_err(at.io("write", path))?;
            written += n as u64;
        }
        self.stats.bytes += written;
        // The tar crate ends an entry's data quietly at EOF; only the count tells.
        let size = entry.size();
        if !entry.header().entry_type().is_gnu_sparse() && written != size {
            let msg = format!("file data cut short: {written} of {size} bytes");
            return Err(at.corrupt(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
        }
        Ok(())
    }

    /// Walks `rel` (a directory) below `dest`, refusing symlinks and
    /// non-directories on the way. A missing directory is created 0755 when
    /// `create`, else the walk gives `None`.
    fn walk(&self, rel: &Path, create: bool, at: &At) -> Result<Option<PathBuf>, UnpackError> {
        let mut path = self.dest.to_path_buf();
        for (depth, component) in rel.iter().enumerate() {
            path.push(component);
            let prefix = || rel.iter().take(depth + 1).collect::<PathBuf>();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(at.refuse(Refusal::ThroughSymlink(prefix())))
                }
                Ok(_) => return Err(at.refuse(Refusal::NotADirectory(prefix()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&path).map_err(at.io("mkdir", &path))?;
                    fs::set_permissions(&path, Permissions::from_mode(0o755))
                        .map_err(at.io("chmod", &path))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(at.io("stat", &path)(e)),
            }
        }
        Ok(Some(path))
    }

    /// Makes room at `path` for a new entry: a later entry replaces an earlier
    /// one, except that a directory over a directory merges. Returns whether
    /// a directory was kept.
    fn clear(
        &mut self,
        path: &Path,
        rel: &Path,
        keep_dir: bool,
        at: &At,
    ) -> Result<bool, UnpackError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(at.io("stat", path)(e)),
            Ok(m) if m.is_dir() && keep_dir => Ok(true),
            Ok(m) if m.is_dir() => {
                // remove_dir_all does not follow symlinks inside the tree.
                fs::remove_dir_all(path).map_err(at.io("remove", path))?;
                self.dirs.retain(|dir, _| !dir.starts_with(rel));
                Ok(false)
            }
            Ok(_) => fs::remove_file(path)
                .map(|()| false)
                .map_err(at.io("remove", path)),
        }
    }

    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        for (rel, (at, meta)) in &self.dirs {
            let path = self.dest.join(rel);
            if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                continue; // replaced by a later entry after a parent was removed
            }
            fs::set_permissions(&path, Permissions::from_mode(meta.mode))
                .map_err(at.io("chmod", &path))?;
            set_times(&path, meta.mtime, at)?;
        }
        Ok(())
    }
}

/// Sets atime and mtime alike (the header has no atime), on the link itself
/// for symlinks.
fn set_times(path: &Path, time: TimeSpec, at: &At) -> Result<(), UnpackError> {
    utimensat(None, path, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(at.io("set times on", path))
}

/// Resolves `.` and `..` lexically and drops leading `/`, giving plain
/// components only; `None` if `..` climbs above the root.
fn clean(name: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

fn read_meta<R: Read>(entry: &mut Entry<'_, R>, at: &At) -> Result<Meta, UnpackError> {
    let header = entry.header();
    // The tar crate already applied PAX uid/gid overrides to the header.
    let id = |v: io::Result<u64>| {
        let v = v.map_err(|e| at.corrupt(e))?;
        u32::try_from(v).map_err(|e| at.corrupt(io::Error::new(io::ErrorKind::InvalidData, e)))
    };
    let (uid, gid) = (id(header.uid())?, id(header.gid())?);
    let mode = header.mode().map_err(|e| at.corrupt(e))? & 0o7777;
    let seconds = header.mtime().map_err(|e| at.corrupt(e))?;
    let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| at.corrupt(e))? {
        for record in pax {
            let record = record.map_err(|e| at.corrupt(e))?;
            let key = record.key_bytes();
            if key == b"mtime" {
                mtime = std::str::from_utf8(record.value_bytes())
                    .ok()
                    .and_then(parse_pax_time)
                    .unwrap_or(mtime);
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    record.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// Only device entries need the device fields; writers may leave them blank
/// on others.
fn device(header: &tar::Header, at: &At) -> Result<u64, UnpackError> {
    let major = header.device_major().map_err(|e| at.corrupt(e))?;
    let minor = header.device_minor().map_err(|e| at.corrupt(e))?;
    Ok(makedev(
        major.unwrap_or(0).into(),
        minor.unwrap_or(0).into(),
    ))
}

/// Parses a PAX time ("1700000000.25", "-1.5"), which carries the sub-second
/// part the ustar header drops.
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let mut seconds: i64 = whole.parse().ok()?;
    let digits = fraction.get(..fraction.len().min(9))?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = format!("{digits:0<9}").parse().ok()?;
    if whole.starts_with('-') && nanos > 0 {
        seconds = seconds.checked_sub(1)?;
        nanos = 1_000_000_000 - nanos;
    }
    Some(TimeSpec::new(seconds, nanos))
}

/// Applies `SCHILY.xattr.*` records with lsetxattr, as containerd does.
/// `trusted.overlay.*` is dropped: in a lowerdir overlayfs would act on it
/// (redirects, origins, metacopy), and only this layer's whiteouts may speak
/// to overlayfs. Unsupported names are skipped with a warning, like containerd.
fn set_xattrs(path: &Path, meta: &Meta, at: &At) -> Result<(), UnpackError> {
    for (name, value) in &meta.xattrs {
        if name.as_bytes().starts_with(b"trusted.overlay.") {
            tracing::warn!(entry = %at.name.display(), xattr = ?name, "dropped overlay xattr");
            continue;
        }
        match xattr::set(path, name, value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::EOPNOTSUPP as i32) => {
                tracing::warn!(entry = %at.name.display(), xattr = ?name, "xattr not supported here");
            }
            Err(e) => return Err(at.io("set xattr on", path)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{Builder, Header};

    /// Appends one entry, writing name and link bytes raw so tests can build
    /// the hostile names `Header::set_path` refuses.
    fn add(b: &mut Builder<Vec<u8>>, kind: EntryType, name: &str, link: &str, data: &[u8]) {
        add_with(b, kind, name, link, data, |_| {});
    }

    fn add_with(
        b: &mut Builder<Vec<u8>>,
        kind: EntryType,
        name: &str,
        link: &str,
        data: &[u8],
        edit: impl FnOnce(&mut Header),
    ) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        edit(&mut h);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// A layer of empty entries: (type, name, link name).
    fn layer(entries: &[(EntryType, &str, &str)]) -> Vec<u8> {
        let mut b = Builder::new(Vec::new());
        for &(kind, name, link) in entries {
            add(&mut b, kind, name, link, b"");
        }
        b.into_inner().unwrap()
    }

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(tar, LayerCompression::Uncompressed, dir.path());
        (dir, result)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn refusal(result: Result<UnpackStats, UnpackError>) -> Refusal {
        match result {
            Err(UnpackError::Refused { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn gzip_layer_unpacks_every_kind_of_entry() {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Directory, "./", "", b"");
        add_with(&mut b, EntryType::Directory, "etc/", "", b"", |h| {
            h.set_mode(0o1750)
        });
        b.append_pax_extensions([
            ("SCHILY.xattr.user.color", &b"blue"[..]),
            ("mtime", b"1234.5"),
        ])
        .unwrap();
        add_with(&mut b, EntryType::Regular, "/etc/app", "", b"#!bin", |h| {
            h.set_mode(0o4755);
            h.set_uid(1000);
            h.set_gid(2000);
        });
        add_with(&mut b, EntryType::Symlink, "./etc/link", "app", b"", |h| {
            h.set_uid(7);
            h.set_mtime(1500);
        });
        add(&mut b, EntryType::Link, "etc/hard", "etc/app", b"");
        add(&mut b, EntryType::Fifo, "run/fifo", "", b"");
        add_with(&mut b, EntryType::Char, "dev/null", "", b"", |h| {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        });
        add_with(&mut b, EntryType::Regular, "etc/.wh.gone", "", b"", |h| {
            h.set_uid(5)
        });
        add(&mut b, EntryType::Regular, "opq/.wh..wh..opq", "", b"");
        let layer = gzip(&b.into_inner().unwrap());

        let dir = tempfile::tempdir().unwrap();
        let stats = unpack_layer(&layer[..], LayerCompression::Gzip, dir.path()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 9,
                bytes: 5,
                whiteouts: 1,
                opaque_dirs: 1
            }
        );
        let root = dir.path();
        let etc = fs::symlink_metadata(root.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.mtime()), (0o1750, 1_000_000));
        let app = fs::symlink_metadata(root.join("etc/app")).unwrap();
        assert_eq!(
            (app.mode() & 0o7777, app.uid(), app.gid()),
            (0o4755, 1000, 2000)
        );
        assert_eq!(
            (app.mtime(), app.mtime_nsec(), app.nlink()),
            (1234, 500_000_000, 2)
        );
        assert_eq!(
            xattr::get(root.join("etc/app"), "user.color")
                .unwrap()
                .unwrap(),
            b"blue"
        );
        assert_eq!(fs::read(root.join("etc/hard")).unwrap(), b"#!bin");
        let link = fs::symlink_metadata(root.join("etc/link")).unwrap();
        assert!(link.file_type().is_symlink());
        assert_eq!((link.uid(), link.mtime()), (7, 1500));
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("app")
        );
        assert!(fs::symlink_metadata(root.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        let gone = fs::symlink_metadata(root.join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!((gone.rdev(), gone.mode() & 0o7777, gone.uid()), (0, 0, 5));
        assert!(!root.join("etc/.wh.gone").exists());
        let opaque = xattr::get(root.join("opq"), "trusted.overlay.opaque").unwrap();
        assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
        let opq = fs::symlink_metadata(root.join("opq")).unwrap();
        assert_eq!(
            (
                opq.mode() & 0o7777,
                fs::read_dir(root.join("opq")).unwrap().count()
            ),
            (0o755, 0)
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Directory, "a/", "", b"");
        add(&mut b, EntryType::Regular, "a/f", "", b"old");
        add(&mut b, EntryType::Regular, "a", "", b"file now");
        add(&mut b, EntryType::Regular, "b", "", b"old");
        add(&mut b, EntryType::Symlink, "b", "a", b"");
        add_with(&mut b, EntryType::Directory, "c", "", b"", |h| {
            h.set_mode(0o700)
        });
        add(&mut b, EntryType::Regular, "c/keep", "", b"");
        add_with(&mut b, EntryType::Directory, "c", "", b"", |h| {
            h.set_mode(0o711)
        });
        let (dir, result) = unpack(&b.into_inner().unwrap());
        result.unwrap();
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"file now");
        assert_eq!(fs::read_link(dir.path().join("b")).unwrap(), Path::new("a"));
        assert!(dir.path().join("c/keep").exists());
        let c = fs::metadata(dir.path().join("c")).unwrap();
        assert_eq!(c.mode() & 0o7777, 0o711);
    }

    #[test]
    fn dot_dot_names_are_refused() {
        for name in ["../x", "a/../../x", "/../x"] {
            let (dir, result) = unpack(&layer(&[(EntryType::Regular, name, "")]));
            assert_eq!(refusal(result), Refusal::EscapesDestination, "{name}");
            assert!(!dir.path().parent().unwrap().join("x").exists());
        }
        let (dir, result) = unpack(&layer(&[(EntryType::Regular, "a/../b", "")]));
        result.unwrap();
        assert!(dir.path().join("b").exists());
    }

    #[test]
    fn writing_through_an_earlier_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        for (kind, name) in [
            (EntryType::Regular, "a/passwd"),
            (EntryType::Directory, "a/sub/"),
            (EntryType::Regular, "a/.wh.passwd"),
            (EntryType::Regular, "a/.wh..wh..opq"),
        ] {
            let tar = layer(&[(EntryType::Symlink, "a", target), (kind, name, "")]);
            let reason = refusal(unpack(&tar).1);
            assert_eq!(reason, Refusal::ThroughSymlink("a".into()), "{name}");
            assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0, "{name}");
            assert_eq!(xattr::list(outside.path()).unwrap().count(), 0, "{name}");
        }
        // A later entry at the symlink's own path replaces the link, not its target.
        let victim = outside.path().join("victim");
        fs::write(&victim, b"safe").unwrap();
        let (kind, target) = (EntryType::Symlink, victim.to_str().unwrap());
        let (dir, result) = unpack(&layer(&[
            (kind, "v", target),
            (EntryType::Regular, "v", ""),
        ]));
        result.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"safe");
        assert!(fs::symlink_metadata(dir.path().join("v"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn hardlinks_must_stay_inside_the_layer() {
        let outside = tempfile::NamedTempFile::new().unwrap();
        let outside = outside.path().to_str().unwrap();
        let climb = format!("../../../../../../..{outside}");
        let absolute = Refusal::LinkTargetMissing(outside.trim_start_matches('/').into());
        for (link, expected) in [
            (climb.as_str(), Refusal::LinkEscapes),
            (outside, absolute),
            ("s/f", Refusal::ThroughSymlink("s".into())),
            ("d", Refusal::LinkTargetMissing("d".into())),
        ] {
            let tar = layer(&[
                (EntryType::Symlink, "s", "/tmp"),
                (EntryType::Directory, "d", ""),
                (EntryType::Link, "h", link),
            ]);
            assert_eq!(refusal(unpack(&tar).1), expected, "{link}");
        }
    }

    #[test]
    fn bad_whiteouts_and_unknown_types_are_refused() {
        for name in ["a/.wh.", ".wh.."] {
            let reason = refusal(unpack(&layer(&[(EntryType::Regular, name, "")])).1);
            assert!(matches!(reason, Refusal::BadWhiteout(_)), "{name}");
        }
        let reason = refusal(unpack(&layer(&[(EntryType::new(b'Z'), "z", "")])).1);
        assert_eq!(reason, Refusal::UnsupportedType(b'Z'));
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Regular, "f", "", &[7; 10_000]);
        let tar = b.into_inner().unwrap();
        let mut layer = gzip(&tar);
        let middle = layer.len() / 2;
        layer[middle] ^= 0xff;
        // Only the trailer is wrong: caught because the stream is drained.
        let mut bad_crc = gzip(&tar);
        let crc = bad_crc.len() - 8;
        bad_crc[crc] ^= 1;
        for blob in [
            &layer[..],
            &bad_crc[..],
            b"\x1f\x8b\x08garbage",
            b"plainly not gzip",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let result = unpack_layer(blob, LayerCompression::Gzip, dir.path());
            assert!(
                matches!(
                    result,
                    Err(UnpackError::Corrupt { .. } | UnpackError::CorruptEntry { .. })
                ),
                "{result:?}"
            );
        }
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let mut b = Builder::new(Vec::new());
        add(&mut b, EntryType::Regular, "first", "", b"1");
        add(&mut b, EntryType::Regular, "big", "", &[1; 4000]);
        let tar = b.into_inner().unwrap();
        let (_dir, result) = unpack(&tar[..1024 + 512 + 1000]);
        let Err(UnpackError::CorruptEntry { name, offset, .. }) = result else {
            panic!("{result:?}")
        };
        assert_eq!((name, offset), (PathBuf::from("big"), 1024));
        let (_dir, result) = unpack(&tar[..1024 + 100]);
        assert!(
            matches!(result, Err(UnpackError::Corrupt { offset: 1024, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn zstd_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let result = unpack_layer(&b""[..], LayerCompression::Zstd, dir.path());
        assert!(matches!(result, Err(UnpackError::Unsupported { .. })));
    }
}
