//! Files: opening for `O_DIRECT`, their status, size and filesystem, writeback, and the calls
//! relative to a directory descriptor that publish a file under its name.
//!
//! The `*_at` calls take a directory descriptor and a name in it, so that a path renamed
//! meanwhile cannot redirect them. They report the kernel's [`Errno`], which callers match
//! (`EEXIST`, `ENOENT`, `EOPNOTSUPP`, …) to choose a fallback.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, CWD, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

/// `open(path, O_RDONLY | O_DIRECT | O_CLOEXEC)`—Opens a file so that reads (and splices) from
/// it bypass the page cache: the kernel reads into the caller's or fresh pages
/// (docs/KERNEL.md §1.1). `EINVAL` means the filesystem refuses `O_DIRECT`.
///
/// # References
///  - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html), `O_DIRECT`
#[doc(alias = "O_DIRECT")]
pub fn open_direct(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// [`open_direct`] of the file behind `fd`, through `/proc/self/fd`: the same file even if its
/// name has since moved or been replaced. `ENOENT` means `/proc` is not mounted.
pub fn reopen_direct(fd: impl AsFd) -> io::Result<OwnedFd> {
    open_direct(Path::new(&format!(
        "/proc/self/fd/{}",
        fd.as_fd().as_raw_fd()
    )))
}

/// The file behind `fd` opened again for writing with `O_DIRECT`, through `/proc/self/fd` (an
/// unnamed `O_TMPFILE` file too): writes through it bypass the page cache, from buffers,
/// offsets and lengths aligned to the device's block (a page is always enough). A new open file
/// description, so `fd` itself stays buffered. `EINVAL` means the filesystem refuses `O_DIRECT`.
///
/// # References
///  - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html), `O_DIRECT`
#[doc(alias = "O_DIRECT")]
pub fn reopen_direct_write(fd: impl AsFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    Ok(rustix::fs::open(
        Path::new(&path),
        OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `memfd_create(name, MFD_CLOEXEC)`—An anonymous file in memory (on tmpfs), freed when its
/// last descriptor closes.
///
/// # References
///  - [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
#[doc(alias = "memfd_create")]
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        name,
        rustix::fs::MemfdFlags::CLOEXEC,
    )?)
}

/// What a file is, as its status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link (seen only where it is not followed).
    Symlink,
    /// A FIFO (a named pipe) or a pipe.
    Fifo,
    /// A device, a socket, anything else.
    Other,
}

/// The parts of a file's status (`struct stat`) that teecast uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The device the file is on (`st_dev`).
    pub device: u64,
    /// Its inode number on that device (`st_ino`).
    pub inode: u64,
    /// What it is.
    pub kind: FileKind,
    /// Its size in bytes (`st_size`; 0 where negative).
    pub size: u64,
    /// When its data last changed (`st_mtim`).
    pub modified: SystemTime,
}

impl Status {
    /// Whether both statuses are of the same file: same device, same inode.
    pub fn is_same_file(&self, other: &Status) -> bool {
        self.device == other.device && self.inode == other.inode
    }

    #[allow(clippy::unnecessary_cast)] // the field types differ between architectures
    fn of(st: &rustix::fs::Stat) -> Status {
        use rustix::fs::FileType;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => FileKind::Regular,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            FileType::Fifo => FileKind::Fifo,
            _ => FileKind::Other,
        };
        let nanos = u32::try_from(st.st_mtime_nsec as i64)
            .unwrap_or(0)
            .min(999_999_999);
        let secs = st.st_mtime as i64;
        let modified = match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::new(s, nanos),
            Err(_) => SystemTime::UNIX_EPOCH
                .checked_sub(Duration::from_secs(secs.unsigned_abs()))
                .unwrap_or(SystemTime::UNIX_EPOCH),
        };
        Status {
            device: st.st_dev as u64,
            inode: st.st_ino as u64,
            kind,
            size: u64::try_from(st.st_size).unwrap_or(0),
            modified,
        }
    }
}

