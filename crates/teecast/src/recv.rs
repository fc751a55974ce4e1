//! Receiving: splice each stream from its socket into a temporary file, check the digest against
//! the sender's trailer, fsync, rename, and acknowledge. Anything malformed closes that connection
//! only, leaves no file behind, and the receiver goes on serving.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rustix::pipe::SpliceFlags;

use crate::auth::{self, Key};
use crate::digest::{Digest, DigestAlgorithm, Hasher, to_hex};
use crate::route::Route;
use crate::store::{AtomicFile, is_temporary_name};
use crate::transport;
use std::fs::File;
use teecast_proto::session::{Mismatch, Next, ReceiverSession};
use teecast_proto::wire::{self, AckStatus, HostReport, WireError};
use teecast_sys::{self as sys, AlignedBuf, Pipe};

mod relay;

/// Where received streams go.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Target {
    /// Every stream to this one path (one at a time). A regular file (or a new name) is written
    /// under a temporary and published only when verified; a device node or a FIFO is written
    /// into directly, never replaced, and the verdict says whether what went in was right.
    File(PathBuf),
    /// Each stream into this directory under its announced name.
    Dir(PathBuf),
    /// Every stream to standard output (one at a time), as it arrives: for a consumer such as
    /// `zfs receive`. What went out cannot be taken back; the verdict says whether it was right.
    Stdout,
}

/// How to receive. Build it with [`RecvOptions::new`] and the setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecvOptions {
    /// Where streams are stored.
    pub target: Target,
    /// Accept a bare stream (no framing) until EOF.
    pub raw: bool,
    /// The digest to compute in raw mode (framed streams announce theirs).
    pub digest: DigestAlgorithm,
    /// Give up on a connection that sends nothing for this long.
    pub stall_timeout: Duration,
    /// Connections served at once in directory mode; more wait to be accepted.
    pub max_connections: usize,
    /// The pre-shared key: every sender must prove it, and every stream is kept only when its
    /// seal verifies.
    pub key: Option<Key>,
    /// Refuse a stream whose file exists (default: replace it atomically).
    pub no_clobber: bool,
    /// How long a connection may take to send its hello, proof and header, in all.
    pub header_timeout: Duration,
    /// Connections served at once from one address, in directory mode.
    pub max_per_peer: usize,
    /// Forward streams to the hosts their header names below this one (a relay).
    pub relay: bool,
    /// As a relay, forward unauthenticated streams (no key) beyond loopback too.
    pub forward_unauthenticated: bool,
    /// For a relay that stores no file (standard output, a device): the bytes kept to replay
    /// to the children of a child that fails ([`crate::adopt::DEFAULT_RING`]); one storing a
    /// file replays from it.
    pub ring: usize,
}

impl RecvOptions {
    /// Options for `target` with the defaults (framed, XXH3-128 in raw mode, 30 s stall timeout).
    pub fn new(target: Target) -> RecvOptions {
        RecvOptions {
            target,
            raw: false,
            digest: DigestAlgorithm::default(),
            stall_timeout: Duration::from_secs(30),
            max_connections: 64,
            key: None,
            no_clobber: false,
            header_timeout: Duration::from_secs(10),
            max_per_peer: 8,
            relay: false,
            forward_unauthenticated: false,
            ring: crate::adopt::DEFAULT_RING,
        }
    }

    /// Sets the size of a relay's replay ring (see [`RecvOptions::ring`]).
    pub fn ring(mut self, bytes: usize) -> Self {
        self.ring = bytes;
        self
    }

    /// Sets whether streams are forwarded to the hosts their header names below this one.
    pub fn relay(mut self, relay: bool) -> Self {
        self.relay = relay;
        self
    }

    /// Sets whether a relay forwards unauthenticated streams beyond loopback.
    pub fn forward_unauthenticated(mut self, yes: bool) -> Self {
        self.forward_unauthenticated = yes;
        self
    }

    /// Sets how long a connection may take to open its session (hello, proof, header).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets how many connections from one address are served at once (at least one).
    pub fn max_per_peer(mut self, n: usize) -> Self {
        self.max_per_peer = n.max(1);
        self
    }

    /// Refuses streams whose file exists instead of replacing it.
    pub fn no_clobber(mut self, no_clobber: bool) -> Self {
        self.no_clobber = no_clobber;
        self
    }

    /// Requires every sender to prove `key` (see [`RecvOptions::key`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Accepts bare streams (no framing) until EOF.
    pub fn raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }

    /// Sets the digest computed in raw mode.
    pub fn digest(mut self, digest: DigestAlgorithm) -> Self {
        self.digest = digest;
        self
    }

    /// Sets the stall timeout.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Sets how many connections are served at once in directory mode (at least one).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// A stream stored and verified.
