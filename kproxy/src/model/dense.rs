//! Keeping the large ordered maps (the desired and the programmed frontends, the VIPs)
//! densely packed.
//!
//! A `BTreeMap` filled one insertion at a time splits each full node in two; keys arriving
//! in order (as a first sync's frontends mostly do) leave every node a little over half
//! full, so at 100,000 frontends the two frontend maps held 62 MB where 34 MB would do. A
//! map built at once (`collect`, `append`) fills its nodes. `Densify` counts insertions and rebuilds
//! a map once they are half of it: after a first sync, after a large change, never for
//! the few insertions of a routine one, and at a cost that stays proportional to the
//! insertions (each rebuild follows at least `len / 2` of them).

use std::collections::BTreeMap;

/// Below this many entries a map is never rebuilt: its nodes are a few kilobytes.
const MIN_ENTRIES: usize = 4096;

/// Insertions into one map since it was last rebuilt.
#[derive(Clone, Debug, Default)]
pub struct Densify {
    inserted: usize,
}

impl Densify {
    /// Notes that an entry was added (not replaced) in the map.
    pub fn inserted(&mut self) {
        self.inserted += 1;
    }

    /// Whether `len` entries after the insertions noted call for a rebuild.
    fn due(&self, len: usize) -> bool {
        len >= MIN_ENTRIES && self.inserted >= len / 2
    }

    /// Rebuilds `map` with full nodes when the insertions noted since the last rebuild are
    /// half of it or more; returns whether it did. Contents and order are unchanged.
    pub fn settle<K: Ord, V>(&mut self, map: &mut BTreeMap<K, V>) -> bool {
        if !self.due(map.len()) {
            return false;
        }
        // `append` merges two maps into a new tree built bottom-up with full nodes, freeing
        // the old nodes as it reads them; `collect` would build the same tree but hold every
        // entry in a vector first (17 MB more at the peak of a 100,000-frontend start).
        let mut rest = std::mem::take(map);
        if let Some((key, value)) = rest.pop_first() {
            map.insert(key, value);
            map.append(&mut rest);
        }
        self.inserted = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_rebuilt_once_insertions_are_half_of_it() {
        // (case, entries, insertions noted, rebuilt)
        let cases = [
            (
                "small maps are left alone",
                MIN_ENTRIES - 1,
                MIN_ENTRIES - 1,
                false,
            ),
            ("a first fill", MIN_ENTRIES, MIN_ENTRIES, true),
            ("exactly half inserted", 10_000, 5_000, true),
            ("fewer than half inserted", 10_000, 4_999, false),
            ("a routine change", 100_000, 3, false),
        ];
        for (case, entries, inserted, rebuilt) in cases {
            let mut map: BTreeMap<usize, usize> = (0..entries).map(|k| (k, k)).collect();
            let before = map.clone();
            let mut densify = Densify::default();
            for _ in 0..inserted {
                densify.inserted();
            }
            assert_eq!(densify.settle(&mut map), rebuilt, "{case}");
            assert_eq!(map, before, "{case}: contents kept");
            // A rebuild starts the count again; no rebuild leaves it running.
            assert_eq!(
                densify.inserted,
                if rebuilt { 0 } else { inserted },
                "{case}"
            );
        }
    }
}
