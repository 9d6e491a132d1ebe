//! `KP_META`: what the pinned state is, so a starting agent knows whether it may adopt it.
//!
//! The value's size and the meaning of its first fields never change: any kproxy can read the
//! layout version of state left by any other.

use core::mem::size_of;

/// `Meta::magic`: "kproxy" in ASCII, so a map of the right shape but foreign content is not
/// taken for kproxy's.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"kproxy\0\x01");

/// Layout version of every pinned map together. Bumped whenever the meaning of any pinned
/// map's bytes changes (a field added, reordered or reinterpreted, a flag redefined); a
/// starting agent adopts pinned state only when this matches its own. A map whose type, key,
/// value or size changes needs no bump: the agent replaces that map alone (see
/// `drop_incompatible_pins`), as it did when `KP_RR` became per-CPU, and keeps the rest.
///
/// History: 1 (implicit) had no `KP_META`; 2 added it with per-direction conntrack state
/// bits, backend flags and service ids, and `KP_VIPS`; 3 gave conntrack entries the
/// masquerade address, service keys a scope, node addresses flags (NodePorts); 4 gave
/// per-backend counters their backend's id, packets and bytes; 5 added the IPv6 maps (backend
/// ids and service port ids shared by both families) and the tail-call maps.
pub const LAYOUT_VERSION: u32 = 5;

/// Backend ids are reserved in chunks this large: the agent persists the end of the chunk
/// before handing out its first id, so ids survive a `kill -9` without a write per id.
pub const BACKEND_ID_CHUNK: u32 = 1 << 16;

/// Value of `KP_META` (a one-element array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `META_MAGIC` once an agent initialised the state; 0 in a fresh map.
    pub magic: u64,
    /// `LAYOUT_VERSION` of the agent that created the state.
    pub layout_version: u32,
    pub _pad: u32,
    /// Every backend id below this may have been handed out (and may still be named by
    /// conntrack or affinity entries); the next agent allocates from here on.
    pub backend_ids_reserved: u32,
    pub _reserved: [u32; 11],
}

impl Meta {
    pub const EMPTY: Self = Self {
        magic: 0,
        layout_version: 0,
        _pad: 0,
        backend_ids_reserved: 0,
        _reserved: [0; 11],
    };

    /// Fresh state of this layout, no backend id handed out yet (0 is never used).
    pub const fn new() -> Self {
        Self {
            magic: META_MAGIC,
            layout_version: LAYOUT_VERSION,
            backend_ids_reserved: 1,
            ..Self::EMPTY
        }
    }

    /// Whether this describes state an agent of this build may adopt.
    pub const fn is_current(&self) -> bool {
        self.magic == META_MAGIC && self.layout_version == LAYOUT_VERSION
    }
}

impl Default for Meta {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(size_of::<Meta>() == 64);
