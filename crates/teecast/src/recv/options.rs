//! What a receiver is told, and what it says: its options, what it received, its events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::RecvError;

use crate::auth::Key;
use crate::digest::{Digest, DigestAlgorithm};
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
    /// The pre-shared keys (at most [`teecast_proto::wire::MAX_KEYS`]; more than one during a
    /// rotation): every sender must prove one of them, and every stream is kept only when its
    /// seal verifies under the one its sender proved. A running server takes new ones from
    /// [`super::Control::set_keys`].
    pub keys: Vec<Key>,
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
    /// The most payload bytes a stream may have (`None`: no limit). One announced larger is
    /// refused at its header; one of unknown length is cut there, and nothing of it is kept.
    pub max_size: Option<u64>,
    /// The free space to leave on the filesystem of the target directory (`None`: none beyond
    /// what fits). A stream announced too large for it is refused at its header; one that
    /// would cross it as it arrives (of unknown length, or as other streams fill the disk) is
    /// cut, and nothing of it is kept. Streams written into a device, a FIFO or standard output
    /// are not counted.
    pub keep_free: Option<KeepFree>,
    /// For a relay that stores no file (standard output, a device): the bytes kept to replay
    /// to the children of a child that fails ([`crate::send::DEFAULT_RING`]); one storing a
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
            keys: Vec::new(),
            no_clobber: false,
            header_timeout: Duration::from_secs(10),
            max_per_peer: 8,
            relay: false,
            forward_unauthenticated: false,
            ring: crate::tree::ring::DEFAULT_RING,
            max_size: None,
            keep_free: None,
        }
    }

    /// Sets the most payload bytes a stream may have (see [`RecvOptions::max_size`]).
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.max_size = bytes;
        self
    }

    /// Sets the free space to leave (see [`RecvOptions::keep_free`]).
    pub fn keep_free(mut self, reserve: Option<KeepFree>) -> Self {
        self.keep_free = reserve;
        self
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
    /// A timeout too long for the clock (`Duration::MAX`) is none: never.
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

    /// Adds `key` to those a sender may prove (see [`RecvOptions::keys`]).
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
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

    /// Sets the stall timeout. A timeout too long for the clock (`Duration::MAX`) is none: never.
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

/// How much of a filesystem to leave free ([`RecvOptions::keep_free`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepFree {
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the filesystem's size (0 to 100).
    Percent(u8),
}

impl KeepFree {
    /// The reserve in bytes on a filesystem of `total` bytes.
    pub(super) fn reserve(self, total: u64) -> u64 {
        match self {
            KeepFree::Bytes(n) => n,
            KeepFree::Percent(p) => {
                u64::try_from(u128::from(total) * u128::from(p.min(100)) / 100).unwrap_or(u64::MAX)
            }
        }
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
    /// It arrived encrypted (protocol version 3).
    pub encrypted: bool,
}

/// What [`serve`](super::serve) tells about a connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Its stream passed its header and is being stored (a raw stream: it began).
    Opened {
        /// The announced name (the peer's text: escape it before showing it).
        name: &'a str,
        /// The announced length, when known (of an encrypted stream: its plaintext's).
        length: Option<u64>,
        /// The stream is encrypted.
        encrypted: bool,
    },
    /// What became of it; once per connection, except one that resumed another's stream.
    Done(&'a Result<Received, RecvError>),
    /// It resumed a relayed stream this receiver was getting from a parent that failed: the
    /// stream goes on over it, and its `Done` comes from the connection that began it.
    Resumed {
        /// The announced name (the peer's text: escape it before showing it).
        name: &'a str,
        /// The stream had ended here already, its copy stored and verified (its parent failed
        /// before it read the acknowledgement): the new parent was told so, and nothing more
        /// comes of it.
        stored: bool,
    },
}

/// Called with the peer and each [`Event`] of its connection.
pub type EventHandler = dyn Fn(Option<SocketAddr>, Event<'_>) + Sync;
