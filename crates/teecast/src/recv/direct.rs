//! Storing a stream into a new file on a disk with `O_DIRECT`, on a thread of its own: the
//! receiving thread fills one page-aligned buffer while the writer writes the other, straight to
//! the device, past the page cache.
//!
//! Why: on this project's machine the buffered receiver spent most of its time copying each
//! buffer into fresh page-cache pages (`copy_folio_from_iter_atomic`, 2–4 CPU s/GiB against
//! mbuffer's 0.5), not waiting in the dirty limits. Written direct, the device reads the same
//! two buffers over and over, no page cache is dirtied, and the fsync before the commit has only
//! the tail and the metadata left
//! (BENCHMARKS.md, "One receiving server, K streams at once (2026-12-04)").

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use teecast_sys as sys;
use teecast_sys::{FileKind, FreshPages};

/// Bytes in each of the two buffers: one written while the other fills (4 MiB was no faster,
/// alternated on a quiet machine, and holds four times the memory: BENCHMARKS.md).
pub(super) const DIRECT_CHUNK: usize = 1024 * 1024;

/// Offsets and lengths of direct writes are multiples of this (a page: at least any device's
/// logical block here).
const ALIGN: usize = 4096;

/// A buffer handed to the writer, and how many of its bytes to write. The writer writes them in
/// order with `write()`, so the direct descriptor's file position shows how far the stream is
/// stored (in `/proc/PID/fdinfo`, as a buffered writer's does).
type Work = (FreshPages, usize);

/// The direct writer of one stream.
pub(super) struct DirectWriter {
    /// The buffer being filled (anonymous pages, page-aligned and unmapped when dropped, so the
    /// memory goes back as each stream ends), and how far.
    fill: Option<FreshPages>,
    filled: usize,
    /// The file offset where `fill` starts.
    offset: u64,
    /// A buffer not in use.
    spare: Option<FreshPages>,
    /// Buffers sent to the writer and not yet back.
    out: usize,
    work: Option<SyncSender<Work>>,
    done: Receiver<io::Result<FreshPages>>,
    thread: Option<JoinHandle<()>>,
    /// The file, buffered, for the tail that is not a whole block.
    file: OwnedFd,
}

impl DirectWriter {
    /// A direct writer for `file` from its start, when `file` is an empty regular file on a
    /// filesystem that is not tmpfs (memory: nothing to bypass) and takes `O_DIRECT`; `None`
    /// otherwise, and the stream is written as before.
    pub(super) fn open(file: BorrowedFd<'_>) -> Option<DirectWriter> {
        let status = sys::status(file).ok()?;
        if status.kind != FileKind::Regular || sys::file_size(file).ok()? != 0 {
            return None;
        }
        if sys::is_tmpfs(file).unwrap_or(true) {
            return None;
        }
        let direct = sys::reopen_direct_write(file).ok()?;
        let buffered = file.try_clone_to_owned().ok()?;
        let (work, jobs) = sync_channel::<Work>(1);
        let (back, done) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("teecast-direct".into())
            .spawn(move || {
                for (mut buf, len) in jobs {
                    let bytes = &buf.as_mut_slice()[..len];
                    let result = write_all(direct.as_fd(), bytes).map(|()| buf);
                    let failed = result.is_err();
                    if back.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .ok()?;
        Some(DirectWriter {
            fill: Some(FreshPages::new(DIRECT_CHUNK).ok()?),
            filled: 0,
            offset: 0,
            spare: Some(FreshPages::new(DIRECT_CHUNK).ok()?),
            out: 0,
            work: Some(work),
            done,
            thread: Some(thread),
            file: buffered,
        })
    }

    /// Where the next bytes go: at most `want` of them, never empty.
    pub(super) fn space(&mut self, want: usize) -> &mut [u8] {
        let end = (self.filled + want).min(DIRECT_CHUNK);
        match &mut self.fill {
            Some(f) => &mut f.as_mut_slice()[self.filled..end],
            // Only once finished, when nothing more is received.
            None => &mut [],
        }
    }

    /// `n` bytes were put in [`space`](DirectWriter::space): a full buffer goes to the writer.
    pub(super) fn filled(&mut self, n: usize) -> io::Result<()> {
        self.filled += n;
        if self.filled == DIRECT_CHUNK {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Copies `bytes` in (an encrypted stream's plaintext, opened elsewhere).
    pub(super) fn append(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let space = self.space(bytes.len());
            let n = space.len();
            space.copy_from_slice(&bytes[..n]);
            self.filled(n)?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Sends the full buffer to the writer and takes another (waiting for one to come back).
    fn hand_over(&mut self) -> io::Result<()> {
        let next = match self.spare.take() {
            Some(b) => b,
            None => self.take_back()?,
        };
        let full = self.fill.replace(next);
        let len = self.filled;
        self.send(full.ok_or_else(writer_gone)?, len)?;
        self.offset += len as u64;
        self.filled = 0;
        Ok(())
    }

    fn send(&mut self, buf: FreshPages, len: usize) -> io::Result<()> {
        let sent = self.work.as_ref().map(|w| w.send((buf, len)));
        match sent {
            Some(Ok(())) => {
                self.out += 1;
                Ok(())
            }
            // The writer stopped: its error is waiting.
            _ => Err(self.take_back().err().unwrap_or_else(writer_gone)),
        }
    }

    /// A buffer back from the writer, or its error.
    fn take_back(&mut self) -> io::Result<FreshPages> {
        let got = self.done.recv().unwrap_or_else(|_| Err(writer_gone()));
        self.out = self.out.saturating_sub(1);
        got
    }

    /// Writes what is left: the whole blocks direct, the tail through the page cache (the
    /// fsync before the commit makes it durable with the rest); waits for every write.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        let whole = self.filled - self.filled % ALIGN;
        let tail_at = self.offset + whole as u64;
        if whole > 0 {
            let full = self.fill.take().ok_or_else(writer_gone)?;
            self.send(full, whole)?;
        }
        // The writer writes in order: the last buffer back is the one just sent.
        let mut last = None;
        while self.out > 0 {
            last = Some(self.take_back()?);
        }
        if whole > 0 {
            self.fill = Some(last.ok_or_else(writer_gone)?);
        }
        self.work = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The tail, not a whole block, still sits after the blocks written (the writer only
        // read the buffer).
        if let Some(f) = &mut self.fill {
            write_all_at(
                self.file.as_fd(),
                &f.as_mut_slice()[whole..self.filled],
                tail_at,
            )?;
        }
        self.filled = 0;
        Ok(())
    }
}

impl Drop for DirectWriter {
    /// A stream that fails: the writer ends after the write it is in, and closes its descriptor
    /// before this returns.
    fn drop(&mut self) {
        self.work = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_gone() -> io::Error {
    io::Error::other("the direct writer stopped")
}

/// Writes all of `bytes` at the file position of `fd`.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::write(fd, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `bytes` at `offset` of `fd`.
fn write_all_at(fd: BorrowedFd<'_>, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        match sys::pwrite(fd, bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
