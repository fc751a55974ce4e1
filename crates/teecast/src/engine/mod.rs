//! The engine: a *filler* turns the [`Source`] into stable bytes, a *fan-out* hands those bytes
//! to every *consumer* ([`Consumer`]): the caller's (destination sockets, say), the capture file
//! and the digest.
//!
//! Two fan-outs exist. On the pipe paths the filler puts one chunk into a source pipe; the chunk
//! is `tee`d into a private, empty *stage* pipe per consumer (tee into an empty pipe at least as
//! large as the source is never short, docs/KERNEL.md §1.2), the source is then emptied, and each
//! stage is spliced into the consumer's *out* pipe as room appears, so consumers run a chunk or
//! more apart without ever sharing a pipe's reading end. On the buffer paths one buffer from a
//! bounded pool is shared, read-only, by every consumer. Each consumer runs on its own thread.
//! The slowest consumer sets the pace; a consumer that fails is dropped and the others go on,
//! the capture too (it reports its failure, the destinations still get the stream); only the
//! digest is required: its failure ends the transfer.
//!
//! The engine knows nothing of the wire protocol: framing belongs to the consumers.

mod buffers;
mod consumers;
mod map;
mod pipes;
mod seal;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{self, ScopedJoinHandle};
use std::time::Duration;

use crate::digest::{Digest, DigestAlgorithm, Hasher};
use crate::source::Source;
use crate::strategy::Strategy;
use teecast_sys::{self as sys, Pipe};

use buffers::{Chunk, pump_buffers, pump_filled, pump_map};
pub(crate) use consumers::splice_to_file;
pub use consumers::{Capture, CaptureError};
use consumers::{DigestError, Digester};
pub use map::SourceMap;
use pipes::{SourceFiller, pump_pipes};
pub use seal::fan_out_sealed;

/// Why the engine stopped feeding a consumer before the stream ended. Every consumer's error
/// type converts from it, so a consumer reports the engine's reasons in its own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Abandoned {
    /// The transfer as a whole failed (the source, a pipe, a required consumer, every
    /// destination); the fan-out's result says why.
    #[error("the transfer was abandoned")]
    Transfer,
    /// The transfer could not start (an unusable data path or options); nothing was sent.
    #[error("the transfer did not start")]
    NotStarted,
    /// The consumer took a different number of bytes from its pipe than the stream had.
    #[error("took {took} bytes from the pipe, the stream had {length}")]
    Miscounted {
        /// Bytes the consumer took.
        took: u64,
        /// Bytes in the stream.
        length: u64,
    },
    /// The path hands out ranges of a file mapping and this consumer cannot take them.
    #[error("this consumer cannot take data from a file mapping")]
    NoMapping,
    /// The consumer's thread panicked.
    #[error("the consumer's thread panicked")]
    Panicked,
    /// Reading the consumer's own pipe failed (the default [`Consumer::take_pipe`]).
    #[error("reading this consumer's pipe failed: {0}")]
    PipeRead(std::io::ErrorKind),
}

/// What the default [`Consumer::take_pipe`] reads from the pipe at once.
const PIPE_READ: usize = 256 * 1024;

/// A consumer of the stable stream. Each runs on a thread of its own and receives the stream in
/// order, in one of three forms depending on the data path: its own pipe ([`take_pipe`]),
/// shared read-only buffers ([`take_from_buffer`]) or ranges of a file mapping
/// ([`take_from_map`], `mmap-write` only).
///
/// [`take_pipe`]: Consumer::take_pipe
/// [`take_from_buffer`]: Consumer::take_from_buffer
/// [`take_from_map`]: Consumer::take_from_map
pub trait Consumer: Send {
    /// What the consumer reports when it has the whole stream (a receiver's confirmation, say).
    type Outcome: Send;
    /// Why it failed; the engine's own reasons ([`Abandoned`]) convert into it.
    type Error: From<Abandoned> + Send;

