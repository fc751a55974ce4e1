//! The destination layer: one TCP destination as a consumer of the engine's stable stream
//! ([`Destination`]). It connects, drives a [`SenderSession`] (hello, welcome, header, chunks,
//! trailer) around the payload the engine hands it, or writes the bare payload in raw mode, and
//! judges the receiver's acknowledgement. It knows no tree: a failure that leaves the hosts below
//! a relayed destination without their stream is handed to its `on_orphaned` callback, and the
//! reports a relay's acknowledgement carries go to the slot it is given.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use teecast_proto::crypt::TransferKey;
use teecast_proto::session::{FrameReader, OrderError, SenderSession, Verdict};
use teecast_proto::wire::{self, AckStatus, Header, HostReport, Tree, WireError};
use teecast_sys as sys;
use teecast_sys::{Readiness, SpliceFlags};

use crate::auth::{self, Key};
use crate::digest::Digest;
use crate::engine::{Abandoned, Consumer, SourceMap};
use crate::sync::lock;
use crate::transport::{self, ConnectError, ReadError};
/// What a destination needs of its send's options.
#[derive(Clone, Debug)]
pub(crate) struct DestOptions {
    /// Drop a destination that accepts no data for this long (also bounds each exchange).
    pub(crate) stall_timeout: Duration,
    /// Give up on a destination that does not accept the connection within this long.
    pub(crate) connect_timeout: Duration,
    /// The pre-shared key, if the stream is keyed.
    pub(crate) key: Option<Key>,
    /// With the key: the transfer's key, and the stream is encrypted (version 3), its payload
    /// the records sealed under it.
    pub(crate) transfer: Option<TransferKey>,
}

/// A way to connect to a destination, given the connect timeout.
type Dial<'a> = Box<dyn FnOnce(Duration) -> Result<TcpStream, ConnectError> + Send + 'a>;

/// What a destination that has everything reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The receiver acknowledged the digest; its own digest of what it stored.
    Confirmed {
        /// The receiver's digest.
        receiver_digest: Vec<u8>,
    },
    /// A host reached through relays: the relay that served it says it stored a copy that
    /// verifies against the sender's digest (its own digest stays with that relay).
    Relayed,
    /// Raw mode: every byte was written and the connection closed cleanly (nothing to confirm).
    Sent,
}

