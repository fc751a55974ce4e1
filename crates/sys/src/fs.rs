//! Files: reopening a descriptor and its size.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Opens the file behind `fd` again, through `/proc/self/fd`, with `flags` (e.g. `O_DIRECT`):
/// the same file even if its name has since moved or been replaced.
pub fn reopen(fd: BorrowedFd<'_>, flags: rustix::fs::OFlags) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(rustix::fs::open(
        path.as_str(),
        flags,
        rustix::fs::Mode::empty(),
    )?)
}

/// `fstat(fd).st_size`.
pub fn file_size(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}
