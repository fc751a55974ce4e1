//! Relaying: a receiver that stores its copy and forwards the stream to its children in the
//! tree its header names, as the bytes arrive.
//!
//! The stream goes socket → pipe (`splice`), then the engine `tee`s the pipe to a pipe per
//! child socket and one for the local file (each drained by `splice`) and one for the digest:
//! no copy of the payload in user space on the forward path. The pipe holds the received skb
//! pages by reference (KERNEL.md §4, socket→pipe), which no one writes once received, so every
//! child, the file and the digest see the same bytes. One exception: on loopback a sender that
//! splices page-cache pages (the unstable `zerocopy` path) hands its own pages over
//! (KERNEL.md §6, trap 2), and a relay there is no more stable than that sender.
//! Each child is a sender's destination of its own (a session, the key proved, the trailer
//! carrying the digest the *first* sender announced); its acknowledgement, with the reports of
//! the hosts below it, comes back here and goes up in this host's acknowledgement.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::pipe::SpliceFlags;
use teecast_proto::session::{Next, ReceiverSession};
use teecast_proto::wire::{Header, HostReport, Tree};
use teecast_sys as sys;

use super::{Received, RecvError, RecvOptions, Store, commit, mismatch};
use crate::digest::{Digest, Hasher};
use crate::engine::{self, Abandoned, Consumer, EngineError, FanoutConfig, Filler};
use crate::send::{self, Delivered, DestFailure, DestSink, Progress, SendOptions};
use crate::transport;

/// The positions of the hosts this header asks its receiver to forward to, if any.
pub(super) fn children(header: &Header) -> Option<Range<usize>> {
    let tree = header.tree?;
    let children = Tree::children_of(tree.fanout, usize::from(tree.position), header.route.len());
    (!children.is_empty()).then_some(children)
}

/// Whether this receiver may forward to `children`: it relays at all, and an unauthenticated
/// stream (no key) only among loopback addresses unless told otherwise (an unauthenticated
/// relay is an open proxy).
pub(super) fn check(
    options: &RecvOptions,
    header: &Header,
    children: &Range<usize>,
) -> Result<(), RecvError> {
    if !options.relay {
        return Err(RecvError::NotARelay);
    }
    let loopback = |hop: &String| {
        hop.to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
    };
    if options.key.is_none()
        && !options.forward_unauthenticated
        && !header.route[children.start - 1..children.end - 1]
            .iter()
            .all(loopback)
    {
        return Err(RecvError::UnauthenticatedForward);
    }
    Ok(())
}