#[derive(Clone, Debug)]
pub struct Received {
    /// The sender.
    pub peer: Option<SocketAddr>,
    /// Where the stream now is.
    pub path: PathBuf,
    /// Payload bytes.
    pub bytes: u64,
    /// The digest of what was stored.
    pub digest: Digest,
}

/// Why a stream was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer's bytes broke the protocol.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The connection ended before the stream did.
    #[error(
        "stream cut short after {got} payload bytes: the connection closed during the {during}"
    )]
    Truncated {
        /// Payload bytes received.
        got: u64,
        /// What was being read: "header", "payload", "chunk header", "trailer".
        during: &'static str,
    },
    /// The sender's trailer disagrees with what arrived.
    #[error(
        "digest mismatch: the sender announced {}, the received bytes hash to {}; file discarded",
        to_hex(announced),
        to_hex(received)
    )]
    DigestMismatch {
        /// The digest in the trailer.
        announced: Vec<u8>,
        /// The digest of the received bytes.
        received: Vec<u8>,
    },
    /// The trailer's length disagrees with what arrived.
    #[error(
        "length mismatch: the sender announced {announced} bytes, {received} arrived; file discarded"
    )]
    LengthMismatch {
        /// Length in the header or trailer.
        announced: u64,
        /// Bytes received.
        received: u64,
    },
    /// The stream's seal does not verify under the session's key: changed, replayed, or taken
    /// from another session.
    #[error(
        "the stream's seal does not verify (changed, replayed or from another session); file discarded"
    )]
    Unsealed,
    /// The announced length does not fit in the space left where the file would go.
    #[error("no space for the file: {needed} bytes announced, {available} available")]
    NoSpace {
        /// The announced length.
        needed: u64,
        /// The space left for this user on the filesystem.
        available: u64,
    },
    /// A raw receiver was sent a teecast session (the sender needs `raw`, or the receiver not).
    #[error(
        "this is a teecast session, not a bare stream: the receiver is in raw mode and the sender is not"
    )]
    FramedIntoRaw,
    /// The peer already holds as many streams as one address may.
    #[error("too many streams from this address at once; closed")]
    Busy,
    /// The connection had not sent its header when its place was needed for a newer one.
    #[error("closed before its header to make room for newer connections")]
    Displaced,
    /// The stream is to be forwarded to other hosts, and this receiver does not relay.
    #[error("this receiver does not forward streams to other hosts")]
    NotARelay,
    /// The stream is to be forwarded beyond loopback without authentication.
    #[error("this relay forwards an unauthenticated stream (no key) only among loopback addresses")]
    UnauthenticatedForward,
    /// The receiver takes one stream (`once`) and another passed its header first.
    #[error("this receiver takes one stream and is receiving another")]
    Taken,
    /// The connection resumed a relayed stream being received here; that stream goes on over
    /// it (not an error of the stream's).
    #[error("handed over to the stream it resumes")]
    HandedOver,
    /// The announced name looks like one of teecast's temporary files.
    #[error("the name looks like a teecast temporary file; refused")]
    ReservedName,
    /// A file of that name exists and the receiver does not replace files (`no_clobber`).
    #[error("a file of that name exists here and is not replaced")]
    Exists,
    /// The sender went quiet, or did not finish a message in time.
    #[error("no data for {:.1} s; connection dropped", .0.as_secs_f64())]
    Stalled(Duration),
    /// The stream cannot be stored here at all (no such directory, no permission).
    #[error("cannot create a file beside {}: {source}", path.display())]
    CannotCreate {
        /// The final name the stream was bound for.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A local failure while storing (disk full).
    #[error("{op}: {source}")]
    Io {
        /// What was being done: "receiving", "writing the file", "storing the file".
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl RecvError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> RecvError {
        move |source| RecvError::Io { op, source }
    }

    /// A failed framing read during `during`, after `got` payload bytes.
    fn reading(
        during: &'static str,
        got: u64,
        stall: Duration,
    ) -> impl FnOnce(io::Error) -> RecvError {
        move |e| match e.kind() {
            // A reset is a sender that vanished (closing with unread data resets), as is EOF.
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                RecvError::Truncated { got, during }
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RecvError::Stalled(stall),
            _ => RecvError::Io {
                op: "receiving",
                source: e,
            },
        }
    }

    /// What the sender is told: the error's text, without this machine's paths.
    fn peer_message(&self) -> String {
        match self {
            RecvError::CannotCreate { source, .. } => {
                format!("cannot create the file here: {source}")
            }
            other => other.to_string(),
        }
    }

    fn ack_status(&self) -> AckStatus {
        match self {
            RecvError::Wire(_)
            | RecvError::CannotCreate { .. }
            | RecvError::ReservedName
            | RecvError::Busy
            | RecvError::Displaced
            | RecvError::Taken
            | RecvError::HandedOver
            | RecvError::NotARelay
            | RecvError::UnauthenticatedForward
            | RecvError::FramedIntoRaw
            | RecvError::Exists => AckStatus::Rejected,
            RecvError::Truncated { .. } | RecvError::Stalled(_) => AckStatus::Truncated,
            RecvError::DigestMismatch { .. } | RecvError::Unsealed => AckStatus::DigestMismatch,
            RecvError::LengthMismatch { .. } => AckStatus::LengthMismatch,
            RecvError::Io { .. } | RecvError::NoSpace { .. } => AckStatus::IoError,
        }
    }

    /// A short, stable name for machines: `protocol`, `truncated`, `digest-mismatch`, `unsealed`,
    /// `reserved-name`, `exists`, `no-space`,
    /// `length-mismatch`, `stalled`, `cannot-create` or `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            RecvError::Wire(_) => "protocol",
            RecvError::Truncated { .. } => "truncated",
            RecvError::DigestMismatch { .. } => "digest-mismatch",
            RecvError::Unsealed => "unsealed",
            RecvError::ReservedName => "reserved-name",
            RecvError::Busy => "busy",
            RecvError::Displaced => "displaced",
            RecvError::Taken => "taken",
            RecvError::HandedOver => "handed-over",
            RecvError::NotARelay => "not-a-relay",
            RecvError::UnauthenticatedForward => "unauthenticated-forward",
            RecvError::NoSpace { .. } => "no-space",
            RecvError::FramedIntoRaw => "framed-into-raw",
            RecvError::Exists => "exists",
            RecvError::LengthMismatch { .. } => "length-mismatch",
            RecvError::Stalled(_) => "stalled",
            RecvError::CannotCreate { .. } => "cannot-create",
            RecvError::Io { .. } => "io",
        }
    }
}

