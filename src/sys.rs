//! The syscall layer: the only module allowed `unsafe`.
//!
//! Thin, typed wrappers over the calls teecast builds on — pipes and their sizes, `splice`, `tee`,
//! `vmsplice`, file mappings, fresh anonymous pages and `poll` — each documented with the C call it
//! wraps. Where `rustix` offers a safe call it is used directly; what needs `unsafe` lives here with
//! its contract spelled out. The kernel facts behind each rule are in `KERNEL.md` (cited as §n).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::pipe::{PipeFlags, SpliceFlags};

/// The page size of this machine.
pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// A zeroed buffer whose bytes start on a page boundary. The kernel copies into and out of user
/// buffers a page at a time, and copies between unequally aligned addresses cost more; a plain
/// `Vec` of a megabyte starts 16 bytes into its first page (BENCHMARKS.md, "Attempts").
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, page-aligned.
    pub fn new(len: usize) -> AlignedBuf {
        let page = page_size();
        let vec = vec![0u8; len + page];
        let start = vec.as_ptr().align_offset(page).min(page);
        AlignedBuf { vec, start, len }
    }
}

impl Default for AlignedBuf {
    /// An empty buffer, with nothing allocated.
    fn default() -> AlignedBuf {
        AlignedBuf {
            vec: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

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
        let capacity = match rustix::pipe::fcntl_setpipe_size(&write, size) {
            Ok(granted) => granted,
            Err(_) => rustix::pipe::fcntl_getpipe_size(&write)?,
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

/// `ioctl(fd, FIONREAD)`—How many bytes wait in a pipe or socket.
pub fn bytes_queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let n = rustix::io::ioctl_fionread(fd)?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
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

fn retry_eintr<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Which readiness to wait for in [`wait_ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Data can be read (or the peer hung up).
    Readable,
    /// Data can be written (or the peer hung up).
    Writable,
}

/// `poll(&{fd, events}, 1, timeout)`—Waits until `fd` is ready, up to `deadline`.
///
/// Returns `Ok(true)` when ready (including error and hang-up states, which the next call
/// reports), `Ok(false)` when the deadline passed first. `None` waits without limit.
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    readiness: Readiness,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let events = match readiness {
        Readiness::Readable => PollFlags::IN,
        Readiness::Writable => PollFlags::OUT,
    };
    loop {
        // Even past the deadline, look once (timeout 0): ready beats late.
        let timeout = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
        let mut fds = [PollFd::from_borrowed_fd(fd, events)];
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `poll(fds, n, -1)` for writability of several fds: returns the indices that are writable (or
/// in an error or hang-up state). Waits until at least one is.
pub fn wait_any_writable(fds: &[BorrowedFd<'_>]) -> io::Result<Vec<usize>> {
    loop {
        let mut polls: Vec<PollFd<'_>> = fds
            .iter()
            .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::OUT))
            .collect();
        match rustix::event::poll(&mut polls, None) {
            Ok(0) => continue,
            Ok(_) => {
                return Ok(polls
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i)
                    .collect());
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

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

/// A read-only shared mapping of a file's first `len` bytes.
///
/// The bytes may change (a concurrent writer) or vanish (a truncation) at any time, so this type
/// never hands out a Rust slice: touching a page past EOF from user space raises SIGBUS, and a
/// slice over memory that changes is undefined behaviour. The kernel reads the mapping instead,
/// inside [`FileMap::write_to`], where a vanished page becomes a short count or `EFAULT` (§3).
#[derive(Debug)]
pub struct FileMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is only ever read by the kernel through `write_to`; no Rust reference to
// its bytes exists, so sharing or sending the pointer between threads cannot create a data race.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// `mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0)` then `madvise(MADV_SEQUENTIAL)`.
    ///
    /// `len` must be non-zero.
    pub fn new(file: BorrowedFd<'_>, len: usize) -> io::Result<FileMap> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty file",
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint), read-only, of a file we hold
        // open; it aliases no Rust object, and it is unmapped exactly once, in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                file,
                0,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        // SAFETY: the range is exactly the mapping just created; the advice is only a hint.
        let _ = unsafe {
            rustix::mm::madvise(ptr.as_ptr().cast(), len, rustix::mm::Advice::Sequential)
        };
        Ok(FileMap { ptr, len })
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty mappings are refused by [`FileMap::new`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `write(fd, map + offset, len)`—Lets the kernel copy mapped bytes into a pipe or socket.
    ///
    /// Returns the count written, which is short when the file was truncated under the mapping;
    /// `EFAULT` means the range starts past the new end of file (§3 "Truncation hazards").
    /// Retries `EINTR`; `EAGAIN` is returned to the caller.
    pub fn write_to(&self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<usize> {
        let end = offset.checked_add(len).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the mapping",
            ));
        }
        loop {
            // SAFETY: [offset, offset + len) lies inside the live mapping (checked above); the
            // kernel reads it and turns a missing page into EFAULT or a short count, never SIGBUS.
            let n = unsafe {
                libc::write(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    self.ptr.as_ptr().add(offset).cast(),
                    len,
                )
            };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// How far before a faulting address the kernel may map pages of a file ("fault around",
/// `mm/memory.c: do_fault_around()`): within the page-table page, 2 MiB on x86-64 and arm64 with
/// 4 KiB pages.
const FAULT_AROUND_LIMIT: usize = 2 * 1024 * 1024;

impl FileMap {
    /// `madvise(map + offset, len, MADV_DONTNEED)`—Drops this process's page-table entries for
    /// the pages covering `[offset, offset + len)` (and up to 2 MiB before it), so that bytes already sent stop counting
    /// towards its resident set (DESIGN.md "Bounded memory": without this a mapping's resident
    /// size grows to the whole file). The pages stay in the page cache: a shared file mapping
    /// that is touched again reads the file's bytes again, so this changes memory use, never
    /// content, and a concurrent `write_to` over the range just faults the pages back in.
    ///
    /// # References
    ///  - [Linux `madvise`](https://man7.org/linux/man-pages/man2/madvise.2.html)
    #[doc(alias = "madvise")]
    pub fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "range outside the mapping")
            })?;
        // Faulting a page in also maps its neighbours already in the page cache ("fault
        // around", at most the 2 MiB a page-table page covers), some of them before `offset`,
        // released earlier: release those again too, or a little leaks at every call.
        let start = offset.saturating_sub(FAULT_AROUND_LIMIT);
        let start = start - start % page_size();
        if end <= start {
            return Ok(());
        }
        // SAFETY: `start` is page-aligned and [start, end) lies inside the live mapping (the
        // kernel rounds the length up to a page, which stays inside the mapping's last page). No
        // Rust reference to the mapped bytes exists, and MADV_DONTNEED on a shared file mapping
        // only unmaps pages that refault from the page cache with the same file contents.
        unsafe {
            rustix::mm::madvise(
                self.ptr.as_ptr().add(start).cast(),
                end - start,
                rustix::mm::Advice::LinuxDontNeed,
            )?;
        }
        Ok(())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in `new`, unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Fresh anonymous pages for one chunk of the `vmsplice` path.
///
/// After `vmsplice` the pipe and then the socket hold references to these very pages until the
/// peer has read (loopback) or acknowledged (NIC) them, and no syscall reports when that is
/// (§2). Writing them again would change bytes in flight. So [`FreshPages::vmsplice_into`]
/// consumes the value: the pages can never be written after they are queued, and they are
/// unmapped on drop, which leaves the queued physical pages to the kernel.
#[derive(Debug)]
pub struct FreshPages {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: FreshPages owns its mapping exclusively, like a Box<[u8]>.
unsafe impl Send for FreshPages {}

impl FreshPages {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)`.
    pub fn new(len: usize) -> io::Result<FreshPages> {
        let len = len.max(1).next_multiple_of(page_size());
        // SAFETY: a new private anonymous mapping at a kernel-chosen address; it aliases nothing
        // and is owned by the returned value, which unmaps it once in Drop.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )?
        };
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(FreshPages { ptr, len })
    }

    /// The pages, to fill (they have never been queued anywhere).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes, readable and writable, owned exclusively by self, and
        // not yet handed to the kernel (vmsplice_into consumes self).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// `vmsplice(pipe, {pages, len}, 0)` until `len` bytes are queued, then `munmap`.
    ///
    /// Blocks while the pipe is full. Consumes the pages: they are never written again.
    pub fn vmsplice_into(self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<()> {
        let len = len.min(self.len);
        let mut done = 0;
        while done < len {
            // SAFETY: the slice covers bytes we own and never write again (self is consumed and
            // unmapped at the end of this call, the queued pages stay alive by their references);
            // `pipe` is the write end, so the kernel only reads from the slice (§1.3).
            let slice =
                unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(done), len - done) };
            let iov = [rustix::pipe::IoSliceRaw::from_slice(slice)];
            // SAFETY: as above: read-only use by the kernel of pages this value owns.
            match unsafe { rustix::pipe::vmsplice(pipe, &iov, SpliceFlags::empty()) } {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "vmsplice queued nothing",
                    ));
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Drop for FreshPages {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly the mapping created in `new`, unmapped only here. Pages
        // still referenced by a pipe or socket stay alive until those references drop (§1.6).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Measures whether `vmsplice` queues references to user pages or copies them (KERNEL.md §1.3,
/// the 2026 change in its status flag): fills `len` bytes of fresh pages with `before`,
/// `vmsplice`s them into a new pipe, overwrites them with `after`, then reads the pipe back.
///
/// Returns the bytes the pipe gave: all `after` means the pipe held the user's own pages (by
/// reference), all `before` means the kernel copied at `vmsplice` time.
///
/// This is the one place the pages are written after being queued, on purpose: changing what the
/// pipe returns is exactly what is measured. It is sound for Rust: the pages belong to a mapping
/// this function owns; once `vmsplice` returns no Rust reference to them is alive, so the write
/// through a fresh `&mut` slice aliases nothing; the kernel then copies them out inside `read()`,
/// which happens after the write on this same thread — a syscall, not a Rust memory access, so
/// there is no data race. The queued pages outlive the unmapping by their own references (§1.6).
/// `len` is capped at 64 KiB (the default pipe holds it without blocking).
pub fn vmsplice_then_overwrite(len: usize, before: u8, after: u8) -> io::Result<Vec<u8>> {
    let len = len.clamp(1, 64 * 1024);
    let pipe = Pipe::with_size(64 * 1024)?;
    let mut pages = FreshPages::new(len)?;
    pages.as_mut_slice()[..len].fill(before);
    let mut done = 0;
    while done < len {
        // SAFETY: the range lies inside the mapping `pages` owns; the slice lives only for this
        // call, and the kernel only reads it (`pipe.write` is the write end, §1.3).
        let slice = unsafe { std::slice::from_raw_parts(pages.ptr.as_ptr().add(done), len - done) };
        let iov = [rustix::pipe::IoSliceRaw::from_slice(slice)];
        // SAFETY: as above; the pipe is large enough that this never blocks.
        match unsafe { rustix::pipe::vmsplice(pipe.write.as_fd(), &iov, SpliceFlags::empty()) } {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    // The measured write: a plain store to memory we own, with no other Rust reference alive.
    pages.as_mut_slice()[..len].fill(after);
    let mut out = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match read(pipe.read.as_fd(), &mut out[got..])? {
            0 => break,
            n => got += n,
        }
    }
    out.truncate(got);
    Ok(out)
}

/// `setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, 1)`—Asks a socket to accept `MSG_ZEROCOPY` sends
/// (KERNEL.md §2, strategy 2). An error means this kernel or socket type refuses it.
///
/// # References
///  - [msg_zerocopy.rst](https://docs.kernel.org/networking/msg_zerocopy.html)
#[doc(alias = "SO_ZEROCOPY")]
pub fn set_zerocopy(socket: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen overflow"))?;
    // SAFETY: `socket` is a live descriptor for the duration of the call; the option value is a
    // c_int on our stack whose size is passed exactly; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            std::ptr::from_ref(&one).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

/// `fstat(fd).st_size`.
pub fn file_size(fd: impl AsFd) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
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
    use std::io::Write;

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

    #[test]
    fn file_map_writes_and_reports_truncation() {
        let mut f = tempfile::tempfile().unwrap();
        let data = vec![7u8; 64 * 1024];
        f.write_all(&data).unwrap();
        let map = FileMap::new(f.as_fd(), data.len()).unwrap();
        let p = Pipe::with_size(128 * 1024).unwrap();
        assert_eq!(map.write_to(p.write.as_fd(), 0, 4096).unwrap(), 4096);
        f.set_len(4096).unwrap();
        // Past the new end of file the kernel reports EFAULT rather than raising SIGBUS.
        let err = map.write_to(p.write.as_fd(), 16 * 1024, 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert!(map.write_to(p.write.as_fd(), 0, 1 << 20).is_err());
    }

    /// Regression: mmap-pipe and mmap-write left every page they had sent mapped, so the
    /// sender's resident set grew to the size of the file (1 GiB file: 1 GiB RSS).
    #[test]
    fn file_map_release_keeps_the_bytes() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let map = FileMap::new(f.as_fd(), data.len()).unwrap();
        let p = Pipe::with_size(128 * 1024).unwrap();
        assert_eq!(map.write_to(p.write.as_fd(), 0, 10_000).unwrap(), 10_000);
        map.release(0, 10_000).unwrap();
        map.release(10_000, data.len() - 10_000).unwrap();
        assert!(map.release(1, data.len()).is_err());
        // Released pages read the file's bytes again.
        assert_eq!(map.write_to(p.write.as_fd(), 0, 10_000).unwrap(), 10_000);
        let mut buf = vec![0u8; 20_000];
        let mut got = 0;
        while got < buf.len() {
            got += read(p.read.as_fd(), &mut buf[got..]).unwrap();
        }
        assert_eq!(&buf[..10_000], &data[..10_000]);
        assert_eq!(&buf[10_000..], &data[..10_000]);
    }

    #[test]
    fn fresh_pages_survive_unmapping_after_vmsplice() {
        let p = Pipe::with_size(64 * 1024).unwrap();
        let mut pages = FreshPages::new(8192).unwrap();
        pages.as_mut_slice()[..5].copy_from_slice(b"fresh");
        pages.vmsplice_into(p.write.as_fd(), 5).unwrap();
        // The mapping is gone; the pipe still holds the bytes.
        let mut buf = [0u8; 8];
        assert_eq!(read(p.read.as_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"fresh");
    }

    #[test]
    fn vmsplice_probe_reads_back_one_of_the_two_fills() {
        let got = vmsplice_then_overwrite(8192, b'a', b'b').unwrap();
        assert_eq!(got.len(), 8192);
        // By reference (all b) or copied (all a); never a mix within one probe.
        assert!(got.iter().all(|&c| c == b'a') || got.iter().all(|&c| c == b'b'));
    }

    #[test]
    fn aligned_buffers_start_on_a_page_and_hold_exactly_their_length() {
        for len in [0, 1, 4095, 4096, 1 << 20] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % page_size(), 0, "{len}");
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(7);
            assert!(buf.iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn wait_ready_times_out_on_an_empty_pipe() {
        let p = Pipe::with_size(4096).unwrap();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(!wait_ready(p.read.as_fd(), Readiness::Readable, Some(deadline)).unwrap());
        assert!(wait_ready(p.write.as_fd(), Readiness::Writable, Some(deadline)).unwrap());
    }
}
