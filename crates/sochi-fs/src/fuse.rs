//! A read-only FUSE filesystem over one lazy layer: the [`LayerTree`]
//! answers metadata, the span store's [`SpanManager`] reads file data on
//! demand. Mounting it is `mount.rs`'s.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use sochi_format::Ztoc;

use sochi_spans::{BlobErrorKind, HeaderCheck, LayerMetrics, SpanManager};

use crate::config::LayerConfig;
use crate::pool::{LayerLane, ReadPool};
use crate::{Attr, Error, FileKind, Ino, LayerTree, Result};

/// How long the kernel may cache attributes and entries of the layer: a
/// layer never changes, so as long as it likes (the reference's 1 s makes
/// every `stat` of a walk a round trip to the daemon).
const TTL: Duration = Duration::from_secs(3600);

/// The status file changes as spans arrive: no caching of its size.
const STATUS_TTL: Duration = Duration::ZERO;

fn ttl(ino: u64) -> &'static Duration {
    if ino == STATUS_DIR_INO || ino == STATUS_FILE_INO {
        &STATUS_TTL
    } else {
        &TTL
    }
}

/// The errno a filesystem request fails with for `error`, in one place:
/// a blob read that timed out is `ETIMEDOUT`, refused credentials are
/// `EACCES`, everything else of reading layer data is `EIO` (never wrong
/// bytes).
pub fn errno_of(error: &Error) -> Errno {
    match error {
        Error::TooLarge { .. } => Errno::EFBIG,
        Error::Spans(error) => data_errno(error),
        _ => Errno::EIO,
    }
}

/// [`errno_of`] for an error of reading layer data.
fn data_errno(error: &sochi_spans::Error) -> Errno {
    match error {
        sochi_spans::Error::Blob { source, .. } => match source.kind() {
            BlobErrorKind::Timeout => Errno::ETIMEDOUT,
            BlobErrorKind::Denied => Errno::EACCES,
            BlobErrorKind::NotFound | BlobErrorKind::ShortRead | BlobErrorKind::Transport => {
                Errno::EIO
            }
        },
        _ => Errno::EIO,
    }
}

/// Replies to a read and counts it.
fn answer_read(
    spans: &SpanManager,
    started: std::time::Instant,
    result: std::result::Result<Vec<u8>, Errno>,
    reply: ReplyData,
) {
    let metrics = spans.metrics();
    match result {
        Ok(data) => {
            LayerMetrics::add(&metrics.reads, 1);
            LayerMetrics::add(&metrics.read_bytes, data.len() as u64);
            metrics.read_latency.observe(started.elapsed());
            reply.data(&data)
        }
        Err(errno) => {
            LayerMetrics::add(&metrics.read_failures, 1);
            reply.error(errno)
        }
    }
}

/// Inode of the hidden status directory `/.soci-snapshotter` (docs/format.md §3.6).
const STATUS_DIR_INO: u64 = u64::MAX - 1;
/// Inode of the status file `<layer digest>.json` in it.
const STATUS_FILE_INO: u64 = u64::MAX - 2;
/// Name of the status directory.
const STATUS_DIR: &[u8] = b".soci-snapshotter";

/// A read-only [`Filesystem`] serving one layer.
pub struct LayerFs {
    tree: Arc<LayerTree>,
    spans: Arc<SpanManager>,
    ztoc: Arc<Ztoc>,
    verified: Option<Arc<HeaderCheck>>,
    options: LayerConfig,
    /// `<layer digest>.json`, the status file's name.
    status_name: Vec<u8>,
    /// The status file's content as of its last `getattr`: reads serve
    /// this snapshot, so they agree with the size the kernel was told.
    status: Mutex<Vec<u8>>,
    /// Whether any entry has an xattr (or is an opaque directory): if
    /// not, `getxattr` answers ENOSYS once and the kernel stops asking
    /// (overlayfs asks every lower dentry for `trusted.overlay.*`).
    has_xattrs: bool,
    /// This layer's place in the process's [`ReadPool`], which runs the
    /// reads that must wait.
    lane: Arc<LayerLane>,
}

/// What a read of file data needs: cheap to clone into a job of the
/// [`ReadPool`].
#[derive(Clone)]
struct FileData {
    tree: Arc<LayerTree>,
    spans: Arc<SpanManager>,
    ztoc: Arc<Ztoc>,
    verified: Option<Arc<HeaderCheck>>,
}

