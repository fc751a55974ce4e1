//! The pipe paths: a filler puts each chunk into a source pipe (by `write`, `vmsplice` of fresh
//! pages, or `splice` from the file or an `O_DIRECT` descriptor), the chunk is `tee`d into an
//! empty stage pipe per consumer, and each stage is spliced into the consumer's own pipe as room
//! appears.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::map::SourceMap;
use super::{
    Branch, EngineError, FanoutConfig, Filler, Unsupported, fresh_size, next_want, read_source,
};
use crate::digest::Hasher;
use crate::source::Source;
use crate::strategy::Strategy;
use teecast_sys::{self as sys, AlignedBuf, FreshPages, Pipe, SpliceFlags};

/// How stable bytes get into the source pipe.
enum PipeFiller {
    /// `read()` into a reused buffer, `write()` it into the pipe.
    Read(AlignedBuf),
    /// `read()` into fresh pages, `vmsplice` them.
    Vmsplice,
    /// `write()` into the pipe from a mapping of the file.
    Map(SourceMap),
    /// `splice` from a descriptor: the file itself, or an `O_DIRECT` one (`direct`), whose
    /// unaligned tail goes through the `tail` buffer.
    Splice {
        /// The descriptor spliced from.
        fd: OwnedFd,
        /// Opened with `O_DIRECT`: lengths must be whole pages.
        direct: bool,
        /// Private buffer for an `O_DIRECT` file's last partial page.
        tail: Vec<u8>,
    },
}

/// The filler of a pipe path over a [`Source`].
pub(super) struct SourceFiller<'a> {
    source: &'a Source,
    kind: PipeFiller,
}

impl<'a> SourceFiller<'a> {
    /// The filler of `strategy` (a pipe path) for `source`; opens what it needs (a mapping, an
    /// `O_DIRECT` descriptor) now, so a path the source cannot use fails before anything starts.
    pub(super) fn new(source: &'a Source, strategy: Strategy) -> Result<Self, EngineError> {
        Ok(SourceFiller {
            source,
            kind: PipeFiller::new(source, strategy)?,
        })
    }
}

impl Filler for SourceFiller<'_> {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        offset: u64,
        want: usize,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        self.kind.fill(self.source, pipe, offset, want, hasher)
    }

    fn hashes(&self) -> bool {
        matches!(self.kind, PipeFiller::Read(_) | PipeFiller::Vmsplice)
    }
}