/// What [`serve`] tells about a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Its stream passed its header and is being stored (a raw stream: it began).
    Opened {
        /// The announced name (the peer's text: escape it before showing it).
        name: &'a str,
        /// The announced length, when known.
        length: Option<u64>,
    },
    /// What became of it; once per connection, except one that resumed another's stream.
    Done(&'a Result<Received, RecvError>),
    /// It resumed a relayed stream this receiver was getting from a parent that failed: the
    /// stream goes on over it, and its `Done` comes from the connection that began it.
    Resumed {
        /// The announced name (the peer's text: escape it before showing it).
        name: &'a str,
    },
}

/// Called with the peer and each [`Event`] of its connection.
pub type EventHandler = dyn Fn(Option<SocketAddr>, Event<'_>) + Sync;

/// Accepts connections on `listener` and stores each stream, telling `on_event` of each.
///
/// Every connection is served on its own thread, up to `max_connections` at once and
/// `max_per_peer` from one address. A connection that has not yet sent its header (it has
/// proved nothing) gives its place up to a newer one when the receiver or its address is full,
/// oldest first, and is closed at `header_timeout` in any case: idle or dripping peers cannot
/// keep a sender out, whose header comes one round trip after it connects. A connection past
/// its header keeps its place; one more from a full address is closed at once.
///
/// Into a [`Target::File`] or [`Target::Stdout`] one stream is written at a time; the others
/// wait for it after their header. With `once`, returns after the first stream that passed its
/// header (a port scan or a peer without the key does not use it up) with whether it was stored;
/// streams that pass theirs meanwhile are refused. Otherwise serves until accepting fails.
pub fn serve(
    listener: &TcpListener,
    options: &RecvOptions,
    once: bool,
    on_event: &EventHandler,
) -> io::Result<bool> {
    sys::ignore_sigpipe();
    let wake = Pipe::with_size(4096)?;
    let gate = Gate::new(options, once, File::from(wake.write));
    let streams = relay::Streams::default();
    listener.set_nonblocking(true)?;
    let listening = [listener.as_fd(), wake.read.as_fd()];
    std::thread::scope(|scope| {
        let served = loop {
            if let Some(stored) = gate.finished() {
                break Ok(stored);
            }
            if let Err(e) = sys::wait_any(&listening, sys::Readiness::Readable, None) {
                break Err(e);
            }
            let (stream, peer) = match listener.accept() {
                Ok(c) => c,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) || is_transient_accept_error(&e) =>
                {
                    continue;
                }
                Err(e) => break Err(e),
            };
            let Some(ticket) = gate.enter(&stream, peer.ip()) else {
                drop(stream);
                on_event(Some(peer), Event::Done(&Err(RecvError::Busy)));
                continue;
            };
            let (gate, streams) = (&gate, &streams);
            scope.spawn(move || {
                let mut target = None;
                let mut resumed = None;
                let admit = &mut |name: &str, length, resuming| {
                    if resuming {
                        gate.settle(ticket);
                        resumed = Some(name.to_string());
                        return Ok(());
                    }
                    target = gate.open(ticket)?;
                    on_event(Some(peer), Event::Opened { name, length });
                    Ok(())
                };
                let result = receive_admitted(stream, options, admit, streams);
                drop(target);
                let result = gate.leave(ticket, result);
                match (&result, resumed) {
                    (Err(RecvError::HandedOver), Some(name)) => {
                        on_event(Some(peer), Event::Resumed { name: &name });
                    }
                    _ => on_event(Some(peer), Event::Done(&result)),
                }
            });
        };
        // Those still before their header are not waited for.
        gate.close_opening();
        served
    })
}

