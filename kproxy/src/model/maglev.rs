//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016): a lookup table of a prime size M in which each of N backends
//! owns M/N entries (give or take one), filled from a permutation of the table per backend.
//! A flow hashed to an entry goes to its backend, so:
//!
//! - every node given the same backends builds the same table (the permutations come from
//!   the backends' addresses and a fixed hash, never from node-local ids), and the same flow
//!   picks the same backend on every node, and again after its conntrack entry is lost;
//! - when one of N backends goes, its entries go to the others and few others change: about
//!   1/N of the flows move (`tests` measures it).
//!
//! The sync writes it into `KP_MAGLEV`, built when written (`sync::maglev_backend_ids`);
//! the datapath reads the entry a flow's hash picks (`kproxy_common::maglev`).

use std::{hash::Hasher, net::SocketAddr};

use siphasher::sip::SipHasher13;

/// Cilium's default table size: a prime well above any Service's endpoint count, so that
/// entries spread evenly (each backend owns M/N ± 1).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// Fixed keys of the two hashes: the table must not depend on the node, the process or the
/// Rust release (std's hasher may change between releases; SipHash-1-3 does not).
const OFFSET_KEYS: (u64, u64) = (0x6b70_726f_7879_6d31, 0x6d61_676c_6576_0001);
const SKIP_KEYS: (u64, u64) = (0x6b70_726f_7879_6d32, 0x6d61_676c_6576_0002);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime")]
    NotPrime(u32),
    #[error("Maglev table size {size} is not larger than the {backends} backends")]
    TooSmall { size: u32, backends: usize },
}

/// Whether `n` is a prime (trial division: table sizes are below 2^32, checked once).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// Checks that `size` can be a table for `backends` backends.
pub fn check_size(size: u32, backends: usize) -> Result<(), MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if usize::try_from(size).is_ok_and(|s| s <= backends) {
        return Err(MaglevError::TooSmall { size, backends });
    }
    Ok(())
}

fn hash(keys: (u64, u64), backend: &SocketAddr) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(keys.0, keys.1);
    hasher.write(backend.to_string().as_bytes());
    hasher.finish()
}

