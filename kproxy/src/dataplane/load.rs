//! Loading the eBPF object with its maps pinned, reusing the maps a previous agent left when
//! their layout is this build's.
//!
//! The pinned state carries a layout version (`KP_META`). A starting agent adopts pinned maps
//! only if the version is its own; state of any other version (or of a kproxy from before
//! versions existed) is replaced as a whole, never read with a new meaning. Replacing loses
//! conntrack and affinity, so established flows through kproxy break once, at the upgrade
//! that changes the layout.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapInfo, MapType, ProgramArray},
    programs::Program,
};
use kproxy_common::{meta::Meta, names};

use super::{OBJECT, bpffs, maps::seed_round_robin};

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
    /// Entries of each socket-level load balancing table (`KP_SOCK_*`): sockets pointed at
    /// a backend, unconnected UDP flows, affinities by namespace. 1 while it is off: the
    /// tables are preallocated LRUs, so an unused one of the usual size would hold memory.
    pub sockets: u32,
    /// Service ports that can have a Maglev table at a time (`--maglev-max-services`).
    pub maglev_tables: u32,
    /// Entries of each Maglev table (`--maglev-table-size`, a prime): a load-time constant
    /// of the programs, and a part of each table's key.
    pub maglev_table_size: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: 65_536,
            backends: 262_144,
            conntrack: 262_144,
            affinity: 65_536,
            sockets: 1,
            maglev_tables: 1024,
            maglev_table_size: crate::model::maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

impl MapSizes {
    /// `--socket-lb-max`'s default: as many sockets as flows in the default conntrack table.
    pub const SOCKETS_DEFAULT: u32 = 262_144;

    /// The maps that fill with the cluster and its traffic, and their capacities. Each
    /// IPv6 map has its IPv4 twin's.
    pub fn filling_maps(&self) -> [(&'static str, u32); 11] {
        [
            (names::MAP_SERVICES, self.services),
            (names::MAP_BACKENDS, self.backends),
            (names::MAP_SLOTS, self.backends.saturating_mul(2)),
            (names::MAP_CT_FWD, self.conntrack),
            (names::MAP_CT_REV, self.conntrack),
            (names::MAP_AFFINITY, self.affinity),
            (names::MAP_SERVICES6, self.services),
            (names::MAP_BACKENDS6, self.backends),
            (names::MAP_CT_FWD6, self.conntrack),
            (names::MAP_CT_REV6, self.conntrack),
            (names::MAP_AFFINITY6, self.affinity),
        ]
    }

    /// Every map whose capacity an operator chooses: the filling ones, and those indexed
    /// by service port or backend id.
    fn max_entries(&self) -> Vec<(&'static str, u32)> {
        let mut all = self.filling_maps().to_vec();
        all.extend([
            // A frontend has at most one VIP of its own: as many VIPs as service ports.
            (names::MAP_VIPS, self.services),
            (names::MAP_VIPS6, self.services),
            (names::MAP_RR, self.per_cpu_entries()),
            (names::MAP_SVC_STATS, self.per_cpu_entries()),
            (names::MAP_BE_STATS, self.backends),
            (names::MAP_SOCK_REV, self.sockets),
            (names::MAP_SOCK_REV6, self.sockets),
            (names::MAP_SOCK_FLOWS, self.sockets),
            (names::MAP_SOCK_FLOWS6, self.sockets),
            (names::MAP_SOCK_AFFINITY, self.sockets),
            (names::MAP_SOCK_UDP, self.sockets),
            (names::MAP_SOCK_UDP6, self.sockets),
            (names::MAP_MAGLEV, self.maglev_chunks()),
        ]);
        all
    }

    /// The capacity of the maps with a region of `services` elements per possible CPU
    /// (`KP_RR`, `KP_SVC_STATS`).
    pub fn per_cpu_entries(&self) -> u32 {
        let cpus = aya::util::nr_cpus().map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
        self.services.saturating_mul(cpus)
    }

    /// `KP_MAGLEV`'s capacity: a table in each bank for `maglev_tables` service ports (the
    /// inactive bank's is deleted once a change is published, but both exist meanwhile).
    pub fn maglev_chunks(&self) -> u32 {
        kproxy_common::maglev::chunks(self.maglev_table_size)
            .saturating_mul(2)
            .saturating_mul(self.maglev_tables)
            .max(1)
    }
}

pub fn map_pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// Whether the maps `names`, which come and go together (an object has all of them or
/// none, such as one family's twins), are pinned under `pin_dir`. Some but not all is an
/// error: no object pins that.
pub fn pinned_together(pin_dir: &Path, names: &[&str]) -> Result<bool> {
    let (pinned, missing): (Vec<&str>, Vec<&str>) = names
        .iter()
        .partition(|name| map_pin_path(pin_dir, name).exists());
    match (pinned.is_empty(), missing.is_empty()) {
        (_, true) => Ok(true),
        (true, false) => Ok(false),
        (false, false) => anyhow::bail!(
            "{} pinned without {} under {}: maps of an incomplete or mixed eBPF object",
            pinned.join(", "),
            missing.join(", "),
            pin_dir.display()
        ),
    }
}

/// What a starting agent found under its pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinnedState {
    /// Nothing: fresh maps.
    Fresh,
    /// State of this layout version: adopted.
    Adopted,
    /// State of another layout (described): replaced by fresh maps.
    Replaced(String),
}