/// Who is being served: the places of [`serve`], the one stream of `once`, the one target.
struct Gate {
    max_total: usize,
    max_per_peer: usize,
    once: bool,
    /// Set for a target that takes one stream at a time (a file, standard output).
    target: Option<Mutex<()>>,
    state: Mutex<GateState>,
    freed: Condvar,
    /// Written to when `once`'s stream is done, to wake the accepting thread.
    wake: File,
}

#[derive(Default)]
struct GateState {
    next: u64,
    /// Every connection being served, oldest first.
    live: Vec<Place>,
    /// With `once`: the connection whose stream is the one, once one passed its header.
    the_one: Option<u64>,
    /// With `once`: whether that stream was stored, once it is done.
    outcome: Option<bool>,
}

/// One connection's place in the [`Gate`].
struct Place {
    id: u64,
    ip: IpAddr,
    /// Until its header: a handle to close it by, should its place be needed.
    opening: Option<TcpStream>,
}

/// A connection's claim to its place, by which it is found in the [`Gate`].
#[derive(Clone, Copy)]
struct Ticket(u64);

impl Gate {
    fn new(options: &RecvOptions, once: bool, wake: File) -> Gate {
        Gate {
            max_total: options.max_connections.max(1),
            max_per_peer: options.max_per_peer.max(1),
            once,
            target: (!matches!(options.target, Target::Dir(_))).then(|| Mutex::new(())),
            state: Mutex::new(GateState::default()),
            freed: Condvar::new(),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection from `ip`: taken from the oldest connection still before its
    /// header where the address or the receiver is full; waits while every place is held by a
    /// stream; `None` when the address holds all its places with streams.
    fn enter(&self, stream: &TcpStream, ip: IpAddr) -> Option<Ticket> {
        let mut state = self.lock();
        loop {
            if state.live.iter().filter(|p| p.ip == ip).count() >= self.max_per_peer {
                let oldest = state
                    .live
                    .iter()
                    .position(|p| p.ip == ip && p.opening.is_some())?;
                state.displace(oldest);
            }
            if state.live.len() < self.max_total {
                break;
            }
            match state.live.iter().position(|p| p.opening.is_some()) {
                Some(oldest) => state.displace(oldest),
                None => state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner()),
            }
        }
        let id = state.next;
        state.next += 1;
        state.live.push(Place {
            id,
            ip,
            // Without a second handle the connection cannot be displaced, only time out.
            opening: stream.try_clone().ok(),
        });
        Some(Ticket(id))
    }

    /// The connection of `ticket` passed its header: it keeps its place, becomes `once`'s one
    /// stream (or is refused: there is one already) and waits for the target.
    fn open(&self, ticket: Ticket) -> Result<Option<std::sync::MutexGuard<'_, ()>>, RecvError> {
        {
            let mut state = self.lock();
            let place = state
                .live
                .iter_mut()
                .find(|p| p.id == ticket.0)
                .ok_or(RecvError::Displaced)?;
            place.opening = None;
            if self.once {
                if state.the_one.is_some() {
                    return Err(RecvError::Taken);
                }
                state.the_one = Some(ticket.0);
            }
        }
        Ok(self
            .target
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// The connection of `ticket` resumes a stream already served here: it can no longer be
    /// displaced, and is neither a new stream nor waits for the target.
    fn settle(&self, ticket: Ticket) {
        if let Some(place) = self.lock().live.iter_mut().find(|p| p.id == ticket.0) {
            place.opening = None;
        }
    }

    /// The connection of `ticket` is done with `result`: frees its place (a connection that
    /// lost its place is told so) and, for `once`'s stream, ends the serving.
    fn leave(
        &self,
        ticket: Ticket,
        result: Result<Received, RecvError>,
    ) -> Result<Received, RecvError> {
        let mut state = self.lock();
        let Some(i) = state.live.iter().position(|p| p.id == ticket.0) else {
            // Displaced before its header: whatever the read said, this is why it ended.
            return result.map_err(|_| RecvError::Displaced);
        };
        state.live.remove(i);
        if state.the_one == Some(ticket.0) {
            state.outcome = Some(result.is_ok());
            // The accepting thread polls this pipe; a full pipe has already woken it.
            let _ = (&self.wake).write(b"!");
        }
        self.freed.notify_one();
        result
    }

    /// With `once`: whether its stream was stored, once it is done.
    fn finished(&self) -> Option<bool> {
        self.lock().outcome
    }

    /// Closes every connection still before its header.
    fn close_opening(&self) {
        let mut state = self.lock();
        while let Some(i) = state.live.iter().position(|p| p.opening.is_some()) {
            state.displace(i);
        }
    }
}

impl GateState {
    /// Takes the place of the connection at `i` and closes it; its thread ends at its next
    /// read.
    fn displace(&mut self, i: usize) {
        let place = self.live.remove(i);
        if let Some(s) = place.opening {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Receives one stream from `stream` and stores it; answers the sender with an acknowledgement
/// (framed mode) when the header could be read.
pub fn receive(stream: TcpStream, options: &RecvOptions) -> Result<Received, RecvError> {
    receive_admitted(
        stream,
        options,
        &mut |_, _, _| Ok(()),
        &relay::Streams::default(),
    )
}

/// Asked whether a stream that passed its header (name, length, whether it resumes one being
/// received here) may go on.
type Admit<'a> = dyn FnMut(&str, Option<u64>, bool) -> Result<(), RecvError> + 'a;

/// [`receive`], asking `admit` once the stream has passed its header (at once for a raw one)
/// whether it may go on.
fn receive_admitted(
    stream: TcpStream,
    options: &RecvOptions,
    admit: &mut Admit<'_>,
    streams: &relay::Streams,
) -> Result<Received, RecvError> {
    let peer = stream.peer_addr().ok();
    stream
        .set_read_timeout(Some(options.stall_timeout))
        .map_err(RecvError::io("setting the read timeout"))?;
    if options.raw {
        return receive_raw(&stream, options, peer, admit);
    }
    let nonce = auth::nonce().map_err(|e| RecvError::Io {
        op: "getrandom",
        source: io::Error::other(e),
    })?;
    let mut conn = Conn {
        stream,
        session: ReceiverSession::new(options.key.clone(), nonce),
        options,
        peer,
        reports: Vec::new(),
        streams,
    };
    let result = receive_framed(&mut conn, admit);
    let Conn {
        stream,
        session,
        reports,
        ..
    } = conn;
    if session.header().is_none() || matches!(result, Err(RecvError::HandedOver)) {
        // No header, no answer: the peer does not speak the protocol, or did not prove the key
        // (its welcome told it what this side holds).
        return result;
    }
    let ack = match &result {
        Ok(r) => session.ack_with_reports(AckStatus::Ok, r.bytes, &r.digest.bytes, "", reports),
        Err(e) => session.ack_with_reports(e.ack_status(), 0, &[], &e.peer_message(), reports),
    };
    if let Err(RecvError::Wire(_)) = &result {
        // Malformed frames after the header: no answer to a peer that does not speak the
        // protocol (docs/PROTOCOL.md, "Malformed input").
        return result;
    }
    // The sender may already be gone; the outcome here stands either way.
    let _ = transport::write_all(&stream, &ack, Instant::now() + options.stall_timeout);
    if let Err(
        RecvError::Io { .. }
        | RecvError::CannotCreate { .. }
        | RecvError::Taken
        | RecvError::Displaced,
    ) = &result
    {
        // Refused mid-stream: let the acknowledgement reach the sender before the connection
        // closes. Closing with unread data would reset it, and a reset can overtake the answer.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        discard_input(&stream, REFUSAL_LINGER.min(options.stall_timeout));
    }
    result
}

/// How long a receiver that refused a stream keeps reading (and dropping) what still arrives.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Reads and drops input until EOF, an error, or `limit` has passed.
pub(super) fn discard_input(mut stream: &TcpStream, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn target_path(options: &RecvOptions, name: &str) -> Result<PathBuf, RecvError> {
    match &options.target {
        Target::File(p) => Ok(p.clone()),
        Target::Stdout => Ok(PathBuf::from("-")),
        Target::Dir(d) => {
            // The wire layer already refused '/', '..' and NUL; check again where it matters.
            wire::validate_name(name)?;
            if is_temporary_name(name) {
                return Err(RecvError::ReservedName);
            }
            Ok(d.join(name))
        }
    }
}

/// Drives `session` over `stream`: the header within one stall timeout of the connection, each
/// later frame (chunk header, trailer) within one of the payload before it, the payload into
/// the temporary file; then checks length and digest against the trailer and stores the file.
fn receive_framed(conn: &mut Conn<'_>, admit: &mut Admit<'_>) -> Result<Received, RecvError> {
    let (options, peer) = (conn.options, conn.peer);
    let stall = options.stall_timeout;
    // Hello, proof and header, all within the header timeout of the connection.
    let mut deadline = Instant::now() + options.header_timeout;
    let mut buf = Vec::new();
    let mut store: Option<(Store, Payload)> = None;
    loop {
        match conn.session.next() {
            Next::Framing(n) => {
                let during = match (conn.session.header(), &store) {
                    (None, _) => "header",
                    (Some(h), _) if h.length.is_none() => "chunk header or trailer",
                    _ => "trailer",
                };
                buf.resize(n, 0);
                let limit = match conn.session.header() {
                    None => options.header_timeout,
                    Some(_) => stall,
                };
                transport::read_exact(&conn.stream, &mut buf, deadline)
                    .map_err(RecvError::reading(during, conn.session.received(), limit))?;
                let taken = conn.session.framing(&buf);
                if let Some(reply) = conn.session.take_reply() {
                    transport::write_all(&conn.stream, &reply, deadline)
                        .map_err(RecvError::reading("welcome", 0, stall))?;
                }
                taken?;
                if store.is_none() && conn.session.header().is_some_and(|h| h.tree.is_some()) {
                    return receive_relayed(conn, admit);
                }
                if conn.session.header().is_some() {
                    // After the header each frame (a chunk header, a keepalive, the trailer) is
                    // due within one stall timeout of the one before.
                    deadline = Instant::now() + stall;
                }
                if store.is_none()
                    && let Some(header) = conn.session.header()
                {
                    let path = target_path(options, &header.name)?;
                    admit(&header.name, header.length, false)?;
                    store = Some((
                        open_store(options, &path, header.length)?,
                        Payload::new(header.digest, options)?,
                    ));
                }
            }
            Next::Payload(n) => {
                let Some((file, payload)) = &mut store else {
                    unreachable!("the session asks for payload only after its header");
                };
                let before = payload.bytes;
                payload.copy(conn.stream.as_fd(), file.fd(), Some(n))?;
                conn.session.payload(payload.bytes - before);
                deadline = Instant::now() + stall;
            }
            Next::Verify | Next::Resume => break,
        }
    }
    let Some((file, payload)) = store else {
        unreachable!("the session verifies only after its header");
    };
    let bytes = payload.bytes;
    let digest = payload.finish();
    conn.session.verify(&digest.bytes).map_err(mismatch)?;
    commit(file, options, peer, bytes, digest)
}

/// [`receive_framed`] for a stream relayed along a tree, past its header: a resuming header
/// hands its connection to the stream it continues, if that is being received here (or starts
/// from nothing); the stream is stored and forwarded by [`relay::forward`].
fn receive_relayed(conn: &mut Conn<'_>, admit: &mut Admit<'_>) -> Result<Received, RecvError> {
    let Some(header) = conn.session.header().cloned() else {
        unreachable!("called past the header");
    };
    let options = conn.options;
    if conn.session.next() == Next::Resume {
        let handle = conn
            .stream
            .try_clone()
            .map_err(RecvError::io("duplicating the connection"))?;
        // Settled before it is handed over: its place can no longer be taken (and the
        // connection closed under the stream it joins).
        admit(&header.name, header.length, true)?;
        if conn.streams.offer(handle, conn.session.clone()).is_none() {
            return Err(RecvError::HandedOver);
        }
        // Nothing of it here: from the start, as a new stream (the answer comes first, so that
        // a refusal reaches the sender as an ack where it reads one).
        let reply = conn.session.resume_at(0).map_err(|e| RecvError::Io {
            op: "resuming",
            source: io::Error::other(e),
        })?;
        transport::write_all(&conn.stream, &reply, Instant::now() + options.stall_timeout)
            .map_err(RecvError::reading("resume", 0, options.stall_timeout))?;
        admit(&header.name, header.length, false)?;
    }
    let path = target_path(options, &header.name)?;
    if !header.tree.is_some_and(|t| t.resume) {
        admit(&header.name, header.length, false)?;
    }
    let Some(tree) = header.tree else {
        unreachable!("called for a stream with a tree");
    };
    let route = Route::resolve(&header.route, tree.fanout, usize::from(tree.position));
    if relay::children(&header).is_some() {
        relay::check(options, &route)?;
    }
    let store = open_store(options, &path, header.length);
    relay::forward(conn, &header, route, store)
}

/// A framed connection being served: its socket and session (which a parent resuming the stream
/// replaces with its own), and what serving it needs.
struct Conn<'a> {
    stream: TcpStream,
    session: ReceiverSession,
    options: &'a RecvOptions,
    peer: Option<SocketAddr>,
    /// For a relay: the outcome of every host below this one, for its acknowledgement.
    reports: Vec<HostReport>,
    streams: &'a relay::Streams,
}

/// The receiver's error for a stream that failed its checks after the trailer.
fn mismatch(m: Mismatch) -> RecvError {
    match m {
        Mismatch::Length {
            announced,
            received,
        } => RecvError::LengthMismatch {
            announced,
            received,
        },
        Mismatch::Digest {
            announced,
            received,
        } => RecvError::DigestMismatch {
            announced,
            received,
        },
        _ => RecvError::Unsealed,
    }
}

fn receive_raw(
    stream: &TcpStream,
    options: &RecvOptions,
    peer: Option<SocketAddr>,
    admit: &mut Admit<'_>,
) -> Result<Received, RecvError> {
    // Any bytes are a raw stream, so a connection opens one at once; a teecast session sent
    // here too, so that `once` ends with the error that names the mistake.
    let name = raw_name(peer);
    admit(&name, None, false)?;
    if opens_a_session(stream, options.stall_timeout)? {
        return Err(RecvError::FramedIntoRaw);
    }
    let path = match &options.target {
        Target::File(p) => p.clone(),
        Target::Stdout => PathBuf::from("-"),
        Target::Dir(d) => d.join(name),
    };
    let file = open_store(options, &path, None)?;
    let mut payload = Payload::new(options.digest, options)?;
    payload.copy(stream.as_fd(), file.fd(), None)?;
    let bytes = payload.bytes;
    let digest = payload.finish();
    commit(file, options, peer, bytes, digest)
}

/// Whether a bare stream opens the way a teecast sender opens a session (the hello's magic and
/// version), looking without taking: a framed sender sent to a raw receiver, which would
/// otherwise store the framing as data and leave the sender waiting for a welcome.
fn opens_a_session(stream: &TcpStream, stall: Duration) -> Result<bool, RecvError> {
    let mut opening = wire::MessageKind::Hello.magic().to_vec();
    opening.extend_from_slice(&wire::VERSION.to_be_bytes());
    let mut first = vec![0u8; opening.len()];
    let deadline = Instant::now() + stall;
    loop {
        let n = match stream.peek(&mut first) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(RecvError::Stalled(stall));
            }
            Err(e) => return Err(RecvError::io("receiving")(e)),
        };
        // Enough to tell, or the stream ended (a short stream is data like any other).
        if n == first.len() || n == 0 || !opening.starts_with(&first[..n]) {
            return Ok(n == first.len() && first == opening);
        }
        if Instant::now() >= deadline {
            return Err(RecvError::Stalled(stall));
        }
        // Fewer bytes than the opening, all matching it so far (rare: a peer dripping its first
        // bytes): the socket stays readable, so look again a moment later.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Where one stream is being written.
enum Store {
    /// A temporary with no name, published under `path` once verified.
    Atomic(AtomicFile),
    /// Straight into a device node, a FIFO or standard output: nothing to publish or undo.
    Direct { file: File, path: PathBuf },
}

impl Store {
    fn fd(&self) -> BorrowedFd<'_> {
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
fn open_store(
    options: &RecvOptions,
    path: &std::path::Path,
    length: Option<u64>,
) -> Result<Store, RecvError> {
    let cannot = |source| RecvError::CannotCreate {
        path: path.to_path_buf(),
        source,
    };
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
                && let Ok(st) = rustix::fs::fstatvfs(file.file())
            {
                let available = st.f_bavail.saturating_mul(st.f_frsize);
                if needed > available {
                    return Err(RecvError::NoSpace { needed, available });
                }
            }
            Ok(Store::Atomic(file))
        }
    }
}

/// Stores a verified stream: publishes a temporary under its final name, or flushes a device.
fn commit(
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
            Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(e),
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
    })
}

fn raw_name(peer: Option<SocketAddr>) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    match peer {
        Some(p) => format!("raw-{}-{}-{secs}", p.ip(), p.port()),
        None => format!("raw-{secs}"),
    }
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
struct Payload {
    /// `None` with a digest (the buffer path); the splice path's pipe otherwise.
    pipe: Option<Pipe>,
    hasher: Hasher,
    buf: AlignedBuf,
    bytes: u64,
    stall: Duration,
    writeback: Writeback,
}

/// Hands a file's bytes to writeback in steps of [`WRITEBACK_STEP`] as they are stored, on a
/// disk filesystem, so the final fsync has little left. Best effort: a failure only leaves the
/// work to the fsync before the commit, which reports any error that matters.
#[derive(Default)]
pub(crate) struct Writeback {
    /// Where it stands, once the first bytes came: `None` where there is none (tmpfs, a pipe, a
    /// device), else the payload bytes handed to it so far and the file offset where the
    /// payload starts.
    state: Option<Option<(u64, u64)>>,
}

impl Writeback {
    /// `file` now holds `stored` payload bytes.
    pub(crate) fn advance(&mut self, file: BorrowedFd<'_>, stored: u64) {
        let state = self
            .state
            .get_or_insert_with(|| writeback_start(file, stored));
        let Some((started, base)) = *state else {
            return;
        };
        if stored - started < WRITEBACK_STEP {
            return;
        }
        let end = stored - stored % WRITEBACK_STEP;
        let _ = sys::start_writeback(file, base + started, end - started);
        *state = Some((end, base));
    }
}

/// Bytes moved per call.
const RECEIVE_CHUNK: usize = 1024 * 1024;

/// On a disk filesystem, every this many bytes stored are handed to writeback.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

impl Payload {
    fn new(digest: DigestAlgorithm, options: &RecvOptions) -> Result<Payload, RecvError> {
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
        })
    }

