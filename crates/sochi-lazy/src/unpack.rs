//! Unpacking a whole layer into a directory overlayfs can stack as a lowerdir.
//!
//! A layer without a zTOC cannot be mounted lazily, so it is fetched whole and
//! unpacked the way containerd's overlayfs snapshotter applies a layer to an
//! empty directory: OCI whiteouts become overlay whiteouts (0/0 character
//! devices) and `.wh..wh..opq` becomes the `trusted.overlay.opaque` xattr.
//! See the OCI image spec, layer.md, "Whiteouts".
//!
//! The layer is read with the readers the index builder uses (`sochi-zran`
//! for gzip, `sochi-tar` for the tar, with Go `archive/tar` semantics;
//! libzstd for zstd, which the index builder does not read), and
//! its xattrs pass the policy the lazy layer tree applies
//! ([`sochi_tar::check_xattr`]): a layer is unpacked only if it would also
//! be served lazily, and errors name the same offsets as `create`'s. The
//! uncompressed stream is checked against the config's `diff_id` and the
//! blob against its digest, as containerd does ("wrong diff id calculated
//! on extraction").
//!
//! We create every file ourselves, because a hostile layer must fail, not
//! half-apply: names with `..` that climb out are refused, parents are
//! walked with `lstat` (no symlink an earlier entry created is followed),
//! and whiteouts and a file replacing a directory are handled here.
//!
//! Invariant: every path we touch is `dest` joined with a name made of plain
//! components, and each parent component was checked with `lstat` to be a real
//! directory. Nothing else writes into `dest` while we unpack, so the check
//! holds until we use the path.

mod stream;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use sochi_format::{parse_mod_time, EntryType, FileMetadata, LayerCompression};
use sochi_tar::{TarError, TarReader, XattrRefusal};

use self::stream::{BlobReader, Decoder, DiffHasher};

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

/// The digests a layer must have, as `sha256:<hex>`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExpectedDigests<'a> {
    /// The blob's digest (its descriptor's). `None` when the source checks
    /// it already (a registry blob stream does, naming both digests).
    pub compressed: Option<&'a str>,
    /// The uncompressed stream's digest: the image config's `diff_id`.
    pub diff_id: Option<&'a str>,
}

/// Which digest of a layer did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// The compressed blob's.
    Compressed,
    /// The uncompressed stream's (`diff_id`).
    DiffId,
}

impl fmt::Display for DigestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DigestKind::Compressed => "blob digest",
            DigestKind::DiffId => "diff_id (uncompressed digest)",
        })
    }
}

/// Where an entry sits in the layer: its header's offset in the
/// uncompressed stream and, for a compressed layer, how far the compressed
/// stream had been read then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPosition {
    /// Offset of the entry's header in the uncompressed (tar) stream.
    pub uncompressed_offset: u64,
    /// Compressed bytes read when the entry was reached (the inflater
    /// reads ahead, so the entry's bytes are at or before this), for a
    /// compressed layer.
    pub compressed_read: Option<u64>,
}

impl fmt::Display for EntryPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uncompressed offset {}", self.uncompressed_offset)?;
        if let Some(read) = self.compressed_read {
            write!(f, ", compressed bytes read {read}")?;
        }
        Ok(())
    }
}