impl PipeFiller {
    fn new(source: &Source, strategy: Strategy) -> Result<PipeFiller, EngineError> {
        Ok(match strategy {
            Strategy::ReadPipe => PipeFiller::Read(AlignedBuf::default()),
            Strategy::Vmsplice => PipeFiller::Vmsplice,
            Strategy::MmapPipe => match SourceMap::of(source)? {
                Some(map) => PipeFiller::Map(map),
                None => PipeFiller::Read(AlignedBuf::default()),
            },
            Strategy::ZeroCopy => PipeFiller::Splice {
                fd: source
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|source| EngineError::Source { op: "dup", source })?,
                direct: false,
                tail: Vec::new(),
            },
            Strategy::Direct => PipeFiller::Splice {
                fd: open_direct(source)?,
                direct: true,
                tail: Vec::new(),
            },
            other => unreachable!("{other} is not a pipe path"),
        })
    }

    /// Puts up to `want` bytes of the source at `offset` into `pipe`; returns how many. Fewer
    /// than `want` only at the end of the source.
    fn fill(
        &mut self,
        source: &Source,
        pipe: BorrowedFd<'_>,
        offset: u64,
        want: usize,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        let pipe_err = |source: io::Error| EngineError::Pipe {
            op: "filling the pipe",
            source,
        };
        match self {
            PipeFiller::Read(buf) => {
                if buf.len() < want {
                    *buf = AlignedBuf::new(want);
                }
                let got = read_source(source, &mut buf[..want], offset)?;
                if let Some(h) = hasher {
                    h.update(&buf[..got]);
                }
                write_all(pipe, &buf[..got]).map_err(pipe_err)?;
                Ok(got)
            }
            PipeFiller::Vmsplice => {
                let mut pages = FreshPages::new(want).map_err(pipe_err)?;
                let got = read_source(source, &mut pages.as_mut_slice()[..want], offset)?;
                if let Some(h) = hasher {
                    h.update(&pages.as_mut_slice()[..got]);
                }
                pages.vmsplice_into(pipe, got).map_err(pipe_err)?;
                Ok(got)
            }
            PipeFiller::Map(map) => {
                let mut done = 0;
                while done < want {
                    // Clamp to a fresh size: past EOF the kernel sends zeros or EFAULT (§3).
                    let size = fresh_size(source)?;
                    if size < offset + want as u64 {
                        return Ok(done);
                    }
                    let at = usize::try_from(offset).unwrap_or(usize::MAX) + done;
                    match map.write_to(pipe, at, want - done) {
                        Ok(0) => return Ok(done),
                        Ok(n) => done += n,
                        Err(e) => return Err(pipe_err(e)),
                    }
                }
                Ok(done)
            }
            PipeFiller::Splice { fd, direct, tail } => {
                let direct = *direct;
                if !source.is_seekable() {
                    // A stream: whatever the producer has ready, up to `want`.
                    return sys::splice(fd.as_fd(), pipe, want, SpliceFlags::MORE)
                        .map_err(pipe_err);
                }
                let page = sys::page_size();
                let mut done = 0;
                while done < want {
                    let left = want - done;
                    let at = offset + done as u64;
                    if direct && left < page {
                        // O_DIRECT needs an aligned buffer, offset and length; the last partial
                        // block is read through the buffered descriptor into a private buffer
                        // (a copy of under one page), which is as stable as any read().
                        tail.resize(page, 0);
                        let got =
                            sys::pread(source.fd(), &mut tail[..left], at).map_err(|source| {
                                EngineError::Source {
                                    op: "pread",
                                    source,
                                }
                            })?;
                        if got == 0 {
                            break;
                        }
                        write_all(pipe, &tail[..got]).map_err(pipe_err)?;
                        done += got;
                        continue;
                    }
                    let len = if direct { left - left % page } else { left };
                    match sys::splice_from_offset(fd.as_fd(), at, pipe, len, SpliceFlags::MORE) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(source) => {
                            return Err(EngineError::Source {
                                op: "splice",
                                source,
                            });
                        }
                    }
                }
                debug_assert!(hasher.is_none(), "splice paths hash on a branch");
                Ok(done)
            }
        }
    }
}

/// Opens the source again with `O_DIRECT`, so splice reads into private pages (docs/KERNEL.md §1.1).
/// Through `/proc/self/fd`, so it is the same file even if its name now points elsewhere.
fn open_direct(source: &Source) -> Result<OwnedFd, EngineError> {
    let path = source
        .path()
        .ok_or(Unsupported::NeedsRegularFile(Strategy::Direct))?;
    sys::reopen_direct(source.fd())
        .or_else(|e| match e.kind() {
            // No /proc: the name will do.
            io::ErrorKind::NotFound => sys::open_direct(path),
            _ => Err(e),
        })
        .map_err(|source| {
            EngineError::from(Unsupported::NoDirect {
                path: path.to_path_buf(),
                source,
            })
        })
}

