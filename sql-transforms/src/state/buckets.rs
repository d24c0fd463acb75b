//! A map keyed by uuid whose rows are spread over buckets, each with a
//! version that moves whenever one of its rows changes.
//!
//! The Arrow copy of a state table is kept per bucket: after a flush of a
//! hundred changes to a catalog of a million rows, only the buckets those
//! changes fell into are rebuilt, not the whole table.

use std::collections::HashMap;

use super::Guid;

/// Fewest buckets a map has (2^4).
const MIN_BITS: u32 = 4;
/// Rows per bucket past which the buckets double.
const ROWS_PER_BUCKET: usize = 128;

/// A `HashMap<Guid, V>` in buckets with versions (see the module docs).
#[derive(Debug)]
pub struct BucketedMap<V> {
    buckets: Vec<HashMap<Guid, V>>,
    versions: Vec<u64>,
    bits: u32,
    len: usize,
    /// Moves when rows change bucket (growth, clear): every cached part is stale.
    layout: u64,
}

impl<V> Default for BucketedMap<V> {
    fn default() -> Self {
        Self::with_bits(MIN_BITS, 0)
    }
}

impl<V> BucketedMap<V> {
    fn with_bits(bits: u32, layout: u64) -> Self {
        let n = 1usize << bits;
        Self {
            buckets: (0..n).map(|_| HashMap::new()).collect(),
            versions: vec![0; n],
            bits,
            len: 0,
            layout,
        }
    }

    /// The bucket of `key`. Uuids are mostly random bits already; the
    /// multiply spreads the ones that are not (a v7 timestamp).
    fn bucket_of(&self, key: Guid) -> usize {
        let folded = (key as u64) ^ ((key >> 64) as u64);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    fn changed(&mut self, bucket: usize) {
        self.versions[bucket] = self.versions[bucket].wrapping_add(1);
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The row of `key`.
    pub fn get(&self, key: &Guid) -> Option<&V> {
        self.buckets[self.bucket_of(*key)].get(key)
    }

    /// The row of `key`, to change in place.
    pub fn get_mut(&mut self, key: &Guid) -> Option<&mut V> {
        let b = self.bucket_of(*key);
        let row = self.buckets[b].get_mut(key)?;
        self.versions[b] = self.versions[b].wrapping_add(1);
        Some(row)
    }

    /// Whether `key` has a row.
    pub fn contains_key(&self, key: &Guid) -> bool {
        self.get(key).is_some()
    }

    /// Sets the row of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: Guid, value: V) -> Option<V> {
        let b = self.bucket_of(key);
        self.changed(b);
        let old = self.buckets[b].insert(key, value);
        if old.is_none() {
            self.len += 1;
            self.grow_if_full();
        }
        old
    }

    /// Removes the row of `key`.
    pub fn remove(&mut self, key: &Guid) -> Option<V> {
        let b = self.bucket_of(*key);
        let old = self.buckets[b].remove(key)?;
        self.changed(b);
        self.len -= 1;
        Some(old)
    }

    /// The row of `key`, created empty if there is none.
    pub fn get_or_default(&mut self, key: Guid) -> &mut V
    where
        V: Default,
    {
        if !self.contains_key(&key) {
            // Inserting first: it may grow the map and move the key's bucket.
            self.insert(key, V::default());
        }
        let b = self.bucket_of(key);
        self.changed(b);
        self.buckets[b].entry(key).or_default()
    }

    /// Removes every row.
    pub fn clear(&mut self) {
        *self = Self::with_bits(MIN_BITS, self.layout.wrapping_add(1));
    }

    /// Every row, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Guid, &V)> {
        self.buckets.iter().flatten()
    }

    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.buckets.iter().flat_map(HashMap::values)
    }

    /// Number of buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The rows of bucket `b`.
    pub fn bucket(&self, b: usize) -> &HashMap<Guid, V> {
        &self.buckets[b]
    }

    /// Which contents bucket `b` has: equal tags, equal rows.
    pub fn tag(&self, b: usize) -> (u64, u64) {
        (self.layout, self.versions[b])
    }

    fn grow_if_full(&mut self) {
        if self.len <= self.buckets.len() * ROWS_PER_BUCKET {
            return;
        }
        let old = std::mem::replace(
            self,
            Self::with_bits(self.bits + 1, self.layout.wrapping_add(1)),
        );
        self.len = old.len;
        for (key, value) in old.buckets.into_iter().flatten() {
            let b = self.bucket_of(key);
            self.buckets[b].insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_keeps_every_row() {
        let mut m = BucketedMap::default();
        let n = 16 * ROWS_PER_BUCKET as u128 * 4;
        for k in 0..n {
            m.insert(k * 7919, k);
        }
        assert_eq!(m.len(), n as usize);
        assert!(m.bucket_count() >= 64);
        for k in 0..n {
            assert_eq!(m.get(&(k * 7919)), Some(&k));
        }
        assert_eq!(m.iter().count(), n as usize);
        let largest = (0..m.bucket_count())
            .map(|b| m.bucket(b).len())
            .max()
            .unwrap_or(0);
        assert!(
            largest < ROWS_PER_BUCKET * 2,
            "buckets are uneven: {largest}"
        );
    }

    #[test]
    fn a_change_moves_only_its_bucket() {
        let mut m = BucketedMap::default();
        for k in 0..100u128 {
            m.insert(k << 64 | k, k);
        }
        let before: Vec<_> = (0..m.bucket_count()).map(|b| m.tag(b)).collect();
        let key = 42u128 << 64 | 42;
        *m.get_mut(&key).unwrap() = 0;
        let moved: Vec<usize> = (0..m.bucket_count())
            .filter(|&b| m.tag(b) != before[b])
            .collect();
        assert_eq!(moved, vec![m.bucket_of(key)]);

        // Removing a key that is not there changes nothing.
        assert!(m.remove(&7).is_none());
        assert_eq!(m.tag(m.bucket_of(7)), before[m.bucket_of(7)]);

        m.clear();
        assert_eq!(m.len(), 0);
        assert!((0..m.bucket_count()).all(|b| m.tag(b).0 != before[0].0));
    }
}
