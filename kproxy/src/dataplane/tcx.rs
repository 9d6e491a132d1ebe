//! TC programs attached through tcx links by plain `bpf(2)` calls on the programs'
//! descriptors. aya attaches through its program object, by `&mut`, so one interface at a
//! time; and each `BPF_LINK_CREATE` of a tcx link took 12–40 ms in the kernel (strace of a
//! start on the bench's two-CPU machine, 110–150 ms for its five interfaces), mostly
//! waiting rather than working, so interfaces attached from threads of their own take about
//! as long as one.

use std::{
    io,
    os::fd::{BorrowedFd, OwnedFd},
};

use super::bpfsys::{bpf, fd_word, owned_fd};

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_TCX_INGRESS: u64 = 46;
const BPF_TCX_EGRESS: u64 = 47;
/// With no relative program: after every program already attached (aya's default order).
const BPF_F_AFTER: u64 = 1 << 4;

/// The hook of a TC program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A new tcx link running `program` on `ifindex`'s `direction`, last in its chain.
pub fn create(program: BorrowedFd<'_>, ifindex: u32, direction: Direction) -> io::Result<OwnedFd> {
    let attach_type = match direction {
        Direction::Ingress => BPF_TCX_INGRESS,
        Direction::Egress => BPF_TCX_EGRESS,
    };
    // link_create: prog_fd, target_ifindex; attach_type, flags; tcx.relative_fd (none),
    // tcx.expected_revision (any).
    let fd = bpf(
        BPF_LINK_CREATE,
        &[
            fd_word(program) | u64::from(ifindex) << 32,
            attach_type | BPF_F_AFTER << 32,
            0,
            0,
        ],
    )?;
    owned_fd(fd)
}

/// Puts `program` into `link` in place of the program it runs, atomically.
pub fn update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    // link_update: link_fd, new_prog_fd; flags, old_prog_fd (none: whatever runs now).
    bpf(
        BPF_LINK_UPDATE,
        &[fd_word(link) | fd_word(program) << 32, 0],
    )
    .map(drop)
}
