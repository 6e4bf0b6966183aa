//! The on-disk span cache of one layer: one sparse file that holds the
//! layer's uncompressed bytes at their own offsets, and one file with a
//! SHA-256 per span (all zero: not there).
//!
//! Why one file and not one file per span: after `drop_caches`, reading
//! 4 MiB span files in order reached 0.5-0.7x of reading one extracted
//! file from the same ext4, with or without `POSIX_FADV_WILLNEED`; the
//! same spans in one sparse file read at 0.8-1.1x (the kernel's readahead
//! runs across spans, and the blocks lie mostly in order). See the
//! README's bench/mount.sh.
//!
//! Invariants:
//! - An index entry for span `i` means the data file holds span `i`'s
//!   bytes at its uncompressed offsets and slot `i` of the digest file
//!   their SHA-256. `verified` spans were written or hash-checked by this
//!   process and are read in place; others are hashed whole on first use.
//! - A span's bytes are written before its digest, and its digest is
//!   zeroed before its bytes are punched out: a crash leaves at worst a
//!   digest that does not match (a miss), never a match over wrong bytes.
//! - Bytes are punched out only under `gate.write()`, for spans no longer
//!   in the index, and only while no other process has the files open (a
//!   POSIX write lock on the digest file; each user holds a read lock).
//!   Readers hold `gate.read()` from the index look-up to the end of their
//!   read, and writers while they write and index, so no reader sees a
//!   hole where the index promised bytes.
//! - Only pages wholly inside an evicted span are punched: the pages it
//!   shares with its neighbours stay.
//! - All span managers of one process that use the same files share one
//!   [`DiskCache`] (`OPEN`; once its files are deleted, new managers get a
//!   new one), and the files are opened and closed only under `OPEN`'s
//!   lock: closing any descriptor of a file drops all of the process's
//!   POSIX locks on it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::ops::{Deref, Range};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use parking_lot::{Mutex, RwLock};
use rustix::fs::{FallocateFlags, FlockOperation};
use sochi_format::Sha256Digest;

use super::budget::{CacheId, DiskBudget};
use super::Span;
use crate::error::{Error, Result};

/// Size of one slot of the digest file.
const DIGEST_LEN: u64 = 32;

/// Hole punching works on whole pages (of the filesystem; 4 KiB here).
const PAGE: u64 = 4096;

/// The caches open in this process, by data file path, with their number
/// of users.
type OpenCaches = HashMap<PathBuf, (Arc<DiskCache>, usize)>;

static OPEN: LazyLock<Mutex<OpenCaches>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The spans on disk: length and last-use tick of each, for LRU eviction,
/// and which of them this process has written or hash-checked.
#[derive(Default)]
struct DiskIndex {
    entries: HashMap<usize, (u64, u64)>,
    verified: HashSet<usize>,
    bytes: u64,
    tick: u64,
}

impl DiskIndex {
    fn touch(&mut self, span: usize) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(&span) {
            Some(entry) => {
                entry.1 = tick;
                true
            }
            None => false,
        }
    }

    /// Records `span` (of `len` bytes) and returns the spans to drop to
    /// stay within `limit`, never `span` itself.
    fn insert(&mut self, span: usize, len: u64, limit: u64) -> Vec<usize> {
        self.tick += 1;
        self.bytes += len;
        if let Some((old, _)) = self.entries.insert(span, (len, self.tick)) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        let mut evicted = Vec::new();
        while self.bytes > limit {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(id, _)| **id != span)
                .min_by_key(|(_, (_, tick))| *tick)
                .map(|(id, _)| *id)
            else {
                break;
            };
            self.remove(oldest);
            evicted.push(oldest);
        }
        evicted
    }

    fn remove(&mut self, span: usize) {
        self.verified.remove(&span);
        if let Some((len, _)) = self.entries.remove(&span) {
            self.bytes = self.bytes.saturating_sub(len);
        }
    }
}

/// One layer's span cache files, shared by the span managers of this
/// process that use them.
pub(super) struct DiskCache {
    data_path: PathBuf,
    data: File,
    digests_path: PathBuf,
    digests: File,
    index: Mutex<DiskIndex>,
    gate: RwLock<()>,
    limit: AtomicU64,
    /// The layer's spans (all managers of these files cut it alike).
    spans: Vec<Span>,
    /// The node-wide bound this cache counts into, if any.
    budget: OnceLock<(Arc<DiskBudget>, CacheId)>,
}

