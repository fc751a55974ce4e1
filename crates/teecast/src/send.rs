//! Sending: one source to many destinations, each framed with the wire protocol (or raw), each
//! confirmed by the receiver's acknowledgement.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pipe::SpliceFlags;

use crate::digest::{Digest, DigestAlgorithm, to_hex};
use crate::engine::{self, CaptureSink, EngineError, FanoutConfig, Sink, SinkError};
use crate::source::Source;
use crate::strategy::Strategy;
use crate::transport::{connect, read_exact_until, write_all_until};
use teecast_proto::wire::{self, Ack, AckStatus, Header, MessageKind, Trailer};
use teecast_sys::{self as sys, FileMap, Readiness};

/// How to send.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// The data path.
    pub strategy: Strategy,
    /// The digest announced and checked.
    pub digest: DigestAlgorithm,
    /// The name announced to receivers (default: the source's file name).
    pub name: Option<String>,
    /// Send bare bytes, no framing and no acknowledgement.
    pub raw: bool,
    /// Also write exactly the bytes sent to this file.
    pub capture: Option<PathBuf>,
    /// Drop a destination that accepts no data for this long (also bounds the wait for its
    /// acknowledgement).
    pub stall_timeout: Duration,
    /// Give up on a destination that does not accept the connection within this long.
    pub connect_timeout: Duration,
    /// Engine sizes (chunks, pipes, buffers); its strategy and digest are set from the above.
    pub fanout: FanoutConfig,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            strategy: Strategy::Auto,
            digest: DigestAlgorithm::default(),
            name: None,
            raw: false,
            capture: None,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            fanout: FanoutConfig::default(),
        }
    }
}

/// What happened at one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestStatus {
    /// The receiver acknowledged the digest.
    Confirmed,
    /// Raw mode: every byte was written and the connection closed cleanly (nothing to confirm).
    Sent,
    /// The destination failed; the reason.
    Failed(String),
}

/// One destination's outcome.
#[derive(Clone, Debug)]
pub struct DestReport {
    /// The address as given.
    pub address: String,
    /// The outcome.
    pub status: DestStatus,
    /// Payload bytes written to it.
    pub bytes: u64,
    /// The digest the receiver reported, hex.
    pub receiver_digest: Option<String>,
    /// From the start of the transfer to the outcome.
    pub elapsed: Duration,
}

impl DestReport {
    /// True when the destination has everything (confirmed, or fully sent in raw mode).
    pub fn is_ok(&self) -> bool {
        matches!(self.status, DestStatus::Confirmed | DestStatus::Sent)
    }
}

/// Live counters of a transfer, for progress displays.
#[derive(Debug, Default)]
pub struct Progress {
    /// Payload bytes written to each destination, in order.
    pub sent: Vec<AtomicU64>,
}

/// Why a send failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The engine could not move the stream (source, pipes, every destination, the capture).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The announced name is not valid on the wire.
    #[error("cannot announce this name: {0} (use --name)")]
    Name(wire::WireError),
    /// The capture file could not be created.
    #[error("capture {path}: {source}")]
    Capture {
        /// The capture path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

impl SendError {
    /// True when the request itself cannot be served (a path the source or filesystem does not
    /// support, a bad name), rather than a failure during the transfer.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SendError::Engine(EngineError::Unsupported(_))
                | SendError::Name(_)
                | SendError::Capture { .. }
        )
    }
}

/// What a send did.
#[derive(Debug)]
pub struct SendReport {
    /// The source as given.
    pub source: String,
    /// The name announced.
    pub name: String,
    /// The path that was used.
    pub strategy: Strategy,
    /// The digest of the stable bytes, when the stream was read to its end.
    pub digest: Option<Digest>,
    /// Bytes read from the source.
    pub bytes: u64,
    /// Why the transfer failed as a whole, if it did.
    pub error: Option<SendError>,
    /// Each destination, in order.
    pub destinations: Vec<DestReport>,
    /// The capture file and its outcome.
    pub capture: Option<(PathBuf, Result<(), String>)>,
    /// The source grew during the send; the announced length went out.
    pub source_grew: bool,
    /// Wall time of the transfer.
    pub elapsed: Duration,
}

