//! Serving: accept connections, give each a place, and receive each stream (raw or framed,
//! relayed or not).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use teecast_proto::crypt;
use teecast_proto::session::{Next, ReceiverSession};
use teecast_proto::wire::{self, AckStatus, Header, WireError};
use teecast_sys as sys;

use super::conn::{Conn, REFUSAL_LINGER, discard_input, mismatch};
use super::control::Control;
use super::error::RecvError;
use super::gate::Gate;
use super::options::{Event, EventHandler, Received, RecvOptions, Target};
use super::payload::{Payload, Store, commit, open_store};
use super::relay;
use super::streams::{Offered, Streams};

use crate::store::is_temporary_name;
use crate::tree::route::Route;
use crate::{auth, transport};
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
    serve_until(
        vec![listener.try_clone()?],
        options,
        once,
        &Control::new(),
        on_event,
    )
}

/// [`serve`] on every one of `listeners`, until `control` stops it (or, with `once`, its
/// stream is done): then returns whether `once`'s stream was stored (`true` without `once`).
///
/// A stop ([`Control::stop`]) closes the listeners (a socket a service manager passed stays
/// open there, its queue kept for the next start), the connections that have not sent their
/// header, and lets
/// the streams in flight finish until its deadline; those still going then are refused with
/// [`RecvError::Stopped`] (their senders told, nothing of them kept).
pub fn serve_until(
    mut listeners: Vec<TcpListener>,
    options: &RecvOptions,
    once: bool,
    control: &Control,
    on_event: &EventHandler,
) -> io::Result<bool> {
    sys::ignore_sigpipe();
    let wake = control.wake_fd()?;
    let gate = Gate::new(options, once, control);
    let streams = Streams::default();
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    std::thread::scope(|scope| {
        let served = loop {
            if gate.finished().is_some() || control.stopping().is_some() {
                break Ok(());
            }
            // Full of streams: only a stream that ends (or a stop) makes room.
            let mut fds = vec![wake];
            if gate.has_room() {
                fds.extend(listeners.iter().map(AsFd::as_fd));
            }
            let ready = match sys::wait_any(&fds, sys::Readiness::Readable, None) {
                Ok(ready) => ready,
                Err(e) => break Err(e),
            };
            control.clear_wake();
            if control.stopping().is_some() {
                break Ok(());
            }
            let accepted = ready
                .iter()
                .filter_map(|&i| i.checked_sub(1))
                // Each accept may take the last place.
                .filter(|_| gate.has_room())
                .try_for_each(|i| accept(&listeners[i], &gate, options, &streams, scope, on_event));
            if let Err(e) = accepted {
                break Err(e);
            }
        };
        // No new connections; those still before their header are not waited for.
        listeners.clear();
        gate.close_opening();
        if let Some(deadline) = control.stopping()
            && !gate.wait_empty(deadline)
        {
            control.cut();
            gate.cut_streams();
        }
        served.map(|()| !once || gate.finished().unwrap_or(false))
    })
}

