//! Where a received payload goes: the store it is spliced into (a temporary file, standard
//! output, a device), and its publication once it verifies.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use teecast_sys as sys;
use teecast_sys::{AlignedBuf, Pipe, SpliceFlags};

use super::control::Control;
use super::direct::DirectWriter;
use super::error::RecvError;
use super::options::{KeepFree, Received, RecvOptions, Target};

use teecast_proto::crypt::{RECORDS_PER_KEY, RecordReader, TransferKey};

use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::store::{AtomicFile, Writeback};
/// Where one stream is being written.
pub(super) enum Store {
    /// A temporary with no name, published under `path` once verified.
    Atomic(AtomicFile),
    /// Straight into a device node, a FIFO or standard output: nothing to publish or undo.
    Direct { file: File, path: PathBuf },
}

impl Store {
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Store::Atomic(f) => f.file().as_fd(),
            Store::Direct { file, .. } => file.as_fd(),
        }
    }
}

/// Opens where a stream bound for `path` goes: standard output, a device node or FIFO
/// already at `path` (written into, never replaced), or else a temporary beside `path`. A
/// failure refuses the stream.
///
/// With a known `length`, a file that could not fit in the space left on its filesystem is
/// refused before any of the payload is read.
pub(super) fn open_store(
    options: &RecvOptions,
    path: &std::path::Path,
    length: Option<u64>,
) -> Result<Store, RecvError> {
    let cannot = |source| RecvError::CannotCreate {
        path: path.to_path_buf(),
        source,
    };
    if let (Some(limit), Some(n)) = (options.max_size, length)
        && n > limit
    {
        return Err(RecvError::TooLarge {
            limit,
            length: Some(n),
        });
    }
    if matches!(options.target, Target::Stdout) {
        let file = io::stdout().as_fd().try_clone_to_owned().map_err(cannot)?;
        return Ok(Store::Direct {
            file: File::from(file),
            path: path.to_path_buf(),
        });
    }
    // Follow a link at the target to what it names: a device or FIFO is written into in place.
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(cannot)?;
            Ok(Store::Direct {
                file,
                path: path.to_path_buf(),
            })
        }
        _ => {
            let file = AtomicFile::create(path).map_err(cannot)?;
            if let Some(needed) = length
                && let Ok(space) = sys::space(file.file())
            {
                if needed > space.available {
                    return Err(RecvError::NoSpace {
                        needed,
                        available: space.available,
                    });
                }
                if let Some(keep) = options.keep_free
                    && space.available.saturating_sub(needed) < keep.reserve(space.total)
                {
                    return Err(RecvError::Reserve {
                        reserve: keep.reserve(space.total),
                        available: space.available,
                        needed: Some(needed),
                    });
                }
            }
            Ok(Store::Atomic(file))
        }
    }
}

/// Stores a verified stream: publishes a temporary under its final name, or flushes a device.
pub(super) fn commit(
    file: Store,
    options: &RecvOptions,
    peer: Option<SocketAddr>,
    bytes: u64,
    digest: Digest,
) -> Result<Received, RecvError> {
    let committed = match file {
        Store::Atomic(f) if options.no_clobber => f.commit_no_clobber(),
        Store::Atomic(f) => f.commit(),
        // A pipe or a terminal cannot be synced (EINVAL): what was written is all there is.
        Store::Direct { file, path } => match file.sync_all() {
            Err(e) if sys::Errno::from_io_error(&e) != Some(sys::Errno::INVAL) => Err(e),
            _ => Ok(path),
        },
    };
    let path = committed.map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => RecvError::Exists,
        _ => RecvError::Io {
            op: "storing the file",
            source,
        },
    })?;
    Ok(Received {
        peer,
        path,
        bytes,
        digest,
        encrypted: false,
    })
}

