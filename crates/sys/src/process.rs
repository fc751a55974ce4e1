//! The process: signals, resource usage of children, whether io_uring may be created, and the
//! sockets a service manager passed it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Set once the passed descriptors were taken, so that no two owners of them are ever made.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// `sd_listen_fds(1)`—Takes the descriptors a service manager (systemd's socket activation, or
/// `systemd-socket-activate`) passed this process: `LISTEN_FDS` of them from descriptor 3 on,
/// when `LISTEN_PID` is this process's id. Each is made close-on-exec, and the variables
/// (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) are removed from the environment, so that a
/// child does not take them for its own.
///
/// Returns an empty list when none were passed to this process, and on every call after the
/// first (the descriptors have one owner). The environment is changed only while the process
/// has a single thread (nothing else can then be reading it); call this before starting any.
///
/// # References
///  - [sd_listen_fds(3)](https://www.freedesktop.org/software/systemd/man/latest/sd_listen_fds.html)
#[doc(alias = "sd_listen_fds")]
pub fn take_listen_fds() -> io::Result<Vec<OwnedFd>> {
    if LISTEN_FDS_TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let (Some(pid), Some(count)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(Vec::new());
    };
    unset_listen_env();
    let ours = pid
        .to_str()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        return Ok(Vec::new());
    }
    let count = count
        .to_str()
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "LISTEN_FDS is not a count of descriptors",
            )
        })?;
    let mut fds = Vec::new();
    for raw in LISTEN_FDS_START..LISTEN_FDS_START + count {
        // SAFETY: the service manager passed descriptors 3 .. 3 + LISTEN_FDS to this process
        // (LISTEN_PID is ours) for it to own, and this is the only place that takes them, once
        // (LISTEN_FDS_TAKEN). An fd number that is not open fails fcntl below and is dropped
        // only after the check, so nothing that is not ours is closed.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let flags = rustix::io::fcntl_getfd(fd)?;
        rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC)?;
        // SAFETY: open (fcntl succeeded) and passed to this process to own, as above.
        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    Ok(fds)
}

/// Removes the variables of socket activation from the environment, when nothing else can be
/// reading it: the process has one thread.
fn unset_listen_env() {
    if !single_threaded() {
        return;
    }
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: the process has a single thread (checked just above, and only this thread,
        // busy here, could start another), so no other thread reads or writes the environment.
        unsafe { std::env::remove_var(name) };
    }
}

/// Whether this process has exactly one thread (`Threads:` in `/proc/self/status`).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.strip_prefix("Threads:").is_some_and(|n| n.trim() == "1"))
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