/// Stores the stream of `session` in `store` (when it could be opened) and forwards it to the
/// children its header's tree gives this host; `reports` gets the outcome of every host below this one. The local copy is
/// published only when it verifies against the sender's digest; a local failure (a full disk)
/// does not stop the forwarding.
pub(super) fn forward(
    stream: &TcpStream,
    options: &RecvOptions,
    session: &mut ReceiverSession,
    header: &Header,
    store: Result<Store, RecvError>,
    peer: Option<SocketAddr>,
    reports: &mut Vec<HostReport>,
) -> Result<Received, RecvError> {
    let fanout = header.tree.map_or(1, |t| t.fanout);
    let hosts = header.route.len();
    let send_options = SendOptions {
        stall_timeout: options.stall_timeout,
        key: options.key.clone(),
        ..SendOptions::default()
    };
    let me = header.tree.map_or(0, |t| usize::from(t.position));
    // A child that cannot be reached is adopted: its children are served from here.
    let (served, unreachable) =
        send::connect_adopting(fanout, &header.route, me, send_options.connect_timeout);
    let positions: Vec<usize> = served.iter().map(|(p, _)| *p).collect();
    reports.extend(unreachable);
    let progress = Progress::new(served.len());
    let announced = OnceLock::new();
    let (store, mut local_error) = match store {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e)),
    };
    let mut hops = Vec::with_capacity(served.len() + 1);
    if let Some(s) = &store {
        let file = s
            .fd()
            .try_clone_to_owned()
            .map_err(RecvError::io("duplicating the file"))?;
        hops.push(Hop::Local(LocalCopy(Some(File::from(file)))));
    }
    for (index, (position, stream)) in served.into_iter().enumerate() {
        let child = DestSink::new(
            &header.route[position - 1],
            index,
            Some(header.for_position(position)),
            &send_options,
            &progress,
        );
        hops.push(Hop::Child(Box::new(
            child.announcing(&announced).over(stream),
        )));
    }
    let mut broken = None;
    let filler = SessionFiller {
        stream,
        session: &mut *session,
        stall: options.stall_timeout,
        buf: Vec::new(),
        broken: &mut broken,
        announced: &announced,
    };
    let config = FanoutConfig::default().digest(header.digest);
    // No length for the engine: the filler ends the stream only once it has read the
    // sender's trailer, so the children's trailers carry the sender's digest.
    let fanned = engine::fan_out_filled(filler, None, hops, &config);
    let mut outcomes = fanned.consumers.into_iter();
    let local = store.as_ref().and_then(|_| outcomes.next());
    for (index, (position, outcome)) in positions.into_iter().zip(outcomes).enumerate() {
        let outcome = outcome
            .map(HopOutcome::delivered)
            .map_err(HopError::into_dest);
        reports.push(send::report_of(position, me, &outcome, progress.of(index)));
        let reported = progress.take_reports(index);
        reports.extend(send::below(fanout, hosts, position, &outcome, reported));
    }
    if let Some(e) = broken {
        return Err(e);
    }
    let digest = fanned.result.map_err(|e| RecvError::Io {
        op: "relaying",
        source: io::Error::other(e),
    })?;
    session.verify(&digest.bytes).map_err(mismatch)?;
    if let Some(Err(HopError::Local(e))) = local {
        local_error = Some(RecvError::io("writing the file")(e));
    }
    match (local_error, store) {
        (Some(e), _) => Err(e),
        (None, Some(store)) => commit(store, options, peer, fanned.bytes, digest),
        (None, None) => unreachable!("a relay without a store has its reason"),
    }
}

/// The bytes of a session's payload, spliced from its socket into the engine's pipe; its
/// framing (chunk headers, keepalives, the trailer and seal) read and checked on the way.
struct SessionFiller<'a> {
    stream: &'a TcpStream,
    session: &'a mut ReceiverSession,
    stall: Duration,
    buf: Vec<u8>,
    /// Why the parent's stream broke, in the receiver's words.
    broken: &'a mut Option<RecvError>,
    /// The sender's digest, once its trailer has arrived.
    announced: &'a OnceLock<Vec<u8>>,
}

impl SessionFiller<'_> {
    /// Keeps `e` as the reason and gives the engine an error to stop on.
    fn broke(&mut self, e: RecvError) -> EngineError {
        let stop = EngineError::Source {
            op: "receiving",
            source: io::Error::other(e.to_string()),
        };
        *self.broken = Some(e);
        stop
    }
}

impl Filler for SessionFiller<'_> {
    fn fill(
        &mut self,
        pipe: BorrowedFd<'_>,
        _offset: u64,
        want: usize,
        _hasher: Option<&mut Hasher>,
    ) -> Result<usize, EngineError> {
        loop {
            match self.session.next() {
                Next::Framing(n) => {
                    self.buf.resize(n, 0);
                    let during = match self.session.header().and_then(|h| h.length) {
                        Some(_) => "trailer",
                        None => "chunk header or trailer",
                    };
                    let got = self.session.received();
                    let deadline = Instant::now() + self.stall;
                    if let Err(e) = transport::read_exact(self.stream, &mut self.buf, deadline) {
                        let e = RecvError::reading(during, got, self.stall)(e);
                        return Err(self.broke(e));
                    }
                    if let Err(e) = self.session.framing(&self.buf) {
                        return Err(self.broke(e.into()));
                    }
                }
                Next::Payload(n) => {
                    // The socket's receive timeout (the stall timeout) bounds the wait.
                    let len = n.min(want as u64) as usize;
                    let got = self.session.received();
                    match sys::splice(self.stream.as_fd(), pipe, len, SpliceFlags::MORE) {
                        Ok(0) => {
                            let e = RecvError::Truncated {
                                got,
                                during: "payload",
                            };
                            return Err(self.broke(e));
                        }
                        Ok(k) => {
                            self.session.payload(k as u64);
                            return Ok(k);
                        }
                        Err(e) => {
                            let e = RecvError::reading("payload", got, self.stall)(e);
                            return Err(self.broke(e));
                        }
                    }
                }
                Next::Verify => {
                    let digest = self.session.announced_digest().unwrap_or_default();
                    let _ = self.announced.set(digest.to_vec());
                    return Ok(0);
                }
            }
        }
    }

    fn hashes(&self) -> bool {
        false
    }
}