/// The payload pipeline. With a digest: `read()` from the socket into a buffer, hash it while it
/// is in cache, `write()` it to the file — two copies, and measured cheaper than one copy with
/// the digest computed elsewhere: from the page cache through a mapping of the range just
/// spliced into the file, from a `tee` of the spliced pages, or on a second thread
/// (BENCHMARKS.md, "Attempts"). Without a digest: socket → pipe → file with splice, one copy.
///
/// On a disk filesystem the written range is handed to writeback as the stream goes (every
/// [`WRITEBACK_STEP`]), so the disk writes while the stream arrives and the fsync before the
/// commit has little left to do. The receiver does not wait for those writes: waiting for the
/// range 64 MiB back made four receivers on one disk 1.6× slower (BENCHMARKS.md, "Attempts").
/// A stream through the buffer into a new file on a disk is instead written with `O_DIRECT` on
/// a thread of its own ([`DirectWriter`]), past the page cache: the copy into fresh page-cache
/// pages made buffered writes 2–4× slower than mbuffer + fsync, most under memory pressure.
pub(super) struct Payload {
    /// `None` with a digest (the buffer path); the splice path's pipe otherwise.
    pub(super) pipe: Option<Pipe>,
    pub(super) hasher: Hasher,
    pub(super) buf: AlignedBuf,
    pub(super) bytes: u64,
    pub(super) stall: Duration,
    pub(super) writeback: Writeback,
    /// Ends the copy with [`RecvError::Stopped`] once it says the streams are cut.
    pub(super) stop: Option<Control>,
    /// The most bytes the stream may have.
    pub(super) max_size: Option<u64>,
    /// The free space to leave, for a stream into a file.
    pub(super) keep_free: Option<KeepFree>,
    /// The stream's bytes at which the free space is looked at next.
    pub(super) next_space_check: u64,
    /// An encrypted stream: its records, opened as they arrive (the bytes counted are the
    /// records', the bytes stored and hashed the plaintext).
    pub(super) records: Option<RecordReader>,
    /// A stream with a digest into a new file on a disk: written with `O_DIRECT` on a thread
    /// of its own ([`DirectWriter`]); the plaintext of an encrypted stream too.
    pub(super) direct: Option<DirectWriter>,
}

/// Bytes moved per call.
pub(super) const RECEIVE_CHUNK: usize = 1024 * 1024;

/// With a free-space reserve, every this many bytes stored the space left is looked at (a
/// stream crosses the reserve by at most this much before it is cut).
const SPACE_CHECK_STEP: u64 = 1024 * 1024;

impl Payload {
    pub(super) fn new(
        digest: DigestAlgorithm,
        options: &RecvOptions,
    ) -> Result<Payload, RecvError> {
        let (pipe, buf) = if digest == DigestAlgorithm::None {
            let pipe = Pipe::with_size(RECEIVE_CHUNK).map_err(RecvError::io("creating a pipe"))?;
            (Some(pipe), AlignedBuf::default())
        } else {
            (None, AlignedBuf::new(RECEIVE_CHUNK))
        };
        Ok(Payload {
            pipe,
            hasher: Hasher::new(digest),
            buf,
            bytes: 0,
            stall: options.stall_timeout,
            writeback: Writeback::default(),
            stop: None,
            max_size: options.max_size,
            keep_free: None,
            next_space_check: 0,
            records: None,
            direct: None,
        })
    }

    /// Opens the records of an encrypted stream under `transfer` as they arrive (the buffer
    /// path, whatever the digest).
    pub(super) fn opening(mut self, transfer: Option<&TransferKey>) -> Payload {
        if let Some(t) = transfer {
            self.records = Some(RecordReader::new(t, RECORDS_PER_KEY));
            self.pipe = None;
        }
        self
    }

    /// Keeps the free space `options` asks for while it writes into `store`, a file.
    pub(super) fn keeping_free(mut self, options: &RecvOptions, store: &Store) -> Payload {
        if matches!(store, Store::Atomic(_)) {
            self.keep_free = options.keep_free;
        }
        self
    }

    /// Ends the stream when it outgrows the size limit, or its file would leave less free
    /// space than the reserve (looked at every [`SPACE_CHECK_STEP`]).
    fn check_limits(&mut self, file: BorrowedFd<'_>) -> Result<(), RecvError> {
        if let Some(limit) = self.max_size
            && self.bytes > limit
        {
            return Err(RecvError::TooLarge {
                limit,
                length: None,
            });
        }
        if let Some(keep) = self.keep_free
            && self.bytes >= self.next_space_check
        {
            self.next_space_check = self.bytes + SPACE_CHECK_STEP;
            if let Ok(space) = sys::space(file)
                && space.available < keep.reserve(space.total)
            {
                return Err(RecvError::Reserve {
                    reserve: keep.reserve(space.total),
                    available: space.available,
                    needed: None,
                });
            }
        }
        Ok(())
    }

    /// Writes into `store`, a new file on a disk, with `O_DIRECT` when the stream goes through
    /// the buffer (a digest, or encrypted) and the filesystem takes it; as before otherwise
    /// (tmpfs, a device, a pipe, `O_DIRECT` refused, the splice path).
    pub(super) fn writing_direct(mut self, store: &Store) -> Payload {
        if self.pipe.is_none()
            && let Store::Atomic(f) = store
        {
            self.direct = DirectWriter::open(f.file().as_fd());
        }
        self
    }

    /// Ends the copy when `control` cuts the streams in flight.
    pub(super) fn stopped_by(mut self, control: &Control) -> Payload {
        self.stop = Some(control.clone());
        self
    }