/// Why a destination failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DestFailure {
    /// The connection could not be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// It accepted no data for the stall timeout.
    #[error("stalled: accepted no data for {:.1} s", .0.as_secs_f64())]
    Stalled(Duration),
    /// It sent no acknowledgement within the timeout.
    #[error("no acknowledgement within {:.1} s", .0.as_secs_f64())]
    NoAck(Duration),
    /// The receiver refused the stream.
    #[error(
        "the receiver refused: {status} ({}); it received {bytes} bytes",
        wire::escape_text(message, 200)
    )]
    Refused {
        /// The acknowledgement's status.
        status: AckStatus,
        /// The receiver's explanation (peer text: escaped when shown).
        message: String,
        /// Payload bytes it says it received.
        bytes: u64,
    },
    /// The receiver said ok, but with another byte count or digest than was sent.
    #[error("the receiver's acknowledgement does not match: it counted {bytes} bytes")]
    Unconfirmed {
        /// Payload bytes it says it received.
        bytes: u64,
        /// Its digest.
        receiver_digest: Vec<u8>,
    },
    /// The connection was reset or closed before the acknowledgement.
    #[error("the connection was closed by the receiver: {0}")]
    Reset(#[source] io::Error),
    /// The acknowledgement is not valid protocol, or (keyed) its seal does not verify.
    #[error("bad acknowledgement: {0}")]
    BadAck(#[source] WireError),
    /// The handshake failed: the receiver's welcome is not valid, or the two ends do not hold
    /// the same key.
    #[error("handshake: {0}")]
    Handshake(#[source] WireError),
    /// The receiver closed the connection without answering the hello: a raw receiver, a
    /// release that speaks only version 2 (to an encrypted hello), or not teecast at all.
    #[error(
        "the receiver closed the connection without answering the hello (a raw receiver, a teecast that speaks only the unencrypted version 2, or not teecast?)"
    )]
    ClosedAtHello,
    /// No welcome arrived within the timeout.
    #[error("no answer to the hello within {:.1} s", .0.as_secs_f64())]
    NoWelcome(Duration),
    /// No answer to a resuming header (the offset held) arrived within the timeout.
    #[error("no answer to the resuming header within {:.1} s", .0.as_secs_f64())]
    NoResume(Duration),
    /// A call on the socket failed.
    #[error("{op}: {source}")]
    Io {
        /// The call.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The source shrank under its mapping (`mmap-write`).
    #[error("the source shrank under its mapping")]
    SourceShrank,
    /// The session was driven out of order (a bug).
    #[error("protocol order: {0}")]
    Order(#[from] OrderError),
    /// The transfer ended before this destination had the stream.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    /// A host reached through relays was not reached, or its connection broke without an
    /// answer; the relay that served it says why.
    #[error("not reached: {}", wire::escape_text(.0, 200))]
    Unreached(String),
    /// An adopted host holds fewer bytes than the replay ring still has (`--ring`).
    #[error("it holds {offset} bytes, and the replay ring now starts at byte {start}")]
    BeyondRing {
        /// Bytes it holds.
        offset: u64,
        /// The oldest byte the ring holds.
        start: u64,
    },
}

impl DestFailure {
    /// A short, stable name for machines: `connect`, `stalled`, `no-ack`, `refused`,
    /// `unconfirmed`, `reset`, `bad-ack`, `key` (one end has a key, the other none),
    /// `unauthenticated` (a proof does not verify: another key), `handshake`, `no-welcome`,
    /// `no-resume`, `closed-at-hello`,
    /// `io`, `source-shrank`, `order`, `abandoned`, `unreached` or `beyond-ring`.
    pub fn kind(&self) -> &'static str {
        match self {
            DestFailure::Connect(_) => "connect",
            DestFailure::Stalled(_) => "stalled",
            DestFailure::NoAck(_) => "no-ack",
            DestFailure::Refused { .. } => "refused",
            DestFailure::Unconfirmed { .. } => "unconfirmed",
            DestFailure::Reset(_) => "reset",
            DestFailure::BadAck(_) => "bad-ack",
            DestFailure::Handshake(WireError::PeerUnkeyed | WireError::KeyRequired) => "key",
            DestFailure::Handshake(WireError::BadSeal(_)) => "unauthenticated",
            DestFailure::Handshake(WireError::OutOfTurn(_)) => "order",
            DestFailure::Handshake(_) => "handshake",
            DestFailure::NoWelcome(_) => "no-welcome",
            DestFailure::NoResume(_) => "no-resume",
            DestFailure::ClosedAtHello => "closed-at-hello",
            DestFailure::Io { .. } => "io",
            DestFailure::SourceShrank => "source-shrank",
            DestFailure::Order(_) => "order",
            DestFailure::Abandoned(_) => "abandoned",
            DestFailure::Unreached(_) => "unreached",
            DestFailure::BeyondRing { .. } => "beyond-ring",
        }
    }

    /// True for a failure that leaves the hosts below without their stream and without an
    /// answer (a parent adopts them): not for an answer the receiver gave.
    fn orphans(&self) -> bool {
        matches!(
            self,
            DestFailure::Connect(_)
                | DestFailure::Stalled(_)
                | DestFailure::NoAck(_)
                | DestFailure::Reset(_)
                | DestFailure::Io { .. }
                | DestFailure::NoWelcome(_)
                | DestFailure::NoResume(_)
                | DestFailure::ClosedAtHello
        )
    }
}

/// Live counters of a transfer, for progress displays: made by [`Transfer::new`](crate::send::Transfer::new), one per
/// destination.
#[derive(Debug)]
pub struct Progress {
    sent: Vec<AtomicU64>,
    failed: Vec<AtomicBool>,
}

impl Progress {
    pub(crate) fn new(destinations: usize) -> Progress {
        Progress {
            sent: (0..destinations).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..destinations).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Which destinations have failed or been dropped so far, in order.
    pub fn failed(&self) -> Vec<bool> {
        self.failed
            .iter()
            .map(|f| f.load(Ordering::Relaxed))
            .collect()
    }

    fn fail(&self, destination: usize) {
        if let Some(f) = self.failed.get(destination) {
            f.store(true, Ordering::Relaxed);
        }
    }

    /// Payload bytes written so far to each destination, in order.
    pub fn sent(&self) -> Vec<u64> {
        self.sent
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect()
    }

    fn add(&self, destination: usize, n: usize) {
        if let Some(s) = self.sent.get(destination) {
            s.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn of(&self, destination: usize) -> u64 {
        self.sent
            .get(destination)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }
}

/// The slowest storage rate, in bytes per second, the wait for an acknowledgement allows for
/// (the receiver syncs the whole file before it answers).
const FSYNC_RATE: f64 = 16.0 * 1024.0 * 1024.0;

/// A destination socket: drives a [`SenderSession`] (header, chunks, trailer, acknowledgement)
/// around the payload the engine hands it, or writes the bare payload in raw mode.
pub(crate) struct Destination<'a> {
    address: &'a str,
    index: usize,
    stream: Option<TcpStream>,
    /// The session, or `None` in raw mode.
    session: Option<SenderSession>,
    header: Option<Header>,
    options: &'a DestOptions,
    progress: &'a Progress,
    /// For a relay: the digest its sender announced, passed on in the trailer (set once the
    /// sender's trailer has arrived, before the stream ends here).
    announce: Option<&'a OnceLock<Vec<u8>>>,
    /// How many levels of hosts answer through this one (1 + those relayed below it): its
    /// acknowledgement waits for theirs.
    levels: u32,
    /// A connection already made (a relay connects first, to adopt what it cannot reach).
    connected: Option<TcpStream>,
    /// How to connect, when not to the address resolved anew (in a tree: to the addresses
    /// resolved once for its route).
    dial: Option<Dial<'a>>,
    /// In a tree: who serves this host's children should it fail, and its position.
    orphaned: Option<Box<dyn FnOnce() + Send + 'a>>,
    /// For a resuming header: the offset the receiver said it holds.
    resumed_at: Option<u64>,
    /// Where to put what its acknowledgement reports of the hosts below it (a relay's).
    reports: Option<&'a Mutex<Vec<HostReport>>>,
    /// It failed itself (rather than being abandoned with the whole stream).
    failed: bool,
    /// For a relay: where a confirmed connection goes once its acknowledgement is read, kept
    /// open until the relay's own parent has read the relay's acknowledgement (see
    /// [`Destination::holding`]).
    holding: Option<HeldChildren>,
    /// Where it tells what it learns while it runs (relayed destinations).
    live: Option<Live>,
    /// When it last looked for report messages.
    looked: Instant,
}

/// The connections of confirmed children a relay holds, released (closed in order) once its
/// own acknowledgement has been read.
pub(crate) type HeldChildren = Arc<Mutex<Vec<TcpStream>>>;

/// What a relayed destination learns while it runs, as it learns it: for progress displays
/// (the sender) and for the reports a relay sends up.
pub(crate) enum LiveEvent<'e> {
    /// A report message from it: the outcome of hosts below it.
    Reports(&'e [HostReport]),
    /// It acknowledged its copy, verified, after this many payload bytes.
    Delivered(u64),
    /// It failed, after this many payload bytes.
    Failed(&'e DestFailure, u64),
}

/// Where a destination tells its [`LiveEvent`]s.
pub(crate) type Live = Arc<dyn Fn(LiveEvent<'_>) + Send + Sync>;

/// How often, at most, a sending destination looks for report messages.
const REPORT_LOOK: Duration = Duration::from_millis(20);

/// What became of each host of a relayed transfer so far, from its parent's word as it comes
/// (report messages mid-stream, then acknowledgements): for progress displays. The
/// transfer's report, from the acknowledgements alone, is what stands.
#[derive(Debug)]
pub struct LiveHosts(Mutex<Vec<HostState>>);

/// What is known of one host of a relayed transfer while it runs ([`LiveHosts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Nothing yet: its stream is under way, or has not reached it.
    Going,
    /// It stored a verified copy of this many bytes.
    Verified(u64),
    /// It failed (why, in its parent's words: peer text, escape it before showing it).
    Failed(String),
}

impl LiveHosts {
    pub(crate) fn new(hosts: usize) -> LiveHosts {
        LiveHosts(Mutex::new(vec![HostState::Going; hosts]))
    }

    /// Every host's state, by position − 1.
    pub fn states(&self) -> Vec<HostState> {
        lock(&self.0).clone()
    }

    /// The host at `position` is now in `state`.
    pub(crate) fn set(&self, position: usize, state: HostState) {
        let mut hosts = lock(&self.0);
        if let Some(s) = position.checked_sub(1).and_then(|i| hosts.get_mut(i)) {
            *s = state;
        }
    }

    /// Takes what a report says of each host.
    pub(crate) fn take(&self, reports: &[HostReport]) {
        for r in reports {
            let state = match r.status {
                AckStatus::Ok => HostState::Verified(r.bytes),
                _ => HostState::Failed(r.message.clone()),
            };
            self.set(usize::from(r.position), state);
        }
    }

    /// Where the destination at `position` tells what it learns.
    pub(crate) fn live_for(self: &Arc<Self>, position: usize) -> Live {
        let hosts = self.clone();
        Arc::new(move |e: LiveEvent<'_>| match e {
            LiveEvent::Reports(r) => hosts.take(r),
            LiveEvent::Delivered(bytes) => hosts.set(position, HostState::Verified(bytes)),
            LiveEvent::Failed(why, _) => hosts.set(position, HostState::Failed(why.to_string())),
        })
    }
}

impl<'a> Destination<'a> {
    /// A destination at `address`, counted as `index` in `progress`, sent `header` (`None`:
    /// raw).
    pub(crate) fn new(
        address: &'a str,
        index: usize,
        header: Option<Header>,
        options: &'a DestOptions,
        progress: &'a Progress,
    ) -> Destination<'a> {
        let below = header
            .as_ref()
            .and_then(|h| h.tree.map(|t| (t, h.route.len())))
            .map_or(0, |(t, hosts)| {
                Tree::height_below(t.fanout, usize::from(t.position), hosts)
            });
        Destination {
            address,
            index,
            stream: None,
            session: None,
            header,
            options,
            progress,
            announce: None,
            levels: 1 + u32::try_from(below).unwrap_or(u32::MAX - 1),
            connected: None,
            dial: None,
            orphaned: None,
            resumed_at: None,
            reports: None,
            failed: false,
            holding: None,
            live: None,
            looked: Instant::now(),
        }
    }

    /// Tells `live` what it learns while it runs: the report messages of a relay, and its own
    /// outcome as soon as it is known.
    pub(crate) fn live(mut self, live: Live) -> Destination<'a> {
        self.live = Some(live);
        self
    }

    /// Reads the report messages waiting in the socket, whole ones only and never anything
    /// else (an early acknowledgement stays for [`Destination::read_ack`]), at most every
    /// [`REPORT_LOOK`].
    fn look_for_reports(&mut self) {
        if self.live.is_none() || self.looked.elapsed() < REPORT_LOOK {
            return;
        }
        self.looked = Instant::now();
        loop {
            let (Some(stream), Some(session)) = (&self.stream, &mut self.session) else {
                return;
            };
            let mut prefix = [0u8; wire::PREFIX_LEN];
            let queued = sys::bytes_queued(stream.as_fd()).unwrap_or(0);
            if queued < prefix.len()
                || !matches!(stream.peek(&mut prefix), Ok(n) if n == prefix.len())
                || prefix[..4] != wire::MessageKind::Report.magic()
            {
                return;
            }
            let len = u32::from_be_bytes([prefix[6], prefix[7], prefix[8], prefix[9]]) as usize;
            // One too long is left for the acknowledgement's read to refuse.
            let longest = wire::MessageKind::Report.sealed_max_body_len();
            if len > longest || queued < prefix.len() + len {
                return;
            }
            let mut reader = session.report_reader();
            let mut message = vec![0u8; prefix.len() + len];
            let deadline = transport::deadline(self.options.stall_timeout);
            let Ok(()) = transport::read_exact(stream, &mut message, deadline) else {
                return;
            };
            let mut at = 0;
            let body = loop {
                match reader.push(&message[at..]) {
                    Ok((_, Some(body))) => break body,
                    Ok((n, None)) if n > 0 => at += n,
                    _ => return,
                }
            };
            let Ok(reports) = session.report(&body) else {
                return;
            };
            if let Some(live) = &self.live {
                live(LiveEvent::Reports(&reports));
            }
        }
    }

    /// Once its acknowledgement is read, hands the connection to `held` instead of closing
    /// it, set to reset when closed: should this relay die before its own parent has read the
    /// relay's acknowledgement (which carries this host's report), the host learns so from
    /// the reset, and waits to be resumed by the parent adopting it (docs/PROTOCOL.md,
    /// "Resuming"); the relay closes it in order once its parent has.
    pub(crate) fn holding(mut self, held: HeldChildren) -> Destination<'a> {
        self.holding = Some(held);
        self
    }

    /// Puts what its acknowledgement reports of the hosts below it into `slot`.
    pub(crate) fn reporting_to(mut self, slot: &'a Mutex<Vec<HostReport>>) -> Destination<'a> {
        self.reports = Some(slot);
        self
    }

    /// Calls `orphaned` (once) should this destination fail in a way that leaves the hosts below
    /// it without their stream and without an answer: in a tree, to have them adopted.
    pub(crate) fn on_orphaned(mut self, orphaned: impl FnOnce() + Send + 'a) -> Destination<'a> {
        self.orphaned = Some(Box::new(orphaned));
        self
    }

    /// For a resuming header, once started: the payload bytes the receiver holds.
    pub(crate) fn resumed_at(&self) -> Option<u64> {
        self.resumed_at
    }

    /// Passes `result` on; a failure that orphans the hosts below calls `orphaned`.
    fn adopt_on<T>(&mut self, result: Result<T, DestFailure>) -> Result<T, DestFailure> {
        if let Err(e) = &result {
            if !self.failed
                && let Some(live) = &self.live
            {
                live(LiveEvent::Failed(e, self.progress.of(self.index)));
            }
            self.failed = true;
            if e.orphans()
                && let Some(orphaned) = self.orphaned.take()
            {
                orphaned();
            }
        }
        result
    }

    /// Reads the receiver's answer to a resuming header: the offset to go on from.
    fn read_resume(&mut self) -> Result<(), DestFailure> {
        let deadline = transport::deadline(self.stall());
        let (Some(stream), Some(session)) = (&self.stream, &mut self.session) else {
            return Err(DestFailure::Abandoned(Abandoned::Transfer));
        };
        let read = |reader| {
            transport::read_message(stream, reader, deadline).map_err(|e| match e {
                ReadError::Wire(w) => DestFailure::Handshake(w),
                ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                    DestFailure::NoResume(self.options.stall_timeout)
                }
                ReadError::Io(e) => DestFailure::Reset(e),
            })
        };
        let body = read(session.resume_reader())?;
        let seal = match session.is_keyed() {
            true => Some(read(session.seal_reader())?),
            false => None,
        };
        let offset = session
            .resumed(&body, seal.as_deref())
            .map_err(DestFailure::Handshake)?;
        self.resumed_at = Some(offset);
        Ok(())
    }

    /// Connects with `dial` (given the connect timeout) instead of resolving its address.
    pub(crate) fn dialing(
        mut self,
        dial: impl FnOnce(Duration) -> Result<TcpStream, ConnectError> + Send + 'a,
    ) -> Destination<'a> {
        self.dial = Some(Box::new(dial));
        self
    }

    /// Uses `stream`, already connected, instead of connecting.
    pub(crate) fn over(mut self, stream: TcpStream) -> Destination<'a> {
        self.connected = Some(stream);
        self
    }

    /// Announces `digest` in the trailer (a relay passing on its sender's) instead of the
    /// engine's.
    pub(crate) fn announcing(mut self, digest: &'a OnceLock<Vec<u8>>) -> Destination<'a> {
        self.announce = Some(digest);
        self
    }

    fn stream(&self) -> Result<&TcpStream, DestFailure> {
        self.stream
            .as_ref()
            .ok_or(DestFailure::Abandoned(Abandoned::Transfer))
    }

    fn stall(&self) -> Duration {
        self.options.stall_timeout
    }

    /// Writes framing bytes, by one deadline a stall timeout away.
    fn write_framing(&self, bytes: &[u8]) -> Result<(), DestFailure> {
        let deadline = transport::deadline(self.stall());
        transport::write_all(self.stream()?, bytes, deadline).map_err(|e| self.write_failed(e))
    }

    /// Accounts `n` payload bytes written.
    fn count(&mut self, n: usize) -> Result<(), DestFailure> {
        self.progress.add(self.index, n);
        match &mut self.session {
            Some(s) if !s.is_chunked() => Ok(s.payload(n as u64)?),
            _ => Ok(()),
        }
    }

    /// The chunk header in front of `len` payload bytes, when the session is chunked.
    fn chunk_header(&mut self, len: usize) -> Result<(), DestFailure> {
        let header = match &mut self.session {
            Some(s) if s.is_chunked() => s.chunk(len)?,
            _ => return Ok(()),
        };
        self.write_framing(&header)
    }

    /// Waits until the pipe has data (true) or has reached its end of file (false). While the
    /// source has nothing (a paused producer), a chunked session sends keepalives.
    fn wait_for_filler(&mut self, pipe: BorrowedFd<'_>) -> Result<bool, DestFailure> {
        let io = |op| move |source| DestFailure::Io { op, source };
        loop {
            let deadline = self.idle_interval().and_then(transport::deadline);
            if sys::wait_ready(pipe, Readiness::Readable, deadline).map_err(io("poll"))? {
                return Ok(sys::bytes_queued(pipe).map_err(io("FIONREAD"))? > 0);
            }
            self.idle()?;
        }
    }

    /// A write failed: if the receiver refused the stream mid-way (a full disk, say), its
    /// acknowledgement is waiting in the socket and says why; otherwise the error itself.
    fn write_failed(&self, e: io::Error) -> DestFailure {
        if e.kind() == io::ErrorKind::TimedOut {
            return DestFailure::Stalled(self.stall());
        }
        if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) && let Some(session) = &self.session
            && let Ok(stream) = self.stream()
            && let Ok(Verdict::Refused(ack)) = read_verdict(
                stream,
                &mut session.clone(),
                &[],
                transport::deadline(Duration::from_secs(1)),
                None,
            )
        {
            return refused(ack);
        }
        match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => DestFailure::Reset(e),
            _ => DestFailure::Io {
                op: "send",
                source: e,
            },
        }
    }

    /// Reads and judges the acknowledgement, by one deadline a stall timeout away.
    fn read_ack(&mut self, digest: &Digest) -> Result<Delivered, DestFailure> {
        // The receiver fsyncs before it answers: allow for a slow disk (16 MiB/s) on top of
        // the stall timeout, so a file a receiver kept is not reported failed.
        let sent = self.progress.of(self.index);
        let stall = self
            .stall()
            .saturating_add(Duration::from_secs_f64(sent as f64 / FSYNC_RATE))
            .saturating_mul(self.levels);
        let (Some(stream), Some(session)) = (&self.stream, &mut self.session) else {
            return Err(DestFailure::Abandoned(Abandoned::Transfer));
        };
        let announced = self
            .announce
            .and_then(OnceLock::get)
            .unwrap_or(&digest.bytes);
        let verdict = read_verdict(
            stream,
            session,
            announced,
            transport::deadline(stall),
            self.live.as_ref(),
        )
        .map_err(|e| match e {
            ReadError::Wire(w) => DestFailure::BadAck(w),
            ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => DestFailure::NoAck(stall),
            ReadError::Io(e) => DestFailure::Reset(e),
        })?;
        let reports = match &verdict {
            Verdict::Confirmed(ack) | Verdict::Refused(ack) => ack.reports.clone(),
        };
        if let Some(live) = &self.live {
            live(LiveEvent::Reports(&reports));
            if let Verdict::Confirmed(_) = &verdict {
                live(LiveEvent::Delivered(sent));
            }
        }
        if let Some(slot) = self.reports {
            *lock(slot) = reports;
        }
        match verdict {
            Verdict::Confirmed(ack) => Ok(Delivered::Confirmed {
                receiver_digest: ack.digest,
            }),
            Verdict::Refused(ack) if ack.status == AckStatus::Ok => Err(DestFailure::Unconfirmed {
                bytes: ack.bytes,
                receiver_digest: ack.digest,
            }),
            Verdict::Refused(ack) => Err(refused(ack)),
        }
    }
}

