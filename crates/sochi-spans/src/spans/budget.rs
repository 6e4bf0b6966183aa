//! [`DiskBudget`]: one bound for the on-disk span caches of many layers,
//! evicting the least recently used span of any of them.
//!
//! Each layer's cache ([`super::disk::DiskCache`]) keeps its own index and
//! its own bound; a cache that joins a budget also reports every span it
//! stores, reads or drops, and evicts the spans the budget names, whichever
//! layer stored them. Spans of a layer whose background fetch finished are
//! evicted like any other: a later read fetches and verifies them again.
//!
//! Invariants (besides [`Recency`]'s): after [`DiskBudget::insert`] returns,
//! `bytes <= limit` once the caller has evicted what it was told to.
//! A cache that is dropped leaves the budget with its entries (its files
//! are deleted with its layer, or stay for a later process that counts
//! them again when it opens them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::disk::DiskCache;
use crate::recency::Recency;

/// A cache's key in a budget.
pub(super) type CacheId = u64;

/// Bounds the span caches of many layers together. Share it with
/// [`crate::SpanStoreConfig::disk_budget`].
pub struct DiskBudget {
    limit: u64,
    next_cache: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    spans: Recency<()>,
    caches: HashMap<CacheId, Weak<DiskCache>>,
}

impl DiskBudget {
    /// A budget of `limit` bytes of uncompressed spans on disk.
    pub fn new(limit: u64) -> Arc<DiskBudget> {
        Arc::new(DiskBudget {
            limit,
            next_cache: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Its limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of spans on disk now, all layers together.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().spans.bytes()
    }

    /// Spans on disk now, all layers together.
    pub fn spans(&self) -> usize {
        self.inner.lock().spans.len()
    }

    /// Counts `cache` in from now on.
    pub(super) fn join(&self, cache: &Arc<DiskCache>) -> CacheId {
        let id = self.next_cache.fetch_add(1, Ordering::Relaxed);
        self.inner.lock().caches.insert(id, Arc::downgrade(cache));
        id
    }

    /// Records span `span` (`len` bytes) of cache `id` as used now, and
    /// returns the spans to evict so that all caches stay within the limit:
    /// never the span just recorded.
    #[must_use]
    pub(super) fn insert(
        &self,
        id: CacheId,
        span: usize,
        len: u64,
    ) -> Vec<(Arc<DiskCache>, usize)> {
        let mut inner = self.inner.lock();
        inner.spans.insert((id, span), (), len);
        let mut evict = Vec::new();
        while inner.spans.bytes() > self.limit {
            let Some(oldest) = inner.spans.oldest(|key| *key != (id, span)) else {
                break;
            };
            inner.spans.remove(oldest);
            if let Some(cache) = inner.caches.get(&oldest.0).and_then(Weak::upgrade) {
                evict.push((cache, oldest.1));
            }
        }
        evict
    }

    /// Marks span `span` of cache `id` as used now, if counted.
    pub(super) fn touch(&self, id: CacheId, span: usize) {
        self.inner.lock().spans.touch((id, span));
    }

    /// Stops counting span `span` of cache `id` (it left the disk).
    pub(super) fn forget(&self, id: CacheId, span: usize) {
        self.inner.lock().spans.remove((id, span));
    }

    /// Stops counting cache `id` and its spans.
    pub(super) fn leave(&self, id: CacheId) {
        let mut inner = self.inner.lock();
        inner.caches.remove(&id);
        inner.spans.remove_owner(id);
    }
}

impl std::fmt::Debug for DiskBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("DiskBudget")
            .field("limit", &self.limit)
            .field("bytes", &inner.spans.bytes())
            .field("spans", &inner.spans.len())
            .finish()
    }
}
