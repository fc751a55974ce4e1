//! Relaying: a receiver that stores its copy and forwards the stream to its children in the
//! tree its header names, as the bytes arrive.
//!
//! The stream goes socket → pipe (`splice`), then the engine `tee`s the pipe to a pipe per
//! child socket and one for the local file (each drained by `splice`) and one for the digest:
//! no copy of the payload in user space on the forward path. The pipe holds the received skb
//! pages by reference (docs/KERNEL.md §4, socket→pipe), which no one writes once received, so every
//! child, the file and the digest see the same bytes. One exception: on loopback a sender that
//! splices page-cache pages (the unstable `zerocopy` path) hands its own pages over
//! (docs/KERNEL.md §6, trap 2), and a relay there is no more stable than that sender.
//! Each child is a sender's destination of its own (a session, the key proved, the trailer
//! carrying the digest the *first* sender announced); its acknowledgement, with the reports of
//! the hosts below it, comes back here and goes up in this host's acknowledgement.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use teecast_proto::crypt::{self, RECORDS_PER_KEY, RecordReader};
use teecast_proto::session::{Next, ReceiverSession};
use teecast_proto::wire::{AckStatus, Header, NONCE_LEN, Tree};
use teecast_sys::{self as sys, Readiness, SpliceFlags};

use super::conn::{Conn, discard_input, mismatch};
use super::control::Control;
use super::error::RecvError;
use super::options::{Received, RecvOptions};
use super::payload::{Store, commit};
use super::streams::{Completed, Registered, Resumable};
use crate::sync::lock;

use crate::dest::{DestOptions, Destination, Progress};
use crate::digest::{DigestAlgorithm, Hasher};
use crate::engine::{EngineError, FanoutConfig, Filler};
use crate::store::Writeback;
use crate::tree::adopt::{Adopter, Adopting, LiveFor};
use crate::tree::consumer::{LocalCopy, TreeConsumer, TreeError, TreeOutcome};
use crate::tree::report::{Reports, Upstream, UpstreamQueue, complete, live_up, report_of};
use crate::tree::ring::{Replay, Ring, RingWriter, StoredCopy};
use crate::tree::route::{Route, connect_adopting};
use crate::{engine, transport};
/// The positions of the hosts this header asks its receiver to forward to, if any.
pub(super) fn children(header: &Header) -> Option<Range<usize>> {
    let tree = header.tree?;
    let children = Tree::children_of(tree.fanout, usize::from(tree.position), header.route.len());
    (!children.is_empty()).then_some(children)
}

/// Whether this receiver may forward along `route`: it relays at all, and an unauthenticated
/// stream (no key) only among loopback addresses unless told otherwise (an unauthenticated
/// relay is an open proxy). Every host it may contact is checked, those it could reach only
/// by adopting them included.
pub(super) fn check(options: &RecvOptions, route: &Route) -> Result<(), RecvError> {
    if !options.relay {
        return Err(RecvError::NotARelay);
    }
    if options.keys.is_empty()
        && !options.forward_unauthenticated
        && route.beyond_loopback().is_some()
    {
        return Err(RecvError::UnauthenticatedForward);
    }
    Ok(())
}