    /// Moves `limit` bytes (or everything until EOF when `None`) from the socket to the file.
    pub(super) fn copy(
        &mut self,
        sock: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        limit: Option<u64>,
    ) -> Result<(), RecvError> {
        let mut left = limit;
        loop {
            if self.stop.as_ref().is_some_and(Control::is_cut) {
                return Err(RecvError::Stopped);
            }
            let want = match left {
                Some(0) => return Ok(()),
                Some(l) => usize::try_from(l)
                    .unwrap_or(RECEIVE_CHUNK)
                    .min(RECEIVE_CHUNK),
                None => RECEIVE_CHUNK,
            };
            let n = self.receive(sock, file, want)?;
            if n == 0 {
                return match left {
                    None => Ok(()),
                    Some(_) => Err(RecvError::Truncated {
                        got: self.bytes,
                        during: "payload",
                    }),
                };
            }
            self.bytes += n as u64;
            if let Some(l) = &mut left {
                *l -= n as u64;
            }
            self.check_limits(file)?;
            if self.direct.is_none() {
                self.advance_writeback(file);
            }
        }
    }

    /// After more bytes are in the file: widens a pipe at the first, and hands every full
    /// [`WRITEBACK_STEP`] to writeback.
    pub(super) fn advance_writeback(&mut self, file: BorrowedFd<'_>) {
        if !self.writeback.started() {
            widen_pipe(file);
        }
        self.writeback.advance(file, self.bytes);
    }

    /// Receives up to `want` bytes and stores them; 0 at the end of the stream. A socket that
    /// stays quiet for the stall timeout (its `SO_RCVTIMEO`) is `Stalled`.
    pub(super) fn receive(
        &mut self,
        sock: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        want: usize,
    ) -> Result<usize, RecvError> {
        let stall = self.stall;
        let got = self.bytes;
        let read_err = move |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RecvError::Stalled(stall),
            io::ErrorKind::ConnectionReset => RecvError::Truncated {
                got,
                during: "payload",
            },
            _ => RecvError::Io {
                op: "receiving",
                source: e,
            },
        };
        let write_err = RecvError::io("writing the file");
        if let Some(records) = &mut self.records {
            let space = records.space();
            let want = want.min(space.len());
            let n = sys::read(sock, &mut space[..want]).map_err(read_err)?;
            let (hasher, direct) = (&mut self.hasher, &mut self.direct);
            records.filled(n, |plain| {
                hasher.update(plain);
                let write_err = RecvError::io("writing the file");
                match direct {
                    Some(d) => d.append(plain).map_err(write_err),
                    None => write_fully(file, plain).map_err(write_err),
                }
            })?;
            return Ok(n);
        }
        match (&self.pipe, &mut self.direct) {
            (Some(pipe), _) => {
                let n = sys::splice(sock, pipe.write.as_fd(), want, SpliceFlags::MORE)
                    .map_err(read_err)?;
                let mut left = n;
                while left > 0 {
                    match sys::splice(pipe.read.as_fd(), file, left, SpliceFlags::MORE) {
                        Ok(0) => return Err(write_err(io::ErrorKind::WriteZero.into())),
                        Ok(m) => left -= m,
                        Err(e) => return Err(write_err(e)),
                    }
                }
                Ok(n)
            }
            (None, Some(d)) => {
                let space = d.space(want);
                let n = sys::read(sock, space).map_err(read_err)?;
                self.hasher.update(&space[..n]);
                d.filled(n).map_err(write_err)?;
                Ok(n)
            }
            (None, None) => {
                let n = sys::read(sock, &mut self.buf[..want]).map_err(read_err)?;
                self.hasher.update(&self.buf[..n]);
                write_fully(file, &self.buf[..n]).map_err(write_err)?;
                Ok(n)
            }
        }
    }

    /// The digest of what was stored; of an encrypted stream, once its final record opened.
    pub(super) fn finish(mut self) -> Result<Digest, RecvError> {
        if let Some(r) = &self.records {
            r.finish().map_err(RecvError::Records)?;
        }
        if let Some(d) = &mut self.direct {
            d.finish().map_err(RecvError::io("writing the file"))?;
        }
        Ok(self.hasher.finish())
    }
}

/// Writes all of `bytes` to `file`.
fn write_fully(file: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < bytes.len() {
        match sys::write(file, &bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => done += m,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Into a pipe (standard output into a consumer, a FIFO): asks for a pipe of [`RECEIVE_CHUNK`],
/// so that each piece received goes in with one write and the consumer reads it in large
/// pieces, rather than 64 KiB (the default) at a time. Best effort: a pipe that stays small is
/// only slower.
pub(super) fn widen_pipe(file: BorrowedFd<'_>) {
    let fifo = sys::status(file).is_ok_and(|st| st.kind == sys::FileKind::Fifo);
    if fifo && sys::pipe_size(file).is_ok_and(|size| size < RECEIVE_CHUNK) {
        let _ = sys::set_pipe_size(file, RECEIVE_CHUNK);
    }
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod payload_tests;