/// For upgrade tests only: names an eBPF object file to load instead of the embedded one, so a
/// test can upgrade a running datapath to other programs (tests/tests/restart_under_load.rs).
/// Not the build-time `KPROXY_BPF_OBJECT` of build.rs, which chooses what gets embedded.
pub const TEST_OBJECT_ENV: &str = "KPROXY_TEST_BPF_OBJECT";

/// The object to load: the embedded one, unless `KPROXY_TEST_BPF_OBJECT` names a file.
fn object() -> Result<Cow<'static, [u8]>> {
    let Some(path) = std::env::var_os(TEST_OBJECT_ENV) else {
        return embedded(OBJECT).map(Cow::Borrowed);
    };
    let path = PathBuf::from(path);
    tracing::warn!(object = %path.display(), "{TEST_OBJECT_ENV} is set: loading this eBPF object instead of the embedded one (meant for upgrade tests only)");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Cow::Owned(bytes))
}

/// The embedded object, unless the build had none (see `bpf_object`).
fn embedded(object: &'static [u8]) -> Result<&'static [u8]> {
    anyhow::ensure!(!object.is_empty(), crate::bpf_object::MISSING);
    Ok(object)
}

/// Loads the object; maps are pinned under `pin_dir`, reused when they hold state of this
/// layout version and have the same shape. Programs are loaded into the kernel but not
/// attached.
pub fn load(pin_dir: &Path, sizes: &MapSizes) -> Result<(Ebpf, PinnedState)> {
    load_with(pin_dir, sizes, true)
}

/// [`load`], with the XDP program verified now only if `xdp` (an agent with no XDP
/// interfaces never attaches it, and one given some later loads it at its first attach):
/// a quarter of a second of the kernel's time saved at every start.
pub fn load_with(pin_dir: &Path, sizes: &MapSizes, xdp: bool) -> Result<(Ebpf, PinnedState)> {
    let (unverified, state) = open_maps(pin_dir, sizes)?;
    Ok((unverified.verify(xdp)?, state))
}

/// The object with its maps created (or adopted) and pinned, its programs not yet given to
/// the kernel: the maps can be written while the kernel verifies the programs, which is
/// most of a start.
pub struct Unverified {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    adopted: bool,
}

impl Unverified {
    /// Has the kernel verify the programs (see [`load_with`] for `xdp`), then records that
    /// the pinned maps hold this layout's state, and returns the object.
    pub fn verify(mut self, xdp: bool) -> Result<Ebpf> {
        load_programs(&mut self.ebpf, xdp)?;
        if !self.adopted {
            write_meta(&self.pin_dir, &Meta::new())?;
        }
        Ok(self.ebpf)
    }
}

/// aya's loader, without the kernel's type information (BTF). aya parses all of
/// `/sys/kernel/btf/vmlinux` whenever a loader is made, for CO-RE relocations that kproxy's
/// TC and XDP programs do not have: tens of megabytes of heap while it lives, most of an
/// agent's peak memory if it coincides with the first list of a large cluster. So the loader
/// is made first, on the thread that goes on to decode the lists (whose allocator then
/// reuses that memory), and the parsed BTF is dropped at once.
pub fn loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// The first phase of [`load_with`]: the maps, created or adopted and pinned, and what was
/// found under `pin_dir`.
pub fn open_maps(pin_dir: &Path, sizes: &MapSizes) -> Result<(Unverified, PinnedState)> {
    open_maps_with(loader(), pin_dir, sizes)
}

/// [`open_maps`] with a loader made by [`loader`].
pub fn open_maps_with(
    mut loader: EbpfLoader<'static>,
    pin_dir: &Path,
    sizes: &MapSizes,
) -> Result<(Unverified, PinnedState)> {
    bpffs::ensure_pin_dir(pin_dir)?;
    let object = object()?;
    let state = check_layout(pin_dir)?;
    if let PinnedState::Replaced(found) = &state {
        tracing::warn!(
            pin_dir = %pin_dir.display(),
            %found,
            "pinned state has another layout version; replacing it with fresh maps \
             (established flows and affinities are lost)"
        );
        remove_map_pins(pin_dir)?;
    }
    drop_incompatible_pins(pin_dir, sizes, &object)?;
    // A KP_RR this load creates (fresh state, or a pin replaced above: of another size, the
    // per-CPU array of the builds before, or their counter shared by all CPUs) is all zeros, where every service
    // port must hold a random start.
    let round_robin_created = !map_pin_path(pin_dir, names::MAP_RR).exists();
    loader.default_map_pin_directory(pin_dir);
    // The loader borrows the values for its life: leaked, eight bytes per load.
    let table_size: &'static u32 = Box::leak(Box::new(sizes.maglev_table_size));
    loader.override_global(names::GLOBAL_MAGLEV_TABLE_SIZE, table_size, true);
    let max_services: &'static u32 = Box::leak(Box::new(sizes.services));
    loader.override_global(names::GLOBAL_MAX_SERVICES, max_services, true);
    for (name, size) in sizes.max_entries() {
        loader.map_max_entries(name, size);
    }
    let ebpf = loader.load(&object).context("loading the eBPF object")?;
    if round_robin_created {
        match ebpf.map(names::MAP_RR) {
            Some(Map::Array(rr)) => seed_round_robin(rr)?,
            _ => anyhow::bail!(
                "map {} missing from the object or not an array",
                names::MAP_RR
            ),
        }
    }
    let unverified = Unverified {
        ebpf,
        pin_dir: pin_dir.to_owned(),
        adopted: state == PinnedState::Adopted,
    };
    Ok((unverified, state))
}

/// The programs in the order they are verified: the longest first, so that the threads
/// taking them one after another end close together (longest-first scheduling). Their
/// verification times, from the log of a start (2026-12-06, `kproxy::dataplane::load=debug`):
/// egress 282 ms, ingress 238, IPv6 flow 139 and create 121, then 19-46 each. The XDP
/// programs are the TC ones' counterparts. A program not named here goes last.
const LONGEST_FIRST: [&str; 14] = [
    names::PROG_TC_EGRESS,
    names::PROG_TC_INGRESS,
    names::PROG_XDP,
    names::PROG_TC6_FLOW,
    names::PROG_XDP6_FLOW,
    names::PROG_TC6_CREATE,
    names::PROG_XDP6_CREATE,
    names::PROG_TC6_DECIDE,
    names::PROG_XDP6_DECIDE,
    names::PROG_TC6_ICMP,
    names::PROG_XDP6_ICMP,
    names::PROG_TC_EGRESS6,
    names::PROG_TC_INGRESS6,
    names::PROG_XDP6,
];

/// Loads (has the kernel verify) the programs a start needs. Verification is most of a
/// start, tens to hundreds of milliseconds per program: the programs are verified on as many
/// threads as there are CPUs, each taking the longest left. (Before, the egress program had
/// a thread of its own and the others were verified one after another on a second: 650 ms
/// where the work divides into about 470 on two CPUs.)
fn load_programs(ebpf: &mut Ebpf, xdp: bool) -> Result<()> {
    let mut programs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names::PROGRAMS.contains(name))
        .collect();
    for name in names::PROGRAMS {
        if !programs.iter().any(|(found, _)| *found == name) {
            anyhow::bail!("program {name} missing from the object");
        }
    }
    if !xdp {
        programs.retain(|(_, program)| !matches!(program, Program::Xdp(_)));
    }
    programs.sort_by_key(|(name, _)| verification_rank(name));
    let workers = std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .min(programs.len());
    let queue = std::sync::Mutex::new(programs.into_iter());
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| scope.spawn(|| load_from(&queue)))
            .collect();
        threads.into_iter().try_for_each(|thread| {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("verifying a program panicked"))?
        })
    })?;
    install_ipv6(ebpf, false)?;
    if xdp {
        install_ipv6(ebpf, true)?;
    }
    Ok(())
}

