//! The maps with a region per CPU (`KP_RR`, `KP_SVC_STATS`): plain arrays of `stride`
//! elements for each possible CPU, CPU `c`'s element of service port `id` at
//! `c * stride + id` (the programs' `per_cpu::index`; `stride` is `--max-services`). The
//! kernel creates such an array at once, where it allocates a per-CPU array's copies entry
//! by entry (127 ms for the two at 65,536 entries, on every start).

use anyhow::{Context, Result};
use aya::maps::{Array, MapData, MapError};

/// Where each CPU's element of a service port lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regions {
    cpus: u32,
    stride: u32,
}

impl Regions {
    /// The layout of `map`: a region for each possible CPU.
    pub fn of(map: &MapData) -> Result<Self> {
        let entries = map
            .info()
            .context("reading a per-CPU region map")?
            .max_entries();
        Self::new(entries, super::possible_cpus()?)
    }

    /// `entries` split into `cpus` regions.
    pub fn new(entries: u32, cpus: usize) -> Result<Self> {
        let cpus = u32::try_from(cpus).context("CPU count")?.max(1);
        anyhow::ensure!(
            entries.is_multiple_of(cpus),
            "{entries} entries do not make {cpus} regions of one length"
        );
        Ok(Self {
            cpus,
            stride: entries / cpus,
        })
    }

    /// Each CPU's value of service port `svc_id` in `map`, in the kernel's CPU order.
    pub fn read<V: aya::Pod>(
        self,
        map: &Array<MapData, V>,
        svc_id: u32,
    ) -> Result<Vec<V>, MapError> {
        self.indexes(svc_id)
            .map(|index| map.get(&index, 0))
            .collect()
    }

    /// The possible CPUs, a region each.
    pub fn cpus(self) -> usize {
        self.cpus as usize
    }

    /// Each CPU's element of service port `svc_id`, in the kernel's CPU order.
    pub fn indexes(self, svc_id: u32) -> impl Iterator<Item = u32> {
        (0..self.cpus).map(move |cpu| cpu * self.stride + svc_id)
    }

    /// The service port whose element `index` is.
    pub fn service_of(self, index: u32) -> u32 {
        index % self.stride
    }

    /// Elements per CPU: the service port ids there is room for.
    pub fn stride(self) -> u32 {
        self.stride
    }

    /// Every element of the map.
    pub fn entries(self) -> u32 {
        self.cpus * self.stride
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_has_a_region_of_its_own() {
        let regions = Regions::new(12, 3).expect("3 regions of 4");
        assert_eq!(regions.stride(), 4);
        assert_eq!(regions.indexes(1).collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(regions.indexes(3).collect::<Vec<_>>(), [3, 7, 11]);
        assert!((0..12).all(|i| regions.indexes(regions.service_of(i)).any(|j| j == i)));
        assert!(Regions::new(13, 3).is_err());
    }
}