    /// Called once before any data (connect, write a header).
    fn start(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Takes everything that arrives in `pipe` (this consumer's own) until its end of file,
    /// which comes when the filler has put the whole stream in (or given up). Returns the count.
    ///
    /// The default reads the pipe into a buffer and hands each piece to
    /// [`take_from_buffer`](Consumer::take_from_buffer): one copy, for a consumer that only wants
    /// bytes. A consumer that moves the pipe's pages on (`splice` into a socket or a file)
    /// overrides it.
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, Self::Error> {
        let mut buf = vec![0u8; PIPE_READ];
        let mut took = 0u64;
        loop {
            match sys::read(pipe, &mut buf) {
                Ok(0) => return Ok(took),
                Ok(n) => {
                    self.take_from_buffer(&buf[..n])?;
                    took += n as u64;
                }
                Err(e) => return Err(Abandoned::PipeRead(e.kind()).into()),
            }
        }
    }
    /// Takes bytes from a shared, immutable buffer.
    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Takes `len` bytes of a file mapping from `offset` (the `mmap-write` path).
    fn take_from_map(
        &mut self,
        map: &SourceMap,
        offset: usize,
        len: usize,
    ) -> Result<(), Self::Error> {
        let _ = (map, offset, len);
        Err(Abandoned::NoMapping.into())
    }
    /// The stream ended after `length` bytes with `digest`.
    fn finish(&mut self, length: u64, digest: &Digest) -> Result<Self::Outcome, Self::Error>;
    /// The stream was abandoned or this consumer failed; clean up (remove temporary files,
    /// close connections).
    fn abort(&mut self);
    /// How long this consumer may wait for its next buffer before [`Consumer::idle`] is called
    /// (the buffer paths; on the pipe paths a consumer waits in `take_pipe` itself). `None`
    /// (the default): it waits as long as the source takes.
    fn idle_interval(&self) -> Option<Duration> {
        None
    }
    /// Called when the source has had nothing for [`Consumer::idle_interval`] (a paused
    /// producer): a destination tells its receiver it is still there.
    fn idle(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl<C: Consumer + ?Sized> Consumer for Box<C> {
    type Outcome = C::Outcome;
    type Error = C::Error;

    fn start(&mut self) -> Result<(), Self::Error> {
        (**self).start()
    }
    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, Self::Error> {
        (**self).take_pipe(pipe)
    }
    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        (**self).take_from_buffer(bytes)
    }
    fn take_from_map(
        &mut self,
        map: &SourceMap,
        offset: usize,
        len: usize,
    ) -> Result<(), Self::Error> {
        (**self).take_from_map(map, offset, len)
    }
    fn finish(&mut self, length: u64, digest: &Digest) -> Result<Self::Outcome, Self::Error> {
        (**self).finish(length, digest)
    }
    fn abort(&mut self) {
        (**self).abort()
    }
    fn idle_interval(&self) -> Option<Duration> {
        (**self).idle_interval()
    }
    fn idle(&mut self) -> Result<(), Self::Error> {
        (**self).idle()
    }
}

/// A filler of the pipe paths: puts the next stable bytes of a stream into the engine's source
/// pipe. The engine's own fillers read a [`Source`] (`read-pipe`, `vmsplice`, `mmap-pipe`,
/// `zerocopy`, `direct`); [`fan_out_filled`] runs the pipe fan-out over any other, such as a
/// socket spliced into the pipe (received pages are private, so they are stable).
///
/// Stability is the filler's promise: once `fill` returns, the bytes it put into the pipe never
/// change, whatever happens to where they came from (docs/KERNEL.md §3) — a copy (`read` then
/// `write`), fresh pages never written again (`vmsplice`), or private pages (an `O_DIRECT`
/// splice, a socket's received data). A filler that splices page-cache pages breaks it.
pub trait Filler: Send {
    /// Puts up to `want` bytes of the stream, those from `offset` on, into `pipe` and returns
    /// how many: 0 only at the end of the stream, fewer than `want` whenever that is all there is
    /// for now (a socket, a pipe). When [`Filler::hashes`], feeds the same bytes to `hasher`.
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        offset: u64,
        want: usize,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError>;

    /// True when `fill` hashes what it puts in (it holds the bytes in a buffer of its own);
    /// false when the engine must hash a `tee` of the pipe on a consumer of its own.
    fn hashes(&self) -> bool;
}

/// Fills one pooled buffer of the `readwrite` path with the next bytes of a stream the engine
/// does not read itself (the sealing path's records), and hashes what the digest covers.
pub(crate) trait BufferFiller: Send {
    /// Puts the next bytes into the front of `buf` and returns how many: 0 only at the end.
    fn fill_buffer(
        &mut self,
        buf: &mut [u8],
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError>;
}

/// Why a fan-out failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    #[error("reading the source: {op}: {source}")]
    Source {
        /// The call that failed.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The chosen path cannot serve this source, these consumers or these options.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// A pipe operation failed.
    #[error("{op}: {source}")]
    Pipe {
        /// The call that failed.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The kernel broke an assumption of the pipe paths (a short tee into an empty pipe, a
    /// source pipe larger than its stages).
    #[error("the kernel broke a pipe-path assumption: {0}")]
    PipeInvariant(&'static str),
    /// Every destination failed; there is nobody left to send to.
    #[error("every destination failed")]
    AllFailed,
    /// The capture could not be created (the report's capture outcome says how); nothing was
    /// sent. A capture that fails later is reported in the capture outcome alone.
    #[error("the capture could not be created")]
    Capture,
    /// The digest consumer failed.
    #[error("the digest failed: {0}")]
    Digest(#[source] DigestError),
}

impl EngineError {
    /// A short, stable name for machines: `truncated`, `source`, `unsupported`, `pipe`,
    /// `pipe-invariant`, `all-failed`, `capture` or `digest`.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Truncated { .. } => "truncated",
            EngineError::Source { .. } => "source",
            EngineError::Unsupported(_) => "unsupported",
            EngineError::Pipe { .. } => "pipe",
            EngineError::PipeInvariant(_) => "pipe-invariant",
            EngineError::AllFailed => "all-failed",
            EngineError::Capture => "capture",
            EngineError::Digest(_) => "digest",
        }
    }
}

/// A data path or option the engine refuses, before anything is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// The path maps or seeks the source, which is a stream.
    #[error("the {0} path needs a regular file as the source, not a stream")]
    NeedsRegularFile(Strategy),
    /// `mmap-write` copies separately for each consumer, so two could see different bytes.
    #[error(
        "the mmap-write path copies separately for each consumer, so two consumers could see different bytes; it serves exactly one destination and no capture"
    )]
    MmapWriteNeedsOneConsumer,
    /// No consumer was given.
    #[error("no destination given")]
    NoConsumers,
    /// The filesystem refuses `O_DIRECT` for the source.
    #[error("{path}: this filesystem refuses O_DIRECT ({source})")]
    NoDirect {
        /// The source.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The file is larger than this machine can map.
    #[error("the file is too large to map")]
    TooLargeToMap,
    /// A size in the options is zero or out of range.
    #[error("{name} must be between {min} and {max} bytes, not {value}")]
    Size {
        /// The option.
        name: &'static str,
        /// The value given.
        value: usize,
        /// The smallest allowed.
        min: usize,
        /// The largest allowed.
        max: usize,
    },
}

/// Settings of one fan-out. Built with [`FanoutConfig::default`] and the setters; sizes are
/// checked by [`FanoutConfig::validate`] (and by [`fan_out`] before anything is sent).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FanoutConfig {
    /// The data path; `Auto` is resolved once, by [`Strategy::for_transfer`].
    pub strategy: Strategy,
    /// The digest to compute over the stable bytes.
    pub digest: DigestAlgorithm,
    /// Also write exactly the bytes sent to this file (it appears only when complete).
    pub capture: Option<PathBuf>,
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
            strategy: Strategy::Auto,
            digest: DigestAlgorithm::default(),
            capture: None,
            pipe_chunk: 256 * 1024,
            pipe_size: 1024 * 1024,
            buffer_chunk: 1024 * 1024,
            buffers: 8,
        }
    }
}