pub(super) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = sys::write(fd, buf)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// The pipe fan-out: `filler` puts each chunk into the source pipe, which is teed into every
/// branch's stage and then emptied; `total` is the stream's length when known.
pub(super) fn pump_pipes(
    filler: &mut dyn Filler,
    total: Option<u64>,
    branches: &mut [Branch],
    config: &FanoutConfig,
    mut hasher: Option<&mut Hasher>,
) -> Result<u64, EngineError> {
    // The source pipe is never larger than any stage, so a tee into an empty stage is whole.
    let stage_cap = branches
        .iter()
        .filter_map(|b| b.stage.as_ref().map(Pipe::capacity))
        .min()
        .unwrap_or(config.pipe_chunk);
    let src = Pipe::with_size(stage_cap).map_err(|source| EngineError::Pipe {
        op: "creating a pipe",
        source,
    })?;
    if src.capacity() > stage_cap {
        return Err(EngineError::PipeInvariant(
            "the source pipe is larger than the stages it is teed into",
        ));
    }
    let chunk = config.pipe_chunk.min(src.capacity());
    let sink = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|source| EngineError::Pipe {
            op: "opening /dev/null",
            source,
        })?;
    let mut sent = 0u64;
    loop {
        let want = next_want(total, sent, chunk);
        if want == 0 {
            break;
        }
        let got = filler.fill(src.write.as_fd(), sent, want, hasher.as_deref_mut())?;
        if got == 0 {
            // Only nothing is the end: a stream spliced into the pipe comes in whatever pieces
            // its producer had ready. Short of the announced length, the source was cut.
            if let Some(expected) = total {
                return Err(EngineError::Truncated { at: sent, expected });
            }
            break;
        }
        flush_stages(branches)?;
        for b in branches.iter_mut().filter(|b| b.alive()) {
            let stage = b.stage.as_ref().map(|s| s.write.as_fd());
            let teed = stage
                .map(|s| sys::tee(src.read.as_fd(), s, got))
                .transpose()
                .map_err(|source| EngineError::Pipe { op: "tee", source })?;
            if teed != Some(got) {
                return Err(EngineError::PipeInvariant(
                    "a tee into an empty stage pipe was short",
                ));
            }
            b.pending = got;
        }
        if !branches.iter().any(Branch::serves_a_caller) {
            return Err(EngineError::AllFailed);
        }
        // Every branch has its copy: drop the source's references.
        let mut left = got;
        while left > 0 {
            let n = sys::splice(src.read.as_fd(), sink.as_fd(), left, SpliceFlags::empty())
                .map_err(|source| EngineError::Pipe {
                    op: "emptying the source pipe",
                    source,
                })?;
            if n == 0 {
                return Err(EngineError::PipeInvariant("the source pipe ran dry"));
            }
            left -= n;
        }
        push_stages(branches)?;
        sent += got as u64;
    }
    flush_stages(branches)?;
    Ok(sent)
}

/// Moves what each stage holds into its out pipe without waiting; returns the indices of the
/// branches whose out pipe was full.
fn push_stages(branches: &mut [Branch]) -> Result<Vec<usize>, EngineError> {
    let mut full = Vec::new();
    for (i, b) in branches.iter_mut().enumerate() {
        while b.alive() && b.pending > 0 {
            let (Some(stage), Some(out)) = (b.stage.as_ref(), b.out_w.as_ref()) else {
                break;
            };
            match sys::splice(
                stage.read.as_fd(),
                out.as_fd(),
                b.pending,
                SpliceFlags::NONBLOCK,
            ) {
                Ok(0) => {
                    b.fail()?;
                }
                Ok(n) => b.pending -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full.push(i);
                    break;
                }
                // EPIPE: the consumer closed its pipe because it failed.
                Err(_) => b.fail()?,
            }
        }
    }
    Ok(full)
}

/// Empties every stage into its out pipe, waiting for the slowest consumer.
fn flush_stages(branches: &mut [Branch]) -> Result<(), EngineError> {
    loop {
        let full = push_stages(branches)?;
        if full.is_empty() {
            return Ok(());
        }
        let fds: Vec<BorrowedFd<'_>> = full
            .iter()
            .filter_map(|&i| branches[i].out_w.as_ref().map(|f| f.as_fd()))
            .collect();
        sys::wait_any(&fds, sys::Readiness::Writable, None)
            .map_err(|source| EngineError::Pipe { op: "poll", source })?;
    }
}
