//! Sending: one source to many destinations, each framed by a [`SenderSession`] (or raw), each
//! confirmed by the receiver's acknowledgement.
//!
//! [`Transfer::new`] checks the request and resolves the data path once; its [`Progress`] can be
//! watched from another thread while [`Transfer::run`] sends. [`send`] does both.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::pipe::SpliceFlags;
use teecast_proto::session::{OrderError, SenderSession, Verdict};
use teecast_proto::wire::{self, AckStatus, Header, HostReport, Tree, WireError};
use teecast_sys::{self as sys, FileMap, Readiness};

use crate::adopt::{self, Adopter, Hop, HopOutcome, Replay, Ring, RingSink};
use crate::auth::{self, Key};
use crate::digest::{Digest, DigestAlgorithm};
use crate::engine::{
    self, Abandoned, CaptureError, Consumer, EngineError, FanoutConfig, Unsupported,
};
use crate::route::Route;
use crate::source::Source;
use crate::strategy::Strategy;
use crate::transport::{self, ConnectError, ReadError};

/// How to send. Build it with [`SendOptions::default`] and the setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SendOptions {
    /// The name announced to receivers (default: the source's file name).
    pub name: Option<String>,
    /// Send bare bytes, no framing and no acknowledgement.
    pub raw: bool,
    /// Drop a destination that accepts no data for this long (also bounds the wait for its
    /// acknowledgement).
    pub stall_timeout: Duration,
    /// Give up on a destination that does not accept the connection within this long.
    pub connect_timeout: Duration,
    /// The data path, the digest, the capture and the engine's sizes.
    pub fanout: FanoutConfig,
    /// The pre-shared key: both ends prove it and every stream and acknowledgement is sealed
    /// under a key of its session. Needs a cryptographic digest (blake3 or sha256).
    pub key: Option<Key>,
    /// Relay the stream along a tree over the destinations, in the order given, with this
    /// many children per host (1: a chain); `None` sends to every destination directly.
    pub tree: Option<u8>,
    /// In a tree: the bytes kept to replay to the children of a host that fails
    /// ([`adopt::DEFAULT_RING`]).
    pub ring: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            name: None,
            raw: false,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            fanout: FanoutConfig::default(),
            key: None,
            tree: None,
            ring: adopt::DEFAULT_RING,
        }
    }
}

impl SendOptions {
    /// Sets the data path.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.fanout.strategy = strategy;
        self
    }
    /// Sets the digest announced and checked.
    pub fn digest(mut self, digest: DigestAlgorithm) -> Self {
        self.fanout.digest = digest;
        self
    }
    /// Sets the name announced.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Sends bare bytes (no framing, no acknowledgement).
    pub fn raw(mut self, raw: bool) -> Self {
        self.raw = raw;
        self
    }
    /// Also writes exactly the bytes sent to `path`.
    pub fn capture(mut self, path: impl Into<PathBuf>) -> Self {
        self.fanout.capture = Some(path.into());
        self
    }
    /// Sets the stall timeout.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Authenticates with `key` (see [`SendOptions::key`]).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }
    /// Relays the stream along a tree with `fanout` children per host (1: a chain).
    pub fn tree(mut self, fanout: u8) -> Self {
        self.tree = Some(fanout);
        self
    }
    /// Sets the size of the replay ring (see [`SendOptions::ring`]).
    pub fn ring(mut self, bytes: usize) -> Self {
        self.ring = bytes;
        self
    }
    /// Sets the engine's settings (path, digest, capture and sizes together).
    pub fn fanout(mut self, fanout: FanoutConfig) -> Self {
        self.fanout = fanout;
        self
    }
}

/// What a destination that has everything reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// The receiver acknowledged the digest; its own digest of what it stored.
    Confirmed {
        /// The receiver's digest.
        receiver_digest: Vec<u8>,
    },
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
    /// The receiver closed the connection without answering the hello: a raw receiver, or not
    /// teecast at all.
    #[error(
        "the receiver closed the connection without answering the hello (a raw receiver, or not teecast?)"
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