/// `fstat(fd)`—The status of the file behind `fd`.
///
/// # References
///  - [fstat(2)](https://man7.org/linux/man-pages/man2/fstat.2.html)
#[doc(alias = "fstat")]
pub fn status(fd: impl AsFd) -> io::Result<Status> {
    Ok(Status::of(&rustix::fs::fstat(fd)?))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`—The status of `name` in `dir`; a symlink is
/// described, never followed.
#[doc(alias = "fstatat")]
pub fn status_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> Result<Status, Errno> {
    rustix::fs::statat(dir, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW).map(|st| Status::of(&st))
}

/// `fstat(fd).st_size`.
pub fn file_size(fd: impl AsFd) -> io::Result<u64> {
    status(fd).map(|st| st.size)
}

/// `lseek(fd, 0, SEEK_CUR)`—The file position of `fd`.
///
/// # References
///  - [lseek(2)](https://man7.org/linux/man-pages/man2/lseek.2.html)
#[doc(alias = "lseek")]
pub fn position(fd: impl AsFd) -> io::Result<u64> {
    Ok(rustix::fs::seek(fd, rustix::fs::SeekFrom::Current(0))?)
}

/// A filesystem's size and the bytes unprivileged writers may still use there, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// The filesystem's size.
    pub total: u64,
    /// What is free for an unprivileged writer (`f_bavail`).
    pub available: u64,
}

/// `fstatvfs(fd)`—The size of the filesystem holding `fd`, and what is still free there.
#[doc(alias = "fstatvfs")]
pub fn space(fd: impl AsFd) -> io::Result<Space> {
    let st = rustix::fs::fstatvfs(fd)?;
    Ok(Space {
        total: st.f_blocks.saturating_mul(st.f_frsize),
        available: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// `open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)`—A descriptor that names a directory without
/// opening it for reading: the base of the `*_at` calls.
#[doc(alias = "O_PATH")]
pub fn open_dir_path(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)`—The directory `dir` names, opened for
/// reading its entries or for `fsync` (which an `O_PATH` descriptor cannot do).
#[doc(alias = "openat")]
pub fn open_dir_at(dir: impl AsFd) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `openat(dir, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, mode)`—A new file in `dir` with no name,
/// freed when its last descriptor closes unless it is linked. `EOPNOTSUPP` (the filesystem),
/// `EISDIR` or `EINVAL` (an old kernel) mean there is no `O_TMPFILE` here.
///
/// # References
///  - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html), `O_TMPFILE`
#[doc(alias = "O_TMPFILE")]
pub fn create_unnamed_at(dir: impl AsFd, mode: u32) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from(mode),
    )
}

/// `openat(dir, name, O_CREAT | O_EXCL | O_NOFOLLOW | O_RDWR | O_CLOEXEC, mode)`—A new file
/// `name` in `dir`; `EEXIST` if anything, a symlink included, has that name.
#[doc(alias = "openat")]
pub fn create_new_at(dir: impl AsFd, name: impl AsRef<OsStr>, mode: u32) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name.as_ref(),
        OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from(mode),
    )
}

/// `fchmod(fd, mode)`—Sets the permission bits of the file behind `fd`.
///
/// # References
///  - [fchmod(2)](https://man7.org/linux/man-pages/man2/fchmod.2.html)
#[doc(alias = "fchmod")]
pub fn set_mode(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(fd, Mode::from(mode))?)
}

