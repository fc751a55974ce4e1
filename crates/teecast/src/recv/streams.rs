//! The relayed streams being received, for a resuming header to find the one it continues: a
//! new parent hands its connection to the stream, whose filler takes it over.

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use teecast_proto::session::ReceiverSession;
use teecast_proto::wire::{Header, HostReport, TRANSFER_ID_LEN};
use teecast_sys as sys;
use teecast_sys::Pipe;

use crate::sync::lock;

/// The relayed streams being received, for a resuming header to find the one it continues.
#[derive(Default)]
pub(super) struct Streams(Mutex<Vec<Arc<Resumable>>>);

/// A relayed stream being received, which a new parent may take over.
pub(super) struct Resumable {
    /// The stream's header, resume flag clear.
    pub(super) header: Header,
    /// A handle on the current parent's connection, to cut it when another parent takes over.
    pub(super) parent: Mutex<Option<TcpStream>>,
    /// The new parent's connection and session, once one offered to resume.
    pub(super) offer: Mutex<Option<(TcpStream, ReceiverSession)>>,
    /// Written to when an offer arrives; once the stream has ended, when a late resume was
    /// answered.
    pub(super) wake: Pipe,
    /// Set (under `offer`'s lock) once the stream's trailer has arrived: a parent resuming it
    /// from then on is answered by [`answer_late`](super::relay::answer_late), not handed the
    /// stream.
    pub(super) ended: AtomicBool,
    /// Once the stream's outcome is known: what a late resume is answered with (`None`: the
    /// copy failed, and a late resume is not answered).
    outcome: Mutex<Option<Option<Completed>>>,
    settled: Condvar,
    /// A late resume was answered as complete.
    pub(super) answered: AtomicBool,
}

/// A relayed stream stored and verified here: what a late resume is answered with.
#[derive(Clone, Debug)]
pub(super) struct Completed {
    /// The payload bytes on the wire (of an encrypted stream: its records').
    pub(super) bytes: u64,
    /// The digest the sender's trailer must announce (of an encrypted stream: the
    /// plaintext's), and the acknowledgement carries.
    pub(super) digest: Vec<u8>,
    /// What this host's acknowledgement reported of the hosts below it.
    pub(super) reports: Vec<HostReport>,
}

/// What became of a resuming header's offer ([`Streams::offer`]).
pub(super) enum Offered {
    /// The stream it resumes is being received here, and goes on over the new connection.
    Taken,
    /// The stream it resumes has ended here: the new parent is answered by this connection.
    Ended(Arc<Resumable>),
    /// No such stream here.
    Absent,
}

impl Resumable {
    /// The stream's trailer has arrived: no more offers are taken over. Returns one that
    /// arrived meanwhile, for it to be answered late.
    pub(super) fn end(&self) -> Option<(TcpStream, ReceiverSession)> {
        let mut offer = lock(&self.offer);
        self.ended.store(true, Ordering::SeqCst);
        offer.take()
    }

    /// The stream's outcome is known: `completed` for a verified copy, `None` for a failure.
    pub(super) fn settle(&self, completed: Option<Completed>) {
        *lock(&self.outcome) = Some(completed);
        self.settled.notify_all();
    }

    /// Waits until the outcome is known, or `deadline` (`None` then).
    pub(super) fn outcome(&self, deadline: Option<Instant>) -> Option<Completed> {
        let mut outcome = lock(&self.outcome);
        loop {
            if let Some(done) = &*outcome {
                return done.clone();
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => std::time::Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            outcome = self
                .settled
                .wait_timeout(outcome, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A late resume was answered as complete: the connection lingering for one is told.
    pub(super) fn answered(&self) {
        self.answered.store(true, Ordering::SeqCst);
        let _ = sys::write(self.wake.write.as_fd(), b"!");
    }
}

/// A stream's place in [`Streams`], given up when dropped.
pub(super) struct Registered<'a> {
    pub(super) streams: &'a Streams,
    pub(super) stream: Option<Arc<Resumable>>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(me) = self.stream.take() {
            self.streams.lock().retain(|s| !Arc::ptr_eq(s, &me));
        }
    }
}

/// `header` with its resume flag clear and its timeouts set aside: what a resuming header must
/// match.
pub(super) fn resumed(header: &Header) -> Header {
    let mut h = header.clone();
    if let Some(t) = &mut h.tree {
        t.resume = false;
        // Each parent sends the timeouts it keeps itself: an adopter's differ from the
        // parent's it replaces, and the stream is the same.
        t.stall_ms = 1;
        t.connect_ms = 1;
    }
    h
}

impl Streams {
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Arc<Resumable>>> {
        lock(&self.0)
    }

    /// Enters the stream of `header`, received from `parent` (nothing, for a stream that
    /// cannot be resumed or when the system refuses a pipe: it then fails as it would have).
    pub(super) fn register<'a>(&'a self, header: &Header, parent: &TcpStream) -> Registered<'a> {
        let id = header.tree.map(|t| t.transfer);
        let entry = match (id, Pipe::with_size(4096)) {
            (Some(id), Ok(wake)) if id != [0; TRANSFER_ID_LEN] => Some(Arc::new(Resumable {
                header: resumed(header),
                parent: Mutex::new(parent.try_clone().ok()),
                offer: Mutex::new(None),
                wake,
                ended: AtomicBool::new(false),
                outcome: Mutex::new(None),
                settled: Condvar::new(),
                answered: AtomicBool::new(false),
            })),
            _ => None,
        };
        if let Some(e) = &entry {
            self.lock().push(e.clone());
        }
        Registered {
            streams: self,
            stream: entry,
        }
    }

    /// Hands `stream` and `session` (past a resuming header) to the stream they resume, if
    /// it is being received here; says so if it has ended here; gives them back otherwise.
    pub(super) fn offer(&self, stream: TcpStream, session: ReceiverSession) -> Offered {
        let wanted = session.header().map(resumed);
        let found = self
            .lock()
            .iter()
            .find(|s| Some(&s.header) == wanted.as_ref())
            .cloned();
        let Some(target) = found else {
            return Offered::Absent;
        };
        {
            let mut offer = lock(&target.offer);
            if target.ended.load(Ordering::SeqCst) {
                drop(offer);
                return Offered::Ended(target);
            }
            *offer = Some((stream, session));
        }
        // The filler may be reading from the old parent: end that read.
        if let Some(old) = lock(&target.parent).take() {
            let _ = old.shutdown(Shutdown::Read);
        }
        let _ = sys::write(target.wake.write.as_fd(), b"!");
        Offered::Taken
    }
}
