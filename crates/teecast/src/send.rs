//! Sending: one source to many destinations, each framed by a [`SenderSession`](crate::proto::session::SenderSession) (or raw), each
//! confirmed by the receiver's acknowledgement.
//!
//! [`Transfer::new`] checks the request and resolves the data path once; its [`Progress`] can be
//! watched from another thread while [`Transfer::run`] sends. [`send`] does both.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teecast_proto::crypt::{self, TransferKey};
use teecast_proto::wire::{self, AckStatus, Header, HostReport, Tree, WireError};

use crate::auth::Key;
pub use crate::dest::{Delivered, DestFailure, HostState, LiveHosts, Progress};
use crate::dest::{DestOptions, Destination};
use crate::digest::{Digest, DigestAlgorithm};
use crate::engine::{CaptureError, EngineError, FanoutConfig, Unsupported};
use crate::source::Source;
use crate::strategy::Strategy;
use crate::tree::adopt::{Adopter, Adopting, LiveFor};
use crate::tree::consumer::{TreeConsumer, TreeError, TreeOutcome};
use crate::tree::report::{Reports, complete, report_of};
pub use crate::tree::ring::DEFAULT_RING;
use crate::tree::ring::{Replay, Ring, RingWriter};
use crate::tree::route::Route;
use crate::{auth, engine};
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
    /// ([`DEFAULT_RING`]).
    pub ring: usize,
    /// With a key, encrypt the stream (protocol version 3; the default). `false` sends it
    /// authenticated but in the clear (version 2), for a network trusted with its contents.
    /// Without a key, or raw, a stream is never encrypted.
    pub encrypt: bool,
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
            ring: DEFAULT_RING,
            encrypt: true,
        }
    }
}

impl SendOptions {
    /// What each destination needs of these options.
    pub(crate) fn dest(&self) -> DestOptions {
        DestOptions {
            stall_timeout: self.stall_timeout,
            connect_timeout: self.connect_timeout,
            key: self.key.clone(),
            transfer: None,
        }
    }

