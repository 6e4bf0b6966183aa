//! The layer tree and its read-only queries.
//!
//! Layout, chosen for small memory on layers with millions of entries:
//!
//! * `nodes[ino - 1]` is the node of inode `ino`; the root is inode 1.
//! * A directory node holds an index into `dirs`; its children are one
//!   `Vec<Child>` sorted by name (bytewise), searched by binary search.
//! * Every name, symlink target and xattr name/value lives once in the byte
//!   arena `bytes` and is referred to by a [`ByteRef`].
//! * A regular file keeps only the index of its TOC entry; data offsets are
//!   read from the zTOC when a file is opened ([`LayerTree::file_extent`]).
//!
//! Invariants (established by the builder): every `ByteRef` lies inside
//! `bytes`, every `Child::ino` and `Dir::parent` is an inode of `nodes`,
//! every `Payload::Directory::dir` indexes `dirs`, and every children list
//! is sorted with unique names. Queries still use checked access, so a
//! broken invariant gives `None`, never a panic.

use sochi_format::Ztoc;

/// An inode number of a [`LayerTree`]. The root is [`Ino::ROOT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// The inode number.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The type of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    Regular,
    /// Directory.
    Directory,
    /// Symbolic link.
    Symlink,
    /// Character device (also overlayfs whiteouts, 0/0).
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Named pipe.
    Fifo,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind (Linux values).
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::Regular => 0o100_000,
            FileKind::Directory => 0o040_000,
            FileKind::Symlink => 0o120_000,
            FileKind::CharDevice => 0o020_000,
            FileKind::BlockDevice => 0o060_000,
            FileKind::Fifo => 0o010_000,
        }
    }
}

/// The attributes of a node, as `stat` would show them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// File type.
    pub kind: FileKind,
    /// Permission bits plus setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes: file data for regular files, target length for
    /// symlinks, 0 otherwise.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds `0..1_000_000_000`.
    pub mtime_nanos: u32,
    /// Number of links: directory entries for non-directories, `2 +`
    /// subdirectories for directories.
    pub nlink: u32,
    /// Device number (Linux `makedev` encoding) for devices, else 0.
    pub rdev: u64,
}

impl Attr {
    /// `st_mode`: type bits plus [`Attr::perm`].
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | u32::from(self.perm)
    }
}

/// A byte string in the arena.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ByteRef {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// What a node is, with the one piece of data its kind needs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Payload {
    Regular { entry: u32 },
    Directory { dir: u32 },
    Symlink { target: ByteRef },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) payload: Payload,
    pub(crate) perm: u16,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_nanos: u32,
    /// 0 for none, else `xattr_sets` index + 1.
    pub(crate) xattrs: u32,
    pub(crate) mtime_secs: i64,
    pub(crate) size: u64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Child {
    pub(crate) name: ByteRef,
    pub(crate) ino: Ino,
}

#[derive(Clone, Debug)]
pub(crate) struct Dir {
    pub(crate) parent: Ino,
    pub(crate) children: Vec<Child>,
}

/// The filesystem tree of one layer, built from its zTOC (docs/format.md §3.6).
///
/// Build it with [`LayerTree::build`]; it is immutable afterwards.
#[derive(Clone, Debug)]
pub struct LayerTree {
    pub(crate) nodes: Vec<Node>,
    pub(crate) dirs: Vec<Dir>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) xattr_sets: Vec<Vec<(ByteRef, ByteRef)>>,
}

