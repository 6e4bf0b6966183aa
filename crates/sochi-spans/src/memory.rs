//! [`SpanMemory`]: the in-memory span cache of every layer that shares it,
//! under one limit, evicting across layers by recency.
//!
//! A node with fifty images must not hold fifty layers' worth of spans: the
//! snapshotter gives all its layers one `SpanMemory` (its `[directory_cache]
//! memory_bytes`), so the sum is bounded, and the layer read last keeps its
//! spans while one nobody reads gives them up. Each layer may also have a
//! cap of its own (a second limit, evicting that layer's oldest first).
//!
//! Invariants (besides [`Recency`]'s): each layer's entry in `per_layer`
//! is the sum of its spans' lengths; after each insert `bytes <= limit` and
//! the layer's bytes are at most its cap (the entry just inserted stays
//! only if it fits alone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::recency::{Recency, SpanKey};

/// A layer's key in a [`SpanMemory`]: one per span manager.
pub(crate) type LayerKey = u64;

/// Spans in memory for many layers, under one limit. Share it with
/// [`crate::SpanStoreConfig::memory`].
pub struct SpanMemory {
    limit: u64,
    next_layer: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    spans: Recency<Arc<[u8]>>,
    per_layer: HashMap<LayerKey, u64>,
}

impl Inner {
    fn remove(&mut self, key: SpanKey) {
        let Some((_, len)) = self.spans.remove(key) else {
            return;
        };
        if let Some(layer) = self.per_layer.get_mut(&key.0) {
            *layer = layer.saturating_sub(len);
            if *layer == 0 {
                self.per_layer.remove(&key.0);
            }
        }
    }
}

impl SpanMemory {
    /// A cache of at most `limit` bytes of uncompressed spans.
    pub fn new(limit: u64) -> Arc<SpanMemory> {
        Arc::new(SpanMemory {
            limit,
            next_layer: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Its limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of spans held now, all layers together.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().spans.bytes()
    }

    /// Spans held now, all layers together.
    pub fn spans(&self) -> usize {
        self.inner.lock().spans.len()
    }

    /// A key for a new layer.
    pub(crate) fn register(&self) -> LayerKey {
        self.next_layer.fetch_add(1, Ordering::Relaxed)
    }

    /// Span `span` of `layer`, marked as used now.
    pub(crate) fn get(&self, layer: LayerKey, span: usize) -> Option<Arc<[u8]>> {
        self.inner.lock().spans.touch((layer, span)).map(Arc::clone)
    }

    /// Whether span `span` of `layer` is held (not marked as used).
    pub(crate) fn contains(&self, layer: LayerKey, span: usize) -> bool {
        self.inner.lock().spans.contains((layer, span))
    }

    /// How many spans of `layer` are held.
    pub(crate) fn layer_spans(&self, layer: LayerKey) -> usize {
        self.inner.lock().spans.owner_len(layer)
    }

    /// Holds `data` as span `span` of `layer`, then evicts the least
    /// recently used spans until the layer is within `layer_cap` and all
    /// layers within the limit.
    pub(crate) fn insert(&self, layer: LayerKey, span: usize, data: Arc<[u8]>, layer_cap: u64) {
        let mut inner = self.inner.lock();
        inner.remove((layer, span));
        let len = data.len() as u64;
        if len > self.limit.min(layer_cap) {
            return;
        }
        inner.spans.insert((layer, span), data, len);
        *inner.per_layer.entry(layer).or_default() += len;
        while inner.per_layer.get(&layer).copied().unwrap_or(0) > layer_cap {
            match inner.spans.oldest(|(owner, _)| *owner == layer) {
                Some(key) => inner.remove(key),
                None => break,
            }
        }
        while inner.spans.bytes() > self.limit {
            match inner.spans.oldest(|_| true) {
                Some(key) => inner.remove(key),
                None => break,
            }
        }
    }

    /// Drops every span of `layer` (its manager is gone).
    pub(crate) fn remove_layer(&self, layer: LayerKey) {
        let mut inner = self.inner.lock();
        inner.spans.remove_owner(layer);
        inner.per_layer.remove(&layer);
    }
}

impl std::fmt::Debug for SpanMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("SpanMemory")
            .field("limit", &self.limit)
            .field("bytes", &inner.spans.bytes())
            .field("spans", &inner.spans.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(len: usize, fill: u8) -> Arc<[u8]> {
        vec![fill; len].into()
    }

    #[test]
    fn evicts_across_layers_by_recency() {
        let memory = SpanMemory::new(300);
        let (a, b) = (memory.register(), memory.register());
        memory.insert(a, 0, span(100, 1), u64::MAX);
        memory.insert(b, 0, span(100, 2), u64::MAX);
        memory.insert(a, 1, span(100, 3), u64::MAX);
        // a/0 was used last: b/0 is now the oldest.
        assert_eq!(memory.get(a, 0).as_deref(), Some(&[1u8; 100][..]));
        memory.insert(b, 1, span(100, 4), u64::MAX);
        assert_eq!(memory.bytes(), 300);
        assert!(!memory.contains(b, 0));
        for (layer, id) in [(a, 0), (a, 1), (b, 1)] {
            assert!(memory.contains(layer, id), "{layer}/{id}");
        }
    }

    #[test]
    fn a_layer_cap_evicts_that_layer_first() {
        let memory = SpanMemory::new(1000);
        let (a, b) = (memory.register(), memory.register());
        memory.insert(b, 0, span(100, 0), u64::MAX);
        memory.insert(a, 0, span(100, 0), 200);
        memory.insert(a, 1, span(100, 0), 200);
        memory.insert(a, 2, span(100, 0), 200);
        // a's own oldest went, not b's older span.
        assert!(memory.contains(b, 0));
        assert!(!memory.contains(a, 0));
        assert_eq!(memory.layer_spans(a), 2);
        assert_eq!(memory.bytes(), 300);
    }

    #[test]
    fn a_span_larger_than_a_limit_is_not_kept() {
        let memory = SpanMemory::new(150);
        let a = memory.register();
        memory.insert(a, 0, span(100, 0), u64::MAX);
        memory.insert(a, 1, span(200, 0), u64::MAX);
        memory.insert(a, 2, span(120, 0), 100);
        assert!(memory.contains(a, 0));
        assert_eq!(memory.spans(), 1);
        assert_eq!(memory.bytes(), 100);
    }

    #[test]
    fn replacing_a_span_counts_it_once() {
        let memory = SpanMemory::new(1000);
        let a = memory.register();
        memory.insert(a, 0, span(100, 0), u64::MAX);
        memory.insert(a, 0, span(150, 0), u64::MAX);
        assert_eq!((memory.spans(), memory.bytes()), (1, 150));
    }

    #[test]
    fn a_removed_layer_frees_its_spans_only() {
        let memory = SpanMemory::new(1000);
        let (a, b) = (memory.register(), memory.register());
        memory.insert(a, 0, span(100, 0), u64::MAX);
        memory.insert(a, 1, span(100, 0), u64::MAX);
        memory.insert(b, 0, span(100, 0), u64::MAX);
        memory.remove_layer(a);
        assert_eq!((memory.spans(), memory.bytes()), (1, 100));
        assert!(memory.contains(b, 0));
        // Then new spans fill the room it left, nothing else goes.
        memory.insert(b, 1, span(800, 0), u64::MAX);
        assert_eq!(memory.bytes(), 900);
    }
}