    /// Moves `limit` bytes (or everything until EOF when `None`) from the socket to the file.
    fn copy(
        &mut self,
        sock: BorrowedFd<'_>,
        file: BorrowedFd<'_>,
        limit: Option<u64>,
    ) -> Result<(), RecvError> {
        let mut left = limit;
        loop {
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
            self.advance_writeback(file);
        }
    }

    /// After more bytes are in the file: widens a pipe at the first, and hands every full
    /// [`WRITEBACK_STEP`] to writeback.
    fn advance_writeback(&mut self, file: BorrowedFd<'_>) {
        if self.writeback.state.is_none() {
            widen_pipe(file);
        }
        self.writeback.advance(file, self.bytes);
    }

    /// Receives up to `want` bytes and stores them; 0 at the end of the stream. A socket that
    /// stays quiet for the stall timeout (its `SO_RCVTIMEO`) is `Stalled`.
    fn receive(
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
        match &self.pipe {
            Some(pipe) => {
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
            None => {
                let n = sys::read(sock, &mut self.buf[..want]).map_err(read_err)?;
                self.hasher.update(&self.buf[..n]);
                let mut done = 0;
                while done < n {
                    match sys::write(file, &self.buf[done..n]) {
                        Ok(0) => return Err(write_err(io::ErrorKind::WriteZero.into())),
                        Ok(m) => done += m,
                        Err(e) => return Err(write_err(e)),
                    }
                }
                Ok(n)
            }
        }
    }

    fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

/// Into a pipe (standard output into a consumer, a FIFO): asks for a pipe of [`RECEIVE_CHUNK`],
/// so that each piece received goes in with one write and the consumer reads it in large
/// pieces, rather than 64 KiB (the default) at a time. Best effort: a pipe that stays small is
/// only slower.
fn widen_pipe(file: BorrowedFd<'_>) {
    let fifo = rustix::fs::fstat(file).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
    });
    if fifo && rustix::pipe::fcntl_getpipe_size(file).is_ok_and(|size| size < RECEIVE_CHUNK) {
        let _ = rustix::pipe::fcntl_setpipe_size(file, RECEIVE_CHUNK);
    }
}

/// Where writeback starts for `file`, which holds `stored` payload bytes so far: at the offset
/// where the payload began, for a regular file that is not on tmpfs; `None` otherwise (memory
/// has no writeback; a pipe or a device has no ranges).
fn writeback_start(file: BorrowedFd<'_>, stored: u64) -> Option<(u64, u64)> {
    let regular = rustix::fs::fstat(file)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
    if !regular || sys::is_tmpfs(file).unwrap_or(true) {
        return None;
    }
    let now = rustix::fs::seek(file, rustix::fs::SeekFrom::Current(0)).ok()?;
    Some((0, now.checked_sub(stored)?))
}

#[cfg(test)]
#[path = "recv_payload_tests.rs"]
mod payload_tests;