/// Where a relay's stream goes: its own file, or a child.
enum Hop<'a> {
    Local(LocalCopy),
    Child(Box<DestSink<'a>>),
}

/// The relay's own copy: its pipe spliced into the store's file.
struct LocalCopy(Option<File>);

enum HopOutcome {
    Local,
    Child(Delivered),
}

impl HopOutcome {
    fn delivered(self) -> Delivered {
        match self {
            HopOutcome::Child(d) => d,
            HopOutcome::Local => unreachable!("children come after the local copy"),
        }
    }
}

enum HopError {
    Local(io::Error),
    Child(DestFailure),
    Abandoned(Abandoned),
}

impl HopError {
    fn into_dest(self) -> DestFailure {
        match self {
            HopError::Child(d) => d,
            HopError::Abandoned(a) => DestFailure::Abandoned(a),
            HopError::Local(e) => DestFailure::Io {
                op: "writing the file",
                source: e,
            },
        }
    }
}

impl From<Abandoned> for HopError {
    fn from(a: Abandoned) -> Self {
        HopError::Abandoned(a)
    }
}

impl Consumer for Hop<'_> {
    type Outcome = HopOutcome;
    type Error = HopError;

    fn start(&mut self) -> Result<(), HopError> {
        match self {
            Hop::Local(_) => Ok(()),
            Hop::Child(c) => c.start().map_err(HopError::Child),
        }
    }

    fn take_pipe(&mut self, pipe: BorrowedFd<'_>) -> Result<u64, HopError> {
        match self {
            Hop::Local(LocalCopy(file)) => {
                let file = file.as_ref().ok_or(Abandoned::Transfer)?;
                let mut total = 0;
                loop {
                    // pipe → file is one copy in the kernel, into the page cache.
                    match sys::splice(pipe, file.as_fd(), 1 << 30, SpliceFlags::MORE) {
                        Ok(0) => return Ok(total),
                        Ok(n) => total += n as u64,
                        Err(e) => return Err(HopError::Local(e)),
                    }
                }
            }
            Hop::Child(c) => c.take_pipe(pipe).map_err(HopError::Child),
        }
    }

    fn take_from_buffer(&mut self, bytes: &[u8]) -> Result<(), HopError> {
        match self {
            Hop::Local(LocalCopy(file)) => {
                let mut file = file.as_ref().ok_or(Abandoned::Transfer)?;
                io::Write::write_all(&mut file, bytes).map_err(HopError::Local)
            }
            Hop::Child(c) => c.take_from_buffer(bytes).map_err(HopError::Child),
        }
    }

    fn finish(&mut self, length: u64, digest: &Digest) -> Result<HopOutcome, HopError> {
        match self {
            Hop::Local(_) => Ok(HopOutcome::Local),
            Hop::Child(c) => c
                .finish(length, digest)
                .map(HopOutcome::Child)
                .map_err(HopError::Child),
        }
    }

    fn abort(&mut self) {
        match self {
            Hop::Local(LocalCopy(file)) => *file = None,
            Hop::Child(c) => c.abort(),
        }
    }

    fn idle_interval(&self) -> Option<Duration> {
        match self {
            Hop::Local(_) => None,
            Hop::Child(c) => c.idle_interval(),
        }
    }

    fn idle(&mut self) -> Result<(), HopError> {
        match self {
            Hop::Local(_) => Ok(()),
            Hop::Child(c) => c.idle().map_err(HopError::Child),
        }
    }
}