/// Why unpacking a layer failed.
///
/// Grouped by who is at fault: the layer's bytes (`Tar`, `Gzip`, `Zstd`,
/// `DigestMismatch`, `Refused`), then reading the blob (`Read`) and
/// writing the tree (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream is malformed, or holds an entry type no layer may
    /// (the message of [`TarError`] names the entry and its uncompressed
    /// offset).
    #[error("layer{}", compressed_note(*.compressed_read))]
    Tar {
        /// Compressed bytes read when it was found, for a compressed layer.
        compressed_read: Option<u64>,
        /// What the tar reader found.
        source: TarError,
    },
    /// The compressed stream is corrupt (the message of
    /// [`sochi_zran::Error`] names the compressed offset).
    #[error("layer (uncompressed offset {uncompressed_offset} reached)")]
    Gzip {
        /// Uncompressed bytes the tar reader had taken.
        uncompressed_offset: u64,
        /// What the inflater found.
        source: sochi_zran::Error,
    },
    /// The zstd stream is corrupt or cut short.
    #[error("layer (uncompressed offset {uncompressed_offset} reached)")]
    Zstd {
        /// Uncompressed bytes the tar reader had taken.
        uncompressed_offset: u64,
        /// What libzstd found, and where.
        source: ZstdError,
    },
    /// A digest of the layer is not the one the image names.
    #[error("layer: {what} mismatch: the image says {expected}, the layer's bytes are {actual}")]
    DigestMismatch {
        /// Which digest.
        what: DigestKind,
        /// The digest the image names.
        expected: String,
        /// The digest of what was read.
        actual: String,
    },
    /// One entry is well-formed but unsafe or meaningless to apply.
    #[error("layer: entry {name:?} at {position}: refused: {reason}")]
    Refused {
        /// The entry's name as the tar gives it.
        name: PathBuf,
        /// Where it is.
        position: EntryPosition,
        /// Why.
        reason: Refusal,
    },
    /// Reading the layer blob failed (the registry, a file).
    #[error("layer: reading the blob")]
    Read {
        /// What the blob reader reported.
        #[source]
        source: io::Error,
    },
    /// Writing into the destination failed.
    #[error("layer: entry {name:?} at {position}: {op} {path:?}")]
    Io {
        /// The entry's name as the tar gives it.
        name: PathBuf,
        /// Where it is.
        position: EntryPosition,
        /// What was being done.
        op: String,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Corrupt zstd data: libzstd's words, and how far the blob had been read
/// (libzstd reads ahead by up to its input buffer, 128 KiB, so the bad
/// bytes are at or before that offset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("zstd: {message} (compressed bytes read {compressed_read})")]
pub struct ZstdError {
    /// Blob bytes read when it was found.
    pub compressed_read: u64,
    /// libzstd's message, e.g. "Unknown frame descriptor".
    pub message: String,
}

fn compressed_note(read: Option<u64>) -> String {
    read.map(|read| format!(" (compressed bytes read {read})"))
        .unwrap_or_default()
}

/// Why an entry was refused. Paths are relative to the destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its name climbs out with `..`.
    #[error("its name escapes the destination via `..`")]
    EscapesDestination,
    /// It names the root, and is not a directory.
    #[error("it names the destination itself")]
    NamesRoot,
    /// A parent is a symlink an earlier entry made.
    #[error("its path goes through symlink {0:?}")]
    ThroughSymlink(PathBuf),
    /// A parent is not a directory.
    #[error("its path goes through {0:?}, which is not a directory")]
    NotADirectory(PathBuf),
    /// `.wh.`, `.wh..` or `.wh...`.
    #[error("whiteout {0:?} names no file")]
    BadWhiteout(OsString),
    /// A hardlink whose target climbs out.
    #[error("hardlink target escapes the destination")]
    LinkEscapes,
    /// A hardlink whose target is not an earlier file.
    #[error("hardlink target {0:?} is not an earlier file of this layer")]
    LinkTargetMissing(PathBuf),
    /// A link without a target.
    #[error("link has no target")]
    NoLinkTarget,
    /// A field out of range for this system.
    #[error("{what} {value} is out of range")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: i64,
    },
    /// An xattr the policy refuses ([`sochi_tar::check_xattr`]).
    #[error("xattr {}: {reason}", String::from_utf8_lossy(.key))]
    Xattr {
        /// The xattr's name.
        key: Vec<u8>,
        /// Why.
        reason: XattrRefusal,
    },
}

