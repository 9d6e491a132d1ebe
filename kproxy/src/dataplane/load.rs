//! Loading the eBPF object with its maps pinned, reusing the maps a previous agent left.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader, maps::MapInfo};
use kproxy_common::names;

use super::{OBJECT, bpffs};

/// Map capacities an operator can choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service ports (frontends).
    pub services: u32,
    /// Backends across all service ports (slots get twice this: two banks).
    pub backends: u32,
    /// Conntrack entries per direction.
    pub conntrack: u32,
    /// ClientIP affinity entries.
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: 65_536,
            backends: 262_144,
            conntrack: 262_144,
            affinity: 65_536,
        }
    }
}

impl MapSizes {
    fn max_entries(&self) -> [(&'static str, u32); 9] {
        [
            (names::MAP_SERVICES, self.services),
            (names::MAP_RR, self.services),
            (names::MAP_SVC_STATS, self.services),
            (names::MAP_BACKENDS, self.backends),
            (names::MAP_BE_STATS, self.backends),
            (names::MAP_SLOTS, self.backends.saturating_mul(2)),
            (names::MAP_CT_FWD, self.conntrack),
            (names::MAP_CT_REV, self.conntrack),
            (names::MAP_AFFINITY, self.affinity),
        ]
    }
}

pub fn map_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// For upgrade tests only: names an eBPF object file to load instead of the embedded one, so a
/// test can upgrade a running datapath to other programs (tests/tests/restart_under_load.rs).
/// Not the build-time `KPROXY_BPF_OBJECT` of build.rs, which chooses what gets embedded.
pub const TEST_OBJECT_ENV: &str = "KPROXY_TEST_BPF_OBJECT";

/// The object to load: the embedded one, unless `KPROXY_TEST_BPF_OBJECT` names a file.
fn object() -> Result<Cow<'static, [u8]>> {
    let Some(path) = std::env::var_os(TEST_OBJECT_ENV) else {
        return Ok(Cow::Borrowed(OBJECT));
    };
    let path = PathBuf::from(path);
    tracing::warn!(object = %path.display(), "{TEST_OBJECT_ENV} is set: loading this eBPF object instead of the embedded one (meant for upgrade tests only)");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Cow::Owned(bytes))
}

/// Loads the object; maps are pinned under `pin_dir` (reused when already there and of the
/// same shape). Programs are loaded into the kernel but not attached.
pub fn load(pin_dir: &Path, sizes: &MapSizes) -> Result<Ebpf> {
    bpffs::ensure_pin_dir(pin_dir)?;
    let object = object()?;
    drop_incompatible_pins(pin_dir, sizes, &object)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    for (name, size) in sizes.max_entries() {
        loader.map_max_entries(name, size);
    }
    let mut ebpf = loader.load(&object).context("loading the eBPF object")?;
    for name in names::PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?;
        match program {
            aya::programs::Program::SchedClassifier(p) => p.load(),
            aya::programs::Program::Xdp(p) => p.load(),
            _ => unreachable!("kproxy has only tc and xdp programs"),
        }
        .with_context(|| format!("the kernel rejected program {name}"))?;
    }
    Ok(ebpf)
}

/// A pinned map whose type, key, value, size or flags differ from what this build expects
/// (an older kproxy, or other sizes chosen) is unpinned: reusing it would be wrong, so its
/// state is lost and a fresh map is created. Logged loudly because flows may reset.
fn drop_incompatible_pins(pin_dir: &Path, sizes: &MapSizes, object: &[u8]) -> Result<()> {
    let object = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let overrides = sizes.max_entries();
    for (name, spec) in &object.maps {
        let path = map_pin_path(pin_dir, name);
        if !path.exists() {
            continue;
        }
        let max_entries = overrides
            .iter()
            .find(|(n, _)| n == name)
            .map_or(spec.max_entries(), |(_, v)| *v);
        let compatible = MapInfo::from_pin(&path).is_ok_and(|info| {
            info.map_type().is_ok_and(|t| t as u32 == spec.map_type())
                && info.key_size() == spec.key_size()
                && info.value_size() == spec.value_size()
                && info.max_entries() == max_entries
                && info.map_flags() == spec.map_flags()
        });
        if !compatible {
            tracing::warn!(map = %name, path = %path.display(), "pinned map has another shape; replacing it (its entries are lost)");
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
    }
    Ok(())
}