/// Accepts one connection from `listener` (if one is waiting) and serves it on a thread of
/// `scope`; an error only when the listener can accept no more.
fn accept<'scope, 'env>(
    listener: &TcpListener,
    gate: &'env Gate<'env>,
    options: &'env RecvOptions,
    streams: &'env Streams,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    on_event: &'env EventHandler,
) -> io::Result<()> {
    let (stream, peer) = match listener.accept() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) || is_transient_accept_error(&e) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some(ticket) = gate.enter(&stream, peer.ip()) else {
        drop(stream);
        on_event(Some(peer), Event::Done(&Err(RecvError::Busy)));
        return Ok(());
    };
    scope.spawn(move || {
        let mut target = None;
        let mut resumed = None;
        let admit = &mut |a: Announced<'_>, resuming| {
            if resuming {
                gate.settle(ticket);
                resumed = Some(a.name.to_string());
                return Ok(());
            }
            target = gate.open(ticket)?;
            on_event(
                Some(peer),
                Event::Opened {
                    name: a.name,
                    length: a.length,
                    encrypted: a.encrypted,
                },
            );
            Ok(())
        };
        let result = receive_admitted(stream, options, admit, streams, gate.control);
        drop(target);
        let result = gate.leave(ticket, result);
        match (&result, resumed) {
            (Err(RecvError::HandedOver), Some(name)) => {
                on_event(
                    Some(peer),
                    Event::Resumed {
                        name: &name,
                        stored: false,
                    },
                );
            }
            (Err(RecvError::Confirmed), Some(name)) => {
                on_event(
                    Some(peer),
                    Event::Resumed {
                        name: &name,
                        stored: true,
                    },
                );
            }
            _ => on_event(Some(peer), Event::Done(&result)),
        }
    });
    Ok(())
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        sys::Errno::from_io_error(e),
        Some(
            sys::Errno::CONNABORTED
                | sys::Errno::MFILE
                | sys::Errno::NFILE
                | sys::Errno::NOBUFS
                | sys::Errno::NOMEM
        )
    )
}

/// Receives one stream from `stream` and stores it; answers the sender with an acknowledgement
/// (framed mode) when the header could be read.
pub fn receive(stream: TcpStream, options: &RecvOptions) -> Result<Received, RecvError> {
    receive_admitted(
        stream,
        options,
        &mut |_, _| Ok(()),
        &Streams::default(),
        &Control::new(),
    )
}

/// Asked whether a stream that passed its header (name, length, whether it resumes one being
/// received here) may go on.
type Admit<'a> = dyn FnMut(Announced<'_>, bool) -> Result<(), RecvError> + 'a;

/// What a stream's header announces, as the receiver stores it.
#[derive(Clone, Copy)]
struct Announced<'a> {
    name: &'a str,
    /// The bytes to be stored, when known (of an encrypted stream: the plaintext's).
    length: Option<u64>,
    encrypted: bool,
}