/// One span manager's use of a [`DiskCache`]; the last use to go closes
/// its files.
pub(super) struct DiskUse {
    cache: Option<Arc<DiskCache>>,
    key: PathBuf,
}

impl Deref for DiskUse {
    type Target = DiskCache;

    fn deref(&self) -> &DiskCache {
        // Only `drop` takes it.
        self.cache.as_deref().expect("a disk cache in use")
    }
}

impl DiskUse {
    /// Counts the cache's spans, those on disk now and those stored from
    /// now on, into `budget` (once: a cache counts into one budget).
    pub(super) fn join_budget(&self, budget: &Arc<DiskBudget>) {
        let Some(cache) = &self.cache else {
            return;
        };
        let id = budget.join(cache);
        if cache.budget.set((Arc::clone(budget), id)).is_err() {
            budget.leave(id);
            return;
        }
        let present: Vec<(usize, u64)> = cache
            .index
            .lock()
            .entries
            .iter()
            .map(|(span, (len, _))| (*span, *len))
            .collect();
        let mut evict = Vec::new();
        for (span, len) in present {
            if len > budget.limit() {
                evict.push((Arc::clone(cache), span));
            } else {
                evict.extend(budget.insert(id, span, len));
            }
        }
        evict_for_budget(evict);
    }
}

/// Evicts the spans a [`DiskBudget`] named, from whichever caches hold
/// them.
fn evict_for_budget(evict: Vec<(Arc<DiskCache>, usize)>) {
    if evict.is_empty() {
        return;
    }
    for (cache, span) in &evict {
        cache.evict(*span);
    }
    // If one of these is the last reference, its files close here: under
    // the lock, as everywhere else.
    let _open = OPEN.lock();
    drop(evict);
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        if let Some((budget, id)) = self.budget.get() {
            budget.leave(*id);
        }
    }
}

impl Drop for DiskUse {
    fn drop(&mut self) {
        let mut open = OPEN.lock();
        if let Some((cache, users)) = open.get_mut(&self.key) {
            // The entry may be a newer cache of the same path (see `open`).
            if self
                .cache
                .as_ref()
                .is_some_and(|mine| Arc::ptr_eq(mine, cache))
            {
                *users -= 1;
                if *users == 0 {
                    open.remove(&self.key);
                }
            }
        }
        // The files close here, if at all, under the lock.
        drop(self.cache.take());
    }
}