impl SendReport {
    /// True when the stream was read whole, the capture (if any) written, and every destination
    /// confirmed (or, raw, fully sent).
    pub fn is_success(&self) -> bool {
        self.error.is_none()
            && self.capture.as_ref().is_none_or(|(_, r)| r.is_ok())
            && self.destinations.iter().all(DestReport::is_ok)
    }
}

/// Sends `source` to every address in `destinations` (`HOST:PORT`).
pub fn send(
    source: &Source,
    destinations: &[String],
    options: &SendOptions,
    progress: Option<Arc<Progress>>,
) -> SendReport {
    let started = Instant::now();
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| source.default_name());
    let strategy = options.strategy.for_transfer(source, destinations.len());
    let mut config = options.fanout.clone();
    config.strategy = strategy;
    config.digest = options.digest;
    let mut report = SendReport {
        source: source.display().to_string(),
        name: name.clone(),
        strategy,
        digest: None,
        bytes: 0,
        error: None,
        destinations: Vec::new(),
        capture: None,
        source_grew: false,
        elapsed: Duration::ZERO,
    };
    let header = if options.raw {
        None
    } else {
        let header = Header {
            name,
            length: source.len(),
            digest: options.digest,
            route: Vec::new(),
        };
        match header.encode() {
            Ok(h) => Some(h),
            Err(e) => {
                report.error = Some(SendError::Name(e));
                return report;
            }
        }
    };
    let progress = progress.unwrap_or_else(|| {
        Arc::new(Progress {
            sent: destinations.iter().map(|_| AtomicU64::new(0)).collect(),
        })
    });
    let outcomes: Vec<Arc<Mutex<Option<DestReport>>>> = destinations
        .iter()
        .map(|_| Arc::new(Mutex::new(None)))
        .collect();
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for (i, address) in destinations.iter().enumerate() {
        sinks.push(Box::new(SocketSink {
            address: address.clone(),
            index: i,
            stream: None,
            header: header.clone(),
            chunked: source.len().is_none(),
            options: options.clone(),
            progress: progress.clone(),
            outcome: outcomes[i].clone(),
            started,
        }));
    }
    if let Some(path) = &options.capture {
        match CaptureSink::create(path) {
            Ok(c) => sinks.push(Box::new(c)),
            Err(source) => {
                report.error = Some(SendError::Capture {
                    path: path.clone(),
                    source,
                });
                return report;
            }
        }
    }
    let fanout = engine::fan_out(source, sinks, &config);
    report.bytes = fanout.bytes;
    report.source_grew = fanout.source_grew;
    match fanout.result {
        Ok(d) => report.digest = Some(d),
        Err(e) => report.error = Some(e.into()),
    }
    for (i, address) in destinations.iter().enumerate() {
        let recorded = outcomes[i].lock().ok().and_then(|mut o| o.take());
        let dest = recorded.unwrap_or_else(|| DestReport {
            address: address.clone(),
            status: DestStatus::Failed(match &fanout.sinks[i] {
                Err(e) => e.to_string(),
                Ok(()) => "no outcome recorded".into(),
            }),
            bytes: progress.sent[i].load(Ordering::Relaxed),
            receiver_digest: None,
            elapsed: started.elapsed(),
        });
        report.destinations.push(dest);
    }
    if let Some(path) = &options.capture {
        let outcome = match fanout.sinks.get(destinations.len()) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("capture did not run".into()),
        };
        report.capture = Some((path.clone(), outcome));
    }
    report.elapsed = started.elapsed();
    report
}

/// A destination socket: frames the stream (header, chunks, trailer), moves the payload, reads
/// the acknowledgement.
struct SocketSink {
    address: String,
    index: usize,
    stream: Option<TcpStream>,
    /// The encoded header, or `None` in raw mode.
    header: Option<Vec<u8>>,
    /// Unknown length: frame the payload in chunks.
    chunked: bool,
    options: SendOptions,
    progress: Arc<Progress>,
    outcome: Arc<Mutex<Option<DestReport>>>,
    started: Instant,
}

impl SocketSink {
    fn stream(&self) -> Result<&TcpStream, SinkError> {
        self.stream
            .as_ref()
            .ok_or_else(|| SinkError("not connected".into()))
    }

    fn fail(&self, what: &str, e: &io::Error) -> SinkError {
        SinkError(format!("{}: {what}: {e}", self.address))
    }