/// Reads the acknowledgement (and, keyed, its seal) by `deadline` and has `session` judge it.
fn read_verdict(
    stream: &TcpStream,
    session: &mut SenderSession,
    digest: &[u8],
    deadline: Option<Instant>,
    live: Option<&Live>,
) -> Result<Verdict, ReadError> {
    // A relay's report messages may come before its acknowledgement.
    let body = loop {
        let (kind, body) = transport::read_kind(stream, session.ack_or_report_reader(), deadline)?;
        if kind != wire::MessageKind::Report {
            break body;
        }
        let reports = session.report(&body)?;
        if let Some(live) = live {
            live(LiveEvent::Reports(&reports));
        }
    };
    let seal = if session.is_keyed() {
        Some(transport::read_message(
            stream,
            session.seal_reader(),
            deadline,
        )?)
    } else {
        None
    };
    Ok(session.ack(&body, seal.as_deref(), digest)?)
}

fn refused(ack: wire::Ack) -> DestFailure {
    DestFailure::Refused {
        status: ack.status,
        message: ack.message,
        bytes: ack.bytes,
    }
}

impl Consumer for Destination<'_> {
    type Outcome = Delivered;
    type Error = DestFailure;

    fn start(&mut self) -> Result<(), DestFailure> {
        let r = self.open();
        self.adopt_on(r)
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, DestFailure> {
        let r = self.send_pipe(pipe);
        self.adopt_on(r)
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), DestFailure> {
        let r = self.send_buffer(bytes);
        self.adopt_on(r)
    }

    fn take_from_map(
        &mut self,
        map: &SourceMap,
        offset: usize,
        len: usize,
    ) -> Result<(), DestFailure> {
        let r = self.send_map(map, offset, len);
        self.adopt_on(r)
    }

    fn finish(&mut self, _length: u64, digest: &Digest) -> Result<Delivered, DestFailure> {
        let r = self.end(digest);
        self.adopt_on(r)
    }

    /// A chunked session says it is alive three times per stall timeout while the source is
    /// quiet, so the receiver's stall timeout measures the network, not the producer.
    fn idle_interval(&self) -> Option<Duration> {
        self.session
            .as_ref()
            .filter(|s| s.is_chunked())
            .map(|_| (self.stall() / 3).max(Duration::from_millis(10)))
    }

    fn idle(&mut self) -> Result<(), DestFailure> {
        // Idle: look now, whenever it last did.
        self.looked = Instant::now()
            .checked_sub(REPORT_LOOK)
            .unwrap_or(self.looked);
        self.look_for_reports();
        let keepalive = match &self.session {
            Some(s) if s.is_chunked() => s.keepalive()?,
            _ => return Ok(()),
        };
        let r = self.write_framing(&keepalive);
        self.adopt_on(r)
    }

    fn abort(&mut self) {
        self.progress.fail(self.index);
        // Closing without a trailer tells the receiver to discard what it has. When this
        // destination failed itself, a parent may yet adopt the hosts below it, who wait for
        // that; when the whole stream was abandoned no one will, and a reset tells them so at
        // once (and they tell theirs).
        if let Some(s) = self.stream.take()
            && (self.failed || sys::reset_on_close(s.as_fd()).is_err())
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Destination<'_> {
    /// A destination whose thread panicked leaves the hosts below it as orphaned as a failure
    /// does: they are adopted, not left waiting.
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(orphaned) = self.orphaned.take()
        {
            orphaned();
        }
    }
}

