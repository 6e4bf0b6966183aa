//! Building a [`LayerTree`] from a zTOC (docs/format.md §3.6).
//!
//! One pass over the TOC in archive order creates nodes, synthesizing
//! missing parents; whiteouts and opaque markers are collected and applied
//! at the end, because the real file a whiteout yields to may come later in
//! the archive. A build-time map from `(directory, name)` to the child's
//! inode and slot makes each step O(1); it is dropped before returning.

use std::collections::HashMap;

use sochi_format::{parse_mod_time, EntryType, FileMetadata, Ztoc};

use crate::error::{Error, Result};
use crate::path::clean;
use crate::tree::{ByteRef, Child, Dir, Ino, LayerTree, Node, Payload};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// Where a name is bound: its inode and its slot in the directory's
/// (not yet sorted) children.
#[derive(Clone, Copy)]
struct Binding {
    ino: Ino,
    slot: u32,
}

/// A `.wh.<x>` entry waiting for the end of the layer.
struct Whiteout {
    dir: u32,
    name: Vec<u8>,
    mtime: (i64, u32),
}

/// Attributes every entry carries.
struct Common {
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: u32,
}

struct Builder {
    tree: LayerTree,
    /// `dir index (4 bytes LE) ++ name` → binding.
    bound: HashMap<Vec<u8>, Binding>,
    whiteouts: Vec<Whiteout>,
    opaque: Vec<Ino>,
}

fn key(dir: u32, name: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&dir.to_le_bytes());
    key.extend_from_slice(name);
    key
}

fn to_u32(value: usize, what: &'static str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::TooLarge {
        what,
        limit: u64::from(u32::MAX),
    })
}

/// The `mod_time` as Unix seconds and nanoseconds; text that does not parse
/// gives the epoch (the reference gives Go's zero time, docs/format.md §1.2 step 3).
fn mtime(entry: &FileMetadata) -> (i64, u32) {
    parse_mod_time(&entry.mod_time).unwrap_or((0, 0))
}

impl LayerTree {
    /// Builds the tree of the layer `ztoc` describes.
    ///
    /// Fails when a hardlink points to a path not in the layer or to a
    /// directory, when an entry's parent is not a directory, or when a size,
    /// offset or device number is out of range.
    pub fn build(ztoc: &Ztoc) -> Result<LayerTree> {
        let mut builder = Builder {
            tree: LayerTree {
                nodes: Vec::with_capacity(ztoc.toc.len().saturating_add(1)),
                dirs: Vec::new(),
                bytes: Vec::new(),
                xattr_sets: Vec::new(),
            },
            bound: HashMap::with_capacity(ztoc.toc.len()),
            whiteouts: Vec::new(),
            opaque: Vec::new(),
        };
        let root = builder.new_dir(Ino::ROOT, synthesized())?;
        debug_assert_eq!(root, Ino::ROOT);
        for (index, entry) in ztoc.toc.iter().enumerate() {
            builder.add(index, entry)?;
        }
        builder.finish()
    }
}

fn synthesized() -> Common {
    Common {
        perm: 0o755,
        uid: 0,
        gid: 0,
        mtime: (0, 0),
        xattrs: 0,
    }
}

impl Builder {
    fn intern(&mut self, bytes: &[u8]) -> Result<ByteRef> {
        let start = to_u32(self.tree.bytes.len(), "name bytes")?;
        let len = to_u32(bytes.len(), "name bytes")?;
        to_u32(
            self.tree.bytes.len().saturating_add(bytes.len()),
            "name bytes",
        )?;
        self.tree.bytes.extend_from_slice(bytes);
        Ok(ByteRef { start, len })
    }

    fn push_node(&mut self, payload: Payload, common: &Common, size: u64) -> Result<Ino> {
        let ino = Ino(self.tree.nodes.len() as u64 + 1);
        to_u32(self.tree.nodes.len().saturating_add(1), "inodes")?;
        self.tree.nodes.push(Node {
            payload,
            perm: common.perm,
            nlink: 0,
            uid: common.uid,
            gid: common.gid,
            mtime_nanos: common.mtime.1,
            xattrs: common.xattrs,
            mtime_secs: common.mtime.0,
            size,
        });
        Ok(ino)
    }