/// One destination's outcome.
#[derive(Debug)]
pub struct DestReport {
    /// The address as given.
    pub address: String,
    /// The relay it was reached through (`None`: sent to directly).
    pub parent: Option<String>,
    /// What happened.
    pub outcome: Result<Delivered, DestFailure>,
    /// Payload bytes written to it.
    pub bytes: u64,
    /// From the start of the transfer to the outcome.
    pub elapsed: Duration,
    /// How it was served, when it is worth saying (adopted after its relay failed: from where,
    /// and from which byte). Peer text: escape it before showing it.
    pub note: Option<String>,
}

impl DestReport {
    /// True when the destination has everything (confirmed, or fully sent in raw mode).
    pub fn is_ok(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Live counters of a transfer, for progress displays: made by [`Transfer::new`], one per
/// destination.
#[derive(Debug)]
pub struct Progress {
    sent: Vec<AtomicU64>,
    failed: Vec<AtomicBool>,
    /// What each relay reported of the hosts below it.
    reports: Vec<Mutex<Vec<HostReport>>>,
}

impl Progress {
    pub(crate) fn new(destinations: usize) -> Progress {
        Progress {
            sent: (0..destinations).map(|_| AtomicU64::new(0)).collect(),
            failed: (0..destinations).map(|_| AtomicBool::new(false)).collect(),
            reports: (0..destinations).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Takes what destination `destination` (a relay) reported of the hosts below it.
    pub(crate) fn take_reports(&self, destination: usize) -> Vec<HostReport> {
        self.reports.get(destination).map_or_else(Vec::new, |r| {
            std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner()))
        })
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

/// Why a send failed as a whole, or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The engine could not move the stream (source, pipes, every destination, the capture).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The request cannot be served: a path the source or options do not allow.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// The announced name is not valid on the wire.
    #[error("cannot announce this name: {0}")]
    Name(#[source] WireError),
    /// The source's file name is not UTF-8, and no name to announce was given.
    #[error("the source's file name is not UTF-8, so it cannot be announced as it is")]
    NameNotUtf8,
    /// A keyed send with a digest that does not resist deliberate collisions.
    #[error("a keyed send needs a cryptographic digest (blake3 or sha256), not {0}")]
    WeakDigest(DigestAlgorithm),
    /// No destination was given.
    #[error("no destination given")]
    NoDestinations,
    /// A relay tree that cannot be built: no fan-out, raw mode, or too many hosts.
    #[error("cannot relay: {0}")]
    Tree(&'static str),
}

impl SendError {
    /// A short, stable name for machines: the engine's kinds, or `unsupported`, `name`,
    /// `no-destinations`.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Engine(e) => e.kind(),
            SendError::Unsupported(_) => "unsupported",
            SendError::Name(_) | SendError::NameNotUtf8 => "name",
            SendError::WeakDigest(_) => "weak-digest",
            SendError::NoDestinations => "no-destinations",
            SendError::Tree(_) => "tree",
        }
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
    pub capture: Option<(PathBuf, Result<(), CaptureError>)>,
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

/// A send, checked and ready to run.
#[derive(Debug)]
pub struct Transfer<'a> {
    source: &'a Source,
    /// Every host, in order: in a tree, the route.
    destinations: Vec<String>,
    /// The positions (from 1) of the hosts sent to directly: all, or the tree's first level.
    direct: Vec<usize>,
    options: SendOptions,
    header: Option<Header>,
    name: String,
    progress: Arc<Progress>,
}

impl<'a> Transfer<'a> {
    /// Checks the request — the name, the data path for this source and these destinations,
    /// the engine's sizes — and resolves `auto` to a concrete path, before anything connects.
    pub fn new(
        source: &'a Source,
        destinations: &[String],
        options: &SendOptions,
    ) -> Result<Transfer<'a>, SendError> {
        if destinations.is_empty() {
            return Err(SendError::NoDestinations);
        }
        let mut options = options.clone();
        let (direct, route): (Vec<usize>, Vec<String>) = match options.tree {
            None => ((1..=destinations.len()).collect(), Vec::new()),
            Some(0) => return Err(SendError::Tree("a tree needs at least one child per host")),
            Some(_) if options.raw => {
                return Err(SendError::Tree(
                    "a raw stream has no header to carry the route",
                ));
            }
            Some(_) if destinations.len() > wire::MAX_ROUTE_HOPS => {
                return Err(SendError::Tree("at most 128 hosts can be relayed to"));
            }
            Some(k) => (
                Tree::children_of(k, 0, destinations.len()).collect(),
                destinations.to_vec(),
            ),
        };
        // In a tree the replay ring is one more consumer.
        let consumers = direct.len()
            + usize::from(options.fanout.capture.is_some())
            + usize::from(options.tree.is_some());
        options.fanout.strategy = options.fanout.strategy.for_transfer(source, consumers);
        options.fanout.validate()?;
        engine::check(source, options.fanout.strategy, consumers)?;
        let name = options
            .name
            .clone()
            .or_else(|| source.default_name())
            .ok_or(SendError::NameNotUtf8)?;
        let transfer = match options.tree {
            Some(_) => transfer_id()?,
            None => [0; wire::TRANSFER_ID_LEN],
        };
        let header = (!options.raw).then(|| Header {
            name: name.clone(),
            length: source.len(),
            digest: options.fanout.digest,
            route,
            tree: options.tree.map(|fanout| Tree {
                fanout,
                position: 1,
                transfer,
                resume: false,
            }),
        });
        if let Some(h) = &header {
            h.encode().map_err(SendError::Name)?;
        }
        let digest = options.fanout.digest;
        if options.key.is_some()
            && !matches!(digest, DigestAlgorithm::Blake3 | DigestAlgorithm::Sha256)
        {
            return Err(SendError::WeakDigest(digest));
        }
        Ok(Transfer {
            source,
            destinations: destinations.to_vec(),
            progress: Arc::new(Progress::new(direct.len())),
            direct,
            options,
            header,
            name,
        })
    }

    /// The counters of this transfer, to watch while it runs: one per destination sent to
    /// directly ([`Transfer::direct`]).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The destinations sent to directly, in the order of [`Transfer::progress`]: all of them,
    /// or in a tree the first level.
    pub fn direct(&self) -> Vec<String> {
        self.direct
            .iter()
            .map(|&p| self.destinations[p - 1].clone())
            .collect()
    }

    /// The concrete data path.
    pub fn strategy(&self) -> Strategy {
        self.options.fanout.strategy
    }

    /// Sends, and reports every destination.
    pub fn run(self) -> SendReport {
        let started = Instant::now();
        let hosts = self.destinations.len();
        // In a tree every name is resolved once, before the first connection, and only those
        // addresses are used (by the first level and by any adoption below it).
        let route = self
            .options
            .tree
            .map(|fanout| Arc::new(Route::resolve(&self.destinations, fanout, 0)));
        let sinks: Vec<DestSink<'_>> = self
            .direct
            .iter()
            .enumerate()
            .map(|(index, &position)| {
                DestSink::new(
                    &self.destinations[position - 1],
                    index,
                    self.header.as_ref().map(|h| h.for_position(position)),
                    &self.options,
                    &self.progress,
                )
            })
            .zip(&self.direct)
            .map(|(sink, &position)| match &route {
                Some(route) => sink.via(route, position),
                None => sink,
            })
            .collect();
        let (fanout, adopted) = match (&route, &self.header) {
            (Some(route), Some(header)) => self.run_tree(sinks, header, route.clone()),
            _ => (
                engine::fan_out(self.source, sinks, &self.options.fanout),
                Vec::new(),
            ),
        };
        let elapsed = started.elapsed();
        let mut destinations: Vec<(usize, DestReport)> = Vec::with_capacity(hosts);
        let mut relayed = adopted;
        for (i, (&position, outcome)) in self.direct.iter().zip(fanout.consumers).enumerate() {
            if self.options.tree.is_some() {
                relayed.push(report_of(position, 0, &outcome, self.progress.of(i)));
                relayed.extend(self.progress.take_reports(i));
            }
            destinations.push((
                position,
                DestReport {
                    address: self.destinations[position - 1].clone(),
                    parent: None,
                    outcome,
                    bytes: self.progress.of(i),
                    elapsed,
                    note: None,
                },
            ));
        }
        let below = match self.options.tree {
            Some(fanout) => adopt::complete(fanout, hosts, 0, &relayed),
            None => Vec::new(),
        };
        for r in below
            .into_iter()
            .filter(|r| !self.direct.contains(&r.position.into()))
        {
            destinations.push((usize::from(r.position), self.relayed_report(r, elapsed)));
        }
        // In the order given.
        destinations.sort_by_key(|(position, _)| *position);
        let destinations = destinations.into_iter().map(|(_, d)| d).collect();
        let (digest, error) = match fanout.result {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(SendError::Engine(e))),
        };
        SendReport {
            source: self.source.display().to_string(),
            name: self.name,
            strategy: fanout.strategy.unwrap_or(self.options.fanout.strategy),
            digest,
            bytes: fanout.bytes,
            error,
            destinations,
            capture: self.options.fanout.capture.clone().zip(fanout.capture),
            source_grew: fanout.source_grew,
            elapsed: started.elapsed(),
        }
    }

    /// The fan-out of a tree: the first level's `sinks` and a ring to replay to the children
    /// of one that fails; with the reports of the hosts adopted.
    fn run_tree(
        &self,
        sinks: Vec<DestSink<'_>>,
        header: &Header,
        route: Arc<Route>,
    ) -> (
        engine::FanoutReport<Delivered, DestFailure>,
        Vec<HostReport>,
    ) {
        let ring = Arc::new(Ring::new(self.options.ring));
        let adopter = Adopter::new(
            Replay::Ring(ring.clone()),
            header,
            route,
            0,
            &self.options,
            None,
        );
        let mut hops: Vec<Hop<'_>> = sinks
            .into_iter()
            .zip(&self.direct)
            .map(|(sink, &position)| Hop::Child(Box::new(sink.adopting(&adopter, position))))
            .collect();
        hops.push(Hop::Ring(RingSink::new(ring)));
        let fanned = engine::fan_out(self.source, hops, &self.options.fanout);
        let mut consumers: Vec<Result<Delivered, DestFailure>> = fanned
            .consumers
            .into_iter()
            .map(|o| {
                o.map_err(adopt::HopError::into_dest)
                    .and_then(HopOutcome::delivered)
            })
            .collect();
        consumers.pop();
        let report = engine::FanoutReport {
            strategy: fanned.strategy,
            result: fanned.result,
            bytes: fanned.bytes,
            consumers,
            capture: fanned.capture,
            source_grew: fanned.source_grew,
        };
        (report, adopter.finish())
    }

    /// The report of a host reached through relays, from what its parent said of it.
    fn relayed_report(&self, r: HostReport, elapsed: Duration) -> DestReport {
        let position = usize::from(r.position);
        let parent = usize::from(r.parent)
            .checked_sub(1)
            .and_then(|p| self.destinations.get(p).cloned());
        let (outcome, note) = match r.status {
            AckStatus::Ok => (
                Ok(Delivered::Confirmed {
                    receiver_digest: Vec::new(),
                }),
                Some(r.message).filter(|m| !m.is_empty()),
            ),
            AckStatus::Unreached => (Err(DestFailure::Unreached(r.message)), None),
            status => (
                Err(DestFailure::Refused {
                    status,
                    message: r.message,
                    bytes: r.bytes,
                }),
                None,
            ),
        };
        DestReport {
            address: self.destinations[position - 1].clone(),
            parent,
            outcome,
            bytes: r.bytes,
            elapsed,
            note,
        }
    }
}

/// Sends `source` to every address in `destinations` (`HOST:PORT`): [`Transfer::new`], then
/// [`Transfer::run`]. A request that cannot start comes back as the report's error.
pub fn send(source: &Source, destinations: &[String], options: &SendOptions) -> SendReport {
    match Transfer::new(source, destinations, options) {
        Ok(t) => t.run(),
        Err(e) => SendReport {
            source: source.display().to_string(),
            name: options
                .name
                .clone()
                .or_else(|| source.default_name())
                .unwrap_or_default(),
            strategy: options.fanout.strategy,
            digest: None,
            bytes: 0,
            error: Some(e),
            destinations: Vec::new(),
            capture: None,
            source_grew: false,
            elapsed: Duration::ZERO,
        },
    }
}

/// A fresh random identifier for a relayed transfer.
fn transfer_id() -> Result<[u8; wire::TRANSFER_ID_LEN], SendError> {
    let nonce = auth::nonce().map_err(|e| {
        SendError::Engine(EngineError::Source {
            op: "getrandom",
            source: io::Error::other(e),
        })
    })?;
    let mut id = [0; wire::TRANSFER_ID_LEN];
    id.copy_from_slice(&nonce[..wire::TRANSFER_ID_LEN]);
    Ok(id)
}

/// Connects to the children of `me` in the tree over `route`, all at once; a child that cannot
/// be reached is reported unreached and its own children are tried in its place (adopted), and
/// so on down, a level at a time. Returns the connections made, by position, and the reports of
/// the hosts that were not.
pub(crate) fn connect_adopting(
    fanout: u8,
    route: &Route,
    me: usize,
    timeout: Duration,
) -> (Vec<(usize, TcpStream)>, Vec<HostReport>) {
    let position = |p: usize| u16::try_from(p).unwrap_or(u16::MAX);
    let mut served = Vec::new();
    let mut dead = Vec::new();
    let mut level: Vec<usize> = Tree::children_of(fanout, me, route.hosts()).collect();
    while !level.is_empty() {
        let tried: Vec<(usize, Result<TcpStream, ConnectError>)> = std::thread::scope(|s| {
            let started: Vec<_> = level
                .iter()
                .map(|&p| {
                    let connecting = std::thread::Builder::new()
                        .name("teecast-connect".into())
                        .spawn_scoped(s, move || route.connect(p, timeout));
                    (p, connecting)
                })
                .collect();
            started
                .into_iter()
                .map(|(p, connecting)| {
                    let failed = |why: String| ConnectError::Resolve {
                        address: route.name(p).to_string(),
                        source: io::Error::other(why),
                    };
                    let result = match connecting {
                        Ok(handle) => handle.join().unwrap_or_else(|_| {
                            Err(failed("the connecting thread panicked".into()))
                        }),
                        Err(e) => Err(failed(format!("cannot start a thread to connect: {e}"))),
                    };
                    (p, result)
                })
                .collect()
        });
        let mut below = Vec::new();
        for (p, result) in tried {
            match result {
                Ok(stream) => served.push((p, stream)),
                Err(e) => {
                    dead.push(HostReport {
                        position: position(p),
                        parent: position(me),
                        status: AckStatus::Unreached,
                        bytes: 0,
                        message: format!("{e}; the hosts below it were adopted by its parent"),
                    });
                    below.extend(Tree::children_of(fanout, p, route.hosts()));
                }
            }
        }
        level = below;
    }
    served.sort_by_key(|(p, _)| *p);
    (served, dead)
}

/// What a parent (at `parent`) reports of its child at `position`, given how the child's
/// stream went.
pub(crate) fn report_of(
    position: usize,
    parent: usize,
    outcome: &Result<Delivered, DestFailure>,
    bytes: u64,
) -> HostReport {
    let (status, message) = match outcome {
        Ok(_) => (AckStatus::Ok, String::new()),
        Err(DestFailure::Refused {
            status, message, ..
        }) => (*status, message.clone()),
        Err(e) => (AckStatus::Unreached, e.to_string()),
    };
    HostReport {
        position: u16::try_from(position).unwrap_or(u16::MAX),
        parent: u16::try_from(parent).unwrap_or(u16::MAX),
        status,
        bytes,
        message,
    }
}

/// The slowest storage rate, in bytes per second, the wait for an acknowledgement allows for
/// (the receiver syncs the whole file before it answers).
const FSYNC_RATE: f64 = 16.0 * 1024.0 * 1024.0;

/// A destination socket: drives a [`SenderSession`] (header, chunks, trailer, acknowledgement)
/// around the payload the engine hands it, or writes the bare payload in raw mode.
pub(crate) struct DestSink<'a> {
    address: &'a str,
    index: usize,
    stream: Option<TcpStream>,
    /// The session, or `None` in raw mode.
    session: Option<SenderSession>,
    header: Option<Header>,
    options: &'a SendOptions,
    progress: &'a Progress,
    /// For a relay: the digest its sender announced, passed on in the trailer (set once the
    /// sender's trailer has arrived, before the stream ends here).
    announce: Option<&'a OnceLock<Vec<u8>>>,
    /// How many levels of hosts answer through this one (1 + those relayed below it): its
    /// acknowledgement waits for theirs.
    levels: u32,
    /// A connection already made (a relay connects first, to adopt what it cannot reach).
    connected: Option<TcpStream>,
    /// In a tree: the route whose resolved addresses to connect to, and this host's position.
    via: Option<(&'a Route, usize)>,
    /// In a tree: who serves this host's children should it fail, and its position.
    adopter: Option<(&'a Adopter, usize)>,
    /// For a resuming header: the offset the receiver said it holds.
    resumed_at: Option<u64>,
}

impl<'a> DestSink<'a> {
    /// A destination at `address`, counted as `index` in `progress`, sent `header` (`None`:
    /// raw).
    pub(crate) fn new(
        address: &'a str,
        index: usize,
        header: Option<Header>,
        options: &'a SendOptions,
        progress: &'a Progress,
    ) -> DestSink<'a> {
        let below = header
            .as_ref()
            .and_then(|h| h.tree.map(|t| (t, h.route.len())))
            .map_or(0, |(t, hosts)| {
                Tree::height_below(t.fanout, usize::from(t.position), hosts)
            });
        DestSink {
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
            via: None,
            adopter: None,
            resumed_at: None,
        }
    }

    /// Has `adopter` serve this host's children (it is at `position`) should it fail.
    pub(crate) fn adopting(mut self, adopter: &'a Adopter, position: usize) -> DestSink<'a> {
        self.adopter = Some((adopter, position));
        self
    }

    /// For a resuming header, once started: the payload bytes the receiver holds.
    pub(crate) fn resumed_at(&self) -> Option<u64> {
        self.resumed_at
    }

    /// Passes `result` on; a failure that orphans this host's children has them adopted.
    fn adopt_on<T>(&self, result: Result<T, DestFailure>) -> Result<T, DestFailure> {
        if let (Err(e), Some((adopter, position))) = (&result, self.adopter)
            && e.orphans()
        {
            adopter.adopt(position);
        }
        result
    }

    /// Reads the receiver's answer to a resuming header: the offset to go on from.
    fn read_resume(&mut self) -> Result<(), DestFailure> {
        let deadline = Instant::now() + self.stall();
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

    /// Connects to the addresses `route` resolved for the host at `position` (not to its
    /// address resolved again).
    pub(crate) fn via(mut self, route: &'a Route, position: usize) -> DestSink<'a> {
        self.via = Some((route, position));
        self
    }

    /// Uses `stream`, already connected, instead of connecting.
    pub(crate) fn over(mut self, stream: TcpStream) -> DestSink<'a> {
        self.connected = Some(stream);
        self
    }

    /// Announces `digest` in the trailer (a relay passing on its sender's) instead of the
    /// engine's.
    pub(crate) fn announcing(mut self, digest: &'a OnceLock<Vec<u8>>) -> DestSink<'a> {
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
        let deadline = Instant::now() + self.stall();
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
            let deadline = self.idle_interval().map(|i| Instant::now() + i);
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
        if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
            && let Some(session) = &self.session
            && let Ok(stream) = self.stream()
            && let Ok(Verdict::Refused(ack)) = read_verdict(
                stream,
                &mut session.clone(),
                &[],
                Instant::now() + Duration::from_secs(1),
            )
        {
            return refused(ack);
        }
        match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET) => DestFailure::Reset(e),
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
        let stall =
            (self.stall() + Duration::from_secs_f64(sent as f64 / FSYNC_RATE)) * self.levels;
        let (Some(stream), Some(session)) = (&self.stream, &mut self.session) else {
            return Err(DestFailure::Abandoned(Abandoned::Transfer));
        };
        let announced = self
            .announce
            .and_then(OnceLock::get)
            .unwrap_or(&digest.bytes);
        let verdict = read_verdict(stream, session, announced, Instant::now() + stall).map_err(
            |e| match e {
                ReadError::Wire(w) => DestFailure::BadAck(w),
                ReadError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                    DestFailure::NoAck(stall)
                }
                ReadError::Io(e) => DestFailure::Reset(e),
            },
        )?;
        let reports = match &verdict {
            Verdict::Confirmed(ack) | Verdict::Refused(ack) => ack.reports.clone(),
        };
        if let Some(r) = self.progress.reports.get(self.index) {
            *r.lock().unwrap_or_else(|p| p.into_inner()) = reports;
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
    deadline: Instant,
) -> Result<Verdict, ReadError> {
    let body = transport::read_message(stream, session.ack_reader(), deadline)?;
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

impl Consumer for DestSink<'_> {
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
        map: &FileMap,
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
        let keepalive = match &self.session {
            Some(s) if s.is_chunked() => s.keepalive()?,
            _ => return Ok(()),
        };
        let r = self.write_framing(&keepalive);
        self.adopt_on(r)
    }

    fn abort(&mut self) {
        self.progress.fail(self.index);
        // Closing without a trailer tells the receiver to discard what it has.
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl DestSink<'_> {
    /// Connects (unless connected), and for a session: hello, welcome, proof and header, and
    /// for a resuming header the receiver's offset.
    fn open(&mut self) -> Result<(), DestFailure> {
        let timeout = self.options.connect_timeout;
        let stream = match (self.connected.take(), self.via) {
            (Some(s), _) => s,
            (None, Some((route, position))) => route.connect(position, timeout)?,
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
            let (mut session, hello) =
                SenderSession::start(header, self.options.key.clone(), nonce)
                    .map_err(|_| DestFailure::Abandoned(Abandoned::NotStarted))?;
            self.write_framing(&hello)?;
            let stall = self.stall();
            let deadline = Instant::now() + stall;
            let body = transport::read_message(self.stream()?, session.welcome_reader(), deadline)
                .map_err(|e| match e {
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
                })?;
            let next = session.welcome(&body).map_err(DestFailure::Handshake)?;
            let resuming = header.tree.is_some_and(|t| t.resume);
            self.session = Some(session);
            self.write_framing(&next)?;
            if resuming {
                self.read_resume()?;
            }
        }
        Ok(())
    }

    fn send_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, DestFailure> {
        let stall = self.stall();
        let chunked = self.session.as_ref().is_some_and(SenderSession::is_chunked);
        let start = self.progress.of(self.index);
        let took = |s: &Self| s.progress.of(s.index) - start;
        // Bytes still due in the current chunk (chunked framing declares what the pipe holds).
        let mut chunk_left = 0usize;
        let mut last_progress = Instant::now();
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
                    last_progress = Instant::now();
                    continue;
                }
                chunk_left = queued.min(wire::MAX_CHUNK as usize);
                self.chunk_header(chunk_left)?;
            }
            let want = if chunked { chunk_left } else { 1 << 30 };
            let sock = self.stream()?.as_fd();
            // The socket is O_NONBLOCK and the flag makes the pipe side non-blocking, so this
            // never sleeps holding the pipe's lock (KERNEL.md §1.1 "Lock hazard").
            match sys::splice(pipe, sock, want, SpliceFlags::NONBLOCK | SpliceFlags::MORE) {
                Ok(0) => return Ok(took(self)),
                Ok(n) => {
                    chunk_left = chunk_left.saturating_sub(n);
                    self.count(n)?;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sys::bytes_queued(pipe).unwrap_or(1) == 0 {
                        // Waiting for the filler is not this destination's stall.
                        if !self.wait_for_filler(pipe)? {
                            return Ok(took(self));
                        }
                        last_progress = Instant::now();
                    } else {
                        let stream = self.stream()?;
                        transport::wait(stream, Readiness::Writable, last_progress + stall)
                            .map_err(|e| self.write_failed(e))?;
                    }
                }
                Err(e) => return Err(self.write_failed(e)),
            }
        }
    }

    fn send_buffer(&mut self, bytes: &[u8]) -> Result<(), DestFailure> {
        self.chunk_header(bytes.len())?;
        let deadline = Instant::now() + self.stall();
        transport::write_all(self.stream()?, bytes, deadline).map_err(|e| self.write_failed(e))?;
        self.count(bytes.len())
    }

    fn send_map(&mut self, map: &FileMap, offset: usize, len: usize) -> Result<(), DestFailure> {
        self.chunk_header(len)?;
        let mut done = 0;
        while done < len {
            let sock = self.stream()?.as_fd();
            match map.write_to(sock, offset + done, len - done) {
                Ok(0) => return Err(DestFailure::SourceShrank),
                Ok(n) => {
                    // The socket has its own copy: keep the resident set bounded.
                    let _ = map.release(offset + done, n);
                    done += n;
                    self.count(n)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let stream = self.stream()?;
                    transport::wait(stream, Readiness::Writable, Instant::now() + self.stall())
                        .map_err(|e| self.write_failed(e))?;
                }
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
                    return Err(DestFailure::SourceShrank);
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
        self.read_ack(digest)
    }
}