impl<'a> Announced<'a> {
    /// What `session`'s header announces.
    fn of(session: &ReceiverSession, header: &'a Header) -> Announced<'a> {
        let encrypted = session.is_encrypted();
        Announced {
            name: &header.name,
            length: match encrypted {
                true => header.length.and_then(crypt::plain_len),
                false => header.length,
            },
            encrypted,
        }
    }
}

/// [`receive`], asking `admit` once the stream has passed its header (at once for a raw one)
/// whether it may go on.
fn receive_admitted(
    stream: TcpStream,
    options: &RecvOptions,
    admit: &mut Admit<'_>,
    streams: &Streams,
    control: &Control,
) -> Result<Received, RecvError> {
    let peer = stream.peer_addr().ok();
    stream
        .set_read_timeout(Some(options.stall_timeout))
        .map_err(RecvError::io("setting the read timeout"))?;
    if options.raw {
        return receive_raw(&stream, options, peer, admit, control)
            .map_err(|e| e.stopped_if(control));
    }
    let nonce = auth::nonce().map_err(|e| RecvError::Io {
        op: "getrandom",
        source: io::Error::other(e),
    })?;
    let mut conn = Conn {
        stream,
        session: ReceiverSession::with_keys(control.keys(&options.keys), nonce),
        options,
        peer,
        reports: Vec::new(),
        streams,
        control,
        registered: None,
        children: Vec::new(),
        upstream: Vec::new(),
    };
    let result = receive_framed(&mut conn, admit).map_err(|e| e.stopped_if(control));
    let Conn {
        stream,
        mut session,
        reports,
        registered,
        children,
        upstream,
        ..
    } = conn;
    if session.header().is_none()
        || matches!(result, Err(RecvError::HandedOver | RecvError::Confirmed))
    {
        // No header, no answer: the peer does not speak the protocol, or did not prove the key
        // (its welcome told it what this side holds).
        return result;
    }
    // A relayed stream: what a parent resuming it late is answered with.
    let ended = registered.as_ref().and_then(|r| r.stream.clone());
    let ack = match &result {
        Ok(r) => {
            // The count acknowledged is the payload's on the wire: of an encrypted stream, its
            // records'.
            let bytes = match r.encrypted {
                true => crypt::sealed_len(r.bytes).unwrap_or(u64::MAX),
                false => r.bytes,
            };
            if let Some(e) = &ended {
                relay::settle(e, &result, bytes, &reports);
            }
            session.ack_with_reports(AckStatus::Ok, bytes, &r.digest.bytes, "", reports)
        }
        Err(e) => {
            if let Some(ended) = &ended {
                relay::settle(ended, &result, 0, &[]);
            }
            let got = session.received();
            session.ack_with_reports(e.ack_status(), got, &[], &e.peer_message(), reports)
        }
    };
    if let Err(RecvError::Wire(_)) = &result {
        // Malformed frames after the header: no answer to a peer that does not speak the
        // protocol (docs/PROTOCOL.md, "Malformed input").
        return result;
    }
    // The sender may already be gone; the outcome here stands either way. Report messages
    // still unwritten go first: in an encrypted session they were sealed before the ack.
    let deadline = transport::deadline(options.stall_timeout);
    let _ = transport::write_all(&stream, &upstream, deadline)
        .and_then(|()| transport::write_all(&stream, &ack, deadline));
    // A stored copy whose parent may not have read its acknowledgement waits to be resumed
    // by the parent adopting it; a relay holds its children's connections until then
    // (docs/PROTOCOL.md, "Resuming").
    if let (Ok(_), Some(tree)) = (&result, session.header().and_then(|h| h.tree)) {
        let patience = relay::patience(options, &tree, tree.stall_ms);
        if patience.is_some() || !children.is_empty() {
            let wait = patience.unwrap_or(options.stall_timeout);
            relay::linger(&stream, ended.as_deref(), wait, patience.is_some());
        }
    }
    drop(registered);
    for child in children {
        let _ = sys::end_on_close(child.as_fd());
    }
    if let Err(
        RecvError::Io { .. }
        | RecvError::CannotCreate { .. }
        | RecvError::Taken
        | RecvError::Displaced
        | RecvError::TooLarge { .. }
        | RecvError::Reserve { .. }
        | RecvError::Stopped,
    ) = &result
    {
        // Refused mid-stream: let the acknowledgement reach the sender before the connection
        // closes. Closing with unread data would reset it, and a reset can overtake the answer.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        discard_input(&stream, REFUSAL_LINGER.min(options.stall_timeout));
    }
    result
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
    let mut deadline = transport::deadline(options.header_timeout);
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
                let awaits_proof = conn.session.awaits_proof();
                transport::read_exact(&conn.stream, &mut buf, deadline).map_err(|e| {
                    match e.kind() {
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                            if awaits_proof =>
                        {
                            RecvError::NoProof
                        }
                        _ => RecvError::reading(during, conn.session.received(), limit)(e),
                    }
                })?;
                // An encrypted hello that verifies under none of this side's keys is a sender
                // with another key, as a version-2 sender that gives up before its proof is.
                let taken = conn.session.framing(&buf).map_err(|e| match e {
                    WireError::BadSeal("hello") => RecvError::NoProof,
                    e => RecvError::Wire(e),
                });
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
                    deadline = transport::deadline(stall);
                }
                if store.is_none()
                    && let Some(header) = conn.session.header()
                {
                    let path = target_path(options, &header.name)?;
                    admit(Announced::of(&conn.session, header), false)?;
                    let file = open_store(options, &path, header.length)?;
                    let payload = Payload::new(header.digest, options)?
                        .opening(conn.session.transfer_key())
                        .stopped_by(conn.control)
                        .keeping_free(options, &file)
                        .writing_direct(&file);
                    store = Some((file, payload));
                }
            }
            Next::Payload(n) => {
                let Some((file, payload)) = &mut store else {
                    unreachable!("the session asks for payload only after its header");
                };
                let before = payload.bytes;
                payload.copy(conn.stream.as_fd(), file.fd(), Some(n))?;
                conn.session.payload(payload.bytes - before);
                deadline = transport::deadline(stall);
            }
            Next::Verify | Next::Resume => break,
        }
    }
    let Some((file, payload)) = store else {
        unreachable!("the session verifies only after its header");
    };
    let encrypted = conn.session.is_encrypted();
    let bytes = match encrypted {
        true => crypt::plain_in(payload.bytes),
        false => payload.bytes,
    };
    let digest = payload.finish()?;
    conn.session.verify(&digest.bytes).map_err(mismatch)?;
    commit(file, options, peer, bytes, digest).map(|r| Received { encrypted, ..r })
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
        admit(Announced::of(&conn.session, &header), true)?;
        match conn.streams.offer(handle, conn.session.clone()) {
            Offered::Taken => return Err(RecvError::HandedOver),
            Offered::Ended(ended) => {
                // Its trailer arrived here before its parent failed: answered as it stands (or,
                // the copy failed, not at all: no acknowledgement where an offset is due).
                return match relay::answer_late(&conn.stream, &mut conn.session, &ended) {
                    Ok(()) => Err(RecvError::Confirmed),
                    Err(_) => Err(RecvError::HandedOver),
                };
            }
            Offered::Absent => {}
        }
        // Nothing of it here: from the start, as a new stream (the answer comes first, so that
        // a refusal reaches the sender as an ack where it reads one).
        let reply = conn.session.resume_at(0).map_err(|e| RecvError::Io {
            op: "resuming",
            source: io::Error::other(e),
        })?;
        transport::write_all(
            &conn.stream,
            &reply,
            transport::deadline(options.stall_timeout),
        )
        .map_err(RecvError::reading("resume", 0, options.stall_timeout))?;
        admit(Announced::of(&conn.session, &header), false)?;
    }
    let path = target_path(options, &header.name)?;
    if !header.tree.is_some_and(|t| t.resume) {
        admit(Announced::of(&conn.session, &header), false)?;
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

fn receive_raw(
    stream: &TcpStream,
    options: &RecvOptions,
    peer: Option<SocketAddr>,
    admit: &mut Admit<'_>,
    control: &Control,
) -> Result<Received, RecvError> {
    // Any bytes are a raw stream, so a connection opens one at once; a teecast session sent
    // here too, so that `once` ends with the error that names the mistake.
    let name = raw_name(peer);
    admit(
        Announced {
            name: &name,
            length: None,
            encrypted: false,
        },
        false,
    )?;
    if opens_a_session(stream, options.stall_timeout)? {
        return Err(RecvError::FramedIntoRaw);
    }
    let path = match &options.target {
        Target::File(p) => p.clone(),
        Target::Stdout => PathBuf::from("-"),
        Target::Dir(d) => d.join(name),
    };
    let file = open_store(options, &path, None)?;
    let mut payload = Payload::new(options.digest, options)?
        .stopped_by(control)
        .keeping_free(options, &file);
    payload.copy(stream.as_fd(), file.fd(), None)?;
    let bytes = payload.bytes;
    let digest = payload.finish()?;
    commit(file, options, peer, bytes, digest)
}

/// Whether a bare stream opens the way a teecast sender opens a session (the hello's magic and
/// version), looking without taking: a framed sender sent to a raw receiver, which would
/// otherwise store the framing as data and leave the sender waiting for a welcome.
fn opens_a_session(stream: &TcpStream, stall: Duration) -> Result<bool, RecvError> {
    let mut opening = wire::MessageKind::Hello.magic().to_vec();
    opening.extend_from_slice(&wire::VERSION.to_be_bytes());
    let mut first = vec![0u8; opening.len()];
    let deadline = transport::deadline(stall);
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
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(RecvError::Stalled(stall));
        }
        // Fewer bytes than the opening, all matching it so far (rare: a peer dripping its first
        // bytes): the socket stays readable, so look again a moment later.
        std::thread::sleep(Duration::from_millis(1));
    }
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
