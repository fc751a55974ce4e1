//! The engine: a *filler* turns the source into stable bytes, a *fan-out* hands those bytes to
//! every consumer ([`Sink`]): destination sockets, the capture file, the digest.
//!
//! Two fan-outs exist. On the pipe paths the filler puts one chunk into a source pipe; the chunk
//! is `tee`d into a private, empty *stage* pipe per consumer (tee into an empty pipe at least as
//! large as the source is never short, KERNEL.md §1.2), the source is then drained, and each stage
//! is spliced into the consumer's *out* pipe as room appears, so consumers run a chunk or more
//! apart without ever sharing a pipe's reading end. On the buffer paths one buffer from a
//! bounded pool is shared, read-only, by every consumer. Each consumer runs on its own thread.
//! The slowest consumer sets the pace; a consumer that fails is dropped and the others go on,
//! unless it is required (capture, digest), which ends the transfer.
//!
//! The engine knows nothing of the wire protocol: framing belongs to the sinks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use rustix::pipe::SpliceFlags;

use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::source::Source;
use crate::strategy::Strategy;
use crate::sys::{self, FileMap, FreshPages, Pipe};

/// A consumer's failure, in one line for the report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    /// `context: error`.
    pub fn io(context: &str, err: &io::Error) -> SinkError {
        SinkError(format!("{context}: {err}"))
    }
}

/// A consumer of the stable stream. Each runs on a thread of its own and receives the stream in
/// order, in one of three forms depending on the data path.
pub trait Sink: Send {
    /// Called once before any data (connect, write a header).
    fn start(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Takes everything that arrives in `pipe` (this consumer's own) until its end of file,
    /// which comes when the filler has put the whole stream in (or given up). Returns the count.
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError>;
    /// Takes bytes from a shared, immutable buffer.
    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError>;
    /// Takes `len` bytes of a file mapping from `offset` (the `mmap-write` path).
    fn take_from_map(&mut self, map: &FileMap, offset: usize, len: usize) -> Result<(), SinkError> {
        let _ = (map, offset, len);
        Err(SinkError(
            "this consumer cannot take data from a file mapping".into(),
        ))
    }
    /// The stream ended after `length` bytes with `digest`.
    fn finish(&mut self, length: u64, digest: &Digest) -> Result<(), SinkError>;
    /// The stream was abandoned; clean up (remove temporary files, close connections).
    fn abort(&mut self, reason: &str);
    /// Whether a failure of this consumer must end the whole transfer (a capture file).
    fn is_required(&self) -> bool {
        false
    }
}

/// Why a fan-out failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The source ended before the length announced at the start.
    #[error(
        "source ended at byte {at} of the {expected} announced (truncated during the send?); nothing was confirmed"
    )]
    Truncated {
        /// Bytes read before the end.
        at: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// Reading the source failed.
    #[error("reading the source: {0}")]
    Source(String),
    /// The chosen path cannot serve this source or these consumers.
    #[error("{0}")]
    Unsupported(String),
    /// A pipe operation failed.
    #[error("{0}")]
    Pipe(String),
    /// Every destination failed; there is nobody left to send to.
    #[error("every destination failed")]
    AllFailed,
    /// A required consumer (capture or digest) failed.
    #[error("{0}")]
    Required(String),
}

/// Settings of one fan-out.
#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// A concrete data path (not `Auto`).
    pub strategy: Strategy,
    /// The digest to compute over the stable bytes.
    pub digest: DigestAlgorithm,
    /// Bytes per chunk on the pipe paths (kept below the pipe sizes).
    pub pipe_chunk: usize,
    /// Size of each consumer's out pipe.
    pub pipe_size: usize,
    /// Bytes per buffer on the buffer paths.
    pub buffer_chunk: usize,
    /// Buffers in the pool on the buffer paths.
    pub buffers: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            strategy: Strategy::ReadWrite,
            digest: DigestAlgorithm::Blake3,
            pipe_chunk: 256 * 1024,
            pipe_size: 1024 * 1024,
            buffer_chunk: 1024 * 1024,
            buffers: 8,
        }
    }
}

