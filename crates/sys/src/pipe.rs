//! Pipes and the calls that move data through them: `pipe2`, `splice`, `tee`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags};

use crate::io::retry_eintr;

/// A pipe: both ends, closed on exec, blocking (non-blocking behaviour is asked per call with
/// `SPLICE_F_NONBLOCK`, so one end's mode never leaks into the other's).
#[derive(Debug)]
pub struct Pipe {
    /// The end data is read from.
    pub read: OwnedFd,
    /// The end data is written to.
    pub write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// `pipe2(O_CLOEXEC)` then `fcntl(F_SETPIPE_SZ, size)`—Creates a pipe of about `size` bytes.
    ///
    /// The kernel rounds the size up to a power-of-two number of pages. When it refuses the size
    /// (`EPERM` above `pipe-max-size` for unprivileged users, or the per-user page quota, §1.5) the
    /// pipe keeps what it has; [`Pipe::capacity`] tells what was granted, and callers size their
    /// chunks from it. Both fds are closed if anything fails.
    ///
    /// # References
    ///  - [pipe(2)](https://man7.org/linux/man-pages/man2/pipe.2.html)
    ///  - [F_SETPIPE_SZ(2const)](https://man7.org/linux/man-pages/man2/F_GETPIPE_SZ.2const.html)
    #[doc(alias = "pipe2")]
    pub fn with_size(size: usize) -> io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let capacity = match set_pipe_size(&write, size) {
            Ok(granted) => granted,
            Err(_) => pipe_size(&write)?,
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The pipe's capacity in bytes, as granted by the kernel.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// `fcntl(fd, F_GETPIPE_SZ)`—The capacity in bytes of the pipe behind `fd` (either end).
///
/// # References
///  - [F_GETPIPE_SZ(2const)](https://man7.org/linux/man-pages/man2/F_GETPIPE_SZ.2const.html)
#[doc(alias = "F_GETPIPE_SZ")]
pub fn pipe_size(fd: impl AsFd) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// `fcntl(fd, F_SETPIPE_SZ, size)`—Asks for a pipe of at least `size` bytes and returns what
/// the kernel granted (a power-of-two number of pages). `EPERM` above `pipe-max-size` for an
/// unprivileged process or past its page quota, `EBUSY` below what the pipe holds (§1.5).
#[doc(alias = "F_SETPIPE_SZ")]
pub fn set_pipe_size(fd: impl AsFd, size: usize) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_setpipe_size(fd, size)?)
}

/// `splice(fd_in, NULL, fd_out, NULL, len, flags)`—Moves up to `len` bytes where one side is a
/// pipe, retrying on `EINTR`. A return of 0 means the input is at its end (§1.1).
pub fn splice(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    flags: SpliceFlags,
) -> io::Result<usize> {
    retry_eintr(|| rustix::pipe::splice(from, None, to, None, len, flags))
}

/// `splice(fd_in, &off, pipe, NULL, len, flags)`—Moves up to `len` bytes of a file from `offset`
/// into a pipe, leaving the file position alone; retries on `EINTR`.
pub fn splice_from_offset(
    file: BorrowedFd<'_>,
    offset: u64,
    pipe: BorrowedFd<'_>,
    len: usize,
    flags: SpliceFlags,
) -> io::Result<usize> {
    retry_eintr(|| {
        let mut off = offset;
        rustix::pipe::splice(file, Some(&mut off), pipe, None, len, flags)
    })
}

/// `tee(fd_in, fd_out, len, flags)`—Duplicates up to `len` bytes from the head of one pipe into
/// another without consuming them; retries on `EINTR`.
///
/// tee stops at the first full slot of the output and may return a short count; a second tee
/// starts again at the input's head (§1.2). Callers tee only into an *empty* pipe at least as
/// large as the input, where the count is always whole.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    retry_eintr(|| rustix::pipe::tee(from, to, len, SpliceFlags::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{bytes_queued, read, write};
    use std::os::fd::AsFd;

    #[test]
    fn pipe_reports_granted_capacity() {
        let p = Pipe::with_size(256 * 1024).unwrap();
        assert!(p.capacity() >= 64 * 1024);
        assert!(p.capacity().is_power_of_two());
    }

    #[test]
    fn tee_leaves_the_source_intact() {
        let a = Pipe::with_size(64 * 1024).unwrap();
        let b = Pipe::with_size(64 * 1024).unwrap();
        assert_eq!(write(a.write.as_fd(), b"hello world").unwrap(), 11);
        assert_eq!(tee(a.read.as_fd(), b.write.as_fd(), 100).unwrap(), 11);
        assert_eq!(bytes_queued(a.read.as_fd()).unwrap(), 11);
        let mut buf = [0u8; 32];
        assert_eq!(read(b.read.as_fd(), &mut buf).unwrap(), 11);
        assert_eq!(&buf[..11], b"hello world");
        assert_eq!(read(a.read.as_fd(), &mut buf).unwrap(), 11);
    }
}