/// Where `name` comes in `LONGEST_FIRST`.
fn verification_rank(name: &str) -> usize {
    LONGEST_FIRST
        .iter()
        .position(|n| *n == name)
        .unwrap_or(LONGEST_FIRST.len())
}

/// Loads programs from `queue`, one at a time, until it is empty or one is rejected. The
/// thread runs at a lower priority (nice 10): at a large start the lists are the critical
/// path and the verification is not, and the verifier's threads took the CPU from the API
/// server and the agent (at 100,000 Services the start went from 3.28 s to 4.30–4.35 s);
/// on an idle machine, after the lists of a small cluster, the priority changes nothing.
fn load_from<'a, 'p>(
    queue: &std::sync::Mutex<impl Iterator<Item = (&'a str, &'p mut Program)>>,
) -> Result<()> {
    // SAFETY: setpriority(2) on this thread's own id; nothing else is read or written.
    let lowered =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid().unsigned_abs(), 10) };
    if lowered != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "verifying at the usual priority");
    }
    loop {
        let next = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next();
        let Some((name, program)) = next else {
            return Ok(());
        };
        load_each(&mut [(name, program)])?;
    }
}

/// Puts the IPv6 programs of TC (or of XDP, with `xdp`) into their tail-call map, loading
/// any not loaded yet: the IPv4 programs hand IPv6 packets on to them, and they to their
/// later stages. The maps are pinned, so the entries outlive this agent; a restarted one
/// replaces them in place, each entry at once.
pub fn install_ipv6(ebpf: &mut Ebpf, xdp: bool) -> Result<()> {
    let wanted = if xdp {
        names::MAP_TAIL_XDP
    } else {
        names::MAP_TAIL_TC
    };
    for (name, map, index) in names::TAIL_CALLS {
        if map != wanted {
            continue;
        }
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?;
        if program.fd().is_err() {
            load_each(&mut [(name, &mut *program)])?;
        }
        let fd = program.fd()?.try_clone()?;
        let mut tail: ProgramArray<&mut MapData> = ebpf
            .map_mut(map)
            .with_context(|| format!("map {map} missing from the object"))?
            .try_into()?;
        tail.set(index, &fd, 0)
            .with_context(|| format!("installing {name} in {map}"))?;
    }
    Ok(())
}