/// `renameat(dir, from, dir, to)`—Renames `from` to `to` within `dir`, atomically replacing
/// whatever `to` was (a symlink there is replaced, never followed).
///
/// # References
///  - [rename(2)](https://man7.org/linux/man-pages/man2/rename.2.html)
#[doc(alias = "renameat")]
pub fn rename_at(
    dir: impl AsFd,
    from: impl AsRef<OsStr>,
    to: impl AsRef<OsStr>,
) -> Result<(), Errno> {
    let dir = dir.as_fd();
    rustix::fs::renameat(dir, from.as_ref(), dir, to.as_ref())
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`—Renames `from` to `to` within `dir`;
/// `EEXIST` if `to` exists.
#[doc(alias = "renameat2")]
pub fn rename_noreplace_at(
    dir: impl AsFd,
    from: impl AsRef<OsStr>,
    to: impl AsRef<OsStr>,
) -> Result<(), Errno> {
    let dir = dir.as_fd();
    rustix::fs::renameat_with(dir, from.as_ref(), dir, to.as_ref(), RenameFlags::NOREPLACE)
}

/// `linkat(AT_FDCWD, "/proc/self/fd/N", dir, name, AT_SYMLINK_FOLLOW)`—Gives the open file
/// `file` itself (not whatever its old name now is) the name `name` in `dir`. `ENOENT` means
/// `/proc` is not mounted; `EEXIST` that the name is taken.
///
/// # References
///  - [linkat(2)](https://man7.org/linux/man-pages/man2/linkat.2.html)
#[doc(alias = "linkat")]
pub fn link_open_file_at(
    file: impl AsFd,
    dir: impl AsFd,
    name: impl AsRef<OsStr>,
) -> Result<(), Errno> {
    let proc = format!("/proc/self/fd/{}", file.as_fd().as_raw_fd());
    rustix::fs::linkat(
        CWD,
        proc.as_str(),
        dir,
        name.as_ref(),
        AtFlags::SYMLINK_FOLLOW,
    )
}

/// `linkat(file, "", dir, name, AT_EMPTY_PATH)`—As [`link_open_file_at`] without `/proc`;
/// the kernel asks for `CAP_DAC_READ_SEARCH` (`ENOENT` without it).
#[doc(alias = "AT_EMPTY_PATH")]
pub fn link_empty_path_at(
    file: impl AsFd,
    dir: impl AsFd,
    name: impl AsRef<OsStr>,
) -> Result<(), Errno> {
    rustix::fs::linkat(file, "", dir, name.as_ref(), AtFlags::EMPTY_PATH)
}

/// `unlinkat(dir, name, 0)`—Removes the name `name` from `dir`; never a directory, and a
/// symlink is removed, never followed.
///
/// # References
///  - [unlinkat(2)](https://man7.org/linux/man-pages/man2/unlinkat.2.html)
#[doc(alias = "unlinkat")]
pub fn unlink_at(dir: impl AsFd, name: impl AsRef<OsStr>) -> Result<(), Errno> {
    rustix::fs::unlinkat(dir, name.as_ref(), AtFlags::empty())
}

/// `getdents64` over `dir` until its end—The names in the directory `dir` (opened for
/// reading), without `.` and `..`.
///
/// # References
///  - [getdents64(2)](https://man7.org/linux/man-pages/man2/getdents64.2.html)
#[doc(alias = "getdents64")]
pub fn dir_names(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_os_string());
        }
    }
    Ok(names)
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
    fn a_memfd_is_on_tmpfs_and_dev_shm_is_what_proc_mounts_says() {
        let m = memfd("teecast-test").unwrap();
        assert!(is_tmpfs(&m).unwrap());
        assert_eq!(filesystem(&m).unwrap().name(), "tmpfs");
        let f = tempfile::tempfile_in("/dev/shm").expect("this test needs /dev/shm");
        let mounts = std::fs::read_to_string("/proc/mounts").expect("this test needs /proc");
        let mounted_tmpfs = mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm") && l.contains(" tmpfs "));
        assert_eq!(is_tmpfs(&f).unwrap(), mounted_tmpfs);
    }

    #[test]
    fn calls_relative_to_a_directory_never_follow_or_replace_what_they_must_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir_path(tmp.path()).unwrap();
        let file = create_new_at(&dir, "a", 0o600).unwrap();
        assert_eq!(create_new_at(&dir, "a", 0o600).unwrap_err(), Errno::EXIST);
        std::os::unix::fs::symlink("a", tmp.path().join("link")).unwrap();
        let ours = status(&file).unwrap();
        assert_eq!(ours.kind, FileKind::Regular);
        assert!(ours.is_same_file(&status_at(&dir, "a").unwrap()));
        let link = status_at(&dir, "link").unwrap();
        assert_eq!(
            link.kind,
            FileKind::Symlink,
            "a symlink is described, not followed"
        );
        assert!(!ours.is_same_file(&link));
        link_open_file_at(&file, &dir, "b").unwrap();
        assert!(ours.is_same_file(&status_at(&dir, "b").unwrap()));
        assert_eq!(
            rename_noreplace_at(&dir, "b", "a").unwrap_err(),
            Errno::EXIST
        );
        rename_at(&dir, "b", "link").unwrap();
        assert!(ours.is_same_file(&status_at(&dir, "link").unwrap()));
        unlink_at(&dir, "link").unwrap();
        let mut names = dir_names(open_dir_at(&dir).unwrap()).unwrap();
        names.sort();
        assert_eq!(names, ["a"]);
        assert_eq!(status_at(&dir, "link").unwrap_err(), Errno::NOENT);
    }
}