    fn new_dir(&mut self, parent: Ino, common: Common) -> Result<Ino> {
        let dir = to_u32(self.tree.dirs.len(), "directories")?;
        self.tree.dirs.push(Dir {
            parent,
            children: Vec::new(),
        });
        self.push_node(Payload::Directory { dir }, &common, 0)
    }

    fn dir_of(&self, ino: Ino) -> Option<u32> {
        match self.tree.node(ino)?.payload {
            Payload::Directory { dir } => Some(dir),
            _ => None,
        }
    }

    fn node_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        let index = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        self.tree.nodes.get_mut(index)
    }

    fn child(&self, dir: u32, name: &[u8]) -> Option<Binding> {
        self.bound.get(&key(dir, name)).copied()
    }

    /// Binds `name` in directory `dir` (index) to `ino`, replacing what was
    /// there, and keeps link counts.
    fn bind(&mut self, dir: u32, name: &[u8], ino: Ino) -> Result<()> {
        let k = key(dir, name);
        if let Some(old) = self.bound.get(&k).copied() {
            if old.ino == ino {
                return Ok(());
            }
            if let Some(child) = self
                .tree
                .dirs
                .get_mut(dir as usize)
                .and_then(|d| d.children.get_mut(old.slot as usize))
            {
                child.ino = ino;
            }
            if let Some(node) = self.node_mut(old.ino) {
                node.nlink = node.nlink.saturating_sub(1);
            }
            self.bound.insert(
                k,
                Binding {
                    ino,
                    slot: old.slot,
                },
            );
        } else {
            let name = self.intern(name)?;
            let Some(d) = self.tree.dirs.get_mut(dir as usize) else {
                return Ok(());
            };
            let slot = to_u32(d.children.len(), "directory entries")?;
            d.children.push(Child { name, ino });
            self.bound.insert(k, Binding { ino, slot });
        }
        if let Some(node) = self.node_mut(ino) {
            node.nlink = node.nlink.saturating_add(1);
        }
        Ok(())
    }

    /// Walks `components` from the root, synthesizing missing directories
    /// (0755, docs/format.md §3.6), and returns the last one's inode and dir index.
    fn ensure_dirs(
        &mut self,
        index: usize,
        entry: &[u8],
        components: &[&[u8]],
    ) -> Result<(Ino, u32)> {
        let (mut ino, mut dir) = (Ino::ROOT, 0u32);
        for &component in components {
            let next = match self.child(dir, component) {
                Some(binding) => binding.ino,
                None => {
                    let new = self.new_dir(ino, synthesized())?;
                    self.bind(dir, component, new)?;
                    new
                }
            };
            dir = self.dir_of(next).ok_or_else(|| Error::NotADirectory {
                entry: index,
                name: entry.to_vec(),
                component: component.to_vec(),
            })?;
            ino = next;
        }
        Ok((ino, dir))
    }

    /// Resolves cleaned `components` without creating anything.
    fn resolve(&self, components: &[&[u8]]) -> Option<Ino> {
        let (mut ino, mut dir) = (Ino::ROOT, 0u32);
        let mut rest = components.iter().peekable();
        while let Some(&component) = rest.next() {
            ino = self.child(dir, component)?.ino;
            if rest.peek().is_some() {
                dir = self.dir_of(ino)?;
            }
        }
        Some(ino)
    }

    fn common(&mut self, index: usize, entry: &FileMetadata) -> Result<Common> {
        let mut xattrs = Vec::new();
        for (name, value) in sochi_tar::entry_xattrs(&entry.pax_records) {
            // The policy the unpack applies too: a layer that would not
            // unpack is not served lazily either.
            sochi_tar::check_xattr(name, value).map_err(|reason| Error::XattrRefused {
                entry: index,
                name: entry.name.clone(),
                uncompressed_offset: entry.uncompressed_offset,
                key: name.to_vec(),
                reason,
            })?;
            xattrs.push((self.intern(name)?, self.intern(value)?));
        }
        let xattrs = if xattrs.is_empty() {
            0
        } else {
            self.tree.xattr_sets.push(xattrs);
            to_u32(self.tree.xattr_sets.len(), "xattr sets")?
        };
        Ok(Common {
            // Permission bits plus setuid, setgid and sticky (docs/format.md §3.6).
            perm: (entry.mode & 0o7777) as u16,
            uid: entry.uid,
            gid: entry.gid,
            mtime: mtime(entry),
            xattrs,
        })
    }

    fn add(&mut self, index: usize, entry: &FileMetadata) -> Result<()> {
        let components = clean(&entry.name);
        let Some((&last, parents)) = components.split_last() else {
            // The root itself: a directory entry sets its attributes; any
            // other type cannot replace the root and is ignored.
            if entry.entry_type == EntryType::Directory {
                let common = self.common(index, entry)?;
                self.set_attrs(Ino::ROOT, &common);
            }
            return Ok(());
        };
        if parents.iter().any(|c| c.starts_with(WHITEOUT_PREFIX)) {
            // Below a whiteout name: unreachable, since lookups of `.wh.`
            // names find nothing.
            return Ok(());
        }
        let (parent, dir) = self.ensure_dirs(index, &entry.name, parents)?;
        if last == OPAQUE_MARKER {
            self.opaque.push(parent);
            return Ok(());
        }
        if let Some(name) = last.strip_prefix(WHITEOUT_PREFIX) {
            if !name.is_empty() && !name.starts_with(WHITEOUT_PREFIX) {
                self.whiteouts.push(Whiteout {
                    dir,
                    name: name.to_vec(),
                    mtime: mtime(entry),
                });
            }
            return Ok(());
        }
        let corrupt = |what, value| Error::Corrupt {
            entry: index,
            what,
            value,
        };
        let device = |value: i64, what| u32::try_from(value).map_err(|_| corrupt(what, value));
        let ino = match entry.entry_type {
            EntryType::Hardlink => self.hardlink_target(index, entry)?,
            EntryType::Directory => {
                let common = self.common(index, entry)?;
                if let Some(existing) = self.child(dir, last) {
                    if self.dir_of(existing.ino).is_some() {
                        // A later entry for an existing directory overwrites
                        // its attributes and keeps its children (docs/format.md §3.6).
                        self.set_attrs(existing.ino, &common);
                        return Ok(());
                    }
                }
                self.new_dir(parent, common)?
            }
            EntryType::Regular => {
                let size = u64::try_from(entry.uncompressed_size)
                    .map_err(|_| corrupt("size", entry.uncompressed_size))?;
                if entry.uncompressed_offset < 0 {
                    return Err(corrupt("offset", entry.uncompressed_offset));
                }
                let common = self.common(index, entry)?;
                let toc_entry = to_u32(index, "toc entries")?;
                self.push_node(Payload::Regular { entry: toc_entry }, &common, size)?
            }
            EntryType::Symlink => {
                let common = self.common(index, entry)?;
                let target = self.intern(&entry.linkname)?;
                let size = entry.linkname.len() as u64;
                self.push_node(Payload::Symlink { target }, &common, size)?
            }
            EntryType::CharDevice | EntryType::BlockDevice => {
                let major = device(entry.devmajor, "devmajor")?;
                let minor = device(entry.devminor, "devminor")?;
                let common = self.common(index, entry)?;
                let payload = if entry.entry_type == EntryType::CharDevice {
                    Payload::CharDevice { major, minor }
                } else {
                    Payload::BlockDevice { major, minor }
                };
                self.push_node(payload, &common, 0)?
            }
            EntryType::Fifo => {
                let common = self.common(index, entry)?;
                self.push_node(Payload::Fifo, &common, 0)?
            }
        };
        self.bind(dir, last, ino)
    }

    /// The node a hard link entry names: one added before it, and not a
    /// directory.
    fn hardlink_target(&self, index: usize, entry: &FileMetadata) -> Result<Ino> {
        let target = clean(&entry.linkname);
        let error = |missing: bool| {
            let (name, target) = (entry.name.clone(), entry.linkname.clone());
            if missing {
                Error::HardlinkTargetMissing {
                    entry: index,
                    name,
                    target,
                }
            } else {
                Error::HardlinkToDirectory {
                    entry: index,
                    name,
                    target,
                }
            }
        };
        let ino = self.resolve(&target).ok_or_else(|| error(true))?;
        if self.dir_of(ino).is_some() {
            return Err(error(false));
        }
        Ok(ino)
    }

    fn set_attrs(&mut self, ino: Ino, common: &Common) {
        if let Some(node) = self.node_mut(ino) {
            node.perm = common.perm;
            node.uid = common.uid;
            node.gid = common.gid;
            node.mtime_secs = common.mtime.0;
            node.mtime_nanos = common.mtime.1;
            node.xattrs = common.xattrs;
        }
    }

    fn finish(mut self) -> Result<LayerTree> {
        // Whiteouts: `.wh.<x>` is a 0/0 character device `<x>` unless the
        // layer has a real `<x>` (docs/format.md §3.6).
        for whiteout in std::mem::take(&mut self.whiteouts) {
            if self.child(whiteout.dir, &whiteout.name).is_some() {
                continue;
            }
            let common = Common {
                perm: 0,
                uid: 0,
                gid: 0,
                mtime: whiteout.mtime,
                xattrs: 0,
            };
            let payload = Payload::CharDevice { major: 0, minor: 0 };
            let ino = self.push_node(payload, &common, 0)?;
            self.bind(whiteout.dir, &whiteout.name, ino)?;
        }
        // Opaque directories get `trusted.overlay.opaque = y`.
        for ino in std::mem::take(&mut self.opaque) {
            let (name, value) = (self.intern(OPAQUE_XATTR)?, self.intern(b"y")?);
            let Some(current) = self.tree.node(ino).map(|node| node.xattrs) else {
                continue;
            };
            let mut set: Vec<(ByteRef, ByteRef)> = current
                .checked_sub(1)
                .and_then(|i| self.tree.xattr_sets.get(i as usize))
                .cloned()
                .unwrap_or_default();
            set.retain(|&(n, _)| self.tree.slice(n) != OPAQUE_XATTR);
            set.push((name, value));
            self.tree.xattr_sets.push(set);
            let index = to_u32(self.tree.xattr_sets.len(), "xattr sets")?;
            if let Some(node) = self.node_mut(ino) {
                node.xattrs = index;
            }
        }
        self.bound = HashMap::new();
        let mut tree = self.tree;
        // Sort children for binary search; count subdirectories for nlink.
        let mut subdirs = vec![0u32; tree.dirs.len()];
        for (dir, count) in tree.dirs.iter_mut().zip(subdirs.iter_mut()) {
            let bytes = &tree.bytes;
            let slice = |r: ByteRef| {
                let start = r.start as usize;
                bytes
                    .get(start..start.saturating_add(r.len as usize))
                    .unwrap_or(&[])
            };
            dir.children
                .sort_unstable_by(|a, b| slice(a.name).cmp(slice(b.name)));
            dir.children.shrink_to_fit();
            *count = dir
                .children
                .iter()
                .filter(|child| {
                    let index = child.ino.0.saturating_sub(1) as usize;
                    matches!(
                        tree.nodes.get(index).map(|n| n.payload),
                        Some(Payload::Directory { .. })
                    )
                })
                .count() as u32;
        }
        for node in &mut tree.nodes {
            if let Payload::Directory { dir } = node.payload {
                node.nlink = subdirs.get(dir as usize).map_or(2, |n| n.saturating_add(2));
            }
        }
        tree.nodes.shrink_to_fit();
        tree.dirs.shrink_to_fit();
        tree.bytes.shrink_to_fit();
        tree.xattr_sets.shrink_to_fit();
        Ok(tree)
    }
}