/// Stores the stream of `session` in `store` (when it could be opened) and forwards it to the
/// children its header's tree gives this host (if any); `reports` gets the outcome of every
/// host below this one. The local copy is published only when it verifies against the
/// sender's digest; a local failure (a full disk) does not stop the forwarding.
///
/// While it runs the stream is in the connection's `streams`, so that a parent adopting this
/// host after its own parent failed can resume it: then the connection's stream and session
/// are the new parent's.
pub(super) fn forward(
    conn: &mut Conn<'_>,
    header: &Header,
    route: Route,
    store: Result<Store, RecvError>,
) -> Result<Received, RecvError> {
    let Conn {
        stream,
        session,
        options,
        peer,
        reports,
        streams,
        control,
        registered: kept,
        children: held,
        upstream,
    } = conn;
    let (options, peer, streams, control) = (*options, *peer, *streams, *control);
    let Some(tree) = header.tree else {
        unreachable!("forward is called for a stream with a tree");
    };
    let (fanout, me, hosts) = (tree.fanout, usize::from(tree.position), header.route.len());
    // Timeouts nest by depth: this host gives up on a stalled child within half of what its
    // parent allows it (down to a floor), and connects within that too, so a frozen child
    // costs its parent only the child itself (and the adoption of the hosts below it).
    let child_stall = Duration::from_millis(u64::from(tree.child_stall_ms(hosts)));
    let send_options = DestOptions {
        stall_timeout: child_stall,
        connect_timeout: Duration::from_millis(u64::from(tree.connect_ms)).min(child_stall),
        // The children are sent what this host was: under the key its sender proved.
        key: session.key().cloned(),
        transfer: session.transfer_key().cloned(),
    };
    // The header as this host sends it on: its children's parent (this host, or this host
    // adopting them) waits `child_stall` for each.
    let received = header;
    let received_stall_ms = tree.stall_ms;
    let mut onward = header.clone();
    if let Some(t) = &mut onward.tree {
        t.stall_ms = tree.child_stall_ms(hosts);
    }
    let header = &onward;
    // A child that cannot be reached is adopted: its children are served from here.
    let route = Arc::new(route);
    let (served, unreachable) = connect_adopting(fanout, &route, me, send_options.connect_timeout);
    let positions: Vec<usize> = served.iter().map(|(p, _)| *p).collect();
    let mut below = unreachable;
    let progress = Progress::new(served.len());
    let child_reports = Reports::new(served.len());
    let announced = Arc::new(OnceLock::new());
    let (store, mut local_error) = match store {
        Ok(s) => (Some(s), None),
        Err(e) if served.is_empty() => return Err(e),
        Err(e) => (None, Some(e)),
    };
    // A host with children can replay to theirs, should one fail: from its own copy as it is
    // written, or from a ring of the last bytes when it keeps no file of its own.
    let dup = |s: &Store| {
        s.fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(RecvError::io("duplicating the file"))
    };
    // An encrypted stream's copy is its plaintext, and the children are owed the records: it
    // replays from a ring of those.
    let transfer = session.transfer_key().cloned();
    let (replay, ring) = match &store {
        _ if served.is_empty() => (None, None),
        Some(s @ Store::Atomic(_)) if transfer.is_none() => {
            (Some(Replay::Stored(StoredCopy::new(dup(s)?))), None)
        }
        _ => {
            let ring = Arc::new(Ring::new(options.ring, child_stall));
            (Some(Replay::Ring(ring.clone())), Some(ring))
        }
    };
    let holding: crate::dest::HeldChildren = Arc::default();
    // What the destinations learn mid-stream goes up to this host's parent as reports.
    let up: Upstream = Arc::default();
    let after = Mutex::new(None);
    let live_for: LiveFor = {
        let up = up.clone();
        Arc::new(move |position, parent| live_up(&up, position, parent))
    };
    let adopter = replay.clone().map(|r| {
        Adopter::new(
            r,
            header,
            route.clone(),
            me,
            &send_options,
            Adopting {
                announced: Some(announced.clone()),
                holding: Some(holding.clone()),
                live: Some(live_for.clone()),
            },
        )
    });
    let mut consumers = Vec::with_capacity(served.len() + 2);
    if let Some(s) = &store {
        let stored = match &replay {
            Some(Replay::Stored(c)) => Some(c.clone()),
            _ => None,
        };
        consumers.push(TreeConsumer::Local(LocalCopy {
            file: Some(dup(s)?),
            stored,
            writeback: Writeback::default(),
            opening: transfer.as_ref().map(|t| {
                (
                    RecordReader::new(t, RECORDS_PER_KEY),
                    Hasher::new(header.digest),
                )
            }),
        }));
    }
    for (index, (position, stream)) in served.into_iter().enumerate() {
        let mut child = Destination::new(
            &header.route[position - 1],
            index,
            Some(header.for_position(position)),
            &send_options,
            &progress,
        )
        .announcing(&announced)
        .reporting_to(child_reports.slot(index))
        .holding(holding.clone())
        .live(live_for(position, me))
        .over(stream);
        if let Some(a) = &adopter {
            child = child.on_orphaned(move || a.adopt(position));
        }
        consumers.push(TreeConsumer::Child(Box::new(child)));
    }
    if let Some(r) = &ring {
        consumers.push(TreeConsumer::Ring(RingWriter::new(r.clone())));
    }
    let registered = streams.register(received, stream);
    let mut broken = None;
    let filler = SessionFiller {
        stream,
        session: &mut *session,
        stall: options.stall_timeout,
        buf: Vec::new(),
        broken: &mut broken,
        announced: &announced,
        registered: &registered,
        heard: Instant::now(),
        up: &up,
        upstream,
        after: &after,
        patience: patience(options, &tree, received_stall_ms),
        control,
    };
    // Encrypted, the pipe holds records: the local copy hashes the plaintext it opens.
    let config = FanoutConfig::default().digest(match transfer {
        Some(_) => DigestAlgorithm::None,
        None => header.digest,
    });
    // No length for the engine: the filler ends the stream only once it has read the
    // sender's trailer, so the children's trailers carry the sender's digest.
    let fanned = std::thread::scope(|s| {
        let reporter = s.spawn(|| report_after_trailer(&up, &after, options.stall_timeout));
        let fanned = engine::fan_out_filled(filler, None, consumers, &config);
        up.close();
        let _ = reporter.join();
        fanned
    });
    // The session back from the reports' thread, with what it could not write.
    if let Some(h) = lock(&after).take() {
        *session = h.session;
        *upstream = h.pending;
    }
    // Kept until this host's acknowledgement is out, and beyond while it waits for a late
    // resume ([`linger`]).
    *kept = Some(registered);
    let mut outcomes = fanned.consumers.into_iter();
    let local = store.as_ref().and_then(|_| outcomes.next());
    for (index, (position, outcome)) in positions.into_iter().zip(outcomes).enumerate() {
        let outcome = outcome
            .map_err(TreeError::into_dest)
            .and_then(TreeOutcome::delivered);
        below.push(report_of(position, me, &outcome, progress.of(index)));
        below.extend(child_reports.take(index));
    }
    if let Some(a) = adopter {
        below.extend(a.finish());
    }
    *held = std::mem::take(&mut *lock(&holding));
    reports.extend(complete(fanout, hosts, me, &below));
    if let Some(e) = broken {
        return Err(e);
    }
    let digest = fanned.result.map_err(|e| RecvError::Io {
        op: "relaying",
        source: io::Error::other(e),
    })?;
    // Encrypted: the digest to check is the plaintext's, from the local copy that opened the
    // records (the engine hashed nothing).
    let (digest, bytes) = match (&transfer, &local) {
        (Some(_), Some(Ok(TreeOutcome::Local(Some(d))))) => {
            (d.clone(), crypt::plain_in(fanned.bytes))
        }
        _ => (digest, fanned.bytes),
    };
    match local {
        Some(Err(TreeError::Local(e))) => {
            local_error = Some(RecvError::io("writing the file")(e));
        }
        Some(Err(TreeError::Records(e))) => local_error = Some(RecvError::Records(e)),
        _ => {}
    }
    if let Some(e) = local_error {
        return Err(e);
    }
    session.verify(&digest.bytes).map_err(mismatch)?;
    match store {
        Some(store) => commit(store, options, peer, bytes, digest).map(|r| Received {
            encrypted: transfer.is_some(),
            ..r
        }),
        None => unreachable!("a relay without a store has its reason"),
    }
}