/// What a fan-out did.
#[derive(Debug)]
pub struct FanoutReport {
    /// The digest of the stable bytes, or why the transfer failed as a whole.
    pub result: Result<Digest, EngineError>,
    /// Bytes taken from the source.
    pub bytes: u64,
    /// Each sink's outcome, in the order given.
    pub sinks: Vec<Result<(), SinkError>>,
    /// The source file was longer at the end than announced (only the announced bytes went out).
    pub source_grew: bool,
}

/// Sends `source` to every sink over the path in `config`, and returns what happened.
pub fn fan_out(
    source: &Source,
    sinks: Vec<Box<dyn Sink + '_>>,
    config: &FanoutConfig,
) -> FanoutReport {
    sys::ignore_sigpipe();
    let strategy = config.strategy.resolve();
    if let Err(e) = check_supported(source, strategy, &sinks) {
        let n = sinks.len();
        return FanoutReport {
            result: Err(e.clone()),
            bytes: 0,
            sinks: vec![Err(SinkError(e.to_string())); n],
            source_grew: false,
        };
    }
    // Paths that read into a buffer they own hash it there; the others hash a copy of the stable
    // stream on a branch of its own (never the source: KERNEL.md §3).
    let filler_hashes = matches!(
        strategy,
        Strategy::ReadPipe | Strategy::Vmsplice | Strategy::MmapWrite
    );
    let digest_slot = Arc::new(Mutex::new(None));
    let mut all: Vec<Box<dyn Sink + '_>> = sinks;
    let hash_index = (!filler_hashes && config.digest != DigestAlgorithm::None).then(|| {
        all.push(Box::new(HashSink {
            hasher: Some(config.digest.hasher()),
            slot: digest_slot.clone(),
            buf: Vec::new(),
        }));
        all.len() - 1
    });
    let mut filler_hasher = filler_hashes.then(|| config.digest.hasher());
    let required: Vec<bool> = all.iter().map(|s| s.is_required()).collect();

    thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut links = Vec::new();
        let mut setup_error = None;
        for sink in all {
            let required = sink.is_required();
            let (tx, rx, pipes) = if strategy.uses_pipes() {
                let (tx, rx) = mpsc::channel();
                match branch_pipes(config) {
                    Ok(p) => (Link::Unbounded(tx), rx, Some(p)),
                    Err(e) => {
                        setup_error
                            .get_or_insert(EngineError::Pipe(format!("creating pipes: {e}")));
                        (Link::Unbounded(tx), rx, None)
                    }
                }
            } else {
                let (tx, rx) = mpsc::sync_channel(config.buffers.max(1));
                (Link::Bounded(tx), rx, None)
            };
            let (stage, out_w, out_r) = match pipes {
                Some((stage, out)) => (Some(stage), Some(out.write), Some(out.read)),
                None => (None, None, None),
            };
            handles.push(scope.spawn(move || consume(sink, rx, out_r)));
            links.push(Branch {
                tx: Some(tx),
                stage,
                out_w,
                pending: 0,
                required,
            });
        }
        let pumped = match setup_error {
            Some(e) => Err(e),
            None => match strategy {
                Strategy::ReadWrite => pump_buffers(source, &mut links, config),
                Strategy::MmapWrite => pump_map(source, &mut links, config, filler_hasher.as_mut()),
                _ => pump_pipes(source, strategy, &mut links, config, filler_hasher.as_mut()),
            },
        };
        let pumped =
            pumped.and_then(|bytes| check_final_size(source, bytes).map(|grew| (bytes, grew)));
        let (bytes, source_grew, result) = match pumped {
            Ok((bytes, grew)) => {
                let digest = match (filler_hasher, hash_index) {
                    (Some(h), _) => Ok(h.finish()),
                    (None, Some(i)) => {
                        links[i].end(bytes, &Digest::none());
                        match handles.remove(i).join() {
                            Ok(Ok(())) => digest_slot
                                .lock()
                                .ok()
                                .and_then(|mut d| d.take())
                                .ok_or_else(|| {
                                    EngineError::Required("digest branch gave no digest".into())
                                }),
                            Ok(Err(e)) => Err(EngineError::Required(format!("digest: {e}"))),
                            Err(_) => Err(EngineError::Required("digest thread panicked".into())),
                        }
                    }
                    (None, None) => Ok(Digest::none()),
                };
                if let Some(i) = hash_index {
                    links.remove(i);
                }
                match &digest {
                    Ok(d) => links.iter_mut().for_each(|l| l.end(bytes, d)),
                    Err(e) => links.iter_mut().for_each(|l| l.abort(&e.to_string())),
                }
                (bytes, grew, digest)
            }
            Err(e) => {
                links.iter_mut().for_each(|l| l.abort(&e.to_string()));
                (0, false, Err(e))
            }
        };
        drop(links);
        let sinks: Vec<Result<(), SinkError>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(SinkError("consumer thread panicked".into())))
            })
            .collect();
        // Name the required consumer that failed, rather than the generic error of the filler.
        let result = result.map_err(|e| match e {
            EngineError::Required(generic) => EngineError::Required(
                sinks
                    .iter()
                    .zip(&required)
                    .find_map(|(r, req)| r.as_ref().err().filter(|_| *req).map(|e| e.0.clone()))
                    .unwrap_or(generic),
            ),
            other => other,
        });
        FanoutReport {
            result,
            bytes,
            sinks,
            source_grew,
        }
    })
}

