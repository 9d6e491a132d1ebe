//! Addresses as map keys and values hold them, one type per family: IPv4 as a `u32`, IPv6 as
//! an [`In6Addr`] of four `u32` words, both in network byte order exactly as in packets. Map
//! types are generic over [`IpAddress`], so an IPv4 key keeps its size and layout and the
//! IPv6 maps are separate maps: an IPv4 lookup never pays for the wider family.

use core::fmt;

/// An address of one family, as the maps store it.
pub trait IpAddress: Copy + Eq + Ord + fmt::Debug + core::hash::Hash {
    /// The unspecified address (`0.0.0.0`, `::`): never a VIP, a backend or a client; zero
    /// fields mean "none" in map values.
    const UNSPECIFIED: Self;

    fn is_unspecified(&self) -> bool;

    /// The address folded into 32 bits (its words xored): a hash's input.
    fn fold(&self) -> u32;
}

impl IpAddress for u32 {
    const UNSPECIFIED: Self = 0;

    #[inline(always)]
    fn is_unspecified(&self) -> bool {
        *self == 0
    }

    #[inline(always)]
    fn fold(&self) -> u32 {
        *self
    }
}

/// An IPv6 address in network byte order (the 16 bytes of the packet, read as four words).
#[repr(C)]
#[derive(Clone, Copy, Default, PartialOrd, Ord)]
pub struct In6Addr(pub [u32; 4]);

impl In6Addr {
    pub const UNSPECIFIED: Self = Self([0; 4]);

    /// The address with these 16 bytes (as written, most significant first).
    #[inline(always)]
    pub const fn from_octets(o: [u8; 16]) -> Self {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
            i += 1;
        }
        Self(words)
    }

    /// The 16 bytes of the address, most significant first.
    #[inline(always)]
    pub const fn octets(&self) -> [u8; 16] {
        let mut o = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.0[i].to_ne_bytes();
            o[4 * i] = b[0];
            o[4 * i + 1] = b[1];
            o[4 * i + 2] = b[2];
            o[4 * i + 3] = b[3];
            i += 1;
        }
        o
    }
}

// By hand rather than derived: the derived array comparison may become a call of `bcmp`,
// which BPF programs cannot make; four word compares folded into one test cannot.
impl PartialEq for In6Addr {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        ((self.0[0] ^ other.0[0])
            | (self.0[1] ^ other.0[1])
            | (self.0[2] ^ other.0[2])
            | (self.0[3] ^ other.0[3]))
            == 0
    }
}

impl Eq for In6Addr {}

// By hand because `PartialEq` is: the same words as equality compares.
impl core::hash::Hash for In6Addr {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl IpAddress for In6Addr {
    const UNSPECIFIED: Self = Self::UNSPECIFIED;

    #[inline(always)]
    fn is_unspecified(&self) -> bool {
        (self.0[0] | self.0[1] | self.0[2] | self.0[3]) == 0
    }

    #[inline(always)]
    fn fold(&self) -> u32 {
        self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3]
    }
}

impl fmt::Debug for In6Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&core::net::Ipv6Addr::from(*self), f)
    }
}

impl From<core::net::Ipv6Addr> for In6Addr {
    fn from(addr: core::net::Ipv6Addr) -> Self {
        Self::from_octets(addr.octets())
    }
}

impl From<In6Addr> for core::net::Ipv6Addr {
    fn from(addr: In6Addr) -> Self {
        Self::from(addr.octets())
    }
}

const _: () = assert!(core::mem::size_of::<In6Addr>() == 16);

#[cfg(test)]
mod tests {
    use core::net::Ipv6Addr;

    use super::*;

    #[test]
    fn octets_round_trip_in_packet_order() {
        let addr: Ipv6Addr = "2001:db8::1:2".parse().unwrap();
        let stored = In6Addr::from(addr);
        assert_eq!(stored.octets(), addr.octets());
        assert_eq!(Ipv6Addr::from(stored), addr);
        // The first word holds the first four bytes as they sit in memory.
        assert_eq!(stored.0[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
    }

    #[test]
    fn equality_and_unspecified_look_at_every_word() {
        let a = In6Addr([1, 2, 3, 4]);
        for i in 0..4 {
            let mut b = a;
            b.0[i] ^= 0x100;
            assert_ne!(a, b, "word {i}");
            let mut z = In6Addr::UNSPECIFIED;
            z.0[i] = 1;
            assert!(!z.is_unspecified(), "word {i}");
        }
        assert_eq!(a, In6Addr([1, 2, 3, 4]));
        assert!(In6Addr::UNSPECIFIED.is_unspecified());
        assert!(0u32.is_unspecified() && !7u32.is_unspecified());
    }
}
