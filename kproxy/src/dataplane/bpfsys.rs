//! `bpf(2)` commands aya does not offer, made with a plain syscall.

/// `bpf(cmd, attr)` with a zeroed, 128-byte `union bpf_attr` whose first words are `words`;
/// returns what the kernel returns (a new descriptor, for commands that make one).
pub fn bpf(cmd: libc::c_long, words: &[u64]) -> std::io::Result<i64> {
    let mut attr = [0u64; 16];
    attr[..words.len()].copy_from_slice(words);
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of a properly sized attr union; any
    // pointers in it belong to the caller, who keeps them alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