fn check_supported(
    source: &Source,
    strategy: Strategy,
    sinks: &[Box<dyn Sink + '_>],
) -> Result<(), EngineError> {
    if strategy.needs_regular_file() && source.len().is_none() {
        return Err(EngineError::Unsupported(format!(
            "--strategy {strategy} needs a regular file as the source, not a stream; use read-pipe or readwrite"
        )));
    }
    if strategy == Strategy::MmapWrite && sinks.len() != 1 {
        return Err(EngineError::Unsupported(
            "--strategy mmap-write copies separately for each consumer, so two consumers could see different bytes; it serves exactly one destination and no capture (use mmap-pipe or read-pipe)".into(),
        ));
    }
    if sinks.is_empty() {
        return Err(EngineError::Unsupported("no destination given".into()));
    }
    Ok(())
}

/// After the last byte: a file shorter than announced was truncated during the send (its tail
/// may have gone out as zeros, KERNEL.md §3), so the transfer fails; a longer one only grew.
fn check_final_size(source: &Source, bytes: u64) -> Result<bool, EngineError> {
    let Some(expected) = source.len() else {
        return Ok(false);
    };
    let now = source
        .current_size()
        .map_err(|e| EngineError::Source(e.to_string()))?;
    if now < expected {
        return Err(EngineError::Truncated { at: now, expected });
    }
    debug_assert_eq!(bytes, expected);
    Ok(now > expected)
}

/// One piece of the stream, as a consumer receives it. On the pipe paths the data itself comes
/// through the consumer's pipe, and only `End` or `Abort` through the channel.
enum Piece {
    /// The next bytes are this shared buffer.
    Buffer(Arc<Chunk>),
    /// The next bytes are this range of the file mapping.
    Map(Arc<FileMap>, usize, usize),
    /// The stream ended: `length` bytes with this digest.
    End(u64, Arc<Digest>),
    /// The stream was abandoned.
    Abort(String),
}

enum Link {
    Unbounded(Sender<Piece>),
    Bounded(SyncSender<Piece>),
}

/// The filler's side of one consumer.
struct Branch {
    tx: Option<Link>,
    stage: Option<Pipe>,
    out_w: Option<OwnedFd>,
    /// Bytes in `stage` not yet moved to the out pipe.
    pending: usize,
    required: bool,
}

impl Branch {
    fn alive(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends a piece; false (and the branch is dropped) when the consumer has gone.
    fn send(&mut self, piece: Piece) -> bool {
        let ok = match &self.tx {
            Some(Link::Unbounded(tx)) => tx.send(piece).is_ok(),
            Some(Link::Bounded(tx)) => tx.send(piece).is_ok(),
            None => false,
        };
        if !ok {
            self.drop_consumer();
        }
        ok
    }

    fn drop_consumer(&mut self) {
        self.tx = None;
        self.stage = None;
        self.out_w = None;
        self.pending = 0;
    }

    /// Closes the out pipe (the consumer reads to its end) and says how the stream ended.
    fn end(&mut self, length: u64, digest: &Digest) {
        self.out_w = None;
        self.send(Piece::End(length, Arc::new(digest.clone())));
    }

    fn abort(&mut self, reason: &str) {
        self.out_w = None;
        self.send(Piece::Abort(reason.to_string()));
    }

    /// Marks the branch failed; an error if the transfer cannot go on without it.
    fn fail(&mut self) -> Result<(), EngineError> {
        self.drop_consumer();
        if self.required {
            return Err(EngineError::Required(
                "the capture or digest consumer failed".into(),
            ));
        }
        Ok(())
    }
}

fn branch_pipes(config: &FanoutConfig) -> io::Result<(Pipe, Pipe)> {
    Ok((
        Pipe::with_size(config.pipe_chunk)?,
        Pipe::with_size(config.pipe_size)?,
    ))
}

fn consume(
    mut sink: Box<dyn Sink + '_>,
    rx: Receiver<Piece>,
    pipe: Option<OwnedFd>,
) -> Result<(), SinkError> {
    let result = (|| {
        sink.start()?;
        // Pipe paths: the data, then End or Abort. A consumer that keeps up sleeps only on its
        // socket or its pipe, never once per chunk on the channel.
        let piped = match &pipe {
            Some(p) => Some(sink.take_pipe(p.as_fd())?),
            None => None,
        };
        loop {
            match rx.recv() {
                Ok(Piece::End(length, _)) if piped.is_some_and(|got| got != length) => {
                    return Err(SinkError(format!(
                        "took {} bytes from the pipe, the stream had {length}",
                        piped.unwrap_or(0)
                    )));
                }
                Ok(Piece::Buffer(chunk)) => sink.take_from_buffer(chunk.bytes())?,
                Ok(Piece::Map(map, offset, len)) => sink.take_from_map(&map, offset, len)?,
                Ok(Piece::End(length, digest)) => return sink.finish(length, &digest),
                Ok(Piece::Abort(reason)) => {
                    return Err(SinkError(format!("transfer abandoned: {reason}")));
                }
                Err(_) => return Err(SinkError("transfer abandoned".into())),
            }
        }
    })();
    if let Err(e) = &result {
        sink.abort(&e.0);
    }
    result
}

/// Reads up to `buf.len()` bytes of the source at `offset` (files) or next (streams); fewer only
/// at the end of the source.
fn read_source(source: &Source, buf: &mut [u8], offset: u64) -> Result<usize, EngineError> {
    let mut done = 0;
    while done < buf.len() {
        let n = if source.len().is_some() {
            sys::pread(source.fd(), &mut buf[done..], offset + done as u64)
        } else {
            sys::read(source.fd(), &mut buf[done..])
        }
        .map_err(|e| EngineError::Source(e.to_string()))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

fn next_want(total: Option<u64>, sent: u64, chunk: usize) -> usize {
    match total {
        Some(t) => usize::try_from((t - sent).min(chunk as u64)).unwrap_or(chunk),
        None => chunk,
    }
}

/// A short read of a file of known length means it was truncated under us.
fn check_short(total: Option<u64>, sent: u64, want: usize, got: usize) -> Result<(), EngineError> {
    match total {
        Some(expected) if got < want => Err(EngineError::Truncated {
            at: sent + got as u64,
            expected,
        }),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Buffer paths: readwrite and mmap-write.

/// A bounded pool of equally sized buffers; [`Chunk`]s return theirs when the last consumer
/// drops them, so memory never exceeds `count × size`.
struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
}

impl BufferPool {
    fn new(count: usize, size: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new((0..count.max(1)).map(|_| vec![0u8; size]).collect()),
            returned: Condvar::new(),
        })
    }

    fn take(&self) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(buf) = free.pop() {
                return buf;
            }
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One filled buffer, shared read-only by every consumer.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        free.push(buf);
        self.pool.returned.notify_one();
    }
}

fn pump_buffers(
    source: &Source,
    branches: &mut [Branch],
    config: &FanoutConfig,
) -> Result<u64, EngineError> {
    let total = source.len();
    let chunk_size = config.buffer_chunk.max(4096);
    let pool = BufferPool::new(config.buffers, chunk_size);
    let mut sent = 0u64;
    loop {
        let want = next_want(total, sent, chunk_size);
        if want == 0 {
            break;
        }
        let mut buf = pool.take();
        let got = read_source(source, &mut buf[..want], sent)?;
        check_short(total, sent, want, got)?;
        if got == 0 {
            break;
        }
        let chunk = Arc::new(Chunk {
            buf,
            len: got,
            pool: pool.clone(),
        });
        send_to_all(branches, || Piece::Buffer(chunk.clone()))?;
        sent += got as u64;
    }
    Ok(sent)
}

/// mmap-write: each chunk is a range of the mapping, copied by the kernel straight into the
/// socket. The digest comes from a separate read of the file, so a concurrent writer makes the
/// receiver's check fail loudly: this path is stable per socket only.
fn pump_map(
    source: &Source,
    branches: &mut [Branch],
    config: &FanoutConfig,
    mut hasher: Option<&mut Hasher>,
) -> Result<u64, EngineError> {
    let Some(total) = source.len().filter(|&l| l > 0) else {
        return Ok(0);
    };
    let len = usize::try_from(total)
        .map_err(|_| EngineError::Unsupported("file too large to map".into()))?;
    let map = Arc::new(
        FileMap::new(source.fd(), len).map_err(|e| EngineError::Source(format!("mmap: {e}")))?,
    );
    let chunk_size = config.buffer_chunk.max(4096);
    let mut buf = vec![0u8; chunk_size];
    let mut sent = 0usize;
    while sent < len {
        let want = (len - sent).min(chunk_size);
        if let Some(h) = hasher.as_deref_mut() {
            let got = read_source(source, &mut buf[..want], sent as u64)?;
            check_short(Some(total), sent as u64, want, got)?;
            h.update(&buf[..got]);
        }
        // Clamp to a fresh size: past EOF the kernel sends zeros or EFAULT (KERNEL.md §3).
        let size = source
            .current_size()
            .map_err(|e| EngineError::Source(e.to_string()))?;
        if size < (sent + want) as u64 {
            return Err(EngineError::Truncated {
                at: size,
                expected: total,
            });
        }
        send_to_all(branches, || Piece::Map(map.clone(), sent, want))?;
        sent += want;
    }
    Ok(total)
}

/// Hands a piece to every live consumer; fails when a required one or every destination is gone.
fn send_to_all(branches: &mut [Branch], piece: impl Fn() -> Piece) -> Result<(), EngineError> {
    for b in branches.iter_mut().filter(|b| b.alive()) {
        if !b.send(piece()) {
            b.fail()?;
        }
    }
    if !branches.iter().any(|b| b.alive() && !b.required) {
        return Err(EngineError::AllFailed);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pipe paths: vmsplice, mmap-pipe, read-pipe, zerocopy, direct.

/// How stable bytes get into the source pipe.
enum PipeFiller {
    /// `read()` into a reused buffer, `write()` it into the pipe.
    Read(Vec<u8>),
    /// `read()` into fresh pages, `vmsplice` them.
    Vmsplice,
    /// `write()` into the pipe from a mapping of the file.
    Map(FileMap),
    /// `splice` from a descriptor (the file itself, or an `O_DIRECT` one) into the pipe; the
    /// buffer serves an unaligned `O_DIRECT` tail.
    Splice(OwnedFd, Vec<u8>),
}

impl PipeFiller {
    fn new(source: &Source, strategy: Strategy, chunk: usize) -> Result<PipeFiller, EngineError> {
        let total = source.len();
        Ok(match strategy {
            Strategy::ReadPipe => PipeFiller::Read(vec![0u8; chunk]),
            Strategy::Vmsplice => PipeFiller::Vmsplice,
            Strategy::MmapPipe => match total {
                Some(len) if len > 0 => PipeFiller::Map(
                    FileMap::new(
                        source.fd(),
                        usize::try_from(len).map_err(|_| {
                            EngineError::Unsupported("file too large to map".into())
                        })?,
                    )
                    .map_err(|e| EngineError::Source(format!("mmap: {e}")))?,
                ),
                _ => PipeFiller::Read(vec![0u8; chunk]),
            },
            Strategy::ZeroCopy => PipeFiller::Splice(
                source
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|e| EngineError::Source(e.to_string()))?,
                Vec::new(),
            ),
            Strategy::Direct => PipeFiller::Splice(open_direct(source)?, Vec::new()),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "{other} is not a pipe path"
                )));
            }
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
        let pipe_err = |e: io::Error| EngineError::Pipe(format!("filling the pipe: {e}"));
        match self {
            PipeFiller::Read(buf) => {
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
                    let size = source
                        .current_size()
                        .map_err(|e| EngineError::Source(e.to_string()))?;
                    if size < offset + want as u64 {
                        return Ok(done);
                    }
                    let at = usize::try_from(offset).unwrap_or(usize::MAX) + done;
                    match map.write_to(pipe, at, want - done) {
                        Ok(0) => return Ok(done),
                        Ok(n) => {
                            // The pipe has its own copy: keep the resident set bounded.
                            let _ = map.release(at, n);
                            done += n;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => return Ok(done),
                        Err(e) => return Err(pipe_err(e)),
                    }
                }
                Ok(done)
            }
            PipeFiller::Splice(fd, tail) => {
                let direct =
                    !tail.is_empty() || source.len().is_some_and(|_| is_direct(fd.as_fd()));
                if source.len().is_none() {
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
                        let got = sys::pread(source.fd(), &mut tail[..left], at)
                            .map_err(|e| EngineError::Source(e.to_string()))?;
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
                        Err(e) => return Err(EngineError::Source(e.to_string())),
                    }
                }
                debug_assert!(hasher.is_none(), "splice paths hash on a branch");
                Ok(done)
            }
        }
    }
}