/// Unpacks one layer blob into `dest`, which must exist and be empty, and
/// checks the digests in `expected`.
///
/// The whole stream is read, even past the tar's end-of-archive marker, so
/// the gzip trailer is checked and the `diff_id` covers every byte. On an
/// error `dest` holds a partial tree: the caller removes it.
pub fn unpack_layer(
    blob: impl Read,
    compression: LayerCompression,
    dest: &Path,
    expected: ExpectedDigests<'_>,
) -> Result<UnpackStats, UnpackError> {
    let blob = BlobReader::new(blob, expected.compressed.is_some());
    let decoder = Decoder::new(blob, compression)?;
    let mut tar = TarReader::new(DiffHasher::new(decoder));
    let mut unpacker = Unpacker {
        dest,
        dirs: BTreeMap::new(),
        stats: UnpackStats::default(),
        buffer: vec![0; 64 * 1024],
    };
    while let Some(entry) = tar
        .next_entry()
        .map_err(|error| stream_error(error, &tar))?
    {
        let decoder = tar.get_ref().get_ref();
        let at = At {
            name: PathBuf::from(OsStr::from_bytes(&entry.metadata.name)),
            position: EntryPosition {
                uncompressed_offset: entry.header_offset,
                compressed_read: decoder.is_compressed().then(|| decoder.compressed_read()),
            },
        };
        unpacker.apply(&entry.metadata, &mut tar, &at)?;
    }
    let uncompressed_offset = tar.position();
    let (decoder, diff_id) = tar
        .into_inner()
        .finish()
        .map_err(|error| io_stream_error(error, uncompressed_offset))?;
    unpacker.finish_dirs()?;
    let (_, blob_digest) = decoder.blob_digest();
    check_digest(DigestKind::Compressed, expected.compressed, blob_digest)?;
    check_digest(DigestKind::DiffId, expected.diff_id, Some(diff_id))?;
    tracing::debug!(dest = %dest.display(), stats = ?unpacker.stats, "unpacked layer");
    Ok(unpacker.stats)
}

