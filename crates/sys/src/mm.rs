//! Memory: page-aligned buffers, read-only file mappings and fresh anonymous pages for `vmsplice`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};
use rustix::pipe::SpliceFlags;

use crate::io::read;
use crate::pipe::Pipe;

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
    /// towards its resident set (README.md, "What it guarantees", bounded memory: without this a mapping's resident
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

/// Measures whether `vmsplice` queues references to user pages or copies them (docs/KERNEL.md §1.3,
/// the 2026 change of §5): fills `len` bytes of fresh pages with `before`,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::read;
    use std::io::Write;

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
}