fn load_each(programs: &mut [(&str, &mut Program)]) -> Result<()> {
    for (name, program) in programs {
        let started = std::time::Instant::now();
        match program {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            _ => unreachable!("kproxy has only tc and xdp programs"),
        }
        .with_context(|| format!("the kernel rejected program {name}"))?;
        tracing::debug!(
            program = name,
            took_ms = started.elapsed().as_millis(),
            instructions = program
                .info()
                .ok()
                .and_then(|i| i.verified_instruction_count()),
            "verified"
        );
    }
    Ok(())
}

fn meta_map(pin_dir: &Path) -> Result<Array<MapData, Meta>> {
    let path = map_pin_path(pin_dir, names::MAP_META);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?.try_into()?)
}

fn write_meta(pin_dir: &Path, meta: &Meta) -> Result<()> {
    meta_map(pin_dir)?
        .set(0, meta, 0)
        .context("writing KP_META")
}

/// Whether the pinned maps under `pin_dir` (if any) may be adopted.
fn check_layout(pin_dir: &Path) -> Result<PinnedState> {
    let any_map = std::fs::read_dir(pin_dir)?
        .filter_map(Result::ok)
        .any(|e| e.path().is_file() || e.file_type().is_ok_and(|t| !t.is_dir()));
    if !any_map {
        return Ok(PinnedState::Fresh);
    }
    let path = map_pin_path(pin_dir, names::MAP_META);
    if !path.exists() {
        return Ok(PinnedState::Replaced(
            "no KP_META (a kproxy from before layout versions)".into(),
        ));
    }
    let shaped = MapInfo::from_pin(&path).is_ok_and(|info| {
        info.map_type().is_ok_and(|t| t == MapType::Array)
            && info.key_size() == 4
            && info.value_size() as usize == size_of::<Meta>()
            && info.max_entries() == 1
    });
    if !shaped {
        return Ok(PinnedState::Replaced("a KP_META of another shape".into()));
    }
    let meta = meta_map(pin_dir)?.get(&0, 0)?;
    Ok(if meta.is_current() {
        PinnedState::Adopted
    } else if meta == Meta::EMPTY {
        PinnedState::Replaced(
            "a KP_META never initialised (an agent stopped while starting)".into(),
        )
    } else {
        PinnedState::Replaced(format!(
            "layout version {} (this kproxy: {})",
            meta.layout_version,
            kproxy_common::meta::LAYOUT_VERSION
        ))
    })
}