/// The table of `size` entries for `backends`: each entry the index of its backend in
/// `backends`. The result does not depend on the order of `backends` (ties are broken by
/// address), and is empty without backends.
pub fn table(backends: &[SocketAddr], size: u32) -> Result<Vec<u32>, MaglevError> {
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    check_size(size, backends.len())?;
    let m = u64::from(size);
    // Filled in address order, so the input's order does not matter.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| backends[i]);
    let permutation: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let offset = hash(OFFSET_KEYS, &backends[i]) % m;
            let skip = hash(SKIP_KEYS, &backends[i]) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entries = vec![u32::MAX; size as usize];
    let mut filled = 0usize;
    loop {
        for (turn, &backend) in order.iter().enumerate() {
            let (offset, skip) = permutation[turn];
            // The backend's next preferred entry that is still free.
            let mut slot;
            loop {
                slot = usize::try_from((offset + next[turn] * skip) % m)
                    .expect("an entry of a table that fits in memory");
                next[turn] += 1;
                if entries[slot] == u32::MAX {
                    break;
                }
            }
            entries[slot] = u32::try_from(backend).expect("fewer backends than entries");
            filled += 1;
            if filled == entries.len() {
                return Ok(entries);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                let byte = |v: usize| u8::try_from(v + 2).expect("under 250 per byte");
                SocketAddr::from(([198, 18, byte(i / 250), byte(i % 250)], 8080))
            })
            .collect()
    }

    fn owned(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &b in table {
            counts[b as usize] += 1;
        }
        counts
    }

    #[test]
    fn sizes_must_be_primes_larger_than_the_backend_count() {
        assert!(is_prime(16_381) && is_prime(251) && is_prime(2));
        assert!(!is_prime(16_383) && !is_prime(1) && !is_prime(65_536));
        assert_eq!(check_size(16_383, 3), Err(MaglevError::NotPrime(16_383)));
        assert_eq!(
            check_size(7, 7),
            Err(MaglevError::TooSmall {
                size: 7,
                backends: 7
            })
        );
        assert_eq!(
            table(&backends(3), 16_383),
            Err(MaglevError::NotPrime(16_383))
        );
        assert_eq!(table(&[], DEFAULT_TABLE_SIZE), Ok(Vec::new()));
    }

    #[test]
    fn every_backend_owns_an_even_share_of_the_entries() {
        for n in [1, 2, 3, 10, 100, 1_000] {
            let table = table(&backends(n), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
            let counts = owned(&table, n);
            let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
            // Maglev's round-robin filling: shares differ by at most one entry.
            assert!(max - min <= 1, "{n} backends: {min}..{max}");
        }
    }

    #[test]
    fn the_table_depends_on_the_backends_only_not_their_order() {
        let mut shuffled = backends(10);
        let table_a = table(&shuffled, 251).unwrap();
        shuffled.reverse();
        let table_b = table(&shuffled, 251).unwrap();
        let by_addr = |t: &[u32], list: &[SocketAddr]| -> Vec<SocketAddr> {
            t.iter().map(|&i| list[i as usize]).collect()
        };
        let mut original = shuffled.clone();
        original.reverse();
        assert_eq!(by_addr(&table_a, &original), by_addr(&table_b, &shuffled));
    }

    #[test]
    fn the_table_is_the_same_on_every_node_and_release() {
        // Fixed hashes: this prefix is what every kproxy builds for these backends. A change
        // here moves established flows across an upgrade of a mixed cluster.
        let table = table(&backends(3), 13).unwrap();
        assert_eq!(table, GOLDEN_13);
    }

    /// The table of 13 entries for 198.18.2.{2,3,4}:8080, as this implementation builds it.
    const GOLDEN_13: [u32; 13] = [0, 1, 0, 2, 2, 0, 1, 2, 2, 1, 0, 1, 0];

    /// The fraction of a table's entries whose backend changes when backend `gone` of `n`
    /// is removed.
    fn moved_when_one_goes(n: usize, gone: usize, size: u32) -> f64 {
        let all = backends(n);
        let before = table(&all, size).unwrap();
        let rest: Vec<SocketAddr> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, b)| *b)
            .collect();
        let after = table(&rest, size).unwrap();
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| all[**b as usize] != rest[**a as usize])
            .count();
        #[allow(clippy::cast_precision_loss)]
        let fraction = moved as f64 / f64::from(size);
        fraction
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_entries() {
        // (backends, table size, how many times 1/N may move). Maglev moves little more than
        // the removed backend's share while the table is large against the backends (the
        // paper advises 100 times; Cilium's default of 16,381 suits up to about 160), more
        // as they crowd it. Measured here: 33.52%, 10.51%, 1.59% and 2.45%.
        for (n, size, bound) in [
            (3usize, DEFAULT_TABLE_SIZE, 1.1),
            (10, DEFAULT_TABLE_SIZE, 1.1),
            (100, 65_521, 2.0),
            (100, DEFAULT_TABLE_SIZE, 3.0),
        ] {
            #[allow(clippy::cast_precision_loss)]
            let ideal = 1.0 / n as f64;
            let fraction = moved_when_one_goes(n, n / 2, size);
            println!(
                "{n} backends, table {size}, one removed: {:.2}% of entries moved (1/N = {:.2}%)",
                fraction * 100.0,
                ideal * 100.0
            );
            // The removed backend's entries must move; Maglev moves a few more.
            assert!(fraction >= ideal * 0.99, "{n}: {fraction}");
            assert!(
                fraction <= ideal * bound,
                "{n}: {fraction} moved, 1/N is {ideal}"
            );
        }
    }
}