/// Linux `makedev`.
fn makedev(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

impl LayerTree {
    /// The root directory's inode.
    pub fn root(&self) -> Ino {
        Ino::ROOT
    }

    /// Number of inodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no inodes (never true for a built tree).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn node(&self, ino: Ino) -> Option<&Node> {
        let index = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    pub(crate) fn slice(&self, r: ByteRef) -> &[u8] {
        let start = r.start as usize;
        self.bytes
            .get(start..start.saturating_add(r.len as usize))
            .unwrap_or(&[])
    }

    fn dir(&self, ino: Ino) -> Option<&Dir> {
        match self.node(ino)?.payload {
            Payload::Directory { dir } => self.dirs.get(dir as usize),
            _ => None,
        }
    }

    /// The child `name` of directory `parent`. Names starting with `.wh.`
    /// find nothing (whiteouts are hidden, docs/format.md §3.6).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        if name.starts_with(b".wh.") {
            return None;
        }
        let dir = self.dir(parent)?;
        let index = dir
            .children
            .binary_search_by(|child| self.slice(child.name).cmp(name))
            .ok()?;
        dir.children.get(index).map(|child| child.ino)
    }

    /// The parent of directory `ino` (the root is its own parent).
    pub fn parent(&self, ino: Ino) -> Option<Ino> {
        self.dir(ino).map(|dir| dir.parent)
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        let node = self.node(ino)?;
        let (kind, rdev) = match node.payload {
            Payload::Regular { .. } => (FileKind::Regular, 0),
            Payload::Directory { .. } => (FileKind::Directory, 0),
            Payload::Symlink { .. } => (FileKind::Symlink, 0),
            Payload::CharDevice { major, minor } => (FileKind::CharDevice, makedev(major, minor)),
            Payload::BlockDevice { major, minor } => (FileKind::BlockDevice, makedev(major, minor)),
            Payload::Fifo => (FileKind::Fifo, 0),
        };
        Some(Attr {
            kind,
            perm: node.perm,
            uid: node.uid,
            gid: node.gid,
            size: node.size,
            mtime_secs: node.mtime_secs,
            mtime_nanos: node.mtime_nanos,
            nlink: node.nlink,
            rdev,
        })
    }

    /// The entries of directory `ino`, sorted by name, without `.` and `..`
    /// (see [`LayerTree::parent`]). Empty for anything but a directory.
    pub fn readdir(&self, ino: Ino) -> impl Iterator<Item = (&[u8], Ino)> + '_ {
        self.dir(ino)
            .into_iter()
            .flat_map(|dir| dir.children.iter())
            .map(|child| (self.slice(child.name), child.ino))
    }

    /// The target of symlink `ino`, raw as in the TOC.
    pub fn readlink(&self, ino: Ino) -> Option<&[u8]> {
        match self.node(ino)?.payload {
            Payload::Symlink { target } => Some(self.slice(target)),
            _ => None,
        }
    }

    /// The extended attributes of `ino` (name, value), from the entry's
    /// `SCHILY.xattr.*` PAX records plus `trusted.overlay.opaque` on opaque
    /// directories. Empty when there are none or `ino` is unknown.
    pub fn xattrs(&self, ino: Ino) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let set = self
            .node(ino)
            .and_then(|node| node.xattrs.checked_sub(1))
            .and_then(|index| self.xattr_sets.get(index as usize));
        set.into_iter()
            .flat_map(|set| set.iter())
            .map(|&(name, value)| (self.slice(name), self.slice(value)))
    }

    /// Whether any entry has an extended attribute (opaque directories
    /// included).
    pub fn has_xattrs(&self) -> bool {
        !self.xattr_sets.is_empty()
    }

    /// The value of extended attribute `name` of `ino`.
    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Option<&[u8]> {
        self.xattrs(ino)
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// The index in `ztoc.toc` of the entry holding regular file `ino`'s
    /// data.
    pub fn toc_index(&self, ino: Ino) -> Option<usize> {
        match self.node(ino)?.payload {
            Payload::Regular { entry } => Some(entry as usize),
            _ => None,
        }
    }

    /// `(uncompressed_offset, size)` of regular file `ino`'s data in the
    /// uncompressed layer, read from `ztoc`, which must be the zTOC the tree
    /// was built from. `None` for anything but a regular file.
    pub fn file_extent(&self, ztoc: &Ztoc, ino: Ino) -> Option<(u64, u64)> {
        let entry = ztoc.toc.get(self.toc_index(ino)?)?;
        Some((
            u64::try_from(entry.uncompressed_offset).ok()?,
            u64::try_from(entry.uncompressed_size).ok()?,
        ))
    }

    /// Approximate heap bytes held by the tree (capacities, not lengths).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let children: usize = self
            .dirs
            .iter()
            .map(|dir| dir.children.capacity() * size_of::<Child>())
            .sum();
        let xattrs: usize = self
            .xattr_sets
            .iter()
            .map(|set| set.capacity() * size_of::<(ByteRef, ByteRef)>())
            .sum();
        self.nodes.capacity() * size_of::<Node>()
            + self.dirs.capacity() * size_of::<Dir>()
            + children
            + self.bytes.capacity()
            + self.xattr_sets.capacity() * size_of::<Vec<(ByteRef, ByteRef)>>()
            + xattrs
    }
}