/// Unpins every map under `pin_dir` (links stay: the running programs keep their maps until
/// the new programs replace them). `KP_META` goes first, so an agent killed half-way leaves
/// state that the next one replaces too.
fn remove_map_pins(pin_dir: &Path) -> Result<()> {
    let meta = map_pin_path(pin_dir, names::MAP_META);
    if meta.exists() {
        std::fs::remove_file(&meta).with_context(|| format!("unpinning {}", meta.display()))?;
    }
    for entry in std::fs::read_dir(pin_dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            continue; // links/
        }
        let path = entry.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program loaded at start has its place in the verification order, once.
    #[test]
    fn every_program_has_a_place_in_the_verification_order() {
        let mut ranks: Vec<usize> = names::PROGRAMS
            .iter()
            .map(|name| verification_rank(name))
            .collect();
        assert!(
            ranks.iter().all(|rank| *rank < LONGEST_FIRST.len()),
            "a program of names::PROGRAMS is missing from LONGEST_FIRST"
        );
        ranks.sort_unstable();
        ranks.dedup();
        assert_eq!(ranks.len(), names::PROGRAMS.len());
    }

    #[test]
    fn maps_that_come_together_are_pinned_all_or_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pin = |name: &str| std::fs::write(map_pin_path(dir.path(), name), b"").expect("pin");
        let family = ["KP_A6", "KP_B6"];
        assert!(!pinned_together(dir.path(), &family).expect("none pinned"));
        pin("KP_A6");
        let err = pinned_together(dir.path(), &family).expect_err("one of two pinned");
        assert!(
            err.to_string().contains("KP_A6 pinned without KP_B6"),
            "{err}"
        );
        pin("KP_B6");
        assert!(pinned_together(dir.path(), &family).expect("both pinned"));
    }

    #[test]
    fn a_build_without_its_object_refuses_to_load_and_says_how_to_get_one() {
        let err = embedded(&[]).expect_err("an empty object");
        assert!(err.to_string().contains("cargo xtask build-ebpf"), "{err}");
        assert_eq!(embedded(b"\x7fELF").expect("an object"), b"\x7fELF");
    }
}
