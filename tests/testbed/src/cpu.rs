//! Keeping a test's thread on one CPU. kproxy's round robin has a counter per CPU, so new
//! connections go round in an exact order only when made from one CPU: a test that expects
//! that order (or an exact spread) pins its thread first. Threads and processes a pinned
//! thread starts inherit its CPU, and the kernel runs a TC program for a packet a thread
//! sends through a veth, or a socket program for its `connect`, on that thread's CPU. Not an
//! XDP program on a veth: it runs in the veth's NAPI poll, which may be on another CPU.

use std::io;

/// The CPUs the calling thread may run on, in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size it is given.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    // SAFETY: CPU_ISSET reads a bit of a valid set, below its size.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Keeps the calling thread on `cpu` from now on.
pub fn pin_thread_to(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by reference with its own size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "pinning to CPU {cpu}: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Keeps the calling thread on the CPU it runs on now, and returns that CPU. Tests that run
/// in parallel each stay where the scheduler put them, rather than all on one CPU.
pub fn stay_on_this_cpu() -> io::Result<usize> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).map_err(|_| io::Error::last_os_error())?;
    pin_thread_to(cpu)?;
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_thread_runs_on_its_cpu_and_so_do_its_threads() {
        let cpus = allowed_cpus().expect("affinity");
        let last = *cpus.last().expect("at least one CPU");
        let seen = std::thread::spawn(move || {
            pin_thread_to(last).expect("pin");
            let child = std::thread::spawn(|| allowed_cpus().expect("affinity"));
            (
                // SAFETY: sched_getcpu takes no arguments.
                unsafe { libc::sched_getcpu() },
                child.join().expect("child thread"),
            )
        })
        .join()
        .expect("pinned thread");
        assert_eq!(seen, (i32::try_from(last).expect("cpu"), vec![last]));
        let here = std::thread::spawn(|| stay_on_this_cpu().expect("stay"))
            .join()
            .expect("thread");
        assert!(cpus.contains(&here), "{here} in {cpus:?}");
    }
}