/// Bounds of the sizes in [`FanoutConfig`]: a page at least, and at most what a pipe or an
/// allocation sensibly holds.
const SIZE_LIMITS: (usize, usize) = (4096, 256 << 20);

impl FanoutConfig {
    /// Sets the data path.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the digest.
    pub fn digest(mut self, digest: DigestAlgorithm) -> Self {
        self.digest = digest;
        self
    }

    /// Also writes the stream to `path`.
    pub fn capture(mut self, path: impl Into<PathBuf>) -> Self {
        self.capture = Some(path.into());
        self
    }

    /// Checks every size: chunks, pipes and buffers of at least a page (4096 bytes) and at
    /// most 256 MiB, and at least one buffer.
    pub fn validate(&self) -> Result<(), Unsupported> {
        let (min, max) = SIZE_LIMITS;
        for (name, value) in [
            ("the pipe chunk", self.pipe_chunk),
            ("the pipe size", self.pipe_size),
            ("the buffer size", self.buffer_chunk),
        ] {
            if !(min..=max).contains(&value) {
                return Err(Unsupported::Size {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        if !(1..=1024).contains(&self.buffers) {
            return Err(Unsupported::Size {
                name: "the buffer count",
                value: self.buffers,
                min: 1,
                max: 1024,
            });
        }
        Ok(())
    }
}

/// What a fan-out did.
#[derive(Debug)]
pub struct FanoutReport<O, E> {
    /// The concrete path that was used (`None` for a caller's [`Filler`]).
    pub strategy: Option<Strategy>,
    /// The digest of the stable bytes, or why the transfer failed as a whole.
    pub result: Result<Digest, EngineError>,
    /// Bytes taken from the source.
    pub bytes: u64,
    /// Each consumer's outcome, in the order given.
    pub consumers: Vec<Result<O, E>>,
    /// The capture's outcome, when one was asked for.
    pub capture: Option<Result<(), CaptureError>>,
    /// The source file was longer at the end than announced (only the announced bytes went out).
    pub source_grew: bool,
}

/// Sends `source` to every consumer over the path in `config`, and returns what happened.
///
/// ```
/// use teecast::engine::{Abandoned, Consumer, FanoutConfig, fan_out};
/// use teecast::digest::Digest;
/// use teecast::source::Source;
///
/// /// Counts the bytes it is given.
/// struct Count(u64);
///
/// impl Consumer for Count {
///     type Outcome = u64;
///     type Error = Abandoned;
///     fn take_pipe(&mut self, pipe: std::os::fd::BorrowedFd<'_>) -> Result<u64, Abandoned> {
///         let mut file = std::fs::File::from(pipe.try_clone_to_owned().unwrap());
///         let n = std::io::copy(&mut file, &mut std::io::sink()).unwrap();
///         self.0 += n;
///         Ok(n)
///     }
///     fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), Abandoned> {
///         self.0 += bytes.len() as u64;
///         Ok(())
///     }
///     fn finish(&mut self, _length: u64, _digest: &Digest) -> Result<u64, Abandoned> {
///         Ok(self.0)
///     }
///     fn abort(&mut self) {}
/// }
///
/// let mut file = tempfile::NamedTempFile::new().unwrap();
/// std::io::Write::write_all(&mut file, &[7u8; 100_000]).unwrap();
/// let source = Source::open(file.path()).unwrap();
/// let report = fan_out(&source, vec![Count(0), Count(0)], &FanoutConfig::default());
/// assert_eq!(report.bytes, 100_000);
/// assert!(report.result.is_ok());
/// assert!(report.consumers.iter().all(|c| matches!(c, Ok(100_000))));
/// ```
pub fn fan_out<C: Consumer>(
    source: &Source,
    consumers: Vec<C>,
    config: &FanoutConfig,
) -> FanoutReport<C::Outcome, C::Error> {
    let wanted = consumers.len() + usize::from(config.capture.is_some());
    let strategy = config.strategy.for_transfer(source, wanted);
    let plan = config
        .validate()
        .and_then(|()| check(source, strategy, wanted))
        .map_err(EngineError::from)
        .and_then(|()| {
            Ok(match strategy {
                Strategy::ReadWrite => Plan::Buffers,
                Strategy::MmapWrite => Plan::Map,
                _ => Plan::Pipes(Box::new(SourceFiller::new(source, strategy)?)),
            })
        });
    match plan {
        Ok(plan) => run(
            plan,
            Some(source),
            source.len(),
            Some(strategy),
            consumers,
            config,
        ),
        Err(e) => refuse(e, Some(strategy), consumers, config),
    }
}

/// The pipe fan-out over a caller's `filler`, for a stream of `length` bytes (`None`: until
/// the filler has no more). `config.strategy` is not used; its sizes, digest and capture are.
pub fn fan_out_filled<C: Consumer>(
    filler: impl Filler,
    length: Option<u64>,
    consumers: Vec<C>,
    config: &FanoutConfig,
) -> FanoutReport<C::Outcome, C::Error> {
    let wanted = consumers.len() + usize::from(config.capture.is_some());
    let checked = config.validate().and(match wanted {
        0 => Err(Unsupported::NoConsumers),
        _ => Ok(()),
    });
    match checked {
        Ok(()) => run(
            Plan::Pipes(Box::new(filler)),
            None,
            length,
            None,
            consumers,
            config,
        ),
        Err(e) => refuse(e.into(), None, consumers, config),
    }
}

/// How the stable bytes are made, chosen (and opened) before any consumer starts.
enum Plan<'a> {
    /// `readwrite`: pooled buffers shared by every consumer.
    Buffers,
    /// `readwrite` over this filler: pooled buffers it fills, shared by every consumer.
    FilledBuffers(Box<dyn BufferFiller + 'a>),
    /// `mmap-write`: ranges of a mapping of the file.
    Map,
    /// A pipe path: this filler, then tee into every consumer's pipe.
    Pipes(Box<dyn Filler + 'a>),
}

/// The report of a fan-out that did not start: every consumer and the capture `NotStarted`.
fn refuse<C: Consumer>(
    error: EngineError,
    strategy: Option<Strategy>,
    consumers: Vec<C>,
    config: &FanoutConfig,
) -> FanoutReport<C::Outcome, C::Error> {
    FanoutReport {
        strategy,
        result: Err(error),
        bytes: 0,
        consumers: consumers
            .into_iter()
            .map(|_| Err(Abandoned::NotStarted.into()))
            .collect(),
        capture: config
            .capture
            .as_ref()
            .map(|_| Err(CaptureError::Abandoned(Abandoned::NotStarted))),
        source_grew: false,
    }
}

/// Runs `plan`: starts every consumer (the caller's, the capture, the digest), pumps the
/// stream, ends or abandons it, and joins every outcome. `source` is the file behind the plan,
/// when there is one, for the buffer paths and the final size check.
fn run<C: Consumer>(
    mut plan: Plan<'_>,
    source: Option<&Source>,
    length: Option<u64>,
    strategy: Option<Strategy>,
    consumers: Vec<C>,
    config: &FanoutConfig,
) -> FanoutReport<C::Outcome, C::Error> {
    sys::ignore_sigpipe();
    let capture = match config.capture.as_deref().map(Capture::create).transpose() {
        Ok(c) => c,
        Err(e) => {
            let mut report = refuse(EngineError::Capture, strategy, consumers, config);
            report.capture = Some(Err(e));
            return report;
        }
    };
    // Fillers that read into a buffer they own hash it there; otherwise a consumer of the
    // engine's own hashes a copy of the stable stream (never the source: docs/KERNEL.md §3).
    let filler_hashes = match &plan {
        Plan::Buffers => false,
        Plan::FilledBuffers(_) | Plan::Map => true,
        Plan::Pipes(filler) => filler.hashes(),
    };
    let uses_pipes = matches!(plan, Plan::Pipes(_));
    let digest_consumer =
        (!filler_hashes && config.digest != DigestAlgorithm::None).then(|| Digester {
            hasher: Some(Hasher::new(config.digest)),
            buf: Vec::new(),
        });
    let mut filler_hasher = filler_hashes.then(|| Hasher::new(config.digest));

    thread::scope(|scope| {
        let mut branches = Vec::new();
        let mut setup = Ok(());
        let mut lanes = Lanes {
            scope,
            uses_pipes,
            config,
            branches: &mut branches,
            setup: &mut setup,
        };
        let handles: Vec<_> = consumers
            .into_iter()
            .map(|c| lanes.spawn(c, Role::Caller))
            .collect();
        let capture_handle = capture.map(|c| lanes.spawn(c, Role::Capture));
        let digest_handle = digest_consumer.map(|c| lanes.spawn(c, Role::Digest));
        let capture_at = handles.len();
        let digest_at = capture_at + usize::from(capture_handle.is_some());

        let pumped = setup.and_then(|()| match (&mut plan, source) {
            (Plan::Buffers, Some(source)) => pump_buffers(source, &mut branches, config),
            (Plan::FilledBuffers(filler), _) => pump_filled(
                filler.as_mut(),
                &mut branches,
                config,
                filler_hasher.as_mut(),
            ),
            (Plan::Map, Some(source)) => {
                pump_map(source, &mut branches, config, filler_hasher.as_mut())
            }
            (Plan::Pipes(filler), _) => pump_pipes(
                filler.as_mut(),
                length,
                &mut branches,
                config,
                filler_hasher.as_mut(),
            ),
            (Plan::Buffers | Plan::Map, None) => {
                unreachable!("only fan_out makes buffer plans, always with a source")
            }
        });
        let pumped = pumped
            .and_then(|bytes| check_final_size(source, length, bytes).map(|grew| (bytes, grew)));
        let mut digest_handle = digest_handle;
        let (bytes, source_grew, mut result) = match pumped {
            Ok((bytes, grew)) => {
                let digest = match (filler_hasher, digest_handle.take()) {
                    (Some(h), _) => Ok(h.finish()),
                    (None, Some(handle)) => {
                        branches[digest_at].end(bytes, &Digest::none());
                        join(handle).map_err(EngineError::Digest)
                    }
                    (None, None) => Ok(Digest::none()),
                };
                match &digest {
                    Ok(d) => branches.iter_mut().for_each(|b| b.end(bytes, d)),
                    Err(_) => branches.iter_mut().for_each(Branch::abort),
                }
                (bytes, grew, digest)
            }
            Err(e) => {
                branches.iter_mut().for_each(Branch::abort);
                (0, false, Err(e))
            }
        };
        drop(branches);
        let consumers: Vec<_> = handles.into_iter().map(join).collect();
        let capture = capture_handle.map(join);
        // The filler saw only that the digest consumer went (Branch::fail): say why.
        if let Some(Err(DigestError::Read(e))) = digest_handle.map(join)
            && matches!(result, Err(EngineError::Digest(_)))
        {
            result = Err(EngineError::Digest(DigestError::Read(e)));
        }
        FanoutReport {
            strategy,
            result,
            bytes,
            consumers,
            capture,
            source_grew,
        }
    })
}

/// Starts consumers on threads of `scope`, each with its branch.
struct Lanes<'scope, 'env, 'a> {
    scope: &'scope thread::Scope<'scope, 'env>,
    uses_pipes: bool,
    config: &'a FanoutConfig,
    branches: &'a mut Vec<Branch>,
    /// The first failure to set a branch up.
    setup: &'a mut Result<(), EngineError>,
}

impl<'scope> Lanes<'scope, '_, '_> {
    /// Starts `consumer` on a thread of its own, in `role`.
    fn spawn<C: Consumer + 'scope>(
        &mut self,
        consumer: C,
        role: Role,
    ) -> ScopedJoinHandle<'scope, Result<C::Outcome, C::Error>> {
        let (branch, rx, out) = Branch::new(self.uses_pipes, self.config, role, self.setup);
        self.branches.push(branch);
        self.scope.spawn(move || consume(consumer, rx, out))
    }
}

fn join<O, E: From<Abandoned>>(handle: ScopedJoinHandle<'_, Result<O, E>>) -> Result<O, E> {
    handle
        .join()
        .unwrap_or_else(|_| Err(Abandoned::Panicked.into()))
}

/// Checks that `strategy` can serve `source` and `consumers` consumers (the caller's and the
/// capture): the one validation of a data path, run by [`fan_out`] and before a send connects.
pub fn check(source: &Source, strategy: Strategy, consumers: usize) -> Result<(), Unsupported> {
    if strategy.needs_regular_file() && !source.is_seekable() {
        return Err(Unsupported::NeedsRegularFile(strategy));
    }
    if strategy == Strategy::MmapWrite && consumers != 1 {
        return Err(Unsupported::MmapWriteNeedsOneConsumer);
    }
    if consumers == 0 {
        return Err(Unsupported::NoConsumers);
    }
    Ok(())
}

/// After the last byte: a source that gave fewer bytes than announced was cut; a file shorter
/// now than announced was truncated during the send (its tail may have gone out as zeros,
/// docs/KERNEL.md §3), so the transfer fails; a longer one only grew.
fn check_final_size(
    source: Option<&Source>,
    length: Option<u64>,
    bytes: u64,
) -> Result<bool, EngineError> {
    let Some(expected) = length else {
        return Ok(false);
    };
    if bytes < expected {
        return Err(EngineError::Truncated {
            at: bytes,
            expected,
        });
    }
    let Some(source) = source.filter(|s| s.is_seekable()) else {
        return Ok(false);
    };
    let now = fresh_size(source)?;
    if now < expected {
        return Err(EngineError::Truncated { at: now, expected });
    }
    Ok(now > expected)
}

/// The source file's size now (to notice a truncation during the send).
fn fresh_size(source: &Source) -> Result<u64, EngineError> {
    source.current_size().map_err(|source| EngineError::Source {
        op: "fstat",
        source,
    })
}

/// One piece of the stream, as a consumer receives it. On the pipe paths the data itself comes
/// through the consumer's pipe, and only `End` or `Abort` through the channel.
enum Piece {
    /// The next bytes are this shared buffer.
    Buffer(Arc<Chunk>),
    /// The next bytes are this range of the file mapping.
    Map(Arc<SourceMap>, usize, usize),
    /// The stream ended: `length` bytes with this digest.
    End(u64, Arc<Digest>),
    /// The stream was abandoned.
    Abort,
}

/// The channel to one consumer: unbounded on the pipe paths (the pipe bounds the data),
/// bounded by the pool on the buffer paths.
enum Channel {
    Unbounded(Sender<Piece>),
    Bounded(SyncSender<Piece>),
}

/// The filler's side of one consumer.
struct Branch {
    tx: Option<Channel>,
    stage: Option<Pipe>,
    out_w: Option<OwnedFd>,
    /// Bytes in `stage` not yet moved to the out pipe.
    pending: usize,
    role: Role,
}

/// What a consumer is to the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The caller's (a destination): the transfer goes on while one of them is alive.
    Caller,
    /// The capture: its failure is reported, the destinations go on.
    Capture,
    /// The digest: required, its failure ends the transfer.
    Digest,
}

impl Branch {
    /// A branch for a consumer, with its channel's receiving end and, on the pipe paths, the
    /// reading end of its out pipe. A pipe that cannot be made is recorded in `setup`.
    fn new(
        uses_pipes: bool,
        config: &FanoutConfig,
        role: Role,
        setup: &mut Result<(), EngineError>,
    ) -> (Branch, Receiver<Piece>, Option<OwnedFd>) {
        let (tx, rx) = if uses_pipes {
            let (tx, rx) = mpsc::channel();
            (Channel::Unbounded(tx), rx)
        } else {
            let (tx, rx) = mpsc::sync_channel(config.buffers);
            (Channel::Bounded(tx), rx)
        };
        let mut branch = Branch {
            tx: Some(tx),
            stage: None,
            out_w: None,
            pending: 0,
            role,
        };
        let mut out_r = None;
        if uses_pipes {
            match branch_pipes(config) {
                Ok((stage, out)) => {
                    branch.stage = Some(stage);
                    branch.out_w = Some(out.write);
                    out_r = Some(out.read);
                }
                Err(source) => {
                    if setup.is_ok() {
                        *setup = Err(EngineError::Pipe {
                            op: "creating pipes",
                            source,
                        });
                    }
                }
            }
        }
        (branch, rx, out_r)
    }