    /// Encrypts a keyed stream (`true`, the default) or sends it in the clear (`false`).
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

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
    /// Sets the stall timeout. A timeout too long for the clock (`Duration::MAX`) is none: never.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }
    /// Sets the connect timeout. A timeout too long for the clock (`Duration::MAX`) is none: never.
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

/// One destination's outcome.
#[derive(Debug)]
pub struct DestReport {
    /// The address as given.
    pub address: String,
    /// The relay it was reached through (`None`: sent to directly).
    pub parent: Option<String>,
    /// What happened.
    pub outcome: Result<Delivered, DestFailure>,
    /// Payload bytes written to it (of an encrypted stream: the plaintext bytes of the records
    /// written).
    pub bytes: u64,
    /// From the start of the transfer to the outcome.
    pub elapsed: Duration,
    /// Its stream was encrypted (protocol version 3).
    pub encrypted: bool,
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
    /// Bytes read from the source; when the transfer failed as a whole, at least the most any
    /// destination was sent.
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
    /// The stream was encrypted, sealed once for every destination (protocol version 3).
    pub encrypted: bool,
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
    /// What each destination needs of `options`.
    dest: DestOptions,
    header: Option<Header>,
    name: String,
    progress: Arc<Progress>,
    /// The stall timeout asked for and the one used, when a tree needed it raised.
    stall_raised: Option<(Duration, Duration)>,
    /// In a tree: what is known of every host while it runs.
    hosts: Option<Arc<LiveHosts>>,
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
                return Err(SendError::Tree("at most 10,000 hosts can be relayed to"));
            }
            Some(k) => (
                Tree::children_of(k, 0, destinations.len()).collect(),
                destinations.to_vec(),
            ),
        };
        // Timeouts nest by depth down to a floor: the sender's own must leave room for the
        // levels below its children (docs/PROTOCOL.md, "Timeouts in a tree").
        let mut stall_raised = None;
        if let Some(k) = options.tree {
            let needed =
                Duration::from_millis(u64::from(Tree::sender_stall_ms(k, destinations.len())));
            if options.stall_timeout < needed {
                stall_raised = Some((options.stall_timeout, needed));
                options.stall_timeout = needed;
            }
        }
        // In a tree the replay ring is one more consumer.
        let consumers = direct.len()
            + usize::from(options.fanout.capture.is_some())
            + usize::from(options.tree.is_some());
        let encrypted = options.encrypt && options.key.is_some() && !options.raw;
        // Sealing needs the plaintext in memory: an encrypted stream takes one of the two
        // paths that read it (engine::fan_out_sealed).
        options.fanout.strategy = match encrypted {
            true => options.fanout.strategy.sealing(),
            false => options.fanout.strategy.for_transfer(source, consumers),
        };
        options.fanout.validate()?;
        engine::check(source, options.fanout.strategy, consumers)?;
        let name = options
            .name
            .clone()
            .or_else(|| source.default_name())
            .ok_or(SendError::NameNotUtf8)?;
        let transfer = match (options.tree, encrypted) {
            (None, false) => [0; wire::TRANSFER_ID_LEN],
            _ => transfer_id()?,
        };
        // An encrypted stream's key, drawn for this transfer; its identifier is the tree's.
        let transfer_key = match encrypted {
            true => Some(TransferKey::new(transfer, random_bytes()?)),
            false => None,
        };
        // An encrypted payload is its records: the header announces their length.
        let length = match encrypted {
            true => source
                .len()
                .map(|l| crypt::sealed_len(l).unwrap_or(u64::MAX)),
            false => source.len(),
        };
        let header = (!options.raw).then(|| Header {
            name: name.clone(),
            length,
            digest: options.fanout.digest,
            route,
            tree: options.tree.map(|fanout| Tree {
                fanout,
                position: 1,
                transfer,
                resume: false,
                stall_ms: millis(options.stall_timeout),
                connect_ms: millis(options.connect_timeout),
            }),
        });
        if let Some(h) = &header {
            h.encode().map_err(SendError::Name)?;
        }
        let digest = options.fanout.digest;
        // Encrypted, the AEAD authenticates every byte; a keyed stream in the clear is
        // authenticated through its digest, which must resist collisions.
        if options.key.is_some()
            && !encrypted
            && !matches!(digest, DigestAlgorithm::Blake3 | DigestAlgorithm::Sha256)
        {
            return Err(SendError::WeakDigest(digest));
        }
        let mut dest = options.dest();
        dest.transfer = transfer_key;
        let hosts = options
            .tree
            .map(|_| Arc::new(LiveHosts::new(destinations.len())));
        Ok(Transfer {
            source,
            destinations: destinations.to_vec(),
            progress: Arc::new(Progress::new(direct.len())),
            direct,
            dest,
            options,
            header,
            name,
            stall_raised,
            hosts,
        })
    }

    /// In a tree: what is known of every host while the transfer runs (by position − 1, in the
    /// order of the route), from the reports that come up the tree as each outcome is known.
    pub fn hosts(&self) -> Option<Arc<LiveHosts>> {
        self.hosts.clone()
    }

    /// In a tree, when the stall timeout asked for was shorter than its depth needs (each level
    /// gives up on a stalled child within half of its parent's timeout for it, down to a floor
    /// of 1 s and 250 ms more per level below: [`Tree::child_stall_ms`]): the timeout asked for
    /// and the one used instead.
    pub fn stall_raised(&self) -> Option<(Duration, Duration)> {
        self.stall_raised
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

    /// The positions (from 1, in the route) of the destinations sent to directly, in the order
    /// of [`Transfer::progress`].
    pub fn direct_positions(&self) -> Vec<usize> {
        self.direct.clone()
    }

    /// The concrete data path.
    pub fn strategy(&self) -> Strategy {
        self.options.fanout.strategy
    }

    /// Sends, and reports every destination.
    pub fn run(self) -> SendReport {
        let started = Instant::now();
        let hosts = self.destinations.len();
        let dests: Vec<Destination<'_>> = self
            .direct
            .iter()
            .enumerate()
            .map(|(index, &position)| {
                Destination::new(
                    &self.destinations[position - 1],
                    index,
                    self.header.as_ref().map(|h| h.for_position(position)),
                    &self.dest,
                    &self.progress,
                )
            })
            .collect();
        let (fanout, relayed) = match (self.options.tree, &self.header) {
            (Some(fanout), Some(header)) => self.run_tree(dests, header, fanout),
            _ => (self.fan_out(dests), Vec::new()),
        };
        let elapsed = started.elapsed();
        let mut destinations: Vec<(usize, DestReport)> = Vec::with_capacity(hosts);
        for (i, (&position, outcome)) in self.direct.iter().zip(fanout.consumers).enumerate() {
            destinations.push((
                position,
                DestReport {
                    address: self.destinations[position - 1].clone(),
                    parent: None,
                    outcome,
                    bytes: self.payload_bytes(self.progress.of(i)),
                    elapsed,
                    note: None,
                    encrypted: self.dest.transfer.is_some(),
                },
            ));
        }
        let below = match self.options.tree {
            Some(fanout) => complete(fanout, hosts, 0, &relayed),
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
        let sent = self.payload_bytes(self.progress.sent().into_iter().max().unwrap_or(0));
        SendReport {
            source: self.source.display().to_string(),
            name: self.name,
            strategy: fanout.strategy.unwrap_or(self.options.fanout.strategy),
            digest,
            // A transfer that failed as a whole still sent what its destinations took.
            bytes: fanout.bytes.max(sent),
            error,
            destinations,
            capture: self.options.fanout.capture.clone().zip(fanout.capture),
            source_grew: fanout.source_grew,
            elapsed: started.elapsed(),
            encrypted: self.dest.transfer.is_some(),
        }
    }

    /// The fan-out of a tree: the first level's `dests`, connected to the addresses of a route
    /// resolved once, and a ring to replay to the children of one that fails. Returns the
    /// first level's outcomes and what every host of the tree was reported as (the first level
    /// included).
    fn run_tree(
        &self,
        dests: Vec<Destination<'_>>,
        header: &Header,
        fanout: u8,
    ) -> (
        engine::FanoutReport<Delivered, DestFailure>,
        Vec<HostReport>,
    ) {
        let route = Arc::new(Route::resolve(&self.destinations, fanout, 0));
        let reports = Reports::new(dests.len());
        let ring = Arc::new(Ring::new(self.options.ring, self.options.stall_timeout));
        let adopter = Adopter::new(
            Replay::Ring(ring.clone()),
            header,
            route.clone(),
            0,
            &self.dest,
            Adopting {
                live: self.hosts.clone().map(|h| {
                    let live: LiveFor = Arc::new(move |position, _| h.live_for(position));
                    live
                }),
                ..Adopting::default()
            },
        );
        let mut consumers: Vec<TreeConsumer<'_>> = dests
            .into_iter()
            .zip(&self.direct)
            .enumerate()
            .map(|(index, (dest, &position))| {
                let (adopter, route) = (&adopter, &route);
                let mut dest = dest
                    .dialing(move |timeout| route.connect(position, timeout))
                    .reporting_to(reports.slot(index))
                    .on_orphaned(move || adopter.adopt(position));
                if let Some(h) = &self.hosts {
                    dest = dest.live(h.live_for(position));
                }
                TreeConsumer::Child(Box::new(dest))
            })
            .collect();
        consumers.push(TreeConsumer::Ring(RingWriter::new(ring)));
        let fanned = self.fan_out(consumers);
        let mut outcomes: Vec<Result<Delivered, DestFailure>> = fanned
            .consumers
            .into_iter()
            .map(|o| {
                o.map_err(TreeError::into_dest)
                    .and_then(TreeOutcome::delivered)
            })
            .collect();
        outcomes.pop();
        let mut relayed = adopter.finish();
        for (index, (&position, outcome)) in self.direct.iter().zip(&outcomes).enumerate() {
            relayed.push(report_of(position, 0, outcome, self.progress.of(index)));
            relayed.extend(reports.take(index));
        }
        let report = engine::FanoutReport {
            strategy: fanned.strategy,
            result: fanned.result,
            bytes: fanned.bytes,
            consumers: outcomes,
            capture: fanned.capture,
            source_grew: fanned.source_grew,
        };
        (report, relayed)
    }

    /// The fan-out of the source to `consumers`: sealed once for all of them when the stream
    /// is encrypted.
    fn fan_out<C: engine::Consumer>(
        &self,
        consumers: Vec<C>,
    ) -> engine::FanoutReport<C::Outcome, C::Error> {
        match &self.dest.transfer {
            Some(transfer) => {
                engine::fan_out_sealed(self.source, transfer, consumers, &self.options.fanout)
            }
            None => engine::fan_out(self.source, consumers, &self.options.fanout),
        }
    }

    /// Payload bytes of `written` on the wire: of an encrypted stream, the plaintext in them.
    fn payload_bytes(&self, written: u64) -> u64 {
        match self.dest.transfer {
            Some(_) => crypt::plain_in(written),
            None => written,
        }
    }

    /// The report of a host reached through relays, from what its parent said of it.
    fn relayed_report(&self, r: HostReport, elapsed: Duration) -> DestReport {
        let position = usize::from(r.position);
        let parent = usize::from(r.parent)
            .checked_sub(1)
            .and_then(|p| self.destinations.get(p).cloned());
        let (outcome, note) = match r.status {
            AckStatus::Ok => (
                Ok(Delivered::Relayed),
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
            bytes: self.payload_bytes(r.bytes),
            elapsed,
            note,
            encrypted: self.dest.transfer.is_some(),
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
            encrypted: false,
        },
    }
}

/// `timeout` in whole milliseconds for a header: at least 1, at most `u32::MAX` (49 days, which
/// a longer timeout, "never" included, becomes).
fn millis(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// A fresh random identifier for a relayed or encrypted transfer.
fn transfer_id() -> Result<[u8; wire::TRANSFER_ID_LEN], SendError> {
    let bytes = random_bytes()?;
    let mut id = [0; wire::TRANSFER_ID_LEN];
    id.copy_from_slice(&bytes[..wire::TRANSFER_ID_LEN]);
    Ok(id)
}

/// 32 fresh random bytes.
fn random_bytes() -> Result<[u8; 32], SendError> {
    auth::nonce().map_err(|e| {
        SendError::Engine(EngineError::Source {
            op: "getrandom",
            source: io::Error::other(e),
        })
    })
}