fn is_direct(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::DIRECT))
}

/// Opens the source again with `O_DIRECT`, so splice reads into private pages (KERNEL.md §1.1).
fn open_direct(source: &Source) -> Result<OwnedFd, EngineError> {
    let path = source.path().ok_or_else(|| {
        EngineError::Unsupported("--strategy direct needs a regular file, not a stream".into())
    })?;
    rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| {
        EngineError::Unsupported(format!(
            "{}: this filesystem refuses O_DIRECT ({e}); use --strategy read-pipe",
            path.display()
        ))
    })
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = sys::write(fd, buf)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

fn pump_pipes(
    source: &Source,
    strategy: Strategy,
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
    let src = Pipe::with_size(stage_cap)
        .map_err(|e| EngineError::Pipe(format!("creating a pipe: {e}")))?;
    if src.capacity() > stage_cap {
        return Err(EngineError::Pipe(format!(
            "the kernel granted a {} byte source pipe for {} byte stages; cannot tee safely",
            src.capacity(),
            stage_cap
        )));
    }
    let chunk = config.pipe_chunk.min(src.capacity());
    let sink = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|e| EngineError::Pipe(format!("/dev/null: {e}")))?;
    let mut filler = PipeFiller::new(source, strategy, chunk)?;
    let total = source.len();
    let mut sent = 0u64;
    loop {
        let want = next_want(total, sent, chunk);
        if want == 0 {
            break;
        }
        let got = filler.fill(source, src.write.as_fd(), sent, want, hasher.as_deref_mut())?;
        check_short(total, sent, want, got)?;
        if got == 0 {
            break;
        }
        drain_stages(branches)?;
        for b in branches.iter_mut().filter(|b| b.alive()) {
            let stage = b.stage.as_ref().map(|s| s.write.as_fd());
            let teed = stage
                .map(|s| sys::tee(src.read.as_fd(), s, got))
                .transpose()
                .map_err(|e| EngineError::Pipe(format!("tee: {e}")))?;
            if teed != Some(got) {
                return Err(EngineError::Pipe(format!(
                    "tee into an empty stage pipe took {teed:?} of {got} bytes"
                )));
            }
            b.pending = got;
        }
        if !branches.iter().any(|b| b.alive() && !b.required) {
            return Err(EngineError::AllFailed);
        }
        // Every branch has its copy: drop the source's references.
        let mut left = got;
        while left > 0 {
            let n = sys::splice(src.read.as_fd(), sink.as_fd(), left, SpliceFlags::empty())
                .map_err(|e| EngineError::Pipe(format!("draining the source pipe: {e}")))?;
            if n == 0 {
                return Err(EngineError::Pipe("source pipe ran dry".into()));
            }
            left -= n;
        }
        push_stages(branches)?;
        sent += got as u64;
    }
    drain_stages(branches)?;
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
fn drain_stages(branches: &mut [Branch]) -> Result<(), EngineError> {
    loop {
        let full = push_stages(branches)?;
        if full.is_empty() {
            return Ok(());
        }
        let fds: Vec<BorrowedFd<'_>> = full
            .iter()
            .filter_map(|&i| branches[i].out_w.as_ref().map(|f| f.as_fd()))
            .collect();
        sys::wait_any_writable(&fds).map_err(|e| EngineError::Pipe(format!("poll: {e}")))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Consumers the engine provides.

/// The digest branch: hashes a copy of the stable stream.
struct HashSink {
    hasher: Option<Hasher>,
    slot: Arc<Mutex<Option<Digest>>>,
    buf: Vec<u8>,
}

impl Sink for HashSink {
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError> {
        self.buf.resize(256 * 1024, 0);
        let mut total = 0;
        loop {
            let n = sys::read(pipe, &mut self.buf).map_err(|e| SinkError::io("digest", &e))?;
            if n == 0 {
                return Ok(total);
            }
            if let Some(h) = &mut self.hasher {
                h.update(&self.buf[..n]);
            }
            total += n as u64;
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        Ok(())
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<(), SinkError> {
        let digest = self.hasher.take().map(Hasher::finish);
        *self
            .slot
            .lock()
            .map_err(|_| SinkError("digest slot poisoned".into()))? = digest;
        Ok(())
    }

    fn abort(&mut self, _reason: &str) {}

    fn is_required(&self) -> bool {
        true
    }
}

/// The capture: exactly the bytes that were sent, in a file that appears only when complete.
pub struct CaptureSink {
    file: Option<crate::atomic_file::AtomicFile>,
}

impl CaptureSink {
    /// Prepares `path` (written under a temporary name until the stream completes).
    pub fn create(path: &std::path::Path) -> io::Result<CaptureSink> {
        Ok(CaptureSink {
            file: Some(crate::atomic_file::AtomicFile::create(path)?),
        })
    }

    fn file(&self) -> Result<&File, SinkError> {
        self.file
            .as_ref()
            .map(|f| f.file())
            .ok_or_else(|| SinkError("capture already closed".into()))
    }
}

impl Sink for CaptureSink {
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError> {
        let file = self.file()?;
        let mut total = 0;
        loop {
            // pipe → file is one copy in the kernel, into the page cache (KERNEL.md §4).
            let n = sys::splice(pipe, file.as_fd(), 1 << 30, SpliceFlags::MORE)
                .map_err(|e| SinkError::io("capture", &e))?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        use std::io::Write;
        let mut file = self.file()?;
        file.write_all(bytes)
            .map_err(|e| SinkError::io("capture", &e))
    }

    fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<(), SinkError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| SinkError("capture already closed".into()))?;
        file.commit()
            .map(|_| ())
            .map_err(|e| SinkError::io("capture", &e))
    }

    fn abort(&mut self, _reason: &str) {
        self.file = None;
    }

    fn is_required(&self) -> bool {
        true
    }
}
