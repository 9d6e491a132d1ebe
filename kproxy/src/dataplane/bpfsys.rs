//! `bpf(2)` commands aya does not offer, made with a plain syscall.

/// `bpf(cmd, attr)` with a zeroed, 128-byte `union bpf_attr` whose first words are `words`;
/// returns what the kernel returns (a new descriptor, for commands that make one).
pub fn bpf(cmd: libc::c_long, words: &[u64]) -> std::io::Result<i64> {
    let mut attr = [0u64; ATTR_WORDS];
    attr[..words.len()].copy_from_slice(words);
    bpf_attr(cmd, &mut attr)
}

/// Words of the `union bpf_attr` passed: 128 bytes, more than any command here uses (the
/// kernel requires what it does not know to be zero).
pub const ATTR_WORDS: usize = 16;

/// `bpf(cmd, attr)` on the caller's attr, which the kernel may write back into (batch
/// commands return how many entries they processed there).
pub fn bpf_attr(cmd: libc::c_long, attr: &mut [u64; ATTR_WORDS]) -> std::io::Result<i64> {
    // SAFETY: bpf(2) reads and writes `size_of_val(attr)` bytes of a properly sized attr
    // union; any pointers in it belong to the caller, who keeps them alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