    fn record(&self, status: DestStatus, receiver_digest: Option<String>) {
        if let Ok(mut o) = self.outcome.lock() {
            o.get_or_insert(DestReport {
                address: self.address.clone(),
                status,
                bytes: self.sent(),
                receiver_digest,
                elapsed: self.started.elapsed(),
            });
        }
    }

    /// Payload bytes written to this destination so far (the progress counter is the record).
    fn sent(&self) -> u64 {
        self.progress.sent[self.index].load(Ordering::Relaxed)
    }

    fn count(&self, n: usize) {
        self.progress.sent[self.index].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Writes framing bytes, waiting for room up to the stall timeout.
    fn write_framing(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let stall = self.options.stall_timeout;
        let stream = self.stream()?;
        write_all_until(stream, bytes, stall).map_err(|e| self.fail("write", &e))
    }

    fn chunk_header(&mut self, len: usize) -> Result<(), SinkError> {
        if self.chunked && self.header.is_some() {
            let len = u32::try_from(len).map_err(|_| SinkError("chunk too large".into()))?;
            self.write_framing(&wire::encode_chunk_header(len))?;
        }
        Ok(())
    }

    /// Waits until the pipe has data (true) or has reached its end of file (false).
    fn wait_for_filler(&self, pipe: BorrowedFd<'_>) -> Result<bool, SinkError> {
        sys::wait_ready(pipe, Readiness::Readable, None).map_err(|e| self.fail("poll", &e))?;
        let queued = sys::bytes_queued(pipe).map_err(|e| self.fail("FIONREAD", &e))?;
        Ok(queued > 0)
    }

    /// A write failed: if the receiver refused the stream mid-way (a full disk, say), its
    /// acknowledgement is waiting in the socket and says why; otherwise the error itself.
    fn send_failed(&self, e: &io::Error) -> SinkError {
        if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
            && self.header.is_some()
            && let Ok(ack) = self.read_ack_within(Duration::from_secs(1))
        {
            return SinkError(format!(
                "{}: receiver refused: {} ({})",
                self.address,
                ack.status.as_str(),
                ack.message
            ));
        }
        self.fail("send", e)
    }

    fn read_ack(&self) -> Result<Ack, SinkError> {
        self.read_ack_within(self.options.stall_timeout)
    }

    fn read_ack_within(&self, stall: Duration) -> Result<Ack, SinkError> {
        let stream = self.stream()?;
        let mut prefix = [0u8; wire::PREFIX_LEN];
        read_exact_until(stream, &mut prefix, stall)
            .map_err(|e| self.fail("reading the acknowledgement", &e))?;
        let body_len = wire::decode_prefix(&prefix, MessageKind::Ack)
            .map_err(|e| SinkError(format!("{}: bad acknowledgement: {e}", self.address)))?;
        let mut body = vec![0u8; body_len];
        read_exact_until(stream, &mut body, stall)
            .map_err(|e| self.fail("reading the acknowledgement", &e))?;
        Ack::decode_body(&body)
            .map_err(|e| SinkError(format!("{}: bad acknowledgement: {e}", self.address)))
    }
}

impl Sink for SocketSink {
    fn start(&mut self) -> Result<(), SinkError> {
        let stream = connect(&self.address, self.options.connect_timeout)
            .map_err(|e| SinkError(format!("{}: cannot connect: {e}", self.address)))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| self.fail("set non-blocking", &e))?;
        self.stream = Some(stream);
        if let Some(header) = self.header.clone() {
            self.write_framing(&header)?;
        }
        Ok(())
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, SinkError> {
        let stall = self.options.stall_timeout;
        let framed_chunks = self.chunked && self.header.is_some();
        let start = self.sent();
        // Bytes still due in the current chunk (chunked framing declares what the pipe holds).
        let mut chunk_left = 0usize;
        let mut last_progress = Instant::now();
        loop {
            if framed_chunks && chunk_left == 0 {
                let queued = sys::bytes_queued(pipe).map_err(|e| self.fail("FIONREAD", &e))?;
                if queued == 0 {
                    if !self.wait_for_filler(pipe)? {
                        return Ok(self.sent() - start);
                    }
                    last_progress = Instant::now();
                    continue;
                }
                chunk_left = queued.min(wire::MAX_CHUNK as usize);
                self.chunk_header(chunk_left)?;
            }
            let want = if framed_chunks { chunk_left } else { 1 << 30 };
            let sock = self.stream()?.as_fd();
            // The socket is O_NONBLOCK and the flag makes the pipe side non-blocking, so this
            // never sleeps holding the pipe's lock (KERNEL.md §1.1 "Lock hazard").
            match sys::splice(pipe, sock, want, SpliceFlags::NONBLOCK | SpliceFlags::MORE) {
                Ok(0) => return Ok(self.sent() - start),
                Ok(n) => {
                    chunk_left = chunk_left.saturating_sub(n);
                    self.count(n);
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sys::bytes_queued(pipe).unwrap_or(1) == 0 {
                        // Waiting for the filler is not this destination's stall.
                        if !self.wait_for_filler(pipe)? {
                            return Ok(self.sent() - start);
                        }
                        last_progress = Instant::now();
                    } else if !sys::wait_ready(
                        sock,
                        Readiness::Writable,
                        Some(last_progress + stall),
                    )
                    .map_err(|e| self.fail("poll", &e))?
                    {
                        return Err(stalled(&self.address, stall));
                    }
                }
                Err(e) => return Err(self.send_failed(&e)),
            }
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.chunk_header(bytes.len())?;
        let stall = self.options.stall_timeout;
        let stream = self.stream()?;
        let written = write_all_until(stream, bytes, stall);
        match written {
            Ok(()) => {
                self.count(bytes.len());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(stalled(&self.address, stall)),
            Err(e) => Err(self.send_failed(&e)),
        }
    }

    fn take_from_map(&mut self, map: &FileMap, offset: usize, len: usize) -> Result<(), SinkError> {
        self.chunk_header(len)?;
        let stall = self.options.stall_timeout;
        let mut done = 0;
        while done < len {
            let sock = self.stream()?.as_fd();
            match map.write_to(sock, offset + done, len - done) {
                Ok(0) => {
                    return Err(SinkError(format!(
                        "{}: the source shrank under its mapping",
                        self.address
                    )));
                }
                Ok(n) => {
                    // The socket has its own copy: keep the resident set bounded.
                    let _ = map.release(offset + done, n);
                    done += n;
                    self.count(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::wait_ready(sock, Readiness::Writable, Some(Instant::now() + stall))
                        .map_err(|e| self.fail("poll", &e))?
                    {
                        return Err(stalled(&self.address, stall));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    return Err(SinkError(format!(
                        "{}: the source shrank under its mapping",
                        self.address
                    )));
                }
                Err(e) => return Err(self.send_failed(&e)),
            }
        }
        Ok(())
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<(), SinkError> {
        if self.header.is_none() {
            let stream = self.stream()?;
            stream
                .shutdown(Shutdown::Write)
                .map_err(|e| self.fail("shutdown", &e))?;
            self.record(DestStatus::Sent, None);
            return Ok(());
        }
        if self.chunked {
            self.write_framing(&wire::encode_chunk_header(0))?;
        }
        let trailer = Trailer {
            length,
            digest: digest.bytes.clone(),
        };
        self.write_framing(&trailer.encode())?;
        let ack = self.read_ack()?;
        let receiver_digest = Some(to_hex(&ack.digest));
        if ack.status == AckStatus::Ok && ack.bytes == length && ack.digest == digest.bytes {
            self.record(DestStatus::Confirmed, receiver_digest);
            Ok(())
        } else {
            let reason = format!(
                "{}: receiver refused: {} ({}; it received {} bytes)",
                self.address,
                ack.status.as_str(),
                ack.message,
                ack.bytes
            );
            self.record(DestStatus::Failed(reason.clone()), receiver_digest);
            Err(SinkError(reason))
        }
    }

    fn abort(&mut self, reason: &str) {
        // Closing without a trailer tells the receiver to discard what it has.
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.record(DestStatus::Failed(reason.to_string()), None);
    }
}

fn stalled(address: &str, stall: Duration) -> SinkError {
    SinkError(format!(
        "{address}: stalled: accepted no data for {:.1} s (--stall-timeout)",
        stall.as_secs_f64()
    ))
}