fn check_digest(
    what: DigestKind,
    expected: Option<&str>,
    actual: Option<[u8; 32]>,
) -> Result<(), UnpackError> {
    let (Some(expected), Some(actual)) = (expected, actual) else {
        return Ok(());
    };
    let actual = format!("sha256:{}", hex::encode(actual));
    if expected != actual {
        return Err(UnpackError::DigestMismatch {
            what,
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Sorts an error of the tar reader by what underneath it failed.
fn stream_error<R: Read>(error: TarError, tar: &TarReader<DiffHasher<Decoder<R>>>) -> UnpackError {
    match error {
        TarError::Io(io) => io_stream_error(io, tar.position()),
        source => {
            let decoder = tar.get_ref().get_ref();
            UnpackError::Tar {
                compressed_read: decoder.is_compressed().then(|| decoder.compressed_read()),
                source,
            }
        }
    }
}

/// An I/O error from under the tar reader: the inflater's (corrupt gzip),
/// libzstd's (corrupt zstd) or the blob's.
fn io_stream_error(error: io::Error, uncompressed_offset: u64) -> UnpackError {
    if let Some(source) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ZstdError>())
    {
        return UnpackError::Zstd {
            uncompressed_offset,
            source: source.clone(),
        };
    }
    match sochi_zran::Error::from_io(error) {
        sochi_zran::Error::Io { source } => UnpackError::Read { source },
        source => UnpackError::Gzip {
            uncompressed_offset,
            source,
        },
    }
}

/// An entry, to name it in errors.
#[derive(Debug, Clone)]
struct At {
    name: PathBuf,
    position: EntryPosition,
}

impl At {
    fn refuse(&self, reason: Refusal) -> UnpackError {
        UnpackError::Refused {
            name: self.name.clone(),
            position: self.position,
            reason,
        }
    }
    fn io<'a, E: Into<io::Error>>(
        &'a self,
        op: impl Into<String> + 'a,
        path: &'a Path,
    ) -> impl FnOnce(E) -> UnpackError + 'a {
        move |source| UnpackError::Io {
            name: self.name.clone(),
            position: self.position,
            op: op.into(),
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
    buffer: Vec<u8>,
}

impl Unpacker<'_> {
    fn apply<R: io::BufRead>(
        &mut self,
        entry: &FileMetadata,
        tar: &mut TarReader<R>,
        at: &At,
    ) -> Result<(), UnpackError> {
        let kind = entry.entry_type;
        let rel = clean(&at.name).ok_or_else(|| at.refuse(Refusal::EscapesDestination))?;
        let meta = meta_of(entry, at)?;
        self.stats.entries += 1;
        let (Some(base), Some(parent_rel)) = (rel.file_name(), rel.parent()) else {
            // Layers often start with "./"; like containerd, leave dest's own metadata alone.
            return if kind == EntryType::Directory {
                Ok(())
            } else {
                Err(at.refuse(Refusal::NamesRoot))
            };
        };
        let parent = self.walk(parent_rel, true, at)?.unwrap_or_default();
        if base == ".wh..wh..opq" {
            xattr::set(&parent, "trusted.overlay.opaque", b"y")
                .map_err(at.io("set xattr trusted.overlay.opaque on", &parent))?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        if let Some(hidden) = base.as_bytes().strip_prefix(b".wh.") {
            let hidden = OsStr::from_bytes(hidden);
            if matches!(hidden.as_bytes(), b"" | b"." | b"..") {
                return Err(at.refuse(Refusal::BadWhiteout(base.to_os_string())));
            }
            let path = parent.join(hidden);
            self.clear(&path, &parent_rel.join(hidden), false, at)?;
            mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                .map_err(at.io("create whiteout", &path))?;
            lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let path = parent.join(base);
        let is_dir = self.clear(&path, &rel, kind == EntryType::Directory, at)?;
        match kind {
            EntryType::Directory => {
                if !is_dir {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&path)
                        .map_err(at.io("mkdir", &path))?;
                }
                lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
                set_xattrs(&path, &meta, at)?;
                self.dirs.insert(rel, (at.clone(), meta));
                return Ok(());
            }
            EntryType::Regular => self.write_file(entry, tar, &path, at)?,
            EntryType::Symlink => {
                if entry.linkname.is_empty() {
                    return Err(at.refuse(Refusal::NoLinkTarget));
                }
                symlink(OsStr::from_bytes(&entry.linkname), &path)
                    .map_err(at.io("create symlink", &path))?;
            }
            // The inode already carries the target entry's metadata.
            EntryType::Hardlink => return self.hard_link(entry, &path, at),
            EntryType::CharDevice | EntryType::BlockDevice | EntryType::Fifo => {
                let (sflag, dev) = match kind {
                    EntryType::Fifo => (SFlag::S_IFIFO, 0),
                    EntryType::CharDevice => (SFlag::S_IFCHR, device(entry, at)?),
                    _ => (SFlag::S_IFBLK, device(entry, at)?),
                };
                mknod(&path, sflag, Mode::empty(), dev).map_err(at.io("mknod", &path))?;
            }
        }
        // chown before chmod: chown clears setuid/setgid. xattrs after both:
        // chown also drops security.capability.
        lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(at.io("chown", &path))?;
        if kind != EntryType::Symlink {
            fs::set_permissions(&path, Permissions::from_mode(meta.mode))
                .map_err(at.io("chmod", &path))?;
        }
        set_xattrs(&path, &meta, at)?;
        set_times(&path, meta.mtime, at)
    }

    /// A hard link to an entry unpacked before, reached through no symlink;
    /// never to a directory.
    fn hard_link(&self, entry: &FileMetadata, path: &Path, at: &At) -> Result<(), UnpackError> {
        if entry.linkname.is_empty() {
            return Err(at.refuse(Refusal::NoLinkTarget));
        }
        let target = Path::new(OsStr::from_bytes(&entry.linkname));
        let target_rel = clean(target).ok_or_else(|| at.refuse(Refusal::LinkEscapes))?;
        let missing = || at.refuse(Refusal::LinkTargetMissing(target_rel.clone()));
        let (Some(target_base), Some(target_parent)) =
            (target_rel.file_name(), target_rel.parent())
        else {
            return Err(missing());
        };
        let target_dir = self.walk(target_parent, false, at)?.ok_or_else(missing)?;
        let source = target_dir.join(target_base);
        match fs::symlink_metadata(&source) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(missing()),
        }
        fs::hard_link(&source, path).map_err(at.io("hardlink", path))
    }

    fn write_file<R: io::BufRead>(
        &mut self,
        entry: &FileMetadata,
        tar: &mut TarReader<R>,
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
        let mut written = 0u64;
        loop {
            // The reader fails on data cut short (a truncated layer).
            let n = match tar.read_data(&mut self.buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(TarError::Io(error)) => return Err(io_stream_error(error, tar.position())),
                Err(source) => {
                    return Err(UnpackError::Tar {
                        compressed_read: at.position.compressed_read,
                        source,
                    })
                }
            };
            file.write_all(self.buffer.get(..n).unwrap_or_default())
                .map_err(at.io("write", path))?;
            written += n as u64;
        }
        self.stats.bytes += written;
        debug_assert_eq!(
            i64::try_from(written).ok(),
            Some(entry.uncompressed_size),
            "the tar reader gives a file's data whole"
        );
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

/// The fields to apply, with the xattr policy checked first: a refused
/// xattr refuses the layer before anything of the entry is written.
fn meta_of(entry: &FileMetadata, at: &At) -> Result<Meta, UnpackError> {
    if let Some((key, reason)) = sochi_tar::first_refused_xattr(&entry.pax_records) {
        return Err(at.refuse(Refusal::Xattr {
            key: key.to_vec(),
            reason,
        }));
    }
    // Go keeps the mode's permission, setuid, setgid and sticky bits; the
    // mode field may carry type bits too, which chmod must not see.
    let mode = u32::try_from(entry.mode & 0o7777).unwrap_or(0);
    // Times outside years 0..9999 are an empty string in the zTOC
    // vocabulary; they get the epoch.
    let (seconds, nanos) = parse_mod_time(&entry.mod_time).unwrap_or((0, 0));
    Ok(Meta {
        uid: entry.uid,
        gid: entry.gid,
        mode,
        mtime: TimeSpec::new(seconds, i64::from(nanos)),
        xattrs: sochi_tar::entry_xattrs(&entry.pax_records)
            .map(|(name, value)| (OsStr::from_bytes(name).to_os_string(), value.to_vec()))
            .collect(),
    })
}

/// Only device entries need the device fields; writers may leave them blank
/// on others.
fn device(entry: &FileMetadata, at: &At) -> Result<u64, UnpackError> {
    let number = |what, value: i64| {
        u32::try_from(value).map_err(|_| at.refuse(Refusal::OutOfRange { what, value }))
    };
    let major = number("device major", entry.devmajor)?;
    let minor = number("device minor", entry.devminor)?;
    Ok(makedev(major.into(), minor.into()))
}

/// Applies the entry's xattrs with lsetxattr, as containerd does (the
/// policy was checked in [`meta_of`]). Names the filesystem does not
/// support are skipped with a warning, like containerd.
fn set_xattrs(path: &Path, meta: &Meta, at: &At) -> Result<(), UnpackError> {
    for (name, value) in &meta.xattrs {
        match xattr::set(path, name, value) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(Errno::EOPNOTSUPP as i32) => {
                tracing::warn!(entry = %at.name.display(), xattr = ?name, "xattr not supported here, skipped");
            }
            Err(e) => {
                let op = format!("set xattr {} on", name.to_string_lossy());
                return Err(at.io(op, path)(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