/// The bytes of a session's payload, spliced from its socket into the engine's pipe; its
/// framing (chunk headers, keepalives, the trailer and seal) read and checked on the way.
///
/// When the parent's connection breaks or stalls, it waits up to a stall timeout for another
/// parent to resume the stream (or, stalled, for the old one to go on): the hosts below it
/// keep their connections, and nothing is lost.
struct SessionFiller<'a> {
    stream: &'a mut TcpStream,
    session: &'a mut ReceiverSession,
    stall: Duration,
    buf: Vec<u8>,
    /// Why the parent's stream broke, in the receiver's words.
    broken: &'a mut Option<RecvError>,
    /// The sender's digest, once its trailer has arrived.
    announced: &'a OnceLock<Vec<u8>>,
    registered: &'a Registered<'a>,
    /// When a parent last sent anything: a host waits for a new parent from then, not from
    /// when it noticed, so that a break noticed late (after its own parent gave up on it) is
    /// not waited for twice.
    heard: Instant,
    /// How long after that it waits for a new parent; `None` when no one can adopt it (its
    /// parent is the sender: a sender that is gone has no parent to adopt in its place).
    patience: Option<Duration>,
    /// Says when the stream is to end because the receiver stops.
    control: &'a Control,
    /// The reports to send up, as this host's destinations learn them.
    up: &'a Upstream,
    /// Report messages made for the parent and not yet written (before the acknowledgement,
    /// which the connection writes after them).
    upstream: &'a mut Vec<u8>,
    /// Where the session goes once the stream's trailer is in, for [`report_after_trailer`].
    after: &'a Mutex<Option<Handover>>,
}

