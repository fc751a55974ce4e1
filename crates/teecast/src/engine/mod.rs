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

mod buffers;
mod pipes;
mod sinks;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::source::Source;
use crate::strategy::Strategy;
use teecast_sys::{self as sys, FileMap, Pipe};

use buffers::{Chunk, pump_buffers, pump_map};
use pipes::pump_pipes;
pub use sinks::CaptureSink;
use sinks::HashSink;

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
            digest: DigestAlgorithm::default(),
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
    let strategy = config.strategy.for_transfer(source, sinks.len());
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
            hasher: Some(Hasher::new(config.digest)),
            slot: digest_slot.clone(),
            buf: Vec::new(),
        }));
        all.len() - 1
    });
    let mut filler_hasher = filler_hashes.then(|| Hasher::new(config.digest));
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

/// Maps the whole source file; `None` for a stream or an empty file (nothing to map).
fn map_source(source: &Source) -> Result<Option<FileMap>, EngineError> {
    let Some(len) = source.len().filter(|&l| l > 0) else {
        return Ok(None);
    };
    let len = usize::try_from(len)
        .map_err(|_| EngineError::Unsupported("file too large to map".into()))?;
    let map =
        FileMap::new(source.fd(), len).map_err(|e| EngineError::Source(format!("mmap: {e}")))?;
    Ok(Some(map))
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
