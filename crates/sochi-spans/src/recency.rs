//! Spans of many owners in order of last use, with their bytes counted:
//! the bookkeeping that both node-wide bounds share, the memory cache
//! ([`crate::SpanMemory`], owners are layers) and the disk budget
//! ([`crate::DiskBudget`], owners are layers' disk caches).
//!
//! Invariants: `bytes` is the sum of the entries' lengths; `order` holds
//! one tick per entry, its last use.

use std::collections::{BTreeMap, HashMap};

/// An owner's key: a layer, or a layer's disk cache.
pub(crate) type Owner = u64;

/// A span of an owner.
pub(crate) type SpanKey = (Owner, usize);

pub(crate) struct Recency<V> {
    /// Each span's value, length and last-use tick.
    entries: HashMap<SpanKey, (V, u64, u64)>,
    /// Last-use tick → entry: the first is the least recently used.
    order: BTreeMap<u64, SpanKey>,
    bytes: u64,
    tick: u64,
}

impl<V> Default for Recency<V> {
    fn default() -> Self {
        Recency {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            bytes: 0,
            tick: 0,
        }
    }
}

impl<V> Recency<V> {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Bytes of all entries.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn contains(&self, key: SpanKey) -> bool {
        self.entries.contains_key(&key)
    }

    /// Entries of `owner`.
    pub(crate) fn owner_len(&self, owner: Owner) -> usize {
        self.entries.keys().filter(|(o, _)| *o == owner).count()
    }

    /// Records `key` (`len` bytes) as used now; returns what it replaced.
    pub(crate) fn insert(&mut self, key: SpanKey, value: V, len: u64) -> Option<(V, u64)> {
        let replaced = self.remove(key);
        let tick = self.next_tick();
        self.entries.insert(key, (value, len, tick));
        self.order.insert(tick, key);
        self.bytes += len;
        replaced
    }

    /// Marks `key` as used now, if held, and returns its value.
    pub(crate) fn touch(&mut self, key: SpanKey) -> Option<&V> {
        let tick = self.next_tick();
        let (_, _, old) = self.entries.get_mut(&key)?;
        let old = std::mem::replace(old, tick);
        self.order.remove(&old);
        self.order.insert(tick, key);
        self.entries.get(&key).map(|(value, _, _)| value)
    }

    /// Drops `key`; returns its value and length.
    pub(crate) fn remove(&mut self, key: SpanKey) -> Option<(V, u64)> {
        let (value, len, tick) = self.entries.remove(&key)?;
        self.order.remove(&tick);
        self.bytes = self.bytes.saturating_sub(len);
        Some((value, len))
    }

    /// The least recently used entry that `wanted` accepts.
    pub(crate) fn oldest(&self, wanted: impl Fn(&SpanKey) -> bool) -> Option<SpanKey> {
        self.order.values().find(|key| wanted(key)).copied()
    }

    /// Drops every entry of `owner`.
    pub(crate) fn remove_owner(&mut self, owner: Owner) {
        let keys: Vec<SpanKey> = self
            .entries
            .keys()
            .filter(|(o, _)| *o == owner)
            .copied()
            .collect();
        for key in keys {
            self.remove(key);
        }
    }
}