impl DiskCache {
    /// The span cache in `dir` (created if missing) for a layer cut into
    /// `spans`, with the spans an earlier process left there (checked
    /// when first used). Layouts of other span geometries of the same
    /// layer live in their own files; span files of earlier sochi
    /// versions are removed.
    pub(super) fn open(dir: &Path, spans: &[Span]) -> Result<DiskUse> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::CacheIo { path, source }
        };
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let dir = dir.canonicalize().map_err(io_error(dir))?;
        let geometry = geometry_id(spans);
        let data_path = dir.join(format!("layer-{geometry}"));
        let mut open = OPEN.lock();
        if let Some((cache, users)) = open.get_mut(&data_path) {
            // A cache whose directory was deleted (a layer released while
            // a manager of it was still ending) keeps its users; a new one
            // starts on disk again.
            let unlinked = cache.data.metadata().map_or(true, |meta| {
                std::os::unix::fs::MetadataExt::nlink(&meta) == 0
            });
            if !unlinked {
                *users += 1;
                return Ok(DiskUse {
                    cache: Some(Arc::clone(cache)),
                    key: data_path,
                });
            }
            open.remove(&data_path);
        }
        remove_span_files(&dir);
        let digests_path = dir.join(format!("digests-{geometry}"));
        let options = {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            options
        };
        let data = options.open(&data_path).map_err(io_error(&data_path))?;
        let digests = options
            .open(&digests_path)
            .map_err(io_error(&digests_path))?;
        // Waits while another process punches holes (a few calls).
        rustix::fs::fcntl_lock(&digests, FlockOperation::LockShared)
            .map_err(|errno| io_error(&digests_path)(errno.into()))?;
        let slots = spans.len() as u64 * DIGEST_LEN;
        let mut table = vec![0u8; spans.len() * DIGEST_LEN as usize];
        if digests.metadata().map_err(io_error(&digests_path))?.len() < slots {
            digests.set_len(slots).map_err(io_error(&digests_path))?;
        }
        digests
            .read_exact_at(&mut table, 0)
            .map_err(io_error(&digests_path))?;
        let mut index = DiskIndex::default();
        for (span, (slot, info)) in table
            .chunks_exact(DIGEST_LEN as usize)
            .zip(spans)
            .enumerate()
        {
            if info.uncompressed_len() > 0 && slot.iter().any(|&b| b != 0) {
                index.insert(span, info.uncompressed_len(), u64::MAX);
            }
        }
        let cache = Arc::new(DiskCache {
            data_path: data_path.clone(),
            data,
            digests_path,
            digests,
            index: Mutex::new(index),
            gate: RwLock::new(()),
            limit: AtomicU64::new(u64::MAX),
            spans: spans.to_vec(),
            budget: OnceLock::new(),
        });
        open.insert(data_path.clone(), (Arc::clone(&cache), 1));
        Ok(DiskUse {
            cache: Some(cache),
            key: data_path,
        })
    }

    /// Bounds the cache to `bytes` of spans (the smallest bound any of
    /// its users asked for).
    pub(super) fn limit_to(&self, bytes: u64) {
        self.limit.fetch_min(bytes, Ordering::Relaxed);
    }

    /// Whether `span` is on disk (no I/O).
    pub(super) fn contains(&self, span: usize) -> bool {
        self.index.lock().entries.contains_key(&span)
    }

    /// Forgets `span` (its bytes did not read back or check out); the
    /// next fetch writes it again.
    fn forget(&self, span: usize) {
        self.index.lock().remove(span);
        if let Some((budget, id)) = self.budget.get() {
            budget.forget(*id, span);
        }
    }

    /// Marks `span` as used now in the budget, if any.
    fn touch_budget(&self, span: usize) {
        if let Some((budget, id)) = self.budget.get() {
            budget.touch(*id, span);
        }
    }

    /// Takes `span` off the disk: a budget wants its room.
    fn evict(&self, span: usize) {
        self.index.lock().remove(span);
        self.punch(&[span]);
    }

    /// Fills `target` from `span` (described by `info`) at `from`, if the
    /// span is on disk and verified by this process. `false`: not here.
    pub(super) fn read_in_place(
        &self,
        span: usize,
        info: &Span,
        from: u64,
        target: &mut [u8],
    ) -> bool {
        let _gate = self.gate.read();
        {
            let mut index = self.index.lock();
            if !index.verified.contains(&span) || !index.touch(span) {
                return false;
            }
        }
        self.touch_budget(span);
        let read = self
            .data
            .read_exact_at(target, info.start_uncompressed + from);
        if read.is_err() {
            self.forget(span);
        }
        read.is_ok()
    }

    /// Whether `span` is on disk and verified by this process: reading it
    /// needs neither a fetch nor a hash.
    pub(super) fn is_verified(&self, span: usize) -> bool {
        self.index.lock().verified.contains(&span)
    }

    /// The bytes of `span`, if on disk; a span this process has not
    /// written or checked yet is hashed against its slot first (a
    /// mismatch is a miss).
    pub(super) fn load(&self, span: usize, info: &Span) -> Option<Arc<[u8]>> {
        let _gate = self.gate.read();
        let verified = {
            let mut index = self.index.lock();
            if !index.touch(span) {
                return None;
            }
            index.verified.contains(&span)
        };
        self.touch_budget(span);
        let mut data = super::zeroed_span(usize::try_from(info.uncompressed_len()).ok()?);
        let buffer = Arc::get_mut(&mut data)?;
        let mut digest = [0u8; DIGEST_LEN as usize];
        let good = self
            .data
            .read_exact_at(buffer, info.start_uncompressed)
            .is_ok()
            && (verified
                || (self
                    .digests
                    .read_exact_at(&mut digest, span as u64 * DIGEST_LEN)
                    .is_ok()
                    && Sha256Digest::of(&data).0 == digest));
        if !good {
            self.forget(span);
            return None;
        }
        self.index.lock().verified.insert(span);
        Some(data)
    }

    /// Writes verified `data` of `span` and returns how many spans were
    /// evicted to stay within the bound (a span larger than the bound is
    /// not kept).
    pub(super) fn store(&self, span: usize, spans: &[Span], data: &[u8]) -> Result<usize> {
        let info = spans.get(span).ok_or_else(|| Error::CacheIo {
            path: self.data_path.clone(),
            source: std::io::Error::other(format!("no span {span}")),
        })?;
        let mut limit = self.limit.load(Ordering::Relaxed);
        if let Some((budget, _)) = self.budget.get() {
            limit = limit.min(budget.limit());
        }
        if data.len() as u64 > limit {
            return Ok(0);
        }
        let evicted = {
            let _gate = self.gate.read();
            self.data
                .write_all_at(data, info.start_uncompressed)
                .map_err(|source| Error::CacheIo {
                    path: self.data_path.clone(),
                    source,
                })?;
            self.digests
                .write_all_at(&Sha256Digest::of(data).0, span as u64 * DIGEST_LEN)
                .map_err(|source| Error::CacheIo {
                    path: self.digests_path.clone(),
                    source,
                })?;
            let mut index = self.index.lock();
            let evicted = index.insert(span, data.len() as u64, limit);
            index.verified.insert(span);
            evicted
        };
        if !evicted.is_empty() {
            self.punch(&evicted);
        }
        let mut count = evicted.len();
        if let Some((budget, id)) = self.budget.get() {
            for span in &evicted {
                budget.forget(*id, *span);
            }
            let evict = budget.insert(*id, span, data.len() as u64);
            count += evict.len();
            evict_for_budget(evict);
        }
        Ok(count)
    }

    /// Gives the disk space of `evicted` spans back, unless another
    /// process uses these files (then the bytes stay until the layer is
    /// released: that process may still read them).
    fn punch(&self, evicted: &[usize]) {
        let _gate = self.gate.write();
        if rustix::fs::fcntl_lock(&self.digests, FlockOperation::NonBlockingLockExclusive).is_err()
        {
            tracing::debug!(file = %self.data_path.display(), "span cache shared with another process: evicted spans stay on disk");
            return;
        }
        for &span in evicted {
            let Some(info) = self.spans.get(span) else {
                continue;
            };
            // Stored again since: its bytes are wanted.
            if self.contains(span) {
                continue;
            }
            if self
                .digests
                .write_all_at(&[0u8; DIGEST_LEN as usize], span as u64 * DIGEST_LEN)
                .is_err()
            {
                continue;
            }
            let start = info.start_uncompressed.next_multiple_of(PAGE);
            let end = info.end_uncompressed / PAGE * PAGE;
            if end > start {
                if let Err(error) = rustix::fs::fallocate(
                    &self.data,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    start,
                    end - start,
                ) {
                    tracing::debug!(span, %error, "cannot punch an evicted span out of the cache file");
                }
            }
        }
        // Back to a read lock: converting a POSIX lock in place cannot fail.
        let _ = rustix::fs::fcntl_lock(&self.digests, FlockOperation::NonBlockingLockShared);
    }

    /// Asks the kernel to read `range` of the layer now
    /// (`POSIX_FADV_WILLNEED`); best effort.
    pub(super) fn advise(&self, range: Range<u64>) {
        if let Some(len) = std::num::NonZeroU64::new(range.end.saturating_sub(range.start)) {
            let _ = rustix::fs::fadvise(
                &self.data,
                range.start,
                Some(len),
                rustix::fs::Advice::WillNeed,
            );
        }
    }
}

/// A name for a span geometry: two zTOCs of one layer with different span
/// sizes number their spans differently, so each gets its own files.
fn geometry_id(spans: &[Span]) -> String {
    let mut bytes = Vec::with_capacity(spans.len() * 16);
    for span in spans {
        bytes.extend_from_slice(&span.start_uncompressed.to_le_bytes());
        bytes.extend_from_slice(&span.end_uncompressed.to_le_bytes());
    }
    Sha256Digest::of(&bytes)
        .to_string()
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect()
}

/// Removes the per-span files (`<id>`, `wip-*`) of sochi versions before
/// the one-file cache: nothing reads them any more.
fn remove_span_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("wip-")
            || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}