impl std::fmt::Debug for LayerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFs")
            .field("nodes", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl LayerFs {
    /// A filesystem over `tree`, reading data through `spans`; `ztoc` is the
    /// zTOC `tree` was built from.
    pub fn new(
        tree: Arc<LayerTree>,
        spans: Arc<SpanManager>,
        ztoc: Arc<Ztoc>,
        options: LayerConfig,
    ) -> Result<LayerFs> {
        // Headers are checked where the file table came from the tar; the
        // chunks of zstd:chunked are checked against their digests instead.
        let verified = if options.verify && ztoc.has_tar_headers() {
            Some(Arc::new(HeaderCheck::new(&ztoc)?))
        } else {
            None
        };
        let status_name = options
            .layer_digest
            .as_ref()
            .map(|digest| format!("{digest}.json").into_bytes())
            .unwrap_or_default();
        let has_xattrs = tree.has_xattrs();
        Ok(LayerFs {
            tree,
            spans,
            ztoc,
            verified,
            options,
            status_name,
            status: Mutex::new(Vec::new()),
            has_xattrs,
            lane: Arc::default(),
        })
    }

    fn file_data(&self) -> FileData {
        FileData {
            tree: Arc::clone(&self.tree),
            spans: Arc::clone(&self.spans),
            ztoc: Arc::clone(&self.ztoc),
            verified: self.verified.clone(),
        }
    }

    fn file_attr(&self, ino: Ino) -> Option<FileAttr> {
        match ino.get() {
            STATUS_DIR_INO if self.options.layer_digest.is_some() => {
                Some(special_attr(STATUS_DIR_INO, FileType::Directory, 0o500, 0))
            }
            STATUS_FILE_INO if self.options.layer_digest.is_some() => {
                let (json, fetched) = self.status_json();
                let mut attr = special_attr(
                    STATUS_FILE_INO,
                    FileType::RegularFile,
                    0o400,
                    json.len() as u64,
                );
                // The mtime moves with the content, so the kernel (auto
                // inval data) drops its cached pages when the status changes.
                attr.mtime = UNIX_EPOCH + Duration::from_nanos(fetched);
                *self.status.lock().unwrap_or_else(|e| e.into_inner()) = json;
                Some(attr)
            }
            _ => self.tree.attr(ino).map(|attr| to_file_attr(ino, &attr)),
        }
    }

    /// The status file's content (docs/format.md §3.6) and the compressed bytes it
    /// reports fetched.
    fn status_json(&self) -> (Vec<u8>, u64) {
        let size = self.options.layer_size;
        let complete = LayerMetrics::get(&self.spans.metrics().background_complete) == 1;
        let fetched = if complete {
            size
        } else {
            self.spans.resident_compressed_bytes().min(size)
        };
        let percent = if size == 0 {
            100.0
        } else {
            fetched as f64 * 100.0 / size as f64
        };
        let json = format!(
            "{{\"digest\":\"{}\",\"size\":{size},\"fetchedSize\":{fetched},\"fetchedPercent\":{percent}}}",
            self.options.layer_digest.as_deref().unwrap_or_default()
        );
        (json.into_bytes(), fetched)
    }

    /// Reads `size` bytes at `offset` of regular file `ino`.
    pub(crate) fn read_file(
        &self,
        ino: Ino,
        offset: u64,
        size: u32,
    ) -> std::result::Result<Vec<u8>, Errno> {
        if ino.get() == STATUS_FILE_INO && self.options.layer_digest.is_some() {
            let mut snapshot = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if snapshot.is_empty() {
                *snapshot = self.status_json().0;
            }
            let json = &*snapshot;
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(json.len());
            let to = from.saturating_add(size as usize).min(json.len());
            return Ok(json[from..to].to_vec());
        }
        self.file_data().read(ino, offset, size)
    }
}

impl FileData {
    /// Whether a read of `size` bytes at `offset` of `ino` can be answered
    /// now, without waiting for a fetch, a hash or a first-read check.
    /// Reads that fail at once (not a file) count as ready.
    fn is_ready(&self, ino: Ino, offset: u64, size: u32) -> bool {
        let Some((start, len)) = self.tree.file_extent(&self.ztoc, ino) else {
            return true;
        };
        if let (Some(verified), Some(entry)) = (&self.verified, self.tree.toc_index(ino)) {
            if !verified.is_checked(entry) {
                return false;
            }
        }
        offset >= len
            || self
                .spans
                .is_resident(start + offset, (len - offset).min(u64::from(size)))
    }

    /// Reads `size` bytes at `offset` of regular file `ino`.
    fn read(&self, ino: Ino, offset: u64, size: u32) -> std::result::Result<Vec<u8>, Errno> {
        let Some((start, len)) = self.tree.file_extent(&self.ztoc, ino) else {
            return Err(match self.tree.attr(ino) {
                Some(a) if a.kind == FileKind::Directory => Errno::EISDIR,
                Some(_) => Errno::EINVAL,
                None => Errno::ENOENT,
            });
        };
        if let (Some(verified), Some(entry)) = (&self.verified, self.tree.toc_index(ino)) {
            if let Err(error) = verified.check(&self.ztoc, &self.spans, entry) {
                if matches!(error, sochi_spans::Error::HeaderMismatch { .. }) {
                    LayerMetrics::add(&self.spans.metrics().verification_failures, 1);
                }
                tracing::error!(error = %error, "file verification failed");
                return Err(data_errno(&error));
            }
        }
        if offset >= len {
            return Ok(Vec::new());
        }
        let want = (len - offset).min(u64::from(size));
        let want = usize::try_from(want).map_err(|_| Errno::EIO)?;
        let mut buf = vec![0; want];
        let mut done = 0;
        while done < want {
            let at = start + offset + done as u64;
            match self.spans.read_in_file(at, &mut buf[done..], start + len) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => done += n,
                Err(e) => {
                    tracing::warn!(error = %e, offset = at, "layer read failed");
                    return Err(data_errno(&e));
                }
            }
        }
        Ok(buf)
    }
}

