//! Reads and writes on descriptors, retried on `EINTR`.

use std::io;
use std::os::fd::BorrowedFd;

/// `ioctl(fd, FIONREAD)`—How many bytes wait in a pipe or socket.
pub fn bytes_queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let n = rustix::io::ioctl_fionread(fd)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// `write(fd, buf, len)`, retrying on `EINTR`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry_eintr(|| rustix::io::write(fd, buf))
}

/// `read(fd, buf, len)`, retrying on `EINTR`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_eintr(|| rustix::io::read(fd, &mut *buf))
}

/// `pread(fd, buf, len, offset)`, retrying on `EINTR`.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    retry_eintr(|| rustix::io::pread(fd, &mut *buf, offset))
}

/// `pwrite(fd, buf, len, offset)`, retrying on `EINTR`.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    retry_eintr(|| rustix::io::pwrite(fd, buf, offset))
}

/// `sendfile(out, file, &offset, len)`—Sends up to `len` bytes of `file` from `offset` to `out`
/// (a socket) inside the kernel, advancing `offset` by what it sent; retries on `EINTR`. It sends
/// page-cache pages by reference: zero copies and not stable (docs/KERNEL.md §1.4).
///
/// # References
///  - [sendfile(2)](https://man7.org/linux/man-pages/man2/sendfile.2.html)
pub fn sendfile(
    out: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    len: usize,
) -> io::Result<usize> {
    retry_eintr(|| rustix::fs::sendfile(out, file, Some(&mut *offset), len))
}

/// Calls `call` again while it fails with `EINTR`.
pub(crate) fn retry_eintr<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}