/// A relay's session with its parent between its trailer and its acknowledgement: the
/// reports of its children's acknowledgements still go up through it, as they come.
struct Handover {
    session: ReceiverSession,
    stream: TcpStream,
    /// Report messages made and not yet written.
    pending: Vec<u8>,
}

/// Sends up what `up` gets once the stream's trailer is in (the filler sent it before), over
/// the session handed to `after`, until `up` is closed; each write within `stall`. A write
/// that fails ends it (the acknowledgement will say all).
fn report_after_trailer(up: &UpstreamQueue, after: &Mutex<Option<Handover>>, stall: Duration) {
    while up.wait(Duration::from_millis(250)) {
        let mut handed = lock(after);
        let Some(h) = &mut *handed else {
            continue;
        };
        let reports = up.take();
        if !reports.is_empty() {
            let message = h.session.report(&reports);
            h.pending.extend_from_slice(&message);
        }
        if !h.pending.is_empty() {
            if transport::write_all(&h.stream, &h.pending, transport::deadline(stall)).is_err() {
                return;
            }
            h.pending.clear();
        }
    }
}

impl SessionFiller<'_> {
    /// Sends up what this host's destinations learnt, as far as the socket takes it now (the
    /// rest at the next call, or before the acknowledgement): never waits, so a parent slow
    /// to read costs no data.
    fn send_up(&mut self) {
        let reports = self.up.take();
        if !reports.is_empty() {
            let message = self.session.report(&reports);
            self.upstream.extend_from_slice(&message);
        }
        while !self.upstream.is_empty() {
            match sys::send_now(self.stream.as_fd(), self.upstream) {
                Ok(n) => {
                    self.upstream.drain(..n);
                }
                Err(_) => return,
            }
        }
    }

    /// The parent's connection failed with `e` while reading `during`: a reset is a parent that
    /// abandoned the stream on purpose (it waits for nothing); anything else is recovered from.
    fn lost(&mut self, e: io::Error, during: &'static str, got: u64) -> Result<(), EngineError> {
        if e.kind() == io::ErrorKind::ConnectionReset {
            return Err(self.broke(RecvError::Truncated { got, during }));
        }
        self.recover(RecvError::reading(during, got, self.stall)(e))
    }

    /// Keeps `e` as the reason and gives the engine an error to stop on.
    fn broke(&mut self, e: RecvError) -> EngineError {
        let stop = EngineError::Source {
            op: "receiving",
            source: io::Error::other(e.to_string()),
        };
        *self.broken = Some(e);
        stop
    }

    /// The parent's stream failed with `e`: waits for a new parent (or, when it only stalled,
    /// for the old one), or stops with `e`.
    fn recover(&mut self, e: RecvError) -> Result<(), EngineError> {
        if self.control.is_cut() {
            return Err(self.broke(RecvError::Stopped));
        }
        let waits = matches!(
            e,
            RecvError::Truncated { .. } | RecvError::Stalled(_) | RecvError::Io { .. }
        );
        let Some(resumable) = self.registered.stream.clone().filter(|_| waits) else {
            return Err(self.broke(e));
        };
        // A new parent may be here already (its offer is what ended the old one's read).
        if let Some((stream, session)) = lock(&resumable.offer).take() {
            return self.take_over(&resumable, stream, session);
        }
        let Some(patience) = self.patience else {
            return Err(self.broke(e));
        };
        let stalled = matches!(e, RecvError::Stalled(_));
        let deadline = self.heard.checked_add(patience);
        loop {
            if let Some((stream, session)) = lock(&resumable.offer).take() {
                return self.take_over(&resumable, stream, session);
            }
            let wake = resumable.wake.read.as_fd();
            let old = self.stream.as_fd();
            let fds: &[BorrowedFd<'_>] = if stalled { &[wake, old] } else { &[wake] };
            let ready = sys::wait_any(fds, Readiness::Readable, deadline)
                .map_err(|e| self.broke(RecvError::io("poll")(e)))?;
            if ready.is_empty() {
                return Err(self.broke(e));
            }
            if ready.contains(&0) {
                let mut drained = [0u8; 64];
                let _ = sys::read(wake, &mut drained);
            }
            if ready.contains(&1) && lock(&resumable.offer).is_none() {
                // The old parent goes on.
                return Ok(());
            }
        }
    }

    /// A new parent resumes the stream: the old one is told, and the new one learns the offset
    /// this host holds.
    fn take_over(
        &mut self,
        resumable: &Resumable,
        stream: TcpStream,
        session: ReceiverSession,
    ) -> Result<(), EngineError> {
        let offset = self.session.received();
        let adopted = self.session.ack(
            AckStatus::Adopted,
            offset,
            &[],
            "another parent resumed this stream",
        );
        let old = std::mem::replace(self.stream, stream);
        *self.session = session;
        // What was made for the old parent is not the new one's (sealed for another session).
        self.upstream.clear();
        // The old parent may still be there (cut off upstream): it must not adopt this host.
        let _ = transport::write_all(&old, &adopted, transport::deadline(Duration::from_secs(1)));
        let _ = old.shutdown(Shutdown::Write);
        let _ = std::thread::Builder::new()
            .name("teecast-linger".into())
            .spawn(move || discard_input(&old, Duration::from_secs(2)));
        let taken = self
            .stream
            .set_read_timeout(Some(self.stall))
            .map_err(RecvError::io("setting the read timeout"))
            .and_then(|()| {
                let reply = self.session.resume_at(offset).map_err(|e| RecvError::Io {
                    op: "resuming",
                    source: io::Error::other(e),
                })?;
                transport::write_all(self.stream, &reply, transport::deadline(self.stall))
                    .map_err(RecvError::reading("resume", offset, self.stall))
            });
        if let Err(e) = taken {
            return Err(self.broke(e));
        }
        *lock(&resumable.parent) = self.stream.try_clone().ok();
        self.heard = Instant::now();
        Ok(())
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
            if self.control.is_cut() {
                return Err(self.broke(RecvError::Stopped));
            }
            self.send_up();
            match self.session.next() {
                Next::Framing(n) => {
                    // One read at a time, each handed to the session at once: a stall loses
                    // no framing byte, so the stream can go on after one.
                    self.buf.resize(n, 0);
                    let during = match self.session.header().and_then(|h| h.length) {
                        Some(_) => "trailer",
                        None => "chunk header or trailer",
                    };
                    let got = self.session.received();
                    match (&*self.stream).read(&mut self.buf) {
                        Ok(0) => self.recover(RecvError::Truncated { got, during })?,
                        Ok(k) => {
                            self.heard = Instant::now();
                            if let Err(e) = self.session.framing(&self.buf[..k]) {
                                return Err(self.broke(e.into()));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => self.lost(e, during, got)?,
                    }
                }
                Next::Payload(n) => {
                    // The socket's receive timeout (the stall timeout) bounds the wait.
                    let len = n.min(want as u64) as usize;
                    let got = self.session.received();
                    match sys::splice(self.stream.as_fd(), pipe, len, SpliceFlags::MORE) {
                        Ok(0) => self.recover(RecvError::Truncated {
                            got,
                            during: "payload",
                        })?,
                        Ok(k) => {
                            self.heard = Instant::now();
                            self.session.payload(k as u64);
                            return Ok(k);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => self.lost(e, "payload", got)?,
                    }
                }
                Next::Verify => {
                    let digest = self.session.announced_digest().unwrap_or_default();
                    let _ = self.announced.set(digest.to_vec());
                    // The children's acknowledgements still to come go up as they come.
                    if let Ok(stream) = self.stream.try_clone() {
                        let placeholder = ReceiverSession::new(None, [0; NONCE_LEN]);
                        *lock(self.after) = Some(Handover {
                            session: std::mem::replace(self.session, placeholder),
                            stream,
                            pending: std::mem::take(self.upstream),
                        });
                        self.up.wake();
                    }
                    // From now on a new parent is answered, not handed the stream; one that
                    // came while the trailer arrived is answered too.
                    if let Some(r) = &self.registered.stream
                        && let Some((stream, mut session)) = r.end()
                    {
                        let r = r.clone();
                        let _ = std::thread::Builder::new()
                            .name("teecast-late".into())
                            .spawn(move || {
                                let _ = answer_late(&stream, &mut session, &r);
                            });
                    }
                    return Ok(0);
                }
                Next::Resume => {
                    let e = RecvError::Io {
                        op: "resuming",
                        source: io::Error::other("a resume out of its turn"),
                    };
                    return Err(self.broke(e));
                }
            }
        }
    }

    fn hashes(&self) -> bool {
        false
    }
}

/// How long a host whose parent failed waits for another to resume its stream, from when it
/// last heard of the old one: `None` when no one can (its parent is the sender). Its own stall
/// timeout, then four times what its parent allows it (`stall_ms`): the grandparent's clock for
/// the parent runs only while it has bytes the parent does not take, so it starts late when a
/// host above starves the grandparent (a stalled sibling holds the whole tree until the sender
/// drops it, within the sender's stall timeout: a host's own, the defaults alike, covers it);
/// then the grandparent gives up within twice `stall_ms` and connects here within as long.
pub(super) fn patience(options: &RecvOptions, tree: &Tree, stall_ms: u32) -> Option<Duration> {
    (Tree::parent_of(tree.fanout, usize::from(tree.position)) != 0).then(|| {
        let adoption = Duration::from_millis(4 * u64::from(stall_ms));
        options.stall_timeout.saturating_add(adoption)
    })
}

/// Answers a parent that resumes a stream whose trailer arrived here already (its first parent
/// died before this host's acknowledgement reached it). Once the stream's outcome is known
/// (within the stall timeout the resuming header announces: the new parent waits no longer), a
/// copy stored and verified here is answered as complete: the whole length held; then, after
/// the new parent's trailer, an acknowledgement of the copy with the reports of the hosts below
/// this one, so the new parent reports it ok and adopts none of them again. A copy that failed
/// here is not answered: the new parent reports the host failed, as its first parent would have.
pub(super) fn answer_late(
    stream: &TcpStream,
    session: &mut ReceiverSession,
    ended: &Resumable,
) -> Result<(), RecvError> {
    let stall = Duration::from_millis(u64::from(
        session
            .header()
            .and_then(|h| h.tree)
            .map_or(1, |t| t.stall_ms),
    ));
    let deadline = transport::deadline(stall);
    let Some(done) = ended.outcome(deadline) else {
        return Err(RecvError::Stalled(stall));
    };
    let reply = session.resume_at(done.bytes).map_err(|e| RecvError::Io {
        op: "resuming",
        source: io::Error::other(e),
    })?;
    transport::write_all(stream, &reply, deadline)
        .map_err(RecvError::reading("resume", done.bytes, stall))?;
    let mut buf = Vec::new();
    while let Next::Framing(n) = session.next() {
        buf.resize(n, 0);
        transport::read_exact(stream, &mut buf, transport::deadline(stall))
            .map_err(RecvError::reading("trailer", done.bytes, stall))?;
        session.framing(&buf)?;
    }
    let ack = match session.verify(&done.digest).map_err(mismatch) {
        Ok(()) => {
            session.ack_with_reports(AckStatus::Ok, done.bytes, &done.digest, "", done.reports)
        }
        Err(e) => {
            let got = session.received();
            session.ack(e.ack_status(), got, &[], &e.peer_message())
        }
    };
    transport::write_all(stream, &ack, transport::deadline(stall)).map_err(RecvError::reading(
        "acknowledgement",
        done.bytes,
        stall,
    ))?;
    ended.answered();
    Ok(())
}

/// After its acknowledgement of a relayed stream, a host waits (up to `patience`) to learn
/// whether its parent read it: a parent that closes in an orderly way after every byte of it
/// arrived (its FIN acknowledges them all) did, and the wait ends; one that reset the
/// connection (it died with the acknowledgement unread, or holding this host's connection
/// after reading it) or closed before it arrived did not. Then, when `resumable` (a parent can
/// adopt this host), the host waits on for the parent adopting it in its place to resume the
/// stream, answered by [`answer_late`]. Returns whether one was.
pub(super) fn linger(
    parent: &TcpStream,
    ended: Option<&Resumable>,
    patience: Duration,
    resumable: bool,
) -> bool {
    let deadline = transport::deadline(patience);
    let mut watch_parent = true;
    let mut buf = [0u8; 256];
    loop {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(2);
        if watch_parent {
            fds.push(parent.as_fd());
        }
        if let Some(e) = ended {
            fds.push(e.wake.read.as_fd());
        }
        if fds.is_empty() {
            return false;
        }
        let Ok(ready) = sys::wait_any(&fds, Readiness::Readable, deadline) else {
            return false;
        };
        if ready.is_empty() {
            return false;
        }
        let woken = usize::from(watch_parent);
        if let Some(e) = ended
            && ready.contains(&woken)
        {
            let _ = sys::read(e.wake.read.as_fd(), &mut buf);
            if e.answered.load(std::sync::atomic::Ordering::SeqCst) {
                return true;
            }
        }
        if watch_parent && ready.contains(&0) {
            match (&*parent).read(&mut buf) {
                Ok(0) if sys::unacknowledged(parent.as_fd()).is_ok_and(|n| n == 0) => {
                    return false;
                }
                Ok(0) | Err(_) if !resumable => return false,
                Ok(0) | Err(_) => watch_parent = false,
                Ok(_) => {}
            }
        }
    }
}

/// What a late resume of the stream `ended` is answered with, now that its outcome is known.
pub(super) fn settle(
    ended: &Resumable,
    outcome: &Result<Received, RecvError>,
    bytes: u64,
    reports: &[teecast_proto::wire::HostReport],
) {
    ended.settle(outcome.as_ref().ok().map(|r| Completed {
        bytes,
        digest: r.digest.bytes.clone(),
        reports: reports.to_vec(),
    }));
}