impl LayerFs {
    /// The entries of directory `dir`: `.`, `..`, then its children, each
    /// with its inode and type.
    fn dir_entries(&self, dir: Ino) -> std::result::Result<Vec<DirEntry<'_>>, Errno> {
        if dir.get() == STATUS_DIR_INO && self.options.layer_digest.is_some() {
            return Ok(vec![
                (&b"."[..], STATUS_DIR_INO, FileType::Directory),
                (&b".."[..], self.tree.root().get(), FileType::Directory),
                (
                    &self.status_name[..],
                    STATUS_FILE_INO,
                    FileType::RegularFile,
                ),
            ]);
        }
        match self.tree.attr(dir) {
            Some(a) if a.kind == FileKind::Directory => {}
            Some(_) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        }
        let parent = self.tree.parent(dir).unwrap_or(dir);
        let mut entries = vec![
            (&b"."[..], dir.get(), FileType::Directory),
            (&b".."[..], parent.get(), FileType::Directory),
        ];
        entries.extend(self.tree.readdir(dir).map(|(name, child)| {
            let kind = self
                .tree
                .attr(child)
                .map_or(FileType::RegularFile, |a| file_type(a.kind));
            (name, child.get(), kind)
        }));
        Ok(entries)
    }
}

/// A directory entry: name, inode, type.
type DirEntry<'a> = (&'a [u8], u64, FileType);

/// The attributes of a negative entry: node id 0 means "no such name".
fn negative_entry() -> FileAttr {
    special_attr(0, FileType::RegularFile, 0, 0)
}

/// Attributes of the status dir and file.
fn special_attr(ino: u64, kind: FileType, perm: u16, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
    }
}