impl Destination<'_> {
    /// Connects (unless connected), and for a session: hello, welcome, proof and header, and
    /// for a resuming header the receiver's offset.
    fn open(&mut self) -> Result<(), DestFailure> {
        let timeout = self.options.connect_timeout;
        let stream = match (self.connected.take(), self.dial.take()) {
            (Some(s), _) => s,
            (None, Some(dial)) => dial(timeout)?,
            (None, None) => transport::connect(self.address, timeout)?,
        };
        stream
            .set_nonblocking(true)
            .map_err(|source| DestFailure::Io {
                op: "set non-blocking",
                source,
            })?;
        self.stream = Some(stream);
        if let Some(header) = &self.header {
            let nonce = auth::nonce().map_err(|e| DestFailure::Io {
                op: "getrandom",
                source: io::Error::other(e),
            })?;
            let not_started = |_| DestFailure::Abandoned(Abandoned::NotStarted);
            let next = match (&self.options.key, &self.options.transfer) {
                (Some(psk), Some(transfer)) => {
                    // Encrypted: the nonce is this side's ephemeral X25519 key.
                    let (handshake, hello) =
                        SenderSession::start_encrypted(header, psk, nonce, transfer.clone())
                            .map_err(not_started)?;
                    self.write_framing(&hello)?;
                    let (version, body) = self.read_welcome(handshake.welcome_reader())?;
                    let (session, next) = handshake
                        .welcome(version, &body)
                        .map_err(DestFailure::Handshake)?;
                    self.session = Some(session);
                    next
                }
                _ => {
                    let (mut session, hello) =
                        SenderSession::start(header, self.options.key.clone(), nonce)
                            .map_err(not_started)?;
                    self.write_framing(&hello)?;
                    let (_, body) = self.read_welcome(session.welcome_reader())?;
                    let next = session.welcome(&body).map_err(DestFailure::Handshake)?;
                    self.session = Some(session);
                    next
                }
            };
            let resuming = header.tree.is_some_and(|t| t.resume);
            self.write_framing(&next)?;
            if resuming {
                self.read_resume()?;
            }
        }
        Ok(())
    }

    /// Reads the receiver's welcome with `reader`, within a stall timeout.
    fn read_welcome(&self, reader: FrameReader) -> Result<(Option<u16>, Vec<u8>), DestFailure> {
        let stall = self.stall();
        let deadline = transport::deadline(stall);
        transport::read_versioned(self.stream()?, reader, deadline).map_err(|e| match e {
            ReadError::Wire(w) => DestFailure::Handshake(w),
            ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                DestFailure::NoWelcome(stall)
            }
            ReadError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                DestFailure::ClosedAtHello
            }
            ReadError::Io(e) => DestFailure::Reset(e),
        })
    }

    fn send_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, DestFailure> {
        let stall = self.stall();
        let chunked = self.session.as_ref().is_some_and(SenderSession::is_chunked);
        let start = self.progress.of(self.index);
        let took = |s: &Self| s.progress.of(s.index) - start;
        // Bytes still due in the current chunk (chunked framing declares what the pipe holds).
        let mut chunk_left = 0usize;
        // Where this destination counts as stalled, when no byte goes out before it.
        let mut stall_at = transport::deadline(stall);
        loop {
            if chunked && chunk_left == 0 {
                let queued = sys::bytes_queued(pipe).map_err(|source| DestFailure::Io {
                    op: "FIONREAD",
                    source,
                })?;
                if queued == 0 {
                    if !self.wait_for_filler(pipe)? {
                        return Ok(took(self));
                    }
                    stall_at = transport::deadline(stall);
                    continue;
                }
                chunk_left = queued.min(wire::MAX_CHUNK as usize);
                self.chunk_header(chunk_left)?;
            }
            let want = if chunked { chunk_left } else { 1 << 30 };
            let sock = self.stream()?.as_fd();
            // The socket is O_NONBLOCK and the flag makes the pipe side non-blocking, so this
            // never sleeps holding the pipe's lock (docs/KERNEL.md §1.1 "Lock hazard").
            match sys::splice(pipe, sock, want, SpliceFlags::NONBLOCK | SpliceFlags::MORE) {
                Ok(0) => return Ok(took(self)),
                Ok(n) => {
                    chunk_left = chunk_left.saturating_sub(n);
                    self.count(n)?;
                    stall_at = transport::deadline(stall);
                    self.look_for_reports();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sys::bytes_queued(pipe).unwrap_or(1) == 0 {
                        // Waiting for the filler is not this destination's stall.
                        if !self.wait_for_filler(pipe)? {
                            return Ok(took(self));
                        }
                        stall_at = transport::deadline(stall);
                    } else {
                        let stream = self.stream()?;
                        transport::wait(stream, Readiness::Writable, stall_at)
                            .map_err(|e| self.write_failed(e))?;
                    }
                }
                Err(e) => return Err(self.write_failed(e)),
            }
        }
    }

    fn send_buffer(&mut self, bytes: &[u8]) -> Result<(), DestFailure> {
        self.look_for_reports();
        self.chunk_header(bytes.len())?;
        let deadline = transport::deadline(self.stall());
        transport::write_all(self.stream()?, bytes, deadline).map_err(|e| self.write_failed(e))?;
        self.count(bytes.len())
    }

    fn send_map(&mut self, map: &SourceMap, offset: usize, len: usize) -> Result<(), DestFailure> {
        self.look_for_reports();
        self.chunk_header(len)?;
        let mut done = 0;
        while done < len {
            let sock = self.stream()?.as_fd();
            match map.write_to(sock, offset + done, len - done) {
                Ok(0) => return Err(DestFailure::SourceShrank),
                Ok(n) => {
                    done += n;
                    self.count(n)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let stream = self.stream()?;
                    transport::wait(
                        stream,
                        Readiness::Writable,
                        transport::deadline(self.stall()),
                    )
                    .map_err(|e| self.write_failed(e))?;
                }
                Err(e) => return Err(self.write_failed(e)),
            }
        }
        Ok(())
    }

    /// The trailer (and, keyed, the seal), then the acknowledgement.
    fn end(&mut self, digest: &Digest) -> Result<Delivered, DestFailure> {
        let Some(session) = &mut self.session else {
            self.stream()?
                .shutdown(Shutdown::Write)
                .map_err(|source| DestFailure::Io {
                    op: "shutdown",
                    source,
                })?;
            return Ok(Delivered::Sent);
        };
        let announced = self
            .announce
            .and_then(OnceLock::get)
            .unwrap_or(&digest.bytes);
        let end = session.finish(announced)?;
        self.write_framing(&end)?;
        let verdict = self.read_ack(digest);
        // Closed once the acknowledgement is read (or given up on): a relayed receiver waiting
        // to learn whether it arrived (docs/PROTOCOL.md, "Resuming") learns it from the close.
        // A relay holds a confirmed one until its own parent has read its acknowledgement.
        let stream = self.stream.take();
        if let (Ok(_), Some(held), Some(s)) = (&verdict, &self.holding, stream)
            && sys::reset_on_close(s.as_fd()).is_ok()
        {
            lock(held).push(s);
        }
        verdict
    }
}
