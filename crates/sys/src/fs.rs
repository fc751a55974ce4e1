//! Files: reopening a descriptor, its size and filesystem, and starting writeback.

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

/// A filesystem type: `statfs`'s `f_type`, the filesystem's magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filesystem(pub u64);

impl Filesystem {
    /// tmpfs, which also holds `memfd_create` files and `/dev/shm`.
    pub const TMPFS: Filesystem = Filesystem(0x0102_1994);

    /// Whether this is tmpfs: memory, with no writeback to start or wait for, and where
    /// `O_DIRECT` is served from memory rather than a disk.
    pub fn is_tmpfs(self) -> bool {
        self == Self::TMPFS
    }

    /// The filesystem's usual name (`ext4`, `tmpfs`, …), or `unknown (f_type 0x…)`.
    pub fn name(self) -> String {
        let known = match self.0 {
            0xEF53 => "ext4",
            0x0102_1994 => "tmpfs",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x794C_7630 => "overlayfs",
            0x6573_5546 => "fuse",
            0x6969 => "nfs",
            0x0102_1997 => "9p",
            0x2FC1_2FC1 => "zfs",
            0xF2F5_2010 => "f2fs",
            other => return format!("unknown (f_type {other:#x})"),
        };
        known.to_string()
    }
}

/// `fstatfs(fd).f_type`—The type of the filesystem the file behind `fd` lives on.
///
/// # References
///  - [fstatfs(2)](https://man7.org/linux/man-pages/man2/fstatfs.2.html)
#[doc(alias = "fstatfs")]
pub fn filesystem(fd: impl AsFd) -> io::Result<Filesystem> {
    let st = rustix::fs::fstatfs(fd)?;
    #[allow(clippy::unnecessary_cast)] // `f_type` is signed on some targets
    Ok(Filesystem(st.f_type as u64))
}

/// Whether the file behind `fd` lives on tmpfs ([`filesystem`], then [`Filesystem::is_tmpfs`]).
pub fn is_tmpfs(fd: impl AsFd) -> io::Result<bool> {
    filesystem(fd).map(Filesystem::is_tmpfs)
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`—Starts writing the dirty pages of
/// `[offset, offset + len)` to the device and returns without waiting, so a stream written to
/// a disk is on its way while the rest arrives and the final `fsync` has little left to do.
/// It writes no metadata and proves nothing by itself: only `fsync` makes a file durable.
///
/// # References
///  - [sync_file_range(2)](https://man7.org/linux/man-pages/man2/sync_file_range.2.html)
#[doc(alias = "sync_file_range")]
pub fn start_writeback(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    sync_file_range(fd, offset, len, libc::SYNC_FILE_RANGE_WRITE)
}

fn sync_file_range(fd: impl AsFd, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_big = |_| io::Error::new(io::ErrorKind::InvalidInput, "range past i64::MAX");
    let offset = libc::off64_t::try_from(offset).map_err(too_big)?;
    let len = libc::off64_t::try_from(len).map_err(too_big)?;
    loop {
        // SAFETY: plain integers and a descriptor that `fd` keeps open for the call; the kernel
        // touches no memory of ours.
        let rc = unsafe { libc::sync_file_range(fd.as_fd().as_raw_fd(), offset, len, flags) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writeback_of_a_range_and_of_nothing() {
        let mut f = tempfile::tempfile_in(std::env::temp_dir()).unwrap();
        f.write_all(&vec![1u8; 1 << 20]).unwrap();
        start_writeback(&f, 0, 1 << 20).unwrap();
        // Past the end, and an empty range: nothing to do, no error.
        start_writeback(&f, 4 << 20, 0).unwrap();
        assert!(start_writeback(&f, u64::MAX, 1).is_err());
    }

    #[test]
    fn dev_shm_is_tmpfs_when_it_is_mounted_so() {
        if let Ok(f) = tempfile::tempfile_in("/dev/shm") {
            let mounted_tmpfs = std::fs::read_to_string("/proc/mounts")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm") && l.contains(" tmpfs "));
            assert_eq!(is_tmpfs(&f).unwrap(), mounted_tmpfs);
        }
    }
}