fn to_file_attr(ino: Ino, attr: &Attr) -> FileAttr {
    let mtime = if attr.mtime_secs >= 0 {
        UNIX_EPOCH + Duration::new(attr.mtime_secs.unsigned_abs(), attr.mtime_nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::new(attr.mtime_secs.unsigned_abs(), 0))
            .unwrap_or(UNIX_EPOCH)
    };
    FileAttr {
        ino: INodeNo(ino.get()),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: u32::try_from(attr.rdev).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

/// Replies to an xattr request following the size-probe protocol.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    let Ok(len) = u32::try_from(data.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

impl Filesystem for LayerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        crate::priority::serve_at_raised_priority();
        let name = name.as_bytes();
        let status = self.options.layer_digest.is_some();
        let found = if status && parent.0 == self.tree.root().get() && name == STATUS_DIR {
            self.file_attr(Ino(STATUS_DIR_INO))
        } else if status && parent.0 == STATUS_DIR_INO {
            (self.status_name == name)
                .then(|| self.file_attr(Ino(STATUS_FILE_INO)))
                .flatten()
        } else {
            self.tree
                .lookup(Ino(parent.0), name)
                .and_then(|ino| self.file_attr(ino))
        };
        match found {
            Some(attr) => reply.entry(ttl(attr.ino.0), &attr, Generation(0)),
            // A negative entry the kernel may cache (node id 0 with a
            // timeout): overlayfs and interpreters look up many names a
            // layer does not have, and would ask again on every start.
            None => reply.entry(ttl(parent.0), &negative_entry(), Generation(0)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        crate::priority::serve_at_raised_priority();
        match self.file_attr(Ino(ino.0)) {
            Some(attr) => reply.attr(ttl(ino.0), &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        crate::priority::serve_at_raised_priority();
        match self.tree.readlink(Ino(ino.0)) {
            Some(target) => reply.data(target),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc_accmode() != 0 {
            return reply.error(Errno::EROFS);
        }
        if ino.0 == STATUS_FILE_INO && self.options.layer_digest.is_some() {
            // The status changes as spans arrive: no page cache for it.
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        // Reads need no handle and layer content never changes: ENOSYS
        // tells the kernel (FUSE_NO_OPEN_SUPPORT) to open files itself from
        // now on, keeping their page cache, and to skip RELEASE; an open,
        // flush and release per file was half of a warm container start's
        // requests. The mount is read-only, so the VFS refuses writes.
        reply.error(Errno::ENOSYS)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        crate::priority::serve_at_raised_priority();
        let started = std::time::Instant::now();
        let ino = Ino(ino.0);
        let data = self.file_data();
        if ino.get() == STATUS_FILE_INO || data.is_ready(ino, offset, size) {
            let result = self.read_file(ino, offset, size);
            answer_read(&self.spans, started, result, reply);
            return;
        }
        // This read waits (a fetch, a hash, a first-read check): on the
        // pool, so that this thread goes on answering the layer's other
        // requests.
        ReadPool::global().submit(
            &self.lane,
            Box::new(move || {
                crate::priority::serve_at_raised_priority();
                let result = data.read(ino, offset, size);
                answer_read(&data.spans, started, result, reply);
            }),
        );
    }

    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Directory listings come with their attributes, so a walk does
        // not look every entry up again (the kernel may refuse; then plain
        // readdir is used).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // Symlink targets never change: the kernel may cache them.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_CACHE_SYMLINKS);
        // Only the status file's mtime ever changes, and with it its
        // content: drop cached pages on an mtime change.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Listings need no handle: ENOSYS makes the kernel open directories
        // itself from now on (FUSE_NO_OPENDIR_SUPPORT), caching listings
        // across opens as FOPEN_CACHE_DIR would, with no OPENDIR or
        // RELEASEDIR round trips.
        reply.error(Errno::ENOSYS)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        crate::priority::serve_at_raised_priority();
        match self.dir_entries(Ino(ino.0)) {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (name, child, kind)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        crate::priority::serve_at_raised_priority();
        match self.dir_entries(Ino(ino.0)) {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (name, child, _)) in entries.into_iter().enumerate().skip(skip) {
                    let Some(attr) = self.file_attr(Ino(child)) else {
                        continue;
                    };
                    let full = reply.add(
                        INodeNo(child),
                        i as u64 + 1,
                        OsStr::from_bytes(name),
                        ttl(child),
                        &attr,
                        Generation(0),
                    );
                    if full {
                        break;
                    }
                }
                reply.ok();
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Read-only: nothing to write back on close. ENOSYS tells the
        // kernel not to send FLUSH again.
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.spans.uncompressed_size().div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.tree.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        crate::priority::serve_at_raised_priority();
        if !self.has_xattrs {
            // The kernel answers EOPNOTSUPP from now on without asking;
            // for a layer with no xattrs that is the same as ENODATA to
            // overlayfs and to exec's capability check.
            return reply.error(Errno::ENOSYS);
        }
        let ino = Ino(ino.0);
        if self.tree.attr(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        match self.tree.xattr(ino, name.as_bytes()) {
            Some(value) => reply_xattr(reply, size, value),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        crate::priority::serve_at_raised_priority();
        let ino = Ino(ino.0);
        if self.tree.attr(ino).is_none() {
            return reply.error(Errno::ENOENT);
        }
        let mut names = Vec::new();
        for (name, _) in self.tree.xattrs(ino) {
            names.extend_from_slice(name);
            names.push(0);
        }
        reply_xattr(reply, size, &names);
    }
}

/// `O_ACCMODE` bits that ask for writing (`O_WRONLY | O_RDWR`).
const fn libc_accmode() -> i32 {
    0o3
}
