//! The payments the core holds, with an index of each key's: pricing, replanning and the
//! look-ahead of late checks visit one key's payments, and with many accounts a pass over
//! every payment per key would cost the square of their number.

use super::{Entry, PoolId};
use crate::payment::{KeyMap, KeySet, PaymentKey};

#[derive(Default)]
pub(super) struct Entries {
    /// Boxed: the table (with its spare room) holds a pointer a payment, not the whole
    /// entry, and growing it moves pointers only.
    map: KeyMap<Box<Entry>>,
    /// Indexed by [`PoolId`]: the keys of the payments checked with that key.
    by_pool: Vec<KeySet>,
}

impl Entries {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, pk: &PaymentKey) -> Option<&Entry> {
        self.map.get(pk).map(|e| &**e)
    }

    /// A payment's entry to change; its pool is fixed at [`Entries::insert`].
    pub(super) fn get_mut(&mut self, pk: &PaymentKey) -> Option<&mut Entry> {
        self.map.get_mut(pk).map(|e| &mut **e)
    }

    pub(super) fn contains_key(&self, pk: &PaymentKey) -> bool {
        self.map.contains_key(pk)
    }

    pub(super) fn insert(&mut self, e: Entry) {
        let p = e.pool.index();
        if self.by_pool.len() <= p {
            self.by_pool.resize_with(p + 1, KeySet::default);
        }
        self.by_pool[p].insert(e.pk);
        if let Some(old) = self.map.insert(e.pk, Box::new(e)) {
            // A payment's pool does not change; should it, the old index must not keep it.
            if old.pool.index() != p {
                self.by_pool[old.pool.index()].remove(&old.pk);
            }
        }
    }

    pub(super) fn remove(&mut self, pk: &PaymentKey) -> Option<Entry> {
        let e = self.map.remove(pk)?;
        if let Some(set) = self.by_pool.get_mut(e.pool.index()) {
            set.remove(pk);
        }
        Some(*e)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.map.values().map(|e| &**e)
    }

    /// The payments of pool `p`.
    pub(super) fn of_pool(&self, p: PoolId) -> impl Iterator<Item = &Entry> {
        self.by_pool
            .get(p.index())
            .into_iter()
            .flatten()
            .filter_map(|pk| self.map.get(pk).map(|e| &**e))
    }
}

impl std::ops::Index<&PaymentKey> for Entries {
    type Output = Entry;

    fn index(&self, pk: &PaymentKey) -> &Entry {
        &self.map[pk]
    }
}
