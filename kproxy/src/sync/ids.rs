//! Allocation of service port ids: small integers that index the datapath's arrays.

use std::collections::BTreeSet;

/// Ids in `0..limit`, lowest free first. Freed ids are reused (their counters are reset when
/// freed, ready to be handed out again, see `MapOp::ResetServiceCounters`).
#[derive(Clone, Debug)]
pub struct IdPool {
    limit: u32,
    next: u32,
    free: BTreeSet<u32>,
}

impl IdPool {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            next: 0,
            free: BTreeSet::new(),
        }
    }

    /// Rebuilds a pool in which `used` are taken.
    pub fn with_used(limit: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|&id| id < limit).collect();
        let next = used.last().map_or(0, |&max| max + 1);
        let free = (0..next).filter(|id| !used.contains(id)).collect();
        Self { limit, next, free }
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub fn release(&mut self, id: u32) {
        if id < self.next {
            self.free.insert(id);
        }
    }

    /// Ids handed out before and free now.
    pub fn free_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied()
    }

    pub fn in_use(&self) -> usize {
        self.next as usize - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn hands_out_lowest_free_id_within_limit() {
        let mut pool = IdPool::new(3);
        assert_eq!(
            [pool.allocate(), pool.allocate(), pool.allocate()],
            [Some(0), Some(1), Some(2)]
        );
        assert_eq!(pool.allocate(), None, "limit reached");
        pool.release(1);
        assert_eq!(pool.in_use(), 2);
        assert_eq!(pool.allocate(), Some(1));
    }

    #[test]
    fn rebuilds_from_used_ids() {
        let mut pool = IdPool::with_used(10, [0, 3, 4]);
        assert_eq!(pool.in_use(), 3);
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(2));
        assert_eq!(pool.allocate(), Some(5));
    }
}
