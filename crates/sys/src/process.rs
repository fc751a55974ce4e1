//! The process: signals, resource usage of children, and whether io_uring may be created.

use std::io;

/// `signal(SIGPIPE, SIG_IGN)`—Makes a write to a closed pipe or reset socket return `EPIPE`
/// instead of killing the process. `splice` to a socket never passes `MSG_NOSIGNAL` (§1.1), so
/// any program that uses this library's pipe paths must ignore SIGPIPE; the transfer functions
/// call this themselves.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no handler code to run and is async-signal-safe;
    // it only changes how the process reacts to that signal.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// `io_uring_setup(entries, &params)`—Creates (and at once closes) an io_uring instance, to learn
/// whether io_uring is usable here: a kernel without it, `kernel.io_uring_disabled`, or a seccomp
/// filter all refuse the call.
///
/// # References
///  - [io_uring_setup(2)](https://man7.org/linux/man-pages/man2/io_uring_setup.2.html)
#[doc(alias = "io_uring_setup")]
pub fn io_uring_usable() -> io::Result<()> {
    let mut params = rustix::io_uring::io_uring_params::default();
    // SAFETY: the parameters are all zero, so IORING_SETUP_ATTACH_WQ is not set and `wq_fd` is
    // not read (rustix's contract); the ring is closed when the returned fd drops.
    let ring = unsafe { rustix::io_uring::io_uring_setup(2, &mut params) }?;
    drop(ring);
    Ok(())
}

/// What the waited-for children of this process used, as `getrusage(RUSAGE_CHILDREN)` reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChildrenUsage {
    /// User CPU time, in seconds.
    pub user_secs: f64,
    /// System CPU time, in seconds.
    pub system_secs: f64,
    /// The largest peak resident set size among them, in KiB.
    pub max_rss_kib: u64,
}

/// `getrusage(RUSAGE_CHILDREN)`—CPU time and peak memory of every child (and their waited-for
/// descendants) this process has waited for.
///
/// # References
///  - [getrusage(2)](https://man7.org/linux/man-pages/man2/getrusage.2.html)
#[doc(alias = "getrusage")]
pub fn children_usage() -> io::Result<ChildrenUsage> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable `rusage`; the kernel fills it and touches nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, and getrusage succeeded, so every field holds a value.
    let ru = unsafe { ru.assume_init() };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(ChildrenUsage {
        user_secs: secs(ru.ru_utime),
        system_secs: secs(ru.ru_stime),
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_usage_counts_a_waited_child() {
        let before = children_usage().unwrap();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let after = children_usage().unwrap();
        assert!(after.user_secs + after.system_secs > before.user_secs + before.system_secs);
        assert!(after.max_rss_kib > 0);
    }
}
