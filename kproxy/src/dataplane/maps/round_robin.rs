//! Where each service port's round robin starts (`KP_RR`, one counter per CPU, in a region
//! per CPU: see `per_cpu`).
//!
//! A service port starts at a random slot, as kube-proxy picks a random endpoint: with a few
//! connections per Service (tens of thousands of Services), starting every one at its first
//! slot sent the first backends more connections than the last (the bench saw 32,694, 32,516
//! and 25,431 over three backends). Each CPU starts one slot further on than the CPU before
//! it, so that the first connections handled on different CPUs go to different backends.

use anyhow::{Context, Result};
use aya::maps::MapData;

use super::per_cpu::Regions;
use crate::dataplane::batch;

/// The counters of a service port whose round robin starts at `start` (modulo its backend
/// count), one per possible CPU in the kernel's order: `start` on the first, one more on each
/// next one.
pub fn starts_at(start: u32, cpus: usize) -> Vec<u64> {
    (u64::from(start)..).take(cpus).collect()
}

/// [`starts_at`] a random start. Below 2^32, so a counter never wraps: 2^64 is no multiple of
/// most backend counts, so a wrap would skip slots.
pub fn random_starts(cpus: usize) -> Vec<u64> {
    starts_at(fastrand::u32(..), cpus)
}

/// Elements written per syscall by [`seed`]: 64 KiB of counters.
const SEED_CHUNK: u32 = 8192;

/// Gives every service port of `map`, a `KP_RR` just created (all zeros), a random start of
/// its own: ids are handed out without being reset first (a reset comes when an id is freed,
/// see `MapOp::ResetServiceCounters`), so an unused id must hold a start already.
pub fn seed(map: &MapData) -> Result<()> {
    let regions = Regions::of(map)?;
    let starts: Vec<u32> = (0..regions.stride()).map(|_| fastrand::u32(..)).collect();
    let mut keys = Vec::with_capacity(SEED_CHUNK as usize);
    let mut values = Vec::with_capacity(SEED_CHUNK as usize);
    for first in (0..regions.entries()).step_by(SEED_CHUNK as usize) {
        keys.clear();
        values.clear();
        for index in first..regions.entries().min(first + SEED_CHUNK) {
            let svc_id = regions.service_of(index);
            // CPU n's region is the n-th: its counter starts n slots further on.
            let cpu = index / regions.stride();
            keys.push(index);
            values.push(u64::from(starts[svc_id as usize]) + u64::from(cpu));
        }
        if let (_, Some(e)) = batch::update(map, &keys, &values) {
            return Err(e).context("writing the round-robin starts into KP_RR");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_starts_one_slot_after_the_one_before() {
        assert_eq!(starts_at(7, 4), [7, 8, 9, 10]);
        assert_eq!(starts_at(u32::MAX, 2), [u64::from(u32::MAX), 1 << 32]);
        let starts = random_starts(3);
        assert_eq!(
            starts,
            starts_at(u32::try_from(starts[0]).expect("below 2^32"), 3)
        );
    }

    #[test]
    fn service_ports_start_at_random_slots() {
        // Over three backends, 300 service ports' first turns on a CPU spread as chance has
        // them, not all on the first slot: each slot gets 100 ± a few dozen.
        let mut first_slots = [0u32; 3];
        for _ in 0..300 {
            let start = random_starts(1)[0];
            first_slots[usize::try_from(start % 3).expect("a slot")] += 1;
        }
        assert!(
            first_slots.iter().all(|&n| (50..=150).contains(&n)),
            "{first_slots:?}"
        );
    }
}
