//! One's complement checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
//!
//! Values are the raw 16/32-bit words as they sit in the packet (network byte order loaded
//! as native integers): one's complement sums commute with byte swapping, so no conversion
//! is needed as long as the result is stored back the same way.

use kproxy_common::addr::In6Addr;

/// Folds a 64-bit accumulator of 16-bit words into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Several changes to the words a checksum covers, folded once at the end (RFC 1624's
/// `HC' = ~(~HC + ~m + m')`, summed over every changed word: one's complement addition is
/// associative, so folding once gives what folding after each change would).
#[derive(Clone, Copy)]
pub struct Update(u64);

impl Update {
    /// Starts from checksum field `check`.
    #[inline(always)]
    pub const fn of(check: u16) -> Self {
        Self(!check as u64)
    }

    /// A 32-bit word changed from `from` to `to`.
    #[inline(always)]
    pub const fn word4(self, from: u32, to: u32) -> Self {
        Self(
            self.0
                + (!from >> 16) as u64
                + (!from & 0xffff) as u64
                + (to >> 16) as u64
                + (to & 0xffff) as u64,
        )
    }

    /// A 16-bit word changed from `from` to `to`.
    #[inline(always)]
    pub const fn word2(self, from: u16, to: u16) -> Self {
        Self(self.0 + !from as u64 + to as u64)
    }

    /// An address changed from `from` to `to`.
    #[inline(always)]
    pub fn addr<A: Words>(self, from: A, to: A) -> Self {
        A::changed(self, from, to)
    }

    /// The new checksum field.
    #[inline(always)]
    pub fn check(self) -> u16 {
        !fold(self.0)
    }

    /// No checksum yet: only the changes, for `diff`.
    pub const CHANGES: Self = Self(0);

    /// The changes alone, as the kernel's `bpf_l4_csum_replace` takes them with a size of 0
    /// (a 32-bit `__wsum` to add; folded to 16 bits, which is the same sum).
    #[inline(always)]
    pub fn diff(self) -> u32 {
        u32::from(fold(self.0))
    }
}

/// An address of either family as checksummed words.
pub trait Words: Copy {
    fn changed(update: Update, from: Self, to: Self) -> Update;
}

impl Words for u32 {
    #[inline(always)]
    fn changed(update: Update, from: u32, to: u32) -> Update {
        update.word4(from, to)
    }
}

impl Words for In6Addr {
    #[inline(always)]
    fn changed(update: Update, from: In6Addr, to: In6Addr) -> Update {
        update
            .word4(from.0[0], to.0[0])
            .word4(from.0[1], to.0[1])
            .word4(from.0[2], to.0[2])
            .word4(from.0[3], to.0[3])
    }
}

/// Checksum field after a 32-bit word covered by it changed from `from` to `to`.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    Update::of(check).word4(from, to).check()
}

/// Checksum field after a 16-bit word covered by it changed from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    Update::of(check).word2(from, to).check()
}

/// Sum of 16-bit words of a fixed-size byte block (the caller folds and inverts).
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u64::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if N % 2 == 1 {
        sum += u64::from(u16::from_ne_bytes([bytes[N - 1], 0]));
    }
    sum
}

/// `sum_words` of a slice (its length known after inlining, as the frames' are).
#[inline(always)]
pub fn sum_slice(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u64::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if bytes.len() % 2 == 1 {
        sum += u64::from(u16::from_ne_bytes([bytes[bytes.len() - 1], 0]));
    }
    sum
}