    fn alive(&self) -> bool {
        self.tx.is_some()
    }

    /// Sends a piece; false (and the branch is dropped) when the consumer has gone.
    fn send(&mut self, piece: Piece) -> bool {
        let ok = match &self.tx {
            Some(Channel::Unbounded(tx)) => tx.send(piece).is_ok(),
            Some(Channel::Bounded(tx)) => tx.send(piece).is_ok(),
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

    fn abort(&mut self) {
        self.out_w = None;
        self.send(Piece::Abort);
    }

    /// Marks the branch failed; an error if the transfer cannot go on without it (the digest).
    fn fail(&mut self) -> Result<(), EngineError> {
        self.drop_consumer();
        match self.role {
            // The joined outcome says why; the transfer cannot give a digest without it.
            Role::Digest => Err(EngineError::Digest(DigestError::Abandoned(
                Abandoned::Transfer,
            ))),
            Role::Caller | Role::Capture => Ok(()),
        }
    }

    /// True for a live destination (a caller's consumer).
    fn serves_a_caller(&self) -> bool {
        self.alive() && self.role == Role::Caller
    }
}

fn branch_pipes(config: &FanoutConfig) -> io::Result<(Pipe, Pipe)> {
    Ok((
        Pipe::with_size(config.pipe_chunk)?,
        Pipe::with_size(config.pipe_size)?,
    ))
}

fn consume<C: Consumer>(
    mut consumer: C,
    rx: Receiver<Piece>,
    pipe: Option<OwnedFd>,
) -> Result<C::Outcome, C::Error> {
    let result = (|| {
        consumer.start()?;
        // Pipe paths: the data, then End or Abort. A consumer that keeps up sleeps only on its
        // socket or its pipe, never once per chunk on the channel.
        let piped = match &pipe {
            Some(p) => Some(consumer.take_pipe(p.as_fd())?),
            None => None,
        };
        let idle = consumer.idle_interval();
        loop {
            let piece = match idle {
                Some(interval) => match rx.recv_timeout(interval) {
                    Ok(piece) => Ok(piece),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        consumer.idle()?;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
                },
                None => rx.recv().map_err(|_| ()),
            };
            match piece {
                Ok(Piece::End(length, _)) if piped.is_some_and(|took| took != length) => {
                    return Err(Abandoned::Miscounted {
                        took: piped.unwrap_or(0),
                        length,
                    }
                    .into());
                }
                Ok(Piece::Buffer(chunk)) => consumer.take_from_buffer(chunk.bytes())?,
                Ok(Piece::Map(map, offset, len)) => consumer.take_from_map(&map, offset, len)?,
                Ok(Piece::End(length, digest)) => return consumer.finish(length, &digest),
                Ok(Piece::Abort) | Err(_) => return Err(Abandoned::Transfer.into()),
            }
        }
    })();
    if result.is_err() {
        consumer.abort();
    }
    result
}

/// Reads up to `buf.len()` bytes of the source at `offset` (files) or next (streams); fewer only
/// at the end of the source.
fn read_source(source: &Source, buf: &mut [u8], offset: u64) -> Result<usize, EngineError> {
    let mut done = 0;
    while done < buf.len() {
        let n = if source.is_seekable() {
            sys::pread(source.fd(), &mut buf[done..], offset + done as u64)
        } else {
            sys::read(source.fd(), &mut buf[done..])
        }
        .map_err(|source| EngineError::Source { op: "read", source })?;
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

/// A short read of a source of known length means it was cut (a file truncated under us).
fn check_short(total: Option<u64>, sent: u64, want: usize, got: usize) -> Result<(), EngineError> {
    match total {
        Some(expected) if got < want => Err(EngineError::Truncated {
            at: sent + got as u64,
            expected,
        }),
        _ => Ok(()),
    }
}
